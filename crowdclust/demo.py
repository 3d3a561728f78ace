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
demo could be resumed), and so its own folder, `runs/demo-shoes__<run key>/`; `crowdclust run` is
the command for resumable runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from crowdclust.private_server import private_server, spawn
from crowdclust.runtime import describe, prepare_prefect_env, unwritable_folder
from crowdclust.service.processes import bin_path, wait_until
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


def _prefetch() -> None:
    """Import PREFETCH in a daemon thread (the main thread mostly sleeps between polls meanwhile)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # no GUI backend chosen behind the flow's back

    def run() -> None:
        for name in PREFETCH:
            importlib.import_module(name)

    threading.Thread(target=run, name="prefetch-imports", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument("--timings", action="store_true", help="print where the seconds went")
    args = parser.parse_args(argv)
    timings = Timings()
    prepare_prefect_env()
    unwritable = unwritable_folder(Path.cwd() / "runs" / "demo-shoes")  # its folder is new: runs/ is checked
    if unwritable is not None:
        print(f"error: {unwritable}", file=sys.stderr)
        return 2
    env = {**os.environ, "PREFECT_SERVER_UI_ENABLED": "false"}
    started: list[subprocess.Popen[bytes]] = []
    # 1. Subprocesses first, so they start while this process imports; all stop together at the end.
    with private_server("demo-server.log", stop_with=started) as server:
        token = secrets.token_hex(16)
        emulator = spawn(
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
        wait_until(lambda: bool(emulator_url), 120, "the emulator", pid=emulator.pid)
        timings.mark("emulator ready (waited)", since)
        since = time.monotonic()
        server.wait_ready()
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
        summary = crowdclust_pipeline(params)
        timings.mark("flow", since)
        since = time.monotonic()
    timings.mark("stop emulator and server", since)
    print("\n== crowdclust demo ==")
    print(describe(summary))
    print(f"total wall time:    {time.monotonic() - timings.started:.1f} s (including start-up)")
    if args.timings:
        print(timings.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
