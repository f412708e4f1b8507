"""Roles: a key holder changes only what it holds; the data owner's data is read-only to it,
and the owner's actions (clearing the owner's data, stopping the worker) are the owner's.

The attacker is another process holding the federation key (not the worker's admin key),
using the public API and crafted requests; the test process is the owner of the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch as th

import fedq as sy

from helpers import owner_reads
from fedq.keys import KEY_ENV

ROOT = Path(__file__).resolve().parent.parent

ATTACK = """
import json, sys, torch as th, fedq as sy
from fedq import messages as msg
from fedq.errors import FedqError
address, victim_id, victim_holder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
hook = sy.TorchHook(th)
w = sy.connect(hook, "roles_owner", address=address)
client = hook.local_worker
out = {}

def attempt(name, action):
    try:
        action()
        client.sync()  # (a pipelined op's refusal comes at the next wait)
        out[name] = "done"
    except PermissionError as error:
        out[name] = "PermissionError: " + str(error).splitlines()[0]
    except FedqError as error:
        out[name] = type(error).__name__ + ": " + str(error).splitlines()[0]

mine = th.tensor([7.0, 8.0]).send(w)
out["listed"] = sorted(w._objects)
out["mine"] = mine.id_at_location
out["count"] = w.objects_count()
features = w.search("#data")[0]
attempt("mul_", lambda: features.mul_(0))
attempt("view_mul_", lambda: features[0:2].mul_(0))
attempt("setitem", lambda: features.__setitem__(0, 0.0))
attempt("out", lambda: th.add(features, 1, out=features))
attempt("requires_grad_", lambda: features.requires_grad_(True))
detached = features.detach()
attempt("detached_zero_", lambda: detached.zero_())
def share_then_write():
    scratch = th.zeros(64, 4).send(w)
    scratch.data = features  # now shares the owner's memory
    scratch.mul_(0)
attempt("share_then_write", share_then_write)
attempt("relu_inplace", lambda: th.nn.functional.relu(features, inplace=True))
batch = th.randn(8, 4).send(w)
attempt("batch_norm_statistics", lambda: th.nn.functional.batch_norm(batch, features[0], features[1], training=True))
# Posing as the victim: a connection that gives the victim's name (anyone may give any name).
import zmq
spoof = zmq.Context.instance().socket(zmq.DEALER)
spoof.setsockopt(zmq.ROUTING_ID, (victim_holder + "#spoofed").encode())
spoof.setsockopt(zmq.LINGER, 0)
spoof.connect(address)
spoof.send_multipart(client.codec.encode(1, msg.DescribeObjects(), w.incarnation))
assert spoof.poll(20000)
_, answer = client.codec.decode(spoof.recv_multipart())
out["spoofed_listing"] = [row.id for row in answer.value]
out["holder_names"] = sorted({name for row in answer.value for name, _ in row.holders})
spoof.send_multipart(client.codec.encode(2, msg.DeleteObjects((victim_id,)), w.incarnation))
spoof.poll(20000)
# Another client's object, by an id learned out of band: delete it, or take its reference.
client.request(w.address, msg.DeleteObjects((victim_id,)))
client.request(w.address, msg.DeleteObjects((), ((victim_id, victim_holder, client.name),)))
client.request(w.address, msg.DeleteObjects((victim_id,)))
attempt("clear_objects", lambda: w.clear_objects())
out["listed_after_clear"] = sorted(w._objects)
attempt("shutdown", lambda: w.shutdown(timeout=5))
client.sync()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def owned(hook):
    """A worker this test process started (so it is its owner), with an owner's dataset."""
    worker = sy.VirtualWorker(hook, id="roles_owner", data=ROOT / "workers" / "housing.py")
    yield worker
    worker.shutdown()


def _attack(hook, worker, victim) -> dict:
    environment = {**os.environ, KEY_ENV: hook.local_worker.key.hex()}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ATTACK), worker.address, str(victim.id_at_location), hook.local_worker.name],
        capture_output=True, text=True, timeout=120, env=environment,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_key_holder_changes_nothing_it_does_not_hold(hook, owned):
    owner_ids = set(owned._objects)
    features = owned.search("#data")[0]
    fingerprint = lambda: owner_reads(owned, features * 1).tolist()  # (the owner's own read: an approved request)
    before = fingerprint()
    victim = th.tensor([1.0, 2.0, 3.0]).send(owned)  # another client's object (ours, here)
    result = _attack(hook, owned, victim)

    # It sees only its own objects: no other party's ids to name.
    assert result["listed"] == [result["mine"]] and result["count"] == 1
    # The owner's data is read-only to it, through the object, a view, out=, or shared memory.
    for attempt in ("mul_", "view_mul_", "setitem", "out", "requires_grad_", "detached_zero_", "share_then_write", "relu_inplace", "batch_norm_statistics"):
        assert result[attempt].startswith("PermissionError") and "data owner" in result[attempt], (attempt, result[attempt])
    assert fingerprint() == before, "a client changed the owner's data"
    # Giving the victim's name does not make it the victim: it still sees only its own objects,
    # and listings show names, never what identifies a holder.
    assert victim.id_at_location not in result["spoofed_listing"]
    assert all("#" not in name for name in result["holder_names"])
    # Deleting or taking another client's reference did nothing; clear_objects freed only its own.
    assert victim.get().tolist() == [1.0, 2.0, 3.0]
    assert result["clear_objects"] == "done" and result["listed_after_clear"] == []
    assert owner_ids <= set(owned._objects)
    # Stopping the worker is the owner's.
    assert result["shutdown"].startswith("PermissionError")
    assert owned.ping().id == "roles_owner"


def test_the_owner_still_clears_and_computes_on_its_own_data(hook, owned):
    features = owned.search("#data")[0]
    assert owner_reads(owned, (features * 0).sum()) == 0  # computing on it (a new object) is fine
    copy = features.copy()
    copy.mul_(0)  # a copy is the client's own: in place is fine
    assert owner_reads(owned, copy.sum()) == 0
    scratch = th.ones(3).send(owned)
    owned.clear_objects()  # the owner's clear empties everything, its data included
    assert owned.objects_count() == 0
    del scratch
