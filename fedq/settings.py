"""A worker's safety settings, with their defaults, written once.

The CLI (`fedq worker`, `fedq up`), the config files (`[federation]`) and
`VirtualWorker(...)` all read this table; so does the worker process itself. Each
setting is a field of `Limits`: its name is the keyword, the config key and (with
dashes) the command-line option. Add a safety setting here, nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError


def _half_of_this_machine() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # (not a POSIX system that says)
        return None


@dataclass(frozen=True)
class Limits:
    #: seconds a client's references outlive its last message (or heartbeat); then the worker
    #: frees what only that client held. Clients renew idle leases every third of this.
    lease_seconds: float = 60.0
    #: the file (mode 600) holding a standing worker's admin key, its data owner's: requests
    #: signed with it (clearing, stopping, policy) are the owner's. Read by the worker and by
    #: the CLI on its host; made by `fedq keygen` or the worker's first start. None: next to
    #: the federation's key file (local.key -> local.admin.key). A worker a script spawns gets
    #: a fresh admin key from that script instead (its owner).
    admin_key_file: str | None = None
    #: bytes of memory the worker process may map for its data (RLIMIT_DATA: virtual, not
    #: resident; an idle worker maps ~300 MB, plus 8 MiB per thread). Past it an allocation
    #: fails (an op's huge temporary is an error to its caller, not the OOM killer), and a
    #: peer that floods a socket is dropped or stops the worker, never the host. None (asked of
    #: the table, not a keyword): no cap. By default half of this machine's memory.
    max_memory_bytes: int | None = _half_of_this_machine()
    #: seconds a request for a private object (`x.request(reason=...)`) lives after it was filed,
    #: whatever its state: pending, approved and not fetched yet, denied, or released (requests.py)
    request_seconds: float = 86400.0
    #: requests one client may have pending on a worker at once (the owner decides the rest first)
    max_requests: int = 16


DEFAULTS = Limits()


def limits_from(mapping: Mapping[str, Any], *, where: str = "settings") -> Limits:
    """The `Limits` named in `mapping` (a config's [federation] table, CLI options, keywords);
    a key that is not a setting here is ignored, a value of the wrong kind is a ConfigError."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Limits):
        value = mapping.get(field.name)
        if value is None:
            continue
        default = getattr(DEFAULTS, field.name)
        kind = type(default) if default is not None else None
        try:
            values[field.name] = kind(value) if kind is not None and not isinstance(value, bool) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {field.name} = {value!r} is not a {kind.__name__}") from None
    return Limits(**values)
