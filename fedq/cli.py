"""The `fedq` command line: run workers, look inside them, run the demo."""

from __future__ import annotations

import dataclasses
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .config import DEFAULT_CONFIG, load_config
from .errors import ConfigError, FedqError, WorkerUnreachableError
from .settings import DEFAULTS, default_text, meaning, settings_from

app = typer.Typer(help="fedq: remote execution on private data, over real worker processes.", no_args_is_help=True, add_completion=False)

ConfigOption = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Federation config (TOML).")


_show_tracebacks = False


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Show the full traceback of an error, not one line.")) -> None:
    global _show_tracebacks
    _show_tracebacks = verbose


def _fail(error: Exception, code: int = 1) -> None:
    if _show_tracebacks:
        import traceback

        typer.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
    else:
        typer.echo(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", err=True)
    raise typer.Exit(code)


def _setting_help(name: str) -> str:
    """The `--help` of a worker setting's option: its meaning and default, as settings.py has them."""
    text = meaning(name)
    return f"{text[0].upper()}{text[1:]} (default: the config's, else {default_text(name)})."


AddressOption = typer.Option(None, "--address", help="Endpoint of the worker, instead of the config's.")
TimeoutOption = typer.Option(5.0, "--timeout", help="Seconds to wait for an answer.")


def _connect(name: str, config: Path, address: Optional[str], *, owner: bool | None = None) -> Any:
    """A handle to worker `name`, by the config or by `address`. With an address, messages are
    signed with FEDQ_KEY, or with the config's key when this process has no key in use yet.
    `owner`: this is the worker's host and we act as its owner (clear, stop): those requests
    are signed with the config's admin key file; None (listings): if that file is readable here."""
    from .client import local_client
    from .handle import connect
    from .keys import key_from_environment

    try:
        if address is None:
            return connect(None, name, config=config, owner=owner)
        client = local_client()
        if key_from_environment() is None and not client.peers.knows_workers() and config.exists():
            client.use_key(load_config(config).key(create=False))
        return connect(None, name, address=address, config=config if config.exists() else None, owner=owner if config.exists() else False)
    except FedqError as error:
        _fail(error)


@app.command()
def worker(
    name: str = typer.Argument(..., help="The worker's id, as in the config."),
    config: Path = ConfigOption,
    address: Optional[str] = typer.Option(None, help="Endpoint to bind, instead of the config's (then the key comes from FEDQ_KEY if there is no config)."),
    timeout: Optional[float] = typer.Option(None, help=_setting_help("timeout")),
    allow_code: bool = typer.Option(False, "--allow-code", help=_setting_help("allow_code")),
    max_store_bytes: Optional[int] = typer.Option(None, help=_setting_help("max_store_bytes")),
    lease_seconds: Optional[float] = typer.Option(None, help=_setting_help("lease_seconds")),
    max_memory_bytes: Optional[int] = typer.Option(None, help=_setting_help("max_memory_bytes")),
    request_seconds: Optional[float] = typer.Option(None, help=_setting_help("request_seconds")),
    max_requests: Optional[int] = typer.Option(None, help=_setting_help("max_requests")),
    threads: Optional[int] = typer.Option(None, min=1, help=_setting_help("threads")),
    insecure_plaintext: bool = typer.Option(False, "--insecure-plaintext", help=_setting_help("insecure_plaintext")),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_setting_help("verbose")),
) -> None:
    """Run one worker in this process (what each Procfile line does). Its settings: these options,
    over the config's (its own table over the federation's), over the defaults (settings.py)."""
    from .keys import key_from_environment
    from .launcher import thread_budget
    from .worker import run_worker

    try:
        federation = load_config(config) if address is None or config.exists() else None
        entry = federation.workers.get(name) if federation else None
        if federation and entry is None and address is None:
            federation.worker(name)  # raises: says which workers the config has
        if entry is not None:
            entry.check_data(federation.path)
        key = federation.key() if federation else key_from_environment()
        if key is None:
            raise ConfigError("no key: give a config with a key file, or set FEDQ_KEY (see `fedq keygen`)")
        options = {
            "timeout": timeout, "max_store_bytes": max_store_bytes, "lease_seconds": lease_seconds, "max_memory_bytes": max_memory_bytes,
            "request_seconds": request_seconds, "max_requests": max_requests, "threads": threads,
            "allow_code": allow_code or None, "verbose": verbose or None,  # (a flag not given leaves the config's)
            "insecure_plaintext": insecure_plaintext or None,
        }  # fmt: skip
        settings = settings_from(options, base=federation.settings_of(name) if federation else DEFAULTS, where="fedq worker")
        if settings.threads is None:  # (a config's workers start together: the Procfile's way)
            settings = dataclasses.replace(settings, threads=thread_budget(len(federation.workers) if federation else 1))
        run_worker(
            name, address or entry.address, key=key, settings=settings,
            admin_key=federation.admin_key() if federation else None,  # (else FEDQ_ADMIN_KEY's, if set)
        )  # fmt: skip
    except FedqError as error:
        _fail(error)


