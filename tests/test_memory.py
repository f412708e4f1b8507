"""A worker reuses the memory it freed (settings.WorkerSettings.retained_free_bytes): a model's
tensors sent, trained and freed every round land in pages the worker already has, rather than in
fresh ones the kernel must fault in and zero, 4 KiB at a time (issue 17's workload C)."""

from __future__ import annotations

import time
from pathlib import Path

import torch as th

from fedq.bench.procmem import rss_bytes
from fedq.heap import IDLE_SECONDS

MiB = 1 << 20
PAGE = 4096


def minor_faults(pid: int) -> int:
    """Page faults the process has taken that needed no disk: every fresh page is one."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # (minflt: field 10 of proc(5), counted after the ")" of the name)



def round_trip(worker, payload: th.Tensor) -> None:
    pointer = payload.send(worker)
    doubled = pointer + pointer  # (a result as large as the payload, made on the worker)
    assert th.equal(doubled.get(), payload + payload)
    del pointer


def test_large_transfers_settle_into_pages_the_worker_already_has(hook, bob):
    payload = th.arange(48 * MiB // 4, dtype=th.float32)  # (over glibc's 32 MiB cap for a block from its heap)
    for _ in range(10):  # (the first ones' pages are new: the heap grows until its free blocks fit a round trip: 8 here)
        round_trip(bob, payload)
    hook.local_worker.sync()
    for _ in range(2):
        before = minor_faults(bob.pid)
        round_trip(bob, payload)
        hook.local_worker.sync()
        fresh_pages = minor_faults(bob.pid) - before
        # A transfer in and a result as large: 2 x 12,288 fresh pages every time with glibc's defaults.
        assert fresh_pages < payload.nbytes // PAGE // 4, f"{fresh_pages} fresh pages for a settled 48 MiB round trip"


def test_an_idle_worker_gives_the_memory_it_kept_back(hook, bob):
    payload = th.arange(48 * MiB // 4, dtype=th.float32)
    hook.local_worker.sync()
    time.sleep(IDLE_SECONDS + 0.3)  # (what earlier tests left kept is given back first)
    at_rest = rss_bytes(bob.pid)
    for _ in range(4):
        round_trip(bob, payload)
    hook.local_worker.sync()
    assert rss_bytes(bob.pid) - at_rest > payload.nbytes  # (kept while busy: the test above)
    time.sleep(IDLE_SECONDS + 0.3)
    assert rss_bytes(bob.pid) - at_rest < 8 * MiB, "an idle worker still holds the memory its transfers freed"
