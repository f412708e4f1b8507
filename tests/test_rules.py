"""One test (or a few) per rule of docs/semantics.md, rules 1-6 and 9-12 (it says where the others are tested)."""

from __future__ import annotations

import gc

import pytest
import torch as th
import torch.nn.functional as F

import fedq as sy


# ---- rule 1: ids are chosen by the side that creates them, before anything is sent
def test_rule1_caller_picks_ids_and_the_worker_uses_them(bob):
    x = th.tensor([1.0, 2.0]).send(bob)
    y = x * 3
    assert y.id_at_location != x.id_at_location and y.id != x.id
    assert set(bob._objects) == {x.id_at_location, y.id_at_location}


# ---- rule 2: send
def test_rule2_send_stores_a_copy_and_leaves_the_local_tensor(bob):
    t = th.tensor([1, 2, 3])
    x = t.send(bob)
    t.add_(100)  # the worker has its own copy
    assert th.equal(bob._objects[x.id_at_location], th.tensor([1, 2, 3]))
    assert x.shape == (3,) and x.dtype == th.int64


def test_rule2_large_tensor_round_trip_is_exact(bob):
    t = th.randn(512, 1024)  # 2 MiB: travels out of band, zero-copy
    x = t.send(bob)
    t.mul_(0)
    back = x.get()
    assert back.shape == (512, 1024) and back.abs().sum() > 0
    assert bob._objects == {}


@pytest.mark.parametrize("dtype", [th.float32, th.float64, th.float16, th.bfloat16, th.int8, th.int32, th.bool, th.complex64])
def test_rule2_every_dtype_survives_the_wire(bob, dtype):
    t = (th.arange(12).reshape(3, 4) % 3).to(dtype)
    assert th.equal(t.send(bob).get(), t)


def test_rule2_non_contiguous_and_empty_tensors(bob):
    t = th.arange(12.0).reshape(3, 4).t()
    assert th.equal(t.send(bob).get(), t)
    empty = th.empty(0, 3)
    assert th.equal(empty.send(bob).get(), empty)
    scalar = th.tensor(7.5)
    assert th.equal(scalar.send(bob).get(), scalar)


# ---- rule 3: sending a pointer hands the pointer itself on
def test_rule3_pointer_send_moves_the_pointer_not_the_data(bob, alice):
    p = th.tensor([1, 2]).send(bob)
    before = dict(bob._objects)
    q = p.send(alice)
    assert set(bob._objects) == set(before)
    stored = alice._objects[p.id]
    assert stored.location.id == "bob" and stored.id_at_location == p.id_at_location
    assert q.id_at_location == p.id
    with pytest.raises(sy.SpentPointerError, match="sent to 'alice'"):
        p + p
    del p  # a spent pointer frees nothing: alice's pointer holds bob's tensor now
    gc.collect()
    assert len(bob._objects) == 1
    assert th.equal(q.get().get(), th.tensor([1, 2]))


# ---- rule 4: operations run where the data is
def test_rule4_operators_methods_and_torch_functions(bob):
    a = th.tensor([[1.0, -2.0], [3.0, 4.0]])
    x = a.send(bob)
    w = th.eye(2).send(bob)
    assert th.equal((x + x).get(), a + a)
    assert th.equal((x * 2 - 1).get(), a * 2 - 1)
    assert th.equal(th.matmul(x, w).get(), a)
    assert th.equal(F.relu(x).get(), F.relu(a))
    assert th.equal(x.sum().get(), a.sum())
    assert th.equal(x.t().get(), a.t())
    assert th.equal(x[0:1].get(), a[0:1])
    assert th.equal((x > 0).get(), a > 0)


def test_rule4_results_have_shape_and_dtype_without_asking(bob):
    x = th.ones(3, 4).send(bob)
    y = th.ones(4, 5, dtype=th.float64).send(bob)
    z = x.double() @ y
    assert z.shape == (3, 5) and z.dtype == th.float64


def test_rule4_moving_to_the_cpu_is_known_without_asking(bob):
    """Part 06's `data.to(device)` on every batch: workers compute on the CPU, so it is at most a
    dtype change, worked out here like any op (it waited for the worker's answer each time)."""
    x = th.ones(2, 3).send(bob)
    client = sy.local_client()
    waits = client.stats()["waits"]
    same, wider, named = x.to(th.device("cpu")), x.to("cpu", th.float64), x.to(device="cpu")
    assert (same.shape, wider.dtype, named.dtype) == ((2, 3), th.float64, th.float32)
    assert client.stats()["waits"] == waits
    assert th.equal(wider.get(), th.ones(2, 3, dtype=th.float64)) and th.equal(same.get(), th.ones(2, 3))


def test_rule4_inplace_ops_create_no_new_object(bob):
    x = th.tensor([1.0, 2.0]).send(bob)
    x.add_(1)
    x += 1
    x.mul_(2)
    assert len(bob._objects) == 1
    assert th.equal(x.get(), th.tensor([6.0, 8.0]))


