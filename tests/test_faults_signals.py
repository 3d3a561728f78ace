"""Runs as processes of their own under faults: `crowdclust run` stopped by Ctrl-C, a closed terminal
or SIGTERM (also under a storm of 429s, and with Ctrl-C pressed again while the pools close), a
flow-run process stopped from outside, and a run folder that cannot take the export.

Each test starts the run as a separate process against this module's emulator (the demo catalogue
at 30 images, overlap 3, one exam), on a private Prefect server (as a user's terminal does) or on
the lane's Prefect harness (when a second process must share the server). A lane of its own:
these runs wait on real processes, servers and back-offs, beside the in-process fault tests
(`test_faults_pipeline.py`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.params import PipelineParams, load_params
from tests.fixtures.faults import (
    faults_config,
    faults_emulator,
    faults_objects,
    faults_params,
    faults_spent,
    one_of_each,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with faults_emulator() as running:
        yield running


@pytest.fixture(scope="module")
def config(emu: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return faults_config(emu, tmp_path_factory)


def _until_the_main_pool_opens(emu: Any, key: str, process: subprocess.Popen[str]) -> None:
    """Wait (5 min at most) for run `key`'s main pool to open, while `process` (the run) lives."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pools = faults_objects(emu, key)["pools"]
        if "main-pool" in pools and str(pools["main-pool"].status.value) == "OPEN":
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)
    pytest.fail("the main pool never opened")


def _stderr_once_exited(process: subprocess.Popen[str], seconds: float, signalled: str) -> str:
    """`process`'s stderr once it exits; if it has not within `seconds`, fail with that stderr and
    every thread's stack (`crowdclust.cli` and `STOPPED_FLOW` print them on SIGUSR1), so a hang says where
    it stands."""
    try:
        return process.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(1)
        process.kill()
        pytest.fail(f"not exited {seconds} s after {signalled}:\n{process.communicate()[1][-20_000:]}")


def _run_as_a_terminal_does(
    emu: Any, config: Path, tmp_path: Path, key: str, migrated_prefect_home: Any, **streams: Any
) -> subprocess.Popen[str]:
    """`crowdclust run` of `key` in its own process group, as a terminal's foreground job, with no
    Prefect server named (its private one starts on a migrated home) and the crowd slowed so that a
    signal lands mid-wait. `streams`: stdout/stderr (pipes unless given)."""
    migrated_prefect_home(tmp_path / ".prefect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"CROWDCLUST_PROJECT_DIR": str(tmp_path), "TOLOKA_TOKEN": emu.token}
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
    emu.control("config", method="POST", speed=2.0)  # a wait that lasts: the signal lands mid-wait
    return subprocess.Popen(
        command,
        env=env,
        stdout=streams.get("stdout", subprocess.PIPE),
        stderr=streams.get("stderr", subprocess.PIPE),
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
        preexec_fn=_signal_defaults,
    )


def _signal_defaults() -> None:
    """In the child: SIGINT and SIGHUP at their defaults, as in a terminal's foreground job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_a_run_folder_that_cannot_take_the_export_names_it_and_the_same_command_goes_on_unpaid(
    prefect_harness, emu, config, tmp_path
):
    """A run folder made read-only while the crowd answered (or a full disk) ended the run with
    `error: PermissionError: [Errno 13] Permission denied: 'runs/x/.attempts.json.71d367f8.tmp'`: a
    relative path, a temporary file's name (the export's own error lost behind the attempts file's),
    and no word of the answers paid for. Here the export's name is taken by a folder, which refuses
    root as well as a user; the same command, once it is free, exports the same answers. Against the
    lane's Prefect server (a user's own server, `PREFECT_API_URL`): two private servers' starts less."""
    from prefect.settings import PREFECT_API_URL

    key = "faults-unwritable"
    params = load_params(config, {"run_key": key})
    folder = (params.runs_dir / f"{params.name}__{key}").absolute()
    (folder / "assignments_main.tsv").mkdir(parents=True)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env |= {"CROWDCLUST_PROJECT_DIR": str(tmp_path), "TOLOKA_TOKEN": emu.token}
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert first.returncode == 1 and len(errors) == 1, first.stderr[-5000:]
    assert errors[0] == (
        f"error: {folder}/assignments_main.tsv: Is a directory. What was paid for stays on Toloka under run "
        f"key {key}: once the folder can be written, run the same command again: finished stages are "
        "reused and nothing is paid twice"
    )
    paid = faults_spent(emu, key)
    assert paid > 0

    (folder / "assignments_main.tsv").rmdir()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "$0.00 of it in this run" in again.stdout, again.stdout
    assert faults_spent(emu, key) == paid
    exported = (folder / "assignments_main.tsv").read_text().splitlines()
    assert len(exported) > 1 and exported[0].startswith("INPUT:")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_ctrl_c_or_a_closed_terminal_closes_the_pools(emu, config, tmp_path, signum, migrated_prefect_home):
    """`crowdclust run` with no Prefect server named, signalled as a terminal does: to the group.

    With Prefect's ephemeral server (a child in the same group) Ctrl-C stopped the server too: the
    run retried against it for two minutes, left its pools open and blamed Toloka. A closed terminal
    (SIGHUP) killed the run where it stood, its pools open for the crowd to finish. The project's
    Prefect home has its database already, as after a first run: its private server skips creating
    the schema (about 4 of its 10 CPU-seconds)."""
    name = signal.Signals(signum).name
    key = f"faults-{name.lower()}"
    run = _run_as_a_terminal_does(emu, config, tmp_path, key, migrated_prefect_home)
    try:
        _until_the_main_pool_opens(emu, key, run)
        os.killpg(run.pid, signum)
        err = _stderr_once_exited(run, 120, name)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        emu.control("config", method="POST", speed=600.0)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert run.returncode == 128 + signum and len(errors) == 1, err
    assert f"interrupted by {name}" in errors[0], err
    # The hook or the command closed them; it read "no pool or training ... was left open".
    assert "was left open" not in errors[0] and "closed" in errors[0], err
    assert faults_objects(emu, key)["open"] == []


