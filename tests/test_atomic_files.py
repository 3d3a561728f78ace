"""A file the project writes and reads back is replaced whole: a kill at any moment leaves the old
file or the new one (`tasks/atomic_file.py`), and the readers say which file is damaged.

A kill between the write and the rename is simulated by an `os.replace` that raises; a real
`kill -9` of a process in the middle of its writes checks the same from outside.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.atomic_file import create_exclusive, replaced, write_atomic
from tasks.run_folder import DamagedFile, RunFolder
from tasks.stages import Aggregated, AggregationInfo, Attempt, Coverage, HitPlan, IntruderHit

ROOT = Path(__file__).resolve().parent.parent


class Killed(BaseException):
    """Stands for a kill between the write and the rename."""


def _killed_at_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def rename(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(os, "replace", rename)
    monkeypatch.setattr(os, "link", rename)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_write_stopped_before_its_rename_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "hits.json"
    path.write_text('{"old": true}')
    _killed_at_rename(monkeypatch)
    with pytest.raises(Killed):
        write_atomic(path, '{"new": ' + "1" * 100_000 + "}")
    assert path.read_text() == '{"old": true}'
    assert _leftovers(tmp_path) == []


def test_a_writer_that_fails_half_way_changes_nothing(tmp_path):
    path = tmp_path / "clusters.csv"
    path.write_text("item,cluster\na,1\n")
    with pytest.raises(RuntimeError), replaced(path) as temporary:
        temporary.write_text("item,cluster\nb,")
        raise RuntimeError("killed")
    assert path.read_text() == "item,cluster\na,1\n"
    assert _leftovers(tmp_path) == []


def test_the_new_content_replaces_the_file_with_its_mode_kept(tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = write_atomic(tmp_path / "new.json", b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_private_file_is_never_readable_by_others_not_even_while_it_is_written(tmp_path):
    path = tmp_path / "emulator-token"
    seen = []
    with replaced(path, mode=0o600) as temporary:
        seen.append(stat.S_IMODE(temporary.stat().st_mode))
        temporary.write_text("secret\n")
        seen.append(stat.S_IMODE(temporary.stat().st_mode))
    assert seen == [0o600, 0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # widened by hand: the next write gives it its own mode again
    write_atomic(path, "other\n", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_exclusive_create_never_replaces_a_file_and_leaves_none_half_written(tmp_path, monkeypatch):
    path = tmp_path / "run_key.txt"
    create_exclusive(path, "first\n")
    with pytest.raises(FileExistsError):
        create_exclusive(path, "second\n")
    assert path.read_text() == "first\n"
    assert _leftovers(tmp_path) == []
    other = tmp_path / "other.txt"
    _killed_at_rename(monkeypatch)
    with pytest.raises(Killed):
        create_exclusive(other, "never seen\n")
    assert not other.exists()  # a kill before the link: no file at all, not an empty one
    assert _leftovers(tmp_path) == []


def test_an_exclusive_create_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(*args: object) -> None:
        raise PermissionError("operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = create_exclusive(tmp_path / "run_key.txt", "first\n")
    assert path.read_text() == "first\n"
    with pytest.raises(FileExistsError):
        create_exclusive(path, "second\n")
    assert path.read_text() == "first\n"
    assert _leftovers(tmp_path) == []


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tasks.atomic_file import replaced

    path, lines = Path(sys.argv[1]), 200_000
    round = 0
    while True:
        round += 1
        with replaced(path) as temporary, open(temporary, "w") as out:  # row by row, as to_csv writes
            for _ in range(lines):
                out.write(f"{round}\\n")
        print(round, flush=True)
    """
)


def test_kill_9_in_the_middle_of_writes_leaves_a_whole_file(tmp_path):
    """A process that rewrites a 1 MB file row by row in a loop, killed by SIGKILL after a few
    rewrites: the file holds one whole version (every line of one round), whenever the kill came.
    (Written in place, as before, it was cut short: e.g. 57,344 of its 200,000 lines.)"""
    path = tmp_path / "assignments_main.tsv"
    for attempt in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        rounds = [process.stdout.readline() for _ in range(2 + attempt)]  # a few whole rewrites
        time.sleep(0.013 * (attempt + 1))  # then somewhere in the middle of one
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert all(rounds)
        lines = path.read_text().splitlines()
        assert len(lines) == 200_000 and len(set(lines)) == 1, (len(lines), set(lines[:1] + lines[-1:]))
    assert len(_leftovers(tmp_path)) <= 3  # at most one temporary file per kill, beside a whole file


# --------------------------------------------------------------------------------- the run folder


