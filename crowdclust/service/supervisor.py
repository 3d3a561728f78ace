"""`up`, `down` and `status` of the local service.

`up` starts, in parallel, what is not already answering: the Prefect server (after PostgreSQL in
the `postgres` profile), the emulator and the read-only file server of `runs/`; then provisions
the server (work pool, token Secret block, Toloka rate limits, result storage block) and deploys
prefect.yaml only when something changed (see `deployments`), while the workers start. A second
`up` with nothing changed only checks that everything answers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from crowdclust.service import deployments, postgres
from crowdclust.service.config import (
    ADMIN_TOKEN_ENV,
    AUTH_USER,
    LOOPBACK,
    REPO,
    SERVER_AUTH_ENV,
    TOKEN_ENV,
    WORK_POOL,
    ServiceConfig,
    read_secret_file,
)
from crowdclust.service.files import AUTH_ENV as FILES_AUTH_ENV
from crowdclust.service.processes import (
    STOPPING_FILE_ENV,
    WORKER_TEMP_ENV,
    StartupFailed,
    alive,
    answers,
    bin_path,
    children,
    empty_worker_temp,
    log_file,
    parent_pid,
    pid_file,
    port_taken,
    read_pid,
    runs_of,
    spawn,
    stop_process,
    stopping_file,
    terminate,
    wait_until,
    winding_down,
    worker_temp,
)
from crowdclust.service.worker import RUN_GRACE_SECONDS
from tasks.atomic_file import create_exclusive, write_atomic

Say = Callable[[str], None]
STARTUP_SECONDS = {"server": 180.0, "emulator": 60.0, "files": 20.0}
# A stopping worker ends its runs (SIGKILL after RUN_GRACE_SECONDS), then Prefect stops it.
WIND_DOWN_SECONDS = RUN_GRACE_SECONDS + 45.0
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"
# How long the server keeps an automation bucket past its end before sweeping it unevaluated.
# Prefect's 60 s let a server that was down for longer than the heartbeat silence plus a minute
# delete, as it started, the buckets of the runs that died meanwhile, before it evaluated them:
# those runs then showed Running for good. Evaluated buckets are removed anyway.
EXPIRED_BUCKET_BUFFER = "P30D"  # ISO 8601: Prefect reads a bare number of seconds as a time of day


def _token(cfg: ServiceConfig) -> str:
    """The local emulator's token: made once, whole, in a file only its owner can read (mode 0600).

    It was created empty and written after: a `make up` killed in between left it empty, and the
    emulator then fell back to its public default token while the deployments' Secret block held
    an empty one. One left empty so is made again, unless an emulator already runs (with the
    default token, then): `make down` first.
    """
    try:
        create_exclusive(cfg.token_file, os.urandom(16).hex() + "\n", mode=0o600)
    except FileExistsError:
        if not cfg.token_file.read_text().strip() and not answers(cfg.health_url("emulator")):
            write_atomic(cfg.token_file, os.urandom(16).hex() + "\n", mode=0o600)
    return read_secret_file(cfg.token_file, "the emulator's token")


def _api_auth(cfg: ServiceConfig) -> str:
    """The server's `user:password`, made once, whole, in a file only its owner can read (0600)."""
    with contextlib.suppress(FileExistsError):
        create_exclusive(cfg.auth_file, f"{AUTH_USER}:{secrets.token_urlsafe(24)}\n", mode=0o600)
    return read_secret_file(cfg.auth_file, "the Prefect API's password")


def _password_note(cfg: ServiceConfig) -> str:
    """Where the UI's password is, after its URL, when the service has one of its own."""
    if not cfg.auth or cfg.server_url:
        return ""
    return f" (password: the line in {_shown(cfg.auth_file)}; PREFECT_API_AUTH_STRING for clients)"


