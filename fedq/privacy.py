"""What may leave a worker: the data owner's privacy rule, decided on the worker alone.

**Taint is a property of memory.** A tensor is private when its storage holds private data:
the data owner's (`owner.add(t, private=True)`, a `Dataset`), a tensor sent tagged
"#private", or anything an op wrote while it read private data. `Privacy.run` runs every op
of a client: when any tensor it reads is private, every tensor it wrote is marked, whatever
the client said the op was. Written means its results, `out=`, its targets, and any argument
whose version counter moved (torch bumps it on every write, named in place or not). Views
share their base's storage, so a view of what became private is private too; marks go when
the storage dies (a weak reference), never before.

**No side channel from private values.** Before an op on private data runs, it runs on
meta tensors (shapes without values): a result whose shape would depend on the values
(`nonzero`, `masked_select`, `unique`, `x[mask]`, a size taken from a private scalar) has no
meta shape and is refused (`ValueDependentShapeError`). A failure of the real op (an index
out of range, say) would tell whether a value crossed a line; it does not raise: its results
are zeros of the meta shape, private, and the failure is logged for the owner.

**Releases only with differential privacy** (dp.py). A private tensor leaves only as:
- a noisy aggregate: `x.sum().get(epsilon=0.1, bounds=(lo, hi))`, a `mean`, a count (the
  sum of a boolean), a `histc`, over the *record axis* (axis 0) of a tensor derived row by row
  from one `Dataset`. The worker tracks, for every private tensor, whether row i depends only
  on records that change at most `per_record` rows (`Rows`); the ops that keep that are listed
  below, everything else drops it. At release the worker clamps every element to the bounds
  (the client's, or the owner's for the dataset's own values), so one record moves the sum by
  at most per_record x (row size) x (hi - lo), whatever was computed before: that is the
  sensitivity OpenDP's Laplace noise is scaled to.
- an object the owner approved (requests.py), or a model update the owner allows: gradients
  that backward() writes on *public* leaves are public when every dataset in the loss says
  `updates="allow"`; otherwise private (an update may then leave only inside a secure
  aggregate). Gradients of private leaves are always private.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_map

from . import dp, ops
from .errors import GetNotPermittedError, NotReleasableError, ValueDependentShapeError

log = logging.getLogger("fedq.privacy")

_MAX_GRAD_CHAIN = 8
UPDATES = ("allow", "refuse")  # what a dataset's owner says of model updates computed from it
MAX_HISTORY = 64  # op lines kept per private tensor, for the owner reviewing a request


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data owner's private dataset: tensors whose axis 0 holds one record (the unit of
    privacy) per row, released only through noisy aggregates within `epsilon` in all."""

    name: str
    epsilon: float = 0.0
    updates: str = "refuse"
    records: int | None = None  # rows of every tensor of it (set by its first tensor)


#: private data the owner put in no dataset (or a client sent tagged "#private"): no releases
UNRELEASED = Dataset("private data outside any dataset")


@dataclass(frozen=True, slots=True)
class Rows:
    """Axis 0 of a tensor holds records of `dataset`: one record changes at most `per_record`
    of its rows. `first`/`step` map row i to record first + i * step where that is all there
    is to it (None: rows of several records), so two tensors of the same rows combine freely."""

    dataset: Dataset
    per_record: int = 1
    first: int | None = 0
    step: int = 1

    def same_rows(self, other: "Rows") -> bool:
        return self.first is not None and (self.dataset, self.first, self.step) == (other.dataset, other.first, other.step)


@dataclass(frozen=True, slots=True)
class Release:
    """How a private aggregate may be released: `kind` ("sum", "mean", "histc") of `source`
    (rows of a dataset, as it was when the aggregate was made) over `dims` (axis 0 among them)."""

    kind: str
    source: torch.Tensor
    stamp: tuple  # the source's memory and its write count then: a later write voids the release
    rows: Rows
    bounds: tuple[float, float] | None  # the owner's, when the source's values are the dataset's own
    dims: tuple[int, ...] | None  # None: every axis
    keepdim: bool = False
    histc: tuple[int, float, float] = (100, 0.0, 0.0)


@dataclass(slots=True)
class Facts:
    """What the worker knows of a private tensor: what it came from, and (while its memory is as
    it was made: `stamp`) its rows and how it may be released."""

    sources: frozenset[Dataset]
    history: tuple[str, ...]
    stamp: tuple
    rows: Rows | None = None
    bounds: tuple[float, float] | None = None
    release: Release | None = None


