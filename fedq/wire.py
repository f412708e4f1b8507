"""The wire format: typed messages and their ZeroMQ frames. Pure: no sockets, no I/O.

A message on the wire is a list of frames::

    [header, buffer_0, buffer_1, ...]

`header` is a cloudpickle (protocol 5) of `(seq, message)`; tensors in the
message are pickled as references to out-of-band buffers, one frame each, so
a tensor's bytes are never copied into the header. Buffers smaller than
`INBAND_LIMIT` stay in the header: a frame costs more than copying a few KiB.

`seq` numbers a request on one connection; the reply to it carries the same
`seq`. Every request gets exactly one reply (`Ok` or `Failure`).
"""

from __future__ import annotations

import io
import pickle
import traceback as traceback_module
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import torch

INBAND_LIMIT = 64 * 1024

# --------------------------------------------------------------------------- values


@dataclass(slots=True)
class PointerSpec:
    """Everything a pointer needs to reach its object from any process.

    Stored as-is in a worker's store, it *is* that worker's remote pointer.
    """

    id: int
    location: str  # the worker id, for people
    address: str  # the ZeroMQ endpoint, for machines: any holder can reach it
    id_at_location: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool = False
    tags: tuple[str, ...] = ()
    description: str | None = None


@dataclass(slots=True, frozen=True)
class Ref:
    """An argument naming an object in the receiving worker's store."""

    id: int


@dataclass(slots=True)
class ObjectInfo:
    """One row of `fedq ls`: what a worker holds under one id."""

    id: int
    type: str
    shape: tuple[int, ...] | None
    dtype: str | None
    nbytes: int
    refs: int
    tags: tuple[str, ...] = ()
    points_to: str | None = None  # "bob:123 (ipc://...)" for stored pointers


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class StoreObject:
    """Store `obj` (a tensor, or a PointerSpec) under `id`, held by one reference."""

    id: int
    obj: Any
    tags: tuple[str, ...] = ()
    description: str | None = None


@dataclass(slots=True)
class RunOp:
    """Run torch function `op` where its tensor arguments (`Ref`s) live.

    `result_ids` are chosen by the caller, one per tensor in the result, in
    pytree order; `()` marks an in-place op (nothing new is stored). `None` asks
    the worker to choose ids and reply with a PointerSpec per result tensor:
    used when the caller could not work out the result's shape beforehand.
    `result_meta` gives (shape, dtype, requires_grad) per result, so a worker
    relaying the op can store pointers without waiting for the next hop.
    """

    op: str
    args: tuple
    kwargs: dict
    result_ids: tuple[int, ...] | None
    result_meta: tuple[tuple[tuple[int, ...], torch.dtype, bool], ...] | None = None
    grad_enabled: bool = True  # the caller's torch.is_grad_enabled(): an optimizer step runs under no_grad


@dataclass(slots=True)
class GetObject:
    """Hand the object under `id` to the caller and drop this worker's reference."""

    id: int


@dataclass(slots=True)
class MoveObject:
    """Rule 7: send the object under `id` straight to the worker at `address`, which keeps
    the id; drop it here. Answered once the destination has stored it."""

    id: int
    location: str
    address: str


@dataclass(slots=True)
class RemoteGet:
    """Rule 8: the object under `id` is a pointer; fetch what it points at and keep it here."""

    id: int


@dataclass(slots=True)
class Search:
    """Rule 14: reply with a PointerSpec (one new reference each) per object carrying all `tags`."""

    tags: tuple[str, ...]


@dataclass(slots=True)
class IncRef:
    """Another pointer to each of `ids` now exists somewhere."""

    ids: tuple[int, ...]


@dataclass(slots=True)
class DeleteObjects:
    """A pointer to each of `ids` died; free what no pointer holds any more."""

    ids: tuple[int, ...]


@dataclass(slots=True)
class ListObjects:
    """Reply with a snapshot {id: tensor or PointerSpec} of the store."""


@dataclass(slots=True)
class DescribeObjects:
    """Reply with one ObjectInfo per stored object (for `fedq ls`)."""


@dataclass(slots=True)
class CountObjects:
    """Reply with the number of stored objects."""


