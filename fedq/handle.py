"""Worker handles: how the user names a worker, starts one, or connects to one.

`VirtualWorker(hook, id="bob")` keeps PySyft 0.2's spelling, but "bob" is a
real OS process: a child of this one, serving on an ipc endpoint in a
directory only this user can read. It dies with this process, even on
SIGKILL (it watches a pipe from us). `connect(hook, "bob", config=...)`
returns the same kind of handle for a worker someone else started.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from .client import TIMEOUT_ENV, Client, local_client
from .codec import INBAND_LIMIT, new_incarnation, new_key
from .config import load_config
from .errors import ConfigError
from .ids import new_id
from .launcher import running_workers, start_worker_process, thread_budget
from .messages import (
    AddOwnerData,
    ClearObjects,
    CountObjects,
    DecideRequest,
    DescribeObjects,
    ListObjects,
    ListRequests,
    ObjectInfo,
    Ping,
    PointerSpec,
    RequestInfo,
    Search,
    SetThreads,
    Shutdown,
    WorkerStatus,
)
from .pointer import PointerTensor
from .settings import SPAWNED_RETAINED_FREE_BYTES, settings_from
from .transport import CurveKeys, runtime_dir


def _client_of(hook: Any) -> Client:
    if hook is None:
        return local_client()
    if isinstance(hook, Client):
        return hook
    return hook.local_worker


class Workers:
    """The handles of the workers one client knows: one per address, made on first sight
    (pointers name their worker by address), and those this process spawned, by id. The
    client itself knows workers only by address (`Client.peers`, peers.py)."""

    # (A handle holds its client, so an entry lives as long as the client: atexit holds it anyway.)
    _of_client: "weakref.WeakKeyDictionary[Client, Workers]" = weakref.WeakKeyDictionary()

    def __init__(self, client: Client) -> None:
        self.client = client
        self.by_address: dict[str, VirtualWorker] = {}
        self.spawned: dict[str, VirtualWorker] = {}

    @classmethod
    def of(cls, client: Client) -> "Workers":
        workers = cls._of_client.get(client)
        if workers is None:  # (setdefault: two threads meeting a client first share one registry)
            workers = cls._of_client.setdefault(client, cls(client))
        return workers

    def at(self, id: str, address: str) -> "VirtualWorker":
        """The handle of the worker at `address`, made on first sight."""
        handle = self.by_address.get(address)
        if handle is None:
            handle = VirtualWorker.at(self.client, id, address)
        return handle

    def add(self, handle: "VirtualWorker", process: subprocess.Popen | None = None, **known: Any) -> None:
        """Know `handle`, and tell the client what it needs of it (`Peers.register`)."""
        self.by_address[handle.address] = handle
        self.client.peers.register(handle.address, handle.id, process, **known)


#: settings a worker this process spawns does not take
_NOT_FOR_A_SPAWNED_WORKER = ("admin_key_file", "curve_dir", "peers", "bind")
_NOT_FOR_A_SPAWNED_WORKER_WHY = "its admin key is this process's (its owner), and it serves on ipc in a directory only this user can read"


class VirtualWorker:
    """A worker process, seen from the user's process."""

    is_local = False  # (the client, "me", is)

    def __new__(cls, hook: Any = None, id: str = "worker", **kwargs: Any) -> "VirtualWorker":
        client = _client_of(hook)
        existing = Workers.of(client).spawned.get(id)
        if existing is not None and existing.alive():
            return existing  # re-running a notebook cell must not start a second "bob"
        return super().__new__(cls)

    def __init__(self, hook: Any = None, id: str = "worker", **settings: Any) -> None:
        """Start worker `id` as a child process of this one. `settings` are `settings.WorkerSettings`'
        fields by name (the README's table of settings): `data=` (a data owner's script),
        `allow_code=`, `max_store_bytes=`, `lease_seconds=`, ... `timeout` is this client's unless
        given; the child prints only warnings unless `verbose=True`.

        `data=(x1, x2, ...)`, tensors instead of a script (PySyft's form): the worker keeps them as
        its data owner's, this script's (it started the worker), with their `.tag()`s: found by
        `search`, never freed by its pointers, read-only to clients, and public (the script had
        them already): private data is a script's `owner.add(..., private=True)` or dataset."""
        data = settings.get("data")
        tensors = None
        if isinstance(data, (tuple, list)):
            tensors = _local_tensors(data)
            settings = {k: v for k, v in settings.items() if k != "data"}
        refused = sorted(set(settings) & set(_NOT_FOR_A_SPAWNED_WORKER))
        if refused:
            raise TypeError(f"VirtualWorker() takes no {', '.join(refused)}: {_NOT_FOR_A_SPAWNED_WORKER_WHY}")
        given = settings_from(settings, where="VirtualWorker", strict=True)  # (a wrong name fails here, spawned or not)
        if getattr(self, "client", None) is not None:
            return
        self.client = _client_of(hook)
        self.id = id
        directory = Path(tempfile.mkdtemp(prefix="vw-", dir=runtime_dir()))
        self.address = f"ipc://{directory}/{id}.sock"
        # We choose its incarnation (our first request needs no hello) and, as the owner of what
        # we spawn, its admin key: our clear_objects() and shutdown() are the owner's.
        incarnation, admin_key = new_incarnation(), new_key()
        given = settings_from(
            {
                "timeout": given.timeout if settings.get("timeout") else self.client.timeout,
                "quiet": given.quiet or not given.verbose,  # (a child shares our terminal)
                "data": str(Path(given.data).resolve()) if given.data else None,
                "retained_free_bytes": given.retained_free_bytes if "retained_free_bytes" in settings else SPAWNED_RETAINED_FREE_BYTES,
            },
            base=given,
        )
        self._budgeted = given.threads is None  # (the default: the cores divided among this script's workers)
        if self._budgeted:
            given = dataclasses.replace(given, threads=thread_budget(running_workers() + 1))
        self.threads: int = given.threads
        self.process: subprocess.Popen | None = start_worker_process(
            id, self.address, key=self.client.key, settings=given, incarnation=incarnation, admin_key=admin_key
        )
        self.workers = Workers.of(self.client)
        self.workers.add(self, self.process, incarnation=incarnation, admin_key=admin_key)
        self.workers.spawned[id] = self
        self.client.peers.lease_at(self.address, given.lease_seconds)
        # Not waited for: the first read waits, so several workers start in parallel.
        self.client.submit(self.address, Ping())
        if self._budgeted:
            self._share_the_cores()
        if tensors:
            self.load_data(tensors)

    def _share_the_cores(self) -> None:
        """The cores divided again now that this worker runs too: this script's earlier workers on
        the default budget are lowered to this one's (pipelined). A first worker alone got every
        core; beside 8 more on 2 cores its threads took turns with theirs and, on a loaded machine,
        each parallel op waited for a thread that was not scheduled (issue 17's workload B)."""
        for other in list(self.workers.spawned.values()):
            if other is not self and getattr(other, "_budgeted", False) and other.threads > self.threads and other.alive():
                self.client.submit(other.address, SetThreads(self.threads), quiet=True)  # (no read waits for a busy one)
                other.threads = self.threads

    def load_data(self, tensors: "tuple[torch.Tensor, ...] | list[torch.Tensor]") -> None:
        """PySyft's `worker.load_data([x1, x2])`: keep `tensors` (with their `.tag()`s) as this
        worker's data owner's: ours, who started it (a worker we only connected to refuses)."""
        tensors = _local_tensors(tensors)
        tags = tuple(tuple(sorted(getattr(t, "tags", None) or ())) for t in tensors)
        descriptions = tuple(getattr(t, "description", None) for t in tensors)
        call = self.client.submit(self.address, AddOwnerData(tuple(t.detach() for t in tensors), tags, descriptions))
        if any(t.element_size() * t.numel() >= INBAND_LIMIT for t in tensors):
            self.client.wait(call)  # (sent zero-copy: what the worker keeps must not change with them here)

    @classmethod
    def at(cls, client: Client, id: str, address: str) -> "VirtualWorker":
        """A handle to a worker already serving at `address`."""
        self = object.__new__(cls)
        self.client, self.id, self.address, self.process = client, id, address, None
        self.workers = Workers.of(client)
        self.workers.add(self)
        return self

    def worker_at(self, id: str, address: str) -> "VirtualWorker":
        """The handle of the worker at `address`, as this handle's client knows it (made on first
        sight): how a pointer names the worker of a pointer it is answered with."""
        return self.workers.at(id, address)

    # ---- what PySyft users know
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    @property
    def incarnation(self) -> bytes:
        """Which life of the worker this handle talks to (asked once if not known yet)."""
        return self.client.peers.incarnation_of(self.address)

    def clear_objects(self) -> "VirtualWorker":
        """Empty this worker's store (rule 10: other workers are not touched)."""
        self.client.request(self.address, ClearObjects(), after_deletes=True)
        return self

    @property
    def _objects(self) -> dict[int, Any]:
        """A snapshot {id: tensor or pointer} of what this worker holds (rule 11)."""
        snapshot = self.client.request(self.address, ListObjects(), after_deletes=True)
        return {
            id: PointerTensor.view_of(self, obj) if isinstance(obj, PointerSpec) else obj
            for id, obj in snapshot.items()
        }

    @property
    def _tensors(self) -> dict[int, torch.Tensor]:
        """PySyft's: the tensors of the snapshot (`_objects` without the stored pointers): a holder's shares."""
        return {id: obj for id, obj in self._objects.items() if not isinstance(obj, PointerTensor)}

    def objects_count(self) -> int:
        return self.client.request(self.address, CountObjects(), after_deletes=True)

    def search(self, *tags: str | list[str]) -> list[Any]:
        """Pointers to every object here that carries all `tags` (rule 14):
        `bob.search("#boston")`, `bob.search(["#boston", "#target"])` or `bob.search("#boston", "#target")`."""
        wanted = tuple(t for group in tags for t in ([group] if isinstance(group, str) else group))
        specs = self.client.request(self.address, Search(wanted), after_deletes=True)
        return [PointerTensor.from_spec(self, spec, is_chain=False, id=new_id()) for spec in specs]

    def describe(self, timeout: float | None = None) -> list[ObjectInfo]:
        """One row per stored object: id, type, shape, dtype, bytes, references, target."""
        return self.client.request(self.address, DescribeObjects(), timeout=timeout, after_deletes=True)

    # ---- the data owner's: requests that private objects leave (requests.py)
    def requests(self, timeout: float | None = None) -> list[RequestInfo]:
        """Every request filed here (`x.request(reason=...)`): id, object, who asked, why, age,
        status, and the ops that produced the object. The owner's (signed with the admin key)."""
        return self.client.request(self.address, ListRequests(), timeout=timeout, after_deletes=True)

    def approve(self, request_id: int, timeout: float | None = None) -> RequestInfo:
        """Let the object of request `request_id` leave: the next `.get()` of the client that asked succeeds, once."""
        return self.client.request(self.address, DecideRequest(int(request_id), True), timeout=timeout)

    def deny(self, request_id: int, reason: str = "", timeout: float | None = None) -> RequestInfo:
        """Refuse request `request_id`: the client's `.get()` raises RequestDeniedError, with `reason`."""
        return self.client.request(self.address, DecideRequest(int(request_id), False, reason), timeout=timeout)

    def ping(self, timeout: float | None = None) -> WorkerStatus:
        return self.client.request(self.address, Ping(), timeout=timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the worker process (any worker: also one this process did not start)."""
        self.client.request(self.address, Shutdown(), timeout=timeout)
        if self.process is not None:
            self.process.wait(timeout)

    def __repr__(self) -> str:
        try:
            count = str(self.client.request(self.address, CountObjects(), timeout=min(self.client.timeout, 5.0), after_deletes=True))
        except Exception:
            count = "?"
        return f"<VirtualWorker id:{self.id} #objects:{count}>"


def _local_tensors(data: Any) -> tuple[torch.Tensor, ...]:
    tensors = tuple(data)
    if not all(isinstance(t, torch.Tensor) and not isinstance(t, PointerTensor) for t in tensors):
        raise TypeError("a worker's data is a data owner's script, or a tuple of local tensors (not pointers)")
    return tensors


def connect(
    hook: Any = None, id: str = "", *, address: str | None = None, config: str | Path | None = None, owner: bool | None = False
) -> VirtualWorker:
    """A handle to a running worker, by its address or by its id in a federation config.

    `owner=True`: we are its data owner, on its host: clearing, stopping and listing it are
    signed with the config's admin key file (`admin_key_file`), which only the owner can read.
    `owner=None`: the same if that file is readable here, else as any key holder."""
    client = _client_of(hook)
    federation = load_config(config) if address is None or owner is not False else None
    if address is None:
        address = federation.worker(id).address
        client.use_key(federation.key(create=False))
        if TIMEOUT_ENV not in os.environ:  # the config's timeout is for calls too (the environment's wins)
            client.peers.timeouts[address] = federation.settings_of(id).timeout
        if federation.curve_dir is not None:
            client.use_curve(CurveKeys.load(federation.curve_dir, federation.curve_identity(), federation.peers()))
    handle = Workers.of(client).at(id, address)
    if id and id != handle.id:  # (met before under another name: this one, from now on)
        handle.id = id
        client.peers.register(address, id)
    if owner is not False and not client.peers.is_owner_of(address):  # (a worker this process started: its own key already)
        try:
            client.peers.use_admin_key(address, federation.admin_key(create=False))
        except ConfigError:
            if owner:
                raise
    return handle