def _command(cfg: ServiceConfig, name: str) -> tuple[list[str], dict[str, str]]:
    """How to start the server, the emulator or the file server, and with which environment.

    Secrets go through the environment of the one process that needs them: the emulator's token
    (CROWDCLUST_EMULATOR_TOKEN), the PostgreSQL URL and the API's password of the server; never a
    command line.
    """
    env = cfg.env()
    if name == "server":
        if cfg.auth:
            env[SERVER_AUTH_ENV] = _api_auth(cfg)
        # Leases on disk (under PREFECT_HOME): with the default in-memory store, a server restarted
        # while a run held its run key forgot the lease and kept the key's slot taken for good.
        env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASES_ON_DISK)
        # The heartbeat automation must still fire for runs that died while the server was down.
        env.setdefault("PREFECT_SERVER_EVENTS_EXPIRED_BUCKET_BUFFER", EXPIRED_BUCKET_BUFFER)
        if cfg.profile == "postgres":
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.connection_url(cfg)
        return [
            bin_path("prefect"),
            "server",
            "start",
            "--host",
            cfg.host,
            "--port",
            str(cfg.server_port),
        ], env
    if name == "emulator":
        env[TOKEN_ENV] = _token(cfg)
        if os.environ.get(ADMIN_TOKEN_ENV):  # its own, as before: the workers' environment has none
            env[ADMIN_TOKEN_ENV] = os.environ[ADMIN_TOKEN_ENV]
        command = [
            bin_path("crowdclust"),
            "emulator",
            "--host",
            cfg.host,
            "--port",
            str(cfg.emulator_port),
            "--db",
            str(cfg.state_dir / "emulator.db"),
            "--seed",
            "0",
            "--speed",
            str(cfg.emulator_speed),
        ]
        if cfg.emulator_rate_limit:
            command += ["--rate-limit", str(cfg.emulator_rate_limit)]
        command += ["--catalogue", cfg.emulator_catalogue]
        return command, env
    if name == "files":
        cfg.runs_dir.mkdir(parents=True, exist_ok=True)
        where = ["--bind", cfg.host, "--directory", str(cfg.runs_dir)]
        if cfg.auth:  # behind the API's password (`crowdclust.service.files`)
            env[FILES_AUTH_ENV] = _api_auth(cfg)
            command = [
                sys.executable,
                "-m",
                "crowdclust.service.files",
                *where,
                "--port",
                str(cfg.files_port),
            ]
            return command, env
        return [sys.executable, "-m", "http.server", *where, str(cfg.files_port)], env
    raise ValueError(f"unknown component {name!r}")


def start(cfg: ServiceConfig, name: str, say: Say = print) -> None:
    """Start the server, the emulator or the file server unless it already answers; wait until it does."""
    health = cfg.health_url(name)
    if answers(health):
        _refuse_a_stranger(cfg, name)
        say(f"{name}: already running")
        return
    if name == "server" and cfg.server_url:
        raise RuntimeError(f"the Prefect server at {cfg.api_url} does not answer")
    if name == "server" and cfg.uses_local_postgres and postgres.start(cfg):
        say(f"postgres: started on {LOOPBACK}:{cfg.postgres_port}")
    _refuse_a_taken_port(cfg, name)
    command, env = _command(cfg, name)
    pid = spawn(cfg, name, command, env)
    wait_until(lambda: answers(health), STARTUP_SECONDS[name], name, log_file(cfg, name), pid)
    say(f"{name}: started (pid {pid})")


PORT_SETTINGS = {  # component -> (its port's field, the variable that sets it)
    "server": ("server_port", "CROWDCLUST_SERVER_PORT"),
    "emulator": ("emulator_port", "CROWDCLUST_EMULATOR_PORT"),
    "files": ("files_port", "CROWDCLUST_FILES_PORT"),
}


def _refuse_a_taken_port(cfg: ServiceConfig, name: str) -> None:
    """One line when something else holds the component's port, before it is started.

    Each component found out for itself: the file server died with a 15-line traceback ending
    `OSError: [Errno 98] Address already in use`, which `make up` printed as the log's tail.
    """
    attribute, variable = PORT_SETTINGS[name]
    port = getattr(cfg, attribute)
    if port_taken(cfg.host, port):
        raise StartupFailed(
            f"{name}: port {port} on {cfg.host} is taken by another process (`ss -ltnp 'sport = :{port}'` "
            f"shows which): stop it, or give the service another port with {variable}=PORT"
        )


def _refuse_a_stranger(cfg: ServiceConfig, name: str) -> None:
    """One line when what answers on the component's port is not the process this service started.

    `up` took anything that answered the health URL for its own: with another checkout's (or another
    user's) emulator on CROWDCLUST_EMULATOR_PORT it said nothing, wrote a new token the emulator never
    read, and every run of the deployments failed on that token; a Prefect server there got this
    service's deployments and workers.
    """
    if read_pid(cfg, name) is not None:
        return
    attribute, variable = PORT_SETTINGS[name]
    port = getattr(cfg, attribute)
    raise StartupFailed(
        f"{name}: port {port} on {cfg.host} answers, but not as this service's {name} "
        f"({pid_file(cfg, name)} names no running process): another service, a checkout's or another "
        f"user's, or one started by hand (`ss -ltnp 'sport = :{port}'` shows which): stop it, or give "
        f"the service another port with {variable}=PORT"
    )


