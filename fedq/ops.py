"""Torch functions by name: what a pointer may ask a worker to run.

Commands name a function ("Tensor.add", "torch.matmul",
"torch.nn.functional.relu") instead of pickling it, so a worker only ever runs
functions from torch's own namespaces, and a message stays a few bytes.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, NamedTuple

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import UnsupportedOperationError

#: namespaces whose public callables may run on a worker, by the prefix used on the wire
NAMESPACES: dict[str, Any] = {
    "Tensor": torch.Tensor,
    "torch": torch,
    "torch.nn.functional": torch.nn.functional,
    "torch.linalg": torch.linalg,
    "torch.special": torch.special,
    "torch.fft": torch.fft,
}


@functools.cache
def _names() -> dict[Any, str]:
    names: dict[Any, str] = {}
    # Later namespaces must not rename a function already named by an earlier one.
    for prefix, namespace in NAMESPACES.items():
        for attr in dir(namespace):
            if attr.startswith("_") and attr not in _OPERATOR_DUNDERS:
                continue
            try:
                value = getattr(namespace, attr)
            except Exception:
                continue
            if not callable(value) or isinstance(value, type):
                continue
            try:
                names.setdefault(value, f"{prefix}.{attr}")
            except TypeError:  # unhashable
                continue
    for prop in PROPERTIES:
        names[getattr(torch.Tensor, prop).__get__] = f"Tensor.{prop}.__get__"
    for prop in SETTABLE:
        names[getattr(torch.Tensor, prop).__set__] = f"Tensor.{prop}.__set__"
    return names


#: tensor properties read (and some written) where the data is; `__torch_function__` sees
#: their descriptors' __get__/__set__, which are not in any namespace
PROPERTIES = ("grad", "data", "T", "mT", "H", "mH", "real", "imag")
SETTABLE = ("grad", "data", "requires_grad")


def _property_functions() -> dict[str, Callable]:
    functions: dict[str, Callable] = {}
    for prop in PROPERTIES:
        functions[f"Tensor.{prop}.__get__"] = operator.attrgetter(prop)
    for prop in SETTABLE:
        functions[f"Tensor.{prop}.__set__"] = functools.partial(_set_property, prop)
    return functions


def _set_property(prop: str, tensor: torch.Tensor, value: Any) -> None:
    setattr(tensor, prop, value)


def name_of(func: Callable) -> str | None:
    """The wire name of a torch function, or None if fedq does not run it remotely."""
    try:
        return _names().get(func)
    except TypeError:
        return None


def resolve(name: str) -> Callable:
    """The function behind a wire name; raises UnsupportedOperationError for anything else."""
    func = _functions().get(name)
    if func is None:
        raise UnsupportedOperationError(f"{name!r} is not a torch function fedq runs remotely")
    return func


@functools.cache
def _functions() -> dict[str, Callable]:
    functions = {name: func for func, name in _names().items()}
    functions.update(_property_functions())  # plain callables stand in for the descriptors
    return functions


_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")

#: operators a pointer forwards; other dunders (__reduce_ex__, __setattr__...) never run remotely
_OPERATOR_DUNDERS = frozenset(
    f"__{op}__" for base in _BINARY for op in (base, "r" + base, "i" + base)
) | frozenset(
    f"__{op}__" for op in ("neg", "pos", "abs", "invert", "eq", "ne", "lt", "le", "gt", "ge", "getitem", "setitem", "len")
)


#: tensor methods that change the tensor they are called on; they create no new object (rule 4)
def is_inplace(name: str) -> bool:
    if name.endswith(".__set__"):
        return True
    attr = name.rpartition(".")[2]
    if attr.startswith("__"):
        return attr in _INPLACE_DUNDERS
    return attr.endswith("_") and name.startswith("Tensor.")


_INPLACE_DUNDERS = frozenset(f"__i{op}__" for op in _BINARY) | {"__setitem__"}


# --------------------------------------------------------------------------- arguments and results
# Both ends walk an op's (args, kwargs) for the tensors in them, once per op. Most ops take
# flat arguments (`x + y`, `x.sum(dim=0)`); walking those without torch's pytree saves tens
# of microseconds per op on each side. Nested arguments (a list of tensors) go through pytree.


class FlatSpec(NamedTuple):
    """The structure of flat arguments: how many positional, and the keyword names."""

    positional: int
    keywords: tuple[str, ...]


_NESTED = (list, tuple, dict)  # and their subclasses (torch.Size, namedtuples): pytree's business


def flatten(args: tuple, kwargs: dict) -> tuple[list, Any]:
    """The leaves of `(args, kwargs)` and a hashable spec that `unflatten` rebuilds them from."""
    if type(args) is tuple and type(kwargs) is dict and not any(isinstance(a, _NESTED) for a in args) and not any(
        isinstance(v, _NESTED) for v in kwargs.values()
    ):
        return [*args, *kwargs.values()], FlatSpec(len(args), tuple(kwargs))
    return tree_flatten((args, kwargs))


def unflatten(leaves: list, spec: Any) -> tuple[tuple, dict]:
    if type(spec) is FlatSpec:
        n = spec.positional
        return tuple(leaves[:n]), dict(zip(spec.keywords, leaves[n:]))
    return tree_unflatten(leaves, spec)


ONE_TENSOR = "one tensor"  # the spec of a result that is a single tensor (most ops)


def flatten_result(out: Any) -> tuple[list, Any]:
    if isinstance(out, torch.Tensor):
        return [out], ONE_TENSOR
    return tree_flatten(out)


def unflatten_result(leaves: list, spec: Any) -> Any:
    if spec is ONE_TENSOR:
        return leaves[0]
    return tree_unflatten(leaves, spec)
