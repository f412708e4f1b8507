"""Federation keys: where a process finds the key that signs its messages.

A federation shares one random key. Workers a script starts get the script's
key through their environment; a standing federation keeps it in a key file
(made by `fedq keygen`, readable only by its owner, copied to each host) or in
FEDQ_KEY. A standing worker never makes one: a key of its own would match no
other party's, and every call to it would just time out.

Each worker also has an admin key, its data owner's: requests signed with it
(clearing, stopping, policy) are the owner's. A worker a script starts gets a
fresh one from that script (its owner) through FEDQ_ADMIN_KEY; a standing
worker reads its config's admin key file, as does the CLI on the worker's host.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .codec import new_key
from .errors import ConfigError

KEY_ENV = "FEDQ_KEY"
ADMIN_KEY_ENV = "FEDQ_ADMIN_KEY"


def key_from_environment(name: str = KEY_ENV) -> bytes | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be hex (as `fedq keygen --print` writes it)") from None
    if len(key) < 16:
        raise ConfigError(f"{name} must hold at least 16 bytes")
    return key


def admin_key_from_environment() -> bytes | None:
    """The admin key a parent gave this worker process (FEDQ_ADMIN_KEY), if any."""
    return key_from_environment(ADMIN_KEY_ENV)


def environment_with_key(key: bytes, admin_key: bytes | None = None) -> dict[str, str]:
    """This process's environment plus the key (and the worker's admin key), for a child worker
    (never argv: `ps` shows argv). An admin key of our own is never passed on unasked."""
    environment = {name: value for name, value in os.environ.items() if name != ADMIN_KEY_ENV}
    environment[KEY_ENV] = key.hex()
    if admin_key is not None:
        environment[ADMIN_KEY_ENV] = admin_key.hex()
    return environment


def read_key_file(path: Path, *, create: bool = True, what: str = "key", missing: str | None = None) -> bytes:
    """The key in `path`; with `create`, a new one is written there first if there is none.
    Workers of one federation may start at the same moment: the first to link its file wins.
    `missing`: what to do about a missing file, said in the error (without `create`)."""
    path = path.expanduser()
    if not path.exists():
        if not create:
            raise ConfigError(f"no {what} file at {path}: " + (missing or "start the federation's workers first (they make it), or run `fedq keygen`"))
        write_key_file(path, new_key(), replace=False)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{what} file {path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"{what} file {path} is not hex (as `fedq keygen` writes it)") from None
    if len(key) < 16:
        raise ConfigError(f"{what} file {path} holds less than 16 bytes")
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


def write_curve_pairs(directory: Path, names: list[str]) -> None:
    """A CURVE key pair for each of `names` in `directory` (mode 700), as `fedq keygen --curve`
    writes them: `NAME.key` (public) and `NAME.key_secret` (mode 600)."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in names:
        _, secret = zmq.auth.create_certificates(str(directory), name)
        os.chmod(secret, 0o600)
