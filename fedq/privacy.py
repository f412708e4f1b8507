"""What may leave a worker: the data owner's privacy rule.

- An object the data owner marks private (`owner.add(t, private=True)`, or anything
  sent tagged "#private") never leaves its worker: `.get()`, `.move()` and a
  `remote_get()` that would pull it are refused with GetNotPermittedError.
- Anything computed from a private object is private too (in-place ops make their
  target private), so `(x * 1).get()` does not launder it.
- Except aggregates the owner allows: an op named in `Policy.aggregates` whose result
  is at least `Policy.min_reduction` times smaller than the private data it read is
  public. `((model(x) - y) ** 2).mean()` can come back; `x.sum(dim=1)` of a (64, 4)
  table cannot (64 numbers out of 256).
- Gradients that backward() leaves on parameters are not tracked: model updates may
  leave, as federated learning requires. They can still leak something of the data;
  secure aggregation is the remedy, and not part of fedq yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from .errors import GetNotPermittedError


@dataclass
class Policy:
    aggregates: set[str] = field(default_factory=set)  # op wire names, e.g. "Tensor.mean"
    min_reduction: int = 16

    def result_is_private(self, op: str, private_inputs: list[Any], results: Iterable[Any]) -> bool:
        if not private_inputs:
            return False
        if op not in self.aggregates:
            return True
        largest = max(t.numel() for t in private_inputs if isinstance(t, torch.Tensor))
        return any(r.numel() * self.min_reduction > largest for r in results if isinstance(r, torch.Tensor))


def refuse_if_private(entry: Any, id: int, worker_id: str, what: str) -> None:
    if entry.private:
        raise GetNotPermittedError(
            f"object {id} on {worker_id!r} is private to its data owner, or computed from private data: "
            f"it cannot be {what}. Compute on it there, and get an aggregate the owner allows"
        )
