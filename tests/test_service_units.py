"""Service logic: deploy merging, remembered settings, the emulator URL in deployments, the test watchdog."""

from __future__ import annotations

import json
import os
from pathlib import Path

from crowdclust.service import ServiceConfig, deployments, load


def test_merge3_keeps_user_edits_and_takes_file_changes_elsewhere():
    base = {"a": 1, "b": {"c": 2, "d": 3}, "gone": 1}
    theirs = {"a": 10, "b": {"c": 2, "d": 3}, "gone": 1}  # the user changed `a` in the UI
    ours = {
        "a": 1,
        "b": {"c": 20, "d": 3},
        "new": 5,
    }  # prefect.yaml changed `b.c`, dropped `gone`, added `new`
    assert deployments.merge3(base, theirs, ours) == {"a": 10, "b": {"c": 20, "d": 3}, "new": 5}
    assert deployments.merge3(base, base, ours) == ours


def _spec(active: bool, timeout: int) -> dict:
    return {
        "deployments": [
            {
                "name": "p",
                "schedules": [{"cron": "0 6 * * 1", "timezone": "UTC", "active": active}],
                "parameters": {"params": {"wait": {"timeout_seconds": timeout}, "name": "x"}},
            }
        ]
    }


def test_user_edits_survive_a_redeploy():
    last = _spec(active=False, timeout=900)
    server = {
        "p": {
            "schedules": [
                {"schedule": {"cron": "0 6 * * 1", "timezone": "UTC", "day_or": True}, "active": True}
            ],
            "parameters": {"params": {"wait": {"timeout_seconds": 1234}, "name": "x"}},
        }
    }
    wanted = _spec(active=False, timeout=900)
    wanted["deployments"][0]["parameters"]["params"]["name"] = "y"  # the file changed
    merged, kept = deployments.with_user_edits(wanted, last, server)
    deployment = merged["deployments"][0]
    assert deployment["schedules"][0]["active"] is True
    assert deployment["parameters"] == {"params": {"wait": {"timeout_seconds": 1234}, "name": "y"}}
    assert len(kept) == 2
    _, none_kept = deployments.with_user_edits(wanted, last, {"p": {**server["p"], "schedules": []}})
    assert none_kept == ["p: parameters edited in the UI"]


def test_local_deployments_get_the_service_emulator_url(tmp_path: Path):
    cfg = ServiceConfig(state_dir=tmp_path, emulator_port=18001)
    spec = deployments.spec(cfg)
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["demo"]["parameters"]["params"]["toloka"]["url"] == "http://127.0.0.1:18001"
    assert by_name["demo-catalogue"]["parameters"]["params"]["toloka"]["url"] == "http://127.0.0.1:18001"
    assert by_name["production"]["parameters"]["params"]["toloka"]["url"] is None
    assert deployments.entrypoint_modules(spec)[0] == "flows.pipeline"
    assert "definitions" not in spec


def test_settings_are_remembered_without_secrets(tmp_path: Path, monkeypatch):
    # As the docs give them to `make up`: in its environment, which the workers' is made from. The
    # database URL went on to every worker and flow run, password included.
    monkeypatch.setenv("CROWDCLUST_DATABASE_URL", "postgresql+asyncpg://u:pw-7f3e@h/db")
    monkeypatch.setenv("CROWDCLUST_EMULATOR_ADMIN_TOKEN", "admin-7f3e")
    cfg = ServiceConfig(
        state_dir=tmp_path, server_port=14999, workers=3, database_url="postgresql+asyncpg://u:secret@h/db"
    )
    cfg.remember()
    assert "secret" not in cfg.settings_file.read_text()
    assert cfg.database_url_file.stat().st_mode & 0o777 == 0o600
    again = load(tmp_path)
    assert (again.server_port, again.workers, again.database_url) == (14999, 3, cfg.database_url)
    assert load(tmp_path, workers=1).workers == 1  # explicit settings win
    env = again.env()
    assert env["CROWDCLUST_RUNS_URL"] == again.runs_url and env[
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH"
    ].endswith("results")
    assert not [k for k in env if "DATABASE" in k or k == "TOLOKA_TOKEN"]
    assert not [k for k, v in env.items() if "7f3e" in v], [k for k, v in env.items() if "7f3e" in v]
    assert json.loads(cfg.settings_file.read_text())["workers"] == 3


