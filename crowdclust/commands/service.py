"""`crowdclust service up|down|status`: the local Prefect server, emulator and worker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from crowdclust.service import ServiceConfig

app = typer.Typer(
    help="Run crowdclust as a local service (Prefect server + emulator + worker).", no_args_is_help=True
)

ServerPort = Annotated[int, typer.Option(envvar="CROWDCLUST_SERVER_PORT", help="Prefect server port.")]
EmulatorPort = Annotated[int, typer.Option(envvar="CROWDCLUST_EMULATOR_PORT", help="Emulator port.")]
StateDir = Annotated[
    Path | None, typer.Option(envvar="CROWDCLUST_SERVICE_DIR", help="Folder for databases, logs and pids.")
]


def _config(server_port: int, emulator_port: int, state_dir: Path | None) -> ServiceConfig:
    from crowdclust.service import ServiceConfig

    defaults = ServiceConfig()
    return ServiceConfig(
        state_dir=(state_dir or defaults.state_dir).resolve(),
        server_port=server_port,
        emulator_port=emulator_port,
    )


@app.command()
def up(
    server_port: ServerPort = 4200, emulator_port: EmulatorPort = 8765, state_dir: StateDir = None
) -> None:
    """Start the server, the emulator and a worker (only what is not running), and deploy."""
    from crowdclust import service

    try:
        service.up(_config(server_port, emulator_port, state_dir), say=typer.echo)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def down(
    server_port: ServerPort = 4200, emulator_port: EmulatorPort = 8765, state_dir: StateDir = None
) -> None:
    """Stop the worker, the emulator and the server started by `up`."""
    from crowdclust import service

    service.down(_config(server_port, emulator_port, state_dir), say=typer.echo)


@app.command()
def status(
    server_port: ServerPort = 4200, emulator_port: EmulatorPort = 8765, state_dir: StateDir = None
) -> None:
    """Say which parts of the local service answer."""
    from crowdclust import service

    for name, running in service.status(_config(server_port, emulator_port, state_dir)).items():
        typer.echo(f"{name}: {'running' if running else 'stopped'}")
