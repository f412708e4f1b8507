"""Requests that a private object leave its worker, for the data owner to decide (as PySyft's
Duet gave data owners): the pending requests, their states, and their expiry.

A client holding a private object (one computed from the owner's private data, which `.get()`
refuses) files a request: `x.request(reason="...")`. The owner lists them (`fedq requests`,
`worker.requests()`), each with who asked, why, and the ops that produced the object, and
approves or denies one (`fedq approve`, `fedq deny`, `worker.approve(id)`). Then the object's
next `.get()` by the client that asked succeeds, once (`released`); until then it raises
`RequestPendingError` or `RequestDeniedError`.

**An approval covers what was filed, nothing else.** At filing the table keeps a fingerprint
of the object (a hash of its values, shape and dtype), the op history that produced it, and a
weak reference to it. A release hands the object out only if it is that same object and its
fingerprint is unchanged: an in-place write after filing makes the request `void` (the client
files a new one, which the owner reviews anew), and an id freed and reused names nothing
approved. No copy is kept, so a request costs a few hundred bytes, not its object's size again,
and the object stays counted by the store's limits alone.

**Bounded.** A client has at most `max_requests` pending (settings.py), the table at most
MAX_REQUESTS in all, a reason or a note at most MAX_REASON_CHARS. A request is forgotten
`request_seconds` after it was filed, whatever its state, and at once when its object is freed.
"""

from __future__ import annotations

import hashlib
import random
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from .errors import (
    FedqError,
    GetNotPermittedError,
    RequestDeniedError,
    RequestNotFoundError,
    RequestPendingError,
    RequestTooLargeError,
    TooManyRequestsError,
)
from .messages import RequestInfo
from .store import ObjectStore

PENDING, APPROVED, DENIED, RELEASED, VOID = "pending", "approved", "denied", "released", "void"
MAX_REQUESTS = 4096  # kept on one worker, from all its clients
MAX_REASON_CHARS = 1024

_ids = random.SystemRandom()


@dataclass(slots=True)
class Request:
    id: int
    object_id: int
    caller: str  # the holder's session (the store's key for it): whose .get() an approval lets through
    asked_by: str  # the name its connection gave, for the owner
    reason: str
    filed_at: float  # monotonic
    fingerprint: bytes
    history: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    obj: Callable[[], Any]  # a weak reference to what was filed
    status: str = PENDING
    note: str = ""


def fingerprint(tensor: torch.Tensor) -> bytes:
    """A hash of what `.get()` would hand out: the values, shape and dtype (not a .grad)."""
    data = tensor.detach()
    digest = hashlib.blake2b(f"{tuple(data.shape)} {data.dtype}".encode(), digest_size=32)
    if data.layout != torch.strided:
        data = data.to_dense()
    if data.is_quantized:
        data = data.int_repr()
    if data.numel():
        digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.digest()


