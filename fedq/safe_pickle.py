"""What a fedq message may contain: the exact globals the unpickler of a worker (and of a
client) resolves, when code is not allowed.

A pickle names a global as (module, name) and the unpickler hands back that object; a
REDUCE then calls it, a BUILD sets attributes on it. So the allow-list is a set of exact
(module, name) pairs, each a class, a function or a constant value (a dtype), checked once
when the list is first used: never a module (a BUILD on a module rewrites it for every
later message), never a dotted path (`torch._utils` + `torch.preserve_format` walks
through a module), never "everything under a namespace". Anything else is refused with
`CodeNotAllowedError`; a worker started with allow_code uses pickle's own unpickler.

A BUILD on what the unpickler hands out must not change it either: the classes and
functions written in Python (fedq's messages, `_rebuild_tensor`) are mutable, so a
lookup of one hands out a fresh `functools.partial` of it instead (REDUCE calls it, and
builds the real thing; BUILD can only touch that throwaway stand-in). Everything else
on the list is immutable (a type implemented in C, a dtype): a BUILD on it fails.

Sets, frozensets, bytearrays, tuples, lists, dicts are pickle opcodes and need no global.
Not allowed although harmless-looking: `range` (with `frozenset`/`bytearray` it makes a
few bytes of pickle into gigabytes), `getattr`, anything callable that takes a callable.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import types
from typing import Any

import torch

from . import messages
from .errors import CodeNotAllowedError

#: module -> the names in it a message may use
ALLOWED_NAMES: dict[str, tuple[str, ...]] = {
    "builtins": ("slice", "complex", "Ellipsis", "NotImplemented"),  # x[1:2], x[..., 0]
    "collections": ("OrderedDict",),  # a state_dict
    "torch": (
        "Size", "device",
        # dtypes, as pickle names them (torch.float is float32)
        "float32", "float64", "float16", "bfloat16", "complex32", "complex64", "complex128",
        "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "bool",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
        "qint8", "quint8", "qint32", "quint4x2",
        # memory formats (torch.zeros_like(p, memory_format=torch.preserve_format) in optimizers)
        "preserve_format", "contiguous_format", "channels_last", "channels_last_3d",
    ),
    # the named tuples of the ops in fedq/ops.py that return several tensors
    "torch.return_types": (
        "max", "min", "sort", "topk", "kthvalue", "median", "nanmedian", "mode", "cummax", "cummin",
        "aminmax", "frexp", "slogdet", "qr", "svd", "triangular_solve", "lu_unpack", "histogram",
        "linalg_eig", "linalg_eigh", "linalg_qr", "linalg_svd", "linalg_slogdet", "linalg_lstsq",
        "linalg_lu", "linalg_lu_factor", "linalg_lu_factor_ex", "linalg_cholesky_ex", "linalg_inv_ex",
        "linalg_solve_ex", "linalg_ldl_factor", "linalg_ldl_factor_ex",
    ),
}

#: constants a message may name besides classes and functions
_CONSTANT_TYPES = (torch.dtype, torch.memory_format, type(Ellipsis), type(NotImplemented))


#: fedq's own messages and values, and the functions that rebuild tensors (looked up when the
#: list is first used, as the others are: codec.py, which imports this module, is loaded by then)
FEDQ_NAMES: dict[str, tuple[str, ...]] = {
    "fedq.messages": tuple(cls.__name__ for cls in messages.WIRE_CLASSES),
    "fedq.codec": ("_rebuild_tensor", "_rebuild_meta"),
}


@functools.cache
def allowed() -> dict[tuple[str, str], Any]:
    """Every (module, name) a message may name, with the object it stands for."""
    table: dict[tuple[str, str], Any] = {}
    for module_name, names in {**ALLOWED_NAMES, **FEDQ_NAMES}.items():
        module = importlib.import_module(module_name)
        for name in names:
            value = getattr(module, name) if "." not in name else None
            if not _is_allowed_kind(value):
                raise TypeError(f"{module_name}.{name} is {type(value).__name__}: the allow-list takes classes, functions and dtypes only")
            table[(module_name, name)] = value
    return table


def _is_allowed_kind(value: Any) -> bool:
    if isinstance(value, types.ModuleType) or value is None:
        return False
    return isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, *_CONSTANT_TYPES))


_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: a type (in C) whose attributes cannot be set


def is_mutable(value: Any) -> bool:
    """Could a pickle's BUILD (setattr, or a write to __dict__) change `value` in place?"""
    if isinstance(value, type):
        return not value.__flags__ & _IMMUTABLE_TYPE
    return isinstance(value, types.FunctionType) or hasattr(value, "__dict__")


@functools.cache
def _resolved() -> tuple[dict[tuple[str, str], Any], frozenset[tuple[str, str]]]:
    """`allowed()`, and which of its entries are mutable (handed out as stand-ins)."""
    table = allowed()
    return table, frozenset(key for key, value in table.items() if is_mutable(value))


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals in `allowed()`; anything else (a cloudpickled function,
    os.system, a module, a class with a malicious __reduce__) is refused. A mutable entry
    comes as a fresh partial of it, so that no message can change it for the next."""

    def find_class(self, module: str, name: str) -> Any:
        table, mutable = _resolved()
        key = (module, name)
        value = table.get(key)
        if value is None:
            raise CodeNotAllowedError(
                f"{module}.{name} is not allowed in a fedq message: shipping code (functions, classes) is "
                "refused; start the receiving worker with --allow-code (or allow_code=True) to allow it"
            )
        return functools.partial(value) if key in mutable else value
