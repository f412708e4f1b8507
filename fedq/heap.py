"""How a worker process keeps the memory it frees: for its next tensors while it is busy, back
to the system once it idles. glibc's malloc only; with any other C library nothing changes.

glibc maps each block over 32 MiB afresh and unmaps it when freed, so a worker that receives,
computes and frees a model's tensors every round faults every page in anew and the kernel zeroes
it (~1.6 µs per 4 KiB here, more on a busy VM): issue 17's workload C moved and averaged
4 x 46 MB a round, and its round went from ~1.0 to ~0.65 s with the pages reused. Kept on the
heap, freed blocks are reused, but fragmentation can hold several times the live bytes (a
48 MiB round trip repeated settled at ~290 MiB over its start), so a worker that has heard
nothing for IDLE_SECONDS hands its free pages back (malloc_trim), as jemalloc's decay does.
Pages, not address space: a freed block below a live one stays mapped, and the memory cap
(RLIMIT_DATA) counts it, so a key holder freeing ever larger temporaries under small tensors
can take the cap from everyone else. Only a script's own workers retain by default
(settings.SPAWNED_RETAINED_FREE_BYTES): their only key holder is the user who started them.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

#: a worker silent this long gives its free pages back; the next busy spell faults them in again
IDLE_SECONDS = 1.0

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # (malloc.h)
_C_INT_MAX = (1 << 31) - 1
_libc: Any = None  # set once this process retains freed memory


def retain_freed_memory(retained_bytes: int) -> bool:
    """Keep up to `retained_bytes` of freed memory at the heap's top for the next allocations,
    large blocks included (settings.WorkerSettings.retained_free_bytes); 0: glibc's defaults.
    Process-wide: only a worker's own process calls it. True if glibc took it."""
    global _libc
    if retained_bytes <= 0:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(retained_bytes, _C_INT_MAX)))
    mallopt(_M_MMAP_MAX, ctypes.c_int(0))
    # One arena: zmq's I/O thread allocates what a socket receives, and an arena of its own maps
    # and unmaps a 64 MiB heap for each large message. glibc fixes the limit when the first
    # thread besides the main one allocates, so it holds only where that comes after this call
    # (not in a fresh interpreter, whose torch import started one).
    mallopt(_M_ARENA_MAX, ctypes.c_int(1))
    _libc = libc
    return True


class IdleTrim:
    """One worker's clock for giving memory back: `used()` after each batch of a key holder's
    requests, `stirred()` after a batch of only dropped ones (a stranger's: it freed what it
    brought, but must not count as use, or a byte a second would hold off the trim for ever),
    `tick()` from its loop's timer; the first tick IDLE_SECONDS after the last use (and the last
    trim: a stranger cannot make it trim more often) trims, once until the next batch."""

    def __init__(self) -> None:
        self._last_used = self._last_trim = time.monotonic()
        self._trimmed = False

    def used(self) -> None:
        self._last_used = time.monotonic()
        self._trimmed = False

    def stirred(self) -> None:
        self._trimmed = False

    def tick(self, now: float) -> None:
        if _libc is None or self._trimmed or now - max(self._last_used, self._last_trim) < IDLE_SECONDS:
            return
        self._trimmed = True
        self._last_trim = now
        _libc.malloc_trim(ctypes.c_size_t(0))