def test_up_refuses_other_ports_while_the_remembered_service_runs(tmp_path: Path):
    import os

    import pytest

    from crowdclust import service

    ServiceConfig(state_dir=tmp_path, server_port=14998).remember()
    (tmp_path / "server.pid").write_text(f"{os.getpid()}\n")  # "running": a live pid
    with pytest.raises(RuntimeError, match="server_port"):
        service.up(ServiceConfig(state_dir=tmp_path, server_port=14997), say=lambda _: None)
    assert load(tmp_path).server_port == 14998  # still what runs


def test_with_a_password_only_the_server_and_its_clients_get_it(tmp_path: Path, monkeypatch):
    """`up --auth`: the server gets its password, the deployer and the workers (and so their flow
    runs) the same as clients, the file server the same for its own checks, the emulator none, and
    `remember()` writes none.
    A password in the shell for another server never reaches this one's processes; against an
    existing server (`server_url`) it is the one the clients send."""
    from crowdclust.service.supervisor import _api_auth, _command

    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "someone:elses-7f3e")
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "someone:elses-7f3e")
    cfg = ServiceConfig(state_dir=tmp_path, auth=True)
    password = _api_auth(cfg)
    assert password.startswith("crowdclust:") and _api_auth(cfg) == password  # made once
    assert cfg.auth_file.stat().st_mode & 0o777 == 0o600
    assert _command(cfg, "server")[1]["PREFECT_SERVER_API_AUTH_STRING"] == password
    assert cfg.client_env()["PREFECT_API_AUTH_STRING"] == password
    emulator, files = _command(cfg, "emulator")[1], _command(cfg, "files")[1]
    assert not [k for k, v in emulator.items() if "AUTH" in k or password in v or "7f3e" in v]
    assert [k for k, v in files.items() if password in v] == ["CROWDCLUST_FILES_AUTH"]  # its own only
    assert not [k for k, v in files.items() if "AUTH_STRING" in k or "7f3e" in v]
    cfg.remember()
    assert password.split(":")[1] not in cfg.settings_file.read_text() and load(tmp_path).auth
    assert cfg.api_headers()["Authorization"].startswith("Basic ")

    plain = ServiceConfig(state_dir=tmp_path / "plain")
    assert "PREFECT_API_AUTH_STRING" not in plain.client_env() and plain.api_headers() == {}
    assert "PREFECT_SERVER_API_AUTH_STRING" not in _command(plain, "server")[1]
    existing = ServiceConfig(state_dir=tmp_path / "existing", server_url="https://prefect.example/api")
    assert existing.client_env()["PREFECT_API_AUTH_STRING"] == "someone:elses-7f3e"


def test_a_service_on_the_network_asks_for_a_password_and_gives_teammates_its_address(tmp_path: Path):
    """`make up LISTEN=0.0.0.0`: refused without a password (anyone on the network could start paid
    runs), given one by `--host` alone; this machine's clients use 127.0.0.1, the UI finds the API at
    the address its page came from, the artifacts' links name an address teammates reach, and the
    PostgreSQL profile's database stays on 127.0.0.1."""
    import pytest
    from typer.testing import CliRunner

    from crowdclust import service
    from crowdclust.commands import service as command
    from crowdclust.service import postgres
    from crowdclust.service.config import is_loopback

    bare = ServiceConfig(state_dir=tmp_path / "bare", host="0.0.0.0")
    with pytest.raises(RuntimeError, match="must ask for a password"):
        service.up(bare, say=lambda _: None)
    assert not bare.state_dir.exists()  # nothing written, nothing started

    seen: list[ServiceConfig] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "up", lambda cfg, say, force: seen.append(cfg) or {})
        runner = CliRunner()
        assert (
            runner.invoke(command.app, ["up", "--state-dir", str(tmp_path), "--host", "0.0.0.0"]).exit_code
            == 0
        )
        refused = runner.invoke(command.app, ["up", "--state-dir", str(tmp_path), "--host", "::"])
    assert seen[0].auth and refused.exit_code == 2 and "IPv4" in refused.output, refused.output

    cfg = ServiceConfig(state_dir=tmp_path, host="0.0.0.0", auth=True, profile="postgres")
    assert cfg.api_url.startswith("http://127.0.0.1:") and cfg.on_network
    assert not is_loopback(cfg.public_host) and cfg.public_host != "localhost", cfg.public_host
    env = cfg.env()
    assert env["PREFECT_UI_API_URL"] == "/api"
    assert env["CROWDCLUST_RUNS_URL"] == f"http://{cfg.public_host}:{cfg.files_port}"
    assert env["CROWDCLUST_SHARED_EMULATOR_URL"] == f"http://{cfg.public_host}:{cfg.emulator_port}"
    cfg.state_dir.joinpath("postgres-password").write_text("pw\n")
    assert "@127.0.0.1:" in postgres.connection_url(cfg)
    local = ServiceConfig(state_dir=tmp_path / "local")
    assert not local.on_network and local.env()["CROWDCLUST_RUNS_URL"] == local.runs_url
    assert local.env().get("PREFECT_UI_API_URL") == local.api_url
    assert "CROWDCLUST_SHARED_EMULATOR_URL" not in local.env()  # the image links as the runs fetch them


