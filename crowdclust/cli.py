"""The `crowdclust` command.

Each sub-command lives in its own module under `crowdclust.commands` and imports its heavy
dependencies (numba, prefect, fastapi) inside the command body, so that `crowdclust aggregate`
never pays for importing Prefect and `crowdclust --help` stays instant.
"""

from __future__ import annotations

import faulthandler
import signal

import typer

from crowdclust.commands import aggregate, emulator, run, service, token

app = typer.Typer(
    name="crowdclust",
    help="Cluster images with a crowd: aggregation, a local Toloka emulator and the Prefect pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("aggregate")(aggregate.aggregate)
app.add_typer(emulator.app, name="emulator")
app.command("run")(run.run)
app.add_typer(service.app, name="service")
app.add_typer(token.app, name="token")


def main() -> None:
    """Console-script entry point. `kill -USR1 PID` prints every thread's stack on stderr, for a
    command that seems stuck; the command goes on."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    app()


if __name__ == "__main__":
    main()
