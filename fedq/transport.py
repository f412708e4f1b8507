"""Sockets and event loops. Every socket here is used by one thread at a time.

- A worker runs `ServerLoop` on its main thread: one ROUTER bound on the
  worker's address for requests, plus one DEALER per other worker it relays to.
- The user's process has `ClientSockets`: one DEALER per worker, fed from a
  thread-safe outbox (a dying pointer never does I/O) and driven by whichever thread
  waits for an answer (leader/follower), or by a background thread when none does.

Frames smaller than `codec.INBAND_LIMIT` are copied (cheaper than zmq's
zero-copy bookkeeping); larger ones go zero-copy in both directions.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import zmq

from .codec import INBAND_LIMIT, MAX_BATCH, MAX_FRAMES
from .errors import ConfigError
from .interrupts import HeldInterrupt, interrupted
from .messages import NO_INCARNATION

log = logging.getLogger("fedq.transport")

POLL_MS = 50  # longest a loop sleeps before looking at timers, deletes and children
BATCH = 256  # pipelined messages queued before the caller sends them without waiting
BATCH_BYTES = 1 << 20  # a batch of several messages stays under this (what any receiver takes)


def context() -> zmq.Context:
    return zmq.Context.instance()


def runtime_dir() -> Path:
    """A directory only this user can read, for ipc endpoints."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"fedq-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    # (/tmp is anyone's: another user may have made it first, or a link there. Root's chmod
    # succeeds on it, but its owner could still rename our sockets' directories and take their paths.)
    st = os.lstat(base)
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{base} is not this user's own directory (uid {st.st_uid}, or a link): remove it, or set XDG_RUNTIME_DIR")
    os.chmod(base, 0o700)
    return base


#: messages a socket queues from one peer before it stops reading from it (back-pressure,
#: nothing dropped): a peer cannot grow a worker's memory by sending faster than it serves.
RECEIVE_QUEUE = 100_000


#: How a dead tcp connection (a cut link, a host gone) is noticed and a new one made, in ms.
#: Without these a request sent into a dead link waits on TCP's own retransmission backoff:
#: after a 30 s outage, ~20 s more. Each connection pings every HEARTBEAT_IVL, so a dead link
#: always has data unacknowledged, and TCP_MAXRT (TCP_USER_TIMEOUT on Linux) closes a
#: connection whose data goes unacknowledged that long; the dialling side then dials again
#: every RECONNECT_IVL, backing off to RECONNECT_IVL_MAX, each try given up after
#: CONNECT_TIMEOUT (a SYN into a dead link otherwise waits ~2 min). What was in the closed
#: connection is lost: calls fail by their timeouts, as they would have anyway.
#: Not the heartbeat's own timeout: libzmq 4.3 counts only whole messages as traffic, so it
#: closed a connection carrying one large message (8 MiB over 20 Mbit/s, cut after 0.8 s with
#: a 0.6 s timeout, and the message lost); unset, it defaults to HEARTBEAT_IVL. Hence an hour.
TRANSPORT_SETTINGS = {
    zmq.HEARTBEAT_IVL: 1000,
    zmq.HEARTBEAT_TIMEOUT: 3_600_000,
    zmq.TCP_MAXRT: 5000,
    zmq.RECONNECT_IVL: 100,
    zmq.RECONNECT_IVL_MAX: 1000,
    zmq.CONNECT_TIMEOUT: 2000,
}
#: The same for an ipc endpoint (this machine): a failed connect there is one syscall, and the
#: worker behind it is usually one we just started, binding once its imports are done (seconds
#: for a fresh interpreter or a cold zygote): found within 50 ms of binding, not 1 s later.
LOCAL_RECONNECT = {zmq.RECONNECT_IVL: 10, zmq.RECONNECT_IVL_MAX: 50}


def _tune(sock: zmq.Socket) -> None:
    # Our own outgoing queue is bounded by what our code sends: a dropped request or reply
    # would leave its caller waiting for nothing, so never drop on the send side.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in TRANSPORT_SETTINGS.items():
        sock.setsockopt(option, value)


