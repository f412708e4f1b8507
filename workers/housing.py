"""A data owner's shard of a small housing-price dataset.

The dataset is synthetic and made here (no download): 4 features per house and a
price that is a fixed linear function of them plus noise. Every worker id gets a
different, reproducible shard, so bob's and alice's data differ as real owners' would.
"""

from __future__ import annotations

import zlib

import torch

FEATURES = ("rooms", "age", "distance_to_centre", "crime_rate")
TRUE_WEIGHTS = torch.tensor([[3.0, -1.0, -2.0, -0.5]])
TRUE_BIAS = 2.0
ROWS_PER_SHARD = 64


def shard(worker_id: str, rows: int = ROWS_PER_SHARD) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, prices) of `worker_id`'s shard: the same on every run."""
    generator = torch.Generator().manual_seed(zlib.crc32(worker_id.encode()))
    features = torch.randn(rows, len(FEATURES), generator=generator)
    prices = features @ TRUE_WEIGHTS.t() + TRUE_BIAS + 0.1 * torch.randn(rows, 1, generator=generator)
    return features, prices


def setup(owner) -> None:
    # Model updates trained on the houses may leave: the trusted-aggregator round averages them
    # on another worker.
    load_houses(owner, updates="allow")


def load_houses(owner, *, updates: str) -> None:
    """This worker's shard as the dataset "houses", its updates' policy `updates`."""
    features, prices = shard(owner.id)
    # One record per house: a row of features and its price. The rows never leave this worker;
    # aggregates over them leave with differential privacy, within a budget of ε = 100 in all
    # (generous: the demo releases each owner's training loss every round; a real owner with
    # real data would grant ~1).
    houses = owner.dataset("houses", epsilon=100.0, updates=updates)
    owner.add(features, tags=("#housing", "#data"), description=f"{owner.id}'s houses: {', '.join(FEATURES)}",
              dataset=houses, bounds=(-5.0, 5.0))
    owner.add(prices, tags=("#housing", "#target"), description=f"{owner.id}'s sale prices", dataset=houses, bounds=(-30.0, 30.0))
