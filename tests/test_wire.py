"""The wire format on its own: no sockets."""

from __future__ import annotations

import pickle

import pytest
import torch as th

from fedq import wire
from fedq.errors import ProtocolError


def test_round_trip_of_a_request_with_a_small_tensor_is_one_frame():
    frames = wire.encode(3, wire.StoreObject(11, th.tensor([1, 2, 3])))
    assert len(frames) == 1
    seq, message = wire.decode(frames)
    assert seq == 3 and message.id == 11 and th.equal(message.obj, th.tensor([1, 2, 3]))


def test_large_tensors_travel_out_of_band_without_copies_in_the_header():
    t = th.randn(256, 1024)  # 1 MiB
    frames = wire.encode(1, wire.StoreObject(1, t))
    assert len(frames) == 2 and memoryview(frames[0]).nbytes < 1024
    assert memoryview(frames[1]).nbytes == t.numel() * 4
    _, message = wire.decode([bytes(f) for f in frames])
    assert th.equal(message.obj, t)
    message.obj.add_(1)  # what arrives is writable


def test_requires_grad_and_grad_survive():
    t = th.tensor([1.0, 2.0], requires_grad=True)
    t.grad = th.tensor([0.5, 0.5])
    _, message = wire.decode(wire.encode(1, wire.Ok(t)))
    assert message.value.requires_grad and th.equal(message.value.grad, t.grad)


@pytest.mark.parametrize("frames", [[], [b""], [b"junk"], [pickle.dumps(("x", wire.Ping()))], [pickle.dumps((1, object))]])
def test_anything_else_is_a_protocol_error(frames):
    with pytest.raises(ProtocolError):
        wire.decode(frames)
