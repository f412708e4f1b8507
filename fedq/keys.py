"""Federation keys: where a process finds the key that signs its messages.

A federation shares one random key. Workers a script starts get the script's
key through their environment; a standing federation keeps it in a key file
(made on first use, readable only by its owner) or in FEDQ_KEY.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError
from .wire import new_key

KEY_ENV = "FEDQ_KEY"


def key_from_environment() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    if not value:
        return None
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        raise ConfigError(f"{KEY_ENV} must be hex (as `fedq keygen --print` writes it)") from None
    if len(key) < 16:
        raise ConfigError(f"{KEY_ENV} must hold at least 16 bytes")
    return key


def environment_with_key(key: bytes) -> dict[str, str]:
    """This process's environment plus the key, for a child worker (never argv: `ps` shows argv)."""
    return {**os.environ, KEY_ENV: key.hex()}


def read_key_file(path: Path, *, create: bool = True) -> bytes:
    """The key in `path`; with `create`, a new one is written there first if there is none.
    Workers of one federation may start at the same moment: the first to link its file wins."""
    path = path.expanduser()
    if not path.exists():
        if not create:
            raise ConfigError(f"no key file at {path}: start the federation's workers first (they make it), or run `fedq keygen`")
        write_key_file(path, new_key(), replace=False)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise ConfigError(f"key file {path} holds less than 16 bytes")
    return key


def write_key_file(path: Path, key: bytes, *, replace: bool = True) -> None:
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.close(fd)  # mkstemp made it 0600
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
