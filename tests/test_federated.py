"""Models on workers and PySyft's two federated-learning tutorials, as written, on real processes.

Each trained model must equal the same computation done locally with plain torch (same start,
same data) to 1e-5, and after each round nothing of the round may be left on any worker.
"""

from __future__ import annotations

import gc

import torch as th
from torch import nn, optim

import fedq as sy
from fedq.federated import LOSS_BOUNDS, LOSS_EPSILON, find_owner_data, plot_losses, train_on_trusted_aggregator


def _toy_data():
    data = th.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = th.tensor([[0], [0], [1], [1.0]], requires_grad=True)
    return data, target


def _assert_same(model: nn.Module, reference: nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert type(p) is nn.Parameter, f"{name} is still a {type(p).__name__}"
        assert th.allclose(p, q, atol=1e-5), (name, p, q)


def test_model_send_get_copy_move(bob, alice):
    model = nn.Linear(3, 2)
    original = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    assert model.send(bob) is model
    assert [p for p in model.parameters()] == params or all(a is b for a, b in zip(model.parameters(), params))
    assert all(isinstance(p, sy.PointerParameter) and p.location is bob for p in model.parameters())
    assert model.weight.shape == (2, 3) and len(bob._objects) == 2
    copy = model.copy()
    assert len(bob._objects) == 4 and copy.weight.location is bob
    copy.move(alice)
    assert len(bob._objects) == 2 and len(alice._objects) == 2
    assert model.get() is model
    assert all(th.equal(p, o) for p, o in zip(model.parameters(), original))
    assert all(th.equal(p, o) for p, o in zip(copy.get().parameters(), original))
    assert bob._objects == {} and alice._objects == {}


def test_forward_backward_step_on_a_sent_model_runs_on_the_worker(bob):
    th.manual_seed(1)
    model, reference = nn.Linear(4, 1), nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    x, y = th.randn(8, 4), th.randn(8, 1)
    opt, ref_opt = optim.SGD(model.parameters(), lr=0.05), optim.SGD(reference.parameters(), lr=0.05)
    model.send(bob)
    px, py = x.send(bob), y.send(bob)
    for _ in range(5):
        opt.zero_grad()
        loss = ((model(px) - py) ** 2).mean()
        loss.backward()
        assert isinstance(model.weight.grad, sy.PointerTensor)  # gradients stay remote
        opt.step()
        ref_opt.zero_grad()
        ref_loss = ((reference(x) - y) ** 2).mean()
        ref_loss.backward()
        ref_opt.step()
    assert abs(loss.get().item() - ref_loss.item()) < 1e-5
    model.get()
    _assert_same(model, reference)


def test_a_training_step_costs_a_constant_number_of_round_trips(hook, bob):
    """PySyft sent one message per parameter for step/zero_grad; here a step of a model with
    10 parameter tensors waits for the worker a constant number of times, not 10: none at all."""
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])  # 10 parameter tensors
    assert len(list(model.parameters())) == 10
    opt = optim.SGD(model.parameters(), lr=0.01)
    x, y = th.randn(2, 4).send(bob), th.randn(2, 4).send(bob)
    model.send(bob)
    client = hook.local_worker
    waits = []
    for _ in range(3):
        before = client.stats()["waits"]
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).sum()
        loss.backward()
        opt.step()
        waits.append(client.stats()["waits"] - before)
    assert waits == [0, 0, 0], waits  # all pipelined: each result remembers the leaves it came from
    model.get()


def test_toy_federated_learning_tutorial(bob, alice):
    """PySyft's "toy federated learning", unchanged but for the import."""
    data, target = _toy_data()
    data_bob, target_bob = data[0:2].send(bob), target[0:2].send(bob)
    data_alice, target_alice = data[2:].send(alice), target[2:].send(alice)
    datasets = [(data_bob, target_bob), (data_alice, target_alice)]
    th.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = nn.Linear(2, 1)
    reference.load_state_dict(model.state_dict())
    opt = optim.SGD(params=model.parameters(), lr=0.1)

    def train(iterations=10):
        for iter in range(iterations):
            for data, target in datasets:
                model.send(data.location)
                opt.zero_grad()
                pred = model(data)
                loss = ((pred - target) ** 2).sum()
                loss.backward()
                opt.step()
                model.get()
                last = loss.get()
        return last

    last_loss = train()
    ref_opt = optim.SGD(params=reference.parameters(), lr=0.1)
    local = [(data[0:2], target[0:2]), (data[2:], target[2:])]
    for _ in range(10):
        for d, t in local:
            ref_opt.zero_grad()
            ref_loss = ((reference(d) - t) ** 2).sum()
            ref_loss.backward()
            ref_opt.step()
    _assert_same(model, reference)
    assert abs(last_loss.item() - ref_loss.item()) < 1e-5
    del datasets, data_bob, target_bob, data_alice, target_alice
    gc.collect()
    assert bob._objects == {} and alice._objects == {}


