"""A red team's attacks on the worker's handlers, as crafted requests from raw signed DEALER
sockets (key holders, not the worker's owner) on real worker processes; each asserts the
safe outcome.

- the owner's read-only data written through `.grad` aliasing and backward
- `inplace` (and `max_norm`) given positionally as a true value that is not `True`
- a backward telling one client the ids of another's tensors
- objects stored for holders that never lapse; strings, tags, shapes and result counts
  that the store keeps without counting them
- pointers to the worker itself, round a cycle of workers, and to any address at all
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest
import torch as th
import zmq

import fedq as sy
from fedq import messages as msg
from fedq.codec import Codec, new_incarnation
from fedq.ids import new_id
from fedq.launcher import start_worker_process
from fedq.store import MAX_DESCRIPTION_CHARS, MAX_TAGS
from fedq.transport import runtime_dir
from helpers import owner_reads

from fedq.messages import (
    CountObjects, DeleteObjects, Failure, GetObject, Ok, Ping, PointerSpec, Ref, RunOp, Search, StoreObject,
)
from fedq.worker import MAX_HOPS, MAX_PEERS, MAX_RESULTS_PER_OP

ROOT = Path(__file__).resolve().parent.parent


class Raw:
    """A key holder's bare DEALER socket: its own session, signed requests, answers by seq."""

    def __init__(self, hook, address: str, incarnation: bytes) -> None:
        self.codec = Codec(hook.local_worker.key)
        self.incarnation = incarnation
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # (a name of its own too: a worker that keys holders by the name a connection gives still tells them apart)
        self.sock.setsockopt(zmq.ROUTING_ID, f"me:{os.getpid()}-{os.urandom(3).hex()}@raw#{os.urandom(4).hex()}".encode())
        self.sock.connect(address)
        self.seq = itertools.count(1)

    def req(self, message, timeout_ms: int = 20_000) -> Ok | Failure:
        seq = next(self.seq)
        self.sock.send_multipart(self.codec.encode(seq, message, self.incarnation))
        while self.sock.poll(timeout_ms):
            for envelope_seq, reply in self.codec.decode_all(self.sock.recv_multipart()):
                for answered, answer in msg.answers(envelope_seq, reply):
                    if answered == seq:
                        return answer
        raise AssertionError(f"no answer to {type(message).__name__} within {timeout_ms} ms")

    def ok(self, message):
        answer = self.req(message)
        assert isinstance(answer, Ok), answer
        return answer.value

    def close(self) -> None:
        self.sock.close()


def refused(answer, type_name: str, *words: str) -> bool:
    assert isinstance(answer, Failure), f"not refused: {answer}"
    assert answer.type_name == type_name, answer
    for word in words:
        assert word in answer.message, answer.message
    return True


@pytest.fixture(scope="module")
def owned(hook):
    """A worker this test process owns, with an owner's dataset; and the owner's fingerprint of it."""
    worker = sy.VirtualWorker(hook, id="redteam_bob", data=ROOT / "workers" / "housing.py")
    yield worker
    worker.shutdown()


@pytest.fixture
def attacker(hook, owned):
    raw = Raw(hook, owned.address, owned.incarnation)
    yield raw
    raw.close()


def _features(raw: Raw) -> PointerSpec:
    return next(p for p in raw.ok(Search(("#data",))) if len(p.shape) == 2)


def _fingerprint(owned) -> tuple[float, float]:
    """The owner's view of its data (its own read: an approved request)."""
    return tuple(tuple(owner_reads(owned, f * 1).reshape(-1).tolist()) for f in owned.search("#data"))


# --------------------------------------------------------------------------- finding 3


