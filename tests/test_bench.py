"""`fedq bench --quick` end to end, as a user runs it: a real subprocess with its own workers and peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# The gate: `fedq bench` exits 3 when a figure is more than 2x off its target, or, for a miss
# the README owns up to (fedq/bench/baseline.json), more than 2x worse than its recorded ratio,
# in two runs in a row (it measures again before failing). Noise on a shared machine stays
# inside 2x or does not strike the same figure twice; a real regression does: CI fails on it.


def test_quick_bench_measures_every_work_item_and_writes_the_json(tmp_path):
    path = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "fedq", "bench", "--quick", "--json", str(path)],
        capture_output=True, text=True, timeout=150,
    )
    assert path.exists(), f"no JSON written (exit {done.returncode}):\n{done.stderr}"
    results = json.loads(path.read_text())

    assert {"meta", "plan", "definitions", "floor", "torch_rpc", "pysyft029", "fedq", "checks", "gate"} <= results.keys()
    for section in ("floor", "torch_rpc", "fedq"):
        assert "error" not in results[section], results[section].get("traceback") or results[section]["error"]
    assert results["meta"]["quick"] and 256 not in results["plan"]["sizes_mib"]
    for transport in ("ipc", "tcp"):
        assert {"echo", "tensor_roundtrip"} <= results["floor"][transport].keys()
        assert set(results["floor"][transport]["tensor_roundtrip"]) == {"1", "64"}
    assert {"rpc_sync_add", "pipelined_remote", "tensor_roundtrip"} <= results["torch_rpc"].keys()
    fedq = results["fedq"]
    assert set(fedq["latency"]) == {"ipc_1hop", "tcp_1hop", "ipc_2hop", "ipc_3hop"}
    assert fedq["pipelined"]["ops_per_s"] > 0
    assert fedq["plan"]["plan_s_per_call"] > 0 and fedq["plan"]["ops_s_per_call"] > 0  # a 10-op plan and its ops, same run
    assert set(fedq["transfer"]) == {"1", "64"}
    for transfer in fedq["transfer"].values():
        assert {"send", "get", "roundtrip", "worker_idle_rss", "worker_peak_rss", "client_peak_rss"} <= transfer.keys()
    big = fedq["transfer"]["64"]
    assert big["worker_peak_rss"] - big["worker_idle_rss"] >= big["payload_bytes"] // 2  # the peak is this payload's
    assert fedq["move"]["status"] in ("ok", "n/a") and fedq["trusted_aggregator"]["status"] in ("ok", "n/a")
    for check in results["checks"]:
        assert {"work", "fedq", "peer", "peer_value", "ratio", "bound", "status", "gate_failed"} <= check.keys()
    assert any(c["status"] in ("met", "missed") for c in results["checks"])

    assert set(results["gate"]["failed"]) <= set(results["gate"]["first_run_failed"])  # failing takes two runs
    verdict = results["gate"]["exit_code"]
    assert done.returncode == verdict, f"exit {done.returncode}, gate says {verdict}:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    assert "work" in done.stdout and "target" in done.stdout  # the table was printed
    assert verdict == 0, "a regression: " + "; ".join(results["gate"]["failed"])


def test_quick_fl_bench_runs_fedavg_rounds_that_wait_alike_and_match_plain_torch(tmp_path):
    """`fedq bench --fl --quick` (issue 17): its FedAvg workloads on fedq, Flower skipped (not asked for here)."""
    path = tmp_path / "fl.json"
    env = {**os.environ, "FEDQ_FLWR_PYTHON": str(tmp_path / "no-flower")}  # (a machine with flwr would run it: minutes)
    done = subprocess.run(
        [sys.executable, "-m", "fedq", "bench", "--fl", "--quick", "--json", str(path)], capture_output=True, text=True, timeout=150, env=env,
    )
    assert path.exists(), f"no JSON written (exit {done.returncode}):\n{done.stderr}"
    results = json.loads(path.read_text())
    assert results["flower"] is None and "Flower: not installed" in done.stdout
    names = [w["name"] for w in results["plan"]]
    for name in names:
        figures = results["fedq"][name]
        assert "error" not in figures, figures["error"]
        assert figures["round_s"] > 0 and figures["startup_s"] > 0 and figures["pss_bytes"] > 0
        assert figures["max_diff_from_torch"] <= 1e-5
    assert len({results["fedq"][name]["waits"] for name in names}) == 1  # as many waits for 8 owners as for 2
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
