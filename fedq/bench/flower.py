"""The optional peer of `fedq bench --fl`: Flower's simulation engine, when `flwr[simulation]` is installed.

fedq never depends on it. The interpreter that runs `_flower_probe.py` is FEDQ_FLWR_PYTHON if
set (a virtualenv that has flwr, so that its pins stay out of fedq's environment: made with
`python -m venv --system-site-packages`, it shares this torch), else this one if it can import
flwr; with neither (or FEDQ_FLWR_PYTHON naming no file), the peer is skipped (None), as PySyft 0.2.9 is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .flworkloads import Workload

FLWR_PYTHON_ENV = "FEDQ_FLWR_PYTHON"
PROBE = Path(__file__).with_name("_flower_probe.py")


def flower_python() -> str | None:
    """The interpreter with flwr[simulation], or None."""
    named = os.environ.get(FLWR_PYTHON_ENV)
    if named:
        return named if Path(named).exists() else None
    spec = importlib.util.find_spec("flwr")
    return sys.executable if spec is not None and spec.origin is not None else None  # (not a stray flwr/ folder)


def measure_flower(workloads: list[Workload], *, timeout: float = 1800.0) -> dict[str, Any] | None:
    """Flower's figures per workload name, None when it is not installed, {"error": ...} when it fails."""
    python = flower_python()
    if python is None:
        return None
    plan = json.dumps([w.to_json() for w in workloads])
    try:
        done = subprocess.run([python, str(PROBE), plan], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # run() has killed it already
        return {"error": f"the Flower probe took more than {timeout:g} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "the Flower probe printed no figures"}
