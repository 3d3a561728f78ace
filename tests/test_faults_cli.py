"""Bad input and an unreachable platform: one `error:` line, the right exit code, nothing created.

`crowdclust run` through Typer's runner, in process: every case here must stop before a flow (and
so before Prefect's API) starts. A live emulator checks that nothing was created.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import prefect.main  # noqa: F401  # sets up Prefect's logging: see below
import pytest
from typer.testing import CliRunner

from crowdclust.cli import app
from emulator import write_catalogue

# Prefect binds its console handler to the stderr of the moment `prefect.main` is imported: here,
# at collection, not inside the first CliRunner invocation, whose stderr is closed after it (run on
# its own, the file's later runs then logged "Logging error ... I/O operation on closed file").
ROOT = Path(__file__).resolve().parent.parent
TOLOKA = ROOT / "configs" / "demo-shoes" / "toloka"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_catalogue("demo-shoes", tmp_path_factory.mktemp("data") / "ds.tsv", size=20, seed=0)


@pytest.fixture
def run_cli(emulator, monkeypatch, tmp_path, dataset, migrated_prefect_home):
    """`run_cli(*flags, **config changes)`: `crowdclust run` in this process, in a project of the
    test's own whose Prefect home has its database already (as after a first run): a private server
    that gets as far as creating the schema spends about 4 of its 9 CPU-seconds on it. Set here, not
    by the command's setdefault, the home is the test's own: the first test's was kept for the rest."""
    monkeypatch.setenv("TOLOKA_TOKEN", emulator.token)
    monkeypatch.setenv("CROWDCLUST_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("PREFECT_HOME", str(migrated_prefect_home(tmp_path / ".prefect")))

    def write(*, url: str | None = None, toloka: Path = TOLOKA, data: Path = dataset, **changes) -> Path:
        config = {
            "name": "faults-cli",
            "dataset": str(data),
            "toloka_dir": str(toloka),
            "toloka": {"environment": "local", "url": url or emulator.url},
            "hits": {"size": 10, "overlap": 3, "hits_per_item": 3},
            "exam": {"n_exams": 1, "expected_workers": 20},
            "intruders": {"enabled": False},
            "budget": {"max_spend": 5.0},
            "runs_dir": str(tmp_path / "runs"),
        }
        for section, values in changes.items():
            config[section] = {**config.get(section, {}), **values}
        path = tmp_path / "pipeline.yaml"
        path.write_text(json.dumps(config))
        return path

    def run(*flags: str, **options: Any) -> tuple:
        path = write(**options)
        started = time.monotonic()
        result = CliRunner().invoke(app, ["run", str(path), *flags])
        return result, time.monotonic() - started

    run.write = write  # type: ignore[attr-defined]  # the config alone, for a run in a process of its own
    return run


@pytest.fixture
def no_private_server(monkeypatch):
    """For a test whose flow is replaced by a function that asks nothing of Prefect: `crowdclust run`
    starts no private server (as with `--close` and TOLOKA_TOKEN), so none is started and waited
    for (4-6 CPU-seconds each) only to go unused. Everything else runs as on a private server
    (CROWDCLUST_PRIVATE_PREFECT set, the run lock's server layer off); a real one is started by the
    other tests here and by `crowdclust run` in a process of its own (the token test, the
    fault suite's signal tests)."""
    from crowdclust import private_server

    unneeded = private_server.private_server

    def private(log_name: str, stop_with=None, needed: bool = True):
        return unneeded(log_name, stop_with, needed=False)

    monkeypatch.setattr(private_server, "private_server", private)


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _pools(client) -> int:
    return sum(len(list(client.get_pools(project_id=p.id))) for p in client.get_projects())


def test_data_errors_are_one_line_exit_2_and_create_nothing(
    run_cli, toloka_client, tmp_path, dataset, monkeypatch
):
    from tasks import hits

    before = _pools(toloka_client)
    planned: list[int] = []  # hits_per_item of every design drawn

    def recorded(design: Any) -> Any:
        def draw(items: list[str], size: int, hits_per_item: int, *args: Any, **kwargs: Any) -> Any:
            planned.append(hits_per_item)
            return design(items, size, hits_per_item, *args, **kwargs)

        return draw

    for name in ("balanced_design", "seed_design"):
        monkeypatch.setattr(hits, name, recorded(getattr(hits, name)))

    result, _ = run_cli(exam={"n_exams": 5})
    assert result.exit_code == 2
    assert "exam.n_exams 5 exceeds the 3 exam suites" in _one_error_line(result)

    result, _ = run_cli(hits={"hits_per_item": 100000})
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "hits_per_item 100000" in line and "200000 HITs" in line and "at most hits_per_item" in line
    assert 100000 not in planned, planned  # arithmetic, not a plan of 200,000 HITs

    few = tmp_path / "few.tsv"
    few.write_text("\n".join(dataset.read_text().splitlines()[:6]) + "\n")  # 5 images
    result, _ = run_cli(data=few)
    assert result.exit_code == 2 and "5 images cannot fill a HIT of hits.size 10" in _one_error_line(result)

    twice = tmp_path / "twice.tsv"
    lines = dataset.read_text().splitlines()
    twice.write_text("\n".join([*lines, lines[1]]) + "\n")
    result, _ = run_cli(data=twice)
    assert result.exit_code == 2 and "repeats line 2" in _one_error_line(result)

    empty = tmp_path / "empty.tsv"
    empty.write_text(lines[0] + "\n")
    result, _ = run_cli(data=empty)
    assert result.exit_code == 2 and "no rows" in _one_error_line(result)

    commas = tmp_path / "commas.tsv"  # saved from a spreadsheet as CSV
    commas.write_text("\n".join(line.replace("\t", ",") for line in lines) + "\n")
    result, _ = run_cli(data=commas)
    assert result.exit_code == 2 and "must be tab-separated (TSV)" in _one_error_line(result)

    result, _ = run_cli(budget={"max_spend": 0.5})
    assert result.exit_code == 2 and "exceeds budget.max_spend $0.50" in _one_error_line(result)

    # 1 seat on each of 3 exams, 1 exam each, 70% passing: ~2 workers, 50 answers each, then one per 5 hours.
    result, _ = run_cli(exam={"expected_workers": 1}, hits={"hits_per_item": 100}, budget={"max_spend": 50.0})
    line = _one_error_line(result)
    assert result.exit_code == 2 and "the main pool needs 600 answers (200 HITs x hits.overlap 3)" in line
    assert "168 answers at most in the pool's 7 days" in line and "exam.expected_workers to 6," in line

    assert _pools(toloka_client) == before


def test_a_folder_the_run_cannot_write_is_named_before_anything_starts(
    run_cli, toloka_client, tmp_path, monkeypatch
):
    """Run from a folder the user may not write in, `crowdclust run` ended in a traceback from its
    Prefect server's log file; with PREFECT_HOME elsewhere, the flow started and failed on
    `PermissionError: ... 'runs'`, naming no folder. A path through a file refuses root as well as a
    user, as a folder without write permission refuses a user."""
    before = _pools(toloka_client)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cannot = f"{blocker} is a file, not a folder"
    home = os.environ["PREFECT_HOME"]
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "results"))

    def refused(result: Any, where: str) -> None:
        assert result.exit_code == 2
        assert _one_error_line(result) == f"error: cannot write in {where}; nothing was created or paid"

    monkeypatch.setenv("PREFECT_HOME", str(blocker / ".prefect"))
    refused(
        run_cli()[0],
        f"{blocker}/.prefect, the Prefect home: {cannot}: set PREFECT_HOME to a folder you can write to",
    )

    monkeypatch.delenv("PREFECT_HOME")  # the project folder's, as by default
    monkeypatch.setenv("CROWDCLUST_PROJECT_DIR", str(blocker / "project"))
    refused(
        run_cli()[0],
        f"{blocker}/project/.prefect, the Prefect home: {cannot}: run from a folder you can write to (the "
        "project folder is the working directory), or set CROWDCLUST_PROJECT_DIR to one",
    )

    monkeypatch.setenv("CROWDCLUST_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("PREFECT_HOME", home)  # the command set its default above, in this process
    config = run_cli.write()
    config.write_text(json.dumps({**json.loads(config.read_text()), "runs_dir": str(blocker / "runs")}))
    refused(
        CliRunner().invoke(app, ["run", str(config)]),
        f"{blocker}/runs/faults-cli, the run's folder (in runs_dir): {cannot}: give runs_dir in the config a "
        "folder you can write to, or run from one (a relative runs_dir is under it)",
    )
    assert _pools(toloka_client) == before


def _dataset_error(run_cli, path: Path, content: bytes) -> str:
    """The one `error:` line of a run on a dataset of `content` (exit 2)."""
    path.write_bytes(content)
    result, _ = run_cli(data=path)
    assert result.exit_code == 2, result.output
    return _one_error_line(result)


def test_dataset_file_errors_are_one_line_exit_2(run_cli, toloka_client, tmp_path, dataset):
    """Each names the file and its line as `grep -n` counts it, before anything is created or paid."""
    before = _pools(toloka_client)
    lines = dataset.read_text().splitlines()
    path = tmp_path / "mine.tsv"

    # A malformed URL passed the check, and the main pool was blocked after the exam was paid.
    row = lines[11].split("\t")
    bad = [*lines[:11], "\t".join(["http://[cdn.example.com/img 11.png", *row[1:]]), *lines[12:]]
    line = _dataset_error(run_cli, path, ("\n".join(bad) + "\n").encode())
    assert f"{path}, line 12: image 'http://[cdn.example.com/img 11.png' is not a valid URL" in line

    # Excel's "Unicode text" export and a Latin-1 file were a pandas traceback (exit 1).
    text = "\n".join(lines) + "\n"
    line = _dataset_error(run_cli, path, text.encode("utf-16"))
    assert line.startswith(f"error: {path}: not UTF-8") and "looks like UTF-16" in line
    assert f"`iconv -f UTF-16 -t UTF-8 {shlex.quote(str(path))} > {shlex.quote(f'{path}.utf8')}`" in line
    line = _dataset_error(run_cli, path, text.encode("utf-16-le"))  # no byte-order mark
    assert line.startswith(f"error: {path}, line 1: not UTF-8") and "looks like UTF-16" in line
    latin = [*lines[:6], lines[6].replace("/s0-", "/caf\u00e9-"), *lines[7:]]
    line = _dataset_error(run_cli, path, ("\n".join(latin) + "\n").encode("latin-1"))
    assert (
        line.startswith(f"error: {path}, line 7: not UTF-8 text (byte 0xe9")
        and "iconv -f WINDOWS-1252 -t UTF-8" in line
    )

    # A row of 1 field said `empty 'class'`; one of 9 gave pandas' `Error tokenizing data`.
    n = len(lines[0].split("\t"))
    short = [*lines[:4], "", lines[4].split("\t")[0], *lines[5:]]
    line = _dataset_error(run_cli, path, ("\n".join(short) + "\n").encode())
    assert f"{path}, line 6: 1 field where the header (line 1) has {n} (image, class," in line
    long = [*lines[:2], lines[2] + "\textra", *lines[3:]]
    line = _dataset_error(run_cli, path, ("\r\n".join(long) + "\r\n").encode())
    assert f"{path}, line 3: {n + 1} fields where the header (line 1) has {n}" in line

    assert _pools(toloka_client) == before


def test_dataset_warnings_come_before_the_token_is_tried(run_cli, monkeypatch, tmp_path, dataset):
    """Blank truth cells are unknown classes (they stopped the run), and an image under both http://
    and https:// would be shown to the crowd twice: both are said, naming the lines."""
    monkeypatch.setenv("TOLOKA_TOKEN", "not-the-token")
    lines = dataset.read_text().splitlines()
    rows = [row.split("\t") for row in lines]
    rows[3][1] = rows[5][1] = ""
    rows[7][0] = rows[2][0].replace("http://", "https://", 1)
    path = tmp_path / "partial.tsv"
    path.write_text("\n".join("\t".join(row) for row in rows) + "\n")
    result, _ = run_cli(data=path)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert result.exit_code == 2, result.stderr
    assert any("2 image(s) with a blank `class` (line 4, 6)" in w for w in warnings), warnings
    assert any("line 8 repeats line 3" in w for w in warnings), warnings


def test_images_that_cannot_be_fetched_stop_the_run_before_anything_is_paid(
    run_cli, toloka_client, tmp_path, dataset
):
    """Two URLs of 20 renamed to files the host does not have: before the check a user's run of 120
    images with 6 such paid $25.74, placed each broken image at confidence 1.0 and said so only in a
    log line after paying. Now nothing is created, and the error names them and the way out."""
    before = _pools(toloka_client)
    lines = dataset.read_text().splitlines()
    broken = [lines[3].split("\t")[0], lines[7].split("\t")[0]]
    for number in (3, 7):
        lines[number] = lines[number].replace(".png", "_MISSING.png", 1)
    missing = tmp_path / "missing.tsv"
    missing.write_text("\n".join(lines) + "\n")
    result, _ = run_cli(data=missing)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr  # the flow's log aside
    line = errors[0]
    assert result.exit_code == 2 and f"{missing}: 2 of 20 images could not be fetched" in line
    for number, url in zip((4, 8), broken, strict=True):  # lines as `grep -n` counts them
        # the emulator's 404 (and what the default address gave, when that is not the run's emulator)
        assert f"line {number}: {url.replace('.png', '_MISSING.png')} (HTTP 404" in line
    assert "hits.check_images: false" in line
    assert _pools(toloka_client) == before


def test_a_design_warning_comes_before_the_token_is_tried(run_cli, monkeypatch):
    """20 images of about 5 styles, 3 HITs per image: each meets ~4.3 of its style. The warning is
    printed before the refused token stops the run, so it is not lost behind that error."""
    monkeypatch.setenv("TOLOKA_TOKEN", "not-the-token")
    result, _ = run_cli(hits={"expected_styles": 5})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("warning: hits: with about 5 styles") and "~4.3 of its own style" in lines[0]
    assert "hits.hits_per_item 4 would show ~5.7 and leave ~0.3% with none" in lines[0]
    assert lines[1].startswith("error: ") and "refused the token" in lines[1]


def test_the_warnings_are_not_lost_behind_a_refused_plan(run_cli, tmp_path, dataset):
    """A plan the budget refuses printed the error alone: its advice (fewer HITs per image, or a
    larger budget) went one way while the design's warning (more HITs per image) and the dataset's
    blank classes were never said. They come first, as before a refused token."""
    rows = [row.split("\t") for row in dataset.read_text().splitlines()]
    rows[3][1] = ""
    path = tmp_path / "blank.tsv"
    path.write_text("\n".join("\t".join(row) for row in rows) + "\n")
    result, _ = run_cli(data=path, hits={"expected_styles": 5}, budget={"max_spend": 1.0})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 3, result.stderr
    assert lines[0].startswith("warning: ") and "1 image(s) with a blank `class` (line 4)" in lines[0]
    assert lines[1].startswith("warning: hits: with about 5 styles") and "hits.hits_per_item 4" in lines[1]
    assert lines[2].startswith("error: ") and "exceeds budget.max_spend $1.00" in lines[2]


def test_rules_that_chain_into_runaway_overlap_are_refused(run_cli, tmp_path):
    """The shape that took overlap 7 -> 45: answer-count restriction + overlap increase on revoked access."""
    folder = tmp_path / "toloka"
    shutil.copytree(TOLOKA, folder)
    pool = json.loads((folder / "main_pool.json").read_text())
    pool["quality_control"]["configs"].append(
        {
            "collector_config": {"type": "USERS_ASSESSMENT", "uuid": "0b6d5c1e-3f1a-4c55-9a51-5d8f0f1b2a09"},
            "rules": [
                {
                    "conditions": [
                        {"key": "pool_access_revoked_reason", "operator": "EQ", "value": "RESTRICTION"}
                    ],
                    "action": {"type": "CHANGE_OVERLAP", "parameters": {"delta": 1, "open_pool": True}},
                }
            ],
        }
    )
    (folder / "main_pool.json").write_text(json.dumps(pool))
    result, _ = run_cli(toloka=folder)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert str(folder / "main_pool.json") in line and "quality_control.configs[4].rules[0]" in line
    assert "runaway overlap" in line

    # Without the ANSWER_COUNT restriction the same rule is bounded, and max_overlap caps it.
    pool["quality_control"]["configs"] = [
        c for c in pool["quality_control"]["configs"] if c["collector_config"]["type"] != "ANSWER_COUNT"
    ]
    (folder / "main_pool.json").write_text(json.dumps(pool))
    result, _ = run_cli(toloka=folder, hits={"max_overlap": 3})
    assert (
        result.exit_code == 2
        and "raise a HIT's overlap to 4, above hits.max_overlap 3" in _one_error_line(result)
    )


def test_unreachable_platform_fails_fast_naming_the_url(run_cli):
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    result, _ = run_cli(url=url)
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert f"cannot reach Toloka at {url}" in line and "start it" in line
    assert "after 3 tries" in line, line  # the probe's tries, not a stage's retries


def test_unreachable_toloka_is_named_by_its_url_and_no_emulator_is_advised(run_cli, monkeypatch):
    """`crowdclust run configs/shoes/pipeline.yaml --env sandbox` (README.md's Guide) on a machine
    that cannot reach Toloka read `cannot reach Toloka at Toloka sandbox (...): start it (`crowdclust
    emulator` for a local run) or fix toloka.url / --url`: no URL to check the way to, and advice
    for an emulator. Here the way to Toloka is a proxy that nothing answers on."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: nothing listens
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    path = run_cli.write()
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "toloka": {"environment": "sandbox", "url": None}}))
    result = CliRunner().invoke(app, ["run", str(path), "--close"])
    assert result.exit_code == 1, result.stderr
    line = _one_error_line(result)
    assert "cannot reach Toloka at Toloka sandbox (https://sandbox.toloka.dev)" in line, line
    assert "check that this machine can reach it" in line and "crowdclust emulator" not in line, line


def test_wrong_token_is_refused_in_one_line(run_cli, monkeypatch):
    monkeypatch.setenv("TOLOKA_TOKEN", "not-the-token")
    result, _ = run_cli()
    assert result.exit_code == 2 and "refused the token (401" in _one_error_line(result)  # a setting


def test_a_token_no_request_can_send_is_refused_in_one_line_without_it(run_cli, monkeypatch):
    """A zero-width space pasted with the token: the command ended on a 60-line traceback of httpx's
    `UnicodeEncodeError` (exit 1), whose error object holds the whole header, token included."""
    monkeypatch.setenv("TOLOKA_TOKEN", "pasted-token-1234\u200b")
    result, _ = run_cli()
    line = _one_error_line(result)
    assert result.exit_code == 2 and "pasted-token-1234" not in result.output, result.output
    assert line == (
        "error: the Toloka token in TOLOKA_TOKEN cannot be used: it holds a character an HTTP header "
        "cannot carry (U+200B, ZERO WIDTH SPACE); set TOLOKA_TOKEN again without it (the token is not shown)"
    )


def test_the_token_saved_by_crowdclust_token_is_what_crowdclust_run_reads_from_that_folder(
    run_cli, tmp_path, migrated_prefect_home
):
    """No TOLOKA_TOKEN, no PREFECT_API_URL: `crowdclust token save` in a new project (the checkout)
    stores the block in that folder's Prefect home, and `crowdclust run` reads it from its private
    server there. A wrong token in the block shows it was read: the emulator refuses it.

    Before the command, the README's Python snippet saved the block under Prefect's default home
    (`~/.prefect`), which `crowdclust run` never reads, with the token on the command line; and the
    run read the token before its server answered (`no Toloka token: ... (ConnectError)`). Run from
    the folder of one's own config instead, it was told `no Toloka token: set TOLOKA_TOKEN or create a
    Prefect Secret block 'toloka-token' (ValueError)`, the block just saved, with nothing said of where
    it had looked; now the refusal names that home and how to point the run at the checkout. Every
    command runs in a process of its own, as a user runs them: in this process an earlier test's
    Prefect settings could point the client at another server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k not in ("TOLOKA_TOKEN", "CROWDCLUST_PROJECT_DIR")
    }
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "my-config"
    checkout.mkdir()
    migrated_prefect_home(elsewhere / ".prefect")  # not a first run there: only the refusal matters
    cli = [sys.executable, "-m", "crowdclust.cli"]
    saved = subprocess.run(
        [*cli, "token", "save"],
        input="not-the-token\n",
        env=env,
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    assert (
        f"saved the Secret block 'toloka-token' in the project's Prefect home {checkout / '.prefect'}, "
        "where `crowdclust run` reads it when run in the same folder "
        "(or with CROWDCLUST_PROJECT_DIR set to it)"
    ) in saved.stdout, saved.stdout
    logged = "".join(path.read_text() for path in (checkout / ".prefect").glob("*.log"))
    assert "not-the-token" not in saved.stdout + saved.stderr + logged
    config = str(run_cli.write())
    result = subprocess.run(
        [*cli, "run", config], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no Toloka token") and (
        f"looked in the Prefect home {elsewhere / '.prefect'}, the project folder's" in lines[0]
    ), result.stderr
    assert "set CROWDCLUST_PROJECT_DIR to it" in lines[0]
    pointed = subprocess.run(
        [*cli, "run", config],
        env={**env, "CROWDCLUST_PROJECT_DIR": str(checkout)},
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in pointed.stderr.splitlines() if line.strip()]
    assert pointed.returncode == 2 and len(lines) == 1, pointed.stderr
    assert lines[0].startswith("error: ") and "refused the token (401" in lines[0], pointed.stderr


def test_crowdclust_token_refuses_an_empty_token_and_names_an_absent_server():
    """Refused before any server is asked: an empty token (Toloka would refuse it only at the first
    run), one with a character no HTTP header can carry (a zero-width space pasted with it: it was
    saved, and the runs that read it failed); a server that is not there is named, the token never
    shown."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    cli = [sys.executable, "-m", "crowdclust.cli", "token", "save"]
    empty = subprocess.run(cli, input="\n", env=env, capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "the token is empty" in empty.stderr
    pasted = subprocess.run(cli, input="tok-123\u200b\n", env=env, capture_output=True, text=True, timeout=60)
    assert pasted.returncode == 2 and "(U+200B, ZERO WIDTH SPACE)" in pasted.stderr, pasted.stderr
    assert "tok-123" not in pasted.stdout + pasted.stderr
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # discard port: nothing listens
    absent = subprocess.run(cli, input="tok-123\n", env=env, capture_output=True, text=True, timeout=60)
    assert absent.returncode == 1, absent.stderr
    assert (
        "on the Prefect server at http://127.0.0.1:9/api" in absent.stderr
        and "is it running?" in absent.stderr
    )
    assert "tok-123" not in absent.stdout + absent.stderr


def test_crowdclust_token_names_a_prefect_home_it_cannot_write(tmp_path):
    """Run in a folder the user may not write in, it said `could not save the Secret block ... on the
    Prefect server at  (PermissionError: ...); is it running?`: an empty address and a server that
    was never started. A path through a file refuses root as well as a user."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["CROWDCLUST_PROJECT_DIR"] = str(blocker / "project")
    cli = [sys.executable, "-m", "crowdclust.cli", "token", "save"]
    done = subprocess.run(cli, input="tok-123\n", env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr == (
        f"error: cannot write in {blocker}/project/.prefect, the Prefect home: {blocker} is a file, not a "
        "folder: run from a folder you can write to (the project folder is the working directory), or set "
        "CROWDCLUST_PROJECT_DIR to one; nothing was created or paid\n"
    )


def test_an_object_the_platform_lost_mid_run_is_one_line(run_cli, monkeypatch, no_private_server):
    """An emulator restarted without --db mid-run (a new, empty account): toloka-kit's error is five
    lines with a request id and advice to contact support; the user needs to know to run again."""
    import flows.pipeline
    from tasks.toloka_api import DoesNotExistApiError

    def lost(params):
        raise DoesNotExistApiError(
            status_code=404, request_id="r-1", code="DOES_NOT_EXIST", message="Pool 6 does not exist"
        )

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", lost)
    result, _ = run_cli()
    line = _one_error_line(result)
    assert (
        result.exit_code == 1 and "no longer has an object this run was using (Pool 6 does not exist)" in line
    )
    assert "Run the same command again" in line


def test_an_object_the_platform_refuses_is_named_with_its_reasons(
    run_cli, monkeypatch, toloka_client, tmp_path, no_private_server
):
    """A pool config Toloka refuses (an exam pool's `assignment_max_duration_seconds: 0`) ended the run
    with `Toloka refused a request (400 VALIDATION_ERROR: Validation failed). Fix the cause ...`: no
    object, no field, no reason, though toloka-kit's error holds the platform's reasons per field."""
    import flows.pipeline
    from tasks.setup import setup_labelling
    from tasks.toloka_api import RunRegistry
    from tasks.toloka_config import Placeholders, load_bundle

    toloka = tmp_path / "toloka"
    shutil.copytree(TOLOKA, toloka)
    exam_pool = json.loads((toloka / "exam_pool.json").read_text())
    (toloka / "exam_pool.json").write_text(json.dumps({**exam_pool, "assignment_max_duration_seconds": 0}))

    def sets_up(params):  # the labelling's own setup, against the emulator, where the flow makes it
        setup_labelling(
            RunRegistry(toloka_client, "refused"),
            load_bundle(params.toloka_dir),
            Placeholders.of(params),
            params.exam.skill_name,
        )

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", sets_up)
    result, _ = run_cli(toloka=toloka)
    assert result.exit_code == 1
    assert _one_error_line(result) == (
        "error: Toloka refused a request creating the pool (exam-pool) (POST /api/v1/pools): 400 "
        "VALIDATION_ERROR: Validation failed; assignment_max_duration_seconds: "
        "assignment_max_duration_seconds must be at least 1. Fix the cause and run the same "
        "command again: finished stages are reused"
    )


def test_a_ctrl_c_that_comes_out_of_the_flow_as_another_error_is_still_an_interruption(
    run_cli, monkeypatch, no_private_server
):
    """A Ctrl-C just as a stage began came out of Prefect's task engine as `ValueError: Task run is
    not set` (1 time in 3 at that moment): the command ended with exit 1 and `error: ValueError: ...
    Fix the cause and run the same command again`. A stop the process got is what ended the run,
    whatever error it came out as: exit 130, and the line says the run was interrupted and that its
    pools are closed, as for a Ctrl-C that comes out as itself."""
    import contextlib
    import signal

    import flows.pipeline

    def swallows_the_interrupt(params):  # as Prefect's task engine did
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        raise ValueError("Task run is not set")

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", swallows_the_interrupt)
    stopped, _ = run_cli()
    line = _one_error_line(stopped)
    assert stopped.exit_code == 130, line
    assert line.startswith("error: interrupted by SIGINT: ") and "ValueError" not in line
    assert line.endswith("run the same command again to resume")
    # The next run's errors are its own: the stop was this run's.
    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", lambda params: 1 / 0)
    failed, _ = run_cli()
    assert failed.exit_code == 1 and "ZeroDivisionError" in _one_error_line(failed)


def test_a_command_line_run_is_tagged_with_who_ran_it_where(run_cli, monkeypatch, no_private_server):
    """Two users' `crowdclust run`s against one Prefect server looked alike on its Runs page (no
    deployment, no worker): only the run key told them apart. The command's flow runs are created
    under Prefect's tags context `by USER@HOST`, which Prefect gives every flow run made in it."""
    import getpass
    import socket

    from prefect.context import TagsContext

    import flows.pipeline

    def tells_its_tags(params):
        raise RuntimeError(f"tags {sorted(TagsContext.get().current_tags)}")

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", tells_its_tags)
    told, _ = run_cli()
    assert f"tags ['by {getpass.getuser()}@{socket.gethostname()}']" in _one_error_line(told)


def test_an_error_that_says_what_to_do_is_not_told_twice(run_cli, monkeypatch, no_private_server):
    """A main pool's timeout said 'Run the same command again (or Retry the flow run), with a larger
    wait.timeout_seconds ...' and the command appended 'Fix the cause and run the same command
    again: finished stages are reused' after it; an error that says nothing of the kind still gets it."""
    import flows.pipeline
    from tasks.wait import WaitTimeout

    advice = (
        "pool 6 not complete after 60 s (wait.timeout_seconds). The pool is closed; its 571 accepted "
        "answers are in runs/x/raw_main.tsv. Run the same command again (or Retry the flow run), with a "
        "larger wait.timeout_seconds if the pool is slow: the same pool goes on from where it stopped "
        "and nothing is paid twice"
    )
    errors = iter([WaitTimeout(advice), RuntimeError("the disk is full")])

    def fails(params):
        raise next(errors)

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", fails)
    told, _ = run_cli()
    assert _one_error_line(told) == f"error: WaitTimeout: {advice}"
    untold, _ = run_cli()
    assert _one_error_line(untold) == (
        "error: RuntimeError: the disk is full. Fix the cause and run the same command again: finished "
        "stages are reused"
    )


def test_close_only_closes_the_open_pools_of_its_run_key_and_nothing_else(run_cli, toloka_client):
    """After a `kill -9` the run's pools stay open for the crowd; `--close` stops them without resuming."""
    from tasks.setup import setup_labelling
    from tasks.toloka_api import RunRegistry, suites_of
    from tasks.toloka_config import Placeholders, load_bundle

    opened = {}
    for key in ("close-me", "close-other"):
        registry = RunRegistry(toloka_client, key)
        ids = setup_labelling(
            registry, load_bundle(TOLOKA), Placeholders(75.0, 0.02, 3, 0.01, 5, 0.02, 5), "s"
        )
        registry.ensure_suites("main-suites", ids.main_pool, suites_of([["a.png", "b.png"]]))
        toloka_client.open_pool(ids.main_pool)
        toloka_client.open_training(ids.training)
        opened[key] = ids
    result, _ = run_cli("--run-key", "close-me", "--close")
    assert result.exit_code == 0, result.output
    mine = opened["close-me"]
    assert f"closed training {mine.training}, pool {mine.main_pool} of run key close-me" in result.stdout
    assert toloka_client.get_pool(mine.main_pool).status.value == "CLOSED"
    assert toloka_client.get_training(mine.training).status.value == "CLOSED"
    other = opened["close-other"]
    assert toloka_client.get_pool(other.main_pool).status.value == "OPEN"  # another key's: untouched
    again, _ = run_cli("--run-key", "close-me", "--close")
    assert again.exit_code == 0 and "no pool or training of run key close-me was left open" in again.stdout
    assert "has no Toloka object" not in again.stdout
    # A key nobody used (a derived one after the dataset changed): said, with where to look.
    unknown, _ = run_cli("--run-key", "never-used", "--close")
    assert unknown.exit_code == 0
    assert "run key never-used has no Toloka object on this account" in unknown.stdout
    # Given with --run-key, it is not derived: it said "it follows the dataset's images".
    assert (
        "it is the key given (--run-key, or run_key in the config): check its spelling" in unknown.stdout
    ), unknown.stdout
    toloka_client.close_pool(other.main_pool)
    toloka_client.close_training(other.training)


def _open_a_main_pool(client: Any, run_key: str) -> str:
    """The run key's labelling objects on the platform and its main pool opened with one HIT, as a
    run's stages leave them mid-wait (for stand-in flows that then fail)."""
    from tasks.setup import setup_labelling
    from tasks.toloka_api import RunRegistry, suites_of
    from tasks.toloka_config import Placeholders, load_bundle

    registry = RunRegistry(client, run_key)
    ids = setup_labelling(registry, load_bundle(TOLOKA), Placeholders(75.0, 0.02, 3, 0.01, 5, 0.02, 5), "s")
    registry.ensure_suites("main-suites", ids.main_pool, suites_of([["a.png", "b.png"]]))
    client.open_pool(ids.main_pool)
    return ids.main_pool


def test_a_prefect_server_that_fails_the_run_is_named_and_the_command_closes_the_pools(
    run_cli, monkeypatch, toloka_client, no_private_server
):
    """A full disk under the run's own Prefect server: every write answered 500, the run could not
    record its end, so the hook that closes its pools never ran, and the command ended with Prefect's
    `PrefectHTTPStatusError: Server error '500 Internal Server Error' for url ...` while the main pool
    stayed open for the crowd. Now the line names the server's answer and the nearly full disk under
    its home, and the command closes the run key's pools itself. The 500 here is a real HTTP answer,
    raised as Prefect's client raises it; the disk's threshold is raised above what this disk has."""
    import http.server
    import threading

    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    import flows.pipeline
    from crowdclust.commands import run as run_command

    class Full(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Full)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opened = {}

    def fails_on_a_full_disk(params):
        opened["pool"] = _open_a_main_pool(toloka_client, params.resolved_run_key)
        answer = httpx.post(f"http://127.0.0.1:{server.server_port}/api/flow_runs/f00/set_state")
        try:
            answer.raise_for_status()
        except httpx.HTTPStatusError as error:
            raise PrefectHTTPStatusError.from_httpx_error(error) from None

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", fails_on_a_full_disk)
    monkeypatch.setattr(run_command, "LOW_DISK", 2**62)
    try:
        result, _ = run_cli("--run-key", "disk-full")
    finally:
        server.shutdown()
    line = _one_error_line(result)
    home = os.environ["PREFECT_HOME"]
    assert result.exit_code == 1, line
    assert "failed the run (500 Internal Server Error on POST /api/flow_runs/f00/set_state)" in line, line
    assert f"the disk that holds its database ({home}) has " in line and "MB free: make room there" in line
    assert f"closed pool {opened['pool']} of run key disk-full" in line, line
    assert line.endswith("finished stages are reused and nothing paid is lost"), line
    assert toloka_client.get_pool(opened["pool"]).status.value == "CLOSED"
    monkeypatch.setattr(run_command, "LOW_DISK", 0)  # room enough: the disk is not blamed
    again, _ = run_cli("--run-key", "disk-full")
    assert "the disk that holds" not in _one_error_line(again)


def test_a_run_toloka_stopped_answering_has_its_pools_closed_by_the_command_once_toloka_is_back(
    run_cli, monkeypatch, toloka_client, no_private_server
):
    """Toloka down for about 100 s mid-wait: the stage's retries ran out, the run's hook could not
    close its pools (Toloka still silent), and the command ended saying they "were closed if Toloka
    let them be"; when Toloka came back, the main pool and the training were still open, answered
    and paid for with nobody watching. Now the command closes them itself and says so. Here the
    run's own error is the one the stage raises after its retries (a refused connection), and
    Toloka (the emulator) answers again by the time the command closes."""
    import requests

    import flows.pipeline
    from tasks.toloka_api import stopped_answering

    opened = {}

    def toloka_goes_silent(params):
        opened["pool"] = _open_a_main_pool(toloka_client, params.resolved_run_key)
        refused = requests.ConnectionError("[Errno 111] Connection refused")
        raise stopped_answering(refused, params.toloka)

    monkeypatch.setattr(flows.pipeline, "crowdclust_pipeline", toloka_goes_silent)
    result, _ = run_cli("--run-key", "toloka-silent")
    line = _one_error_line(result)
    assert result.exit_code == 1, line
    assert (
        "stopped answering (ConnectionError: [Errno 111] Connection refused) after the stage's retries"
        in line
    )
    assert f"closed pool {opened['pool']} of run key toloka-silent" in line, line
    assert "if Toloka let them be" not in line, line
    assert line.endswith("finished stages are reused and nothing paid is lost"), line
    assert toloka_client.get_pool(opened["pool"]).status.value == "CLOSED"
