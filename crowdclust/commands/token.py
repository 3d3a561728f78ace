"""`crowdclust token save [--block NAME]`: keep the Toloka token in a Prefect Secret block.

Why a command rather than a one-line Python snippet: the snippet put the token on a command line
(shell history, `ps`) and saved the block wherever Prefect's defaults pointed (`~/.prefect`), while
`crowdclust run` reads blocks from its project-local Prefect home (`.prefect/`), so a block saved
that way was not found; Prefect's ephemeral server also printed a telemetry traceback on a fresh
database. This command reads the token from standard input or a hidden prompt and saves it where
`crowdclust run` will look: the server PREFECT_API_URL names (the local service's, say), else a
server of its own on the project's Prefect home, as `crowdclust run` starts one.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

app = typer.Typer(help="Keep the Toloka token in a Prefect Secret block that `crowdclust run` reads.")

DEFAULT_BLOCK = "toloka-token"


def read_secret(stream_is_tty: bool) -> str:
    """The token: typed at a hidden prompt in a terminal, else the first line of standard input.

    Surrounding whitespace is dropped (a newline from `echo` or a paste); an empty token, one with
    a space inside or one with any other character an HTTP header cannot carry (`token_problem`) is
    refused, since it would fail only at the first run.
    """
    text = typer.prompt("Toloka token", hide_input=True) if stream_is_tty else sys.stdin.readline()
    token = text.strip()
    if not token:
        raise typer.BadParameter("the token is empty (give it on standard input or at the prompt)")
    if any(ch.isspace() for ch in token):
        raise typer.BadParameter("the token has whitespace inside; paste the OAuth token alone")
    from tasks.settings import token_problem

    problem = token_problem(token)  # a zero-width space pasted with it, say: no request could send it
    if problem is not None:
        raise typer.BadParameter(f"{problem}; paste the OAuth token alone (it is not shown)")
    return token


def _where() -> str:
    """The server the block goes to, for the confirmation line (an address, never a secret)."""
    from crowdclust.private_server import PRIVATE

    if os.environ.get(PRIVATE):
        return (
            f"the project's Prefect home {os.environ['PREFECT_HOME']}, where `crowdclust run` reads it "
            "when run in the same folder (or with CROWDCLUST_PROJECT_DIR set to it)"
        )
    return (
        f"the Prefect server at {os.environ['PREFECT_API_URL']}: its deployments, and `crowdclust run` "
        "with that PREFECT_API_URL, read it"
    )


@app.command("save")
def save(
    block: Annotated[
        str, typer.Option("--block", help="Secret block name: the config's toloka.token_secret_block.")
    ] = DEFAULT_BLOCK,
) -> None:
    """Save the token (from standard input, or a hidden prompt) as a Prefect Secret block, replacing
    one of that name."""
    from crowdclust.runtime import prefect_password_refused, prepare_prefect_env, unwritable_folder

    token = read_secret(sys.stdin.isatty())
    prepare_prefect_env()
    # A project folder this user may not write in read `could not save the Secret block ... on the
    # Prefect server at  (PermissionError: ...); is it running?`: no server, and none to start.
    unwritable = unwritable_folder(None) or prefect_password_refused()
    if unwritable is not None:
        typer.echo(f"error: {unwritable}", err=True)
        raise typer.Exit(2)
    from crowdclust.private_server import private_server
    from crowdclust.service.processes import StartupFailed

    try:
        with private_server("token-server.log") as server:
            server.wait_ready()
            where = _where()
            from prefect.blocks.system import Secret

            Secret(value=token).save(block, overwrite=True)
    except StartupFailed as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except Exception as error:  # the server refused or is not there: say which, never the token
        detail = f"{type(error).__name__}: {error}".replace(token, "***")
        api = os.environ.get("PREFECT_API_URL", "")
        typer.echo(
            f"error: could not save the Secret block '{block}' on the Prefect server at {api} ({detail}); "
            "is it running?",
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(f"saved the Secret block '{block}' in {where}")
