"""`fedq demo`: the remote-execution lesson, cell by cell, against real worker processes."""

from __future__ import annotations

import ast
import textwrap
from typing import Callable

LESSON = [
    """\
import torch as th
import fedq as sy
hook = sy.TorchHook(th)""",
    """\
bob = sy.VirtualWorker(hook, id="bob")      # a separate OS process
alice = sy.VirtualWorker(hook, id="alice")
bob.pid, alice.pid""",
    "bob.clear_objects()",
    "x = th.tensor([1, 2, 3, 4, 5]).send(bob)\nx",
    "bob._objects",
    "x = x.send(alice)                          # the pointer moves; bob is untouched\nx",
    "alice._objects",
    "y = x + x                                  # computed on bob, relayed by alice\ny",
    "bob._objects",
    "x = x.get()                                # peels one level\nx",
    "x = x.get()\nx",
    "bob._objects",
    "del y\nbob._objects, alice._objects",
    "x = th.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)\nbob._objects, alice._objects",
    "del x                                      # deletes travel hop by hop\nbob._objects, alice._objects",
]


AGGREGATOR = [
    """\
import torch as th
from torch import nn
import fedq as sy
from fedq.federated import find_owner_data, train_on_trusted_aggregator
hook = sy.TorchHook(th)""",
    """\
# Each data owner's worker loads its own shard of the housing data at startup.
bob = sy.VirtualWorker(hook, id="bob", data="workers/housing.py")
alice = sy.VirtualWorker(hook, id="alice", data="workers/housing.py")
secure_worker = sy.VirtualWorker(hook, id="secure_worker")   # the trusted aggregator
bob.search("#housing", "#data")""",
    "owners = find_owner_data([bob, alice])                      # (data, target) pointers\nowners",
    """\
th.manual_seed(0)
model = nn.Linear(4, 1)
# each owner's loss leaves only as a DP release (epsilon 1 a round, noise ~0.16): noisy by design
rounds = train_on_trusted_aggregator(model, owners, secure_worker, rounds=10, local_steps=5, lr=0.1, on_round=print)""",
    "model.weight.data, model.bias.data       # the data were made from [[3, -1, -2, -0.5]] and 2",
    "[len(w._objects) for w in (bob, alice, secure_worker)]   # only each owner's data is left",
]


SECURE = [
    """\
import torch as th
from torch import nn
import fedq as sy
from fedq.federated import find_owner_data, train_with_secure_aggregation
hook = sy.TorchHook(th)""",
    """\
# Each owner refuses model updates in the clear: they leave only inside a sum of >= 2 owners'
# (exact sums: each script approves them with secure_aggregation(k=2, exact=True); an owner
# naming epsilon= and clip= instead has its worker noise every update it shares).
bob = sy.VirtualWorker(hook, id="bob", data="workers/housing_secure.py")
alice = sy.VirtualWorker(hook, id="alice", data="workers/housing_secure.py")
owners = find_owner_data([bob, alice])
owners""",
    """\
th.manual_seed(0)
model = nn.Linear(4, 1)
# each round: the owners share their trained weights among themselves; only the sum is rebuilt
rounds = train_with_secure_aggregation(model, owners, rounds=10, local_steps=5, lr=0.1, on_round=print)""",
    "model.weight.data, model.bias.data       # the data were made from [[3, -1, -2, -0.5]] and 2",
    """\
w = bob.search("#housing", "#data")[0]     # one owner's update, shared, is refused by the holders
lone = model.copy().send(bob)
((lone(w) ** 2).mean()).backward()
shared = lone.weight.grad.fix_precision().share(bob, alice).get()
try:
    shared.get()
except sy.GetNotPermittedError as refused:
    print(type(refused).__name__, str(refused)[:110], "...")
del lone, shared""",
    "hook.local_worker.sync()\n[len(w._objects) for w in (bob, alice)]   # only each owner's data is left",
]


def run_cells(cells: list[str], echo: Callable[[str], None] = print) -> dict:
    """Run each cell like a notebook: print its code, then the value of its last expression."""
    namespace: dict = {}
    for number, source in enumerate(cells, start=1):
        prompt = f"In [{number}]: "
        echo(prompt + textwrap.indent(source, " " * len(prompt)).lstrip())
        tree = ast.parse(source)
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        exec(compile(tree, f"<cell {number}>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), f"<cell {number}>", "eval"), namespace)
            if value is not None:
                echo(f"Out[{number}]: {value!r}")
        echo("")
    return namespace


def run_demo(cells: list[str], echo: Callable[[str], None] = print) -> None:
    namespace = run_cells(cells, echo)
    namespace["hook"].local_worker.close()  # stops the workers the cells started
