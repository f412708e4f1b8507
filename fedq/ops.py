"""The op table: every torch operation a pointer may ask a worker to run, by name.

Commands name an operation ("Tensor.add", "torch.matmul", "torch.nn.functional.relu")
instead of pickling it, and a worker runs only what this table names: pure tensor
operations, reviewed one family at a time below. Nothing here reads or writes files,
deserializes, spawns, touches the environment, changes process-wide state (default
dtype, seeds, threads, grad mode...) or hands back uninitialised memory (the `empty`
family returns zeros here). Anything else is refused with `UnsupportedOperationError`,
saying how to ask for it. tests/test_op_table.py walks every entry against these rules.

Reading a family: under "torch Tensor" a name is both `torch.NAME` and the method
`Tensor.NAME`; under "Tensor" a method only (NAME_ is its in-place form); under "torch"
or "torch.linalg"... a function of that namespace. A name some torch version lacks is
skipped. To add an op: put it in its family, run tests/test_op_table.py.
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import Any, Callable, NamedTuple

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import UnsupportedOperationError

# --------------------------------------------------------------------------- the table, by family

ARITHMETIC = {  # elementwise math
    "torch Tensor": """
        add sub subtract mul multiply div divide true_divide floor_divide remainder fmod neg negative
        positive abs absolute sign sgn signbit reciprocal pow float_power sqrt rsqrt square exp exp2 expm1
        log log2 log10 log1p sin cos tan asin acos atan atan2 arcsin arccos arctan arctan2 sinh cosh tanh
        asinh acosh atanh arcsinh arccosh arctanh sigmoid logit erf erfc erfinv lgamma digamma polygamma
        mvlgamma i0 sinc clamp clip clamp_min clamp_max floor ceil round trunc frac fix lerp addcmul addcdiv
        hypot logaddexp logaddexp2 xlogy copysign nextafter ldexp frexp heaviside nan_to_num deg2rad
        rad2deg angle conj conj_physical relu bitwise_and bitwise_or bitwise_xor bitwise_not
        bitwise_left_shift bitwise_right_shift logical_and logical_or logical_xor logical_not gcd lcm""",
    "torch": "relu_ sigmoid_ tanh_ exp_ sqrt_ rsqrt_ clamp_ clip_ neg_ abs_ floor_ ceil_ round_ trunc_ frac_",
    "Tensor": """
        add_ sub_ subtract_ mul_ multiply_ div_ divide_ true_divide_ floor_divide_ remainder_ fmod_
        neg_ negative_ abs_ absolute_ sign_ sgn_ reciprocal_ pow_ float_power_ sqrt_ rsqrt_ square_
        exp_ exp2_ expm1_ log_ log2_ log10_ log1p_ sin_ cos_ tan_ asin_ acos_ atan_ atan2_ arcsin_
        arccos_ arctan_ arctan2_ sinh_ cosh_ tanh_ asinh_ acosh_ atanh_ sigmoid_ logit_ erf_ erfc_
        erfinv_ lgamma_ digamma_ polygamma_ i0_ sinc_ clamp_ clip_ clamp_min_ clamp_max_ floor_ ceil_
        round_ trunc_ frac_ fix_ lerp_ addcmul_ addcdiv_ hypot_ xlogy_ copysign_ nextafter_ ldexp_
        heaviside_ nan_to_num_ deg2rad_ rad2deg_ relu_ bitwise_and_ bitwise_or_ bitwise_xor_
        bitwise_not_ logical_and_ logical_or_ logical_xor_ logical_not_ gcd_ lcm_""",
}

COMPARISON = {
    "torch Tensor": """
        eq ne lt le gt ge greater greater_equal less less_equal not_equal equal allclose isclose isnan
        isinf isfinite isposinf isneginf isreal maximum minimum fmax fmin where sort argsort msort topk
        kthvalue""",
    "Tensor": """
        eq_ ne_ lt_ le_ gt_ ge_ greater_ greater_equal_ less_ less_equal_ not_equal_""",
}

REDUCTIONS = {
    "torch Tensor": """
        sum mean nansum nanmean prod std var max min amax amin aminmax argmax argmin median nanmedian
        mode norm logsumexp cumsum cumprod cummax cummin logcumsumexp all any count_nonzero unique
        unique_consecutive bincount histc histogram dist diff trace""",
    "torch": "std_mean var_mean",
    "Tensor": "cumsum_ cumprod_",
}

SHAPES = {  # shape, indexing, views, copies, dtype conversion
    "torch Tensor": """
        reshape flatten unflatten squeeze unsqueeze permute transpose swapaxes swapdims t movedim moveaxis
        tile flip fliplr flipud roll rot90 narrow narrow_copy select index_select masked_select
        masked_fill masked_scatter gather scatter scatter_add scatter_reduce index_add index_copy
        index_fill index_put index_reduce take take_along_dim nonzero argwhere chunk split tensor_split
        hsplit vsplit dsplit unbind tril triu diag diagonal diag_embed diagflat clone detach ravel
        broadcast_to repeat_interleave""",
    "torch": """
        cat concat concatenate stack hstack vstack dstack column_stack row_stack broadcast_tensors
        meshgrid atleast_1d atleast_2d atleast_3d block_diag cartesian_prod combinations view_as_real
        view_as_complex""",
    "Tensor": """
        view view_as reshape_as expand expand_as repeat unfold contiguous type_as to cpu float double
        half bfloat16 int long short bool char byte cfloat cdouble squeeze_ unsqueeze_ t_ transpose_
        swapaxes_ swapdims_ masked_fill_ masked_scatter_ scatter_ scatter_add_ scatter_reduce_
        index_add_ index_copy_ index_fill_ index_put_ index_reduce_ tril_ triu_ copy_ zero_ fill_
        fill_diagonal_ clamp_ __getitem__ __setitem__ __len__""",
}

LINEAR_ALGEBRA = {
    "torch Tensor": """
        matmul mm bmm mv dot vdot inner outer ger addmm addbmm baddbmm addmv addr kron cross det logdet
        slogdet inverse pinverse cholesky cholesky_solve cholesky_inverse qr svd triangular_solve
        lu_solve matrix_power matrix_exp""",
    "torch": "einsum tensordot cdist chain_matmul lu_unpack",
    "Tensor": "addmm_ addbmm_ baddbmm_ addmv_ addr_",
    "torch.linalg": """
        norm vector_norm matrix_norm det slogdet inv inv_ex pinv solve solve_ex solve_triangular lstsq
        cholesky cholesky_ex qr eig eigh eigvals eigvalsh svd svdvals matrix_rank matrix_power
        matrix_exp cross multi_dot householder_product vecdot lu lu_factor lu_factor_ex lu_solve cond
        tensorinv tensorsolve vander diagonal ldl_factor ldl_factor_ex ldl_solve""",
}

SPECIAL_AND_FFT = {
    "torch.special": """
        expm1 exp2 expit logit log1p erf erfc erfcx erfinv ndtr ndtri log_ndtr digamma psi polygamma
        multigammaln gammaln gammainc gammaincc i0 i0e i1 i1e sinc round xlogy xlog1py zeta entr
        logsumexp softmax log_softmax bessel_j0 bessel_j1""",
    "torch.fft": """
        fft ifft fft2 ifft2 fftn ifftn rfft irfft rfft2 irfft2 rfftn irfftn hfft ihfft fftshift
        ifftshift fftfreq rfftfreq""",
}

NN_FUNCTIONAL = {
    "torch.nn.functional": """
        linear bilinear relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish
        softplus softsign hardtanh hardtanh_ hardsigmoid hardswish logsigmoid tanhshrink softshrink
        hardshrink threshold threshold_ sigmoid tanh glu prelu rrelu softmax log_softmax softmin
        gumbel_softmax normalize dropout alpha_dropout feature_alpha_dropout dropout1d dropout2d
        dropout3d conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d max_pool1d
        max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
        adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d
        lp_pool2d pad interpolate embedding embedding_bag one_hot batch_norm layer_norm group_norm
        instance_norm local_response_norm rms_norm cosine_similarity pairwise_distance pdist mse_loss
        l1_loss smooth_l1_loss huber_loss cross_entropy nll_loss binary_cross_entropy
        binary_cross_entropy_with_logits kl_div poisson_nll_loss gaussian_nll_loss hinge_embedding_loss
        margin_ranking_loss soft_margin_loss multilabel_soft_margin_loss multilabel_margin_loss
        multi_margin_loss triplet_margin_loss cosine_embedding_loss pixel_shuffle pixel_unshuffle
        unfold fold scaled_dot_product_attention grid_sample affine_grid""",
    "torch": "conv1d conv2d conv3d batch_norm layer_norm dropout",
}

CREATION = {  # new tensors: values from arguments, or from the worker's own random generator
    "torch": """
        zeros ones full arange linspace logspace eye zeros_like ones_like full_like tensor as_tensor
        complex polar tril_indices triu_indices rand rand_like randn randn_like randint randint_like
        randperm normal bernoulli multinomial poisson empty empty_like""",
    "Tensor": """
        new_zeros new_ones new_full new_tensor new_empty uniform_ normal_ bernoulli_ random_
        exponential_ geometric_ cauchy_ log_normal_ bernoulli multinomial""",
}

METADATA = {  # questions a pointer answers from its shape and dtype (torch.is_complex(p) in Adam)
    "torch Tensor": "is_complex is_floating_point is_conj is_neg is_nonzero is_same_size numel",
    "torch": "result_type can_cast is_tensor",
    "Tensor": "is_signed is_inference storage_offset get_device",
}

AUTOGRAD = {  # (properties: PROPERTIES and SETTABLE below)
    "Tensor": "backward detach_ requires_grad_",
}

#: what torch.optim's SGD, Adam, AdamW, RMSprop and Adagrad call (with foreach=True too)
OPTIMIZER_UPDATES = {
    "torch": """
        _foreach_add _foreach_add_ _foreach_sub _foreach_sub_ _foreach_mul _foreach_mul_ _foreach_div
        _foreach_div_ _foreach_addcmul _foreach_addcmul_ _foreach_addcdiv _foreach_addcdiv_ _foreach_lerp
        _foreach_lerp_ _foreach_neg _foreach_neg_ _foreach_sqrt _foreach_sqrt_ _foreach_pow _foreach_pow_
        _foreach_reciprocal _foreach_reciprocal_ _foreach_maximum _foreach_maximum_ _foreach_abs
        _foreach_sign _foreach_zero_ _foreach_copy_ _foreach_norm""",
}

_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")

OPERATORS = {  # x + y, x += y, -x, x[i], x[i] = v ...
    "Tensor": " ".join(f"__{op}__" for base in _BINARY for op in (base, "r" + base, "i" + base) if op != "imatmul")
    + " __neg__ __pos__ __abs__ __invert__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__",  # (torch has no __imatmul__)
}

#: tensor properties read (and some written) where the data is; `__torch_function__` sees
#: their descriptors' __get__/__set__
PROPERTIES = ("grad", "data", "T", "mT", "H", "mH", "real", "imag")
SETTABLE = ("grad", "data", "requires_grad")

FAMILIES = {
    "arithmetic": ARITHMETIC, "comparison": COMPARISON, "reductions": REDUCTIONS, "shapes": SHAPES,
    "linear algebra": LINEAR_ALGEBRA, "special and fft": SPECIAL_AND_FFT, "nn.functional": NN_FUNCTIONAL,
    "creation": CREATION, "metadata": METADATA, "autograd": AUTOGRAD, "optimizer updates": OPTIMIZER_UPDATES, "operators": OPERATORS,
}

#: ops that run a Python function the caller ships: only on a worker started with allow_code
#: (without it the function is refused when the message is unpickled, before this table)
CODE = {"Tensor": "apply_ map_ map2_"}

#: why some well-known names are not in the table, for the error a user sees
REFUSED = {
    **dict.fromkeys(("load", "save", "from_file"), "it reads or writes files on the worker"),
    **dict.fromkeys(
        ("manual_seed", "seed", "set_rng_state", "set_default_dtype", "set_default_device", "set_default_tensor_type",
         "set_num_threads", "set_num_interop_threads", "set_grad_enabled", "set_printoptions", "set_flush_denormal",
         "set_anomaly_enabled", "set_warn_always", "use_deterministic_algorithms", "set_deterministic_debug_mode"),
        "it changes process-wide state that every client of the worker shares; seed or configure your own "
        "process instead, and pass values (a generator-free op, a dtype=) to the op",
    ),
    **dict.fromkeys(("resize_", "resize_as_"), "it grows a tensor into uninitialised memory; make a new tensor "
                    "(new_zeros, torch.cat) instead"),
    "set_": "it points a tensor at another storage; assign `.data = other` or `copy_` instead",
    **dict.fromkeys(("as_strided", "as_strided_", "empty_strided", "new_empty_strided", "new", "storage",
                     "untyped_storage"), "it reaches raw memory; use view/reshape/narrow, new_zeros or zeros"),
    **dict.fromkeys(("share_memory_", "pin_memory", "register_hook", "register_post_accumulate_grad_hook"),
                    "it changes more than the tensor's values"),
    **dict.fromkeys(("apply_", "map_", "map2_"), "it runs a Python function: only a worker started with "
                    "--allow-code (allow_code=True) runs shipped code"),
}


# --------------------------------------------------------------------------- what a name runs

def _zero_filled(allocate: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`allocate` (an `empty` op) returning zeros: its memory may hold a freed tensor's bytes."""

    @functools.wraps(allocate)
    def zeroed(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = allocate(*args, **kwargs)
        with torch.no_grad():
            out.zero_()
        return out

    return zeroed


#: entries whose wire name runs something safer than torch's own function of that name
_REPLACED = {"torch.empty": _zero_filled(torch.empty), "torch.empty_like": _zero_filled(torch.empty_like),
             "Tensor.new_empty": _zero_filled(torch.Tensor.new_empty)}

_NAMESPACES = {"torch": torch, "Tensor": torch.Tensor, "torch.nn.functional": torch.nn.functional,
               "torch.linalg": torch.linalg, "torch.special": torch.special, "torch.fft": torch.fft}


def _entries(families: dict[str, dict[str, str]]) -> dict[str, Any]:
    """{wire name: torch's object} for every name of `families` this torch has."""
    entries: dict[str, Any] = {}
    for family in families.values():
        for namespaces, names in family.items():
            for prefix in namespaces.split():
                for attr in names.split():
                    value = getattr(_NAMESPACES[prefix], attr, None)
                    if callable(value) and not isinstance(value, type):
                        entries.setdefault(f"{prefix}.{attr}", value)
    return entries


def _set_property(prop: str, tensor: torch.Tensor, value: Any) -> None:
    setattr(tensor, prop, value)


def _build() -> tuple[dict[str, Callable], dict[str, Callable], dict[Any, str]]:
    """(wire name -> what a worker runs, the same for code ops, torch's object -> wire name)."""
    torch_objects = _entries(FAMILIES)
    code_objects = _entries({"code": CODE})
    runs = {**torch_objects, **_REPLACED}
    for prop in PROPERTIES:
        torch_objects[f"Tensor.{prop}.__get__"] = getattr(torch.Tensor, prop).__get__
        runs[f"Tensor.{prop}.__get__"] = operator.attrgetter(prop)  # plain callables stand in for descriptors
    for prop in SETTABLE:
        torch_objects[f"Tensor.{prop}.__set__"] = getattr(torch.Tensor, prop).__set__
        runs[f"Tensor.{prop}.__set__"] = functools.partial(_set_property, prop)
    names: dict[Any, str] = {}
    for name, value in {**torch_objects, **code_objects}.items():
        names.setdefault(value, name)  # (F.conv2d is torch.conv2d: the first name is the wire name)
    return runs, dict(code_objects), names


TABLE, _CODE_TABLE, _NAMES = _build()
#: in-place entries change the tensor(s) they are called on and create no new object (rule 4)
INPLACE = frozenset(
    name for name in [*TABLE, *_CODE_TABLE]
    if name.endswith(".__set__") or name.endswith("_") and not name.endswith("__")
    or name in {f"Tensor.__i{op}__" for op in _BINARY} | {"Tensor.__setitem__"}
)


def name_of(func: Callable) -> str | None:
    """The wire name of a torch function, or None if fedq does not run it remotely."""
    try:
        return _NAMES.get(func)
    except TypeError:  # unhashable
        return None


def resolve(name: str, *, allow_code: bool = False) -> Callable:
    """What a worker runs for a wire name; UnsupportedOperationError for anything not in the table."""
    func = TABLE.get(name)
    if func is None:
        func = _CODE_TABLE.get(name) if allow_code else None
        if func is None:
            raise unsupported(name)
    return func


def unsupported(name: str) -> UnsupportedOperationError:
    """The error for an op fedq does not run remotely: why, and what to do instead."""
    reason = REFUSED.get(name.rpartition(".")[2])
    if reason is not None:
        return UnsupportedOperationError(f"{name} is not in fedq's op table (fedq/ops.py): {reason}")
    return UnsupportedOperationError(
        f"{name} is not in fedq's op table (fedq/ops.py); if it is a pure tensor operation, ask for it "
        "to be added (open an issue naming it), or .get() the tensor and compute locally"
    )


def is_inplace(name: str) -> bool:
    return name in INPLACE


#: ops that write into arguments without an in-place name: given a true `inplace` (their input),
#: or always, or given `max_norm` (their tensor arguments: running statistics, an embedding table).
#: (torch.dropout and its kin are functional: their in-place forms end in _ and are in INPLACE.)
_INPLACE_FLAG = frozenset(
    f"torch.nn.functional.{name}" for name in
    "relu relu6 elu selu celu leaky_relu rrelu hardtanh threshold dropout dropout1d dropout2d dropout3d "
    "alpha_dropout feature_alpha_dropout hardsigmoid hardswish silu mish".split()
)
_WRITES_STATISTICS = frozenset(
    f"{prefix}.{name}" for prefix in ("torch", "torch.nn.functional") for name in ("batch_norm", "instance_norm")
)
_WRITES_WITH_MAX_NORM = frozenset({"torch.nn.functional.embedding", "torch.nn.functional.embedding_bag"})


def written(name: str, args: tuple, kwargs: dict, *, in_place: bool = False) -> list:
    """The tensors (and other leaves) an op writes into: its target when in place (every tensor
    of a list, for `_foreach_*_`; `in_place`: a caller says so, whatever the name), `out=`, and
    what the ops above write without saying so. Conservative: an argument that may be written
    counts as written."""
    leaves: list = tree_flatten(kwargs["out"])[0] if "out" in kwargs else []
    if in_place or name in INPLACE or (name in _INPLACE_FLAG and _truthy(argument(name, "inplace", args, kwargs, default=False))):
        leaves += tree_flatten(args[:1])[0]
        if name in ALIASES_VALUE:  # p.grad = v, p.data = v: v is written through p from now on
            leaves += tree_flatten((args[1:2], kwargs))[0]
    elif name in _WRITES_STATISTICS or (name in _WRITES_WITH_MAX_NORM and argument(name, "max_norm", args, kwargs) is not None):
        leaves += tree_flatten((args[1:], kwargs))[0]
    return leaves


#: setters whose value the target aliases: backward accumulates into `.grad` in place
ALIASES_VALUE = frozenset({"Tensor.grad.__set__", "Tensor.data.__set__"})

UNKNOWN = object()  # a parameter whose position torch does not tell (a builtin without a signature)


def argument(name: str, parameter: str, args: tuple, kwargs: dict, default: Any = None) -> Any:
    """The value `parameter` of op `name` is given, positionally or by keyword, as Python binds
    it (`F.relu(x, 1)` gives inplace=1). Where the position is unknown, conservatively
    any positional argument after the first that is true (`_truthy`)."""
    if parameter in kwargs:
        return kwargs[parameter]
    at = position(name, parameter)
    if at is UNKNOWN:
        return next((a for a in args[1:] if _truthy(a)), default)
    return args[at] if at is not None and at < len(args) else default


@functools.cache
def position(name: str, parameter: str) -> Any:
    """Where `parameter` stands among op `name`'s positional parameters (None: it has none)."""
    try:
        parameters = list(inspect.signature(TABLE[name]).parameters.values())
    except (KeyError, TypeError, ValueError):
        return UNKNOWN
    for position, p in enumerate(parameters):
        if p.name == parameter:
            return position if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None
    return None


def _truthy(value: Any) -> bool:
    """What the op itself would take as true; a value whose truth cannot be told counts as true."""
    try:
        return bool(value)
    except Exception:  # (a tensor of several elements)
        return True


def may_write(name: str, kwargs: dict) -> bool:
    """Whether `written` can name anything: one set lookup for most ops (the hot path)."""
    return name in INPLACE or "out" in kwargs or name in _WRITES_ANYTHING


_WRITES_ANYTHING = _INPLACE_FLAG | _WRITES_STATISTICS | _WRITES_WITH_MAX_NORM


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
