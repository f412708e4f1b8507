"""Fixed precision, additive secret sharing and owner-enforced secure aggregation (issue 16):
PySyft 0.2.9's Parts 09 and 10, transcribed (only the import changed), on real worker
processes; the shares' randomness; lifetimes; and the owners' k policy as attacks."""

from __future__ import annotations

import gc
import secrets
from pathlib import Path

import pytest
import torch as th
from torch import nn, optim

import fedq as sy
from fedq import ring
from fedq.ids import new_id
from fedq.messages import StoreShare
from fedq.sharing import AdditiveSharingTensor, FixedPrecisionTensor
from helpers import trained_update

ROOT = Path(__file__).resolve().parent.parent
FP = dict(atol=1.001e-3, rtol=0)  # one unit of the last fixed-precision digit


def empty(*workers) -> None:
    gc.collect()
    sy.local_client().sync()
    for worker in workers:
        assert worker._objects == {}, f"{worker.id} still holds {worker._objects}"


# --------------------------------------------------------------------------- Part 09


def test_part09_by_hand():
    """The tutorial's first cells: additive sharing and fixed precision written out in Python."""
    import random

    Q = 1234567891011

    def encrypt(x):
        share_a = random.randint(-Q, Q)
        share_b = random.randint(-Q, Q)
        share_c = (x - share_a - share_b) % Q
        return (share_a, share_b, share_c)

    def decrypt(*shares):
        return sum(shares) % Q

    def add(x, y):
        return tuple((a + b) % Q for a, b in zip(x, y))

    assert decrypt(*encrypt(25)) == 25
    assert decrypt(*add(encrypt(5), encrypt(10))) == 15

    BASE, PRECISION = 10, 4

    def encode(x_dec):
        return int(x_dec * (BASE**PRECISION)) % Q

    def decode(x_fp):
        return (x_fp if x_fp <= Q / 2 else x_fp - Q) / BASE**PRECISION

    assert encode(0.5) == 5000 and decode(5000) == 0.5
    assert decode((encode(0.5) + encode(0.25)) % Q) == 0.75


def test_part09_integers(bob, alice, carol, secure_worker):
    bill, crypto_provider = carol, secure_worker
    x = th.tensor([25]).share(bob, alice, bill)
    assert isinstance(x, AdditiveSharingTensor) and len(x.child) == 3
    (bobs_share,) = bob._tensors.values()  # bob's share: a random-looking integer
    assert bobs_share.dtype == th.int64 and bobs_share.shape == (1,)
    assert th.equal(x.get(), th.tensor([25]))

    x = th.tensor([25]).share(bob, alice, crypto_provider=crypto_provider)
    y = th.tensor([5]).share(bob, alice, crypto_provider=crypto_provider)
    assert th.equal((x + y).get(), th.tensor([30]))
    assert th.equal((x - y).get(), th.tensor([20]))
    assert th.equal((x * y).get(), th.tensor([125]))
    assert th.equal((x * 3).get(), th.tensor([75]))
    assert th.equal((x + 7).get(), th.tensor([32]))

    a, b = th.tensor([[1, 2], [3, -4]]), th.tensor([[5, -6], [7, 8]])
    x = a.share(bob, alice, crypto_provider=crypto_provider)
    y = b.share(bob, alice, crypto_provider=crypto_provider)
    assert th.equal(x.mm(y).get(), a.mm(b))
    assert th.equal((x @ y).get(), a @ b)
    assert th.equal(x.sum().get(), a.sum())
    assert th.equal((x * y).get(), a * b)


