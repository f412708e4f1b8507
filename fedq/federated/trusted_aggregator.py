"""Federated averaging on a trusted aggregator: the workflow rules 7 and 13 exist for.

Each round, a copy of the model trains where each data owner's data lives; the
trained copies `move` straight to the aggregator, which averages them; only the
average comes back. Nobody but the aggregator ever holds one owner's model, and
after each round nothing of the round is left on any worker.
"""

from __future__ import annotations

import contextlib
import sys
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn, optim

from ..pointer import Batch
from .local_plans import local_sgd_plans


#: each owner's loss leaves with differential privacy (privacy.py): its per-house squared error
#: is clamped to LOSS_BOUNDS and the mean released at LOSS_EPSILON per owner and round
LOSS_EPSILON = 1.0
LOSS_BOUNDS = (0.0, 10.0)


@dataclass
class RoundResult:
    round: int
    losses: dict[str, float]  # owner id -> loss of its last local step (a DP release: noisy)

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
    progress: bool | None = None,
    batch_size: int | None = None,
) -> list[RoundResult]:
    """Train `model` in place by averaging, on `aggregator`, copies trained where each
    (data, target) pair lives. Returns each round's last local losses.

    `progress` shows a bar per round (default: when stdout is a terminal). `batch_size`: each
    local step trains on the next `batch_size` rows of the owner's data (wrapping round); None: all."""
    results = []
    with _progress(rounds, progress) as advance:
        for number in range(1, rounds + 1):
            result = _one_round(model, owners, aggregator, number, local_steps, lr, batch_size)
            results.append(result)
            advance(result)
            if on_round is not None:
                on_round(result)
    return results


@contextlib.contextmanager
def _progress(rounds: int, show: bool | None) -> Iterator[Callable[[RoundResult], None]]:
    if show is None:
        show = sys.stdout.isatty()
    if not show:
        yield lambda result: None
        return
    from rich.progress import Progress  # typer brings rich

    with Progress() as bar:  # (stays on screen: the last round is the one worth seeing)
        task = bar.add_task("federated rounds", total=rounds)

        def advance(result: RoundResult) -> None:
            bar.update(task, advance=1, description=str(result))

        yield advance


def _one_round(
    model: nn.Module, owners: Sequence[tuple[Any, Any]], aggregator: Any, number: int, local_steps: int, lr: float, batch_size: int | None = None
) -> RoundResult:
    """One round: train a copy where each owner's data is, move the copies to the aggregator,
    average there, and bring back only the average."""
    copies = [_sharing_copy(model) for _ in owners]
    sending = Batch()  # (a large model's parameters: every owner's awaited together, not one wait each)
    for copy, (data, _) in zip(copies, owners):
        sending.send(copy, data.location)
    sending.run()
    last_losses: list[Any] = [None] * len(owners)
    # Each owner's local steps as plans where the model traces (local_plans.py): one RunPlan per
    # owner and round, its steps run on the worker as the ops below would be; the rest op by op.
    plans = [local_sgd_plans(model, data, target, local_steps, lr, batch_size) for data, target in owners]
    for part in range(max((len(p) for p in plans if p), default=0)):  # (every owner's first part, then the next: in parallel)
        for i, (copy, (data, target)) in enumerate(zip(copies, owners)):
            if plans[i] and part < len(plans[i]):
                last_losses[i] = plans[i][part].send(data.location)(data, target, *copy.parameters())
    optimizers = [optim.SGD(params=copy.parameters(), lr=lr) for copy in copies]
    for step in range(local_steps):
        for i, (copy, optimizer, (data, target)) in enumerate(zip(copies, optimizers, owners)):
            if plans[i]:
                continue
            if batch_size is not None:  # (slices of the pointers: cut where the data is)
                start = step * batch_size % data.shape[0]
                data, target = data[start:start + batch_size], target[start:start + batch_size]
            optimizer.zero_grad()
            loss = ((copy(data) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            last_losses[i] = loss
    # Every owner's loss release and every copy's move are sent at once and waited for once
    # (the local steps are pipelined): the round waits as often for 8 owners as for 2.
    batch = Batch()
    for loss in last_losses:
        batch.get(loss, epsilon=LOSS_EPSILON, bounds=LOSS_BOUNDS)
    for copy in copies:
        batch.move(copy, aggregator)
    released = batch.run()
    losses = {data.location.id: float(loss.detach()) for (data, _), loss in zip(owners, released)}
    with torch.no_grad():
        # One op per parameter over the N copies on the aggregator, not N-1 additions; every
        # average comes back in one wait.
        names = [name for name, _ in model.named_parameters()]
        averages = [torch.stack([dict(copy.named_parameters())[name] for copy in copies]).mean(0) for name in names]
        batch = Batch()
        for average in averages:
            batch.get(average)
        for param, value in zip(model.parameters(), batch.run()):
            param.set_(value)
    del copies, optimizers, last_losses, averages  # frees everything the round left on the workers
    return RoundResult(number, losses)


def _sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters share its memory, for a send that reads them before
    anything writes them (a send waits for what goes zero-copy; the rest is pickled at once).
    `model.copy()` cloned every parameter once per owner: with torch's two threads in this process
    on a loaded machine, 8 clones of workload B's MLP took 70-180 ms of a round."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    return deepcopy(model, memo)


def plot_losses(results: Sequence[RoundResult], path: str) -> str:
    """Write each owner's loss per round to a PNG at `path` (needs the `plot` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fedq[plot]'") from None
    figure, axes = plt.subplots(figsize=(6, 4))
    for owner in results[0].losses if results else ():
        axes.plot([r.round for r in results], [r.losses[owner] for r in results], marker="o", label=owner)
    axes.set(xlabel="round", ylabel="loss of the last local step", yscale="log", title="federated averaging on a trusted aggregator")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
