"""Hosts as network namespaces (issue 18): the namespaces themselves, and the bench's figures across them.

`Namespaces` makes hosts of network namespaces joined by veth pairs to a bridge in a namespace of
its own, runs processes in them and removes every one of them again; tests/test_netns.py builds
its federation with it. `measure_hosts` is `fedq bench`'s `hosts` section: the lesson's
`(x + x).get()` and a 64 MiB send + get from a client in one namespace to a worker in another
(tcp, CURVE), beside the same to a worker on the client's own loopback with CURVE, and (from this
process) over loopback without it: the network path's cost and CURVE's, in one run. Needs root and
`ip`; elsewhere the section says why and measures nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .procmem import gone

#: the bench's two hosts (the addresses live only inside its own namespaces)
BENCH_HOSTS = {"worker": "10.78.0.1", "client": "10.78.0.2"}
PORT = 5601  # (each namespace has ports of its own)
PROBE = "fedq.bench._hosts_probe"  # (run with -m in the client's namespace)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def why_not() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) on this machine"
    probe = f"fqprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Namespaces:
    """Hosts as namespaces, their veths and processes; `close()` removes every one, whatever failed.
    `tag` keeps two sets apart (a test's, the bench's): namespace names are the machine's."""

    def __init__(self, hosts: dict[str, str], tag: str = "") -> None:
        tag = f"{tag}{os.getpid() % 100000}"
        self.hosts = hosts  # name -> its address (a /24 shared by all)
        self.ns = {name: f"fq{tag}{name[:2]}" for name in hosts}
        self.switch = f"fq{tag}sw"
        self.processes: list[subprocess.Popen] = []
        self.made: list[str] = []

    def build(self) -> None:
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (name, address) in enumerate(self.hosts.items()):
            ns = self.ns[name]
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # One end in the host's namespace (eth0), the other on the switch's bridge.
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{i}", "netns", self.switch)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.switch, "link", "set", f"port{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"port{i}", "up")

    def run(self, host: str, argv: list[str], bundle: Path | None = None, mount_at: Path | None = None, **popen: Any) -> subprocess.Popen:
        """`argv` inside `host`'s namespace; with `bundle`, seeing only that key bundle at
        `mount_at` (a bind mount in the mount namespace `ip netns exec` makes for it)."""
        script = f'mount --bind "{bundle}" "{mount_at}" && exec "$@"' if bundle is not None else 'exec "$@"'
        process = subprocess.Popen(["ip", "netns", "exec", self.ns[host], "sh", "-c", script, "sh", *argv], **popen)
        self.processes.append(process)
        return process

    def link(self, host: str, up: bool) -> None:
        _ip("-n", self.ns[host], "link", "set", "eth0", "up" if up else "down")

    def close(self) -> list[str]:
        """Stop every process, delete every namespace; what survived (should be nothing)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for ns in self.made:
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:  # (anything a process there left behind)
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", ns, check=False)  # (its veths go with it)
        listed = _ip("netns", "list", check=False).stdout.split()
        return [ns for ns in self.made if ns in listed] + [str(p.pid) for p in self.processes if not gone(p.pid, 5)]


def _federation(directory: Path, port: int) -> Path:
    """A CURVE config of two workers, `far` on the worker host and `near` on the client's loopback,
    and every key it needs, all in `directory` (one machine: no bundles to keep apart)."""
    from fedq.codec import new_key
    from fedq.keys import write_curve_pairs, write_key_file

    write_key_file(directory / "fed.key", new_key())
    curve = directory / "curve"
    write_curve_pairs(curve, ["far", "near", "client"])
    config = directory / "hosts.toml"
    config.write_text(
        f'[federation]\ntimeout = 60\nkey_file = "{directory / "fed.key"}"\ncurve = true\ncurve_dir = "{curve}"\n'
        f'[workers.far]\naddress = "tcp://{BENCH_HOSTS["worker"]}:{port}"\nhost = "worker"\n'
        f'[workers.near]\naddress = "tcp://127.0.0.1:{port}"\nhost = "client"\n'
    )
    return config


def measure_paths(fleet: Any, workers: dict[str, Any], *, number: int, repeats: int, transfer_repeats: int, size_mib: int) -> dict[str, Any]:
    """The lesson's `(x + x).get()` and a send + get of `size_mib` MiB on each of `workers` ({path:
    worker}): the same work on every path. The latency samples are taken in turn, one path's then
    the next's, so that what other processes do to this machine falls on every path alike."""
    import torch

    from .fedq_work import measure_transfer
    from .payload import small_tensor
    from .timing import per_call, summarize

    t = small_tensor()
    xs = {path: t.send(worker) for path, worker in workers.items()}
    for path, x in xs.items():
        if not torch.equal((x + x).get(), t + t):
            raise RuntimeError(f"fedq computed x + x wrong on {workers[path].id}")
        for _ in range(number):  # (warm-up: first-use costs, as per_call's)
            (x + x).get()
    samples: dict[str, list[float]] = {path: [] for path in xs}
    for _ in range(repeats):
        for path, x in xs.items():
            samples[path].append(per_call(lambda x=x: (x + x).get(), number=number, repeats=1).median)
    return {
        path: {"latency": summarize(samples[path], number).to_json(), "transfer": measure_transfer(fleet, worker, size_mib, repeats=transfer_repeats)}
        for path, worker in workers.items()
    }


