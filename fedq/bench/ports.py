"""Loopback ports for the benchmark's tcp endpoints (it never listens anywhere else)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A 127.0.0.1 port nobody holds right now. Whoever binds it next may race another
    program for it; on a benchmark machine that is rare, and the bind then fails loudly."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