def test_rule4_setitem_runs_remotely(bob):
    x = th.zeros(3).send(bob)
    x[1] = 5.0
    assert th.equal(x.get(), th.tensor([0.0, 5.0, 0.0]))


def test_rule4_several_results_come_back_as_a_tuple_of_pointers(bob):
    a = th.tensor([[1.0, 5.0], [7.0, 2.0]])
    x = a.send(bob)
    parts = th.split(x, 1)
    assert isinstance(parts, tuple) and len(parts) == 2
    assert all(isinstance(p, sy.PointerTensor) for p in parts)
    values, indices = th.max(x, 0)
    assert th.equal(values.get(), th.tensor([7.0, 5.0])) and th.equal(indices.get(), th.tensor([1, 0]))
    assert th.equal(parts[1].get(), a[1:])


def test_rule4_data_dependent_shapes_are_asked_of_the_worker(bob):
    x = th.tensor([0, 3, 0, 4]).send(bob)
    nz = x.nonzero()
    assert nz.shape == (2, 1)
    assert th.equal(nz.get(), th.tensor([[1], [3]]))


def test_rule4_on_a_chain_each_hop_keeps_a_pointer_with_its_own_id(bob, alice):
    x = th.tensor([1, 2, 3]).send(bob).send(alice)
    y = x * 10
    alice_pointer = alice._objects[y.id_at_location]
    assert alice_pointer.location.id == "bob"
    assert len({y.id, y.id_at_location, alice_pointer.id_at_location}) == 3
    assert th.equal(bob._objects[alice_pointer.id_at_location], th.tensor([10, 20, 30]))
    assert th.equal(y.get().get(), th.tensor([10, 20, 30]))


def test_rule4_mixing_locations_is_an_error_that_names_both(bob, alice):
    x = th.tensor([1.0]).send(bob)
    y = th.tensor([1.0]).send(alice)
    with pytest.raises(sy.TensorsNotCollocatedError, match="alice, bob"):
        x + y
    with pytest.raises(sy.TensorsNotCollocatedError, match="bob, me"):
        x + th.tensor([1.0])


def test_rule4_chain_whose_hops_differ_is_refused_by_the_middle_worker(bob, alice, carol):
    x = th.tensor([1.0]).send(bob).send(alice)
    y = th.tensor([1.0]).send(carol).send(alice)
    z = x + y  # both pointers are on alice, so the client cannot know
    with pytest.raises(sy.TensorsNotCollocatedError, match="bob, carol"):
        z.get()
    assert sy.local_client().stats()["requests_in_flight"] == 0  # the failed op left nothing waiting
    # (hand-overs of the two sends may still be on their way: bookkeeping, counted apart)


# ---- rule 5: get peels one level
def test_rule5_get_on_a_chain_peels_one_level_keeping_the_id(bob, alice):
    p = th.tensor([4, 5]).send(bob)
    chain = p.send(alice)
    peeled = chain.get()
    assert peeled.id == p.id and peeled.id_at_location == p.id_at_location and peeled.location is bob
    assert alice._objects == {}
    assert th.equal(peeled.get(), th.tensor([4, 5]))
    assert bob._objects == {}
    with pytest.raises(sy.SpentPointerError, match="already fetched"):
        peeled.get()


# ---- rule 6: deletion
def test_rule6_del_on_a_chain_empties_every_hop(bob, alice, carol):
    x = th.tensor([1]).send(carol).send(bob).send(alice)
    assert [len(w._objects) for w in (alice, bob, carol)] == [1, 1, 1]
    del x
    assert [len(w._objects) for w in (alice, bob, carol)] == [0, 0, 0]


def test_rule6_reassigning_in_a_loop_leaves_exactly_one_object(bob):
    for _ in range(1000):
        x = th.tensor([1, 2, 3, 4, 5]).send(bob)
    assert list(bob._objects) == [x.id_at_location]


def test_rule6_results_freed_when_their_pointers_die(bob, alice):
    x = th.tensor([1.0, 2.0]).send(bob).send(alice)
    for _ in range(20):
        y = x + 1
    assert len(bob._objects) == 2 and len(alice._objects) == 2  # x and the last y
    del x, y
    assert bob._objects == {} and alice._objects == {}


def test_rule6_peeled_pointers_free_their_object(bob, alice):
    peeled = th.tensor([1]).send(bob).send(alice).get()
    assert len(bob._objects) == 1
    del peeled  # PySyft 0.2 leaked here
    assert bob._objects == {}


def test_rule6_nothing_is_freed_while_another_pointer_lives(bob, alice):
    p = th.tensor([3.0]).send(bob)
    q = p.clone()
    del p
    assert len(bob._objects) == 1
    q2 = q.clone().send(alice)  # a pointer held by alice counts too
    del q
    gc.collect()
    assert len(bob._objects) == 1
    assert th.equal(q2.get().get(), th.tensor([3.0]))
    assert bob._objects == {} and alice._objects == {}


