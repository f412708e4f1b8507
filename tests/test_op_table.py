"""The op table and the unpickler's allow-list: what a key holder can make a worker run.

A data scientist holds the federation key but may only compute: no files, no process-wide
state, no uninitialised memory, no code. The attacks here come through the public API, raw
`RunOp`s sent with the client's own `request`, and hand-built pickles signed with the key,
on the real worker processes of the session.
"""

from __future__ import annotations

import gc
import importlib
import types

import pytest
import torch as th
import zmq
from torch import nn

import fedq as sy
from fedq import messages as msg, ops, safe_pickle
from fedq.codec import Codec, Packed, _Pickling
from fedq.ids import new_id

# --------------------------------------------------------------------------- the table, walked

#: names no entry may have: files, deserializing, process-wide state, raw memory, code
DENIED_NAMES = {
    "load", "save", "from_file", "frombuffer", "from_numpy", "from_dlpack", "manual_seed", "seed", "initial_seed",
    "get_rng_state", "set_rng_state", "set_num_threads", "set_num_interop_threads", "use_deterministic_algorithms",
    "set_printoptions", "set_flush_denormal", "compile", "vmap", "resize_", "resize_as_", "set_", "as_strided",
    "as_strided_", "empty_strided", "new_empty_strided", "empty_permuted", "new", "storage", "untyped_storage",
    "share_memory_", "pin_memory", "data_ptr", "register_hook", "register_post_accumulate_grad_hook", "retain_grad",
    "apply_", "map_", "map2_", "__reduce__", "__reduce_ex__", "__setstate__", "__getstate__", "__setattr__",
    "__delattr__", "__init__", "__new__", "__class__", "__dict__", "tolist", "numpy", "item",
}
DENIED_PREFIXES = ("set_default", "set_", "manual_seed", "_set", "_load", "_save")
DENIED_SUFFIXES = ("_enabled", "_seed", "_state", "_file")
#: torch's modules that hold files, processes, global switches or compilers
DENIED_MODULES = (
    "torch.serialization", "torch.hub", "torch.jit", "torch.random", "torch.storage", "torch.multiprocessing",
    "torch.utils", "torch.backends", "torch.cuda", "torch._dynamo", "torch.compiler", "torch.distributed",
    "torch.package", "torch.onnx", "torch.export", "torch.library", "torch._utils", "torch.autograd.grad_mode",
)


def _module_of(func) -> str | None:
    func = getattr(func, "__wrapped__", func)  # a zero-filling stand-in: what it wraps
    module = getattr(func, "__module__", None)
    if module is None and hasattr(func, "__objclass__"):  # a method descriptor of TensorBase
        module = func.__objclass__.__module__
    if module is None and hasattr(func, "__self__"):  # a builtin bound to torch._C._VariableFunctions
        module = getattr(type(func.__self__), "__module__", None)
    return module


def _is_property_entry(name: str) -> bool:
    return name.endswith((".__get__", ".__set__"))


def test_every_name_in_the_families_is_a_torch_operation_here():
    """No typos: each name of each family resolves in the installed torch."""
    for family in ops.FAMILIES.values():
        for namespaces, names in family.items():
            for prefix in namespaces.split():
                for attr in names.split():
                    assert f"{prefix}.{attr}" in ops.TABLE, f"{prefix}.{attr} (typo, or gone from this torch?)"


def test_no_entry_touches_files_process_state_raw_memory_or_code():
    assert len(ops.TABLE) > 500  # (the walk below walks something)
    for name, func in ops.TABLE.items():
        attr = name.rpartition(".")[2]
        if _is_property_entry(name):
            prop = name.split(".")[1]
            assert prop in ops.PROPERTIES or prop in ops.SETTABLE
            assert name.endswith(".__get__") or prop in ("grad", "data", "requires_grad"), name
            continue
        assert attr not in DENIED_NAMES, name
        assert not attr.startswith(DENIED_PREFIXES), name
        assert not attr.endswith(DENIED_SUFFIXES), name
        assert not isinstance(func, (type, types.ModuleType)), name
        module = _module_of(func)
        assert module is None or module == "torch" or module.startswith("torch."), f"{name} comes from {module}"
        assert module is None or not module.startswith(DENIED_MODULES), f"{name} comes from {module}"
        assert name.split(".")[0] in ("torch", "Tensor"), name


def test_code_ops_are_kept_apart_and_refused_without_allow_code():
    for name in ("Tensor.apply_", "Tensor.map_", "Tensor.map2_"):
        assert name not in ops.TABLE
        assert ops.name_of(getattr(th.Tensor, name.split(".")[1])) == name  # the client still names it
        with pytest.raises(sy.UnsupportedOperationError, match="--allow-code"):
            ops.resolve(name)
        assert ops.resolve(name, allow_code=True) is getattr(th.Tensor, name.split(".")[1])


