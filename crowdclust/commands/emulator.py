"""`crowdclust emulator`: serve the local Toloka emulator, or write one of its catalogues.

Heavy imports (fastapi, uvicorn, Pillow, pandas) happen inside the command bodies so that importing
the CLI stays instant.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import stat
from pathlib import Path

import typer

app = typer.Typer(
    help="A local Toloka emulator with a simulated crowd (serves the Toloka API toloka-kit 1.2.3 speaks).",
)


TOKEN_ENV = "CROWDCLUST_EMULATOR_TOKEN"


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The token from `--token-file` (mode 0600 or stricter), `--token`, or `CROWDCLUST_EMULATOR_TOKEN`.

    A file that group or others can read is refused: the token would be as public as on argv.
    """
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            text = token_file.read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {token_file}: {exc.strerror}", param_hint="--token-file"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise typer.BadParameter(
                f"{token_file} is readable by group or others (mode {stat.S_IMODE(mode):o}): a token "
                f"file must be its owner's alone; if it holds only the token, run `chmod 600 {token_file}`",
                param_hint="--token-file",
            )
        if not text:
            raise typer.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return text
    return token or os.environ.get(TOKEN_ENV) or None


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    # `metavar`: typer's `<int range>` before the range itself narrowed the help column until
    # CROWDCLUST_EMULATOR_ADMIN_TOKEN was cut at 80 columns (tests/test_cli_help.py).
    port: int = typer.Option(8765, min=0, max=65535, metavar="<int>", help="TCP port (0 picks a free one)."),
    db: Path | None = typer.Option(
        None, help="SQLite file for the state; a restart continues from it. Default: memory."
    ),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="File holding the OAuth token clients must send (mode 0600). "
        f"Else --token, else ${TOKEN_ENV}, else the emulator's default token.",
    ),
    token: str | None = typer.Option(
        None,
        help="OAuth token, for interactive use only: anyone on the machine sees argv in `ps`.",
    ),
    admin_token: str | None = typer.Option(
        None,
        envvar="CROWDCLUST_EMULATOR_ADMIN_TOKEN",
        help="A second token that may call the /_emulator/ routes that change state (besides the API token).",
    ),
    catalogue: str = typer.Option(
        "demo-shoes", help="Catalogue: demo-shoes, digits, or a TSV path (image URL + class)."
    ),
    size: int = typer.Option(82, min=1, metavar="<int>", help="Number of items of a bundled catalogue."),
    speed: float = typer.Option(600.0, help="Simulated seconds per wall second (0 freezes the clock)."),
    start: float | None = typer.Option(
        None, help="Simulated start instant, POSIX seconds (default: now; restarts resume from --db)."
    ),
    seed: int = typer.Option(0, help="Seed of the crowd and the catalogue."),
    workers: int | None = typer.Option(
        None,
        min=1,
        metavar="<int>",
        help="Size of the simulated labour market (default: the emulator's, thousands).",
    ),
    fail_rate: float = typer.Option(
        0.0, help="Share of API requests answered 429/500/503 (fault injection)."
    ),
    latency_ms: int = typer.Option(0, help="Latency added to every API request, in milliseconds."),
    rate_limit: float = typer.Option(
        0.0,
        min=0.0,
        metavar="<float>",
        help="Requests per second per token (sliding 1 s window); above it: 429. 0: no limit.",
    ),
    balance: float = typer.Option(10_000.0, help="Initial requester balance."),
    crowd: str | None = typer.Option(
        None,
        help="Shares of worker types, e.g. 'spammer=0.3,colour_biased=0.2' (types: diligent, "
        "colour_biased, lumper, splitter, careless, spammer); the types not named share the rest "
        "in their default proportions (60/10/5/5/10/10%).",
    ),
) -> None:
    """Serve the emulator in the foreground until Ctrl-C / SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    _check_db(db)
    from emulator import DEFAULT_TOKEN, EmulatorSettings, serve_forever
    from emulator.app import MAX_LATENCY_MS
    from emulator.clock import MAX_SPEED
    from emulator.mix import MixError, parse_mix, shares

    # The bounds `POST /_emulator/config` holds these settings to once the emulator runs.
    _check_range(speed, MAX_SPEED, "--speed")
    _check_range(fail_rate, 1.0, "--fail-rate")
    _check_range(latency_ms, MAX_LATENCY_MS, "--latency-ms")
    try:
        mix = parse_mix(crowd) if crowd else None
    except MixError as exc:
        raise typer.BadParameter(str(exc), param_hint="--crowd") from None

    settings = EmulatorSettings(
        host=host,
        port=port,
        db=str(db) if db else None,
        token=read_token(token, token_file) or DEFAULT_TOKEN,
        admin_token=admin_token,
        catalogue=catalogue,
        catalogue_size=size,
        speed=speed,
        start=start,
        seed=seed,
        **({"workers": workers} if workers is not None else {}),
        fail_rate=fail_rate,
        latency_ms=latency_ms,
        rate_limit=rate_limit,
        balance=balance,
        crowd=mix,
    )
    source = (
        "--token-file"
        if token_file
        else ("--token" if token else (TOKEN_ENV if os.environ.get(TOKEN_ENV) else "default"))
    )

    started = False

    def announce(url: str, token: str) -> None:
        nonlocal started
        started = True
        typer.echo(f"Toloka emulator ready at {url}")
        # The token itself is never printed unless it is the public default one.
        typer.echo(f"  token: {token if source == 'default' else f'from {source}'}")
        typer.echo(f"  client: TolokaClient(token, url={url!r})")
        typer.echo(
            f"  state: {settings.db or 'in memory'}; market: {settings.workers} workers, "
            f"seed {seed}, speed x{speed:g}"
            + (f"; rate limit {rate_limit:g}/s per token" if rate_limit else "")
        )
        if mix:
            typer.echo(
                "  crowd: " + ", ".join(f"{name} {share * 100:g}%" for name, share in shares(mix).items())
            )

    try:
        serve_forever(settings, announce=announce)
    except Exception as exc:
        problem = None if started else _startup_problem(exc, host, port, db)
        if problem is None:
            raise
        raise problem from None


def _check_range(value: float, most: float, option: str) -> None:
    """Refuse a value outside [0, most] (or not finite) with the option's name, as BadParameter."""
    if not (math.isfinite(value) and 0 <= value <= most):
        raise typer.BadParameter(f"must be from 0 to {most:g}, not {value:g}", param_hint=option)


