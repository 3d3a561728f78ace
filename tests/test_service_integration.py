"""The service as a user runs it: a real Prefect server, the emulator and a process worker.

`crowdclust service up` (what `make up` runs) on free ports in a temporary folder deploys
`prefect.yaml`; runs are triggered with the Prefect CLI exactly as from a shell, and observed
through the server's REST API and the emulator. One module-scoped service is shared by the tests,
in order: deployments and schedules, a demo run and its artifacts, a failure retried in place,
and a growing catalogue (50 items, then 82, then 82 again).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from crowdclust import service
from crowdclust.service import ServiceConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """The running service plus the few client calls the tests need (CLI, REST, emulator)."""

    def __init__(self, cfg: ServiceConfig, tmp: Path) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.api = httpx.Client(base_url=cfg.api_url, timeout=30)

    def prefect(self, *args: str) -> str:
        result = subprocess.run(
            [service._bin("prefect"), "--no-prompt", *args],
            cwd=ROOT,
            env=self.cfg.env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"prefect {args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def trigger(self, deployment: str, parameters: dict[str, Any]) -> str:
        """`prefect deployment run` (no --watch: the id is all we need); returns the flow-run id."""
        out = self.prefect("deployment", "run", deployment, "--params", json.dumps(parameters))
        return next(line.split("UUID:")[1].strip() for line in out.splitlines() if "UUID:" in line)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.api.get(f"/flow_runs/{run_id}").json()

    def wait(self, run_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {run['state_type']}")

    def task_runs(self, name_like: str, state: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"task_runs": {"name": {"like_": name_like}}}
        if state:
            body["task_runs"]["state"] = {"type": {"any_": [state]}}
        return self.api.post("/task_runs/filter", json=body).json()

    def subflow_runs(self, parent_id: str) -> list[str]:
        """Ids of the flow run and its sub-flow runs (artifacts and tasks of sub-flows live there)."""
        tasks = self.api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [parent_id]}}}).json()
        child_ids = [t["id"] for t in tasks]
        body = {"flow_runs": {"parent_task_run_id": {"any_": child_ids}}} if child_ids else None
        children = self.api.post("/flow_runs/filter", json=body).json() if body else []
        return [parent_id, *(c["id"] for c in children)]

    def tasks_of(self, run_id: str) -> dict[str, list[str]]:
        """Task name (without its suffix) -> state names, over the run and its sub-flows."""
        body = {"flow_runs": {"id": {"any_": self.subflow_runs(run_id)}}, "sort": "EXPECTED_START_TIME_ASC"}
        states: dict[str, list[str]] = {}
        for t in self.api.post("/task_runs/filter", json=body).json():
            states.setdefault(t["name"].rsplit("-", 1)[0], []).append(t["state_name"])
        return states

    def artifact_keys(self, run_id: str) -> set[str]:
        body = {"artifacts": {"flow_run_id": {"any_": self.subflow_runs(run_id)}}}
        return {a["key"] for a in self.api.post("/artifacts/filter", json=body).json() if a["key"]}

    def toloka(self) -> Any:
        import toloka.client as toloka

        token = self.cfg.token_file.read_text().strip()
        return toloka.TolokaClient(token, url=self.cfg.emulator_url, retries=3, timeout=10.0)

    def objects(self, prefix: str = "crowdclust:") -> dict[str, Any]:
        """Toloka objects tagged with `prefix`: counts, and suites per pool."""
        client = self.toloka()
        projects = [p for p in client.get_projects() if str(p.private_comment or "").startswith(prefix)]
        pools = [pool for p in projects for pool in client.get_pools(project_id=p.id)]
        trainings = [t for p in projects for t in client.get_trainings(project_id=p.id)]
        skills = [s for s in client.get_skills() if str(s.private_comment or "").startswith(prefix)]
        suites = {pool.id: len(list(client.get_task_suites(pool_id=pool.id))) for pool in pools}
        return {
            "projects": len(projects),
            "pools": len(pools),
            "trainings": len(trainings),
            "skills": len(skills),
            "suites": suites,
            "pool_tags": sorted(str(p.private_comment) for p in pools),
        }


def deployment_params(name: str) -> dict[str, Any]:
    """The parameters a deployment has in prefect.yaml (what a scheduled run gets)."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return next(d for d in spec["deployments"] if d["name"] == name)["parameters"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("service")
    cfg = ServiceConfig(
        state_dir=tmp / "state",
        server_port=_free_port(),
        emulator_port=_free_port(),
        results_dir=tmp / "results",
        worker_poll_seconds=2.0,
    )
    try:
        started = time.monotonic()
        service.up(cfg)
        print(f"service up in {time.monotonic() - started:.1f} s")
        running = Service(cfg, tmp)
        yield running
        running.api.close()  # an open keep-alive connection would hold up the server's shutdown
    finally:
        started = time.monotonic()
        service.down(cfg)
        print(f"service down in {time.monotonic() - started:.1f} s")


