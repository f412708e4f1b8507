"""`sy.TorchHook(torch)`: gives torch tensors PySyft 0.2's `.send()`.

The hook is a thin object over the process-wide client: `hook.local_worker`
is "me". Installing is idempotent; tensors gain methods, nothing else changes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from .client import Client, local_client
from .pointer import send_tensor


class TorchHook:
    def __init__(self, torch_module: ModuleType = torch, **_: Any) -> None:
        self.torch = torch_module
        self.local_worker: Client = local_client()
        torch.Tensor.send = send_tensor

    def __repr__(self) -> str:
        return f"<TorchHook local_worker:{self.local_worker.id}>"