def _check_db(db: Path | None) -> None:
    """Refuse a state file SQLite cannot create, before anything is built.

    SQLite itself only says "unable to open database file".
    """
    if db is None:
        return
    if db.is_dir():
        raise typer.BadParameter(f"{db} is a directory, not a file", param_hint="--db")
    if not db.parent.is_dir():
        raise typer.BadParameter(f"{db}: directory {db.parent} does not exist", param_hint="--db")


def _startup_problem(exc: Exception, host: str, port: int, db: Path | None) -> typer.BadParameter | None:
    """The option to blame for an error raised before the emulator served, or None (a fault of ours).

    The emulator opens its state (SQLite), reads its catalogue and binds its port, in that order,
    before it announces itself; an error of one of those is the user's input.
    """
    import sqlite3

    from emulator.catalogues import CatalogueError

    if isinstance(exc, CatalogueError):
        return typer.BadParameter(str(exc), param_hint="--catalogue")
    if isinstance(exc, sqlite3.Error):
        return typer.BadParameter(f"{db}: cannot use it as the state database: {exc}", param_hint="--db")
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return typer.BadParameter(f"{port} is already in use", param_hint="--port")
    if isinstance(exc, socket.gaierror) or (
        isinstance(exc, OSError) and exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES)
    ):
        return typer.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror}", param_hint="--host/--port"
        )
    return None


@app.command("catalogue")
def catalogue(
    name: str = typer.Argument(..., help="demo-shoes or digits (or a TSV path to normalise)."),
    output: Path = typer.Option(..., "-o", "--output", help="TSV file to write."),
    size: int = typer.Option(82, min=1, metavar="<int>", help="Number of items."),
    seed: int = typer.Option(0, help="Catalogue seed."),
    base_url: str = typer.Option("http://127.0.0.1:8765", help="Base URL written into the image URLs."),
) -> None:
    """Write a catalogue with its truth: image URL, class and attributes, tab-separated."""
    from emulator import write_catalogue
    from emulator.catalogues import CatalogueError

    try:
        path = write_catalogue(name, output, size=size, seed=seed, base_url=base_url)
    except CatalogueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot write {output}: {exc.strerror}", param_hint="--output") from None
    with path.open(encoding="utf-8") as written:
        items = sum(1 for _ in written) - 1  # one image URL a line, no cell over two lines
    # digits holds 1,797 images whatever --size says: 5,000 asked wrote 1,797 and said nothing of it.
    short = (
        f" ({items:,} items: {name} has no more; --size asked {size:,})"
        if items < size and name == "digits"
        else ""
    )
    typer.echo(f"wrote {path}{short}")
