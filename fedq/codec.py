"""The wire format: fedq's messages (messages.py) as signed ZeroMQ frames. Pure: no sockets, no I/O.

A message on the wire is a header frame, then one frame per out-of-band buffer::

    [signature | stamp | body,  buffer_0, buffer_1, ...]

- `signature` (32 bytes): HMAC-SHA256, under the federation's key (or, for the
  data owner's requests, the worker's admin key), of the rest of the header and
  of every buffer (Jupyter leaves its buffers unsigned; we do not): the buffers
  enter it as their GMAC tag under a one-time key derived from the key and the
  stamp. Checked in constant time before anything is unpickled.
- `stamp` (fixed size): the sender's session and message counter, so a replayed
  message is refused (`ReplayWindow`), and the second it was sealed, so that one
  older than `MAX_MESSAGE_AGE_SECONDS` is refused however many sessions the
  receiver has seen since; the *destination's* session, so a message
  replayed to another process, or to a restarted one, is refused too; `seq`, so
  that a signed message whose body is refused can still be answered with the
  reason; and how many buffers follow.

A process's session is its incarnation: 16 random bytes drawn when it starts (a
worker's may be drawn by the parent that spawns it, which then knows it). Being
random, it also names the process: nothing else listens under it. Peers learn it
from the stamp of anything the process sends, from the PointerSpecs that name it,
or by a hello: a lone `Ping` sealed to `NO_INCARNATION`, the one message accepted
without the receiver's incarnation (its answer, a `Hello`, says only the worker's id).
- `body`: a pickle (protocol 5) of the message; tensors in it are references to
  out-of-band buffers, one frame each, so a tensor's bytes are never copied into
  the body. Buffers under `INBAND_LIMIT` stay in the body.

One header frame, not three: every frame costs a pass through pyzmq on each side,
and a round trip of a small op is mostly such fixed costs. For the same reason what
a sender has queued for one receiver goes as one `Batch` (`seal_many`): one stamp
and one signature over several messages, each pickled and unpickled on its own, so
that one the receiver refuses is answered with a failure and spoils no other.

Unpickling goes through an exact allow-list (`safe_pickle`): fedq's messages,
tensors, torch dtypes and a few builtins. A cloudpickled function or class (code)
is refused unless the receiver allows code.

`seq` numbers a request on one connection; the reply to it carries the same
`seq`. Every request gets exactly one reply (`Ok` or `Failure`).
"""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import hashlib
import hmac
import io
import itertools
import math
import operator
import os
import pickle
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import cloudpickle
import torch
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import GCM

from .errors import ProtocolError
from .messages import INCARNATION_BYTES, MESSAGES, NO_INCARNATION, WIRE_CLASSES, Batch, Ping
from .safe_pickle import SafeUnpickler as _SafeUnpickler
from .settings import DEFAULTS

INBAND_LIMIT = 64 * 1024

# --------------------------------------------------------------------------- tensors


def _claimed_bytes(shape: Any, dtype: Any) -> int:
    """The bytes a tensor of `shape` and `dtype` holds. A ProtocolError for anything but a dtype
    and a tuple of sizes >= 0: what arrives is checked against it before anything is allocated."""
    if not isinstance(dtype, torch.dtype) or type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError(f"a tensor of shape {str(shape)[:100]} and dtype {str(dtype)[:40]} is not a tensor fedq sends")
    return math.prod(shape) * dtype.itemsize


def _rebuild_tensor(buffer: Any, dtype: torch.dtype, shape: tuple[int, ...], requires_grad: bool, grad: Any) -> torch.Tensor:
    raw = memoryview(buffer)
    claimed = _claimed_bytes(shape, dtype)
    if raw.nbytes != claimed:  # (else a few bytes could claim gigabytes)
        raise ProtocolError(f"a tensor of shape {shape} and dtype {dtype} holds {claimed} bytes, but {raw.nbytes} came with it")
    if raw.readonly:  # an in-band buffer arrives as bytes; tensors on a worker must be writable
        raw = memoryview(bytearray(raw))
    if raw.nbytes:
        flat = torch.frombuffer(raw, dtype=torch.uint8)
    else:
        flat = torch.empty(0, dtype=torch.uint8)
    tensor = flat.view(dtype).reshape(shape) if flat.numel() else torch.empty(shape, dtype=dtype)
    if requires_grad:
        tensor.requires_grad_(True)
    if grad is not None:
        tensor.grad = grad
    return tensor


