"""Differential privacy for releases: noise from OpenDP, budgets accounted per dataset.

A release is an aggregate over the records of one of a data owner's datasets (privacy.py
decides which tensors are, and how many rows one record can change). This module does the
two things that must not be home-made: the noise, and the accounting.

- **Noise**: OpenDP's Laplace mechanism (`opendp.measurements.make_laplace`), whose sampler is
  exact and immune to the floating-point attacks on naive `x + laplace()`; its privacy map
  turns the sensitivity into the ε actually spent, which is what the budget is debited.
  torch's generator is never used: a client of the same worker can read and predict it.
- **Accounting**: basic (sequential) composition. Every release from a dataset spends its ε
  from the dataset's budget, whoever asks: key holders of one federation cannot be told
  apart by the worker (a new session is a new name), so a budget per client would reset at
  every reconnect. Who spent what is kept for the owner's listing.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Sequence

from .errors import PrivacyBudgetExceededError



@functools.cache
def _opendp():
    """OpenDP, imported at the first release (~0.13 s: not at every worker's start)."""
    try:
        import opendp.prelude as prelude
    except ImportError:  # pragma: no cover - the project depends on opendp
        raise RuntimeError("differential privacy releases need the opendp package: pip install opendp") from None
    prelude.enable_features("contrib")
    return prelude

_NO_SLACK = 1e-9  # relative: an ε computed back by OpenDP's map may differ from the one asked in the last bits


def laplace(values: Sequence[float] | Sequence[int], sensitivity: float, epsilon: float, *, integers: bool = False) -> tuple[list, float]:
    """`values` with OpenDP's Laplace noise for an L1 `sensitivity`, at privacy loss `epsilon`:
    the noisy values and the ε the mechanism's privacy map says it costs. `integers`: int64
    values get the discrete Laplace (exact in integers, and ~2x faster than floats' sampler)."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive finite number, not {epsilon!r}")
    if not (math.isfinite(sensitivity) and sensitivity >= 0):
        raise ValueError(f"a release's sensitivity must be finite (its bounds are): {sensitivity!r}")
    scale = sensitivity / epsilon if sensitivity > 0 else 0.0
    dp = _opendp()
    kind, atom = ("i64", dp.atom_domain(T="i64")) if integers else (float, dp.atom_domain(T=float, nan=False))
    mechanism = dp.m.make_laplace(dp.vector_domain(atom), dp.l1_distance(T=kind), scale=scale)
    spent = float(mechanism.map(int(math.ceil(sensitivity)) if integers else float(sensitivity)))
    if spent > epsilon * (1 + _NO_SLACK):
        raise ValueError(f"OpenDP's map puts this release at ε = {spent}, above the {epsilon} asked")
    return list(mechanism([int(v) for v in values] if integers else [float(v) for v in values])), min(spent, float(epsilon))


@dataclass
class Budget:
    """One dataset's privacy budget and what has been spent of it, by whom (names for display)."""

    epsilon: float
    spent: float = 0.0
    by_client: dict[str, float] = field(default_factory=dict)
    releases: int = 0

    @property
    def left(self) -> float:
        return max(0.0, self.epsilon - self.spent)

    def summary(self) -> dict:
        return {"epsilon": self.epsilon, "spent": round(self.spent, 12), "left": round(self.left, 12),
                "releases": self.releases, "by_client": dict(self.by_client)}


class Ledger:
    """The budgets of a worker's datasets, by dataset name; charged before any noisy value leaves."""

    def __init__(self) -> None:
        self._budgets: dict[str, Budget] = {}
        self._lock = threading.Lock()  # (one loop thread today; cheap insurance for the owner's reads)

    def open(self, dataset: str, epsilon: float) -> None:
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"a dataset's privacy budget is a finite ε >= 0, not {epsilon!r}")
        self._budgets.setdefault(dataset, Budget(float(epsilon)))

    def check(self, dataset: str, epsilon: float) -> None:
        """Refuse a release of `epsilon` from `dataset` if its budget cannot pay for it."""
        budget = self._budgets.get(dataset)
        if budget is None or budget.epsilon == 0:
            raise PrivacyBudgetExceededError(
                f"the data owner set no privacy budget for {dataset!r}: nothing computed from it is released "
                "with noise (ask the owner, or file a request: x.request(reason=...))"
            )
        if budget.spent + epsilon > budget.epsilon * (1 + _NO_SLACK):
            raise PrivacyBudgetExceededError(
                f"a release of ε = {epsilon:g} from {dataset!r} exceeds its privacy budget: {budget.left:g} of "
                f"{budget.epsilon:g} is left (spent {budget.spent:g} in {budget.releases} releases)"
            )

    def charge(self, dataset: str, epsilon: float, client: str) -> None:
        self.check(dataset, epsilon)
        budget = self._budgets[dataset]
        budget.spent += epsilon
        budget.releases += 1
        budget.by_client[client] = budget.by_client.get(client, 0.0) + epsilon

    def summary(self) -> dict[str, dict]:
        return {name: budget.summary() for name, budget in self._budgets.items()}
