"""Small helpers several test files share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest
import zmq

from fedq.bench.procmem import gone  # noqa: F401  (the tests' too)


def free_port() -> int:
    """A loopback tcp port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """Teardown: SIGTERM (a `fedq up` or honcho stops its workers), then SIGKILL if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def raw_dealer(address: str) -> zmq.Socket:
    """A bare DEALER connected to a worker: what an attacker (or a hand-crafted client) talks through."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def owner_reads(worker, pointer):
    """The exact values behind a private `pointer`, as its data owner lets them out: a request
    (this process started `worker`, so it holds the admin key) approved, then fetched."""
    worker.approve(pointer.request(reason="the test reads what its own data owner holds"))
    return pointer.get()


def refused(leak) -> bool:
    """Whether `leak()` is refused as a release (GetNotPermittedError, NotReleasableError among them)."""
    import fedq as sy

    try:
        leak()
    except sy.GetNotPermittedError:
        return True
    return False


def trained_update(owner):
    """One SGD step of a linear model on a secagg owner's private data: a private (1, 4) weight."""
    import torch as th
    from torch import nn, optim

    data, target = owner.search("#data")[0], owner.search("#target")[0]
    th.manual_seed(1)
    model = nn.Linear(4, 1).send(owner)
    opt = optim.SGD(model.parameters(), lr=0.01)
    opt.zero_grad()
    ((model(data) - target) ** 2).mean().backward()
    opt.step()
    return model.weight


def succeeds(why: str):
    """Marks a red-team attack that succeeds today (its test asserts the safe outcome): strict,
    so the test fails once the hole is closed and the mark must go; an AssertionError only."""
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"REDTEAM: SUCCEEDS: {why}")