def _clustering(n: int, dissent: bool = True) -> Aggregated:
    items = [f"https://img/{i}.png" for i in range(n)]
    clusters = pd.Series([i % 3 for i in range(n)], index=items)
    return Aggregated(
        clusters,
        np.arange(n * 2, dtype=float).reshape(n, 2),
        AggregationInfo("gomes", 3, 1, 1, 1, 2, 1, -1.0),
        metrics={"ari": 1.0, "nmi": 1.0},
        confidence=pd.Series(0.9, index=items),
        dissent_clusters=clusters if dissent else None,
        dissent_workers=("w1", "w2") if dissent else (),
        recheck=pd.DataFrame({"item": items[:2], "cluster": [0, 1], "confidence": [0.4, 0.3]}),
    )


def _write_everything(folder: RunFolder, n: int) -> None:
    items = [f"https://img/{i}.png" for i in range(n)]
    coverage = Coverage(1, n, 1, 1.0, 1, {1: n}, dict.fromkeys(items, 1), True)
    folder.write_plan(HitPlan([items], coverage))
    folder.write_export(pd.DataFrame({"INPUT:images": items, "ASSIGNMENT:worker_id": ["0019"] * n}), "main")
    folder.write_clustering(_clustering(n))
    folder.write_thumbnails({item: "data:image/jpeg;base64,AAAA" for item in items})
    folder.write_intruder_hits([IntruderHit(tuple(items[:3]), "2", 0, 1)] * n)
    folder.write_report("<html>" + "x" * n + "</html>")
    folder.write_attempts([Attempt("2026-01-01T00:00:00+00:00", float(n), {"labelling": 1.0})])


