"""`fedq up --on ray` (issue 18): N generated data owners and an aggregator, or a config's workers,
placed as Ray actors, found by clients exactly as from a config (the generated one: the file the
command writes); a worker killed (as its node dying would) fails calls within the config's timeout
and stops its federation. Ray starts once for the module: the owners' command starts a local
instance (and stops it with them: no process of it survives, even when a test fails), and the
config's workers are placed on it by its address. Skipped where Ray is not installed."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch as th

import fedq as sy
from fedq.keys import write_key_file
from helpers import free_port, gone, stop

pytest.importorskip("ray", reason="Ray is not installed (pip install 'fedq[ray]')")

TIMEOUT = 3
OWNERS = 3  # generated data owners, and an aggregator


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


def _ray_environment(tmp: str) -> dict[str, str]:
    """Ray under `tmp`, with token authentication said outright: a new local instance turns it on
    by itself, but a driver given the instance's address must be told (Ray >= 2.5x; older ones ignore it)."""
    return {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "token"}


def _kill_all(tmp: str) -> None:
    for pid in _ray_processes(tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def ray_instance():
    """The module's one local Ray instance: `fedq up --on ray --owners 3` starts it, placing the
    generated owners (a quarter CPU each: the config's workers join the same two cores), whose
    test runs last and ends it; the config's workers are placed on it by its address. Nothing of
    it survives the module, even when a test fails."""
    tmp = tempfile.mkdtemp(prefix="fqray", dir="/tmp")  # (short: Ray's sockets live under it)
    config = Path(tmp) / "owners.toml"
    log = Path(tmp) / "up.log"  # (a file: Ray's worker logs in a pipe nobody reads could stall it)
    with log.open("w") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "fedq", "up", "--on", "ray", "--owners", str(OWNERS), "--num-cpus", "0.25",
             "--write-config", str(config), "--timeout", str(TIMEOUT)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=_ray_environment(tmp),
        )  # fmt: skip
    try:
        ready, _, _ = select.select([up.stdout], [], [], 330)  # (past up_on_ray's 300 s: its own error, if any, shows)
        placed = up.stdout.readline() if ready else ""
        found = re.search(r" on Ray at (\S+); clients join by ", placed)
        assert found, (placed, log.read_text())
        yield {"tmp": tmp, "up": up, "config": config, "log": log, "placed": placed, "address": found.group(1)}
    finally:
        if up.poll() is None:
            stop(up, timeout=30)
        _kill_all(tmp)  # (whatever failed: nothing of it is left)
        shutil.rmtree(tmp, ignore_errors=True)


