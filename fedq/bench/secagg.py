"""Secure aggregation and secret-shared products (issue 16), against the trusted aggregator.

A round of each workflow on the same work: 2 owners of a linear model, and 4 owners of a
~1M-parameter model (nn.Linear(1000, 1000)), one local step each; and `x * y`, `x.mm(y)` on
sharings of 1000 x 1000 int64 tensors (two holders, a crypto provider), as ops per second.
`--quick`: 100 x 100 for both, one repeat.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import nn

import fedq as sy
from fedq.federated import train_on_trusted_aggregator, train_with_secure_aggregation

from .timing import per_call


def _owners(hook: sy.TorchHook, workers: list[sy.VirtualWorker], features: int, outputs: int, rows: int = 8) -> list[tuple[Any, Any]]:
    generator = torch.Generator().manual_seed(16)
    return [
        (torch.randn(rows, features, generator=generator).send(w), torch.randn(rows, outputs, generator=generator).send(w))
        for w in workers
    ]


def _rounds(model: nn.Module, owners: list[tuple[Any, Any]], aggregator: sy.VirtualWorker, repeats: int) -> dict[str, Any]:
    """Both rounds on copies of one model: each timed, and the weights they give compared."""
    trusted, secure = model, nn.Linear(model.in_features, model.out_features)
    secure.load_state_dict(trusted.state_dict())
    times = {
        "trusted": per_call(lambda: train_on_trusted_aggregator(trusted, owners, aggregator, rounds=1, local_steps=1, lr=0.01, progress=False),
                            number=1, repeats=repeats).to_json(),
        "secure": per_call(lambda: train_with_secure_aggregation(secure, owners, rounds=1, local_steps=1, lr=0.01, progress=False),
                           number=1, repeats=repeats).to_json(),
    }
    times["max_weight_difference"] = max(float((p - q).detach().abs().max()) for p, q in zip(trusted.parameters(), secure.parameters()))
    return times


def measure_secagg(*, quick: bool, repeats: int) -> dict[str, Any]:
    hook = sy.TorchHook(torch)
    names = ["sa_owner1", "sa_owner2", "sa_owner3", "sa_owner4", "sa_aggregator", "sa_james"]
    # (james makes the 1000 x 1000 matmul's triple: 10^9 multiply-adds, over the default max_triple_work)
    workers = {name: sy.VirtualWorker(hook, id=name, **({"max_triple_work": 2**30} if name == "sa_james" else {})) for name in names}
    try:
        for worker in workers.values():
            worker.ping(timeout=60)
        owners4 = [workers[f"sa_owner{i}"] for i in (1, 2, 3, 4)]
        aggregator, james = workers["sa_aggregator"], workers["sa_james"]
        results: dict[str, Any] = {}
        torch.manual_seed(0)
        results["linear_2_owners"] = _rounds(nn.Linear(4, 1), _owners(hook, owners4[:2], 4, 1), aggregator, repeats)
        big = nn.Linear(1000, 1000) if not quick else nn.Linear(100, 100)
        results["large_4_owners"] = dict(_rounds(big, _owners(hook, owners4, big.in_features, big.out_features), aggregator, max(1, repeats // 2)),
                                         parameters=sum(p.numel() for p in big.parameters()))
        gc.collect()
        side = 1000 if not quick else 100
        x = torch.randint(-1000, 1000, (side, side)).share(owners4[0], owners4[1], crypto_provider=james)
        y = torch.randint(-1000, 1000, (side, side)).share(owners4[0], owners4[1], crypto_provider=james)

        def product(kind: str) -> None:
            z = x * y if kind == "mul" else x.mm(y)
            hook.local_worker.sync()
            del z

        results["products"] = {
            "side": side,
            "mul": per_call(lambda: product("mul"), number=1, repeats=repeats).to_json(),
            "mm": per_call(lambda: product("mm"), number=1, repeats=max(1, repeats // 2)).to_json(),
        }
        del x, y
        return results
    finally:
        for worker in workers.values():
            try:
                worker.shutdown()
            except Exception:  # (a worker that died already: the section reports what it measured)
                pass
