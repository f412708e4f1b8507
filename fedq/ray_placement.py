"""Placing a config's workers, or N generated data owners, on a Ray cluster (`fedq up --on ray`;
the `fedq[ray]` extra).

Ray only places processes: each worker is one Ray actor whose process runs `fedq worker NAME
--config F`, as a host would, binding tcp on its node at the config's address. Its keys are read
from that node's files (the config's key_file and curve_dir), never passed through Ray's object
store. Clients and other workers find it exactly as from the config. Killing the actor (stopping
the federation, or its node dying) ends the worker with it: no process of it outlives the actor.

Generated owners (`owners=N`): the actors are placed first, each picks a free tcp port at its
node's address, and those addresses become a config written where the caller says (with its
signing key and CURVE keys beside it); then each serves from that config, as above. A client
joins by that file, as by any config.
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


#: a generated owner's data: a synthetic shard of houses per worker id (workers/housing.py)
OWNER_DATA = Path(__file__).resolve().parent.parent / "workers" / "housing.py"
AGGREGATOR = "aggregator"


class _Host:
    """One worker's Ray actor: its process is the worker's (a method that serves until it stops)."""

    def endpoint(self) -> str:
        """A tcp endpoint free right now at this node's address, as Ray knows it (what other nodes reach)."""
        import socket

        import ray

        address = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))  # (free until the worker binds it: a race another program seldom wins)
            port = probe.getsockname()[1]
        return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"

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
    config: Path  # what clients join by (for generated owners: the config written for them)
    ray_address: str  # the cluster's (more can be placed on it: `fedq up --on ray --ray-address A`)
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


def up_on_ray(
    config: str | Path | None = None,
    *,
    owners: int | None = None,
    write_config: str | Path = "ray-owners.toml",
    owner_data: str | Path = OWNER_DATA,
    timeout: float | None = None,
    address: str | None = None,
    num_cpus: float | None = None,
    place_timeout: float = 300.0,
) -> RayFederation:
    """Start every worker of `config` as a Ray actor on the cluster at `address` (None: a local
    instance, started here and stopped with the federation); each reserves `num_cpus` (and runs
    torch on as many threads, at least 1, unless its settings say). None: 1 for a config's
    workers; generated owners share the cluster's CPUs (at most 1 each), since a simulation's
    owners mostly wait. Workers Ray cannot place within `place_timeout` are an error, not a hang.

    Or, with `owners=N` (and no `config`), N generated data owners owner0..owner{N-1}, each
    loading its shard by `owner_data`, and an aggregator: their config, with CURVE on, is written
    to `write_config` (its signing key and CURVE keys beside it, made anew; `timeout`: its calls').
    On a cluster of several nodes that file's directory must be one every node reads (each
    worker reads the config and its keys from its own node's disk, never through Ray)."""
    if (config is None) == (owners is None):
        raise ConfigError("place a config's workers or N generated owners (owners=N): one of the two")
    if owners is not None and owners < 1:
        raise ConfigError(f"owners={owners}: at least one data owner")
    if owners is not None and not Path(owner_data).exists():
        raise ConfigError(f"the owners' data script {owner_data} does not exist here (give owner_data=, `--owner-data`)")
    ray = _ray()
    if config is not None:
        load_config(config).key(create=False)  # (a missing key file is said here, not by each actor)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    actors: dict[str, Any] = {}
    try:
        names = list(load_config(config).workers) if config is not None else [*(f"owner{i}" for i in range(owners or 0)), AGGREGATOR]
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if num_cpus is None:
            num_cpus = 1.0 if owners is None else min(1.0, cpus / len(names)) or 1.0
        if started and num_cpus * len(names) > cpus:  # (a cluster of ours does not grow: the last ones would wait for ever)
            raise ConfigError(f"{len(names)} workers of {num_cpus:g} CPU each do not fit this Ray instance's {cpus:g} CPUs: give fewer CPUs each (num_cpus, --num-cpus)")
        remote = ray.remote(num_cpus=num_cpus, max_restarts=0)(_Host)
        actors = {id: remote.remote() for id in names}
        # Every actor placed (its process up) before any serves; generated owners' addresses are their nodes'.
        try:
            addresses = dict(zip(names, ray.get([actor.endpoint.remote() for actor in actors.values()], timeout=place_timeout), strict=True))
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"Ray did not place all {len(names)} workers within {place_timeout:g} s (too few CPUs free? num_cpus={num_cpus:g} each)") from None
        if config is None:
            config = write_owners_config(write_config, addresses, owner_data=Path(owner_data), timeout=timeout)
    except BaseException:
        for actor in actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # (already gone)
                pass
        if started:
            ray.shutdown()
        raise
    path = Path(config).resolve()
    served = {id: actor.serve.remote(id, str(path), max(1, int(num_cpus))) for id, actor in actors.items()}
    return RayFederation(ray, actors, served, started, path, ray.get_runtime_context().gcs_address)


def write_owners_config(path: str | Path, addresses: dict[str, str], *, owner_data: Path, timeout: float | None = None) -> Path:
    """The config of generated owners at `addresses` ({id: tcp address}; every id but the
    aggregator's loads `owner_data`), CURVE on; beside it (made anew) its signing key
    (PATH.key) and its CURVE key pairs, every worker's and a client's (PATH-curve/)."""
    from .codec import new_key
    from .keys import write_curve_pairs, write_key_file

    path = Path(path).resolve()
    key_file, curve_dir = path.with_suffix(".key"), path.with_name(f"{path.stem}-curve")
    write_key_file(key_file, new_key())
    if curve_dir.exists():  # (old pairs would still be let in)
        for old in curve_dir.glob("*.key*"):
            old.unlink()
    write_curve_pairs(curve_dir, [*addresses, "client"])
    lines = ["[federation]", f'key_file = "{key_file}"', "curve = true", f'curve_dir = "{curve_dir}"']
    if timeout is not None:
        lines.append(f"timeout = {timeout!r}")
    for id, address in addresses.items():
        lines += ["", f"[workers.{id}]", f'address = "{address}"']
        if id != AGGREGATOR:
            lines.append(f'data = "{owner_data.resolve()}"')
    written = path.with_name(f".{path.name}.new")
    written.write_text("\n".join(lines) + "\n")
    written.replace(path)  # (whole or not at all: a client may be waiting for it)
    return path
