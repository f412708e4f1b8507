"""A data owner for the secure-aggregation tests: a private housing shard whose owner refuses
model updates in the clear (updates="refuse") and releases shares of them only in an aggregate
of at least k = 2 owners (the default, said here), exactly: the owner's approval of exact sums,
which trusts the client's training (secagg_dp_owner.py noises them instead)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workers"))
import housing  # noqa: E402


def setup(owner) -> None:
    features, prices = housing.shard(owner.id, rows=16)
    houses = owner.dataset("houses", epsilon=100.0, updates="refuse")
    owner.add(features, tags=("#housing", "#data"), description=f"{owner.id}'s houses", dataset=houses, bounds=(-5.0, 5.0))
    owner.add(prices, tags=("#housing", "#target"), description=f"{owner.id}'s prices", dataset=houses, bounds=(-30.0, 30.0))
    owner.secure_aggregation(k=2, exact=True)
