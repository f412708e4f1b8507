"""fedq on the same work as the floor and the peers, through the public API only.

- latency: `(x + x).get()` on a 5-element tensor one hop away (ipc, then tcp),
  then two and three hops away (`t.send(w1).send(w2)...`, ipc);
- pipelining: `y = x + x` many times, then one `sync()`: ops/s;
- transfer: `t.send(w)` then `.get()` of 1, 64 and 256 MiB, each size on a fresh
  worker so that the worker's peak RSS belongs to that size alone;
- `move` of 64 MiB between two workers, and one trusted-aggregator round, both
  "n/a" while PointerTensor has no `move`.

Every worker started here is stopped here, whatever fails.
"""

from __future__ import annotations

import gc
import inspect
import os
import time
from contextlib import ExitStack
from typing import Any

import torch

import fedq as sy
from fedq.client import Client
from fedq.peers import stop_processes
from fedq.launcher import start_worker_process

from .payload import calls_per_sample, small_tensor, tensor_of
from .ports import free_port
from .procmem import cpu_seconds, peak_bytes, reset_peak, rss_bytes
from .timing import per_call, summarize


def _client_bytes(client: Client) -> int:
    stats = client.stats()
    return stats["bytes_sent"] + stats["bytes_received"]


class Fleet:
    """The workers of one run, stopped together by `close()`: VirtualWorkers on ipc
    (fedq's default) and, for the tcp figure, one worker on a loopback port."""

    def __init__(self, hook: sy.TorchHook) -> None:
        self.hook = hook
        self.client: Client = hook.local_worker
        self._prefix = f"bench{os.getpid()}"
        self._processes: list = []

    def ipc(self, name: str) -> sy.VirtualWorker:
        worker = sy.VirtualWorker(self.hook, id=f"{self._prefix}-{name}")
        self._processes.append(worker.process)
        return worker

    def tcp(self, name: str) -> sy.VirtualWorker:
        id = f"{self._prefix}-{name}"
        address = f"tcp://127.0.0.1:{free_port()}"
        options: dict[str, Any] = {"timeout": self.client.timeout, "quiet": True}
        if "key" in inspect.signature(start_worker_process).parameters:
            options["key"] = self.client.key  # signed messages: the worker must know our key
        self._processes.append(start_worker_process(id, address, **options))
        return sy.connect(self.hook, id, address=address)

    def close(self) -> None:
        # Deletes still queued for these workers land first, so none is reported as lost.
        gc.collect()
        try:
            self.client.sync(timeout=10)
        except sy.FedqError:
            pass
        stop_processes(self._processes, timeout=5.0)


def measure_latency(fleet: Fleet, workers: list[sy.VirtualWorker], tcp_worker: sy.VirtualWorker, *, number: int, repeats: int) -> dict[str, Any]:
    """Seconds per `(x + x).get()`. On a chain `.get()` peels one level (PySyft's rule), so
    the k-hop figure is the op relayed k-1 times plus one get from the first hop; the peeled
    pointer's delete is part of what a user pays and is left in."""
    t = small_tensor()
    chains = {"ipc_1hop": t.send(workers[0]), "tcp_1hop": t.send(tcp_worker)}
    for hops in range(2, len(workers) + 1):
        chain = t.send(workers[0])
        for worker in workers[1:hops]:
            chain = chain.send(worker)  # spends the pointer it was called on: each chain is built anew
        chains[f"ipc_{hops}hop"] = chain
    if not torch.equal((chains["ipc_1hop"] + chains["ipc_1hop"]).get(), t + t):
        raise RuntimeError("fedq computed x + x wrong")
    figures = {}
    for name, x in chains.items():
        cpu_before = (cpu_seconds(), cpu_seconds(workers[0].pid))
        figures[name] = per_call(lambda x=x: (x + x).get(), number=number, repeats=repeats, warmup=number).to_json()
        if name == "ipc_1hop":  # where a round trip's time goes: CPU on each side, steadier than wall time
            calls = number * (repeats + 1)  # the warm-up calls ran too
            figures[name]["client_cpu_us"] = _cpu_us(cpu_before[0], cpu_seconds(), calls)
            figures[name]["worker_cpu_us"] = _cpu_us(cpu_before[1], cpu_seconds(workers[0].pid), calls)
    return figures


def _cpu_us(before: float | None, after: float | None, calls: int) -> float | None:
    """CPU microseconds per call between two /proc readings (None where /proc is unreadable)."""
    return None if before is None or after is None else (after - before) / calls * 1e6


