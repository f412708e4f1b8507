"""PySyft 0.2's conveniences (issue 15): `sy.local_worker`, `is_client_worker`,
`VirtualWorker(hook, id=..., data=(t1, t2))`, `sy.create_sandbox`, `sy.PrivateGridNetwork`.

Data given with `data=` is the data owner's (the script that started the worker): kept,
found by search, read-only to clients; a key holder who is not the owner cannot add any."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch as th
import zmq

import fedq as sy
from fedq import messages as msg
from fedq.codec import Codec
from fedq.sandbox import DATASETS, STAND_IN_TAG, shards, stand_in


@pytest.fixture(scope="module")
def device(hook, federation):
    """Part 08's device: a worker started with tensors as its data."""
    x11 = th.tensor([-1, 2.0]).tag("input_data")
    x12 = th.tensor([1, -2.0]).tag("input_data2")
    worker = sy.VirtualWorker(hook, id="conveniences_device", data=(x11, x12))
    yield worker
    worker.shutdown()


def test_local_worker_is_me_and_a_client_worker_for_good(hook):
    assert sy.local_worker is hook.local_worker is sy.local_client()
    assert hook.local_worker.is_client_worker is True
    hook.local_worker.is_client_worker = True  # (what it is: nothing to say)
    with pytest.warns(UserWarning, match="stores no objects"):
        hook.local_worker.is_client_worker = False  # Part 08's line: said to change nothing, not silently kept
    assert hook.local_worker.is_client_worker is True


def test_data_given_as_tensors_is_the_owners_kept_and_found_by_tag(device):
    found = device.search("input_data")
    assert len(found) == 1 and th.equal(found[0].get(), th.tensor([-1, 2.0]))
    del found
    gc.collect()
    sy.local_client().sync()
    # a pointer from a search, gone, freed nothing: the owner's data stays
    (pointer,) = device.search("input_data2")
    assert th.equal((pointer + pointer).get(), th.tensor([2, -4.0]))
    assert th.equal(pointer.get(), th.tensor([1, -2.0]))  # public: the script had it anyway
    assert len(device.search("input_data2")) == 1


def test_data_given_as_tensors_is_read_only_to_clients(device):
    (pointer,) = device.search("input_data")
    with pytest.raises(PermissionError, match="data owner"):
        pointer.mul_(0)
        sy.local_client().sync()
    assert th.equal(device.search("input_data")[0].get(), th.tensor([-1, 2.0]))


def test_a_key_holder_who_is_not_the_owner_cannot_add_data(hook, device):
    """The attack: a key holder (the federation key, not the admin key) crafts AddOwnerData to
    plant data every client's search then finds as the owner's, pinned and unfreeable."""
    codec = Codec(hook.local_worker.key)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(device.address)
    try:
        planted = msg.AddOwnerData((th.tensor([666.0]),), (("input_data",),))
        sock.send_multipart(codec.encode(1, planted, device.incarnation))
        assert sock.poll(20_000)
        _, answer = codec.decode(sock.recv_multipart())
    finally:
        sock.close()
    assert isinstance(answer, msg.Failure) and answer.type_name == "PermissionError" and "data owner" in answer.message
    assert [p.get().tolist() for p in device.search("input_data")] == [[-1.0, 2.0]]


def test_data_must_be_local_tensors(hook, bob):
    with pytest.raises(TypeError, match="local tensors"):
        sy.VirtualWorker(hook, id="conveniences_never_started", data=(th.ones(1).send(bob),))


def test_the_sandbox_datasets_are_stand_ins_of_the_real_shapes_and_say_so():
    for name, (rows, features, target_kind, tags, _) in DATASETS.items():
        data, target = stand_in(name)
        assert data.shape == (rows, features) and target.shape[0] == rows
        assert {"#data", STAND_IN_TAG, *tags} == data.tags and {"#target", STAND_IN_TAG, *tags} == target.tags
        assert "synthetic stand-in" in data.description and "not real data" in target.description
        assert th.equal(stand_in(name)[0], data)  # the same on every run
        parts = shards(data, 6)
        assert sum(p.shape[0] for p in parts) == rows and all(p.tags == data.tags for p in parts)
        assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in parts)  # (no view carries all rows)


def test_the_grid_searches_every_worker_and_leaves_out_those_without(bob, alice, carol):
    th.tensor([1.0]).tag("#grid", "#a").send(bob)
    kept = [th.tensor([2.0]).tag("#grid", "#a").send(alice), th.tensor([3.0]).tag("#grid").send(carol)]
    grid = sy.PrivateGridNetwork(bob, alice, carol)
    assert sorted(grid.search("#grid")) == ["alice", "carol"]  # bob's pointer died: bob's tensor with it
    both = grid.search("#grid", "#a")
    assert list(both) == ["alice"] and both["alice"][0].get().tolist() == [2.0]
    assert grid.search("#nothing") == {}
    assert "bob, alice, carol" in repr(grid)
    del kept
