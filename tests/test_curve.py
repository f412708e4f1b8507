"""CURVE: a federation across hosts encrypts every link and lets in only the keys it knows."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from fedq import messages as msg
from fedq.codec import Codec, new_key
from fedq.config import load_config
from fedq.keys import write_key_file
from helpers import free_port, stop


@pytest.fixture(scope="module")
def curve_federation(tmp_path_factory: pytest.TempPathFactory):
    """One `fedq up` for the module (each test only reads), serving once its workers listen."""
    tmp_path = tmp_path_factory.mktemp("curve")
    write_key_file(tmp_path / "hmac.key", new_key())
    config = tmp_path / "hosts.toml"
    ports = [free_port(), free_port()]
    config.write_text(
        f'[federation]\ntimeout = 10\nkey_file = "{tmp_path / "hmac.key"}"\ncurve = true\ncurve_dir = "{tmp_path / "curve"}"\n'
        + "".join(f'[workers.{name}]\naddress = "tcp://127.0.0.1:{port}"\n' for name, port in zip(("bob", "alice"), ports))
    )
    made = subprocess.run([sys.executable, "-m", "fedq", "keygen", "--curve", "--config", str(config)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "curve" / "bob.key_secret").stat().st_mode & 0o077 == 0
    up = subprocess.Popen([sys.executable, "-m", "fedq", "up", "--config", str(config)], stdout=subprocess.PIPE, text=True)
    up.stdout.readline()
    deadline = time.monotonic() + 60
    for port in ports:  # listening (so no answer below means refused, not "not up yet")
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens on port {port}"
                time.sleep(0.05)
    yield config
    stop(up)


def _client(code: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(config)], capture_output=True, text=True, timeout=90)


def test_a_client_with_the_federations_keys_works_through_encrypted_links(curve_federation):
    done = _client(
        """
        import sys, torch as th, fedq as sy
        hook = sy.TorchHook(th)
        bob, alice = (sy.connect(hook, n, config=sys.argv[1]) for n in ("bob", "alice"))
        x = th.tensor([1.0, 2.0]).send(bob).send(alice)        # alice reaches bob over CURVE too
        print(th.equal((x * 3).get().get(), th.tensor([3.0, 6.0])), bob.ping(timeout=20).id)
        """,
        curve_federation,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "bob"]


def test_a_client_without_an_accepted_key_gets_nothing(curve_federation):
    """Raw zmq sockets, here (no client of this process is involved): one without CURVE, one
    with a key pair nobody allowed; both hold the federation's signing key."""
    federation = load_config(curve_federation)
    codec = Codec(federation.key())  # it even holds the signing key
    bob = federation.worker("bob")
    server_key = zmq.auth.load_certificate(str(federation.curve_dir / "bob.key"))[0]
    heard = []
    for attempt in ("plain", "stranger"):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if attempt == "stranger":  # CURVE, but a key pair nobody allowed
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.curve_serverkey = server_key
        sock.connect(bob.address)
        sock.send_multipart(codec.encode(1, msg.Ping()))
        heard += [attempt, "answered" if sock.poll(500) else "refused"]  # (bob listens: an answer takes ms)
        sock.close()
    assert heard == ["plain", "refused", "stranger", "refused"]
