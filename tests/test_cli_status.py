"""`fedq status` and `fedq clear`: in process (typer's runner) against the session's workers,
and as real subprocesses against a `fedq up` federation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch as th
from typer.testing import CliRunner

import fedq as sy
from fedq.cli import app
from fedq.keys import write_key_file
from fedq.codec import new_key
from helpers import free_port, gone, stop

runner = CliRunner(env={"COLUMNS": "200"})  # rich wraps long cells at 80 columns: one row per line here
ROOT = Path(__file__).resolve().parent.parent


def _config(
    tmp_path: Path, key: bytes, workers: dict[str, str], *, data: dict[str, Path] | None = None, name: str = "federation",
    key_file: Path | None = None,
) -> Path:
    """A config naming `workers` {id: address}, signed with `key` (written to `key_file`, by default a key file
    beside it; the admin key file is the one beside the key file)."""
    key_file = key_file or tmp_path / f"{name}.key"
    write_key_file(key_file, key)
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[federation]\ntimeout = 10\nkey_file = "{key_file}"\n'
        + "".join(
            f'[workers.{id}]\naddress = "{address}"\n' + (f'data = "{data[id]}"\n' if data and id in data else "")
            for id, address in workers.items()
        )
    )
    return config


def _row(output: str, worker: str) -> str:
    return next(line for line in output.splitlines() if re.search(rf"\b{worker}\b", line) and ("alive" in line or "down" in line))


# ---- in process, against the session's workers


def test_status_shows_every_worker_alive_with_pid_objects_and_bytes(tmp_path, bob, alice):
    config = _config(tmp_path, sy.local_client().key, {"bob": bob.address, "alice": alice.address})
    x = th.ones(2, 3).send(bob)  # 24 bytes
    y = th.zeros(4, dtype=th.int64).send(bob)  # 32 bytes
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    bob_row, alice_row = _row(result.output, "bob"), _row(result.output, "alice")
    assert "alive" in bob_row and str(bob.pid) in bob_row and re.search(r"\b2\b.*\b56\b.*\d ms", bob_row), bob_row
    assert "alive" in alice_row and str(alice.pid) in alice_row and re.search(r"\b0\b.*\b0\b.*\d ms", alice_row), alice_row
    del x, y


def test_status_shows_a_dead_worker_as_a_row_and_exits_1(tmp_path, bob):
    ghost = f"tcp://127.0.0.1:{free_port()}"
    config = _config(tmp_path, sy.local_client().key, {"bob": bob.address, "ghost": ghost})
    start = time.monotonic()
    result = runner.invoke(app, ["status", "--config", str(config), "--timeout", "0.5"])
    assert result.exit_code == 1, result.output
    assert time.monotonic() - start < 10
    assert "alive" in _row(result.output, "bob")
    ghost_row = _row(result.output, "ghost")
    assert "down" in ghost_row and "no answer within 0.5s" in ghost_row, result.output
    assert "1 of 2 workers down" in result.output
    assert bob.ping().id == "bob"  # the session's client is unharmed by the ghost


def test_status_of_a_missing_config_is_one_readable_line(tmp_path):
    result = runner.invoke(app, ["status", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 1 and "no federation config" in result.output


def test_clear_empties_one_worker_and_leaves_the_others(bob, alice):
    x = th.ones(3).send(bob)
    y = th.ones(2).send(bob)
    z = th.ones(1).send(alice)
    result = runner.invoke(app, ["clear", "bob", "--address", bob.address])
    assert result.exit_code == 0, result.output
    assert "bob: cleared, 2 objects freed" in result.output
    assert bob._objects == {} and len(alice._objects) == 1
    del x, y, z


def test_clear_of_an_unknown_worker_is_one_readable_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[workers.bob]\naddress = "tcp://127.0.0.1:1"\n')
    result = runner.invoke(app, ["clear", "carol", "--config", str(config)])
    assert result.exit_code == 1 and "has no worker 'carol' (it has: bob)" in result.output


def test_help_texts():
    for command, words in (("status", "alive"), ("clear", "Empty a worker's store")):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and words in result.output, result.output


# ---- real processes: `fedq up`, then `fedq status` / `fedq clear` as the user would type them


def _fedq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEDQ_KEY"}  # the key comes from the config's key file
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "fedq", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def standing_federation(tmp_path_factory: pytest.TempPathFactory):
    """`fedq up` on a fresh key, once for the module: bob (a data owner with the housing shard) and
    alice, over tcp, named by `config`; and carol, only in `everyone`, the one test_stop stops
    (so that neither test needs the other to run first). Both configs share the key and admin key files."""
    tmp_path = tmp_path_factory.mktemp("standing")
    workers = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("bob", "alice")}
    carol = {"carol": f"tcp://127.0.0.1:{free_port()}"}
    key = new_key()
    data = {"bob": ROOT / "workers" / "housing.py"}
    everyone = _config(tmp_path, key, {**workers, **carol}, data=data, name="everyone", key_file=tmp_path / "federation.key")
    config = _config(tmp_path, key, workers, data=data)
    env = {k: v for k, v in os.environ.items() if k != "FEDQ_KEY"}
    up = subprocess.Popen([sys.executable, "-m", "fedq", "up", "--config", str(everyone)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", up.stdout.readline())]
        assert len(pids) == 3
        yield config, workers, key, dict(zip([*workers, *carol], pids)), everyone, carol
    finally:
        stop(up)


def test_status_and_clear_as_subprocesses_against_fedq_up(tmp_path, standing_federation):
    config, workers, key, pids, _, _ = standing_federation
    done = _fedq("status", "--config", str(config), "--timeout", "15")
    assert done.returncode == 0, done.stdout + done.stderr
    bob_row = _row(done.stdout, "bob")
    assert "alive" in bob_row and str(pids["bob"]) in bob_row and re.search(r"\b2\b", bob_row)  # #data and #target
    assert "alive" in _row(done.stdout, "alice")

    # A config naming one more worker, which nobody started: a row saying so, exit code 1.
    ghost = _config(tmp_path, key, {**workers, "ghost": f"tcp://127.0.0.1:{free_port()}"}, name="with_ghost")
    done = _fedq("status", "--config", str(ghost), "--timeout", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "down" in _row(done.stdout, "ghost") and "alive" in _row(done.stdout, "bob") and "alive" in _row(done.stdout, "alice")

    done = _fedq("clear", "bob", "--config", str(config))
    assert done.returncode == 0 and "bob: cleared, 2 objects freed" in done.stdout, done.stdout + done.stderr
    done = _fedq("status", "--config", str(config))
    assert done.returncode == 0 and re.search(r"alive\s*│\s*\d+\s*│\s*0\s*│\s*0\s*│", _row(done.stdout, "bob")), done.stdout


def test_stop_is_the_owners_on_the_workers_host(tmp_path, standing_federation):
    """`fedq stop` signs with the config's admin key file: a key holder whose admin key is not the
    workers' is refused (the worker keeps serving), the owner's stop ends the worker with code 0."""
    _, _, key, pids, config, workers = standing_federation  # the config naming carol too, and carol
    stranger = _config(tmp_path, key, workers, name="stranger")  # the federation key, another admin key
    write_key_file(tmp_path / "stranger.admin.key", new_key())
    done = _fedq("stop", "carol", "--config", str(stranger), "--timeout", "1")  # (dropped unanswered: the timeout is waited out)
    assert done.returncode == 1 and "admin key" in done.stderr, done.stdout + done.stderr
    assert "alive" in _row(_fedq("status", "--config", str(config)).stdout, "carol")
    done = _fedq("stop", "carol", "--config", str(config))
    assert done.returncode == 0 and "carol: stopped" in done.stdout, done.stdout + done.stderr
    assert gone(pids["carol"], within=10)
