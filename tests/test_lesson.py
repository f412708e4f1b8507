"""The remote-execution lesson, line by line, against real worker processes."""

from __future__ import annotations

import os

import torch as th

from fedq import PointerTensor


def test_the_lesson_line_by_line(hook, bob, alice):
    assert bob.pid != os.getpid() and alice.pid != os.getpid() and bob.pid != alice.pid
    assert bob.clear_objects() is bob
    assert repr(bob) == "<VirtualWorker id:bob #objects:0>"

    x = th.tensor([1, 2, 3, 4, 5]).send(bob)
    bob_tensor_id = x.id_at_location
    assert repr(x) == f"[PointerTensor | me:{x.id} -> bob:{bob_tensor_id}]"
    assert x.location is bob and x.owner is hook.local_worker
    objects = bob._objects
    assert list(objects) == [bob_tensor_id]
    assert th.equal(objects[bob_tensor_id], th.tensor([1, 2, 3, 4, 5]))

    first_id = x.id
    x = x.send(alice)
    assert x.location is alice and x.id_at_location == first_id
    assert list(bob._objects) == [bob_tensor_id]  # bob untouched
    stored = alice._objects
    assert list(stored) == [first_id]
    assert repr(stored[first_id]) == f"[PointerTensor | alice:{first_id} -> bob:{bob_tensor_id}]"

    y = x + x  # computed on bob; alice keeps a pointer to the result; me a pointer to alice's
    assert y.location is alice
    alice_pointer = alice._objects[y.id_at_location]
    result_on_bob = alice_pointer.id_at_location
    assert alice_pointer.location is bob
    assert th.equal(bob._objects[result_on_bob], th.tensor([2, 4, 6, 8, 10]))
    assert len({y.id, y.id_at_location, result_on_bob}) == 3  # ids differ at every hop

    x = x.get()  # peels one level
    assert repr(x) == f"[PointerTensor | me:{first_id} -> bob:{bob_tensor_id}]"
    assert first_id not in alice._objects
    assert bob_tensor_id in bob._objects

    x = x.get()
    assert th.equal(x, th.tensor([1, 2, 3, 4, 5])) and type(x) is th.Tensor
    assert list(bob._objects) == [result_on_bob]  # only y's result is left

    del y
    assert bob._objects == {} and alice._objects == {}

    x = th.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    assert len(bob._objects) == 1 and len(alice._objects) == 1
    del x  # alice's pointer and bob's tensor are both deleted
    assert bob._objects == {} and alice._objects == {}


def test_pointer_exposes_what_users_read(bob):
    x = th.tensor([[1.0, 2.0], [3.0, 4.0]]).send(bob)
    assert isinstance(x, PointerTensor) and isinstance(x, th.Tensor)
    assert x.shape == (2, 2) and x.dtype == th.float32 and x.dim() == 2
    assert isinstance(x.id, int) and isinstance(x.id_at_location, int)
    assert x.location.id == "bob" and x.location.address.startswith("ipc://")
    assert x.owner.id == "me"
