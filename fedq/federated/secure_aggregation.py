"""Federated averaging without a trusted aggregator (PySyft 0.2's Part 10, as one call).

Each round, a copy of the model trains where each data owner's data lives, as on a trusted
aggregator; then every owner's trained parameters are put in fixed precision and secret-shared
among the owners themselves, on their workers (`p.fix_precision().share(*owners)`: each holder
splits its own update and sends the other shares straight to the other owners), the sharings
are summed on each holder, and only the sum is reconstructed here and divided by the number of
owners. Nobody, this client included, sees one owner's update; owners whose data refuses model
updates in the clear (`updates="refuse"`) enforce it themselves: each holder releases its share
of the sum only if it aggregates at least k owners (aggregates.py). An owner that asked for noise
(`secure_aggregation(epsilon=, clip=)`) has its worker clip and noise the update it shares (all
parameters as one flat tensor), charging ε once a round: the average is then noisy too. Nothing of a round is
left on any worker afterwards.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn, optim

from ..pointer import Batch
from ..sharing import AdditiveSharingTensor, FixedPrecisionTensor, fix_precision, share_many
from .trusted_aggregator import LOSS_BOUNDS, LOSS_EPSILON, RoundResult, _progress


def train_with_secure_aggregation(
    model: nn.Module,
    owners: Sequence[tuple[Any, Any]],
    *,
    rounds: int,
    local_steps: int,
    lr: float,
    crypto_provider: Any = None,
    on_round: Callable[[RoundResult], None] | None = None,
    progress: bool | None = None,
) -> list[RoundResult]:
    """Train `model` in place, each round averaging the copies trained where each (data, target)
    pair lives by secure aggregation among the owners' workers. `crypto_provider` is kept with
    the sharings (an average needs none: it is a sum). Returns each round's first local losses,
    of the model the round started from (DP releases, as on the trusted aggregator)."""
    if len(owners) < 2:
        raise ValueError("secure aggregation averages at least two owners' updates")
    results = []
    with _progress(rounds, progress) as advance:
        for number in range(1, rounds + 1):
            result = _one_round(model, owners, number, local_steps, lr, crypto_provider)
            results.append(result)
            advance(result)
            if on_round is not None:
                on_round(result)
    return results


def _one_round(model: nn.Module, owners: Sequence[tuple[Any, Any]], number: int, local_steps: int, lr: float, crypto_provider: Any) -> RoundResult:
    workers = [data.location for data, _ in owners]
    copies = [model.copy().send(worker) for worker in workers]
    optimizers = [optim.SGD(params=copy.parameters(), lr=lr) for copy in copies]
    first_losses: list[Any] = [None] * len(owners)
    for step in range(local_steps):
        for i, (copy, optimizer, (data, target)) in enumerate(zip(copies, optimizers, owners)):
            optimizer.zero_grad()
            loss = ((copy(data) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            if step == 0:
                # The round's first loss: of the public model it started from. Later ones are of
                # weights trained on the owner's data, which an owner refusing updates keeps private:
                # their loss is no per-house aggregate the DP rule can release.
                first_losses[i] = loss
    batch = Batch()
    for loss in first_losses:
        batch.get(loss, epsilon=LOSS_EPSILON, bounds=LOSS_BOUNDS)
    losses = {worker.id: float(loss.detach()) for worker, loss in zip(workers, batch.run())}
    with torch.no_grad():
        # Each owner's update as one flat tensor, made and encoded where it is, then shared: all at
        # once, one sharing per owner (an owner that noises its updates clips the whole update and
        # pays one ε a round, as DP-FedAvg clips a client's update, not each layer apart).
        params = list(model.parameters())
        encoded = [fix_precision(torch.cat([p.detach().reshape(-1) for p in copy.parameters()])) for copy in copies]
        sharings = share_many([e.child for e in encoded], workers, crypto_provider=crypto_provider, scale=encoded[0].scale)
        total = FixedPrecisionTensor(sharings[0].get())
        for sharing in sharings[1:]:
            total = total + FixedPrecisionTensor(sharing.get())  # (.get(): the sharing's pointers come here)
        average = _average(total, len(copies))
        for param, part in zip(params, average.split([p.numel() for p in params])):
            param.set_(part.reshape(param.shape).to(param.dtype).clone())
        del encoded, sharings, total
    del copies, optimizers, first_losses, loss  # frees everything the round left on the workers
    return RoundResult(number, losses)


def _average(total: FixedPrecisionTensor, count: int) -> torch.Tensor:
    """The sum, reconstructed (each holder's share of it, released by its owners' policy), over `count`."""
    assert isinstance(total.child, AdditiveSharingTensor)
    return total.get().float_precision() / count