def test_ctrl_c_pressed_again_while_the_pools_close_still_closes_them_and_says_so(
    emu, config, tmp_path, migrated_prefect_home
):
    """Ctrl-C pressed again and again, as a user does when the command does not stop at once, while
    each request to the platform takes 300 ms: the later presses raised in the middle of the closing
    the first one began (the flow run's hook, then the command's own), and the command ended with
    exit 130, no `error:` line and the main pool and the training open for the crowd to answer, paid,
    with nobody gating the exam."""
    key = "faults-ctrl-c-again"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err_file:  # read while it runs: the presses stop at its error line
        run = _run_as_a_terminal_does(
            emu, config, tmp_path, key, migrated_prefect_home, stdout=subprocess.DEVNULL, stderr=err_file
        )
    presses = 0
    try:
        _until_the_main_pool_opens(emu, key, run)
        emu.control("config", method="POST", latency_ms=300)  # every close waits on the platform
        while run.poll() is None and "error:" not in stderr.read_text() and presses < 400:
            os.killpg(run.pid, signal.SIGINT)
            presses += 1
            time.sleep(0.25)
        run.wait(120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        emu.control("config", method="POST", speed=600.0, latency_ms=0)
    err = stderr.read_text()
    assert presses > 1, err  # pressed again while the first press's closing ran
    # A press after the error line may land as the interpreter exits: a shell says 130 for both.
    assert run.returncode in (130, -signal.SIGINT), err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGINT" in errors[0], err
    assert faults_objects(emu, key)["open"] == []


def test_ctrl_c_under_a_storm_of_429s_still_closes_the_pools(emu, config, tmp_path, migrated_prefect_home):
    """Ctrl-C while Toloka refuses all but 2 requests a second (429 TOO_MANY_REQUESTS): closing
    takes some 8 requests, and each try, retried at once, got 2 of them through. The hooks' closes and
    the command's own all failed; the command said `could not close the pools of run key K
    (TooManyRequestsApiError); run the same command again to resume`, and the main pool stayed open
    for the crowd (a 1,000-image run's, with 900 answers to pay for). The command's close now backs
    off and tries again."""
    key = "faults-ctrl-c-429"
    run = _run_as_a_terminal_does(emu, config, tmp_path, key, migrated_prefect_home)
    try:
        _until_the_main_pool_opens(emu, key, run)
        emu.control("config", method="POST", rate_limit=2)
        os.killpg(run.pid, signal.SIGINT)
        err = _stderr_once_exited(run, 180, "SIGINT")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        emu.control("config", method="POST", speed=600.0, rate_limit=0)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert run.returncode == 130 and len(errors) == 1, err
    assert "interrupted by SIGINT" in errors[0] and "could not close" not in errors[0], err
    assert faults_objects(emu, key)["open"] == []


def test_sigterm_mid_wait_closes_pools_and_a_second_run_of_the_key_on_another_host_fails_at_once(
    prefect_harness, emu, config, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    key = "faults-signal"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "CROWDCLUST_PROJECT_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
    emu.control("config", method="POST", speed=2.0)  # a wait that lasts: the signal lands mid-wait
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until_the_main_pool_opens(emu, key, first)

        elsewhere = tmp_path / "another-host"  # its own lock folder: only the Prefect server is shared
        elsewhere.mkdir()
        second = subprocess.run(
            command, env={**env, "TMPDIR": str(elsewhere)}, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 1, second.stderr
        assert f"run key {key} is already running (pid {first.pid} on host" in second.stderr, second.stderr
        assert "Prefect concurrency limit crowdclust-run-" in second.stderr, second.stderr
        assert first.poll() is None, first.communicate()
        assert faults_objects(emu, key)["open"], "the second run's failure closed the first run's pools"

        first.send_signal(signal.SIGTERM)
        err = _stderr_once_exited(first, 90, "SIGTERM")
    finally:
        if first.poll() is None:
            first.kill()
        emu.control("config", method="POST", speed=600.0)
    assert first.returncode == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0], err
    stopped = faults_objects(emu, key)
    assert stopped["open"] == [], stopped

    from flows.pipeline import crowdclust_pipeline

    crowdclust_pipeline(faults_params(config, key))  # the rerun resumes the same objects
    resumed = faults_objects(emu, key)
    one_of_each(resumed, planned_hits=9)
    assert resumed["pools"]["main-pool"].id == stopped["pools"]["main-pool"].id


def _flow_process(script: str, params: PipelineParams) -> subprocess.Popen[str]:
    """`script` (a flow of the pipeline's) in a process of its own, as a worker starts a flow run,
    against the lane's Prefect server, given `params` as JSON in its argv."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script, params.model_dump_json()]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


STOPPED_FLOW = """
import faulthandler, signal, sys
# A hang's SIGUSR1 (`_stderr_once_exited`) prints every thread's stack; it killed a plain `python -c`.
faulthandler.register(signal.SIGUSR1, all_threads=True)
from prefect import flow
from flows.hooks import CLOSES_POOLS
from tasks.params import PipelineParams
from tasks.pause import pause

@flow(name="crowdclust-pipeline", **CLOSES_POOLS)
def stopped(params: PipelineParams) -> None:
    print("running", flush=True)
    pause(120)  # as the wait sleeps between polls: `time.sleep` slept through a SIGTERM due

stopped(PipelineParams.model_validate_json(sys.argv[1]))
"""


def test_a_flow_run_process_stopped_from_outside_sends_its_crash_lines_before_it_dies(
    prefect_harness, emu, config
):
    """A worker's flow-run process (here one with the pipeline's hooks and no handler of its own)
    stopped by SIGTERM: Prefect marks the run Crashed, runs its hooks, then re-sends itself the
    signal under the default handler and dies without flushing its log queue. The run's page ended
    at its last poll, without "Crash detected" or the hook's line of what it closed.

    Signalled as its flow falls asleep, when its log and event workers send the run's first lines:
    with `time.sleep(120)` the process could hang (4 of 44 runs under load; likely the 2 of 3 full
    suites that hung with another lane order), its SIGTERM noted during a wait for the GIL and
    handled only after the sleep (`tasks.pause`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

    key = f"faults-outside-{uuid.uuid4().hex[:6]}"
    process = _flow_process(STOPPED_FLOW, faults_params(config, key))
    try:
        assert process.stdout is not None and process.stdout.readline() == "running\n", process.communicate()
        process.send_signal(signal.SIGTERM)
        err = _stderr_once_exited(process, 60, "SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGTERM, err
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[key])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert run.state is not None and run.state.is_crashed(), run.state
    messages = "\n".join(log.message for log in logs)
    assert "Crash detected" in messages, messages
    assert f"run {key} ended CRASHED: closed nothing: none was left open" in messages, messages
    assert "(nothing is paid twice): run the same command again" in messages, messages


RUN_FLOW = """
import sys
from flows.pipeline import crowdclust_pipeline
from tasks.params import PipelineParams

crowdclust_pipeline(PipelineParams.model_validate_json(sys.argv[1]))
"""


def test_a_flow_run_process_stopped_under_a_storm_of_429s_closes_its_pools(prefect_harness, emu, config):
    """A flow-run process (a worker's, which no `crowdclust run` follows to close what is left)
    stopped by SIGTERM mid-wait while Toloka refuses all but 2 requests a second: its hook's client
    retried a 429 once, at once, so each of the hook's tries got 2 of the close's requests through
    and failed ("could not close the run's pools (TooManyRequestsApiError ...)"), and the main pool
    stayed open for the crowd. The hook's client now backs off before its later retries."""

    key = "faults-hook-429"
    emu.control("config", method="POST", speed=2.0)  # a wait that lasts: the signal lands mid-wait
    process = _flow_process(RUN_FLOW, faults_params(config, key))
    try:
        _until_the_main_pool_opens(emu, key, process)
        emu.control("config", method="POST", rate_limit=2)
        process.send_signal(signal.SIGTERM)
        err = _stderr_once_exited(process, 180, "SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
        emu.control("config", method="POST", speed=600.0, rate_limit=0)
    assert process.returncode == -signal.SIGTERM, err
    assert "could not close the run's pools" not in err, err
    assert faults_objects(emu, key)["open"] == []