def test_results_url_becomes_the_default_storage_block_of_every_worker(tmp_path: Path):
    env = ServiceConfig(state_dir=tmp_path, results="s3://bucket/crowdclust").env()
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "remote-file-system/crowdclust-results"
    assert (
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH" not in env
        and env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    )


def test_the_server_keeps_its_leases_on_disk(tmp_path: Path, monkeypatch):
    """In memory (Prefect's default), a server restarted while a run held its run key forgot the
    lease: the run's release then failed and the key's slot stayed taken for good. On disk, the
    release after a restart frees it (checked by hand: a `kill -9` and restart between acquire
    and release leave 0 active slots, 1 with the default)."""
    from crowdclust.service.supervisor import LEASES_ON_DISK, _command

    monkeypatch.delenv("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", raising=False)
    command, env = _command(ServiceConfig(state_dir=tmp_path), "server")
    assert command[1:3] == ["server", "start"]
    assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == LEASES_ON_DISK
    monkeypatch.setenv("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "custom.storage")  # an operator's choice
    assert (
        _command(ServiceConfig(state_dir=tmp_path), "server")[1]["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"]
        == "custom.storage"
    )


def test_the_emulator_is_throttled_only_when_it_has_a_limit_of_its_own(tmp_path: Path):
    from crowdclust.service.deployer import limits

    plain = ServiceConfig(state_dir=tmp_path)
    assert limits(plain) == {
        "toloka-api-local": 0.0,
        "toloka-api-production": 10.0,
        "toloka-api-sandbox": 10.0,
    }
    limited = ServiceConfig(state_dir=tmp_path, emulator_rate_limit=20.0)
    assert limits(limited)["toloka-api-local"] == 15.0  # under the emulator's own limit
    chosen = ServiceConfig(state_dir=tmp_path, emulator_rate_limit=20.0, rates={"local": 5.0})
    assert limits(chosen) == {"toloka-api-local": 5.0}


def test_a_stopped_workers_flow_run_processes_are_terminated() -> None:
    """`children` finds a worker's flow-run processes (own sessions, as Prefect starts them) and
    `terminate` ends them: SIGTERM first, which a flow run handles (here: it writes a file)."""
    import subprocess
    import sys
    import tempfile
    import time

    from crowdclust.service.processes import alive, children, terminate

    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "terminated"
        run = (
            "import pathlib, signal, sys, time\n"
            f"done = lambda *_: (pathlib.Path({str(marker)!r}).write_text('x'), sys.exit(0))\n"
            "signal.signal(signal.SIGTERM, done)\n"
            "time.sleep(60)\n"
        )
        worker = (
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {run!r}], start_new_session=True)\n"
            "time.sleep(60)\n"
        )
        parent = subprocess.Popen([sys.executable, "-c", worker])
        try:
            deadline = time.monotonic() + 20
            while not children(parent.pid, running="SIGTERM") and time.monotonic() < deadline:
                time.sleep(0.1)
            runs = children(parent.pid, running="SIGTERM")
            assert len(runs) == 1 and children(parent.pid, running="prefect.engine") == [], runs
            time.sleep(0.5)  # its SIGTERM handler is installed
            terminate(runs, wait=10)
            assert not alive(runs[0]) and marker.read_text() == "x"
        finally:
            parent.kill()
            parent.wait()