def measure_pipelined(fleet: Fleet, worker: sy.VirtualWorker, *, ops: int, repeats: int) -> dict[str, Any]:
    """`y = x + x` `ops` times without waiting, then one wait for all of them."""
    x = small_tensor().send(worker)

    def burst() -> None:
        for _ in range(ops):
            y = x + x  # noqa: F841 - each result replaces (and frees) the last, as in a training loop
        fleet.client.sync()

    cpu_before = (cpu_seconds(), cpu_seconds(worker.pid))
    timing = per_call(burst, number=1, repeats=repeats, warmup=1)
    done = ops * (repeats + 1)  # the warm-up burst ran too

    return {
        "ops": ops, "burst": timing.to_json(), "ops_per_s": ops / timing.median,
        "client_cpu_us_per_op": _cpu_us(cpu_before[0], cpu_seconds(), done),
        "worker_cpu_us_per_op": _cpu_us(cpu_before[1], cpu_seconds(worker.pid), done),
    }


def ten_ops(x: torch.Tensor) -> torch.Tensor:
    """Ten elementwise ops: the plan, and the same ops pipelined one by one."""
    y = x + x
    y = y * 2.0
    y = y - 1.0
    y = torch.abs(y)
    y = -y
    y = y + 3.0
    y = y * 0.5
    y = torch.clamp(y, min=-4.0)
    y = torch.relu(y)
    return y.sqrt()


def measure_plan(fleet: Fleet, worker: sy.VirtualWorker, *, calls: int, repeats: int) -> dict[str, Any]:
    """A sent 10-op plan called `calls` times then one `sync()`, against the same 10 ops
    pipelined `calls` times then one `sync()`, in the same run: seconds per 10 ops each (one
    message per call against ten)."""
    x = torch.arange(5.0).send(worker)
    plan = sy.func2plan(args_shape=[(5,)])(ten_ops).send(worker)
    if len(plan.actions) != 10 or not torch.equal(plan(x).get(), ten_ops(torch.arange(5.0))):
        raise RuntimeError("fedq's 10-op plan computed wrong")

    def bursts(one: Any) -> Any:
        def burst() -> None:
            for _ in range(calls):
                y = one(x)  # noqa: F841 - each result replaces (and frees) the last
            fleet.client.sync()

        return per_call(burst, number=1, repeats=repeats, warmup=1)

    by_plan, by_ops = bursts(plan), bursts(ten_ops)  # (one after the other: the same worker, the same load)
    return {
        "calls": calls, "ops_per_call": 10,
        "plan_burst": by_plan.to_json(), "ops_burst": by_ops.to_json(),
        "plan_s_per_call": by_plan.median / calls, "ops_s_per_call": by_ops.median / calls,
    }


def measure_transfer(fleet: Fleet, worker: sy.VirtualWorker, size_mib: int, *, repeats: int) -> dict[str, Any]:
    """send then get of one tensor, with the peak RSS of the worker (fresh, so its idle RSS is
    known) and of this process over exactly these repeats."""
    tensor = tensor_of(size_mib)
    answer = worker.ping()
    pid = worker.pid if worker.pid is not None else answer.pid  # (one we only connected to: its own word; same machine)
    worker_idle = rss_bytes(pid)
    # The peaks are reset, not read since process start: the start-up (importing torch) is not this work.
    peak_reset = reset_peak(pid) and reset_peak()
    client_before = rss_bytes()
    bytes_before = _client_bytes(fleet.client)
    number = calls_per_sample(size_mib)
    sends, gets = [], []
    for i in range(repeats + 1):  # the first is a warm-up: the same peak, but not timed
        send_s = get_s = 0.0
        for _ in range(number):
            start = time.perf_counter()
            pointer = tensor.send(worker)  # a large send waits until the worker has the bytes
            sent = time.perf_counter()
            back = pointer.get()
            done = time.perf_counter()
            send_s, get_s = send_s + sent - start, get_s + done - sent
            if i == 0 and not torch.equal(back, tensor):
                raise RuntimeError(f"fedq brought {size_mib} MiB back different")
            del pointer, back
        if i:
            sends.append(send_s / number)
            gets.append(get_s / number)
    worker_peak, client_peak = peak_bytes(pid), peak_bytes()
    return {
        "payload_bytes": tensor.nbytes,
        "send": summarize(sends, number).to_json(),
        "get": summarize(gets, number).to_json(),
        "roundtrip": summarize([s + g for s, g in zip(sends, gets, strict=True)], number).to_json(),
        "peak_reset": peak_reset,  # False: the peaks below count from process start
        "worker_pid": pid,
        "worker_idle_rss": worker_idle,
        "worker_peak_rss": worker_peak,
        "client_rss_before": client_before,  # the source tensor is already in it
        "client_peak_rss": client_peak,
        "client_bytes": _client_bytes(fleet.client) - bytes_before,
    }


