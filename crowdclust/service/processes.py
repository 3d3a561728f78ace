"""Supervising the service's processes: spawn in their own session, pid files, health, stop.

Why hand-written instead of `prefect server start --background`: the worker, the emulator and the
file server have no background mode, a process worker ignores the first SIGINT, and all of them
must share one environment (PREFECT_HOME, PREFECT_API_URL, result storage).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crowdclust.service.config import REPO, ServiceConfig
from tasks.atomic_file import write_atomic


def bin_path(name: str) -> str:
    """An executable of this virtual environment (prefect, crowdclust)."""
    return str(Path(sys.executable).parent / name)


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def pid_file(cfg: ServiceConfig, name: str) -> Path:
    return cfg.state_dir / f"{name}.pid"


def log_file(cfg: ServiceConfig, name: str) -> Path:
    return cfg.state_dir / f"{name}.log"


# A worker told to stop (`kill PID`, a process manager) writes its pid here before it ends its runs,
# which takes up to its grace of 15 s: `up` then waits for it instead of taking it for a live one.
STOPPING_FILE_ENV = "CROWDCLUST_STOPPING_FILE"


def stopping_file(cfg: ServiceConfig, name: str) -> Path:
    return cfg.state_dir / f"{name}.stopping"


# A worker's own temporary files go to a folder of the service's (`worker_temp`), which `up` empties
# before it starts the worker and `stop` after it stopped it: Prefect's process worker writes each
# flow run's whole environment, the service's password (PREFECT_API_AUTH_STRING) with it, to
# `prefect-workspace-attempt-*/workspace.json` in its temporary folder, and removes it only when the
# run ends while the worker lives; a worker killed outright left the files in the machine's /tmp.
# The worker reads the folder from this variable (`crowdclust.service.worker`); its flow runs keep
# the machine's temporary folder (their run-key locks live there, shared by every run on the host).
WORKER_TEMP_ENV = "CROWDCLUST_WORKER_TEMP"


def worker_temp(cfg: ServiceConfig, name: str) -> Path:
    return cfg.state_dir / "tmp" / name


def empty_worker_temp(cfg: ServiceConfig, name: str) -> Path:
    """`worker_temp(name)`, emptied (made when missing, mode 0700), while no worker of that name
    runs. Runs an earlier worker of the name left going need nothing in it: they work in the
    checkout (prefect.yaml's `pull: null`) with the machine's temporary folder (a run left so by a
    `kill -9` of its worker completed after `up` had emptied the folder)."""
    folder = worker_temp(cfg, name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def winding_down(cfg: ServiceConfig, name: str, pid: int) -> bool:
    """Whether process `pid`, recorded for `name`, has said it is stopping (see `STOPPING_FILE_ENV`)."""
    try:
        return stopping_file(cfg, name).read_text().strip() == str(pid)
    except OSError:
        return False


def stat_fields(pid: int) -> list[str]:
    """`/proc/<pid>/stat` after the command name (which may hold spaces and parentheses):
    [0] the state ("Z" for a zombie), [1] the parent's pid, ... Raises OSError when `pid` is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent_pid(pid: int) -> int:
    return int(stat_fields(pid)[1])


def alive(pid: int) -> bool:
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
    try:  # a zombie that another process has not reaped yet has exited all the same
        return stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return True


def read_pid(cfg: ServiceConfig, name: str) -> int | None:
    """The pid recorded for `name` if that process is still alive."""
    path = pid_file(cfg, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so that Python installs its handler again.

    A non-interactive shell starts background jobs with SIGINT ignored, children inherit that, and
    Python then keeps ignoring it: `make up &` from a script gave processes that ignored `down`'s
    SIGINT and were only stopped by its SIGKILL, about 20 s later each.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> Callable[[], None]:
    """In the child: SIGTERM when the thread that started it ends, `kill -9` of the parent included.

    A command's own helpers (its private Prefect server, the demo's emulator) are stopped by the
    command on every exit it sees; a `kill -9` it cannot see left them running, holding a port and
    a few hundred MB each, with nothing left to stop them. Linux only (`prctl`); elsewhere they
    outlive such a kill as before.
    """

    def prepare() -> None:
        _default_sigint()
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: no signal would come
                os.kill(os.getpid(), signal.SIGTERM)

    return prepare


def launch(
    command: Sequence[str], env: dict[str, str], output: Any, die_with_parent: bool = False
) -> subprocess.Popen[bytes]:
    """Start `command` from the repository in its own session (so its whole process group can be
    signalled), stdin closed, stdout and stderr to `output` (a file or `subprocess.PIPE`).

    `die_with_parent`: for helpers that live only as long as the command (see `_die_with`); the
    service's components outlive the command that starts them.
    """
    return subprocess.Popen(
        list(command),
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()) if die_with_parent else _default_sigint,
    )


def spawn(cfg: ServiceConfig, name: str, command: Sequence[str], env: dict[str, str]) -> int:
    """Start a supervised component, its log in `<state_dir>/<name>.log`, its pid in `<name>.pid`."""
    # Only the owner reads the logs: a component may print what it was started with.
    descriptor = os.open(log_file(cfg, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        process = launch(command, env, log)
    write_atomic(pid_file(cfg, name), f"{process.pid}\n")  # whole: an empty one hid the process from `down`
    return process.pid


class StartupFailed(RuntimeError):
    """A process died during start-up or did not become ready in time (the message says which)."""


def wait_until(
    check: Callable[[], bool], seconds: float, what: str, log: Path | None = None, pid: int | None = None
) -> None:
    """Poll `check` until it holds; fail early (with the log's tail, if it has one) if `pid` died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            last = f"; last lines of {log}:\n{tail(log)}" if log is not None else ""
            raise StartupFailed(f"{what} exited during start-up{last}")
        time.sleep(0.1)
    raise StartupFailed(
        f"{what} did not become ready within {seconds:.0f} s" + (f"; see {log}" if log else "")
    )


def port_taken(host: str, port: int) -> bool:
    """Whether a server could not listen on host:port now (bound as servers bind, with SO_REUSEADDR,
    so a connection lingering in TIME_WAIT does not count, but another process's socket does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def children(pid: int, running: str = "") -> list[int]:
    """The processes whose parent is `pid` and whose command line holds `running` (from /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if parent_pid(int(entry.name)) != pid:
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if running in command.decode(errors="replace"):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(found)


def runs_of(stopping: Path, running: str = "prefect.engine") -> list[int]:
    """The processes whose command line holds `running` and whose environment names `stopping` as
    their STOPPING_FILE_ENV: the flow runs a worker of that name started, its own children and those
    an earlier worker of the name left behind (from /proc).

    A flow-run process inherits its worker's environment (Prefect's process worker starts it with
    `os.environ`). When the worker is killed outright (kill -9) its runs go on, their parent now
    init: `children` of the next worker does not find them, and `make down` left such a run going
    with the server and the emulator gone.
    """
    marker = f"{STOPPING_FILE_ENV}={stopping}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if running.encode() not in (entry / "cmdline").read_bytes():
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile, or another user's
            continue
    return sorted(found)


def terminate(pids: list[int], wait: float = 15.0, running: Callable[[int], bool] | None = None) -> None:
    """SIGTERM each process (its group if it leads one), then SIGKILL what still runs after `wait` s.

    For a worker's flow-run processes, each the leader of its own session: on SIGTERM Prefect
    marks the run Crashed and runs its on_crashed hooks (which close the run's open pools).
    `running` tells whether a process still runs (default `alive`, which reaps a child of this
    process; a worker ending its own runs must leave their exit status to its own watcher).
    """
    alive_now = running or alive
    for sig, grace in ((signal.SIGTERM, wait), (signal.SIGKILL, 5.0)):
        running_now = [pid for pid in pids if alive_now(pid)]
        for pid in running_now:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:  # its own group: its children too
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive_now(pid) for pid in running_now):
            time.sleep(0.2)


def stop_process(cfg: ServiceConfig, name: str) -> bool:
    """SIGINT, SIGINT again (a process worker ignores the first), then SIGKILL the process group.

    Returns whether something was running. Its pid file goes, and the file a stopping worker wrote.
    """
    pid = read_pid(cfg, name)
    if pid is None:
        pid_file(cfg, name).unlink(missing_ok=True)
        stopping_file(cfg, name).unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGINT, 8.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if not alive(pid):
            break
    pid_file(cfg, name).unlink(missing_ok=True)
    stopping_file(cfg, name).unlink(missing_ok=True)  # a worker writes it on the signal above
    return True