def test_the_watchdog_stops_a_service_whose_test_process_died(tmp_path: Path) -> None:
    """A test session killed from outside skips its teardown; the watchdog runs `make down` for it."""
    import subprocess
    import sys
    import time

    folder = tmp_path / "service"
    (folder / "state").mkdir(parents=True)
    tests_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    command = [sys.executable, "-m", "tests.fixtures.watchdog", str(tests_process.pid), str(folder / "state")]
    watchdog = subprocess.Popen([*command, str(folder)], cwd=Path(__file__).resolve().parent.parent)
    try:
        time.sleep(1)
        assert watchdog.poll() is None and folder.exists()  # waits while the test process lives
        tests_process.kill()
        tests_process.wait()
        assert watchdog.wait(timeout=60) == 0
        assert not folder.exists()
    finally:
        for process in (tests_process, watchdog):
            if process.poll() is None:
                process.kill()


def test_crowdclust_run_against_the_service_links_its_report_over_the_services_file_server(
    tmp_path: Path, monkeypatch
):
    """`crowdclust run` with the service's PREFECT_API_URL writes into the folder the service serves;
    its `run-report` said "not served over http here" for want of the service's two variables. With
    the remembered service's API and its file server answering, they are set; with another server,
    or the file server down, nothing changes."""
    import functools
    import http.server
    import threading

    from crowdclust.runtime import link_service_runs_folder
    from crowdclust.service.processes import free_port
    from tasks.run_folder import RUNS_DIR_ENV, RUNS_URL_ENV, RunFolder

    runs = tmp_path / "runs"
    (runs / "shoes").mkdir(parents=True)
    port = free_port()
    cfg = ServiceConfig(state_dir=tmp_path, server_port=free_port(), files_port=port, runs_dir=runs)
    cfg.remember()
    for name in (RUNS_URL_ENV, RUNS_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", cfg.api_url)
    assert link_service_runs_folder(tmp_path) is None  # the file server is down: no dead link
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(runs))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")  # another server
        assert link_service_runs_folder(tmp_path) is None and RUNS_URL_ENV not in os.environ
        monkeypatch.setenv("PREFECT_API_URL", cfg.api_url + "/")
        assert link_service_runs_folder(tmp_path) == cfg.runs_url
        report = RunFolder(runs / "shoes").root / "report.html"
        assert RunFolder(runs / "shoes").url_of(report) == f"{cfg.runs_url}/shoes/report.html"
    finally:
        files.shutdown()
        files.server_close()


