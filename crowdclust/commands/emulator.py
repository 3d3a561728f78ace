"""`crowdclust emulator`: serve the local Toloka emulator, or write one of its catalogues.

Heavy imports (fastapi, uvicorn, Pillow, pandas) happen inside the command bodies so that importing
the CLI stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="A local Toloka emulator with a simulated crowd (serves the Toloka API toloka-kit 1.2.3 speaks).",
)


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8765, help="TCP port (0 picks a free one)."),
    db: Path | None = typer.Option(
        None, help="SQLite file for the state; a restart continues from it. Default: memory."
    ),
    token: str | None = typer.Option(
        None,
        envvar="CROWDCLUST_EMULATOR_TOKEN",
        help="OAuth token clients must send. Default: the emulator's default token.",
    ),
    catalogue: str = typer.Option(
        "demo-shoes", help="Catalogue: demo-shoes, digits, or a TSV path (image URL + class)."
    ),
    size: int = typer.Option(82, help="Number of items of a bundled catalogue."),
    speed: float = typer.Option(600.0, help="Simulated seconds per wall second (0 freezes the clock)."),
    seed: int = typer.Option(0, help="Seed of the crowd and the catalogue."),
    workers: int = typer.Option(100, help="Size of the simulated crowd."),
    fail_rate: float = typer.Option(
        0.0, help="Share of API requests answered 429/500/503 (fault injection)."
    ),
    latency_ms: int = typer.Option(0, help="Latency added to every API request, in milliseconds."),
    balance: float = typer.Option(10_000.0, help="Initial requester balance."),
) -> None:
    """Serve the emulator in the foreground until Ctrl-C / SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from emulator import DEFAULT_TOKEN, EmulatorSettings, serve_forever

    settings = EmulatorSettings(
        host=host,
        port=port,
        db=str(db) if db else None,
        token=token or DEFAULT_TOKEN,
        catalogue=catalogue,
        catalogue_size=size,
        speed=speed,
        seed=seed,
        workers=workers,
        fail_rate=fail_rate,
        latency_ms=latency_ms,
        balance=balance,
    )

    def announce(url: str, token: str) -> None:
        typer.echo(f"Toloka emulator ready at {url}")
        typer.echo(f"  token: {token}")
        typer.echo(f"  client: TolokaClient(token, url={url!r})")
        typer.echo(
            f"  state: {settings.db or 'in memory'}; crowd: {workers} workers, seed {seed}, speed x{speed:g}"
        )

    serve_forever(settings, announce=announce)


@app.command("catalogue")
def catalogue(
    name: str = typer.Argument(..., help="demo-shoes or digits (or a TSV path to normalise)."),
    output: Path = typer.Option(..., "-o", "--output", help="TSV file to write."),
    size: int = typer.Option(82, help="Number of items."),
    seed: int = typer.Option(0, help="Catalogue seed."),
    base_url: str = typer.Option("http://127.0.0.1:8765", help="Base URL written into the image URLs."),
) -> None:
    """Write a catalogue with its truth: image URL, class and attributes, tab-separated."""
    from emulator import write_catalogue

    path = write_catalogue(name, output, size=size, seed=seed, base_url=base_url)
    typer.echo(f"wrote {path}")
