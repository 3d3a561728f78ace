"""Run crowdclust as a local service: a Prefect server, the Toloka emulator and a process worker.

`make up` / `make down` call `up()` / `down()`. Everything lives under `.service/` in the
repository (Prefect's SQLite database, the emulator's database, logs, pid files, the emulator
token), so the service survives restarts of the machine's shell but never leaks outside the
project. Both operations are idempotent: `up` starts only what is not already answering, and
`down` stops only what its pid files name and is still alive.

Why a hand-written supervisor instead of `prefect server start --background`: the worker and the
emulator have no background mode, a process worker ignores the first SIGINT (prefect-notes.md,
gotcha 10), and all three must share one environment (PREFECT_HOME, PREFECT_API_URL).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK_POOL = "crowdclust"
TOKEN_BLOCK = "crowdclust-local-token"


@dataclass(frozen=True)
class ServiceConfig:
    """Where the local service lives and which ports it uses."""

    state_dir: Path = REPO / ".service"
    server_port: int = 4200
    emulator_port: int = 8765
    host: str = "127.0.0.1"
    results_dir: Path | None = None  # persisted task results; default `<state_dir>/results`
    worker_poll_seconds: float = 5.0  # how often the worker asks for runs (Prefect's default is 10)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.server_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.server_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://{self.host}:{self.emulator_port}"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "emulator-token"

    @property
    def results(self) -> Path:
        return self.results_dir or self.state_dir / "results"

    def health_url(self, name: str) -> str:
        """The URL that answers 2xx while the server or the emulator is up."""
        return {"server": f"{self.api_url}/health", "emulator": f"{self.emulator_url}/_emulator/health"}[name]

    def env(self) -> dict[str, str]:
        """The environment shared by the server, the worker, deploys and flow runs.

        - CROWDCLUST_LOCAL_URL points every `local` run at this emulator (`tasks.connect.endpoint`).
        - CROWDCLUST_RESULTS_DIR keeps the service's cached task results next to its database, so
          `make down`/`make up` and a Retry in the UI find them again.
        - TOLOKA_TOKEN is removed: every deployment names its Secret block, and a production token
          exported in the developer's shell must never be sent to the local emulator.
        """
        env = {k: v for k, v in os.environ.items() if k != "TOLOKA_TOKEN"}
        env.update(
            PREFECT_HOME=str(self.state_dir / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_WORKER_QUERY_SECONDS=str(self.worker_poll_seconds),
            CROWDCLUST_LOCAL_URL=self.emulator_url,
            CROWDCLUST_RESULTS_DIR=str(self.results),
        )
        return env


@dataclass(frozen=True)
class Component:
    """One supervised process: how to start it and how to tell that it answers."""

    command: list[str]
    startup_seconds: float


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _components(cfg: ServiceConfig, token: str) -> dict[str, Component]:
    """The processes `start` supervises, by name (the worker has no health URL: see `up`)."""
    return {
        "server": Component(
            [_bin("prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.server_port)], 180.0
        ),
        "emulator": Component(
            [
                _bin("crowdclust"),
                "emulator",
                "--host",
                cfg.host,
                "--port",
                str(cfg.emulator_port),
                "--db",
                str(cfg.state_dir / "emulator.db"),
                "--token",
                token,
                "--seed",
                "0",
            ],
            60.0,
        ),
    }


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _pid_file(cfg: ServiceConfig, name: str) -> Path:
    return cfg.state_dir / f"{name}.pid"


def _alive(pid: int) -> bool:
    """Whether `pid` still runs. A child of this very process (`up` called from Python, as the tests
    do) stays a zombie after it exits, which `kill(pid, 0)` cannot tell from a live process: reap it."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(cfg: ServiceConfig, name: str) -> int | None:
    path = _pid_file(cfg, name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _alive(pid) else None


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so that Python installs its handler again.

    A non-interactive shell starts background jobs with SIGINT ignored, children inherit that, and
    Python then keeps ignoring it: `make up &` from a script gave processes that ignored `down`'s
    SIGINT and were only stopped by its SIGKILL, about 20 s later each.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(cfg: ServiceConfig, name: str, command: list[str]) -> int:
    """Start `command` in its own session (so `down` can stop its whole process group)."""
    log = (cfg.state_dir / f"{name}.log").open("ab")
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=cfg.env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    _pid_file(cfg, name).write_text(f"{process.pid}\n")
    return process.pid


def _wait_until(check: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not become ready within {seconds:.0f} s; see {log}")


def _token(cfg: ServiceConfig) -> str:
    """The local emulator's token: made once, kept private to the owner of the checkout."""
    if cfg.token_file.exists():
        return cfg.token_file.read_text().strip()
    token = secrets.token_hex(16)
    cfg.token_file.write_text(token + "\n")
    cfg.token_file.chmod(0o600)
    return token


def _prefect(cfg: ServiceConfig, *args: str) -> None:
    """Run a Prefect CLI command against the local server; fail loudly with its output."""
    result = subprocess.run(
        [_bin("prefect"), "--no-prompt", *args],
        cwd=REPO,
        env=cfg.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def _save_token_block(cfg: ServiceConfig, token: str) -> None:
    """Store the emulator token in a Prefect Secret block, as production tokens are stored."""
    code = (
        "import sys\n"
        "from prefect.blocks.system import Secret\n"
        f"Secret(value=sys.stdin.read().strip()).save({TOKEN_BLOCK!r}, overwrite=True)\n"
    )
    subprocess.run([sys.executable, "-c", code], input=token, text=True, env=cfg.env(), cwd=REPO, check=True)


def start(cfg: ServiceConfig, name: str, say: Callable[[str], None] = print) -> None:
    """Start the server or the emulator unless it already answers; wait until it does."""
    health = cfg.health_url(name)
    if _answers(health):
        say(f"{name}: already running")
        return
    component = _components(cfg, _token(cfg))[name]
    pid = _spawn(cfg, name, component.command)
    log = cfg.state_dir / f"{name}.log"
    _wait_until(lambda: _answers(health), component.startup_seconds, name, log)
    say(f"{name}: started (pid {pid})")


def up(cfg: ServiceConfig | None = None, say: Callable[[str], None] = print) -> None:
    """Start what is not running, deploy every deployment in prefect.yaml, start a worker."""
    cfg = cfg or ServiceConfig()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("server", "emulator"):
        start(cfg, name, say)
    _prefect(cfg, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    _save_token_block(cfg, _token(cfg))
    _prefect(cfg, "deploy", "--all")
    say("deployments: applied from prefect.yaml")
    if _read_pid(cfg, "worker") is None:
        pid = _spawn(
            cfg, "worker", [_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"]
        )
        say(f"worker: started (pid {pid})")
    else:
        say("worker: already running")
    say(f"Prefect UI: {cfg.ui_url}")
    say(f"Emulator:   {cfg.emulator_url} (token in {_shown(cfg.token_file)})")


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (shorter), else absolute."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def stop(cfg: ServiceConfig, name: str, say: Callable[[str], None] = print) -> None:
    """SIGINT, then SIGINT again (a process worker ignores the first), then SIGKILL the group."""
    pid = _read_pid(cfg, name)
    if pid is None:
        say(f"{name}: not running")
        _pid_file(cfg, name).unlink(missing_ok=True)
        return
    for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGINT, 8.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
            break
    _pid_file(cfg, name).unlink(missing_ok=True)
    say(f"{name}: stopped")


def down(cfg: ServiceConfig | None = None, say: Callable[[str], None] = print) -> None:
    """Stop the worker first (so no run starts against a dying server), then emulator and server."""
    cfg = cfg or ServiceConfig()
    if not cfg.state_dir.exists():
        say("nothing to stop")
        return
    for name in ("worker", "emulator", "server"):
        stop(cfg, name, say)


def status(cfg: ServiceConfig | None = None) -> dict[str, bool]:
    """Which parts answer right now."""
    cfg = cfg or ServiceConfig()
    return {
        "server": _answers(cfg.health_url("server")),
        "emulator": _answers(cfg.health_url("emulator")),
        "worker": _read_pid(cfg, "worker") is not None,
    }
