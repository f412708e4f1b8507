"""Client-side reference counting (rule 6): what this process tells workers about the
references its pointers hold.

Each pointer holds one counted reference to its remote object (`RemoteRef`). A worker frees
an object once nobody holds a reference to it; the updates that say so are queued here and
never sent by whoever makes them: a pointer may die in the middle of anything, including a
send (RPyC's deadlock). The transport sends them with its next turn, ahead of the next
request to the same worker, one `DeleteObjects` per worker a batch (`RefUpdates.message`):

- a delete, when a `RemoteRef` dies, unless it was spent first (handed on, or brought back);
- a hand-over, when a pointer is sent on: our reference at the next hop is the new holder's
  (for listings; it frees nothing);
- a give-back: the references an answer handed over that no pointer will hold (its wait
  was interrupted, or gave up).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

from .messages import DeleteObjects, references_in


@dataclass(slots=True)
class _RefUpdate:
    """An update queued as it is made (a hand-over, a give-back)."""

    address: str
    update: Any  # a deleted reference's id, or a hand-over (id, giver, taker)

    def take(self) -> tuple[str, Any]:
        """Where this update goes, and what it says (the transport asks as it sends)."""
        return self.address, self.update


class _OnDeath(weakref.ref):
    """A reference update to queue when an object dies. Its callback is the outbox's own
    `append`, C code: when the object dies no Python code runs, so a Ctrl-C cannot land
    between the death and the queueing (a `__del__` could lose it, and swallow the Ctrl-C).
    `armed` holds it while it may still go: the garbage collector then runs its callback
    even when the object dies in a reference cycle."""

    __slots__ = ("address", "update", "armed")

    def take(self) -> tuple[str, Any] | None:
        """Where this update goes and what it says; None if it was cancelled (the reference was spent)."""
        try:
            self.armed.remove(self)
        except KeyError:
            return None
        return self.address, self.update

    def cancel(self) -> None:
        self.armed.discard(self)


class RefUpdates:
    """The reference updates of one client, queued on its transport's outbox (`enqueue`: the
    transport sends each before the next request to its address; C code, a death may call it)."""

    def __init__(self, enqueue: Callable[[Any], None]) -> None:
        self._enqueue = enqueue
        self._armed: set[_OnDeath] = set()  # watched objects still alive (or dead, their update not sent yet)
        self.closed = False

    def watch(self, obj: Any, address: str, id: int) -> _OnDeath:
        """Delete object `id` at `address` once `obj` dies, unless the watcher returned is
        cancelled first (the reference was spent)."""
        watcher = _OnDeath(obj, self._enqueue)
        watcher.address, watcher.update, watcher.armed = address, id, self._armed
        self._armed.add(watcher)
        return watcher

    def hand_over(self, address: str, id: int, giver: str, taker: str) -> None:
        """Tell the worker at `address` that `giver`'s reference to `id` is `taker`'s now (for
        listings): batched with the deletes, and waited for only as they are."""
        if not self.closed:
            self._enqueue(_RefUpdate(address, (id, giver, taker)))

    def delete(self, address: str, id: int) -> None:
        """Drop one reference of ours to `id` at `address` that no pointer holds (the source's
        copy, when a move landed though its source said it failed)."""
        if not self.closed:
            self._enqueue(_RefUpdate(address, id))

    def give_back(self, value: Any) -> None:
        """Delete the references an answer handed over that no pointer will hold."""
        for spec in references_in(value):
            self._enqueue(_RefUpdate(spec.address, spec.id_at_location))

    @staticmethod
    def message(updates: list[Any]) -> DeleteObjects:
        """What one batch of updates to one worker says."""
        ids = tuple(u for u in updates if type(u) is int)
        return DeleteObjects(ids, hand_overs=tuple(u for u in updates if type(u) is tuple))

    def close(self) -> None:
        self.closed = True


class RemoteRef:
    """One counted reference to a remote object (rule 6): when it dies, its delete is queued
    (without running Python code, `_OnDeath`), unless it was spent first."""

    __slots__ = ("spent", "_on_death", "__weakref__")

    def __init__(self, refs: RefUpdates, address: str, id_at_location: int) -> None:
        self.spent: str | None = None  # why this reference no longer counts
        # What the delete will say lives on the watcher itself: a move changes it in one step.
        self._on_death = refs.watch(self, address, id_at_location)

    @property
    def address(self) -> str:
        return self._on_death.address

    @address.setter
    def address(self, address: str) -> None:  # the object moved (rule 7)
        self._on_death.address = address

    @property
    def id_at_location(self) -> int:
        return self._on_death.update

    def spend(self, why: str) -> None:
        """This reference no longer counts (it was handed on, or brought back): no delete."""
        self.spent = why
        self._on_death.cancel()
