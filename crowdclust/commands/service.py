"""`crowdclust service up|down|status`: the local Prefect server, emulator, file server and workers.

Every option also reads an environment variable (`make up PROFILE=postgres WORKERS=2` sets them).
Options not given fall back to what the last `up` remembered in the service folder, so `status`
and `down` need no variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from crowdclust.service import ServiceConfig

app = typer.Typer(
    help="Run crowdclust as a local service (Prefect server + emulator + run files + workers).",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path | None,
    typer.Option(
        envvar="CROWDCLUST_SERVICE_DIR", help="Folder for databases, logs, pids. Default: .service/"
    ),
]
ServerPort = Annotated[int | None, typer.Option(envvar="CROWDCLUST_SERVER_PORT", help="Prefect server port.")]
EmulatorPort = Annotated[int | None, typer.Option(envvar="CROWDCLUST_EMULATOR_PORT", help="Emulator port.")]
FilesPort = Annotated[
    int | None, typer.Option(envvar="CROWDCLUST_FILES_PORT", help="Port of the read-only server of runs/.")
]


def _config(state_dir: Path | None, **explicit: object) -> ServiceConfig:
    """The service's settings; a damaged settings file (service.json, database-url) is one `error:`
    line naming it and what to do, as every other failure of these commands is, not a traceback."""
    from crowdclust.service import load

    try:
        return load(state_dir, **explicit)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def _rates(text: str | None) -> dict[str, float] | None:
    """`local=50,production=10` -> {"local": 50.0, "production": 10.0, "sandbox": 10.0}."""
    if not text:
        return None
    from tasks.toloka_rate import parse_rates

    try:
        return parse_rates(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _catalogue(name: str | None) -> str | None:
    """A bundled catalogue's name as it is; a TSV as an absolute path (the emulator runs elsewhere)."""
    if not name:
        return None
    from emulator.catalogues import BUNDLED

    if name in BUNDLED:
        return name
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise typer.BadParameter(
            f"{name}: no such file, and not a bundled catalogue ({', '.join(BUNDLED)})",
            param_hint="CROWDCLUST_EMULATOR_CATALOGUE",
        )
    return str(path)


def _host(host: str | None) -> str | None:
    """An IPv4 address or a host name to listen on (IPv6 is not supported: its URLs need brackets)."""
    if host is not None and ":" in host:
        raise typer.BadParameter(
            f"{host!r}: give an IPv4 address (0.0.0.0 for all of this machine's) or a host name",
            param_hint="--host / CROWDCLUST_SERVICE_HOST",
        )
    return host


