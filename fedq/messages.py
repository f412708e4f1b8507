"""fedq's messages: what clients and workers say to each other, as plain dataclasses. Pure:
no pickling, no sockets (codec.py turns them into signed frames).

A `Request` gets exactly one `Reply`: `Ok` or `Failure` (an `Acked` answers several that
succeeded with nothing to return). `worker.HANDLERS` has one handler per request type. What
the client and the worker must know about a type of request is said here, on its class:

- `owner_action`: the client signs it with the worker's admin key when it holds that key;
- `hands_over`: its answer carries references the worker now counts as the caller's;
- `result_bytes()`: how much its results take on the worker, when known beforehand.

The records (`PointerSpec`, `Ref`, `ObjectInfo`, `WorkerStatus`, ...) travel inside them.
`WIRE_CLASSES` lists every class a message is made of: what the codec pickles as its fields
and what a receiver's unpickler allows (safe_pickle.py).
"""

from __future__ import annotations

import functools
import math
import traceback as traceback_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

INCARNATION_BYTES = 16
NO_INCARNATION = bytes(INCARNATION_BYTES)  # "not known yet": only a hello (a lone Ping) is accepted under it

# --------------------------------------------------------------------------- values


@dataclass
class PointerSpec:
    """Everything a pointer needs to reach its object from any process.

    Stored as-is in a worker's store, it *is* that worker's remote pointer.
    """

    id: int
    location: str  # the worker id, for people
    address: str  # the ZeroMQ endpoint, for machines: any holder can reach it
    id_at_location: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool = False
    tags: tuple[str, ...] = ()
    description: str | None = None
    incarnation: bytes = NO_INCARNATION  # of the worker at `address` that holds the object (NO_INCARNATION: not known)


# Holders. A connection's name (its routing id: "me:4242@host", a worker's id) is whatever the
# peer says, so it cannot identify anybody. What does is the sender's session: 16 random bytes
# in the signed stamp of every message it sends, never shown to anyone else. The store counts
# references under that session (in hex); messages name a holder as "name#session" (`wire_name`),
# the name kept for listings only.


def holder_key(wire_name: str) -> str:
    """The store's key for a holder named on the wire ("name#session"): its session."""
    return wire_name.rpartition("#")[2]


def wire_name(name: str, session: bytes) -> str:
    return f"{name}#{session.hex()}"


@dataclass(frozen=True)
class Ref:
    """An argument naming an object in the receiving worker's store."""

    id: int


@dataclass
class ObjectInfo:
    """One row of `fedq ls`: what a worker holds under one id."""

    id: int
    type: str
    shape: tuple[int, ...] | None
    dtype: str | None
    nbytes: int
    refs: int
    tags: tuple[str, ...] = ()
    holders: tuple[tuple[str, int], ...] = ()  # (who, how many references), most first
    points_to: str | None = None  # "bob:123" for a stored pointer
    next_address: str | None = None  # where that next hop listens, so a listing can follow the chain
    next_id: int | None = None
    #: per holder, in `holders`' order: (seconds since it was last heard, seconds until its lease
    #: lapses), or None for a holder that never lapses (the data owner, the worker itself)
    leases: tuple[tuple[float, float] | None, ...] = ()
    #: for private data: its dataset, the budget spent and left, by whom, and the owner's
    #: word on model updates (privacy.py), e.g. "houses: ε 0.5 of 100 spent (bob 0.5), ..."
    privacy: str | None = None


@dataclass
class RequestInfo:
    """One row of `fedq requests`: a client's request that a private object leave, for the data
    owner to decide (requests.py)."""

    id: int
    object_id: int
    asked_by: str  # the name the holder's connection gave (never its session)
    reason: str
    age: float  # seconds since it was filed
    expires_in: float  # seconds until the worker forgets it
    status: str  # "pending", "approved", "denied" or "released"
    history: tuple[str, ...]  # the ops that produced the object when it was filed, oldest first
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    note: str = ""  # the owner's, with a denial


# --------------------------------------------------------------------------- requests


class Request:
    """A request: answered with exactly one `Ok` or `Failure`. What each type is, to the client
    and the worker, is said by these class attributes (overridden where a type differs)."""

    #: signed with the worker's admin key by a client that holds it (`Packed.admin_key`; the
    #: worker is told: `Origin.by_owner`): the data owner's actions, and the listings and
    #: searches that show the owner everything (anyone else sees only what it holds, and the
    #: owner's data), and deciding the requests that private objects leave (requests.py)
    owner_action: ClassVar[bool] = False
    #: its answer carries references the worker now counts as the caller's (PointerSpecs: search
    #: results, a peeled chain, results whose shapes only the worker knew): if nobody takes the
    #: answer, they are given back
    hands_over: ClassVar[bool] = False

    def result_bytes(self) -> int | None:
        """The bytes the results of this request take on the worker, when known before it runs
        (0: it works in place); None when not known (the worker finds the results' shapes) or
        when it is not an op. A pipelined op whose results are small may pass the deletes
        queued ahead of it (client.py)."""
        return None


