"""Workers forked from the client's zygote (issue 17): they start fast, still die with the client
(even on kill -9), the zygote never outlives it, and a fork inherits nothing of the client's:
not its sockets, not its threads, and no key on any command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch as th

import fedq as sy
from fedq import launcher, zygote
from helpers import gone


def _fds(pid: int) -> dict[str, str]:
    """{fd: what it is} of process `pid` ("socket:[1234]", "pipe:[...]", a path)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def test_a_worker_forked_after_the_client_opened_sockets_works_and_holds_none_of_them(hook, bob, alice):
    """The session's client has sockets to bob and alice (and threads) by now: a worker started
    now is forked from the zygote, which never had them. It answers, computes, and among its fds
    there is none of the client's sockets; the zygote has one thread and no key anywhere."""
    (th.ones(2).send(bob) + 1).get()  # (the client's sockets are open and in use)
    worker = sy.VirtualWorker(hook, id="forked_late")
    try:
        assert th.equal((th.tensor([1.0, 2.0]).send(worker) * 3).get(), th.tensor([3.0, 6.0]))
        assert isinstance(worker.process, sy.zygote.ForkedProcess)
        zygote = launcher.zygote_pid()
        assert zygote is not None and worker.ping().pid == worker.pid
        assert Path(f"/proc/{worker.pid}/status").read_text().count(f"PPid:\t{zygote}\n") == 1  # forked by the zygote
        ours = {what for what in _fds(os.getpid()).values() if what.startswith("socket:")}
        theirs = {what for what in _fds(worker.pid).values() if what.startswith("socket:")}
        assert theirs and not theirs & ours, "the worker holds one of the client's sockets"
        assert len(os.listdir(f"/proc/{zygote}/task")) == 1  # no threads: a fork keeps only the forking one
        assert sum(what.startswith("socket:") for what in _fds(zygote).values()) == 1  # its control socket, no other
        key = sy.local_client().key.hex()
        for pid in (zygote, worker.pid):
            assert key not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert key not in Path(f"/proc/{zygote}/environ").read_bytes().decode(errors="replace")
    finally:
        worker.shutdown()
    assert worker.process.returncode == 0


def test_a_worker_and_its_zygote_die_with_the_script_that_started_them_on_kill_9():
    script = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import time, torch as th, fedq as sy
            from fedq import launcher, zygote
            hook = sy.TorchHook(th)
            worker = sy.VirtualWorker(hook, id="child")
            print((th.tensor([2]).send(worker) * 2).get().item(), worker.pid, launcher.zygote_pid(), flush=True)
            time.sleep(60)
            """
        )],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        value, worker, zygote = script.stdout.readline().split()
        assert value == "4"
        script.send_signal(signal.SIGKILL)
        script.wait(10)
        assert gone(int(worker), within=10), "a worker outlived its script"
        assert gone(int(zygote), within=10), "the zygote outlived its script"
    finally:
        script.kill()
        script.wait()


def _fork(z: zygote.Zygote, source: str, env: dict[str, str] | None = None) -> tuple[zygote.ForkedProcess, int]:
    """`source` forked by `z`, its stdout a pipe (the read end returned) and its lifeline ours."""
    lifeline_r, lifeline_w = os.pipe()
    out_r, out_w = os.pipe()
    seq = z.fork(source, ["an argument"], env or {}, (lifeline_r, out_w, 2))
    os.close(lifeline_r), os.close(out_w)
    return zygote.ForkedProcess(z, seq, os.fdopen(lifeline_w, "wb", buffering=0), lambda: None, ["test"]), out_r


def test_a_fork_runs_as_python_c_would_and_dies_with_its_zygote():
    """A zygote of our own (nothing preloaded: instant): a fork sees its argv and only the
    environment it was sent, its exit code comes back, and when the zygote is killed its forks die
    with it (their parent-death signal), which their handles report."""
    z = zygote.Zygote((), {"PATH": os.environ.get("PATH", "")})
    try:
        shown, out = _fork(z, "import os, sys; print(sys.argv[1:], sorted(os.environ)); sys.exit(3)", {"FEDQ_KEY": "ab" * 32})
        assert shown.wait(30) == 3
        with os.fdopen(out) as text:
            assert text.read().strip() == "['an argument'] ['FEDQ_KEY']"
        sleeper, _ = _fork(z, "import time; time.sleep(60)")
        pid = sleeper.pid
        assert sleeper.poll() is None
        z.process.kill()
        assert sleeper.wait(10) == -signal.SIGKILL
        assert gone(pid, within=10)
    finally:
        z.close()


def test_a_worker_started_without_the_zygote_is_the_same_program(hook):
    """`fork=False` (FEDQ_ZYGOTE=0's way): a fresh `python -c` interpreter, with the same settings."""
    process = launcher.start_worker_process(
        "fresh", f"ipc://{sy.transport.runtime_dir()}/fresh-{os.getpid()}.sock", key=sy.local_client().key, fork=False, threads=1, quiet=True
    )
    try:
        assert isinstance(process, subprocess.Popen)
        handle = sy.connect(hook, "fresh", address=f"ipc://{sy.transport.runtime_dir()}/fresh-{os.getpid()}.sock")
        status = handle.ping(timeout=60)
        assert status.pid == process.pid and status.threads == 1
    finally:
        process.stdin.close()  # (its lifeline: it exits by itself)
        assert process.wait(30) == 0
