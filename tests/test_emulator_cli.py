"""`crowdclust emulator` in the foreground: prints URL and token, stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.cli import refused

CLI = Path(sys.executable).with_name("crowdclust")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serves_until_signalled_and_keeps_its_state(tmp_path, stop_signal):
    db = tmp_path / "state.db"
    token_file = tmp_path / "token"
    token_file.write_text("t0k\n")
    token_file.chmod(0o600)
    args = [
        str(CLI),
        "emulator",
        "--port",
        "0",
        "--db",
        str(db),
        "--token-file",
        str(token_file),
        "--speed",
        "0",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if match := re.search(r"ready at (http://\S+)", line):
                url = match.group(1)
        assert url, "".join(lines)
        assert "from --token-file" in (said := proc.stdout.readline()) and "t0k" not in said
        headers = {"Authorization": "OAuth t0k"}
        assert httpx.post(f"{url}/api/v1/skills", json={"name": "kept"}, headers=headers).status_code == 201
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    from emulator import EmulatorSettings, run_in_background

    with run_in_background(EmulatorSettings(port=0, db=str(db), token="t0k", speed=0)) as emu:
        skills = httpx.get(f"{emu.url}/api/v1/skills", headers={"Authorization": "OAuth t0k"}).json()["items"]
    assert [s["name"] for s in skills] == ["kept"]


def test_token_comes_from_a_private_file_or_the_environment(tmp_path, monkeypatch):
    from typer import BadParameter

    from crowdclust.commands.emulator import TOKEN_ENV, read_token

    shared = tmp_path / "shared-token"
    shared.write_text("s3cret\n")
    shared.chmod(0o644)
    with pytest.raises(BadParameter, match=r"readable by group or others.*chmod 600"):
        read_token(None, shared)
    shared.chmod(0o600)
    assert read_token(None, shared) == "s3cret"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert read_token(None, None) == "from-env"
    assert read_token("typed", None) == "typed"
    with pytest.raises(BadParameter, match="cannot read"):
        read_token(None, tmp_path / "missing")


def _refused(args: list[str]) -> str:
    """`crowdclust emulator ARGS` refused as bad input: one `error:` line, exit 2 (no traceback)."""
    said = refused("emulator", *args)
    assert "(usage: crowdclust emulator [OPTIONS] COMMAND [ARGS]...;" in said
    return said


@pytest.fixture
def no_serving(monkeypatch):
    """Options refused before serving must never reach `serve_forever` (it would serve until killed)."""

    def serve_forever(settings, announce=None):
        raise AssertionError(f"served with {settings}")

    monkeypatch.setattr("emulator.serve_forever", serve_forever)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1"),
        (["--workers", "-3"], "Invalid value for '--workers': -3 is not in the range x>=1"),
        (["--speed", "-600"], "Invalid value for --speed: must be from 0 to 1e+06, not -600"),
        (["--speed", "nan"], "Invalid value for --speed: must be from 0 to 1e+06, not nan"),
        (["--fail-rate", "2"], "Invalid value for --fail-rate: must be from 0 to 1, not 2"),
        (["--latency-ms", "-1"], "Invalid value for --latency-ms: must be from 0 to 60000, not -1"),
        (["--port", "70000"], "Invalid value for '--port': 70000 is not in the range 0<=x<=65535"),
        (["--size", "0"], "Invalid value for '--size': 0 is not in the range x>=1"),
    ],
)
def test_out_of_range_options_are_refused_before_serving(no_serving, args, says):
    """The bounds are those `POST /_emulator/config` holds a running emulator to; `--workers 0` used to
    become the default 3,000 silently."""
    assert says in _refused(args)


def test_a_state_file_in_a_missing_directory_is_refused(no_serving, tmp_path):
    said = _refused(["--db", str(tmp_path / "missing" / "x.db")])
    assert (
        f"Invalid value for --db: {tmp_path / 'missing' / 'x.db'}: directory {tmp_path / 'missing'} " in said
    )
    assert "does not exist" in said
    assert f"--db: {tmp_path} is a directory, not a file" in _refused(["--db", str(tmp_path)])


def test_a_state_file_that_is_not_sqlite_is_named(tmp_path):
    (tmp_path / "notes.db").write_text("not a database, but long enough for SQLite to read a header\n" * 4)
    said = _refused(["--port", "0", "--db", str(tmp_path / "notes.db")])
    assert f"Invalid value for --db: {tmp_path / 'notes.db'}: cannot use it as the state database" in said


def test_an_unknown_catalogue_is_named(tmp_path):
    said = _refused(["--port", "0", "--catalogue", "nope"])
    assert "Invalid value for --catalogue: catalogue 'nope' is neither a bundled name" in said
    (tmp_path / "classless.tsv").write_text("image\nhttp://h/a.png\n")
    said = _refused(["--port", "0", "--catalogue", str(tmp_path / "classless.tsv")])
    assert "Invalid value for --catalogue:" in said and "needs a 'class' column" in said


def test_a_port_in_use_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"Invalid value for --port: {port} is already in use" in _refused(["--port", str(port)])
