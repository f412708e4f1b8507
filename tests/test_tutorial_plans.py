"""PySyft 0.2.9's tutorial Part 08 - Introduction to Plans, cell by cell (our transcription;
only the import changed), on real worker processes. Then what a plan must never be: a way to
run an op outside the op table, past a limit, or to get out of private data what the same ops
one by one would not.

(Part 08 bis, "Introduction to Protocols", is not in v0.2.9's tutorials: it was removed
before that tag, and sy.Protocol with it; only its translations remain.)"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fedq as sy
from fedq.errors import RequestTooLargeError
from fedq.ids import new_id
from fedq.messages import PlanStep, Ref, RunOp, RunPlan, Slot

from helpers import refused


@pytest.fixture(scope="module")
def devices(hook):
    """Cells 4 and 6, as the tutorial wrote them: two workers given their data at start (the
    data owner's: found by search, read-only to plans and ops)."""
    with warnings.catch_warnings():  # (fedq says the tutorial's line changes nothing: its local worker stores nothing)
        warnings.simplefilter("ignore")
        hook.local_worker.is_client_worker = False
    server = hook.local_worker  # noqa: F841
    x11 = torch.tensor([-1, 2.0]).tag("input_data")
    x12 = torch.tensor([1, -2.0]).tag("input_data2")
    x21 = torch.tensor([-1, 2.0]).tag("input_data")
    x22 = torch.tensor([1, -2.0]).tag("input_data2")

    device_1 = sy.VirtualWorker(hook, id="device_1", data=(x11, x12))
    device_2 = sy.VirtualWorker(hook, id="device_2", data=(x21, x22))
    devices = device_1, device_2
    yield devices
    for device in devices:
        device.shutdown()


def count_messages(monkeypatch, client):
    """`sent(kind)`: how many requests of type `kind` the client sent from now on (its own
    submit, spied on: every request still goes out)."""
    sent = []
    submit = client.submit

    def spy(address, message, **kwargs):
        sent.append(type(message))
        return submit(address, message, **kwargs)

    monkeypatch.setattr(client, "submit", spy)
    return sent.count


class Net(sy.Plan):  # cell 28
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=0)


def plain_forward(net, x):
    """The same net in plain torch, on a copy of its weights."""
    with torch.no_grad():
        return F.log_softmax(F.linear(F.relu(F.linear(x, net.fc1.weight, net.fc1.bias)), net.fc2.weight, net.fc2.bias), dim=0)


# --------------------------------------------------------------------------- the tutorial

def test_part08_basic_example(devices, monkeypatch, capsys):
    device_1, device_2 = devices

    @sy.func2plan()  # cell 8
    def plan_double_abs(x):
        x = x + x
        x = torch.abs(x)
        return x

    assert repr(plan_double_abs).startswith("<Plan plan_double_abs id:")  # cell 10
    pointer_to_data = device_1.search("input_data")[0]  # cell 12
    assert pointer_to_data.location is device_1 and pointer_to_data.shape == (2,)
    assert plan_double_abs.is_built is False  # cell 14
    try:  # cell 15: sending a plan that is not built fails
        plan_double_abs.send(device_1)
    except RuntimeError as error:
        print(error)
    assert capsys.readouterr().out == "A plan needs to be built before being sent to a worker.\n"
    with pytest.raises(sy.PlanNotBuiltError):  # (and so does running it on pointers)
        plan_double_abs(pointer_to_data)

    plan_double_abs.build(torch.tensor([1.0, -2.0]))  # cell 17
    assert plan_double_abs.is_built  # cell 18
    assert plan_double_abs.actions == ["Tensor.add", "torch.abs"]  # recorded by name, from the op table
    pointer_plan = plan_double_abs.send(device_1)  # cell 20
    assert isinstance(pointer_plan, sy.PointerPlan) and device_1.id in repr(pointer_plan)

    sent = count_messages(monkeypatch, device_1.client)
    pointer_to_result = pointer_plan(pointer_to_data)  # cell 24
    print(pointer_to_result)
    assert isinstance(pointer_to_result, sy.PointerTensor) and pointer_to_result.location is device_1
    assert capsys.readouterr().out.startswith("[PointerTensor | me:")
    assert (sent(RunPlan), sent(RunOp)) == (1, 0)  # one message for the plan, none per op
    assert torch.equal(pointer_to_result.get(), torch.tensor([2.0, 4.0]))  # cell 26
    # (beyond the tutorial: a built plan called on pointers is sent where they are, once; a copy is sent nowhere)
    assert torch.equal(plan_double_abs(pointer_to_data).get(), torch.tensor([2.0, 4.0]))
    assert plan_double_abs.send(device_1) is pointer_plan
    twin = plan_double_abs.copy()
    assert twin.is_built and twin.actions == plan_double_abs.actions and twin.send(device_1) is not pointer_plan


