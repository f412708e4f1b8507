"""Starting worker processes: the one place that knows the command line of a worker."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .keys import environment_with_key
from .settings import DEFAULTS, WorkerSettings, settings_from


def start_worker_process(
    id: str,
    address: str,
    *,
    key: bytes,
    settings: WorkerSettings = DEFAULTS,
    incarnation: bytes | None = None,
    admin_key: bytes | None = None,
    **keywords: Any,
) -> subprocess.Popen:
    """Start `fedq.worker` as a child process serving `id` on `address`, with `settings`
    (`keywords`, the names of `WorkerSettings`' fields, are laid over them: `timeout=1.0`).

    The settings travel as one JSON argument; the key, and the worker's `admin_key` (its
    owner's), in the child's environment, not its command line (curve_dir is a path: the
    secret stays in its 600 file). `incarnation`, if given, is the one the worker serves
    under: the parent then seals its first request to it at once, with no hello.
    The child watches a pipe from us and exits when it closes, so it dies with
    this process even when this process is SIGKILLed: no orphans.
    """
    settings = settings_from(keywords, base=settings, where="start_worker_process", strict=True)
    boot: dict[str, Any] = {"id": id, "address": address, "settings": settings.to_dict()}
    if incarnation is not None:  # (no secret: every stamp to the worker carries it)
        boot["incarnation"] = incarnation.hex()
    return subprocess.Popen(
        [sys.executable, "-c", _BOOT, json.dumps(boot)], stdin=subprocess.PIPE, env=environment_with_key(key, admin_key)
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
