"""Red team on the features of issues 15 and 17's round: plans (plans.py, worker.run_plan), data
given as tensors (AddOwnerData) and federated datasets (datasets.py). A key holder (the
federation key, not the admin key: a script's ordinary ops are never the owner's, owner actions
aside) with the public API, or a crafted RunPlan sent with the client's machinery, against real
worker processes. Every test asserts the SAFE outcome; an attack that succeeds today is marked
`succeeds(why)` (strict xfail, for an AssertionError only) until it is closed.

The attacks that change a worker's state for good (its owner's data made private, its dataset
unreleasable, memory hidden from its limit) each get a worker of their own, stopped after."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch as th

import fedq as sy

from helpers import succeeds
from fedq.ids import new_id
from fedq.messages import DeleteObjects, GetObject, PlanStep, Ref, RunPlan, Slot

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings("ignore")


def crafted(worker, steps, args=(), outputs=(), result_ids=()):
    """A RunPlan as the client sends one, but made by hand."""
    return sy.local_client().request(worker.address, RunPlan(tuple(steps), tuple(args), tuple(outputs), tuple(result_ids)))


def refused(fetch) -> bool:
    try:
        fetch()
    except (sy.GetNotPermittedError, sy.NotReleasableError):
        return True
    return False


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


@succeeds("an op whose result is the owner's memory (view_as, type_as, to, expand_as, a plan step) that also "
          "reads private data marks that memory private (privacy.py run marks every result's storage): the owner's "
          "public data is then refused to everyone")
def test_a_key_holders_plan_does_not_make_the_owners_public_data_private(device):
    public = device.search("#pub")[0]
    assert th.equal(public.get(), th.arange(6.0))  # public: anyone may fetch it
    mine = th.zeros(6).tag("#private").send(device)  # the attacker's own private tensor

    @sy.func2plan(args_shape=[(6,), (6,)])
    def alias(x, y):
        return x.view_as(y)  # a view of x's memory, computed from y: "private"

    alias.send(device)(device.search("#pub")[0], mine)
    sy.local_client().sync()
    # The owner's data, found anew by anyone, is as public as the owner made it.
    assert not refused(device.search("#pub")[0].get), "a key holder made the owner's public data private"


@succeeds("an op that returns its input itself (type_as, to, contiguous) overwrites the facts privacy.py keeps of "
          "that tensor (keyed by the tensor): the owner's dataset table, typed as a key holder's private tensor, "
          "loses its rows and bounds, and no one can release an aggregate of it again")
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