def test_part08_towards_a_concrete_example(devices):
    device_1, device_2 = devices
    net = Net()  # cell 29
    assert isinstance(net, nn.Module) and repr(net).startswith("<Net Net id:")  # cell 30
    net.build(torch.tensor([1.0, 2.0]))  # cell 32
    pointer_to_net = net.send(device_1)  # cell 34
    pointer_to_data = device_1.search("input_data")[0]  # cell 36
    pointer_to_result = pointer_to_net(pointer_to_data)  # cell 38
    assert isinstance(pointer_to_result, sy.PointerTensor) and pointer_to_result.shape == (2,)
    result = pointer_to_result.get()  # cell 40
    assert torch.allclose(result, plain_forward(net, torch.tensor([-1, 2.0])), atol=1e-5)
    assert torch.allclose(result, net(torch.tensor([-1, 2.0])), atol=1e-5)  # called here, it is the model itself
    # Its weights went with it and are ours on device_1 (four tensors: two layers' weight and bias).
    assert len(pointer_to_net.state) == 4 and all(p.location is device_1 for p in pointer_to_net.state)
    assert {tuple(t.shape) for t in device_1._objects.values()} >= {(3, 2), (3,), (2, 3), (2,)}


def test_part08_switch_between_workers(devices):
    device_1, device_2 = devices
    net = Net()  # cells 43-44
    net.build(torch.tensor([1.0, 2.0]))
    expected = plain_forward(net, torch.tensor([-1, 2.0]))

    pointer_to_net_1 = net.send(device_1)  # cell 46
    pointer_to_data = device_1.search("input_data")[0]
    pointer_to_result = pointer_to_net_1(pointer_to_data)
    assert torch.allclose(pointer_to_result.get(), expected, atol=1e-5)

    pointer_to_net_2 = net.send(device_2)  # cell 48
    pointer_to_data = device_2.search("input_data")[0]
    pointer_to_result = pointer_to_net_2(pointer_to_data)
    assert torch.allclose(pointer_to_result.get(), expected, atol=1e-5)
    assert net.send(device_1) is pointer_to_net_1  # (sent once per worker, as PySyft's)


def test_part08_automatically_building_plans_that_are_functions(devices):
    device_1, device_2 = devices

    @sy.func2plan(args_shape=[(-1, 1)])  # cell 51
    def plan_double_abs(x):
        x = x + x
        x = torch.abs(x)
        return x

    assert plan_double_abs.is_built

    @sy.func2plan(args_shape=[(1, 2), (-1, 2)])  # cell 53
    def plan_sum_abs(x, y):
        s = x + y
        return torch.abs(s)

    assert plan_sum_abs.is_built

    @sy.func2plan(args_shape=[(1,)], state=(torch.tensor([1]),))  # cell 55
    def plan_abs(x, state):
        (bias,) = state.read()
        x = x.abs()
        return x + bias

    pointer_plan = plan_abs.send(device_1)  # cell 56
    x_ptr = torch.tensor([-1, 0]).send(device_1)
    p = pointer_plan(x_ptr)
    assert torch.equal(p.get(), torch.tensor([2, 1]))

    # (-1 in a shape is any size: built on a (1, 1), run on a (3, 1))
    x = torch.tensor([[-1.5], [2.0], [0.25]])
    assert torch.equal(plan_double_abs.send(device_2)(x.send(device_2)).get(), torch.abs(x + x))
    y = torch.tensor([[1.0, -4.0], [-2.0, 0.5]])
    got = plan_sum_abs.send(device_2)(torch.tensor([[0.5, 1.0]]).send(device_2), y.send(device_2)).get()
    assert torch.equal(got, torch.abs(torch.tensor([[0.5, 1.0]]) + y))
    assert torch.equal(plan_sum_abs(torch.tensor([[0.5, 1.0]]), y), got)  # here: the function itself


