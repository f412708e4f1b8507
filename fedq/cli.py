"""The `fedq` command line: run workers, look inside them, run the demo."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .config import DEFAULT_CONFIG, load_config
from .errors import FedqError

app = typer.Typer(help="fedq: remote execution on private data, over real worker processes.", no_args_is_help=True, add_completion=False)

ConfigOption = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Federation config (TOML).")


def _fail(error: Exception, code: int = 1) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code)


def _address(name: str, config: Path, address: Optional[str]) -> str:
    return address or load_config(config).worker(name).address


@app.command()
def worker(
    name: str = typer.Argument(..., help="The worker's id, as in the config."),
    config: Path = ConfigOption,
    address: Optional[str] = typer.Option(None, help="Endpoint to bind, instead of the config's."),
    timeout: Optional[float] = typer.Option(None, help="Seconds to wait for the next hop of a chain."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every message handled."),
) -> None:
    """Run one worker in this process (what each Procfile line does)."""
    from .worker import run_worker

    try:
        federation = load_config(config) if address is None or timeout is None else None
        settings = federation.worker(name) if federation is not None and name in federation.workers else None
        run_worker(
            name,
            address or federation.worker(name).address,
            timeout=timeout if timeout is not None else federation.timeout,
            verbose=verbose,
            data=settings.data if settings else None,
        )
    except FedqError as error:
        _fail(error)


@app.command()
def up(config: Path = ConfigOption, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Start every worker of a config; Ctrl-C (or SIGTERM) stops them all."""
    from .client import stop_processes
    from .launcher import start_worker_process

    try:
        federation = load_config(config)
    except FedqError as error:
        _fail(error)
    processes = {
        id: start_worker_process(id, w.address, timeout=federation.timeout, verbose=verbose, data=w.data)
        for id, w in federation.workers.items()
    }
    typer.echo(f"started {', '.join(f'{id} (pid {p.pid})' for id, p in processes.items())}; Ctrl-C stops them")
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


@app.command()
def ls(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = typer.Option(None, help="Endpoint of the worker, instead of the config's."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for an answer."),
) -> None:
    """List what a worker holds: id, type, shape, dtype, bytes, references, and where stored pointers point."""
    from rich.console import Console
    from rich.table import Table

    from .handle import connect

    try:
        handle = connect(None, name, address=_address(name, config, address))
        rows = handle.describe(timeout=timeout)
    except FedqError as error:
        _fail(error)
    table = Table(title=f"{name}: {len(rows)} objects")
    for column in ("id", "type", "shape", "dtype", "bytes", "refs", "points to"):
        table.add_column(column, justify="right" if column in ("bytes", "refs") else "left")
    for row in rows:
        table.add_row(str(row.id), row.type, str(list(row.shape)) if row.shape is not None else "", row.dtype or "", str(row.nbytes), str(row.refs), row.points_to or "")
    Console().print(table)


@app.command()
def ping(
    name: str = typer.Argument(..., help="The worker's id."),
    config: Path = ConfigOption,
    address: Optional[str] = typer.Option(None, help="Endpoint of the worker, instead of the config's."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for an answer."),
) -> None:
    """Is a worker alive? Prints its pid, version, object count and round trip."""
    from .handle import connect

    try:
        handle = connect(None, name, address=_address(name, config, address))
        start = time.perf_counter()
        status = handle.ping(timeout=timeout)
    except FedqError as error:
        _fail(error)
    typer.echo(f"{status.id}: alive, pid {status.pid}, fedq {status.version}, {status.objects} objects, {1000 * (time.perf_counter() - start):.2f} ms")


@app.command()
def demo(
    aggregator: bool = typer.Option(False, "--aggregator", help="Run federated averaging on a trusted aggregator instead."),
) -> None:
    """Run the remote-execution lesson cell by cell against real worker processes."""
    from .demo import AGGREGATOR, LESSON, run_demo

    if aggregator and not Path("workers/housing.py").exists():
        _fail(FedqError("the --aggregator demo loads workers/housing.py: run it from the repository root"))
    run_demo(AGGREGATOR if aggregator else LESSON)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="A reduced set in well under a minute (no 256 MiB, fewer repeats)."),
    json_path: Path = typer.Option(Path("bench-results.json"), "--json", help="Where to write every raw figure."),
) -> None:
    """Measure fedq against raw pyzmq and torch.distributed.rpc on the same work; exit 3 when a figure is more than 2x off its target."""
    from .bench import run_bench

    results = run_bench(quick=quick, json_path=json_path, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"raw figures: {json_path}", err=True)
    raise typer.Exit(results["gate"]["exit_code"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
