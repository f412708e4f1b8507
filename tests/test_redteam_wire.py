"""The red team's wire findings, as attacks on real worker processes over raw zmq DEALER sockets.

- A signed pickle whose BUILD sets attributes on a global the allow-list hands out (a fedq
  class, `_rebuild_tensor`, a dtype...) must change nothing the worker uses afterwards.
- A captured message must not be taken again however many sessions a key holder churns
  through in between (the replay window used to forget the oldest session past 4096).
- A captured hello (the one message taken without the worker's incarnation) gets an answer
  that says the worker's id and nothing else, and a stale one gets no answer at all.
"""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
import torch as th
import zmq

import fedq as sy
from fedq import messages as msg, safe_pickle
from fedq.codec import MAX_CLOCK_SKEW_SECONDS, MAX_MESSAGE_AGE_SECONDS, SIGNATURE_BYTES, Codec, Packed, ReplayWindow, _STAMP
from helpers import raw_dealer

QUIET_MS = 500  # how long a worker that answers nothing is listened to


@pytest.fixture(scope="module")
def target(hook):
    worker = sy.VirtualWorker(hook, id="redteam_wire")
    worker.ping(timeout=60)
    yield worker
    worker.shutdown()


def _ask(sock: zmq.Socket, codec: Codec, frames: list, timeout_ms: int = 10_000) -> list | None:
    """Send `frames`; the (seq, answer) pairs of the reply, or None if none came."""
    sock.send_multipart(frames)
    if not sock.poll(timeout_ms):
        return None
    return [(seq, answer) for seq, answer in msg.answers(*codec.decode(sock.recv_multipart()))]


def _global(module: str, name: str) -> bytes:
    return b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode() + b"\x93"


def _build_on(module: str, name: str, *, slots: bool) -> bytes:
    """A pickle: GLOBAL module.name; BUILD with a state that would replace its `__init__`, its
    `from_exception` and `__reduce_ex__` by fedq.messages.Ref (as slot state: setattr; else its
    __dict__); POP; then a plain Ping(): the message the worker answers, if it takes it."""
    entries = b"".join(
        b"\x8c" + bytes([len(attribute)]) + attribute + _global("fedq.messages", "Ref") + b"s"
        for attribute in (b"__init__", b"from_exception", b"__reduce_ex__", b"zz_probe")
    )
    state = (b"N}" + entries + b"\x86") if slots else (b"}" + entries)
    return b"\x80\x05" + _global(module, name) + state + b"b0" + _global("fedq.messages", "Ping") + b")R."


def _sealed_at(codec: Codec, seconds: float, seq: int, message, to: bytes) -> list:
    """`message` signed by a key holder as if it had been sealed at Unix time `seconds`."""
    body = codec.pack(seq, message, to).body
    stamp = _STAMP.pack(codec.session, to, 1, int(seconds), seq, 0)
    header = bytearray(SIGNATURE_BYTES) + stamp + body
    header[:SIGNATURE_BYTES] = codec._sign(memoryview(header)[SIGNATURE_BYTES:], [], codec._key)
    return [bytes(header)]


def _still_serves(hook, worker) -> None:
    """Another client's work is right, and a failing request still gets its named failure."""
    x = th.tensor([1.0, 2.0]).send(worker)
    assert th.equal((x + x).get(), th.tensor([2.0, 4.0]))
    assert th.equal(th.arange(100_000.0).send(worker).get(), th.arange(100_000.0))  # rebuilt by _rebuild_tensor
    with pytest.raises(sy.ObjectNotFoundError):
        sy.local_client().request(worker.address, msg.GetObject(123_456_789))
    assert worker.ping().id == worker.id


# --------------------------------------------------------------------------- finding 1: BUILD on an allowed global