def send_frames(sock: zmq.Socket, frames: list, prefix: list | None = None) -> int:
    """Send one multipart message; returns the payload bytes (routing prefix excluded)."""
    parts = (prefix or []) + frames
    last = len(parts) - 1
    total = 0
    for i, part in enumerate(parts):
        size = memoryview(part).nbytes
        if i >= len(prefix or []):
            total += size
        sock.send(part, zmq.SNDMORE if i < last else 0, copy=size < INBAND_LIMIT)
    return total


def recv_frames(sock: zmq.Socket, copied: int) -> list:
    """Receive one multipart message without blocking: the first `copied` frames as bytes
    (routing id, header), the rest zero-copy when large. Raises zmq.Again when none waits."""
    frame = sock.recv(zmq.NOBLOCK, copy=False)  # (a Frame says whether more follow: no getsockopt per frame)
    parts: list = [frame.bytes]
    while frame.more:
        frame = sock.recv(copy=False)
        if len(parts) > MAX_FRAMES:  # a message no fedq peer sends: drained, not kept (decode refuses it)
            continue
        parts.append(frame.bytes if len(parts) < copied or len(frame) < INBAND_LIMIT else frame)
    return parts


@dataclass
class CurveKeys:
    """CURVE encryption for one process: its own key pair, the public key of each server it
    may connect to (by the address it is reached at, read from `id`.key when first dialled:
    a host holds only the public keys of the peers it dials), and the directory of public
    keys it accepts as a server."""

    public: bytes
    secret: bytes
    ids: dict[str, str]  # address -> id, of every server it may dial (a config's workers)
    accepted_dir: str
    servers: dict[str, bytes] = field(default_factory=dict)  # address -> public key, once read

    @classmethod
    def load(cls, directory: str | Path, me: str, peers: dict[str, str]) -> "CurveKeys":
        """Keys made by `fedq keygen --curve`: `me`.key_secret now, and `id`.key for each peer
        {id: address} when it is first dialled."""
        import zmq.auth

        directory = Path(directory).expanduser()
        try:
            public, secret = zmq.auth.load_certificate(directory / f"{me}.key_secret")
        except (OSError, ValueError) as error:
            raise ConfigError(f"CURVE keys missing in {directory} ({error}): run `fedq keygen --curve`") from None
        if secret is None:
            raise ConfigError(f"{directory / (me + '.key_secret')} holds no secret key: copy this host its own .key_secret")
        return cls(public, secret, {address: id for id, address in peers.items()}, str(directory))

    def server_key(self, address: str) -> bytes:
        """The public key of the worker reached at `address` (its advertised address, as the config says)."""
        import zmq.auth

        server = self.servers.get(address)
        if server is not None:
            return server
        id = self.ids.get(address)
        if id is None:
            raise ConfigError(f"no CURVE public key for the worker at {address}: it is not in the federation's config")
        path = Path(self.accepted_dir) / f"{id}.key"
        try:
            server = self.servers[address] = zmq.auth.load_certificate(path)[0]
        except (OSError, ValueError) as error:
            raise ConfigError(f"no CURVE public key for worker {id!r} at {address} ({error}): copy {id}.key (`fedq keygen --curve` made it) to {path}") from None
        return server

    def as_client(self, sock: zmq.Socket, address: str) -> None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.public, self.secret, self.server_key(address)

    def as_server(self, sock: zmq.Socket) -> Any:
        """Encrypt `sock` and let in only clients whose public key is in `accepted_dir` (ZAP)."""
        from zmq.auth.thread import ThreadAuthenticator

        authenticator = ThreadAuthenticator(context())
        authenticator.start()
        authenticator.configure_curve(domain="*", location=self.accepted_dir)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = self.secret, self.public, True
        return authenticator