def test_the_owners_data_never_becomes_a_grad_that_backward_writes_into(owned, attacker):
    before = _fingerprint(owned)
    features = _features(attacker)
    feat = features.id_at_location
    s, g, v, loss = new_id(), new_id(), new_id(), new_id()
    attacker.ok(StoreObject(s, th.zeros(*features.shape, requires_grad=True)))
    # p.grad = owner data, then backward accumulates into it: refused at the assignment.
    assert refused(attacker.req(RunOp("Tensor.grad.__set__", (Ref(s), Ref(feat)), {}, ())), "PermissionError", "data owner")
    # A view of it, or a grad whose .data is made the owner's: refused the same way.
    view = new_id()
    attacker.ok(RunOp("Tensor.__getitem__", (Ref(feat), slice(0, 3)), {}, (view,), ((3, *features.shape[1:]), features.dtype, False)))
    assert refused(attacker.req(RunOp("Tensor.grad.__set__", (Ref(s), Ref(view)), {}, ())), "PermissionError", "data owner")
    attacker.ok(StoreObject(g, th.zeros(*features.shape)))
    attacker.ok(RunOp("Tensor.grad.__set__", (Ref(s), Ref(g)), {}, ()))  # a grad of its own is fine
    assert refused(attacker.req(RunOp("Tensor.data.__set__", (Ref(g), Ref(feat)), {}, ())), "PermissionError", "data owner")
    # Autograd itself makes a view's `gradient` the leaf's .grad: the owner's data passed as
    # backward's gradient must not become one.
    attacker.ok(RunOp("Tensor.grad.__set__", (Ref(s), None), {}, ()))
    attacker.ok(RunOp("Tensor.view", (Ref(s), *features.shape), {}, (v,), (features.shape, features.dtype, True)))
    assert attacker.ok(RunOp("Tensor.backward", (Ref(v), Ref(feat)), {}, ())) == [s]
    attacker.ok(RunOp("Tensor.mul", (Ref(s), 1000.0), {}, (loss,), (features.shape, features.dtype, True)))
    total = new_id()
    attacker.ok(RunOp("Tensor.sum", (Ref(loss),), {}, (total,), ((), features.dtype, True)))
    assert attacker.ok(RunOp("Tensor.backward", (Ref(total),), {}, ())) == [s]
    assert _fingerprint(owned) == before, "a client wrote into the owner's data"


# --------------------------------------------------------------------------- finding 4


def test_inplace_and_max_norm_given_positionally_as_any_true_value_are_writes(owned, attacker):
    before = _fingerprint(owned)
    features = _features(attacker)
    feat = features.id_at_location
    meta = ((features.shape, features.dtype, False),)
    for op, args in [
        ("torch.nn.functional.relu", (Ref(feat), 1)),
        ("torch.nn.functional.relu", (Ref(feat), "yes")),
        ("torch.nn.functional.dropout", (Ref(feat), 1.0, 1, 1)),
        ("torch.nn.functional.hardtanh", (Ref(feat), -1.0, 1.0, 2)),
        ("torch.nn.functional.threshold", (Ref(feat), 0.0, 0.0, 1)),
    ]:
        assert refused(attacker.req(RunOp(op, args, {}, (new_id(),), meta)), "PermissionError", "data owner"), op
    assert refused(attacker.req(RunOp("torch.nn.functional.relu", (Ref(feat),), {"inplace": 1}, (new_id(),), meta)), "PermissionError")
    # Not in place: computed as usual.
    attacker.ok(RunOp("torch.nn.functional.relu", (Ref(feat), 0), {}, (new_id(),), meta))
    # An embedding table renormalised in place: `max_norm` is F.embedding's fourth parameter.
    index = new_id()
    attacker.ok(StoreObject(index, th.tensor([0, 1])))
    emb_meta = (((2, features.shape[1]), features.dtype, False),)
    assert refused(attacker.req(RunOp("torch.nn.functional.embedding", (Ref(index), Ref(feat), None, 0.01), {}, (new_id(),), emb_meta)), "PermissionError")
    attacker.ok(RunOp("torch.nn.functional.embedding", (Ref(index), Ref(feat), None, None), {}, (new_id(),), emb_meta))
    assert _fingerprint(owned) == before


# --------------------------------------------------------------------------- finding 5


def test_a_backward_names_only_the_callers_own_tensors(hook, owned):
    victim, spy = Raw(hook, owned.address, owned.incarnation), Raw(hook, owned.address, owned.incarnation)
    try:
        w, w_sum = new_id(), new_id()
        victim.ok(StoreObject(w, th.tensor([1.5, -2.5], requires_grad=True)))
        victim.ok(RunOp("Tensor.sum", (Ref(w),), {}, (w_sum,), ((), th.float32, True)))
        assert victim.ok(RunOp("Tensor.backward", (Ref(w_sum),), {}, ())) == [w]
        mine, mine_sum = new_id(), new_id()
        spy.ok(StoreObject(mine, th.ones(1, requires_grad=True)))
        spy.ok(RunOp("Tensor.sum", (Ref(mine),), {}, (mine_sum,), ((), th.float32, True)))
        assert spy.ok(RunOp("Tensor.backward", (Ref(mine_sum),), {}, ())) == [mine]
    finally:
        victim.close()
        spy.close()