@dataclass
class StoreObject(Request):
    """Store `obj` (a tensor, or a PointerSpec) under `id`, held by one reference: the
    sender's, or `holder`'s when the sender stores it for someone else (a move)."""

    id: int
    obj: Any
    tags: tuple[str, ...] = ()
    description: str | None = None
    holder: str | None = None


@dataclass
class RunOp(Request):
    """Run torch function `op` where its tensor arguments (`Ref`s) live.

    `result_ids` are chosen by the caller, one per tensor in the result, in
    pytree order; `()` marks an in-place op (nothing new is stored). `None` asks
    the worker to choose ids and reply with a PointerSpec per result tensor:
    used when the caller could not work out the result's shape beforehand.
    `result_meta` gives (shape, dtype, requires_grad) per result, so a worker
    relaying the op can store pointers without waiting for the next hop.
    """

    op: str
    args: tuple
    kwargs: dict
    result_ids: tuple[int, ...] | None
    result_meta: tuple[tuple[tuple[int, ...], torch.dtype, bool], ...] | None = None
    grad_enabled: bool = True  # the caller's torch.is_grad_enabled(): an optimizer step runs under no_grad
    hops: int = 0  # workers that relayed it so far: past worker.MAX_HOPS a cycle of pointers is refused

    @property
    def hands_over(self) -> bool:  # type: ignore[override]
        """Results whose ids the worker chose come back as PointerSpecs, one reference each."""
        return self.result_ids is None

    def result_bytes(self) -> int | None:
        if self.result_meta is None:
            return 0 if self.result_ids == () else None
        return _result_bytes(self.result_meta)


@dataclass(frozen=True)
class Slot:
    """In a plan's step: the plan's `index`th value (its arguments first, then each step's
    results, in order). A step names its tensors only so: never by store id."""

    index: int


@dataclass
class PlanStep:
    """One op of a plan, by its name in the op table, as a `RunOp` would name it; `results`:
    how many tensors it makes (0: in place, it makes none)."""

    op: str
    args: tuple
    kwargs: dict
    results: int


@dataclass
class RunPlan(Request):
    """Run a plan's `steps` in order where its arguments (`Ref`s: its inputs, then its state)
    live: one message for the whole plan, each step run as the `RunOp` it names would be.
    The tensors in slots `outputs` are stored under `result_ids`, chosen by the caller (rule 1);
    what the steps made in between is freed."""

    steps: tuple[PlanStep, ...]
    args: tuple[Ref, ...]
    outputs: tuple[int, ...]
    result_ids: tuple[int, ...]
    grad_enabled: bool = True


@dataclass
class GetObject(Request):
    """Hand the object under `id` to the caller and drop this worker's reference. With
    `epsilon`: a differentially private release of a private aggregate instead (privacy.py),
    its values clamped to `bounds` (lo, hi) before they are summed."""

    hands_over = True  # a pointer's object comes as a PointerSpec: the chain, peeled

    id: int
    epsilon: float | None = None
    bounds: tuple[float, float] | None = None


@dataclass
class MoveObject(Request):
    """Rule 7: send the object under `id` straight to the worker at `address`, which keeps
    the id; drop it here. Answered once the destination has stored it."""

    id: int
    location: str
    address: str
    incarnation: bytes = NO_INCARNATION  # the destination's: what the store request is sealed to


@dataclass
class RemoteGet(Request):
    """Rule 8: the object under `id` is a pointer; fetch what it points at and keep it here."""

    id: int


@dataclass
class Search(Request):
    """Rule 14: reply with a PointerSpec (one new reference each) per object carrying all `tags`."""

    owner_action = True
    hands_over = True  # a new reference per object found

    tags: tuple[str, ...]


@dataclass
class IncRef(Request):
    """Another pointer to each of `ids` now exists, held by the sender."""

    ids: tuple[int, ...]


@dataclass
class DeleteObjects(Request):
    """Reference bookkeeping, batched: a pointer to each of `ids` died (free what no pointer
    holds any more), and each (id, giver, taker) in `hand_overs` says that `giver`'s reference
    to `id` is `taker`'s now: a pointer changed hands without passing here (sent on, or
    fetched from a chain). Hand-overs only change listings; they apply first."""

    ids: tuple[int, ...]
    hand_overs: tuple[tuple[int, str, str], ...] = ()


