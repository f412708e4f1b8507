"""A FedAvg round's local steps as plans (federated/local_plans.py): one RunPlan per owner and
round, giving plain torch's FedAvg; a model a plan would not follow trains op by op, a model
changed between rounds is traced again, and the plan's ops are the worker's to refuse as the
same ops sent one by one would be."""

from __future__ import annotations

import gc

import pytest
import torch as th
from torch import nn, optim

import fedq as sy
from fedq.federated import train_on_trusted_aggregator
from fedq.federated.local_plans import local_sgd_plans


def _shards(count: int, rows: int = 10) -> list[tuple[th.Tensor, th.Tensor]]:
    generator = th.Generator().manual_seed(5)
    return [(th.randn(rows, 3, generator=generator), th.randn(rows, 2, generator=generator)) for _ in range(count)]


def _mlp(activation: nn.Module | None = None) -> nn.Module:
    th.manual_seed(11)
    return nn.Sequential(nn.Linear(3, 4), activation or nn.ReLU(), nn.Linear(4, 2))


def _fedavg(model: nn.Module, shards: list, *, local_steps: int, lr: float, batch_size: int | None) -> None:
    """One FedAvg round in plain torch, as train_on_trusted_aggregator runs it."""
    copies = []
    for data, target in shards:
        copy = _mlp(type(model[1])())
        copy.load_state_dict(model.state_dict())
        opt = optim.SGD(copy.parameters(), lr=lr)
        for step in range(local_steps):
            start = step * batch_size % data.shape[0] if batch_size else 0
            x, y = (data[start:start + batch_size], target[start:start + batch_size]) if batch_size else (data, target)
            opt.zero_grad()
            ((copy(x) - y) ** 2).mean().backward()
            opt.step()
        copies.append(copy)
    with th.no_grad():
        for name, param in model.named_parameters():
            param.set_(th.stack([dict(c.named_parameters())[name] for c in copies]).mean(0))


def _same(model: nn.Module, reference: nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert th.equal(p.detach(), q.detach()), (name, p, q)  # (the same kernels on the same values: to the bit)


@pytest.fixture
def owners(bob, alice):
    pairs = [(d.send(w), t.send(w)) for w, (d, t) in zip((bob, alice), _shards(2))]
    yield pairs
    del pairs[:]
    gc.collect()


def test_a_round_of_batches_is_one_plan_per_owner_and_gives_plain_torchs_fedavg(hook, owners, secure_worker):
    model, reference = _mlp(), _mlp()
    data, target = owners[0]
    plans = local_sgd_plans(model, data, target, 4, 0.1, 3)  # (the last batch of 10 rows wraps: 9:12 is one row)
    assert plans is not None and len(plans) == 1
    assert plans[0].actions.count("Tensor.backward") == 4 and plans[0].actions.count("torch._foreach_add_") == 4
    for _ in range(2):  # the second round runs the plan traced for the first
        train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=4, lr=0.1, batch_size=3, progress=False)
        _fedavg(reference, _shards(2), local_steps=4, lr=0.1, batch_size=3)
        _same(model, reference)
    assert local_sgd_plans(model, data, target, 4, 0.1, 3) is plans
    hook.local_worker.sync()
    assert secure_worker._objects == {}  # nothing of the rounds is left on the aggregator


def test_long_local_training_is_cut_into_plans_called_in_turn(hook, owners, secure_worker, monkeypatch):
    from fedq.federated import local_plans

    monkeypatch.setattr(local_plans, "MAX_STEPS_PER_PLAN", 45)  # (a one-step plan of this MLP is 22 ops: 2 steps a plan)
    model, reference = _mlp(), _mlp()
    plans = local_sgd_plans(model, *owners[0], 5, 0.1, 4)
    assert plans is not None and [p.actions.count("Tensor.backward") for p in plans] == [2, 2, 1]
    train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=5, lr=0.1, batch_size=4, progress=False)
    _fedavg(reference, _shards(2), local_steps=5, lr=0.1, batch_size=4)
    _same(model, reference)


def test_a_model_changed_between_rounds_is_traced_again(owners, secure_worker):
    model, reference = _mlp(), _mlp()
    train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=2, lr=0.1, progress=False)
    _fedavg(reference, _shards(2), local_steps=2, lr=0.1, batch_size=None)
    first = local_sgd_plans(model, *owners[0], 2, 0.1, None)
    model[1], reference[1] = nn.Tanh(), nn.Tanh()  # same parameters, another function
    assert local_sgd_plans(model, *owners[0], 2, 0.1, None) is not first
    train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=2, lr=0.1, progress=False)
    _fedavg(reference, _shards(2), local_steps=2, lr=0.1, batch_size=None)
    _same(model, reference)
    traced = local_sgd_plans(model, *owners[0], 2, 0.1, None)
    model[1].extra = 0.5  # (a plain attribute of a module counts too: a forward may read it)
    assert local_sgd_plans(model, *owners[0], 2, 0.1, None) is not traced


class _Scaled(nn.Module):
    """A buffer (a plan would not follow it as the model does): trained op by op."""

    def __init__(self) -> None:
        super().__init__()
        th.manual_seed(2)
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", th.tensor(0.5))

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.linear(x) * self.scale


def test_a_model_with_buffers_or_frozen_parameters_trains_op_by_op(owners, secure_worker):
    assert local_sgd_plans(_Scaled(), *owners[0], 2, 0.1, None) is None
    frozen = _mlp()
    frozen[0].weight.requires_grad_(False)
    assert local_sgd_plans(frozen, *owners[0], 2, 0.1, None) is None
    model = _Scaled()
    train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=2, lr=0.1, progress=False)
    reference, copies = _Scaled(), []
    for data, target in _shards(2):
        copy = _Scaled()
        opt = optim.SGD(copy.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            ((copy(data) - target) ** 2).mean().backward()
            opt.step()
        copies.append(copy)
    with th.no_grad():
        for name, param in reference.named_parameters():
            param.set_(th.stack([dict(c.named_parameters())[name] for c in copies]).mean(0))
    _same(model, reference)


def test_a_plan_round_over_owners_that_refuse_updates_leaks_no_update(hook, federation, secure_worker):
    """The attack: a key holder's round on owners whose datasets refuse updates, its local steps
    now one plan each. The plan's backward writes private grads as the op would (privacy.py), so
    the trained copies are private, and moving them to the aggregator and averaging there
    releases nothing: the average's get is refused, as op by op."""
    from fedq.federated import find_owner_data

    refusing = [sy.VirtualWorker(hook, id=f"plan_refuser_{name}", data=_refusing_owner_script()) for name in ("a", "b")]
    try:
        pairs = find_owner_data(refusing)
        model = nn.Linear(4, 1)
        assert local_sgd_plans(model, *pairs[0], 1, 0.1, None) is not None
        before = model.weight.detach().clone()
        with pytest.raises(sy.GetNotPermittedError):
            train_on_trusted_aggregator(model, pairs, secure_worker, rounds=1, local_steps=1, lr=0.1, progress=False)
        assert th.equal(model.weight.detach(), before)
        del pairs
        gc.collect()
    finally:
        for worker in refusing:
            worker.shutdown()


def _refusing_owner_script() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent / "workers" / "housing_secure.py")