# --------------------------------------------------------------------------- findings 11, 6a, 6c


def test_nobody_stores_objects_for_holders_that_never_lapse(owned, attacker):
    for holder in ("data owner", owned.id, f"{owned.id}#{owned.incarnation.hex()}", f"x#{owned.incarnation.hex()}"):
        assert refused(attacker.req(StoreObject(new_id(), th.zeros(4), holder=holder)), "PermissionError", "leave `holder` unset"), holder
    assert attacker.ok(CountObjects()) == 0


def test_what_the_store_keeps_of_a_clients_strings_and_shapes_is_capped(owned, attacker):
    too_long = "A" * (MAX_DESCRIPTION_CHARS + 1)
    assert refused(attacker.req(StoreObject(new_id(), th.zeros(0), description=too_long)), "RequestTooLargeError", "description")
    assert refused(attacker.req(StoreObject(new_id(), th.zeros(0), tags=tuple(f"#t{i}" for i in range(MAX_TAGS + 1)))), "RequestTooLargeError", "tags")
    assert refused(attacker.req(StoreObject(new_id(), th.zeros(0), tags=("#" + "t" * 1000,))), "RequestTooLargeError", "tags")
    assert refused(attacker.req(StoreObject(new_id(), th.zeros((1,) * 100))), "RequestTooLargeError", "dimensions")
    elsewhere = "ipc:///nonexistent/fedq-redteam.sock"
    for pointer, word in [
        (PointerSpec(0, "x", elsewhere, 1, (1,) * 1000, th.float32, incarnation=os.urandom(16)), "shape"),
        (PointerSpec(0, "x", "ipc:///" + "a" * 5000, 1, (1,), th.float32, incarnation=os.urandom(16)), "address"),
        (PointerSpec(0, "x", elsewhere, 1, (1,), th.float32, description=too_long, incarnation=os.urandom(16)), "description"),
    ]:
        assert refused(attacker.req(StoreObject(new_id(), pointer)), "RequestTooLargeError", word)
    # What fits is kept.
    attacker.ok(StoreObject(new_id(), th.zeros(0), tags=("#a", "#b"), description="d" * MAX_DESCRIPTION_CHARS))
    assert attacker.ok(CountObjects()) == 1


def test_one_op_makes_a_bounded_number_of_results(owned, attacker):
    x = new_id()
    attacker.ok(StoreObject(x, th.zeros(MAX_RESULTS_PER_OP + 10, dtype=th.uint8)))
    many = tuple(new_id() for _ in range(MAX_RESULTS_PER_OP + 10))
    assert refused(attacker.req(RunOp("Tensor.split", (Ref(x), 1), {}, many)), "RequestTooLargeError", "split")
    assert refused(attacker.req(RunOp("Tensor.split", (Ref(x), 1), {}, None)), "RequestTooLargeError", "split")
    assert attacker.ok(CountObjects()) == 1  # nothing of either was kept
    assert len(attacker.ok(RunOp("Tensor.split", (Ref(x), MAX_RESULTS_PER_OP), {}, None))) == 2


# --------------------------------------------------------------------------- finding 7


def test_a_pointer_to_the_worker_itself_is_refused(owned, attacker):
    for address, incarnation in [(owned.address, owned.incarnation), ("ipc:///elsewhere/alias.sock", owned.incarnation)]:
        pointer = PointerSpec(0, owned.id, address, 77, (3,), th.float32, incarnation=incarnation)
        assert refused(attacker.req(StoreObject(new_id(), pointer)), "PointerCycleError", "itself")
    assert attacker.ok(Ping()).id == owned.id


@pytest.fixture(scope="module")
def ring(hook):
    a, b = sy.VirtualWorker(hook, id="redteam_ring_a"), sy.VirtualWorker(hook, id="redteam_ring_b")
    yield a, b
    a.shutdown()
    b.shutdown()


