"""What `fedq bench` runs, in which order, and how many times.

Sections run one after the other, never side by side (two cores: a peer
running next to fedq would be measured against a busy machine). A section that
fails is recorded with its error and the others still run, so one broken peer
never hides fedq's figures. fedq runs last, after the child processes of the
floor and of torch rpc are gone.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import torch
import zmq

from .targets import BASELINE, GATE_FACTOR, against_baseline, evaluate, gate, known_misses, record_misses


@dataclass(frozen=True)
class Plan:
    quick: bool
    sizes_mib: tuple[int, ...]
    echo_number: int  # round trips per repeat of the tiny echo
    latency_number: int  # (x + x).get() per repeat, and rpc_sync per repeat
    latency_repeats: int
    pipelined_ops: int  # fedq ops per burst
    rpc_pipelined_calls: int  # rpc.remote calls per burst
    pipelined_repeats: int
    transfer_repeats: int
    move_mib: int = 64
    startup_counts: tuple[int, ...] = (8, 32)  # workers started at once, each way (issue 17)
    plan_calls: int = 500  # calls of a 10-op plan per burst, and bursts of the same 10 ops (--quick: 100)
    hosts: bool = True  # the hosts section (issue 18: network namespaces; tens of seconds: not in --quick)
    hosts_mib: int = 64

    @classmethod
    def full(cls) -> "Plan":
        return cls(
            quick=False, sizes_mib=(1, 64, 256), echo_number=1000, latency_number=300, latency_repeats=7,
            pipelined_ops=10_000, rpc_pipelined_calls=1000, pipelined_repeats=3, transfer_repeats=5,
        )

    @classmethod
    def reduced(cls) -> "Plan":
        # Well under a minute, most of it spent starting processes; no 256 MiB. Still 5 transfers
        # per size: a 64 MiB one is cheap, and the gate must not turn on one noisy sample.
        return cls(
            quick=True, sizes_mib=(1, 64), echo_number=300, latency_number=100, latency_repeats=5,
            pipelined_ops=2_000, rpc_pipelined_calls=1000, pipelined_repeats=3, transfer_repeats=5, plan_calls=100,
            startup_counts=(4,),  # (from a warm zygote only: a cold one, or python -c, imports torch again)
            hosts=False,
        )


# What each figure is, written into the JSON next to the figures.
DEFINITIONS = {
    "latency": "seconds per (x + x).get() on a 5-element int64 tensor; on a k-hop chain .get() peels one level, "
    "so the figure is the op relayed k-1 times, one get from the first hop, and the peeled pointer's delete",
    "echo": "seconds per round trip of a 64-byte message, raw pyzmq DEALER -> ROUTER echo in another process",
    "tensor_roundtrip": "seconds to send a float32 tensor and receive it back (floor: pickle 5 out-of-band, copy=False; "
    "torch rpc: rpc_sync of a function returning its argument; fedq: t.send(w) then .get())",
    "pipelined": "fedq: y = x + x repeated `ops` times then one sync(); torch: `calls` rpc.remote(torch.add) then wait for "
    "every RRef's creation",
    "worker_peak_rss": "VmHWM of the worker process after its peak was reset (clear_refs) just before the transfers of "
    "one size; that worker served nothing else. peak_reset false: counted from the worker's start",
    "client_peak_rss": "VmHWM of the benchmark process, reset the same way; client_rss_before already holds the source tensor",
    "move": "seconds for pointer.move(other worker) then sync(); client_bytes: bytes this process sent and received meanwhile",
    "plan": "seconds per call of a sent 10-op plan (func2plan; one RunPlan message), `calls` calls then one sync(), "
    "against the same 10 ops pipelined one by one (ten RunOps) `calls` times then one sync(), on the same worker in the same run",
    "startup": "seconds from starting N workers at once to the last one's answer to a ping, in this process: each a "
    "fresh `python -c` that imports torch (before the zygote), or forked from the zygote (its own start included: "
    "stopped before each N; --quick: the zygote only, warm); PSS (smaps_rollup) per worker after they idled 0.5 s, "
    "with and without the zygote's share",
    "secagg": "seconds per federated round (1 local step per owner) of train_with_secure_aggregation against "
    "train_on_trusted_aggregator on the same owners and model: 2 owners of nn.Linear(4, 1), 4 owners of nn.Linear(1000, 1000) "
    "(--quick: 100); and seconds per x * y, x.mm(y) of two-holder sharings of 1000 x 1000 int64 (--quick: 100), crypto provider included",
    "hosts": "the lesson's (x + x).get() (seconds per call) and a send + get of hosts_mib MiB (as tensor_roundtrip) from a "
    "client in one network namespace to a worker in another, joined by veths and a bridge (tcp + CURVE: namespaces), beside "
    "the same to a worker on the client's loopback with CURVE (loopback_curve) and without it (loopback, from the bench's own "
    "process); needs root and ip: else skipped, with the reason",
    "gate": "checks whose ratio is more than twice as bad as the target (for a known miss recorded in "
    "baseline.json: as its recorded ratio) in two runs in a row (the second runs only if the first "
    "failed: first_run_failed); any makes `fedq bench` exit with code 3",
}


def _section(name: str, run: Callable[[], Any], log: Callable[[str], None]) -> tuple[Any, float]:
    log(f"{name} ...")
    start = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # a broken section is reported, not fatal: the others still mean something
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    elapsed = time.perf_counter() - start
    log(f"{name}: {elapsed:.1f} s" + (f" — failed: {result['error']}" if isinstance(result, dict) and "error" in result else ""))
    return result, elapsed


def run(plan: Plan, log: Callable[[str], None] = lambda _: None, *, record_baseline: bool = False) -> dict[str, Any]:
    """Every section of the plan; the raw figures, the checks against the targets, and the gate.

    When the gate fails, every section runs once more and only what fails both times counts:
    a regression is there again, while noise from other processes on a shared machine seldom
    hits the same figure twice. The figures reported are the second run's."""
    started = time.perf_counter()
    results = _measure(plan, log)
    checks = evaluate(results)
    if record_baseline:
        log(f"recorded {len(record_misses(checks))} known misses in {BASELINE}")
    checks = against_baseline(checks, known_misses())
    failed = gate(checks)
    first_failed = [f"{c.work} vs {c.peer}" for c in failed]
    if failed:
        log(f"gate: {len(failed)} figure(s) more than {GATE_FACTOR:g}x off; measuring everything again to tell noise from a regression")
        results = _measure(plan, log)
        checks = against_baseline(evaluate(results), known_misses())
        failed = [c for c in gate(checks) if f"{c.work} vs {c.peer}" in first_failed]
    results["checks"] = [c.to_json() for c in checks]
    results["gate"] = {
        "factor": GATE_FACTOR,
        "first_run_failed": first_failed,  # empty: the figures were measured once
        "failed": [f"{c.work} vs {c.peer}" for c in failed],
        "exit_code": 3 if failed else 0,
    }
    results["meta"].update(loadavg_end=os.getloadavg(), duration_s=time.perf_counter() - started)
    return results


