"""What /proc says of a process (Linux): its resident and proportional memory and the CPU time it used.

VmHWM is a high-water mark since the process started, so on its own it says
nothing about one transfer. Writing "5" to /proc/PID/clear_refs resets it
(Linux >= 4.0, same user), which lets a measurement cover exactly the work
it is about. When the reset is refused the caller must say so next to the figure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _status_bytes(pid: int | str, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size now (VmRSS), or None where /proc is not readable."""
    return _status_bytes(pid, "VmRSS")


def pss_bytes(pid: int | str = "self") -> int | None:
    """Proportional set size (smaps_rollup, Linux >= 4.14: a page shared by k processes counts
    1/k to each), what a process really adds to the machine; None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_bytes(pid: int | str = "self") -> int | None:
    """Peak resident set size (VmHWM) since the process started or since `reset_peak`."""
    return _status_bytes(pid, "VmHWM")


def reset_peak(pid: int | str = "self") -> bool:
    """Restart VmHWM from the current RSS; False when the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User plus system CPU time of every thread of the process so far (/proc/PID/stat), or None.
    Less sensitive than wall time to what else the machine runs: it says what the work cost."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """`root` and every process under it (by /proc/PID/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_pss(root: int | None = None) -> int | None:
    """PSS of `root` (this process) and every process under it; None where /proc does not say."""
    known = [pss for pss in map(pss_bytes, descendants(os.getpid() if root is None else root)) if pss is not None]
    return sum(known) if known else None


def gone(pid: int, within: float) -> bool:
    """Whether process `pid` ends within `within` seconds (reaping it if it is our child)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False
