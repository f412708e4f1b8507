"""Federated averaging on a trusted aggregator, against the Procfile's workers.

    honcho start            # or: fedq up      (bob and alice load their shards from workers/)
    python examples/trusted_aggregator.py [--config configs/local.toml] [--rounds 10]

Each round a copy of the model trains on bob's and on alice's own data, where that data
lives; both copies move straight to secure_worker, which averages them; only the average
comes back here. Neither owner's model nor data is ever seen by this script.
"""

from __future__ import annotations

import argparse

import torch as th
from torch import nn

import fedq as sy
from fedq.federated import find_owner_data, plot_losses, train_on_trusted_aggregator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local.toml")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--plot", metavar="PNG", help="write the loss curves there (needs fedq[plot])")
    args = parser.parse_args()

    hook = sy.TorchHook(th)
    bob, alice, secure_worker = (sy.connect(hook, name, config=args.config) for name in ("bob", "alice", "secure_worker"))
    owners = find_owner_data([bob, alice])  # pointers to each owner's own shard, by its tags
    th.manual_seed(0)
    model = nn.Linear(owners[0][0].shape[1], 1)

    results = train_on_trusted_aggregator(model, owners, secure_worker, rounds=args.rounds, local_steps=args.local_steps, lr=0.1, on_round=print)
    print("averaged model:", model.weight.data, model.bias.data)
    if args.plot:
        print("loss curves:", plot_losses(results, args.plot))


if __name__ == "__main__":
    main()
