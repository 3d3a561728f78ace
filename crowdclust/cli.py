"""The `crowdclust` command.

Each sub-command lives in its own module under `crowdclust.commands` and imports its heavy
dependencies (numba, prefect, fastapi) inside the command body, so that `crowdclust aggregate`
never pays for importing Prefect and `crowdclust --help` stays instant.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

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


def invoke(command: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run `command` on `args` (None: the process's own) and return its exit code; a usage error
    (an unknown option, a value out of range, a missing argument) is one `error:` line on stderr with
    the usage and exit code 2, as every other refusal of the command.

    Typer draws usage errors in a box wrapped at the terminal's width, so a refused `--db` path was
    cut over three lines of box, unlike the `error:` lines of bad input.
    """
    try:
        code = command(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as error:  # click's exceptions, which typer vendors: usage errors and files
        message = error.format_message().rstrip(".")
        if not message:  # no arguments at all: the help is the answer, already shown
            return error.exit_code
        context = getattr(error, "ctx", None)  # a usage error's: the command it was refused by
        usage = " ".join(context.get_usage().removeprefix("Usage: ").split()) if context is not None else ""
        where = f" (usage: {usage}; --help for more)" if usage else ""
        print(f"error: {message}{where}", file=sys.stderr)
        return error.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console-script entry point. `kill -USR1 PID` prints every thread's stack on stderr, for a
    command that seems stuck; the command goes on."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(invoke(app))


if __name__ == "__main__":
    main()
