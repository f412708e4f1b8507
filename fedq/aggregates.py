"""Secure aggregation the data owners enforce: which owners' private data a share on this
worker aggregates, and whether it may leave for reconstruction. Worker-side and pure (no I/O).

A share of an owner's private data carries its *origin*: terms (each: the sharing's token, the
owner worker's signed session and name, the owner's `k`, a coefficient, an exact integer mod
2^64 as the holders compute). An origin is kept *exactly* only through whole-tensor, same-shape,
elementwise ops linear on the ring: `-x`, `x * n` (a public Python int), `x + y` / `x - y` of
two shares of one shape (their terms merged), `x + p` of a public value that broadcasts into x's
shape (the same owners, the same weights). Any other op on ONE such share and public values
(indexing, sums, `//`, views of dtype, a float scalar) makes a *function of that share*: it keeps
the terms for the release check, but never merges again (`b + a[:, [0, 0, 0, 0]]` would pair
elements, `sum` weighs elements n times). An op mixing two shares otherwise, or a share with other
private data, or any write into a share (in place, `out=`, decided from the op, never from the
client's result ids), or a result aliasing a share's storage, leaves a *tombstone*: private, never
released. A holder releases a share for reconstruction (`.get()`) only when its terms are of at
least `k` distinct owners (each term's owner's k, the largest) with nonzero coefficients all
equal mod 2^64, none of whose sharings was released before on this worker: so what one
reconstruction shows is a function of c * (v_1 + ... + v_k) and the holders' uniform shares of
it, never one owner's value, and the same sharing is not released in two aggregates (which
subtracted would show one owner's value). What it does not stop: aggregates over different sets
of owners, each released once (x+y, x+z, y+z), compose; repeated rounds need DP noise on the
updates; an owner's worker shares whatever private tensor it is asked to (its own data only).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch

from . import ops
from .errors import AggregateTooSmallError

# An owner's default: its private data is never shared (an aggregate can be made to carry one owner
# alone: README, "Not stopped"); DataOwner.secure_aggregation(k=) opts in, k defaulting to 2.
DEFAULT_K: int | None = None
OPT_IN_K = 2  # what secure_aggregation() asks when the owner names no k: one other owner at least
MAX_SPENT = 1_000_000  # sharings remembered as released (a token is 16 bytes of hex)


@dataclass(frozen=True, slots=True)
class Noise:
    """An owner's noise on what its worker shares of its private data (privacy.noised_for_sharing):
    each sharing a release of ε = `epsilon` from the datasets it comes from, its L1 norm clipped
    to `clip` first. Without it the owner approves *exact* aggregates of k owners, which holds only
    while the data scientist's training gives each owner's update weight (README, "Not stopped")."""

    epsilon: float
    clip: float


@dataclass(frozen=True, slots=True)
class Term:
    """One owner's sharing inside a share: `coef` times that owner's shared value."""

    owner: str  # the owner worker's signed session (hex): what a holder counts as one owner
    name: str  # its id, for messages
    k: int  # the owner's policy: at least this many distinct owners in a released aggregate
    coef: int = 1  # exact, in [0, 2^64): the holders compute mod 2^64, so a float would miss a wrap


MODULUS = 2**64  # the ring the holders compute in (ring.RING, int64 wrapping)

# the ops that keep an origin exactly (whole tensor, elementwise, linear on the ring)
_NEG = frozenset({"Tensor.__neg__", "Tensor.neg", "torch.neg", "Tensor.negative", "torch.negative"})
_MUL = frozenset({"Tensor.__mul__", "Tensor.__rmul__", "Tensor.mul", "torch.mul", "Tensor.multiply", "torch.multiply"})
_ADD = frozenset({"Tensor.__add__", "Tensor.__radd__", "Tensor.add", "torch.add"})
_SUB = frozenset({"Tensor.__sub__", "Tensor.sub", "torch.sub", "Tensor.subtract", "torch.subtract"})
_RSUB = frozenset({"Tensor.__rsub__"})

_TOMBSTONE: dict[str, Term] = {}  # the terms of a share whose origin is lost: never released


class Aggregates:
    """The terms of the shares this worker holds, and the sharings it released already."""

    def __init__(self, k: int | None = DEFAULT_K) -> None:
        self.k = k  # this worker's data owner's policy (DataOwner.secure_aggregation)
        self.noise: Noise | None = None  # and the noise it puts on each sharing of its data (None: exact)
        # id(tensor) -> (weak ref, token -> term, whether it is a function of a share: never merged
        # again, its version counter then: an in-place write since, through any alias, bumps it)
        self._terms: dict[int, tuple[Any, dict[str, Term], bool, int]] = {}
        self._spent: dict[str, None] = {}  # tokens released here, oldest first

    def __bool__(self) -> bool:
        return bool(self._terms)

    def add(self, tensor: torch.Tensor, token: str, owner: str, name: str, k: int) -> None:
        """`tensor` is this worker's share of sharing `token` of `owner`'s private data."""
        self._set(tensor, {token: Term(owner, name, max(1, int(k)))})

    def terms(self, obj: Any) -> dict[str, Term] | None:
        """The terms of a share (empty: a tombstone), or None (not a share of private data)."""
        known = self._known(obj)
        return known[0] if known is not None else None

    def _known(self, obj: Any) -> tuple[dict[str, Term], bool] | None:
        if not self._terms or not isinstance(obj, torch.Tensor):
            return None
        known = self._terms.get(id(obj))
        if known is None or known[0]() is not obj:
            return None
        return (known[1], known[2]) if _version(obj) == known[3] else (_TOMBSTONE, False)  # (written since)

    def _set(self, tensor: torch.Tensor, terms: dict[str, Term], derived: bool = False) -> None:
        key = id(tensor)
        self._terms[key] = (weakref.ref(tensor, lambda _, key=key: self._terms.pop(key, None)), terms, derived, _version(tensor))

    def drop(self, tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor):
            self._terms.pop(id(tensor), None)

    # ------------------------------------------------------------------ ops

    def derive(self, op: str, args: tuple, kwargs: dict, read: Iterable[Any], results: list, in_place: bool, is_private: Any) -> None:
        """After `op` ran (privacy.py marked what it wrote): the origins of its results. `read`:
        the stored objects among its arguments; `in_place`: the client said so (believed only
        towards caution); `is_private(t)`: privacy's verdict on `t`."""
        read = [t for t in read if isinstance(t, torch.Tensor)]
        carrying = [t for t in read if self._known(t) is not None]
        if not carrying:
            return
        outs = [r for r in results if isinstance(r, torch.Tensor)]
        # What the op wrote, from the op itself (its name, out=, inplace=) and the client's word
        # either way; and what now aliases a share's memory (a view, `detach`, the target returned):
        # a write through it would change the share under its terms. Both lose the origin.
        written = [t for t in ops.written(op, args, kwargs, in_place=in_place) if isinstance(t, torch.Tensor)]
        touched = [t for t in carrying if any(_overlaps(t, w) for w in written) or any(_overlaps(t, r) for r in outs)]
        if written or touched:
            for t in touched:
                self._set(t, _TOMBSTONE)
            for r in outs:
                self._set(r, _TOMBSTONE)
            return
        origin = self._origin_of(op, args, kwargs, read, carrying, outs, is_private)
        for r in outs:
            self._set(r, *origin)

    def _origin_of(self, op: str, args: tuple, kwargs: dict, read: list, carrying: list, outs: list, is_private: Any) -> tuple[dict[str, Term], bool]:
        if any(is_private(t) and self._known(t) is None for t in read):
            return _TOMBSTONE, False  # (a mix with other private data: what it weighs is not known)
        if len(outs) == 1:
            exact = _exact(op, args, kwargs, outs[0], self._known)
            if exact is not None:
                return exact, False
        distinct = {id(t): t for t in carrying}
        if len(distinct) == 1:  # a function of one share (and public values): terms kept, never merged
            terms, _ = self._known(carrying[0])
            return terms, True
        return _TOMBSTONE, False

    # ------------------------------------------------------------------ releases

    def release(self, tensor: torch.Tensor, worker_id: str, id: int) -> None:
        """Let this share of an aggregate leave, or say why not (AggregateTooSmallError)."""
        terms = self.terms(tensor) or {}
        live = {token: term for token, term in terms.items() if term.coef % MODULUS}  # (a multiple of 2^64 is 0 there)
        owners = {term.owner: term.name for term in live.values()}
        needed = max((term.k for term in live.values() if term.k is not None), default=OPT_IN_K)
        where = f"object {id} on {worker_id!r}"
        if not terms:
            raise AggregateTooSmallError(
                f"{where} is computed from shares of private data by ops that lose what it aggregates (only -x, x * n, "
                "and + or - of shares of one shape keep it; any other op on a share gives a value released alone or "
                "not at all, and writing into a share loses it): it is never released"
            )
        if len(owners) < needed:
            names = ", ".join(sorted(owners.values())) or "no owner"
            raise AggregateTooSmallError(
                f"{where} is a share of an aggregate of {len(owners)} data owner(s) ({names}); their policy releases a "
                f"share for reconstruction only in a sum of at least {needed} owners' data: add other owners' shares first"
            )
        coefs = [term.coef % MODULUS for term in live.values()]
        if any(c != coefs[0] for c in coefs):
            raise AggregateTooSmallError(
                f"{where} weighs its owners' data unequally ({', '.join(str(_signed(c)) for c in coefs)}, mod 2^64): only a "
                "sum (or an average) of the owners' values is released, never a combination that singles one out"
            )
        spent = [token for token in live if token in self._spent]
        if spent:
            raise AggregateTooSmallError(
                f"{where} aggregates a sharing whose share was released here in another aggregate already: each sharing "
                "of an owner's data leaves in one aggregate only (two, subtracted, would show one owner's value)"
            )
        for token in live:
            self._spent[token] = None
        while len(self._spent) > MAX_SPENT:
            self._spent.pop(next(iter(self._spent)))
        self.drop(tensor)