@dataclass
class HoldsObject(Request):
    """Reply whether an object is stored under `id` (did a move whose source failed land?); if
    it is, the asker holds a reference to it from then on (worker.holds_object)."""

    id: int


@dataclass
class RequestRelease(Request):
    """Ask the data owner to let the private object under `id`, which the sender holds, leave with
    `.get()`: files a pending request, or names the sender's live one for it. Reply: its id."""

    id: int
    reason: str = ""


@dataclass
class ListRequests(Request):
    """The data owner's: reply with a RequestInfo per request the worker keeps."""

    owner_action = True


@dataclass
class DecideRequest(Request):
    """The data owner's: approve request `request_id` (its object's next `.get()` by the client that
    asked succeeds, once), or deny it (`note` tells the client why)."""

    owner_action = True

    request_id: int
    approve: bool
    note: str = ""


@dataclass
class ListObjects(Request):
    """Reply with a snapshot {id: tensor or PointerSpec} of the store."""

    owner_action = True


@dataclass
class DescribeObjects(Request):
    """Reply with one ObjectInfo per stored object (for `fedq ls`)."""

    owner_action = True


@dataclass
class CountObjects(Request):
    """Reply with the number of stored objects."""

    owner_action = True


@dataclass
class ClearObjects(Request):
    """Empty the store. Does not propagate to other workers."""

    owner_action = True


@dataclass
class Ping(Request):
    """Reply with a WorkerStatus."""


@dataclass
class Shutdown(Request):
    """Reply, then stop serving."""

    owner_action = True


@dataclass
class SetThreads(Request):
    """The owner's: run torch's intra-op work on `threads` threads from now on (launcher.py: the
    machine's cores divided among more workers than when this one started)."""

    owner_action = True

    threads: int


@dataclass
class AddOwnerData(Request):
    """The data owner's: keep `tensors` as its own data, each with its tags (PySyft's
    `VirtualWorker(hook, id=..., data=(x1, x2))`): pinned, found by search, public, and
    read-only to clients, as what a data owner's script adds with `owner.add`."""

    owner_action = True

    tensors: tuple[Any, ...]
    tags: tuple[tuple[str, ...], ...]
    descriptions: tuple[str | None, ...] = ()


@dataclass
class Leave(Request):
    """The sender is closing: drop every reference it holds here now, as its lease's lapse would
    later (a script that exits frees its objects at once, not a lease after)."""


@dataclass
class Renew(Request):
    """A heartbeat: the sender still holds its references here (any message says so; an idle
    holder sends this). Reply with the lease in seconds: how long the worker keeps a silent
    holder's references before it frees them."""


# ---- secret sharing (sharing.py, the client's; ring.py, aggregates.py): shares move worker to worker


@dataclass
class ShareObject(Request):
    """Split the int64 tensor under `id` into additive shares, one per party (location, address,
    incarnation, the share's id there); keep ours (a party at our own address), send each other
    straight to its worker (`StoreShare`, as a seed it expands), held by the caller. Answered once every party stored
    its share. `token`: this sharing's name, what the holders' aggregation policy counts. `scale`: what one unit
    of the value is worth (fixed precision's base ** precision), for an owner's noise (its clip is in units of 1)."""

    id: int
    parties: tuple[tuple[str, str, bytes, int], ...]
    token: str
    scale: int = 1


@dataclass
class StoreShare(Request):
    """A worker's: store `share` under `id`, held by `holder` (the client that asked for the
    sharing). `private`: a share of the sender's owner's private data, sharing `token`, under
    that owner's policy `k`; stored only once the sender, asked at `origin_address`, confirms
    it sent it (`ConfirmShare`): a client cannot pose as an owner."""

    id: int
    share: Any
    holder: str
    token: str
    private: bool = False
    k: int = 2
    origin_address: str = ""
    seed: bytes = b""  # instead of `share`: the receiver expands it (ring.expand), shaped `shape`
    shape: tuple[int, ...] = ()


@dataclass
class ConfirmShare(Request):
    """Did you send me (the caller) the share `id` of sharing `token`? Answered ok, or a failure."""

    token: str
    id: int


@dataclass
class MakeTriples(Request):
    """The crypto provider's: make a Beaver triple (a, b, c = a * b, or a @ b: `kind`) for
    operands shaped `x_shape`, `y_shape`; split each part among `parties` (location, address,
    incarnation, (id of a, id of b, id of c) there) and send each its shares straight
    (`StoreTriple`), held by the caller. Answered once every party stored them. `kind`
    "compare": a sign test's five pads instead (ring.comparison_pads, sharing._nonnegative)."""

    kind: str
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    parties: tuple[tuple[str, str, bytes, tuple[int, int, int]], ...]