def test_part09_fixed_precision(bob, alice, secure_worker):
    x = th.tensor([0.1, 0.2, 0.3]).fix_precision()
    assert isinstance(x, FixedPrecisionTensor) and th.equal(x.child, th.tensor([100, 200, 300]))
    assert th.allclose((x + x).float_precision(), th.tensor([0.2, 0.4, 0.6]), **FP)
    assert th.allclose((x * x).float_precision(), th.tensor([0.01, 0.04, 0.09]), **FP)
    assert th.allclose(th.tensor([0.1, 0.2, 0.3]).fix_prec().float_prec(), th.tensor([0.1, 0.2, 0.3]), **FP)

    a, b = th.tensor([0.1, 0.2, -0.3]), th.tensor([0.5, -0.25, 0.125])
    x = a.fix_precision().share(bob, alice, crypto_provider=secure_worker)
    y = b.fix_precision().share(bob, alice, crypto_provider=secure_worker)
    assert th.allclose((x + y).get().float_precision(), a + b, **FP)
    assert th.allclose((x - y).get().float_precision(), a - b, **FP)
    assert th.allclose((x * y).get().float_precision(), a * b, **FP)
    assert th.allclose(((x + y) / 2).get().float_precision(), (a + b) / 2, **FP)
    m, n = th.tensor([[0.5, 1.5], [-2.0, 0.25]]), th.tensor([[1.0, -0.5], [0.75, 2.0]])
    xm = m.fix_precision().share(bob, alice, crypto_provider=secure_worker)
    yn = n.fix_precision().share(bob, alice, crypto_provider=secure_worker)
    assert th.allclose(xm.mm(yn).get().float_precision(), m.mm(n), **FP)


def test_fixed_precision_products_among_three_holders(bob, alice, carol, secure_worker):
    a, b = th.tensor([0.1, 0.2, -0.3, 1.5]), th.tensor([0.5, -0.25, 0.125, -2.0])
    x = a.fix_precision().share(bob, alice, carol, crypto_provider=secure_worker)
    y = b.fix_precision().share(bob, alice, carol, crypto_provider=secure_worker)
    product = x * y
    assert [share.location.id for share in product.child.shares] == ["bob", "alice", "carol"]
    assert th.allclose(product.get().float_precision(), a * b, **FP)
    assert th.allclose(((x + y) / 2).get().float_precision(), (a + b) / 2, **FP)
    del x, y, product
    empty(bob, alice, carol, secure_worker)


def test_part09_comparisons_and_max(bob, alice, secure_worker):
    crypto_provider = secure_worker
    x = th.tensor([25]).share(bob, alice, crypto_provider=crypto_provider)
    y = th.tensor([5]).share(bob, alice, crypto_provider=crypto_provider)
    assert th.equal((x > y).get(), th.tensor([1]))
    assert th.equal((x <= y).get(), th.tensor([0]))
    assert th.equal((x == y + 20).get(), th.tensor([1]))
    assert th.equal((x < y).get(), th.tensor([0])) and th.equal((x >= y).get(), th.tensor([1]))
    x = th.tensor([2, 3, 4, 1]).share(bob, alice, crypto_provider=crypto_provider)
    assert th.equal(x.max().get(), th.tensor(4)) and th.equal(x.argmax().get(), th.tensor(2))
    plain = th.tensor([[2, 3], [4, 1], [0, 9]])
    x = plain.share(bob, alice, crypto_provider=crypto_provider)
    max_values, max_ids = x.max(dim=0)
    assert th.equal(max_values.get(), plain.max(dim=0).values) and th.equal(max_ids.get(), plain.max(dim=0).indices)
    max_values, max_ids = x.max(dim=1)
    assert th.equal(max_values.get(), plain.max(dim=1).values) and th.equal(max_ids.get(), plain.max(dim=1).indices)
    a = th.tensor([0.1, 0.2, 0.3]).fix_precision().share(bob, alice, crypto_provider=crypto_provider)
    b = th.tensor([0.1, 0.3, 0.2]).fix_precision().share(bob, alice, crypto_provider=crypto_provider)
    assert th.equal((a > b).get().float_precision(), th.tensor([0.0, 0.0, 1.0]))
    assert th.equal((a == b).get().float_precision(), th.tensor([1.0, 0.0, 0.0]))
    assert th.allclose(a.max().get().float_precision(), th.tensor(0.3), **FP)


