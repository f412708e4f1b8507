"""A worker process: its object store and the handler of each request type.

Requests are dispatched through `HANDLERS`, one function per message type.
A handler answers through its `Reply` at once, or later when a request it
relayed to the next hop of a chain has been answered: a worker's reply always
means the whole chain below it has finished, so a client that has its replies
has read-your-writes on every hop. Nothing here blocks: the worker keeps
serving while a relay is out.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import resource  # (imported here, in the zygote, not in each forked worker's start)
import runpy
import signal
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from . import __version__, ops, ring
from .aggregates import OPT_IN_K, Aggregates, Noise
from .calls import InFlight, answers_in
from .codec import Codec, Origin
from .errors import (
    ConfigError,
    DuplicateIdError,
    FedqError,
    GetNotPermittedError,
    PointerCycleError,
    ProtocolError,
    RequestNotNeededError,
    RequestTooLargeError,
    StoreFullError,
    TensorsNotCollocatedError,
    ValueNeedsGetError,
    WorkerUnreachableError,
)
from .heap import IdleTrim, retain_freed_memory
from .ids import new_id
from .keys import ADMIN_KEY_ENV, admin_key_from_environment, key_from_environment
from .leases import Leases, lease_told
from .messages import (
    NO_INCARNATION,
    Acked,
    BeaverClose,
    BeaverOpen,
    ConfirmShare,
    MakeTriples,
    ShareObject,
    StoreShare,
    StoreTriple,
    AddOwnerData,
    ClearObjects,
    CountObjects,
    DecideRequest,
    DeleteObjects,
    DescribeObjects,
    Failure,
    GetObject,
    Hello,
    HoldsObject,
    IncRef,
    ListObjects,
    ListRequests,
    MoveObject,
    ObjectInfo,
    Ok,
    Ping,
    PlanStep,
    PointerSpec,
    Ref,
    RemoteGet,
    Leave,
    Renew,
    RequestRelease,
    RunOp,
    RunPlan,
    Search,
    SetThreads,
    Shutdown,
    Slot,
    StoreObject,
    WorkerStatus,
    holder_key,
    references_in,
    wire_name,
)
from .privacy import UNRELEASED, Dataset, Facts, Privacy, refuse_if_private
from .requests import Requests
from .settings import DEFAULTS, WorkerSettings, settings_from
from .store import DATA_OWNER, MAX_ADDRESS_CHARS, PRIVATE_TAG, ObjectStore, check_kept_sizes, describe, object_nbytes, storage_key
from .transport import Batches, CurveKeys, ServerLoop, peer_name

log = logging.getLogger("fedq.worker")


class Reply:
    """The one answer owed to one request, sealed to the session (incarnation) that asked.
    `by_owner`: the request was signed with this worker's admin key (the data owner's)."""

    __slots__ = ("_worker", "_identity", "_session", "_seq", "_sent", "by_owner")

    def __init__(self, worker: "Worker", identity: bytes, origin: Origin, seq: int) -> None:
        self._worker, self._identity, self._session, self._seq, self._sent = worker, identity, origin.session, seq, False
        self.by_owner = origin.by_owner

    @property
    def caller(self) -> str:
        """Who asked, as the store keys holders: its signed session (it holds the references it
        creates). Not the name its connection gave: anyone may give any name (store.py)."""
        return self._session.hex()

    @property
    def caller_name(self) -> str:
        """Who asked, as a message names a holder to another worker ("name#session")."""
        return wire_name(peer_name(self._identity), self._session)

    def ok(self, value: Any = None) -> None:
        if value is None and not self._sent:  # folded into one Acked per client per batch
            self._sent = True
            self._worker.ack_later(self._identity, self._session, self._seq)
            return
        self._send(Ok(value))

    def fail(self, error: BaseException) -> None:
        """Answer with `error`. Never raises: an error that cannot be described or sent back
        (its str() raises, it does not pickle) is answered with a plain ProtocolError."""
        try:
            self._send(Failure.from_exception(error, self._worker.id))
        except Exception as broken:
            log.error("worker %s could not send request %d its %s back (%s)", self._worker.id, self._seq, type(error).__name__, type(broken).__name__)
            try:
                self._send(Failure(
                    "ProtocolError", ProtocolError.__module__,
                    f"request {self._seq} failed on worker {self._worker.id!r} with an error that could not be sent back: see that worker's log",
                    "", self._worker.id,
                ))  # fmt: skip
            except Exception:
                log.exception("worker %s could not answer request %d", self._worker.id, self._seq)

    def forward(self, failure: Failure) -> None:
        """Pass on a failure from a later hop as it is: it names where it happened."""
        self._send(failure)

    def _send(self, message: Ok | Failure) -> None:
        if self._sent:
            return
        # Answers leave in the order requests came: acks owed to this caller go first, in
        # the same message.
        acked = self._worker.take_acks(self._identity)
        envelope = Acked(acked, then=message) if acked else message
        try:
            frames = self._worker.codec.encode(self._seq, envelope, self._session)
        except BaseException:  # (an answer that does not pickle) still owed, and so are the acks
            for seq in acked:
                self._worker.ack_later(self._identity, self._session, seq)
            raise
        self._sent = True
        self._worker.loop.reply(self._identity, frames)


class _RateLimitedLog:
    """Warnings about what peers send, at most `burst` per `period` seconds: a hostile peer
    must not be able to fill the disk through our log. What is held back is counted."""

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        self.burst, self.period = burst, period
        self._window_start, self._logged, self._held = 0.0, 0, 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._window_start > self.period:
            if self._held:
                log.warning("%d more such warnings were held back", self._held)
            self._window_start, self._logged, self._held = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning(message, *args)
        else:
            self._held += 1


@dataclass(slots=True)
class _Relay:
    """A relay in flight (`Worker._relays`): `on_reply` gets its answer, or a timeout naming `hop`."""

    address: str
    hop: str  # "'end' at ipc://..." for error messages
    deadline: float
    on_reply: Callable[[Ok | Failure], None]
    request: Any  # what was asked (its late answer may hand over references to give back)

    @property
    def hands_over(self) -> bool:
        return self.request.hands_over


@dataclass(frozen=True, slots=True)
class _Peer:
    """A worker we renew our leases at, named by its address (what `ask` needs of a hop)."""

    address: str

    @property
    def location(self) -> str:
        return self.address


@dataclass(frozen=True, slots=True)
class _Hop:
    """Another worker a sharing handler sends to: where, its name, and which incarnation of it."""

    address: str
    location: str
    incarnation: bytes


@dataclass(slots=True)
class _Triple:
    """One party's shares of a Beaver triple (stored under `ids`): opened once, closed once."""

    kind: str
    ids: tuple[int, int, int]
    a: Any  # a weak reference to the stored share of a (the genuine one, not a copy of it)
    opened: bool = False
    closed: bool = False


#: relays that timed out and whose late answer would hand us references, remembered at most this many
MAX_UNCLAIMED = 10_000
#: distinct peer addresses a worker connects to (a socket each, kept): a key holder naming
#: addresses in pointers must not exhaust the process's sockets
MAX_PEERS = 256
#: workers a RunOp may pass through after the first: a cycle of pointers ends here
MAX_HOPS = 16
#: tensors one op may create (each is a store entry and a tensor object nothing else counts)
MAX_RESULTS_PER_OP = 65_536
#: steps one plan may have (each runs as an op: RunPlan is one message, not one unbounded loop)
MAX_PLAN_STEPS = 4096
#: torch threads a SetThreads may ask for
MAX_THREADS = 1024


def freed_pointers(freed: list[Any]) -> list[PointerSpec]:
    """The stored pointers among entries a removal freed (None: nothing was freed)."""
    return [entry.obj for entry in freed if entry is not None and isinstance(entry.obj, PointerSpec)]


def _ignore(answer: Any) -> None:
    """For a relay nobody waits on (a heartbeat, a give-back): a hop that fails it frees nothing less."""


def _answered(relay: _Relay, answer: Ok | Failure) -> None:
    relay.on_reply(answer)


