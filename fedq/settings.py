"""Every setting of a worker, with its default and its meaning, written once.

`WorkerSettings` is the table. A field's name is the `VirtualWorker(...)` keyword, the config
key (`[federation]` for every worker, `[workers.NAME]` for one) and, with dashes, the
`fedq worker` option where there is one. Each source builds one `WorkerSettings` with
`settings_from` (the CLI over the config over these defaults); the launcher hands it to the
worker process as one JSON argument and `Worker` takes it as one parameter. The README's table
of settings is `settings_table()` (tests/test_settings.py keeps them equal). Add a setting here,
nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError


def _half_of_this_machine() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # (not a POSIX system that says)
        return None


def _setting(default: Any, meaning: str, *, shown: str | None = None) -> Any:
    """A field of the table: its default, its meaning (one line: the README's and the CLI's
    help), and how the README shows a default that is not a plain value."""
    return field(default=default, metadata={"meaning": meaning, "shown": shown})


@dataclass(frozen=True)
class WorkerSettings:
    """One worker's settings. None, where a setting allows it, means "no limit" or "none"."""

    timeout: float = _setting(
        30.0, "seconds a call waits for an answer before failing with an error that names the silent worker: a worker's "
        "relay to the next hop of a chain; a client's calls, unless FEDQ_TIMEOUT (its VirtualWorkers take the client's)",
    )  # fmt: skip
    allow_code: bool = _setting(
        False, "run functions shipped inside messages; unpickling code is code execution: only for a federation you trust",
    )  # fmt: skip
    max_store_bytes: int | None = _setting(
        None, "tensor bytes the store may hold (each storage counted once); past it the op or store fails (StoreFullError); None: no cap",
    )  # fmt: skip
    max_message_bytes: int = _setting(
        1 << 30, "bytes one message to the worker may have; a larger one is refused unread", shown="1 GiB",
    )  # fmt: skip
    # Clients renew an idle lease every third of it (client.py), so a live client never lapses.
    lease_seconds: float = _setting(
        60.0, "seconds a client's references outlive its last message (or heartbeat); then what only it held is freed",
    )  # fmt: skip
    # A worker a script spawns gets a fresh admin key from that script (its owner) instead.
    admin_key_file: str | None = _setting(
        None, "the file (mode 600) with a standing worker's admin key, its data owner's (`fedq keygen` makes it); "
        "None: beside the federation's key file (local.key -> local.admin.key)",
    )  # fmt: skip
    # RLIMIT_DATA: virtual, not resident (an idle worker maps ~300 MB, plus 8 MiB per thread). Past
    # it an allocation fails (an op's huge temporary is an error to its caller, not the OOM
    # killer), and a peer that floods a socket is dropped or stops the worker, never the host.
    max_memory_bytes: int | None = _setting(
        _half_of_this_machine(), "bytes of memory the worker process may map for data; None (a machine that does not "
        "say its size): no cap", shown="half this machine's memory",
    )  # fmt: skip
    # Fresh pages cost a fault each (~1.6 µs per 4 KiB here, more on a busy VM): issue 17's
    # workload C received, copied and freed 46 MB tensors every round, each time in fresh pages.
    # Not for a standing worker by default: a key holder freeing growing temporaries under small
    # tensors leaves holes in the heap that the memory cap (address space) counts
    # (tests/test_redteam_heap.py). A script's own workers keep SPAWNED_RETAINED_FREE_BYTES.
    retained_free_bytes: int = _setting(
        0, "freed memory the worker keeps for its next tensors and messages instead of handing it back to the "
        "system until it idles (glibc's malloc: no mmap for large blocks, trim past this): a large transfer reuses "
        "pages rather than faulting in fresh ones, but a key holder's allocations can leave holes that "
        "max_memory_bytes counts; 0: glibc's defaults (a script's own VirtualWorkers, reachable only by its user: 1 GiB)",
    )  # fmt: skip
    request_seconds: float = _setting(
        86400.0, "seconds a request for a private object (`x.request(reason=...)`) lives after it was filed, "
        "whatever its state (requests.py)", shown="86400 (a day)",
    )  # fmt: skip
    max_requests: int = _setting(16, "requests one client may have pending on a worker at once")
    # A triple's m * k * n is CPU from one small message; its pads, split among the parties, are memory.
    max_triple_work: int = _setting(
        1 << 26, "multiply-adds one Beaver triple may cost its crypto provider (m * k * n for a matmul, elements for a "
        "product or comparison); past it MakeTriples is refused (RequestTooLargeError), as are pads whose bytes times "
        "the parties pass max_message_bytes", shown="2^26",
    )  # fmt: skip
    # OpenDP's exact sampler takes ~12 µs an element here, on the worker's one loop thread.
    max_noised_elements: int = _setting(
        1 << 21, "elements one sharing of a noising owner's data may hold (each gets OpenDP's exact Laplace noise, "
        "~12 µs apiece: 2^21 is ~25 s of the worker's time); past it ShareObject is refused (RequestTooLargeError)",
        shown="2^21",
    )  # fmt: skip
    data: str | None = _setting(None, "a data owner's script (see workers/) the worker runs before serving, to load its data")
    curve_dir: str | None = _setting(
        None, "a directory of CURVE keys: the worker's socket is encrypted and accepts only the public keys there",
    )  # fmt: skip
    bind: str | None = _setting(
        None, "the endpoint the worker listens on, if not its `address` (`tcp://0.0.0.0:5601`: every interface, behind NAT, "
        "a host name): others reach it, and find its CURVE key, by `address`",
    )  # fmt: skip
    insecure_plaintext: bool = _setting(
        False, "listen on a tcp address other than loopback without CURVE (logged as a warning at start): the signature "
        "alone leaves every link readable, and anyone who reaches the port can make the worker buffer unbounded memory",
    )  # fmt: skip
    peers: Mapping[str, str] | None = _setting(
        None, "{id: address} of the federation's workers (a config's): the only ones it relays to; None: any",
    )  # fmt: skip
    # Threads past the cores a worker gets only take turns (and spin): 9 workers with torch's
    # default on 2 cores burned 10x the CPU of one thread each (issue 17).
    threads: int | None = _setting(
        None, "torch's intra-op and inter-op threads in the worker; None: this machine's cores divided among the "
        "workers started with it (a script's running workers, `fedq up`'s, a config's), at least 1; a script's "
        "earlier workers are lowered to it as more start",
    )  # fmt: skip
    verbose: bool = _setting(False, "log every message handled")
    quiet: bool = _setting(False, "log only warnings and errors")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON's): how the launcher hands the settings to a worker process."""
        return {f.name: dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "WorkerSettings":
        return cls(**values)


DEFAULTS = WorkerSettings()
#: `retained_free_bytes` of a worker a script spawns (`VirtualWorker`) unless it says otherwise:
#: it serves on ipc in a directory only this user can read, so every key holder that reaches it
#: is the user whose script started it, and holes its own allocations leave cost only itself
SPAWNED_RETAINED_FREE_BYTES = 1 << 30


def _kind(name: str) -> type | None:
    """The plain type a setting's values are converted to (None: taken as they are)."""
    hint = _HINTS[name]
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    return kinds[0] if kinds[0] in (bool, int, float, str) else None


_HINTS = typing.get_type_hints(WorkerSettings)


def settings_from(
    mapping: Mapping[str, Any], *, base: WorkerSettings = DEFAULTS, where: str = "settings", strict: bool = False
) -> WorkerSettings:
    """`base` with the settings `mapping` names (a config table, CLI options, keywords) laid over it.

    A value of None is not given (`base` keeps its own). A key that is not a setting is ignored
    (a config's `key_file`, say), or with `strict` (keywords) a TypeError; a value of the wrong
    kind is a ConfigError."""
    values: dict[str, Any] = {}
    for name, value in mapping.items():
        if name not in _HINTS:
            if strict:
                raise TypeError(f"{where}: {name!r} is not a worker setting (settings.WorkerSettings has them all)")
            continue
        if value is None:
            continue
        kind = _kind(name)
        try:
            values[name] = kind(value) if kind is not None and not isinstance(value, bool) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} = {value!r} is not a {kind.__name__}") from None
    return dataclasses.replace(base, **values) if values else base


def _shown(setting: dataclasses.Field) -> str:
    if setting.metadata["shown"] is not None:
        return setting.metadata["shown"]
    default = setting.default
    return f"`{default:g}`" if isinstance(default, float) else f"`{default!r}`"


def default_text(name: str) -> str:
    """A setting's default as the README and `--help` show it."""
    return _shown(_FIELDS[name]).replace("`", "")


def meaning(name: str) -> str:
    """A setting's one-line meaning (the README's and `--help`'s)."""
    return _FIELDS[name].metadata["meaning"]


_FIELDS = {f.name: f for f in dataclasses.fields(WorkerSettings)}


def settings_table() -> str:
    """The README's table of settings (a test checks the README has it as it is here)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {_shown(f)} | {f.metadata['meaning']} |" for f in _FIELDS.values()]
    return "\n".join(rows)
