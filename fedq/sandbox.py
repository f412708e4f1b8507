"""PySyft 0.2's `sy.create_sandbox(globals())`: six workers holding shards of seven datasets.

PySyft loaded scikit-learn's datasets (Boston housing, diabetes, breast cancer, digits, iris,
wine, Linnerud). Here each is a **synthetic stand-in** of the same shape, tags and kind of
target, made on this machine from a fixed seed: nothing is downloaded, nothing is real, and
each tensor's description says so. Each worker keeps its shards as its data owner's (this
script's, who started it): found by `search`, never freed by pointers, read-only, public.
"""

from __future__ import annotations

import zlib
from typing import Any, MutableMapping

import torch

from .grid import PrivateGridNetwork
from .handle import VirtualWorker
from .hook import TorchHook

WORKERS = ("bob", "theo", "jason", "alice", "andy", "jon")

#: name -> (rows, features, target: "regression", a class count, or a column count for Linnerud's
#: three targets), PySyft's tags (besides #data/#target), and what the real dataset is
DATASETS: dict[str, tuple[int, int, Any, tuple[str, ...], str]] = {
    "boston": (506, 13, "regression", ("#boston", "#housing", "#boston_housing"), "Boston house prices"),
    "diabetes": (442, 10, "regression", ("#diabetes",), "diabetes progression"),
    "breast_cancer": (569, 30, 2, ("#breast_cancer",), "breast cancer Wisconsin (diagnostic)"),
    "digits": (1797, 64, 10, ("#digits",), "optical recognition of handwritten digits"),
    "iris": (150, 4, 3, ("#iris",), "iris plants"),
    "wine": (178, 13, 3, ("#wine",), "wine recognition"),
    "linnerud": (20, 3, ("columns", 3), ("#linnerud",), "Linnerud physical exercise"),
}
STAND_IN_TAG = "#synthetic"


def stand_in(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(data, target) of dataset `name`'s stand-in: the real one's shape, a learnable target
    (a linear function plus noise, or classes with their own means), the same on every run."""
    rows, features, target_kind, tags, what = DATASETS[name]
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if isinstance(target_kind, int):  # classes: each row near its class's mean
        target = torch.randint(0, target_kind, (rows,), generator=generator)
        means = 2.0 * torch.randn(target_kind, features, generator=generator)
        data = means[target] + torch.randn(rows, features, generator=generator)
        target = target.float()
    else:
        data = torch.randn(rows, features, generator=generator)
        columns = target_kind[1] if isinstance(target_kind, tuple) else 1
        weights = torch.randn(features, columns, generator=generator)
        target = data @ weights + 0.1 * torch.randn(rows, columns, generator=generator)
        target = target.squeeze(1) if columns == 1 else target
    description = f"a synthetic stand-in for scikit-learn's {what} dataset ({rows} x {features}), made here: not real data"
    data.tags, target.tags = {*tags, "#data", STAND_IN_TAG}, {*tags, "#target", STAND_IN_TAG}  # (what .tag() sets)
    data.description = target.description = description
    return data, target


def shards(tensor: torch.Tensor, count: int) -> list[torch.Tensor]:
    """PySyft's split: `count` shards of rows // count rows each, the last taking the rest."""
    size = tensor.shape[0] // count
    # (clones: a view would carry its whole storage with it)
    parts = [tensor[i * size:(i + 1) * size].clone() for i in range(count - 1)] + [tensor[(count - 1) * size:].clone()]
    for part in parts:
        part.tags, part.description = set(tensor.tags), tensor.description
    return parts


def create_sandbox(gbs: MutableMapping[str, Any], verbose: bool = True, download_data: bool = True) -> None:
    """Put `hook`, the six workers (`bob`, `theo`, `jason`, `alice`, `andy`, `jon`), `workers`
    and `grid` (a PrivateGridNetwork of them) into `gbs` (a notebook's `globals()`), each worker
    holding a shard of every stand-in dataset. `download_data=False`: the workers only (PySyft's
    name; nothing is ever downloaded)."""
    torch_module = gbs.get("torch", gbs.get("th", torch))
    say = print if verbose else (lambda *args: None)
    print("Setting up Sandbox...")
    say("\t- Hooking PyTorch")
    hook = TorchHook(torch_module)
    say("\t- Creating Virtual Workers:")
    workers = []
    for name in WORKERS:
        say(f"\t\t- {name}")
        workers.append(VirtualWorker(hook, id=name))  # (each starts in the background: all at once)
    say("\tStoring hook and workers as global variables...")
    gbs["hook"] = hook
    gbs.update({worker.id: worker for worker in workers})
    gbs["workers"] = workers
    if download_data:
        say("\tMaking synthetic stand-ins of scikit-learn's datasets (no download)...")
        held: list[list[torch.Tensor]] = [[] for _ in workers]
        for name in DATASETS:
            say(f"\t\t- {name} (stand-in)")
            for tensor in stand_in(name):
                for shard, mine in zip(shards(tensor, len(workers)), held):
                    mine.append(shard)
        say("\tDistributing Datasets Amongst Workers...")
        for worker, tensors in zip(workers, held):
            worker.load_data(tensors)
    say("\tCollecting workers into a VirtualGrid...")
    gbs["grid"] = PrivateGridNetwork(*workers)
    print("Done!")


def make_hook(gbs: MutableMapping[str, Any]) -> None:
    """PySyft's: the sandbox's hook and workers, no datasets, quietly."""
    create_sandbox(gbs, False, False)