def test_up_is_idempotent_and_deploys_everything(svc):
    said: list[str] = []
    service.up(svc.cfg, say=said.append)  # again: nothing restarted, deployments re-applied
    assert {"server: already running", "emulator: already running", "worker: already running"} <= set(said)
    deployments = {d["name"]: d for d in svc.api.post("/deployments/filter", json={}).json()}
    assert set(deployments) == {"demo", "production", "reaggregate", "evaluate", "demo-catalogue"}
    assert all(d["work_pool_name"] == "crowdclust" for d in deployments.values())
    pull = deployments["demo"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == str(ROOT)
    production = deployments["production"]
    assert [s["active"] for s in production["schedules"]] == [False]
    assert production["parameters"]["params"]["toloka"]["token_secret_block"] == "toloka-token"


def test_demo_deployment_run_completes_with_artifacts(svc):
    params = deployment_params("demo")["params"] | {"runs_dir": str(svc.tmp / "runs")}
    started = time.monotonic()
    run_id = svc.trigger("crowdclust-pipeline/demo", {"params": params})
    run = svc.wait(run_id)
    print(f"demo deployment run: {time.monotonic() - started:.1f} s")
    assert run["state_type"] == "COMPLETED", run["state"]
    summary = json.loads((svc.tmp / "runs" / "demo-shoes" / "summary.json").read_text())
    assert summary["ari"] >= 0.9 and summary["intruder_accuracy"] >= 0.7
    keys = svc.artifact_keys(run_id)
    expected = {"hit-coverage", "main-pool-progress", "cluster-galleries", "run-metrics", "run-report"}
    assert expected | {"intruder-accuracy", "intruder-chart"} <= keys, keys


def test_failed_run_is_retried_in_place_without_duplicates(svc):
    """Emulator down during the wait: the run fails; emulator back, `prefect flow-run retry` resumes."""
    run_key = f"svc-retry-{uuid.uuid4().hex[:6]}"
    params = deployment_params("demo")["params"] | {
        "runs_dir": str(svc.tmp / "runs-retry"),
        "run_key": run_key,
        "intruders": {"enabled": False},
        "wait": {"poll_seconds": 1, "retries": 0},  # fail at the first connection error, not after ~1 min
    }
    httpx.post(f"{svc.cfg.emulator_url}/_emulator/config", params={"speed": 0})  # hold the crowd
    run_id = svc.trigger("crowdclust-pipeline/demo", {"params": params})
    deadline = time.monotonic() + 120
    while not svc.task_runs("wait-labelling%", "RUNNING"):
        assert time.monotonic() < deadline, "the wait never started"
        assert svc.flow_run(run_id)["state_type"] not in TERMINAL, svc.flow_run(run_id)["state"]
        time.sleep(0.5)
    service.stop(svc.cfg, "emulator")
    failed = svc.wait(run_id)
    assert failed["state_type"] == "FAILED", failed["state"]
    service.start(svc.cfg, "emulator")  # same SQLite state; the clock runs at the default speed again
    before = svc.objects(f"crowdclust:{run_key}:")

    svc.prefect("flow-run", "retry", run_id)
    run = svc.wait(run_id)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["run_count"] == 2  # the same flow run, run again

    states = svc.tasks_of(run_id)
    assert states["setup-labelling"] == ["Completed", "Cached"], states
    assert states["upload-hits"] == ["Completed", "Cached"], states
    assert states["wait-labelling"][-1] == "Completed" and "Failed" in states["wait-labelling"], states
    after = svc.objects(f"crowdclust:{run_key}:")
    assert after == before  # nothing created by the retry
    assert (after["projects"], after["pools"], after["trainings"], after["skills"]) == (2, 2, 1, 1)
    assert len(set(after["pool_tags"])) == 2 and 82 in after["suites"].values()


def test_growing_catalogue_labels_only_new_items_and_costs_nothing_unchanged(svc):
    from emulator import write_catalogue

    catalogue = svc.tmp / "catalogue.tsv"
    full = svc.tmp / "catalogue-82.tsv"
    write_catalogue("demo-shoes", catalogue, size=50, seed=0)
    write_catalogue("demo-shoes", full, size=82, seed=0)
    assert full.read_text().startswith(catalogue.read_text())  # growing keeps the first items
    defaults = deployment_params("demo-catalogue")
    params = defaults["params"] | {
        "dataset": str(catalogue),
        "runs_dir": str(svc.tmp / "runs-catalogue"),
        "intruders": {"n_hits": 40},
        "run_key": f"svc-catalogue-{uuid.uuid4().hex[:6]}",  # apart from the nightly run's objects
    }
    prefix = f"crowdclust:{params['run_key']}:"
    summary_path = svc.tmp / "runs-catalogue" / params["name"] / "summary.json"

    def run_round() -> tuple[str, dict[str, Any]]:
        run_id = svc.trigger("crowdclust-catalogue/demo-catalogue", {**defaults, "params": params})
        run = svc.wait(run_id)
        assert run["state_type"] == "COMPLETED", run["state"]
        return run_id, json.loads(summary_path.read_text())

    _, first = run_round()
    assert first["new_items"] == 50 and len(first["round_pools"]) == 1
    shutil.copy(full, catalogue)
    _, second = run_round()
    assert second["new_items"] == 32 and len(second["round_pools"]) == 2
    assert second["coverage"]["n_items"] == 32 and second["coverage"]["min"] >= 10
    assert second["ari"] >= 0.9 and second["aggregation"]["n_clusters"] >= 6
    grown = svc.objects(prefix)
    assert grown["projects"] == 3 and grown["skills"] == 1  # exam, main, intruders: shared by rounds
    assert sum(tag.startswith(prefix + "main-pool-") for tag in grown["pool_tags"]) == 2

    run_id, third = run_round()  # unchanged catalogue: nothing new, everything cached
    assert third["new_items"] == 0 and third["cost"]["spent"] == 0
    assert svc.objects(prefix) == grown
    states = svc.tasks_of(run_id)
    assert states["aggregate"] == ["Cached"] and set(states["export-results"]) == {"Cached"}, states
    assert "setup-labelling" not in states and "upload-hits" not in states


def test_recurring_deployment_has_upcoming_runs(svc):
    """The server's scheduler (a loop of about a minute) has planned the nightly catalogue runs by now;
    the production template's inactive schedule planned none."""
    deployments = {d["name"]: d["id"] for d in svc.api.post("/deployments/filter", json={}).json()}
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
    assert owners[deployments["production"]] == 0
