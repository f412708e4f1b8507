"""Federation configs: which workers exist and where they listen (TOML).

    [federation]
    timeout = 30                      # seconds any call waits before naming the silent worker
    key_file = "~/.config/fedq/local.key"  # the federation's signing key (`fedq keygen` makes it)

    [workers.bob]
    address = "ipc://{runtime}/bob.sock"   # or "tcp://127.0.0.1:5601"
    data = "workers/housing.py"            # optional: the data owner's startup script
    bind = "tcp://0.0.0.0:5601"            # optional: what it listens on, if not its address
    host = "bob-host"                      # optional: the host it runs on (`fedq up --host bob-host`)

Every key of `settings.WorkerSettings` may be set in `[federation]` (every worker's) or in a
worker's own table (that worker's, over `[federation]`'s), but for `data`, `bind` and `host` (a worker's own),
`curve_dir` and `admin_key_file` (the federation's) and `peers` (its workers' addresses).
`{runtime}` expands to a directory only this user can read. The same file
drives the Procfile (`fedq worker NAME --config ...`), `fedq up`, and
`fedq.connect(hook, NAME, config=...)`.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .keys import key_from_environment, read_key_file
from .settings import DEFAULTS, WorkerSettings, settings_from
from .transport import runtime_dir

DEFAULT_CONFIG = Path("configs/local.toml")


_PEERS = "is made from the [workers] tables: it is their addresses"
#: settings a config table may not set, and why
NOT_IN_FEDERATION = {
    "data": "is each worker's own: set it in [workers.NAME]", "bind": "is each worker's own: set it in [workers.NAME]", "peers": _PEERS,
    "host": "is each worker's own: set it in [workers.NAME]",
}
NOT_IN_WORKER = {"curve_dir": "is the federation's: set it in [federation]", "admin_key_file": "is the federation's: set it in [federation]", "peers": _PEERS}


@dataclass(frozen=True)
class WorkerConfig:
    id: str
    address: str
    settings: WorkerSettings = DEFAULTS  # [federation]'s, with this worker's own table laid over them
    host: str | None = None  # the config's `host`: the machine it runs on, by the name `fedq up --host` is given

    @property
    def host_name(self) -> str:
        """The host this worker runs on: its `host`, else its address's host part ("localhost" for ipc)."""
        return self.host or urlsplit(self.address).hostname or "localhost"

    def is_here(self) -> bool:
        """Is this worker's address one of this machine's own (ipc, loopback, an interface's)? By
        its advertised address, not `bind` (0.0.0.0 is every machine's): behind NAT, use `host`."""
        if not self.address.startswith("tcp://"):
            return True  # ipc and inproc are always this machine's
        name = urlsplit(self.address).hostname or ""
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)}
        except OSError:
            return False
        return any(_is_mine(address) for address in addresses)

    @property
    def data(self) -> str | None:
        """A data owner's script (workers/...), run by the worker at startup."""
        return self.settings.data

    def check_data(self, config: Path) -> None:
        """This worker is about to start here: its data script, if it has one, must exist (a
        client, or another host, never reads it)."""
        if self.data is not None and not Path(self.data).exists():
            raise ConfigError(f"{config}: worker {self.id!r} has data = {self.data!r}, which does not exist on this host")


