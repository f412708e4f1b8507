"""`fedq up --on ray` (issue 18): a config's workers placed as Ray actors on a local Ray instance
the command starts, found by clients exactly as from the config; a worker killed (as its node
dying would) fails calls within the config's timeout and stops the federation, Ray included: no
process of it survives, even when the test fails. Skipped where Ray is not installed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch as th

import fedq as sy
from fedq.keys import write_key_file
from helpers import free_port

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fedq[ray]')")

TIMEOUT = 3


def _ray_processes(tmp: str) -> list[int]:
    """Processes of the Ray instance under `tmp` (its RAY_TMPDIR: in its daemons' environment and arguments)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if tmp.encode() in seen:
            found.append(int(entry.name))
    return found


def test_workers_placed_on_ray_serve_the_config_and_a_killed_one_stops_them_all(hook):
    tmp = tempfile.mkdtemp(prefix="fqray", dir="/tmp")  # (short: Ray's sockets live under it)
    ports = {"r1": free_port(), "r2": free_port()}
    write_key_file(Path(tmp) / "session.key", sy.local_client().key)  # (this process joins as a client)
    config = Path(tmp) / "ray.toml"
    config.write_text(
        f'[federation]\ntimeout = {TIMEOUT}\nkey_file = "{tmp}/session.key"\n'
        + "".join(f'[workers.{n}]\naddress = "tcp://127.0.0.1:{p}"\n' for n, p in ports.items())
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "fedq", "up", "--on", "ray", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_TMPDIR": tmp},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert up.poll() is None and time.monotonic() < deadline, up.communicate()
                    time.sleep(0.1)
        assert _ray_processes(tmp)  # (what the check after the stop looks for is there now)
        r1, r2 = (sy.connect(hook, n, config=config) for n in ports)
        x = th.tensor([1.0, 2.0, 3.0]).send(r1).send(r2)  # r2 relays to r1, actor to actor
        assert th.equal((x + x).get().get(), th.tensor([2.0, 4.0, 6.0]))
        del x
        hook.local_worker.sync()
        assert (r1.ping().objects, r2.ping().objects) == (0, 0)
        os.kill(r2.ping().pid, signal.SIGKILL)  # (as if its node died)
        started = time.monotonic()
        with pytest.raises(sy.WorkerUnreachableError, match="'r2'"):
            r2.ping()
        assert time.monotonic() - started < TIMEOUT + 2
        out, err = up.communicate(timeout=60)  # it notices, and stops r1 and Ray
        assert up.returncode == 1 and "worker r2 exited; stopping the others" in err, (out, err)
        deadline = time.monotonic() + 20
        while _ray_processes(tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ray_processes(tmp) == []
        with pytest.raises(sy.WorkerUnreachableError):
            r1.ping(timeout=1)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
        for pid in _ray_processes(tmp):  # (whatever failed: nothing of it is left)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
