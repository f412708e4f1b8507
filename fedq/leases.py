"""Leases: a holder's references here last as long as it is heard from.

Every signed message a worker takes renews its sender's lease (`heard`: one dict
assignment per message, on the hot path); a holder with nothing else to say sends
a `Renew` every third of the lease. A holder silent for `lease_seconds` (a client
that was SIGKILLed, a worker of a chain that died) is forgotten: the worker drops
every reference it held, and frees what nobody else holds (like Ray when an
owner dies). The data owner and the worker itself never lapse.

Holders are keyed as the store keys them: by the session each signs its messages
with (store.py); listings show the name its connection gave (a worker's id, or
"me:4242@host"). A restarted process has a new session: its old references lapse. A holder that was handed references without ever talking to us
(a hand-over, a move) is `introduce`d: its lease starts then.

Checks run on the worker's tick, at most every `check_every` seconds, and cost
O(holders), never O(objects); only a lapse walks the store (once for every holder
that lapsed together).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from .messages import Ok, holder_key
from .transport import peer_name

MAX_NAMES = 1 << 16  # holders' names kept for listings (oldest forgotten first)


def lease_told(answer: Any) -> float | None:
    """The lease a worker's answer to a `Renew` tells (its seconds), or None if it tells none."""
    if isinstance(answer, Ok) and isinstance(answer.value, (int, float)) and answer.value > 0:
        return float(answer.value)
    return None


class Leases:
    def __init__(self, lease_seconds: float, never_lapse: Iterable[str]) -> None:
        self.seconds = float(lease_seconds)
        #: connections (routing ids) heard since the last check; the hot path writes here only
        self.heard: dict[bytes, bytes] = {}  # {session: routing id}
        self.names: dict[str, str] = {}  # holder -> the name its connection gave, for listings
        self._last_heard: dict[str, float] = {}  # holder -> when it was last heard (monotonic)
        self._never = frozenset(never_lapse)
        self.check_every = min(1.0, self.seconds / 4)
        self._checked_at = time.monotonic()

    def introduce(self, name: str) -> None:
        """The holder `name`d on the wire ("name#session") was given references here, maybe without
        a word to us: its lease runs from now unless it was heard already."""
        holder = holder_key(name)
        if holder not in self._never:
            self._last_heard.setdefault(holder, time.monotonic())
            self.name(holder, name.rpartition("#")[0] or name)

    def due(self, now: float) -> bool:
        return now - self._checked_at >= self.check_every

    def lapsed(self, now: float) -> set[str]:
        """The holders not heard from for a whole lease, forgotten here (their references are the
        caller's to drop). Time the worker spent without checking (one long op, a SIGSTOP) is not
        held against anybody: what they sent meanwhile is still waiting to be read."""
        stalled = now - self._checked_at - 2 * self.check_every
        self._checked_at = now
        if stalled > 0:
            for holder in self._last_heard:
                self._last_heard[holder] += stalled
        self._fold(now)
        deadline = now - self.seconds
        gone = {holder for holder, at in self._last_heard.items() if at < deadline}
        for holder in gone:
            del self._last_heard[holder]
            self.names.pop(holder, None)
        return gone - self._never

    def leave(self, holder: str) -> None:
        """`holder` said it is gone: its lease ends now (its references are the caller's to drop)."""
        self._fold(time.monotonic())
        self._last_heard.pop(holder, None)
        self.names.pop(holder, None)

    def status(self, holder: str, now: float) -> tuple[float, float] | None:
        """(seconds since `holder` was last heard, seconds until its lease lapses); None if it never lapses."""
        if holder in self._never:
            return None
        self._fold(now)
        at = self._last_heard.get(holder, now)
        return (round(now - at, 1), round(max(0.0, at + self.seconds - now), 1))

    def _fold(self, now: float) -> None:
        """What the hot path noted ({session: routing id}), by holder: heard at the latest at `now`."""
        if self.heard:
            for session, identity in self.heard.items():
                holder = session.hex()
                self._last_heard[holder] = now
                self.name(holder, peer_name(identity))
            self.heard.clear()

    def name(self, holder: str, name: str) -> None:
        """What listings call `holder` (the name its connection gave, or a hand-over named it by)."""
        if holder not in self.names and holder not in self._never:
            if len(self.names) >= MAX_NAMES:
                del self.names[next(iter(self.names))]
            self.names[holder] = name

    def display(self, holder: str) -> str:
        """What listings call `holder`: its connection's name (a prefix of its key if never heard)."""
        self._fold(time.monotonic())
        return self.names.get(holder, holder if holder in self._never else holder[:8])