def _refuse_a_port_not_ours(cfg: ServiceConfig, name: str) -> None:
    """Both refusals of `start`, for every component before `up` starts any: refused by the
    emulator's port, `up` had already started the server and the file server, and left them up."""
    if answers(cfg.health_url(name)):
        _refuse_a_stranger(cfg, name)
    else:
        _refuse_a_taken_port(cfg, name)


def stop(cfg: ServiceConfig, name: str, say: Say = print) -> None:
    """Stop one supervised process (`server`, `emulator`, `files`, `worker-N`).

    Stopping a worker also terminates the flow-run processes it started: they end Crashed and close
    their pools. They are terminated first, while their worker still runs: a Prefect 3.9 process
    worker that stops kills its runs' processes with SIGKILL, and a run died within milliseconds,
    its pools open, its state Running and its run-key slot held. (The worker itself does the same
    on a SIGTERM or SIGINT from elsewhere: `crowdclust.service.worker`.)
    """
    if name.startswith("worker-"):
        runs, left = worker_runs(cfg, name)
        if runs or left:
            terminate(runs + left)
        if runs:
            say(f"{name}: terminated its {len(runs)} flow-run process(es)")
        if left:
            say(f"{name}: terminated {len(left)} flow-run process(es) an earlier {name} left running")
    stopped = stop_process(cfg, name)
    if name.startswith("worker-"):
        shutil.rmtree(worker_temp(cfg, name), ignore_errors=True)
    say(f"{name}: {'stopped' if stopped else 'not running'}")


def worker_runs(cfg: ServiceConfig, name: str) -> tuple[list[int], list[int]]:
    """The flow-run processes of worker `name`: its children, and those an earlier worker of that
    name left running when it was killed outright (`processes.runs_of`)."""
    worker = read_pid(cfg, name)
    runs = children(worker, running="prefect.engine") if worker is not None else []
    # By parent, not as "not in `runs`": a run the live worker starts between the two looks is its own.
    left = [pid for pid in runs_of(stopping_file(cfg, name)) if _parent(pid) not in (worker, None)]
    return runs, left


def _parent(pid: int) -> int | None:
    """`pid`'s parent, or None when it has ended meanwhile."""
    try:
        return parent_pid(pid)
    except (OSError, ValueError, IndexError):
        return None


def _deployer_due(cfg: ServiceConfig) -> bool:
    """Whether the running server lacks something `deployer` provides (warm `up`: REST calls only)."""
    from crowdclust.service import deployer

    last = deployments.record(cfg)
    if last.get("provisioned") != deployer.provision_key(cfg) or not deployments.pool_exists(cfg):
        return True
    return not deployments.up_to_date(cfg, last, deployments.server_deployments(cfg))


class _Deployer:
    """The `deployer` process: relays its messages, tells when the work pool exists."""

    RELAYED = ("provisioned:", "deployments:")

    def __init__(self, cfg: ServiceConfig, force: bool, say: Say) -> None:
        from crowdclust.service.deployer import PROVISIONED

        self.log = log_file(cfg, "deployer")
        command = [sys.executable, "-m", "crowdclust.service.deployer", str(cfg.state_dir)]
        command += ["--parent", str(os.getpid())]  # it stops waiting for the server when `up` is gone
        self.process = subprocess.Popen(
            [*command, *(["--force"] if force else [])],
            cwd=REPO,
            env=cfg.client_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.provisioned = threading.Event()
        self.lines: list[str] = []

        def relay() -> None:
            assert self.process.stdout is not None
            with self.log.open("a") as log:
                for line in self.process.stdout:
                    log.write(line)
                    self.lines.append(line.rstrip())
                    if line.strip() == PROVISIONED:
                        self.provisioned.set()
                    elif line.startswith(self.RELAYED):
                        say(line.rstrip())
            self.provisioned.set()  # exited: nobody waits for a pool that will not come

        self.reader = threading.Thread(target=relay, daemon=True)
        self.reader.start()

    def finish(self) -> None:
        code = self.process.wait()
        self.reader.join()
        if code != 0:
            tail_lines = "\n".join(self.lines[-20:])
            raise RuntimeError(f"provisioning/deploying failed (see {self.log}):\n{tail_lines}")


def _worker_names(cfg: ServiceConfig) -> list[str]:
    return sorted(p.stem for p in cfg.state_dir.glob("worker-*.pid"))


def _start_workers(cfg: ServiceConfig, say: Say) -> list[tuple[str, int, int]]:
    """Start workers 1..N that are not running and stop those above N. Returns (name, pid, log offset)."""
    for name in _worker_names(cfg):
        if int(name.split("-")[1]) > cfg.workers:
            stop(cfg, name, say)
    started = []
    for index in range(1, cfg.workers + 1):
        name = f"worker-{index}"
        pid = read_pid(cfg, name)
        if pid is not None and winding_down(cfg, name, pid):
            _wait_wound_down(name, pid, say)
        elif pid is not None:
            say(f"{name}: already running")
            continue
        log = log_file(cfg, name)
        offset = log.stat().st_size if log.exists() else 0
        stopping = stopping_file(cfg, name)
        stopping.unlink(missing_ok=True)
        # `prefect worker start`, ending its flow runs before it stops on a signal (see the module)
        command = [sys.executable, "-m", "crowdclust.service.worker", "worker", "start"]
        command += ["--pool", WORK_POOL, "--type", "process"]
        temp = empty_worker_temp(cfg, name)
        env = cfg.client_env() | {STOPPING_FILE_ENV: str(stopping), WORKER_TEMP_ENV: str(temp)}
        pid = spawn(cfg, name, [*command, "--name", f"crowdclust-{name}"], env)
        started.append((name, pid, offset))
    return started


def _wait_wound_down(name: str, pid: int, say: Say) -> None:
    """Wait for a worker that was told to stop (`kill PID`) to end its runs and exit.

    Taken for a running worker, it exited a moment after `up` said "already running", and the
    service had one worker fewer until the next `up`.
    """
    say(f"{name}: stopping (pid {pid}); waiting for it to end its runs before starting it again")
    deadline = time.monotonic() + WIND_DOWN_SECONDS
    while alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{name} (pid {pid}) was told to stop and still runs after {WIND_DOWN_SECONDS:.0f} s: "
                f"wait for it or `kill -KILL {pid}`, then `make up` again"
            )
        time.sleep(0.2)


