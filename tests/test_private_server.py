"""The private Prefect server of `crowdclust run` and `make demo` lives and dies with its command, and is
started again when it dies while the command runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crowdclust.private_server import private_server

HOLDER = """
import sys, time
from crowdclust.private_server import private_server

with private_server("holder-server.log") as server:
    server.wait_ready()
    print(server.process.pid, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def no_server_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Prefect API named, as for a user's first `crowdclust run`: `private_server` starts its own."""
    for name in ("PREFECT_API_URL", "CROWDCLUST_PRIVATE_PREFECT"):
        monkeypatch.delenv(name, raising=False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_command_killed_outright_takes_its_private_server_with_it(tmp_path, migrated_prefect_home):
    """`kill -9` gives the command no chance to stop its server: the kernel must (Linux's
    parent-death signal). Before, the server ran on, orphaned, holding its port and memory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(migrated_prefect_home(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server = None
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        assert line.strip().isdigit(), holder.communicate(timeout=10)
        server = int(line)
        assert _alive(server)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server), "the private Prefect server outlived its command"
    finally:
        if holder.poll() is None:
            holder.kill()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


def test_a_block_that_needs_no_server_starts_none_and_runs_as_on_a_private_one(
    monkeypatch, tmp_path, no_server_named
):
    """`crowdclust run --close` with TOLOKA_TOKEN: no server (5-9 CPU-seconds, seconds of wall), no
    API URL for Prefect to find, and the run lock's server layer off as on a private server (a
    Prefect profile's server is not the command's); the environment is as it was afterwards."""
    from tasks.run_lease import server_url

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    with private_server("unneeded-server.log", needed=False) as server:
        assert server.process is None and "PREFECT_API_URL" not in os.environ
        assert os.environ["CROWDCLUST_PRIVATE_PREFECT"] == "true" and server_url() is None
        server.wait_ready()  # nothing to wait for
    assert "CROWDCLUST_PRIVATE_PREFECT" not in os.environ
    assert list(tmp_path.iterdir()) == []  # no server log: nothing was started


def test_a_private_server_runs_only_the_loops_a_command_uses_unless_told_otherwise(
    monkeypatch, tmp_path, migrated_prefect_home, no_server_named
):
    """One command's server has no deployments, workers, pauses or automations to watch: their loops
    are off (an idle server's CPU falls by a third), what the run records is still kept, and a loop the
    user's environment turns on stays on."""
    import httpx

    monkeypatch.setenv("PREFECT_HOME", str(migrated_prefect_home(tmp_path)))
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "true")
    with private_server("lean-server.log") as server:
        server.wait_ready()
        services = httpx.get(f"{os.environ['PREFECT_API_URL']}/admin/settings").json()["server"]["services"]
    enabled = {name: service["enabled"] for name, service in services.items()}
    assert not any(enabled[name] for name in ("scheduler", "late_runs", "foreman", "repossessor")), enabled
    assert enabled["task_run_recorder"] and enabled["event_persister"], enabled
    assert enabled["triggers"], enabled  # the user's own setting


def _open(pool: object) -> bool:
    return pool is not None and str(pool.status.value) == "OPEN"  # type: ignore[attr-defined]


def _private_server_of(run: subprocess.Popen[str], other_than: int | None = None) -> int | None:
    """The pid of the `prefect server start` that `run` started (one other than `other_than`)."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if (
            parent == run.pid
            and b"server" in command
            and b"start" in command
            and int(entry.name) != other_than
        ):
            return int(entry.name)
    return None


def test_a_private_server_killed_mid_run_is_started_again_and_the_run_finishes_paying_once(
    emulator_factory, tmp_path, migrated_prefect_home
):
    """The run's own Prefect server killed while the crowd answers (the OOM killer, a `pkill -f
    prefect` meant for other servers): the run retried against nothing for about four minutes, could
    not record its end (so its hooks never closed the pools the crowd was still answering) and failed
    with `the Prefect API ... stopped answering`. Now the server is started again on the same port and
    home, the command says so in one warning, and the run finishes with nothing paid beyond its
    estimate. A `crowdclust run` in a process of its own, as a user runs it."""
    from tasks.toloka_api import RunRegistry
    from tests.fixtures.emulator import make_client, run_objects, small_run_config

    key = "server-killed"
    migrated_prefect_home(tmp_path / ".prefect")
    with emulator_factory(catalogue="demo-shoes", catalogue_size=30, speed=2.0) as emu:
        config = small_run_config(tmp_path, emu.url, "killed", 3.0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"CROWDCLUST_PROJECT_DIR": str(tmp_path), "TOLOKA_TOKEN": emu.token}
        command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
        client = make_client(emu)
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300  # a wait that lasts at speed 2: the kill lands mid-wait
            while not _open(run_objects(client, key)["pools"].get("main-pool")):
                assert run.poll() is None and time.monotonic() < deadline, run.communicate()
                time.sleep(0.5)
            killed = _private_server_of(run)
            assert killed is not None, "no private server under the run"
            os.kill(killed, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while _private_server_of(run, other_than=killed) is None and time.monotonic() < deadline:
                assert run.poll() is None, run.communicate()
                time.sleep(0.2)
            emu.control("config", method="POST", speed=600.0)
            out, err = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, err[-5000:]
        warnings = [line for line in err.splitlines() if "Prefect server stopped" in line]
        assert warnings == [
            "warning: the run's Prefect server stopped (killed by SIGKILL); started again on the same port "
            f"and home (its log: {tmp_path / '.prefect' / 'run-server.log'}), and the run goes on"
        ], err[-5000:]
        assert "stopped answering" not in err
        assert run_objects(client, key)["open"] == []
        cost = re.search(r"\$([0-9.]+) spent \(estimate \$([0-9.]+)\)", out)
        assert cost is not None and float(cost[1]) <= float(cost[2]), out  # the exam may cost less
        assert RunRegistry(client, key).spent() == pytest.approx(float(cost[1]), abs=0.01)
