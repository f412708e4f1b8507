"""Rule 15: remote failures come back as exceptions with the remote type, message and traceback."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import time

import pytest
import torch as th
import zmq

import fedq as sy
from fedq import messages as msg
from fedq.codec import Codec, new_key
from helpers import free_port


def test_unknown_id_is_an_object_not_found_error_with_the_workers_traceback(bob):
    x = th.tensor([1]).send(bob)
    bob.clear_objects()
    with pytest.raises(sy.ObjectNotFoundError) as caught:
        x.get()
    error = caught.value
    assert error.worker == "bob"
    assert str(x.id_at_location) in str(error)
    assert "Traceback" in error.remote_traceback and "traceback on worker 'bob'" in str(error)


def test_a_torch_error_keeps_its_type(bob):
    x = th.ones(2).send(bob)
    y = th.ones(3).send(bob)
    with pytest.raises(RuntimeError) as caught:
        x + y
    assert isinstance(caught.value, sy.RemoteError)
    assert "size of tensor" in str(caught.value) and caught.value.worker == "bob"


def test_a_failed_pipelined_op_surfaces_at_the_next_wait_once(bob):
    x = th.tensor([1.0]).send(bob)
    bob.clear_objects()
    y = x + 1  # pipelined: nothing waits here
    with pytest.raises(sy.ObjectNotFoundError):
        bob._objects
    assert bob._objects == {}  # raised once, not forever
    del y


def test_spent_pointer_says_what_happened(bob, alice):
    p = th.tensor([1]).send(bob)
    p.send(alice)
    with pytest.raises(sy.SpentPointerError, match="sent to 'alice'"):
        p.get()


def test_functions_fedq_does_not_forward_are_refused_clearly(bob):
    x = th.ones(2).send(bob)
    with pytest.raises(sy.UnsupportedOperationError, match="__deepcopy__"):
        copy.deepcopy(x)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(x)


@pytest.fixture(scope="module")
def own(hook):
    """The workers of this module's tests that need one of their own (it is killed, or has settings
    of its own): started at once when the first is needed, side by side instead of one test after another."""
    workers = {
        "doomed": sy.VirtualWorker(hook, id="doomed"),
        "middle": sy.VirtualWorker(hook, id="middle", timeout=1.0),
        "end": sy.VirtualWorker(hook, id="end"),
        "trusting": sy.VirtualWorker(hook, id="trusting", allow_code=True),
        "small": sy.VirtualWorker(hook, id="small", max_store_bytes=1024),
        "tight": sy.VirtualWorker(hook, id="tight", max_store_bytes=3 << 20),
    }
    yield workers
    for worker in workers.values():  # (each test stops its own: what a failure left is killed)
        if worker.alive():
            worker.process.kill()
            worker.process.wait()


def test_a_worker_that_does_not_answer_fails_after_the_timeout(hook):
    ghost = sy.connect(hook, "ghost", address=f"tcp://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(sy.WorkerUnreachableError, match="'ghost'.*did not answer within 0.5s"):
        ghost.ping(timeout=0.5)
    assert time.monotonic() - start < 3


def test_a_killed_worker_fails_its_calls_fast_and_others_keep_serving(own, bob):
    doomed = own["doomed"]
    x = th.tensor([1]).send(doomed)
    assert doomed._objects
    y = th.tensor([2]).send(bob)
    os.kill(doomed.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(sy.WorkerDiedError, match="'doomed'.*exited"):
        x.get()
    assert time.monotonic() - start < 5
    assert th.equal(y.get(), th.tensor([2]))


def test_a_dead_hop_in_a_chain_is_named(own, bob):
    middle, end = own["middle"], own["end"]
    x = th.tensor([1]).send(end).send(middle)
    assert middle._objects
    end.process.kill()
    end.process.wait()
    with pytest.raises(sy.WorkerUnreachableError, match="'end' at ipc://.*did not answer worker 'middle' within 1s"):
        (x + 1).get()
    assert middle.ping().id == "middle"  # the middle hop keeps serving
    middle.shutdown()


def test_malformed_and_unexpected_messages_are_dropped_and_nothing_is_lost(bob):
    x = th.tensor([1.0, 2.0]).send(bob)
    before = set(bob._objects)
    codec = Codec(sy.local_client().key)  # a key holder, talking over its own socket
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bob.address)
    junk = [
        [b""],
        [b"not a pickle"],
        [pickle.dumps("a string, not a message")],
        [b"", b"", pickle.dumps((1, msg.Ping()))],  # unsigned
        [bytes(f) for f in Codec(new_key()).encode(8, msg.Ping())],  # another key
        [bytes(codec.encode(8, msg.Ping())[0])[:-3]],  # truncated
    ]
    for frames in junk:
        sock.send_multipart(frames)
    sock.send_multipart(codec.encode(9, msg.Ok(5), bob.incarnation))  # a reply where a request belongs: answered with a failure
    assert sock.poll(5000)
    seq, answer = codec.decode(sock.recv_multipart())  # the junk got no answer at all
    assert seq == 9 and isinstance(answer, msg.Failure) and answer.type_name == "ProtocolError"
    replayed = [bytes(f) for f in codec.encode(10, msg.Ping())]
    sock.send_multipart(replayed)
    sock.send_multipart(replayed)
    assert sock.poll(5000)
    assert codec.decode(sock.recv_multipart())[0] == 10
    assert not sock.poll(300)  # the replay was dropped
    sock.close()
    assert set(bob._objects) == before
    assert th.equal((x * 2).get(), th.tensor([2.0, 4.0]))


def test_shipping_code_is_refused_with_how_to_allow_it(hook, bob):
    x = th.tensor([1.0, 2.0]).send(bob)
    with pytest.raises(sy.CodeNotAllowedError, match="--allow-code"):
        x.apply_(lambda v: v * 2)
        bob._objects
    assert th.equal(x.get(), th.tensor([1.0, 2.0]))


def test_a_worker_started_with_allow_code_runs_shipped_functions(own):
    trusting = own["trusting"]
    x = th.tensor([1.0, 2.0]).send(trusting)
    x.apply_(lambda v: v * 2)
    assert th.equal(x.get(), th.tensor([2.0, 4.0]))
    trusting.shutdown()


def test_store_limit_is_a_clear_error(own):
    small = own["small"]
    kept = th.zeros(200).send(small)  # 800 bytes
    with pytest.raises(sy.StoreFullError, match="limit of 1024"):
        th.zeros(100).send(small)
        small._objects
    assert list(small._objects) == [kept.id_at_location]
    small.shutdown()


def test_a_loop_of_large_results_frees_each_before_making_the_next(hook, own):
    """Deletes queued by `y = x + 1` reach the worker before the next large op: a loop over
    1 MiB results fits a store with room for three, however many iterations run pipelined."""
    tight = own["tight"]
    x = th.zeros(256 * 1024).send(tight)  # 1 MiB
    for _ in range(50):
        y = x + 1
    assert th.equal(y.get(), th.ones(256 * 1024))
    small = th.zeros(4).send(tight)
    for _ in range(200):  # small results may batch their deletes: nothing piles up either
        z = small + 1
    del z
    hook.local_worker.sync()
    assert len(tight._objects) == 2
    tight.shutdown()
