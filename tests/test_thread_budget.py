"""A worker's torch threads are its share of the machine (issue 17): set from `threads`, by
keyword, config, `--threads` or the default budget, and shown by `fedq status`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
import zmq
from typer.testing import CliRunner

import fedq as sy
from fedq.cli import app
from fedq.keys import write_key_file
from fedq.launcher import machine_cores, thread_budget
from fedq.codec import Codec
from fedq.messages import Failure, SetThreads
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


_FIRST_WORKER_LOWERED = """
import json, torch, fedq as sy
hook = sy.TorchHook(torch)
first = sy.VirtualWorker(hook, id="first")
alone = first.ping().threads
others = [sy.VirtualWorker(hook, id=f"next{i}") for i in range(2)]
pinned = sy.VirtualWorker(hook, id="pinned", threads=2)
print(json.dumps([alone, first.ping().threads, [w.ping().threads for w in others], pinned.ping().threads]))
"""


def test_a_scripts_first_worker_is_lowered_to_the_budget_as_more_start(tmp_path):
    """Started alone, a script's first worker gets every core; once three run, each has its share
    (the earlier ones told by SetThreads, the owner's), and a worker given `threads` keeps them."""
    script = tmp_path / "first.py"
    script.write_text(_FIRST_WORKER_LOWERED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    alone, lowered, others, pinned = json.loads(done.stdout.strip().splitlines()[-1])
    assert alone == machine_cores() and lowered == thread_budget(3) and others == [thread_budget(2), thread_budget(3)], done.stdout
    assert pinned == 2


def test_only_the_owner_sets_a_workers_threads(hook, bob):
    """The attack: a key holder (the federation key, not bob's admin key) crafts SetThreads to
    make bob run on 1024 threads, each spinning on the cores the other workers need: refused."""
    codec = Codec(hook.local_worker.key)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bob.address)
    try:
        sock.send_multipart(codec.encode(1, SetThreads(1024), bob.incarnation))
        assert sock.poll(20_000)
        _, answer = codec.decode(sock.recv_multipart())
    finally:
        sock.close()
    assert isinstance(answer, Failure) and answer.type_name == "PermissionError" and "data owner" in answer.message
    assert bob.ping().threads == bob.threads


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
