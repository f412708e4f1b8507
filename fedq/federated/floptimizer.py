"""PySyft 0.2's `Optims`: one optimizer per worker, for training loops that visit workers in turn.

`from fedq.federated.floptimizer import Optims` is `from syft.federated.floptimizer import Optims`.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from torch.optim import Optimizer


class Optims:
    """`Optims(worker_ids, optim)`: a copy of `optim` per worker id, each with its own state, so
    momentum or Adam's averages learned on one worker's data never step another's parameters."""

    def __init__(self, workers: Sequence[Any], optim: Optimizer) -> None:
        self.optim = optim
        self.workers = list(workers)
        self.optimizers: dict[str, Optimizer] = {}
        for worker in self.workers:
            # a shallow copy shares param_groups' parameters (the one model) but gets fresh state
            optimizer = copy.copy(optim)
            optimizer.state = type(optim.state)()
            optimizer.param_groups = [dict(group) for group in optim.param_groups]
            optimizer.load_state_dict(optim.state_dict())
            self.optimizers[str(_key(worker))] = optimizer

    def get_optim(self, worker: Any) -> Optimizer:
        """The optimizer for `worker` (its id, or the worker itself)."""
        return self.optimizers[str(_key(worker))]

    def count(self) -> int:
        return len(self.workers)


def _key(worker: Any) -> Any:
    return getattr(worker, "id", worker)
