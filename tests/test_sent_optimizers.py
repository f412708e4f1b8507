"""Issue 15's two bugs: torch's optimizers step on a sent model as they do in plain torch (built
before the send, as PySyft's tutorials build them), their state where the parameters are, on a
worker that runs no shipped code; and a model that was fetched leaves gradient tracking."""

from __future__ import annotations

import pytest
import torch as th
from torch import nn

import fedq as sy
from fedq.federated.floptimizer import Optims

OPTIMIZERS = [
    (th.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (th.optim.Adam, {"lr": 0.05}),
    (th.optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    (th.optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
    (th.optim.Adagrad, {"lr": 0.1}),
    # (beyond issue 15's five: torch's others that step a plain model, but ASGD, whose scalar
    # state is made on `p.device`, a pointer's meta device, and read with .item())
    (th.optim.Adadelta, {}),
    (th.optim.Adamax, {}),
    (th.optim.NAdam, {}),
    (th.optim.RAdam, {}),
    (th.optim.Rprop, {}),
]


@pytest.mark.parametrize("optimizer, settings", OPTIMIZERS, ids=[o.__name__ for o, _ in OPTIMIZERS])
def test_an_optimizer_built_before_the_send_steps_as_in_plain_torch(bob, optimizer, settings):
    # (bob is the session's worker: started without allow_code, so it runs only the op table)
    th.manual_seed(0)
    plain, data, target = nn.Linear(3, 2), th.randn(8, 3), th.randn(8, 2)
    model = nn.Linear(3, 2)
    model.load_state_dict(plain.state_dict())
    plain_opt, opt = optimizer(plain.parameters(), **settings), optimizer(model.parameters(), **settings)
    model.send(bob)
    remote_data, remote_target = data.send(bob), target.send(bob)
    for _ in range(3):
        plain_opt.zero_grad()
        ((plain(data) - target) ** 2).mean().backward()
        plain_opt.step()
        opt.zero_grad()
        ((model(remote_data) - remote_target) ** 2).mean().backward()
        opt.step()
    # the state of the parameters' shape is on bob; scalars (Adam's step, NAdam's mu_product,
    # read with .item()) stay here
    for param in model.parameters():
        for key, value in opt.state[param].items():
            if isinstance(value, th.Tensor) and value.shape == param.shape and key != "step":
                assert isinstance(value, sy.Pointer) and value.location.id == "bob", (key, value)
            elif isinstance(value, th.Tensor):
                assert not isinstance(value, sy.Pointer) and value.dim() == 0, (key, value)
    model.get()
    for mine, theirs in zip(plain.parameters(), model.parameters()):
        assert th.allclose(mine, theirs, atol=1e-6)


def test_one_adam_per_worker_with_optims_matches_plain_torch(bob, alice):
    """Part 02's Adam loop: Optims gives each worker its own Adam, whose state stays there."""
    th.manual_seed(1)
    data, target = th.randn(8, 2), th.randn(8, 1)
    shards = [(data[:4], target[:4]), (data[4:], target[4:])]
    plain, model = nn.Linear(2, 1), nn.Linear(2, 1)
    model.load_state_dict(plain.state_dict())
    plain_optims = {w: th.optim.Adam(plain.parameters(), lr=0.1) for w in ("bob", "alice")}
    optims = Optims(["bob", "alice"], optim=th.optim.Adam(params=model.parameters(), lr=0.1))
    sent = [(x.send(w), y.send(w)) for (x, y), w in zip(shards, (bob, alice))]
    for _ in range(3):
        for (x, y), (remote_x, remote_y), name in zip(shards, sent, ("bob", "alice")):
            plain_optims[name].zero_grad()
            ((plain(x) - y) ** 2).sum().backward()
            plain_optims[name].step()
            model.send(remote_x.location)
            opt = optims.get_optim(remote_x.location.id)
            opt.zero_grad()
            ((model(remote_x) - remote_y) ** 2).sum().backward()
            opt.step()
            model.get()
    assert optims.count() == 2 and optims.get_optim("bob") is not optims.get_optim("alice")
    assert {v.location.id for v in optims.get_optim("alice").state[model.weight].values() if isinstance(v, sy.Pointer)} == {"alice"}
    for mine, theirs in zip(plain.parameters(), model.parameters()):
        assert th.allclose(mine, theirs, atol=1e-5)


def test_a_fetched_model_that_stays_alive_leaves_gradient_tracking(bob, alice):
    """Was: the next remote backward() of any model raised AttributeError ('Parameter' object
    has no attribute 'location'), because the fetched model's parameters were still tracked."""
    kept = nn.Linear(2, 1).send(bob)
    kept(th.ones(1, 2).send(bob)).sum().backward()
    kept.get()
    for worker in (bob, alice):
        other = nn.Linear(2, 1).send(worker)
        other(th.ones(1, 2).send(worker)).sum().backward()
        assert isinstance(other.weight.grad, sy.Pointer)
        assert th.equal(other.get().weight.grad, th.ones(1, 2))
    assert th.equal(kept.weight.grad, th.ones(1, 2))  # the fetched model keeps its own grads
    kept.send(bob)  # and can go out again and be tracked anew
    kept(th.ones(1, 2).send(bob)).sum().backward()
    assert th.equal(kept.get().weight.grad, th.ones(1, 2))  # (a sent model's grads start afresh: send leaves them here)


def test_stepping_a_fetched_model_whose_state_is_on_the_worker_says_where_it_is(bob):
    model = nn.Linear(2, 1)
    opt = th.optim.Adam(model.parameters(), lr=0.1)
    model.send(bob)
    model(th.ones(1, 2).send(bob)).sum().backward()
    opt.step()  # Adam's averages are made on bob
    model.get()
    model(th.ones(1, 2)).sum().backward()
    with pytest.raises(sy.TensorsNotCollocatedError, match="on bob"):
        opt.step()
    model.send(bob)  # back where its state is, it steps again
    model(th.ones(1, 2).send(bob)).sum().backward()
    opt.step()
    assert isinstance(model.get().weight, th.nn.Parameter)
