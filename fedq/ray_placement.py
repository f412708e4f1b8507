"""Placing a config's workers on a Ray cluster (`fedq up --on ray`; the `fedq[ray]` extra).

Ray only places processes: each worker is one Ray actor whose process runs `fedq worker NAME
--config F`, as a host would, binding tcp on its node at the config's address. Its keys are read
from that node's files (the config's key_file and curve_dir), never passed through Ray's object
store. Clients and other workers find it exactly as from the config. Killing the actor (stopping
the federation, or its node dying) ends the worker with it: no process of it outlives the actor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import load_config
from .errors import ConfigError


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("placing workers on Ray needs Ray: pip install 'fedq[ray]'") from None
    return ray


class _Host:
    """One worker's Ray actor: its process is the worker's (a method that serves until it stops)."""

    def serve(self, name: str, config: str, threads: int) -> int:
        """What `fedq worker NAME --config F` does on a host, with this node's key files."""
        from .worker import run_worker

        federation = load_config(config)
        entry = federation.worker(name)
        entry.check_data(federation.path)
        settings = entry.settings if entry.settings.threads is not None else dataclasses.replace(entry.settings, threads=threads)
        try:
            run_worker(name, entry.address, key=federation.key(), settings=settings, admin_key=federation.admin_key())
        except SystemExit as stopped:  # (SIGTERM, a shutdown: the worker's normal ends)
            return int(stopped.code or 0)
        return 0


@dataclass
class RayFederation:
    """The workers of a config, each a Ray actor; `stop()` kills them all (and a Ray instance we started)."""

    ray: Any
    actors: dict[str, Any]
    served: dict[str, Any]  # id -> the ObjectRef that resolves when that worker exits
    started_ray: bool
    stopped: bool = field(default=False)

    def exited(self, timeout: float = 0.0) -> list[str]:
        """The workers whose process has ended (exited, or its actor or node died)."""
        done, _ = self.ray.wait(list(self.served.values()), num_returns=len(self.served), timeout=timeout)
        return [id for id, ref in self.served.items() if ref in done]

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for actor in self.actors.values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # (already gone with its node)
                pass
        if self.started_ray:
            self.ray.shutdown()


def up_on_ray(config: str | Path, *, address: str | None = None, num_cpus: float = 1.0) -> RayFederation:
    """Start every worker of `config` as a Ray actor on the cluster at `address` (None: a local
    instance, started here and stopped with the federation); each reserves `num_cpus` (and runs
    torch on as many threads, unless its settings say)."""
    ray = _ray()
    federation = load_config(config)
    federation.key(create=False)  # (a missing key file is said here, not by each actor)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    remote = ray.remote(num_cpus=num_cpus, max_restarts=0)(_Host)
    actors = {id: remote.remote() for id in federation.workers}
    served = {id: actor.serve.remote(id, str(Path(config).resolve()), max(1, int(num_cpus))) for id, actor in actors.items()}
    return RayFederation(ray, actors, served, started)
