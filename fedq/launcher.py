"""Starting worker processes: the one place that knows the command line of a worker, and how
many threads it gets.

A worker is `python -c _BOOT settings`: forked from this process's zygote (zygote.py: torch
already imported, a fraction of a second, its pages shared) where the platform has one, else
a fresh interpreter (a second or two). Either way the child is the same program, with the same
lifeline, environment and exit codes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import weakref
from typing import Any

from . import zygote
from .keys import ADMIN_KEY_ENV, KEY_ENV, environment_with_key
from .settings import DEFAULTS, WorkerSettings, settings_from

log = logging.getLogger(__name__)

#: what the zygote imports once for every worker it forks (set_forkserver_preload's list): the
#: worker, and OpenDP, which a worker imports only at its first release (dp.py), ~0.3 s each
PRELOAD = ("fedq.worker", "opendp.prelude")
#: "0": start every worker as a fresh interpreter, never from a zygote
ZYGOTE_ENV = "FEDQ_ZYGOTE"
#: what a worker's environment has unless ours says otherwise. OpenMP's threads (torch's intra-op)
#: spin after every parallel op by default, waiting for the next: a worker idles between messages,
#: and on a shared machine the spinning took the cores its peers and the client needed (issue 17's
#: workload B: the first of 9 workers, given 2 threads, burned 5-8x the CPU of each other one).
#: Read when OpenMP loads: in the zygote (its forks inherit it) and in a fresh interpreter.
WORKER_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def machine_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_budget(together: int, cores: int | None = None) -> int:
    """The default `threads` of each of `together` workers started on one machine: its cores
    divided among them, at least 1 (Ray's way with its actors): more would only take turns."""
    return max(1, (cores or machine_cores()) // max(1, together))


# Workers this process started and has not seen exit: how many run "together" with the next one.
_started: "weakref.WeakSet[Any]" = weakref.WeakSet()
_zygote: zygote.Zygote | None = None
_zygote_lock = threading.Lock()


def running_workers() -> int:
    """How many of the workers this process started are still running."""
    return sum(1 for process in list(_started) if process.poll() is None)


def zygote_pid() -> int | None:
    """The pid of this process's zygote, if it has one running."""
    z = _zygote
    return z.process.pid if z is not None and z.alive() else None


def stop_zygote(timeout: float = 5.0) -> None:
    """Stop this process's zygote (workers it forked die with it); the next start makes a new one."""
    global _zygote
    with _zygote_lock:
        old, _zygote = _zygote, None
    if old is not None and old.owner == os.getpid():
        old.close(timeout)


def _the_zygote() -> zygote.Zygote | None:
    """This process's zygote, started on first use (again if it died, or in a fork of us); None
    where there can be none."""
    global _zygote
    if not zygote.available() or os.environ.get(ZYGOTE_ENV, "1") == "0":
        return None
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            # No key in its environment: each fork gets its own, with its request.
            env = {**WORKER_ENV_DEFAULTS, **{name: value for name, value in os.environ.items() if name not in (KEY_ENV, ADMIN_KEY_ENV)}}
            _zygote = zygote.Zygote(PRELOAD, env)
        return _zygote


def start_worker_process(
    id: str,
    address: str,
    *,
    key: bytes,
    settings: WorkerSettings = DEFAULTS,
    incarnation: bytes | None = None,
    admin_key: bytes | None = None,
    together: int | None = None,
    fork: bool | None = None,
    **keywords: Any,
) -> subprocess.Popen | zygote.ForkedProcess:
    """Start `fedq.worker` as a child process serving `id` on `address`, with `settings`
    (`keywords`, the names of `WorkerSettings`' fields, are laid over them: `timeout=1.0`).

    The settings travel as one JSON argument; the key, and the worker's `admin_key` (its
    owner's), in the child's environment, not its command line (curve_dir is a path: the
    secret stays in its 600 file). `incarnation`, if given, is the one the worker serves
    under: the parent then seals its first request to it at once, with no hello.
    The child watches a pipe from us and exits when it closes, so it dies with
    this process even when this process is SIGKILLed: no orphans.

    `threads`, unless the settings say, is `thread_budget(together)`: `together` the workers
    started with this one (`fedq up`'s), by default those this process runs, this one included.
    `fork` (default: where the platform allows, unless FEDQ_ZYGOTE=0) forks it from this process's
    zygote; the answer is then a `zygote.ForkedProcess`, which does what callers ask of a Popen.
    """
    settings = settings_from(keywords, base=settings, where="start_worker_process", strict=True)
    if settings.threads is None:
        settings = dataclasses.replace(settings, threads=thread_budget(together or running_workers() + 1))
    boot: dict[str, Any] = {"id": id, "address": address, "settings": settings.to_dict()}
    if incarnation is not None:  # (no secret: every stamp to the worker carries it)
        boot["incarnation"] = incarnation.hex()
    argv, env = [json.dumps(boot)], {**WORKER_ENV_DEFAULTS, **environment_with_key(key, admin_key)}

    def fresh_interpreter() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _BOOT, *argv], stdin=subprocess.PIPE, env=env)

    factory = _the_zygote() if fork is not False else None
    process: Any = None
    if factory is not None:
        lifeline_r, lifeline_w = os.pipe()  # (both O_CLOEXEC: no other child of ours holds the write end)
        try:
            seq = factory.fork(_BOOT, argv, env, (lifeline_r, 1, 2))
            process = zygote.ForkedProcess(factory, seq, os.fdopen(lifeline_w, "wb", buffering=0), fresh_interpreter, [sys.executable, "-c", "..."])
        except zygote.ZygoteGone as why:
            os.close(lifeline_w)
            log.warning("starting worker %s the slow way (python -c): %s", id, why)
        finally:
            os.close(lifeline_r)  # (the zygote has its own copy, sent with the request)
    if process is None:
        process = fresh_interpreter()
    _started.add(process)
    return process


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
