"""The client of `fedq bench`'s hosts section, run by hosts.py inside the client's namespace
(`python -m fedq.bench._hosts_probe CONFIG PLAN`): the same work on the config's `far` worker
(another namespace, tcp + CURVE) and `near` (this namespace's loopback, tcp + CURVE); one JSON
line of figures on stdout."""

from __future__ import annotations

import json
import sys
import time

import torch

import fedq as sy
from fedq.bench.fedq_work import Fleet
from fedq.bench.hosts import measure_paths


def main(config: str, plan: list[int]) -> dict[str, object]:
    number, repeats, transfer_repeats, size_mib = plan
    hook = sy.TorchHook(torch)
    fleet = Fleet(hook)
    workers = {name: sy.connect(hook, name, config=config) for name in ("far", "near")}
    deadline = time.monotonic() + 120
    for worker in workers.values():
        while True:  # the workers may still be importing torch
            try:
                worker.ping(timeout=2)
                break
            except sy.WorkerUnreachableError:
                if time.monotonic() > deadline:
                    raise
    try:
        paths = {"namespaces": workers["far"], "loopback_curve": workers["near"]}
        return measure_paths(fleet, paths, number=number, repeats=repeats, transfer_repeats=transfer_repeats, size_mib=size_mib)
    finally:
        fleet.close()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
