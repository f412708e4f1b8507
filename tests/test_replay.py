"""Replays bound to their destination and its incarnation, and the owner's admin key: attacks
with raw zmq DEALER sockets on real worker processes.

What an eavesdropper without the key can do is resend what it captured. A signed message
names the session (incarnation) of the process it was sealed to, so it is taken nowhere
else: not by another worker, not by the same worker after a restart.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch as th

import fedq as sy
from fedq import messages as msg
from fedq.codec import Codec, new_key
from fedq.launcher import start_worker_process
from fedq.transport import runtime_dir
from helpers import raw_dealer

QUIET_MS = 500  # how long a worker that answers nothing is listened to


@pytest.fixture
def pair(bob, alice):
    """Two of the session's workers: what is sealed to one is tried at the other."""
    return bob, alice


def _captured_clear(hook, worker) -> list[bytes]:
    """A ClearObjects exactly as a key holder seals it for `worker`: what an eavesdropper keeps."""
    return [bytes(f) for f in Codec(hook.local_worker.key).encode(7, msg.ClearObjects(), worker.incarnation)]


def test_a_clear_captured_for_one_worker_does_nothing_at_another(hook, pair):
    a, b = pair
    kept = th.tensor([1.0, 2.0]).send(b)
    captured = _captured_clear(hook, a)
    sock = raw_dealer(b.address)
    sock.send_multipart(captured)
    assert not sock.poll(QUIET_MS)  # not taken, and not answered
    sock.close()
    assert b.objects_count() == 1 and th.equal(kept.get(), th.tensor([1.0, 2.0]))
    # The capture was good: the worker it was sealed to does take it, and answers (to the
    # session that sealed it: the eavesdropper cannot even read that answer as its own).
    sock = raw_dealer(a.address)
    sock.send_multipart(captured)
    assert sock.poll(30_000)  # (a reply comes at once on a quiet machine; a loaded one may take seconds)
    sock.close()


def test_only_a_lone_ping_is_taken_without_the_destinations_incarnation(hook, pair):
    a, _ = pair
    kept = th.tensor([3.0]).send(a)
    codec = Codec(hook.local_worker.key)
    sock = raw_dealer(a.address)
    sock.send_multipart(codec.encode(1, msg.ClearObjects()))  # sealed to "unknown": not a hello
    sock.send_multipart(codec.seal_many([codec.pack(2, msg.Ping(), msg.NO_INCARNATION)] * 2))  # two pings: not a lone one
    assert not sock.poll(QUIET_MS)
    sock.send_multipart(codec.encode(3, msg.Ping()))  # the hello: a status, and the worker's incarnation
    assert sock.poll(30_000)  # (a reply comes at once on a quiet machine; a loaded one may take seconds)
    origin, [(seq, answer)] = codec.receive(sock.recv_multipart())
    sock.close()
    assert seq == 3 and answer.value.id == a.id and origin.session == a.incarnation
    assert th.equal(kept.get(), th.tensor([3.0]))


def test_the_owners_signature_is_told_apart_from_a_key_holders():
    key, admin_key = new_key(), new_key()
    client, worker = Codec(key), Codec(key, admin_key=admin_key)
    origin, _ = worker.receive(client.encode(1, msg.ClearObjects(), worker.session))
    assert origin.by_owner is False
    origin, [(_, message)] = worker.receive(client.encode(2, msg.Shutdown(), worker.session, admin_key=admin_key))
    assert origin.by_owner is True and message == msg.Shutdown()
    origin, [(seq, refused)] = worker.receive(client.encode(3, msg.Shutdown(), worker.session, admin_key=new_key()))
    assert origin is None and seq is None and "bad signature" in str(refused)  # another owner's key: a stranger


def test_a_key_holder_without_the_admin_key_cannot_stop_a_worker_and_its_owner_can(hook):
    target = sy.VirtualWorker(hook, id="replay_stop")
    try:
        codec = Codec(hook.local_worker.key)  # the federation key, not the worker's admin key
        sock = raw_dealer(target.address)
        sock.send_multipart(codec.encode(1, msg.Shutdown(), target.incarnation))
        assert sock.poll(30_000)  # (a reply comes at once on a quiet machine; a loaded one may take seconds)
        _, [(seq, answer)] = codec.receive(sock.recv_multipart())
        sock.close()
        assert seq == 1 and isinstance(answer, msg.Failure) and answer.type_name == "PermissionError", answer
        assert target.ping().id == "replay_stop"  # still serving
    finally:
        target.shutdown()  # this script spawned it: it is the owner, and signs with the admin key
    assert target.process.returncode == 0


def test_chains_and_moves_reach_their_next_hop(hook, pair):
    a, b = pair
    chain = th.tensor([1.0, 2.0]).send(a).send(b)  # me -> b -> a: b relays to a's incarnation
    doubled = chain + chain
    assert th.equal(doubled.get().get(), th.tensor([2.0, 4.0]))
    moved = th.tensor([5.0]).send(a).move(b)  # a sends it straight to b's incarnation
    assert moved.location is b and th.equal(moved.get(), th.tensor([5.0]))
    x = th.tensor([4.0]).send(a)
    assert th.equal((x + x).get(), th.tensor([8.0]))  # a normal client keeps working


@pytest.fixture
def standing_address():
    directory = Path(tempfile.mkdtemp(prefix="replay-", dir=runtime_dir()))
    yield f"ipc://{directory}/standing.sock"
    shutil.rmtree(directory, ignore_errors=True)


def _start_standing(hook, address: str):
    """A worker this process did not spawn as a VirtualWorker: it draws its own incarnation."""
    return start_worker_process("standing", address, key=hook.local_worker.key, quiet=True)


def test_after_a_restart_what_was_captured_before_is_dropped_and_old_pointers_say_why(hook, standing_address):
    first = _start_standing(hook, standing_address)
    try:
        standing = sy.connect(hook, "standing", address=standing_address)
        old = th.tensor([1.0, 2.0]).send(standing)  # (the client says hello first: it learns the incarnation)
        captured = _captured_clear(hook, standing)
        first.terminate()
        assert first.wait(10) == 0
        second = _start_standing(hook, standing_address)  # same address, new incarnation
        with pytest.raises(sy.WorkerRestartedError, match="restarted"):  # said, not a 30 s timeout
            old.get()
        kept = th.tensor([3.0]).send(standing)  # the handle goes on with the new incarnation
        sock = raw_dealer(standing_address)
        sock.send_multipart(captured)
        assert not sock.poll(QUIET_MS)  # sealed to the earlier incarnation: dropped, unanswered
        sock.close()
        assert standing.objects_count() == 1 and th.equal((kept + kept).get(), th.tensor([6.0]))
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
