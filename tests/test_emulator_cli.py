"""`crowdclust emulator` in the foreground: prints URL and token, stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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
