"""`make demo`: the whole pipeline against a fresh local emulator, then a summary.

Runs `crowdclust_pipeline` with `configs/demo-shoes/pipeline.yaml` against a fresh emulator (demo
shoes, 82 images, seed 0, 600 simulated seconds per wall second), prints clusters, ARI/NMI against
the truth, intruder accuracy, cost, wall time and the report paths, and stops what it started.

Start-up is parallel: before anything heavy is imported, a Prefect server (`prefect server start`,
no UI, SQLite in the project-local `.prefect/`) and the emulator start as subprocesses, while this
process imports the flows (Prefect, toloka-kit, numba: the slowest part); the flow starts when all
three are ready. With PREFECT_API_URL set, that server is used instead. During the flow a background
thread imports what the flow needs late (PREFETCH), and the private server's flow runs send no
heartbeats. `--timings` prints where the seconds went.

Every demo gets its own run key (the emulator starts empty each time, so nothing from an earlier
demo could be resumed); `crowdclust run` is the command for resumable runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from crowdclust.runtime import describe, prepare_prefect_env
from crowdclust.service.processes import answers, bin_path, launch
from tasks.settings import Settings

SPEED = 600.0
# What the flow imports lazily, late in the run (intruder accuracy, its chart, the model, thumbnails):
# imported by a background thread while the crowd labels, so the flow does not wait for them.
PREFETCH = ("crowdkit.aggregation", "matplotlib.pyplot", "PIL.Image", "aggregation.estimators")


class Timings:
    """Named spans of wall time since the demo started."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.spans: dict[str, tuple[float, float]] = {}

    def mark(self, name: str, since: float) -> None:
        self.spans[name] = (since - self.started, time.monotonic() - self.started)

    def report(self) -> str:
        lines = [
            f"  {name:<28} {a:6.1f} -> {b:6.1f} s  ({b - a:5.1f} s)" for name, (a, b) in self.spans.items()
        ]
        return "where the seconds went (start -> end since launch):\n" + "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(command: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in its own session; output to `log`, or to a pipe the caller drains."""
    if log is None:
        return launch(command, env, subprocess.PIPE)
    with log.open("wb") as output:
        return launch(command, env, output)


def _wait(
    what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], seconds: float = 120
) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up (exit code {process.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {seconds:.0f} s")
        time.sleep(0.1)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT to all at once (each shuts down in about a second), then wait; SIGKILL after 10 s."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _prefetch() -> None:
    """Import PREFETCH in a daemon thread (the main thread mostly sleeps between polls meanwhile)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # no GUI backend chosen behind the flow's back

    def run() -> None:
        for name in PREFETCH:
            importlib.import_module(name)

    threading.Thread(target=run, name="prefetch-imports", daemon=True).start()


def _no_heartbeats() -> contextlib.AbstractContextManager[object]:
    """Flow-run heartbeats off: they serve only crash detection on a shared server, and each flow
    run's end waits up to a second for its heartbeat thread (four flow runs per demo)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def _drain_prefect() -> None:
    """Send the logs and events Prefect still queues to the server before it stops: otherwise the
    exit handlers retry against a stopped server for more than a minute."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument("--timings", action="store_true", help="print where the seconds went")
    args = parser.parse_args(argv)
    timings = Timings()
    prepare_prefect_env()
    env = {**os.environ, "PREFECT_SERVER_UI_ENABLED": "false"}
    started: list[subprocess.Popen[bytes]] = []
    try:
        # 1. Subprocesses first, so they start while this process imports.
        server = None
        if not os.environ.get("PREFECT_API_URL"):
            port = _free_port()
            log = Path(os.environ["PREFECT_HOME"]) / "demo-server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [bin_path("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            server = _spawn(command, env, log)
            started.append(server)
            os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        token = secrets.token_hex(16)
        emulator = _spawn(
            [bin_path("crowdclust"), "emulator", "--port", "0", "--seed", "0", "--speed", str(SPEED)],
            {**env, "CROWDCLUST_EMULATOR_TOKEN": token},
        )
        started.append(emulator)
        print(
            f"starting the emulator (demo shoes, 82 images, seed 0, speed x{SPEED:.0f}) and Prefect ...",
            flush=True,
        )
        emulator_url: list[str] = []

        def read_emulator_url() -> None:
            """Take the URL from the "ready at" line; keep draining so the pipe never fills."""
            assert emulator.stdout is not None
            for line in emulator.stdout:
                found = re.search(r"ready at (http://\S+)", line.decode(errors="replace"))
                if found and not emulator_url:
                    emulator_url.append(found.group(1))

        reader = threading.Thread(target=read_emulator_url, daemon=True)
        reader.start()

        # 2. Meanwhile: the heavy imports.
        since = time.monotonic()
        from flows.pipeline import crowdclust_pipeline
        from tasks.params import load_params

        timings.mark("import flows (this process)", since)
        _prefetch()
        since = time.monotonic()
        _wait("the emulator", lambda: bool(emulator_url), emulator)
        timings.mark("emulator ready (waited)", since)
        since = time.monotonic()
        if server is not None:
            _wait("the Prefect server", lambda: answers(os.environ["PREFECT_API_URL"] + "/health"), server)
        timings.mark("Prefect server ready (waited)", since)

        # 3. The flow.
        os.environ["TOLOKA_TOKEN"] = token
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        params = load_params(
            Settings().configs_dir / "demo-shoes" / "pipeline.yaml",
            {
                "toloka": {"url": emulator_url[0]},
                "run_key": f"demo-shoes-{stamp}",
                "runs_dir": str(Path.cwd() / "runs"),
            },
        )
        print(f"emulator at {emulator_url[0]}; running the flow (run key {params.run_key}) ...", flush=True)
        since = time.monotonic()
        # The private server watches no heartbeats; a server of the user's own (PREFECT_API_URL) may.
        with _no_heartbeats() if server is not None else contextlib.nullcontext():
            summary = crowdclust_pipeline(params)
        timings.mark("flow", since)
    finally:
        since = time.monotonic()
        _drain_prefect()
        _stop(started)
        timings.mark("stop emulator and server", since)
    print("\n== crowdclust demo ==")
    print(describe(summary))
    print(f"total wall time:    {time.monotonic() - timings.started:.1f} s (including start-up)")
    if args.timings:
        print(timings.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
