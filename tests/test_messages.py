"""fedq's message types on their own (no sockets): every request has its handler, and what the
client and the worker read off a request's class says what it did when it was written out as
tables and type checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch as th

from fedq import codec, messages, safe_pickle
from fedq.messages import REPLIES, REQUESTS, WIRE_CLASSES, GetObject, Ping, Request, RunOp, Search, StoreObject
from fedq.worker import HANDLERS, handles


def test_every_request_type_has_exactly_one_handler_and_every_handler_takes_a_request():
    assert len(REQUESTS) == len(set(REQUESTS))
    without = [kind.__name__ for kind in REQUESTS if kind not in HANDLERS]
    strays = [kind.__name__ for kind in HANDLERS if kind not in REQUESTS]
    assert not without, f"request types no worker handles: {without}"
    assert not strays, f"handlers of types that are not requests: {strays}"
    with pytest.raises(TypeError, match="has a handler already"):  # a second handler is refused, not swapped in
        handles(Ping)(lambda worker, message, reply: None)
    assert HANDLERS[Ping].__module__ == "fedq.worker"


def test_requests_and_replies_are_what_a_message_may_be():
    assert set(REQUESTS) == set(Request.__subclasses__()) and all(issubclass(kind, Request) for kind in REQUESTS)
    assert {kind.__name__ for kind in REPLIES} == {"Ok", "Acked", "Failure"}
    assert set(REQUESTS) | set(REPLIES) <= set(WIRE_CLASSES)
    allowed = safe_pickle.allowed()
    for kind in WIRE_CLASSES:  # each is unpickled by the name it is pickled as
        assert allowed[(kind.__module__, kind.__name__)] is kind
    assert allowed[("fedq.codec", "_rebuild_tensor")] is codec._rebuild_tensor


def test_owner_actions_are_the_listings_searches_and_decisions_and_nothing_else():
    owner = {kind.__name__ for kind in REQUESTS if kind.owner_action}
    assert owner == {
        "ClearObjects", "Shutdown", "ListObjects", "DescribeObjects", "CountObjects", "Search", "ListRequests", "DecideRequest",
        "AddOwnerData",  # (VirtualWorker(data=(t1, t2)): the owner's own data; refused unsigned, test_conveniences.py)
        "SetThreads",  # (a script's first worker lowered to the budget of the next; refused unsigned, test_thread_budget.py)
    }


def test_only_searches_gets_and_ops_whose_results_the_worker_names_hand_references_over():
    meta = (((2, 3), th.float32, False),)
    assert Search(("x",)).hands_over and GetObject(1).hands_over
    assert RunOp("torch.add", (), {}, None).hands_over and RunOp("torch.add", (), {}, None, meta).hands_over
    assert not RunOp("torch.add", (), {}, (5,), meta).hands_over and not RunOp("Tensor.add_", (), {}, ()).hands_over
    handing = {kind.__name__ for kind in REQUESTS if kind is not RunOp and kind.hands_over}
    assert handing == {"Search", "GetObject"}


def test_only_ops_whose_results_are_known_beforehand_say_how_large_they_are():
    meta = (((2, 3), th.float32, False), ((4,), th.int64, False))
    assert RunOp("Tensor.add_", (), {}, ()).result_bytes() == 0  # in place
    assert RunOp("torch.max", (), {}, (1, 2), meta).result_bytes() == 2 * 3 * 4 + 4 * 8
    assert RunOp("torch.max", (), {}, None, meta).result_bytes() == 56  # the worker names them; their shapes are known
    assert RunOp("torch.nonzero", (), {}, (1,)).result_bytes() is None  # shapes not known beforehand
    assert StoreObject(1, th.zeros(1)).result_bytes() is None and Ping().result_bytes() is None


def test_the_facts_are_class_attributes_not_fields():
    """They say what a type is; they do not travel (a message is pickled as its fields alone)."""
    packed = codec.Codec(codec.new_key()).pack(1, Search(("x",)), codec.new_incarnation())
    assert b"owner_action" not in bytes(packed.body) and b"hands_over" not in bytes(packed.body)
    assert [name for name in ("owner_action", "hands_over") if name in Search.__dataclass_fields__] == []


def test_messages_import_nothing_of_fedq():
    """Dependencies point one way: codec.py imports messages.py, never the other way round."""
    tree = ast.parse(Path(messages.__file__).read_text())
    fedq_imports = [
        ast.unparse(node) for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fedq"))
        or isinstance(node, ast.Import) and any(alias.name.startswith("fedq") for alias in node.names)
    ]
    assert fedq_imports == []
