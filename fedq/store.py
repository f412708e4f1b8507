"""A worker's object store: {id: object}, each entry counted by the pointers to it.

Rule 6 of the semantics reference: an object lives exactly as long as some
pointer to it lives anywhere. Each pointer, wherever it is (the user's process,
another worker's store, in flight inside a message), holds one reference; the
entry goes when the count reaches zero. A data owner's own objects are pinned:
pointers to them (from a search) come and go without freeing them.

Each reference is counted under its holder, by the name its connection gives
(a worker's id, or "me:4242@host" for a user's process), for `fedq ls`. When a
pointer changes hands without a message to us (sent on, fetched from a chain,
moved), whoever hands it over or receives it tells us (`hand_over`). Freeing
depends only on the total: a delete from a holder we have not heard of yet (its
hand-over is still on its way) takes a reference from another holder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .errors import DuplicateIdError, ObjectNotFoundError, StoreFullError
from .wire import PointerSpec


PRIVATE_TAG = "#private"  # a sender can mark what it sends private with this tag


DATA_OWNER = "data owner"  # the holder of what a data owner's script loaded


@dataclass(slots=True)
class Entry:
    obj: Any  # a torch.Tensor, or a PointerSpec (this worker's pointer to another worker)
    holders: dict[str, int]  # references, by who holds them (a plain dict: Counter costs a Python call per new entry)
    pinned: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)
    description: str | None = None
    private: bool = False  # may not leave this worker (see privacy.py)

    @property
    def refs(self) -> int:
        return sum(self.holders.values())

    def add(self, holder: str) -> None:
        self.holders[holder] = self.holders.get(holder, 0) + 1

    def drop(self, holder: str) -> None:
        """One reference fewer, `holder`'s if it has one (else another's: see the module doc)."""
        if holder not in self.holders:
            if not self.holders:
                return
            holder = max(self.holders, key=self.holders.__getitem__)
        if self.holders[holder] > 1:
            self.holders[holder] -= 1
        else:
            del self.holders[holder]

    def listing(self) -> tuple[tuple[str, int], ...]:
        """(holder, references), most first."""
        return tuple(sorted(self.holders.items(), key=lambda item: -item[1]))


class ObjectStore:
    def __init__(self, worker_id: str, max_bytes: int | None = None) -> None:
        self.worker_id = worker_id
        self.max_bytes = max_bytes
        self.nbytes = 0  # tensor bytes held, kept up to date on every put and removal
        self._entries: dict[int, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[int, Entry]]:
        return iter(list(self._entries.items()))

    def put(
        self,
        id: int,
        obj: Any,
        *,
        holder: str,
        pinned: bool = False,
        tags: frozenset[str] = frozenset(),
        description: str | None = None,
        private: bool = False,
    ) -> None:
        if id in self._entries:
            raise DuplicateIdError(f"worker {self.worker_id!r} already holds an object with id {id}")
        size = object_nbytes(obj)
        if self.max_bytes is not None and self.nbytes + size > self.max_bytes:
            raise StoreFullError(
                f"worker {self.worker_id!r} holds {self.nbytes} bytes; {size} more would pass its limit of {self.max_bytes}"
            )
        self._entries[id] = Entry(obj, {holder: 1}, pinned, tags, description, private or PRIVATE_TAG in tags)
        self.nbytes += size

    def entry(self, id: int) -> Entry:
        try:
            return self._entries[id]
        except KeyError:
            raise ObjectNotFoundError(
                f"worker {self.worker_id!r} holds no object with id {id} "
                "(it was deleted, got, cleared, or never sent)"
            ) from None

    def __contains__(self, id: int) -> bool:
        return id in self._entries

    def get(self, id: int) -> Any:
        return self.entry(id).obj

    def incref(self, id: int, holder: str) -> None:
        self.entry(id).add(holder)

    def decref(self, id: int, holder: str) -> Entry | None:
        """Drop `holder`'s reference; return the entry if that freed it. Unknown ids are ignored:
        deletes are idempotent, and a cleared store may still get deletes for what it held."""
        entry = self._entries.get(id)
        if entry is None:
            return None
        entry.drop(holder)
        if entry.holders or entry.pinned:
            return None
        return self._remove(id)

    def hand_over(self, id: int, giver: str, taker: str) -> None:
        """`giver`'s reference to `id` now belongs to `taker` (a pointer changed hands).
        Nothing happens when `giver` holds none any more: its reference was dropped meanwhile."""
        entry = self._entries.get(id)
        if entry is not None and giver in entry.holders:
            entry.drop(giver)
            entry.add(taker)

    def pop(self, id: int) -> Entry:
        self.entry(id)
        return self._remove(id)

    def remove_if_present(self, id: int) -> None:
        if id in self._entries:
            self._remove(id)

    def replace(self, id: int, obj: Any) -> None:
        """Put `obj` in place of what `id` holds (remote_get), keeping its references."""
        entry = self.entry(id)
        self.nbytes += object_nbytes(obj) - object_nbytes(entry.obj)
        entry.obj = obj

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _remove(self, id: int) -> Entry:
        entry = self._entries.pop(id)
        self.nbytes -= object_nbytes(entry.obj)
        return entry


def object_nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.numel()
    return 0


def describe(obj: Any) -> tuple[str, tuple[int, ...] | None, str | None, str | None]:
    """(type, shape, dtype, points_to) of a stored object, for listings."""
    if isinstance(obj, PointerSpec):
        return ("PointerTensor", obj.shape, str(obj.dtype).removeprefix("torch."), f"{obj.location}:{obj.id_at_location}")
    if isinstance(obj, torch.Tensor):
        return (type(obj).__name__, tuple(obj.shape), str(obj.dtype).removeprefix("torch."), None)
    return (type(obj).__name__, None, None, None)
