"""`crowdclust ... --help` on an 80-column terminal (a default terminal's width, and that of a help
piped into `less` or a file): every option a user can type is printed whole.

Typer lays the options out in a table whose columns share the width; a cell with no place to break
is cut with an ellipsis. `crowdclust aggregate --help` printed `--min-cluster-s…`,
`--dissent-worke…` and `--unanswered-ou…`: three options the docs name could not be read in the
command's own help. Environment variables too: `crowdclust emulator --help` printed
`CROWDCLUST_EMULATOR_ADMIN_T…` and `crowdclust service up --help` `CROWDCLUST_EMULATOR_RATE_L…` and
`CROWDCLUST_EMULATOR_CATALO…`, typer's `<int range>` type names narrowing the help column.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from crowdclust.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[tuple[list[str], click.Command]]:
    """Every command of `crowdclust` with its words, the groups' own options included."""
    found = []

    def walk(words: list[str], command: click.Command) -> None:
        found.append((words, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk([*words, name], sub)

    walk([], typer.main.get_command(app))
    return found


COMMANDS = _commands()


def test_every_command_is_walked():
    named = {" ".join(words) for words, _ in COMMANDS}
    assert {"aggregate", "run", "emulator", "emulator catalogue", "service up", "token save"} <= named


@pytest.mark.parametrize(
    ("words", "command"), COMMANDS, ids=[" ".join(words) or "crowdclust" for words, _ in COMMANDS]
)
def test_every_option_is_printed_whole_at_80_columns(words, command):
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    env.pop("TERMINAL_WIDTH", None)
    done = subprocess.run(
        [sys.executable, "-m", "crowdclust.cli", *words, "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names = [opt for param in command.params for opt in param.opts if opt.startswith("--")]
    envvars = [getattr(param, "envvar", None) for param in command.params]
    names += [name for name in envvars if isinstance(name, str)]
    words_shown = set(done.stdout.replace("]", " ").replace("$", " ").split())
    cut = [name for name in names if name not in words_shown]
    assert not cut, f"`crowdclust {' '.join(words)} --help` at 80 columns cuts {cut}:\n{done.stdout}"
    # Nor any word of the help (an example value, a file's columns): typer ends a cut word with "…".
    assert "…" not in done.stdout, f"`crowdclust {' '.join(words)} --help` at 80 columns:\n{done.stdout}"