@app.command()
def up(
    config: Path = ConfigOption,
    host: Optional[str] = typer.Option(None, "--host", help="Start the workers whose `host` is this (default: those whose address is this machine's)."),
    # (\\[: rich would take a bare [ray] for markup and drop it)
    on: Optional[str] = typer.Option(None, "--on", help="`ray`: place every worker of the config as a Ray actor instead (the fedq\\[ray] extra)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --on ray: an existing Ray cluster's address (default: a local instance, started and stopped here)."),
    owners: Optional[int] = typer.Option(None, "--owners", min=1, help="With --on ray: N generated data owners (owner0..) and an aggregator instead of a config's workers."),
    write_config: Path = typer.Option(Path("ray-owners.toml"), "--write-config", help="With --owners: where their config (what clients join by) is written, its keys beside it."),
    owner_data: Optional[Path] = typer.Option(None, "--owner-data", help="With --owners: each owner's data script (default: workers/housing.py, a synthetic shard each)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="With --owners: the generated config's timeout (default: the setting's)."),
    num_cpus: Optional[float] = typer.Option(None, "--num-cpus", min=0.01, help="With --on ray: CPUs Ray reserves for each worker (default: 1; --owners: the cluster's shared among them, at most 1)."),
    threads: Optional[int] = typer.Option(None, min=1, help=_setting_help("threads")),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_setting_help("verbose")),
) -> None:
    """Start this host's workers of a config (every worker, on one machine); Ctrl-C (or SIGTERM) stops them all."""
    from .peers import stop_processes
    from .launcher import start_worker_process

    if on is not None:
        generated = {"owners": owners, "write_config": write_config, "owner_data": owner_data, "timeout": timeout} if owners is not None else None
        if generated is not None and config != DEFAULT_CONFIG:
            _fail(ConfigError("--owners generates the config (--write-config says where): give no --config"))
        _up_on(on, config, host, ray_address, generated, num_cpus)
        return
    if owners is not None or owner_data is not None or timeout is not None or num_cpus is not None:
        _fail(ConfigError("--owners, --owner-data, --timeout and --num-cpus are for --on ray (a config says its workers and timeout)"))
    try:
        federation = load_config(config)
        here = federation.workers_here(host)
        key, admin_key = federation.key(), federation.admin_key()
        for w in here.values():
            w.check_data(federation.path)
    except FedqError as error:
        _fail(error)
    processes = {
        id: start_worker_process(
            id, w.address, key=key, admin_key=admin_key, together=len(here),
            settings=settings_from({"verbose": verbose or None, "threads": threads}, base=w.settings),
        )  # fmt: skip
        for id, w in here.items()
    }
    elsewhere = sorted(set(federation.workers) - set(here))
    typer.echo(
        f"started {', '.join(f'{id} (pid {p.pid})' for id, p in processes.items())}; Ctrl-C stops them"
        + (f" (on other hosts: {', '.join(elsewhere)})" if elsewhere else "")
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.2)
        dead = [id for id, p in processes.items() if p.poll() is not None]
        typer.echo(f"worker {', '.join(dead)} exited; stopping the others", err=True)
        code = 1
    except (KeyboardInterrupt, SystemExit):
        code = 0
    finally:
        stop_processes(list(processes.values()), timeout=5.0)
    raise typer.Exit(code)


