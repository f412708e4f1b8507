"""The `fedq` command line, in process (typer's runner) and as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
from typer.testing import CliRunner

from fedq.cli import app
from fedq.errors import ConfigError

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def test_ls_lists_tensors_and_where_stored_pointers_point(bob, alice):
    x = th.ones(2, 3).send(bob)
    chain = th.zeros(4, dtype=th.int64).send(bob).send(alice)
    result = runner.invoke(app, ["ls", "bob", "--address", bob.address])
    assert result.exit_code == 0, result.output
    assert str(x.id_at_location) in result.output and "float32" in result.output and "24" in result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.split()[1:2] and line.split()[1].isdigit()}
    [stored] = [row for row in alice.describe() if row.id == chain.id_at_location]
    assert f"me:{os.getpid()}" in rows[str(x.id_at_location)]  # who holds each reference: x is mine,
    assert "alice" in rows[str(stored.next_id)]  # and the chain's data is held by alice's pointer
    result = runner.invoke(app, ["ls", "alice", "--address", alice.address])
    assert result.exit_code == 0, result.output
    assert "PointerTensor" in result.output and "bob:" in result.output
    assert "-> Tensor [4] int64" in result.output  # the whole chain, down to the data
    del chain


def test_errors_are_one_line_unless_verbose(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("not toml [")
    short = runner.invoke(app, ["ls", "bob", "--config", str(config)])
    assert short.exit_code == 1 and len(short.output.strip().splitlines()) == 1
    full = runner.invoke(app, ["--verbose", "ls", "bob", "--config", str(config)])
    assert full.exit_code == 1 and "Traceback" in full.output


def test_ping_reports_a_live_worker(bob):
    result = runner.invoke(app, ["ping", "bob", "--address", bob.address])
    assert result.exit_code == 0 and f"pid {bob.pid}" in result.output


def test_unknown_worker_in_a_config_is_one_readable_line_and_exit_code_1(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[workers.bob]\naddress = "tcp://127.0.0.1:1"\n')
    result = runner.invoke(app, ["ls", "carol", "--config", str(config)])
    assert result.exit_code == 1
    assert "has no worker 'carol' (it has: bob)" in result.output


def test_missing_config_is_reported(tmp_path):
    result = runner.invoke(app, ["ping", "bob", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 1 and "no federation config" in result.output


def test_demo_runs_the_lesson_against_real_processes():
    done = subprocess.run([sys.executable, "-m", "fedq", "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "<VirtualWorker id:bob #objects:0>" in out
    assert "[PointerTensor | me:" in out and "-> alice:" in out
    assert "tensor([1, 2, 3, 4, 5])" in out and "tensor([ 2,  4,  6,  8, 10])" in out
    assert out.rstrip().endswith("Out[15]: ({}, {})")


def test_demo_aggregator_mode_trains_on_the_owners_shards():
    done = subprocess.run([sys.executable, "-m", "fedq", "demo", "--aggregator"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "round 10:" in done.stdout and "bob loss" in done.stdout and "alice loss" in done.stdout
    assert done.stdout.rstrip().endswith("[2, 2, 0]")  # only each owner's data is left


def test_generated_owners_are_asked_for_only_with_ray_and_without_a_config(tmp_path):
    """`fedq up --owners N` (issue 18) places generated owners on Ray and writes their config: refused,
    saying why, without `--on ray`, beside a `--config`, for no owners or a missing data script; all before Ray starts."""
    from fedq.ray_placement import up_on_ray

    alone = runner.invoke(app, ["up", "--owners", "3"])
    assert alone.exit_code == 1 and "are for --on ray" in alone.output, alone.output
    both = runner.invoke(app, ["up", "--on", "ray", "--owners", "3", "--config", str(tmp_path / "fed.toml")])
    assert both.exit_code == 1 and "give no --config" in both.output, both.output
    for wrong, said in (({}, "one of the two"), ({"config": tmp_path / "fed.toml", "owners": 2}, "one of the two"), ({"owners": 0}, "at least one"), ({"owners": 2, "owner_data": tmp_path / "none.py"}, "does not exist")):
        with pytest.raises(ConfigError, match=said):
            up_on_ray(**wrong)
    assert not list(tmp_path.iterdir())  # (no config written)
