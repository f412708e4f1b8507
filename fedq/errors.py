"""Every exception fedq raises, in one place.

Errors raised on a worker travel back to the user's process (see `messages.Failure`)
and are raised there again as the same class, with the worker's traceback
appended, so `except fedq.ObjectNotFoundError` works whichever side failed.
"""

from __future__ import annotations

import builtins


class FedqError(Exception):
    """Base of every fedq error."""

    #: id of the worker where the error happened, when it happened remotely
    worker: str | None = None
    #: the worker's formatted traceback, when it happened remotely
    remote_traceback: str | None = None


class ObjectNotFoundError(FedqError, LookupError):
    """A worker holds no object under the id a command named."""


class DuplicateIdError(FedqError, ValueError):
    """A command asked a worker to store an object under an id already in use."""


class TensorsNotCollocatedError(FedqError, ValueError):
    """One operation mixed objects that live in different places."""


class SpentPointerError(FedqError, RuntimeError):
    """A pointer was used after `.send()` handed it on or `.get()` consumed it."""


class ValueNeedsGetError(FedqError, RuntimeError):
    """The value behind a pointer was needed locally; `.get()` it first."""


class UnsupportedOperationError(FedqError, TypeError):
    """A function that fedq does not run remotely was called on a pointer."""


class GetNotPermittedError(FedqError, PermissionError):
    """The data owner does not allow this object to leave its worker."""


class PrivacyBudgetExceededError(GetNotPermittedError):
    """A differentially private release would spend more than what is left of its dataset's budget."""


class NotReleasableError(GetNotPermittedError):
    """A noisy release was asked of a private object that is not an aggregate over a dataset's records."""


class ValueDependentShapeError(GetNotPermittedError):
    """An op on private data whose result's shape would depend on the private values (and so reveal them)."""


class AggregateTooSmallError(GetNotPermittedError):
    """A share of an owner's private data was asked for reconstruction outside an aggregate its owners' policy releases (aggregates.py)."""


class RequestPendingError(GetNotPermittedError):
    """A private object's release was requested and its data owner has not decided yet."""


class RequestDeniedError(GetNotPermittedError):
    """The data owner denied the request to release a private object."""


class RequestNotNeededError(FedqError, ValueError):
    """A release was requested of an object that is not private: `.get()` it."""


class RequestNotFoundError(FedqError, LookupError):
    """A worker has no request under the id given (it was never filed, or it expired)."""


class TooManyRequestsError(FedqError, RuntimeError):
    """A client has as many requests pending on a worker as the worker keeps for one client."""


class ProtocolError(FedqError):
    """A message could not be decoded, or was not one the receiver expects.

    `seq` is the request it belonged to when the sender proved it holds the key
    (so it can be told why), else None (so it is dropped unanswered)."""

    def __init__(self, message: str = "", *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class CodeNotAllowedError(ProtocolError):
    """A message carried code (a pickled function or class) to a worker that does not run code."""


class StoreFullError(FedqError, MemoryError):
    """A worker's store would grow past its configured maximum."""


class WorkerUnreachableError(FedqError, TimeoutError):
    """A worker did not answer in time (or cannot be reached at all)."""


class WorkerDiedError(WorkerUnreachableError):
    """A worker process that this client started has exited."""


class WorkerRestartedError(WorkerUnreachableError):
    """A worker restarted (it answers under a new incarnation): what it held before is gone, and
    what was sent to its earlier incarnation was dropped unanswered."""


class ConfigError(FedqError, ValueError):
    """A federation config or key is missing, malformed, or lacks what was asked for."""


class RequestTooLargeError(FedqError, ValueError):
    """A request asks a worker to keep more than it keeps for one request: a description, tags
    or a shape too long, too many results of one op, or one more peer than it connects to."""


class PointerCycleError(FedqError, ValueError):
    """A pointer leads back where it is: to its own worker, or round a cycle of workers."""


class PlanNotBuiltError(FedqError, RuntimeError):
    """A plan was sent or run on pointers before `build(...)` traced it (plans.py)."""


class PlanArgumentsError(FedqError, TypeError):
    """A plan was called with the wrong number of arguments, or with shapes or dtypes its ops refuse."""


class PlanBuildError(FedqError, TypeError):
    """Tracing a plan met what a plan cannot record: a Python value read from a tensor, a
    non-tensor result, an op outside the op table (that one is an UnsupportedOperationError)."""


class DatasetMismatchError(FedqError, ValueError):
    """A dataset's data and targets differ in length, or live in different places (datasets.py)."""


class DatasetAlreadySentError(FedqError, ValueError):
    """A dataset was sent (or federated) again while on a worker, or a FederatedDataset was given
    two parts on one worker."""


class DatasetNotSentError(FedqError, ValueError):
    """A FederatedDataset was given a dataset that is still here: each part must be on its worker."""


class BatchSizeError(FedqError, ValueError):
    """A FederatedDataLoader was asked for batches of a size that is not a positive integer."""


class RemoteError(FedqError):
    """A remote exception whose type is not a fedq or builtin exception type."""


_REMOTE_BUILTIN_CLASSES: dict[type, type] = {}


def rebuild_remote_error(
    type_name: str, module: str, message: str, traceback: str, worker: str
) -> FedqError:
    """Turn a failure reported by `worker` back into an exception object.

    fedq's own classes come back as themselves. A builtin type (a torch shape
    error is a RuntimeError) comes back as a class deriving from both
    `RemoteError` and the builtin, so either `except` clause catches it.
    """
    text = f"{message}\n\n--- traceback on worker {worker!r} ---\n{traceback}".rstrip()
    cls = globals().get(type_name) if module == __name__ else None
    if not (isinstance(cls, type) and issubclass(cls, FedqError)):
        base = getattr(builtins, type_name, None) if module == "builtins" else None
        if isinstance(base, type) and issubclass(base, Exception):
            cls = _REMOTE_BUILTIN_CLASSES.get(base)
            if cls is None:
                cls = type(f"Remote{type_name}", (RemoteError, base), {"__module__": __name__})
                _REMOTE_BUILTIN_CLASSES[base] = cls
        else:
            cls = RemoteError
            text = f"{module}.{type_name}: {text}"
    error = cls(text)
    error.worker = worker
    error.remote_traceback = traceback
    return error
