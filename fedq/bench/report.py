"""How the figures are shown: one rich table on the terminal, everything in a JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

STATUS = {"met": "[green]✓ met[/]", "missed": "[yellow]✗ missed[/]", "n/a": "[dim]n/a[/]", "info": "[dim]info[/]"}


def _figure(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "Δ":  # a difference of weights: tiny, or zero
        return f"{value:.1e}"
    return f"{value:.2f} {unit}" if unit == "GiB/s" else f"{value:,.1f} {unit}"


def _status(check: dict[str, Any]) -> str:
    if check["gate_failed"]:
        return "[red bold]✗ >2× off[/]"
    return STATUS[check["status"]]


def table(results: dict[str, Any]) -> Table:
    meta = results["meta"]
    title = f"fedq bench{' --fl' if meta.get('fl') else ''}{' --quick' if meta['quick'] else ''}: medians over repeats, {meta['cpus']} cores, load {meta['loadavg_start'][0]:.2f}"
    view = Table(title=title, title_justify="left")
    for column, justify in (("work", "left"), ("fedq", "right"), ("peer, same work", "left"), ("peer", "right"),
                            ("ratio", "right"), ("target", "right"), ("met?", "left")):
        view.add_column(column, justify=justify)
    last_work = None
    for check in results["checks"]:
        # A work item compared with several peers is named once: the rows below it are its peers.
        work = check["work"] if check["work"] != last_work else ""
        last_work = check["work"]
        view.add_row(
            work,
            _figure(check["fedq"], check["unit"]) if work else "",
            check["peer"],
            _figure(check["peer_value"], check["unit"]),
            "—" if check["ratio"] is None else f"{check['ratio']:.2f}×",
            "—" if check["bound"] is None else check["bound"]["text"],
            _status(check),
        )
    return view


def summary(results: dict[str, Any]) -> list[str]:
    checks = [c for c in results["checks"] if c["bound"] is not None]
    met = sum(c["status"] == "met" for c in checks)
    judged = sum(c["status"] in ("met", "missed") for c in checks)
    lines = [f"{met} of {judged} targets met ({len(checks) - judged} n/a); {results['meta']['duration_s']:.0f} s"]
    failed = results["gate"]["failed"]
    noise = [f for f in results["gate"].get("first_run_failed", []) if f not in failed]
    lines.append(f"gate: more than {results['gate']['factor']:g}× off target in two runs: {'; '.join(failed)}" if failed else "gate: ok (nothing more than 2× off target)")
    if noise:
        lines.append(f"      (off in the first run only, taken for noise: {'; '.join(noise)})")
    for section in ("floor", "torch_rpc", "pysyft029", "fedq", "hosts"):
        data = results.get(section)
        if isinstance(data, dict) and "error" in data:
            lines.append(f"{section} failed: {data['error'].strip().splitlines()[-1]}")
    hosts = results.get("hosts")
    if isinstance(hosts, dict) and hosts.get("status") == "skipped":
        lines.append(f"across hosts: skipped ({hosts['reason']})")
    if isinstance(hosts, dict) and hosts.get("left_behind"):
        lines.append(f"across hosts: left behind (should be nothing): {', '.join(hosts['left_behind'])}")
    if results.get("pysyft029") is None:
        lines.append("PySyft 0.2.9: not installed at /tmp/syft029 (skipped)")
    transfers = (results.get("fedq") or {}).get("transfer") or {}
    if any(not t.get("peak_reset", True) for t in transfers.values()):
        lines.append("RSS peaks could not be reset: they count from each process's start")
    return lines


def show(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=170)  # piped: rich would squeeze the table into 80 columns
    console.print(table(results))
    for line in summary(results):
        console.print(line, highlight=False)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
