"""Medians over repeats: the one way every figure of `fedq bench` is taken.

A figure is the median of `repeats` samples; each sample is the mean time of
`number` back-to-back calls. The median (not the mean, not the minimum) is what
the issue asks for: one slow repeat, from another process taking the CPU on
this 2-core machine, must not move the figure, and neither may one lucky one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median over repeats, and every repeat's figure for the JSON."""

    median: float
    samples: tuple[float, ...]
    number: int  # calls per sample

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = list(self.samples)
        return data


def summarize(samples: list[float], number: int = 1) -> Timing:
    """A Timing from per-call seconds measured elsewhere (when one repeat yields several figures)."""
    if not samples:
        raise ValueError("no samples to summarize")
    return Timing(statistics.median(samples), tuple(samples), number)


def per_call(fn: Callable[[], Any], *, number: int, repeats: int, warmup: int = 0) -> Timing:
    """Time `fn()`: `warmup` untimed calls (first-use costs: connections, caches), then
    `repeats` samples of `number` calls each."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return summarize(samples, number)
