"""The data every section works on, defined once so that "the same work" is the same bytes
for the floor, the peers and fedq."""

from __future__ import annotations

import torch

MIB = 2**20
SMALL = (1, 2, 3, 4, 5)  # the lesson's tensor: the latency figures are about messages, not data


def small_tensor() -> torch.Tensor:
    return torch.tensor(SMALL)


def tensor_of(size_mib: int) -> torch.Tensor:
    """A float32 tensor of exactly `size_mib` MiB (ones: its pages are touched, as real data is)."""
    return torch.ones(size_mib * MIB // 4, dtype=torch.float32)


def calls_per_sample(size_mib: int) -> int:
    """Round trips timed together for one sample: a 1 MiB one lasts well under a millisecond,
    too short to time alone on a busy machine; 64 MiB and up are timed one by one."""
    return max(1, 16 // size_mib)