def test_crowdclust_run_finds_a_service_kept_in_crowdclust_service_dir(tmp_path: Path, monkeypatch):
    """A service started with CROWDCLUST_SERVICE_DIR (a folder of one's own, as docs/service.md's
    settings allow): `make status` found it, but `crowdclust run` with its PREFECT_API_URL looked in
    the checkout's `.service/` only, so the run's `run-report` read "not served over http here"
    while the service's file server served that very report."""
    from crowdclust.runtime import link_service_runs_folder
    from crowdclust.service import processes
    from tasks.run_folder import RUNS_DIR_ENV, RUNS_URL_ENV

    runs, state = tmp_path / "runs", tmp_path / "elsewhere"
    state.mkdir()
    cfg = ServiceConfig(state_dir=state, server_port=51890, files_port=51891, runs_dir=runs)
    cfg.remember()
    for name in (RUNS_URL_ENV, RUNS_DIR_ENV, "CROWDCLUST_SHARED_EMULATOR_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(processes, "answers", lambda url, timeout=None: url == cfg.health_url("files"))
    monkeypatch.setenv("PREFECT_API_URL", cfg.api_url)
    monkeypatch.setenv("CROWDCLUST_SERVICE_DIR", str(state))
    assert link_service_runs_folder() == cfg.runs_url
    assert os.environ[RUNS_DIR_ENV] == str(runs) and "CROWDCLUST_SHARED_EMULATOR_URL" not in os.environ
    # A service on the network (`make up LISTEN=0.0.0.0`): the report's link names the address
    # teammates reach, as its workers' runs do, not 127.0.0.1.
    shared = ServiceConfig(
        state_dir=state, server_port=51890, files_port=51891, runs_dir=runs, host="0.0.0.0", auth=True
    )
    shared.remember()
    monkeypatch.setattr(processes, "answers", lambda url, timeout=None: url == shared.health_url("files"))
    monkeypatch.delenv(RUNS_URL_ENV)
    assert link_service_runs_folder() == shared.shared_runs_url != shared.runs_url
    assert os.environ["CROWDCLUST_SHARED_EMULATOR_URL"] == shared.shared_emulator_url != shared.emulator_url


def test_crowdclust_run_against_a_server_takes_its_toloka_rate_limits(monkeypatch):
    """A second user's `crowdclust run` against the service's server throttled only in its process
    (none for the emulator): with a deployment's runs it met the emulator's per-token limit (148 429s
    for two such runs at 20 requests/s, none for two deployment runs). Pointed at a server, it takes
    the server's limits like the workers do; a private server, or the setting given, is left alone."""
    from crowdclust.runtime import share_toloka_rate_limits
    from crowdclust.service.config import RATE_LIMIT_ENV

    monkeypatch.delenv(RATE_LIMIT_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert share_toloka_rate_limits() is False and RATE_LIMIT_ENV not in os.environ
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:51890/api")
    assert share_toloka_rate_limits() is True and os.environ[RATE_LIMIT_ENV] == "true"
    monkeypatch.setenv(RATE_LIMIT_ENV, "false")
    assert share_toloka_rate_limits() is False


def test_a_port_another_process_holds_is_refused_in_one_line_before_anything_starts(tmp_path):
    """A connection of another process bound to the file server's port (as a client's socket is,
    on Linux's range of outgoing ports): `make up` printed the file server's 15-line traceback ending
    `OSError: [Errno 98] Address already in use`. Now one line names the port, the component and the
    variable to change, and nothing is started."""
    import socket

    import pytest

    from crowdclust.service import supervisor
    from crowdclust.service.processes import StartupFailed, read_pid

    holder = socket.socket()  # bound, not listening: nothing answers on it, yet the port is taken
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    cfg = ServiceConfig(state_dir=tmp_path / ".service", runs_dir=tmp_path / "runs", files_port=port)
    cfg.state_dir.mkdir()
    try:
        with pytest.raises(StartupFailed) as error:
            supervisor.start(cfg, "files", say=lambda line: None)
    finally:
        holder.close()
    assert str(error.value) == (
        f"files: port {port} on 127.0.0.1 is taken by another process (`ss -ltnp 'sport = :{port}'` shows "
        "which): stop it, or give the service another port with CROWDCLUST_FILES_PORT=PORT"
    )
    assert read_pid(cfg, "files") is None


def test_a_server_of_another_service_on_a_port_is_refused_not_taken_for_its_own(tmp_path):
    """`up` took whatever answered a component's health URL for its own: with another checkout's
    emulator on CROWDCLUST_EMULATOR_PORT it said `emulator: already running`, wrote a token that
    emulator never read, and every deployment run failed on it. What answers without this service's
    pid file naming it is now refused in one line; the same port with its own live pid is still
    `already running`."""
    import http.server
    import os
    import threading
    from dataclasses import replace

    import pytest

    from crowdclust.service import supervisor
    from crowdclust.service.processes import StartupFailed, free_port, pid_file
    from tests.fixtures.cli import invoke

    stranger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    port = stranger.server_address[1]
    cfg = ServiceConfig(state_dir=tmp_path / ".service", runs_dir=tmp_path / "runs", files_port=port)
    cfg.state_dir.mkdir()
    said: list[str] = []
    try:
        # `up` refuses it before it starts anything (here: the server and the emulator on free ports).
        elsewhere = replace(cfg, server_port=free_port(), emulator_port=free_port())
        try:
            with pytest.raises(StartupFailed, match=f"files: port {port} on 127.0.0.1 answers, but not"):
                supervisor.up(elsewhere, say=said.append)
        finally:
            if list(cfg.state_dir.glob("*.pid")):  # an `up` that was not refused started a service
                supervisor.down(elsewhere, say=lambda _: None)
        assert not list(cfg.state_dir.glob("*.pid")) and not cfg.settings_file.exists()
        with pytest.raises(StartupFailed) as error:
            supervisor.start(cfg, "files", say=said.append)
        # `make status` said `files: running` for it.
        replace(cfg, server_port=free_port(), emulator_port=free_port()).remember()
        status = ["service", "status", "--state-dir", str(cfg.state_dir)]
        shown = invoke(*status).stdout
        pid_file(cfg, "files").write_text(f"{os.getpid()}\n")  # as if this service had started it
        supervisor.start(cfg, "files", say=said.append)
        shown_ours = invoke(*status).stdout
    finally:
        stranger.shutdown()
        stranger.server_close()
    assert str(error.value).startswith(f"files: port {port} on 127.0.0.1 answers, but not as this service's")
    assert str(error.value).endswith("give the service another port with CROWDCLUST_FILES_PORT=PORT")
    assert said == ["files: already running"]
    assert f"files: not running; port {port} answers, but not as this service's files" in shown, shown
    assert "server: stopped" in shown and "files: running" in shown_ours, (shown, shown_ours)


def test_the_deployer_stops_waiting_for_the_server_when_up_is_gone(tmp_path: Path):
    """A deployer whose `up` was stopped while the server started waited 180 s for a server nobody
    would start; it now ends at once, saying why. Run as `up` runs it, with `--parent` a process
    that has already ended and a server port nothing listens on."""
    import socket
    import subprocess
    import sys

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ServiceConfig(state_dir=tmp_path, server_port=port).remember()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ended = subprocess.run(
        [sys.executable, "-m", "crowdclust.service.deployer", str(tmp_path), "--parent", str(gone.pid)],
        capture_output=True,
        text=True,
        timeout=150,  # under the 180 s it waited before
    )
    assert ended.returncode == 1
    assert f"the `up` that started this deployer (pid {gone.pid}) ended" in ended.stderr


def test_a_dead_flow_run_process_is_reported_crashed_only_to_its_own_attempt() -> None:
    """Prefect's worker reported a dead flow-run process as Crashed twice, the second time after the
    crash hooks had run (5-13 s): a Retry pressed on the first Crashed was itself Crashed for ~9 s
    ("exited with non-zero status code -9 ... exceeding memory limits"), then ran on. The worker
    reports it once the run is still that attempt's (Running with its run count, or Pending), and
    not onto a run that has ended, awaits a Retry or runs a later attempt."""
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed, Crashed, Pending, Running, Scheduled

    from crowdclust.service.worker import guard_crash_reports, stale

    picked = FlowRun(flow_id=uuid.uuid4(), run_count=2)  # as the worker picked it up: ran twice before

    def run(state: object, run_count: int) -> FlowRun:
        return FlowRun(id=picked.id, flow_id=picked.flow_id, state=state, run_count=run_count)

    ours = [run(Running(), 3), run(Pending(), 2)]  # its report did not take; it died before it ran
    later = [
        run(Crashed(), 3),
        run(Completed(), 3),
        run(Scheduled(), 3),
        run(Pending(), 3),
        run(Running(), 4),
    ]
    assert [stale(picked, now) for now in ours] == [False, False]
    assert [stale(picked, now) for now in later] == [True] * len(later)

    class Client:
        def __init__(self, now: FlowRun | None) -> None:
            self.now = now

        async def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRun:
            if self.now is None:
                raise OSError("the API is away")
            assert flow_run_id == picked.id
            return self.now

    class Worker:
        def __init__(self, now: FlowRun | None) -> None:
            self.client, self.reported = Client(now), []

        async def _propose_crashed_state(
            self, flow_run: FlowRun, message: str, client: object = None
        ) -> None:
            self.reported.append(message)

    guard_crash_reports(Worker)
    for now, reported in [(ours[0], ["exit -9"]), (later[-1], []), (later[2], []), (None, ["exit -9"])]:
        worker = Worker(now)
        asyncio.run(worker._propose_crashed_state(picked, "exit -9"))
        assert worker.reported == reported, now


def test_a_worker_told_to_stop_says_so_before_it_ends_its_runs(tmp_path: Path, monkeypatch) -> None:
    """The worker's signal handler writes its pid where the service said, then ends its runs and
    hands the signal to Prefect's handler; without the variable it writes nothing."""
    import signal

    from crowdclust.service import worker
    from crowdclust.service.processes import STOPPING_FILE_ENV

    handed: list[int] = []
    stopping = tmp_path / "worker-1.stopping"
    monkeypatch.setenv(STOPPING_FILE_ENV, str(stopping))
    worker._runs_first(lambda signum, frame: handed.append(signum), print)(signal.SIGTERM, None)
    assert stopping.read_text() == f"{os.getpid()}\n"
    assert handed == [signal.SIGTERM]
    monkeypatch.delenv(STOPPING_FILE_ENV)
    stopping.unlink()
    worker._runs_first(lambda signum, frame: handed.append(signum), print)(signal.SIGINT, None)
    assert not stopping.exists() and handed == [signal.SIGTERM, signal.SIGINT]


def test_up_waits_for_a_worker_that_is_stopping_and_starts_it_again(tmp_path: Path, monkeypatch) -> None:
    """`kill WORKER_PID`, then `make up` at once: the worker still ended its runs (up to 15 s), `up`
    said "already running", and the service had one worker fewer after it exited. Now `up` waits for
    a worker that said it is stopping and starts a new one; one that did not say so is left running."""
    import subprocess
    import sys

    from crowdclust.service import supervisor
    from crowdclust.service.processes import STOPPING_FILE_ENV, alive, pid_file, stopping_file

    cfg = ServiceConfig(state_dir=tmp_path, workers=2)
    # worker-1 is stopping (it exits in a second), worker-2 runs on
    ending = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file(cfg, "worker-1").write_text(f"{ending.pid}\n")
        stopping_file(cfg, "worker-1").write_text(f"{ending.pid}\n")
        pid_file(cfg, "worker-2").write_text(f"{running.pid}\n")
        spawned: list[tuple[str, bool, str]] = []

        def spawn(cfg: ServiceConfig, name: str, command: list[str], env: dict[str, str]) -> int:
            spawned.append((name, alive(ending.pid), env[STOPPING_FILE_ENV]))
            return 4242

        monkeypatch.setattr(supervisor, "spawn", spawn)
        said: list[str] = []
        started = supervisor._start_workers(cfg, said.append)
    finally:
        running.kill()
        running.wait()
    assert said == [
        f"worker-1: stopping (pid {ending.pid}); waiting for it to end its runs before starting it again",
        "worker-2: already running",
    ]
    assert spawned == [("worker-1", False, str(stopping_file(cfg, "worker-1")))]  # after it had ended
    assert [name for name, _, _ in started] == ["worker-1"]
    assert not stopping_file(cfg, "worker-1").exists()
    stopping_file(cfg, "worker-2").write_text(f"{running.pid}\n")  # it said so, then ended
    assert supervisor.stop_process(cfg, "worker-2") is False
    assert not stopping_file(cfg, "worker-2").exists() and not pid_file(cfg, "worker-2").exists()
    # `make down`: the worker writes the file on the signal that stops it; none is left behind
    says_so = (
        "import os, signal, sys, time\n"
        "def stop(*_):\n"
        f"    open({str(stopping_file(cfg, 'worker-1'))!r}, 'w').write(f'{{os.getpid()}}\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", says_so], stdout=subprocess.PIPE, start_new_session=True)
    assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
    pid_file(cfg, "worker-1").write_text(f"{worker.pid}\n")
    assert supervisor.stop_process(cfg, "worker-1") is True
    assert worker.wait(timeout=10) == 0 and not stopping_file(cfg, "worker-1").exists()


def test_down_ends_the_runs_a_worker_killed_outright_left_running(tmp_path: Path) -> None:
    """`kill -9` of a worker leaves its flow-run processes going, their parent now init; `make up`
    started a new worker, `make status` said nothing of them and `make down` left them running with
    the server and the emulator gone (a tester found one 6 minutes later). They are found by the
    worker's stopping file in their environment (inherited from the worker): `status` names them,
    `stop` ends them; another service's runs are not touched."""
    import subprocess
    import sys

    from crowdclust.service import left_running, supervisor
    from crowdclust.service.processes import STOPPING_FILE_ENV, alive, pid_file, stopping_file, worker_temp

    cfg = ServiceConfig(state_dir=tmp_path, workers=1)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "prefect.engine"]

    def run(stopping: Path) -> subprocess.Popen:
        env = {**os.environ, STOPPING_FILE_ENV: str(stopping)}
        return subprocess.Popen(sleeper, env=env, start_new_session=True)

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the new worker-1
    orphan = run(stopping_file(cfg, "worker-1"))
    elsewhere = run(tmp_path / "other-service" / "worker-1.stopping")
    try:
        pid_file(cfg, "worker-1").write_text(f"{worker.pid}\n")
        # What Prefect's worker left of a run in its folder (the run's environment, a password with it)
        left_files = worker_temp(cfg, "worker-1") / "prefect-workspace-attempt-x"
        left_files.mkdir(parents=True)
        (left_files / "workspace.json").write_text("{}")
        assert left_running(cfg) == {"worker-1": [orphan.pid]}
        said: list[str] = []
        supervisor.stop(cfg, "worker-1", said.append)
        assert said[0] == "worker-1: terminated 1 flow-run process(es) an earlier worker-1 left running"
        assert orphan.poll() is not None and alive(elsewhere.pid)
        assert left_running(cfg) == {}
        assert not worker_temp(cfg, "worker-1").exists()
    finally:
        for process in (worker, orphan, elsewhere):
            process.kill()
            process.wait()


