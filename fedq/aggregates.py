"""Secure aggregation the data owners enforce: which owners' private data a share on this
worker aggregates, and whether it may leave for reconstruction. Worker-side and pure (no I/O).

A share of an owner's private data carries its *origin*: a term (the sharing's token, the
owner worker's signed session and name, the owner's `k`, a coefficient). Ops that are linear
in one share keep its terms (scaled by a public scalar: `x * 3`, `-x`, `x // 2`; unchanged by
reshapes, slices and sums), and `share + share` / `share - share` of one shape merges them.
Anything else (a Beaver product, `cat`, a mix with other private data, in-place writes) drops
them: the result is private and never leaves. A holder releases a share for reconstruction
(`.get()`) only when it is a sum, all of its terms with one coefficient, of at least `k`
distinct owners (each term's owner's k, the largest), none of whose sharings was released
before on this worker: so what one reconstruction shows is c * (v_1 + ... + v_k), never one
owner's value, and the same sharing is not released in two aggregates (which subtracted would
show one owner's value). What it does not stop: aggregates over different sets of owners,
each released once (x+y, x+z, y+z), compose; repeated rounds need DP noise on the updates.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch

from .errors import AggregateTooSmallError

DEFAULT_K = 2  # an owner's default: its data leaves only summed with at least one other owner's
MAX_SPENT = 1_000_000  # sharings remembered as released (a token is 16 bytes of hex)


@dataclass(frozen=True, slots=True)
class Term:
    """One owner's sharing inside a share: `coef` times that owner's shared value."""

    owner: str  # the owner worker's signed session (hex): what a holder counts as one owner
    name: str  # its id, for messages
    k: int  # the owner's policy: at least this many distinct owners in a released aggregate
    coef: float = 1.0


# single-tensor ops that are linear in it with coefficient 1 (shape and selection ops, sums)
_KEEP = frozenset(
    f"{prefix}.{name}" for prefix in ("torch", "Tensor") for name in (
        "reshape view flatten squeeze unsqueeze t transpose permute clone detach contiguous sum "
        "narrow select __getitem__ view_as reshape_as".split())
)
_NEG = frozenset({"Tensor.__neg__", "Tensor.neg", "torch.neg", "Tensor.negative", "torch.negative"})
_MUL = frozenset({"Tensor.__mul__", "Tensor.__rmul__", "Tensor.mul", "torch.mul", "Tensor.multiply", "torch.multiply"})
_FLOORDIV = frozenset({"Tensor.__floordiv__", "Tensor.floor_divide", "torch.floor_divide"})
_ADD = frozenset({"Tensor.__add__", "Tensor.__radd__", "Tensor.add", "torch.add"})
_SUB = frozenset({"Tensor.__sub__", "Tensor.sub", "torch.sub", "Tensor.subtract", "torch.subtract"})
_RSUB = frozenset({"Tensor.__rsub__"})


class Aggregates:
    """The terms of the shares this worker holds, and the sharings it released already."""

    def __init__(self, k: int = DEFAULT_K) -> None:
        self.k = k  # this worker's data owner's policy (DataOwner.secure_aggregation)
        self._terms: dict[int, tuple[Any, dict[str, Term]]] = {}  # id(tensor) -> (weak ref, token -> term)
        self._spent: dict[str, None] = {}  # tokens released here, oldest first

    def __bool__(self) -> bool:
        return bool(self._terms)

    def add(self, tensor: torch.Tensor, token: str, owner: str, name: str, k: int) -> None:
        """`tensor` is this worker's share of sharing `token` of `owner`'s private data."""
        self._set(tensor, {token: Term(owner, name, max(1, int(k)))})

    def terms(self, obj: Any) -> dict[str, Term] | None:
        if not self._terms or not isinstance(obj, torch.Tensor):
            return None
        known = self._terms.get(id(obj))
        return known[1] if known is not None and known[0]() is obj else None

    def _set(self, tensor: torch.Tensor, terms: dict[str, Term]) -> None:
        key = id(tensor)
        self._terms[key] = (weakref.ref(tensor, lambda _, key=key: self._terms.pop(key, None)), terms)

    def drop(self, tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor):
            self._terms.pop(id(tensor), None)

    # ------------------------------------------------------------------ ops

    def derive(self, op: str, args: tuple, kwargs: dict, read: Iterable[Any], results: list, in_place: bool, is_private: Any) -> None:
        """After `op` ran (privacy.py marked what it wrote): the terms of its results. `read`:
        the stored objects among its arguments; `is_private(t)`: privacy's verdict on `t`."""
        read = [t for t in read if isinstance(t, torch.Tensor)]
        with_terms = [(t, self.terms(t)) for t in read]
        if not any(terms for _, terms in with_terms):
            return
        if in_place:  # the target changed in place: what it aggregated is no longer known
            for t, terms in with_terms:
                if terms:
                    self.drop(t)
            return
        derived = None
        others_private = any(is_private(t) and not terms for t, terms in with_terms)
        if not others_private and len(results) == 1 and isinstance(results[0], torch.Tensor):
            derived = _linear(op, args, kwargs, self.terms)
        for result in results:
            if isinstance(result, torch.Tensor):
                if derived and result is not args[0]:
                    self._set(result, derived)
                elif result is not args[0]:
                    self.drop(result)

    # ------------------------------------------------------------------ releases

    def release(self, tensor: torch.Tensor, worker_id: str, id: int) -> None:
        """Let this share of an aggregate leave, or say why not (AggregateTooSmallError)."""
        terms = self.terms(tensor) or {}
        live = {token: term for token, term in terms.items() if abs(term.coef) > 1e-12}
        owners = {term.owner: term.name for term in live.values()}
        needed = max((term.k for term in live.values()), default=DEFAULT_K)
        where = f"object {id} on {worker_id!r}"
        if len(owners) < needed:
            names = ", ".join(sorted(owners.values())) or "no owner"
            raise AggregateTooSmallError(
                f"{where} is a share of an aggregate of {len(owners)} data owner(s) ({names}); their policy releases a "
                f"share for reconstruction only in a sum of at least {needed} owners' data: add other owners' shares first"
            )
        coefs = [term.coef for term in live.values()]
        if any(not math.isclose(c, coefs[0], rel_tol=1e-9) for c in coefs):
            raise AggregateTooSmallError(
                f"{where} weighs its owners' data unequally ({', '.join(f'{c:g}' for c in coefs)}): only a sum (or an "
                "average) of the owners' values is released, never a combination that singles one out"
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


def _linear(op: str, args: tuple, kwargs: dict, terms_of: Any) -> dict[str, Term] | None:
    """The terms of a linear op's result, or None (not one this module follows)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor):
        return None
    own = terms_of(first)
    if op in _KEEP and len(tensors) == 1 and own:
        return dict(own)
    if op in _NEG and len(tensors) == 1 and own:
        return _scaled(own, -1.0)
    scalar = args[1] if len(args) > 1 and isinstance(args[1], (int, float)) and not isinstance(args[1], bool) else None
    if op in _MUL and len(tensors) == 1 and own and scalar is not None:
        return _scaled(own, float(scalar))
    if op in _FLOORDIV and len(tensors) == 1 and own and scalar:
        return _scaled(own, 1.0 / float(scalar))
    if op in _ADD | _SUB | _RSUB and len(args) >= 2 and not kwargs.get("alpha", 1) != 1:
        second = args[1]
        theirs = terms_of(second) if isinstance(second, torch.Tensor) else None
        sign_first, sign_second = (-1.0, 1.0) if op in _RSUB else (1.0, -1.0) if op in _SUB else (1.0, 1.0)
        if own and theirs:
            if tuple(first.shape) != tuple(second.shape):
                return None  # (broadcast: one owner's elements would be summed with different partners)
            return _merged(_scaled(own, sign_first), _scaled(theirs, sign_second))
        if own and not isinstance(second, torch.Tensor) or own and theirs is None:
            return _scaled(own, sign_first)  # plus a public value: the same owners, the same weights
        if theirs and not own:
            return _scaled(theirs, sign_second)
    return None


def _scaled(terms: dict[str, Term], by: float) -> dict[str, Term]:
    return {token: replace(term, coef=term.coef * by) for token, term in terms.items()}


def _merged(a: dict[str, Term], b: dict[str, Term]) -> dict[str, Term]:
    merged = dict(a)
    for token, term in b.items():
        merged[token] = replace(term, coef=merged[token].coef + term.coef) if token in merged else term
    return merged
