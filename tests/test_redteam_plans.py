"""Red team on the features of issues 15 and 17's round: plans (plans.py, worker.run_plan), data
given as tensors (AddOwnerData) and federated datasets (datasets.py). A key holder (the
federation key, not the admin key: a script's ordinary ops are never the owner's, owner actions
aside) with the public API, or a crafted RunPlan sent with the client's machinery, against real
worker processes. Every test asserts the SAFE outcome; an attack that succeeds today is marked
`succeeds(why)` (strict xfail, for an AssertionError only) until it is closed.

The attacks that change a worker's state for good (its owner's data made private, its dataset
unreleasable, memory hidden from its limit) each get a worker of their own, stopped after."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch as th
import zmq

import fedq as sy

from helpers import refused, succeeds
from fedq.codec import Codec
from fedq.errors import RequestTooLargeError
from fedq.ids import new_id
from fedq.messages import DeleteObjects, GetObject, PlanStep, Ref, RunPlan, Slot, StoreObject
from fedq.worker import MAX_RESULTS_PER_OP

ROOT = Path(__file__).resolve().parent.parent
SECRET = runpy.run_path(str(ROOT / "tests" / "data" / "dp_owner.py"))["SECRET"]  # the dp_owner's private table

pytestmark = pytest.mark.filterwarnings("ignore")


def crafted(worker, steps, args=(), outputs=(), result_ids=()):
    """A RunPlan as the client sends one, but made by hand."""
    return sy.local_client().request(worker.address, RunPlan(tuple(steps), tuple(args), tuple(outputs), tuple(result_ids)))


@pytest.fixture
def device(hook, federation):
    """A worker holding data given as tensors: its owner's (this script's), public, read-only."""
    worker = sy.VirtualWorker(hook, id="redteam_plans_device", data=(th.arange(6.0).tag("#pub"),))
    yield worker
    worker.shutdown()


@pytest.fixture
def own_dp_owner(hook, federation):
    """A fresh tests/data/dp_owner.py worker (its table: a private dataset, ε = 1, bounds 0..9)."""
    worker = sy.VirtualWorker(hook, id="redteam_plans_dp_owner", data=ROOT / "tests" / "data" / "dp_owner.py")
    yield worker
    worker.shutdown()


# --------------------------------------------------------------------------- the owner's data: changed by a key holder


def test_a_key_holders_plan_does_not_make_the_owners_public_data_private(device):
    public = device.search("#pub")[0]
    assert th.equal(public.get(), th.arange(6.0))  # public: anyone may fetch it
    mine = th.zeros(6).tag("#private").send(device)  # the attacker's own private tensor

    @sy.func2plan(args_shape=[(6,), (6,)])
    def alias(x, y):
        return x.view_as(y)  # a view of x's memory, computed from y: "private"

    alias.send(device)(device.search("#pub")[0], mine)
    try:
        sy.local_client().sync()
    except PermissionError:
        pass  # (refused, as the worker does: the owner's data is not a key holder's to relabel)
    # The owner's data, found anew by anyone, is as public as the owner made it.
    assert not refused(device.search("#pub")[0].get), "a key holder made the owner's public data private"


def test_a_key_holder_cannot_make_the_owners_dataset_unreleasable_for_everyone(own_dp_owner):
    table = own_dp_owner.search("#table")[0]
    assert isinstance(table.sum(dim=0).get(epsilon=0.01, bounds=(0.0, 9.0)), th.Tensor)  # a DP release works
    mine = th.zeros(64, 4).tag("#private").send(own_dp_owner)

    @sy.func2plan(args_shape=[(64, 4), (64, 4)])
    def retype(x, y):
        return x.type_as(y)  # x itself (same dtype): the table

    retype.send(own_dp_owner)(table, mine)
    sy.local_client().sync()
    fresh = own_dp_owner.search("#table")[0]
    assert not refused(lambda: fresh.sum(dim=0).get(epsilon=0.01, bounds=(0.0, 9.0))), \
        "a key holder's op stopped every release of the owner's dataset"


def test_a_crafted_plan_cannot_write_the_owners_data_whatever_its_result_count_says(device):
    """In place steps sent with results=1 (the path for ops that make tensors), out=, a setter,
    requires_grad_: each one a PermissionError, the data unchanged."""
    public = device.search("#pub")[0]
    x = Ref(public.id_at_location)
    view = PlanStep("Tensor.view", (Slot(0), -1), {}, 1)  # slot 1: a view of the owner's memory
    for target in (Slot(0), Slot(1)):
        for step in (
            PlanStep("Tensor.add_", (target, 1.0), {}, 1),
            PlanStep("Tensor.__setitem__", (target, 0, 5.0), {}, 0),
            PlanStep("Tensor.__setitem__", (target, 0, 5.0), {}, 1),
            PlanStep("torch.add", (target, 1.0), {"out": target}, 1),
            PlanStep("Tensor.data.__set__", (target, th.zeros(6)), {}, 1),
            PlanStep("Tensor.requires_grad_", (target,), {}, 1),
        ):
            with pytest.raises(PermissionError, match="data owner"):
                crafted(device, [view, step], [x], [0], [new_id()])
    assert th.equal(device.search("#pub")[0].get(), th.arange(6.0))


def test_a_plan_output_naming_the_owners_private_input_is_still_private_and_the_data_stays(own_dp_owner):
    """outputs=[0]: the input itself stored under an id of the caller's, unpinned. It is the
    owner's memory: refused as the table is, and deleting it frees nothing of the owner's."""
    table = own_dp_owner.search("#table")[0]
    alias = new_id()
    crafted(own_dp_owner, [], [Ref(table.id_at_location)], [0], [alias])
    client = sy.local_client()
    with pytest.raises(sy.GetNotPermittedError):
        client.request(own_dp_owner.address, GetObject(alias))
    client.request(own_dp_owner.address, DeleteObjects((alias,)))
    assert len(own_dp_owner.search("#table")) == 1
    assert refused(own_dp_owner.search("#table")[0].get)


# (was an attack that succeeded: the owner's search found every client's objects carrying the tags)
def test_a_key_holder_cannot_plant_data_the_owners_search_finds(hook, device):
    codec = Codec(hook.local_worker.key)  # a key holder's own session, not this script's (the owner's)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(device.address)
    try:
        sock.send_multipart(codec.encode(1, StoreObject(new_id(), th.tensor([666.0]), ("#pub",)), device.incarnation))
        assert sock.poll(20_000)
        codec.decode(sock.recv_multipart())
        found = device.search("#pub")
        grid = sy.PrivateGridNetwork(device).search("#pub")[device.id]
        values = [p.get().tolist() for p in found] + [p.get().tolist() for p in grid]
    finally:
        sock.close()
    assert values == [list(range(6))] * 2, f"the owner's search found {values}"


def test_a_plan_constant_written_with_private_data_does_not_carry_it_out(table, dp_owner):
    mine = th.zeros(64, 4).send(dp_owner)  # public, ours
    leaked = []
    for write in ("copy_", "out="):
        carrier = th.zeros(64, 4)  # a constant of the plan, in both steps: the same tensor on the worker
        steps = [
            PlanStep("Tensor.copy_", (carrier, Slot(0)), {}, 0) if write == "copy_"  # the table into the constant
            else PlanStep("torch.add", (Slot(0), 0), {"out": carrier}, 1),
            PlanStep("Tensor.add", (Slot(1), carrier), {}, 1),  # public + "constant": read as public
        ]
        out = new_id()
        crafted(dp_owner, steps, [Ref(table.id_at_location), Ref(mine.id_at_location)], [3 if write == "out=" else 2], [out])  # (out=: step 1 makes slot 2)
        try:
            fetched = sy.local_client().request(dp_owner.address, GetObject(out))
        except sy.GetNotPermittedError:
            continue
        if th.equal(fetched, SECRET):
            leaked.append(write)
    assert not leaked, f"a plan carried the owner's private table out through a constant written by {leaked}"


def test_no_plan_launders_private_rows_into_something_fetchable(table, dp_owner):
    """Detached, .data, views of freed intermediates, in place into a fresh result, a gradient
    from a dataset that refuses updates, an exact aggregate over the records: each output is
    refused, as the same ops one by one are."""
    w = th.zeros(4, requires_grad=True)

    def weighted(x, state):
        (weight,) = state.read()
        return (x * weight).sum()

    plans = {
        "detach": lambda x: x.detach() * 1,
        "data": lambda x: x.data + 0,
        "a view of a freed intermediate": lambda x: (x * 1).view(-1)[0:4] + 0,
        "in place into a fresh result": lambda x: (x[:, 0] * 0).add_(x[:, 1]),
        "an exact sum over the records": lambda x: x.sum(dim=0),
        "a one-hot mask of one cell": lambda x: (x * th.eye(64)[3:4].T).sum(),
    }
    for name, function in plans.items():
        plan = sy.func2plan(args_shape=[(64, 4)])(function)
        assert refused(plan.send(dp_owner)(table).get), name
    sent = sy.func2plan(args_shape=[(64, 4)], state=(w,))(weighted).send(dp_owner)
    sent(table).backward()  # w.grad: the column sums of the table
    assert refused(sent.state[0].grad.get), "a gradient"


def test_no_id_a_key_holder_names_replaces_the_owners_data(device):
    """The owner's data's id is known to every searcher (its pointer's id_at_location): a plan's
    result id, an op's, or a stored object's naming it is refused, and the data is as it was."""
    public = device.search("#pub")[0]
    owner_id = public.id_at_location
    mine = th.ones(6).send(device)
    client = sy.local_client()
    for attempt in (
        lambda: crafted(device, [PlanStep("Tensor.mul", (Slot(0), 0), {}, 1)], [Ref(mine.id_at_location)], [1], [owner_id]),
        lambda: crafted(device, [], [Ref(mine.id_at_location)], [0, 0], [new_id(), owner_id]),  # (the first stored, then undone)
        lambda: client.request(device.address, StoreObject(owner_id, th.full((6,), 666.0), ("#pub",))),
    ):
        with pytest.raises(sy.FedqError):
            attempt()
    assert [p.get().tolist() for p in device.search("#pub")] == [list(range(6))]
    assert len(device._objects) == 2  # the owner's data and mine: no output of a refused plan left
    assert mine.get().tolist() == [1.0] * 6


# --------------------------------------------------------------------------- limits


@pytest.fixture
def small_store(hook, federation):
    worker = sy.VirtualWorker(hook, id="redteam_plans_small_store", max_store_bytes=1 << 20)
    yield worker
    worker.shutdown()


def test_a_plan_step_cannot_hide_memory_from_the_store_limit(small_store):
    """Each call hides an 800 KB intermediate of the plan's in a 4-byte tensor of ours: three
    calls hold 2.4 MB on a worker whose store may hold 1 MiB."""
    kept = []
    for _ in range(3):
        x = th.zeros(1).send(small_store)
        steps = [PlanStep("Tensor.repeat", (Slot(0), 200_000), {}, 1), PlanStep("Tensor.data.__set__", (Slot(0), Slot(1)), {}, 1)]
        try:
            crafted(small_store, steps, [Ref(x.id_at_location)], [0], [new_id()])
        except (sy.FedqError, RuntimeError):
            pass  # (refused or failed: what counts is what is held afterwards)
        kept.append(x)
    held = sum(info.nbytes for info in small_store.describe())
    assert held <= 1 << 20, f"the store holds {held} bytes under max_store_bytes = {1 << 20}"


def test_a_traced_plan_that_swaps_memory_is_counted(small_store):
    """The same swap recorded by build (an in-place step, results=0) is re-measured: the
    second call's intermediate no longer fits."""
    @sy.func2plan(args_shape=[(1,)])
    def swap(x):
        x.data = x.repeat(200_000)
        return x.sum()

    plan = swap.send(small_store)
    kept = [th.zeros(1).send(small_store) for _ in range(2)]
    plan(kept[0]).get()
    with pytest.raises(sy.StoreFullError):
        plan(kept[1]).get()
    assert sum(info.nbytes for info in small_store.describe()) <= 1 << 20


def test_one_small_plan_cannot_make_more_tensors_than_one_op_may(bob):
    """128 references to one step splitting 1024 floats into views: 131,072 tensors stored at
    once (~1.4 s here); 4096 steps of 65,536 would take the worker about an hour."""
    x = th.zeros(1024).send(bob)
    step = PlanStep("Tensor.split", (Slot(0), 1), {}, 1024)
    sent = sy.local_client().stats()["bytes_sent"]
    try:
        crafted(bob, (step,) * 128, [Ref(x.id_at_location)], [0], [new_id()])
        outcome = "ran"
    except RequestTooLargeError:
        outcome = "refused"
    size = sy.local_client().stats()["bytes_sent"] - sent
    assert outcome == "refused", f"a {size}-byte plan made {128 * 1024} tensors (one op may make {MAX_RESULTS_PER_OP})"


# --------------------------------------------------------------------------- federated datasets over private rows


def test_the_loader_brings_no_private_row_here_shuffled_or_not(dp_owner, bob):
    coins = dp_owner.search("#coins")[0]  # 400 private records, ε = 1e6
    dataset = sy.BaseDataset(coins, coins)
    federated = sy.FederatedDataset([dataset])
    for shuffle in (False, True):
        for data, target in sy.FederatedDataLoader(federated, batch_size=100, shuffle=shuffle):
            assert refused(data.get) and refused(target.get)
            assert refused(lambda: data.move(bob)) and refused(lambda: (data + 0).get())
    with pytest.raises(sy.GetNotPermittedError):
        dataset.get()
    with pytest.raises(sy.GetNotPermittedError):
        federated.get_dataset("dp_owner_test_redteam_plans")
    assert federated.workers == ["dp_owner_test_redteam_plans"]  # a refused get leaves the part where it was


def test_a_batch_cut_with_a_crafted_index_is_no_release_of_one_row(dp_owner):
    """An unshuffled batch (a slice) keeps one record a row: its sum leaves as a DP release. An
    index tensor naming one row 100 times (a crafted 'permutation', or dataset[index]) must not:
    its sum would be that record's value with 1/100 of the noise."""
    coins = dp_owner.search("#coins")[0]
    dataset = sy.BaseDataset(coins, coins)
    batch, _ = next(iter(sy.FederatedDataLoader(sy.FederatedDataset([dataset]), batch_size=100)))
    assert isinstance(batch.sum().get(epsilon=1.0, bounds=(0.0, 1.0)), th.Tensor)
    one_row = th.full((100,), 3, dtype=th.long).send(dp_owner)
    for cut in (lambda: dataset[one_row][0], lambda: coins[one_row], lambda: coins.index_select(0, one_row)):
        assert refused(lambda: cut().sum().get(epsilon=1.0, bounds=(0.0, 1.0)))
    shuffled, _ = next(iter(sy.FederatedDataLoader(sy.FederatedDataset([sy.BaseDataset(coins, coins)]), batch_size=100, shuffle=True)))
    assert refused(lambda: shuffled.sum().get(epsilon=1.0, bounds=(0.0, 1.0)))


# --------------------------------------------------------------------------- workers forked from one zygote


# (was an attack that succeeded: a fork copied torch's generator, so every worker of one zygote drew one stream)
def test_workers_forked_from_one_zygote_draw_their_own_random_numbers(hook, federation):
    workers = [sy.VirtualWorker(hook, id=f"redteam_plans_rng_{i}") for i in range(2)]
    try:
        draws = [th.rand_like(th.zeros(8).send(w)).get() for w in workers]
    finally:
        for worker in workers:
            worker.shutdown()
    assert not th.equal(draws[0], draws[1]), "two workers drew the same random numbers"
