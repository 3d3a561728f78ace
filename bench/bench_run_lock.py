"""How fast the run-key lock answers across machines, and how long a killed holder blocks its key.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python bench/bench_run_lock.py

Needs a running Prefect server (`prefect server start`): the Prefect layer of the lock is off in
ephemeral mode. A "machine" is a temp folder (the `flock` layer lives in `$TMPDIR`), so processes
with different TMPDIRs share only the Prefect server, as workers on two hosts do. Prints, with the
load average: how long a second run on another machine takes to be refused; after the holder is
killed with SIGKILL, how long a run on the same machine takes to get the key, and how long a run on
another machine that waits (`CROWDCLUST_RUN_LOCK_WAIT_SECONDS`) takes (the lease, default 60 s, plus
the server's repossessor pass, 15 s, at most).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

HOLD = textwrap.dedent(
    """
    import sys, time
    from tasks.params import TolokaTarget
    from tasks.run_lock import RunKeyBusy, run_lock
    import prefect.client.orchestration, prefect.variables  # timed: the lock, not the imports
    started = time.monotonic()
    try:
        with run_lock(TolokaTarget(environment="local", url="http://127.0.0.1:1"), sys.argv[1]):
            print(f"held {time.monotonic() - started:.2f}", flush=True)
            if sys.argv[2] == "hold":
                time.sleep(3600)
    except RunKeyBusy as busy:
        print(f"busy {time.monotonic() - started:.2f} {busy}", flush=True)
    """
)
ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def start(key: str, machine: Path, mode: str, wait: float = 0.0) -> subprocess.Popen[str]:
    env = os.environ | {"TMPDIR": str(machine), "CROWDCLUST_RUN_LOCK_WAIT_SECONDS": str(wait)}
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, key, mode], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def answer(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def main() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("set PREFECT_API_URL to a running Prefect server")
    key = f"bench-lock-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        a.mkdir()
        b.mkdir()
        holder = start(key, a, "hold")
        print(f"holder on machine A: {answer(holder).split()[0]} ({load()})")
        second = start(key, b, "once")
        print(f"second run on machine B: {answer(second)[:140]}... ({load()})")
        second.wait()

        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed = time.monotonic()
        waiter = start(key, b, "once", wait=120.0)
        print(
            f"after kill -9 on A, a waiting run on machine B: {answer(waiter)} s to get the key "
            f"({time.monotonic() - killed:.1f} s after the kill; {load()})"
        )
        waiter.wait()

        holder = start(key, a, "hold")
        answer(holder)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        same = start(key, a, "once")
        print(f"after kill -9 on A, a run on machine A: {answer(same)} s to get the key ({load()})")
        same.wait()


if __name__ == "__main__":
    main()