def test_a_build_on_any_allowed_global_changes_nothing_in_the_worker(hook, target):
    codec = Codec(hook.local_worker.key)  # a key holder, on its own socket
    sock = raw_dealer(target.address)
    seq = 0
    try:
        for module, name in safe_pickle.allowed():
            for slots in (True, False):
                seq += 1
                answers = _ask(sock, codec, codec.seal(Packed(seq, _build_on(module, name, slots=slots), [], target.incarnation)))
                assert answers is not None, (module, name)  # answered: the worker is alive
                [(answered, answer)] = answers
                assert answered == seq, (module, name)
                # refused, or harmless: then the Ping after it was answered as a Ping always is
                refused = isinstance(answer, msg.Failure) and answer.type_name in ("ProtocolError", "CodeNotAllowedError")
                assert refused or (isinstance(answer, msg.Ok) and isinstance(answer.value, msg.WorkerStatus)), (module, name, answer)
        # what the BUILDs would have broken: constructing messages, describing failures, rebuilding tensors
        [(_, answer)] = _ask(sock, codec, codec.encode(seq + 1, msg.GetObject(987_654_321), target.incarnation))
        assert isinstance(answer, msg.Failure) and answer.type_name == "ObjectNotFoundError", answer
    finally:
        sock.close()
    _still_serves(hook, target)


def test_the_unpickler_hands_out_nothing_a_build_can_change():
    """The same BUILDs, here: every allowed object is the same afterwards (or the pickle is refused)."""
    for (module, name), value in safe_pickle.allowed().items():
        before = dict(vars(value)) if hasattr(value, "__dict__") else None
        for slots in (True, False):
            try:
                safe_pickle.SafeUnpickler(io.BytesIO(_build_on(module, name, slots=slots))).load()
            except Exception:
                pass  # refused
            assert not hasattr(value, "zz_probe"), (module, name)
            assert (dict(vars(value)) if hasattr(value, "__dict__") else None) == before, (module, name)
    assert msg.Failure.from_exception(ValueError("x"), "w").type_name == "ValueError"


# --------------------------------------------------------------------------- finding 9: replays after session churn


def test_a_replay_is_refused_however_many_sessions_churn_in_between(hook):
    worker = sy.VirtualWorker(hook, id="redteam_churn")  # its own: the flood below fills its session table
    try:
        key = hook.local_worker.key
        victim_codec, victim = Codec(key), raw_dealer(worker.address)
        [(_, stored)] = _ask(victim, victim_codec, victim_codec.encode(1, msg.StoreObject(1, th.zeros(1)), worker.incarnation))
        assert isinstance(stored, msg.Ok), stored
        captured = [bytes(f) for f in victim_codec.encode(2, msg.RunOp("Tensor.add_", (msg.Ref(1), 1.0), {}, ()), worker.incarnation)]
        assert _ask(victim, victim_codec, captured) is not None  # the original, taken
        assert _ask(victim, victim_codec, captured, QUIET_MS) is None  # replayed at once: dropped

        attacker = raw_dealer(worker.address)
        for i in range(ReplayWindow.SESSIONS + 104):  # a key holder, from one fresh session per message
            attacker.send_multipart(Codec(key).encode(i, msg.Ping(), worker.incarnation))
        answered = 0
        while attacker.poll(QUIET_MS * 4):
            attacker.recv_multipart()
            answered += 1
        attacker.close()
        assert answered < ReplayWindow.SESSIONS  # the sessions past the table's room were refused, none forgotten

        assert _ask(victim, victim_codec, captured, QUIET_MS) is None  # the replay, after the churn: still dropped
        [(_, answer)] = _ask(victim, victim_codec, victim_codec.encode(3, msg.GetObject(1), worker.incarnation))
        victim.close()
        assert th.equal(answer.value, th.ones(1)), answer  # added once, not twice
        assert worker.ping().id == "redteam_churn"  # sessions it already knew are still served
    finally:
        worker.shutdown()


