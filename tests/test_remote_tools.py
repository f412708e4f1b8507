"""Rules 7, 8, 9 and 14 and torch on pointers: move, remote_get, copy/clone, autograd, tags and search."""

from __future__ import annotations

import gc

import pytest
import torch as th
import torch.nn.functional as F

import fedq as sy


def _stats(hook) -> tuple[int, int]:
    stats = hook.local_worker.stats()
    return stats["bytes_sent"], stats["bytes_received"]


# ---- rule 7: move
def test_move_sends_the_bytes_straight_between_workers_keeping_ids(hook, bob, alice):
    t = th.randn(1024, 1024)  # 4 MiB
    p = t.send(bob)
    id_at_location = p.id_at_location
    sent, received = _stats(hook)
    assert p.move(alice) is p
    after_sent, after_received = _stats(hook)
    assert after_sent - sent < 4096 and after_received - received < 4096  # the 4 MiB never came through me
    assert repr(p) == f"[PointerTensor | me:{p.id} -> alice:{id_at_location}]"
    assert bob._objects == {} and list(alice._objects) == [id_at_location]
    assert th.equal(p.get(), t)


def test_move_to_the_current_location_is_a_no_op_and_move_to_me_is_get(hook, bob):
    p = th.tensor([1, 2]).send(bob)
    assert p.move(bob) is p and len(bob._objects) == 1
    assert th.equal(p.move(hook.local_worker), th.tensor([1, 2]))
    assert bob._objects == {}


def test_moved_object_keeps_working_and_frees_on_delete(bob, alice):
    p = th.tensor([1.0, 2.0]).send(bob)
    p.move(alice)
    assert th.equal((p * 2).get(), th.tensor([2.0, 4.0]))
    del p
    assert alice._objects == {} and bob._objects == {}


def test_move_of_a_shared_object_leaves_it_for_the_other_pointer(bob, alice):
    p = th.tensor([5]).send(bob)
    q = p.clone()
    p.move(alice)
    assert th.equal(q.get(), th.tensor([5])) and th.equal(p.get(), th.tensor([5]))
    assert bob._objects == {} and alice._objects == {}


# ---- rule 8: remote_get
def test_remote_get_pulls_the_data_to_the_middle_worker(bob, alice):
    x = th.tensor([1, 2, 3]).send(bob).send(alice)
    before = repr(x)
    assert x.remote_get() is x and repr(x) == before
    assert bob._objects == {}
    assert th.equal(alice._objects[x.id_at_location], th.tensor([1, 2, 3]))
    assert th.equal((x + 1).get(), th.tensor([2, 3, 4]))


def test_remote_get_on_a_one_hop_pointer_is_an_error(bob):
    x = th.tensor([1]).send(bob)
    with pytest.raises(sy.FedqError, match="pointer to a pointer"):
        x.remote_get()


# ---- torch on pointers
def test_torch_functions_methods_and_indexing_run_remotely(bob):
    a = th.arange(12.0).reshape(3, 4)
    x = a.send(bob)
    assert th.equal(th.matmul(x, x.t()).get(), a @ a.t())
    assert th.equal(F.softmax(x, dim=1).get(), F.softmax(a, dim=1))
    assert th.equal(x[1:, ::2].get(), a[1:, ::2])
    assert th.equal(th.cat([x, x]).get(), th.cat([a, a]))
    assert th.equal(x.mean(dim=0).get(), a.mean(dim=0))
    assert th.equal(th.where(x > 5, x, x * 0).get(), th.where(a > 5, a, a * 0))
    assert th.equal(th.clamp(x, 2, 5).get(), th.clamp(a, 2, 5))
    values, indices = th.sort(x, dim=1, descending=True)
    assert th.equal(values.get(), th.sort(a, dim=1, descending=True).values) and indices.dtype == th.int64
    assert x.requires_grad is False and x.dim() == 2 and x.shape == (3, 4)


def test_remote_autograd(bob):
    w = th.tensor([1.0, 2.0], requires_grad=True).send(bob)
    loss = (w * w).sum()
    loss.backward()
    g = w.grad
    assert isinstance(g, sy.PointerTensor) and g.location is bob
    assert th.equal(g.get(), th.tensor([2.0, 4.0]))
    back = w.get()
    assert th.equal(back.grad, th.tensor([2.0, 4.0])) and back.requires_grad


