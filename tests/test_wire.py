"""The wire format on its own: no sockets."""

from __future__ import annotations

import gc
import os
import pickle
import weakref

import pytest
import torch as th

from fedq import messages as msg
from fedq.codec import MAX_FRAMES, Codec, new_incarnation, new_key
from fedq.errors import CodeNotAllowedError, ProtocolError

KEY = new_key()


def _pair(**receiver) -> tuple[Codec, Codec]:
    return Codec(KEY), Codec(KEY, **receiver)


def test_round_trip_of_a_request_with_a_small_tensor_has_no_buffer_frames():
    sender, receiver = _pair()
    frames = sender.encode(3, msg.StoreObject(11, th.tensor([1, 2, 3])), receiver.session)
    assert len(frames) == 1  # one header: signature, stamp, body
    seq, message = receiver.decode(frames)
    assert seq == 3 and message.id == 11 and th.equal(message.obj, th.tensor([1, 2, 3]))


def test_large_tensors_travel_out_of_band_without_copies_in_the_body():
    sender, receiver = _pair()
    t = th.randn(256, 1024)  # 1 MiB
    frames = sender.encode(1, msg.StoreObject(1, t), receiver.session)
    assert len(frames) == 2 and memoryview(frames[0]).nbytes < 1024
    assert memoryview(frames[1]).nbytes == t.numel() * 4
    _, message = receiver.decode([bytes(f) for f in frames])
    assert th.equal(message.obj, t)
    message.obj.add_(1)  # what arrives is writable


def test_requires_grad_and_grad_survive():
    sender, receiver = _pair()
    t = th.tensor([1.0, 2.0], requires_grad=True)
    t.grad = th.tensor([0.5, 0.5])
    _, message = receiver.decode(sender.encode(1, msg.Ok(t), receiver.session))
    assert message.value.requires_grad and th.equal(message.value.grad, t.grad)


def test_every_frame_is_signed_buffers_included():
    sender, receiver = _pair()
    frames = [bytearray(bytes(f)) for f in sender.encode(1, msg.StoreObject(1, th.zeros(64 * 1024)), receiver.session)]
    frames[1][100] ^= 1  # one bit of the tensor's bytes
    with pytest.raises(ProtocolError, match="bad signature"):
        receiver.decode(frames)


def test_large_buffers_cannot_be_swapped_or_reframed():
    """Large buffers are covered by a one-time GMAC tag: their order and boundaries count."""
    sender, receiver = _pair()
    frames = [bytes(f) for f in sender.encode(1, msg.Ok((th.zeros(64 * 1024), th.ones(64 * 1024))), receiver.session)]
    assert len(frames) == 3
    swapped = [frames[0], frames[2], frames[1]]
    reframed = [frames[0], frames[1] + frames[2][:4], frames[2][4:]]
    dropped = frames[:2]
    for forged in (swapped, reframed, dropped):
        with pytest.raises(ProtocolError, match="bad signature"):
            receiver.decode(forged)
    _, message = receiver.decode(frames)
    assert th.equal(message.value[1], th.ones(64 * 1024))


def test_messages_of_no_frames_or_too_many_are_refused_before_any_hashing():
    receiver = Codec(KEY)
    for frames in ([], [b""] * (MAX_FRAMES + 1)):
        with pytest.raises(ProtocolError, match="frames"):
            receiver.decode(frames)


