"""A worker's torch threads are its share of the machine (issue 17): set from `threads`, by
keyword, config, `--threads` or the default budget, and shown by `fedq status`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
from typer.testing import CliRunner

import fedq as sy
from fedq.cli import app
from fedq.keys import write_key_file
from fedq.launcher import machine_cores, thread_budget
from helpers import free_port, stop

runner = CliRunner(env={"COLUMNS": "200"})


def test_the_budget_divides_the_cores_among_the_workers_started_together():
    assert [thread_budget(n, cores=8) for n in (1, 2, 3, 8, 9, 64)] == [8, 4, 2, 1, 1, 1]
    assert thread_budget(0, cores=2) == 2 and thread_budget(32, cores=2) == 1  # at least 1
    assert thread_budget(1) == machine_cores()


def test_a_virtual_worker_runs_torch_on_the_threads_it_was_given(hook):
    worker = sy.VirtualWorker(hook, id="three_threads", threads=3)
    try:
        assert worker.ping().threads == 3  # torch.get_num_threads() in the worker, now
        x = th.ones(64, 64).send(worker)
        assert (x @ x).get().sum().item() == 64**3  # (its ops run on them)
    finally:
        worker.shutdown()


def test_a_workers_openmp_threads_sleep_between_ops(hook):
    """OpenMP's threads spin after each parallel op by default: a worker idles between messages,
    and the spinning took the cores of its peers (issue 17's workload B). Read when OpenMP loads:
    the zygote's environment, which every fork inherits, or a fresh interpreter's (where the
    user's own OMP_WAIT_POLICY, if any, wins: launcher.WORKER_ENV_DEFAULTS)."""
    worker = sy.VirtualWorker(hook, id="passive_threads", threads=2)
    try:
        worker.ping()
        assert b"OMP_WAIT_POLICY=PASSIVE" in Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
    finally:
        worker.shutdown()


def test_threads_is_a_whole_number_of_at_least_one(hook):
    with pytest.raises(sy.ConfigError):
        sy.VirtualWorker(hook, id="bad_threads", threads="many")


def test_fedq_up_divides_the_cores_and_takes_the_config_and_the_option(tmp_path: Path):
    """`fedq up` gives a worker the `threads` of its table, else the budget of the config's
    workers; `fedq worker --threads` wins over the config. `fedq status` shows each worker's
    torch.get_num_threads()."""
    key_file = tmp_path / "federation.key"
    write_key_file(key_file, sy.local_client().key)
    write_key_file(tmp_path / "federation.admin.key", sy.codec.new_key())
    tables = {
        "one": "threads = 1\n", "two": "threads = 2\n", "budget": "",
        "opted": "threads = 1\n",  # (--threads 3 wins)
    }  # fmt: skip
    text = f'[federation]\ntimeout = 10\nkey_file = "{key_file}"\n' + "".join(
        f'[workers.{name}]\naddress = "tcp://127.0.0.1:{free_port()}"\n{table}' for name, table in tables.items()
    )
    config, up_config = tmp_path / "federation.toml", tmp_path / "up.toml"
    config.write_text(text)
    up_config.write_text(text.partition("[workers.opted]")[0])  # fedq up starts the first three
    up = subprocess.Popen([sys.executable, "-m", "fedq", "up", "--config", str(up_config)], stdout=subprocess.PIPE, text=True)
    opted = subprocess.Popen([sys.executable, "-m", "fedq", "worker", "opted", "--config", str(config), "--threads", "3"])
    try:
        assert "started" in up.stdout.readline()
        for name in tables:
            sy.connect(None, name, config=config).ping(timeout=60)
        result = runner.invoke(app, ["status", "--config", str(config)])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        header = [c.strip() for c in next(line for line in lines if "threads" in line and "worker" in line).split("┃")]
        shown = {}
        for line in lines:
            cells = [c.strip() for c in line.split("│")]
            if len(cells) == len(header) and cells[1] in tables:
                shown[cells[1]] = cells[header.index("threads")]
        assert shown == {"one": "1", "two": "2", "budget": str(thread_budget(3)), "opted": "3"}, result.output
    finally:
        stop(opted)
        stop(up)