def test_every_run_folder_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A run killed while it rewrote its folder's files left them cut short; now each writer's
    rename is the only step that changes a file (a kill before it leaves the old one whole)."""
    folder = RunFolder(tmp_path / "run").create()
    _write_everything(folder, 5)
    before = {p.name: p.read_bytes() for p in folder.root.iterdir()}
    assert {"hits.json", "assignments_main.tsv", "clusters.csv", "dissent.csv", "recheck.csv"} <= set(before)
    _killed_at_rename(monkeypatch)
    writers = [
        lambda: folder.write_plan(HitPlan([["a"]], Coverage(1, 1, 1, 1.0, 1, {1: 1}, {"a": 1}, True))),
        lambda: folder.write_export(pd.DataFrame({"INPUT:images": ["a"]}), "main"),
        lambda: folder.write_clustering(_clustering(2)),
        lambda: folder.write_thumbnails({}),
        lambda: folder.write_intruder_hits([]),
        lambda: folder.write_report("<html></html>"),
        lambda: folder.write_attempts([]),
    ]
    for write in writers:
        with pytest.raises(Killed):
            write()
    assert {p.name: p.read_bytes() for p in folder.root.iterdir()} == before


DEMO = ROOT / "configs" / "demo-shoes" / "pipeline.yaml"


def test_a_run_key_file_a_kill_left_empty_keeps_the_run_in_its_folder(tmp_path, monkeypatch):
    """`run_key.txt` was created empty and written after: a run killed in between left it empty,
    and the same command then wrote its labelling's files to `runs/<name>__<key>/` and its clusters
    and report to `runs/<name>/` (seen with `crowdclust run` on the emulator). Now it is created
    whole, and an empty one (from an older version) is claimed again."""
    from tasks.params import load_params

    runs = tmp_path / "runs"
    params = load_params(DEMO, {"runs_dir": str(runs)})
    other = load_params(DEMO, {"runs_dir": str(runs), "seed": 1})
    key = params.resolved_run_key
    folder = RunFolder(runs / "demo-shoes").create()
    folder.key_file.write_text("")  # as the kill left it
    assert RunFolder.of(params).root == folder.root
    assert RunFolder.take(params).root == folder.root
    assert folder.key_file.read_text() == key + "\n"
    assert RunFolder.take(other).root != folder.root  # and it is this key's now
    # Left empty in a folder whose summary names another key: that key's folder still.
    taken = RunFolder(runs / "taken").create()
    taken.key_file.write_text("\n")
    taken.summary.write_text(f'{{"run_key": "{other.resolved_run_key}"}}')
    assert taken.owner() == other.resolved_run_key and not taken.claim(key)
    # A kill while the claim is written leaves no file at all: the next run claims the folder.
    fresh = RunFolder(runs / "fresh").create()
    _killed_at_rename(monkeypatch)
    with pytest.raises(Killed):
        fresh.claim(key)
    monkeypatch.undo()
    assert not fresh.key_file.exists() and fresh.owner() is None
    assert fresh.claim(key) and fresh.owner() == key


def _export_rows(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "INPUT:images": ['["https://img/1.png","https://img/2.png"]'] * n,
            "OUTPUT:result": ['[{"group":1},{"group":2}]'] * n,
            "ASSIGNMENT:assignment_id": [f"a{i}" for i in range(n)],
            "ASSIGNMENT:task_suite_id": [f"s{i}" for i in range(n)],
            "ASSIGNMENT:worker_id": [f"worker-{i:04d}" for i in range(n)],
            "ASSIGNMENT:status": ["APPROVED"] * n,
        }
    )


def test_an_export_cut_short_inside_its_last_row_is_refused_naming_the_file(tmp_path):
    """A copy of an export cut inside its last row (a run killed while it wrote it) was read with
    that row's missing cells empty: its worker id cut to `wor` (another worker) and no status, exit 0
    (`crowdclust aggregate` on a demo export cut in its last worker id)."""
    from aggregation import ExportFormatError
    from tasks.export_format import read_export_file

    folder = RunFolder(tmp_path / "run").create()
    path = folder.write_export(_export_rows(4), "main")
    assert len(read_export_file(path)) == 4
    text = path.read_text()
    cut = text[: text.rindex("worker-0003") + 3]
    for damaged in (cut, text[: text.rindex("[") + 2]):  # in a worker id; in a quoted cell
        path.write_text(damaged)
        with pytest.raises(ExportFormatError, match="cut short") as refused:
            read_export_file(path)
        assert str(path) in str(refused.value) and "line 5" in str(refused.value)
    path.write_text(text.rstrip("\n"))  # whole, only its last line end missing: as good as before
    assert read_export_file(path)["ASSIGNMENT:worker_id"].tolist()[-1] == "worker-0003"


def test_a_clusters_file_cut_short_is_refused_before_an_evaluation_pays_for_what_is_left(tmp_path):
    """An evaluation started on its own reads the run's `clusters.csv`: cut in its last row, it was
    read with the row's item cut (`https://im`) or its cluster missing, and intruder HITs were made,
    and paid for, from that."""
    folder = RunFolder(tmp_path / "run").create()
    folder.write_clustering(_clustering(6, dissent=False))
    whole = folder.read_clusters()
    assert len(whole) == 6
    text = folder.clusters.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]  # `https://img/5.png,2,0.9`
    for cut in (text[: len(text) - len(last) + 8], text[: text.rindex(",") - 2], ""):
        folder.clusters.write_text(cut)
        with pytest.raises(DamagedFile, match=r"cut short|empty") as refused:
            folder.read_clusters()
        assert str(folder.clusters) in str(refused.value) and "crowdclust run" in str(refused.value)
    folder.clusters.write_text(text.rstrip("\n"))  # only its last line end missing: whole
    assert folder.read_clusters().equals(whole)
    folder.clusters.write_text("item,cluster\nhttps://img/1.png,\n")
    with pytest.raises(DamagedFile, match="line 2: an item without a cluster"):
        folder.read_clusters()


def test_damaged_thumbnails_and_attempts_are_said_and_set_aside(tmp_path, caplog):
    """`thumbnails.json` (a cache of images fetched for free) and `attempts.json` (the run's times)
    cut short: the thumbnails raised a JSONDecodeError traceback, the attempts were dropped unsaid."""
    folder = RunFolder(tmp_path / "run").create()
    folder.write_thumbnails({"https://img/1.png": "data:image/jpeg;base64,AAAA"})
    folder.write_attempts([Attempt("2026-01-01T00:00:00+00:00", 12.0, {"labelling": 12.0})])
    assert folder.read_thumbnails() and folder.read_attempts()
    for path in (folder.thumbnails, folder.attempts):
        path.write_text(path.read_text()[:20])
    with caplog.at_level("WARNING", logger="tasks.run_folder"):
        assert folder.read_thumbnails() == {}
        assert folder.read_attempts() == []
    said = caplog.text
    assert f"{folder.thumbnails} does not read" in said and f"{folder.attempts} does not read" in said
    caplog.clear()
    empty = RunFolder(tmp_path / "new").create()
    assert empty.read_thumbnails() == {} and empty.read_attempts() == [] and not caplog.text


# ------------------------------------------------------------------------------ the local service


def test_the_service_token_is_made_whole_and_private_and_an_empty_one_is_made_again(tmp_path, monkeypatch):
    """`.service/emulator-token` was created empty (0600) and written after: a `make up` killed in
    between left it empty, the emulator fell back to its public default token and the deployments'
    Secret block held an empty one."""
    from crowdclust.service.config import ServiceConfig
    from crowdclust.service.processes import free_port
    from crowdclust.service.supervisor import _token

    cfg = ServiceConfig(state_dir=tmp_path, emulator_port=free_port())  # no emulator answers there
    monkeypatch.setattr(os, "link", _raises_killed)
    with pytest.raises(Killed):
        _token(cfg)
    assert not cfg.token_file.exists() and _leftovers(tmp_path) == []  # no empty token left behind
    monkeypatch.undo()
    cfg.token_file.write_text("")  # as an older version's kill left it
    cfg.token_file.chmod(0o600)
    token = _token(cfg)
    assert len(token) == 32 and cfg.token_file.read_text() == token + "\n"
    assert stat.S_IMODE(cfg.token_file.stat().st_mode) == 0o600
    assert _token(cfg) == token  # made once
    cfg.token_file.write_text("")
    monkeypatch.setattr("crowdclust.service.supervisor.answers", lambda url: True)  # an emulator runs
    with pytest.raises(RuntimeError, match=r"emulator-token is empty.*`make down`"):
        _token(cfg)  # it runs with the default token: a new one here would not be its token


def _raises_killed(*args: object, **kwargs: object) -> None:
    raise Killed


def test_the_services_remembered_settings_are_replaced_whole_and_an_empty_url_is_refused(
    tmp_path, monkeypatch
):
    """`service.json` and `database-url` were written in place: cut short, `make status`/`down` lost
    the service's ports, and an empty `database-url` was read as none (the local PostgreSQL)."""
    from crowdclust.service import deployments
    from crowdclust.service.config import ServiceConfig, load

    url = "postgresql+asyncpg://u:secret@db.example/prefect"
    cfg = ServiceConfig(state_dir=tmp_path, server_port=14999, profile="postgres", database_url=url)
    cfg.remember()
    deployments.save_record(cfg, {"provisioned": "k", "fingerprint": "f"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(os, "replace", _raises_killed)
    for write in (
        ServiceConfig(state_dir=tmp_path, server_port=15000, database_url=url + "2").remember,
        lambda: deployments.save_record(cfg, {}),
    ):
        with pytest.raises(Killed):
            write()
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert stat.S_IMODE(cfg.database_url_file.stat().st_mode) == 0o600
    assert load(tmp_path).database_url == url
    cfg.database_url_file.write_text("")
    with pytest.raises(RuntimeError, match=r"database-url is empty.*Delete it and `make up` again with"):
        load(tmp_path)
    _every_service_command_says_it_in_one_line(tmp_path, "database-url is empty")
    cfg.database_url_file.unlink()
    cfg.settings_file.write_text('{"server_port": 14')
    with pytest.raises(RuntimeError, match=r"service\.json is not valid JSON"):
        load(tmp_path)
    _every_service_command_says_it_in_one_line(tmp_path, "service.json is not valid JSON")


def _every_service_command_says_it_in_one_line(state_dir: Path, said: str) -> None:
    """`make up`, `make down` and `make status` with damaged settings: one `error:` line, exit 1 (they
    ended in a traceback; `make down` and `make status` still do nothing else)."""
    from typer.testing import CliRunner

    from crowdclust.cli import app

    for command in ("up", "down", "status"):
        result = CliRunner().invoke(app, ["service", command, "--state-dir", str(state_dir)])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, (command, result.output)
        assert lines[0].startswith("error: ") and said in lines[0], (command, lines)


def test_a_deploy_record_that_does_not_read_is_said(tmp_path):
    from crowdclust.service import deployments
    from crowdclust.service.config import ServiceConfig

    cfg = ServiceConfig(state_dir=tmp_path)
    assert deployments.damaged_record(cfg) is None  # none yet: nothing to say
    deployments.save_record(cfg, {"provisioned": "k"})
    assert deployments.damaged_record(cfg) is None
    path = tmp_path / "deployed.json"
    path.write_text(path.read_text()[:8])
    assert deployments.record(cfg) == {}
    assert "deployed.json does not read" in (deployments.damaged_record(cfg) or "")


def test_the_postgres_password_is_made_whole_and_an_empty_one_before_initdb_is_made_again(tmp_path):
    from crowdclust.service import postgres
    from crowdclust.service.config import ServiceConfig

    cfg = ServiceConfig(state_dir=tmp_path, profile="postgres")
    path = tmp_path / "postgres-password"
    path.write_text("")
    password = postgres.password(cfg)
    assert password and path.read_text() == password + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert postgres.password(cfg) == password
    path.write_text("")
    (tmp_path / "postgres" / "data").mkdir(parents=True)
    (tmp_path / "postgres" / "data" / "PG_VERSION").write_text("16\n")  # initialised: not made anew
    with pytest.raises(RuntimeError, match="postgres-password is empty"):
        postgres.password(cfg)
