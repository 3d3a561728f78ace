"""The private Prefect server of `crowdclust run` and `make demo` lives and dies with its command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HOLDER = """
import sys, time
from crowdclust.private_server import private_server

with private_server("holder-server.log") as server:
    server.wait_ready()
    print(server.process.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_command_killed_outright_takes_its_private_server_with_it(tmp_path):
    """`kill -9` gives the command no chance to stop its server: the kernel must (Linux's
    parent-death signal). Before, the server ran on, orphaned, holding its port and memory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
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