@dataclass
class StoreTriple(Request):
    """A crypto provider's: store one party's shares of a Beaver triple under `ids` (a, b, c),
    private (the client never sees them), held by `holder`, each usable in one product."""

    kind: str
    ids: tuple[int, int, int]
    shares: tuple[Any, Any, Any]
    holder: str


@dataclass
class BeaverOpen(Request):
    """Reply with (x - a, y - b) for the shares under `x_id`, `y_id` and the triple under `ids`:
    masked by the triple's one-time pads, so opening them shows nothing; once per triple."""

    kind: str
    x_id: int
    y_id: int
    ids: tuple[int, int, int]


@dataclass
class BeaverClose(Request):
    """Store under `result_id` this party's share of x * y (or x @ y) from the opened `e`, `f`
    and its triple `ids`; `first`: the one party that adds e * f."""

    kind: str
    result_id: int
    e: Any
    f: Any
    ids: tuple[int, int, int]
    first: bool


# --------------------------------------------------------------------------- replies


@dataclass
class WorkerStatus:
    id: str
    pid: int
    version: str
    objects: int
    lease_seconds: float | None = None  # a silent holder's references are freed after this long
    threads: int | None = None  # torch's threads there (settings.WorkerSettings.threads)


@dataclass
class Hello:
    """The answer to a hello: the worker's id, and (in its stamp) its incarnation; nothing
    else, since a hello is the one message taken without the receiver's incarnation, so the
    one a stranger can replay to any worker. A status takes a Ping sealed to the worker."""

    id: str


class Reply:
    """A reply: the one answer to a request (`Ok`, `Failure`), or to several (`Acked`)."""


@dataclass
class Ok(Reply):
    value: Any = None


@dataclass
class Acked(Reply):
    """Several requests succeeded with nothing to return: one reply for a whole batch of
    pipelined ops, instead of one each. `then`, if any, is the reply to the request its
    envelope's `seq` names (else that `seq` is 0): acks ride along with the next answer."""

    seqs: list[int]
    then: Any = None


@dataclass
class Batch:
    """Several messages under one stamp and one signature (what one flush sends one worker).
    Each item is (seq, the message's own pickle, how many of the buffer frames that follow
    are its own); each is unpickled alone, so one that is refused spoils none of the others."""

    items: tuple[tuple[int, bytes, int], ...]


@dataclass
class Failure(Reply):
    """A request failed on `worker`; rebuilt as an exception by the receiver."""

    type_name: str
    module: str
    message: str
    traceback: str
    worker: str

    @classmethod
    def from_exception(cls, error: BaseException, worker: str) -> "Failure":
        tb = "".join(traceback_module.format_exception(type(error), error, error.__traceback__))
        return cls(type(error).__name__, type(error).__module__, str(error), tb, worker)

#: every request type, in the order they are declared: each has one handler in worker.HANDLERS
REQUESTS: tuple[type[Request], ...] = tuple(Request.__subclasses__())
REPLIES: tuple[type[Reply], ...] = tuple(Reply.__subclasses__())
#: what a message on its own may be (a `Batch` only carries messages)
MESSAGES = (*REQUESTS, *REPLIES)
#: every class a message is made of: pickled as its fields, and on the unpickler's allow-list
WIRE_CLASSES = (*MESSAGES, Batch, PointerSpec, Ref, Slot, PlanStep, ObjectInfo, RequestInfo, WorkerStatus, Hello)


def references_in(value: Any) -> list[PointerSpec]:
    """The PointerSpecs in an answer (nested in tuples, lists or dicts)."""
    if isinstance(value, PointerSpec):
        return [value]
    if isinstance(value, (tuple, list)):
        return [spec for item in value for spec in references_in(item)]
    if isinstance(value, dict):
        return [spec for item in value.values() for spec in references_in(item)]
    return []


def answers(seq: int, reply: Any) -> list[tuple[int, Any]]:
    """(seq, Ok or Failure) for each request a reply answers: an Acked answers several."""
    if isinstance(reply, Acked):
        acked = [(s, Ok()) for s in reply.seqs]
        return acked if reply.then is None else [*acked, (seq, reply.then)]
    return [(seq, reply)]


@functools.lru_cache(maxsize=1024)  # asked once per pipelined op; a loop repeats the same few
def _result_bytes(result_meta: tuple) -> int:
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype, _ in result_meta)
