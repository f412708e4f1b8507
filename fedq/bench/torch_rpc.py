"""The peer: the same work over `torch.distributed.rpc` (TensorPipe), two processes.

Both ranks are child processes, so TensorPipe's threads and its shutdown never
run inside the benchmark's own process: "driver" (rank 0) measures and sends
its figures back through a pipe, "callee" (rank 1) serves. Everything binds to
127.0.0.1: MASTER_ADDR for the rendezvous, TP_SOCKET_IFNAME=lo for TensorPipe's
own listeners (it would otherwise pick the host's outward interface).
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
import warnings
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed.rpc as rpc

from .lifeline import exit_with_parent
from .payload import calls_per_sample, small_tensor, tensor_of
from .ports import free_port
from .timing import per_call

SHUTDOWN_TIMEOUT = 10.0  # seconds a rank waits for the other in a graceful shutdown


def _echo(tensor: torch.Tensor) -> torch.Tensor:
    """Runs on the callee: hand the tensor straight back (there and back, nothing else)."""
    return tensor


def _init(name: str, rank: int, port: int, parent: int) -> None:
    exit_with_parent(parent)  # a rank left waiting for a dead benchmark would wait for its full timeout
    # torch's rpc warns about its own internal use of a gloo group: nothing for a reader of the table.
    warnings.filterwarnings("ignore", message="You are using a Backend", category=UserWarning)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TP_SOCKET_IFNAME="lo", GLOO_SOCKET_IFNAME="lo")
    options = rpc.TensorPipeRpcBackendOptions(rpc_timeout=120)
    rpc.init_rpc(name, rank=rank, world_size=2, rpc_backend_options=options)


def _callee(port: int, parent: int, timeout: float) -> None:
    _init("callee", 1, port, parent)
    # A graceful shutdown serves until the driver shuts down too: give it the whole run.
    rpc.shutdown(graceful=True, timeout=timeout)


def _driver(port: int, parent: int, plan: dict[str, Any], out: Connection) -> None:
    try:
        _init("driver", 0, port, parent)
    except Exception:
        out.send({"error": traceback.format_exc()})
        return
    try:
        out.send(_measure(plan))
    except Exception:
        out.send({"error": traceback.format_exc()})
    finally:
        rpc.shutdown(graceful=True, timeout=SHUTDOWN_TIMEOUT)


def _measure(plan: dict[str, Any]) -> dict[str, Any]:
    small = small_tensor()
    sync = per_call(
        lambda: rpc.rpc_sync("callee", torch.add, args=(small, small)),
        number=plan["sync_number"], repeats=plan["sync_repeats"], warmup=plan["sync_number"],
    )
    calls = plan["pipelined_calls"]

    def pipelined() -> None:
        # rpc.remote returns at once; each RRef's future completes when the callee has made its value.
        rrefs = [rpc.remote("callee", torch.add, args=(small, small)) for _ in range(calls)]
        torch.futures.wait_all([r._get_future() for r in rrefs])

    burst = per_call(pipelined, number=1, repeats=plan["pipelined_repeats"], warmup=1)
    transfers = {}
    for size in plan["sizes_mib"]:
        tensor = tensor_of(size)
        if not torch.equal(rpc.rpc_sync("callee", _echo, args=(tensor,)), tensor):  # untimed warm-up and check
            raise RuntimeError(f"torch rpc echoed {size} MiB wrong")
        transfers[str(size)] = per_call(
            lambda tensor=tensor: rpc.rpc_sync("callee", _echo, args=(tensor,)),
            number=calls_per_sample(size), repeats=plan["transfer_repeats"],
        ).to_json()
    return {
        "torch_version": torch.__version__,
        "rpc_sync_add": sync.to_json(),
        "pipelined_remote": {"calls": calls, "burst": burst.to_json(), "ops_per_s": calls / burst.median},
        "tensor_roundtrip": transfers,
    }


def measure_torch_rpc(
    *,
    sizes_mib: list[int],
    sync_number: int,
    sync_repeats: int,
    pipelined_calls: int,
    pipelined_repeats: int,
    transfer_repeats: int,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run the driver and the callee; their figures, or {"error": ...}. Never leaves a process behind."""
    plan = dict(
        sizes_mib=sizes_mib, sync_number=sync_number, sync_repeats=sync_repeats,
        pipelined_calls=pipelined_calls, pipelined_repeats=pipelined_repeats, transfer_repeats=transfer_repeats,
    )
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads and zmq sockets
    here, there = ctx.Pipe()
    port = free_port()
    callee = ctx.Process(target=_callee, args=(port, os.getpid(), timeout), daemon=True, name="bench-rpc-callee")
    driver = ctx.Process(target=_driver, args=(port, os.getpid(), plan, there), daemon=True, name="bench-rpc-driver")
    processes = [callee, driver]
    try:
        for process in processes:
            process.start()
        there.close()  # only the driver writes: our copy would hide its death from recv()
        # Wake on figures, or on either rank dying (the other would then wait for it forever).
        ready = wait([here, driver.sentinel, callee.sentinel], timeout)
        if here in ready or here.poll(0):
            return here.recv()
        if not ready:
            return {"error": f"torch rpc gave no figures within {timeout:g} s"}
        return {"error": f"a torch rpc process exited early (driver code {driver.exitcode}, callee code {callee.exitcode})"}
    except EOFError:
        return {"error": "the torch rpc driver died before sending its figures"}
    finally:
        for process in processes:
            process.join(SHUTDOWN_TIMEOUT + 5)  # a clean shutdown first: TensorPipe dislikes being killed mid-way
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