def has_move() -> bool:
    return hasattr(sy.PointerTensor, "move")


def measure_move(fleet: Fleet, source: sy.VirtualWorker, target: sy.VirtualWorker, size_mib: int, *, repeats: int) -> dict[str, Any]:
    """`pointer.move(target)` of a tensor on `source`, and how many bytes passed through this
    process meanwhile (a direct worker-to-worker move sends only control messages)."""
    if not has_move():
        return {"status": "n/a", "reason": "fedq.PointerTensor has no move() yet"}
    tensor = tensor_of(size_mib)
    times, through_client = [], []
    for i in range(repeats + 1):
        pointer = tensor.send(source)
        fleet.client.sync()
        before = _client_bytes(fleet.client)
        start = time.perf_counter()
        moved = pointer.move(target)
        moved = pointer if moved is None else moved  # an in-place move keeps the same handle
        fleet.client.sync()  # a pipelined move has finished only once every reply is in
        elapsed = time.perf_counter() - start
        if i == 0:
            if not torch.equal(moved.get(), tensor):
                raise RuntimeError(f"fedq moved {size_mib} MiB wrong")
        else:
            times.append(elapsed)
            through_client.append(_client_bytes(fleet.client) - before)
        del pointer, moved
    timing = summarize(times)
    return {"status": "ok", "payload_bytes": tensor.nbytes, "move": timing.to_json(), "client_bytes": max(through_client)}


def trusted_aggregator_round(fleet: Fleet, owners: list[sy.VirtualWorker], aggregator: sy.VirtualWorker, *, repeats: int) -> dict[str, Any] | None:
    """One round of PySyft's trusted-aggregator tutorial, on a weight tensor: each owner gets
    the weights and updates them, the updates move to the aggregator, which averages them,
    and the average comes back. None while fedq has no `move` (the workflow needs it)."""
    if not has_move():
        return None
    weights = torch.zeros(1000)

    def one_round() -> torch.Tensor:
        updates = []
        for owner in owners:
            local = weights.send(owner)
            local = local - 0.1 * (local - 1.0)  # stands in for a local training step
            moved = local.move(aggregator)
            updates.append(local if moved is None else moved)
        total = updates[0]
        for update in updates[1:]:
            total = total + update
        return (total / len(updates)).get()

    if not torch.allclose(one_round(), torch.full((1000,), 0.1)):
        raise RuntimeError("the trusted-aggregator round averaged wrong")
    timing = per_call(one_round, number=1, repeats=repeats)
    return {"status": "ok", "round": timing.to_json(), "owners": len(owners)}


def measure_fedq(
    *,
    sizes_mib: list[int],
    latency_number: int,
    latency_repeats: int,
    pipelined_ops: int,
    pipelined_repeats: int,
    transfer_repeats: int,
    move_mib: int,
    plan_calls: int = 500,
) -> dict[str, Any]:
    hook = sy.TorchHook(torch)
    fleet = Fleet(hook)
    with ExitStack() as cleanup:
        cleanup.callback(fleet.close)
        # All workers start at once (each imports torch: slow, and in parallel on two cores).
        chain = [fleet.ipc(f"hop{i}") for i in (1, 2, 3)]
        tcp_worker = fleet.tcp("tcp")
        fresh = {size: fleet.ipc(f"xfer{size}") for size in sizes_mib}
        for worker in [*chain, *fresh.values()]:
            worker.ping()
        tcp_worker.ping(timeout=60)  # connecting before it binds is fine: zmq retries
        results: dict[str, Any] = {
            "version": sy.__version__,
            "latency": measure_latency(fleet, chain, tcp_worker, number=latency_number, repeats=latency_repeats),
            "pipelined": measure_pipelined(fleet, chain[0], ops=pipelined_ops, repeats=pipelined_repeats),
            "plan": measure_plan(fleet, chain[0], calls=plan_calls, repeats=pipelined_repeats),
            "transfer": {str(size): measure_transfer(fleet, fresh[size], size, repeats=transfer_repeats) for size in sizes_mib},
            "move": measure_move(fleet, chain[0], chain[1], move_mib, repeats=transfer_repeats),
        }
        aggregated = trusted_aggregator_round(fleet, chain[:2], chain[2], repeats=transfer_repeats)
        results["trusted_aggregator"] = aggregated if aggregated is not None else {"status": "n/a", "reason": "needs PointerTensor.move()"}
        return results