def client_name() -> str:
    """What a user's process calls itself to workers ("me:4242@host"); a worker goes by its id."""
    return f"me:{os.getpid()}@{socket.gethostname()}"


@functools.lru_cache(maxsize=4096)  # asked for every object a request creates or frees
def peer_name(routing_id: bytes) -> str:
    """The name a peer introduced itself by (its routing id, less the suffix that keeps it unique)."""
    return routing_id.decode("utf-8", "replace").rpartition("#")[0] or "?"


class PeerSockets:
    """DEALER sockets to other processes, one per address, created on first use. Each
    introduces itself as `name` (its routing id, made unique by a random suffix): a worker
    counts the references it holds for others under these names (`fedq ls`)."""

    def __init__(self, poller: zmq.Poller, name: str, curve: CurveKeys | None = None) -> None:
        self._poller = poller
        self.name = name
        self.curve = curve
        self.by_address: dict[str, zmq.Socket] = {}
        self.address_of: dict[zmq.Socket, str] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.sent_at: dict[str, float] = {}  # address -> when we last sent there (leases renew when idle)

    def socket(self, address: str) -> zmq.Socket:
        sock = self.by_address.get(address)
        if sock is None:
            sock = context().socket(zmq.DEALER)
            _tune(sock)
            if address.startswith("ipc://"):
                for option, value in LOCAL_RECONNECT.items():
                    sock.setsockopt(option, value)
            sock.setsockopt(zmq.ROUTING_ID, f"{self.name}#{os.urandom(4).hex()}".encode())
            if self.curve is not None:
                self.curve.as_client(sock, address)
            sock.connect(address)
            self.by_address[address] = sock
            self.address_of[sock] = address
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def send(self, address: str, frames: list) -> None:
        self.bytes_sent += send_frames(self.socket(address), frames)
        self.sent_at[address] = time.monotonic()

    def drain(self, sock: zmq.Socket, limit: int = 10_000) -> list[list]:
        """The messages waiting on a socket the poller found readable (at most `limit`)."""
        messages = []
        try:
            while len(messages) < limit:
                frames = recv_frames(sock, copied=1)
                self.bytes_received += sum(len(f) for f in frames)
                messages.append(frames)
                # Asking whether another waits costs half of what an empty recv's Again does.
                if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                    break
        except zmq.Again:
            pass
        return messages

    def close(self) -> None:
        for sock in self.by_address.values():
            self._poller.unregister(sock)
            sock.close(0)
        self.by_address.clear()
        self.address_of.clear()


def refuse_unprotected_endpoint(address: str, curve: "CurveKeys | None", *, insecure_plaintext: bool = False) -> None:
    """Refuse to listen where a stranger could make the worker hold unbounded memory.

    libzmq buffers a multipart message whole before the first frame reaches us, and its
    MAXMSGSIZE bounds a frame, not how many come: one peer sending frames that never end
    grows the worker until it dies. So nobody may reach the socket but who we let in: with
    CURVE, the handshake drops a peer whose key is not accepted before any message is
    buffered; without it, only an ipc endpoint under a directory no other user can enter
    (mode 700), loopback tcp (open to this host's local users: see the README's security
    model; `max_memory_bytes` bounds what they can do) and inproc are allowed, unless the
    owner says `insecure_plaintext` (then it is logged as a warning, every start)."""
    if curve is not None or address.startswith("inproc://"):
        return
    if address.startswith("ipc://"):
        path = address[len("ipc://"):]
        if path and path[0] not in "@*" and _under_private_directory(os.path.abspath(path)):
            return
        where = "an ipc endpoint in a directory only this user can enter (ipc://{runtime}/NAME.sock in a config)"
    else:
        host = address.partition("://")[2].rpartition(":")[0].strip("[]")
        if address.startswith("tcp://") and _is_loopback(host):
            return
        where = "loopback (tcp://127.0.0.1:PORT) or an ipc endpoint (ipc://{runtime}/NAME.sock)"
    if insecure_plaintext:
        log.warning(
            "INSECURE: listening on %s without CURVE (--insecure-plaintext): every message to and from this worker is "
            "readable on the network, and anyone who reaches the port can make it buffer unbounded memory", address,
        )
        return
    raise ConfigError(
        f"a worker will not listen on {address} without CURVE: anyone who can reach it could make it buffer "
        "unbounded memory before any signature is checked. Turn CURVE on (`curve = true` in the config's "
        f"[federation], then `fedq keygen --curve`), or listen on {where}; or, knowing all this, pass "
        "--insecure-plaintext (`insecure_plaintext = true`)"
    )


