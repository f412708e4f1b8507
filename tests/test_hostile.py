"""A worker facing a hostile network: fuzzed messages, killed peers, several clients, a long soak.

The figures these tests print (time to error, memory) are the ones the README quotes.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch as th
import zmq

import fedq as sy
from fedq import messages as msg
from fedq.codec import SIGNATURE_BYTES, Codec, new_key, _STAMP

MARKER = "/tmp/fedq-fuzz-ran-code"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _junk(codec: Codec, stranger: Codec, rng: random.Random, kept: list) -> list:
    """One hostile message: which kind is drawn at random."""
    kind = rng.randrange(8)
    good = [bytes(f) for f in codec.encode(rng.randrange(1 << 30), msg.Ping())]
    if kind == 0:  # random bytes, random frame count
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 6))]
    if kind == 1:  # truncated
        return [good[0][: rng.randrange(len(good[0]))]]
    if kind == 2:  # unsigned: a good stamp and a plausible body, with an empty or random signature
        stamp = good[0][SIGNATURE_BYTES : SIGNATURE_BYTES + _STAMP.size]
        return [rng.choice([b"", rng.randbytes(32)]) + stamp + pickle.dumps(msg.ClearObjects())]
    if kind == 3:  # another key's ClearObjects: must not clear anything
        return [bytes(f) for f in stranger.encode(1, msg.ClearObjects())]
    if kind == 4:  # replay of a message already accepted
        return kept[rng.randrange(len(kept))]
    if kind == 5:  # oversized (the worker's limit is 1 MiB)
        return [bytes(f) for f in stranger.encode(1, msg.Ok(b"x" * (1 << 20)))]
    if kind == 6:  # a key holder's pickle that would run code
        return [bytes(f) for f in codec.encode(1, msg.Ok(_Evil()))]
    flipped = [bytearray(f) for f in good]  # one flipped bit anywhere
    frame = rng.randrange(len(flipped))
    if flipped[frame]:
        flipped[frame][rng.randrange(len(flipped[frame]))] ^= 1 << rng.randrange(8)
    return [bytes(f) for f in flipped]


@pytest.fixture(scope="module")
def own(hook):
    """The workers this module's tests need of their own (flooded under a 1 MiB message limit, or
    killed): started at once when the first is needed, side by side instead of one test after another."""
    workers = {
        "fuzzed": sy.VirtualWorker(hook, id="fuzzed", max_message_bytes=1 << 20),
        "victim": sy.VirtualWorker(hook, id="victim"),
        "end_of_chain": sy.VirtualWorker(hook, id="end_of_chain"),
        "middle_of_chain": sy.VirtualWorker(hook, id="middle_of_chain", timeout=1.0),
        "source": sy.VirtualWorker(hook, id="source"),
    }
    yield workers
    for worker in workers.values():  # (each test stops its own: what a failure left is killed)
        if worker.alive():
            worker.process.kill()
            worker.process.wait()


def test_fuzz_ten_thousand_hostile_messages(hook, own):
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    target = own["fuzzed"]
    held = [th.arange(i, i + 3).send(target) for i in range(5)]
    before = {id: t.clone() for id, t in target._objects.items()}
    codec = Codec(hook.local_worker.key)
    stranger = Codec(new_key())
    rng = random.Random(1234)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 1)  # an oversized message gets us disconnected: come straight back
    sock.connect(target.address)
    kept = [[bytes(f) for f in codec.encode(i, msg.Ping())] for i in range(20)]
    for frames in kept:
        sock.send_multipart(frames)
    kinds = 0
    for _ in range(10_000):
        sock.send_multipart(_junk(codec, stranger, rng, kept))
        kinds += 1
    start = time.monotonic()
    assert target.ping(timeout=60).id == "fuzzed"  # still serving, after every hostile message
    print(f"\nfuzz: {kinds} hostile messages absorbed; the next ping answered {time.monotonic() - start:.2f}s later")
    sock.close()
    assert not os.path.exists(MARKER), "a forged pickle ran code"
    after = target._objects
    assert set(after) == set(before) and all(th.equal(after[i], before[i]) for i in before)
    assert th.equal((held[0] + 1).get(), th.tensor([1, 2, 3]))
    target.shutdown()


def test_a_message_of_a_hundred_thousand_empty_frames_is_dropped(bob):
    x = th.tensor([1.0, 2.0]).send(bob)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bob.address)
    sock.send_multipart([b""] * 100_000)
    assert bob.ping(timeout=30).id == "bob"  # drained, refused, and still serving
    assert th.equal(x.get(), th.tensor([1.0, 2.0]))
    sock.close()


# ---- faults: SIGKILL mid-operation, mid-chain, mid-transfer
def _time_to_error(action, error=sy.WorkerUnreachableError) -> float:
    start = time.monotonic()
    with pytest.raises(error):
        action()
    return time.monotonic() - start


def test_kill_mid_operation(own, bob):
    victim = own["victim"]
    x = th.randn(1500, 1500).send(victim)
    y = x
    for _ in range(40):  # several seconds of matmuls, pipelined
        y = y @ x
    time.sleep(0.3)
    os.kill(victim.pid, signal.SIGKILL)
    elapsed = _time_to_error(lambda: y.get(), sy.WorkerDiedError)
    print(f"\nkill mid-operation: error after {elapsed:.2f}s")
    assert elapsed < 3
    assert th.equal((th.tensor([1]).send(bob) + 1).get(), th.tensor([2]))  # others keep serving


def test_kill_mid_chain(own, alice):
    end, middle = own["end_of_chain"], own["middle_of_chain"]
    x = th.tensor([1.0, 2.0]).send(end).send(middle)
    assert len(middle._objects) == 1
    os.kill(end.pid, signal.SIGKILL)
    end.process.wait()
    elapsed = _time_to_error(lambda: (x * 2).get())
    print(f"\nkill mid-chain: error naming the hop after {elapsed:.2f}s (the middle's timeout is 1s)")
    assert elapsed < 5
    assert len(middle._objects) == 1  # the failed op's pointer was taken back; x's remains
    del x
    deadline = time.monotonic() + 5
    while middle._objects and time.monotonic() < deadline:  # its delete to the dead hop times out, then it is freed
        time.sleep(0.2)
    assert middle._objects == {}
    middle.shutdown()


def test_kill_mid_transfer(own, alice):
    source = own["source"]
    p = th.randn(64 * 1024 * 1024 // 4).send(source)  # 64 MiB
    before = set(alice._objects)

    def move_while_killed():
        killer = subprocess.Popen(["sh", "-c", f"sleep 0.05; kill -9 {source.pid}"])
        try:
            p.move(alice)
        finally:
            killer.wait()

    try:
        move_while_killed()
        moved = True  # the transfer won the race: then it must be whole
    except sy.WorkerUnreachableError:
        moved = False
    if moved:
        assert p.location is alice and p.shape == (16 * 1024 * 1024,)
        del p
    assert set(alice._objects) == before or moved
    assert alice.ping().id == "alice"


# ---- several clients
CLIENT = textwrap.dedent(
    """
    import sys, torch as th, fedq as sy
    hook = sy.TorchHook(th)
    names, addresses, rounds = sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3])
    bob, alice, carol = (sy.connect(hook, n, address=a) for n, a in zip(names, addresses))
    if sys.argv[4:] == ["wait"] and sys.stdin.readline() != "go\\n":  # started early: begin when the test says so
        raise SystemExit("not told to go")  # (the test ended first)
    ops = 0
    for i in range(rounds):
        x = th.full((8,), float(i)).send(carol).send(bob).send(alice)   # a chain of three workers
        y = (x + 1) * 2                                                # relayed twice
        z = th.ones(8).send(bob)
        z.move(carol)
        w = z.clone()
        assert th.equal(y.get().get().get(), th.full((8,), 2.0 * (i + 1)))
        assert th.equal(w.get(), th.ones(8))
        ops += 11
        del x, y, z, w
    hook.local_worker.sync()
    print(ops)
    """
)


def _other_client(workers, rounds: int, *, wait: bool = False) -> subprocess.Popen:
    """CLIENT as a process of its own; with `wait`, its first op waits for a line on its stdin (`_go`)."""
    env = {**os.environ, "FEDQ_KEY": sy.local_client().key.hex()}
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, ",".join(w.id for w in workers), ",".join(w.address for w in workers), str(rounds)]
        + (["wait"] if wait else []),
        stdin=subprocess.PIPE if wait else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _go(client: subprocess.Popen) -> None:
    client.stdin.write("go\n")
    client.stdin.flush()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_two_clients_on_the_same_workers_do_not_disturb_each_other(bob, alice, carol):
    mine = th.tensor([42]).send(bob)
    other = _other_client([bob, alice, carol], rounds=50)
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    assert list(bob._objects) == [mine.id_at_location]  # the other client's objects all freed, mine kept
    assert alice._objects == {} and carol._objects == {}


# 30,000 by default (~40 s here); FEDQ_SOAK_OPS=100000 runs the long soak (~130 s). A leak of
# a few hundred bytes per op still shows at 30,000: the bound below is 8 MiB, growth is ~2.
SOAK_OPS = int(os.environ.get("FEDQ_SOAK_OPS", "30000"))


EXITING_CLIENT = textwrap.dedent(
    """
    import sys, torch as th, fedq as sy
    hook = sy.TorchHook(th)
    bob, alice = (sy.connect(hook, n, address=a) for n, a in zip(sys.argv[1].split(","), sys.argv[2].split(",")))
    kept = [th.ones(4).send(bob), th.ones(4).send(bob).send(alice), th.ones(4).send(bob) + 1]
    print(len(bob._objects), len(alice._objects))  # (and exits, still pointing at all of them)
    """
)


def test_a_client_that_exits_holding_pointers_frees_them_at_once_not_a_lease_later(bob, alice):
    env = {**os.environ, "FEDQ_KEY": sy.local_client().key.hex()}
    done = subprocess.run([sys.executable, "-c", EXITING_CLIENT, "bob,alice", f"{bob.address},{alice.address}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1"]  # what it holds: two tensors on bob (the chain's end there is alice's), a pointer on alice
    assert bob.ping().lease_seconds > 30  # (the session's lease is long: only the client's goodbye frees them this soon)
    deadline = time.monotonic() + 10
    while (bob._objects or alice._objects) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (bob._objects, alice._objects) == ({}, {})


def test_soak_operations_from_two_clients_leave_nothing_and_memory_flat(hook, bob, alice, carol):
    workers = [bob, alice, carol]
    clients = [_other_client(workers, rounds=SOAK_OPS // 11 // 2 + 1, wait=True) for _ in range(2)]  # importing torch meanwhile
    warm = _other_client(workers, rounds=100)  # (RSS settles in its first rounds: 200 more added ~50 KiB here)
    warm.communicate(timeout=120)
    rss_before = {w.id: _rss_kib(w.pid) for w in workers}
    start = time.monotonic()
    for client in clients:  # at the same time
        _go(client)
    ops = 0
    for client in clients:
        out, err = client.communicate(timeout=600)
        assert client.returncode == 0, err
        ops += int(out)
    elapsed = time.monotonic() - start
    assert ops >= SOAK_OPS
    assert [w._objects for w in workers] == [{}, {}, {}]
    growth = {w.id: _rss_kib(w.pid) - rss_before[w.id] for w in workers}
    print(f"\nsoak: {ops} operations from two clients in {elapsed:.1f}s ({ops / elapsed:.0f}/s); worker RSS growth KiB: {growth}")
    assert all(g < max(8, 20 * SOAK_OPS // 100_000) * 1024 for g in growth.values()), growth  # flat: ~2 MiB seen
