"""The user's process ("me"): requests in flight, their replies, and when to wait.

Commands are pipelined: `submit` queues a request (it is registered as in flight
when it is sent); nothing waits. Reads (`request`) wait, driving the sockets themselves while they do
(`transport.ClientSockets`), and first make sure they will see every earlier
write (read-your-writes):

- requests to the *same* worker need no wait: one connection is FIFO and a
  worker handles its requests in order;
- requests to *other* workers may reach this one by a relay, so a read waits
  until those are answered (a relaying worker answers only once the next hop has).

A pipelined request that fails is not lost: its error is raised, with the
worker's traceback, at the next wait of this client.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import os
import threading
import warnings
from typing import Any

from .calls import InFlight, answers_in
from .codec import INBAND_LIMIT, Codec, Packed, new_key
from .errors import (
    ConfigError,
    FedqError,
    WorkerDiedError,
    WorkerRestartedError,
    WorkerUnreachableError,
    rebuild_remote_error,
)
from .keys import key_from_environment
from .messages import NO_INCARNATION, Failure, Leave, Ping, Renew, references_in, wire_name
from .peers import Peers
from .refs import RefUpdates
from .settings import DEFAULTS
from .transport import Batches, ClientSockets, client_name

log = logging.getLogger("fedq.client")

#: seconds a call waits by default: the workers' (settings.py), unless FEDQ_TIMEOUT says otherwise
TIMEOUT_ENV = "FEDQ_TIMEOUT"
DEFAULT_TIMEOUT = float(os.environ.get(TIMEOUT_ENV, DEFAULTS.timeout))


class Call:
    """One request in flight. `waited`: someone will wait for it and see its error.
    `quiet`: a failure is only logged (a delete to a worker that is gone frees nothing).
    `hands_over`: its answer carries references for the caller; `abandoned`: nobody will
    take them (its wait was interrupted), so they are given back when the answer comes."""

    __slots__ = ("address", "done", "value", "error", "waited", "quiet", "hands_over", "abandoned")

    def __init__(self, address: str, waited: bool, quiet: bool = False, hands_over: bool = False) -> None:
        self.address = address
        self.done = False
        self.value: Any = None
        self.error: FedqError | None = None
        self.waited = waited
        self.quiet = quiet
        self.hands_over = hands_over
        self.abandoned = False


class Client:
    """The local worker, "me": holds no objects, only pointers to them."""

    id = "me"
    is_local = True  # (a worker handle is not: sending to me is keeping)

    def __init__(self, key: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.key = key
        self.codec = Codec(key)
        # Requests in flight; a late answer to one given up on gives back the references it hands over.
        self._calls: InFlight[Call] = InFlight(self._finish, self._give_back)
        self._pending: collections.Counter[str] = collections.Counter()  # requests in flight, deletes excepted
        self._pending_deletes: collections.Counter[str] = collections.Counter()
        self._deferred: list[FedqError] = []
        self._seq = itertools.count(1)
        self._waits = 0  # how many times the caller waited for a worker (round trips it felt)
        # Workers are known here by address alone (peers.py); their handles are handle.py's (`Workers`).
        self.peers = Peers(hello=lambda address, timeout: self.wait(self._submit(address, Ping(), wait=True, to=NO_INCARNATION), timeout))
        self._closed = False
        self.name = client_name()  # how workers list the references this process holds
        self._io = ClientSockets(self.name, self._on_send, self._on_replies, self._encode_ref_updates, self._seal, self._on_tick)
        self._cv = self._io.cv  # what waiters wait on: calls finish under it
        self.refs = RefUpdates(self._io.enqueue)  # our references' deletes and hand-overs (refs.py)
        self._io.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"<Client id:{self.id} as {self.name}>"

    @property
    def is_client_worker(self) -> bool:
        """PySyft 0.2's flag: a client worker keeps none of the objects it makes in its own
        store (the user's code holds them). fedq's "me" always is one: it has no store, and
        nobody can reach it; objects live on workers, each a process of its own."""
        return True

    @is_client_worker.setter
    def is_client_worker(self, value: bool) -> None:
        if not value:  # (PySyft's Plans tutorial sets it so that "me" can store a plan's state)
            warnings.warn(
                "fedq's local worker stores no objects, so it stays a client worker: is_client_worker = False "
                "changes nothing (plans are traced here and run on workers without it; to hold objects others "
                "reach, start a VirtualWorker)",
                stacklevel=2,
            )

    # ---- workers known to this client (the rest: `self.peers`, peers.py)
    def use_key(self, key: bytes) -> None:
        """Join a federation that has its own key: possible until this client has met a worker."""
        if key == self.key:
            return
        if self.peers.knows_workers():
            raise ConfigError(
                "this process already talks to workers under another key; one process joins one federation "
                "(set FEDQ_KEY to the federation's key before starting workers from it)"
            )
        self.key = key
        self.codec = Codec(key)

    def use_curve(self, keys: Any) -> None:
        """Encrypt every connection with CURVE (a federation across hosts); before the first."""
        if self.peers.knows_workers() and self._io.peers.curve is None:
            raise ConfigError("this process already talks to workers unencrypted; switch to CURVE before the first one")
        self._io.peers.curve = keys

    @property
    def holder_name(self) -> str:
        """How a message names this process as a holder ("me:4242@host#session"): workers count our
        references under the session, which only our own signed messages carry (store.py)."""
        return wire_name(self.name, self.codec.session)

    def stats(self) -> dict[str, int]:
        """Transport counters of this process: every byte to and from workers passes here.
        `requests_in_flight`: what this process asked and has no answer to yet;
        `ref_updates_in_flight`: deletes and hand-overs (reference bookkeeping) not yet answered."""
        with self._cv:
            requests, updates = sum(self._pending.values()), sum(self._pending_deletes.values())
        return {
            "bytes_sent": self._io.peers.bytes_sent,
            "bytes_received": self._io.peers.bytes_received,
            "requests_in_flight": requests,
            "ref_updates_in_flight": updates,
            "waits": self._waits,
        }

    # ---- sending
    def submit(self, address: str, message: Any, *, wait: bool = False, quiet: bool = False) -> Call:
        """Send a request without waiting; `wait=True` if the caller will `wait()` on it. `quiet`:
        bookkeeping that changes nothing a read could see (a worker's threads): no read waits for
        it (read-your-writes), and a failure is only logged, as a delete's is."""
        if self._closed:
            raise FedqError("this fedq client is closed (the interpreter is exiting)")
        if address not in self.peers.incarnations:
            self.peers.incarnation_of(address)
        return self._submit(address, message, wait=wait, quiet=quiet)

    def _submit(self, address: str, message: Any, *, wait: bool, to: bytes | None = None, quiet: bool = False) -> Call:
        """`submit`, sealed to `to` (None: the worker's incarnation when it is sent); an owner's
        action is signed with the worker's admin key if we hold it."""
        admin_key = self.peers.admin_key_of(address) if message.owner_action else None
        packed = self.codec.pack(next(self._seq), message, to, admin_key=admin_key)
        call = Call(address, wait, quiet=quiet, hands_over=message.hands_over)
        # Registered when it is sent (`_on_send`), not here: a Ctrl-C between the two steps
        # must not leave a request that was registered but never queued (waited for in vain).
        self._io.submit(address, packed, call, urgent=wait, may_pass_updates=not wait and _allocates_little(message))
        return call

    def request(
        self, address: str, message: Any, timeout: float | None = None, *, after_all: bool = False, after_deletes: bool = False
    ) -> Any:
        """A read: wait for earlier writes that could reach `address`, ask, and wait for the answer.

        `after_all` also waits for earlier requests to `address` itself: needed when the
        answer depends on a relay that `address` may still have out (a chain's result).
        `after_deletes` also waits for deletes: only a listing of what a worker holds can
        tell (a delete never touches an object some pointer still holds)."""
        self.barrier(except_address=None if after_all else address, timeout=timeout, deletes=after_deletes)
        if address not in self.peers.incarnations:  # (a hello first: its answer names the worker, nothing more)
            self.peers.incarnation_of(address, timeout)
        return self.wait(self.submit(address, message, wait=True), timeout)

    def request_many(self, requests: list[tuple[str, Any]], timeout: float | None = None) -> list[Any]:
        """Several reads at once: one barrier, all sent, all awaited (one round trip, not N).
        Every answer is awaited before the first error, if any, is raised."""
        calls = self.calls_many(requests, timeout)
        first_error = next((call.error for call in calls if call.error is not None), None)
        if first_error is not None:  # the caller gets none of the answers: give back what they hand over
            for call in calls:
                self._abandon(call)
            raise first_error
        return [call.value for call in calls]

    def calls_many(self, requests: list[tuple[str, Any]], timeout: float | None = None) -> list[Call]:
        """`request_many`'s calls, each answered (its `value` or its `error`), for a caller that
        acts on each answer that came (a batch of moves: those that moved are relocated). One
        barrier and one wait for all of them, however many workers they go to: the caller waited
        once. An earlier pipelined error, or a worker that stays silent, is raised as `wait` raises it."""
        addresses = {address for address, _ in requests}
        self.barrier(except_address=next(iter(addresses)) if len(addresses) == 1 else None, timeout=timeout)
        for address in addresses:
            self.peers.incarnation_of(address, timeout)
        calls = [self.submit(address, message, wait=True) for address, message in requests]
        # (the longest of theirs, as barrier: each may have its config's)
        limit = max((self.peers.timeouts.get(call.address, self.timeout) for call in calls), default=self.timeout) if timeout is None else timeout
        self._waits += 1
        try:
            if not self._io.wait_until(lambda: all(call.done for call in calls), limit):
                with self._cv:
                    raise self._give_up([call.address for call in calls if not call.done], limit)
            self._raise_deferred()
        except BaseException:  # (Ctrl-C too) nobody takes these answers: give back what they hand over
            for call in calls:
                self._abandon(call)
            raise
        return calls

    def _on_send(self, seq: int, call: Call) -> None:  # runs where the sockets are driven, before sending
        with self._cv:
            self._calls.add(seq, call)
            (self._pending_deletes if call.quiet else self._pending)[call.address] += 1

    def _encode_ref_updates(self, address: str, updates: list[Any]) -> Packed:  # runs where the sockets are driven
        seq = next(self._seq)
        self._on_send(seq, Call(address, False, quiet=True))
        return self.codec.pack(seq, self.refs.message(updates))

    def _seal(self, address: str, packed: list[Packed]) -> list:  # runs where the sockets are driven
        """Seal for the incarnation of the worker at `address` we know now (NO_INCARNATION if
        none: the worker drops it, unless it is a hello)."""
        to = self.peers.incarnations.get(address, NO_INCARNATION)
        for one in packed:
            if one.to is None:
                one.to = to
        return self.codec.seal_many(packed)

    # ---- waiting
    def wait(self, call: Call, timeout: float | None = None) -> Any:
        """The answer to `call`; raises its error, or an earlier pipelined one first."""
        limit = self.peers.timeouts.get(call.address, self.timeout) if timeout is None else timeout
        self._waits += 1
        try:
            answered = self._io.wait_until(lambda: call.done, limit)
        except BaseException:  # Ctrl-C: what the answer hands over would be held by nobody
            self._abandon(call)
            raise
        if not answered:
            with self._cv:
                raise self._give_up([call.address], limit)
        self._raise_deferred()
        if call.error is not None:
            raise call.error
        return call.value

    def barrier(self, except_address: str | None = None, timeout: float | None = None, *, deletes: bool = False) -> None:
        """Wait until every request sent so far is answered, except those to `except_address`
        and, unless `deletes`, the deletes (and hand-overs: reference bookkeeping)."""
        limit = self.timeout if timeout is None else timeout
        if deletes:  # (a flush, always: an update the leader has taken but not sent yet is in no queue to look at)
            self._io.flush(limit)  # every update queued so far is a sent, registered request now
        if self._io.queued_for_others(except_address):
            self._io.flush(limit)  # registers them: only sent requests are counted as in flight

        def others_busy() -> list[str]:
            busy = [a for a, n in self._pending.items() if n and a != except_address]
            if deletes:
                busy += [a for a, n in self._pending_deletes.items() if n and a != except_address]
            return busy

        with self._cv:
            busy = others_busy()
            self._waits += bool(busy)
        if timeout is None and busy:  # (the longest of theirs: each may have its config's)
            limit = max(self.peers.timeouts.get(address, self.timeout) for address in busy)
        if busy and not self._io.wait_until(lambda: not others_busy(), limit):
            with self._cv:
                raise self._give_up(others_busy(), limit)
        self._raise_deferred()

    def sync(self, timeout: float | None = None) -> None:
        """Wait for every pipelined request (deletes too) to finish; raise the first that failed."""
        self.barrier(None, timeout, deletes=True)

    def _give_up(self, addresses: list[str], limit: float) -> WorkerUnreachableError:
        """Fail every request still waiting on `addresses` (called with the lock held): a silent
        worker must not hold up the next wait too. A late answer is then ignored."""
        names = ", ".join(f"{self.peers.name_of(a)!r} at {a}" for a in sorted(set(addresses)))
        error = WorkerUnreachableError(
            f"worker {names} did not answer within {limit:g}s "
            "(it is down, busy, or does not share this process's key: a worker drops what it cannot verify)"
        )
        self._fail_calls(set(addresses), error, defer=False)
        return error

    def _fail_calls(self, addresses: set[str], error: FedqError, *, defer: bool) -> None:
        def failure(call: Call) -> Failure:
            if not defer:
                call.waited = True  # the error is raised right now, not at the next wait
            return Failure(type(error).__name__, type(error).__module__, str(error), "", self.peers.name_of(call.address))

        if self._calls.fail_peers(addresses, failure):
            self._cv.notify_all()

    def _raise_deferred(self) -> None:
        if not self._deferred:
            return
        with self._cv:
            errors, self._deferred = self._deferred, []
        if not errors:
            return
        first = errors[0]
        for later in errors[1:]:
            first.add_note(f"a later pipelined request failed too: {type(later).__name__}: {str(later).splitlines()[0]}")
        raise first

    # ---- where the sockets are driven (a waiting caller, or the background thread)
    def _on_replies(self, address: str, messages: list[list]) -> None:
        answers: list[tuple[int, Any]] = []
        restarted = False
        name = self.peers.name_of(address)

        def dropped(error: Exception) -> None:
            log.warning("dropped a reply from %s: %s", address, error)

        for frames in messages:
            origin, replies = self.codec.receive(frames)
            if origin is not None and origin.session != self.peers.incarnations.get(address):
                restarted |= self.peers.learn_incarnation(address, origin.session)
            answers.extend(answers_in(replies, name, dropped))
        with self._cv:
            for seq, message in answers:
                # (not in flight: answered already, its worker declared dead or given up on)
                if not self._calls.answer(seq, message):
                    self.peers.learn_lease(address, seq, message)  # a heartbeat's answer: the lease there
            if restarted:  # what is still waiting was sealed to the old incarnation: dropped there
                self._fail_calls({address}, WorkerRestartedError(self.peers.restarted[address]), defer=True)
            self._cv.notify_all()
        self.peers.heard_from(address)

    def _finish(self, call: Call, message: Any) -> None:
        pending = self._pending_deletes if call.quiet else self._pending
        pending[call.address] -= 1
        if not pending[call.address]:
            del pending[call.address]
        if isinstance(message, Failure):
            call.error = rebuild_remote_error(message.type_name, message.module, message.message, message.traceback, message.worker)
            if message.type_name == "ObjectNotFoundError" and call.address in self.peers.restarted:
                call.error.add_note(self.peers.restarted[call.address])  # (an old pointer's object: gone with the restart)
            if call.quiet:
                log.warning("%s", str(call.error).splitlines()[0])
            elif not call.waited:
                self._deferred.append(call.error)
        else:
            call.value = message.value
            if call.hands_over:  # pointers to other workers name their incarnation: no hello needed there
                self.peers.learn_from_pointers(references_in(call.value))
            if call.abandoned:
                self._give_back(call.value)
        call.done = True

    def _abandon(self, call: Call) -> None:
        """Nobody will take `call`'s answer: give back what it hands over, now or when it comes."""
        with self._cv:
            if not call.hands_over or call.abandoned:
                return
            call.abandoned = True
            if call.done:
                self._give_back(call.value)

    def _give_back(self, value: Any) -> None:
        """Delete the references an answer handed over that no pointer will hold (refs.py)."""
        self.refs.give_back(value)

    def _renew_leases(self) -> None:  # where the sockets are driven
        """A Renew to each worker `Peers.to_renew` names (unregistered: a silent worker holds up no wait)."""
        batches = None
        for address in self.peers.to_renew(self._io.peers.sent_at):
            seq = next(self._seq)
            self.peers.renewing(address, seq)
            batches = batches or Batches(self._io.peers, self._seal)
            batches.add(address, self.codec.pack(seq, Renew()))
        if batches is not None:
            try:
                batches.send()
            except Exception as error:  # (an address zmq refuses: its requests fail where they are sent)
                log.debug("a lease renewal was not sent: %s", error)

    def _probe_quiet_workers(self) -> None:  # where the sockets are driven
        """A hello to each worker `Peers.to_probe` names: what waits on a restarted one fails at once (`_on_replies`)."""
        with self._cv:
            waited_on = [a for a, n in self._pending.items() if n]
        for address in self.peers.to_probe(waited_on):
            packed = self.codec.pack(next(self._seq), Ping(), NO_INCARNATION)
            self._io.submit(address, packed, Call(address, False, quiet=True))  # (only queued: sent this turn)

    def _on_tick(self) -> None:
        if not self._closed:
            self._renew_leases()
            self._probe_quiet_workers()
        self.peers.poll_children()
        if self.peers.dead:
            with self._cv:
                for address, why in self.peers.dead.items():
                    self._fail_calls({address}, WorkerDiedError(why), defer=True)

    # ---- shutdown
    def close(self, timeout: float = 2.0) -> None:
        """Stop the workers this process started and close the sockets. Bounded: never hangs."""
        if self._closed:
            return
        try:
            outliving = [a for a in self.peers.names if a not in self.peers.children]
            if outliving:
                # Workers we did not start outlive us: give queued deletes a moment to reach them,
                # then say we are gone, so what we still point at is freed now, not a lease later.
                try:
                    self.barrier(timeout=min(timeout, 1.0), deletes=True)
                    self.request_many([(address, Leave()) for address in outliving], timeout=min(timeout, 1.0))
                except FedqError:
                    pass
        finally:
            self._closed = True
            self.refs.close()
            self._io.stop(timeout)
            self.peers.stop_children(timeout)


def _allocates_little(message: Any) -> bool:
    """A pipelined op whose results are small (or in place) may reach its worker before the
    deletes queued ahead of it: they then share one message instead of one each. A delete
    only ever frees what no later request names, and every read still goes after it; only a
    large allocation must wait for the memory those deletes free."""
    made = message.result_bytes()
    return made is not None and made < INBAND_LIMIT


_client: Client | None = None
_client_lock = threading.Lock()


def local_client() -> Client:
    """The process-wide client ("me"), made on first use."""
    global _client
    with _client_lock:
        if _client is None or _client._closed:
            _client = Client(key_from_environment() or new_key())
        return _client