def test_a_batch_is_signed_once_and_each_message_in_it_stands_alone():
    sender, receiver = _pair()
    batch = sender.seal_many([
        sender.pack(1, msg.Ping(), receiver.session),
        sender.pack(2, msg.StoreObject(7, th.ones(64 * 1024)), receiver.session),  # its tensor travels as the batch's buffer
        sender.pack(3, msg.RunOp("torch.add", (lambda x: x,), {}, ()), receiver.session),  # code: this receiver refuses it
        sender.pack(4, msg.GetObject(7), receiver.session),
    ])
    assert len(batch) == 2  # one header, one buffer: one signature for all four
    decoded = receiver.decode_all(batch)
    assert [seq for seq, _ in decoded] == [1, 2, 3, 4]
    assert th.equal(decoded[1][1].obj, th.ones(64 * 1024))
    assert isinstance(decoded[2][1], CodeNotAllowedError) and decoded[2][1].seq == 3  # answered as a failure
    assert decoded[3][1] == msg.GetObject(7)  # the refused one spoiled nothing after it
    # The batch is one message: tampered, replayed or unsigned, it is refused whole.
    tampered = [bytes(batch[0]), bytearray(bytes(batch[1]))]
    tampered[1][-1] ^= 1
    for frames in (tampered, batch):
        with pytest.raises(ProtocolError):
            receiver.decode_all(frames)
    with pytest.raises(ProtocolError, match="not a fedq message"):  # a batch where one message belongs
        other = Codec(KEY)
        other.decode(sender.seal_many([sender.pack(5, msg.Ping(), other.session), sender.pack(6, msg.Ping(), other.session)]))


def test_packing_keeps_no_reference_to_what_was_sent():
    """The pickler is reused; what it pickled must not stay alive in it (a sent 256 MiB
    tensor would stay in memory until the next message)."""
    sender = Codec(KEY)
    for size in (16, 1 << 20):  # in band, out of band
        tensor = th.ones(size)
        alive = weakref.ref(tensor)
        packed = sender.pack(1, msg.StoreObject(1, tensor), new_incarnation())
        sender.seal_many([packed])
        del tensor, packed
        gc.collect()
        assert alive() is None, f"a tensor of {size} elements outlived its message"


def test_wrong_key_and_unsigned_messages_are_refused_before_unpickling():
    stranger = Codec(new_key())
    receiver = Codec(KEY)
    with pytest.raises(ProtocolError, match="bad signature") as caught:
        receiver.decode(stranger.encode(1, msg.Ping()))
    assert caught.value.seq is None  # nobody to answer
    with pytest.raises(ProtocolError):
        receiver.decode([b"", b"", pickle.dumps(msg.Ping())])


def test_a_replayed_message_is_refused():
    sender, receiver = _pair()
    frames = [bytes(f) for f in sender.encode(1, msg.Ping())]
    receiver.decode(frames)
    with pytest.raises(ProtocolError, match="replayed"):
        receiver.decode(frames)


def test_slightly_reordered_messages_are_accepted():
    sender, receiver = _pair()
    a, b = sender.encode(1, msg.Ping()), sender.encode(2, msg.Ping())
    assert receiver.decode(b)[0] == 2 and receiver.decode(a)[0] == 1


def test_code_is_refused_unless_allowed():
    sender = Codec(KEY)
    message = msg.RunOp("Tensor.apply_", (msg.Ref(1), lambda v: v + 1), {}, ())
    receiver, trusting = Codec(KEY), Codec(KEY, allow_code=True)
    with pytest.raises(CodeNotAllowedError, match="--allow-code") as caught:
        receiver.decode(sender.encode(5, message, receiver.session))
    assert caught.value.seq == 5  # signed: the sender is told why
    _, decoded = trusting.decode(sender.encode(6, message, trusting.session))
    assert decoded.args[1](1) == 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/fedq-pwned",))


def test_a_forged_pickle_that_would_run_code_is_refused():
    sender, receiver = _pair()
    with pytest.raises(CodeNotAllowedError):
        receiver.decode(sender.encode(1, msg.Ok(_Evil()), receiver.session))
    assert not os.path.exists("/tmp/fedq-pwned")


def test_oversized_messages_are_refused():
    sender, receiver = Codec(KEY), Codec(KEY, max_message_bytes=1 << 20)
    with pytest.raises(ProtocolError, match="over the"):
        receiver.decode(sender.encode(1, msg.StoreObject(1, th.zeros(1 << 19)), receiver.session))


@pytest.mark.parametrize("frames", [[], [b""], [b"junk"], [b"a", b"b", b"c"]])
def test_anything_else_is_a_protocol_error(frames):
    with pytest.raises(ProtocolError):
        Codec(KEY).decode(frames)
