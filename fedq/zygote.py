"""A fork server ("zygote"): one process per client that has imported torch and fedq once, and
forks each worker from there, so a worker starts in milliseconds instead of importing torch
(a second or two), and the workers share the zygote's pages (torch's, and Python's objects,
frozen out of the collector's reach: `gc.freeze`) until they write them.

What a fork copies, it copies exactly, so the zygote holds nothing a worker must not inherit:
no threads (a fork keeps only the forking one, and any lock another held stays locked; the
zygote checks it has one before each fork and refuses otherwise), no sockets (it never opens
one but its control socket, which a worker closes first), no keys (they come with each
request, over a private socket pair, into that worker's environment: never its argv).

What a worker is to run is a launcher's business (launcher.py): the zygote runs `source` with
`argv` the way `python -c source argv...` would, after the same preloads, with the fds the
request carries as its stdin/stdout/stderr: stdin is the worker's lifeline, a pipe only the
client holds open, so a worker dies with its client even on SIGKILL, as a `python -c` child
does. The zygote itself exits when its own stdin (a pipe from the client) closes, and its
workers are told to die with it (PR_SET_PDEATHSIG): none outlives the client.

Linux only (pidfds, PR_SET_PDEATHSIG); elsewhere the launcher starts `python -c` children.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

#: the most a request or reply may be (an environment, a boot record): one datagram
_MAX_MESSAGE = 1 << 20
#: how long a worker's start waits for the zygote (its first one: the zygote's imports, under load)
START_TIMEOUT = 120.0
_PR_SET_PDEATHSIG = 1


def available() -> bool:
    """Can this platform run a zygote (fork, pidfds, a parent-death signal)?"""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


class ZygoteGone(RuntimeError):
    """The zygote exited or refused a fork: the caller starts the worker another way."""


class Zygote:
    """The client's side of one zygote process: asks it to fork, and learns each fork's pid and exit code."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # One BLAS thread, or OpenBLAS (numpy's, which torch imports) starts a pool at import and
        # the zygote could never fork safely. A worker's own threads are torch's (`threads`).
        env = {**env, "OPENBLAS_NUM_THREADS": "1"}
        # stdin: the zygote exits at EOF, when this process dies however it dies.
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE_BOOT, str(theirs.fileno()), __file__, *preload], stdin=subprocess.PIPE,
            pass_fds=(theirs.fileno(),), env=env,
        )
        theirs.close()
        self.owner = os.getpid()
        self._sock = ours
        self._lock = threading.RLock()
        self._seq = 0
        self._forked: dict[int, tuple[int, int] | str] = {}  # seq -> (pid, pidfd), or why it failed
        self._exits: dict[int, int] = {}  # pid -> exit code (as Popen's returncode)
        self.gone = False

    def alive(self) -> bool:
        return not self.gone and self.owner == os.getpid() and self.process.poll() is None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the zygote (its workers die with it) and wait up to `timeout` for it to exit."""
        with self._lock:
            self._read(0.0)  # (exit codes already said are kept)
            self.gone = True
            self._sock.close()
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def fork(self, source: str, argv: list[str], env: dict[str, str], fds: tuple[int, int, int]) -> int:
        """Ask for a fork that runs `source` with `argv`, `env` and `fds` as its stdin, stdout and
        stderr; its number (`pid_of` tells its pid once the zygote answers). Does not wait."""
        request = json.dumps({"source": source, "argv": argv, "env": env}).encode()
        with self._lock:
            while True:  # (never blocked in a send: a zygote blocked on its answers to us would never read)
                try:
                    socket.send_fds(self._sock, [request], list(fds), socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    select.select([self._sock], [self._sock], [], 1.0)
                    self._read(0.0)
                except OSError as error:
                    if error.errno != errno.EMSGSIZE:  # (one request too large: the zygote is fine)
                        self.gone = True
                    raise ZygoteGone(f"the zygote cannot take it: {error}") from None
            self._seq += 1
            return self._seq

    def pid_of(self, seq: int, timeout: float = START_TIMEOUT) -> tuple[int, int]:
        """Fork `seq`'s (pid, pidfd), waiting up to `timeout` for the zygote's answer."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:  # (in slices: other threads poll their workers meanwhile)
                if seq in self._forked:
                    break
                left = deadline - time.monotonic()
                if self.gone or left <= 0:
                    self._forked[seq] = "the zygote is gone" if self.gone else f"the zygote did not answer within {timeout:g}s"
                    break
                self._read(min(left, 0.05))
        answer = self._forked[seq]
        if isinstance(answer, str):
            raise ZygoteGone(answer)
        return answer

    def answered(self, seq: int) -> bool:
        with self._lock:
            self._read(0.0)
            return seq in self._forked or self.gone

    def exit_code(self, pid: int, pidfd: int, timeout: float = 0.0) -> int | None:
        """`pid`'s exit code if it has exited (waiting up to `timeout`), else None. With the zygote
        gone, its workers were killed with it (their parent-death signal): -SIGKILL once their pidfd says so."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if pid in self._exits:
                    return self._exits[pid]
                if self.gone:
                    if select.select([pidfd], [], [], max(0.0, min(0.05, deadline - time.monotonic())))[0]:
                        return -signal.SIGKILL
                else:
                    self._read(max(0.0, min(0.05, deadline - time.monotonic())))
                    if pid in self._exits:
                        return self._exits[pid]
            if time.monotonic() >= deadline:
                return None

    def _read(self, timeout: float) -> bool:
        """Take what the zygote said (waiting up to `timeout` for the first); False if nothing came."""
        got = False
        while not self.gone and select.select([self._sock], [], [], timeout)[0]:
            timeout = 0.0
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
            except OSError:
                data, fds = b"", []
            if not data:  # (EOF: it exited)
                self.gone = True
                break
            got = True
            message = json.loads(data)
            if "exited" in message:
                self._exits[message["exited"]] = message["code"]
            elif "pid" in message and fds:
                self._forked[message["seq"]] = (message["pid"], fds[0])
            else:
                self._forked[message["seq"]] = message.get("error", "the zygote refused")
        return got


class ForkedProcess:
    """A worker the zygote forked, as `subprocess.Popen` shows a child: `pid`, `stdin` (its
    lifeline: closing it stops the worker), `poll`, `wait`, `returncode`, signals. If the
    zygote cannot fork it, `fallback` (a callable returning a Popen) starts it the slow way."""

    def __init__(self, zygote: Zygote, seq: int, lifeline: Any, fallback: Any, args: list[str]) -> None:
        self._zygote, self._seq, self._fallback = zygote, seq, fallback
        self._popen: subprocess.Popen | None = None
        self._pid: int | None = None
        self._pidfd: int | None = None
        self.stdin = lifeline
        self.args = args
        self.returncode: int | None = None

    def _resolve(self, timeout: float = START_TIMEOUT) -> None:
        if self._pid is not None or self._popen is not None:
            return
        try:
            self._pid, self._pidfd = self._zygote.pid_of(self._seq, timeout)
        except ZygoteGone as why:
            log.warning("starting a worker the slow way (python -c): %s", why)
            try:
                self.stdin.close()
            except OSError:
                pass
            self._popen = self._fallback()
            self.stdin = self._popen.stdin

    @property
    def pid(self) -> int:
        self._resolve()
        return self._popen.pid if self._popen is not None else self._pid

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._pid is None and self._popen is None and not self._zygote.answered(self._seq):
                return None  # (still being forked: the zygote answers in order)
            self._resolve()
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                with self._zygote._lock:
                    if self.returncode is None:
                        self.returncode = self._zygote.exit_code(self._pid, self._pidfd)
            self._close_pidfd()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._resolve(START_TIMEOUT if timeout is None else timeout)
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            if self._popen is not None:
                try:
                    self.returncode = self._popen.wait(left)
                except subprocess.TimeoutExpired:
                    raise subprocess.TimeoutExpired(self.args, timeout) from None
            else:
                with self._zygote._lock:
                    if self.returncode is None:
                        self.returncode = self._zygote.exit_code(self._pid, self._pidfd, 0.05 if left is None else min(left, 0.05))
        self._close_pidfd()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self._resolve()
        if self._popen is not None:
            self._popen.send_signal(sig)
        elif self.poll() is None:
            try:  # (by pidfd: never a stranger that reused the pid)
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _close_pidfd(self) -> None:
        with self._zygote._lock:  # (the client's threads poll too: one closes it, and none waits on it then)
            if self.returncode is not None and self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self._pid} returncode={self.returncode}>"


# ---- the zygote process


def serve(control_fd: int, preload: list[str]) -> None:
    """The zygote's main loop: import `preload`, stop the boot's timer (which exits us if the
    client dies meanwhile), then fork on request until stdin or the control socket closes."""
    import ctypes
    import gc
    import importlib

    gc.disable()  # (until frozen: a collection during imports would only touch pages to be shared)
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:  # (as multiprocessing's forkserver: a fork that needs it says so itself)
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # (a fork starts with no timer and no handler of ours)
    gc.freeze()  # every object so far is out of the collector's reach: forks do not copy its pages to scan them
    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (the wakeup fd is what tells the loop)
    me = os.getpid()
    while True:
        ready = select.select([0, control, wake_r], [], [])[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(control)
        if 0 in ready and not os.read(0, 65536):
            return  # the client is gone; our workers get SIGKILL with us
        if control in ready:
            data, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 3)
            if not data:
                return
            _fork_one(control, json.loads(data), fds, me, libc, (control.fileno(), wake_r, wake_w))


_seq = 0


def _fork_one(control: socket.socket, request: dict[str, Any], fds: list[int], me: int, libc: Any, ours: tuple[int, ...]) -> None:
    global _seq
    _seq += 1
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1 or len(fds) != 3:  # (a preload that started a thread: no fork is safe now)
        _send(control, {"seq": _seq, "error": f"the zygote has {threads} threads (or a request without its 3 fds): not forking"})
        for fd in fds:
            os.close(fd)
        return
    pid = os.fork()
    if pid == 0:
        _child(request, fds, me, libc, ours)  # never returns
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)  # (ours until we reap it: not yet, so it names this child)
    _send(control, {"seq": _seq, "pid": pid}, [pidfd])
    os.close(pidfd)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(control: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:
    try:
        socket.send_fds(control, [json.dumps(message).encode()], list(fds))
    except OSError:
        pass  # (the client is gone: stdin's EOF ends the loop)


def _child(request: dict[str, Any], fds: list[int], parent: int, libc: Any, ours: tuple[int, ...]) -> None:
    """In the fork: become `python -c source argv...` with the request's environment and fds, then exit."""
    code = 1
    try:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # (the zygote died before the line above)
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd, target in zip(fds, (0, 1, 2)):
            os.dup2(fd, target)
        for fd in {*fds, *ours}:
            if fd > 2:
                os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        _reseed()
        sys.argv = ["-c", *request["argv"]]
        import gc

        gc.enable()
        code = 0
        exec(compile(request["source"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except BaseException:
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        try:  # what the interpreter does at exit: non-daemon threads, atexit, buffered output
            threading._shutdown()  # type: ignore[attr-defined]
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reseed() -> None:
    """Give the fork generators of its own: a fork copies the zygote's, so every worker would draw
    the same torch (and numpy, random) numbers, and one key holder's draws on one worker would be
    another client's dropout masks on the next."""
    import random

    random.seed()  # (from os.urandom)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))


# The zygote's command line: argv[1] is the control socket's fd, argv[2] this file (run as it is,
# not as part of the fedq package, which imports torch), the rest the modules to preload. Its
# first lines exit it if the client dies while it imports (torch: seconds), checked from a timer
# signal rather than a thread: a thread's malloc arena outlives it, and each fork's first thread
# (zmq's) would take that arena over, so no fork would allocate as a fresh interpreter does.
_ZYGOTE_BOOT = """\
import os, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a Ctrl-C at the terminal is for the client and its workers)
def watch(*_):
    if select.select([0], [], [], 0)[0] and not os.read(0, 65536):
        os._exit(0)
signal.signal(signal.SIGALRM, watch)
signal.siginterrupt(signal.SIGALRM, False)  # (the imports' system calls restart, never fail with EINTR)
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
import importlib.util
spec = importlib.util.spec_from_file_location("fedq_zygote", sys.argv[2])
zygote = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zygote)
zygote.serve(int(sys.argv[1]), sys.argv[3:])
"""