def test_the_empty_family_hands_back_zeros_not_freed_bytes():
    empties = [name for name in ops.TABLE if "empty" in name.rpartition(".")[2]]
    assert sorted(empties) == ["Tensor.new_empty", "torch.empty", "torch.empty_like"]
    calls = {
        "torch.empty": lambda f: f(4096),
        "torch.empty_like": lambda f: f(th.ones(4096), requires_grad=True),
        "Tensor.new_empty": lambda f: f(th.ones(1), (4096,)),
    }
    for name in empties:
        for _ in range(3):
            secret = th.full((4096,), 12345.0)
            del secret  # (its block goes back to the allocator, for the next 16 KiB)
            out = calls[name](ops.resolve(name))
            assert out.shape == (4096,) and not out.any(), name


def test_in_place_entries_are_the_ones_that_write_their_target():
    for name in ("Tensor.add_", "torch._foreach_add_", "torch.relu_", "torch.nn.functional.relu_", "Tensor.__iadd__",
                 "Tensor.__setitem__", "Tensor.grad.__set__", "Tensor.requires_grad_"):
        assert ops.is_inplace(name), name
    for name in ("Tensor.add", "torch._foreach_add", "Tensor.__add__", "Tensor.__getitem__", "Tensor.grad.__get__"):
        assert not ops.is_inplace(name), name


def test_wire_names_stay_what_pointers_send():
    assert ops.name_of(th.Tensor.add) == "Tensor.add"
    assert ops.name_of(th.matmul) == "torch.matmul"
    assert ops.name_of(th.nn.functional.relu) == "torch.nn.functional.relu"
    assert ops.name_of(th.Tensor.__add__) == "Tensor.__add__"
    assert ops.name_of(th.Tensor.grad.__get__) == "Tensor.grad.__get__"
    assert ops.name_of(th.load) is None and ops.name_of(th.Tensor.resize_) is None
    assert ops.name_of(th.manual_seed) is None and ops.name_of([]) is None  # (unhashable: None, not an error)


# --------------------------------------------------------------------------- dangerous names, sent


def _refused_on(worker, op: str, args: tuple = (), kwargs: dict | None = None) -> sy.UnsupportedOperationError:
    """Send `op` as a raw RunOp, as a key holder who skips the pointer API can; return the refusal."""
    with pytest.raises(sy.UnsupportedOperationError) as refused:
        sy.local_client().request(worker.address, msg.RunOp(op, args, kwargs or {}, None))
    assert op in str(refused.value) and "fedq/ops.py" in str(refused.value)
    return refused.value


def test_dangerous_names_are_refused_with_no_side_effect(bob, tmp_path):
    x = th.tensor([1.0, 2.0, 3.0]).send(bob)
    ref = msg.Ref(x.id_at_location)
    path, marker = tmp_path / "written", tmp_path / "pwned"
    attempts = [
        ("torch.load", (str(path),), {"weights_only": False}),
        ("torch.save", (ref, str(path))),
        ("torch.from_file", (str(path),), {"shared": True, "size": 16}),
        ("torch.serialization.load", (str(path),)),
        ("torch.hub.load", ("owner/repo", "model")),
        ("torch.jit.load", (str(path),)),
        ("torch.set_default_dtype", (th.float64,)),
        ("torch.set_default_device", ("meta",)),
        ("torch.manual_seed", (0,)),
        ("torch.seed", ()),
        ("torch.set_rng_state", (ref,)),
        ("torch.set_num_threads", (1,)),
        ("torch.set_grad_enabled", (False,)),
        ("torch.use_deterministic_algorithms", (True,)),
        ("torch.set_printoptions", (), {"precision": 1}),
        ("torch.set_flush_denormal", (True,)),
        ("torch.autograd.set_detect_anomaly", (True,)),
        ("Tensor.resize_", (ref, 1 << 20)),
        ("Tensor.resize_as_", (ref, ref)),
        ("Tensor.set_", (ref,)),
        ("Tensor.new", (ref, 1024)),
        ("torch.empty_strided", ((1024,), (1,))),
        ("Tensor.new_empty_strided", (ref, (1024,), (1,))),
        ("torch.as_strided", (ref, (3,), (1,))),
        ("Tensor.untyped_storage", (ref,)),
        ("Tensor.share_memory_", (ref,)),
        ("Tensor.__reduce_ex__", (ref, 2)),
        ("Tensor.__setstate__", (ref, ())),
        ("Tensor.apply_", (ref, complex)),  # (complex unpickles: a code op is refused by the table too)
        ("torch.return_types.torch", ()),
        ("builtins.eval", (f"open({str(marker)!r}, 'w')",)),
        ("os.system", (f"touch {marker}",)),
        ("torch.ops.aten.add", (ref, ref)),
        ("", ()),
    ]
    for attempt in attempts:
        _refused_on(bob, *attempt)
    assert not path.exists() and not marker.exists()
    assert th.equal(x.get(), th.tensor([1.0, 2.0, 3.0]))
    # The worker's process-wide state is as it was for every client: an int tensor divided
    # makes the default dtype, float32; and a pointer op still records grads.
    assert (th.tensor([1, 2]).send(bob) / 2).get().dtype == th.float32
    w = th.tensor([1.0], requires_grad=True).send(bob)
    (w * 3).sum().backward()
    assert th.equal(w.grad.get(), th.tensor([3.0]))