class Requests:
    """One worker's requests, by id; at most one live request per (object, client)."""

    def __init__(
        self, store: ObjectStore, *, seconds: float, max_per_client: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self.seconds = float(seconds)
        self.max_per_client = int(max_per_client)
        self._clock = clock
        self._by_id: dict[int, Request] = {}
        self._latest: dict[tuple[int, str], int] = {}  # (object id, caller) -> its latest request's id

    def file(self, object_id: int, obj: torch.Tensor, caller: str, asked_by: str, reason: str, history: Iterable[str]) -> int:
        """File `caller`'s request that private `obj` (stored under `object_id`, held by `caller`:
        the handler checked) leave; its id. A request of the caller's for it that is still pending or
        approved is named again instead (its reason unchanged: that is what the owner reads); a denied
        one stands (RequestDeniedError) unless the owner changes its mind."""
        _check_text("a request's reason", reason)
        now = self._prune()
        current = self._by_id.get(self._latest.get((object_id, caller), 0))
        if current is not None and current.status in (PENDING, APPROVED):
            return current.id
        if current is not None and current.status == DENIED:
            raise self._denied(current)
        pending = sum(1 for r in self._by_id.values() if r.caller == caller and r.status == PENDING)
        if pending >= self.max_per_client:
            raise TooManyRequestsError(
                f"worker {self._store.worker_id!r} keeps {self.max_per_client} pending requests per client, and {pending} "
                "of yours are waiting for its data owner: wait for a decision, or delete the objects you no longer need"
            )
        if len(self._by_id) >= MAX_REQUESTS:
            raise TooManyRequestsError(
                f"worker {self._store.worker_id!r} keeps {MAX_REQUESTS} requests, and holds as many: "
                "ask its data owner to decide some (or retry once they expire)"
            )
        id = _ids.randrange(10_000_000, 100_000_000)  # 8 digits: the owner types it
        while id in self._by_id:
            id = _ids.randrange(10_000_000, 100_000_000)
        self._by_id[id] = Request(
            id, object_id, caller, asked_by, reason, now, fingerprint(obj), tuple(history),
            tuple(obj.shape), str(obj.dtype).removeprefix("torch."), weakref.ref(obj),
        )  # fmt: skip
        self._latest[(object_id, caller)] = id
        return id

    def decide(self, request_id: int, approve: bool, note: str = "") -> RequestInfo:
        """The owner's decision on a request not yet released (it may change its mind until then)."""
        _check_text("a decision's note", note)
        now = self._prune()
        request = self._by_id.get(request_id) if type(request_id) is int else None
        if request is None:
            raise RequestNotFoundError(
                f"worker {self._store.worker_id!r} has no request {request_id}: it was never filed, expired "
                f"(after {self.seconds:g}s), or its object was freed. `fedq requests` lists what it has"
            )
        if request.status in (RELEASED, VOID):
            raise FedqError(f"request {request_id} on {self._store.worker_id!r} is {request.status}: nothing is left to decide")
        request.status, request.note = (APPROVED, "") if approve else (DENIED, note)
        return self._info(request, now)

    def listing(self) -> list[RequestInfo]:
        """Every request kept, oldest first: what the owner reviews."""
        now = self._prune()
        return [self._info(r, now) for r in sorted(self._by_id.values(), key=lambda r: r.filed_at)]

    def release(self, object_id: int, obj: Any, caller: str) -> Any:
        """What `caller`'s `.get()` of private `obj` (under `object_id`) may take: the object's
        values when the owner approved its request and it is unchanged since filing (the request is
        used up: released). None when the caller filed no request for it (the caller refuses as for
        any private object); a GetNotPermittedError saying why when its request says no."""
        self._prune()
        request = self._by_id.get(self._latest.get((object_id, caller), 0))
        if request is None or request.obj() is not obj:
            return None
        where = f"object {object_id} on {self._store.worker_id!r} is private"
        if request.status == PENDING:
            raise RequestPendingError(
                f"{where}: request {request.id} to release it waits for its data owner (`fedq approve "
                f"{self._store.worker_id} {request.id}`, or worker.approve({request.id})); .get() again once approved"
            )
        if request.status == DENIED:
            raise self._denied(request)
        if request.status == RELEASED:
            raise GetNotPermittedError(
                f"{where}; request {request.id} released it once already (an approval lets one .get() through): "
                "file a new request to fetch it again"
            )
        if request.status == APPROVED and fingerprint(obj) != request.fingerprint:
            request.status = VOID
        if request.status == VOID:
            raise GetNotPermittedError(
                f"{where}, and changed since request {request.id} was filed (an in-place write): an approval covers "
                "the values filed, so that request is void; file a new one for the owner to review"
            )
        request.status = RELEASED
        return obj.detach()

    def _denied(self, request: Request) -> RequestDeniedError:
        return RequestDeniedError(
            f"object {request.object_id} on {self._store.worker_id!r} is private, and its data owner denied request "
            f"{request.id} to release it" + (f": {request.note}" if request.note else "")
        )

    def _prune(self) -> float:
        """Forget the requests that expired, and those whose object was freed (or its id reused)."""
        now = self._clock()
        store = self._store
        for request in list(self._by_id.values()):
            obj = request.obj()
            if now - request.filed_at >= self.seconds or obj is None or request.object_id not in store or store.get(request.object_id) is not obj:
                del self._by_id[request.id]
                if self._latest.get((request.object_id, request.caller)) == request.id:
                    del self._latest[(request.object_id, request.caller)]
        return now

    def _info(self, request: Request, now: float) -> RequestInfo:
        age = now - request.filed_at
        return RequestInfo(
            request.id, request.object_id, request.asked_by, request.reason, round(age, 1), round(max(0.0, self.seconds - age), 1),
            request.status, request.history, request.shape, request.dtype, request.note,
        )  # fmt: skip


def _check_text(what: str, text: Any) -> None:
    if not isinstance(text, str) or len(text) > MAX_REASON_CHARS:
        raise RequestTooLargeError(f"{what} is a string of at most {MAX_REASON_CHARS} characters")
