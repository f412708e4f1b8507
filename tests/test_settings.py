"""Settings in one place (issue 14): `WorkerSettings` is every setting of a worker, and every
source (CLI options, config files, `VirtualWorker(...)` keywords) builds one from it. No worker
process here: these are quick."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import typer

import fedq as sy
from fedq.cli import app
from fedq.client import DEFAULT_TIMEOUT
from fedq.config import load_config
from fedq.errors import ConfigError
from fedq.settings import DEFAULTS, WorkerSettings, meaning, settings_from, settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_has_the_table_of_settings_as_settings_py_makes_it():
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README's table of settings drifted: paste fedq.settings.settings_table() in"


def test_every_setting_has_a_one_line_meaning():
    for field in dataclasses.fields(WorkerSettings):
        text = field.metadata.get("meaning")
        assert text and "\n" not in text and "|" not in text, field.name


def test_the_defaults_written_elsewhere_are_the_tables(hook):
    if "FEDQ_TIMEOUT" not in os.environ:  # (set, it is the client's: only then may the two differ)
        assert DEFAULT_TIMEOUT == DEFAULTS.timeout
    assert hook.local_worker.codec.max_message_bytes == DEFAULTS.max_message_bytes


def test_settings_travel_to_a_worker_process_as_json_and_back():
    settings = settings_from({"timeout": 2, "peers": {"bob": "ipc:///x"}, "data": Path("/tmp/x.py"), "allow_code": True})
    assert settings.timeout == 2.0 and settings.data == "/tmp/x.py"
    assert WorkerSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_none_is_not_given_and_a_wrong_kind_or_name_is_named():
    base = settings_from({"lease_seconds": 5})
    assert settings_from({"lease_seconds": None, "key_file": "ignored"}, base=base).lease_seconds == 5.0
    with pytest.raises(ConfigError, match="lease_seconds"):
        settings_from({"lease_seconds": "soon"})
    with pytest.raises(TypeError, match="lease_second"):
        settings_from({"lease_second": 5}, strict=True)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[federation]\nkey_file = "{tmp_path / "k.key"}"\n' + text)
    return path


def test_a_worker_table_is_laid_over_the_federation_table_over_the_defaults(tmp_path):
    federation = load_config(_config(tmp_path, (
        "timeout = 7\nmax_store_bytes = 1024\nlease_seconds = 9\n"
        '[workers.bob]\naddress = "ipc:///b"\nmax_store_bytes = 2048\n'
        '[workers.alice]\naddress = "ipc:///a"\n'
    )))  # fmt: skip
    bob, alice = federation.settings_of("bob"), federation.settings_of("alice")
    assert (bob.timeout, bob.max_store_bytes, bob.lease_seconds) == (7.0, 2048, 9.0)
    assert (alice.timeout, alice.max_store_bytes, alice.lease_seconds) == (7.0, 1024, 9.0)
    assert alice.request_seconds == DEFAULTS.request_seconds and alice.max_requests == DEFAULTS.max_requests
    assert bob.peers == alice.peers == {"bob": "ipc:///b", "alice": "ipc:///a"}
    assert federation.settings_of("stranger") == federation.settings  # (`fedq worker stranger --address ...`)
    assert federation.curve_dir is None


@pytest.mark.parametrize("table, key", [
    ('data = "workers/housing.py"\n', "data"),
    ('[workers.bob]\naddress = "ipc:///b"\ncurve_dir = "/tmp"\n', "curve_dir"),
    ('[workers.bob]\naddress = "ipc:///b"\nadmin_key_file = "/tmp/a.key"\n', "admin_key_file"),
    ('peers = {}\n', "peers"),
])  # fmt: skip
def test_a_setting_in_the_wrong_table_is_refused_by_name(tmp_path, table, key):
    with pytest.raises(ConfigError, match=key):
        load_config(_config(tmp_path, table))


def test_a_curve_dir_without_curve_encrypts_nothing(tmp_path):
    assert load_config(_config(tmp_path, f'curve_dir = "{tmp_path}"\n')).curve_dir is None
    assert load_config(_config(tmp_path, f'curve = true\ncurve_dir = "{tmp_path}"\n')).curve_dir == tmp_path


def test_each_fedq_worker_option_is_a_setting_with_its_meaning():
    command = typer.main.get_command(app).commands["worker"]
    options = {p.name: p for p in command.params if p.param_type_name == "option"}
    settings = {f.name for f in dataclasses.fields(WorkerSettings)}
    for name in ("timeout", "allow_code", "max_store_bytes", "lease_seconds", "max_memory_bytes", "request_seconds", "max_requests", "verbose"):
        assert name in settings and name in options, name
        assert meaning(name)[1:] in options[name].help, name
    assert {"--lease-seconds", "--allow-code", "-v"} <= {o for p in options.values() for o in p.opts}


def test_virtual_worker_refuses_a_setting_it_does_not_have_before_starting_anything(hook):
    with pytest.raises(TypeError, match="lease_second"):
        sy.VirtualWorker(hook, id="never_started", lease_second=5)
    with pytest.raises(TypeError, match="admin_key_file"):
        sy.VirtualWorker(hook, id="never_started", admin_key_file="/tmp/a.key")
