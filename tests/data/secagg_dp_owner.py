"""A data owner for the secure-aggregation tests whose worker noises what it shares of its
private data: each sharing clipped to L1 norm 1 and noised at ε = 1 (OpenDP's Laplace), paid
from a budget of 6; shares released only in an aggregate of at least k = 2 owners."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workers"))
import housing  # noqa: E402

EPSILON, CLIP, BUDGET = 1.0, 1.0, 6.0


def setup(owner) -> None:
    features, prices = housing.shard(owner.id, rows=16)
    houses = owner.dataset("houses", epsilon=BUDGET, updates="refuse")
    owner.add(features, tags=("#housing", "#data"), description=f"{owner.id}'s houses", dataset=houses, bounds=(-5.0, 5.0))
    owner.add(prices, tags=("#housing", "#target"), description=f"{owner.id}'s prices", dataset=houses, bounds=(-30.0, 30.0))
    owner.secure_aggregation(k=2, epsilon=EPSILON, clip=CLIP)
