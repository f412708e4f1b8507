"""Workers are real processes: started from a config (the Procfile's way) or by a script, and never orphaned."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch as th

import fedq as sy
from fedq.keys import write_key_file
from helpers import free_port, gone, stop


def _script(body: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body), *args], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("how", ["sigkill", "sigkill-while-it-starts", "exit"])
def test_workers_die_with_the_script_that_started_them(how):
    script = _script(
        """
        import sys, time, torch as th, fedq as sy
        hook = sy.TorchHook(th)
        w = sy.VirtualWorker(hook, id="child")
        if sys.argv[-1] != "sigkill-while-it-starts":  # (otherwise: killed while the worker imports torch)
            x = th.tensor([1]).send(w)
            w.ping()
        print(w.pid, flush=True)
        if sys.argv[-1] != "exit":
            time.sleep(60)
        """,
        how,
    )
    pid = int(script.stdout.readline())
    if how.startswith("sigkill"):
        script.send_signal(signal.SIGKILL)
    script.wait(30)
    assert gone(pid, within=10), f"worker {pid} survived its script ({how})"


@pytest.fixture
def tcp_config(tmp_path: Path) -> Path:
    """Two workers on loopback tcp, sharing this test session's key (one process, one federation)."""
    key_file = tmp_path / "federation.key"
    write_key_file(key_file, sy.local_client().key)
    write_key_file(tmp_path / "federation.admin.key", sy.codec.new_key())  # the workers' owner's (us, on their host)
    config = tmp_path / "federation.toml"
    config.write_text(
        f'[federation]\ntimeout = 10\nkey_file = "{key_file}"\n'
        + "".join(f'[workers.{name}]\naddress = "tcp://127.0.0.1:{free_port()}"\n' for name in ("bob", "alice"))
    )
    return config


def test_procfile_style_workers_from_a_config_reach_each_other(hook, tcp_config):
    """`fedq worker NAME --config` processes (what each Procfile line runs), joined by id."""
    procs = [subprocess.Popen([sys.executable, "-m", "fedq", "worker", name, "--config", str(tcp_config)]) for name in ("bob", "alice")]
    try:
        bob = sy.connect(hook, "bob", config=tcp_config, owner=True)  # we started them, on their host: we stop them
        alice = sy.connect(hook, "alice", config=tcp_config, owner=True)
        assert bob.address.startswith("tcp://127.0.0.1:")
        assert bob.ping(timeout=20).pid == procs[0].pid
        x = th.tensor([1.0, 2.0]).send(bob).send(alice)  # alice has never heard of bob
        listed = subprocess.run([sys.executable, "-m", "fedq", "ls", "alice", "--config", str(tcp_config)], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "PointerTensor" in listed.stdout, listed.stderr  # the CLI signs with the config's key
        assert th.equal((x * 3).get().get(), th.tensor([3.0, 6.0]))
        del x
        assert bob._objects == {} and alice._objects == {}
        bob.shutdown()
        alice.shutdown()
        assert procs[0].wait(10) == 0 and procs[1].wait(10) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_fedq_up_starts_every_worker_and_stops_them_on_sigterm(hook, tcp_config):
    up = subprocess.Popen([sys.executable, "-m", "fedq", "up", "--config", str(tcp_config)], stdout=subprocess.PIPE, text=True)
    try:
        line = up.stdout.readline()
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", line)]
        assert len(pids) == 2
        bob = sy.connect(hook, "bob", config=tcp_config)
        assert bob.ping(timeout=20).id == "bob"
        up.send_signal(signal.SIGTERM)
        assert up.wait(15) == 0
        assert all(gone(pid, within=10) for pid in pids)
    finally:
        up.kill()
        up.wait()


def test_exit_with_live_pointers_is_quiet_and_bounded():
    """PySyft 0.2's __del__ raised at interpreter exit; ours must not, and exit must be quick."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import torch as th, fedq as sy
            hook = sy.TorchHook(th)
            bob = sy.VirtualWorker(hook, id="bob")
            alice = sy.VirtualWorker(hook, id="alice")
            keep = [th.ones(3).send(bob).send(alice) for _ in range(50)]
            y = keep[0] + 1
            print(bob.objects_count())
            """
        )],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "51"  # 50 tensors and y
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - start < 30


def test_works_inside_a_running_asyncio_event_loop(bob):
    """Jupyter runs cells inside a running loop: nothing in fedq may need one of its own."""
    import asyncio

    async def cell():
        x = th.tensor([1, 2]).send(bob)
        return (x * 2).get()

    assert th.equal(asyncio.run(cell()), th.tensor([2, 4]))


def test_trusted_aggregator_example_against_fedq_up_workers(tmp_path: Path):
    """examples/trusted_aggregator.py against a standing federation whose owners load their shards."""
    root = Path(__file__).resolve().parent.parent
    config = tmp_path / "federation.toml"
    data = root / "workers" / "housing.py"
    write_key_file(tmp_path / "federation.key", sy.codec.new_key())  # (`fedq keygen`'s: no worker makes one)
    config.write_text(
        f'[federation]\ntimeout = 20\nkey_file = "{tmp_path / "federation.key"}"\n'
        f'[workers.bob]\naddress = "tcp://127.0.0.1:{free_port()}"\ndata = "{data}"\n'
        f'[workers.alice]\naddress = "tcp://127.0.0.1:{free_port()}"\ndata = "{data}"\n'
        f'[workers.secure_worker]\naddress = "tcp://127.0.0.1:{free_port()}"\n'
    )
    up = subprocess.Popen([sys.executable, "-m", "fedq", "up", "--config", str(config)], stdout=subprocess.PIPE, text=True)
    try:
        up.stdout.readline()
        done = subprocess.run(
            [sys.executable, str(root / "examples" / "trusted_aggregator.py"), "--config", str(config), "--rounds", "3"],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "round  3:" in done.stdout and "averaged model:" in done.stdout
    finally:
        stop(up)


def test_a_script_that_only_hooks_torch_exits_cleanly():
    """TorchHook starts warming torch's meta kernels in a thread: exiting at once must not abort."""
    done = subprocess.run([sys.executable, "-c", "import torch as th, fedq as sy; hook = sy.TorchHook(th)"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


STOPS = ("shutdown", "sigterm")


@pytest.fixture(scope="module")
def to_stop(hook):
    """A worker for each way test_a_worker_stops_cleanly_with_exit_code_0 stops one: started at once."""
    workers = {how: sy.VirtualWorker(hook, id=f"stopped-by-{how}") for how in STOPS}
    yield workers
    for worker in workers.values():  # (each test stops its own: what a failure left is killed)
        if worker.alive():
            worker.process.kill()
            worker.process.wait()


@pytest.mark.parametrize("how", STOPS)
def test_a_worker_stops_cleanly_with_exit_code_0(to_stop, how):
    """A stop the owner asks for is a clean exit: code 0, no "Fatal Python error" from the
    thread that watches the parent, whatever the worker held."""
    worker = to_stop[how]
    held = [th.ones(1000).send(worker) for _ in range(5)]  # something to free on the way out
    worker.ping()
    if how == "shutdown":
        worker.shutdown()
    else:
        worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(10) == 0
    del held
