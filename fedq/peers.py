"""What a client knows of each worker it talks to, by address: its name, the process if we
started it (and why it died), which life of it we talk to (its incarnation), its admin key if we
are its owner, the lease our references have there, and the heartbeat's decisions: which
workers need a Renew (leases.py) and which, gone quiet, a hello to learn whether they restarted.
Sends nothing itself: the client packs and sends what these decisions name. And stopping the
worker processes we started (`stop_processes`, also the CLI's)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import time
from typing import Any, Callable, Iterable

from .errors import ConfigError
from .leases import lease_told
from .messages import NO_INCARNATION, wire_name
from .settings import DEFAULTS

log = logging.getLogger("fedq.client")  # (a restart is the client's news: its logger, as before)

#: seconds a worker we wait on may answer nothing before we ask who it is now (a hello): one
#: that restarted drops what is sealed to its old incarnation, and we say so instead of timing out
RESTART_PROBE_SECONDS = 1.0


class Peers:
    """The workers one client has met, by address. `hello(address, timeout)`: ask the worker at
    `address` who it is and wait for the answer (which tells its incarnation: `learn_incarnation`)."""

    def __init__(self, hello: Callable[[str, float | None], Any]) -> None:
        self._hello = hello
        self.names: dict[str, str] = {}  # address -> id, of every worker this client has met
        self.children: dict[str, subprocess.Popen] = {}  # workers this process started, by address
        self.dead: dict[str, str] = {}  # address -> why
        # Which life of each worker we talk to (what we seal to): chosen by us for a worker we
        # spawn, else learned from its answers (a hello first) or from pointers that name it.
        self.incarnations: dict[str, bytes] = {}  # address -> incarnation
        self.restarted: dict[str, str] = {}  # address -> what to tell a user of its old objects
        self._stalled_since: dict[str, float] = {}  # address -> since when we wait on it and hear nothing
        self._probing: set[str] = set()  # addresses a hello was sent to because they went quiet
        self._admin_keys: dict[str, bytes] = {}  # address -> that worker's admin key, if we are its owner
        # Our references at a worker are a lease (leases.py): renewed by what we send there, or
        # by a Renew when we sent nothing for a third of it. Each worker tells its lease.
        self._leases: dict[str, float] = {}  # address -> lease seconds
        self._renewing: dict[str, int] = {}  # address -> seq of the last Renew sent there
        # A federation config's `timeout` for the workers it names (connect(config=...)), unless
        # FEDQ_TIMEOUT is set; other workers take the client's.
        self.timeouts: dict[str, float] = {}  # address -> seconds a call there waits

    def knows_workers(self) -> bool:
        return bool(self.names)

    def register(
        self, address: str, id: str, process: subprocess.Popen | None = None, *, incarnation: bytes | None = None, admin_key: bytes | None = None
    ) -> None:
        """Know the worker at `address` as `id` (again: under a new name): the `process` and
        `incarnation` we started it with, and its `admin_key` if we are its owner."""
        self.names[address] = id
        if process is not None:
            self.children[address] = process
        if incarnation is not None:
            self.incarnations[address] = incarnation
        if admin_key is not None:
            self.use_admin_key(address, admin_key)

    def name_of(self, address: str) -> str:
        return self.names.get(address, address)

    # ---- owners
    def is_owner_of(self, address: str) -> bool:
        """Do we hold the admin key of the worker at `address` (we started it, or were given it)?"""
        return address in self._admin_keys

    def use_admin_key(self, address: str, admin_key: bytes) -> None:
        """Sign the owner's actions (`Request.owner_action`) to the worker at `address` with its admin key."""
        if len(admin_key) < 16:
            raise ConfigError("an admin key must hold at least 16 bytes")
        self._admin_keys[address] = admin_key

    def admin_key_of(self, address: str) -> bytes | None:
        return self._admin_keys.get(address)

    # ---- incarnations
    def incarnation_of(self, address: str, timeout: float | None = None) -> bytes:
        """The incarnation of the worker at `address` (what our messages to it are sealed to):
        known if we spawned it, met it or hold a pointer naming it; else asked, once (a hello)."""
        known = self.incarnations.get(address)
        if known is None:
            self._hello(address, timeout)
            known = self.incarnations[address]  # (learned from the answer's stamp before it finished)
        return known

    def holder_name_of(self, id: str, address: str) -> str:
        """How a message names the worker `id` at `address` as a holder (its session is its incarnation)."""
        return wire_name(id, self.incarnation_of(address))

    def learn_incarnation(self, address: str, incarnation: bytes) -> bool:
        """The worker at `address` answers as `incarnation` now; True if it had another before
        (it restarted: what it held is gone)."""
        before = self.incarnations.get(address)
        self.incarnations[address] = incarnation
        if before is None:
            return False
        self.restarted[address] = (
            f"worker {self.name_of(address)!r} at {address} restarted (new incarnation): the objects it held are gone, "
            "and pointers to them no longer work; send the data again"
        )
        log.warning("%s", self.restarted[address])
        return True

    def learn_from_pointers(self, specs: Iterable[Any]) -> None:
        """Pointers to other workers name their incarnation: no hello needed there."""
        for spec in specs:
            if spec.incarnation != NO_INCARNATION:
                self.incarnations.setdefault(spec.address, spec.incarnation)

    # ---- processes we started
    def poll_children(self) -> None:
        for address, process in list(self.children.items()):
            code = process.poll()
            if code is not None and address not in self.dead:
                self.dead[address] = f"worker {self.name_of(address)!r} (pid {process.pid}) exited with code {code}"

    def stop_children(self, timeout: float) -> None:
        """Stop the workers this process started (`stop_processes`) and remove the private
        directory each one's ipc socket lived in."""
        stop_processes(list(self.children.values()), timeout)
        for address in self.children:
            if address.startswith("ipc://"):
                shutil.rmtree(os.path.dirname(address[len("ipc://"):]), ignore_errors=True)

    # ---- the heartbeat (where the sockets are driven)
    def lease_at(self, address: str, seconds: float) -> None:
        """The worker at `address` keeps a silent holder's references `seconds` (we started it)."""
        self._leases[address] = float(seconds)

    def learn_lease(self, address: str, seq: int, answer: Any) -> None:
        """An answer nothing waited on: if it is the last Renew's there, it tells the lease."""
        if self._renewing.get(address) == seq:
            lease = lease_told(answer)
            if lease is not None:
                self._leases[address] = lease

    def to_renew(self, sent_at: dict[str, float]) -> list[str]:
        """Each worker we know (we may hold references there) that we sent nothing for a third
        of its lease: a Renew keeps our references there through a quiet spell, never our death."""
        now = time.monotonic()
        due = []
        for address in list(self.names):
            if address in self.dead or address not in self.incarnations:  # (not met yet: its hello comes first)
                continue
            lease = self._leases.get(address)
            if lease is None and address not in self._renewing:
                pass  # the first: its answer tells the lease there
            elif now - sent_at.get(address, -math.inf) < (lease or DEFAULTS.lease_seconds) / 3:
                continue
            due.append(address)
        return due

    def renewing(self, address: str, seq: int) -> None:
        """A Renew goes to `address` as `seq` (its answer tells the lease: `learn_lease`)."""
        self._renewing[address] = seq

    def to_probe(self, waited_on: Iterable[str]) -> list[str]:
        """Each worker (not one we spawned: it cannot restart) that we wait on and that answered
        nothing for RESTART_PROBE_SECONDS, not asked yet: a hello's answer names its incarnation."""
        now = time.monotonic()
        waited_on = [a for a in waited_on if a not in self.children and a in self.incarnations]
        for address in [a for a in self._stalled_since if a not in waited_on]:  # answered, or given up on
            del self._stalled_since[address]
            self._probing.discard(address)
        due = []
        for address in waited_on:
            since = self._stalled_since.setdefault(address, now)
            if now - since >= RESTART_PROBE_SECONDS and address not in self._probing:
                self._probing.add(address)
                due.append(address)
        return due

    def heard_from(self, address: str) -> None:
        self._stalled_since.pop(address, None)
        self._probing.discard(address)


def stop_processes(processes: list[subprocess.Popen], timeout: float) -> None:
    """Close each parent pipe (a worker watching it exits by itself), then SIGTERM what is
    still running halfway through `timeout`, then SIGKILL what is left at the end."""
    for process in processes:
        try:
            if process.stdin:
                process.stdin.close()
        except OSError:
            pass
    _wait_all(processes, timeout / 2)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    if not _wait_all(processes, timeout / 2):
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_all(processes: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True