@dataclass(slots=True)
class ClearObjects:
    """Empty the store. Does not propagate to other workers."""


@dataclass(slots=True)
class Ping:
    """Reply with a WorkerStatus."""


@dataclass(slots=True)
class Shutdown:
    """Reply, then stop serving."""


# --------------------------------------------------------------------------- replies


@dataclass(slots=True)
class WorkerStatus:
    id: str
    pid: int
    version: str
    objects: int


@dataclass(slots=True)
class Ok:
    value: Any = None


@dataclass(slots=True)
class Failure:
    """A request failed on `worker`; rebuilt as an exception by the receiver."""

    type_name: str
    module: str
    message: str
    traceback: str
    worker: str

    @classmethod
    def from_exception(cls, error: BaseException, worker: str) -> "Failure":
        tb = "".join(traceback_module.format_exception(type(error), error, error.__traceback__))
        return cls(type(error).__name__, type(error).__module__, str(error), tb, worker)


REQUESTS = (StoreObject, RunOp, GetObject, MoveObject, RemoteGet, Search, IncRef, DeleteObjects, ListObjects, DescribeObjects, CountObjects, ClearObjects, Ping, Shutdown)
REPLIES = (Ok, Failure)

# --------------------------------------------------------------------------- tensors


def _rebuild_tensor(buffer: Any, dtype: torch.dtype, shape: tuple[int, ...], requires_grad: bool, grad: Any) -> torch.Tensor:
    raw = memoryview(buffer)
    if raw.readonly:  # an in-band buffer arrives as bytes; tensors on a worker must be writable
        raw = memoryview(bytearray(raw))
    if raw.nbytes:
        flat = torch.frombuffer(raw, dtype=torch.uint8)
    else:
        flat = torch.empty(0, dtype=torch.uint8)
    tensor = flat.view(dtype).reshape(shape) if flat.numel() else torch.empty(shape, dtype=dtype)
    if requires_grad:
        tensor.requires_grad_(True)
    if grad is not None:
        tensor.grad = grad
    return tensor


def _reduce_tensor(tensor: torch.Tensor) -> tuple:
    data = tensor.detach()
    if not data.is_contiguous():
        data = data.contiguous()
    # A uint8 view exposes the bytes to numpy (zero-copy) whatever the dtype, bfloat16 included.
    raw = data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b""
    return (
        _rebuild_tensor,
        (pickle.PickleBuffer(raw), tensor.dtype, tuple(tensor.shape), tensor.requires_grad, tensor.grad if tensor.is_leaf else None),
    )


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is torch.Tensor or cls is torch.nn.Parameter:
            if obj.layout == torch.strided and not obj.is_quantized and obj.device.type == "cpu":
                return _reduce_tensor(obj)
        return super().reducer_override(obj)


# --------------------------------------------------------------------------- frames


def encode(seq: int, message: Any) -> list:
    """Turn `(seq, message)` into frames: a header, then one frame per large buffer."""
    buffers: list = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < INBAND_LIMIT:
            return True  # pickle it in-band
        buffers.append(buffer.raw())
        return False

    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=keep_out_of_band).dump((seq, message))
    return [out.getbuffer(), *buffers]


def decode(frames: list) -> tuple[int, Any]:
    """Inverse of `encode`. Frames may be bytes, memoryviews or zmq.Frame objects.

    Raises ProtocolError for anything that is not a well-formed fedq message.
    """
    from .errors import ProtocolError

    if not frames:
        raise ProtocolError("empty message")
    try:
        seq, message = pickle.loads(_as_buffer(frames[0]), buffers=[_as_buffer(f) for f in frames[1:]])
    except Exception as error:
        raise ProtocolError(f"undecodable message: {type(error).__name__}: {error}") from None
    if not isinstance(seq, int) or not isinstance(message, REQUESTS + REPLIES):
        raise ProtocolError(f"not a fedq message: {type(message).__name__}")
    return seq, message


def _as_buffer(frame: Any) -> Any:
    return getattr(frame, "buffer", frame)


def frames_nbytes(frames: list) -> int:
    return sum(memoryview(_as_buffer(f)).nbytes for f in frames)
