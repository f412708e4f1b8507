"""A data owner for the privacy tests: one dataset with a small budget that refuses model
updates, and one with known values and a large budget, to measure the noise of releases."""

import torch

ROWS = 64
SECRET = torch.arange(ROWS * 4, dtype=torch.float32).reshape(ROWS, 4) % 10  # values 0..9, known to the tests
COINS = (torch.arange(400) % 2).float()  # 200 ones among 400 records


def setup(owner) -> None:
    table = owner.dataset("table", epsilon=1.0, updates="refuse")
    owner.add(SECRET.clone(), tags=("#table",), description="a private (64, 4) table", dataset=table, bounds=(0.0, 9.0))
    coins = owner.dataset("coins", epsilon=1e6)
    owner.add(COINS.clone(), tags=("#coins",), description="400 coin flips", dataset=coins, bounds=(0.0, 1.0))
