"""The Procfile federation, as README says to run it: `honcho start`, then a script that
joins the workers by name from configs/local.toml.

Kept private: the key comes from FEDQ_KEY (it takes precedence over the config's key file,
so ~/.config/fedq/local.key is never read or made), and XDG_RUNTIME_DIR points at a fresh
directory, so the ipc endpoints `{runtime}/bob.sock`, ... cannot collide with a federation
the user is running."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

from fedq.codec import new_key
from helpers import gone, stop

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("bob", "alice", "secure_worker")

CLIENT = textwrap.dedent(
    """
    import json, torch as th, fedq as sy
    hook = sy.TorchHook(th)
    bob, alice, secure_worker = (sy.connect(hook, name, config="configs/local.toml") for name in ("bob", "alice", "secure_worker"))
    pids = {w.id: w.ping(timeout=30).pid for w in (bob, alice, secure_worker)}
    data = bob.search("#housing", "#data")
    x = th.tensor([1.0, 2.0]).send(secure_worker).send(alice)  # a chain across two Procfile workers
    doubled = (x * 2).get().get().tolist()
    print(json.dumps({"pids": pids, "housing_data": len(data), "shape": list(data[0].shape), "doubled": doubled}), flush=True)
    """
)


def test_procfile_federation_runs_under_honcho():
    runtime = Path(tempfile.mkdtemp(prefix="fq-"))  # short: ipc paths are limited to ~100 bytes
    env = {
        **os.environ,
        "FEDQ_KEY": new_key().hex(),
        "XDG_RUNTIME_DIR": str(runtime),
        # The Procfile runs `fedq`: the one installed beside this interpreter.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(honcho.stdout), daemon=True)
    reader.start()
    pids: dict[str, int] = {}
    stopped = False
    try:
        done = subprocess.run([sys.executable, "-c", CLIENT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr + "".join(log)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        pids = report["pids"]
        assert sorted(pids) == sorted(WORKERS)
        assert report["housing_data"] == 1 and len(report["shape"]) == 2  # bob's own shard, found by its tags
        assert report["doubled"] == [2.0, 4.0]

        honcho.send_signal(signal.SIGTERM)  # honcho forwards it to every worker
        honcho.wait(30)
        stopped = True
        reader.join(5)
        left = [name for name, pid in pids.items() if not gone(pid, within=10)]
        assert not left, f"{left} outlived honcho:\n" + "".join(log)
        started = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", "".join(log))]
        assert len(started) == len(WORKERS), "".join(log)
        assert all(gone(pid, within=5) for pid in started)
    finally:
        if not stopped:  # a failure above: take the federation down the same way, then harder
            stop(honcho)
            for pid in pids.values():  # whatever honcho left behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(runtime, ignore_errors=True)
