"""fedq: remote execution on private data, PySyft 0.2's API over real worker processes.

    import torch as th
    import fedq as sy
    hook = sy.TorchHook(th)
    bob = sy.VirtualWorker(hook, id="bob")     # a separate OS process
    x = th.tensor([1, 2, 3]).send(bob)         # [PointerTensor | me:... -> bob:...]
    (x + x).get()                              # tensor([2, 4, 6])
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AggregateTooSmallError,
    BatchSizeError,
    CodeNotAllowedError,
    ConfigError,
    DatasetAlreadySentError,
    DatasetMismatchError,
    DatasetNotSentError,
    FedqError,
    StoreFullError,
    GetNotPermittedError,
    NotReleasableError,
    ObjectNotFoundError,
    PlanArgumentsError,
    PlanBuildError,
    PlanNotBuiltError,
    PrivacyBudgetExceededError,
    ProtocolError,
    RemoteError,
    RequestDeniedError,
    RequestNotFoundError,
    RequestNotNeededError,
    RequestPendingError,
    SpentPointerError,
    TensorsNotCollocatedError,
    TooManyRequestsError,
    UnsupportedOperationError,
    ValueDependentShapeError,
    ValueNeedsGetError,
    WorkerDiedError,
    WorkerRestartedError,
    WorkerUnreachableError,
)
from .client import Client, local_client  # noqa: E402
from .datasets import BaseDataset, FederatedDataLoader, FederatedDataset  # noqa: E402
from .handle import VirtualWorker, connect  # noqa: E402
from .hook import TorchHook  # noqa: E402
from .pointer import Pointer, PointerParameter, PointerTensor  # noqa: E402
from .grid import PrivateGridNetwork  # noqa: E402
from .sandbox import create_sandbox, make_hook  # noqa: E402
from .plans import Plan, PointerPlan, func2plan  # noqa: E402

__all__ = [
    "AggregateTooSmallError",
    "CodeNotAllowedError", "ConfigError", "StoreFullError",
    "BaseDataset", "FederatedDataLoader", "FederatedDataset", "BatchSizeError", "DatasetAlreadySentError", "DatasetMismatchError", "DatasetNotSentError",
    "Client", "FedqError", "GetNotPermittedError", "NotReleasableError", "PrivacyBudgetExceededError", "ValueDependentShapeError", "ObjectNotFoundError", "PointerTensor", "ProtocolError",
    "RemoteError", "RequestDeniedError", "RequestNotFoundError", "RequestNotNeededError", "RequestPendingError",
    "SpentPointerError", "TooManyRequestsError", "TensorsNotCollocatedError", "TorchHook", "UnsupportedOperationError",
    "ValueNeedsGetError", "VirtualWorker", "Pointer", "PointerParameter", "WorkerDiedError", "WorkerRestartedError", "WorkerUnreachableError", "connect", "local_client",
    "PrivateGridNetwork", "create_sandbox", "make_hook", "local_worker",
    "Plan", "PointerPlan", "func2plan", "PlanArgumentsError", "PlanBuildError", "PlanNotBuiltError",
]


def __getattr__(name: str) -> object:
    """`sy.local_worker`: this process's client, "me" (PySyft's, which its TorchHook made)."""
    if name == "local_worker":
        return local_client()
    raise AttributeError(f"module 'fedq' has no attribute {name!r}")