@dataclass(frozen=True)
class FederationConfig:
    path: Path
    key_file: Path
    workers: dict[str, WorkerConfig] = field(default_factory=dict)
    settings: WorkerSettings = DEFAULTS  # [federation]'s: every worker's (peers: all of them) unless its own table says otherwise

    def peers(self) -> dict[str, str]:
        return {id: w.address for id, w in self.workers.items()}

    @property
    def curve_dir(self) -> Path | None:
        """Set: every socket is CURVE-encrypted with the keys there."""
        return Path(self.settings.curve_dir) if self.settings.curve_dir else None

    def settings_of(self, id: str) -> WorkerSettings:
        """Worker `id`'s settings: its own table's over [federation]'s (only [federation]'s if it has none)."""
        return self.workers[id].settings if id in self.workers else self.settings

    def key(self, *, create: bool = False) -> bytes:
        """The federation's signing key: FEDQ_KEY if set, else the key file. Nobody makes a
        missing one but `fedq keygen` (`create`): a new key would match no other party's."""
        missing = f"make it with `fedq keygen --config {self.path}` (on one host; copy it, mode 600, to the others) or set FEDQ_KEY"
        return key_from_environment() or read_key_file(self.key_file, create=create, missing=missing)

    @property
    def admin_key_file(self) -> Path:
        """Where the workers' admin key (their owner's) is kept: `admin_key_file`, else next to the key file."""
        if self.settings.admin_key_file:
            return Path(self.settings.admin_key_file).expanduser()
        return self.key_file.with_name(self.key_file.stem + ".admin" + self.key_file.suffix)

    def admin_key(self, *, create: bool = True) -> bytes:
        """The owner's admin key of this federation's standing workers. A worker makes a missing
        one (`create`); the CLI on the worker's host reads it."""
        return read_key_file(self.admin_key_file, create=create, what="admin key")

    def workers_here(self, host: str | None = None) -> dict[str, WorkerConfig]:
        """The workers this machine runs: those whose `host` is `host`, or (None) whose address is this machine's."""
        if host is None:
            chosen = {id: w for id, w in self.workers.items() if w.is_here()}
            if not chosen:
                raise ConfigError(f"{self.path}: no worker's address is this machine's (hosts: {self._hosts()}); name this one with --host")
        else:
            chosen = {id: w for id, w in self.workers.items() if w.host == host}
            if not chosen:
                raise ConfigError(f"{self.path}: no worker has host = {host!r} (hosts: {self._hosts()})")
        return chosen

    def hosts(self) -> dict[str, list[str]]:
        """{host: its workers' ids}, by `WorkerConfig.host_name`."""
        placed: dict[str, list[str]] = {}
        for id, w in self.workers.items():
            placed.setdefault(w.host_name, []).append(id)
        return placed

    def _hosts(self) -> str:
        return ", ".join(f"{h} ({', '.join(ids)})" for h, ids in self.hosts().items()) or "none"

    def curve_identity(self) -> str:
        """Whose CURVE key pair a client on this host uses: `client` where its bundle has
        client.key_secret (a client host), else this host's own worker's (an owner host holds its
        workers' secret keys, which every worker accepts, and no client key of its own)."""
        directory = self.curve_dir
        if directory is not None and not (directory / "client.key_secret").exists():
            for id in self.workers:
                if (directory / f"{id}.key_secret").exists():
                    return id
        return "client"

    def worker(self, id: str) -> WorkerConfig:
        try:
            return self.workers[id]
        except KeyError:
            known = ", ".join(sorted(self.workers)) or "none"
            raise ConfigError(f"{self.path} has no worker {id!r} (it has: {known})") from None


def load_config(path: str | Path | None = None) -> FederationConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no federation config at {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    federation = data.get("federation", {})
    _refuse(federation, NOT_IN_FEDERATION, f"{path} [federation]")
    entries: dict[str, dict[str, Any]] = {}
    for id, settings in data.get("workers", {}).items():
        address = settings.get("address") if isinstance(settings, dict) else None
        if not isinstance(address, str):
            raise ConfigError(f"{path}: worker {id!r} needs an address")
        _refuse(settings, NOT_IN_WORKER, f"{path} [workers.{id}]")
        if not isinstance(settings.get("host", ""), str):
            raise ConfigError(f"{path}: worker {id!r} has a host that is not a string")
        if "{runtime}" in address:
            address = address.replace("{runtime}", str(runtime_dir()))
        entry = dict(settings, address=address)
        script = settings.get("data")
        if script is not None:
            # Relative to the directory above configs/, where the Procfile runs.
            # Not checked here: only the worker's own host has it (`WorkerConfig.check_data`).
            script = str((path.resolve().parent.parent / script).resolve()) if not Path(script).is_absolute() else script
            entry["data"] = script
        entries[id] = entry
    key_file = Path(federation.get("key_file", f"~/.config/fedq/{path.stem}.key")).expanduser()
    # Only with `curve = true`: a curve_dir alone (say, left uncommented) encrypts nothing.
    curve_dir = Path(federation.get("curve_dir", f"~/.config/fedq/{path.stem}-curve")).expanduser() if federation.get("curve") else None
    shared = settings_from(
        dict(federation, curve_dir=str(curve_dir) if curve_dir else None, peers={id: e["address"] for id, e in entries.items()}),
        where=f"{path} [federation]",
    )
    workers = {
        id: WorkerConfig(id, entry["address"], settings_from(entry, base=shared, where=f"{path} [workers.{id}]"), entry.get("host"))
        for id, entry in entries.items()
    }
    return FederationConfig(path, key_file, workers, shared)


def _is_mine(address: str) -> bool:
    """Can this machine bind `address`? Only its own addresses can be bound (a UDP socket, port 0: nothing listens)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


def _refuse(table: dict[str, Any], keys: dict[str, str], where: str) -> None:
    for key, why in keys.items():
        if key in table:
            raise ConfigError(f"{where}: {key} {why}")
