"""Starting worker processes: the one place that knows the command line of a worker."""

from __future__ import annotations

import json
import subprocess
import sys


def start_worker_process(
    id: str, address: str, *, timeout: float = 30.0, verbose: bool = False, quiet: bool = False, data: str | None = None
) -> subprocess.Popen:
    """Start `fedq.worker` as a child process serving `id` on `address`.

    `data` is a data owner's script (see workers/) the worker runs before serving.
    The child watches a pipe from us and exits when it closes, so it dies with
    this process even when this process is SIGKILLed: no orphans.
    """
    settings = {"id": id, "address": address, "timeout": timeout, "watch_parent": True, "verbose": verbose, "quiet": quiet, "data": data}
    return subprocess.Popen([sys.executable, "-m", "fedq.worker", json.dumps(settings)], stdin=subprocess.PIPE)
