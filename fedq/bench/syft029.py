"""The optional peer: PySyft 0.2.9, the API fedq keeps, when an interpreter with it exists.

It is never built here: only if /tmp/syft029/bin/python exists does it run
`_syft029_probe.py` with that interpreter (PySyft 0.2.9 pins an old torch, so
it cannot share this process) and read the figures it prints as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

SYFT_PYTHON = Path("/tmp/syft029/bin/python")
PROBE = Path(__file__).with_name("_syft029_probe.py")
# PySyft imports aiortc (its WebRTC grid code), which does not build here; the script that
# builds the peer (../shared/peers/pysyft029.sh beside the project) keeps stand-ins for it.
STUBS = Path(__file__).resolve().parents[3] / "shared" / "peers" / "stubs"


def measure_pysyft029(*, number: int, repeats: int, ops: int, timeout: float = 300.0) -> dict[str, Any] | None:
    """PySyft 0.2.9's figures on the same work, None when it is not installed, {"error": ...} when it fails."""
    if not SYFT_PYTHON.exists():
        return None
    plan = json.dumps({"number": number, "repeats": repeats, "ops": ops})
    try:
        env = {**os.environ, "PYTHONPATH": str(STUBS)} if STUBS.is_dir() else None
        done = subprocess.run([str(SYFT_PYTHON), str(PROBE), plan], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:  # run() has killed it already
        return {"error": f"the PySyft 0.2.9 probe took more than {timeout:g} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "the PySyft 0.2.9 probe printed no figures"}
