"""One config for many hosts (issue 18): which workers `fedq up` starts on a host (`--host`, or
the workers at this machine's addresses), `fedq keygen --curve --bundles` writing each host only
its own secrets, and the CLI run from those bundles as each host would: `fedq status` from a
client host and from a worker host, `fedq stop` by the owner on its host. Across namespaces, with
the same bundles: tests/test_netns.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedq.cli import app
from fedq.config import load_config
from fedq.errors import ConfigError
from helpers import free_port, stop


def _config(tmp: Path, workers: str) -> Path:
    config = tmp / "hosts.toml"
    config.write_text(f'[federation]\ntimeout = 10\nkey_file = "{tmp / "fed.key"}"\ncurve = true\ncurve_dir = "{tmp / "curve"}"\n' + workers)
    return config


def test_the_workers_of_a_host_by_name_or_by_this_machines_addresses(tmp_path):
    config = _config(tmp_path, (
        '[workers.here]\naddress = "tcp://127.0.0.1:5601"\nhost = "h1"\n'
        '[workers.there]\naddress = "tcp://192.0.2.1:5601"\nhost = "h2"\n'  # (TEST-NET-1: nobody's)
        '[workers.also_there]\naddress = "tcp://192.0.2.1:5602"\n'
        '[workers.local]\naddress = "ipc:///tmp/never.sock"\nhost = "h1"\n'
    ))  # fmt: skip
    federation = load_config(config)
    assert set(federation.workers_here()) == {"here", "local"}
    assert set(federation.workers_here("h2")) == {"there"}
    assert set(federation.workers_here("h1")) == {"here", "local"}
    assert federation.hosts() == {"h1": ["here", "local"], "h2": ["there"], "192.0.2.1": ["also_there"]}
    with pytest.raises(ConfigError, match="no worker has host = 'h3'.*h2 \\(there\\)"):
        federation.workers_here("h3")
    (tmp_path / "other.toml").write_text('[federation]\nhost = "h1"\n[workers.a]\naddress = "tcp://127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="host is each worker's own"):
        load_config(tmp_path / "other.toml")


def test_bundles_hold_each_hosts_own_secrets_and_every_public_key(tmp_path):
    config = _config(tmp_path, (
        '[workers.bob]\naddress = "tcp://10.0.0.1:5601"\nhost = "h1"\n'
        '[workers.carol]\naddress = "tcp://10.0.0.1:5602"\nhost = "h1"\n'
        '[workers.alice]\naddress = "tcp://10.0.0.2:5601"\n'
    ))  # fmt: skip
    bundles = tmp_path / "bundles"
    made = CliRunner().invoke(app, ["keygen", "--curve", "--bundles", str(bundles), "--config", str(config)])
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in bundles.iterdir()) == ["10.0.0.2", "client", "h1"]
    secrets = {"h1": {"bob", "carol"}, "10.0.0.2": {"alice"}, "client": {"client"}}
    signing = (tmp_path / "fed.key").read_text()
    for host, own in secrets.items():
        curve = bundles / host / "curve"
        assert {p.name.removesuffix(".key_secret") for p in curve.glob("*.key_secret")} == own  # nobody else's secret
        assert {p.stem for p in curve.glob("*.key")} == {"bob", "carol", "alice", "client"}
        for secret in [*curve.glob("*.key_secret"), bundles / host / "fed.key"]:
            assert secret.stat().st_mode & 0o077 == 0, secret
        assert (bundles / host).stat().st_mode & 0o077 == 0 and curve.stat().st_mode & 0o077 == 0
        assert (bundles / host / "fed.key").read_text() == signing  # the key file's (made if it was not)
        assert not list((bundles / host).glob("*admin*"))  # an owner's admin key is made on its own host, never copied
        os.symlink(curve, tmp_path / "curve")  # (this host's view: its bundle where the config says)
        assert load_config(config).curve_identity() == ("client" if host == "client" else sorted(own)[0])
        os.unlink(tmp_path / "curve")
    again = CliRunner().invoke(app, ["keygen", "--curve", "--bundles", str(bundles), "--config", str(config)])
    assert again.exit_code == 1 and "not empty" in again.output  # old and new keys never mix


def _fedq(*args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedq", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]


def test_up_by_host_then_status_and_the_owners_stop_from_a_worker_hosts_bundle(tmp_path):
    """w1 on host h1 is started by `fedq up --host h1`; w2 (host h2) is not. `fedq status` from h1's
    bundle, which holds no client key, lists both (w1 alive, w2 down); h1's owner stops w1 from it.
    (From the client's bundle: tests/test_netns.py.)"""
    ports = free_port(), free_port()
    config = _config(tmp_path, "".join(f'[workers.w{i + 1}]\naddress = "tcp://127.0.0.1:{p}"\nhost = "h{i + 1}"\n' for i, p in enumerate(ports)))
    bundles = tmp_path / "bundles"
    made = CliRunner().invoke(app, ["keygen", "--curve", "--bundles", str(bundles), "--config", str(config)])
    assert made.exit_code == 0, made.output
    view = tmp_path / "curve"

    def as_host(host: str) -> None:  # the config's curve_dir is what this "host" holds: its bundle
        if view.is_symlink():
            view.unlink()
        view.symlink_to(bundles / host / "curve")

    as_host("h1")
    up = _fedq("up", "--host", "h1", "--config", str(config))
    try:
        deadline = time.monotonic() + 60
        while True:  # (its keys are read at start: the view may change after)
            import socket

            try:
                socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                break
            except OSError:
                assert up.poll() is None and time.monotonic() < deadline, up.communicate()
                time.sleep(0.05)
        seen = {}
        for host in ("h1",):
            as_host(host)
            seen[host] = subprocess.run(
                [sys.executable, "-m", "fedq", "status", "--config", str(config), "--timeout", "10"], capture_output=True, text=True, timeout=90,
                env={**os.environ, "COLUMNS": "200"},
            )
        for host, status in seen.items():
            assert status.returncode == 1, (host, status.stdout, status.stderr)  # w2 is down
            rows = {line.split()[1]: line for line in status.stdout.splitlines() if line.split()[1:2] in (["w1"], ["w2"])}
            assert "alive" in rows["w1"] and "h1" in rows["w1"], (host, status.stdout)
            assert "down" in rows["w2"] and "h2" in rows["w2"], (host, status.stdout)
            assert "1 of 2 workers down" in status.stderr
        as_host("h1")
        stopped = subprocess.run([sys.executable, "-m", "fedq", "stop", "w1", "--config", str(config), "--timeout", "10"], capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0 and "w1: stopped" in stopped.stdout, stopped.stderr
        out, err = up.communicate(timeout=30)
        assert "started w1" in out and "(on other hosts: w2)" in out, out
    finally:
        if up.poll() is None:
            stop(up)
