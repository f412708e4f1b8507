"""One process, several threads: whichever thread waits drives the sockets, the others follow."""

from __future__ import annotations

import gc
import threading
import time

import torch as th

import fedq as sy


def _in_threads(count: int, work) -> list:
    """Run `work(i)` on `count` threads at once; their results, or the first error raised."""
    results: list = [None] * count
    errors: list = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a thread is still waiting: the sockets were never handed on"
    if errors:
        raise errors[0]
    return results


def test_threads_computing_at_once_each_get_their_own_answers(bob, alice):
    workers = [bob, alice, bob, alice]

    def work(i: int) -> list:
        x = th.full((3,), float(i)).send(workers[i])
        return [(x + x * k).get().tolist() for k in range(40)]

    for i, answers in enumerate(_in_threads(len(workers), work)):
        assert answers == [[i + i * k] * 3 for k in range(40)]
    assert sy.local_client().stats()["requests_in_flight"] == 0


def _delete_answered(client, sent_before: int, timeout: float = 5.0) -> bool:
    """Poll the client's counters (no request of our own) until a delete was sent and answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = client.stats()
        if stats["bytes_sent"] > sent_before and stats["ref_updates_in_flight"] == 0:
            return True
        time.sleep(0.01)
    return False


def test_a_delete_goes_out_while_another_thread_waits_for_a_slow_op(bob, alice):
    client = sy.local_client()
    a = th.rand(3500, 3500).send(bob)
    doomed = th.ones(4).send(alice)
    client.sync()
    finished: dict[str, float] = {}

    def work(i: int) -> None:
        nonlocal doomed
        if i == 0:  # a slow op on bob (one op: no deletes of its own), waited for: this thread drives the sockets
            (a @ a).get()
            finished["slow"] = time.monotonic()
        else:  # frees a pointer to alice meanwhile: the waiting thread sends the delete
            while client.stats()["requests_in_flight"] == 0:  # until the slow op is on its way
                time.sleep(0.001)
            sent = client.stats()["bytes_sent"]
            doomed = None  # (the last reference: freed right here, no collection needed)
            assert _delete_answered(client, sent)
            finished["freed"] = time.monotonic()

    _in_threads(2, work)
    assert finished["freed"] < finished["slow"]
    assert len(alice._objects) == 0


def test_a_pointer_freed_while_nobody_waits_is_freed_on_its_worker(bob):  # (by the background thread)
    client = sy.local_client()
    x = th.ones(4).send(bob)
    assert len(bob._objects) == 1
    sent = client.stats()["bytes_sent"]
    del x
    gc.collect()
    assert _delete_answered(client, sent), "the delete was not sent while the caller did not wait"
    assert len(bob._objects) == 0


def test_a_pointer_dying_on_another_thread_is_freed(bob):
    x = th.ones(4).send(bob)
    holder = [x]
    del x
    _in_threads(1, lambda i: holder.clear())
    gc.collect()
    assert len(bob._objects) == 0
