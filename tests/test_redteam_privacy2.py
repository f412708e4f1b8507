"""Red-team round 2 on issue 13 ("private data stays private"), after 65c8067 closed round 1's
16 holes (tests/test_redteam_privacy.py). A key holder with the public pointer API, or a crafted
message, against real worker processes (and `Privacy` itself where the question is what the
worker records). Every test asserts the SAFE outcome; the four that succeeded
against 65c8067 are closed (each test's comment says the hole); a new one is marked
`succeeds(why)` (xfail, strict, for an AssertionError only) until it is closed. The attacks share
one fresh dp_owner of their own (tests/data/dp_owner.py: a (64, 4) table of 0..9, ε = 1,
updates refused); none spends any of its budget."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch as th
import torch.nn.functional as F

import fedq as sy

from helpers import succeeds  # noqa: F401 (marks an attack that succeeds, until it is closed)
from fedq import ops
from fedq.ids import new_id
from fedq.messages import DescribeObjects, Ref, RunOp
from fedq.privacy import Privacy

ROOT = Path(__file__).resolve().parent.parent
SECRET = runpy.run_path(str(ROOT / "tests" / "data" / "dp_owner.py"))["SECRET"]

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def owner(dp_owner):
    """A fresh dp_owner (conftest.py): its own ε = 1 (never spent here)."""
    return dp_owner


# --------------------------------------------------------------------------- exact leaks, no budget

# The hole this closed: a sparse tensor has no one storage: privacy._storage_key and mark() key it
# by coalesce().values(), a new storage per call for an uncoalesced tensor (embedding's sparse
# grad), which dies at once and unmarks itself; the grad and anything computed from it come out
# public
def test_a_sparse_grad_from_private_data_is_private(table, owner):
    w = th.zeros(64, 4, requires_grad=True).send(owner)
    rows = F.embedding(th.arange(64).send(owner), w, sparse=True)  # w.grad: sparse, uncoalesced, = the table
    (rows * table).sum().backward()
    dense = th.zeros(64, 4).send(owner) + w.grad  # (sparse + dense is dense: a plain tensor to .get())
    try:
        fetched = dense.get()
    except sy.GetNotPermittedError:
        return
    assert not th.equal(fetched, SECRET)  # now: the whole table, exactly, from a dataset that refuses updates


# The hole this closed: holds_private looks one .grad deep, but wire._reduce_tensor ships a leaf's
# .grad with its own reduce, so a .grad's .grad goes too: p.grad = g, g.grad = private; p.get()
# (or a move, a listing)
def test_a_private_grad_of_a_grad_does_not_leave(table, owner):
    g = th.zeros(64, 4).send(owner)
    g.grad = table * 1  # g holds private data (refused alone)...
    p = th.zeros(64, 4, requires_grad=True).send(owner)
    p.grad = g  # ... p's .grad is public memory
    try:
        fetched = p.get()
    except sy.GetNotPermittedError:
        return
    inner = fetched.grad.grad if fetched.grad is not None else None
    assert inner is None or not th.equal(inner, SECRET)


# --------------------------------------------------------------------------- failures of private ops: still an oracle

def _stored_bytes_after_index_fill(owner, table, c: int) -> int:
    """A crafted RunOp: the in-place `index_fill_` on a c-element view of a large public tensor,
    at the private index SECRET[0, 3] == 3, with a result id (the client API sends none). It fails
    exactly when 3 >= c. Success stores the target itself (the view: its base's 16 KiB); the
    poisoned failure stores fresh zeros of the meta shape (4c bytes). describe() tells which."""
    client = sy.local_client()
    target = th.zeros(4096).send(owner)[0:c]
    index = table[0, 3:4].long()
    result = new_id()
    client.request(owner.address, RunOp("Tensor.index_fill_", (Ref(target.id_at_location), 0, Ref(index.id_at_location), 1.0), {}, (result,)))
    return next(row.nbytes for row in client.request(owner.address, DescribeObjects()) if row.id == result)


# The hole this closed: a poisoned failure is fresh zeros; a success may be (a view of) an
# existing tensor: an in-place op given a result id, or an out= op, returns its target, whose
# storage describe()'s nbytes measures
def test_whether_a_private_op_failed_is_not_told_by_the_stored_bytes(table, owner):
    outcomes = {c: _stored_bytes_after_index_fill(owner, table, c) for c in range(1, 6)}
    assert len(set(outcomes.values())) == 1, outcomes  # now: {1: 4, 2: 8, 3: 12, 4: 16384, 5: 16384}: the value is 3


# --------------------------------------------------------------------------- what the owner reviews (Privacy itself)

# The hole this closed: privacy._history keeps the last MAX_HISTORY (64) distinct lines: 64
# distinct no-ops push the dataset out of the history a request shows, and RequestInfo names no
# dataset otherwise
def test_a_request_history_keeps_where_the_data_came_from():
    privacy = Privacy()
    data = SECRET.clone()
    privacy.add(data, privacy.dataset("t", epsilon=1.0), "the owner's table", (0.0, 9.0))
    x = privacy.run("Tensor.mul", ops.TABLE["Tensor.mul"], (data, 1), {})
    for i in range(70):  # x + 0 * i: the table itself, seventy times
        x = privacy.run("Tensor.add", ops.TABLE["Tensor.add"], (x, 0), {"alpha": i})
    assert any("the owner's table" in line for line in privacy.history(x))
