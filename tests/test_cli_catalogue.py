"""`crowdclust run --catalogue`: a growing catalogue's rounds from the command line, as cron runs them.

The real command, the real toloka-kit client and an emulator of its own. The rounds run in this
process on the `money` lane's Prefect test server (PREFECT_API_URL names it, so the command starts
no private server): in processes of their own, each round paid about 3 CPU-seconds of imports and
7 for its private server, which `crowdclust run` in a process of its own checks elsewhere (the
fault suite's signal tests, the token test). `--close` on a half-written catalogue runs as cron runs
it, in a process of its own. Before the option, the catalogue flow ran only as a Prefect
deployment: a user with a crontab had to write a script that loads the config and calls the flow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import prefect.main  # noqa: F401  # Prefect's console handler bound at collection (see test_faults_cli)
import pytest

from emulator import EmulatorSettings, run_in_background
from tests.fixtures.cli import Done, invoke
from tests.fixtures.emulator import make_client, run_objects, small_run_config

pytestmark = pytest.mark.slow


def _crowdclust(config: Path, folder: Path, token: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"CROWDCLUST_PROJECT_DIR": str(folder), "TOLOKA_TOKEN": token}
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _in_process(config: Path, folder: Path, token: str, *flags: str) -> Done:
    """`crowdclust run` in this process, on the Prefect test server; the environment as it was after."""
    from prefect.settings import PREFECT_API_URL

    saved = dict(os.environ)
    os.environ.update(
        {
            "CROWDCLUST_PROJECT_DIR": str(folder),
            "TOLOKA_TOKEN": token,
            "PREFECT_HOME": str(folder / ".prefect"),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        }
    )
    try:
        with _prefect_console_on_stderr():
            return invoke("run", str(config), *flags)
    finally:
        os.environ.clear()
        os.environ.update(saved)


class _Stderr:
    """Whatever `sys.stderr` is when written to: the runner's, during the command."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def _prefect_console_on_stderr() -> Iterator[None]:
    """Prefect's console log lines on the command's standard error, where a process of its own
    prints them (the flow's warnings among them): its handlers hold the stream of the moment they
    were made, this process's."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {
        handler
        for logger in loggers
        for handler in getattr(logger, "handlers", ())
        if isinstance(handler, PrefectConsoleHandler)
    }
    before = {handler: handler.console.file for handler in handlers}
    for handler in handlers:
        handler.console.file = _Stderr()  # type: ignore[assignment]
    try:
        yield
    finally:
        for handler, file in before.items():
            handler.console.file = file


def test_each_run_labels_only_the_images_no_round_has_clustered(tmp_path, prefect_harness):
    """Three rounds as cron runs them, then `--close` of either key."""
    settings = EmulatorSettings(
        port=0, token="cli-catalogue", catalogue="demo-shoes", catalogue_size=30, speed=600.0
    )
    with run_in_background(settings) as emu:
        config = small_run_config(tmp_path, emu.url, "cli-catalogue", 5.0)
        dataset = tmp_path / "ds.tsv"
        lines = dataset.read_text().splitlines()
        dataset.write_text("\n".join(lines[:21]) + "\n")  # the header and 20 images

        first = _in_process(config, tmp_path, emu.token, "--catalogue")
        assert first.returncode == 0, first.stderr
        assert "catalogue:          20 images (20 new, labelled in round " in first.stdout, first.stdout
        # The flow's closing lines: what the round labelled, then what a pipeline run's say.
        assert "labelled (20 new items); clusters from 1 pool" in first.stderr, first.stderr[-3000:]
        assert "- done: " in first.stderr and ", intruder accuracy n/a, cost $" in first.stderr
        assert "Traceback" not in first.stderr, first.stderr[-3000:]
        dataset.write_text("\n".join(lines) + "\n")  # 10 images added
        grown = _in_process(config, tmp_path, emu.token, "--catalogue")
        assert grown.returncode == 0, grown.stderr
        assert "catalogue:          30 images (10 new, labelled in round " in grown.stdout, grown.stdout
        assert "clusters from 2 pools" in grown.stdout
        assert "of it for earlier runs of the catalogue" in grown.stdout, grown.stdout  # not "settings"
        # Two URLs %-encoded (the same pictures to a web server): not new, not paid again.
        respelled = [lines[0], *(line.replace("s0-", "s0%2D", 1) for line in lines[1:3]), *lines[3:]]
        dataset.write_text("\n".join(respelled) + "\n")
        again = _in_process(config, tmp_path, emu.token, "--catalogue")
        assert again.returncode == 0, again.stderr
        nothing_new = "catalogue:          30 images (nothing new); clusters from 2 pools"
        assert nothing_new in again.stdout, again.stdout
        assert "$0.00 spent" in again.stdout
        assert "2 images of" in again.stderr and "were clustered under another spelling" in again.stderr
        found = run_objects(make_client(emu), "cli-catalogue-s0")  # the catalogue key: <name>-s<seed>
        closed = _in_process(config, tmp_path, emu.token, "--catalogue", "--close")  # the same key
        plain = _in_process(config, tmp_path, emu.token, "--close")  # a single run's key: none
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout.strip() == "no pool or training of run key cli-catalogue-s0 was left open"
    assert "the catalogue key cli-catalogue-s0 does: close it with --catalogue --close" in plain.stdout
    rounds = sorted(role for role in found["pools"] if role.startswith("main-pool-"))
    assert len(rounds) == 2 and sorted(found["pools"]) == ["exam-pool", *rounds], found["pools"]
    assert found["skills"] == 1 and not found["open"]  # one exam for both rounds; nothing left open
    clusters = (tmp_path / "runs" / "cli-catalogue" / "clusters.csv").read_text().splitlines()
    assert len(clusters) == 1 + 30


def test_close_needs_no_hit_of_images(tmp_path):
    """`--catalogue --close` after a kill -9, while the catalogue file is being rewritten (3 images
    so far): the catalogue key is the name and seed, so closing reads no images. It was refused
    (`3 images cannot fill a HIT`, exit 2) and the crowd went on answering the dead run's pools.

    With the token in TOLOKA_TOKEN, closing asks nothing of Prefect: no private server is started
    (it cost 5-9 CPU-seconds and seconds of wall before the pools closed); its log would be in the
    project's Prefect home."""
    settings = EmulatorSettings(port=0, token="cli-close", catalogue="demo-shoes", catalogue_size=30)
    with run_in_background(settings) as emu:
        config = small_run_config(tmp_path, emu.url, "cli-close", 5.0)
        dataset = tmp_path / "ds.tsv"
        dataset.write_text("\n".join(dataset.read_text().splitlines()[:4]) + "\n")  # header, 3 images
        closed = _crowdclust(config, tmp_path, emu.token, "--catalogue", "--close")
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout.startswith("no pool or training of run key cli-close-s0 was left"), closed.stdout
    assert not (tmp_path / ".prefect" / "run-server.log").exists(), "--close started a Prefect server"
