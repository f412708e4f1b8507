"""A FedAvg round's local SGD steps as plans (plans.py): traced once, then run on each owner's
worker by one `RunPlan` per round, where sent one by one they were ~25 `RunOp`s a step (the
slices, forward, loss, backward, zero_grad and step of each parameter), each worked out on meta
tensors here and handled as a message there.

A plan is data (op names from the op table, slots, constants), and the worker runs each of its
steps as the `RunOp` it names (worker.py `run_plan` -> `_run_here` -> `Privacy.run`): the same
checks, taint and limits as the ops sent one by one, so nothing here decides what may run or
leave. The steps compute what `train_on_trusted_aggregator` sends op by op, to the bit:
`zero_grad()` (grads set to None first, then zeroed in one op), the loss, `backward()`, and SGD's
`param.add_(grad, alpha=-lr)` for every parameter in one `_foreach_add_` (written through `.data`:
a plan runs in one grad mode, and torch's step runs under no_grad): ~15 ops a step.

A model this cannot trace the same way (buffers, hooks, an op outside the table, a parameter
that gets no grad) gets None, and is trained op by op as before.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch import nn

from ..plans import Plan
from ..pointer import Pointer

#: ops in one plan: well under what a worker runs in one (worker.py MAX_PLAN_STEPS, 4096); longer
#: local training is cut into several plans, called in turn
MAX_STEPS_PER_PLAN = 1024
_KEPT_PER_MODEL = 8  # traced signatures kept per model (shards of different shapes, lr, steps)

# model -> {signature: its plans, or None: not traceable}; weak, so a model's plans go with it
_traced: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[Plan] | None]]" = weakref.WeakKeyDictionary()

_PRIMITIVE = (bool, int, float, str, type(None))


def local_sgd_plans(
    model: nn.Module, data: Any, target: Any, local_steps: int, lr: float, batch_size: int | None
) -> list[Plan] | None:
    """Plans that run, in turn, `local_steps` SGD steps of (a copy of) `model` on the pointers
    `data` and `target` (on one worker, no chain): each is called as `plan(data, target, *params)`
    and returns its last step's loss. None when they do not apply: train op by op instead.
    Traced once per model and signature (shapes, steps, lr, batch size, the model's structure)."""
    if local_steps < 1 or not _collocated(data, target):
        return None
    structure = _structure(model)
    if structure is None:
        return None
    key = (structure, _signature(data), _signature(target), local_steps, float(lr), batch_size)
    kept = _traced.setdefault(model, {})
    if key not in kept:
        if len(kept) >= _KEPT_PER_MODEL:
            kept.clear()
        kept[key] = _trace(model, data, target, local_steps, float(lr), batch_size)
    return kept[key]


def _collocated(data: Any, target: Any) -> bool:
    return (
        isinstance(data, Pointer) and isinstance(target, Pointer) and not data._is_chain and not target._is_chain
        and data.location.address == target.location.address
    )


def _signature(pointer: Any) -> tuple:
    return (tuple(pointer.shape), pointer.dtype)


def _structure(model: nn.Module) -> tuple | None:
    """What the traced steps depend on besides the shapes: each submodule's type, mode and plain
    attributes (a Linear's sizes, a Dropout's p), the parameters' names, shapes and dtypes. None
    for what a plan would not follow as the model does: buffers, hooks, frozen parameters."""
    if any(True for _ in model.buffers()):
        return None
    parts: list[tuple] = []
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or getattr(module, "_backward_pre_hooks", None):
            return None
        attrs = tuple(sorted((k, repr(v)) for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, (*_PRIMITIVE, tuple))))
        forward = vars(module).get("forward")  # (a forward set on the instance)
        parts.append((name, type(module), module.training, attrs, None if forward is None else id(forward)))
    params = tuple((name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters())
    if not params or not all(requires_grad for *_, requires_grad in params):
        return None
    return (tuple(parts), params)


def _trace(model: nn.Module, data: Any, target: Any, local_steps: int, lr: float, batch_size: int | None) -> list[Plan] | None:
    """The plans of `local_steps` steps, traced on meta tensors like `data`, `target` and the
    parameters; None if the model's steps cannot be traced (it then trains op by op)."""
    rows = data.shape[0]
    starts = [None if batch_size is None else step * batch_size % rows for step in range(local_steps)]
    names = [name for name, _ in model.named_parameters()]
    examples = [
        torch.empty(tuple(data.shape), dtype=data.dtype, device="meta"),
        torch.empty(tuple(target.shape), dtype=target.dtype, device="meta"),
        *(torch.empty(tuple(p.shape), dtype=p.dtype, device="meta", requires_grad=True) for p in model.parameters()),
    ]
    plans: list[Plan] = []
    try:
        first_step = _built(model, names, starts[:1], batch_size, lr, examples)
        if local_steps == 1:
            return [first_step]
        chunk = max(1, MAX_STEPS_PER_PLAN // len(first_step.steps))
        for first in range(0, local_steps, chunk):
            plans.append(_built(model, names, starts[first:first + chunk], batch_size, lr, examples))
    except Exception:  # (an op the plan cannot record, meta tensors refuse, a forward that needs values: op by op)
        return None
    return plans


def _built(model: nn.Module, names: list[str], starts: list[int | None], batch_size: int | None, lr: float, examples: list) -> Plan:
    plan = Plan("local SGD steps", function=_steps(weakref.ref(model), names, starts, batch_size, lr))
    return plan.build(*examples)


def _steps(model_ref: Callable[[], nn.Module | None], names: list[str], starts: list[int | None], batch_size: int | None, lr: float) -> Callable:
    """The function a plan records: train_on_trusted_aggregator's local steps, op for op. (The
    model is held weakly: the function runs only while it is traced.)"""

    def steps(data: torch.Tensor, target: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        model = model_ref()
        assert model is not None  # (traced while the caller holds it)
        values = [param.data for param in params]  # (the parameters' memory, which each step writes)
        loss, grads = None, None
        for start in starts:
            if grads is None:  # optimizer.zero_grad(): a copy may come with grads
                for param in params:
                    param.grad = None
            else:  # (in one op: the next backward adds to zeros, 0 + g being g, as it would set g)
                torch._foreach_zero_(grads)
            if start is None:
                x, y = data, target
            else:
                x, y = data[start:start + batch_size], target[start:start + batch_size]
            loss = ((torch.func.functional_call(model, dict(zip(names, params)), (x,)) - y) ** 2).mean()
            loss.backward()
            grads = [param.grad for param in params]
            # optimizer.step(), SGD without momentum or weight decay: param.add_(grad, alpha=-lr) each
            torch._foreach_add_(values, grads, alpha=-lr)
        return loss

    return steps
