"""Plans (PySyft 0.2's `sy.func2plan`, `sy.Plan`): a function or a model traced once into ops
by name, sent to a worker, and run there by one message per call.

Building a plan runs it once on *placeholders*: meta tensors (shapes, no values) whose
`__torch_function__` records each op under its name in the op table (`ops.py`) and works out
its results' shapes. The recording is data (`messages.PlanStep`: an op name, arguments that
name tensors by slot, constants), never pickled code, so a worker runs a plan without
`--allow-code`; and it runs each step as the `RunOp` it names (worker.py, `run_plan`), through
the same checks as a client's own ops. Control flow is not recorded: the branch taken, and
every Python value read from a shape, while building is the one every call takes.

    @sy.func2plan(args_shape=[(-1, 1)])        # built at once, on a (1, 1) placeholder
    def double_abs(x):
        return torch.abs(x + x)

    remote = double_abs.send(bob)               # a PointerPlan; the plan's state (a Net's
    y = remote(x_on_bob)                        # weights) is stored on bob as our objects;
                                                # one RunPlan message, y is a pointer
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import ops
from .errors import (
    PlanArgumentsError,
    PlanBuildError,
    PlanNotBuiltError,
    SpentPointerError,
    TensorsNotCollocatedError,
    ValueNeedsGetError,
)
from .ids import new_id
from .messages import GetObject, PlanStep, Ref, RunPlan, Slot
from .pointer import GradTracker, Pointer, PointerTensor, send_tensor

_T = torch.Tensor
#: asked of a placeholder while tracing: answered from its shape, and baked into the plan as a value
_METADATA = {
    _T.shape.__get__, _T.dtype.__get__, _T.ndim.__get__, _T.requires_grad.__get__, _T.is_leaf.__get__,
    _T.layout.__get__, _T.device.__get__, _T.is_sparse.__get__, _T.is_cuda.__get__, _T.is_quantized.__get__,
    _T.is_meta.__get__, _T.grad_fn.__get__, _T.dim, _T.size, _T.numel, _T.nelement, _T.ndimension,
    _T.element_size, _T.is_floating_point, _T.is_complex, _T.__len__, _T.stride, _T.is_contiguous,
    _T.__repr__, _T.__format__,
}
#: what a read of each bakes into the plan: calls must match the build's inputs in it
_READS = {
    **dict.fromkeys((_T.shape.__get__, _T.size, _T.numel, _T.nelement, _T.__len__, _T.stride, _T.is_contiguous), "shapes"),
    **dict.fromkeys((_T.ndim.__get__, _T.dim, _T.ndimension), "ranks"),
    **dict.fromkeys((_T.dtype.__get__, _T.element_size, _T.is_floating_point, _T.is_complex), "dtypes"),
}
_METAS_KEPT = 256  # input signatures whose output shapes a plan remembers
_NEEDS_VALUE = {_T.item, _T.tolist, _T.numpy, _T.__bool__, _T.__float__, _T.__int__, _T.__index__, _T.__complex__, _T.__array__}


def _on_meta(func: Callable, args: tuple, kwargs: dict) -> Any:
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def _meta_of(value: Any) -> Any:
    """A meta tensor like `value` (a tensor), else `value`."""
    if isinstance(value, torch.Tensor) and not value.is_meta:
        return torch.empty(tuple(value.shape), dtype=value.dtype, device="meta", requires_grad=value.requires_grad)
    return value


def _fresh_meta(meta: torch.Tensor) -> torch.Tensor:
    """A leaf meta tensor of its own, like `meta` (as pointers hold)."""
    fresh = meta.detach()
    return fresh.requires_grad_() if meta.requires_grad else fresh


# --------------------------------------------------------------------------- tracing


class Placeholder(torch.Tensor):
    """A tensor of the plan being built: a meta tensor and the slot that names it."""

    _meta: torch.Tensor
    _slot: int
    _trace: "_Trace"

    @staticmethod
    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        raise TypeError("placeholders are made by Plan.build")

    @classmethod
    def _make(cls, meta: torch.Tensor, trace: "_Trace", slot: int) -> "Placeholder":
        self = torch.Tensor._make_subclass(cls, meta, meta.requires_grad)
        self._meta, self._trace, self._slot = meta, trace, slot
        return self

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return f"[Placeholder {self._slot} of plan {self._trace.name!r}: {tuple(self._meta.shape)} {self._meta.dtype}]"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a placeholder exists only while a plan is built")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        leaves, _ = ops.flatten(args, kwargs)
        trace = next(leaf._trace for leaf in leaves if isinstance(leaf, Placeholder))
        return trace.record(func, args, kwargs)


class _Trace:
    """The steps recorded while one plan is built, and how many slots are filled."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[PlanStep] = []
        self.slots = 0
        self.state_slots = range(0)
        self.reads: set[str] = set()  # what of the inputs' metadata the function read (`_READS`)

    def placeholder(self, meta: torch.Tensor) -> Placeholder:
        self.slots += 1
        return Placeholder._make(meta, self, self.slots - 1)

    def record(self, func: Any, args: tuple, kwargs: dict) -> Any:
        leaves, spec = ops.flatten(args, kwargs)
        meta_args, meta_kwargs = ops.unflatten([leaf._meta if isinstance(leaf, Placeholder) else _meta_of(leaf) for leaf in leaves], spec)
        if func in _METADATA:
            # (a size read from a state tensor never changes; one read from anything made of the
            # inputs holds for their shapes at build: x.view(x.size(0), -1) bakes the batch size)
            if func in _READS and any(isinstance(leaf, Placeholder) and leaf._slot not in self.state_slots for leaf in leaves):
                self.reads.add(_READS[func])
            return _on_meta(func, meta_args, meta_kwargs)
        what = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        if func in _NEEDS_VALUE:
            raise PlanBuildError(
                f"building plan {self.name!r}: {what} needs a tensor's value, which a plan never has while it is "
                "built (nor can it branch on one); compute with tensor ops, or pass the value as an argument"
            )
        name = ops.name_of(func)
        if name is None:
            error = ops.unsupported(what)
            raise type(error)(f"building plan {self.name!r}: {error}")
        for leaf in leaves:
            if isinstance(leaf, Pointer):
                raise PlanBuildError(f"building plan {self.name!r}: {name} is given a pointer; build a plan on local tensors or shapes")
        wire_args, wire_kwargs = ops.unflatten(
            [Slot(leaf._slot) if isinstance(leaf, Placeholder) else leaf.detach() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves],
            spec,
        )  # (a tensor that is not a placeholder is a constant of the plan: its value travels with it)
        try:
            out = _on_meta(ops.TABLE[name], meta_args, meta_kwargs)
        except Exception as error:
            raise PlanBuildError(f"building plan {self.name!r}: {name} fails on the arguments' shapes: {error}") from error
        if ops.is_inplace(name) or name == "Tensor.backward":  # (backward writes the leaves' .grad, and makes nothing)
            self.steps.append(PlanStep(name, wire_args, wire_kwargs, 0))
            return None if name == "Tensor.__setitem__" or name.endswith(".__set__") else args[0]
        results, out_spec = ops.flatten_result(out)
        if not all(isinstance(r, torch.Tensor) for r in results):
            raise PlanBuildError(f"building plan {self.name!r}: {name} returns a Python value; a plan's ops make tensors only")
        self.steps.append(PlanStep(name, wire_args, wire_kwargs, len(results)))
        return ops.unflatten_result([self.placeholder(r) for r in results], out_spec)


