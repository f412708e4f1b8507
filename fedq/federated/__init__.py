"""Federated learning on workers: one module per workflow, everything they export here.

`fedq.federated.train_on_trusted_aggregator(...)` (trusted_aggregator.py) and PySyft 0.2's
`syft.federated.floptimizer.Optims` (floptimizer.py) keep their PySyft import paths.
"""

from .trusted_aggregator import LOSS_BOUNDS, LOSS_EPSILON, RoundResult, find_owner_data, plot_losses, train_on_trusted_aggregator

__all__ = ["LOSS_BOUNDS", "LOSS_EPSILON", "RoundResult", "find_owner_data", "plot_losses", "train_on_trusted_aggregator"]