def _reduce_tensor(tensor: torch.Tensor) -> tuple:
    data = tensor.detach()
    if not data.is_contiguous():
        data = data.contiguous()
    # A uint8 view exposes the bytes to numpy (zero-copy) whatever the dtype, bfloat16 included.
    raw = data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b""
    return (
        _rebuild_tensor,
        (pickle.PickleBuffer(raw), tensor.dtype, tuple(tensor.shape), tensor.requires_grad, tensor.grad if tensor.is_leaf else None),
    )


def _rebuild_meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _claimed_bytes(shape, dtype)  # (checked, not allocated: a meta tensor holds no memory)
    return torch.empty(shape, dtype=dtype, device="meta")


def _reduce_any_tensor(tensor: torch.Tensor) -> Any:
    if tensor.layout == torch.strided and not tensor.is_quantized and tensor.device.type == "cpu":
        return _reduce_tensor(tensor)
    if tensor.device.type == "meta":  # a shape without values (what a private object shows)
        return (_rebuild_meta, (tuple(tensor.shape), tensor.dtype))
    return tensor.__reduce_ex__(5)  # sparse, quantized...: torch's own pickling, in band


def _reduce_memory_format(memory_format: torch.memory_format) -> str:
    """`torch.preserve_format` as the global `torch preserve_format`, as dtypes go: left to
    itself pickle names it `torch._utils` + `torch.preserve_format`, a path through a module."""
    return str(memory_format).removeprefix("torch.")


def _by_fields(cls: type) -> Callable[[Any], tuple]:
    """Pickle a message as its class and its field values, in order: a third smaller and
    faster both ways than the default (the instance's __dict__, key by key)."""
    names = tuple(field.name for field in dataclasses.fields(cls))
    if not names:
        return lambda message: (cls, ())
    values = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda message: (cls, (values(message),))
    return lambda message: (cls, values(message))


#: how fedq pickles its own values, whichever pickler: a message as a call of its class (which a
#: receiver's unpickler hands out as a stand-in of it: `safe_pickle`), never pickle's NEWOBJ
_REDUCERS: dict[type, Callable[[Any], Any]] = {
    torch.Tensor: _reduce_any_tensor,
    torch.nn.Parameter: _reduce_any_tensor,
    torch.memory_format: _reduce_memory_format,
    **{cls: _by_fields(cls) for cls in WIRE_CLASSES},
}


class _Pickler(pickle.Pickler):
    """The C pickler, with tensors going out of band. Looking reducers up by exact type keeps
    every other object on the C fast path (a reducer_override would run Python for each)."""

    dispatch_table = {**copyreg.dispatch_table, **_REDUCERS}