def test_the_service_emulator_can_be_given_a_catalogue_of_ones_own(tmp_path: Path, monkeypatch) -> None:
    """`make up` started the emulator with the bundled shoes only: a tester who wanted the crowd to
    perceive a catalogue of 100 styles of their own had to stop the service's emulator and start one
    by hand under its pid file. CROWDCLUST_EMULATOR_CATALOGUE names a bundled catalogue or a TSV (kept
    as an absolute path); changing it under a running service is refused like a port change."""
    import subprocess
    import sys
    from dataclasses import replace

    import pytest
    import typer

    from crowdclust.commands.service import _catalogue
    from crowdclust.service.processes import pid_file
    from crowdclust.service.supervisor import _command, _refuse_moving_a_running_service

    own = tmp_path / "mine.tsv"
    own.write_text("image\tclass\nhttp://img.example/a.png\tboots\n")
    monkeypatch.chdir(tmp_path)
    assert _catalogue("digits") == "digits" and _catalogue(None) is None
    assert _catalogue("mine.tsv") == str(own)
    with pytest.raises(typer.BadParameter, match=r"nope\.tsv: no such file, and not a bundled catalogue"):
        _catalogue("nope.tsv")

    plain = ServiceConfig(state_dir=tmp_path / "svc")
    plain.state_dir.mkdir()  # the emulator's token is written there
    command = _command(plain, "emulator")[0]
    assert command[command.index("--catalogue") + 1] == "demo-shoes"
    command = _command(replace(plain, emulator_catalogue=str(own)), "emulator")[0]
    assert command[command.index("--catalogue") + 1] == str(own)

    plain.remember()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file(plain, "emulator").write_text(f"{running.pid}\n")
        with pytest.raises(RuntimeError, match=r"running with other settings \(emulator_catalogue\)"):
            _refuse_moving_a_running_service(replace(plain, emulator_catalogue="digits"))
        _refuse_moving_a_running_service(plain)  # the same settings: nothing to refuse
    finally:
        running.kill()
        running.wait()


