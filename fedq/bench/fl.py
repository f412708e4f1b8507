"""`fedq bench --fl`: issue 17's FedAvg workloads as fedq rounds, with Flower as an optional peer.

Each workload (flworkloads.py) starts its own owners and aggregator, sends each owner its shard,
and runs `train_on_trusted_aggregator` one round at a time through the public API: one warm-up
round, then the timed ones. Per workload: the round time (median), the waits per round
(`hook.local_worker.stats()["waits"]`), start-up (from starting the workers to the end of the
first round, less one timed round: what Flower's figure means too), the PSS of this process and
every process under it after the rounds, and how far the weights are from plain torch's FedAvg.
Flower (flower.py) runs the same workloads afterwards, never beside fedq (two cores).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable

import torch

import fedq as sy
from fedq.federated import train_on_trusted_aggregator

from .fedq_work import Fleet
from .flower import FLWR_PYTHON_ENV, measure_flower
from .flworkloads import LR, Workload, fedavg, max_difference, model, shard, workloads
from .procmem import tree_pss
from .targets import Bound, Check, _check

#: both FedAvgs must reach plain torch's weights this closely
WEIGHTS_TOLERANCE = 1e-5
FLOWER = "Flower (simulation, Ray)"

DEFINITIONS = {
    "round_s": "seconds per FedAvg round, median over the timed rounds after one warm-up round: fedq's "
    "train_on_trusted_aggregator(rounds=1) through the public API; Flower: configure_fit to the end of aggregate_fit",
    "waits": "times this process waited for a worker during one round (hook.local_worker.stats()['waits'])",
    "startup_s": "seconds from starting the workers (Flower: run_simulation) to the end of the first round, less one timed round",
    "pss_bytes": "PSS (smaps_rollup) of the benchmark's process and every process under it after the rounds "
    "(fedq: the client, the zygote if any and the workers; Flower: the probe and Ray's processes)",
    "max_diff_from_torch": "largest difference of any weight from plain torch's FedAvg on the same model, shards and rounds",
}




def measure_workload(hook: sy.TorchHook, workload: Workload) -> dict[str, Any]:
    fleet = Fleet(hook)
    client = hook.local_worker
    owners: list = []
    try:
        began = time.perf_counter()
        owners_at = [fleet.ipc(f"{workload.name}-owner{i}") for i in range(workload.owners)]
        aggregator = fleet.ipc(f"{workload.name}-aggregator")
        for worker in [*owners_at, aggregator]:
            worker.ping(timeout=120)
        answering = time.perf_counter() - began
        for i, worker in enumerate(owners_at):
            data, target = shard(workload, i)
            owners.append((data.send(worker), target.send(worker)))
        trained = model(workload)
        rounds, waits, first_done = [], [], 0.0
        for number in range(workload.rounds + 1):
            before, start = client.stats()["waits"], time.perf_counter()
            train_on_trusted_aggregator(
                trained, owners, aggregator, rounds=1, local_steps=workload.steps, lr=LR, batch_size=workload.batch, progress=False
            )
            rounds.append(time.perf_counter() - start)
            waits.append(client.stats()["waits"] - before)
            if number == 0:
                first_done = time.perf_counter() - began
        timed = rounds[1:]
        round_s = statistics.median(timed)
        pss = tree_pss()
        reference = fedavg(workload, workload.rounds + 1)
        weights = [p.detach() for p in trained.parameters()]
        return {
            "workload": workload.to_json(),
            "round_s": round_s,
            "round_samples": timed,
            "waits": max(waits[1:]),
            "waits_samples": waits,
            "startup_s": first_done - round_s,
            "workers_answering_s": answering,
            "pss_bytes": pss,
            "max_diff_from_torch": max_difference(weights, reference),
            "weights": [w.flatten()[:4].tolist() for w in weights],
        }
    finally:
        del owners  # (their deletes land before the workers stop)
        fleet.close()


def measure_fedq_fl(plan: list[Workload], log: Callable[[str], None]) -> dict[str, Any]:
    hook = sy.TorchHook(torch)
    results: dict[str, Any] = {"version": sy.__version__}
    for workload in plan:
        log(f"fedq {workload.name}: {workload.what} ...")
        try:
            results[workload.name] = measure_workload(hook, workload)
        except Exception as error:  # one broken workload leaves the others' figures
            results[workload.name] = {"error": f"{type(error).__name__}: {error}"}
    return results


def evaluate_fl(results: dict[str, Any], plan: list[Workload]) -> list[Check]:
    fedq, flower = results["fedq"], results.get("flower")
    has_flower = isinstance(flower, dict) and "error" not in flower
    checks: list[Check] = []
    for workload in plan:
        ours = fedq.get(workload.name) or {}
        theirs = (flower or {}).get(workload.name) if has_flower else None
        theirs = theirs if isinstance(theirs, dict) and "error" not in theirs else None
        work = f"{workload.name}: {workload.what}"
        ms = lambda data, key="round_s": None if not data or data.get(key) is None else data[key] * 1000
        checks.append(_check(f"{work}: round", ms(ours), "ms", FLOWER if theirs else "Flower (not installed)", ms(theirs), Bound(0.5, True) if theirs else None))
        base = _fewest_owners_same_model(workload, plan)  # (constant in the owners: the same model with fewer)
        checks.append(_check(f"{work}: waits per round", ours.get("waits"), "waits", f"waits of {base.name} ({base.owners} owners)"
                             if base is not workload else "— (the fewest owners of its model)",
                             (fedq.get(base.name) or {}).get("waits") if base is not workload else None, Bound(1.0, True) if base is not workload else None))
        if theirs:
            checks.append(_check(f"{work}: start-up", ms(ours, "startup_s"), "ms", FLOWER, ms(theirs, "startup_s"), None))
        mib = lambda data: None if not data or data.get("pss_bytes") is None else data["pss_bytes"] / 2**20
        checks.append(_check(f"{work}: PSS, all processes", mib(ours), "MiB", FLOWER if theirs else "—", mib(theirs), None))
        if theirs and ours.get("weights") and theirs.get("weights"):  # (the first weights of each layer, side by side)
            side = max(abs(a - b) for x, y in zip(ours["weights"], theirs["weights"], strict=True) for a, b in zip(x, y, strict=True))
            checks.append(_check(f"{work}: weights, fedq vs Flower", side, "Δ", "tolerance", WEIGHTS_TOLERANCE, Bound(1.0, True)))
        for who, data in (("fedq", ours), (FLOWER, theirs)):
            if data and data.get("max_diff_from_torch") is not None:
                checks.append(_check(f"{work}: weights vs plain torch FedAvg ({who})", data["max_diff_from_torch"], "Δ", "tolerance",
                                     WEIGHTS_TOLERANCE, Bound(1.0, True)))
    return checks


def _fewest_owners_same_model(workload: Workload, plan: list[Workload]) -> Workload:
    """The workload of `plan` training the same model the same way with the fewest owners (B and C
    wait once more than A: their first layers go zero-copy; the goal is no more waits for more owners)."""
    same = [w for w in plan if (w.sizes, w.steps, w.batch) == (workload.sizes, workload.steps, workload.batch)]
    return min(same, key=lambda w: w.owners)


def run_fl(quick: bool = False, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every workload on fedq, then on Flower if installed; the figures and the checks."""
    started = time.perf_counter()
    plan = workloads(quick)
    results: dict[str, Any] = {
        "meta": {
            "quick": quick, "fl": True, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        },
        "plan": [w.to_json() for w in plan],
        "definitions": DEFINITIONS,
    }
    results["fedq"] = measure_fedq_fl(plan, log)
    log("peer: Flower (if installed) ...")
    results["flower"] = measure_flower(plan)
    checks = evaluate_fl(results, plan)
    results["checks"] = [c.to_json() for c in checks]
    # No gate: these are goals of one run (issue 17), not CI's; the exit code says only that it ran.
    results["gate"] = {"factor": None, "first_run_failed": [], "failed": [], "exit_code": 0}
    results["meta"].update(loadavg_end=os.getloadavg(), duration_s=time.perf_counter() - started)
    return results


def show_fl(results: dict[str, Any]) -> None:
    """The table (report.py's), then what was skipped or failed."""
    from rich.console import Console

    from .report import table

    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    console.print(table(results))
    checks = [c for c in results["checks"] if c["bound"] is not None]
    met = sum(c["status"] == "met" for c in checks)
    judged = sum(c["status"] in ("met", "missed") for c in checks)
    console.print(f"{met} of {judged} goals met ({len(checks) - judged} n/a); {results['meta']['duration_s']:.0f} s", highlight=False)
    flower = results.get("flower")
    if flower is None:
        console.print(f"Flower: not installed (pip install 'flwr[simulation]', or {FLWR_PYTHON_ENV}=a python that has it): skipped", highlight=False)
    elif "error" in flower:
        console.print(f"Flower failed: {flower['error']}", highlight=False)
    for name, data in {**results["fedq"], **(flower if isinstance(flower, dict) else {})}.items():
        if isinstance(data, dict) and "error" in data:
            console.print(f"{name} failed: {data['error']}", highlight=False)
