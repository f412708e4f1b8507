"""Pointers: local handles to tensors that live on a worker.

`PointerTensor` is a `torch.Tensor` subclass over a *meta* tensor (shape, dtype,
requires_grad, no storage); `PointerParameter` is an `nn.Parameter` whose class
was swapped in place by `model.send()`, so optimizers built over the model keep
working. Both carry the same `Pointer` behaviour: through `__torch_function__`
they forward every torch operation to the worker that holds the data (rule 4)
and answer metadata questions from their meta tensor (rule 12). Because they
are real tensors, `torch.matmul(x, w)`, `F.relu(x)` and `nn.Linear` accept them.

What a pointer forwards, and nothing more:
- torch functions, tensor methods, operators and properties named in `ops` -> `RunOp`
- `send` -> `StoreObject` of the pointer itself (rule 3), `get` -> `GetObject` (rule 5),
  `request` -> `RequestRelease` (a private object's release, for its owner to approve),
  `move` -> `MoveObject` (rule 7), `remote_get` -> `RemoteGet` (rule 8),
  `clone` -> `IncRef` (rule 9), its death -> a queued delete (rule 6).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import torch
from torch.utils._pytree import tree_map

from . import ops
from .codec import INBAND_LIMIT
from .errors import (
    RequestNotNeededError,
    SpentPointerError,
    TensorsNotCollocatedError,
    ValueNeedsGetError,
    WorkerUnreachableError,
)
from .ids import new_id
from .refs import RemoteRef
from .messages import GetObject, HoldsObject, IncRef, MoveObject, PointerSpec, Ref, RemoteGet, RequestRelease, RunOp, StoreObject

if TYPE_CHECKING:
    from .client import Client


class Location(Protocol):
    """What a pointer needs of the worker its object is on: a `handle.VirtualWorker` (handle.py
    builds pointers, so this module does not import it)."""

    id: str
    address: str
    client: "Client"
    is_local: bool  # False: "me", the client, is the one local worker

    @property
    def incarnation(self) -> bytes: ...

    def worker_at(self, id: str, address: str) -> "Location": ...


_T = torch.Tensor
# Answered from the meta tensor: no round trip (rule 12).
_LOCAL = {
    _T.shape.__get__, _T.dtype.__get__, _T.ndim.__get__, _T.requires_grad.__get__, _T.is_leaf.__get__,
    _T.layout.__get__, _T.device.__get__, _T.is_sparse.__get__, _T.is_cuda.__get__, _T.is_quantized.__get__,
    _T.is_meta.__get__, _T.retains_grad.__get__, _T.grad_fn.__get__,
    _T.dim, _T.size, _T.numel, _T.nelement, _T.ndimension, _T.element_size,
    _T.is_floating_point, _T.is_complex, _T.__len__, _T.__hash__, _T.stride, _T.is_contiguous,
}
# Need the values here: the user must .get() first (rule 12).
_NEEDS_VALUE = {
    _T.item, _T.tolist, _T.numpy, _T.__bool__, _T.__float__, _T.__int__, _T.__index__, _T.__complex__, _T.__array__,
}

# What a pointer knows of its object's .grad, so an optimizer reading p.grad costs no round trip.
_GRAD_UNKNOWN = "unknown"  # ask the worker (pointers on chains: backward ran further away)
_GRAD_PRESENT = "present"  # the worker has one; a pointer to it is made on first read


class GradTracker:
    """One client's pointers to leaves that need grads, by pointer id: told after each backward
    whether their object has a .grad (`Pointer._grad_state`), so that optimizers read p.grad
    without a round trip."""

    _of_client: "weakref.WeakKeyDictionary[Client, GradTracker]" = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._tracked: weakref.WeakValueDictionary[int, Pointer] = weakref.WeakValueDictionary()

    @classmethod
    def of(cls, client: "Client") -> "GradTracker":
        tracker = cls._of_client.get(client)
        if tracker is None:  # (setdefault: two threads meeting a client first share one tracker)
            tracker = cls._of_client.setdefault(client, cls())
        return tracker

    def track(self, pointer: "Pointer") -> None:
        self._tracked[pointer.id] = pointer

    def forget(self, pointer: "Pointer") -> None:
        """`pointer` stops being one (a parameter of a model that was fetched: it lives on as a
        plain Parameter, and has no location to compare a backward's with)."""
        if self._tracked.get(pointer.id) is pointer:
            del self._tracked[pointer.id]

    def leaves_at(self, address: str, ids: frozenset[int]) -> list["Pointer"]:
        """The usable tracked pointers to the objects `ids` on `address` (every handle to each)."""
        return [
            pointer for pointer in list(self._tracked.values())
            if isinstance(pointer, Pointer) and pointer.location.address == address and pointer.id_at_location in ids
            and pointer._ref is not None and not pointer._ref.spent
        ]

    def changed(self, address: str, ids_with_grad: set[int] | None) -> None:
        """A backward ran on `address`; `ids_with_grad` (None: not known) now have a .grad there."""
        for pointer in list(self._tracked.values()):
            if not isinstance(pointer, Pointer):
                continue  # (forgotten above when it became local; a leftover would have no location)
            if pointer.location.address != address or pointer._ref is None or pointer._ref.spent:
                continue
            if ids_with_grad is None:
                pointer._grad_state = _GRAD_UNKNOWN
            elif pointer.id_at_location in ids_with_grad:
                if not isinstance(pointer._grad_state, Pointer):  # a cached handle still names the same grad
                    pointer._grad_state = _GRAD_PRESENT
            else:
                pointer._grad_state = None


class Pointer:
    """The behaviour every pointer class shares; its state lives in the instance __dict__."""

    id: int
    id_at_location: int
    location: "Location"
    owner: Any  # the Client ("me"), or a worker whose store this pointer was listed from
    tags: set[str]
    description: str | None
    _ref: RemoteRef | None
    _meta: torch.Tensor
    _is_chain: bool
    _grad_state: Any  # None, _GRAD_UNKNOWN, _GRAD_PRESENT, or a Pointer to the grad

    def _init_pointer(
        self,
        meta: torch.Tensor,
        location: "Location",
        id: int,
        id_at_location: int,
        *,
        is_chain: bool,
        owner: Any = None,
        grad: Any = None,
        tags: Iterable[str] = (),
        description: str | None = None,
    ) -> None:
        self.id = id
        self.id_at_location = id_at_location
        self.location = location
        self.owner = owner if owner is not None else location.client
        self._ref = RemoteRef(location.client.refs, location.address, id_at_location) if owner is None else None
        self._meta = meta
        self._is_chain = is_chain
        self._grad_state = _GRAD_UNKNOWN if is_chain and meta.requires_grad else grad
        self.tags = set(tags)
        self.description = description
        if meta.requires_grad and meta.is_leaf and owner is None:
            GradTracker.of(location.client).track(self)

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return f"[{type(self).__name__} | {self.owner.id}:{self.id} -> {self.location.id}:{self.id_at_location}]"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a pointer cannot be pickled; .send() it to a worker instead")

    # ---- state
    def _check_usable(self) -> RemoteRef:
        ref = self._ref
        if ref is None:
            raise SpentPointerError(f"{self!r} is a view of what {self.owner.id!r} holds; it cannot be used from here")
        if ref.spent is not None:
            raise SpentPointerError(f"{self!r} can no longer be used: {ref.spent}")
        return ref

    def _spend(self, why: str) -> None:
        self._check_usable().spend(why)

    def _spec(self) -> PointerSpec:
        return PointerSpec(
            self.id, self.location.id, self.location.address, self.id_at_location,
            tuple(self._meta.shape), self._meta.dtype, self._meta.requires_grad, tuple(sorted(self.tags)), self.description,
            self.location.incarnation,
        )

    def _relocate(self, location: "Location") -> None:
        self._check_usable().address = location.address
        self.location = location
        if isinstance(self._grad_state, Pointer):  # the grad moved along; drop the handle to the old one
            self._grad_state = _GRAD_PRESENT

    # ---- the pointer's own API
    def send(self, worker: "Location") -> "PointerTensor":
        """Hand this pointer to `worker` (rule 3): it stores it under this pointer's id;
        no tensor data moves. This pointer is spent; use the one returned."""
        self._check_usable()
        client = self.location.client
        # The new holder will talk to our location: what we sent there must land first.
        client.barrier(except_address=worker.address)
        client.submit(worker.address, StoreObject(self.id, self._spec()))
        # Our reference at the next hop is the new holder's now (for listings; frees nothing).
        client.refs.hand_over(self.location.address, self.id_at_location, client.holder_name, client.peers.holder_name_of(worker.id, worker.address))
        self._spend(f"it was sent to {worker.id!r}; use the pointer .send() returned")
        return PointerTensor._make(_fresh_meta(self._meta), worker, new_id(), self.id, is_chain=True)

    def get(
        self, *, epsilon: float | None = None, bounds: tuple[float, float] | None = None, request: bool = False, reason: str = ""
    ) -> Any:
        """Bring back one level (rule 5): the tensor, or on a chain the next pointer.

        With `epsilon`, a private aggregate over a dataset's records comes back with
        differential privacy: `x.sum().get(epsilon=0.1, bounds=(0, 10))` clamps each value to
        `bounds` (default: the data owner's), adds OpenDP's Laplace noise and charges ε to
        the dataset's budget (PrivacyBudgetExceededError once spent). A public object comes
        back exact, charged nothing.

        `request=True` (without `epsilon`): for a private object, file a request with `reason`
        for its owner to approve first (`request()`); until approved this raises RequestPendingError."""
        self._check_usable()
        if request and epsilon is None:
            try:
                self.request(reason)
            except RequestNotNeededError:
                pass  # not private: it comes back as it is
        # (On a chain, the first hop answers only once the relay that made the object is done.)
        obj = self.location.client.request(self.location.address, GetObject(self.id_at_location, epsilon, bounds))
        self._spend("it was already fetched with .get()")
        return self._received(obj)

    def request(self, reason: str = "") -> int:
        """Ask the data owner to let this private object leave (requests.py): a pending request
        on its worker, with `reason` for the owner to read; returns the request's id. Once the
        owner approves (`fedq approve`), `.get()` succeeds, once. Asking again names the same request."""
        self._check_usable()
        return self.location.client.request(self.location.address, RequestRelease(self.id_at_location, reason))

    def _received(self, obj: Any) -> Any:
        if isinstance(obj, PointerSpec):
            # The reference at the next hop was our location's; it is ours now (our location told it).
            location = self.location.worker_at(obj.location, obj.address)
            return PointerTensor._make(_fresh_meta(self._meta), location, obj.id, obj.id_at_location, is_chain=True)
        return obj

    def move(self, worker: Any) -> "Pointer":
        """Rule 7: the data goes from its worker straight to `worker` (never through me),
        keeping its id; this pointer then points there. `move(me)` is `get()`."""
        self._check_usable()
        if worker.is_local:
            return self.get()
        if worker.address != self.location.address:
            client = self.location.client
            try:
                client.request(self.location.address, MoveObject(self.id_at_location, worker.id, worker.address, worker.incarnation), after_all=self._is_chain)
            except WorkerUnreachableError:
                # The source may have died after the destination stored the object but
                # before it could say so: then the move did happen, and the pointer follows.
                if not client.request(worker.address, HoldsObject(self.id_at_location)):
                    raise
                # (if the source lives, its relay timed out: the copy it still holds is ours)
                client.refs.delete(self.location.address, self.id_at_location)
            self._relocate(worker)
        return self

    def remote_get(self) -> "Pointer":
        """Rule 8: on me -> alice -> bob, alice fetches bob's object and keeps it."""
        self._check_usable()
        still_chain = self.location.client.request(self.location.address, RemoteGet(self.id_at_location), after_all=True)
        self._is_chain = bool(still_chain)
        return self

    def clone(self, *args: Any, **kwargs: Any) -> "PointerTensor":
        """A second handle to the same remote object (rule 9); it keeps the object alive too."""
        self._check_usable()
        self.location.client.submit(self.location.address, IncRef((self.id_at_location,)))
        handle = PointerTensor._make(_fresh_meta(self._meta), self.location, new_id(), self.id_at_location, is_chain=self._is_chain)
        if hasattr(self, "_grad_from"):  # the same object: made by the same ops
            handle._grad_from = self._grad_from
        return handle

    def copy(self) -> "PointerTensor":
        """A new object at the location, with its own id (rule 9)."""
        return _run_remote(torch.Tensor.clone, (self,), {})

    def tag(self, *tags: str) -> "Pointer":
        self.tags.update(tags)
        return self

    def set_(self, *args: Any, **kwargs: Any) -> "Pointer":
        # (Tensor.set_ skips __torch_function__: without this it would only change the local shape)
        raise ops.unsupported("Tensor.set_")

    def describe(self, description: str) -> "Pointer":
        self.description = description
        return self

    # ---- torch dispatch
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _LOCAL:
            return _on_meta(func, args, kwargs)
        special = _SPECIAL.get(func)
        if special is not None:
            return special(*args, **kwargs)
        if func in _NEEDS_VALUE:
            raise ValueNeedsGetError(f"{_name(func)} needs the value here; call .get() on the pointer first")
        return _run_remote(func, args, kwargs)


class PointerTensor(Pointer, torch.Tensor):
    """`[PointerTensor | OWNER:ID -> LOCATION:ID_AT_LOCATION]`"""

    @staticmethod
    def __new__(cls, *args: Any, **kwargs: Any) -> "PointerTensor":
        raise TypeError("PointerTensors are made by .send(), by operations on pointers, or by .get() on a chain")

    @classmethod
    def _make(cls, meta: torch.Tensor, location: "Location", id: int, id_at_location: int, **state: Any) -> "PointerTensor":
        self = torch.Tensor._make_subclass(cls, meta, meta.requires_grad)
        self._init_pointer(meta, location, id, id_at_location, **state)
        return self

    @classmethod
    def from_spec(cls, location: "Location", spec: PointerSpec, *, is_chain: bool, owner: Any = None, id: int | None = None) -> "PointerTensor":
        meta = torch.empty(spec.shape, dtype=spec.dtype, device="meta", requires_grad=spec.requires_grad)
        return cls._make(
            meta, location, spec.id if id is None else id, spec.id_at_location,
            is_chain=is_chain, owner=owner, tags=spec.tags, description=spec.description,
        )

    @classmethod
    def view_of(cls, holder: "Location", spec: PointerSpec) -> "PointerTensor":
        """A pointer stored on `holder`, shown to me: it owns nothing and deletes nothing."""
        return cls.from_spec(holder.worker_at(spec.location, spec.address), spec, is_chain=False, owner=holder)


class PointerParameter(Pointer, torch.nn.Parameter):
    """An `nn.Parameter` of a sent model. The same Python object as before `send`, so an
    optimizer built over the model keeps it; its local storage is dropped."""

    def __deepcopy__(self, memo: dict) -> "PointerParameter":
        """`model.copy()` of a sent model: a new parameter made where the data is."""
        copy = torch.nn.Parameter(torch.empty(0, dtype=self._meta.dtype), requires_grad=self._meta.requires_grad)
        id_at_location = new_id()
        client = self.location.client
        # A clone under no_grad is a new leaf with its own storage; then it learns to need grads.
        meta = ((tuple(self._meta.shape), self._meta.dtype, False),)
        client.submit(self.location.address, RunOp("Tensor.clone", (Ref(self.id_at_location),), {}, (id_at_location,), meta, False))
        if self._meta.requires_grad:
            client.submit(self.location.address, RunOp("Tensor.requires_grad_", (Ref(id_at_location), True), {}, ()))
        _become_pointer(copy, self.location, id_at_location, is_chain=self._is_chain)
        memo[id(self)] = copy
        return copy


def _become_pointer(param: torch.nn.Parameter, location: "Location", id_at_location: int, *, is_chain: bool = False, grad: Any = None) -> PointerParameter:
    meta = torch.empty(tuple(param.shape), dtype=param.dtype, device="meta", requires_grad=param.requires_grad)
    param.grad = None
    param.data = torch.empty(0, dtype=param.dtype)  # the values live on the worker now
    param.__class__ = PointerParameter
    param._init_pointer(meta, location, new_id(), id_at_location, is_chain=is_chain, grad=grad)
    param._grad_from = frozenset((id_at_location,))  # a leaf there: its own grad's only source
    return param


def _become_local(param: PointerParameter, value: torch.Tensor) -> torch.nn.Parameter:
    param._spend("the model was fetched with .get()")
    GradTracker.of(param.location.client).forget(param)
    for attr in ("id", "id_at_location", "location", "owner", "tags", "description", "_ref", "_meta", "_is_chain", "_grad_state", "_grad_from"):
        param.__dict__.pop(attr, None)
    param.__class__ = torch.nn.Parameter
    param.data = value.detach()
    param.grad = value.grad
    return param


def _fresh_meta(meta: torch.Tensor) -> torch.Tensor:
    """A leaf meta tensor of its own (in-place ops change it alone), like `meta`."""
    fresh = meta.detach()
    return fresh.requires_grad_() if meta.requires_grad else fresh


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _metas(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    leaves, spec = ops.flatten(args, kwargs)
    return ops.unflatten([a._meta if isinstance(a, Pointer) else a for a in leaves], spec)


def _on_cpu(device: Any) -> bool:
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cpu"


def _on_meta(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run `func` on the pointers' meta tensors: metadata, and results' shapes, without data."""
    meta_args, meta_kwargs = _metas(args, kwargs)
    if func is torch.Tensor.to:  # workers compute on the CPU: `x.to(device)` (Part 06) is a dtype change at most
        meta_args = tuple("meta" if _on_cpu(a) else a for a in meta_args)
        if _on_cpu(meta_kwargs.get("device")):
            meta_kwargs = {**meta_kwargs, "device": "meta"}
    with torch._C.DisableTorchFunctionSubclass():
        return func(*meta_args, **meta_kwargs)


def _run_remote(func: Any, args: tuple, kwargs: dict) -> Any:
    """Rule 4: run `func` where its pointer arguments point; return pointers to the results."""
    name = ops.name_of(func)
    if name is None:
        raise ops.unsupported(_name(func))
    leaves, spec = ops.flatten(args, kwargs)
    pointers = [leaf for leaf in leaves if isinstance(leaf, Pointer)]
    for pointer in pointers:
        pointer._check_usable()
    places = {p.location.address: p.location.id for p in pointers}
    local = [l for l in leaves if isinstance(l, torch.Tensor) and not isinstance(l, Pointer)]
    if len(places) > 1 or local:
        names = sorted(set(places.values())) + (["me"] if local else [])
        hint = " (a tensor made here, not sent: .send() it to the pointers' worker)" if local else ""
        raise TensorsNotCollocatedError(
            f"{name} mixes tensors held in different places: {', '.join(names)}; .send() or .move() them to one worker first{hint}"
        )
    location = pointers[0].location
    client = location.client
    is_chain = any(p._is_chain for p in pointers)
    if is_chain:
        client.barrier(except_address=location.address)  # the op is relayed: earlier writes elsewhere land first
    wire_args, wire_kwargs = ops.unflatten([Ref(l.id_at_location) if isinstance(l, Pointer) else l for l in leaves], spec)
    grad_enabled = torch.is_grad_enabled()

    if ops.is_inplace(name):  # rule 4: no new object; the pointer stays the handle
        client.submit(location.address, RunOp(name, wire_args, wire_kwargs, (), None, grad_enabled))
        _in_place_on_meta(func, args, kwargs, leaves, spec)  # keep our metadata in step (unsqueeze_, requires_grad_, data = ...)
        target = args[0] if args else None
        if isinstance(target, Pointer) and target._meta.requires_grad and target._ref is not None:
            if grad_enabled and (hasattr(target, "_grad_from") or not target._meta.is_leaf):
                # (x[i] = v: x is made from v's leaves too; a tensor that needed no grads before is no leaf)
                made_from = pointers if hasattr(target, "_grad_from") else [p for p in pointers if p is not target]
                target._grad_from = _grad_sources(made_from)
            elif target._meta.is_leaf:
                GradTracker.of(client).track(target)  # (requires_grad_() made it a leaf whose .grad backward writes)
                target._grad_from = frozenset((target.id_at_location,))
        return None if name in ("Tensor.__setitem__",) or name.endswith(".__set__") else args[0]

    inferred = _infer(func, args, kwargs, leaves, spec)
    if inferred is not None:
        results, out_spec, result_meta = inferred
        tensors = [r for r in results if isinstance(r, torch.Tensor)]
        if not tensors:
            return ops.unflatten_result(results, out_spec)  # metadata only (a size, a stride): answered here
        if len(tensors) != len(results):
            raise ValueNeedsGetError(f"{name} returns Python values along with tensors; .get() the tensors first")
        made = _pipelined(location, RunOp(name, wire_args, wire_kwargs, None, result_meta, grad_enabled), results, is_chain)
        if grad_enabled:
            _note_grad_sources(made, pointers)
        return ops.unflatten_result(made, out_spec)

    # Shapes that depend on the data (nonzero, masked_select...): the worker runs it and tells us.
    answer = client.request(location.address, RunOp(name, wire_args, wire_kwargs, None, None, grad_enabled))

    def to_pointer(remote: Any) -> Any:
        if not isinstance(remote, PointerSpec):
            return remote
        pointer = PointerTensor.from_spec(location.worker_at(remote.location, remote.address), remote, is_chain=is_chain, id=new_id())
        if remote.requires_grad:  # made from leaves we cannot name here: a backward through it asks
            pointer._grad_from = None
        return pointer

    return tree_map(to_pointer, answer)


_warm_up: threading.Thread | None = None


def warm_up_meta_kernels() -> None:
    """The first op torch runs on meta tensors imports its reference kernels (~1 s here).
    Start that in the background while workers start, not on the user's first op. Not a
    daemon: one killed inside torch at interpreter exit aborts the process (exit code 134)."""
    global _warm_up
    if _warm_up is None:
        _warm_up = threading.Thread(target=lambda: torch.empty(1, device="meta") + 1, name="fedq-warm-up")
        _warm_up.start()


_META_CACHE: dict[Any, Any] = {}
_META_CACHE_SIZE = 4096
_NOT_INFERRED = object()


def _infer(func: Any, args: tuple, kwargs: dict, leaves: list, spec: Any) -> tuple[list, Any, tuple] | None:
    """The results' meta tensors (flattened), structure and wire metadata (`RunOp.result_meta`),
    worked out on meta tensors; None when that cannot be done (the shape depends on the data).
    Running an op on meta tensors costs far more than sending it, so answers are remembered
    by op, structure and input metadata."""
    key = _op_key(func, spec, leaves, lambda meta: (meta.shape, meta.dtype, meta.requires_grad))
    cached = _META_CACHE.get(key, None) if key is not None else None
    if cached is None:
        try:
            results, out_spec = ops.flatten_result(_on_meta(func, args, kwargs))
            cached = (results, out_spec, _result_meta(results))
        except Exception:
            cached = _NOT_INFERRED
        if key is not None:
            if len(_META_CACHE) >= _META_CACHE_SIZE:
                _META_CACHE.clear()
            _META_CACHE[key] = cached
    return None if cached is _NOT_INFERRED else cached


_IN_PLACE_KEEPS: set = set()  # in-place ops, by op and input metadata, that leave the metadata as it was


def _in_place_on_meta(func: Any, args: tuple, kwargs: dict, leaves: list, spec: Any) -> None:
    """Run an in-place op on the meta tensors, so that our metadata follows the worker's. That
    costs ~1 ms (torch's Python reference kernels), most often for nothing (an optimizer's
    `add_`): an op that left the metadata as it was is remembered by op and input metadata
    (what decides its effect on them) and not run again."""
    key = _op_key(func, spec, leaves, _meta_state)
    if key is not None and key in _IN_PLACE_KEEPS:
        return
    target = args[0]._meta if args and isinstance(args[0], Pointer) else None
    before = None if target is None else _meta_state(target)
    try:
        _on_meta(func, args, kwargs)
    except Exception:
        return
    if key is not None and target is not None and _meta_state(target) == before:
        if len(_IN_PLACE_KEEPS) >= _META_CACHE_SIZE:
            _IN_PLACE_KEEPS.clear()
        _IN_PLACE_KEEPS.add(key)


def _op_key(func: Any, spec: Any, leaves: list, describe: Callable[[torch.Tensor], tuple]) -> tuple | None:
    """What an op's effect on metadata depends on, as a cache key: the op, the arguments'
    structure, grad mode, and each pointer's metadata (`describe`d) or each other value; None
    for an unhashable argument (a list, a slice): then it is worked out each time."""
    key = (func, spec, torch.is_grad_enabled(), tuple(
        describe(leaf._meta) if isinstance(leaf, Pointer) else (type(leaf), leaf) for leaf in leaves
    ))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _meta_state(meta: torch.Tensor) -> tuple:
    return (tuple(meta.shape), meta.dtype, meta.requires_grad, meta.is_leaf, meta.stride())


def _result_meta(metas: list) -> tuple:
    """(shape, dtype, requires_grad) per result: what a relaying worker needs to store pointers."""
    return tuple((tuple(m.shape), m.dtype, m.requires_grad) for m in metas if isinstance(m, torch.Tensor))


def _pipelined(location: "Location", op: RunOp, metas: list[torch.Tensor], is_chain: bool) -> list["PointerTensor"]:
    """Send `op` without waiting (rule 1: we name the results), and return pointers to them."""
    op.result_ids = tuple(new_id() for _ in metas)
    if op.result_meta is None:
        op.result_meta = _result_meta(metas)
    # The pointers first: a Ctrl-C between the two then leaves deletes of ids never stored
    # (ignored), not stored objects that no pointer holds.
    pointers = [PointerTensor._make(_fresh_meta(m), location, new_id(), id, is_chain=is_chain) for m, id in zip(metas, op.result_ids)]
    location.client.submit(location.address, op)
    return pointers


# ---- autograd: .grad without a round trip per parameter
def _read_grad(pointer: Pointer) -> Any:
    state = pointer._grad_state
    if state is None or isinstance(state, Pointer):
        return state
    if state == _GRAD_PRESENT:  # pipelined: a handle to the grad it has (same shape and dtype)
        pointer._check_usable()
        op = RunOp("Tensor.grad.__get__", (Ref(pointer.id_at_location),), {}, None)
        grad = _pipelined(pointer.location, op, [pointer._meta.detach()], pointer._is_chain)[0]
    else:  # unknown: ask
        pointer._check_usable()
        answer = pointer.location.client.request(
            pointer.location.address, RunOp("Tensor.grad.__get__", (Ref(pointer.id_at_location),), {}, None), after_all=True
        )
        grad = None if answer is None else PointerTensor.from_spec(
            pointer.location.worker_at(answer.location, answer.address), answer, is_chain=pointer._is_chain, id=new_id()
        )
    pointer._grad_state = grad
    return grad


def _write_grad(pointer: Pointer, value: Any) -> None:
    _run_remote(torch.Tensor.grad.__set__, (pointer, value), {})
    pointer._grad_state = value if value is None or isinstance(value, Pointer) else _GRAD_UNKNOWN


def _backward(pointer: Pointer, *args: Any, **kwargs: Any) -> None:
    """`loss.backward()` on the worker, pipelined when we know which leaves it gives a grad
    (`_leaves_given_grads`), so that neither it nor an optimizer step that follows waits; else one
    round trip, whose answer says which."""
    pointer._check_usable()
    client = pointer.location.client
    wire_args, wire_kwargs = tree_map(lambda a: Ref(a.id_at_location) if isinstance(a, Pointer) else a, ((pointer, *args), kwargs))
    op = RunOp("Tensor.backward", wire_args, wire_kwargs, (), None, torch.is_grad_enabled())
    given = _leaves_given_grads(pointer, args, kwargs)
    if given is not None:
        client.submit(pointer.location.address, op)  # (a failure is raised at the next wait, naming the worker)
        for leaf in given:
            if not isinstance(leaf._grad_state, Pointer):  # a cached handle still names the same grad
                leaf._grad_state = _GRAD_PRESENT
        return
    with_grad = client.request(pointer.location.address, op, after_all=pointer._is_chain)
    GradTracker.of(client).changed(pointer.location.address, None if pointer._is_chain else set(with_grad or ()))


def _grad_sources(pointers: list[Pointer]) -> frozenset[int] | None:
    """The objects (ids on their worker) of the leaves that `pointers` were computed from, whose
    .grad a backward through them writes; None when some were made where we cannot see."""
    found: set[int] = set()
    for pointer in pointers:
        if pointer._meta.requires_grad:
            # (a leaf names itself: sent, a parameter, requires_grad_(); a pointer made any other
            # way than by an op here, a plan's output say, names nothing: not known)
            sources = getattr(pointer, "_grad_from", None)
            if sources is None:
                return None
            found |= sources
    return frozenset(found)


def _note_grad_sources(results: list[Pointer], inputs: list[Pointer]) -> None:
    """Results that need grads remember the leaves they came from (ids only: no pointer kept alive)."""
    needing = [r for r in results if r._meta.requires_grad]
    if needing:
        sources = _grad_sources(inputs)
        for result in needing:
            result._grad_from = sources


def _leaves_given_grads(pointer: Pointer, args: tuple, kwargs: dict) -> list[Pointer] | None:
    """The pointers whose objects backward from `pointer` gives a .grad: the leaves it was computed
    from, which each op's results remember (`_note_grad_sources`: an id set per result, no meta op,
    no round trip). None when that is not known here: a chain (backward runs further away), an op
    whose result the worker described (its shape needed the data), `inputs=`, or a root that
    needs no grad (the worker says why, at once)."""
    others = [a for a in ops.flatten(args, kwargs)[0] if isinstance(a, Pointer)]
    address = pointer.location.address
    if pointer._is_chain or not pointer._meta.requires_grad or kwargs.get("inputs") is not None or any(a._is_chain or a.location.address != address for a in others):
        return None
    sources = _grad_sources([pointer])
    return None if sources is None else GradTracker.of(pointer.location.client).leaves_at(address, sources)


_SPECIAL = {
    _T.grad.__get__: _read_grad,
    _T.grad.__set__: _write_grad,
    _T.backward: _backward,
}


# ---- optimizers: their state lives where their parameters do
def state_follows_parameters(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """Before every optimizer step (TorchHook registers this for all optimizers): state that an
    optimizer made here for a parameter that is now a pointer (Adagrad makes its sums in
    `__init__`, before `model.send()`) is sent to where the parameter is. What is sent is the
    client's own tensor, so nothing private moves. Per-step counters (`step`, read with
    `.item()`) and state of another shape stay here; state on another worker than its
    parameter is an error that says what to do, not a silent move of one owner's state."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param not in optimizer.state:
                continue
            state = optimizer.state[param]
            if not isinstance(param, Pointer):
                away = {v.location.id for v in state.values() if isinstance(v, Pointer)}
                if away:  # (the model was fetched: its optimizer's state stayed where it trained)
                    raise TensorsNotCollocatedError(
                        f"{type(optimizer).__name__}'s state for a parameter here is on {', '.join(sorted(away))}: "
                        "step it where the model is (model.send() there), or use a new optimizer here"
                    )
                continue
            for key, value in list(state.items()):
                if not isinstance(value, torch.Tensor) or key == "step":
                    continue
                if isinstance(value, Pointer):
                    if value.location.address != param.location.address:
                        raise TensorsNotCollocatedError(
                            f"{type(optimizer).__name__}'s {key!r} for a parameter on {param.location.id!r} is on {value.location.id!r}: "
                            "one optimizer per worker (fedq.federated.floptimizer.Optims), or a new optimizer after the send"
                        )
                elif tuple(value.shape) == tuple(param.shape):
                    state[key] = send_tensor(value, param.location)


# ---- many workers, one wait
class Batch:
    """Sends, gets and moves of pointers on many workers, sent together and waited for once
    (`Client.calls_many`): a federated round's releases and moves cost one wait, not one per
    owner. Each does what `model.send(w)`, `Pointer.get` and `model.move(w)` do; `run()` sends them all, and
    applies every answer that came before raising the first error, if any (what moved is
    relocated, what was fetched is spent)."""

    def __init__(self) -> None:
        self._requests: list[tuple[str, Any]] = []
        self._then: list[tuple[bool, Any]] = []  # per request: (is a get, what its answer does here)

    def get(self, pointer: Pointer, *, epsilon: float | None = None, bounds: tuple[float, float] | None = None) -> "Batch":
        """`pointer.get(epsilon=, bounds=)`; its value is in `run()`'s list, in the order of the gets."""
        pointer._check_usable()

        def received(value: Any) -> Any:
            pointer._spend("it was already fetched with .get()")
            return pointer._received(value)

        self._add(pointer, GetObject(pointer.id_at_location, epsilon, bounds), True, received)
        return self

    def send(self, module: torch.nn.Module, worker: "Location") -> "Batch":
        """`module.send(worker)` (rule 13); the parameters large enough to go zero-copy, which a
        send waits for (until the worker has the bytes, the caller must not change them), are
        awaited in `run()`, all together, not one wait each. A model with none is sent at once,
        without waiting; one with some sends all of its parameters in `run()` (the small ones ride
        along: sent first, they would only be waited for by `run()`'s barrier)."""
        params = list(module.parameters())
        for param in params:
            if isinstance(param, Pointer):
                raise ValueError(f"this model is already on {param.location.id!r}; .get() or .move() it")
        awaited = any(p.element_size() * p.numel() >= INBAND_LIMIT for p in params)
        for param in params:
            value, id_at_location = param.detach().requires_grad_(param.requires_grad), new_id()
            _become_pointer(param, worker, id_at_location)  # (the pointer first: a Ctrl-C from here on frees the object)
            message = StoreObject(id_at_location, value, (), None)
            if awaited:
                self._add(param, message, False, lambda _: None)
            else:
                worker.client.submit(worker.address, message)
        for owner, name, buffer in _buffers(module):
            owner._buffers[name] = send_tensor(buffer, worker)
        return self

    def move(self, module: torch.nn.Module, worker: "Location") -> "Batch":
        """`module.move(worker)`: every parameter and buffer straight to `worker`."""
        for pointer in _pointers_of(module):
            if pointer.location.address != worker.address:
                pointer._check_usable()
                message = MoveObject(pointer.id_at_location, worker.id, worker.address, worker.incarnation)
                self._add(pointer, message, False, lambda _, pointer=pointer: pointer._relocate(worker))
        return self

    def _add(self, pointer: Pointer, message: Any, is_get: bool, then: Any) -> None:
        self._client = pointer.location.client
        self._requests.append((pointer.location.address, message))
        self._then.append((is_get, then))

    def run(self, timeout: float | None = None) -> list[Any]:
        """Send everything, wait once; the values of the gets."""
        if not self._requests:
            return []
        calls = self._client.calls_many(self._requests, timeout)
        values, first_error = [], None
        for call, (is_get, then) in zip(calls, self._then):
            if call.error is not None:
                first_error = first_error or call.error
                value = None
            else:
                value = then(call.value)
            if is_get:
                values.append(value)
        self._requests, self._then = [], []
        if first_error is not None:
            raise first_error
        return values


def _pointers_of(module: torch.nn.Module) -> list[Pointer]:
    """A model's parameters and buffers that are pointers."""
    return [p for p in module.parameters() if isinstance(p, Pointer)] + [b for _, _, b in _buffers(module) if isinstance(b, Pointer)]


# ---- what TorchHook installs on torch.Tensor and nn.Module
def send_tensor(tensor: torch.Tensor, worker: "Location") -> PointerTensor:
    """Rule 2: `worker` stores a copy of `tensor`; the local tensor is unchanged."""
    if worker.is_local:
        return tensor  # sending to me: nothing to do
    tags = tuple(sorted(getattr(tensor, "tags", None) or ()))
    description = getattr(tensor, "description", None)
    id_at_location = new_id()
    meta = torch.empty(tuple(tensor.shape), dtype=tensor.dtype, device="meta", requires_grad=tensor.requires_grad)
    pointer = PointerTensor._make(
        meta, worker, new_id(), id_at_location, is_chain=False,
        grad=_GRAD_PRESENT if tensor.is_leaf and tensor.grad is not None else None, tags=tags, description=description,
    )
    if tensor.requires_grad:
        pointer._grad_from = frozenset((id_at_location,))  # stored as a leaf
    _store(tensor, worker, id_at_location, tags, description)
    return pointer


def _store(
    tensor: torch.Tensor, worker: "Location", id_at_location: int, tags: tuple[str, ...] = (), description: str | None = None
) -> None:
    """Have `worker` store a copy of `tensor` under `id_at_location` (one reference). Called
    once a pointer holds that id: a Ctrl-C from here on frees the object (the pointer dies)
    instead of leaving it on the worker with nothing pointing at it."""
    large = tensor.element_size() * tensor.numel() >= INBAND_LIMIT
    call = worker.client.submit(worker.address, StoreObject(id_at_location, tensor, tags, description), wait=large)
    if large:
        # Large payloads go zero-copy: wait until they have arrived, so that the caller
        # changing `tensor` afterwards cannot change what the worker stores.
        worker.client.wait(call)


def tag_tensor(tensor: torch.Tensor, *tags: str) -> torch.Tensor:
    """PySyft's `t.tag("#boston")`: tags travel with `send` and are what `worker.search` matches."""
    existing = getattr(tensor, "tags", None) or set()
    tensor.tags = set(existing) | set(tags)
    return tensor


def describe_tensor(tensor: torch.Tensor, description: str) -> torch.Tensor:
    tensor.description = description
    return tensor


def send_module(module: torch.nn.Module, worker: "Location") -> torch.nn.Module:
    """Rule 13: send every parameter and buffer; the parameters become pointers *in place*
    (large ones all awaited at once: `Batch.send`)."""
    Batch().send(module, worker).run()
    return module


def get_module(module: torch.nn.Module) -> torch.nn.Module:
    """Fetch every parameter and buffer back, in one round trip for the whole model."""
    params = [p for p in module.parameters() if isinstance(p, Pointer)]
    buffers = [(owner, name, b) for owner, name, b in _buffers(module) if isinstance(b, Pointer)]
    pointers = params + [b for _, _, b in buffers]
    if not pointers:
        return module
    client = pointers[0].location.client
    for pointer in pointers:
        pointer._check_usable()
    values = client.request_many([(p.location.address, GetObject(p.id_at_location)) for p in pointers])
    for param, value in zip(params, values):
        _become_local(param, value)
    for (owner, name, pointer), value in zip(buffers, values[len(params):]):
        pointer._spend("the model was fetched with .get()")
        owner._buffers[name] = value
    return module


def move_module(module: torch.nn.Module, worker: "Location") -> torch.nn.Module:
    """Rule 7 for a model: every parameter goes straight to `worker`, in one round trip."""
    Batch().move(module, worker).run()
    return module


def copy_module(module: torch.nn.Module) -> torch.nn.Module:
    """PySyft's `model.copy()`: a deep copy; a sent model's copy is made where it lives."""
    import copy

    return copy.deepcopy(module)


def _buffers(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    return [(owner, name, buffer) for owner in module.modules() for name, buffer in owner._buffers.items() if buffer is not None]
