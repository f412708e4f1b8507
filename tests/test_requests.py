"""Requests the data owner approves (requests.py): a private object leaves with `.get()` only
once its owner approved the request its holder filed, exactly as it was filed, and once.

The owner is this test process (it started the session's data owners, so it holds their admin
keys); the attacker is another process holding only the federation key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch as th
from typer.testing import CliRunner

import fedq as sy
from fedq.cli import app
from fedq.keys import KEY_ENV

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workers"))
from housing import shard  # noqa: E402  (the owner's data, computed here to compare)


@pytest.fixture
def owner(data_owners):
    return data_owners[0]


@pytest.fixture
def data(owner):
    return owner.search("#housing", "#data")[0]


def _row(owner, request_id: int):
    [row] = [r for r in owner.requests() if r.id == request_id]
    return row


def test_an_approved_request_releases_the_object_once(hook, owner, data):
    features = shard(owner.id)[0]
    m = data * 2
    with pytest.raises(sy.GetNotPermittedError, match="private"):
        m.get()
    request_id = m.request(reason="to check the scaling")
    assert m.request(reason="asked twice") == request_id  # one live request per object and client
    with pytest.raises(sy.RequestPendingError, match=str(request_id)):
        m.get()
    row = _row(owner, request_id)
    assert (row.object_id, row.reason, row.status, row.shape, row.dtype) == (m.id_at_location, "to check the scaling", "pending", (64, 4), "float32")
    assert row.asked_by == hook.local_worker.name and "#" not in row.asked_by  # a name, never the session
    assert hook.local_worker.codec.session.hex() not in repr(row)
    assert 0 <= row.age < 60 and row.expires_in > 3600
    # What the owner reviews: the ops that made the object, from its own data on.
    assert row.history[0] == "datasets: houses" and row.history[1].startswith(f"data: {owner.id}'s houses") and row.history[-1].startswith("Tensor.mul(<private") and row.history[-1].endswith(", 2)")

    again = m.clone()  # a second handle to the same object
    assert owner.approve(request_id).status == "approved"
    assert th.equal(m.get(), features * 2)  # the owner's values, exactly
    assert _row(owner, request_id).status == "released"
    with pytest.raises(sy.GetNotPermittedError, match="once"):  # one approval, one .get()
        again.get()


def test_a_denied_request_says_so_and_get_request_true_files_one(owner, data):
    m = data + 1
    with pytest.raises(sy.RequestPendingError):
        m.get(request=True, reason="the shifted table")
    [row] = [r for r in owner.requests() if r.object_id == m.id_at_location]
    assert row.reason == "the shifted table"
    owner.deny(row.id, reason="too close to the raw rows")
    with pytest.raises(sy.RequestDeniedError, match="too close to the raw rows") as denied:
        m.get()
    assert isinstance(denied.value, sy.GetNotPermittedError)
    for again in (lambda: m.request(reason="please"), lambda: m.get(request=True)):
        with pytest.raises(sy.RequestDeniedError):  # a denial stands: asking again files nothing
            again()
    assert [r.status for r in owner.requests() if r.object_id == m.id_at_location] == ["denied"]
    with pytest.raises(sy.RequestNotFoundError):
        owner.approve(12345)  # (no such request)


def test_a_public_object_needs_no_request_nor_does_a_chain(owner, data, bob):
    public = th.tensor([1.0, 2.0]).send(owner)
    with pytest.raises(sy.RequestNotNeededError, match="not private"):
        public.request(reason="please")
    assert public.get(request=True).tolist() == [1.0, 2.0]
    chain = (data * 3).send(bob)  # me -> bob -> owner: bob holds a pointer, nothing private
    with pytest.raises(sy.RequestNotNeededError, match="where the data is"):
        chain.request()
    peeled = chain.get(request=True)  # peels one level, as .get() does
    assert peeled.location.id == owner.id
    with pytest.raises(sy.GetNotPermittedError, match="private"):
        peeled.get()


def test_what_is_released_is_what_was_filed(owner, data):
    features = shard(owner.id)[0]
    m = data * 2
    view = m[0:8]
    request_id = m.request(reason="before the write")
    view.mul_(0)  # the holder changes the object after filing, through a view
    owner.approve(request_id)
    with pytest.raises(sy.GetNotPermittedError, match="changed since"):
        m.get()
    assert _row(owner, request_id).status == "void"
    base = data * 3
    part = base[0:8]
    request_id = part.request(reason="a view of a table")
    base.add_(1)  # written through its base
    owner.approve(request_id)
    with pytest.raises(sy.GetNotPermittedError, match="changed since"):
        part.get()
    # Filed anew, the owner reviews the object as it is now, and that is what leaves.
    owner.approve(m.request(reason="after the write"))
    expected = features * 2
    expected[0:8] = 0
    assert th.equal(m.get(), expected)


ATTACK = """
import json, sys, torch as th, fedq as sy
from fedq import messages as msg
from fedq.errors import FedqError
address, victim_id, victim_request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hook = sy.TorchHook(th)
w = sy.connect(hook, "owner_bob", address=address)
client = hook.local_worker
out = {}

