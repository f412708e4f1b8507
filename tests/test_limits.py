"""Limits count what is really held (issue 12, class 3), tried as an attacker would.

- a key holder cannot make a worker's store hold more than max_store_bytes by growing what it
  holds in place (resize_, set_, `x.data = ...`, a grad), nor by a rebuilt tensor claiming more
  bytes than came with it;
- a peer without the key cannot make a worker buffer unbounded memory: CURVE drops it at the
  handshake; the memory cap (max_memory_bytes) bounds what a local peer on loopback or one huge
  op can take, and the worker keeps serving;
- a worker refuses to listen where strangers could reach it without CURVE.
"""

from __future__ import annotations

import gc
import pickle
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch as th
import zmq
import zmq.auth

import fedq as sy
from fedq import messages as msg
from fedq.codec import Codec, new_key, _rebuild_meta, _rebuild_tensor
from fedq.errors import ConfigError
from fedq.launcher import start_worker_process
from fedq.transport import ServerLoop
from helpers import free_port, stop

MiB = 1 << 20
STORE_LIMIT = 1 * MiB
MESSAGE_LIMIT = 32 * MiB


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def started(hook):
    """This module's three workers, started at once when the first is needed (side by side, not one
    test after another); each fixture below waits for its own."""
    small_store = sy.VirtualWorker(hook, id="small_store", max_store_bytes=STORE_LIMIT)
    capped = sy.VirtualWorker(hook, id="capped", max_memory_bytes=1536 * MiB, max_message_bytes=MESSAGE_LIMIT)
    directory = Path(tempfile.mkdtemp())  # the CURVE one's
    zmq.auth.create_certificates(str(directory), "guarded")
    port = free_port()
    guarded = start_worker_process(
        "guarded", f"tcp://127.0.0.1:{port}", key=new_key(), quiet=True, max_message_bytes=MESSAGE_LIMIT,
        curve_dir=str(directory), peers={},
    )
    yield {"small_store": small_store, "capped": capped, "guarded": (guarded, port, directory)}
    small_store.shutdown()
    capped.shutdown()
    stop(guarded)


@pytest.fixture(scope="module")
def small_store(started):
    return started["small_store"]


@pytest.fixture
def small(small_store):
    """A worker whose store may hold 1 MiB, emptied first."""
    gc.collect()
    try:
        sy.local_client().sync()
    except sy.FedqError:
        pass
    return small_store.clear_objects()


@pytest.fixture(scope="module")
def capped(started):
    """A worker that may map 1.5 GiB for data (an idle one maps ~300 MB)."""
    worker = started["capped"]
    worker.ping(timeout=60)  # (listening: a raw peer can connect)
    return worker


def _held(worker) -> int:
    return sum(row.nbytes for row in worker.describe())


# --------------------------------------------------------------------------- the store


def _in_place(worker, op: str, *args, **kwargs) -> None:
    """What a key holder can send whatever the client allows: an in-place op on stored objects
    (pointers become Refs, anything else travels in the message)."""
    ref = lambda a: msg.Ref(a.id_at_location) if isinstance(a, sy.PointerTensor) else a  # noqa: E731
    worker.client.request(worker.address, msg.RunOp(op, tuple(map(ref, args)), {k: ref(v) for k, v in kwargs.items()}, ()))


