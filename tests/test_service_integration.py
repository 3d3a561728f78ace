"""The service as a user runs it: a real Prefect server, the emulator, the run-file server and workers.

All tests share the session's service (`tests/fixtures/service.py`: PostgreSQL profile, 2 workers,
fast emulator clock) and its demo run (failed once, Retried in place). In order: deployments show
the service's real URLs; a second `up` changes nothing; a changed prefect.yaml is re-deployed
keeping what the user set in the UI; the demo run (retry, cached steps, artifacts, report over
http); a growing catalogue (50 items, then 82, then 82 again at $0); the nightly schedule.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from crowdclust import service
from tasks.params import run_dir_of
from tests.fixtures.service import HAS_POSTGRES, ROOT, yaml_params

pytestmark = pytest.mark.slow


def test_deployments_use_the_service_urls_and_the_files_server_answers(svc):
    deployments = svc.deployments()
    assert set(deployments) == {"demo", "production", "reaggregate", "evaluate", "demo-catalogue"}
    assert all(d["work_pool_name"] == "crowdclust" for d in deployments.values())
    pull = deployments["demo"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == str(ROOT)
    # The Custom run form shows the emulator the run will really use (not a silently replaced URL).
    assert deployments["demo"]["parameters"]["params"]["toloka"]["url"] == svc.cfg.emulator_url
    assert deployments["reaggregate"]["parameters"]["toloka"]["url"] == svc.cfg.emulator_url
    production = deployments["production"]
    assert [s["active"] for s in production["schedules"]] == [False]
    assert production["parameters"]["params"]["toloka"] == yaml_params("production")["params"]["toloka"]
    assert httpx.get(svc.cfg.runs_url + "/").status_code == 200
    assert httpx.post(svc.cfg.runs_url + "/x", content=b"x").status_code >= 400  # read-only
    limits = {lim["name"] for lim in svc.api.post("/v2/concurrency_limits/filter", json={}).json()}
    assert {"toloka-api-sandbox", "toloka-api-production"} <= limits
    # The emulator is throttled only when it has a per-token limit of its own (the scale test's).
    assert ("toloka-api-local" in limits) == bool(svc.cfg.emulator_rate_limit), limits
    assert svc.cfg.token_file.stat().st_mode & 0o777 == 0o600


def test_second_up_changes_nothing_and_needs_no_variables(svc):
    said: list[str] = []
    started = time.monotonic()
    service.up(service.load(svc.cfg.state_dir), say=said.append)  # the remembered ports
    elapsed = time.monotonic() - started
    assert "deployments: unchanged" in said, said
    assert not [line for line in said if "started" in line], said
    print(f"warm up: {elapsed:.1f} s")
    remembered = service.load(svc.cfg.state_dir)
    assert (remembered.server_port, remembered.emulator_port, remembered.workers) == (
        svc.cfg.server_port,
        svc.cfg.emulator_port,
        2,
    )
    parts = service.status(remembered)
    assert all(parts.values()) and {"worker-1", "worker-2"} <= set(parts), parts
    if HAS_POSTGRES:
        assert parts["postgres"]


def test_changed_prefect_yaml_is_redeployed_keeping_ui_edits(svc):
    """The user switches the production schedule on, edits a demo parameter and caps the runs at
    once (the work pool's concurrency limit) in the UI; then prefect.yaml changes: `up` re-deploys
    the change and keeps the three edits."""
    from crowdclust.service.config import WORK_POOL

    pool = f"/work_pools/{WORK_POOL}"
    svc.api.patch(pool, json={"concurrency_limit": 40}).raise_for_status()  # above any test's runs
    deployments = svc.deployments()
    production, demo = deployments["production"], deployments["demo"]
    schedule = production["schedules"][0]
    svc.api.patch(f"/deployments/{production['id']}/schedules/{schedule['id']}", json={"active": True})
    edited = demo["parameters"]
    edited["params"]["wait"]["timeout_seconds"] = 1234.0
    svc.api.patch(f"/deployments/{demo['id']}", json={"parameters": edited}).raise_for_status()

    changed = svc.tmp / "prefect.yaml"
    text = svc.cfg.prefect_yaml.read_text()  # the service's own (its schedules out of the suite's reach)
    changed.write_text(
        text.replace("description: Intruder evaluation", "description: CHANGED Intruder evaluation")
    )
    said: list[str] = []
    try:
        service.up(replace(svc.cfg, prefect_yaml=changed), say=said.append)
        assert svc.api.get(pool).json()["concurrency_limit"] == 40
    finally:
        svc.api.patch(pool, json={"concurrency_limit": None}).raise_for_status()
    assert "deployments: kept production: schedule on as set in the UI" in said, said
    after = svc.deployments()
    assert after["evaluate"]["description"].startswith("CHANGED")
    assert [s["active"] for s in after["production"]["schedules"]] == [True]
    assert after["demo"]["parameters"]["params"]["wait"]["timeout_seconds"] == 1234.0
    assert after["demo"]["parameters"]["params"]["toloka"]["url"] == svc.cfg.emulator_url


def test_failed_run_is_retried_in_place_without_duplicates(svc, demo_run):
    assert demo_run.failed["state_type"] == "FAILED", demo_run.failed["state"]
    run = demo_run.run
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["run_count"] == 2  # the same flow run, run again

    states = svc.tasks_of(demo_run.id)
    assert states["setup-labelling"] == ["Completed", "Cached"], states
    assert states["upload-hits"] == ["Completed", "Cached"], states
    assert states["wait-labelling"][-1] == "Completed" and "Failed" in states["wait-labelling"], states
    after = svc.objects(f"crowdclust:{demo_run.run_key}:", exclude="intruders-")
    assert after == demo_run.before_retry  # nothing of the labelling created twice by the retry
    assert (after["projects"], after["pools"], after["trainings"], after["skills"]) == (2, 2, 1, 1)
    assert len(set(after["pool_tags"])) == 2 and 82 in after["suites"].values()


def test_demo_run_completes_with_artifacts_and_a_served_report(svc, demo_run):
    folder = run_dir_of(svc.cfg.runs_dir, "demo-shoes", demo_run.run_key)  # the run key's own folder
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["ari"] >= 0.9 and summary["intruder_accuracy"] >= 0.7
    keys = {a["key"] for a in svc.artifacts(demo_run.id)}
    expected = {"hit-coverage", "main-pool-progress", "cluster-galleries", "run-metrics", "run-report"}
    assert expected | {"intruder-accuracy", "intruder-chart"} <= keys, keys
    report = f"{svc.cfg.runs_url}/{folder.relative_to(svc.cfg.runs_dir).as_posix()}/report.html"
    assert httpx.get(report).status_code == 200  # what the report link can point at
    results = list((svc.cfg.state_dir / "results").rglob("*"))
    assert results, "no task result in the shared result storage"


def test_growing_catalogue_labels_only_new_items_and_costs_nothing_unchanged(svc):
    from emulator import write_catalogue

    catalogue = svc.tmp / "catalogue.tsv"
    full = svc.tmp / "catalogue-82.tsv"
    write_catalogue("demo-shoes", catalogue, size=50, seed=0)
    write_catalogue("demo-shoes", full, size=82, seed=0)
    assert full.read_text().startswith(catalogue.read_text())  # growing keeps the first items
    defaults = svc.deployment_params("demo-catalogue")
    params = (
        defaults["params"]
        | {
            "dataset": str(catalogue),
            "runs_dir": str(svc.tmp / "runs-catalogue"),
            "intruders": {"enabled": False},  # the demo run covers them; here: rounds and the cache
            "run_key": f"svc-catalogue-{uuid.uuid4().hex[:6]}",  # apart from the nightly run's objects
        }
    )
    prefix = f"crowdclust:{params['run_key']}:"
    summary_path = run_dir_of(svc.tmp / "runs-catalogue", params["name"], params["run_key"]) / "summary.json"

    def run_round() -> tuple[str, dict[str, Any]]:
        run_id = svc.trigger("crowdclust-catalogue/demo-catalogue", {**defaults, "params": params})
        run = svc.wait(run_id)
        assert run["state_type"] == "COMPLETED", run["state"].get("message")
        return run_id, json.loads(summary_path.read_text())

    _, first = run_round()
    assert first["new_items"] == 50 and len(first["round_pools"]) == 1
    shutil.copy(full, catalogue)
    _, second = run_round()
    assert second["new_items"] == 32 and len(second["round_pools"]) == 2
    assert second["coverage"]["n_items"] == 32 and second["coverage"]["min"] >= 10
    assert second["ari"] >= 0.9 and second["aggregation"]["n_clusters"] >= 6
    grown = svc.objects(prefix)
    assert grown["projects"] == 2 and grown["skills"] == 1  # exam and main: shared by the rounds
    assert sum(tag.startswith(prefix + "main-pool-") for tag in grown["pool_tags"]) == 2

    run_id, third = run_round()  # unchanged catalogue: nothing new, everything cached
    assert third["new_items"] == 0 and third["cost"]["spent"] == 0
    assert svc.objects(prefix) == grown
    states = svc.tasks_of(run_id)
    assert states["aggregate"] == ["Cached"] and set(states["export-results"]) == {"Cached"}, states
    assert "setup-labelling" not in states and "upload-hits" not in states


def test_recurring_deployment_has_upcoming_runs(svc):
    """The server's scheduler (a loop of about a minute) has planned the nightly catalogue runs by now;
    the production template's schedule, switched on in the UI above, planned runs too."""
    deployments = {name: d["id"] for name, d in svc.deployments().items()}
    deadline = time.monotonic() + 120
    while True:
        upcoming = svc.api.post(
            "/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
        ).json()
        owners = Counter(r["deployment_id"] for r in upcoming)
        if owners[deployments["demo-catalogue"]] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert owners[deployments["demo-catalogue"]] >= 1, owners
    assert all(r["expected_start_time"] > r["created"] for r in upcoming)


def test_runs_that_stop_sending_heartbeats_are_crashed_by_an_automation(svc):
    """A flow-run process lost with its machine cannot report itself: the server's automation does."""
    from crowdclust.service.config import HEARTBEAT_SECONDS
    from crowdclust.service.deployer import UNRESPONSIVE

    found = [a for a in svc.api.post("/automations/filter", json={}).json() if a["name"] == UNRESPONSIVE]
    assert len(found) == 1 and found[0]["enabled"], found
    trigger, (action,) = found[0]["trigger"], found[0]["actions"]
    assert trigger["posture"] == "Proactive" and trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert trigger["within"] == 3 * HEARTBEAT_SECONDS and action["state"] == "CRASHED"
    assert "or the Prefect server could not hear it (down or restarting)" in action["message"]
    assert svc.cfg.env()["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)


def test_a_worker_stopped_with_sigterm_ends_its_runs_first_so_they_crash_and_close_their_pools(svc):
    """`kill WORKER_PID` (a process manager, Ctrl-C of a worker started by hand), not `make down`.

    Prefect's process worker SIGKILLed the flow runs it still had 6 ms after its SIGTERM (strace):
    no hook ran, the run stayed Running until the heartbeat automation crashed it 90 s later, its
    main pool open and its exam answers unreviewed. Now the worker SIGTERMs them first, as `make
    down` does: the run ends Crashed by its own hand at once, and its hook closed its pools.
    """
    import os
    import signal

    from crowdclust.service.processes import alive, parent_pid, read_pid, worker_temp
    from tests.fixtures.service import TERMINAL

    worker_pid: int | None = None
    stopped = time.monotonic()

    run_key = f"svc-term-{uuid.uuid4().hex[:6]}"
    lines = (ROOT / "configs" / "demo-shoes" / "dataset.tsv").read_text().splitlines()
    dataset = svc.tmp / "term-shoes-24.tsv"
    dataset.write_text("\n".join(lines[:25]) + "\n")
    base = svc.deployment_params("demo")["params"]
    params = base | {
        "name": run_key,
        "run_key": run_key,
        "dataset": str(dataset),
        "runs_dir": str(svc.cfg.runs_dir),
        "hits": {"overlap": 2, "hits_per_item": 3},
        "exam": base["exam"] | {"expected_workers": 12, "n_exams": 1},
        "intruders": {"enabled": False},
        "wait": {"poll_seconds": 1},
    }
    token = {"Authorization": f"OAuth {svc.cfg.token_file.read_text().strip()}"}
    config = f"{svc.cfg.emulator_url}/_emulator/config"
    httpx.post(config, params={"speed": 0}, headers=token).raise_for_status()  # the wait lasts
    try:
        run_id = svc.trigger("crowdclust-pipeline/demo", {"params": params})
        deadline = time.monotonic() + 180
        while not svc.in_wait(run_id):
            assert time.monotonic() < deadline, "the run's wait never started"
            assert svc.flow_run(run_id)["state_type"] not in TERMINAL, svc.why(run_id)
            time.sleep(0.3)
        engine = int(str(svc.flow_run(run_id)["infrastructure_pid"]).rsplit(":", 1)[-1])
        workers = {read_pid(svc.cfg, name): name for name in ("worker-1", "worker-2")}
        assert parent_pid(engine) in workers, (engine, workers)
        worker_pid = parent_pid(engine)
        # Prefect's files of the run (its whole environment, a password on a service that has one)
        # are in the worker's folder of the service, which `up` and `down` empty, not in /tmp.
        worker_folder = worker_temp(svc.cfg, workers[worker_pid])
        assert _workspaces_of(run_id, worker_folder), sorted(worker_folder.iterdir())
        assert not _workspaces_of(run_id, Path(tempfile.gettempdir()))
        os.kill(worker_pid, signal.SIGTERM)
        stopped = time.monotonic()
        run = svc.wait(run_id, timeout=60)  # the automation would take 90 s
        print(f"worker SIGTERM -> run {run['state_type']} in {time.monotonic() - stopped:.1f} s")
        assert run["state_type"] == "CRASHED", run["state"]
        assert "no heartbeat" not in (run["state"]["message"] or ""), run["state"]  # its own crash
        client = svc.toloka()
        pools = [
            pool
            for project in client.get_projects()
            if str(project.private_comment or "").startswith(f"crowdclust:{run_key}:")
            for pool in client.get_pools(project_id=project.id)
        ]
        assert len(pools) == 2 and all(pool.is_closed() for pool in pools), [
            (pool.id, pool.status) for pool in pools
        ]
    finally:
        httpx.post(config, params={"speed": svc.cfg.emulator_speed}, headers=token).raise_for_status()
        # `make up` at once: the worker may still be winding down after its runs have crashed. An `up`
        # then found it alive ("already running"), it exited a moment later, and the scale test ran
        # on one worker, killed it, and waited for good for a worker to run its Retry. `up` now waits
        # for a worker that said it is stopping.
        said: list[str] = []
        service.up(svc.cfg, say=said.append)  # restarts the stopped worker
    print(*(line for line in said if line.startswith("worker-")), sep="\n")
    name = workers[worker_pid]
    assert not alive(worker_pid) and read_pid(svc.cfg, name) not in (None, worker_pid), said
    assert f"{name}: already running" not in said, said
    assert not _workspaces_of(run_id, worker_folder), sorted(worker_folder.iterdir())


def _workspaces_of(run_id: str, folder: Path) -> list[Path]:
    """The folders Prefect's process worker made in `folder` for flow run `run_id`."""
    configs = folder.glob("prefect-workspace-attempt-*/supervisor.json")
    return [path.parent for path in configs if run_id in path.read_text(errors="replace")]


def test_down_names_the_runs_in_flight_and_stops_nothing_without_force(svc):
    """A teammate's `make down` stopped the service under everyone's runs without a word (they crash
    and resume, but the crowd's work stops). With a run in flight, `down` without a terminal names it
    (whose it is, from its `by USER@HOST` tag) and how it resumes, and refuses without --force."""
    from tests.fixtures.cli import invoke

    flow = svc.api.post("/flows/", json={"name": "crowdclust-down-guard"}).raise_for_status().json()
    run = (
        svc.api.post(
            "/flow_runs/",
            json={
                "flow_id": flow["id"],
                "name": "shoes (run key k-down)",
                "tags": ["by alice@laptop"],
                "state": {"type": "RUNNING", "name": "Running"},
            },
        )
        .raise_for_status()
        .json()
    )
    try:
        done = invoke("service", "down", "--state-dir", str(svc.cfg.state_dir))
        assert done.returncode == 1, done
        assert "shoes (run key k-down) (Running; crowdclust run by alice@laptop)" in done.stderr, done
        assert done.stderr.count("k-down") == 1 and "Retry in the UI" in done.stderr, done
        assert "--force (make down FORCE=1)" in done.stderr, done
        assert all(service.status(svc.cfg).values()), "down stopped parts although it refused"
    finally:
        svc.api.post(
            f"/flow_runs/{run['id']}/set_state", json={"state": {"type": "CANCELLED"}, "force": True}
        ).raise_for_status()
