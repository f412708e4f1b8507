"""Federated averaging on a trusted aggregator: the workflow rules 7 and 13 exist for.

Each round, a copy of the model trains where each data owner's data lives; the
trained copies `move` straight to the aggregator, which averages them; only the
average comes back. Nobody but the aggregator ever holds one owner's model, and
after each round nothing of the round is left on any worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn, optim


@dataclass
class RoundResult:
    round: int
    losses: dict[str, float]  # owner id -> loss of its last local step

    def __str__(self) -> str:
        return f"round {self.round:2d}: " + "  ".join(f"{who} loss {loss:.4f}" for who, loss in self.losses.items())


def find_owner_data(workers: Sequence[Any], data_tag: str = "#data", target_tag: str = "#target", dataset_tag: str = "#housing") -> list[tuple[Any, Any]]:
    """(data, target) pointers per worker, found by the data owners' own tags (rule 14)."""
    pairs = []
    for worker in workers:
        data = worker.search(dataset_tag, data_tag)
        target = worker.search(dataset_tag, target_tag)
        if len(data) != 1 or len(target) != 1:
            raise LookupError(f"worker {worker.id!r} holds {len(data)} {data_tag} and {len(target)} {target_tag} objects tagged {dataset_tag}; expected one each")
        pairs.append((data[0], target[0]))
    return pairs


def train_on_trusted_aggregator(
    model: nn.Module,
    owners: Sequence[tuple[Any, Any]],
    aggregator: Any,
    *,
    rounds: int,
    local_steps: int,
    lr: float,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Train `model` in place by averaging, on `aggregator`, copies trained where each
    (data, target) pair lives. Returns each round's last local losses."""
    results = []
    for number in range(1, rounds + 1):
        copies = [model.copy().send(data.location) for data, _ in owners]
        optimizers = [optim.SGD(params=copy.parameters(), lr=lr) for copy in copies]
        last_losses: list[Any] = [None] * len(owners)
        for _ in range(local_steps):
            for i, (copy, optimizer, (data, target)) in enumerate(zip(copies, optimizers, owners)):
                optimizer.zero_grad()
                loss = ((copy(data) - target) ** 2).mean()
                loss.backward()
                optimizer.step()
                last_losses[i] = loss
        losses = {data.location.id: float(loss.get().detach()) for (data, _), loss in zip(owners, last_losses)}
        for copy in copies:
            copy.move(aggregator)
        with torch.no_grad():
            for name, param in model.named_parameters():
                remote = [dict(copy.named_parameters())[name].data for copy in copies]
                param.set_((sum(remote[1:], remote[0]) / len(remote)).get())
        del copies, optimizers, last_losses, remote  # frees everything the round left on the workers
        result = RoundResult(number, losses)
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results