class State:
    """A function plan's state tensors (`func2plan(state=...)`): its last argument, read with
    `state.read()`; sent with the plan, they live on its worker."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def read(self) -> tuple:
        return self.tensors

    def __repr__(self) -> str:
        return f"State: {len(self.tensors)} tensor(s)"


# --------------------------------------------------------------------------- plans


class Plan(torch.nn.Module):
    """A function, or a model's `forward` (subclass it as PySyft's `class Net(sy.Plan)`),
    recorded once by `build(*example_args)` and then run where its arguments are.

    Called on local tensors it runs the function itself (as plain torch); on pointers, the
    recorded steps run on their worker in one message (`send` first, or implicitly)."""

    def __init__(self, name: str | None = None, *, function: Callable | None = None, state: Iterable[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self._function = function
        self._state_tensors = None if state is None else tuple(state)
        self._built: tuple | None = None  # (steps, inputs, state count, output slots, output structure)
        self._reads: tuple = (frozenset(), ())  # what of its inputs' metadata the build read, and their metas then
        self._tracing = False
        self._sent: dict[str, PointerPlan] = {}
        self._metas: dict[tuple, tuple] = {}  # input metadata -> (output metas), per call signature
        self.id = new_id()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} id:{self.id} owner:me{' built' if self.is_built else ''}>"

    # ---- what the plan records
    @property
    def is_built(self) -> bool:
        return self._built is not None

    @property
    def steps(self) -> tuple[PlanStep, ...]:
        """The recorded ops, in order (PlanSteps: op names, slots and constants)."""
        return self._check_built("has no steps")[0]

    @property
    def actions(self) -> list[str]:
        """The recorded ops' names (PySyft's `plan.actions`)."""
        return [step.op for step in self.steps]

    def state_tensors(self) -> tuple[torch.Tensor, ...]:
        """What is sent with the plan: a function's `state`, a model's parameters and buffers."""
        if self._function is not None:
            return self._state_tensors or ()
        return (*self.parameters(), *self.buffers())

    def forward(self, *args: Any) -> Any:  # (overridden by a model plan)
        if self._function is None:
            raise NotImplementedError(f"{type(self).__name__} defines no forward(); a Plan subclass's forward is what it records")
        if self._state_tensors is not None:
            return self._function(*args, State(self._state_tensors))
        return self._function(*args)

    def build(self, *args: Any) -> "Plan":
        """Record the ops the plan runs on arguments like `args` (tensors: only their shapes
        and dtypes are used). Ops outside the op table fail here, not on a worker."""
        trace = _Trace(self.name)
        inputs = []
        for arg in args:
            if not isinstance(arg, torch.Tensor) or isinstance(arg, Pointer):
                raise PlanArgumentsError(f"plan {self.name!r} is built on local tensors (or shapes, func2plan(args_shape=...)), not {type(arg).__name__}")
            inputs.append(trace.placeholder(_meta_of(arg).detach().requires_grad_(arg.requires_grad)))
        state = self.state_tensors()
        placeholders = [trace.placeholder(_meta_of(t).detach().requires_grad_(t.requires_grad)) for t in state]
        trace.state_slots = range(len(inputs), len(inputs) + len(state))
        self._tracing = True
        try:
            if self._function is not None:
                extra = (State(placeholders),) if self._state_tensors is not None else ()
                out = self._function(*inputs, *extra)
            else:
                names = [name for name, _ in self.named_parameters()] + [name for name, _ in self.named_buffers()]
                out = torch.func.functional_call(self, dict(zip(names, placeholders)), tuple(inputs), strict=True)
        finally:
            self._tracing = False
        leaves, out_spec = tree_flatten(out)
        if not leaves or not all(isinstance(leaf, Placeholder) and leaf._trace is trace for leaf in leaves):
            raise PlanBuildError(f"plan {self.name!r} must return the tensors it computed (or its arguments), not {type(out).__name__}")
        self._built = (tuple(trace.steps), len(inputs), len(state), tuple(leaf._slot for leaf in leaves), out_spec)
        self._reads = (frozenset(trace.reads), tuple(p._meta for p in inputs))
        self._metas.clear()
        return self

    def _check_built(self, what: str) -> tuple:
        if self._built is None:
            raise PlanNotBuiltError(f"plan {self.name!r} {what}: it is not built; call .build(example_args) first")
        return self._built

    # ---- running
    def __call__(self, *args: Any) -> Any:
        if self._tracing:
            return super().__call__(*args)
        pointers = [a for a in tree_flatten(args)[0] if isinstance(a, Pointer)]
        if not pointers:
            return super().__call__(*args)  # local: the function itself
        self._check_built("cannot run on pointers")
        return self.send(pointers[0].location)(*args)

    def send(self, *locations: Any) -> "PointerPlan":
        """Send the plan (its steps, and its state as objects of ours) to a worker; a second
        send to the same worker returns the same PointerPlan."""
        if len(locations) != 1:
            raise PlanArgumentsError(f"plan {self.name!r} is sent to one worker at a time (send it to each)")
        if self._built is None:
            raise PlanNotBuiltError("A plan needs to be built before being sent to a worker.")
        location = locations[0]
        sent = self._sent.get(location.address)
        if sent is None:
            if any(isinstance(t, Pointer) for t in self.state_tensors()):
                raise PlanArgumentsError(f"plan {self.name!r}'s state is on a worker already (model.send()?): .get() it first; send() sends it with the plan")
            state = [send_tensor(t.detach().requires_grad_(t.requires_grad), location) for t in self.state_tensors()]
            sent = self._sent[location.address] = PointerPlan(self, location, state)
        return sent

    def _check_reads(self, metas: list[torch.Tensor]) -> None:
        """A call's inputs must match the build's in what the function read of them (a size,
        a rank, a dtype): that value is baked into the steps, and would be wrong, silently."""
        reads, built = self._reads
        for read, of in (("shapes", lambda m: tuple(m.shape)), ("ranks", lambda m: m.dim()), ("dtypes", lambda m: m.dtype)):
            if read in reads and [of(m) for m in metas] != [of(m) for m in built]:
                raise PlanArgumentsError(
                    f"plan {self.name!r} read its inputs' {read} while it was built ({', '.join(str(of(m)) for m in built)}) and "
                    f"holds them as constants: it runs on those, not on {', '.join(str(of(m)) for m in metas)}. Build it on "
                    "inputs like the ones you call it with, or compute without reading them (x.flatten(1), not x.view(x.size(0), -1))"
                )

    def copy(self) -> "Plan":
        """PySyft's `plan.copy()`: the same plan (steps, state values), sent nowhere."""
        sent, self._sent = self._sent, {}
        try:
            return copy.deepcopy(self, {id(self._built): self._built})  # (the recording is shared: nothing changes it)
        finally:
            self._sent = sent

    def output_metas(self, metas: list[torch.Tensor], grad_enabled: bool) -> list[torch.Tensor]:
        """The outputs' meta tensors for inputs and state like `metas` (the steps replayed on
        shapes): a call whose shapes or dtypes its ops refuse fails here, before it is sent."""
        steps, n_inputs, _, outputs, _ = self._check_built("cannot run")
        key = (grad_enabled, tuple((tuple(m.shape), m.dtype, m.requires_grad) for m in metas))
        cached = self._metas.get(key)
        if cached is None:
            self._check_reads(metas[:n_inputs])
            values = [m.detach().requires_grad_(m.requires_grad) for m in metas]
            with torch.set_grad_enabled(grad_enabled):
                for number, step in enumerate(steps):
                    leaves, spec = ops.flatten(step.args, step.kwargs)
                    step_args, step_kwargs = ops.unflatten([values[l.index] if isinstance(l, Slot) else _meta_of(l) for l in leaves], spec)
                    try:
                        out = _on_meta(ops.TABLE[step.op], step_args, step_kwargs)
                    except Exception as error:
                        shapes = ", ".join(str(tuple(m.shape)) for m in metas[:n_inputs])
                        raise PlanArgumentsError(
                            f"plan {self.name!r} called on inputs of shapes {shapes}: step {number} ({step.op}) refuses them: {error}"
                        ) from error
                    if step.results:
                        values.extend(ops.flatten_result(out)[0])
            if len(self._metas) >= _METAS_KEPT:  # (a plan called on ever new shapes)
                self._metas.clear()
            cached = self._metas[key] = tuple(values[slot] for slot in outputs)
        return list(cached)


