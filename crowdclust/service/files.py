"""The read-only file server of `runs/` for a service with a password (`make up AUTH=1`).

Without a password the service serves `runs/` with Python's own `http.server`. With one, the reports
and exports of every run would still be open to anyone who reaches the port (on a network, anyone
on it), so this server asks for the same `user:password` as the Prefect API (HTTP basic auth: a
browser asks for it once when a report's link is opened from the UI). `/.health` answers without it,
for `make up` and `make status`.

    python -m crowdclust.service.files --bind HOST --port PORT --directory runs/

The password comes from the environment (CROWDCLUST_FILES_AUTH), never the command line, which
every user of the machine can read.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hmac
import os
from collections.abc import Callable
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

AUTH_ENV = "CROWDCLUST_FILES_AUTH"
HEALTH_PATH = "/.health"


class Handler(SimpleHTTPRequestHandler):
    """GET and HEAD of the folder's files, each behind the password but `HEALTH_PATH`."""

    password: bytes = b""

    def _allowed(self) -> bool:
        """Whether the request may go on; a 401 asking for the password has been sent when not."""
        if self.path == HEALTH_PATH:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        try:
            decoded = base64.b64decode(given.strip(), validate=True)
        except ValueError:
            decoded = b""
        if scheme.lower() == "basic" and hmac.compare_digest(decoded, self.password):
            return True
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", 'Basic realm="crowdclust runs", charset="UTF-8"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self) -> None:
        self._answer(super().do_GET)

    def do_HEAD(self) -> None:
        self._answer(super().do_HEAD)

    def _answer(self, serve: Callable[[], None]) -> None:
        """`serve` the request once the password is given; the health path whatever it is."""
        if not self._allowed():
            return
        if self.path == HEALTH_PATH:
            self._ok()
            return
        serve()

    def _ok(self) -> None:
        body = b"ok\n"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", required=True)
    args = parser.parse_args(argv)
    password = os.environ.get(AUTH_ENV, "")
    if not password:
        raise SystemExit(f"{AUTH_ENV} is not set: this server only serves behind a password")
    handler = type("PasswordHandler", (Handler,), {"password": password.encode()})
    server = ThreadingHTTPServer((args.bind, args.port), functools.partial(handler, directory=args.directory))
    print(f"Serving {args.directory} on {args.bind} port {args.port} behind a password", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
