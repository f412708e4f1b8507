"""The floor: what raw pyzmq does between two processes, with no fedq in between.

A child process runs a ROUTER that echoes every message back untouched; this
process talks to it through a DEALER, over the transports fedq uses (ipc and
tcp loopback). Two figures per transport:

- the round trip of a tiny message (what any request/reply must pay);
- a tensor's bytes there and back, serialized the way a zero-copy design
  would: pickle protocol 5 with the bytes as out-of-band buffers, each sent
  and received as its own frame with `copy=False`.

No fedq code runs on either side of the socket, so fedq over this floor is
fedq's own overhead.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import zmq

from .lifeline import exit_with_parent
from .payload import calls_per_sample, tensor_of
from .timing import Timing, per_call

TINY = b"x" * 64  # about the size of a small fedq request header
SMALL_FRAME = 64 * 1024  # below this a copy is cheaper than zero-copy bookkeeping (~10 us a frame)


def _echo_server(endpoints: list[str], ready: Connection, parent: int) -> None:
    """Child process: echo every multipart message to its sender until the parent goes."""
    exit_with_parent(parent)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    for option in (zmq.SNDHWM, zmq.RCVHWM, zmq.LINGER):
        router.setsockopt(option, 0)
    bound = []
    for endpoint in endpoints:
        router.bind(endpoint)
        bound.append(router.getsockopt(zmq.LAST_ENDPOINT).decode())
    ready.send(bound)
    while True:
        # Frames are echoed as the zmq.Frame objects received: no byte is copied either way.
        router.send_multipart(router.recv_multipart(copy=False), copy=False)


class EchoServer:
    """The echo child, bound on a private ipc path and a kernel-chosen loopback port."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fedq-bench-"))
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold zmq or torch threads
        here, there = ctx.Pipe()
        self.process = ctx.Process(
            target=_echo_server, args=([f"ipc://{self._dir}/echo.sock", "tcp://127.0.0.1:*"], there, os.getpid()), daemon=True
        )
        self.process.start()
        if not here.poll(60):
            self.close()
            raise RuntimeError("the raw pyzmq echo server did not start within 60 s")
        ipc, tcp = here.recv()
        self.addresses = {"ipc": ipc, "tcp": tcp}

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "EchoServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def tensor_roundtrip(sock: zmq.Socket, tensor: torch.Tensor) -> torch.Tensor:
    """Send `tensor` and receive it back: the zero-copy path fedq's wire format aims for."""
    buffers: list[pickle.PickleBuffer] = []
    # numpy, not torch: a torch tensor pickles its storage in-band; a numpy view goes out of band.
    header = pickle.dumps(tensor.numpy(), protocol=5, buffer_callback=buffers.append)
    frames = [header, *(b.raw() for b in buffers)]
    for i, frame in enumerate(frames):
        size = memoryview(frame).nbytes
        sock.send(frame, zmq.SNDMORE if i < len(frames) - 1 else 0, copy=size < SMALL_FRAME)
    reply = sock.recv_multipart(copy=False)
    array = pickle.loads(reply[0].buffer, buffers=[f.buffer for f in reply[1:]])
    return torch.from_numpy(array)


def measure_floor(*, sizes_mib: list[int], echo_number: int, echo_repeats: int, transfer_repeats: int) -> dict[str, Any]:
    """Echo round trips and tensor round trips on ipc and tcp; seconds per round trip."""
    results: dict[str, Any] = {}
    ctx = zmq.Context()  # our own: fedq's process-wide context must not share this socket's fate
    try:
        with EchoServer() as server:
            for transport, address in server.addresses.items():
                sock = ctx.socket(zmq.DEALER)
                for option in (zmq.SNDHWM, zmq.RCVHWM, zmq.LINGER):
                    sock.setsockopt(option, 0)
                sock.connect(address)
                try:
                    results[transport] = _measure_on(sock, address, sizes_mib, echo_number, echo_repeats, transfer_repeats)
                finally:
                    sock.close(0)
    finally:
        ctx.destroy(0)
    return results


def _measure_on(sock: zmq.Socket, address: str, sizes_mib: list[int], number: int, repeats: int, transfer_repeats: int) -> dict[str, Any]:
    def echo() -> None:
        sock.send(TINY)
        sock.recv()

    echo_timing = per_call(echo, number=number, repeats=repeats, warmup=number)
    transfers: dict[str, Timing] = {}
    for size in sizes_mib:
        tensor = tensor_of(size)
        back = tensor_roundtrip(sock, tensor)  # untimed: also checks the echo is faithful
        if not torch.equal(back, tensor):
            raise RuntimeError(f"the raw echo of {size} MiB came back different")
        del back
        transfers[str(size)] = per_call(
            lambda tensor=tensor: tensor_roundtrip(sock, tensor), number=calls_per_sample(size), repeats=transfer_repeats
        )
    return {
        "address": address,
        "echo": echo_timing.to_json(),
        "tensor_roundtrip": {size: t.to_json() for size, t in transfers.items()},
    }
