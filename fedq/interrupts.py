"""Ctrl-C, held while a message changes hands in the user's process.

On the main thread, a KeyboardInterrupt raised between taking a message off the queue or
the socket and handing it on would lose it (a request never sent, a reply never delivered:
its caller would wait for it until the timeout). `transport.ClientSockets` holds SIGINT
while a thread leads the sockets: it is only noted, the lead ends at the end of the turn,
and `release` then lets it happen.
"""

from __future__ import annotations

import _signal  # the C module: `signal.signal` converts to and from enums, 3 us per call here
import signal
import threading
from typing import Any


class HeldInterrupt:
    """While held, SIGINT is only noted; `release` restores the handler and lets a noted one happen."""

    __slots__ = ("previous", "noted")

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.noted: tuple | None = None

    @classmethod
    def hold(cls) -> "HeldInterrupt | None":
        """Hold SIGINT; None where there is nothing to hold (not the main thread, or SIGINT ignored)."""
        if threading.get_ident() != threading.main_thread().ident:
            return None  # only the main thread ever sees KeyboardInterrupt
        previous = _signal.getsignal(_signal.SIGINT)
        if previous in (_signal.SIG_IGN, None):
            return None
        held = cls(previous)
        _signal.signal(_signal.SIGINT, held._note)
        return held

    def _note(self, signum: int, frame: Any) -> None:
        self.noted = (signum, frame)

    def release(self) -> None:
        _signal.signal(_signal.SIGINT, self.previous)
        if self.noted is None:
            return
        if callable(self.previous):
            self.previous(*self.noted)  # the default handler raises KeyboardInterrupt here
        else:  # SIG_DFL: what SIGINT would have done
            signal.raise_signal(signal.SIGINT)


def interrupted(held: HeldInterrupt | None) -> bool:
    """Was a Ctrl-C noted while `held`?"""
    return held is not None and held.noted is not None
