"""Leases (issue 12, class 5): nothing is left behind when its holder dies, nothing live is
freed early. Real worker processes with a short lease; a separate client process killed
with SIGKILL; a chain whose middle dies; a relay that times out while its next hop is
stopped (SIGSTOP). Every wait is a generous bound, never a timing assertion."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch as th

import fedq as sy
from fedq.keys import environment_with_key

LEASE = 2.0  # seconds: short, so that a lapse happens within a test
BOUND = 30.0  # seconds: what "eventually" means here (a bound, not a timing)


def eventually(condition, what: str, bound: float = BOUND):
    deadline = time.monotonic() + bound
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {bound:g}s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def leased(hook):
    """Workers of this module, started at once: each test has its own, so counts are its own."""
    ids = ("lease_killed_client", "lease_idle", "lease_last_c", "lease_middle_c", "lease_last_d", "lease_middle_d")
    workers = {
        "killed_client": sy.VirtualWorker(hook, id=ids[0], lease_seconds=LEASE),
        "idle": sy.VirtualWorker(hook, id=ids[1], lease_seconds=LEASE),
        "last_c": sy.VirtualWorker(hook, id=ids[2], lease_seconds=LEASE),
        "middle_c": sy.VirtualWorker(hook, id=ids[3], lease_seconds=LEASE),
        "last_d": sy.VirtualWorker(hook, id=ids[4], lease_seconds=LEASE),
        "middle_d": sy.VirtualWorker(hook, id=ids[5], lease_seconds=LEASE, timeout=1.0),
    }
    for worker in workers.values():
        worker.ping(timeout=60)
    yield workers
    for worker in workers.values():
        if worker.process.poll() is None:
            os.kill(worker.process.pid, signal.SIGCONT)  # (a test stopped it: it must be able to exit)
            try:
                worker.shutdown(timeout=5)
            except sy.FedqError:
                pass
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(10)
        assert worker.process.poll() is not None


def held(worker) -> int:
    """Every object `worker` holds, whoever holds it (a client's own listing shows only its own)."""
    return worker.ping().objects


CLIENT = textwrap.dedent(
    """
    import sys, time
    import torch as th
    import fedq as sy

    hook = sy.TorchHook(th)
    worker = sy.connect(hook, "lease_killed_client", address=sys.argv[1])
    kept = th.arange(1000.0).send(worker)
    doubled = kept * 2
    assert worker.objects_count() == 2
    large = th.ones(4 << 20).send(worker)  # 16 MiB on its way, maybe not all there when we die
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_client_killed_mid_transfer_leaves_nothing_behind(hook, leased):
    worker = leased["killed_client"]
    assert held(worker) == 0
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, worker.address], stdout=subprocess.PIPE, env=environment_with_key(hook.local_worker.key)
    )
    try:
        assert client.stdout.readline().strip() == b"ready"
        assert held(worker) >= 2
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    eventually(lambda: held(worker) == 0, "the dead client's objects are freed after its lease")


def test_an_idle_client_keeps_what_it_holds(leased):
    worker = leased["idle"]
    x = th.tensor([1.0, 2.0, 3.0]).send(worker)
    y = x + 1
    assert worker.objects_count() == 2
    time.sleep(2 * LEASE)  # idle: only the client's heartbeats reach the worker (unrenewed, a lease lapses within 1.25 LEASE)
    assert worker.objects_count() == 2
    assert th.equal(y.get(), th.tensor([2.0, 3.0, 4.0]))
    assert th.equal(x.get(), th.tensor([1.0, 2.0, 3.0]))
    rows = worker.describe()
    assert rows == []


def test_the_lease_shows_in_the_listing(leased):
    worker = leased["idle"]
    x = th.ones(2).send(worker)
    (row,) = worker.describe()
    (lease,) = row.leases
    since, left = lease
    assert 0 <= since <= LEASE and 0 <= left <= LEASE
    assert worker.ping().lease_seconds == LEASE
    del x


def _chain_held_by_the_middle(middle, last):
    """`ones(3)` on `last`, pointed at from `middle`: the reference at the last hop is the middle's."""
    x = th.ones(3).send(last).send(middle)
    sy.local_client().sync()  # the hand-over has reached the last hop
    assert held(last) == 1
    return x


def test_the_last_hop_frees_what_a_dead_middle_held(leased):
    middle, last = leased["middle_c"], leased["last_c"]
    x = _chain_held_by_the_middle(middle, last)
    time.sleep(2 * LEASE)  # the middle renews its lease at the last hop while it lives (unrenewed, lapsed within 1.25 LEASE)
    assert held(last) == 1
    middle.process.kill()
    middle.process.wait()
    eventually(lambda: held(last) == 0, "the last hop frees what the dead middle held")
    del x


def test_a_relay_that_timed_out_frees_what_it_created_downstream(leased):
    middle, last = leased["middle_d"], leased["last_d"]
    x = _chain_held_by_the_middle(middle, last)
    os.kill(last.process.pid, signal.SIGSTOP)
    try:
        y = x + x  # the middle relays it to the stopped last hop and gives up after its timeout (1 s)
        with pytest.raises(sy.FedqError):
            y.get()
    finally:
        os.kill(last.process.pid, signal.SIGCONT)
    # What the middle relays from now on reaches the last hop after the timed-out op and the
    # delete sent for its result: once a later op's result is back, both have been handled.
    assert th.equal((x * 3).get().get(), th.full((3,), 3.0))
    assert held(last) == 1  # only x, still held by the live middle
    assert th.equal(x.get().get(), th.ones(3))
    assert held(last) == 0
