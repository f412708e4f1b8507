"""Resident memory of a process, from /proc/PID/status (Linux).

VmHWM is a high-water mark since the process started, so on its own it says
nothing about one transfer. Writing "5" to /proc/PID/clear_refs resets it
(Linux >= 4.0, same user), which lets a measurement cover exactly the work
it is about. When the reset is refused the caller must say so next to the figure.
"""

from __future__ import annotations

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