class func2plan:
    """PySyft's decorator: `@sy.func2plan(args_shape=[(1, 2), (-1, 2)], state=(tensor,))`.
    With `args_shape` the plan is built at once, on float placeholders of those shapes (-1: 1)."""

    def __init__(self, args_shape: list | None = None, state: Iterable[torch.Tensor] | None = None, args_dtypes: Iterable[torch.dtype] = ()) -> None:
        self.args_shape = args_shape
        self.state = state
        self.args_dtypes = tuple(args_dtypes)

    def __call__(self, function: Callable) -> Plan:
        plan = Plan(function.__name__, function=function, state=self.state)
        if self.args_shape:
            dtypes = self.args_dtypes + (torch.float32,) * (len(self.args_shape) - len(self.args_dtypes))
            plan.build(*(torch.empty(tuple(1 if d == -1 else d for d in shape), dtype=dtype, device="meta") for shape, dtype in zip(self.args_shape, dtypes)))
        return plan


class PointerPlan:
    """A plan sent to a worker: calling it on pointers there runs every step in one message
    (`RunPlan`) and returns pointers to its outputs at once (pipelined, as an op is). Its state
    is ours on that worker: freed when this PointerPlan dies."""

    def __init__(self, plan: Plan, location: Any, state: list[PointerTensor]) -> None:
        self.plan = plan
        self.location = location
        self.state = state

    def __repr__(self) -> str:
        return f"[PointerPlan {self.plan.name} | me -> {self.location.id}, state: {len(self.state)} tensor(s)]"

    @property
    def actions(self) -> list[str]:
        return self.plan.actions

    def __call__(self, *args: Any) -> Any:
        steps, n_inputs, _, outputs, out_spec = self.plan._check_built("cannot run")
        if len(args) != n_inputs:
            raise PlanArgumentsError(f"plan {self.plan.name!r} takes {n_inputs} argument(s), was given {len(args)}")
        for arg in args:
            if not isinstance(arg, Pointer):
                raise PlanArgumentsError(
                    f"plan {self.plan.name!r} on {self.location.id!r} is called on pointers there, not on {type(arg).__name__} "
                    "(.send() it first; call the Plan itself to run it here)"
                )
            arg._check_usable()
            if arg.location.address != self.location.address or arg._is_chain:
                where = arg.location.id + (" (through a chain)" if arg._is_chain else "")
                raise TensorsNotCollocatedError(
                    f"plan {self.plan.name!r} runs on {self.location.id!r}; an argument is on {where}: .move() it there, or .send() the plan where it is"
                )
        for pointer in self.state:
            try:
                pointer._check_usable()
            except SpentPointerError as error:
                raise SpentPointerError(f"plan {self.plan.name!r}'s state on {self.location.id!r} is gone: {error}") from None
        values = [*args, *self.state]
        grad_enabled = torch.is_grad_enabled()
        metas = self.plan.output_metas([v._meta for v in values], grad_enabled)
        result_ids = tuple(new_id() for _ in outputs)
        # The pointers first (as for an op): a Ctrl-C between the two leaves deletes of ids never stored.
        pointers = [PointerTensor._make(_fresh_meta(m), self.location, new_id(), id, is_chain=False) for m, id in zip(metas, result_ids)]
        client = self.location.client
        client.submit(self.location.address, RunPlan(steps, tuple(Ref(v.id_at_location) for v in values), outputs, result_ids, grad_enabled))
        if any(step.op == "Tensor.backward" for step in steps):  # grads there changed: ask before trusting what we knew
            GradTracker.of(client).changed(self.location.address, None)
        return tree_unflatten(pointers, out_spec)

    def get(self) -> Plan:
        """The plan back, its state's current values fetched from the worker (a model plan's
        weights as trained there); this PointerPlan is spent."""
        if not self.state:
            return self.plan
        values = self.location.client.request_many([(p.location.address, GetObject(p.id_at_location)) for p in self.state])
        for pointer in self.state:
            pointer._spend("its plan was fetched with .get()")
        plan = self.plan
        with torch.no_grad():
            for tensor, value in zip(plan.state_tensors(), values):
                if isinstance(value, torch.Tensor):
                    tensor.copy_(value)
                else:
                    raise ValueNeedsGetError(f"plan {plan.name!r}'s state came back as {type(value).__name__}, not a tensor")
        plan._sent.pop(self.location.address, None)
        return plan
