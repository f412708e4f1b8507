"""Real worker processes for the whole session, spawned once; stores emptied before each test."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch as th

import fedq as sy
from fedq.handle import Workers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def hook() -> sy.TorchHook:
    return sy.TorchHook(th)


@pytest.fixture(scope="session")
def federation(hook: sy.TorchHook):
    workers = {name: sy.VirtualWorker(hook, id=name) for name in ("bob", "alice", "carol", "secure_worker")}
    # clean_stores' full collection walks every tracked object: ~200k from the imports alone.
    # Frozen, they are skipped (what tests make is collected as before). Torch's first meta op
    # imports its kernels (the hook does it in a thread): done first, while the workers start.
    th.empty(1, device="meta") + 1
    gc.freeze()
    yield workers
    hook.local_worker.close()
    for worker in workers.values():
        assert worker.process.poll() is not None, f"{worker.id} outlived the client"


@pytest.fixture(autouse=True)
def clean_stores(request: pytest.FixtureRequest):
    """Earlier tests' pointers die and their deletes land before the next test starts."""
    if "federation" not in request.fixturenames:
        yield
        return
    federation = request.getfixturevalue("federation")
    client = sy.local_client()
    gc.collect()
    try:
        client.sync()
    except sy.FedqError:
        pass  # an earlier test's failed pipelined op: that test has asserted what it wanted
    for worker in federation.values():
        worker.clear_objects()
    yield


@pytest.fixture
def bob(federation):
    return federation["bob"]


@pytest.fixture
def alice(federation):
    return federation["alice"]


@pytest.fixture
def carol(federation):
    return federation["carol"]


@pytest.fixture
def secure_worker(federation):
    return federation["secure_worker"]


@pytest.fixture(scope="session")
def data_owners(hook, federation):
    """Two workers that loaded their own shard of workers/housing.py at startup (never cleared)."""
    return [sy.VirtualWorker(hook, id=f"owner_{name}", data=ROOT / "workers" / "housing.py") for name in ("bob", "alice")]


@pytest.fixture(scope="module")
def dp_owner(hook, federation, request):
    """A data owner of the test module's own (tests/data/dp_owner.py: a private (64, 4) table of
    0..9 with a budget of ε = 1 for the module to spend, updates refused; 400 known coin flips)."""
    worker = sy.VirtualWorker(hook, id="dp_owner_" + request.module.__name__.rpartition(".")[2], data=ROOT / "tests" / "data" / "dp_owner.py")
    yield worker
    worker.shutdown()


@pytest.fixture
def sandbox_workers(federation, hook):
    """sy.create_sandbox's four workers of its own are stopped after the test (its bob and alice
    are the session's, and stay)."""
    yield
    spawned = Workers.of(hook.local_worker).spawned
    for name in ("theo", "jason", "andy", "jon"):
        worker = spawned.get(name)
        if worker is not None and worker.alive():
            worker.shutdown()


@pytest.fixture(scope="module")
def secagg_owners(hook, federation, request):
    """Three data owners of the test module's own (tests/data/secagg_owner.py) whose updates leave
    only in an aggregate of at least 2 owners."""
    prefix = "secagg_" + request.module.__name__.rpartition(".")[2].removeprefix("test_") + "_"
    made = [sy.VirtualWorker(hook, id=prefix + name, data=ROOT / "tests" / "data" / "secagg_owner.py") for name in ("bob", "alice", "carol")]
    yield made
    for worker in made:
        worker.shutdown()


@pytest.fixture
def table(dp_owner):
    """The dp_owner's private (64, 4) table."""
    return dp_owner.search("#table")[0]


def store(worker) -> dict:
    """What `worker` holds, as {id: tensor or pointer}."""
    return worker._objects