def test_refusals_through_the_public_api_say_what_to_do(bob):
    x = th.tensor([1.0, 2.0]).send(bob)
    with pytest.raises(sy.UnsupportedOperationError, match="uninitialised memory; make a new tensor"):
        x.resize_(1 << 20)
    # (x.set_(y) never reaches __torch_function__: it runs on the pointer's own meta tensor)
    with pytest.raises(sy.UnsupportedOperationError, match="raw memory"):
        th.as_strided(x, (2,), (1,))
    with pytest.raises(sy.UnsupportedOperationError, match="--allow-code"):
        x.apply_(complex)  # named by the client, refused by the worker (complex is no shipped code)
        sy.local_client().sync()
    assert "ask for it to be added" in str(ops.unsupported("torch.some_new_op"))
    assert th.equal(x.get(), th.tensor([1.0, 2.0]))


def test_empty_on_a_worker_returns_zeros_not_a_freed_private_tensor(bob):
    client = sy.local_client()
    same_shape, small = th.zeros(4096).send(bob), th.zeros(1).send(bob)
    for _ in range(3):
        secret = th.full((4096,), 12345.0).tag("#private").send(bob)
        client.sync()
        del secret  # freed on bob: its 16 KiB go back to bob's allocator
        gc.collect()
        client.sync()
        made = [small.new_empty(4096), th.empty_like(same_shape)]
        id = new_id()
        client.submit(bob.address, msg.RunOp("torch.empty", (4096,), {}, (id,), (((4096,), th.float32, False),)))
        fetched = [p.get() for p in made] + [client.request(bob.address, msg.GetObject(id))]
        for tensor in fetched:
            assert tensor.shape == (4096,) and not tensor.any()


# --------------------------------------------------------------------------- optimizers, without allow_code


