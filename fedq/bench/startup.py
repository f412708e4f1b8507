"""Starting workers (issue 17): how long N workers take to start and answer, and what each costs
in memory once idle, two ways in one run: each a fresh `python -c` interpreter that imports torch
(fedq before the zygote, `fork=False`), and forked from the zygote (today's default).

Time is from the first start to the last worker's answer to a ping, so the zygote's own start
(its imports) is inside the first count's figure: the bench stops it between counts. Memory is
PSS (/proc/PID/smaps_rollup: each page shared by k processes counts 1/k), what N workers really
add to the machine, taken after every worker has answered and sat idle for a moment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fedq import launcher
from fedq.client import local_client
from fedq.codec import new_incarnation
from fedq.handle import VirtualWorker
from fedq.peers import stop_processes
from fedq.transport import runtime_dir

from .payload import MIB
from .procmem import pss_bytes

WAYS = {"python -c": False, "zygote": True}


def start_and_answer(client: Any, count: int, fork: bool) -> dict[str, Any]:
    """Start `count` workers at once (`fork`: from the zygote), wait until each answers; their PSS idle."""
    directory = Path(tempfile.mkdtemp(prefix="bench-start-", dir=runtime_dir()))
    processes, handles = [], []
    try:
        started = time.perf_counter()
        for i in range(count):
            address, incarnation = f"ipc://{directory}/w{i}.sock", new_incarnation()
            processes.append(launcher.start_worker_process(
                f"start{i}", address, key=client.key, fork=fork, together=count, incarnation=incarnation, quiet=True,
                timeout=client.timeout))  # fmt: skip
            handles.append(VirtualWorker.at(client, f"start{i}", address))
            # (as a VirtualWorker's: our child, no hello needed, and never renewed once it exited)
            client.peers.register(address, f"start{i}", processes[-1], incarnation=incarnation)
        for handle in handles:
            handle.ping(timeout=300)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)  # (idle: what a worker settles at, not its first answer's)
        pss = [pss_bytes(p.pid) for p in processes]
        zygote = launcher.zygote_pid() if fork else None
        zygote_pss = pss_bytes(zygote) if zygote else None
        known = [b for b in pss if b is not None]
        return {
            "workers": count,
            "seconds": elapsed,
            "pss_per_worker_mib": sum(known) / len(known) / MIB if known else None,
            # the zygote's share too: what the N workers and their zygote cost together, per worker
            "pss_per_worker_with_zygote_mib": (sum(known) + (zygote_pss or 0)) / len(known) / MIB if known else None,
            "zygote_pss_mib": None if zygote_pss is None else zygote_pss / MIB,
        }
    finally:
        stop_processes(processes, timeout=10.0)
        shutil.rmtree(directory, ignore_errors=True)


def measure_startup(counts: tuple[int, ...], *, quick: bool = False) -> dict[str, Any]:
    """Each count, each way, in this process: {way: {count: figures}}. `quick` (CI's smoke run):
    the zygote only, warm (not stopped first), since each cold start imports torch again."""
    client = local_client()
    results: dict[str, Any] = {"cores": launcher.machine_cores(), "loadavg": os.getloadavg(), "zygote_cold": not quick}
    for way, fork in WAYS.items():
        if quick and not fork:
            continue
        results[way] = {}
        for count in counts:
            if fork and not quick:
                launcher.stop_zygote()  # (each count's figure includes the zygote's start)
            results[way][str(count)] = start_and_answer(client, count, fork)
    return results