def test_a_cycle_of_pointers_across_workers_ends(hook, ring):
    a, b = ring
    at_a, at_b = Raw(hook, a.address, a.incarnation), Raw(hook, b.address, b.incarnation)
    try:
        ia, ib = new_id(), new_id()
        at_a.ok(StoreObject(ia, PointerSpec(0, b.id, b.address, ib, (3,), th.float32, incarnation=b.incarnation)))
        at_b.ok(StoreObject(ib, PointerSpec(0, a.id, a.address, ia, (3,), th.float32, incarnation=a.incarnation)))
        for result_ids, meta in [(None, None), ((new_id(),), (((3,), th.float32, False),))]:
            answer = at_a.req(RunOp("Tensor.add", (Ref(ia), 1.0), {}, result_ids, meta))
            assert refused(answer, "PointerCycleError", f"through {MAX_HOPS} workers")
        # Nothing of the relays was left behind; each pointer's delete passes one hop on and ends.
        at_a.ok(DeleteObjects((ia,)))
        at_b.ok(DeleteObjects((ib,)))
        assert at_a.ok(Ping()).id == a.id and at_b.ok(Ping()).id == b.id
        assert a.objects_count() == 0 and b.objects_count() == 0
    finally:
        at_a.close()
        at_b.close()


def test_a_worker_connects_to_a_bounded_number_of_peers(hook):
    worker = sy.VirtualWorker(hook, id="redteam_sockets")
    raw = Raw(hook, worker.address, worker.incarnation)
    try:
        fds = lambda: len(os.listdir(f"/proc/{worker.pid}/fd"))
        idle = fds()
        answers = [
            raw.req(StoreObject(new_id(), PointerSpec(0, "x", f"ipc:///nonexistent/redteam{i}.sock", 1, (1,), th.float32, incarnation=os.urandom(16))))
            for i in range(MAX_PEERS + 20)
        ]
        stored = [a for a in answers if isinstance(a, Ok)]
        assert len(stored) <= MAX_PEERS
        assert all(refused(a, "RequestTooLargeError", "peers") for a in answers[MAX_PEERS:])
        assert fds() <= idle + 4 * MAX_PEERS  # (a DEALER is a few descriptors: bounded, not one per request)
        assert raw.ok(Ping()).id == worker.id
    finally:
        raw.close()
        worker.shutdown()


def test_a_worker_of_a_federation_relays_only_to_its_federations_workers(hook):
    directory = Path(tempfile.mkdtemp(prefix="vw-", dir=runtime_dir()))
    address, friend = f"ipc://{directory}/fed_a.sock", f"ipc://{directory}/fed_b.sock"
    incarnation = new_incarnation()
    process = start_worker_process(
        "fed_a", address, key=hook.local_worker.key, quiet=True, incarnation=incarnation,
        peers={"fed_a": address, "fed_b": friend},
    )
    raw = Raw(hook, address, incarnation)
    try:
        assert raw.ok(Ping()).id == "fed_a"
        stranger = PointerSpec(0, "x", "ipc:///nonexistent/stranger.sock", 1, (1,), th.float32, incarnation=os.urandom(16))
        assert refused(raw.req(StoreObject(new_id(), stranger)), "PermissionError", "federation")
        raw.ok(StoreObject(new_id(), PointerSpec(0, "fed_b", friend, 1, (1,), th.float32, incarnation=os.urandom(16))))
    finally:
        raw.close()
        process.terminate()
        assert process.wait(10) == 0


def test_objects_are_stored_under_int_ids_only(bob):
    """A crafted RunOp or StoreObject naming a string, a float or a bool as the id is refused, and
    stores nothing (a plan's result ids were checked; a RunOp's were not: 'id' was stored)."""
    client = sy.local_client()
    mine = th.ones(2).send(bob)
    before = set(bob._objects)
    for bad in ("id", 1.0, True, (1,)):
        for message in (msg.RunOp("torch.add", (msg.Ref(mine.id_at_location), 1), {}, (bad,)), msg.StoreObject(bad, th.zeros(1))):
            with pytest.raises(sy.FedqError, match="ids are ints"):
                client.request(bob.address, message)
    assert set(bob._objects) == before