class _Pickling:
    """A pickler with its output and the out-of-band buffers it set aside: made once per
    thread and reused (making one costs a third of pickling a small message)."""

    def __init__(self, pickler_class: type = _Pickler) -> None:
        self.out = io.BytesIO()
        self.buffers: list = []
        self.busy = False
        self.pickler = pickler_class(self.out, protocol=5, buffer_callback=self._keep_out_of_band)

    def _keep_out_of_band(self, buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < INBAND_LIMIT:
            return True  # pickle it in-band
        self.buffers.append(buffer.raw())
        return False

    def dump(self, message: Any) -> bytes:
        self.buffers.clear()
        try:
            self.pickler.dump(message)
            return self.out.getvalue()
        finally:
            self.pickler.clear_memo()  # the memo holds what was pickled: a sent tensor must not live on here
            self.out.seek(0)
            self.out.truncate()

    def take_buffers(self) -> list:
        buffers, self.buffers = self.buffers, []
        return buffers


_PER_THREAD = threading.local()


def _thread_pickling() -> _Pickling:
    pickling = getattr(_PER_THREAD, "pickling", None)
    if pickling is None:
        pickling = _PER_THREAD.pickling = _Pickling()
    return pickling


class _CodePickler(cloudpickle.Pickler):
    """For messages the C pickler refuses (a lambda, a local function): cloudpickle pickles
    them by value. Only a worker started with allow_code will unpickle them."""

    def reducer_override(self, obj: Any) -> Any:
        reduce = _REDUCERS.get(type(obj))
        if reduce is not None:
            return reduce(obj)
        return super().reducer_override(obj)


# --------------------------------------------------------------------------- frames

#: sender's session, destination's session, message counter, second it was sealed (Unix time), seq, number of buffers
_STAMP = struct.Struct("!16s16sQIQI")
_LENGTH = struct.Struct("!Q")
_GMAC_NONCE = bytes(12)  # each one-time key signs one message: a fixed nonce is safe
_GMAC_CHUNK = 1 << 30
SIGNATURE_BYTES = 32
MAX_FRAMES = 1 + 65536  # a header and its buffers: a stranger must not make us walk millions of empty frames
MAX_BATCH = 1024  # messages a sender puts in one Batch
DEFAULT_MAX_MESSAGE_BYTES = DEFAULTS.max_message_bytes
#: seconds a signed message stays good after it was sealed: an older one is refused (a replay,
#: whoever kept it). Four times the default call timeout: a message that waited longer
#: in a busy worker's queue has been given up on already. Environment: FEDQ_MAX_MESSAGE_AGE.
MAX_MESSAGE_AGE_SECONDS = float(os.environ.get("FEDQ_MAX_MESSAGE_AGE", 4 * DEFAULTS.timeout))
#: seconds a sender's clock may run ahead of the receiver's (hosts' clocks differ a little)
MAX_CLOCK_SKEW_SECONDS = 30.0


def new_key() -> bytes:
    """A fresh random federation key (what `fedq keygen` writes), or admin key."""
    return os.urandom(32)


def new_incarnation() -> bytes:
    """A process's session: random, so it names one process in one life."""
    return os.urandom(INCARNATION_BYTES)


class Origin(NamedTuple):
    """Who sent a message that checked out: what its answer is sealed to, and whether it
    was signed with the receiver's admin key (a request of the data owner)."""

    session: bytes
    by_owner: bool
    hello: bool = False  # sealed to no incarnation: a lone Ping, answered with a Hello only


class ReplayWindow:
    """Which stamps were seen: each is accepted once, and only while it is fresh.

    A stamp says the second it was sealed: one older than `max_age` seconds, or more than
    `max_skew` ahead of our clock, is refused. So a session need only be remembered
    `max_age + max_skew` seconds after the last message taken from it: by then all it sent
    is stale. Within a session, a counter more than WINDOW behind the highest seen, or seen
    before, is a replay. At most SESSIONS sessions are kept; when every one of them was
    heard from more recently than that, a new session is refused (forgetting one instead
    would let its messages be taken again), until one goes quiet.
    """

    WINDOW = 4096
    SESSIONS = 4096
    _FULL = (1 << WINDOW) - 1  # a session's counters seen, as WINDOW bits: 512 bytes however it sends

    def __init__(self, max_age: float = MAX_MESSAGE_AGE_SECONDS, max_skew: float = MAX_CLOCK_SKEW_SECONDS, sessions: int = SESSIONS) -> None:
        self.max_age, self.max_skew, self.sessions = max_age, max_skew, sessions
        self.remembered = max_age + max_skew
        # session -> [highest counter, which of the WINDOW below it were seen (bits), when a message
        # of it was last taken]; least recent first
        self._sessions: collections.OrderedDict[bytes, list] = collections.OrderedDict()

    def check(self, session: bytes, counter: int, sealed_at: int, now: float | None = None) -> str | None:
        """None if the stamp is fresh and not seen before (it is recorded), else why it is refused."""
        if now is None:
            now = time.time()
        if not now - self.max_age <= sealed_at <= now + self.max_skew:
            return (
                f"a message sealed {now - sealed_at:.0f} s ago refused (taken from {-self.max_skew:.0f} to {self.max_age:.0f} s): "
                "a replay, or the two hosts' clocks differ (synchronise them, e.g. with NTP)"
            )
        entry = self._sessions.get(session)
        if entry is None:
            if len(self._sessions) >= self.sessions and not self._forget_quiet(now):
                return (
                    f"a new session refused: {self.sessions} sessions were heard from in the last {self.remembered:.0f} s "
                    "(retry once some go quiet)"
                )
            self._sessions[session] = [counter, 1, now]
            return None
        highest, seen = entry[0], entry[1]
        if counter > highest:  # the window slides: bit i of `seen` is counter highest - i
            shift = counter - highest
            entry[0], entry[1] = counter, ((seen << shift) | 1) & self._FULL if shift < self.WINDOW else 1
        else:
            behind = highest - counter
            if behind >= self.WINDOW or seen >> behind & 1:
                return "replayed message refused"
            entry[1] = seen | 1 << behind
        self._sessions.move_to_end(session)
        entry[2] = now
        return None

    def _forget_quiet(self, now: float) -> bool:
        """Forget the sessions not heard from for `remembered` seconds; is there room now?"""
        sessions = self._sessions
        while sessions and next(iter(sessions.values()))[2] < now - self.remembered:
            sessions.popitem(last=False)
        return len(sessions) < self.sessions


@dataclass
class Packed:
    """A pickled message waiting to be stamped and signed: for the process whose session is
    `to`, and with `admin_key` instead of the federation key when it is the data owner's."""

    seq: int
    body: Any  # bytes-like
    buffers: list
    to: bytes | None = None  # None: not chosen yet (whoever seals it for an address fills it in)
    admin_key: bytes | None = None


class Codec:
    """Turns messages into signed frames and back, for one process and one key.

    `session` is this process's incarnation: what others seal their messages to us to. A
    receiver holding `admin_key` (a worker) also takes messages signed with that key, and
    says so (`Origin.by_owner`): its owner's requests.

    `pack` may be called from any thread; `seal` (hence `encode`) and `decode` each from
    one thread only: the one that owns the sockets.
    """

    def __init__(
        self,
        key: bytes,
        *,
        admin_key: bytes | None = None,
        session: bytes | None = None,
        allow_code: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if len(key) < 16 or (admin_key is not None and len(admin_key) < 16):
            raise ValueError("a fedq key must be at least 16 bytes")
        if session is not None and (len(session) != INCARNATION_BYTES or session == NO_INCARNATION):
            raise ValueError(f"a session is {INCARNATION_BYTES} random bytes")
        self._key = key
        self._admin_key = admin_key if admin_key != key else None
        self._pid, self._session = os.getpid(), session or new_incarnation()
        self._counter = itertools.count(1)
        self._replays = ReplayWindow()
        self.allow_code = allow_code
        self.max_message_bytes = max_message_bytes

    @property
    def session(self) -> bytes:
        """This process's incarnation (a forked child draws its own at its first `seal`)."""
        return self._session

    def _sign(self, signed: Any, buffers: list, key: bytes) -> bytes:
        """HMAC-SHA256 over the header after the signature (stamp and body) and the buffers.
        The buffers enter it through their GMAC tag (AES-GCM authenticating them as associated
        data, encrypting nothing) under a one-time AES key derived from the key and the stamp
        (unique per message, so a fixed nonce is never reused under one key; the stamp also
        fixes how many buffers follow): keyed, every byte covered, at ~20 GB/s on one core
        here (AES and carry-less multiply in hardware), where SHA-256 does ~1.7 and Poly1305
        ~12. Moving tensors at memory speed needs it."""
        if not buffers:
            return hmac.digest(key, signed, "sha256")
        one_time_key = hmac.digest(key, b"fedq one-time key" + bytes(signed[: _STAMP.size]), "sha256")
        gmac = Cipher(AES(one_time_key), GCM(_GMAC_NONCE)).encryptor()
        for buffer in buffers:
            view = memoryview(buffer)
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
            gmac.authenticate_additional_data(_LENGTH.pack(view.nbytes))
            for start in range(0, view.nbytes, _GMAC_CHUNK):  # (OpenSSL takes under 2 GiB a call)
                gmac.authenticate_additional_data(view[start : start + _GMAC_CHUNK])
        gmac.finalize()
        mac = hmac.new(key, signed, hashlib.sha256)
        mac.update(gmac.tag)
        return mac.digest()

    def encode(self, seq: int, message: Any, to: bytes = NO_INCARNATION, *, admin_key: bytes | None = None) -> list:
        """`(seq, message)` as signed frames for the process whose session is `to` (by default
        none: a hello, taken only if it is a Ping): the header, then one frame per large buffer."""
        return self.seal(self.pack(seq, message, to, admin_key=admin_key))

    def pack(self, seq: int, message: Any, to: bytes | None = None, *, admin_key: bytes | None = None) -> "Packed":
        """Pickle `message` (any thread): the slow half of `encode`."""
        pickling = _thread_pickling()
        if not pickling.busy:  # (busy: a reducer packs while we pack; it gets a pickler of its own)
            pickling.busy = True
            try:
                return Packed(seq, pickling.dump(message), pickling.take_buffers(), to, admin_key)
            except (pickle.PicklingError, AttributeError, TypeError):
                pass  # code (a lambda, a local function): cloudpickle below
            finally:
                pickling.busy = False
        fresh = _Pickling(_CodePickler)
        return Packed(seq, fresh.dump(message), fresh.take_buffers(), to, admin_key)

    def seal(self, packed: "Packed") -> list:
        """Stamp and sign a packed message right before it is sent. Counters are taken in
        send order, so a receiver sees them (nearly) in order whoever packed first."""
        if os.getpid() != self._pid:  # a forked child must not repeat its parent's stamps
            self._pid, self._session, self._counter = os.getpid(), new_incarnation(), itertools.count(1)
        if packed.to is None:
            raise ValueError("a message sealed for no destination: set Packed.to to the receiver's session")
        stamp = _STAMP.pack(self._session, packed.to, next(self._counter), int(time.time()), packed.seq, len(packed.buffers))
        header = bytearray(SIGNATURE_BYTES) + stamp
        header += packed.body
        key = self._key if packed.admin_key is None else packed.admin_key
        header[:SIGNATURE_BYTES] = self._sign(memoryview(header)[SIGNATURE_BYTES:], packed.buffers, key)
        return [header, *packed.buffers]

    def seal_many(self, packed: list["Packed"]) -> list:
        """Several packed messages, all for one destination and signed alike, as one `Batch`:
        one stamp and one signature for all of them (the receiver's `decode_all` takes it
        apart). A single message is sealed as itself."""
        if len(packed) == 1:
            return self.seal(packed[0])
        first = packed[0]
        if any(p.to != first.to or p.admin_key is not first.admin_key for p in packed):
            raise ValueError("one batch goes to one destination, signed with one key")
        out = io.BytesIO()
        _Pickler(out, protocol=5).dump(Batch(tuple((p.seq, bytes(p.body), len(p.buffers)) for p in packed)))
        return self.seal(Packed(0, out.getbuffer(), [buffer for p in packed for buffer in p.buffers], first.to, first.admin_key))

    def decode(self, frames: list) -> tuple[int, Any]:
        """Inverse of `encode`, for one message (not a Batch). Frames may be bytes,
        memoryviews or zmq.Frame objects.

        Raises ProtocolError, before unpickling anything, for a message that is too
        large, unsigned, wrongly signed, addressed to another process (or an earlier
        incarnation of this one) or replayed; and for one whose body is not a fedq
        message or names anything outside the allow-list (then `error.seq` says
        which request to answer: the sender did hold the key).
        """
        seq, body, buffers, origin = self._open(frames)
        return seq, self._open_hello(seq, body, buffers) if origin.hello else self._unpickle(seq, body, buffers)

    def _open_hello(self, seq: int, body: memoryview, buffers: list) -> "Ping":
        """A message sealed to no incarnation is taken only as a hello, a lone Ping (its answer,
        a `Hello`, is all it gets); anything else is dropped unanswered: it may be a stranger's
        replay of what a key holder sent another process."""
        try:
            message = self._unpickle(seq, body, buffers)
        except ProtocolError as error:
            error.seq = None
            raise
        if type(message) is not Ping:
            raise ProtocolError(f"a {type(message).__name__} sealed to no incarnation (only a lone Ping, a hello, may be): dropped")
        return message

    def receive(self, frames: list) -> tuple[Origin | None, list[tuple[int | None, Any]]]:
        """Who sent the frames (None: refused whole), and (seq, message) for each message
        they carry: what a receiver handles one by one. A refused message comes as (seq,
        ProtocolError): answer it if its seq is known; a refusal of the whole as
        (error.seq, ProtocolError)."""
        try:
            seq, body, buffers, origin = self._open(frames)
        except ProtocolError as error:
            return None, [(error.seq, error)]
        try:
            return origin, self._messages(seq, body, buffers, origin.hello)
        except ProtocolError as error:
            return (None if error.seq is None else origin), [(error.seq, error)]

    def decode_all(self, frames: list) -> list[tuple[int, Any]]:
        """Inverse of `seal` and `seal_many`: (seq, message) for each message the frames carry.
        A message of a batch that is refused comes as (seq, ProtocolError), and the others
        still count. Raises ProtocolError, as `decode` does, when the whole is refused."""
        seq, body, buffers, origin = self._open(frames)
        return self._messages(seq, body, buffers, origin.hello)

    def decode_each(self, frames: list) -> list[tuple[int | None, Any]]:
        """`decode_all`, with a refusal of the whole also as an item, (error.seq, ProtocolError)."""
        return self.receive(frames)[1]

    def _messages(self, seq: int, body: memoryview, buffers: list, hello: bool) -> list:
        if hello:
            return [(seq, self._open_hello(seq, body, buffers))]
        message = self._unpickle(seq, body, buffers, batch=True)
        if type(message) is not Batch:
            return [(seq, message)]
        try:
            items = [(int(item_seq), memoryview(item_body), int(count)) for item_seq, item_body, count in message.items]
        except (TypeError, ValueError) as error:
            raise ProtocolError(f"a malformed batch: {error}") from None
        if any(count < 0 for _, _, count in items) or sum(count for _, _, count in items) != len(buffers):
            raise ProtocolError("a batch whose messages do not account for its buffers")
        decoded: list[tuple[int, Any]] = []
        start = 0
        for item_seq, item_body, count in items:
            try:
                decoded.append((item_seq, self._unpickle(item_seq, item_body, buffers[start : start + count])))
            except ProtocolError as error:
                decoded.append((item_seq, error))
            start += count
        return decoded

    def _open(self, frames: list) -> tuple[int, memoryview, list, Origin]:
        """Check size, signature, destination, stamp and replay: (seq, pickled body, buffers,
        who sent it; `Origin.hello`: sealed to no incarnation, so a lone Ping or nothing).
        The federation key is tried first (every client request); the admin key
        only for what it does not sign."""
        if not frames or len(frames) > MAX_FRAMES:
            raise ProtocolError(f"a message of {len(frames)} frames (1 to {MAX_FRAMES})")
        header, buffers = memoryview(_as_buffer(frames[0])), [memoryview(_as_buffer(f)) for f in frames[1:]]
        size = header.nbytes + sum(b.nbytes for b in buffers)
        if size > self.max_message_bytes:
            raise ProtocolError(f"message of {size} bytes is over the {self.max_message_bytes}-byte limit")
        if header.nbytes < SIGNATURE_BYTES + _STAMP.size:
            raise ProtocolError("a message too short for a signature and a stamp")
        signed = header[SIGNATURE_BYTES:]
        by_owner = False
        if not hmac.compare_digest(header[:SIGNATURE_BYTES], self._sign(signed, buffers, self._key)):
            by_owner = self._admin_key is not None and hmac.compare_digest(
                header[:SIGNATURE_BYTES], self._sign(signed, buffers, self._admin_key)
            )
            if not by_owner:
                raise ProtocolError("bad signature: the sender does not hold this federation's key")
        session, destination, counter, sealed_at, seq, count = _STAMP.unpack(signed[: _STAMP.size])
        hello = destination == NO_INCARNATION
        if destination != self._session and not hello:
            raise ProtocolError("a message sealed to another process, or to an earlier incarnation of this one: a replay")
        if count != len(buffers):
            raise ProtocolError(f"the stamp says {count} buffers follow, not {len(buffers)}")
        refusal = self._replays.check(session, counter, sealed_at)
        if refusal is not None:  # (unanswered: it may be a stranger's replay of what a key holder sent)
            raise ProtocolError(refusal)
        return seq, signed[_STAMP.size :], buffers, Origin(session, by_owner, hello)

    def _unpickle(self, seq: int, body: memoryview, buffers: list, *, batch: bool = False) -> Any:
        try:
            message = (pickle.Unpickler if self.allow_code else _SafeUnpickler)(io.BytesIO(body), buffers=buffers).load()
        except ProtocolError as error:
            error.seq = seq
            raise
        except Exception as error:
            raise ProtocolError(f"undecodable message: {type(error).__name__}: {error}", seq=seq) from None
        if not isinstance(message, MESSAGES) and not (batch and type(message) is Batch):
            raise ProtocolError(f"not a fedq message: {type(message).__name__}", seq=seq)
        return message


def _as_buffer(frame: Any) -> Any:
    return getattr(frame, "buffer", frame)