def _wait_workers(cfg: ServiceConfig, started: list[tuple[str, int, int]], say: Say) -> None:
    """Until each new worker logs that it started (it then polls the pool)."""
    for name, pid, offset in started:
        log = log_file(cfg, name)

        def ready(log: Path = log, offset: int = offset) -> bool:
            with log.open("rb") as handle:
                handle.seek(offset)
                return b"started!" in handle.read()

        wait_until(ready, 90.0, name, log, pid)
        say(f"{name}: started (pid {pid})")


def _refuse_moving_a_running_service(cfg: ServiceConfig) -> None:
    """Other ports or another profile while the remembered service still runs would orphan it."""
    from crowdclust.service.config import load

    if not cfg.settings_file.exists():
        return
    running = load(cfg.state_dir)
    keys = (
        "host",
        "server_port",
        "emulator_port",
        "files_port",
        "postgres_port",
        "profile",
        "server_url",
        "emulator_catalogue",  # read as the emulator starts: a running one would go on without it
        "auth",  # read as the server starts: its clients would send a password it does not ask, or none
    )
    changed = [key for key in keys if getattr(running, key) != getattr(cfg, key)]
    names = ["server", "emulator", "files", *_worker_names(cfg)]
    if changed and (any(read_pid(running, name) for name in names) or postgres.running(running)):
        raise RuntimeError(
            f"the service in {cfg.state_dir} is running with other settings ({', '.join(changed)}): "
            "`make down` first, then `make up` with the new ones"
        )


