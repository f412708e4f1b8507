"""What a federation across hosts trips over (issue 18), on loopback: the config's timeout for
clients, keys that must exist, a bind address apart from the advertised one, public keys only
for the peers a host dials, plaintext refused off loopback, a move that timed out freeing its
late copy. The same across network namespaces: tests/test_netns.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch as th
from typer.testing import CliRunner

import fedq as sy
from fedq.cli import app
from fedq.config import load_config
from fedq.keys import write_key_file
from helpers import free_port, stop


def _fedq(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedq", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _listening(port: int, deadline: float) -> None:
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory):
    """Every worker process the module needs, started at once: `slow` (a config with a 1 s
    timeout, this session's key), bob and alice over CURVE, each bound to 127.0.0.1 but
    advertised as localhost, in a federation that also names carol, whose public key nobody
    has; and the workers that must refuse to start."""
    tmp = tmp_path_factory.mktemp("hosts")
    write_key_file(tmp / "session.key", sy.local_client().key)
    slow_port = free_port()
    plain = tmp / "plain.toml"
    plain.write_text(
        f'[federation]\ntimeout = 1\nkey_file = "{tmp / "session.key"}"\n'
        f'[workers.slow]\naddress = "tcp://127.0.0.1:{slow_port}"\n'
        # another host's worker: its data script is on its host, not here
        '[workers.elsewhere]\naddress = "tcp://127.0.0.1:1"\ndata = "/nonexistent/owner.py"\n'
    )
    write_key_file(tmp / "curve.key", sy.codec.new_key())
    ports = {"bob": free_port(), "alice": free_port()}
    curve = tmp / "curve.toml"
    curve.write_text(
        f'[federation]\ntimeout = 10\nkey_file = "{tmp / "curve.key"}"\ncurve = true\ncurve_dir = "{tmp / "curve"}"\n'
        + "".join(f'[workers.{n}]\naddress = "tcp://localhost:{p}"\nbind = "tcp://127.0.0.1:{p}"\n' for n, p in ports.items())
        + '[workers.carol]\naddress = "tcp://localhost:1"\n'
    )
    made = CliRunner().invoke(app, ["keygen", "--curve", "--config", str(curve)])  # (in this process: no torch to import)
    assert made.exit_code == 0, made.output
    (tmp / "curve" / "carol.key").unlink()  # nobody dials carol: nobody needs her public key
    (tmp / "curve" / "carol.key_secret").unlink()
    keyless = tmp / "keyless.toml"
    keyless.write_text(f'[federation]\nkey_file = "{tmp / "never-made.key"}"\n[workers.bob]\naddress = "tcp://127.0.0.1:{free_port()}"\n')
    processes = {
        "slow": _fedq("worker", "slow", "--config", str(plain)),
        **{n: _fedq("worker", n, "--config", str(curve)) for n in ports},
        "open": _fedq(
            "worker", "open", "--address", f"tcp://0.0.0.0:{free_port()}", "--config", str(tmp / "none.toml"),
            env={**os.environ, "FEDQ_KEY": sy.codec.new_key().hex()},
        ),
    }
    deadline = time.monotonic() + 60
    for port in (slow_port, *ports.values()):
        _listening(port, deadline)
    yield {"tmp": tmp, "plain": plain, "curve": curve, "keyless": keyless, "processes": processes}
    for process in processes.values():
        if process.poll() is None:
            stop(process)


def _refused(process: subprocess.Popen) -> str:
    """The error a worker that must not start exits with (code 1)."""
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    return stderr


def test_a_client_connected_by_config_waits_as_long_as_the_configs_timeout(hook, hosts):
    slow = sy.connect(hook, "slow", config=hosts["plain"])  # (the config names a worker whose data is elsewhere: no matter)
    assert slow.ping().id == "slow"
    pid = hosts["processes"]["slow"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(sy.WorkerUnreachableError, match="'slow'.*1s"):
            slow.ping()
        assert time.monotonic() - started < 5  # the config's 1 s, not the default 30
    finally:
        os.kill(pid, signal.SIGCONT)
    assert slow.ping().id == "slow"


def _refused_here(*args: str) -> str:
    """The error `fedq ARGS` fails with before it starts anything (in this process: typer's runner)."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 1, result.output
    return result.output


def test_only_the_worker_that_loads_its_data_checks_the_script_exists(hosts):
    load_config(hosts["plain"])  # a client, another host: no error
    refused = _refused_here("worker", "elsewhere", "--config", str(hosts["plain"]))
    assert "'/nonexistent/owner.py', which does not exist on this host" in refused


def test_a_worker_without_its_signing_key_file_refuses_to_start_and_says_how_to_make_one(hosts):
    for command in ("worker", "up"):
        refused = _refused_here(*(["worker", "bob"] if command == "worker" else ["up"]), "--config", str(hosts["keyless"]))
        assert "no key file at" in refused and "fedq keygen" in refused, refused
    assert not (hosts["tmp"] / "never-made.key").exists()  # no silent new key


def test_a_worker_off_loopback_without_curve_refuses_unless_told_insecure_plaintext(hosts):
    stderr = _refused(hosts["processes"]["open"])
    assert "without CURVE" in stderr and "--insecure-plaintext" in stderr, stderr


def test_bind_apart_from_the_advertised_address_and_public_keys_only_for_dialled_peers(hosts):
    """bob and alice listen on 127.0.0.1 and are known as localhost: pointers name localhost,
    and CURVE keys are found by it; carol's public key is missing and nobody needs it."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys, torch as th, fedq as sy
            hook = sy.TorchHook(th)
            bob, alice = (sy.connect(hook, n, config=sys.argv[1]) for n in ("bob", "alice"))
            x = th.tensor([1.0, 2.0]).send(bob).send(alice)      # alice dials bob, by his advertised address
            print(th.equal((x + x).get().get(), th.tensor([2.0, 4.0])), alice.describe()[0].next_address)
            """
        ), str(hosts["curve"])],
        capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr
    equal, next_address = done.stdout.split()
    assert equal == "True" and next_address == load_config(hosts["curve"]).worker("bob").address
    assert next_address.startswith("tcp://localhost:")