def test_an_unknown_profile_is_refused_in_one_line_naming_the_option_and_its_variable(tmp_path: Path):
    """`service up --profile bogus` said `Invalid value: profile must be ...` in a box; the value can
    come from CROWDCLUST_PROFILE too, so both are named. Nothing is started: the state folder stays
    empty."""
    from tests.fixtures.cli import refused

    state = tmp_path / "state"
    said = refused("service", "up", "--state-dir", str(state), "--profile", "bogus")
    assert said.startswith(
        "error: Invalid value for --profile / CROWDCLUST_PROFILE: must be sqlite or postgres, not 'bogus' "
        "(usage: crowdclust service up [OPTIONS];"
    ), said
    assert not state.exists() or not any(state.iterdir())


def test_a_change_of_the_flows_parameters_is_deployed_again(tmp_path: Path, monkeypatch):
    """The deployments hold the parameters' schema from `tasks/params.py`: `make up` re-deployed on a
    change of prefect.yaml or `flows/` only, so a new check of a parameter reached the flow but not
    the run form or the server's check of a run's parameters."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "flows" / "pipeline.py").write_text("# flow\n")
    params = tmp_path / "tasks" / "params.py"
    params.write_text("token_secret_block = 'any'\n")
    monkeypatch.setattr(deployments, "REPO", tmp_path)
    cfg = ServiceConfig(state_dir=tmp_path / ".service")
    before = deployments.fingerprint(cfg, {"deployments": []})
    params.write_text("token_secret_block = 'a block name'\n")
    assert deployments.fingerprint(cfg, {"deployments": []}) != before