def _under_private_directory(path: str) -> bool:
    """Is some directory above `path` ours and closed to group and others (no one else can
    reach a socket under it)?"""
    directory = os.path.dirname(path)
    while True:
        try:
            st = os.stat(directory)
        except OSError:
            return False
        if st.st_uid == os.getuid() and not st.st_mode & 0o077:
            return True
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # `*`, an interface name: not only this host
        return False


class ServerLoop:
    """A worker's event loop: requests on the ROUTER, replies from peers on DEALERs.

    `on_request(identity, frames)` and `on_peer_reply(address, frames)` run on
    this thread and must not block; `on_batch_end()` runs after each batch of
    requests (to coalesce replies); `on_tick()` runs every POLL_MS or so.
    """

    def __init__(
        self,
        address: str,
        name: str,
        on_request: Callable[[bytes, list], None],
        on_peer_reply: Callable[[str, list], None],
        on_tick: Callable[[], None],
        max_message_bytes: int | None = None,
        on_batch_end: Callable[[], None] = lambda: None,
        curve: CurveKeys | None = None,
        *,
        insecure_plaintext: bool = False,
    ) -> None:
        refuse_unprotected_endpoint(address, curve, insecure_plaintext=insecure_plaintext)
        self.poller = zmq.Poller()
        self.router = context().socket(zmq.ROUTER)
        _tune(self.router)
        self._authenticator = curve.as_server(self.router) if curve is not None else None
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if max_message_bytes:  # libzmq drops the connection of a peer that sends a larger frame
            self.router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.router.bind(address)
        self.address = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.poller.register(self.router, zmq.POLLIN)
        self.peers = PeerSockets(self.poller, name, curve=curve)
        self._on_request = on_request
        self._on_peer_reply = on_peer_reply
        self._on_tick = on_tick
        self._on_batch_end = on_batch_end
        self.running = True

    def reply(self, identity: bytes, frames: list) -> None:
        try:
            send_frames(self.router, frames, prefix=[identity])
        except zmq.ZMQError as error:  # the caller went away: nothing to tell it
            log.info("reply to a disconnected peer dropped: %s", error)

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        next_tick = time.monotonic()
        try:
            while self.running:
                events = dict(self.poller.poll(POLL_MS))
                if self.router in events:
                    self._requests()
                    if not self.running:
                        return
                self._peer_replies(events)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + POLL_MS / 1000
                    self._on_tick()
        finally:
            self.peers.close()
            self.router.close(0)
            if self._authenticator is not None:
                self._authenticator.stop()

    # (Methods, not the loop's body: what a batch received is freed when they return, not held
    # by a loop variable until the next batch comes, however large and whoever sent it.)
    def _requests(self) -> None:
        for frames in self.peers.drain(self.router, limit=1000):
            self._on_request(frames[0], frames[1:])
            if not self.running:
                break
        self._on_batch_end()

    def _peer_replies(self, events: dict) -> None:
        for sock, address in list(self.peers.address_of.items()):
            if sock in events:
                for frames in self.peers.drain(sock):
                    self._on_peer_reply(address, frames)


@dataclass(slots=True)
class _Flush:
    sent: bool = False  # set (under cv) by the leader once everything queued before it is sent


