"""`fedq bench`: fedq against the raw pyzmq floor and its peers, on the same work (issue #4).

    floor.py       raw pyzmq DEALER <-> ROUTER echo in a child process (ipc, tcp loopback)
    torch_rpc.py   torch.distributed.rpc over TensorPipe, two child processes
    syft029.py     PySyft 0.2.9, only if /tmp/syft029/bin/python exists
    fedq_work.py   fedq itself, through its public API, on worker processes it starts
    fl.py          --fl: issue 17's FedAvg workloads as fedq rounds (flworkloads.py: models, shards,
                   plain torch's FedAvg), Flower beside them when installed (flower.py, _flower_probe.py)
    startup.py     starting N workers, python -c and from the zygote: time until all answer, PSS each
    hosts.py       network namespaces as hosts (tests/test_netns.py's too): (x + x).get() and 64 MiB across two,
                   tcp + CURVE, beside loopback with and without CURVE (_hosts_probe.py: the client there)
    targets.py     the issue's targets and the checks of figures against them
    report.py      the rich table and the JSON file
    suite.py       the plan (full or --quick) and the order sections run in
    timing.py      medians over repeats, shared by all of the above
    payload.py     the tensors every section moves
    procmem.py     RSS, peak RSS and PSS of a process, from /proc
    ports.py       free loopback ports
    lifeline.py    child processes exit when the benchmark does
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .suite import Plan


def run_bench(
    quick: bool = False, json_path: Path | None = None, log: Callable[[str], None] = lambda _: None, *, record_baseline: bool = False
) -> dict[str, Any]:
    """Measure, print the table, write the JSON; the results (exit code in results["gate"])."""
    from .report import show, write_json
    from .suite import run

    results = run(Plan.reduced() if quick else Plan.full(), log, record_baseline=record_baseline)
    show(results)
    if json_path is not None:
        write_json(results, json_path)
    return results


def run_fl_bench(quick: bool = False, json_path: Path | None = None, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """`fedq bench --fl`: the FedAvg workloads (fl.py), Flower beside them if installed; prints and writes as run_bench."""
    from .fl import run_fl, show_fl
    from .report import write_json

    results = run_fl(quick, log)
    show_fl(results)
    if json_path is not None:
        write_json(results, json_path)
    return results


__all__ = ["Plan", "run_bench", "run_fl_bench"]
