"""Federated rounds that wait once (issue 17): a trusted-aggregator round over N owners waits
the same number of times for 8 owners as for 2, and still gives plain torch's FedAvg; the
pipelined backward behind it (each result remembers the leaves it came from, so the client
knows which get a .grad) still fails where the worker fails, naming it, and falls back to asking
when that is not known here."""

from __future__ import annotations

import gc

import pytest
import torch as th
from torch import nn, optim

import fedq as sy
from fedq.federated import train_on_trusted_aggregator


@pytest.fixture(scope="module")
def eight_owners(hook, federation):
    """bob, alice, carol and five more workers of this module's own, started at once."""
    extra = [sy.VirtualWorker(hook, id=f"round_owner_{i}") for i in range(5)]
    yield [federation["bob"], federation["alice"], federation["carol"], *extra]
    for worker in extra:
        worker.shutdown()


def _shards(count: int) -> list[tuple[th.Tensor, th.Tensor]]:
    generator = th.Generator().manual_seed(17)
    return [(th.randn(6, 3, generator=generator), th.randn(6, 1, generator=generator)) for _ in range(count)]


def _fedavg(model: nn.Module, shards: list, *, rounds: int, local_steps: int, lr: float) -> None:
    """FedAvg in plain torch: the round train_on_trusted_aggregator runs, without workers."""
    for _ in range(rounds):
        copies = []
        for data, target in shards:
            copy = nn.Linear(3, 1)
            copy.load_state_dict(model.state_dict())
            opt = optim.SGD(copy.parameters(), lr=lr)
            for _ in range(local_steps):
                opt.zero_grad()
                ((copy(data) - target) ** 2).mean().backward()
                opt.step()
            copies.append(copy)
        with th.no_grad():
            for name, param in model.named_parameters():
                param.set_(th.stack([dict(c.named_parameters())[name] for c in copies]).mean(0))


def _round_waits(hook, workers, aggregator, shards) -> tuple[int, nn.Module, nn.Module]:
    owners = [(d.send(w), t.send(w)) for w, (d, t) in zip(workers, shards)]
    th.manual_seed(3)
    model, reference = nn.Linear(3, 1), nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    train_on_trusted_aggregator(model, owners, aggregator, rounds=1, local_steps=2, lr=0.1)  # warm: every worker met
    client = hook.local_worker
    client.sync()
    before = client.stats()["waits"]
    train_on_trusted_aggregator(model, owners, aggregator, rounds=1, local_steps=2, lr=0.1)
    waits = client.stats()["waits"] - before
    _fedavg(reference, shards, rounds=2, local_steps=2, lr=0.1)
    return waits, model, reference


def test_a_round_waits_as_often_for_eight_owners_as_for_two_and_gives_fedavg(hook, eight_owners, secure_worker):
    shards = _shards(8)
    waits = {}
    for count in (2, 8):
        waits[count], model, reference = _round_waits(hook, eight_owners[:count], secure_worker, shards[:count])
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert type(p) is nn.Parameter and th.allclose(p, q, atol=1e-5), (count, name, p, q)
    assert waits[2] == waits[8], waits
    assert waits[8] <= 3, waits  # the releases and moves together, then the averages
    gc.collect()
    assert secure_worker._objects == {}  # nothing of the rounds is left on the aggregator


def test_a_round_of_a_model_too_large_to_go_in_band_waits_as_often_for_four_owners_as_for_two(hook, eight_owners, secure_worker):
    """Parameters past the in-band limit go zero-copy, and a send waits until they arrived: the
    round's sends of every owner's copy are awaited together (pointer.Batch.send)."""
    waits = {}
    for count in (2, 4):
        owners = [(th.randn(4, 200).send(w), th.randn(4, 100).send(w)) for w in eight_owners[:count]]
        model = nn.Linear(200, 100)  # an 80 KB weight: zero-copy
        train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=1, lr=0.1)
        # A wait is counted only if something is still in flight when it begins: a round fast
        # enough (two owners, a quiet machine) can find one already answered. The most of three
        # rounds is the round's own count of waits.
        counted = []
        for _ in range(3):
            hook.local_worker.sync()
            before = hook.local_worker.stats()["waits"]
            train_on_trusted_aggregator(model, owners, secure_worker, rounds=1, local_steps=1, lr=0.1)
            counted.append(hook.local_worker.stats()["waits"] - before)
        waits[count] = max(counted)
    assert waits[2] == waits[4] <= 4, waits  # the sends, the releases and moves, the averages


def test_a_pipelined_backward_that_fails_on_the_worker_raises_at_the_next_wait_naming_it(hook, bob):
    w = th.ones(3, requires_grad=True).send(bob)
    loss = (w * 2).sum()
    bob.clear_objects()  # (a key holder's clear: frees our references there; our pointers do not know)
    waits = hook.local_worker.stats()["waits"]
    loss.backward()  # loss remembers it came from w: nothing waits
    assert hook.local_worker.stats()["waits"] == waits
    with pytest.raises(sy.ObjectNotFoundError) as raised:
        hook.local_worker.sync()
    assert "bob" in str(raised.value)


def test_backward_through_an_op_whose_shape_needed_the_worker_asks_and_gets_the_grads_right(hook, bob):
    local = th.tensor([1.0, -2.0, 3.0, -4.0], requires_grad=True)
    w = local.detach().requires_grad_().send(bob)
    unused = th.ones(2, requires_grad=True).send(bob)
    picked = w[w > 0]  # a mask: the worker describes the result, whose sources we do not know
    loss = (picked * picked).sum()
    waits = hook.local_worker.stats()["waits"]
    loss.backward()
    assert hook.local_worker.stats()["waits"] == waits + 1  # it asked which leaves got a grad
    (local[local > 0] ** 2).sum().backward()
    assert th.equal(w.grad.get(), local.grad)
    assert unused.grad is None


def test_pipelined_backward_gives_the_grads_plain_torch_gives(hook, bob):
    th.manual_seed(5)
    a, b, c = th.randn(4, 3, requires_grad=True), th.randn(3, requires_grad=True), th.randn(3, requires_grad=True)
    pa, pb, pc = (t.detach().requires_grad_().send(bob) for t in (a, b, c))
    waits = hook.local_worker.stats()["waits"]
    for x, y in ((pa, pb), (a, b)):
        h = th.nn.functional.softmax(th.relu(x @ y), dim=0)
        (h * th.arange(4.0).send(bob) if x is pa else h * th.arange(4.0)).sum().backward()
    assert hook.local_worker.stats()["waits"] == waits  # c is in no graph: no grad, and no wait to learn it
    assert pc.grad is None
    assert th.allclose(pa.grad.get(), a.grad, atol=1e-6) and th.allclose(pb.grad.get(), b.grad, atol=1e-6)