def test_a_stale_message_is_refused_and_a_little_clock_skew_is_not(hook, target):
    key = hook.local_worker.key
    sock = raw_dealer(target.address)
    try:
        now = time.time()
        for age in (MAX_MESSAGE_AGE_SECONDS + 60, -(MAX_CLOCK_SKEW_SECONDS + 60)):  # long ago; far ahead
            codec = Codec(key)  # a session the worker never saw: only the time can refuse it
            assert _ask(sock, codec, _sealed_at(codec, now - age, 1, msg.Ping(), target.incarnation), QUIET_MS) is None, age
        for skew in (5.0, -5.0):  # the sender's clock a few seconds behind or ahead of the worker's
            codec = Codec(key)
            [(seq, answer)] = _ask(sock, codec, _sealed_at(codec, now - skew, 7, msg.Ping(), target.incarnation))
            assert seq == 7 and isinstance(answer.value, msg.WorkerStatus), answer
    finally:
        sock.close()


def test_the_replay_window_refuses_new_sessions_while_full_and_forgets_only_quiet_ones():
    window = ReplayWindow(max_age=100, max_skew=10, sessions=2)
    assert window.check(b"a" * 16, 1, 1000, now=1000) is None
    assert window.check(b"b" * 16, 1, 1050, now=1050) is None
    assert "new session refused" in window.check(b"c" * 16, 1, 1060, now=1060)  # full of recent sessions
    assert window.check(b"a" * 16, 1, 1000, now=1060) is not None  # a's message, replayed: still known
    assert window.check(b"c" * 16, 1, 1111, now=1111) is None  # a was quiet for 110 s: forgotten, and c let in
    assert "ago refused" in window.check(b"a" * 16, 1, 1000, now=1111)  # a's old message: stale by now


# --------------------------------------------------------------------------- finding 12: the hello says only who answers


def test_a_hello_is_answered_with_the_workers_id_only_and_a_stale_one_not_at_all(hook, target):
    key = hook.local_worker.key
    sock = raw_dealer(target.address)
    try:
        hello = Codec(key)  # e.g. captured on its way to another worker, replayed here by a stranger
        sock.send_multipart(hello.encode(1, msg.Ping()))
        assert sock.poll(10_000)
        origin, [(seq, answer)] = hello.receive(sock.recv_multipart())
        assert seq == 1 and origin.session == target.incarnation  # what a client needs to address it
        assert answer.value == msg.Hello("redteam_wire") and [f.name for f in dataclasses.fields(msg.Hello)] == ["id"]
        stale = Codec(key)
        assert _ask(sock, stale, _sealed_at(stale, time.time() - MAX_MESSAGE_AGE_SECONDS - 60, 2, msg.Ping(), msg.NO_INCARNATION), QUIET_MS) is None
    finally:
        sock.close()
    status = target.ping()  # a status takes a Ping sealed to the worker
    assert isinstance(status, msg.WorkerStatus) and status.id == "redteam_wire" and status.pid == target.process.pid


def test_a_client_that_never_met_a_worker_still_gets_its_status(hook, target):
    """`ping()` on a worker this client has not met: a hello first, then a real Ping."""
    client = sy.local_client()
    fresh = type(client)(hook.local_worker.key)
    try:
        status = fresh.request(target.address, msg.Ping(), timeout=10)
        assert isinstance(status, msg.WorkerStatus) and status.pid == target.process.pid
    finally:
        fresh.close()


def test_what_the_replay_window_keeps_of_a_session_is_bounded_however_it_counts():
    """A key holder choosing its counters (scattered, far apart, out of order) cannot make the
    window keep more than its fixed few bits per session, and every repeat is still refused."""
    window, session, now = ReplayWindow(), b"s" * 16, time.time()
    counters = [1 + (i * 7919) % 50_000 for i in range(50_000)]  # every counter once, out of order
    taken = [c for c in counters if window.check(session, c, int(now), now) is None]
    highest, seen, _ = window._sessions[session]
    assert highest == 50_000 and seen.bit_length() <= ReplayWindow.WINDOW
    assert all(window.check(session, c, int(now), now) is not None for c in taken[-100:])  # repeats refused
    assert window.check(session, highest - ReplayWindow.WINDOW, int(now), now) is not None  # too far behind
    assert window.check(session, highest + 1, int(now), now) is None