def up(cfg: ServiceConfig | None = None, say: Say = print, force: bool = False) -> dict[str, float]:
    """Start what is not running, provision and deploy what changed, run `cfg.workers` workers.

    The deployer (Prefect and flow imports, then provisioning and deploy) starts at once when the
    server is not yet up, in parallel with the server, the emulator and the file server; the workers
    start as soon as the work pool exists. Returns where the seconds went (name -> seconds).
    """
    from crowdclust.service.config import load

    cfg = cfg or load()
    if cfg.on_network and not cfg.auth and not cfg.server_url:
        raise RuntimeError(
            f"a service that listens on {cfg.host} must ask for a password: anyone on the network could "
            "start paid runs and read the Toloka token; add AUTH=1 (`--auth`), or listen on 127.0.0.1"
        )
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    _refuse_moving_a_running_service(cfg)
    for name in _own_parts(cfg):
        _refuse_a_port_not_ours(cfg, name)  # every port before anything starts
    cfg.remember()
    _token(cfg)
    seconds: dict[str, float] = {}
    began = time.monotonic()

    def timed(name: str, action: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            return action()
        finally:
            seconds[name] = time.monotonic() - started

    if cfg.auth and not cfg.server_url:
        _api_auth(cfg)  # before the deployer starts: it and the workers need it as the server does
    server_up = answers(cfg.health_url("server"))
    if cfg.server_url and not server_up:
        raise RuntimeError(f"the Prefect server at {cfg.api_url} does not answer")
    deployer = _Deployer(cfg, force, say) if force or not server_up or _deployer_due(cfg) else None
    parts = _own_parts(cfg)
    with ThreadPoolExecutor(len(parts)) as pool:
        futures = [pool.submit(timed, name, lambda name=name: start(cfg, name, say)) for name in parts]
        errors = [f.exception() for f in futures if f.exception()]
    if errors:
        if deployer:
            deployer.process.kill()
        raise RuntimeError("; ".join(str(e) for e in errors))
    if deployer:
        timed("provision", deployer.provisioned.wait)
    workers = _start_workers(cfg, say)
    timed("workers", lambda: _wait_workers(cfg, workers, say))
    if deployer:
        timed("deploy", deployer.finish)
    else:
        say("deployments: unchanged")
    seconds["total"] = time.monotonic() - began
    say(f"Prefect UI: {cfg.ui_url}{_password_note(cfg)}")
    say(f"Emulator:   {cfg.emulator_url} (token in {_shown(cfg.token_file)})")
    say(f"Run files:  {cfg.runs_url}/ (serves {_shown(cfg.runs_dir)} read-only)")
    say(f"Results:    {cfg.results_location}")
    if cfg.on_network:
        say(_teammates_line(cfg))
    return seconds


def _teammates_line(cfg: ServiceConfig) -> str:
    """How people on other machines reach a service that listens on the network."""
    return (
        f"Teammates:  PREFECT_API_URL=http://{cfg.public_host}:{cfg.server_port}/api and "
        f"PREFECT_API_AUTH_STRING=<the line in {_shown(cfg.auth_file)}>; UI http://{cfg.public_host}:"
        f"{cfg.server_port}, emulator http://{cfg.public_host}:{cfg.emulator_port}, run files "
        f"{cfg.shared_runs_url}/"
    )


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (shorter), else absolute."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def down(cfg: ServiceConfig | None = None, say: Say = print) -> None:
    """Stop the workers first (so no run starts against a dying server), then the rest."""
    from crowdclust.service.config import load

    cfg = cfg or load()
    if not cfg.state_dir.exists():
        say("nothing to stop")
        return
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: stop(cfg, name, say), _worker_names(cfg)))
        list(pool.map(lambda name: stop(cfg, name, say), ["emulator", "files", "server"]))
    if cfg.uses_local_postgres:
        say(f"postgres: {'stopped' if postgres.stop(cfg) else 'not running'}")


def status(cfg: ServiceConfig | None = None) -> dict[str, bool]:
    """Which parts answer right now (workers by their pid files)."""
    from crowdclust.service.config import load

    cfg = cfg or load()
    parts: dict[str, bool] = {}
    if cfg.uses_local_postgres:
        parts["postgres"] = postgres.running(cfg)
    parts |= {name: answers(cfg.health_url(name)) for name in ("server", "emulator", "files")}
    parts |= {name: read_pid(cfg, name) is not None for name in _all_worker_names(cfg)}
    return parts


def _own_parts(cfg: ServiceConfig) -> list[str]:
    """The parts `up` starts itself: the emulator, the file server and, unless the service uses an
    existing Prefect server (`CROWDCLUST_SERVER_URL`), the Prefect server."""
    return ["emulator", "files"] + ([] if cfg.server_url else ["server"])


def strangers(cfg: ServiceConfig) -> dict[str, int]:
    """The parts whose port answers without this service's pid file naming a running process
    (another checkout's or another user's service, on the same ports), name -> port: `status` said
    `running` for them, and `up` refuses them (`_refuse_a_stranger`)."""
    return {
        name: getattr(cfg, PORT_SETTINGS[name][0])
        for name in _own_parts(cfg)
        if read_pid(cfg, name) is None and answers(cfg.health_url(name))
    }


def _all_worker_names(cfg: ServiceConfig) -> list[str]:
    """The workers the settings ask for and those with a pid file (an earlier `up` may have had more)."""
    return sorted({*_worker_names(cfg), *(f"worker-{i}" for i in range(1, cfg.workers + 1))})


def left_running(cfg: ServiceConfig) -> dict[str, list[int]]:
    """Per worker name, the flow-run processes an earlier worker of that name left running when it
    was killed outright (`worker_runs`): `status` names them, `down` ends them."""
    found = {name: worker_runs(cfg, name)[1] for name in _all_worker_names(cfg)}
    return {name: pids for name, pids in found.items() if pids}
