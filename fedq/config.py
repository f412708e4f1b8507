"""Federation configs: which workers exist and where they listen (TOML).

    [federation]
    timeout = 30                      # seconds any call waits before naming the silent worker
    key_file = "~/.config/fedq/local.key"  # the federation's signing key; made on first use

    [workers.bob]
    address = "ipc://{runtime}/bob.sock"   # or "tcp://127.0.0.1:5601"
    data = "workers/housing.py"            # optional: the data owner's startup script

`{runtime}` expands to a directory only this user can read. The same file
drives the Procfile (`fedq worker NAME --config ...`), `fedq up`, and
`fedq.connect(hook, NAME, config=...)`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .keys import key_from_environment, read_key_file
from .settings import DEFAULTS, Limits, limits_from
from .transport import runtime_dir

DEFAULT_CONFIG = Path("configs/local.toml")


@dataclass(frozen=True)
class WorkerConfig:
    id: str
    address: str
    data: str | None = None  # a data owner's script (workers/...), run by the worker at startup


@dataclass(frozen=True)
class FederationConfig:
    path: Path
    timeout: float
    key_file: Path
    workers: dict[str, WorkerConfig] = field(default_factory=dict)
    max_store_bytes: int | None = None
    allow_code: bool = False
    curve_dir: Path | None = None  # set: every socket is CURVE-encrypted with the keys there
    limits: Limits = DEFAULTS  # the safety settings of [federation] (settings.py), e.g. lease_seconds

    def peers(self) -> dict[str, str]:
        return {id: w.address for id, w in self.workers.items()}

    def key(self, *, create: bool = True) -> bytes:
        """The federation's signing key: FEDQ_KEY if set, else the key file. Workers make a
        missing one (`create`); a client must not: a new key would match no running worker."""
        return key_from_environment() or read_key_file(self.key_file, create=create)

    @property
    def admin_key_file(self) -> Path:
        """Where the workers' admin key (their owner's) is kept: `admin_key_file`, else next to the key file."""
        if self.limits.admin_key_file:
            return Path(self.limits.admin_key_file).expanduser()
        return self.key_file.with_name(self.key_file.stem + ".admin" + self.key_file.suffix)

    def admin_key(self, *, create: bool = True) -> bytes:
        """The owner's admin key of this federation's standing workers. A worker makes a missing
        one (`create`); the CLI on the worker's host reads it."""
        return read_key_file(self.admin_key_file, create=create, what="admin key")

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
    workers = {}
    for id, settings in data.get("workers", {}).items():
        address = settings.get("address") if isinstance(settings, dict) else None
        if not isinstance(address, str):
            raise ConfigError(f"{path}: worker {id!r} needs an address")
        if "{runtime}" in address:
            address = address.replace("{runtime}", str(runtime_dir()))
        data = settings.get("data")
        if data is not None:
            # Relative to the directory above configs/, where the Procfile runs.
            data = str((path.resolve().parent.parent / data).resolve()) if not Path(data).is_absolute() else data
            if not Path(data).exists():
                raise ConfigError(f"{path}: worker {id!r} has data = {settings['data']!r}, which does not exist")
        workers[id] = WorkerConfig(id, address, data)
    key_file = Path(federation.get("key_file", f"~/.config/fedq/{path.stem}.key")).expanduser()
    max_store = federation.get("max_store_bytes")
    curve_dir = Path(federation.get("curve_dir", f"~/.config/fedq/{path.stem}-curve")).expanduser() if federation.get("curve") else None
    return FederationConfig(
        path, float(federation.get("timeout", 30)), key_file, workers,
        int(max_store) if max_store is not None else None, bool(federation.get("allow_code", False)), curve_dir,
        limits_from(federation, where=f"{path} [federation]"),
    )
