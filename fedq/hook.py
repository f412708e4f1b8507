"""`sy.TorchHook(torch)`: gives tensors and models PySyft 0.2's `.send()`, `.tag()`, `.get()`...

The hook is a thin object over the process-wide client: `hook.local_worker`
is "me". Installing is idempotent; tensors gain methods, nothing else changes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .client import Client, local_client
from .datasets import federate
from .pointer import (
    copy_module, describe_tensor, get_module, move_module, send_module, send_tensor, state_follows_parameters, tag_tensor, warm_up_meta_kernels,
)
from .sharing import fix_precision, share

_optimizer_hook: Any = None  # registered once per process, however many hooks are made


class TorchHook:
    def __init__(self, torch_module: ModuleType = torch, **_: Any) -> None:
        # (`torch_module` and the keywords are PySyft's signature: fedq hooks the torch it imports)
        self.local_worker: Client = local_client()
        torch.Tensor.send = send_tensor
        torch.Tensor.tag = tag_tensor
        torch.Tensor.describe = describe_tensor
        torch.Tensor.fix_precision = torch.Tensor.fix_prec = fix_precision  # sharing.py: Parts 09 and 10
        torch.Tensor.share = share
        torch.nn.Module.send = send_module
        torch.nn.Module.get = get_module
        torch.nn.Module.move = move_module
        torch.nn.Module.copy = copy_module
        torch.utils.data.Dataset.federate = federate  # (PySyft's: any torch dataset splits across workers)
        global _optimizer_hook
        if _optimizer_hook is None:  # every optimizer's step first puts its state where its parameters are
            _optimizer_hook = register_optimizer_step_pre_hook(state_follows_parameters)
        warm_up_meta_kernels()

    def __repr__(self) -> str:
        return f"<TorchHook local_worker:{self.local_worker.id}>"
