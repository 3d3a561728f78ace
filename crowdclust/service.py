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

    def env(self) -> dict[str, str]:
        """The environment shared by the server, the worker, deploys and flow runs."""
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.state_dir / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_API_URL=self.api_url,
            CROWDCLUST_LOCAL_URL=self.emulator_url,
            CROWDCLUST_TOKEN_BLOCK=TOKEN_BLOCK,
        )
        return env


@dataclass(frozen=True)
class Component:
    """One supervised process: how to start it and how to tell that it answers."""

    name: str
    command: list[str]
    health_url: str
    startup_seconds: float


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _components(cfg: ServiceConfig, token: str) -> list[Component]:
    return [
        Component(
            "server",
            [_bin("prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.server_port)],
            f"{cfg.api_url}/health",
            180.0,
        ),
        Component(
            "emulator",
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
            f"{cfg.emulator_url}/_emulator/health",
            60.0,
        ),
    ]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _pid_file(cfg: ServiceConfig, name: str) -> Path:
    return cfg.state_dir / f"{name}.pid"


def _alive(pid: int) -> bool:
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


def up(cfg: ServiceConfig | None = None, say: Callable[[str], None] = print) -> None:
    """Start what is not running, deploy every deployment in prefect.yaml, start a worker."""
    cfg = cfg or ServiceConfig()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    token = _token(cfg)
    for component in _components(cfg, token):
        log = cfg.state_dir / f"{component.name}.log"
        if _answers(component.health_url):
            say(f"{component.name}: already running")
            continue
        pid = _spawn(cfg, component.name, component.command)
        _wait_until(
            lambda c=component: _answers(c.health_url), component.startup_seconds, component.name, log
        )
        say(f"{component.name}: started (pid {pid})")
    _prefect(cfg, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    _save_token_block(cfg, token)
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
    say(f"Emulator:   {cfg.emulator_url} (token in {cfg.token_file.relative_to(REPO)})")


def _stop(cfg: ServiceConfig, name: str, say: Callable[[str], None]) -> None:
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
        _stop(cfg, name, say)


def status(cfg: ServiceConfig | None = None) -> dict[str, bool]:
    """Which parts answer right now."""
    cfg = cfg or ServiceConfig()
    return {
        "server": _answers(f"{cfg.api_url}/health"),
        "emulator": _answers(f"{cfg.emulator_url}/_emulator/health"),
        "worker": _read_pid(cfg, "worker") is not None,
    }