class ClientSockets:
    """The user process's DEALER sockets (one per worker), driven by whichever thread waits.

    Leader/follower: at any moment at most one thread *leads* (owns every socket; taking
    the lead under `cv` is the memory barrier zmq asks of a socket changing threads). A
    thread that waits for an answer leads if nobody does: it sends what is queued, polls,
    and hands every reply to `on_replies` itself, so a round trip costs no hand-off to
    another thread and back. Other waiting threads follow (sleep on `cv`) and take over
    when the leader is done. A background thread leads only once callers have left the
    sockets alone for POLL_MS: it sends the deletes of pointers that died and reads late
    replies. Ctrl-C is held while a thread leads (interrupts.py).

    `submit` and `enqueue` only append to a deque (never I/O); everything queued goes out
    in order. What `enqueue` queues is an update (refs.py: a delete, a hand-over): each
    `take()`s to (address, update), or None if it was cancelled; one worker's are gathered
    into one message a batch (`encode_ref_updates`), sent before the next request there.
    """

    def __init__(
        self,
        name: str,
        on_send: Callable[[int, Any], None],
        on_replies: Callable[[str, list[list]], None],
        encode_ref_updates: Callable[[str, list[Any]], Any],
        seal: Callable[[str, list[Any]], list],
        on_tick: Callable[[], None],
    ) -> None:
        self.cv = threading.Condition()  # guards the lead, and what waiters wait on (the client's calls)
        self._on_send = on_send
        self._on_replies = on_replies
        self._encode_ref_updates = encode_ref_updates
        self._seal = seal
        self._on_tick = on_tick
        self._outbox: collections.deque = collections.deque()
        self.enqueue: Callable[[Any], None] = self._outbox.append  # (C code: a weakref callback may be it)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poller = zmq.Poller()
        self._poller.register(self._wake_r, zmq.POLLIN)
        self.peers = PeerSockets(self._poller, name)
        self._leading = False
        self._background_leads = False
        self._followers = 0
        self._closed = False
        self._caller_active_at = 0.0  # the background keeps out for POLL_MS after a caller led or asked to
        self._next_tick = time.monotonic()
        self._wake_sent = False  # a wake-up is in the pipe: don't write one per submit
        self._stopping = threading.Event()
        self._background = threading.Thread(target=self._run_background, name="fedq-io", daemon=True)

    def start(self) -> None:
        self._background.start()

    # ---- any thread, no I/O
    def submit(self, address: str, message: Any, call: Any, *, urgent: bool = True, may_pass_updates: bool = False) -> None:
        """Queue a packed message for `address`; `on_send(seq, call)` runs right before it is
        sent (sealed by `seal(address, packed)`, for that address's incarnation). An urgent one is sent by the wait that follows it; a pipelined
        one (`urgent=False`) goes out with the next wait, once BATCH have queued, or after
        POLL_MS. Reference updates queued before it go first, unless `may_pass_updates`: then
        they go at the end of the batch. One append: a Ctrl-C leaves it queued or not at all."""
        self._outbox.append((address, message, call, may_pass_updates))
        if not urgent and len(self._outbox) >= BATCH:
            self._send_batch()

    def queued_for_others(self, address: str | None) -> bool:
        """Is a request to another worker than `address` queued but not sent yet?"""
        return any(type(item) is tuple and item[0] != address for item in list(self._outbox))

    # ---- I/O, on the calling thread when it can lead
    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Drive the sockets (or follow whoever does) until `done()`, checked under `cv`, holds;
        False after `timeout` seconds. Ctrl-C is held while the lead changes hands and during
        each turn (at most POLL_MS), so it never lands between taking a message and handing
        it on; it is raised as soon as the turn is over."""
        deadline = time.monotonic() + timeout
        with self._lead_session(done, deadline) as (outcome, held):
            if outcome != "leading":
                return outcome == "done"  # (done() may not hold any more: another thread may have queued since)
            while not interrupted(held):
                self._pump(max(0.0, min(deadline - time.monotonic(), POLL_MS / 1000)))
                with self.cv:
                    if done():
                        return True
                if time.monotonic() >= deadline:
                    return False
            return False  # (interrupted: leaving the session raises KeyboardInterrupt)

    def flush(self, timeout: float) -> None:
        """Return once everything queued so far is sent (by this thread, or by the leader)."""
        marker = _Flush()
        self._outbox.append(marker)
        self._one_turn(lambda: marker.sent, time.monotonic() + timeout)

    def _send_batch(self) -> None:
        """A batch of pipelined requests is queued: send it, and read what has arrived
        meanwhile, if the sockets are free; otherwise their leader is told to."""
        self._one_turn(None, 0.0)

    def _one_turn(self, done: Callable[[], bool] | None, deadline: float) -> None:
        with self._lead_session(done, deadline) as (outcome, _):
            if outcome == "leading":
                self._pump(0.0)

    @contextlib.contextmanager
    def _lead_session(self, done: Callable[[], bool] | None, deadline: float) -> Iterator[tuple[str, HeldInterrupt | None]]:
        """Hold Ctrl-C, try to take the lead (`_take_lead`), and on leaving give the lead back
        and let a held Ctrl-C happen."""
        held = HeldInterrupt.hold()
        try:
            outcome = self._take_lead(done, deadline, held)
            try:
                yield outcome, held
            finally:
                if outcome == "leading":
                    self._drop_lead()
        finally:
            if held is not None:
                held.release()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the background thread and close the sockets (taking the lead to do so)."""
        self._stopping.set()
        self._wake()
        if self._background.is_alive() and threading.current_thread() is not self._background:
            self._background.join(timeout)
        if self._take_lead(None, time.monotonic() + timeout, None) == "leading":
            self.peers.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
            with self.cv:  # the lead is never given back: nothing touches the closed sockets
                self._closed = True
                self.cv.notify_all()

    # ---- the lead
    def _take_lead(
        self, done: Callable[[], bool] | None, deadline: float, held: HeldInterrupt | None
    ) -> Literal["leading", "done", "gave up"]:
        """Become the leader, unless `done()` holds first (as a follower), `deadline` passes
        or a Ctrl-C was noted meanwhile (`held`)."""
        with self.cv:
            while True:
                if done is not None and done():
                    return "done"
                if self._closed or interrupted(held):
                    return "gave up"
                if not self._leading:
                    self._leading = True
                    self._background_leads = threading.current_thread() is self._background
                    return "leading"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._outbox:
                        self._wake()  # the leader sends what we queued
                    return "gave up"
                self._wake()  # the leader sends what we queued, and lets go if it is the background
                self._caller_active_at = time.monotonic()  # (the background then keeps out a while)
                self._followers += 1
                try:
                    self.cv.wait(min(remaining, POLL_MS / 1000))  # (bounded: a noted Ctrl-C is seen soon)
                finally:
                    self._followers -= 1

    def _drop_lead(self) -> None:
        with self.cv:
            self._leading = False
            if not self._background_leads:
                self._caller_active_at = time.monotonic()
            if self._followers:
                self.cv.notify_all()

    def _wake(self) -> None:
        if self._wake_sent or self._wake_w < 0:
            return
        self._wake_sent = True
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the leader is awake already

    # ---- the leader only
    def _pump(self, timeout: float) -> None:
        """One turn: send the queue, poll up to `timeout` s (less if woken), deliver replies."""
        self._send_outbox()
        events = dict(self._poller.poll(timeout * 1000 if not self._outbox else 0))
        if self._wake_r in events:
            try:
                while os.read(self._wake_r, 65536):
                    pass
            except BlockingIOError:
                pass
            self._wake_sent = False  # (after draining: a wake written meanwhile stays in the pipe)
            self._send_outbox()
        for sock, address in list(self.peers.address_of.items()):
            if sock in events:
                messages = self.peers.drain(sock)
                if messages:
                    self._on_replies(address, messages)
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + POLL_MS / 1000
            self._on_tick()

    def _send_outbox(self) -> None:
        """Send everything queued, in order per worker: what goes to one worker travels as one
        message (`seal` makes one of several: one signature, one send, one wake-up at each end)."""
        updates: dict[str, list[Any]] = {}
        batches = Batches(self.peers, self._seal)
        outbox = self._outbox
        while outbox:
            item = outbox.popleft()
            kind = type(item)
            if kind is tuple:
                address, message, call, may_pass_updates = item
                if address in updates and not may_pass_updates:  # earlier updates go first
                    self._add_ref_updates(batches, {address: updates.pop(address)})
                self._on_send(message.seq, call)
                batches.add(address, message)
            elif kind is _Flush:
                self._add_ref_updates(batches, updates)
                batches.send()
                with self.cv:
                    item.sent = True
                    self.cv.notify_all()
            else:  # a reference update (`enqueue`)
                taken = item.take()
                if taken is not None:
                    updates.setdefault(taken[0], []).append(taken[1])
        self._add_ref_updates(batches, updates)
        batches.send()

    def _add_ref_updates(self, batches: "Batches", updates: dict[str, list[Any]]) -> None:
        for address, batch in updates.items():
            batches.add(address, self._encode_ref_updates(address, batch))
        updates.clear()

    # ---- the background thread
    def _run_background(self) -> None:
        """Lead while no caller does: the deletes of pointers that died go out within about POLL_MS
        of a caller's last wait, and replies nobody waits for are read."""
        try:
            while not self._stopping.is_set():
                with self.cv:
                    idle = not self._leading and time.monotonic() - self._caller_active_at >= POLL_MS / 1000
                    if idle:
                        self._leading, self._background_leads = True, True
                if not idle:
                    self._stopping.wait(POLL_MS / 1000)
                    continue
                try:
                    self._pump(POLL_MS / 1000)
                finally:
                    self._drop_lead()
        except Exception:  # pragma: no cover - a bug here must be loud, not a silent hang
            log.exception("fedq I/O thread crashed")
            raise