def _up_on(
    on: str, config: Path, host: Optional[str], ray_address: Optional[str], generated: Optional[dict[str, Any]] = None, num_cpus: Optional[float] = None
) -> None:
    """`fedq up --on ray`: every worker of the config (or `generated` owners) a Ray actor, until Ctrl-C, SIGTERM or one exits."""
    from .ray_placement import up_on_ray

    try:
        if on != "ray":
            raise ConfigError(f"--on {on}: the only placement engine is ray")
        if host is not None:
            raise ConfigError("--host and --on ray: Ray places every worker of the config itself")
        if generated is None:
            placed = up_on_ray(config, address=ray_address, num_cpus=num_cpus)
        else:
            options = {k: v for k, v in generated.items() if v is not None}
            placed = up_on_ray(address=ray_address, num_cpus=num_cpus, **options)
    except FedqError as error:
        _fail(error)
    joined = f"; clients join by {placed.config} (sy.connect(hook, NAME, config=...))" if generated is not None else ""
    typer.echo(f"placed {', '.join(placed.actors)} on Ray at {placed.ray_address}{joined}; Ctrl-C stops them")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    code = 1
    try:
        while not (dead := placed.exited(timeout=0.5)):
            pass
        typer.echo(f"worker {', '.join(dead)} exited; stopping the others", err=True)
    except (KeyboardInterrupt, SystemExit):
        code = 0
    finally:
        placed.stop()
    raise typer.Exit(code)