@app.command()
def up(
    state_dir: StateDir = None,
    server_port: ServerPort = None,
    emulator_port: EmulatorPort = None,
    files_port: FilesPort = None,
    postgres_port: Annotated[
        int | None, typer.Option(envvar="CROWDCLUST_POSTGRES_PORT", help="Port of the local PostgreSQL.")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            envvar="CROWDCLUST_PROFILE", help="sqlite (default) or postgres: the Prefect server's database."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            envvar="CROWDCLUST_WORKERS",
            min=1,
            metavar="<int>",
            help="Process workers on the crowdclust pool.",
        ),
    ] = None,
    results: Annotated[
        str | None,
        typer.Option(
            envvar="CROWDCLUST_RESULTS",
            help="Result storage every worker uses: a folder, or an fsspec URL (s3://bucket/prefix).",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="CROWDCLUST_DATABASE_URL",
            help="An existing PostgreSQL for the postgres profile, as postgresql+asyncpg://u:pw@h/db; "
            "pass it in the environment variable (a command line is visible to every user).",
            show_default=False,
        ),
    ] = None,
    server_url: Annotated[
        str | None,
        typer.Option(envvar="CROWDCLUST_SERVER_URL", help="Use an existing Prefect server (its /api URL)."),
    ] = None,
    toloka_rates: Annotated[
        str | None,
        typer.Option(
            envvar="CROWDCLUST_TOLOKA_RATES",
            help="Requests/s per Toloka environment (limits toloka-api-ENV), e.g. local=50,production=10.",
        ),
    ] = None,
    emulator_rate_limit: Annotated[
        float | None,
        typer.Option(
            envvar="CROWDCLUST_EMULATOR_RATE_LIMIT",
            help="Requests/s per token above which the emulator answers 429 (its --rate-limit).",
        ),
    ] = None,
    emulator_catalogue: Annotated[
        str | None,
        typer.Option(
            envvar="CROWDCLUST_EMULATOR_CATALOGUE",
            help="The emulator's catalogue (its --catalogue): demo-shoes (default), digits, or a TSV of "
            "image URL + class, to rehearse a catalogue of your own (remembered: demo-shoes goes back).",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            envvar="CROWDCLUST_SERVICE_HOST",
            help="Address the server, emulator and run files listen on: 127.0.0.1 (default), or "
            "0.0.0.0 / an address of this machine for teammates on others (turns on --auth).",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth",
            envvar="CROWDCLUST_AUTH",
            help="The Prefect API and UI ask for a password, made once in the service folder's "
            "prefect-auth (remembered; CROWDCLUST_AUTH=0 turns it off).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Re-deploy prefect.yaml as it is, dropping UI edits."),
    ] = False,
    timings: Annotated[bool, typer.Option("--timings", help="Print where the seconds went.")] = False,
) -> None:
    """Start what is not running, deploy prefect.yaml when it changed (keeping UI edits), start workers."""
    from crowdclust import service
    from crowdclust.service.config import is_loopback

    if profile is not None and profile not in ("sqlite", "postgres"):
        raise typer.BadParameter(
            f"must be sqlite or postgres, not {profile!r}", param_hint="--profile / CROWDCLUST_PROFILE"
        )
    cfg = _config(
        state_dir,
        server_port=server_port,
        emulator_port=emulator_port,
        files_port=files_port,
        postgres_port=postgres_port,
        profile=profile,
        workers=workers,
        results=results,
        database_url=database_url,
        server_url=server_url,
        rates=_rates(toloka_rates),
        emulator_rate_limit=emulator_rate_limit,
        emulator_catalogue=_catalogue(emulator_catalogue),
        host=_host(host),
        auth=True if auth is None and host is not None and not is_loopback(host) else auth,
    )
    try:
        seconds = service.up(cfg, say=typer.echo, force=force)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    if timings:
        typer.echo("timings: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))


@app.command()
def down(
    state_dir: StateDir = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Stop even with flow runs in flight (they crash; each can be resumed)."),
    ] = False,
) -> None:
    """Stop the workers, the emulator, the file server, the server (and PostgreSQL) started by `up`.

    Flow runs in flight on the server (a teammate's, a schedule's) are named first: from a terminal
    `down` asks before it stops them, elsewhere it refuses without --force (`make down FORCE=1`).
    """
    import sys

    from crowdclust import service
    from crowdclust.service.inflight import runs_in_flight, what_stops

    cfg = _config(state_dir)
    found = runs_in_flight(cfg) if cfg.state_dir.exists() else None
    if found and found.total:
        for line in what_stops(found, cfg, forced=force):
            typer.echo(line, err=not force)
        if not force:
            if not sys.stdin.isatty():
                typer.echo("error: not stopped; stop anyway with --force (make down FORCE=1)", err=True)
                raise typer.Exit(1)
            if not typer.confirm("Stop the service anyway?", default=False):
                typer.echo("not stopped")
                raise typer.Exit(1)
    service.down(cfg, say=typer.echo)


@app.command()
def status(state_dir: StateDir = None) -> None:
    """Say which parts of the local service answer, and where."""
    from crowdclust import service

    cfg = _config(state_dir)
    strangers = service.strangers(cfg)
    for name, running in service.status(cfg).items():
        if name in strangers:
            typer.echo(
                f"{name}: not running; port {strangers[name]} answers, but not as this service's {name} "
                "(another checkout's or another user's service?): `up` refuses the port"
            )
            continue
        typer.echo(f"{name}: {'running' if running else 'stopped'}")
    for name, pids in service.left_running(cfg).items():
        shown = ", ".join(map(str, pids))
        typer.echo(
            f"{name}: {len(pids)} flow-run process(es) an earlier {name} left running when it was killed "
            f"(pid {shown}): they go on with their runs; `make down` ends them (they close their pools)"
        )
    typer.echo(f"Prefect UI: {cfg.ui_url}  emulator: {cfg.emulator_url}  run files: {cfg.runs_url}/")
    if cfg.auth and not cfg.server_url:
        typer.echo(
            f"The UI and the API ask for the password in {cfg.auth_file}; clients read it from "
            "PREFECT_API_AUTH_STRING"
        )
    if cfg.on_network:
        typer.echo(
            f"Listening on {cfg.host}: teammates use http://{cfg.public_host}:{cfg.server_port} (UI; "
            f"PREFECT_API_URL is that /api), http://{cfg.public_host}:{cfg.emulator_port} (emulator), "
            f"{cfg.shared_runs_url}/ (run files)"
        )