def test_workers_placed_on_ray_serve_the_config_and_a_killed_one_stops_them_all(hook, ray_instance):
    """A config's workers placed on a running cluster (`--ray-address`): the cluster is not
    theirs, so it stays when they stop; a Ray instance the command starts itself goes with it
    (the owners' test, last)."""
    tmp = ray_instance["tmp"]
    ports = {"r1": free_port(), "r2": free_port()}
    write_key_file(Path(tmp) / "session.key", sy.local_client().key)  # (this process joins as a client)
    config = Path(tmp) / "ray.toml"
    config.write_text(
        f'[federation]\ntimeout = {TIMEOUT}\nkey_file = "{tmp}/session.key"\n'
        + "".join(f'[workers.{n}]\naddress = "tcp://127.0.0.1:{p}"\n' for n, p in ports.items())
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "fedq", "up", "--on", "ray", "--config", str(config), "--ray-address", ray_instance["address"], "--num-cpus", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ray_environment(tmp),
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
        r1_pid = r1.ping().pid
        os.kill(r2.ping().pid, signal.SIGKILL)  # (as if its node died)
        started = time.monotonic()
        with pytest.raises(sy.WorkerUnreachableError, match="'r2'"):
            r2.ping()
        assert time.monotonic() - started < TIMEOUT + 2
        out, err = up.communicate(timeout=60)  # it notices, and stops r1
        assert up.returncode == 1 and "worker r2 exited; stopping the others" in err, (out, err)
        assert gone(r1_pid, 20)
        with pytest.raises(sy.WorkerUnreachableError):
            r1.ping(timeout=1)
        assert ray_instance["up"].poll() is None and _ray_processes(tmp)  # the cluster it joined is not its own to stop
    finally:
        if up.poll() is None:
            stop(up, timeout=30)


ROUND_CLIENT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import torch as th, fedq as sy
    from fedq.federated import find_owner_data, train_on_trusted_aggregator
    from torch import nn

    config, n, TIMEOUT = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    began = time.monotonic()
    hook = sy.TorchHook(th)
    seconds = {}  # since the imports
    deadline = time.monotonic() + 150
    while not os.path.exists(config):  # written once Ray has placed every actor
        assert time.monotonic() < deadline, "no config written"
        time.sleep(0.2)
    seconds["config written"] = time.monotonic() - began
    names = [f"owner{i}" for i in range(n)] + ["aggregator"]
    handles = {name: sy.connect(hook, name, config=config) for name in names}
    client = hook.local_worker
    for w in handles.values():
        while True:  # the actors may still be importing torch
            try:
                w.ping(timeout=2)
                break
            except sy.WorkerUnreachableError:
                assert time.monotonic() < deadline, f"{w.id} did not come up"
    seconds["all answering"] = time.monotonic() - began
    out = {"seconds": seconds, "addresses": {name: w.address for name, w in handles.items()}, "pids": {name: w.ping().pid for name, w in handles.items()}}

    # The trusted-aggregator round over the generated owners, through the public API.
    owners = find_owner_data([handles[f"owner{i}"] for i in range(n)])
    out["shard shapes"] = [list(x.shape) for x, _ in owners]
    th.manual_seed(0)
    model = nn.Linear(owners[0][0].shape[1], 1)
    before = model.weight.detach().clone()
    for w in handles.values():  # (a worker's first DP release loads OpenDP: longer than 3 s on a busy machine)
        client.peers.timeouts[w.address] = 60.0
    rounds = train_on_trusted_aggregator(model, owners, handles["aggregator"], rounds=1, local_steps=1, lr=0.1, progress=False)
    for w in handles.values():
        client.peers.timeouts[w.address] = TIMEOUT
    out["round losses"] = sorted(rounds[0].losses)
    out["model trained"] = bool(th.isfinite(model.weight).all()) and not th.equal(model.weight.detach(), before)
    seconds["round done"] = time.monotonic() - began
    del owners

    # One owner's worker process killed, as its node dying would: a call to it fails within the timeout, naming it.
    victim = f"owner{n - 1}"
    os.kill(out["pids"][victim], signal.SIGKILL)
    started = time.monotonic()
    try:
        handles[victim].ping()
        out["killed"] = "answered"
    except sy.WorkerUnreachableError as error:
        out["killed"] = str(error).splitlines()[0]
    out["killed after"] = time.monotonic() - started
    print(json.dumps(out), flush=True)
    """
)


def test_generated_owners_on_ray_serve_a_round_and_a_killed_one_fails_within_the_timeout(ray_instance):
    """`fedq up --on ray --owners 3` (the module's instance): owner0..owner2 (each its housing
    shard) and an aggregator, each bound at its node's address, found by the config the command
    wrote (CURVE on, keys beside it); a client in another process joins by that file and runs a
    trusted-aggregator round; one owner's process SIGKILLed fails calls within the config's
    timeout, naming it, and the command stops the rest and the Ray instance it started: no
    process of it survives."""
    tmp, up, config = ray_instance["tmp"], ray_instance["up"], ray_instance["config"]
    assert ray_instance["placed"].startswith("placed owner0, owner1, owner2, aggregator on Ray at ")
    client = subprocess.Popen(
        [sys.executable, "-c", ROUND_CLIENT, str(config), str(OWNERS), str(TIMEOUT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = client.communicate(timeout=240)
        assert client.returncode == 0, (stderr, ray_instance["log"].read_text())
        out = json.loads(stdout.strip().splitlines()[-1])
        print(out)  # (the timings, in the report of a failing run)
        names = [f"owner{i}" for i in range(OWNERS)]
        addresses = out["addresses"]
        assert all(a.startswith("tcp://") for a in addresses.values()) and len(set(addresses.values())) == OWNERS + 1
        assert len(set(out["pids"].values())) == OWNERS + 1  # a process each
        assert out["shard shapes"] == [[64, 4]] * OWNERS  # each owner's synthetic houses
        assert out["round losses"] == names and out["model trained"] is True
        victim = f"owner{OWNERS - 1}"
        assert f"'{victim}'" in out["killed"] and f"within {TIMEOUT}s" in out["killed"], out["killed"]
        assert out["killed after"] < TIMEOUT + 2
        assert up.wait(60) == 1  # it notices, and stops the other owners, the aggregator and Ray
        assert f"worker {victim} exited; stopping the others" in ray_instance["log"].read_text()
        survivors = [pid for name, pid in out["pids"].items() if name != victim and not gone(pid, 20)]
        assert survivors == []
        deadline = time.monotonic() + 20
        while _ray_processes(tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ray_processes(tmp) == []
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
