"""The FedAvg workloads of `fedq bench --fl` (issue 17), in plain torch: models, shards, one round.

fedq (fl.py) and the Flower peer (_flower_probe.py, run by another interpreter) build the same
models from the same seeds and train on the same shards, so their weights can be compared; this
module imports nothing but torch for that reason. FedAvg here is the round fedq's
`train_on_trusted_aggregator` runs: a copy per owner, `steps` SGD steps on the mean squared
error (each on the next `batch` rows, or all of them), then the plain mean of the copies
(Flower's FedAvg weighs by examples: every shard has as many).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

LR = 0.05


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    sizes: tuple[int, ...]  # layer widths: (2, 1) is one Linear, (784, 256, 10) an MLP with a ReLU between
    owners: int
    rows: int  # per owner
    steps: int  # local steps per round
    batch: int | None  # rows per step; None: all of them
    rounds: int  # timed (one more, untimed, goes first)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Workload":
        return cls(**{**data, "sizes": tuple(data["sizes"])})


def workloads(quick: bool) -> list[Workload]:
    """Issue 17's A-D (and the 64-worker round of A); --quick: A and an 8-owner D, fewer rounds."""
    a = Workload("A", "linear 2->1, 2 owners, 1 full-batch step", (2, 1), 2, 64, 1, None, 10)
    d16 = Workload("D16", "linear 2->1, 16 owners, 1 step", (2, 1), 16, 64, 1, None, 5)
    if quick:
        return [Workload("A", a.what, a.sizes, 2, 64, 1, None, 5), Workload("D8", "linear 2->1, 8 owners, 1 step", (2, 1), 8, 64, 1, None, 3)]
    return [
        a,
        Workload("B", "MLP 784-256-10, 8 owners, 1 epoch of batch 60 on 600 rows", (784, 256, 10), 8, 600, 10, 60, 3),
        Workload("C", "MLP 784-4096-2048-10 (~11.5M parameters), 4 owners, 1 step", (784, 4096, 2048, 10), 4, 32, 1, None, 3),
        d16,
        Workload("D32", "linear 2->1, 32 owners, 1 step", (2, 1), 32, 64, 1, None, 5),
        Workload("A64", "linear 2->1, 64 owners (A's round on a federation of 64 workers)", (2, 1), 64, 64, 1, None, 3),
    ]


def model(workload: Workload) -> nn.Module:
    """The workload's model, its weights drawn from a fixed seed."""
    torch.manual_seed(17)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(workload.sizes, workload.sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def shard(workload: Workload, owner: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Owner `owner`'s (data, target): a fixed linear map of the data plus noise, the same every run."""
    generator = torch.Generator().manual_seed(1000 + owner)
    data = torch.randn(workload.rows, workload.sizes[0], generator=generator)
    mix = torch.randn(workload.sizes[0], workload.sizes[-1], generator=torch.Generator().manual_seed(7)) / workload.sizes[0] ** 0.5
    target = data @ mix + 0.1 * torch.randn(workload.rows, workload.sizes[-1], generator=generator)
    return data, target


def batches(workload: Workload, data: torch.Tensor, target: torch.Tensor) -> list[tuple[Any, Any]]:
    """The (data, target) of each local step, in order (works on pointers too: slices run where the data is)."""
    if workload.batch is None:
        return [(data, target)] * workload.steps
    starts = [(step * workload.batch) % workload.rows for step in range(workload.steps)]
    return [(data[s:s + workload.batch], target[s:s + workload.batch]) for s in starts]


def local_round(workload: Workload, weights: list[torch.Tensor], data: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """One owner's part of a round in plain torch: the trained copy's weights (what a Flower client returns)."""
    copy = model(workload)
    with torch.no_grad():
        for param, value in zip(copy.parameters(), weights):
            param.copy_(value)
    optimizer = torch.optim.SGD(copy.parameters(), lr=LR)
    for x, y in batches(workload, data, target):
        optimizer.zero_grad()
        ((copy(x) - y) ** 2).mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in copy.parameters()]


def fedavg(workload: Workload, rounds: int) -> list[torch.Tensor]:
    """`rounds` rounds in plain torch, from the workload's start: the weights fedq and Flower must reach."""
    weights = [p.detach().clone() for p in model(workload).parameters()]
    shards = [shard(workload, owner) for owner in range(workload.owners)]
    for _ in range(rounds):
        copies = [local_round(workload, weights, data, target) for data, target in shards]
        weights = [torch.stack(layer).mean(0) for layer in zip(*copies)]
    return weights


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