@pytest.mark.parametrize("optimizer, settings", [
    (th.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (th.optim.Adam, {"lr": 0.05}),
    (th.optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    (th.optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
    (th.optim.Adagrad, {"lr": 0.1}),
])
def test_optimizer_steps_on_a_sent_model_match_plain_torch(bob, optimizer, settings):
    th.manual_seed(0)
    local, data, target = nn.Linear(3, 2), th.randn(8, 3), th.randn(8, 2)
    remote = nn.Linear(3, 2)
    remote.load_state_dict(local.state_dict())
    remote.send(bob)
    remote_data, remote_target = data.send(bob), target.send(bob)
    # (Built after the send: an optimizer that makes its state up front, like Adagrad, makes it
    # where the parameters are.)
    local_opt, remote_opt = optimizer(local.parameters(), **settings), optimizer(remote.parameters(), **settings)
    for _ in range(3):
        local_opt.zero_grad()
        ((local(data) - target) ** 2).mean().backward()
        local_opt.step()
        remote_opt.zero_grad()
        ((remote(remote_data) - remote_target) ** 2).mean().backward()
        remote_opt.step()
    remote.get()
    for mine, theirs in zip(local.parameters(), remote.parameters()):
        assert th.allclose(mine, theirs, atol=1e-6)


# --------------------------------------------------------------------------- the unpickler's allow-list


def test_the_allow_list_names_classes_functions_and_dtypes_never_a_module():
    allowed = safe_pickle.allowed()
    assert ("torch.return_types", "torch") not in allowed and ("builtins", "getattr") not in allowed
    for (module, name), value in allowed.items():
        assert "." not in name, (module, name)  # no path through an attribute
        assert getattr(importlib.import_module(module), name) is value
        assert not isinstance(value, types.ModuleType), (module, name)
        assert isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, th.dtype, th.memory_format)) or value in (
            Ellipsis, NotImplemented,
        ), (module, name, value)
    for module, name in [("builtins", n) for n in ("range", "set", "frozenset", "bytearray", "eval", "getattr")] + [
        ("torch", "load"), ("torch", "return_types"), ("torch._utils", "torch.preserve_format"), ("os", "system"),
    ]:
        assert (module, name) not in allowed


def test_every_value_fedq_pickles_unpickles_through_the_allow_list():
    values = [
        msg.RunOp("torch.zeros_like", (msg.Ref(1),), {"memory_format": th.preserve_format, "dtype": th.bfloat16}, None),
        msg.RunOp("Tensor.__getitem__", (msg.Ref(1), (slice(0, 2), Ellipsis, None)), {}, (5,)),
        msg.Ok([th.Size([2, 3]), th.device("cpu"), {1, 2}, frozenset({3}), bytearray(b"x"), 1 + 2j]),
        msg.Ok(th.max(th.randn(3, 2), 0)),
        msg.Ok(th.randn(1 << 15)),
    ]
    sender = _Pickling()
    for value in values:
        body = sender.dump(value)
        assert repr(safe_pickle.SafeUnpickler(__import__("io").BytesIO(body), buffers=sender.take_buffers()).load()) == repr(value)


def _pickle_naming(module: str, name: str, state: bytes = b"") -> bytes:
    """A hand-built pickle: GLOBAL module.name, then (if `state`) a BUILD setting attributes on it."""
    return b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n" + state + b"."


def test_a_signed_pickle_naming_a_module_or_a_builtin_is_refused_and_the_worker_stays_whole(hook, bob):
    # BUILD on torch.return_types.torch (the torch module) would replace torch.frombuffer in
    # the worker: every later send from every client would break.
    set_frombuffer = b"}\x8c\x0afrombufferNsb"
    crafted = [
        _pickle_naming("torch.return_types", "torch", set_frombuffer),
        _pickle_naming("builtins", "getattr"),
        _pickle_naming("torch._utils", "torch.preserve_format"),
        _pickle_naming("torch", "load"),
        _pickle_naming("os", "system"),
        _pickle_naming("builtins", "range"),
    ]
    codec = Codec(hook.local_worker.key)  # a key holder, talking over its own socket
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bob.address)
    try:
        for seq, body in enumerate(crafted, start=1):
            sock.send_multipart(codec.seal(Packed(seq, body, [], bob.incarnation)))
            assert sock.poll(10_000)
            answered_seq, answer = codec.decode(sock.recv_multipart())
            assert answered_seq == seq and isinstance(answer, msg.Failure) and answer.type_name == "CodeNotAllowedError", answer
    finally:
        sock.close()
    sent = th.arange(100_000, dtype=th.float32)  # large: rebuilt with torch.frombuffer on the worker
    assert th.equal(sent.send(bob).get(), sent) and th.equal(th.tensor([1.0]).send(bob).get(), th.tensor([1.0]))


def test_an_optimizer_made_before_the_send_steps_where_the_parameters_are(bob, alice):
    """Adagrad makes its state (a sum per parameter) in __init__, here: its first step on the
    sent model sends that state to the parameters' worker (issue 15; it was an error telling
    to build the optimizer after the send). State on another worker is still an error."""
    th.manual_seed(0)
    model, plain = nn.Linear(3, 2), nn.Linear(3, 2)
    plain.load_state_dict(model.state_dict())
    early, plain_opt = th.optim.Adagrad(model.parameters(), lr=0.1), th.optim.Adagrad(plain.parameters(), lr=0.1)
    model.send(bob)
    model(th.ones(1, 3).send(bob)).sum().backward()
    early.step()
    plain(th.ones(1, 3)).sum().backward()
    plain_opt.step()
    assert all(early.state[p]["sum"].location.id == "bob" for p in model.parameters())
    model.move(alice)
    model(th.ones(1, 3).send(alice)).sum().backward()
    with pytest.raises(sy.TensorsNotCollocatedError, match="Optims"):
        early.step()
    model.get()
    assert all(th.allclose(mine, theirs) for mine, theirs in zip(model.parameters(), plain.parameters()))


def test_set_on_a_pointer_is_refused_not_silently_local(bob):
    """Tensor.set_ skips __torch_function__: a pointer must refuse it, not change only its own shape."""
    target = th.zeros(2).send(bob)
    with pytest.raises(sy.UnsupportedOperationError, match="set_"):
        target.set_(th.zeros(3).send(bob))
    assert target.shape == (2,) and target.get().tolist() == [0.0, 0.0]