def _plaintext(number: int, repeats: int, transfer_repeats: int, size_mib: int) -> dict[str, Any]:
    """The same over loopback without CURVE, from this process, to a worker it starts."""
    import torch

    import fedq as sy

    from .fedq_work import Fleet

    fleet = Fleet(sy.TorchHook(torch))
    try:
        worker = fleet.tcp("hosts-plain")
        worker.ping(timeout=120)
        return measure_paths(fleet, {"loopback": worker}, number=number, repeats=repeats, transfer_repeats=transfer_repeats, size_mib=size_mib)["loopback"]
    finally:
        fleet.close()


def measure_hosts(
    *, number: int, repeats: int, transfer_repeats: int, size_mib: int = 64, timeout: float = 300.0, workdir: Path | None = None
) -> dict[str, Any]:
    """Figures per path: "namespaces" (tcp + CURVE, client and worker on two hosts), "loopback_curve"
    (tcp + CURVE, the client's own loopback), "loopback" (tcp, no CURVE); or {"status": "skipped",
    "reason": ...} where namespaces cannot be made. Every namespace and process made is gone
    when it returns or raises ("left_behind" lists any that were not: none). Its config and keys go
    in a new directory in `workdir` (default: the system's temporary directory), removed after."""
    why = why_not()
    if why is not None:
        return {"status": "skipped", "reason": why}
    directory = Path(tempfile.mkdtemp(prefix="fedq-hosts-", dir=workdir))
    spaces = Namespaces(BENCH_HOSTS, tag="b")
    try:
        config = _federation(directory, PORT)
        spaces.build()
        logs = {name: directory / f"{name}.log" for name in ("far", "near")}
        for name, host in (("far", "worker"), ("near", "client")):
            with logs[name].open("w") as log:  # (a file, not a pipe nobody reads: a full pipe would stall the worker)
                spaces.run(host, [sys.executable, "-m", "fedq", "worker", name, "--config", str(config)], stderr=log)
        # Started with the workers (it waits for them): the imports overlap.
        probe = spaces.run(
            "client", [sys.executable, "-m", PROBE, str(config), json.dumps([number, repeats, transfer_repeats, size_mib])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            stdout, stderr = probe.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the probe in the client's namespace took more than {timeout:g} s") from None
        if probe.returncode != 0:
            said = {name: log.read_text().strip().splitlines()[-1:] for name, log in logs.items()}
            raise RuntimeError(f"the probe in the client's namespace failed: {stderr.strip().splitlines()[-1:]}; the workers said {said}")
        results: dict[str, Any] = {"status": "ok", **json.loads(stdout.strip().splitlines()[-1])}
    finally:
        left = spaces.close()
        shutil.rmtree(directory, ignore_errors=True)
    # After the namespaces are gone: nothing else of this section runs beside it.
    results["loopback"] = _plaintext(number, repeats, transfer_repeats, size_mib)
    results["left_behind"] = left
    return results