BIG = th.zeros(STORE_LIMIT // 2)  # 2 MiB, in the message
GROWTHS = {  # name -> (op, arguments, keywords), given the stored target x
    "resize_": lambda x: ("Tensor.resize_", (x, STORE_LIMIT), {}),
    "resize_as_": lambda x: ("Tensor.resize_as_", (x, BIG), {}),
    "set_ from a message": lambda x: ("Tensor.set_", (x, BIG), {}),
    "data = from a message": lambda x: ("Tensor.data.__set__", (x, BIG), {}),
    "grad = a view of a big message": lambda x: ("Tensor.grad.__set__", (x, BIG[:1000]), {}),
    "out= resizes": lambda x: ("torch.add", (BIG, 1.0), {"out": x}),
}


@pytest.mark.parametrize("growth", sorted(GROWTHS))
def test_growing_a_stored_tensor_in_place_cannot_pass_the_store_limit(small, growth):
    x = th.zeros(1000).send(small)
    keep = th.ones(10).send(small)
    op, args, kwargs = GROWTHS[growth](x)
    try:
        _in_place(small, op, *args, **kwargs)
    except sy.FedqError:  # refused (by the op table, by torch, or by the store's limit): fine, if bounded
        pass
    assert _held(small) <= STORE_LIMIT, [(row.id, row.nbytes) for row in small.describe()]
    assert th.equal(keep.get(), th.ones(10))  # what did not grow is untouched, and the worker serves


def test_a_grown_object_over_the_limit_is_freed_and_says_so(small):
    x = th.zeros(1000).send(small)
    with pytest.raises(sy.FedqError, match="limit") as refused:
        _in_place(small, "Tensor.data.__set__", x, BIG)
    assert "freed" in str(refused.value) and "max_store_bytes" in str(refused.value)
    with pytest.raises(sy.ObjectNotFoundError):
        x.get()


def test_views_add_nothing_and_listings_show_storage_bytes(small):
    x = th.zeros(50_000).send(small)  # 200 kB
    views = [x[i] for i in range(8)]  # 8 more objects, each a view of x's storage
    rows = small.describe()
    assert len(rows) == 9 and {row.nbytes for row in rows} == {200_000}  # each keeps x's storage alive
    more = th.zeros(150_000).send(small)  # 600 kB: within the limit only because views count once
    assert th.equal(more.sum().get(), th.tensor(0.0))
    del views


def test_data_set_to_a_stored_tensor_shares_its_storage(small):
    x, y = th.zeros(10).send(small), th.ones(100_000).send(small)  # 40 B, 400 kB
    _in_place(small, "Tensor.data.__set__", x, y)
    z = th.ones(100_000).send(small)  # 400 kB more: fits only if x's storage is y's, counted once
    assert th.equal(x.sum().get(), th.tensor(100_000.0)) and z is not None


# --------------------------------------------------------------------------- rebuilt tensors


class _Claim:
    """Pickles as a tensor rebuild that claims `shape` but brings only `data`."""

    def __init__(self, data: bytes, shape: tuple) -> None:
        self.data, self.shape = data, shape

    def __reduce__(self):
        return (_rebuild_tensor, (pickle.PickleBuffer(self.data), th.float32, self.shape, False, None))


def test_a_tensor_claiming_more_bytes_than_came_with_it_is_refused(small):
    client = small.client
    before = small.ping().objects
    for claim in (_Claim(b"", (1 << 30,)), _Claim(b"\0" * 8, (1 << 28, 4)), _Claim(b"\0" * 8, (-2,))):
        with pytest.raises(sy.FedqError, match="bytes|not a tensor"):
            client.request(small.address, msg.StoreObject(12345, claim))
    assert small.ping().objects == before  # nothing stored, still serving
    assert th.equal((th.tensor([1.0, 2.0]).send(small) * 2).get(), th.tensor([2.0, 4.0]))


def test_zero_element_and_meta_tensors_still_travel():
    key = new_key()
    receiver = Codec(key)
    _, message = receiver.decode(Codec(key).encode(1, msg.Ok(th.zeros(0, 7)), receiver.session))
    assert message.value.shape == (0, 7)
    meta = _rebuild_meta((1 << 40,), th.float32)  # a shape without memory
    assert meta.is_meta and meta.untyped_storage().data_ptr() == 0
    with pytest.raises(sy.ProtocolError):
        _rebuild_meta(("big",), th.float32)


# --------------------------------------------------------------------------- memory per connection


def _zmtp_greet(sock: socket.socket) -> None:
    """A ZMTP 3.0 NULL-mechanism DEALER handshake: a raw peer, no zmq and no key."""
    sock.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
    received = b""
    while len(received) < 64:
        chunk = sock.recv(64 - len(received))
        if not chunk:
            raise ConnectionError("dropped during the greeting")
        received += chunk
    ready = b"\x05READY\x0bSocket-Type" + struct.pack("!I", 6) + b"DEALER"
    sock.sendall(b"\x04" + bytes([len(ready)]) + ready)


def _endless_message(sock: socket.socket, total: int) -> None:
    """Frames of one multipart message that never ends: each 1 MiB (under MAXMSGSIZE), all MORE."""
    frame = b"\x03" + struct.pack("!Q", MiB) + b"x" * MiB
    for _ in range(total // MiB):
        sock.sendall(frame)


def _attack(connect, pid: int, total: int) -> int:
    """Flood `pid`'s socket as a stranger; the most its RSS rose above idle meanwhile."""
    idle = peak = _rss(pid)
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with connect() as sock:
            try:
                _zmtp_greet(sock)
                _endless_message(sock, total)
            except OSError:
                pass  # dropped: what we want
            time.sleep(0.3)
    finally:
        done.set()
        watcher.join()
    return peak - idle


@pytest.fixture(scope="module")
def curve_worker(started):
    """A worker on tcp with CURVE, max_message_bytes 32 MiB, accepting no client key at all."""
    process, port, directory = started["guarded"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # up once it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return process, port, directory


def test_an_endless_message_from_a_stranger_to_a_curve_worker_holds_no_memory(curve_worker):
    process, port, _ = curve_worker
    rise = _attack(lambda: socket.create_connection(("127.0.0.1", port)), process.pid, 256 * MiB)
    assert rise <= 2 * MESSAGE_LIMIT, f"RSS rose {rise >> 20} MiB under a {MESSAGE_LIMIT >> 20} MiB message limit"
    assert process.poll() is None


def test_a_curve_stranger_with_its_own_key_pair_gets_no_answer(curve_worker):
    process, port, directory = curve_worker
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = zmq.auth.load_certificate(str(directory / "guarded.key"))[0]
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send_multipart(Codec(new_key()).encode(1, msg.Ping()))
    try:
        assert not sock.poll(500)  # (it listens: an answer would take ms)
    finally:
        sock.close()
    assert process.poll() is None


def test_an_endless_message_to_a_capped_worker_is_bounded_and_the_worker_serves(capped):
    path = capped.address[len("ipc://"):]

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return sock

    rise = _attack(connect, capped.pid, 2048 * MiB)  # 2 GiB sent at a 1.5 GiB cap
    assert rise <= 1536 * MiB
    assert capped.alive()
    assert th.equal((th.tensor([1.0]).send(capped) + 1).get(), th.tensor([2.0]))


def test_a_huge_temporary_fails_the_op_instead_of_the_worker(capped):
    x = th.zeros(1).send(capped)
    for size in (10**11, 600 * MiB):  # 400 GB; 2.4 GB (what the host could give, past the cap)
        with pytest.raises(sy.FedqError):
            x.expand(size).contiguous().sum().get()
    assert capped.alive()
    assert th.equal((x + 1).get(), th.tensor([1.0]))


# --------------------------------------------------------------------------- where a worker listens


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:{port}", "tcp://*:{port}", "ipc:///tmp/fedq-open-{port}.sock", "ipc://@fedq-{port}"])
def test_a_worker_refuses_to_listen_where_strangers_reach_it_without_curve(address):
    address = address.format(port=free_port())
    with pytest.raises(ConfigError, match="curve = true.*fedq keygen --curve"):
        ServerLoop(address, "open", lambda *a: None, lambda *a: None, lambda: None)
    assert not Path("/tmp").joinpath(address.rpartition("/")[2]).exists()