class Batches:
    """Packed messages gathered per address; each address's are sealed together (`seal`)
    and sent as one message (one signature, one send, one wake-up at each end): at most
    MAX_BATCH messages, MAX_FRAMES frames and, past the first, BATCH_BYTES bytes each (a
    receiver refuses a message over its size limit: two large tensors go apart). One batch
    is for one destination incarnation and signed with one key (`Packed.to`, `.admin_key`):
    a message that differs from the one before it starts the next, in order; a hello (sealed
    to no incarnation) always goes alone, as the receiver takes nothing else with it."""

    def __init__(self, peers: PeerSockets, seal: Callable[[str, list[Any]], list]) -> None:
        self._peers = peers
        self._seal = seal
        self._packed: dict[str, list[Any]] = {}
        self._frames: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def add(self, address: str, packed: Any) -> None:
        gathered = self._packed.setdefault(address, [])
        frames = 1 + len(packed.buffers)
        size = len(packed.body) + sum(memoryview(buffer).nbytes for buffer in packed.buffers)
        if gathered and (
            len(gathered) == MAX_BATCH or self._frames[address] + frames > MAX_FRAMES or self._bytes[address] + size > BATCH_BYTES
            or packed.to != gathered[-1].to or packed.admin_key is not gathered[-1].admin_key or packed.to == NO_INCARNATION
        ):
            self._peers.send(address, self._seal(address, gathered))
            gathered = self._packed[address] = []
            self._frames[address] = self._bytes[address] = 0
        gathered.append(packed)
        self._frames[address] = self._frames.get(address, 0) + frames
        self._bytes[address] = self._bytes.get(address, 0) + size

    def send(self) -> None:
        for address, gathered in self._packed.items():
            self._peers.send(address, self._seal(address, gathered))
        self._packed.clear()
        self._frames.clear()
        self._bytes.clear()
