"""A worker's object store: {id: object}, each entry counted by the pointers to it.

Rule 6 of docs/semantics.md: an object lives exactly as long as some
pointer to it lives anywhere. Each pointer, wherever it is (the user's process,
another worker's store, in flight inside a message), holds one reference; the
entry goes when the count reaches zero. A data owner's own objects are pinned:
pointers to them (from a search) come and go without freeing them.

Each reference is counted under its holder, by the name its connection gives
(a worker's id, or "me:4242@host" for a user's process), for `fedq ls`. When a
pointer changes hands without a message to us (sent on, fetched from a chain,
moved), whoever hands it over or receives it tells us (`hand_over`).

A delete or a hand-over reaches only the sender's own references: one from a holder
we have not heard of yet (the hand-over to it is still on its way) is owed, not taken
from anybody else, and applies when that reference comes. So the outcome does not
depend on the order hand-overs and deletes arrive in, and no party frees what another
holds; what a dishonest party owes is bounded (`MAX_OWED`) and dies with its lease.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from .errors import DuplicateIdError, ObjectNotFoundError, ProtocolError, RequestTooLargeError, StoreFullError
from .messages import PointerSpec


MAX_OWED = 1024  # deletes and hand-overs one holder may send ahead of its reference, per object

# What the store keeps of the strings and shapes a client gives with an object (uncounted by
# max_store_bytes otherwise: a 200 MiB description on an empty tensor was free).
MAX_DESCRIPTION_CHARS = 1024
MAX_TAGS, MAX_TAG_CHARS = 64, 256
MAX_ADDRESS_CHARS = 1024  # a pointer's address, and its location's name
MAX_DIMS = 64  # of a stored tensor, or of the shape a pointer says its object has

PRIVATE_TAG = "#private"  # a sender can mark what it sends private with this tag


DATA_OWNER = "data owner"  # the holder of what a data owner's script loaded




@dataclass(slots=True)
class Entry:
    obj: Any  # a torch.Tensor, or a PointerSpec (this worker's pointer to another worker)
    holders: dict[str, int]  # references, by who holds them (a plain dict: Counter costs a Python call per new entry)
    pinned: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)
    description: str | None = None
    owed: dict[str, list[str | None]] | None = None  # what holders did before their reference came (module doc)

    @property
    def refs(self) -> int:
        return sum(self.holders.values())

    def add(self, holder: str) -> None:
        """One reference more, `holder`'s, unless it already deleted or handed it on (owed)."""
        while self.owed and holder in self.owed:
            pending = self.owed[holder]
            then = pending.pop(0)
            if not pending:
                del self.owed[holder]
            if then is None:
                return  # deleted before it arrived
            holder = then  # handed on before it arrived: the taker's
        self.holders[holder] = self.holders.get(holder, 0) + 1

    def drop(self, holder: str) -> None:
        """One reference fewer: `holder`'s. A holder without one owes it (see the module doc)."""
        count = self.holders.get(holder)
        if count is None:
            self._owe(holder, None)
        elif count > 1:
            self.holders[holder] = count - 1
        else:
            del self.holders[holder]

    def hand_over(self, giver: str, taker: str) -> None:
        if giver in self.holders:
            self.drop(giver)
            self.add(taker)
        else:
            self._owe(giver, taker)

    def _owe(self, holder: str, then: str | None) -> None:
        owed = self.owed if self.owed is not None else {}
        pending = owed.setdefault(holder, [])
        if len(pending) < MAX_OWED:
            pending.append(then)
        self.owed = owed

    def forget(self, holder: str) -> int:
        """Drop every reference `holder` has, and what it owes; how many references went."""
        if self.owed:
            self.owed.pop(holder, None)
        return self.holders.pop(holder, 0)

    def listing(self) -> tuple[tuple[str, int], ...]:
        """(holder, references), most first."""
        return tuple(sorted(self.holders.items(), key=lambda item: -item[1]))


