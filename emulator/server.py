"""Serving the emulator with uvicorn (HTTP/1.1): in the foreground (CLI) or in a background thread."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from emulator.settings import EmulatorSettings

# How often the crowd catches up with the clock between requests (every request catches up first,
# so what a requester sees does not depend on it): every 50 ms an idle emulator costs 0.013 CPU-s a
# second in memory and 0.026 with its SQLite file, every 20 ms 0.019 and 0.036.
HEARTBEAT_SECONDS = 0.05


class RunningEmulator:
    """A served emulator: its URL and token, and helpers for the `/_emulator/` control endpoints."""

    def __init__(self, settings: EmulatorSettings, url: str, emulator: Any) -> None:
        self.settings = settings
        self.url = url
        self.token = settings.token
        self.emulator = emulator  # the in-process `emulator.core.Emulator` (state, crowd, clock)

    def control(self, path: str, method: str = "GET", timeout: float = 30.0, **params: Any) -> Any:
        """Call a `/_emulator/<path>` endpoint with the token (changing ones need it); return its JSON."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(
            f"{self.url}/_emulator/{path}" + (f"?{query}" if query else ""),
            method=method,
            headers={"Authorization": f"OAuth {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def workers(self) -> list[dict[str, Any]]:
        return self.control("workers")

    def stats(self) -> dict[str, Any]:
        return self.control("stats")

    def advance(self, seconds: float) -> float:
        """Move the clock `seconds` forward; the answer comes once the crowd has lived them: every
        arrival and action of the market's workers is simulated, open pools or not (8 days took 2.4 s
        on an idle 2-core machine, past the 30 s of other calls on a loaded one)."""
        timeout = max(30.0, seconds / 86400 * 60)  # a minute a simulated day
        return self.control("advance", "POST", timeout=timeout, seconds=seconds)["sim_time"]

    def configure(self, **params: Any) -> dict[str, Any]:
        return self.control("config", "POST", **params)


def _heartbeat(emulator: Any, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        emulator.tick()


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP (else +40 ms
    # per keep-alive answer from Nagle and delayed ACKs).
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(settings: EmulatorSettings) -> tuple[Any, Any, socket.socket, str]:
    import uvicorn

    from emulator.app import guarded
    from emulator.core import Emulator

    emulator = Emulator(settings)
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    # http="auto" and loop="auto" pick httptools and uvloop (installed by uvicorn[standard]): half
    # the CPU of h11 and asyncio per request.
    config = uvicorn.Config(
        guarded(emulator),
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        date_header=False,  # the Guard dates every answer on the simulated clock
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return uvicorn.Server(config), emulator, sock, f"http://{host}:{port}"


@contextlib.contextmanager
def run_in_background(settings: EmulatorSettings | None = None) -> Iterator[RunningEmulator]:
    """Serve an emulator from a thread; yields once it accepts connections; stops it on exit."""
    settings = settings or EmulatorSettings(port=0)
    server, emulator, sock, url = _server(settings)
    stop = threading.Event()
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="emulator-http", daemon=True
    )
    beat = threading.Thread(target=_heartbeat, args=(emulator, stop), name="emulator-crowd", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        time.sleep(0.01)
    beat.start()
    try:
        yield RunningEmulator(settings, url, emulator)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        stop.set()
        beat.join(timeout=10)
        emulator.store.close()
        sock.close()


def serve_forever(settings: EmulatorSettings, announce: Any = print) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then stop uvicorn, save the state and return.

    uvicorn runs in a thread, so that our handlers (not uvicorn's, which re-raise the signal and can end
    the process before the state is closed) decide how to stop.
    """
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        logging.getLogger("emulator").info("signal %s: shutting down", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with run_in_background(settings) as emu:
            announce(emu.url, emu.token)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