def test_rule6_get_of_a_shared_object_leaves_it_for_the_other_pointer(bob):
    p = th.tensor([3.0]).send(bob)
    q = p.clone()
    assert th.equal(p.get(), th.tensor([3.0]))
    assert len(bob._objects) == 1
    assert th.equal(q.get(), th.tensor([3.0]))
    assert bob._objects == {}


def test_rule6_peeling_a_shared_stored_pointer_keeps_both_alive(bob, alice):
    chain = th.tensor([8]).send(bob).send(alice)
    other = chain.clone()
    peeled = chain.get()
    assert len(alice._objects) == 1 and len(bob._objects) == 1
    del other
    assert alice._objects == {} and len(bob._objects) == 1
    assert th.equal(peeled.get(), th.tensor([8]))


# ---- rule 9: copy and clone
def test_rule9_copy_is_a_new_object_and_clone_a_second_handle(bob):
    p = th.tensor([1, 2]).send(bob)
    c = p.copy()
    assert c.id_at_location != p.id_at_location and len(bob._objects) == 2
    h = p.clone()
    assert h.id_at_location == p.id_at_location and h.id != p.id and len(bob._objects) == 2
    p.add_(1)
    assert th.equal(h.get(), th.tensor([2, 3])) and th.equal(c.get(), th.tensor([1, 2]))


# ---- rule 10: clear_objects
def test_rule10_clear_objects_returns_the_worker_and_does_not_propagate(bob, alice):
    x = th.tensor([1]).send(bob).send(alice)
    assert alice.clear_objects() is alice
    assert repr(alice) == "<VirtualWorker id:alice #objects:0>"
    assert len(bob._objects) == 1
    del x  # deleting a cleared object is harmless
    assert alice._objects == {}


# ---- rule 11: _objects reflects everything issued before it
def test_rule11_objects_reflects_relayed_writes(bob, alice):
    x = th.tensor([1, 2]).send(bob).send(alice)
    ys = [x + i for i in range(50)]
    assert len(bob._objects) == 51  # relayed through alice, yet all visible on bob
    del ys
    assert len(bob._objects) == 1


def test_rule11_inplace_through_a_chain_is_visible_on_the_last_hop(bob, alice):
    p = th.tensor([1, 2]).send(bob)
    x = p.clone().send(alice)
    x.add_(10)
    assert th.equal(bob._objects[p.id_at_location], th.tensor([11, 12]))


def test_pipelined_ops_through_a_chain_run_in_order_and_a_failure_among_them_surfaces(bob, alice):
    """A relaying worker sends the next hop what it relays in batches: order and errors hold."""
    x = th.zeros(3, dtype=th.float64).send(bob).send(alice)
    out_of_range = th.tensor([7]).send(bob).send(alice)
    local = th.zeros(3, dtype=th.float64)
    surfaced = []

    def pipelined(op):
        # The failure surfaces at the next wait: a later op's (each op on a chain first waits for
        # earlier writes elsewhere, and that op is not sent then) or the listing's below.
        try:
            op()
        except sy.RemoteError as error:
            surfaced.append(error)
            op()

    for i in range(300):  # in place, and order-sensitive: any reordering changes the result
        pipelined(lambda: x.mul_(0.5))
        pipelined(lambda: x.add_(i))
        local.mul_(0.5).add_(i)
        if i == 150:
            bad = x.index_select(0, out_of_range)  # fails on bob only: no shape says so earlier
    if not surfaced:
        with pytest.raises(sy.RemoteError) as caught:
            bob._objects
        surfaced.append(caught.value)
    assert len(surfaced) == 1 and surfaced[0].worker == "bob" and "index" in str(surfaced[0])
    assert th.equal(x.get().get(), local)
    del bad


# ---- rule 12: metadata locally, values only after get
def test_rule12_metadata_is_local_and_values_need_get(bob):
    x = th.ones(2, 3).send(bob)
    assert x.shape == (2, 3) and x.size(1) == 3 and x.numel() == 6 and len(x) == 2 and x.dim() == 2
    for needs_value in (lambda: x.item(), lambda: x.sum().item(), lambda: bool(x.sum()), lambda: x.tolist(), lambda: float(x.sum())):
        with pytest.raises(sy.ValueNeedsGetError, match=r"\.get\(\)"):
            needs_value()


# ---- chains of three hops: me -> alice -> bob -> carol
def test_three_hop_chain_ops_gets_and_deletes(bob, alice, carol):
    x = th.tensor([1.0, 2.0]).send(carol).send(bob).send(alice)
    y = (x + x) * 2
    assert y.location is alice and y.shape == (2,)
    assert [len(w._objects) for w in (alice, bob, carol)] == [2, 2, 2]  # x and y; x + x died with its expression
    step = y.get()
    assert step.location is bob
    step = step.get()
    assert step.location is carol
    assert th.equal(step.get(), th.tensor([4.0, 8.0]))
    assert [len(w._objects) for w in (alice, bob, carol)] == [1, 1, 1]  # only x's chain is left
    del x
    assert [len(w._objects) for w in (alice, bob, carol)] == [0, 0, 0]