def test_a_sent_plans_state_is_ours_there_trains_there_and_comes_back_with_get(devices):
    """Beyond the tutorial: the weights sent with a Net plan are our objects on device_1, so a
    loss of the plan's output trains them there (backward, an optimizer on the state's
    pointers), and pointer_plan.get() brings them back: the same as plain torch's step."""
    device_1, _ = devices
    torch.manual_seed(0)
    net = Net()
    net.build(torch.tensor([1.0, 2.0]))
    reference = [p.detach().clone().requires_grad_() for p in net.parameters()]
    remote = net.send(device_1)
    opt = torch.optim.SGD(remote.state, lr=0.1)
    x = torch.tensor([-1.0, 2.0])
    opt.zero_grad()
    remote(x.send(device_1)).sum().backward()
    opt.step()

    w1, b1, w2, b2 = reference
    F.log_softmax(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), dim=0).sum().backward()
    with torch.no_grad():
        expected = [p - 0.1 * p.grad for p in reference]
    assert not torch.allclose(expected[0], w1)  # (the step moved the weights)
    back = remote.get()
    assert back is net and all(torch.allclose(p, e, atol=1e-5) for p, e in zip(net.parameters(), expected))
    with pytest.raises(sy.SpentPointerError):
        remote.state[0].get()


def test_a_plan_with_several_outputs_in_place_ops_and_a_nested_plan_runs_as_it_does_here(devices):
    device_1, _ = devices

    @sy.func2plan(args_shape=[(1, 2)])
    def double(x):
        return x * 2

    @sy.func2plan(args_shape=[(3, 4), (1, 4)])
    def stats(x, w):
        values, indices = torch.max(x, dim=1)  # two results of one op
        y = x.clone()
        y.add_(w)  # in place: no new slot
        y[0] = 0.0  # __setitem__
        return {"max": values, "argmax": indices, "y": double(y).t()}  # a plan inside a plan: its ops recorded here

    assert "Tensor.add_" in stats.actions and "Tensor.__setitem__" in stats.actions and stats.actions.count("Tensor.mul") == 1
    x, w = torch.randn(3, 4), torch.randn(1, 4)
    here = stats(x, w)
    there = stats.send(device_1)(x.send(device_1), w.send(device_1))
    assert set(there) == {"max", "argmax", "y"} and there["y"].shape == (4, 3) and there["argmax"].dtype == torch.int64
    for key in here:
        assert torch.allclose(there[key].get(), here[key], atol=1e-6), key


def test_a_model_plans_buffers_are_state_too_updated_on_the_worker(devices):
    """BatchNorm's running statistics (and its counter, an in-place add_) are the plan's state:
    a call in training mode updates them on the worker, as a forward here would, and get() brings them back."""
    device_1, _ = devices

    class Normed(sy.Plan):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 3), nn.BatchNorm1d(3)

        def forward(self, x):
            return F.relu(self.bn(self.fc(x)))

    net = Normed()
    net.build(torch.randn(8, 4))
    reference = Normed()
    reference.load_state_dict(net.state_dict())
    remote = net.send(device_1)
    x = torch.randn(5, 4)  # (another batch size than the build's: BatchNorm reads only the rank)
    assert torch.allclose(remote(x.send(device_1)).get(), reference(x), atol=1e-5)
    remote.get()
    for name, value in reference.state_dict().items():
        assert torch.allclose(net.state_dict()[name].float(), value.float(), atol=1e-5), name
    assert int(net.bn.num_batches_tracked) == 1


# --------------------------------------------------------------------------- bad input: clear errors, here

def test_plans_refuse_bad_input_before_anything_is_sent(devices, monkeypatch):
    device_1, _ = devices
    net = Net()
    net.build(torch.tensor([1.0, 2.0]))
    remote = net.send(device_1)
    x = torch.tensor([1.0, 2.0]).send(device_1)
    sent = count_messages(monkeypatch, device_1.client)
    with pytest.raises(sy.PlanArgumentsError, match="takes 1 argument"):
        remote(x, x)
    with pytest.raises(sy.PlanArgumentsError, match=r"shapes \(3,\).*torch.nn.functional.linear"):
        remote(torch.ones(3).send(device_1))
    with pytest.raises(sy.PlanArgumentsError, match="on pointers"):
        remote(torch.ones(2))
    with pytest.raises(sy.TensorsNotCollocatedError, match="device_2"):
        remote(torch.ones(2).send(devices[1]))
    assert sent(RunPlan) == 0
    sent_model = Net()
    sent_model.build(torch.tensor([1.0, 2.0]))
    torch.nn.Module.send(sent_model, device_1)  # (the model's own send: its weights become pointers)
    with pytest.raises(sy.PlanArgumentsError, match="get"):
        sent_model.send(device_1)

    # A size read while building is a constant of the plan: a call on other sizes is refused, not wrong.
    @sy.func2plan(args_shape=[(-1, 2, 2)])
    def flat(x):
        return x.view(x.size(0), -1) * 2

    with pytest.raises(sy.PlanArgumentsError, match="shapes"):
        flat.send(device_1)(torch.ones(3, 2, 2).send(device_1))
    assert torch.equal(flat.send(device_1)(torch.ones(1, 2, 2).send(device_1)).get(), torch.full((1, 4), 2.0))

    @sy.func2plan(args_shape=[(-1, 2, 2)])
    def flat_any(x):
        return x.flatten(1) * 2  # (no size read: any batch)

    assert flat_any.send(device_1)(torch.ones(3, 2, 2).send(device_1)).get().shape == (3, 4)

    with pytest.raises(sy.UnsupportedOperationError, match="building plan 'strided'.*raw memory"):
        @sy.func2plan(args_shape=[(4,)])
        def strided(x):
            return x.as_strided((2,), (2,))
    with pytest.raises(sy.PlanBuildError, match="value"):
        @sy.func2plan(args_shape=[(4,)])
        def branches(x):
            return x * 2 if x.sum() > 0 else x
    with pytest.raises(sy.PlanBuildError, match="return"):
        @sy.func2plan(args_shape=[(4,)])
        def returns_nothing(x):
            x.sum()


