"""Child processes of the benchmark never outlive it, even when it is SIGKILLed."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """In a child: exit as soon as `parent` (the pid that started us, passed in by it, since
    by the time we run it may already be gone and we re-parented) is no longer our parent.
    A daemon thread, so it works while the main thread is blocked in zmq or torch rpc."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)  # no cleanup to wait for: whoever we served is gone

    threading.Thread(target=watch, name="bench-lifeline", daemon=True).start()