def test_comparisons_agree_with_torch_across_the_range(bob, alice, carol, secure_worker):
    generator = th.Generator().manual_seed(5)
    limit = ring.MAX_COMPARED - 1
    left = th.randint(-limit // 2, limit // 2, (300,), generator=generator)
    right = th.randint(-limit // 2, limit // 2, (300,), generator=generator)
    right[:40] = left[:40]  # ties
    right[40:60] = left[40:60] + 1  # neighbours
    x = left.share(bob, alice, carol, crypto_provider=secure_worker)
    y = right.share(bob, alice, carol, crypto_provider=secure_worker)
    for got, expected in (((x > y), left > right), ((x <= y), left <= right), ((x == y), left == right)):
        assert th.equal(got.get(), expected.long())
    assert th.equal(x.max().get(), left.max()) and th.equal(x.argmax().get(), left.argmax())


def test_fixed_precision_on_a_pointer_is_computed_where_the_data_is(bob):
    p = th.tensor([1.5, -2.25, 3.0]).send(bob)
    fp = p.fix_precision()
    assert isinstance(fp.child, sy.PointerTensor) and fp.child.location.id == "bob"
    assert th.equal(fp.child.copy().get(), th.tensor([1500, -2250, 3000]))
    product = fp * fp
    assert th.allclose(product.float_precision().get(), th.tensor([2.25, 5.0625, 9.0]), **FP)
    assert th.allclose((fp + fp).get().float_precision(), th.tensor([3.0, -4.5, 6.0]), **FP)


def test_multiplying_sharings_needs_a_crypto_provider(bob, alice):
    x, y = th.tensor([3]).share(bob, alice), th.tensor([4]).share(bob, alice)
    with pytest.raises(ValueError, match="crypto provider"):
        x * y


# --------------------------------------------------------------------------- the shares


def test_shares_are_uniform_and_unrelated(bob, alice):
    first = th.tensor([7] * 1000).share(bob, alice)
    second = th.tensor([7] * 1000).share(bob, alice)
    mine, theirs = first.child["bob"].copy().get(), second.child["bob"].copy().get()
    assert not th.equal(mine, theirs)  # the same secret shared twice: unrelated shares
    for bit in range(4):  # each low bit of a share is balanced: 1000 draws, 5 sigma = 0.08
        assert abs(((mine >> bit) & 1).double().mean().item() - 0.5) < 0.08
    assert abs((mine < 0).double().mean().item() - 0.5) < 0.08  # and the top one (the sign)
    # A holder's sharing sends the others seeds they expand (AES-CTR): those shares too.
    remote = th.tensor([7] * 1000).send(bob).share(bob, alice).get()
    seeded = remote.child["alice"].copy().get()
    for bit in (0, 1, 2, 63):
        assert abs(((seeded >> bit) & 1).double().mean().item() - 0.5) < 0.08
    assert th.equal(remote.get(), th.tensor([7] * 1000))
    many = th.stack([ring.split(th.zeros(1, dtype=th.int64), 2)[0] for _ in range(400)])
    assert abs((many & 1).double().mean().item() - 0.5) < 0.13
    assert th.equal(first.get(), th.tensor([7] * 1000))


def test_share_of_a_pointer_goes_worker_to_worker(hook, bob, alice, carol):
    big = th.arange(250_000, dtype=th.int64).send(bob)  # 2 MB
    client = hook.local_worker
    client.sync()
    before = client.stats()["bytes_received"]
    shared = big.share(bob, alice, carol)
    assert sorted(shared.get().child) == ["alice", "bob", "carol"]  # (a pointer's sharing comes here first: pointers only)
    assert client.stats()["bytes_received"] - before < 20_000  # no share passed through the client
    assert th.equal(AdditiveSharingTensor(shared.shares).get(), th.arange(250_000))


def test_stores_are_empty_after_a_round(bob, alice, carol, secure_worker):
    x = th.tensor([[1, 2], [3, 4]]).share(bob, alice, crypto_provider=secure_worker)
    y = th.tensor([[5, 6], [7, 8]]).share(bob, alice, crypto_provider=secure_worker)
    z = (x * y).mm(y) + x
    w = th.tensor([1.5]).send(carol).fix_precision().share(bob, alice, carol)
    assert len(bob._tensors) == 4  # x, y, z and w: the product's triples and intermediates are freed already
    assert th.equal(z.get(), (th.tensor([[1, 2], [3, 4]]) * th.tensor([[5, 6], [7, 8]])).mm(th.tensor([[5, 6], [7, 8]])) + th.tensor([[1, 2], [3, 4]]))
    del x, y, z, w
    empty(bob, alice, carol, secure_worker)


def test_a_failed_product_frees_its_triple(bob, alice, carol, secure_worker):
    x = th.tensor([1, 2]).share(bob, alice, crypto_provider=secure_worker)
    y = th.tensor([3, 4]).share(bob, alice, crypto_provider=secure_worker)
    with pytest.raises(ValueError, match="holds no share"):
        th.tensor([1]).share(bob, secure_worker, crypto_provider=secure_worker)
    z = x * y
    del x, y
    assert th.equal(z.get(), th.tensor([3, 8]))
    empty(bob, alice, secure_worker)


# --------------------------------------------------------------------------- Part 10


def test_part10_encrypted_gradient_aggregation(hook, bob, alice, secure_worker):
    james = secure_worker
    data = th.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = th.tensor([[0], [0], [1], [1.0]], requires_grad=True)
    bobs_data, bobs_target = data[0:2].send(bob), target[0:2].send(bob)
    alices_data, alices_target = data[2:].send(alice), target[2:].send(alice)
    th.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = nn.Linear(2, 1)
    reference.load_state_dict(model.state_dict())
    for _ in range(2):
        bobs_model, alices_model = model.copy().send(bob), model.copy().send(alice)
        bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
        alices_opt = optim.SGD(params=alices_model.parameters(), lr=0.1)
        for _ in range(3):
            for m, opt, d, t in ((bobs_model, bobs_opt, bobs_data, bobs_target), (alices_model, alices_opt, alices_data, alices_target)):
                opt.zero_grad()
                loss = ((m(d) - t) ** 2).sum()
                loss.backward()
                opt.step()
        params = [list(bobs_model.parameters()), list(alices_model.parameters())]
        new_params = []
        for param_i in range(len(params[0])):
            spdz_params = []
            for remote_index in range(2):
                copy_of_parameter = params[remote_index][param_i].copy()
                fixed_precision_param = copy_of_parameter.fix_precision()
                encrypted_param = fixed_precision_param.share(bob, alice, crypto_provider=james)
                param = encrypted_param.get()
                spdz_params.append(param)
            new_param = (spdz_params[0] + spdz_params[1]).get().float_precision() / 2
            new_params.append(new_param)
        with th.no_grad():
            for model_param, new_param in zip(model.parameters(), new_params):
                model_param.set_(new_param.reshape(model_param.shape))
        # the same rounds in plain torch
        ref_models = []
        for d, t in ((data[0:2].detach(), target[0:2].detach()), (data[2:].detach(), target[2:].detach())):
            m = nn.Linear(2, 1)
            m.load_state_dict(reference.state_dict())
            opt = optim.SGD(m.parameters(), lr=0.1)
            for _ in range(3):
                opt.zero_grad()
                ((m(d) - t) ** 2).sum().backward()
                opt.step()
            ref_models.append(m)
        with th.no_grad():
            for p, a, b in zip(reference.parameters(), *(m.parameters() for m in ref_models)):
                p.copy_((a + b) / 2)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert th.allclose(p.detach(), q.detach(), atol=2e-3)
    # The spelling: each owner's trained weights, still on its worker, shared from there.
    averaged = model.weight.detach().clone()
    bobs_w = bobs_model.weight.data.fix_precision().share(bob, alice, crypto_provider=james)
    alices_w = alices_model.weight.data.fix_precision().share(bob, alice, crypto_provider=james)
    with th.no_grad():
        model.weight.data.set_(((alices_w + bobs_w) / 2).get().float_precision())
    assert th.allclose(model.weight.detach(), averaged, **FP)


# --------------------------------------------------------------------------- the owners' k


@pytest.fixture(scope="module")
def owners(secagg_owners):
    return secagg_owners


def test_a_private_update_leaves_only_in_an_aggregate_of_two_owners(owners, secure_worker):
    sa_bob, sa_alice, _ = owners
    w_bob, w_alice = trained_update(sa_bob), trained_update(sa_alice)
    with pytest.raises(sy.GetNotPermittedError):
        w_bob.copy().get()  # updates="refuse": not in the clear
    bobs = w_bob.fix_precision().share(sa_bob, sa_alice, crypto_provider=secure_worker)
    alices = w_alice.fix_precision().share(sa_bob, sa_alice, crypto_provider=secure_worker)
    average = ((bobs + alices) / 2).get().float_precision()
    assert average.shape == (1, 4) and th.isfinite(average).all()
    # the same, decoded in the clear by each owner for the check (the owner's admin key)
    from helpers import owner_reads

    expected = (owner_reads(sa_bob, w_bob) + owner_reads(sa_alice, w_alice)) / 2
    assert th.allclose(average, expected, **FP)


def test_attack_gathering_one_owners_shares_is_refused(owners, secure_worker):
    sa_bob, sa_alice, _ = owners
    w_bob = trained_update(sa_bob)
    bobs = w_bob.fix_precision().share(sa_bob, sa_alice, crypto_provider=secure_worker).get()
    # Through the public API: the sharing, then each holder's share on its own.
    with pytest.raises(sy.AggregateTooSmallError, match="1 data owner"):
        bobs.get()
    for share in bobs.shares:
        with pytest.raises(sy.GetNotPermittedError):
            share.copy().get()
    # Its owner's worker keeps a share of its private data itself: no sharing among others only.
    with pytest.raises(sy.GetNotPermittedError, match="include itself"):
        w_bob.fix_precision().share(sa_alice, secure_worker)
    # Adding a public value, or scaling, keeps it one owner's.
    with pytest.raises(sy.AggregateTooSmallError):
        (bobs * 2 + th.ones(1, 4, dtype=th.int64)).get()
    # A product or a comparison would open x - a to the client: with a crypto provider the client
    # runs (a pad it knows), that is x. The holders refuse to open shares of private data.
    with_provider = w_bob.fix_precision().share(sa_bob, sa_alice, crypto_provider=secure_worker).get()
    with pytest.raises(sy.GetNotPermittedError, match="not multiplied"):
        with_provider * with_provider
    with pytest.raises(sy.GetNotPermittedError, match="not multiplied"):
        with_provider > 0


def test_attack_a_client_posing_as_an_owner_is_refused(hook, owners, secure_worker):
    """A crafted StoreShare: a "share of private data" from the client itself, named as from
    alice's worker, to make bob's share look like part of a two-owner sum."""
    sa_bob, sa_alice, _ = owners
    w_bob, w_alice = trained_update(sa_bob), trained_update(sa_alice)
    # (a genuine sharing first: bob's worker knows alice's from it)
    honest = ((w_bob.fix_precision().share(sa_bob, sa_alice) + w_alice.fix_precision().share(sa_bob, sa_alice)) / 2).get()
    assert honest.shape == (1, 4)
    bobs = trained_update(sa_bob).fix_precision().share(sa_bob, sa_alice).get()
    client = hook.local_worker
    crafted = StoreShare(new_id(), th.zeros(1, 4, dtype=th.int64), client.holder_name, secrets.token_hex(16), True, 1, sa_alice.address)
    with pytest.raises(PermissionError, match="not from the worker|refused a share"):
        client.request(sa_bob.address, crafted)
    # Unequal weights single one owner out: refused too.
    alices = trained_update(sa_alice).fix_precision().share(sa_bob, sa_alice).get()
    with pytest.raises(sy.AggregateTooSmallError, match="unequally"):
        (bobs * 1000 + alices).get()


def test_a_sharing_is_released_in_one_aggregate_only(owners):
    sa_bob, sa_alice, sa_carol = owners
    from helpers import owner_reads

    w_b, w_a = trained_update(sa_bob), trained_update(sa_alice)
    # (an earlier test shared same-shaped data among two: the split's shape check must not remember that)
    b = w_b.fix_precision().share(sa_bob, sa_alice, sa_carol).get()
    a = w_a.fix_precision().share(sa_bob, sa_alice, sa_carol).get()
    c = trained_update(sa_carol).fix_precision().share(sa_bob, sa_alice, sa_carol).get()
    assert th.allclose((b + a).get().float_precision(), owner_reads(sa_bob, w_b) + owner_reads(sa_alice, w_a), atol=2.001e-3)
    with pytest.raises(sy.AggregateTooSmallError, match="another aggregate"):
        (b + c).get()  # (b + c) - (b + a) would show c - a


# --------------------------------------------------------------------------- the one-call round


def test_secure_round_gives_the_trusted_rounds_weights(data_owners, secure_worker):
    from fedq.federated import find_owner_data, train_on_trusted_aggregator, train_with_secure_aggregation

    owners = find_owner_data(data_owners)
    th.manual_seed(3)
    trusted, secure = nn.Linear(4, 1), nn.Linear(4, 1)
    secure.load_state_dict(trusted.state_dict())
    train_on_trusted_aggregator(trusted, owners, secure_worker, rounds=2, local_steps=2, lr=0.1, progress=False)
    results = train_with_secure_aggregation(secure, owners, rounds=2, local_steps=2, lr=0.1, progress=False)
    assert [sorted(r.losses) for r in results] == [["owner_alice", "owner_bob"]] * 2
    for p, q in zip(secure.parameters(), trusted.parameters()):
        assert th.allclose(p.detach(), q.detach(), **FP)
    del owners
    gc.collect()
    sy.local_client().sync()
    assert [len(w._objects) for w in data_owners] == [2, 2]  # only each owner's data


def test_secure_round_over_owners_that_refuse_updates_in_the_clear(owners, secure_worker):
    from fedq.federated import find_owner_data, train_on_trusted_aggregator, train_with_secure_aggregation

    sa_bob, sa_alice, _ = owners
    pairs = find_owner_data([sa_bob, sa_alice])
    th.manual_seed(4)
    model = nn.Linear(4, 1)
    with pytest.raises(sy.GetNotPermittedError):  # no aggregator may hold one owner's update
        train_on_trusted_aggregator(model, pairs, secure_worker, rounds=1, local_steps=1, lr=0.1, progress=False)
    before = model.weight.detach().clone()
    train_with_secure_aggregation(model, pairs, rounds=2, local_steps=2, lr=0.05, crypto_provider=secure_worker, progress=False)
    assert not th.allclose(model.weight.detach(), before)
    del pairs
    gc.collect()
    sy.local_client().sync()
    assert [len(w._objects) for w in (sa_bob, sa_alice)] == [2, 2]
    empty(secure_worker)


def test_secure_rounds_over_owners_that_noise_their_updates_spend_their_budgets(hook, federation):
    """Owners that noise what they share (secagg_dp_owner.py: ε = 1 a sharing, budget 6): each
    round releases a noisy loss (LOSS_EPSILON = 1) and shares each owner's update once (weight and
    bias, one flat tensor), so three rounds run, noisy, and the fourth is refused by the owners'
    workers; nothing is left on them either way."""
    from fedq.federated import find_owner_data, train_with_secure_aggregation

    made = [sy.VirtualWorker(hook, id=f"noisy_{name}", data=ROOT / "tests" / "data" / "secagg_dp_owner.py") for name in ("bob", "alice")]
    try:
        pairs = find_owner_data(made)
        th.manual_seed(5)
        model = nn.Linear(4, 1)
        before = [p.detach().clone() for p in model.parameters()]
        train_with_secure_aggregation(model, pairs, rounds=3, local_steps=1, lr=0.05, progress=False)
        assert all(th.isfinite(p).all() for p in model.parameters())
        assert sum(float((p.detach() - b).abs().sum()) for p, b in zip(model.parameters(), before)) > 0.05  # (noise of scale ~1.4)
        with pytest.raises(sy.PrivacyBudgetExceededError, match="houses"):
            train_with_secure_aggregation(model, pairs, rounds=1, local_steps=1, lr=0.05, progress=False)
        del pairs
        gc.collect()
        sy.local_client().sync()
        assert [len(w._objects) for w in made] == [2, 2]
    finally:
        for worker in made:
            worker.shutdown()


def test_fedq_demo_secure_runs_against_real_processes():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fedq", "demo", "--secure"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "round 10:" in done.stdout and "AggregateTooSmallError" in done.stdout
    assert "Out[6]: [2, 2]" in done.stdout  # only each owner's data is left


def test_an_owner_that_did_not_opt_in_never_shares_its_private_data(dp_owner, table, bob):
    """Secure aggregation is the owner's choice (DataOwner.secure_aggregation): an aggregate can be
    made to carry one owner alone (its partner's update times 0: README, 'Not stopped'), so an
    owner that did not opt in has its private data shared by no one, its table least of all."""
    with pytest.raises(sy.GetNotPermittedError, match="not opted into secure aggregation"):
        table.fix_precision().share(dp_owner, bob).get()
    assert [o for o in bob._objects.values()] == []