class Privacy:
    """One worker's private memory, the facts about its private tensors, and its budgets."""

    def __init__(self) -> None:
        self._storages: dict[int, Any] = {}  # storage key -> weak reference to the storage
        # Writes into private memory, per storage: what is known of a tensor (its rows, a release)
        # holds while its memory is unwritten. (Its own _version is not enough: `x.data` is the
        # same memory with a counter of its own, and `x.data = y` swaps the memory uncounted.)
        self._writes: dict[int, int] = {}
        self._facts: dict[int, tuple[Any, Facts]] = {}  # id(tensor) -> (weak reference to it, facts)
        self.datasets: dict[str, Dataset] = {}
        self.ledger = dp.Ledger()

    # ------------------------------------------------------------------ taint

    def __bool__(self) -> bool:
        """Does this worker hold private memory at all? (Most workers don't: one test per op.)"""
        return bool(self._storages)

    def is_private(self, obj: Any) -> bool:
        if not self._storages or not isinstance(obj, torch.Tensor):
            return False
        return _storage_key(obj) in self._storages

    def mark(self, tensor: torch.Tensor, facts: Facts | None = None) -> None:
        """`tensor`'s memory holds private data from now on (and everything sharing it)."""
        storage = _storage_of(tensor)
        key = storage._cdata
        if key not in self._storages:
            self._storages[key] = weakref.ref(storage, functools.partial(self._storage_died, key))
        if facts is None and self._known(tensor) is not None:
            return
        self._facts[id(tensor)] = (weakref.ref(tensor, self._forget), facts or Facts(
            frozenset({UNRELEASED}), ("(memory written while private data was read)",), self.stamp(tensor)))

    def stamp(self, tensor: torch.Tensor) -> tuple:
        """Which memory `tensor` is, and how many times private data was written into it."""
        key = _storage_key(tensor)
        return (key, self._writes.get(key, 0), tuple(tensor.shape), tensor.stride(), tensor.storage_offset())

    def _written(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        self._writes[key] = self._writes.get(key, 0) + 1

    def _storage_died(self, key: int, _: Any) -> None:
        self._storages.pop(key, None)
        self._writes.pop(key, None)

    def _known(self, tensor: torch.Tensor) -> Facts | None:
        known = self._facts.get(id(tensor))
        return known[1] if known is not None and known[0]() is tensor else None

    def _forget(self, reference: Any) -> None:
        for key, (ref, _) in list(self._facts.items()):  # (rare: only private tensors have facts)
            if ref is reference:
                del self._facts[key]
                return

    def facts(self, tensor: torch.Tensor) -> Facts:
        """The facts of a private tensor, its rows and release only if it is unchanged since."""
        facts = self._known(tensor)
        if facts is None:
            return Facts(frozenset({UNRELEASED}), ("(shares memory with private data)",), self.stamp(tensor))
        if (facts.rows or facts.release or facts.bounds) and facts.stamp != self.stamp(tensor):
            facts = replace(facts, rows=None, bounds=None, release=None)  # written since: what it was is gone
        return facts

    def holds_private(self, obj: Any) -> bool:
        """Would handing `obj` over hand over private data? Its memory, or its .grad (which a
        tensor carries with it when fetched, moved or listed)."""
        if not self._storages or not isinstance(obj, torch.Tensor):
            return False
        for _ in range(_MAX_GRAD_CHAIN):  # (a .grad may have a .grad of its own, and so on)
            if self.is_private(obj):
                return True
            obj = obj.grad if obj.is_leaf else None
            if obj is None:
                return False
        return True  # a chain of .grads this long is no model update: kept

    def history(self, obj: Any) -> list[str]:
        """The ops that made a private tensor, oldest first (for the owner reviewing a request)."""
        if not isinstance(obj, torch.Tensor) or not self.is_private(obj):
            return []
        facts = self.facts(obj)
        datasets = ", ".join(sorted(d.name for d in facts.sources))
        return [f"datasets: {datasets}", *facts.history]

    def summary(self, obj: Any) -> str | None:
        """What a listing says of a private tensor: its datasets' budgets, spent and left, by whom."""
        if not self.is_private(obj):
            return None
        parts = []
        budgets = self.ledger.summary()
        for dataset in sorted(self.facts(obj).sources, key=lambda d: d.name):
            if dataset is UNRELEASED:
                parts.append("private, in no dataset: no releases, updates refused")
                continue
            b = budgets[dataset.name]
            who = ", ".join(f"{name} {spent:g}" for name, spent in sorted(b["by_client"].items()))
            parts.append(f"dataset {dataset.name}: ε {b['spent']:g} of {b['epsilon']:g} spent, left {b['left']:g}"
                         f"{f' ({who})' if who else ''}; updates {dataset.updates}")
        return "; ".join(parts)

    # ------------------------------------------------------------------ the owner's data

    def dataset(self, name: str, *, epsilon: float = 0.0, updates: str = "refuse") -> Dataset:
        if updates not in UPDATES:
            raise ValueError(f"updates must be one of {UPDATES}, not {updates!r}")
        if name in self.datasets:
            raise ValueError(f"dataset {name!r} is already declared on this worker")
        self.ledger.open(name, epsilon)
        dataset = self.datasets[name] = Dataset(name, float(epsilon), updates)
        return dataset

    def add(self, tensor: torch.Tensor, dataset: Dataset | None, label: str, bounds: tuple[float, float] | None = None) -> None:
        """Mark a data owner's tensor private: rows of `dataset` (axis 0: one record a row)."""
        if dataset is None:
            self.mark(tensor, Facts(frozenset({UNRELEASED}), (_ORIGIN + label,), self.stamp(tensor)))
            return
        stamp = self.stamp(tensor)
        if tensor.dim() == 0:
            raise ValueError(f"a dataset's tensor has one record per row (axis 0): {label} is a scalar")
        if dataset.records is None:
            object.__setattr__(dataset, "records", tensor.shape[0])
        elif tensor.shape[0] != dataset.records:
            raise ValueError(f"{label} has {tensor.shape[0]} rows; dataset {dataset.name!r} has {dataset.records} records")
        if bounds is not None:
            bounds = _checked_bounds(bounds)
        self.mark(tensor, Facts(frozenset({dataset}), (_ORIGIN + label,), stamp, Rows(dataset), bounds))

    def updates_allowed(self, sources: Iterable[Dataset]) -> bool:
        return all(d.updates == "allow" for d in sources)

    # ------------------------------------------------------------------ running ops

    def run(
        self, op: str, func: Callable, args: tuple, kwargs: dict, read: Iterable[Any] | None = None,
        public_memory: Callable[[torch.Tensor], bool] | None = None,
    ) -> Any:
        """Run op `op` (wire name) as `func(*args, **kwargs)`, under the rule of this module.
        `read`: the stored objects among the arguments (None: every tensor in them).
        `public_memory`: memory that only its owner changes (the data owner's): a result that is it,
        or a view of it, while public, is refused rather than made private for everyone."""
        if not self._storages:
            return func(*args, **kwargs)
        if read is None:
            read = ops.flatten(args, kwargs)[0]
        read = [t for t in read if isinstance(t, torch.Tensor)]
        private = [t for t in read if self.is_private(t)]
        if not private:
            return func(*args, **kwargs)
        inputs = {id(t): self.facts(t) for t in private}
        versions = [(t, t._version) for t in read]
        root = args[0] if op == "Tensor.backward" else None
        if root is not None:
            _check_backward(root, args, kwargs)
        meta = None if op in _NO_META else _meta_result(op, func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except Exception as error:
            if op in _NO_META and root is None:
                raise  # (setters, getters, requires_grad_: their errors tell types and shapes)
            # Whether an op on private values failed would tell one bit of them: it "succeeds",
            # with zeros as its results look (shape, strides, autograd), and the owner's log knows.
            log.info("an op on private data failed (%s in %s): its results are private zeros", type(error).__name__, op)
            out = _poisoned(op, meta, args, kwargs)
        results = [r for r in ops.flatten_result(out)[0] if isinstance(r, torch.Tensor)]
        if meta is not None:
            shapes = [tuple(m.shape) for m in ops.flatten_result(meta)[0] if isinstance(m, torch.Tensor)]
            if shapes != [tuple(r.shape) for r in results]:  # (torch disagreeing with its own meta kernel)
                out = _poisoned(op, meta, args, kwargs)
                results = [r for r in ops.flatten_result(out)[0] if isinstance(r, torch.Tensor)]
        sources = frozenset().union(*(f.sources for f in inputs.values()))
        history = _history(op, args, kwargs, inputs)
        written = {id(t): t for t, version in versions if t._version != version}
        written.update((id(t), t) for t in ops.written(op, args, kwargs) if isinstance(t, torch.Tensor) and op != "Tensor.grad.__set__")
        target = args[0] if op in ops.INPLACE and args and isinstance(args[0], torch.Tensor) else None
        if public_memory is not None:
            for tensor in results:
                if id(tensor) not in written and not self.is_private(tensor) and public_memory(tensor):
                    raise PermissionError(
                        f"{op} would hand back the data owner's public data (or a view of it) as computed from private "
                        "data: its memory would be private from then on, for everyone. Work on a copy: x.clone()"
                    )
        for tensor in written.values():
            self._written(tensor)
        for tensor in [*results, *written.values()]:
            if id(tensor) not in written and any(tensor is t for t in private):
                continue  # a private input handed back as it is (type_as, contiguous): what is known of it holds
            derived = _derive(op, args, kwargs, tensor, inputs, self) if tensor is target or any(tensor is r for r in results) else None
            self.mark(tensor, Facts(sources, history, self.stamp(tensor), *(derived or (None, None, None))))
        if root is not None:
            self._after_backward(root, sources, history)
        return out

    def _after_backward(self, root: torch.Tensor, sources: frozenset[Dataset], history: tuple[str, ...]) -> None:
        """Gradients backward() wrote from a private loss: private unless the owner allows updates
        from every dataset in it; a private leaf's gradient always."""
        allowed = self.updates_allowed(sources)
        for leaf in _leaves(root):
            grad = leaf.grad
            if grad is not None and (not allowed or self.is_private(leaf)):
                self._written(grad)
                self.mark(grad, Facts(sources, history, self.stamp(grad)))

    # ------------------------------------------------------------------ releases

    def release(self, tensor: torch.Tensor, epsilon: float, bounds: Any, client: str) -> torch.Tensor:
        """A noisy copy of private aggregate `tensor` at privacy loss `epsilon` (charged to its
        dataset's budget), its source clamped to `bounds` (or the owner's)."""
        facts = self.facts(tensor)
        recipe = facts.release
        if recipe is None or self.stamp(recipe.source) != recipe.stamp:
            raise NotReleasableError(_NOT_RELEASABLE)
        lo, hi = _release_bounds(recipe, bounds)
        dataset = recipe.rows.dataset
        self.ledger.check(dataset.name, float(epsilon))
        source = recipe.source.detach().to(torch.float64)
        source = torch.nan_to_num(source, nan=lo, posinf=hi, neginf=lo).clamp(lo, hi)
        row_size = math.prod(source.shape[1:])
        if recipe.kind == "histc":
            bins, low, high = recipe.histc
            exact = torch.histc(source, bins=bins, min=low, max=high)
            sensitivity = 2.0 * recipe.rows.per_record * row_size  # one element leaves a bin for another
            summed = source.numel()
            lowest, highest = 0.0, float(summed)
        else:
            exact = source.sum(dim=recipe.dims, keepdim=recipe.keepdim) if recipe.dims is not None else source.sum()
            sensitivity = recipe.rows.per_record * row_size * (hi - lo)
            summed = source.numel() // max(1, exact.numel())  # values in each output's sum
            lowest, highest = summed * lo, summed * hi
        noisy, spent = dp.laplace(exact.reshape(-1).tolist(), sensitivity, float(epsilon))
        self.ledger.charge(dataset.name, spent, client)
        # Post-processing costs no privacy: a noisy sum outside what any data could sum to is
        # brought back within it (a mean within the bounds, a count at least 0).
        released = torch.tensor(noisy, dtype=torch.float64).reshape(exact.shape).clamp(lowest, highest)
        if recipe.kind == "mean":
            released = released / summed
        return released.to(tensor.dtype if tensor.is_floating_point() else torch.float64).reshape(tensor.shape)

    def noised_for_sharing(self, encoded: torch.Tensor, scale: int, epsilon: float, clip: float, client: str) -> torch.Tensor:
        """What a data owner's worker shares of private int64 `encoded` (fixed precision at `scale`)
        when its owner asked for noise (DataOwner.secure_aggregation(epsilon=, clip=)): the value,
        its L1 norm clipped to `clip` (clip * scale in the ring's units), with OpenDP's discrete
        Laplace noise for sensitivity 2 * clip * scale (any two of the owner's datasets give values
        at most that far apart); `epsilon` charged to every dataset it comes from, before any share
        leaves. The whole tensor is one release of the owner's whole data, so it protects every
        record even when the other "owners" of an aggregate add nothing. `scale` is the client's
        word: a wrong one scales the clip and the noise alike (the same ε), so it costs the client
        accuracy, never the owner privacy."""
        facts = self.facts(encoded)
        sources = facts.sources
        named = sorted(d.name for d in sources if d is not UNRELEASED)
        if UNRELEASED in sources or not named:
            raise NotReleasableError(
                "this private tensor comes from private data outside any dataset (or its memory was written while private "
                "data was read): no budget pays for its noise, so it is not shared"
            )
        for name in named:
            self.ledger.check(name, float(epsilon))
        bound = min(2**61, max(1, math.floor(clip * scale)))  # the clip in the ring's units (2 * 2^61 fits int64)
        value = encoded.detach().reshape(-1)
        norm = float(value.to(torch.float64).abs().sum())
        if norm > bound:  # (toward zero, a hair inside: the clipped norm never passes the bound)
            value = (value.to(torch.float64) * (bound / norm * (1 - 1e-12))).trunc().to(torch.int64)
        noisy, spent = dp.laplace(value.tolist(), 2.0 * bound, float(epsilon), integers=True)
        for name in named:
            self.ledger.charge(name, spent, client)
        shared = torch.tensor(noisy, dtype=torch.int64).reshape(encoded.shape)  # (OpenDP saturates at int64's ends)
        # still private (a share of it is released only under the owner's k), as what it came from
        self.mark(shared, Facts(sources, (*facts.history, f"fedq.noise(epsilon={epsilon:g}, clip={clip:g})"), self.stamp(shared)))
        return shared


def refuse_if_private(privacy: Privacy, obj: Any, id: int, worker_id: str, what: str) -> None:
    if privacy.holds_private(obj):
        if not privacy.is_private(obj):
            raise GetNotPermittedError(
                f"object {id} on {worker_id!r} has a .grad computed from private data whose owner keeps model "
                f"updates (a tensor's .grad goes with it): it cannot be {what}. Set .grad = None there first"
            )
        raise GetNotPermittedError(
            f"object {id} on {worker_id!r} is private to its data owner, or computed from private data: it cannot "
            f"be {what}. Compute on it there; an aggregate over a dataset's records leaves with noise "
            "(x.sum().get(epsilon=0.1, bounds=(lo, hi))), anything else with the owner's approval (x.request(reason=...))"
        )


_NOT_RELEASABLE = (
    "only an aggregate over the records (axis 0) of a tensor computed row by row from one of the owner's "
    "datasets is released with noise: x.sum(), x.mean(), x.sum(dim=0), (x > c).sum() (a count), x.histc(...), "
    "made of the rows by ops that keep them (elementwise math, ops along other axes, x @ public, slicing rows), "
    "and unchanged since; anything else needs the owner's approval (x.request(reason=...))"
)


def _release_bounds(recipe: Release, bounds: Any) -> tuple[float, float]:
    if bounds is not None:
        return _checked_bounds(bounds)
    if recipe.bounds is not None:
        return recipe.bounds
    if recipe.source.dtype == torch.bool:
        return (0.0, 1.0)
    raise NotReleasableError(
        "say the bounds of the values this aggregate sums: .get(epsilon=..., bounds=(lo, hi)); every value is "
        "clamped to them before the sum, and the noise grows with hi - lo"
    )


def _checked_bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds are (lo, hi), two numbers: {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"bounds (lo, hi) must be finite with lo <= hi: {bounds!r}")
    return lo, hi


def _storage_of(tensor: torch.Tensor) -> Any:
    """The storage that stands for `tensor`'s memory: its own, or a sparse tensor's values'
    (as they are: coalescing would make a new tensor, whose storage dies at once)."""
    if tensor.layout == torch.strided:
        return tensor.untyped_storage()
    if tensor.layout == torch.sparse_coo:
        return tensor._values().untyped_storage()
    return tensor.values().untyped_storage()  # (compressed sparse layouts)


def _storage_key(tensor: torch.Tensor) -> int | None:
    try:
        return _storage_of(tensor)._cdata
    except (NotImplementedError, RuntimeError):
        return None


def _leaves(root: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors backward() from `root` writes a .grad into (`root` itself, if a leaf)."""
    found, seen, stack = [root] if root.is_leaf and root.requires_grad else [], set(), [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            found.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


# --------------------------------------------------------------------------- value-dependent shapes

#: ops not checked on meta tensors: they make no new tensor whose shape could tell anything
_NO_META = frozenset({"Tensor.backward", "Tensor.requires_grad_", "Tensor.detach_"}) | {
    f"Tensor.{prop}.__{way}__" for prop in (*ops.PROPERTIES, *ops.SETTABLE) for way in ("get", "set")
}


_META_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_META_CACHE_SIZE = 4096  # (a training loop asks the same few ops of the same shapes every step)


def _meta_result(op: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    """What `op` makes from tensors of the same shapes without values: a shape that needs the
    values (or an op torch cannot run without them) is refused before the real op runs.
    Remembered by the op and what its arguments are without their values (torch's meta
    kernels cost ~0.5 ms an op: more than most ops on the data)."""
    key = _meta_key(op, args, kwargs)
    if key is not None and key in _META_CACHE:
        _META_CACHE.move_to_end(key)
        known = _META_CACHE[key]
        if isinstance(known, Exception):
            raise known.with_traceback(None)  # (the last raise's frames dropped: they would pile up)
        return known
    try:
        meta = _run_on_meta(op, func, args, kwargs)
    except Exception as error:
        if key is not None:
            _remember(key, error.with_traceback(None))
        raise
    if key is not None:
        _remember(key, meta)
    return meta


def _remember(key: tuple, value: Any) -> None:
    _META_CACHE[key] = value
    if len(_META_CACHE) > _META_CACHE_SIZE:
        _META_CACHE.popitem(last=False)


def _meta_key(op: str, args: tuple, kwargs: dict) -> tuple | None:
    """What decides `op`'s meta result: each tensor's shape, strides, dtype and autograd state,
    and the other arguments' values; None when one of those cannot be a key."""
    leaves, structure = ops.flatten(args, kwargs)
    parts: list = [op, structure if type(structure) is ops.FlatSpec else str(structure), torch.is_grad_enabled()]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.requires_grad, leaf.is_leaf, leaf.layout))
        elif leaf is None or type(leaf) in (bool, int, float, str, torch.dtype, torch.Size):
            parts.append((type(leaf), leaf))
        else:
            return None  # (slices, ellipsis, devices...: rare enough to run every time)
    return tuple(parts)


def _run_on_meta(op: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    meta_args, meta_kwargs = tree_map(_to_meta, args), tree_map(_to_meta, kwargs)
    try:
        return func(*meta_args, **meta_kwargs)
    except (NotImplementedError, RuntimeError, TypeError) as error:
        text = str(error)
        if isinstance(error, NotImplementedError) or "meta" in text.lower() or "item()" in text:
            raise ValueDependentShapeError(
                f"{op} on private data: the shape of its result would depend on the private values (or cannot be "
                "told from the inputs' shapes alone), so it would reveal them. Use a fixed-shape form instead: "
                "torch.where(mask, x, 0) for x[mask], (mask).sum() for nonzero().shape, one_hot(x, num_classes=N)"
            ) from None
        raise  # a shape error: it names shapes and the client's own arguments only


def _to_meta(value: Any) -> Any:
    """A meta tensor as `value` is to autograd (a leaf or not, requiring grad or not): an in-place
    op on a leaf that requires grad fails on both, or on neither."""
    if not isinstance(value, torch.Tensor):
        return value
    meta = value.detach().to("meta")
    if value.requires_grad:
        meta.requires_grad_(True)
        if not value.is_leaf:
            meta = meta.clone()
    return meta


def _check_backward(root: torch.Tensor, args: tuple, kwargs: dict) -> None:
    """What backward() would refuse for its graph's shape alone, said before it runs: after, a
    failure on private data is not told (see `run`)."""
    if not isinstance(root, torch.Tensor) or not root.requires_grad:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    gradient = args[1] if len(args) > 1 else kwargs.get("gradient")
    if gradient is None and root.numel() != 1:
        raise RuntimeError("grad can be implicitly created only for scalar outputs")
    if isinstance(gradient, torch.Tensor) and tuple(gradient.shape) != tuple(root.shape):
        raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of {tuple(gradient.shape)} and output[0] has a shape of {tuple(root.shape)}")


def _poisoned(op: str, meta: Any, args: tuple, kwargs: dict) -> Any:
    """What a failed op on private data gives instead: zeros shaped and strided as its meta
    result, joined to the autograd graph of its inputs as the real result would be (so that
    backward, requires_grad_ and which leaves get a .grad tell nothing either). An in-place
    target is joined the same way."""
    anchor = None
    if torch.is_grad_enabled():
        for t in ops.flatten(args, kwargs)[0]:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                term = t.sum() * 0
                anchor = term if anchor is None else anchor + term

    def zeros(m: Any) -> Any:
        if not isinstance(m, torch.Tensor):
            return m
        z = torch.zeros_like(torch.empty_strided(m.shape, m.stride(), dtype=m.dtype))
        return z + anchor.to(m.dtype) if m.requires_grad and anchor is not None and z.is_floating_point() else z

    target = args[0] if op in ops.INPLACE and args and isinstance(args[0], torch.Tensor) else None
    if target is not None and anchor is not None and target.is_floating_point() and not (target.is_leaf and target.requires_grad):
        target.add_(anchor.to(target.dtype))  # (as a successful in-place op would have joined it)
    if meta is None:
        return None
    # What a real op returns is its target (in place) or its `out=` (resized as torch resizes it),
    # not new memory: a caller that stores the result would see the difference in its bytes.
    if target is not None and isinstance(meta, torch.Tensor):
        return target
    if "out" in kwargs:
        outs, metas = ops.flatten_result(kwargs["out"])[0], ops.flatten_result(meta)[0]
        for out, m in zip(outs, metas):
            if isinstance(out, torch.Tensor) and isinstance(m, torch.Tensor) and tuple(out.shape) != tuple(m.shape):
                out.resize_(m.shape)
            if isinstance(out, torch.Tensor):
                out.detach().zero_()
        return kwargs["out"]
    return tree_map(zeros, meta)


# --------------------------------------------------------------------------- history

_ORIGIN = "data: "  # the first lines of a history: the owner's tensors it was computed from
_MAX_ORIGINS = 16

def _history(op: str, args: tuple, kwargs: dict, inputs: dict[int, Facts]) -> tuple[str, ...]:
    lines: list[str] = []
    for facts in inputs.values():
        lines.extend(line for line in facts.history if line not in lines)
    shown = ", ".join(
        [_shown(a, inputs) for a in args] + [f"{k}={_shown(v, inputs)}" for k, v in kwargs.items()]
    )
    lines.append(f"{op}({shown})"[:300])
    # Where it came from is never pushed out by what was done to it since.
    origins = [line for line in lines if line.startswith(_ORIGIN)][:_MAX_ORIGINS]
    done = [line for line in lines if not line.startswith(_ORIGIN)]
    return (*origins, *done[-(MAX_HISTORY - len(origins)):])


def _shown(value: Any, inputs: dict[int, Facts]) -> str:
    if isinstance(value, torch.Tensor):
        facts = inputs.get(id(value))
        kind = f"private {facts.history[-1].split('(')[0]}" if facts is not None else "tensor"
        return f"<{kind} {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v, inputs) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    return repr(value)[:40]


# --------------------------------------------------------------------------- rows: which ops keep the record axis

def _both(names: str) -> frozenset[str]:
    return frozenset(f"{prefix}.{name}" for name in names.split() for prefix in ("torch", "Tensor"))


#: elementwise: row i of the result comes from row i of each input (broadcasting others)
POINTWISE = (
    _both(ops.ARITHMETIC["torch Tensor"]) | frozenset(f"Tensor.{n}" for n in ops.ARITHMETIC["Tensor"].split())
    | frozenset(f"torch.{n}" for n in ops.ARITHMETIC["torch"].split())
    | _both("eq ne lt le gt ge greater greater_equal less less_equal not_equal isnan isinf isfinite isposinf "
            "isneginf maximum minimum fmax fmin where")
    | frozenset(f"Tensor.{n}_" for n in "eq ne lt le gt ge".split())
    | frozenset(f"Tensor.__{n}__" for n in ops.OPERATORS["Tensor"].replace("__", " ").split() if n != "matmul" and n != "rmatmul")
    | frozenset(f"torch.nn.functional.{n}" for n in (
        "relu relu6 leaky_relu elu selu celu gelu silu mish softplus softsign hardtanh hardsigmoid hardswish "
        "logsigmoid tanhshrink softshrink hardshrink threshold sigmoid tanh dropout alpha_dropout").split())
    | frozenset(f"Tensor.{n}" for n in "float double half bfloat16 int long short bool char byte type_as to contiguous".split())
    | _both("clone detach")
)
#: value-preserving selections: the owner's bounds still hold for what they return
SELECTIONS = _both("clone detach narrow select index_select flatten reshape squeeze unsqueeze") | frozenset(
    f"Tensor.{n}" for n in "__getitem__ view float double contiguous to".split())
#: reductions and scans along `dim`: rows stay when `dim` spares axis 0; over axis 0 they aggregate records
ALONG_DIM = _both("sum mean nansum nanmean prod std var amax amin logsumexp norm cumsum cumprod all any count_nonzero softmax log_softmax") | frozenset(
    f"torch.nn.functional.{n}" for n in "softmax log_softmax softmin normalize".split())
RELEASED = {**dict.fromkeys(_both("sum nansum count_nonzero"), "sum"), **dict.fromkeys(_both("mean nanmean"), "mean"),
            **dict.fromkeys(_both("histc"), "histc")}
#: one row in, one row out, given public weights (the second argument on)
PER_ROW_WITH_WEIGHTS = _both("matmul mm") | frozenset({"Tensor.__matmul__"}) | frozenset(
    f"torch.nn.functional.{n}" for n in (
        "linear conv1d conv2d conv3d max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d "
        "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool1d adaptive_max_pool2d layer_norm group_norm "
        "one_hot embedding pad").split()) | frozenset({"torch.conv1d", "torch.conv2d", "torch.layer_norm"})
#: how many axes a batched input of these has (fewer: unbatched, and axis 0 is not records)
_BATCHED_DIMS = {f"torch.nn.functional.{kind}{n}d": n + 2 for n in (1, 2, 3) for kind in (
    "conv", "max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool")} | {"torch.conv1d": 3, "torch.conv2d": 4}


def _per_row(op: str, args: tuple, kwargs: dict, private_args: list, out: torch.Tensor) -> bool:
    """Does row i of `out` come from row i of the (only) private argument, its first, alone?"""
    x = args[0]
    if len(private_args) != 1 or private_args[0] is not x or x.dim() == 0 or out.dim() == 0 or out.shape[0] != x.shape[0]:
        return False
    if op in _BATCHED_DIMS:
        return x.dim() == _BATCHED_DIMS[op]
    if op.endswith(("matmul", "mm", "linear")):  # (n, ..., k) times weights: contracts the last axis only
        return x.dim() >= 2 and out.dim() == x.dim()
    if op.endswith(("layer_norm", "rms_norm")):  # normalises the last len(shape) axes: not axis 0
        shape = _arg(op, "normalized_shape", args, kwargs)
        return isinstance(shape, (int, list, tuple, torch.Size)) and len(shape if not isinstance(shape, int) else (shape,)) < x.dim()
    if op.endswith("group_norm"):
        return x.dim() >= 2
    if op.endswith("pad"):  # the pad tuple covers the last axes first: axis 0 must be spared
        pad = _arg(op, "pad", args, kwargs)
        return isinstance(pad, (list, tuple)) and len(pad) // 2 < x.dim()
    return op.endswith(("one_hot", "embedding"))


#: losses: per record with reduction="none"; their mean or sum aggregates records
_ELEMENTWISE_LOSSES = frozenset(f"torch.nn.functional.{n}" for n in (
    "mse_loss l1_loss smooth_l1_loss huber_loss binary_cross_entropy binary_cross_entropy_with_logits").split())
LOSSES = _ELEMENTWISE_LOSSES | {"torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss"}


def _derive(op: str, args: tuple, kwargs: dict, out: torch.Tensor, inputs: dict[int, Facts], privacy: Privacy) -> tuple | None:
    """(rows, owner's bounds, release) of `out`, a result (or the target) of `op`; None if it has no rows."""
    private_args = [a for a in ops.flatten(args, kwargs)[0] if isinstance(a, torch.Tensor) and id(a) in inputs]
    rows = [inputs[id(a)].rows for a in private_args]
    if not rows or any(r is None for r in rows) or len({r.dataset for r in rows}) != 1:
        return None  # rows of several datasets, or private data without rows
    try:
        if op in POINTWISE:
            return _pointwise(op, private_args, rows, out, inputs)
        if op in ALONG_DIM or op in RELEASED:
            return _along_dim(op, args, kwargs, private_args, rows, out, inputs, privacy)
        if op in PER_ROW_WITH_WEIGHTS:
            return (rows[0], None, None) if _per_row(op, args, kwargs, private_args, out) else None
        if op in LOSSES:
            return _loss(op, args, kwargs, private_args, rows, privacy)
        if op in SELECTIONS:
            return _selection(op, args, kwargs, rows[0], out, inputs)
    except Exception:  # an argument the rules do not parse: no rows (the safe side)
        return None
    return None


def _combined(rows: list[Rows]) -> Rows:
    if all(r.same_rows(rows[0]) and r.per_record == 1 for r in rows):
        return rows[0]
    return Rows(rows[0].dataset, sum(r.per_record for r in rows), None)


def _pointwise(op: str, private_args: list, rows: list[Rows], out: torch.Tensor, inputs: dict) -> tuple | None:
    for arg in private_args:  # axis 0 neither broadcast from one row nor pushed back by new leading axes
        if arg.dim() == 0 or arg.dim() != out.dim() or arg.shape[0] != out.shape[0]:
            return None
    bounds = inputs[id(private_args[0])].bounds if op in SELECTIONS and len(private_args) == 1 else None
    return _combined(rows), bounds, None


#: where torch's builtins (which have no signature to read) take these, after the input
_POSITIONS = {"dim": 1, "keepdim": 2, "bins": 1, "min": 2, "max": 3, "start_dim": 1}


def _arg(op: str, name: str, args: tuple, kwargs: dict, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    try:
        position = ops.position(op, name)
    except KeyError:
        position = None
    if position is ops.UNKNOWN:
        position = 2 if name == "dim" and op.endswith("norm") else _POSITIONS.get(name)
    return args[position] if position is not None and position < len(args) else default


def _dims(op: str, args: tuple, kwargs: dict, ndim: int) -> tuple[int, ...] | None:
    dim = _arg(op, "dim", args, kwargs)
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted(d % max(ndim, 1) for d in dims))


def _along_dim(
    op: str, args: tuple, kwargs: dict, private_args: list, rows: list[Rows], out: torch.Tensor, inputs: dict, privacy: Privacy
) -> tuple | None:
    source = args[0]
    if len(private_args) != 1 or private_args[0] is not source or source.dim() == 0:
        return None
    kind = RELEASED.get(op)
    if kind == "histc":
        bins = int(_arg(op, "bins", args, kwargs, default=100))
        low = float(_arg(op, "min", args, kwargs, default=0))
        high = float(_arg(op, "max", args, kwargs, default=0))
        if low >= high:
            return None  # (a range from the data itself: min and max of private values)
        return None, None, Release("histc", source, privacy.stamp(source), rows[0], None, None, histc=(bins, low, high))
    dims = _dims(op, args, kwargs, source.dim())
    if dims is not None and 0 not in dims:
        return (rows[0], None, None) if out.dim() > 0 and out.shape[0] == source.shape[0] else None
    if kind is None:
        return None
    keepdim = bool(_arg(op, "keepdim", args, kwargs, default=False))
    bounds = inputs[id(source)].bounds
    if op.endswith("count_nonzero"):
        source, bounds = source != 0, None
    elif op.endswith(("nansum", "nanmean")):
        source = torch.nan_to_num(source, nan=0.0)
    return None, None, Release(kind, source, privacy.stamp(source), rows[0], bounds, dims, keepdim)


def _loss(op: str, args: tuple, kwargs: dict, private_args: list, rows: list[Rows], privacy: Privacy) -> tuple | None:
    reduction = _arg(op, "reduction", args, kwargs, default="mean")
    if any(a is not args[0] and (len(args) < 2 or a is not args[1]) for a in private_args):
        return None  # private weights (class weights, pos_weight) reach every row
    per_element = ops.TABLE[op](*args, **{**kwargs, "reduction": "none"}).detach()  # (a copy the client never sees)
    if per_element.dim() == 0 or any(a.dim() == 0 or a.shape[0] != per_element.shape[0] for a in private_args):
        return None
    if op in _ELEMENTWISE_LOSSES and any(tuple(a.shape) != tuple(per_element.shape) for a in private_args):
        return None  # a private argument broadcast: its rows repeated, or new leading axes
    combined = _combined(rows)
    if reduction == "none":
        return combined, None, None
    if reduction not in ("mean", "sum"):
        return None
    return None, None, Release(reduction, per_element, privacy.stamp(per_element), combined, None, None)


def _selection(op: str, args: tuple, kwargs: dict, rows: Rows, out: torch.Tensor, inputs: dict) -> tuple | None:
    source = args[0]
    bounds = inputs[id(source)].bounds
    if source.dim() == 0 or out.dim() == 0:
        return None
    if op == "Tensor.__getitem__":
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        first = index[0] if index else slice(None)
        if not isinstance(first, slice) or any(not isinstance(i, (int, slice)) and i is not Ellipsis for i in index[1:]):
            return None
        if Ellipsis in index[1:] and index[-1] is not Ellipsis:
            return None
        start, _, step = first.indices(source.shape[0])
        if step <= 0:
            return None
        if rows.first is None:
            return Rows(rows.dataset, rows.per_record, None), bounds, None
        return Rows(rows.dataset, rows.per_record, rows.first + start * rows.step, rows.step * step), bounds, None
    if op.endswith(("narrow", "select", "index_select")):
        dim = _arg(op, "dim", args, kwargs)
        if not isinstance(dim, int) or dim % source.dim() == 0:
            return None
    elif op.endswith("flatten"):
        if _arg(op, "start_dim", args, kwargs, default=0) % source.dim() == 0:
            return None
    elif out.shape[0] != source.shape[0] or (op.endswith(("squeeze", "unsqueeze")) and out.dim() != source.dim()
                                            and (_arg(op, "dim", args, kwargs) in (None, 0))):
        return None
    return rows, bounds, None