def _measure(plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """One run of every section, one after the other."""
    from .fedq_work import measure_fedq
    from .floor import measure_floor
    from .hosts import measure_hosts
    from .secagg import measure_secagg
    from .startup import measure_startup
    from .syft029 import measure_pysyft029
    from .torch_rpc import measure_torch_rpc

    sizes = list(plan.sizes_mib)
    results: dict[str, Any] = {
        "meta": {
            "quick": plan.quick,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "cpus": os.cpu_count(),
            # Other processes on this machine move every figure: the load says how busy it was.
            "loadavg_start": os.getloadavg(),
        },
        "plan": asdict(plan),
        "definitions": DEFINITIONS,
    }
    durations = {}
    results["floor"], durations["floor"] = _section("floor: raw pyzmq echo (ipc, tcp)", lambda: measure_floor(
        sizes_mib=sizes, echo_number=plan.echo_number, echo_repeats=plan.latency_repeats,
        transfer_repeats=plan.transfer_repeats), log)
    results["torch_rpc"], durations["torch_rpc"] = _section("peer: torch.distributed.rpc (TensorPipe)", lambda: measure_torch_rpc(
        sizes_mib=sizes, sync_number=plan.latency_number, sync_repeats=plan.latency_repeats,
        pipelined_calls=plan.rpc_pipelined_calls, pipelined_repeats=plan.pipelined_repeats,
        transfer_repeats=plan.transfer_repeats), log)
    results["pysyft029"], durations["pysyft029"] = _section("peer: PySyft 0.2.9 (if installed)", lambda: measure_pysyft029(
        number=plan.latency_number, repeats=plan.latency_repeats, ops=plan.pipelined_ops), log)
    results["startup"], durations["startup"] = _section(
        f"startup: {'/'.join(map(str, plan.startup_counts))} workers, python -c and zygote", lambda: measure_startup(plan.startup_counts, quick=plan.quick), log)
    results["fedq"], durations["fedq"] = _section("fedq", lambda: measure_fedq(
        sizes_mib=sizes, latency_number=plan.latency_number, latency_repeats=plan.latency_repeats,
        pipelined_ops=plan.pipelined_ops, pipelined_repeats=plan.pipelined_repeats,
        transfer_repeats=plan.transfer_repeats, move_mib=plan.move_mib, plan_calls=plan.plan_calls), log)
    results["secagg"], durations["secagg"] = _section("fedq: secure aggregation and shared products", lambda: measure_secagg(
        quick=plan.quick, repeats=1 if plan.quick else 3), log)
    if plan.hosts:
        results["hosts"], durations["hosts"] = _section("fedq across hosts: network namespaces, tcp + CURVE", lambda: measure_hosts(
            number=plan.latency_number, repeats=plan.latency_repeats, transfer_repeats=plan.transfer_repeats, size_mib=plan.hosts_mib), log)
    results["meta"]["durations_s"] = durations
    return results
