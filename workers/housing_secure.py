"""A data owner's housing shard (housing.py's), whose owner lets model updates leave only inside
a secure aggregate: trained weights are private (updates="refuse"), so no aggregator may hold
them, and every worker holding a share of them releases it only in a sum of at least k = 2
owners' updates (DataOwner.secure_aggregation; fedq/aggregates.py). `fedq demo --secure`.
`exact=True`: this owner approves exact averages, trusting the data scientist's training to give
every owner's update weight; `epsilon=..., clip=...` instead would noise each shared update."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from housing import load_houses  # noqa: E402


def setup(owner) -> None:
    load_houses(owner, updates="refuse")
    owner.secure_aggregation(k=2, exact=True)
