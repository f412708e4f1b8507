"""Federated learning on workers: one module per workflow, everything they export here.

`fedq.federated.train_on_trusted_aggregator(...)` (trusted_aggregator.py),
`train_with_secure_aggregation(...)` (secure_aggregation.py: no aggregator sees an update) and PySyft 0.2's
`syft.federated.floptimizer.Optims` (floptimizer.py) keep their PySyft import paths.
"""

from .trusted_aggregator import LOSS_BOUNDS, LOSS_EPSILON, RoundResult, find_owner_data, plot_losses, train_on_trusted_aggregator
from .secure_aggregation import train_with_secure_aggregation

__all__ = ["LOSS_BOUNDS", "LOSS_EPSILON", "RoundResult", "find_owner_data", "plot_losses", "train_on_trusted_aggregator", "train_with_secure_aggregation"]