@app.command()
def ls(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """List what a worker holds: id, type, shape, dtype, bytes, references and who holds them, tags, where stored
    pointers point, and for private data its dataset's privacy budget (spent, left, by whom) and its owner's word
    on model updates."""
    from rich.console import Console
    from rich.table import Table

    handle = _connect(name, config, address)
    try:
        rows = handle.describe(timeout=timeout)
    except FedqError as error:
        _fail(error)
    table = Table(title=f"{name}: {len(rows)} objects")
    for column in ("id", "type", "shape", "dtype", "bytes", "refs", "held by", "tags", "points to", "privacy"):
        # ids, types and dtypes are what a user reads or copies: never cut; holders and tags fold if they must
        table.add_column(
            column, justify="right" if column in ("bytes", "refs") else "left", no_wrap=column not in ("held by", "tags", "privacy"), overflow="fold"
        )
    for row in rows:
        shape = str(list(row.shape)) if row.shape is not None else ""
        chain = " -> ".join([row.points_to, *_follow(row, timeout, config)]) if row.points_to else ""
        table.add_row(
            str(row.id), row.type, shape, row.dtype or "", str(row.nbytes), str(row.refs), _holders(row), " ".join(row.tags), chain,
            row.privacy or "",
        )
    console = Console()
    console.width = max(console.width, 132)  # a 19-digit id, a type and where it points: complete beats narrow
    console.print(table)


def _holders(row: Any) -> str:
    """ "me:4242 (heard 2s ago, lapses in 58s), alice x2 (...)": who holds the references (this
    host's name left out), and each one's lease: its references go when it lapses."""
    here = "@" + socket.gethostname()
    leases = row.leases or (None,) * len(row.holders)
    return ", ".join(
        name.removesuffix(here) + (f" x{count}" if count > 1 else "") + (f" (heard {lease[0]:g}s ago, lapses in {lease[1]:g}s)" if lease else "")
        for (name, count), lease in zip(row.holders, leases)
    )


def _follow(row: Any, timeout: float, config: Path, depth: int = 16) -> list[str]:
    """The rest of a stored pointer's chain, hop by hop, down to the data."""
    from .handle import connect

    hops = []
    while row.next_address is not None and len(hops) < depth:
        location = row.points_to.split(":")[0]
        try:
            below = {r.id: r for r in connect(None, location, address=row.next_address, config=config if config.exists() else None, owner=None if config.exists() else False).describe(timeout=timeout)}
        except FedqError:
            hops.append("(unreachable)")
            break
        row = below.get(row.next_id)
        if row is None:
            hops.append("(gone)")
            break
        hops.append(row.points_to if row.points_to else f"{row.type} {list(row.shape or ())} {row.dtype or ''}".strip())
    return hops


@app.command()
def ping(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """Is a worker alive? Prints its pid, version, object count and round trip."""
    handle = _connect(name, config, address)
    try:
        start = time.perf_counter()
        status = handle.ping(timeout=timeout)
    except FedqError as error:
        _fail(error)
    typer.echo(f"{status.id}: alive, pid {status.pid}, fedq {status.version}, {status.objects} objects, {1000 * (time.perf_counter() - start):.2f} ms")


@app.command()
def status(
    config: Path = ConfigOption,
    timeout: float = typer.Option(2.0, help="Seconds to wait for each worker before calling it down."),
) -> None:
    """Every worker of a config: alive or not, pid, objects, bytes held, lease, torch threads, round trip. Exit code 0 if all are alive, 1 if not."""
    from rich.console import Console
    from rich.table import Table

    from .errors import WorkerUnreachableError
    from .handle import connect

    try:
        federation = load_config(config)
    except FedqError as error:
        _fail(error)
    table = Table(title=f"{config}: {len(federation.workers)} workers")
    for column in ("worker", "host", "state", "pid", "objects", "bytes", "lease", "threads", "round trip"):
        table.add_column(column, justify="left" if column in ("worker", "host", "state") else "right", no_wrap=True)
    table.add_column("address / problem", overflow="fold")
    down = 0
    for name, settings in federation.workers.items():
        try:
            handle = connect(None, name, config=config, owner=None)
            start = time.perf_counter()
            alive = handle.ping(timeout=timeout)
            round_trip = f"{1000 * (time.perf_counter() - start):.2f} ms"
        except WorkerUnreachableError:
            down += 1
            table.add_row(name, settings.host_name, "[red]down[/red]", "", "", "", "", "", "", f"no answer within {timeout:g}s at {settings.address}")
            continue
        except FedqError as error:
            down += 1
            table.add_row(name, settings.host_name, "[red]down[/red]", "", "", "", "", "", "", str(error).splitlines()[0])
            continue
        try:
            rows = handle.describe(timeout=timeout)
            objects, held = str(len(rows)), str(sum(row.nbytes for row in rows))
        except FedqError:  # it answered a ping: alive, but busy or unable to describe
            objects, held = str(alive.objects), "?"
        lease = f"{alive.lease_seconds:g}s" if alive.lease_seconds is not None else "?"
        threads = str(alive.threads) if alive.threads is not None else "?"
        table.add_row(name, settings.host_name, "[green]alive[/green]", str(alive.pid), objects, held, lease, threads, round_trip, settings.address)
    Console().print(table)
    if down:
        typer.echo(f"{down} of {len(federation.workers)} workers down", err=True)
    raise typer.Exit(1 if down else 0)


@app.command()
def clear(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """Empty a worker's store: everything it holds, its owner's data included. Other workers are not touched, so pointers into it stop working.
    Run on the worker's host: it is the owner's action, signed with the config's admin key file."""
    def clear_it(handle: Any) -> int:
        held = handle.ping(timeout=timeout).objects
        handle.clear_objects()
        return held

    typer.echo(f"{name}: cleared, {_as_owner(name, config, address, clear_it)} objects freed")


def _as_owner(name: str, config: Path, address: Optional[str], act: Callable[[Any], Any]) -> Any:
    """`act(handle)` on worker `name`, signed with the admin key (the owner's actions); a failure
    is the command's, said with what an unanswered owner's request most likely means."""
    handle = _connect(name, config, address, owner=True)
    try:
        return act(handle)
    except FedqError as error:
        _fail(_as_owner_hint(error))


def _as_owner_hint(error: FedqError) -> Exception:
    """A worker drops what is signed with another admin key unanswered, as it does a stranger's:
    after a ping answered, a silence is most likely that."""
    if isinstance(error, WorkerUnreachableError):
        return WorkerUnreachableError(
            f"{error} -- if the worker is up, the admin key file of this config is not that worker's "
            "(run this on the worker's host, with the config it was started with)"
        )
    return error


@app.command()
def stop(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """Stop a worker: it frees what it holds and exits. Run on the worker's host: it is the owner's action, signed with the config's admin key file."""
    _as_owner(name, config, address, lambda handle: handle.shutdown(timeout=timeout))
    typer.echo(f"{name}: stopped")


@app.command()
def requests(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """The requests that private objects leave: id, object, who asked, why, age, status, and the ops that produced it.
    The owner's (signed with the config's admin key file): decide with `fedq approve` / `fedq deny`."""
    from rich.console import Console
    from rich.table import Table

    rows = _as_owner(name, config, address, lambda handle: handle.requests(timeout=timeout))
    here = "@" + socket.gethostname()
    table = Table(title=f"{name}: {len(rows)} requests")
    for column in ("id", "object", "asked by", "reason", "age", "status", "shape", "history"):
        table.add_column(column, no_wrap=column in ("id", "object", "age", "status"), overflow="fold")
    for row in rows:
        status = row.status + (f": {row.note}" if row.note else "")
        shape = f"{list(row.shape or ())} {row.dtype or ''}".strip()
        table.add_row(
            str(row.id), str(row.object_id), row.asked_by.removesuffix(here), row.reason, f"{row.age:g}s", status, shape,
            "\n".join(row.history) or "(not recorded)",
        )
    console = Console()
    console.width = max(console.width, 132)
    console.print(table)


@app.command()
def approve(
    name: str = typer.Argument(..., help="The worker's id."),
    request_id: int = typer.Argument(..., help="The request's id, as `fedq requests` lists it."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """Approve a request: the object's next .get() by the client that asked succeeds, once. The owner's, as `fedq requests`."""
    decided = _as_owner(name, config, address, lambda handle: handle.approve(request_id, timeout=timeout))
    typer.echo(f"{name}: request {decided.id} approved: object {decided.object_id} may leave once, to {decided.asked_by}")


@app.command()
def deny(
    name: str = typer.Argument(..., help="The worker's id."),
    request_id: int = typer.Argument(..., help="The request's id, as `fedq requests` lists it."),
    reason: str = typer.Option("", "--reason", help="Why, for the client that asked."),
    config: Path = ConfigOption,
    address: Optional[str] = AddressOption,
    timeout: float = TimeoutOption,
) -> None:
    """Deny a request: the client's .get() of the object says so. The owner's, as `fedq requests`."""
    decided = _as_owner(name, config, address, lambda handle: handle.deny(request_id, reason, timeout=timeout))
    typer.echo(f"{name}: request {decided.id} denied")


@app.command()
def keygen(
    config: Path = ConfigOption,
    print_key: bool = typer.Option(False, "--print", help="Print a new key (hex, for FEDQ_KEY) instead of writing the config's key file."),
    curve: bool = typer.Option(False, "--curve", help="Make CURVE key pairs (one per worker, one for clients) in the config's curve_dir instead."),
    bundles: Optional[Path] = typer.Option(
        None, "--bundles", help="With --curve: write them as one folder per host (its workers' secret keys, every public key, the signing key) and one for clients, to copy."
    ),
) -> None:
    """Make a new federation signing key: every worker and script of the federation must share it."""
    from .keys import write_key_file
    from .codec import new_key

    if bundles is not None and not curve:
        _fail(ConfigError("--bundles are of CURVE keys: give --curve too"))
    if curve:
        _make_curve_keys(config, bundles)
        return
    key = new_key()
    if print_key:
        typer.echo(key.hex())
        return
    try:
        federation = load_config(config)
    except FedqError as error:
        _fail(error)
    write_key_file(federation.key_file, key)
    write_key_file(federation.admin_key_file, new_key())
    typer.echo(
        f"wrote a new key to {federation.key_file} and a new admin key (the data owner's: keep it on the workers' host) "
        f"to {federation.admin_key_file} (mode 600); restart the federation's workers to use them"
    )


def _make_curve_keys(config: Path, bundles: Optional[Path] = None) -> None:
    from .keys import write_curve_pairs

    try:
        federation = load_config(config)
    except FedqError as error:
        _fail(error)
    directory = federation.curve_dir or config.resolve().parent / f"{config.stem}-curve"
    if federation.curve_dir is None:
        _fail(ConfigError(f"{config} does not turn CURVE on: add `curve = true` to [federation]"))
    if bundles is not None:
        try:
            _write_bundles(federation, bundles)
        except FedqError as error:
            _fail(error)
        return
    write_curve_pairs(directory, [*federation.workers, "client"])
    typer.echo(f"wrote CURVE key pairs for {', '.join(federation.workers)} and client to {directory}; "
               "copy each host its own .key_secret and every .key")


BUNDLE_NOTE = """fedq key bundle for {who}. Copy it to that host, then there:
  {curve}/  ->  {curve_dir}   (the config's curve_dir; mode 700, the .key_secret files 600)
  {key}  ->  {key_file}   (the config's key_file, mode 600)
It holds {holds}.
It must not hold another host's .key_secret, nor any worker's admin key: each worker host makes
its own at its first `fedq up` ({admin_key_file}), and only its owner keeps it.
"""


def _write_bundles(federation: Any, directory: Path) -> None:
    """One folder per host (`host`, else the address's host): its workers' secret CURVE keys, every
    public key (its ZAP handler accepts them), the signing key; and `client/`, what a client host
    holds: the client key pair, every public key, the signing key. Owners run the CLI with their
    workers' own key pairs (`FederationConfig.curve_identity`): no client secret on a worker host."""
    import os
    import shutil
    import tempfile

    import zmq.auth

    from .keys import read_key_file, write_key_file

    hosts = federation.hosts()
    if "client" in hosts:
        raise ConfigError(f"{federation.path}: a host is called 'client', the clients' bundle's name: rename it (`host = ...`)")
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty: bundles are written only to a new or empty directory (old keys would mix in)")
    signing = read_key_file(federation.key_file, create=True)  # (made here, as `fedq keygen` does, if there is none)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=directory) as made:  # every pair once, then each copied where it belongs
        for name in [*federation.workers, "client"]:
            zmq.auth.create_certificates(made, name)
        for who, owns in [*hosts.items(), ("client", ["client"])]:
            (directory / who).mkdir(mode=0o700)
            curve = directory / who / "curve"
            curve.mkdir(mode=0o700)
            for name in [*federation.workers, "client"]:
                shutil.copyfile(Path(made) / f"{name}.key", curve / f"{name}.key")
            for name in owns:
                secret = curve / f"{name}.key_secret"
                secret.touch(mode=0o600)
                shutil.copyfile(Path(made) / f"{name}.key_secret", secret)
                os.chmod(secret, 0o600)
            write_key_file(directory / who / federation.key_file.name, signing)
            holds = (
                "the client key pair and every worker's public key: a client of every worker"
                if who == "client"
                else f"the secret keys of {', '.join(owns)} and every public key: that host's workers, and its owner's CLI (as them)"
            )
            (directory / who / "README.txt").write_text(BUNDLE_NOTE.format(
                who=who if who == "client" else f"host {who!r}", curve="curve", curve_dir=federation.curve_dir, key=federation.key_file.name,
                key_file=federation.key_file, holds=holds, admin_key_file=federation.admin_key_file,
            ))  # fmt: skip
    typer.echo(
        f"wrote key bundles to {directory}: {', '.join(h + '/ (' + ', '.join(ids) + ')' for h, ids in hosts.items())} and client/; "
        "copy each to its host (README.txt in each says where)"
    )


@app.command()
def demo(
    aggregator: bool = typer.Option(False, "--aggregator", help="Run federated averaging on a trusted aggregator instead."),
    secure: bool = typer.Option(False, "--secure", help="Run federated averaging by secure aggregation among the owners instead."),
) -> None:
    """Run the remote-execution lesson cell by cell against real worker processes."""
    from .demo import AGGREGATOR, LESSON, SECURE, run_demo

    if (aggregator or secure) and not Path("workers/housing.py").exists():
        _fail(FedqError("the --aggregator and --secure demos load workers/: run them from the repository root"))
    run_demo(SECURE if secure else AGGREGATOR if aggregator else LESSON)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="A reduced set in well under a minute (no 256 MiB, fewer repeats)."),
    json_path: Path = typer.Option(Path("bench-results.json"), "--json", help="Where to write every raw figure."),
    record_baseline: bool = typer.Option(False, "--record-baseline", help="Record today's misses (more than 2x off target) as what CI holds them to."),
    fl: bool = typer.Option(False, "--fl", help="FedAvg rounds instead (issue 17's workloads A-D), against Flower when flwr[simulation] is installed."),
) -> None:
    """Measure fedq against raw pyzmq and torch.distributed.rpc on the same work; exit 3 when a figure is more
    than 2x off its target, or a known miss more than 2x worse than its recorded ratio."""
    from .bench import run_bench, run_fl_bench

    if fl:
        fl_json = Path("bench-fl-results.json") if json_path == Path("bench-results.json") else json_path
        results = run_fl_bench(quick=quick, json_path=fl_json, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"raw figures: {fl_json}", err=True)
        raise typer.Exit(results["gate"]["exit_code"])
    results = run_bench(quick=quick, json_path=json_path, log=lambda line: typer.echo(line, err=True), record_baseline=record_baseline)
    typer.echo(f"raw figures: {json_path}", err=True)
    raise typer.Exit(results["gate"]["exit_code"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