def test_grad_is_none_until_backward_and_after_being_cleared(bob):
    w = th.tensor([1.0], requires_grad=True).send(bob)
    assert w.grad is None
    (w * 3).sum().backward()
    assert th.equal(w.grad.get(), th.tensor([3.0]))
    w.grad = None
    assert w.grad is None


# ---- rule 14: tags and search
def test_tagged_tensors_are_found_by_all_their_tags(bob):
    x = th.tensor([1, 2, 3]).tag("#fun", "#boston").describe("three numbers").send(bob)
    y = th.tensor([4]).tag("#fun").send(bob)
    assert {p.id_at_location for p in bob.search("#fun")} == {x.id_at_location, y.id_at_location}
    found = bob.search(["#fun", "#boston"])
    assert [p.id_at_location for p in found] == [x.id_at_location]
    assert found[0].tags == {"#fun", "#boston"} and found[0].description == "three numbers"
    assert bob.search("#fun", "#nothing") == []


def test_search_pointers_share_the_object_with_the_sender(bob):
    x = th.tensor([7]).tag("#fun").send(bob)
    [found] = bob.search("#fun")
    del found
    assert len(bob._objects) == 1  # the sender's pointer still holds it
    [found] = bob.search("#fun")
    del x
    assert th.equal(found.get(), th.tensor([7]))
    assert bob._objects == {}


def test_data_owners_data_is_found_and_never_freed_by_search_pointers(data_owners):
    owner = data_owners[0]
    before = len(owner._objects)
    assert before == 2
    for _ in range(3):
        data = owner.search("#housing", "#data")
        assert len(data) == 1 and data[0].shape == (64, 4)
        assert "houses" in data[0].description
        target = owner.search(["#housing", "#target"])[0]
        assert target.shape == (64, 1)
        prediction = data[0].sum(dim=1, keepdim=True) - target
        assert prediction.shape == (64, 1)
        del data, target, prediction
        gc.collect()
    assert len(owner._objects) == before
    assert sorted(i.refs for i in owner.describe()) == [1, 1]
    assert [dict(i.holders) for i in owner.describe()] == [{"data owner": 1}] * 2


# ---- who holds each reference (what `fedq ls` shows)
def _holders(worker, id: int) -> dict[str, int]:
    return next(dict(row.holders) for row in worker.describe() if row.id == id)


def test_listings_follow_each_reference_as_it_changes_hands(bob, alice, carol):
    me = sy.local_client().name
    x = th.ones(3).tag("#mine").send(bob)
    data = x.id_at_location
    assert _holders(bob, data) == {me: 1}
    [found] = bob.search("#mine")  # rule 14, and rule 9's clone: more references, mine
    second = x.clone()
    assert _holders(bob, data) == {me: 3}
    del found, second
    p = x.send(alice)  # rule 3: my reference at bob is alice's now
    assert _holders(bob, data) == {"alice": 1} and _holders(alice, p.id_at_location) == {me: 1}
    twin = p.clone()  # alice's pointer is shared now, so .get() leaves it and gives me a new reference
    peeled = p.get()
    assert _holders(bob, data) == {"alice": 1, me: 1} and _holders(alice, twin.id_at_location) == {me: 1}
    del peeled, p
    p = twin
    assert _holders(bob, data) == {"alice": 1}
    q = p.send(carol)  # me -> carol -> alice -> bob
    middle = p.id_at_location
    assert _holders(alice, middle) == {"carol": 1} and _holders(carol, q.id_at_location) == {me: 1}
    r = q.get()  # peels carol's pointer: carol's reference at alice comes to me
    assert carol._objects == {} and _holders(alice, middle) == {me: 1}
    r.move(carol)  # a stored pointer moves: its reference at bob goes with it
    assert _holders(carol, middle) == {me: 1} and _holders(bob, data) == {"carol": 1}
    r.remote_get()  # carol takes the data itself
    assert bob._objects == {} and _holders(carol, middle) == {me: 1}
    del r
    assert carol._objects == alice._objects == bob._objects == {}