def attempt(name, action):
    try:
        action()
        out[name] = "done"
    except FedqError as error:
        out[name] = type(error).__name__ + ": " + str(error).splitlines()[0]

attempt("list", lambda: w.requests())
attempt("deny_victim", lambda: w.deny(victim_request))
attempt("crafted_approve", lambda: client.request(w.address, msg.DecideRequest(victim_request, True)))
attempt("request_victim", lambda: client.request(w.address, msg.RequestRelease(victim_id, "mine now")))
attempt("get_victim", lambda: client.request(w.address, msg.GetObject(victim_id)))
mine = w.search("#housing", "#data")[0] * 5
own_request = mine.request(reason="please")
out["own_request"] = own_request
attempt("approve_own", lambda: w.approve(own_request))
attempt("get_own", lambda: mine.get())
print(json.dumps(out))
"""


def test_a_key_holder_without_the_admin_key_cannot_list_or_decide(hook, owner, data):
    m = data * 4
    request_id = m.request(reason="the owner approves this one")
    owner.approve(request_id)
    environment = {**os.environ, KEY_ENV: hook.local_worker.key.hex()}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ATTACK), owner.address, str(m.id_at_location), str(request_id)],
        capture_output=True, text=True, timeout=120, env=environment,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for attempt in ("list", "deny_victim", "crafted_approve", "approve_own"):  # the owner's actions are the owner's
        assert out[attempt].startswith("RemotePermissionError") and "only the data owner" in out[attempt], (attempt, out[attempt])
    assert out["request_victim"].startswith("RemotePermissionError") and "only a holder" in out["request_victim"]
    # The victim's approval lets the victim's .get() through, nobody else's.
    assert out["get_victim"].startswith("GetNotPermittedError"), out["get_victim"]
    assert out["get_own"].startswith("RequestPendingError"), out["get_own"]
    assert _row(owner, request_id).status == "approved"
    assert th.equal(m.get(), shard(owner.id)[0] * 4)


def test_requests_are_bounded_per_client(hook, data_owners):
    owner = data_owners[1]
    data = owner.search("#housing", "#data")[0]
    mine = lambda: [r for r in owner.requests() if r.asked_by == hook.local_worker.name and r.status == "pending"]
    room = 16 - len(mine())  # (the default max_requests; earlier tests' freed objects took theirs along)
    objects = [data * (i + 2) for i in range(room)]
    ids = [m.request(reason=f"part {i}") for i, m in enumerate(objects)]
    assert objects[0].request() == ids[0]  # naming a live request again costs nothing
    extra = data * 100
    with pytest.raises(sy.TooManyRequestsError, match="16 pending requests per client"):
        extra.request(reason="one too many")
    owner.deny(ids[0])  # decided: no longer pending, so there is room for one
    second_try = extra.request(reason="one too many")
    with pytest.raises(sy.TooManyRequestsError):
        (data * 101).request()
    del objects[1]  # a freed object's request goes with it, and so does its place
    assert ids[1] not in {r.id for r in owner.requests()} and second_try in {r.id for r in owner.requests()}
    (data * 102).request()


def test_requests_expire(hook):
    short = sy.VirtualWorker(hook, id="requests_short", data=ROOT / "workers" / "housing.py", request_seconds=1.0)
    try:
        data = short.search("#housing", "#data")[0]
        approved, denied = data * 1, data * 2
        approved_id, denied_id = approved.request(reason="a"), denied.request(reason="b")
        filed = time.monotonic()  # (both were filed before: this host's monotonic clock is the worker's)
        short.approve(approved_id)
        short.deny(denied_id)
        time.sleep(max(0.0, filed + 1.05 - time.monotonic()))  # request_seconds: forgotten, approved or not
        assert short.requests() == []
        for m in (approved, denied):
            with pytest.raises(sy.GetNotPermittedError) as refused:
                m.get()
            assert type(refused.value) is sy.GetNotPermittedError  # no request any more: private, as before
        with pytest.raises(sy.RequestNotFoundError, match="expired"):
            short.approve(denied_id)
    finally:
        short.shutdown()


runner = CliRunner()


def test_the_owner_decides_from_the_command_line(owner, data):
    m, n = data * 6, data * 7
    approve_id, deny_id = m.request(reason="for the report"), n.request(reason="a second look")
    listed = runner.invoke(app, ["requests", owner.id, "--address", owner.address])
    assert listed.exit_code == 0, listed.output
    assert str(approve_id) in listed.output and "for the report" in listed.output and "pending" in listed.output
    assert "Tensor.mul(<private" in listed.output  # the history, for the owner to review
    assert runner.invoke(app, ["approve", owner.id, str(approve_id), "--address", owner.address]).exit_code == 0
    denied = runner.invoke(app, ["deny", owner.id, str(deny_id), "--reason", "no", "--address", owner.address])
    assert denied.exit_code == 0 and "denied" in denied.output
    assert th.equal(m.get(), shard(owner.id)[0] * 6)
    with pytest.raises(sy.RequestDeniedError):
        n.get()
