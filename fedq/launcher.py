"""Starting worker processes: the one place that knows the command line of a worker."""

from __future__ import annotations

import json
import subprocess
import sys

from .keys import environment_with_key


def start_worker_process(
    id: str,
    address: str,
    *,
    key: bytes,
    timeout: float = 30.0,
    verbose: bool = False,
    quiet: bool = False,
    data: str | None = None,
    allow_code: bool = False,
    max_store_bytes: int | None = None,
    max_message_bytes: int | None = None,
    curve_dir: str | None = None,
    peers: dict[str, str] | None = None,
    lease_seconds: float | None = None,
    incarnation: bytes | None = None,
    admin_key: bytes | None = None,
    max_memory_bytes: int | None = None,
    request_seconds: float | None = None,
    max_requests: int | None = None,
) -> subprocess.Popen:
    """Start `fedq.worker` as a child process serving `id` on `address`.

    The key, and the worker's `admin_key` (its owner's), travel in the child's environment,
    not its command line. `incarnation`, if given, is the one the worker serves under: the
    parent then seals its first request to it at once, with no hello. `allow_code`
    lets it run functions shipped inside messages (off by default: unpickling is code
    execution). `data` is a data owner's script (see workers/) the worker runs before serving.
    The child watches a pipe from us and exits when it closes, so it dies with
    this process even when this process is SIGKILLed: no orphans.
    """
    settings = {
        "id": id, "address": address, "timeout": timeout, "verbose": verbose, "quiet": quiet,
        "data": data, "allow_code": allow_code, "max_store_bytes": max_store_bytes,
    }
    if max_message_bytes is not None:
        settings["max_message_bytes"] = max_message_bytes
    if lease_seconds is not None:
        settings["lease_seconds"] = lease_seconds
    if max_memory_bytes is not None:
        settings["max_memory_bytes"] = max_memory_bytes
    if request_seconds is not None:
        settings["request_seconds"] = request_seconds
    if max_requests is not None:
        settings["max_requests"] = max_requests
    if curve_dir is not None:  # paths, not keys: the secret stays in its 600 file
        settings.update(curve_dir=curve_dir, peers=peers or {})
    elif peers:  # a federation's workers: the only ones it relays to
        settings["peers"] = peers
    if incarnation is not None:  # (no secret: every stamp to the worker carries it)
        settings["incarnation"] = incarnation.hex()
    return subprocess.Popen(
        [sys.executable, "-c", _BOOT, json.dumps(settings)], stdin=subprocess.PIPE, env=environment_with_key(key, admin_key)
    )


# Runs before anything is imported: from its first instant the child exits when our pipe
# closes (EOF), even while torch is still importing (a second or two): no orphan, ever.
# The watcher reads the raw descriptor, never sys.stdin: a daemon thread blocked inside a
# buffered reader holds its lock, and the interpreter aborts at exit ("_enter_buffered_busy").
_BOOT = """\
import os, threading
def _watch_parent():
    while os.read(0, 65536):
        pass
    os._exit(0)
threading.Thread(target=_watch_parent, name="fedq-parent-watch", daemon=True).start()
from fedq.worker import main
main()
"""