def _exact(op: str, args: tuple, kwargs: dict, out: torch.Tensor, known: Any) -> dict[str, Term] | None:
    """The terms of `out` if `op` is linear on the ring, whole-tensor and elementwise in the
    shares it reads (their terms scaled by exact integers), or None."""
    if kwargs or not args or not isinstance(args[0], torch.Tensor):
        return None  # (alpha=, out=, dim=...: not followed)
    first = args[0]
    own = known(first)
    if own is not None and (own[1] or not own[0]):
        own = False  # a function of a share, or a tombstone: never merged
    if len(args) == 1:
        return _scaled(own[0], -1) if op in _NEG and own else None
    if len(args) != 2:
        return None
    second = args[1]
    if op in _MUL and own and _is_int(second) and _same(out, first):
        return _scaled(own[0], second)
    if op not in _ADD | _SUB | _RSUB:
        return None
    theirs = known(second) if isinstance(second, torch.Tensor) else None
    if theirs is not None and (theirs[1] or not theirs[0]):
        return None
    sign_first, sign_second = (-1, 1) if op in _RSUB else (1, -1) if op in _SUB else (1, 1)
    if own and theirs:
        # (one shape, no broadcast: each owner's element i is summed with the others' element i only)
        return _merged(_scaled(own[0], sign_first), _scaled(theirs[0], sign_second)) if _same(out, first) and _same(out, second) else None
    if own is False:
        return None
    public = _is_int(second) or isinstance(second, torch.Tensor) and theirs is None
    if own and public and _same(out, first):
        return _scaled(own[0], sign_first)  # plus a public value: the same owners, the same weights
    if theirs and own is None and _same(out, second):
        return _scaled(theirs[0], sign_second)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(out: torch.Tensor, share: Any) -> bool:
    """`out` is elementwise in `share`: the same shape and dtype (no broadcast of the share, no cast)."""
    return isinstance(share, torch.Tensor) and out.shape == share.shape and out.dtype == share.dtype == torch.int64


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the two may share memory (one storage): conservatively yes when it cannot be told."""
    if a is b:
        return True
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except Exception:
        return True


def _version(t: torch.Tensor) -> int:
    """torch's count of in-place writes into `t` (shared with its views; -1 where it keeps none)."""
    try:
        return t._version
    except Exception:  # (an inference-mode tensor keeps no count: derive's checks alone hold for it)
        return -1


def _signed(c: int) -> int:
    return c - MODULUS if c >= MODULUS // 2 else c


def _scaled(terms: dict[str, Term], by: int) -> dict[str, Term]:
    return {token: replace(term, coef=term.coef * by % MODULUS) for token, term in terms.items()}


def _merged(a: dict[str, Term], b: dict[str, Term]) -> dict[str, Term]:
    merged = dict(a)
    for token, term in b.items():
        merged[token] = replace(term, coef=(merged[token].coef + term.coef) % MODULUS) if token in merged else term
    return merged