# --------------------------------------------------------------------------- attacks: a crafted RunPlan

def crafted(worker, steps, args=(), outputs=(), result_ids=()):
    return sy.local_client().request(worker.address, RunPlan(tuple(steps), tuple(args), tuple(outputs), tuple(result_ids)))


def test_a_crafted_plan_naming_an_op_outside_the_table_is_refused_before_any_step_runs(bob, tmp_path):
    x = torch.tensor([1.0, 2.0]).send(bob)
    before = set(bob._objects)
    target = tmp_path / "written"
    for op in ("builtins.open", "torch.save", "torch.load", "os.system", "Tensor.apply_", "torch.manual_seed"):
        steps = [PlanStep("Tensor.add", (Slot(0), Slot(0)), {}, 1), PlanStep(op, (Slot(1), str(target)), {}, 1)]
        with pytest.raises(sy.UnsupportedOperationError, match="op table"):
            crafted(bob, steps, [Ref(x.id_at_location)], [2], [new_id()])
    assert set(bob._objects) == before  # not even the first, allowed, step left anything
    assert not target.exists() and not os.path.exists(str(target))
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))


def test_a_crafted_plan_names_tensors_by_slot_only_and_only_filled_ones(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    other = torch.tensor([5.0]).send(bob)
    before = set(bob._objects)
    bad = {
        "a Ref in a step": [PlanStep("Tensor.add", (Slot(0), Ref(other.id_at_location)), {}, 1)],
        "a slot not filled yet": [PlanStep("Tensor.add", (Slot(0), Slot(1)), {}, 1)],
        "a negative slot": [PlanStep("Tensor.add", (Slot(0), Slot(-1)), {}, 1)],
        "a step that is not a PlanStep": [("Tensor.add", (Slot(0),), {}, 1)],
        "results that are not a count": [PlanStep("Tensor.add", (Slot(0), Slot(0)), {}, "1")],
    }
    for why, steps in bad.items():
        with pytest.raises(sy.ProtocolError):
            crafted(bob, steps, [Ref(x.id_at_location)], [1], [new_id()])
    with pytest.raises(sy.ProtocolError, match="Refs"):
        crafted(bob, [], [x.id_at_location], [0], [new_id()])  # an argument that is not a Ref
    with pytest.raises(RequestTooLargeError):
        crafted(bob, [PlanStep("Tensor.neg", (Slot(0),), {}, 1)] * 5000, [Ref(x.id_at_location)], [1], [new_id()])
    assert set(bob._objects) == before


def test_malformed_plans_leave_the_worker_serving_with_every_object_intact(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    before = bob._objects
    step = PlanStep("Tensor.add", (Slot(0), Slot(0)), {}, 1)
    malformed = [
        RunPlan(None, (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((1, 2), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((step,), None, (1,), (new_id(),)),
        RunPlan((step,), ("x",), (1,), (new_id(),)),
        RunPlan((step,), (Ref("x"),), (1,), (new_id(),)),
        RunPlan((step,), (Ref(x.id_at_location),), ("1",), (new_id(),)),
        RunPlan((step,), (Ref(x.id_at_location),), (1,), None),
        RunPlan((step,), (Ref(x.id_at_location),), (1,), ("id",)),
        RunPlan((step,), (Ref(x.id_at_location),), (1, 1), (new_id(),)),
        RunPlan((step,), (Ref(x.id_at_location),), (1,), (new_id(),), grad_enabled="yes"),
        RunPlan((PlanStep(None, (Slot(0),), {}, 1),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep(["torch.add"], (Slot(0),), {}, 1),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep("Tensor.add", (Slot("0"), Slot(2**70)), {}, 1),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep("Tensor.add", Slot(0), [], 1),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep("Tensor.add", (Slot(0), Slot(0)), {"out": Slot(0)}, 1),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep("Tensor.add", (Slot(0), Slot(0)), {}, 2),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep("Tensor.add", (Slot(0), Slot(0)), {}, True),), (Ref(x.id_at_location),), (1,), (new_id(),)),
        RunPlan((PlanStep("Tensor.add", (Slot(0), Slot(0)), {}, 10**9),), (Ref(x.id_at_location),), (1,), (new_id(),)),
    ]
    for message in malformed:
        try:
            sy.local_client().request(bob.address, message)
        except (sy.FedqError, TypeError, ValueError, RuntimeError, LookupError):
            pass  # refused, one way or another: what matters is what is left
    assert bob.ping().objects == len(before)
    after = bob._objects
    assert after.keys() == before.keys() and torch.equal(after[x.id_at_location], torch.tensor([1.0, 2.0]))


def test_a_plan_is_held_to_the_store_limit_by_what_its_steps_make(hook):
    """Intermediates are stored while the plan runs: they count against max_store_bytes, as
    the same ops' results would; the plan fails, and leaves only what was there."""
    small = sy.VirtualWorker(hook, id="plans_small_store", max_store_bytes=1 << 20)
    try:
        x = torch.ones(16 * 1024).send(small)  # 64 KiB

        @sy.func2plan(args_shape=[(16 * 1024,)])
        def grows(x):
            return x.repeat(32).sum()  # 2 MiB in between, 4 bytes out

        with pytest.raises(sy.StoreFullError):
            (x.repeat(32).sum()).get()
        with pytest.raises(sy.StoreFullError):
            grows.send(small)(x).get()
        assert list(small._objects) == [x.id_at_location]
    finally:
        small.shutdown()


# --------------------------------------------------------------------------- privacy: a plan releases nothing its ops would not

def test_a_plan_on_private_data_releases_nothing_its_ops_one_by_one_would_not(data_owners):
    owner = data_owners[0]
    data, target = owner.search("#housing", "#data")[0], owner.search("#housing", "#target")[0]

    @sy.func2plan(args_shape=[(64, 4)])
    def scaled_rows(x):
        return (x * 2).sum(dim=1)

    @sy.func2plan(args_shape=[(64, 4), (64, 1)])
    def loss(x, y):
        return ((x.sum(dim=1, keepdim=True) - y) ** 2).mean()

    @sy.func2plan(args_shape=[(64, 4)])
    def first_row(x):
        return x[0] + 0

    for plan, args, direct in (
        (scaled_rows, (data,), lambda: (data * 2).sum(dim=1)),
        (loss, (data, target), lambda: ((data.sum(dim=1, keepdim=True) - target) ** 2).mean()),
        (first_row, (data,), lambda: data[0] + 0),
    ):
        assert refused(direct().get)
        assert refused(plan.send(owner)(*args).get), plan.name  # exact: refused, as the ops are
    # A release the ops would get is the plan's too: noisy, charged to the dataset's budget.
    assert refused(loss.send(owner)(data, target).get) and isinstance(loss.send(owner)(data, target).get(epsilon=0.5, bounds=(0.0, 100.0)), torch.Tensor)


def test_a_plan_cannot_write_into_the_owners_data(data_owners):
    owner = data_owners[0]
    data = owner.search("#housing", "#data")[0]

    @sy.func2plan(args_shape=[(64, 4)])
    def overwrite(x):
        x.mul_(0)
        return x + 1

    result = overwrite.send(owner)(data)  # (pipelined: the refusal comes at the next wait)
    with pytest.raises(PermissionError, match="data owner"):
        sy.local_client().sync()
    with pytest.raises(sy.ObjectNotFoundError):  # the plan stored nothing: all of its outputs or none
        result.get()
    assert refused(data.get)


def test_a_plan_whose_op_fails_on_private_values_tells_nothing(data_owners):
    """As a direct op does: an index out of range in private data makes private zeros, not an error."""
    owner = data_owners[0]
    data = owner.search("#housing", "#data")[0]

    @sy.func2plan(args_shape=[(64, 4)])
    def index_by_value(x):
        return torch.zeros(3)[(x[0, 0:1] * 1000).long() + 10**9] + 0

    result = index_by_value.send(owner)(data)
    assert result.shape == (1,) and refused(result.get)
