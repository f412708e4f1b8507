"""A data owner's private objects: computed on freely, never fetched, except allowed aggregates."""

from __future__ import annotations

import pytest
import torch as th

import fedq as sy


@pytest.fixture
def owner_data(data_owners):
    owner = data_owners[0]
    return owner, owner.search("#housing", "#data")[0], owner.search("#housing", "#target")[0]


def test_private_data_and_what_is_computed_from_it_cannot_be_fetched(owner_data):
    owner, data, target = owner_data
    for leak in (lambda: data.get(), lambda: (data * 1).get(), lambda: data.sum(dim=1).get(), lambda: data[0].get()):
        with pytest.raises(sy.GetNotPermittedError, match="private"):
            leak()
    listed = owner._objects  # a listing shows private objects' shapes, never their values
    assert all(t.device.type == "meta" for t in listed.values()) and {tuple(t.shape) for t in listed.values()} >= {(64, 4), (64, 1)}


def test_allowed_aggregates_come_back(owner_data):
    owner, data, target = owner_data
    mean = data.mean().get()
    assert mean.shape == () and th.isfinite(mean)
    loss = ((data.sum(dim=1, keepdim=True) - target) ** 2).mean()
    assert th.isfinite(loss.get())


def test_private_data_cannot_be_moved_to_another_worker(owner_data, secure_worker):
    owner, data, target = owner_data
    with pytest.raises(sy.GetNotPermittedError, match="moved"):
        data.move(secure_worker)
    assert secure_worker._objects == {}


def test_writing_private_data_into_a_public_tensor_makes_it_private(owner_data):
    owner, data, target = owner_data
    public = th.zeros(64, 4).send(owner)
    public.add_(data)
    with pytest.raises(sy.GetNotPermittedError):
        public.get()


def test_a_sender_can_mark_what_it_sends_private(bob):
    x = th.tensor([1.0, 2.0]).tag("#private").send(bob)
    for leak in (lambda: x.get(), lambda: x.sum().get()):  # bob's owner allows no aggregate
        with pytest.raises(sy.GetNotPermittedError):
            leak()
    assert "#private" in bob.describe()[0].tags