class Worker:
    def __init__(
        self,
        id: str,
        address: str,
        *,
        key: bytes,
        settings: WorkerSettings = DEFAULTS,
        incarnation: bytes | None = None,
        admin_key: bytes | None = None,
    ) -> None:
        """A worker serving `id` on `address` with `settings` (settings.py: every one, with its default)."""
        self.id = id
        self.settings = settings
        #: the addresses of the federation's workers, if its config lists them: the only ones we relay to
        self.allowed_peers = frozenset(settings.peers.values()) if settings.peers else None
        self.timeout = settings.timeout
        # `incarnation`: drawn by the parent that spawns us (it then needs no hello), else here.
        self.codec = Codec(
            key, admin_key=admin_key, session=incarnation, allow_code=settings.allow_code, max_message_bytes=settings.max_message_bytes
        )
        self.incarnation = self.codec.session
        self._peer_incarnations: dict[str, bytes] = {}  # address -> a next hop's, as its last answer said (_on_peer_reply)
        self.store = ObjectStore(id, max_bytes=settings.max_store_bytes)
        self.privacy = Privacy()  # private memory, what is known of it, the datasets' budgets
        self.aggregates = Aggregates()  # which owners each share of private data aggregates (aggregates.py)
        self.triples: dict[int, _Triple] = {}  # id of a Beaver triple's a here -> that triple's state
        self._shares_sent: dict[tuple[str, int], str] = {}  # (token, share id) -> the session it went to
        self.requests = Requests(self.store, seconds=settings.request_seconds, max_per_client=settings.max_requests)
        curve = CurveKeys.load(settings.curve_dir, id, dict(settings.peers or {})) if settings.curve_dir else None
        self.loop = ServerLoop(
            settings.bind or address, id, self._on_request, self._on_peer_reply, self._on_tick, settings.max_message_bytes, self._batch_done, curve,
            insecure_plaintext=settings.insecure_plaintext,
        )
        # Relays wait here until the end of what the loop is handling: one message per next hop
        # for a batch of pipelined ops on a chain, not one each.
        self._relays_out = Batches(self.loop.peers, lambda address, packed: self.codec.seal_many(packed))  # (each names its `to`)
        self._acks: dict[bytes, tuple[bytes, list[int]]] = {}  # identity -> (its session, seqs)
        self._unsettled: dict[int, list[Callable[[], None]]] = {}
        self.address = address if settings.bind else self.loop.address  # what pointers name: where others reach us
        self._seq = itertools.count(1)
        # Relays out: a late answer to one that timed out gives back the references it hands us.
        self._relays: InFlight[_Relay] = InFlight(_answered, self._give_back, max_unclaimed=MAX_UNCLAIMED)
        self._peer_log = _RateLimitedLog()
        self.owner_storages: set[int] = set()  # memory of the data owner's objects (storage_key): read-only to clients
        #: how this worker names itself as a holder to its peers (its session is its incarnation)
        self.name_on_wire = wire_name(id, self.codec.session)
        self.leases = Leases(settings.lease_seconds, never_lapse=(DATA_OWNER, holder_key(self.name_on_wire)))
        self._heard = self.leases.heard  # (renewed per message: one dict assignment)
        self._peer_leases: dict[str, float] = {}  # address -> the lease a peer told us (Renew)
        self._idle_trim = IdleTrim()  # (gives freed memory back once idle, where run_worker retains it)
        self._served = False  # a key holder's message came in the batch being handled

    def serve(self) -> None:
        log.info("worker %s serving on %s (pid %d)", self.id, self.address, os.getpid())
        self.loop.run()

    # ---- replies with nothing in them, one per client per batch
    def ack_later(self, identity: bytes, session: bytes, seq: int) -> None:
        acks = self._acks.get(identity)
        if acks is None or acks[0] != session:
            if acks is not None:  # (a new session on one connection: a forked caller) the old one's go first
                self.loop.reply(identity, self.codec.encode(0, Acked(acks[1]), acks[0]))
            acks = self._acks[identity] = (session, [])
        acks[1].append(seq)

    def take_acks(self, identity: bytes) -> list[int]:
        acks = self._acks.pop(identity, None)
        return acks[1] if acks is not None else []

    def send_acks(self) -> None:
        """Send the acks owed to each caller as one Acked each."""
        for who in list(self._acks):
            session, seqs = self._acks.pop(who)
            self.loop.reply(who, self.codec.encode(0, Acked(seqs), session))

    def flush(self) -> None:
        """Send the relays queued and the acks owed."""
        self._relays_out.send()
        self.send_acks()

    def _batch_done(self) -> None:
        """After each batch of requests the loop handled."""
        self.flush()
        if self._served:
            self._served = False
            self._idle_trim.used()
        else:  # (only dropped messages: what they brought is freed, but they are no use)
            self._idle_trim.stirred()

    # ---- objects whose creation a relay has not confirmed yet
    def settle_later(self, ids: tuple[int, ...]) -> None:
        for id in ids:
            self._unsettled[id] = []

    def settled(self, ids: tuple[int, ...]) -> None:
        for id in ids:
            for retry in self._unsettled.pop(id, ()):
                retry()

    def after_settled(self, id: int, retry: Callable[[], None]) -> bool:
        """Run `retry` once the relay creating `id` is answered; False if it already is.
        A pointer must not be handed on before the next hop holds what it points at:
        the new holder could reach that hop before our relay does."""
        waiting = self._unsettled.get(id)
        if waiting is None:
            return False
        waiting.append(retry)
        return True

    # ---- incoming
    def _on_request(self, identity: bytes, frames: list) -> None:
        origin, messages = self.codec.receive(frames)
        for seq, message in messages:
            if isinstance(message, ProtocolError):
                # Its traceback's frames hold `frames` and ours `messages`: a cycle only the
                # collector frees, and with it every large message a stranger sent meanwhile.
                message.__traceback__ = message.__context__ = None
                if seq is None or origin is None:  # not from a key holder, or not for us: no answer at all
                    self._peer_log.warning("worker %s dropped a message: %s", self.id, message)
                else:  # a key holder sent something we refuse: tell it why
                    self._peer_log.warning("worker %s refused request %d: %s", self.id, seq, message)
                    Reply(self, identity, origin, seq).fail(message)
                continue
            if origin.hello:  # (a lone Ping, maybe a stranger's replay: it renews no lease, and learns only our id)
                Reply(self, identity, origin, seq).ok(Hello(self.id))
                continue
            self._heard[origin.session] = identity  # a signed message renews its sender's lease
            self._served = True  # (only a key holder's message keeps the worker busy: IdleTrim)
            try:
                self._handle(identity, origin, seq, message)
            except Exception:  # (a bug: it must cost one request, not the worker and everyone's objects)
                log.exception("worker %s: request %d (%s) broke its handler", self.id, seq, type(message).__name__)

    def _handle(self, identity: bytes, origin: Origin, seq: int, message: Any) -> None:
        reply = Reply(self, identity, origin, seq)
        handler = HANDLERS.get(type(message))
        if handler is None:
            self._peer_log.warning("worker %s refused an unexpected %s", self.id, type(message).__name__)
            reply.fail(ProtocolError(f"worker {self.id!r} does not take {type(message).__name__} requests"))
            return
        log.debug("worker %s handles %s", self.id, message)
        try:
            handler(self, message, reply)
        except Exception as error:
            log.debug("worker %s: %s failed: %r", self.id, type(message).__name__, error)
            reply.fail(error)

    def _on_peer_reply(self, address: str, frames: list) -> None:
        def dropped(error: Exception) -> None:
            log.warning("worker %s dropped a reply from %s: %s", self.id, address, error)

        origin, replies = self.codec.receive(frames)
        if origin is not None and not origin.hello and address in self.loop.peers.by_address:
            # Who answers over our socket to `address`, signed and sealed to us, is the worker
            # there: the one source of our record of its incarnation (never a client's word).
            self._peer_incarnations[address] = origin.session
        for seq, answer in answers_in(replies, self.id, dropped):
            try:
                answered = self._relays.answer(seq, answer)
            except Exception:  # (a relay's callback failed: its caller is not answered, the worker serves on)
                log.exception("worker %s: handling reply %d from %s failed", self.id, seq, address)
                continue
            if not answered:
                log.warning("worker %s: late or unknown reply %d from %s", self.id, seq, address)
        self.flush()  # relays answered above may have acks to pass on, or relays of their own
        self._idle_trim.stirred()  # (a late answer's frames, freed after an idle trim, are trimmed too)

    def _timed_out(self, relay: _Relay) -> Failure:
        error = WorkerUnreachableError(f"worker {relay.hop} (the next hop of a chain) did not answer worker {self.id!r} within {self.timeout:g}s")
        return Failure.from_exception(error, self.id)

    def _on_tick(self) -> None:
        now = time.monotonic()
        self._relays.expire(now, self._timed_out)
        self._idle_trim.tick(now)
        if self.leases.due(now):
            lapsed = self.leases.lapsed(now)
            if lapsed:
                self._forget(lapsed)
            self._renew_leases(now)
        self.flush()

    # ---- leases (leases.py): ours at the peers we hold pointers at, and our holders' here
    def _forget(self, holders: set[str], why: str = "their lease lapsed") -> None:
        """`holders` went silent for a whole lease (or left): drop their references; what that frees is gone."""
        freed = self.store.forget_holders(holders)
        (log.info if freed else log.debug)("worker %s: %s %s; %d objects freed", self.id, ", ".join(sorted(holders)), why, len(freed))
        self.delete_at_next_hops(freed_pointers(freed))

    def _renew_leases(self, now: float) -> None:
        """Renew our leases at every peer we may hold references at (each one we ever relayed to
        or store a pointer to), where we sent nothing else for a third of its lease."""
        sent_at = self.loop.peers.sent_at
        for address in list(self.loop.peers.by_address):
            if address not in self._peer_incarnations:  # (no pointer named it: we hold nothing there)
                continue
            if now - sent_at.get(address, 0.0) >= self._peer_leases.get(address, self.leases.seconds) / 3:
                self.ask(_Peer(address), Renew(), lambda answer, address=address: self._learn_lease(address, answer))

    def hold_at(self, pointer: PointerSpec) -> None:
        """We store `pointer`: its reference at the next hop is ours, a lease we renew there."""
        self.connect(pointer.address)  # (an address zmq refuses fails the request storing it)
        if pointer.incarnation != NO_INCARNATION:  # (a client's word: a first guess only, until the peer answers)
            self._peer_incarnations.setdefault(pointer.address, pointer.incarnation)

    def is_owner_memory(self, value: Any) -> bool:
        """Does `value` share memory with the data owner's objects (read-only to clients)?"""
        return isinstance(value, torch.Tensor) and bool(self.owner_storages) and storage_key(value) in self.owner_storages

    def _learn_lease(self, address: str, answer: Ok | Failure) -> None:
        lease = lease_told(answer)
        if lease is not None:
            self._peer_leases[address] = lease

    def _give_back(self, value: Any) -> None:
        """Delete the references a late answer handed us (ours now: a relay's pointer, or a hop's)."""
        self.delete_at_next_hops(references_in(value))

    def delete_at_next_hops(self, pointers: list[PointerSpec], reply: Reply | None = None) -> None:
        """Rule 6 one hop on: drop our reference at each pointer's next hop (one DeleteObjects per
        hop); once every hop answered, `reply` (if any) is answered: the first failure, or ok."""
        onward: dict[str, tuple[PointerSpec, list[int]]] = {}
        for pointer in pointers:
            onward.setdefault(pointer.address, (pointer, []))[1].append(pointer.id_at_location)
        if not onward:
            if reply is not None:
                reply.ok()
            return
        self.relay_all([(hop, DeleteObjects(tuple(ids))) for hop, ids in onward.values()], reply)

    # ---- outgoing, hop by hop
    def relay(
        self,
        hop: PointerSpec | MoveObject,
        message: Any,
        reply: Reply,
        on_ok: Callable[[Ok], None] | None = None,
        *,
        undo: Callable[[], None] | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """`ask` the next hop `hop` on behalf of the caller `reply` answers: its answer goes to
        `on_ok` (None: the caller is answered ok); a failure there, or a timeout, is forwarded
        to the caller as it is, once `undo()` freed what the request made on its way. `then()`
        runs after either, the caller answered."""

        def on_reply(answer: Ok | Failure) -> None:
            if isinstance(answer, Failure):
                if undo is not None:
                    undo()
                reply.forward(answer)
            elif on_ok is not None:
                on_ok(answer)
            else:
                reply.ok()
            if then is not None:
                then()

        self.ask(hop, message, on_reply)

    def ask(self, hop: PointerSpec | MoveObject | _Peer, message: Any, on_reply: Callable[[Ok | Failure], None] = _ignore) -> None:
        """Send `message` to the worker at `hop.address`, sealed to the incarnation the hop
        names (else the last one a pointer to that address named); `on_reply` gets its
        answer (or a timeout). Nobody's answer waits on its failing: see `relay`."""
        to = getattr(hop, "incarnation", NO_INCARNATION)
        if to == NO_INCARNATION:
            to = self._peer_incarnations.get(hop.address, NO_INCARNATION)
            if to == NO_INCARNATION:
                raise ProtocolError(
                    f"worker {self.id!r} does not know which incarnation of {hop.location!r} at {hop.address} to address "
                    "(the pointer names none): send the object there again from a client that has met that worker"
                )
        # (`to` is only what the message is sealed to: a hop's incarnation may be a client's word, so
        # it is not recorded; the peer's own answer is, in _on_peer_reply)
        self.connect(hop.address)  # connect now: an address zmq refuses fails this request
        seq = next(self._seq)
        self._relays_out.add(hop.address, self.codec.pack(seq, message, to))  # sent by `flush`
        self._relays.add(seq, _Relay(hop.address, f"{hop.location!r} at {hop.address}", time.monotonic() + self.timeout, on_reply, message))

    def connect(self, address: str) -> None:
        """Our socket to the peer at `address`, checked: never ourselves, only the federation's
        workers when its config names them, and at most MAX_PEERS addresses in all."""
        if address in self.loop.peers.by_address:
            return
        if address == self.address:
            raise PointerCycleError(f"worker {self.id!r} does not relay to itself ({address}): a pointer here to here is refused")
        if self.allowed_peers is not None and address not in self.allowed_peers:
            raise PermissionError(
                f"worker {self.id!r} relays only to its federation's workers ({', '.join(sorted(self.allowed_peers))}), "
                f"not to {address[:200]}: add that worker to the federation's config"
            )
        if len(self.loop.peers.by_address) >= MAX_PEERS:
            raise RequestTooLargeError(
                f"worker {self.id!r} is connected to {MAX_PEERS} peers, as many as it connects to: point at the workers "
                "it knows already, or ask its owner to start it with a federation config that lists its peers"
            )
        self.loop.peers.socket(address)

    def relay_all(self, requests: list[tuple[PointerSpec, Any]], reply: Reply | None) -> None:
        """Relay several requests; once all are answered, the caller `reply` answers (if any) is
        forwarded the first failure, or answered ok."""
        if reply is None:
            for hop, message in requests:
                self.ask(hop, message)
            return
        waiting = len(requests)
        first_failure: list[Failure] = []

        def on_reply(message: Ok | Failure) -> None:
            nonlocal waiting
            waiting -= 1
            if isinstance(message, Failure) and not first_failure:
                first_failure.append(message)
            if waiting == 0:
                reply.forward(first_failure[0]) if first_failure else reply.ok()

        for hop, message in requests:
            self.ask(hop, message, on_reply)

    def hand_over(self, pointer: PointerSpec, *, giver: str, taker: str, then: Callable[[], None]) -> None:
        """Tell the worker `pointer` leads to that the reference there changed hands, then
        `then()` (answer our caller once the next hop knows, as for every relay). A next hop
        that does not answer fails nothing: only its listing is out of date."""
        if pointer.address == self.address:
            self.store.hand_over(pointer.id_at_location, holder_key(giver), holder_key(taker))
            self.leases.introduce(taker)
            then()
            return
        self.ask(pointer, DeleteObjects((), ((pointer.id_at_location, giver, taker),)), lambda answer: then())

    def pointer_to(self, id: int, obj: Any, tags: frozenset[str] = frozenset(), description: str | None = None) -> PointerSpec:
        """A spec for a pointer to object `id` held here (a result the caller will point at)."""
        return PointerSpec(
            0, self.id, self.address, id, tuple(obj.shape), obj.dtype, obj.requires_grad, tuple(sorted(tags)), description, self.incarnation
        )

    def load_data(self, script: str) -> int:
        """Run a data owner's script (under workers/): its `setup(owner)` adds the owner's objects."""
        namespace = runpy.run_path(script)
        owner = DataOwner(self)
        namespace["setup"](owner)
        log.info("worker %s loaded %d objects from %s", self.id, owner.count, script)
        return owner.count


class DataOwner:
    """What a data owner's script sees: a way to add its own objects to its worker.

    Owned objects are pinned: pointers to them (from a search) never free them (rule 14).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.id = worker.id
        self.count = 0

    def add(
        self,
        tensor: torch.Tensor,
        *,
        tags: tuple[str, ...] | list[str] = (),
        description: str | None = None,
        private: bool = False,
        dataset: "Dataset | str | None" = None,
        bounds: tuple[float, float] | None = None,
    ) -> int:
        """Add an object. `private`: it never leaves as it is (privacy.py). `dataset` (one
        `dataset()` declared, or its name): private, axis 0 one record a row, released only as
        noisy aggregates within the dataset's budget; `bounds` (lo, hi): what its values lie
        within, clamped to at release unless a client says tighter."""
        if isinstance(dataset, str):
            dataset = self.worker.privacy.datasets[dataset]
        id = new_id()
        self.worker.store.put(id, tensor, holder=DATA_OWNER, pinned=True, tags=frozenset(tags), description=description)
        if private or dataset is not None:
            self.worker.privacy.add(tensor, dataset, description or f"{self.id}'s object {id}", bounds)
        key = storage_key(tensor)
        if key is not None:
            self.worker.owner_storages.add(key)
        self.count += 1
        return id

    def secure_aggregation(self, k: int = OPT_IN_K, *, epsilon: float | None = None, clip: float | None = None, exact: bool = False) -> None:
        """This owner's policy for shares of its private data, enforced by every worker holding
        one (aggregates.py): a share leaves for reconstruction only in a sum of at least `k`
        distinct owners' data (default 2). And one of: `epsilon=` and `clip=`, each sharing of
        its data noised first (its L1 norm clipped to `clip`, OpenDP's Laplace noise, ε charged to
        its datasets: privacy.noised_for_sharing), which protects it even in an aggregate whose
        other owners add nothing; or `exact=True`, the owner's approval of exact sums of k owners'
        updates, which trusts the data scientist's training to give every owner's update weight
        (a client can make another owner's update add nothing: README, "Not stopped")."""
        if int(k) < 1:
            raise ValueError("k counts data owners: at least 1")
        if exact == (epsilon is not None or clip is not None):
            raise ValueError(
                "secure_aggregation() needs the owner's choice: epsilon= and clip= (each shared update noised, "
                "charged to the datasets' budgets), or exact=True (exact sums of k owners, trusting the training)"
            )
        noise = None
        if not exact:
            if epsilon is None or clip is None:
                raise ValueError("noise on shared updates needs both epsilon= (per sharing) and clip= (the L1 norm an update is clipped to)")
            if not (math.isfinite(epsilon) and epsilon > 0 and math.isfinite(clip) and clip > 0):
                raise ValueError(f"epsilon and clip are positive finite numbers, not {epsilon!r} and {clip!r}")
            noise = Noise(float(epsilon), float(clip))
        self.worker.aggregates.k = int(k)
        self.worker.aggregates.noise = noise

    def dataset(self, name: str, *, epsilon: float = 0.0, updates: str = "refuse") -> Dataset:
        """Declare a private dataset: one record (the unit of privacy) per row of its tensors;
        `epsilon` is the privacy budget of all noisy releases from it, whoever asks (basic
        composition); `updates` says whether gradients computed from it may leave ("allow")
        or not ("refuse", the default)."""
        return self.worker.privacy.dataset(name, epsilon=epsilon, updates=updates)


# --------------------------------------------------------------------------- handlers

HANDLERS: dict[type, Callable[[Worker, Any, Reply], None]] = {}


def handles(message_type: type) -> Callable:
    def register(handler: Callable[[Worker, Any, Reply], None]) -> Callable:
        if message_type in HANDLERS:  # (a second one would silently replace the first)
            raise TypeError(f"{message_type.__name__} has a handler already: {HANDLERS[message_type].__name__}")
        HANDLERS[message_type] = handler
        return handler

    return register


def _retry(worker: Worker, handler: Callable[[Worker, Any, Reply], None], message: Any, reply: Reply) -> None:
    try:
        handler(worker, message, reply)
    except Exception as error:
        reply.fail(error)


@handles(StoreObject)
def store_object(worker: Worker, message: StoreObject, reply: Reply) -> None:
    obj = message.obj
    if not isinstance(obj, (PointerSpec, torch.Tensor)):
        raise TypeError(f"workers store tensors and pointers, not {type(obj).__name__}")
    check_kept_sizes(obj, message.tags, message.description)  # (before a pointer's address is connected to)
    if message.holder:
        _check_holder(worker, message.holder)
    if isinstance(obj, PointerSpec):
        if obj.address == worker.address or obj.incarnation == worker.incarnation:
            raise PointerCycleError(
                f"worker {worker.id!r} does not store a pointer to itself ({obj.address}, id {obj.id_at_location}): "
                "an op on it would relay to itself forever; name the object's own id here instead"
            )
        obj.id = message.id  # a pointer handed over keeps its id (rule 3)
        worker.hold_at(obj)
    worker.store.put(message.id, obj, holder=holder_key(message.holder) if message.holder else reply.caller, tags=frozenset(message.tags), description=message.description)
    if PRIVATE_TAG in message.tags and isinstance(obj, torch.Tensor):
        worker.privacy.add(obj, None, message.description or f"a tensor sent tagged {PRIVATE_TAG}")
    if message.holder:
        worker.leases.introduce(message.holder)  # (a move: the holder may never have talked to us)
    reply.ok()


def _check_holder(worker: Worker, holder: str) -> None:
    """`StoreObject.holder` names the mover of a moved object (its sender holds it for them):
    a claim of the caller's, so never a holder whose references never lapse (the data owner,
    this worker itself): what they hold no lease or client clear would ever free."""
    if not isinstance(holder, str) or len(holder) > MAX_ADDRESS_CHARS:
        raise RequestTooLargeError(f"a holder is named by a string of at most {MAX_ADDRESS_CHARS} characters")
    if {holder, holder_key(holder)} & {DATA_OWNER, worker.id, holder_key(worker.name_on_wire)}:
        raise PermissionError(
            f"worker {worker.id!r} does not store objects for {holder.rpartition('#')[0] or holder!r} (its data owner "
            "or itself) on a client's word: store it as your own (leave `holder` unset)"
        )


@handles(RunOp)
def run_op(worker: Worker, message: RunOp, reply: Reply) -> None:
    if message.result_ids is not None:
        _check_result_ids(worker, message.op, message.result_ids)
    leaves, spec = ops.flatten(message.args, message.kwargs)
    targets = {leaf.id: worker.store.get(leaf.id) for leaf in leaves if isinstance(leaf, Ref)}
    pointers = [obj for obj in targets.values() if isinstance(obj, PointerSpec)]
    if not pointers:
        _run_here(worker, message, leaves, spec, targets, reply)
        return
    places = {p.location if isinstance(p, PointerSpec) else worker.id for p in targets.values()}
    addresses = {p.address for p in pointers}
    if len(pointers) != len(targets) or len(addresses) > 1:
        raise TensorsNotCollocatedError(
            f"{message.op} on worker {worker.id!r} mixes objects held in different places: {', '.join(sorted(places))}"
        )
    _relay_op(worker, message, leaves, spec, targets, pointers[0], reply)


def _run_here(worker: Worker, message: RunOp, leaves: list, spec: Any, targets: dict, reply: Reply) -> None:
    func = ops.resolve(message.op, allow_code=worker.codec.allow_code)
    args, kwargs = ops.unflatten([targets[l.id] if isinstance(l, Ref) else l for l in leaves], spec)
    if worker.owner_storages and not reply.by_owner and (message.result_ids == () or ops.may_write(message.op, kwargs)):
        # (what the caller says is in place counts too: it may be lying the other way)
        written = ops.written(message.op, args, kwargs, in_place=message.result_ids == ())
        _refuse_writes_to_owner_data(worker, message.op, written, targets)
    if message.op == "Tensor.backward" and worker.owner_storages:
        args, kwargs = _gradient_not_owner_memory(worker, args, kwargs)
    with torch.set_grad_enabled(message.grad_enabled):
        # (what private data it read, it wrote: privacy.py decides, from what the op touched)
        out = worker.privacy.run(message.op, func, args, kwargs, targets.values(), public_memory=worker.is_owner_memory if worker.owner_storages else None)
    if worker.aggregates:  # (what a share of private data aggregates follows the op: aggregates.py)
        worker.aggregates.derive(
            message.op, args, kwargs, targets.values(), ops.flatten_result(out)[0], message.result_ids == (), worker.privacy.is_private
        )
    if message.result_ids == ():  # in place: nothing new to store
        # After backward the caller learns which of its tensors have a .grad now, so that
        # an optimizer reading p.grad costs no round trip per parameter.
        with_grad = _ids_with_grad(worker, reply) if message.op == "Tensor.backward" else None
        # What it wrote (resize_, set_, data = ..., new grads) may hold more now: counted again.
        worker.store.remeasure([l.id for l in leaves if isinstance(l, Ref)] + (with_grad or []))
        reply.ok(with_grad)
        return
    if ops.may_write(message.op, kwargs):  # (sent with result ids, an in-place op still wrote: counted before anything can fail)
        worker.store.remeasure([l.id for l in leaves if isinstance(l, Ref)])
    results, out_spec = ops.flatten_result(out)
    _refuse_too_many_results(worker, message.op, len(results))  # (the ids were ours to pick: counted now)
    for result in results:
        if not isinstance(result, torch.Tensor):
            raise ValueNeedsGetError(
                f"{message.op} returns a {type(result).__name__}, not a tensor: .get() the tensor to compute it locally"
            )
    if message.result_ids is None:  # the caller could not infer the result: we pick ids and say what they hold
        specs = []
        for result in results:
            id = new_id()
            worker.store.put(id, result, holder=reply.caller)
            specs.append(worker.pointer_to(id, result))
        reply.ok(ops.unflatten_result(specs, out_spec))
        return
    if len(results) != len(message.result_ids):
        raise ProtocolError(f"{message.op} made {len(results)} tensors; the caller named {len(message.result_ids)} ids")
    for id, result in zip(message.result_ids, results):
        worker.store.put(id, result, holder=reply.caller)
    reply.ok()


def _check_result_ids(worker: Worker, op: str, ids: Any) -> None:
    """The ids a caller named for what `op` makes, checked before it runs (the store refuses a
    non-int id too, but only once the op has run and maybe stored the results before it)."""
    _refuse_too_many_results(worker, op, len(ids))
    if not all(type(id) is int for id in ids):
        raise ProtocolError(f"{op}: object ids are ints, chosen by the caller (rule 1)")


def _refuse_too_many_results(worker: Worker, op: str, count: int) -> None:
    if count > MAX_RESULTS_PER_OP:
        raise RequestTooLargeError(
            f"{op} makes {count} tensors on {worker.id!r}: one op makes at most {MAX_RESULTS_PER_OP}; "
            "split in fewer, larger pieces (or index the tensor where you need a piece)"
        )


def _refuse_writes_to_owner_data(worker: Worker, op: str, written: list, targets: dict) -> None:
    """The data owner's objects are read-only to clients: an op may not write into one (its
    target, or `out=`), nor into a view or anything else that shares its memory, nor make it
    what a client's tensor writes into (`p.grad = owner_data`: backward accumulates in place)."""
    for tensor in written:
        if worker.is_owner_memory(tensor):
            id = next((id for id, obj in targets.items() if obj is tensor), None)
            what = "object " + str(id) if id is not None else "the memory of an object"
            if op in ops.ALIASES_VALUE:
                prop = op.split(".")[1]
                raise PermissionError(
                    f"{op} would make {what} on {worker.id!r}, which is its data owner's (or a view of it), a "
                    f"tensor's .{prop}, which later ops write into: clients may compute on the owner's data but not "
                    f"change it. Assign a copy: p.{prop} = x.clone()"
                )
            raise PermissionError(
                f"{op} would change {what} on "
                f"{worker.id!r}, which is its data owner's (or a view of it): clients may compute on the owner's "
                "data but not change it. Work on a copy: y = x.clone(); y." + op.rpartition(".")[2] + "(...)"
            )


def _gradient_not_owner_memory(worker: Worker, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """backward's arguments with a copy for any that shares the owner's memory: autograd may
    make the `gradient` itself a leaf's .grad (through a view), which the next backward
    accumulates into in place. (The values are the same: only the memory differs.)"""
    copy = lambda a: a.clone() if worker.is_owner_memory(a) else a
    return (args[:1] + tuple(tree_map(copy, a) for a in args[1:]), {k: tree_map(copy, v) for k, v in kwargs.items()})


def _ids_with_grad(worker: Worker, reply: Reply) -> list[int]:
    """The caller's leaves that have a .grad (after a backward). Only the caller's: ids are
    capabilities, and another client's must not be learned from a backward."""
    caller = reply.caller
    return [
        id for id, entry in worker.store.items()
        if caller in entry.holders and isinstance(entry.obj, torch.Tensor) and entry.obj.is_leaf and entry.obj.grad is not None
    ]


def _relay_op(worker: Worker, message: RunOp, leaves: list, spec: Any, targets: dict, hop: PointerSpec, reply: Reply) -> None:
    """Rule 4 on a chain: the next hop computes; we keep a pointer to each result under
    the id our caller chose, and answer once the next hop has."""
    hops = message.hops + 1 if type(message.hops) is int else MAX_HOPS + 1
    if hops > MAX_HOPS:
        raise PointerCycleError(
            f"{message.op} reached worker {worker.id!r} through {MAX_HOPS} workers and would go on to {hop.location!r}: "
            "its pointers lead round a cycle (or a chain longer than fedq follows); .get() or move the object nearer"
        )
    args, kwargs = ops.unflatten([Ref(targets[l.id].id_at_location) if isinstance(l, Ref) else l for l in leaves], spec)
    if message.result_ids is None:

        def on_inferred(answer: Ok) -> None:
            def keep(remote: Any) -> Any:
                if not isinstance(remote, PointerSpec):
                    return remote
                id = new_id()
                worker.store.put(
                    id,
                    PointerSpec(
                        id, hop.location, hop.address, remote.id_at_location, remote.shape, remote.dtype, remote.requires_grad,
                        incarnation=hop.incarnation,
                    ),
                    holder=reply.caller,
                )
                return PointerSpec(0, worker.id, worker.address, id, remote.shape, remote.dtype, remote.requires_grad, incarnation=worker.incarnation)

            reply.ok(tree_map(keep, answer.value))

        worker.relay(hop, RunOp(message.op, args, kwargs, None, None, message.grad_enabled, hops), reply, on_ok=on_inferred)
        return

    next_ids = tuple(new_id() for _ in message.result_ids)
    for id, next_id, (shape, dtype, requires_grad) in zip(message.result_ids, next_ids, message.result_meta or ()):
        worker.store.put(
            id, PointerSpec(id, hop.location, hop.address, next_id, tuple(shape), dtype, requires_grad, incarnation=hop.incarnation),
            holder=reply.caller,
        )
    worker.settle_later(message.result_ids)

    def undo() -> None:
        for id in message.result_ids:
            worker.store.remove_if_present(id)  # never leave a pointer to nothing
        # Nor anything at the next hop that no pointer holds: if the op timed out it may still
        # run there, and a delete sent after it on the same connection lands after it.
        worker.ask(hop, DeleteObjects(next_ids))

    # Answered ok when the next hop is (a backward's grads are at the last hop: the caller asks
    # for them there); what waits for the results runs after the answer, either way.
    worker.relay(
        hop, RunOp(message.op, args, kwargs, next_ids, message.result_meta, message.grad_enabled, hops), reply,
        undo=undo, then=lambda: worker.settled(message.result_ids),
    )


class _StepReply:
    """What `_run_here` answers a plan's step to: the plan's caller, who holds what a step
    makes (for as long as the plan runs), and its answer, kept."""

    __slots__ = ("caller", "by_owner", "value")

    def __init__(self, reply: Reply) -> None:
        self.caller, self.by_owner, self.value = reply.caller, reply.by_owner, None

    def ok(self, value: Any = None) -> None:
        self.value = value


@handles(RunPlan)
def run_plan(worker: Worker, message: RunPlan, reply: Reply) -> None:
    """A plan in one message: each step is the RunOp it names, run by `_run_here` as a
    client's RunOp is (the op table, limits, the owner's data read-only, privacy.py's taint):
    a plan can do nothing its ops one by one could not. Its arguments are held here (a plan
    does not relay); what its steps make in between is freed when it ends, fail or not."""
    steps, args = tuple(message.steps), tuple(message.args)
    if len(steps) > MAX_PLAN_STEPS:
        raise RequestTooLargeError(f"a plan of {len(steps)} steps: a worker runs plans of at most {MAX_PLAN_STEPS}")
    _check_result_ids(worker, "a plan", message.result_ids)  # (its outputs: stored ones)
    for step in steps:  # every op refused before any runs
        if not isinstance(step, PlanStep) or type(step.results) is not int or not 0 <= step.results <= MAX_RESULTS_PER_OP:
            raise ProtocolError("a plan's steps are PlanSteps, each making 0 (in place) to a bounded number of tensors")
        ops.resolve(step.op, allow_code=worker.codec.allow_code)
    tensors = sum(step.results for step in steps)
    if tensors > MAX_RESULTS_PER_OP:  # (one PlanStep repeated pickles once: a small message could fill the store with entries)
        raise RequestTooLargeError(f"a plan's steps make {tensors} tensors on {worker.id!r}: a plan makes at most {MAX_RESULTS_PER_OP}, as one op does")
    for arg in args:
        if not isinstance(arg, Ref):
            raise ProtocolError("a plan's arguments are Refs to objects held by the worker it runs on")
        if isinstance(worker.store.get(arg.id), PointerSpec):
            raise TensorsNotCollocatedError(
                f"a plan runs on {worker.id!r} on what {worker.id!r} holds; object {arg.id} is a pointer to "
                f"{worker.store.get(arg.id).location!r}: .move() it here, or send the plan there"
            )
    slots = [arg.id for arg in args]
    made: list[int] = []  # what the steps stored: freed at the end
    stored: list[int] = []
    step_reply = _StepReply(reply)
    try:
        for step in steps:
            leaves, spec = ops.flatten(step.args, step.kwargs)
            # (a constant is one object in every step that names it, since the message is unpickled
            # once: each step gets its own copy, as a RunOp of its own would, so that no step can
            # write private data into a constant that a later step reads as public)
            leaves = [_fresh_constant(_slot_ref(slots, leaf)) for leaf in leaves]
            targets = {leaf.id: worker.store.get(leaf.id) for leaf in leaves if isinstance(leaf, Ref)}
            ids = tuple(new_id() for _ in range(step.results))
            made.extend(ids)
            step_args, step_kwargs = ops.unflatten(leaves, spec)
            _run_here(worker, RunOp(step.op, step_args, step_kwargs, ids, None, message.grad_enabled), leaves, spec, targets, step_reply)
            slots.extend(ids)
        outputs = [_slot_ref(slots, Slot(index)).id for index in message.outputs]
        if len(outputs) != len(message.result_ids):
            raise ProtocolError(f"a plan with {len(outputs)} outputs; the caller named {len(message.result_ids)} ids")
        for id, output in zip(message.result_ids, outputs):
            worker.store.put(id, worker.store.get(output), holder=reply.caller)
            stored.append(id)
    except BaseException:
        for id in stored:  # all of the outputs, or none
            worker.store.remove_if_present(id)
        raise
    finally:
        for id in made:
            worker.store.remove_if_present(id)
    reply.ok()


def _fresh_constant(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return leaf.detach().clone().requires_grad_(leaf.requires_grad)
    return leaf


def _slot_ref(slots: list[int], leaf: Any) -> Any:
    """A step's argument: a Slot becomes the Ref of what it names; a Ref is refused (a step
    names tensors by slot only); anything else is a constant of the op."""
    if isinstance(leaf, Ref):
        raise ProtocolError("a plan's step names its tensors by Slot, not by Ref")
    if isinstance(leaf, Slot):
        if type(leaf.index) is not int or not 0 <= leaf.index < len(slots):
            raise ProtocolError(f"a plan's step names slot {leaf.index!r}: only {len(slots)} are filled by then")
        return Ref(slots[leaf.index])
    return leaf


@handles(GetObject)
def get_object(worker: Worker, message: GetObject, reply: Reply) -> None:
    """Rule 5: hand the object over. When other pointers still hold it (rule 6) the
    caller gets a copy, or for a stored pointer a new reference at the next hop."""
    if worker.after_settled(message.id, lambda: _retry(worker, get_object, message, reply)):
        return
    entry = worker.store.entry(message.id)
    if message.epsilon is not None and worker.privacy.is_private(entry.obj):
        # A noisy aggregate (privacy.py, dp.py): charged to its dataset's budget, then fetched as a get is.
        released = worker.privacy.release(entry.obj, message.epsilon, message.bounds, worker.leases.display(reply.caller))
        if entry.refs > 1 or entry.pinned:
            worker.store.decref(message.id, reply.caller)
        else:
            worker.store.pop(message.id)
        reply.ok(released)
        return
    released = _approved_release(worker, entry, message.id, reply) if worker.aggregates.terms(entry.obj) is None else None
    if released is None and worker.aggregates.terms(entry.obj) is not None:
        worker.aggregates.release(entry.obj, worker.id, message.id)  # the owners' policy, or AggregateTooSmallError
        released = entry.obj
    if released is None:
        refuse_if_private(worker.privacy, entry.obj, message.id, worker.id, "fetched with .get()")
    shared = entry.refs > 1 or entry.pinned
    if not isinstance(entry.obj, PointerSpec):
        if shared:
            worker.store.decref(message.id, reply.caller)
        else:
            worker.store.pop(message.id)
        reply.ok(entry.obj if released is None else released)
        return
    pointer = entry.obj
    # The caller takes our pointer: our reference at the next hop becomes the caller's. We, the
    # giver, say so (a hop takes a hand-over only from the giver); the caller's own later
    # messages to that hop may overtake it, and are settled when it lands (store.py).
    hand_over = DeleteObjects((), ((pointer.id_at_location, worker.name_on_wire, reply.caller_name),))
    if not shared:
        worker.store.pop(message.id)
        # Not waited for (a peel costs no extra hop): whatever of the caller's reaches that hop
        # first is owed and settled when this lands; a failed hand-over only dates a listing.
        worker.ask(pointer, hand_over)
        reply.ok(pointer)
        return

    def on_handed_over(answer: Ok) -> None:
        worker.store.decref(message.id, reply.caller)
        reply.ok(pointer)

    # Other pointers still need ours: a new reference, ours at first, then the caller's.
    worker.ask(pointer, IncRef((pointer.id_at_location,)))
    worker.relay(pointer, hand_over, reply, on_ok=on_handed_over)  # (one connection: lands after the IncRef)


@handles(MoveObject)
def move_object(worker: Worker, message: MoveObject, reply: Reply) -> None:
    """Rule 7: the bytes go from here straight to the destination, which keeps the id."""
    if worker.after_settled(message.id, lambda: _retry(worker, move_object, message, reply)):
        return
    entry = worker.store.entry(message.id)
    if message.address == worker.address:
        reply.ok()
        return
    refuse_if_private(worker.privacy, entry.obj, message.id, worker.id, "moved to another worker")
    shared = entry.refs > 1 or entry.pinned
    if shared and isinstance(entry.obj, PointerSpec):
        raise FedqError(f"object {message.id} on {worker.id!r} is a pointer other pointers share; .get() or copy it instead")

    mover = reply.caller_name

    def on_stored(answer: Ok) -> None:
        if shared:  # other pointers still need it here: the mover's reference is what left
            worker.store.decref(message.id, reply.caller)
        else:
            worker.store.remove_if_present(message.id)

        def handed_to_mover(answer: Any) -> None:
            if isinstance(entry.obj, PointerSpec):  # a moved pointer: its reference now is the destination's
                worker.hand_over(entry.obj, giver=worker.name_on_wire, taker=wire_name(message.location, message.incarnation), then=reply.ok)
            else:
                reply.ok()

        # Stored as ours (below), now the mover's: answered once the destination knows, so that
        # the mover's next message there finds the reference its own.
        worker.ask(message, DeleteObjects((), ((message.id, worker.name_on_wire, mover),)), handed_to_mover)

    # The destination stores it as ours first: if the store times out and lands late, our delete
    # (sent after it on the same connection) frees it, where the mover's reference would be held
    # by a mover who was told the move failed.
    worker.relay(
        message, StoreObject(message.id, entry.obj, tuple(sorted(entry.tags)), entry.description), reply, on_ok=on_stored,
        undo=lambda: worker.ask(message, DeleteObjects((message.id,))),
    )


@handles(RemoteGet)
def remote_get(worker: Worker, message: RemoteGet, reply: Reply) -> None:
    """Rule 8: replace our pointer by what it points at, fetched from the next hop."""
    entry = worker.store.entry(message.id)
    hop = entry.obj
    if not isinstance(hop, PointerSpec):
        raise FedqError(f"remote_get() needs a pointer to a pointer: {worker.id!r} holds the tensor {message.id} itself")

    def on_fetched(answer: Ok) -> None:
        fetched = answer.value
        worker.store.replace(message.id, fetched)
        if isinstance(fetched, PointerSpec):  # the next hop's pointer (its giver handed its reference to us)
            fetched.id = message.id
            worker.hold_at(fetched)
        reply.ok(isinstance(fetched, PointerSpec))

    worker.relay(hop, GetObject(hop.id_at_location), reply, on_ok=on_fetched)


@handles(Search)
def search(worker: Worker, message: Search, reply: Reply) -> None:
    """Rule 14: a pointer (one new reference) to every object carrying all the tags."""
    wanted = set(message.tags)
    found = []
    for id, entry in worker.store.items():
        # The owner's data, and the caller's own objects: never another client's, not even for the
        # owner (a key holder's tensor planted with the owner's tags would pass for its data).
        mine = entry.pinned or reply.caller in entry.holders
        if mine and wanted <= entry.tags and isinstance(entry.obj, torch.Tensor):
            entry.add(reply.caller)
            found.append(worker.pointer_to(id, entry.obj, entry.tags, entry.description))
    reply.ok(found)


@handles(IncRef)
def inc_ref(worker: Worker, message: IncRef, reply: Reply) -> None:
    for id in message.ids:
        worker.store.entry(id)  # all or nothing: check every id first
    for id in message.ids:
        worker.store.incref(id, reply.caller)
    reply.ok()



@handles(DeleteObjects)
def delete_objects(worker: Worker, message: DeleteObjects, reply: Reply) -> None:
    """Rule 6: drop one reference per id; a freed pointer passes the delete one hop on.
    Hand-overs first: one queued before a delete of the same reference happened before it."""
    freed_entries = []
    for id, giver, taker in message.hand_overs:
        if holder_key(giver) != reply.caller:  # only a reference's holder gives it away
            worker._peer_log.warning("worker %s ignored a hand-over of %s's reference sent by %s", worker.id, giver.rpartition("#")[0], reply.caller_name.rpartition("#")[0])
            continue
        freed_entries.append(worker.store.hand_over(id, reply.caller, holder_key(taker)))
        worker.leases.introduce(taker)  # (it may never have talked to us: its lease starts now)
    freed_entries += [worker.store.decref(id, reply.caller) for id in message.ids]
    worker.delete_at_next_hops(freed_pointers(freed_entries), reply)


@handles(ListObjects)
def list_objects(worker: Worker, message: ListObjects, reply: Reply) -> None:
    """Rule 11's snapshot. A private tensor shows as a meta tensor: its shape, not its values."""
    reply.ok({id: _redacted(worker, entry) for id, entry in _visible(worker, reply)})


def _visible(worker: Worker, reply: Reply) -> list[tuple[int, Any]]:
    """What a listing shows the caller: everything to the data owner; to anyone else what it
    holds itself. Ids are capabilities: a client must not learn another's, to name them."""
    if reply.by_owner:
        return list(worker.store.items())
    caller = reply.caller
    return [(id, entry) for id, entry in worker.store.items() if caller in entry.holders]


def _redacted(worker: Worker, entry: Any) -> Any:
    if worker.privacy.holds_private(entry.obj):
        return torch.empty(entry.obj.shape, dtype=entry.obj.dtype, device="meta")
    return entry.obj


@handles(DescribeObjects)
def describe_objects(worker: Worker, message: DescribeObjects, reply: Reply) -> None:
    rows = []
    now = time.monotonic()
    for id, entry in _visible(worker, reply):
        kind, shape, dtype, points_to = describe(entry.obj)
        tags = tuple(sorted(entry.tags | ({PRIVATE_TAG} if worker.privacy.holds_private(entry.obj) else set())))
        hop = entry.obj if isinstance(entry.obj, PointerSpec) else None
        holders = entry.listing()
        rows.append(ObjectInfo(
            id, kind, shape, dtype, object_nbytes(entry.obj), entry.refs, tags,
            tuple((worker.leases.display(holder), count) for holder, count in holders),  # names, never sessions
            points_to, hop.address if hop else None, hop.id_at_location if hop else None,
            tuple(worker.leases.status(holder, now) for holder, _ in holders), worker.privacy.summary(entry.obj),
        ))
    reply.ok(rows)


@handles(HoldsObject)
def holds_object(worker: Worker, message: HoldsObject, reply: Reply) -> None:
    """A mover whose move failed asks whether it landed anyway: then the object is the mover's
    (a reference, as IncRef gives), since the source that stored it, as its own until it hands it
    over, may never do so (it died) or frees its own later (its relay timed out)."""
    held = message.id in worker.store
    if held and reply.caller not in worker.store.entry(message.id).holders:
        worker.store.incref(message.id, reply.caller)
    reply.ok(held)


@handles(CountObjects)
def count_objects(worker: Worker, message: CountObjects, reply: Reply) -> None:
    reply.ok(len(worker.store) if reply.by_owner else len(_visible(worker, reply)))


@handles(ClearObjects)
def clear_objects(worker: Worker, message: ClearObjects, reply: Reply) -> None:
    """The data owner empties the store (rule 10: other workers are not touched). Anyone else
    empties it of what they hold: as if they deleted each of their objects."""
    if reply.by_owner:
        worker.store.clear()
        worker.owner_storages.clear()
        reply.ok()
        return
    freed = worker.store.forget_holders({reply.caller})
    worker.delete_at_next_hops(freed_pointers(freed), reply)


@handles(Ping)
def ping(worker: Worker, message: Ping, reply: Reply) -> None:
    reply.ok(WorkerStatus(worker.id, os.getpid(), __version__, len(worker.store), worker.leases.seconds, torch.get_num_threads()))


@handles(Renew)
def renew(worker: Worker, message: Renew, reply: Reply) -> None:
    """A heartbeat (its lease was renewed on arrival, as for every message): say how long a lease is."""
    reply.ok(worker.leases.seconds)


@handles(Leave)
def leave(worker: Worker, message: Leave, reply: Reply) -> None:
    """A client closing: what only it held is freed now (a lease's lapse, early); no one else's."""
    worker.leases.leave(reply.caller)
    worker._forget({reply.caller}, why="left")
    reply.ok()


@handles(AddOwnerData)
def add_owner_data(worker: Worker, message: AddOwnerData, reply: Reply) -> None:
    """The owner's tensors, given as it started the worker: its data, as its script's would be."""
    if not reply.by_owner:
        raise PermissionError(f"only the data owner adds data to worker {worker.id!r}: send your tensors (they are then yours)")
    descriptions = message.descriptions or (None,) * len(message.tensors)
    if not len(message.tensors) == len(message.tags) == len(descriptions) or not all(isinstance(t, torch.Tensor) for t in message.tensors):
        raise TypeError("AddOwnerData gives tensors, and one tuple of tags and one description (or None) per tensor")
    for tensor, tags, description in zip(message.tensors, message.tags, descriptions):
        check_kept_sizes(tensor, tags, description)  # (all checked before any is kept)
    owner = DataOwner(worker)
    for tensor, tags, description in zip(message.tensors, message.tags, descriptions):
        owner.add(tensor, tags=tuple(tags), description=description)
    reply.ok()


@handles(Shutdown)
def shutdown(worker: Worker, message: Shutdown, reply: Reply) -> None:
    if not reply.by_owner:
        raise PermissionError(
            f"only the data owner stops worker {worker.id!r}: sign with its admin key (a worker this script "
            "started has it; a standing worker's is its config's admin key file), or stop it on its host"
        )
    reply.ok()
    worker.loop.stop()


@handles(SetThreads)
def set_threads(worker: Worker, message: SetThreads, reply: Reply) -> None:
    if not reply.by_owner:
        raise PermissionError(f"only the data owner sets worker {worker.id!r}'s threads: sign with its admin key")
    if type(message.threads) is not int or not 1 <= message.threads <= MAX_THREADS:
        raise ProtocolError(f"threads is a whole number from 1 to {MAX_THREADS}")
    torch.set_num_threads(message.threads)  # (inter-op threads are fixed once torch has used them)
    reply.ok()


# ---- secret sharing: shares and Beaver triples move worker to worker (ring.py, aggregates.py)

#: parties one sharing or triple may have; elements one triple part may have
MAX_PARTIES, MAX_TRIPLE_ELEMENTS = 64, 1 << 27
#: how many pads a crypto provider deals per party: a Beaver triple's three, a comparison's five (ring.comparison_pads)
_PADS_OF = {"mul": 3, "matmul": 3, "compare": 5}
#: what a received share's (or a triple's) history starts with: never shared on as our owner's data
_RECEIVED, _PADS = "data: a share of ", "data: a Beaver triple's one-time pad"


def _parties(parties: Any) -> list[tuple[str, str, bytes, Any]]:
    if not isinstance(parties, tuple) or not 1 <= len(parties) <= MAX_PARTIES:
        raise RequestTooLargeError(f"a sharing has 1 to {MAX_PARTIES} parties")
    checked = []
    for party in parties:
        location, address, incarnation, ids = party
        if not (isinstance(location, str) and isinstance(address, str) and isinstance(incarnation, bytes)):
            raise ProtocolError("a party is (its id, its address, its incarnation, the ids there)")
        if len(location) > MAX_ADDRESS_CHARS or len(address) > MAX_ADDRESS_CHARS:
            raise RequestTooLargeError(f"a party is named in at most {MAX_ADDRESS_CHARS} characters")
        checked.append((location, address, incarnation, ids))
    if len({address for _, address, _, _ in checked}) != len(checked):
        raise ValueError("each party of a sharing is a different worker")
    return checked


def _check_token(token: Any) -> str:
    if not isinstance(token, str) or not 1 <= len(token) <= 64:
        raise ProtocolError("a sharing's token is a string of 1 to 64 characters")
    return token


@handles(ShareObject)
def share_object(worker: Worker, message: ShareObject, reply: Reply) -> None:
    """Split the int64 tensor under `id` into one share per party: ours stays, each other one goes
    straight to its worker. A share of our owner's private data carries its origin (aggregates.py)."""
    if worker.after_settled(message.id, lambda: _retry(worker, share_object, message, reply)):
        return
    token = _check_token(message.token)
    parties = _parties(message.parties)
    secret = worker.store.get(message.id)
    if isinstance(secret, PointerSpec):
        raise FedqError(f"object {message.id} on {worker.id!r} is a pointer to {secret.location!r}: share it where the data is")
    if not isinstance(secret, torch.Tensor) or secret.dtype != ring.RING:
        raise TypeError(f"shares are of int64 tensors (the ring Z/2^64): .fix_precision() a float tensor first, not {getattr(secret, 'dtype', type(secret).__name__)}")
    private = worker.privacy.is_private(secret)
    if private and worker.aggregates.k is None:
        raise GetNotPermittedError(
            f"object {message.id} on {worker.id!r} is private, and its data owner has not opted into secure aggregation "
            "(DataOwner.secure_aggregation(k=...) in its script): its private data is never shared"
        )
    if private and any(line.startswith((_RECEIVED, _PADS)) for line in worker.privacy.history(secret)):
        raise GetNotPermittedError(
            f"object {message.id} on {worker.id!r} is computed from shares of other owners' data: only an owner's own data is shared from its worker"
        )
    if private and worker.aggregates.terms(secret) is not None:
        raise GetNotPermittedError(f"object {message.id} on {worker.id!r} is a share already: it is not shared again")
    if private and not any(address == worker.address for _, address, _, _ in parties):
        # We keep one share ourselves, released only under our owner's policy: without it the other
        # holders, whoever runs them, cannot reconstruct.
        raise GetNotPermittedError(f"worker {worker.id!r} shares its owner's private data only among parties that include itself")
    if private and worker.aggregates.noise is not None:
        scale = message.scale
        if type(scale) is not int or not 1 <= scale <= 2**62:
            raise ProtocolError("a sharing's scale is an int from 1 to 2^62 (fixed precision's base ** precision)")
        # What the shares will cost is refused before the noise (its CPU) and its ε are spent on it.
        if secret.numel() > worker.settings.max_noised_elements:
            raise RequestTooLargeError(
                f"object {message.id} on {worker.id!r} has {secret.numel()} elements: its owner noises at most "
                f"{worker.settings.max_noised_elements} in one sharing (max_noised_elements)"
            )
        _check_share_bytes(worker, 8 * secret.numel())
        noise = worker.aggregates.noise
        secret = worker.privacy.noised_for_sharing(secret, scale, noise.epsilon, noise.clip, reply.caller_name)
    # Each other party's share is a seed it expands (ring.expand: 32 bytes sent, not 8 per element);
    # the remainder, secret - the seeds' shares, is ours, or the last party's if we are none.
    ours = next((i for i, party in enumerate(parties) if party[1] == worker.address), None)
    remainder_at = ours if ours is not None else len(parties) - 1
    seeds = tuple(os.urandom(ring.SEED_BYTES) if i != remainder_at else b"" for i in range(len(parties)))
    # (privacy.py marks the remainder private when the secret is, like any op's result)
    remainder = worker.privacy.run("fedq.share", lambda t, seeds: ring.split_seeded(t, [s for s in seeds if s]), (secret, seeds), {}, [secret])
    me = holder_key(worker.name_on_wire)
    sends = []
    for i, (location, address, incarnation, share_id) in enumerate(parties):
        if address == worker.address:
            worker.store.put(share_id, remainder, holder=reply.caller)
            if private:
                worker.aggregates.add(remainder, token, me, worker.id, worker.aggregates.k)
            continue
        worker._shares_sent[(token, share_id)] = incarnation.hex()  # what ConfirmShare will be asked
        share, seed = (remainder, b"") if i == remainder_at else (None, seeds[i])
        sends.append((_Hop(address, location, incarnation), StoreShare(
            share_id, share, reply.caller_name, token, private, worker.aggregates.k, worker.address, seed, tuple(secret.shape))))
    if not sends:
        reply.ok()
        return
    waiting = [len(sends)]
    failures: list[Failure] = []

    def on_stored(answer: Ok | Failure, key: tuple[str, int]) -> None:
        worker._shares_sent.pop(key, None)
        if isinstance(answer, Failure):
            failures.append(answer)
        waiting[0] -= 1
        if waiting[0] == 0:
            reply.forward(failures[0]) if failures else reply.ok()

    for hop, store in sends:
        worker.ask(hop, store, lambda answer, key=(token, store.id): on_stored(answer, key))


@handles(StoreShare)
def store_share(worker: Worker, message: StoreShare, reply: Reply) -> None:
    """Another worker's share for us. A share of its owner's private data is kept only once that
    worker, asked where it listens, confirms it sent it: the origin is the worker, never a
    claim (a client's own session is no owner's). So is a seeded share, private or not: a seed
    is 32 bytes that expand to what a message of its size would bring (its bytes count against
    max_message_bytes and the store's room), and only a worker's own sharing sends one."""
    share, token = message.share, _check_token(message.token)
    if message.seed:  # (a seed: what ring.expand makes of it, shaped as said, within what a message may carry)
        shape = message.shape
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise RequestTooLargeError("a seeded share is shaped by a tuple of non-negative ints")
        _check_share_bytes(worker, 8 * math.prod(shape))
        if not isinstance(message.seed, bytes) or len(message.seed) != ring.SEED_BYTES:
            raise ValueError(f"a share's seed is {ring.SEED_BYTES} bytes")
    elif not isinstance(share, torch.Tensor) or share.dtype != ring.RING:
        raise TypeError("a share is an int64 tensor")
    else:
        check_kept_sizes(share)
    _check_holder(worker, message.holder)
    if message.id in worker.store:
        raise DuplicateIdError(f"worker {worker.id!r} already holds an object under id {message.id}")

    def keep() -> torch.Tensor:
        # (a seed is expanded only now: once its sender was confirmed, and if the store still has room)
        kept = ring.expand(message.seed, message.shape) if message.seed else share
        check_kept_sizes(kept)
        worker.store.put(message.id, kept, holder=holder_key(message.holder))
        worker.leases.introduce(message.holder)
        return kept

    if not message.private and not message.seed:
        keep()
        reply.ok()
        return
    if not isinstance(message.origin_address, str) or not message.origin_address or len(message.origin_address) > MAX_ADDRESS_CHARS:
        raise PermissionError(f"a share from {reply.caller_name.rpartition('#')[0]!r} names no worker it comes from")
    sender = bytes.fromhex(reply.caller)  # a worker signs with its incarnation
    name = reply.caller_name.rpartition("#")[0]
    what = "a share of private data" if message.private else "a seeded share"
    known = worker._peer_incarnations.get(message.origin_address)  # (from that worker's own answers only)
    if known is not None and known != sender:
        raise PermissionError(f"{what} sent by {name!r} is not from the worker at {message.origin_address[:200]}")

    def confirmed(answer: Ok | Failure) -> None:
        if isinstance(answer, Failure):
            reply.fail(PermissionError(
                f"worker {worker.id!r} refused {what}: its sender is not the worker at "
                f"{message.origin_address[:200]} that it claims to come from ({answer.message})"
            ))
            return
        try:
            kept = keep()
        except Exception as error:
            reply.fail(error)
            return
        if not message.private:
            reply.ok()
            return
        worker.privacy.mark(kept, Facts(frozenset({UNRELEASED}), (f"{_RECEIVED}{name}'s private data (sharing {token})",), worker.privacy.stamp(kept)))
        worker.aggregates.add(kept, token, reply.caller, name, message.k)
        reply.ok()

    worker.ask(_Hop(message.origin_address, name, sender), ConfirmShare(token, message.id), confirmed)


def _check_share_bytes(worker: Worker, nbytes: int) -> None:
    """Refuse, before making it, a share of `nbytes` that a message could not carry or the store not hold."""
    if nbytes > worker.settings.max_message_bytes:
        raise RequestTooLargeError(f"a share of {nbytes} bytes is over max_message_bytes ({worker.settings.max_message_bytes})")
    _check_room(worker, nbytes)


def _check_room(worker: Worker, nbytes: int) -> None:
    """Refuse, before making it, what would take the store past max_store_bytes."""
    store = worker.store
    if store.max_bytes is not None and store.nbytes + nbytes > store.max_bytes:
        raise StoreFullError(
            f"worker {worker.id!r} holds {store.nbytes} bytes: {nbytes} more would pass its limit of {store.max_bytes}: "
            "free (delete or .get()) what it holds, or ask its owner for a higher max_store_bytes"
        )


@handles(ConfirmShare)
def confirm_share(worker: Worker, message: ConfirmShare, reply: Reply) -> None:
    if worker._shares_sent.get((message.token, message.id)) != reply.caller:
        raise PermissionError(f"worker {worker.id!r} sent no share {message.id} of sharing {str(message.token)[:64]!r} to you")
    reply.ok()


@handles(MakeTriples)
def make_triples(worker: Worker, message: MakeTriples, reply: Reply) -> None:
    """The crypto provider's: a Beaver triple, split among the parties, sent straight to each.
    It learns the operands' shapes, nothing of their values."""
    parties = _parties(message.parties)
    if any(address == worker.address for _, address, _, _ in parties):
        raise ValueError(f"the crypto provider {worker.id!r} is not one of the holders: it would know their shares' pads")
    shapes = []
    for shape in (message.x_shape, message.y_shape):
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape) or math.prod(shape) > MAX_TRIPLE_ELEMENTS:
            raise RequestTooLargeError(f"a triple's operand has a shape of at most {MAX_TRIPLE_ELEMENTS} elements")
        shapes.append(shape)
    c_shape = ring.product_shape(message.kind, *shapes)
    if math.prod(c_shape) > MAX_TRIPLE_ELEMENTS:
        raise RequestTooLargeError(f"a triple's product has at most {MAX_TRIPLE_ELEMENTS} elements")
    _check_triple_cost(worker, message.kind, shapes, c_shape, len(parties))
    pads = worker.privacy.run("fedq.triple", ring.triple, (message.kind, *shapes), {}, [])  # (reads nothing stored)
    parts = [ring.split(t, len(parties)) for t in pads]
    worker.relay_all([
        (_Hop(address, location, incarnation), StoreTriple(message.kind, tuple(ids), tuple(part[i] for part in parts), reply.caller_name))
        for i, (location, address, incarnation, ids) in enumerate(parties)
    ], reply)


def _check_triple_cost(worker: Worker, kind: str, shapes: list, c_shape: tuple, parties: int) -> None:
    """Elements are not cost: a matmul's pads take m * k * n multiply-adds to make, and every
    party is sent its own split of all of them (worker.settings.max_triple_work, max_message_bytes)."""
    work = math.prod(c_shape) * (shapes[0][-1] if kind == "matmul" and shapes[0] else 1)
    limit = worker.settings.max_triple_work
    if work > limit:
        raise RequestTooLargeError(f"a Beaver triple of {work} multiply-adds is over worker {worker.id!r}'s max_triple_work of {limit}")
    elements = math.prod(shapes[0]) * _PADS_OF[kind] if kind == "compare" else math.prod(shapes[0]) + math.prod(shapes[1]) + math.prod(c_shape)
    dealt = 8 * elements * parties
    if dealt > worker.settings.max_message_bytes:
        raise RequestTooLargeError(
            f"a Beaver triple whose pads for {parties} parties are {dealt} bytes is over worker {worker.id!r}'s max_message_bytes "
            f"of {worker.settings.max_message_bytes}"
        )


@handles(StoreTriple)
def store_triple(worker: Worker, message: StoreTriple, reply: Reply) -> None:
    """Our shares of a Beaver triple: private (the client must never learn a pad), each usable in one product."""
    _check_holder(worker, message.holder)
    ids, shares = tuple(message.ids), tuple(message.shares)
    count = _PADS_OF.get(message.kind)
    if count is None or len(ids) != count or len(shares) != count or not all(isinstance(t, torch.Tensor) and t.dtype == ring.RING for t in shares):
        raise TypeError("a Beaver triple is three int64 tensors under three ids (a comparison's pads five)")
    a, b, c = shares[:3]
    if message.kind == "compare" and len({tuple(t.shape) for t in shares}) != 1:
        raise ValueError("a comparison's pads are shaped alike")
    if message.kind != "compare" and ring.product_shape(message.kind, a.shape, b.shape) != tuple(c.shape):
        raise ValueError("a triple's c is shaped as a * b (or a @ b)")
    for id in ids:
        if id in worker.store:
            raise DuplicateIdError(f"worker {worker.id!r} already holds an object under id {id}")
    for id, tensor in zip(ids, shares):
        check_kept_sizes(tensor)
        worker.store.put(id, tensor, holder=holder_key(message.holder))
        worker.privacy.mark(tensor, Facts(frozenset({UNRELEASED}), (_PADS,), worker.privacy.stamp(tensor)))
    key = ids[0]
    worker.triples[key] = _Triple(message.kind, ids, weakref.ref(a, lambda _: worker.triples.pop(key, None)))
    worker.leases.introduce(message.holder)
    reply.ok()


def _triple(worker: Worker, ids: tuple, kind: str, reply: Reply) -> tuple[_Triple, list[torch.Tensor]]:
    """The genuine triple stored under `ids` (the shares a crypto provider sent, not a copy), the caller's."""
    triple = worker.triples.get(ids[0]) if isinstance(ids, tuple) and len(ids) == _PADS_OF.get(kind) else None
    tensors = [worker.store.get(id) for id in ids] if triple is not None else []
    if triple is None or triple.ids != ids or triple.kind != kind or tensors[0] is not triple.a():
        raise PermissionError(f"no Beaver triple for {kind} is stored on {worker.id!r} under {ids}: ask a crypto provider for one")
    if not all(reply.caller in worker.store.entry(id).holders for id in ids):
        raise PermissionError(f"the Beaver triple under {ids} on {worker.id!r} is not yours")
    return triple, tensors


@handles(BeaverOpen)
def beaver_open(worker: Worker, message: BeaverOpen, reply: Reply) -> None:
    """x - a and y - b: what Beaver's protocol opens. Uniform (a, b are one-time pads the client
    never sees), so they leave; once per triple (a pad used twice would show x - x')."""
    triple, (a, b, *_) = _triple(worker, message.ids, message.kind, reply)
    if triple.opened:
        raise PermissionError(f"the Beaver triple under {message.ids} on {worker.id!r} was opened already: each masks one product")
    compare = message.kind == "compare"  # (one operand: x; the dealer's m stands for y)
    x = worker.store.get(message.x_id)
    y = x if compare else worker.store.get(message.y_id)
    for t, pad in ((x, a), (y, b if not compare else a)):
        if not isinstance(t, torch.Tensor) or t.dtype != ring.RING or tuple(t.shape) != tuple(pad.shape):
            raise ValueError(f"a Beaver product's operands are int64 shares shaped as its triple's ({tuple(pad.shape)})")
        if worker.privacy.is_private(t):
            # (a triple from a provider the client runs would unmask it: products of private shares are a later step)
            raise GetNotPermittedError(f"a share of private data on {worker.id!r} is not multiplied with a crypto provider's triple: only added")
    triple.opened = True
    # read: x and y alone (public, checked above); a and b are the pads whose one use this is
    opened = worker.privacy.run("fedq.beaver_open", lambda x, y, a, b: (x - a, None if compare else y - b), (x, y, a, b), {}, [x, y])
    reply.ok(opened)


@handles(BeaverClose)
def beaver_close(worker: Worker, message: BeaverClose, reply: Reply) -> None:
    """Our share of x * y, c + e b + a f (+ e f): a fresh uniform sharing of the product (c's pads)."""
    triple, pads = _triple(worker, message.ids, message.kind, reply)
    a, b, c = pads[:3]
    for id in message.ids:  # spent, whatever follows: the caller's pointers to it count for nothing now
        worker.store.decref(id, reply.caller)
    if not triple.opened or triple.closed:
        raise PermissionError(f"the Beaver triple under {message.ids} on {worker.id!r} closes once, after it was opened")
    e, f = message.e, (message.e if message.kind == "compare" else message.f)
    if not all(isinstance(t, torch.Tensor) and t.dtype == ring.RING for t in (e, f)) or e.shape != a.shape or f.shape != b.shape:
        raise ValueError("e and f are int64, shaped as the triple's a and b")
    if message.result_id in worker.store:
        raise DuplicateIdError(f"worker {worker.id!r} already holds an object under id {message.result_id}")
    triple.closed = True
    if message.kind == "compare":
        # Our share of t = m * d + w (d = e + a, c = a * m), blinded: it leaves, to be summed by the
        # caller; and under result_id our share of sigma, to turn [t > 0] into [d >= 0].
        _, m, c, w, sigma = pads
        t, sigma_share = worker.privacy.run("fedq.compare_close", lambda e, m, c, w, sigma: (e * m + c + w, sigma.clone()), (e, m, c, w, sigma), {}, [])
        worker.store.put(message.result_id, sigma_share, holder=reply.caller)
        reply.ok(t)
        return
    # read: nothing private (e, f are the caller's; the operands were public, BeaverOpen checked)
    z = worker.privacy.run("fedq.beaver_close", ring.beaver_close, (message.kind, e, f, a, b, c, bool(message.first)), {}, [])
    worker.store.put(message.result_id, z, holder=reply.caller)
    reply.ok()


# ---- requests that private objects leave, for the data owner to decide (requests.py)


def _approved_release(worker: Worker, entry: Any, id: int, reply: Reply) -> Any:
    """What the caller's `.get()` of object `id` takes by the owner's approval: None for a public
    object, or one the caller filed no request for; a named error when its request says no."""
    if not worker.privacy.holds_private(entry.obj):
        return None
    return worker.requests.release(id, entry.obj, reply.caller)


@handles(RequestRelease)
def request_release(worker: Worker, message: RequestRelease, reply: Reply) -> None:
    """A holder of a private object asks its data owner to let it leave: a pending request."""
    entry = worker.store.entry(message.id)
    if reply.caller not in entry.holders:
        raise PermissionError(f"object {message.id} on {worker.id!r} is not yours: only a holder of an object may request it")
    if isinstance(entry.obj, PointerSpec):  # (nothing private here: .get() peels it)
        raise RequestNotNeededError(
            f"object {message.id} on {worker.id!r} is a pointer to {entry.obj.location}:{entry.obj.id_at_location}: "
            "a request is filed where the data is (.get() the chain down to its last hop first)"
        )
    if not worker.privacy.holds_private(entry.obj):
        raise RequestNotNeededError(f"object {message.id} on {worker.id!r} is not private: .get() it, no request needed")
    name = reply.caller_name.rpartition("#")[0]  # (listings show names, never sessions)
    reply.ok(worker.requests.file(message.id, entry.obj, reply.caller, name, message.reason, worker.privacy.history(entry.obj)))


@handles(ListRequests)
def list_requests(worker: Worker, message: ListRequests, reply: Reply) -> None:
    _refuse_unless_owner(worker, reply, "lists the requests filed on")
    reply.ok(worker.requests.listing())


@handles(DecideRequest)
def decide_request(worker: Worker, message: DecideRequest, reply: Reply) -> None:
    _refuse_unless_owner(worker, reply, "approves or denies the requests filed on")
    reply.ok(worker.requests.decide(message.request_id, bool(message.approve), message.note))


def _refuse_unless_owner(worker: Worker, reply: Reply, what: str) -> None:
    if not reply.by_owner:
        raise PermissionError(
            f"only the data owner {what} worker {worker.id!r}: sign with its admin key (a worker this script "
            "started has it; a standing worker's is its config's admin key file), or run `fedq requests` on its host"
        )


# --------------------------------------------------------------------------- process entry


def run_worker(
    id: str,
    address: str,
    *,
    key: bytes | None = None,
    settings: WorkerSettings = DEFAULTS,
    incarnation: str | None = None,
    admin_key: bytes | None = None,
    **keywords: Any,
) -> None:
    """Run one worker in this process until it is told to stop, signalled, or orphaned, with
    `settings` (`keywords`, names of `WorkerSettings`' fields, laid over them).

    `incarnation` (hex) is the one the spawning parent drew for it, else a fresh one is drawn.
    Requests signed with `admin_key` (or FEDQ_ADMIN_KEY's) are its data owner's.

    The key comes from `key` or the FEDQ_KEY environment variable (hex): a parent passes
    it there, never on the command line, where other users could read it."""
    settings = settings_from(keywords, base=settings, where="run_worker", strict=True)
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.WARNING if settings.quiet else logging.INFO,
        format=f"%(asctime)s %(levelname)s [{id}] %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    key = key or key_from_environment()
    if key is None:
        raise SystemExit(f"worker {id}: no key (set FEDQ_KEY, or give the config a key file: see `fedq keygen`)")
    admin_key = admin_key or admin_key_from_environment()
    os.environ.pop(ADMIN_KEY_ENV, None)  # (read once: nothing run here later finds it)
    retain_freed_memory(settings.retained_free_bytes)
    if settings.max_memory_bytes is not None:
        cap_memory(settings.max_memory_bytes)
    use_threads(settings.threads)
    worker = Worker(
        id, address, key=key, settings=settings, incarnation=bytes.fromhex(incarnation) if incarnation else None, admin_key=admin_key
    )
    if settings.data:
        worker.load_data(settings.data)
    try:
        worker.serve()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM's handler above
        pass
    # Already stopping: a late SIGTERM must not interrupt the interpreter's own cleanup.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker.store.clear()  # (the loop closed the sockets on its way out)
    log.info("worker %s stopped", id)


def use_threads(threads: int | None) -> None:
    """Run torch's ops on `threads` threads, intra- and inter-op (settings.WorkerSettings.threads;
    the launcher resolves None to this worker's share of the cores; here None: all of them).
    Set before any op: torch fixes the inter-op pool at its first use."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # (already used in this process: a worker run in a test's process)
        pass


def cap_memory(max_bytes: int) -> None:
    """Cap what this process may map for data (settings.WorkerSettings.max_memory_bytes): past it an
    allocation fails here instead of the host running out. Set once torch and zmq are loaded."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and max_bytes > hard:
        raise ConfigError(f"max_memory_bytes = {max_bytes} is over this user's hard limit of {hard} (ulimit -d): ask for less")
    resource.setrlimit(resource.RLIMIT_DATA, (max_bytes, hard))


def main() -> None:
    """How launcher.py starts a child worker: its id, address, incarnation and settings are one JSON argument."""
    boot = json.loads(sys.argv[1])
    run_worker(boot["id"], boot["address"], settings=WorkerSettings.from_dict(boot["settings"]), incarnation=boot.get("incarnation"))


if __name__ == "__main__":
    main()
