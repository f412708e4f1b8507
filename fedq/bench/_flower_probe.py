"""Run by flower.py with an interpreter that has `flwr[simulation]`: the FedAvg workloads of
`fedq bench --fl` on Flower's simulation engine (Ray), as NumPy clients; prints one JSON line.

Never imported by fedq: only this script imports flwr. The models, shards and local steps are
flworkloads.py's (imported by path, torch only), so the weights can be held against fedq's.
Per workload: seconds from run_simulation to the end of the first round less one timed round (start-up), each
round from configure_fit to the end of aggregate_fit, the PSS of this process and every process
under it (Ray's) after the last round, and the final weights' difference from plain torch's FedAvg.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import flworkloads  # noqa: E402  (torch only: not through the fedq package)
import procmem  # noqa: E402  (/proc only)

import numpy as np  # noqa: E402
import torch  # noqa: E402




def run(workload: flworkloads.Workload) -> dict:
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    shards = [flworkloads.shard(workload, owner) for owner in range(workload.owners)]

    class Owner(NumPyClient):
        def __init__(self, owner: int) -> None:
            self.data, self.target = shards[owner]

        def fit(self, parameters, config):  # noqa: ANN001, ANN201
            weights = [torch.from_numpy(np.asarray(p)) for p in parameters]
            trained = flworkloads.local_round(workload, weights, self.data, self.target)
            return [t.numpy() for t in trained], workload.rows, {}

    def client_fn(context: Context):  # noqa: ANN202
        return Owner(int(context.node_config["partition-id"])).to_client()

    marks: dict = {"rounds": [], "weights": None, "pss": None}

    class Timed(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
            marks["round_start"] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
            aggregated = super().aggregate_fit(server_round, results, failures)
            marks["rounds"].append(time.perf_counter() - marks["round_start"])
            marks.setdefault("first_end", time.perf_counter())
            if failures:
                marks["error"] = f"{len(failures)} clients failed: {failures[0]!r}"
            if aggregated[0] is not None:
                marks["weights"] = parameters_to_ndarrays(aggregated[0])
            if server_round == workload.rounds + 1:
                marks["pss"] = procmem.tree_pss() or 0
            return aggregated

    start = [p.detach().numpy() for p in flworkloads.model(workload).parameters()]
    n = workload.owners
    strategy = Timed(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_evaluate_clients=0, min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(start),
    )

    def server_fn(context: Context) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=workload.rounds + 1))

    began = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn), num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"logging_level": logging.ERROR, "log_to_driver": False}},
    )
    if marks["weights"] is None or len(marks["rounds"]) != workload.rounds + 1:
        return {"error": marks.get("error") or f"Flower ran {len(marks['rounds'])} of {workload.rounds + 1} rounds"}
    timed = marks["rounds"][1:]  # (the first round warms up, as fedq's does: Ray starts in it)
    reference = flworkloads.fedavg(workload, workload.rounds + 1)
    weights = [torch.from_numpy(np.asarray(w)) for w in marks["weights"]]
    return {
        "startup_s": marks["first_end"] - began - statistics.median(timed),
        "round_s": statistics.median(timed),
        "round_samples": timed,
        "pss_bytes": marks["pss"],
        "max_diff_from_torch": flworkloads.max_difference(weights, reference),
        "weights": [w.flatten()[:4].tolist() for w in weights],
    }


def main() -> None:
    logging.disable(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    results = {"flwr": __import__("flwr").__version__}
    for data in json.loads(sys.argv[1]):
        workload = flworkloads.Workload.from_json(data)
        try:
            results[workload.name] = run(workload)
        except Exception as error:  # one workload failing leaves the others' figures
            results[workload.name] = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
