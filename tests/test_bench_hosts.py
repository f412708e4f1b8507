"""`fedq bench`'s hosts section (issue 18, fedq/bench/hosts.py): the lesson's `(x + x).get()` and a
send + get from a client in one network namespace to a worker in another (tcp + CURVE), beside
the same over loopback with CURVE and without; its rows in the table; skipped, saying why, where
namespaces cannot be made; nothing of it left behind, even when it fails. Small sizes and few
calls here: the full bench measures 64 MiB."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fedq.bench.hosts import measure_hosts, why_not
from fedq.bench.report import table
from fedq.bench.targets import evaluate

PATHS = ("namespaces", "loopback_curve", "loopback")


def _ours_left(workdir: Path) -> list[str]:
    """The bench's namespaces (fqb<pid>..) and any process still running from its config directory in `workdir`."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    spaces = [ns for ns in listed if ns.startswith(f"fqb{os.getpid() % 100000}")]
    processes = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(workdir).encode() in (entry / "cmdline").read_bytes():
                processes.append(entry.name)
        except OSError:
            pass
    return spaces + processes


def _rows(results: dict) -> list[dict]:
    checks = [c.to_json() for c in evaluate(results) if "across namespaces" in c.work]
    rendered = {"meta": {"quick": False, "cpus": 2, "loadavg_start": (0.0, 0.0, 0.0)}, "checks": checks}
    table(rendered)  # (the table takes them as they are)
    return checks


def test_each_path_is_measured_beside_the_others_and_nothing_is_left(tmp_path):
    why = why_not()
    if why is not None:
        pytest.skip(f"no network namespaces: {why}")
    results = measure_hosts(number=20, repeats=2, transfer_repeats=1, size_mib=8, workdir=tmp_path)
    assert results["status"] == "ok" and results["left_behind"] == []
    assert _ours_left(tmp_path) == []
    for path in PATHS:
        assert results[path]["latency"]["median"] > 0
        transfer = results[path]["transfer"]
        assert transfer["payload_bytes"] == 8 * 2**20 and transfer["roundtrip"]["median"] > 0
        assert transfer["client_bytes"] >= 2 * transfer["payload_bytes"]  # there and back, through this path
    # The workers' own pids (another namespace's too): their memory figures are theirs, not the client's.
    assert results["namespaces"]["transfer"]["worker_pid"] != results["loopback_curve"]["transfer"]["worker_pid"]
    rows = _rows({"hosts": results, "plan": {"hosts_mib": 8}})
    assert [(r["work"], r["peer"]) for r in rows] == [
        ("(x + x).get(), across namespaces, tcp + CURVE", "the same, loopback tcp + CURVE"),
        ("(x + x).get(), across namespaces, tcp + CURVE", "the same, loopback tcp, no CURVE"),
        ("send + get 8 MiB, across namespaces, tcp + CURVE", "the same, loopback tcp + CURVE"),
        ("send + get 8 MiB, across namespaces, tcp + CURVE", "the same, loopback tcp, no CURVE"),
    ]
    assert all(r["status"] == "info" and r["fedq"] > 0 and r["peer_value"] > 0 and r["ratio"] > 0 for r in rows)


def test_a_failing_section_still_removes_its_namespaces_and_processes(tmp_path):
    """The probe given less time than it needs: the section raises (the bench records the error
    and goes on), and its namespaces, veths and workers are gone all the same."""
    why = why_not()
    if why is not None:
        pytest.skip(f"no network namespaces: {why}")
    with pytest.raises(RuntimeError, match="took more than"):
        measure_hosts(number=1, repeats=1, transfer_repeats=1, size_mib=1, timeout=0.5, workdir=tmp_path)
    assert _ours_left(tmp_path) == []
    rows = _rows({"hosts": {"error": "RuntimeError: the probe in the client's namespace took more than 0.5 s"}})
    assert [r["status"] for r in rows] == ["n/a", "n/a"] and all(r["peer"].startswith("failed: RuntimeError") for r in rows)


def test_where_namespaces_cannot_be_made_the_rows_say_why(monkeypatch, tmp_path):
    """No `ip` on the PATH (as on a machine without iproute2): skipped, the reason in each row; nothing measured, nothing raised."""
    monkeypatch.setenv("PATH", str(tmp_path))
    why = why_not()  # (elsewhere: not root, or not Linux, said first)
    assert why is not None
    results = measure_hosts(number=1, repeats=1, transfer_repeats=1)
    assert results == {"status": "skipped", "reason": why}
    rows = _rows({"hosts": results})
    assert [r["work"] for r in rows] == ["(x + x).get(), across namespaces, tcp + CURVE", "send + get 64 MiB, across namespaces, tcp + CURVE"]
    assert all(r["status"] == "n/a" and not r["gate_failed"] and r["peer"] == f"skipped: {why}" for r in rows)
