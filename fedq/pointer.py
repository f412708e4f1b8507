"""PointerTensor: a local handle to a tensor that lives on a worker.

A PointerTensor is a `torch.Tensor` subclass over a *meta* tensor: it has the
remote tensor's shape, dtype and requires_grad but no storage. Through
`__torch_function__` it forwards every torch operation to the worker that
holds the data (rule 4) and answers metadata questions locally (rule 12).
Because it is a real tensor, `torch.matmul(x, w)`, `F.relu(x)` and
`nn.Linear` accept it.

What it forwards, and nothing more:
- torch functions, tensor methods and operators named in `ops` -> `RunOp`
- `send` -> `StoreObject` of the pointer itself (rule 3), `get` -> `GetObject`
  (rule 5), `clone` -> `IncRef` (rule 9), its death -> a queued delete (rule 6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from . import ops
from .errors import (
    SpentPointerError,
    TensorsNotCollocatedError,
    UnsupportedOperationError,
    ValueNeedsGetError,
)
from .ids import new_id
from .wire import INBAND_LIMIT, GetObject, IncRef, PointerSpec, Ref, RunOp, StoreObject

if TYPE_CHECKING:
    from .client import Client
    from .handle import VirtualWorker


class RemoteRef:
    """One counted reference to a remote object (rule 6).

    When it dies its delete is queued, never sent here: `__del__` may run in
    the middle of anything, including a send (RPyC's deadlock).
    """

    __slots__ = ("client", "address", "id_at_location", "spent")

    def __init__(self, client: "Client", address: str, id_at_location: int) -> None:
        self.client = client
        self.address = address
        self.id_at_location = id_at_location
        self.spent: str | None = None  # why this reference no longer counts

    def __del__(self) -> None:
        if self.spent is None:
            try:
                self.client.queue_delete(self.address, self.id_at_location)
            except Exception:  # interpreter shutdown: the workers die with us anyway
                pass


_T = torch.Tensor
# Answered from the meta tensor underneath: no round trip (rule 12).
_LOCAL = {
    _T.shape.__get__, _T.dtype.__get__, _T.ndim.__get__, _T.requires_grad.__get__, _T.is_leaf.__get__,
    _T.layout.__get__, _T.dim, _T.size, _T.numel, _T.nelement, _T.ndimension, _T.element_size,
    _T.is_floating_point, _T.is_complex, _T.__len__, _T.__hash__,
}
# Need the values here: the user must .get() first (rule 12).
_NEEDS_VALUE = {
    _T.item, _T.tolist, _T.numpy, _T.__bool__, _T.__float__, _T.__int__, _T.__index__, _T.__complex__, _T.__array__,
}


class PointerTensor(torch.Tensor):
    """`[PointerTensor | OWNER:ID -> LOCATION:ID_AT_LOCATION]`"""

    id: int
    id_at_location: int
    location: "VirtualWorker"
    owner: Any  # the Client ("me"), or a worker whose store this pointer was listed from
    _ref: RemoteRef | None
    _is_chain: bool

    @staticmethod
    def __new__(cls, *args: Any, **kwargs: Any) -> "PointerTensor":
        raise TypeError("PointerTensors are made by .send(), by operations on pointers, or by .get() on a chain")

    @classmethod
    def _make(
        cls,
        meta: torch.Tensor,
        location: "VirtualWorker",
        id: int,
        id_at_location: int,
        *,
        is_chain: bool,
        owner: Any = None,
    ) -> "PointerTensor":
        self = torch.Tensor._make_subclass(cls, meta, meta.requires_grad)
        self.id = id
        self.id_at_location = id_at_location
        self.location = location
        self.owner = owner if owner is not None else location.client
        self._ref = RemoteRef(location.client, location.address, id_at_location) if owner is None else None
        self._is_chain = is_chain
        return self

    @classmethod
    def pointing_at(cls, location: "VirtualWorker", id_at_location: int, shape: Any, dtype: torch.dtype, requires_grad: bool = False, *, id: int | None = None, is_chain: bool = False) -> "PointerTensor":
        """An owning pointer from me to `id_at_location` on `location`."""
        meta = torch.empty(tuple(shape), dtype=dtype, device="meta", requires_grad=requires_grad)
        return cls._make(meta, location, new_id() if id is None else id, id_at_location, is_chain=is_chain)

    @classmethod
    def view_of(cls, holder: "VirtualWorker", spec: PointerSpec) -> "PointerTensor":
        """A pointer stored on `holder`, shown to me: it owns nothing and deletes nothing."""
        location = holder.client.handle_for(spec.location, spec.address)
        meta = torch.empty(spec.shape, dtype=spec.dtype, device="meta")
        return cls._make(meta, location, spec.id, spec.id_at_location, is_chain=False, owner=holder)

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return f"[PointerTensor | {self.owner.id}:{self.id} -> {self.location.id}:{self.id_at_location}]"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a PointerTensor cannot be pickled; .send() it to a worker instead")

    # ---- the pointer's own API
    def _check_usable(self) -> "RemoteRef":
        ref = self._ref
        if ref is None:
            raise SpentPointerError(f"{self!r} is a view of what {self.owner.id!r} holds; it cannot be used from here")
        if ref.spent is not None:
            raise SpentPointerError(f"{self!r} can no longer be used: {ref.spent}")
        return ref

    def _spend(self, why: str) -> None:
        self._check_usable().spent = why

    def send(self, worker: "VirtualWorker") -> "PointerTensor":
        """Hand this pointer to `worker` (rule 3): it stores it under this pointer's id;
        no tensor data moves. This pointer is spent; use the one returned."""
        self._check_usable()
        client = self.location.client
        # The new holder will talk to our location: what we sent there must land first.
        client.barrier(except_address=worker.address)
        spec = PointerSpec(self.id, self.location.id, self.location.address, self.id_at_location, tuple(self.shape), self.dtype, self.requires_grad)
        client.submit(worker.address, StoreObject(self.id, spec))
        self._spend(f"it was sent to {worker.id!r}; use the pointer .send() returned")
        return PointerTensor._make(_meta_of(self), worker, new_id(), self.id, is_chain=True)

    def get(self) -> Any:
        """Bring back one level (rule 5): the tensor, or on a chain the next pointer."""
        self._check_usable()
        # On a chain the answer depends on relays the first hop may still have out.
        obj = self.location.client.request(self.location.address, GetObject(self.id_at_location), after_all=self._is_chain)
        self._spend("it was already fetched with .get()")
        if isinstance(obj, PointerSpec):
            location = self.location.client.handle_for(obj.location, obj.address)
            return PointerTensor._make(_meta_of(self), location, obj.id, obj.id_at_location, is_chain=True)
        return obj

    def clone(self, *args: Any, **kwargs: Any) -> "PointerTensor":
        """A second handle to the same remote object (rule 9); it keeps the object alive too."""
        self._check_usable()
        self.location.client.submit(self.location.address, IncRef((self.id_at_location,)))
        return PointerTensor._make(_meta_of(self), self.location, new_id(), self.id_at_location, is_chain=self._is_chain)

    def copy(self) -> "PointerTensor":
        """A new object at the location, with its own id (rule 9)."""
        return _run_remote(torch.Tensor.clone, (self,), {})

    # ---- torch dispatch
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _LOCAL:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func in _NEEDS_VALUE:
            raise ValueNeedsGetError(f"{_name(func)} needs the value here; call .get() on the pointer first")
        return _run_remote(func, args, kwargs)


def _meta_of(pointer: PointerTensor) -> torch.Tensor:
    return torch.empty(tuple(pointer.shape), dtype=pointer.dtype, device="meta", requires_grad=pointer.requires_grad)


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _run_remote(func: Any, args: tuple, kwargs: dict) -> Any:
    """Rule 4: run `func` where its pointer arguments point; return pointers to the results."""
    name = ops.name_of(func)
    if name is None:
        raise UnsupportedOperationError(f"{_name(func)} is not a torch function fedq runs on remote tensors")
    leaves, spec = tree_flatten((args, kwargs))
    pointers = [leaf for leaf in leaves if isinstance(leaf, PointerTensor)]
    for pointer in pointers:
        pointer._check_usable()
    places = {p.location.address: p.location.id for p in pointers}
    local = [l for l in leaves if isinstance(l, torch.Tensor) and not isinstance(l, PointerTensor)]
    if len(places) > 1 or local:
        names = sorted(set(places.values())) + (["me"] if local else [])
        raise TensorsNotCollocatedError(f"{name} mixes tensors held in different places: {', '.join(names)}")
    location = pointers[0].location
    client = location.client
    if any(p._is_chain for p in pointers):
        client.barrier(except_address=location.address)  # the op is relayed: earlier writes elsewhere land first
    wire_args, wire_kwargs = tree_unflatten([Ref(l.id_at_location) if isinstance(l, PointerTensor) else l for l in leaves], spec)
    is_chain = pointers[0]._is_chain

    if ops.is_inplace(name):  # rule 4: no new object; the pointer stays the handle
        client.submit(location.address, RunOp(name, wire_args, wire_kwargs, ()))
        return None if name == "Tensor.__setitem__" else args[0]

    try:  # work out the results' metadata without the data: the pointers are meta tensors underneath
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        results, out_spec = tree_flatten(out)
    except Exception:
        out_spec = None
    if out_spec is not None:
        tensors = [r for r in results if isinstance(r, torch.Tensor)]
        if not tensors:
            return out  # metadata only (a size, a stride): answered here
        if len(tensors) != len(results):
            raise ValueNeedsGetError(f"{name} returns Python values along with tensors; .get() the tensors first")
        ids = tuple(new_id() for _ in results)
        meta = tuple((tuple(r.shape), r.dtype, r.requires_grad) for r in results)
        client.submit(location.address, RunOp(name, wire_args, wire_kwargs, ids, meta))
        return tree_unflatten(
            [PointerTensor._make(r.detach().requires_grad_(r.requires_grad), location, new_id(), id, is_chain=is_chain) for r, id in zip(results, ids)],
            out_spec,
        )

    # Shapes that depend on the data (nonzero, masked_select...): the worker runs it and tells us.
    answer = client.request(location.address, RunOp(name, wire_args, wire_kwargs, None))

    def to_pointer(remote: Any) -> Any:
        if not isinstance(remote, PointerSpec):
            return remote
        holder = client.handle_for(remote.location, remote.address)
        return PointerTensor.pointing_at(holder, remote.id_at_location, remote.shape, remote.dtype, remote.requires_grad, is_chain=is_chain)

    return tree_map(to_pointer, answer)


def send_tensor(tensor: torch.Tensor, worker: "VirtualWorker") -> PointerTensor:
    """Rule 2: `worker` stores a copy of `tensor`; the local tensor is unchanged."""
    from .client import Client

    if isinstance(worker, Client):
        return tensor  # sending to me: nothing to do
    client = worker.client
    id_at_location = new_id()
    large = tensor.element_size() * tensor.numel() >= INBAND_LIMIT
    call = client.submit(worker.address, StoreObject(id_at_location, tensor), wait=large)
    if large:
        # Large payloads go zero-copy: wait until they have arrived, so that the caller
        # changing `tensor` afterwards cannot change what the worker stores.
        client.wait(call)
    return PointerTensor.pointing_at(worker, id_at_location, tensor.shape, tensor.dtype, tensor.requires_grad)