@pytest.fixture(scope="module")
def mover_and_slow_destination(hook):
    """Two workers of our own (one is stopped): the source's relays time out after 1 s."""
    source = sy.VirtualWorker(hook, id="late_source", timeout=1.0)
    destination = sy.VirtualWorker(hook, id="late_destination")
    yield source, destination
    source.shutdown()
    destination.shutdown()


def test_a_move_whose_store_timed_out_leaves_no_copy_without_a_holder(mover_and_slow_destination):
    """The destination is stopped past the source's 1 s relay timeout, then resumes: the store
    lands late. Either the mover learns the move failed and the late copy is freed, or (its
    check found the copy) the move happened and the source's copy is freed: one object, held."""
    source, destination = mover_and_slow_destination
    x = th.tensor([1.0, 2.0]).send(source)
    assert destination.ping().id == "late_destination"
    pid = destination.process.pid
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(1.5, os.kill, (pid, signal.SIGCONT))  # (after the relay gave up; the mover then asks)
    resume.start()
    try:
        x.move(destination)
        moved = True
    except sy.WorkerUnreachableError as error:
        assert "late_destination" in str(error)
        moved = False
    finally:
        resume.join()
        os.kill(pid, signal.SIGCONT)
    expected = ({}, {x.id_at_location}) if moved else ({x.id_at_location}, set())
    deadline = time.monotonic() + 10
    while (set(source._objects), set(destination._objects)) != tuple(map(set, expected)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (set(source._objects), set(destination._objects)) == tuple(map(set, expected))
    assert x.location is (destination if moved else source)
    assert th.equal(x.get(), th.tensor([1.0, 2.0]))
    assert source._objects == {} and destination._objects == {}
