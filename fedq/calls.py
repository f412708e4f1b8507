"""Calls in flight: what this process asked a peer and has no answer to yet, by sequence number.

The client keeps one table of its requests to workers (`Client`), each worker one of its relays
to the next hops of its chains (`Worker`). A call leaves its table exactly once: when its answer
comes (`answer`), when its deadline passes (`expire`: a worker's relays), or when its peer is
given up on (`fail_peers`: a client's silent, dead or restarted worker); then it is finished with
a failure instead. An answer that comes after that is late and ignored, except for what it hands
over: references the peer now counts as ours, which nobody will hold (the caller was told the call
failed), so they are given back.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterable, Iterator, Protocol, TypeVar

from .errors import ProtocolError
from .messages import Failure, Ok, answers


class Pending(Protocol):
    """What a table needs of a call: its peer, and whether its answer hands references over
    (`expire` needs a `deadline` too, in time.monotonic() seconds)."""

    address: str
    hands_over: bool


C = TypeVar("C", bound=Pending)


class InFlight(Generic[C]):
    """Calls in flight by sequence number. `finish(call, answer)` gets each call's answer, or
    the Failure it was given up with, once. `give_back(value)` frees the references in a late
    answer's value when its call had failed; at most `max_unclaimed` such calls are remembered
    (None: every one), the oldest forgotten first."""

    __slots__ = ("_calls", "_finish", "_give_back", "_unclaimed", "_max_unclaimed")

    def __init__(
        self, finish: Callable[[C, Ok | Failure], None], give_back: Callable[[Any], None], *, max_unclaimed: int | None = None
    ) -> None:
        self._calls: dict[int, C] = {}
        self._finish = finish
        self._give_back = give_back
        self._unclaimed: dict[int, None] = {}  # seqs of failed calls whose answer hands references over (ordered: oldest first)
        self._max_unclaimed = max_unclaimed

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, seq: int, call: C) -> None:
        self._calls[seq] = call

    def answer(self, seq: int, message: Ok | Failure) -> bool:
        """Finish the call `message` answers. False if none waits for it (answered already, or
        never asked), unless it hands over references to give back: they are, and True."""
        call = self._calls.pop(seq, None)
        if call is not None:
            self._finish(call, message)
            return True
        if seq in self._unclaimed:
            del self._unclaimed[seq]
            if isinstance(message, Ok):
                self._give_back(message.value)  # we gave up on it: nobody here holds what it hands over
                return True
        return False

    def fail_peers(self, addresses: set[str], failure: Callable[[C], Failure]) -> bool:
        """Finish every call to `addresses` with `failure(call)`; True if there was one."""
        failed = [(seq, call) for seq, call in self._calls.items() if call.address in addresses]
        for seq, call in failed:
            self._fail(seq, call, failure(call))
        return bool(failed)

    def expire(self, now: float, failure: Callable[[C], Failure]) -> None:
        """Finish every call whose `deadline` is past with `failure(call)`."""
        for seq, call in list(self._calls.items()):
            if call.deadline <= now:  # type: ignore[attr-defined]
                self._fail(seq, call, failure(call))

    def _fail(self, seq: int, call: C, failure: Failure) -> None:
        del self._calls[seq]
        if call.hands_over:  # its late answer's references are given back
            self._unclaimed[seq] = None
            if self._max_unclaimed is not None and len(self._unclaimed) > self._max_unclaimed:
                del self._unclaimed[next(iter(self._unclaimed))]
        self._finish(call, failure)


def answers_in(
    replies: Iterable[tuple[int | None, Any]], peer: str, dropped: Callable[[ProtocolError], None]
) -> Iterator[tuple[int, Ok | Failure]]:
    """(seq, Ok or Failure) for each call that `replies`, one message's decoded (seq, reply)
    pairs, answer (an Acked answers several). A reply the codec refused (a ProtocolError, told
    to `dropped`) was signed by a key holder: it fails the call it names, as a failure on
    `peer`, or is dropped if it names none."""
    for seq, reply in replies:
        if isinstance(reply, ProtocolError):
            dropped(reply)
            if seq is None:
                continue
            reply = Failure.from_exception(reply, peer)
        yield from answers(seq, reply)