class ObjectStore:
    def __init__(self, worker_id: str, max_bytes: int | None = None) -> None:
        self.worker_id = worker_id
        self.max_bytes = max_bytes
        self.nbytes = 0  # bytes of the tensor storages held, each storage once (see `_Storages`)
        self._entries: dict[int, Entry] = {}
        self._storages = _Storages()

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
    ) -> None:
        if type(id) is not int:  # (every way in: a crafted RunOp's result ids, a StoreObject, a plan's outputs)
            raise ProtocolError(f"object ids are ints (rule 1), not {type(id).__name__}")
        if id in self._entries:
            raise DuplicateIdError(f"worker {self.worker_id!r} already holds an object with id {id}")
        if tags or description is not None or type(obj) is PointerSpec:  # (an op's results have neither: no cost)
            check_kept_sizes(obj, tags, description)
        if isinstance(obj, torch.Tensor):
            growth = self._storages.hold(id, _storages_of(obj))
            if growth > 0 and self.max_bytes is not None and self.nbytes + growth > self.max_bytes:
                # (what stays held anyway, a storage shared with a stored object that grew, stays counted)
                self.nbytes += growth + self._storages.release(id)
                raise StoreFullError(
                    f"worker {self.worker_id!r} holds {self.nbytes} bytes; {growth} more would pass its limit of "
                    f"{self.max_bytes}: free (delete or .get()) what it holds, or ask its owner for a higher max_store_bytes"
                )
            self.nbytes += growth
        self._entries[id] = Entry(obj, {holder: 1}, pinned, tags, description)

    def entry(self, id: int) -> Entry:
        try:
            return self._entries[id]
        except KeyError:
            raise ObjectNotFoundError(
                f"worker {self.worker_id!r} holds no object with id {id} "
                "(it was deleted, got, cleared, or never sent; or its holder was silent longer than the worker's "
                "lease_seconds, so the worker freed it: a process must keep running, not be stopped or asleep, to keep its objects)"
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

    def hand_over(self, id: int, giver: str, taker: str) -> Entry | None:
        """`giver`'s reference to `id` now belongs to `taker` (a pointer changed hands); return
        the entry if that freed it (`taker` had deleted it already). A giver that holds none yet
        owes it: its reference goes on to `taker` when it comes."""
        entry = self._entries.get(id)
        if entry is None:
            return None
        entry.hand_over(giver, taker)
        if entry.holders or entry.pinned:
            return None
        return self._remove(id)

    def forget_holders(self, holders: set[str]) -> list[Entry]:
        """Drop every reference `holders` have (their leases lapsed: leases.py); return the
        entries that freed. One pass over the store, however many holders lapsed together."""
        freed = []
        for id, entry in list(self._entries.items()):
            dropped = 0
            for holder in holders:
                if holder in entry.holders or entry.owed:
                    dropped += entry.forget(holder)
            if dropped and not entry.holders and not entry.pinned:
                freed.append(self._remove(id))
        return freed

    def pop(self, id: int) -> Entry:
        self.entry(id)
        return self._remove(id)

    def remove_if_present(self, id: int) -> None:
        if id in self._entries:
            self._remove(id)

    def replace(self, id: int, obj: Any) -> None:
        """Put `obj` in place of what `id` holds (remote_get), keeping its references."""
        entry = self.entry(id)
        self.nbytes += self._storages.release(id)
        self.nbytes += self._storages.hold(id, _storages_of(obj))
        entry.obj = obj

    def remeasure(self, ids: Iterable[int]) -> None:
        """Count again what `ids` hold after an op changed them in place (resize_, set_,
        `x.data = ...`, a .grad set or grown). If that leaves the store over its limit, nothing
        over it stays held: a storage the op grew in place is resized back to its size before
        (other objects sharing it keep theirs), the objects the op grew are freed (their
        pointers point at nothing), and StoreFullError names the sizes."""
        grew: dict[int, int] = {}  # id -> bytes it grew by
        before: dict[int, int] = {}  # key -> bytes, of each storage held before the op
        for id in ids:
            if id not in self._entries:
                continue
            for key, _, _ in self._storages.of_id.get(id, ()):
                before.setdefault(key, self._storages.by_key[key][1])
            delta = self._storages.release(id) + self._storages.hold(id, _storages_of(self._entries[id].obj))
            self.nbytes += delta
            if delta > 0:
                grew[id] = grew.get(id, 0) + delta
        if not grew or self.max_bytes is None or self.nbytes <= self.max_bytes:
            return
        over = self.nbytes
        for id in grew:
            for key, nbytes, _ in self._storages.of_id.get(id, ()):
                if key in before and nbytes > before[key]:
                    self.nbytes += self._storages.shrink(key, before[key])
            self._remove(id)
        sizes = ", ".join(f"{id} by {size} bytes" for id, size in grew.items())
        raise StoreFullError(
            f"worker {self.worker_id!r} would hold {over} bytes, over its limit of {self.max_bytes}, after an op "
            f"grew object {sizes}; what it grew was freed (its pointer now points at nothing): grow tensors "
            "only within the limit, or ask the worker's owner for a higher max_store_bytes"
        )

    def clear(self) -> None:
        self._entries.clear()
        self._storages = _Storages()
        self.nbytes = 0

    def _remove(self, id: int) -> Entry:
        entry = self._entries.pop(id)
        self.nbytes += self._storages.release(id)
        return entry


def object_nbytes(obj: Any) -> int:
    """The bytes of the storages a stored object keeps alive (a view's whole base, its .grad)."""
    return sum(nbytes for _, nbytes, _ in _storages_of(obj))


#: (key, bytes, storage) per storage an object keeps alive; the key is the address of torch's
#: StorageImpl, which stays put when a storage is resized (resize_ grows it in place)
_Measured = tuple[tuple[int, int, Any], ...]


def storage_key(tensor: torch.Tensor) -> int | None:
    """Which storage `tensor` keeps alive (the address of torch's StorageImpl: the same for
    every view of it, kept when resized); None for a layout with no one storage (sparse)."""
    try:
        return tensor.untyped_storage()._cdata
    except (NotImplementedError, RuntimeError):
        return None


def _storages_of(obj: Any) -> _Measured:
    """What a stored object holds in memory: its tensor's storage and its .grad's. Measured
    on the storage, not on numel: a view holds its whole base, a resize_ grows the storage."""
    if not isinstance(obj, torch.Tensor):
        return ()  # a PointerSpec: a few bytes, kept in the store's own bookkeeping
    try:
        storage = obj.untyped_storage()
    except (NotImplementedError, RuntimeError):  # sparse layouts have no one storage: their dense size
        return ((id(obj), obj.element_size() * obj.numel(), obj),)
    # (A meta tensor counts as the size it claims, though it holds nothing: the safe side.
    # A non-leaf's .grad is never set, and reading it only warns.)
    if obj.is_leaf and obj.grad is not None:
        return ((storage._cdata, storage.nbytes(), storage), *_storages_of(obj.grad))
    return ((storage._cdata, storage.nbytes(), storage),)


class _Storages:
    """The storages a store keeps alive, each counted once however many stored tensors share
    it (a view `x[0]` of a stored `x` adds nothing): {key: [storage, bytes, how many hold it]},
    and what each stored id holds. Holding the storage object keeps its key from being reused
    by another storage while it is counted. `hold` and `release` return the change in bytes."""

    __slots__ = ("by_key", "of_id")

    def __init__(self) -> None:
        self.by_key: dict[int, list] = {}
        self.of_id: dict[int, _Measured] = {}

    def hold(self, id: int, measured: _Measured) -> int:
        delta = 0
        by_key = self.by_key
        for key, nbytes, storage in measured:
            record = by_key.get(key)
            if record is None:
                by_key[key] = [storage, nbytes, 1]
                delta += nbytes
            else:  # counted already: by how much it grew since
                delta += nbytes - record[1]
                record[1] = nbytes
                record[2] += 1
        self.of_id[id] = measured
        return delta

    def release(self, id: int) -> int:
        delta = 0
        for key, _, _ in self.of_id.pop(id, ()):
            record = self.by_key[key]
            if record[2] > 1:
                record[2] -= 1
            else:
                del self.by_key[key]
                delta -= record[1]
        return delta

    def shrink(self, key: int, nbytes: int) -> int:
        """Resize a storage back to `nbytes` (what it held before an op grew it in place)."""
        record = self.by_key[key]
        try:
            record[0].resize_(nbytes)
        except (RuntimeError, AttributeError):  # not resizable: the objects holding it are freed instead
            return 0
        delta, record[1] = nbytes - record[1], nbytes
        return delta


def describe(obj: Any) -> tuple[str, tuple[int, ...] | None, str | None, str | None]:
    """(type, shape, dtype, points_to) of a stored object, for listings."""
    if isinstance(obj, PointerSpec):
        return ("PointerTensor", obj.shape, str(obj.dtype).removeprefix("torch."), f"{obj.location}:{obj.id_at_location}")
    if isinstance(obj, torch.Tensor):
        return (type(obj).__name__, tuple(obj.shape), str(obj.dtype).removeprefix("torch."), None)
    return (type(obj).__name__, None, None, None)


def check_kept_sizes(obj: Any, tags: Iterable[str] = (), description: str | None = None) -> None:
    """RequestTooLargeError if what a client gives with an object passes what the store keeps
    (the caps above): its description and tags, and a pointer's strings and shape."""
    _check_strings("an object", tags, description)
    if isinstance(obj, torch.Tensor):
        if obj.dim() > MAX_DIMS:
            raise RequestTooLargeError(f"a tensor of {obj.dim()} dimensions: a worker keeps tensors of at most {MAX_DIMS}")
    elif isinstance(obj, PointerSpec):
        _check_strings("a pointer", obj.tags, obj.description)
        for field, text in (("address", obj.address), ("location", obj.location)):
            if not isinstance(text, str) or len(text) > MAX_ADDRESS_CHARS:
                raise RequestTooLargeError(
                    f"a pointer's {field} must be a string of at most {MAX_ADDRESS_CHARS} characters, not {str(text)[:80]!r}..."
                )
        shape = obj.shape
        if type(shape) is not tuple or len(shape) > MAX_DIMS or not all(type(n) is int and 0 <= n < 1 << 63 for n in shape):
            raise RequestTooLargeError(
                f"a pointer's shape must be a tuple of at most {MAX_DIMS} sizes >= 0, not {str(shape)[:80]}..."
            )


def _check_strings(what: str, tags: Iterable[str], description: str | None) -> None:
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS):
        raise RequestTooLargeError(
            f"{what}'s description must be a string of at most {MAX_DESCRIPTION_CHARS} characters: shorten it "
            f"(this one has {len(description) if isinstance(description, str) else type(description).__name__})"
        )
    tags = tuple(tags)
    if len(tags) > MAX_TAGS or not all(isinstance(t, str) and len(t) <= MAX_TAG_CHARS for t in tags):
        raise RequestTooLargeError(
            f"{what} carries at most {MAX_TAGS} tags of at most {MAX_TAG_CHARS} characters each "
            f"(these are {len(tags)}, the longest {max((len(t) if isinstance(t, str) else -1 for t in tags), default=0)}): use fewer, shorter tags"
        )