def test_trusted_aggregator_tutorial(hook, bob, alice, secure_worker):
    """PySyft's "federated learning with a trusted aggregator", unchanged but for the import."""
    data, target = _toy_data()
    bobs_data, bobs_target = data[0:2].send(bob), target[0:2].send(bob)
    alices_data, alices_target = data[2:].send(alice), target[2:].send(alice)
    th.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = nn.Linear(2, 1)
    reference.load_state_dict(model.state_dict())
    iterations, worker_iters = 5, 5
    owned = {bob: 2, alice: 2, secure_worker: 0}  # each owner's data and target

    for a_iter in range(iterations):
        bobs_model = model.copy().send(bob)
        alices_model = model.copy().send(alice)
        bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
        alices_opt = optim.SGD(params=alices_model.parameters(), lr=0.1)
        for wi in range(worker_iters):
            bobs_opt.zero_grad()
            bobs_pred = bobs_model(bobs_data)
            bobs_loss = ((bobs_pred - bobs_target) ** 2).sum()
            bobs_loss.backward()
            bobs_opt.step()
            bobs_loss = bobs_loss.get().data
            alices_opt.zero_grad()
            alices_pred = alices_model(alices_data)
            alices_loss = ((alices_pred - alices_target) ** 2).sum()
            alices_loss.backward()
            alices_opt.step()
            alices_loss = alices_loss.get().data
        received = hook.local_worker.stats()["bytes_received"]
        alices_model.move(secure_worker)
        bobs_model.move(secure_worker)
        assert hook.local_worker.stats()["bytes_received"] - received < 2048  # the models did not come through me
        assert len(secure_worker._objects) == 4 and len(bob._objects) == 3  # bob: data, target, last prediction
        with th.no_grad():
            model.weight.set_(((alices_model.weight.data + bobs_model.weight.data) / 2).get())
            model.bias.set_(((alices_model.bias.data + bobs_model.bias.data) / 2).get())
        del bobs_model, alices_model, bobs_opt, alices_opt, bobs_pred, alices_pred
        gc.collect()
        assert {w: len(w._objects) for w in owned} == owned  # nothing of the round is left

    # The same computation with plain torch.
    for a_iter in range(iterations):
        copies = [nn.Linear(2, 1), nn.Linear(2, 1)]
        for c in copies:
            c.load_state_dict(reference.state_dict())
        opts = [optim.SGD(params=c.parameters(), lr=0.1) for c in copies]
        shards = [(data[0:2], target[0:2]), (data[2:], target[2:])]
        for wi in range(worker_iters):
            for c, o, (d, t) in zip(copies, opts, shards):
                o.zero_grad()
                ((c(d) - t) ** 2).sum().backward()
                o.step()
        with th.no_grad():
            reference.weight.set_((copies[1].weight.data + copies[0].weight.data) / 2)
            reference.bias.set_((copies[1].bias.data + copies[0].bias.data) / 2)
    _assert_same(model, reference)


def test_averaging_workflow_on_data_owners_shards(data_owners, secure_worker, tmp_path):
    """The workflow of `fedq demo --aggregator`: each owner's shard found by its tags."""
    owners = find_owner_data(data_owners)
    th.manual_seed(0)
    model = nn.Linear(4, 1)
    rounds = train_on_trusted_aggregator(model, owners, secure_worker, rounds=8, local_steps=5, lr=0.1)
    assert [r.round for r in rounds] == list(range(1, 9))
    first, last = rounds[0].losses, rounds[-1].losses
    # Each loss is a DP release (federated/trusted_aggregator.py): the mean of 64 squared errors clamped to (0, 10)
    # at ε = 1, so Laplace noise of scale 10 / 64; three of it covers the noise in both.
    noise = 3 * (LOSS_BOUNDS[1] - LOSS_BOUNDS[0]) / 64 / LOSS_EPSILON
    assert set(last) == {"owner_bob", "owner_alice"} and all(last[k] < first[k] / 5 + noise for k in last)
    assert th.allclose(model.weight, th.tensor([[3.0, -1.0, -2.0, -0.5]]), atol=0.2)
    del owners
    gc.collect()
    assert secure_worker._objects == {}
    assert [len(w._objects) for w in data_owners] == [2, 2]
    png = plot_losses(rounds, str(tmp_path / "losses.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_shows_each_round(data_owners, secure_worker, capsys):
    rounds = train_on_trusted_aggregator(nn.Linear(4, 1), find_owner_data(data_owners), secure_worker, rounds=2, local_steps=1, lr=0.1, progress=True)
    assert [r.round for r in rounds] == [1, 2]
    assert "round  2: owner_bob loss" in capsys.readouterr().out
