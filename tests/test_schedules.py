"""Missed runs of a deployment's schedule: only the latest runs; one that finds its key busy is skipped.

After a service that was down over three nights, the nightly catalogue's three runs started
together: one did the work and two failed on the busy catalogue key. The runs here are made the way
Prefect's scheduler makes them (its `/deployments/{id}/schedule` route, past times as after an
outage: `auto_scheduled`), and each is run by Prefect's engine as a worker runs it (`run_flow` with
the server's flow run), on the `money` lane's test server. The flow is a stand-in with the
decorators of the real flows (`crowdclust-pipeline`, `-catalogue` and `-evaluate` carry them, which
the last test checks); its run key's lock is the real one.
"""

from __future__ import annotations

import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prefect import flow
from prefect.flow_engine import run_flow

from tasks.params import PipelineParams, TolokaTarget, load_params
from tasks.run_lock import locked_run
from tasks.schedules import SKIPPED, latest, skip_missed_runs, supersedes
from tests.fixtures.locks import holding_process

ROOT = Path(__file__).resolve().parents[1]
TARGET = TolokaTarget(environment="local", url="http://127.0.0.1:1")
WORKED = "worked"


@flow(name="crowdclust-schedules-stand-in")
@skip_missed_runs
@locked_run()
def nightly(params: PipelineParams) -> str:
    return WORKED


def _params(key: str) -> dict[str, Any]:
    params = load_params(ROOT / "configs" / "demo-shoes" / "pipeline.yaml")
    params = params.model_copy(update={"toloka": TARGET, "run_key": key, "name": key})
    return {"params": params.model_dump(mode="json")}


def _missed(api: httpx.Client, key: str, runs: int) -> list[Any]:
    """A deployment of `nightly` whose schedule (every 5 minutes) made `runs` runs, all due by now
    (the last a minute ago), as the scheduler leaves them after an outage: oldest first."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(minutes=1 + 5 * (runs - 1))
    schedule = IntervalSchedule(interval=timedelta(minutes=5), anchor_date=first)
    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(
            flow_id=client.create_flow(nightly),
            name=f"nightly-{key}",
            schedules=[DeploymentScheduleCreate(schedule=schedule, active=True)],
            parameters=_params(key),
        )
        body = {"start_time": first.isoformat(), "end_time": now.isoformat(), "max_runs": runs}
        api.post(f"/deployments/{deployment}/schedule", json=body).raise_for_status()
        of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
        made = client.read_flow_runs(deployment_filter=of_it)
    due = sorted((r for r in made if r.expected_start_time <= now), key=lambda r: r.expected_start_time)
    seen = [(r.expected_start_time, r.auto_scheduled) for r in made]
    assert len(due) == runs and all(r.auto_scheduled for r in due), seen
    return due


def _run(run: Any) -> Any:
    """Run flow run `run` in this process as a worker's flow-run process does; its final state."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run.id)
    return run_flow(nightly, flow_run=run, parameters=run.parameters, return_type="state")


def _api() -> httpx.Client:
    from prefect.settings import PREFECT_API_URL

    return httpx.Client(base_url=str(PREFECT_API_URL.value()), timeout=30)


def test_only_the_latest_missed_run_of_a_schedule_works(prefect_harness):
    key = f"sched-{uuid.uuid4().hex[:6]}"
    oldest, middle, newest = _missed(_api(), key, 3)

    skipped = _run(oldest)
    assert skipped.is_completed() and skipped.name == SKIPPED, skipped
    # By due time and id: a run's name becomes its run key's only once it starts.
    due = f"{newest.expected_start_time:%Y-%m-%d %H:%M} UTC"
    assert f"the flow run of {due} (id {newest.id})" in skipped.message, skipped.message
    assert "was missed, and a later one is due too" in skipped.message, skipped.message

    worked = _run(newest)
    assert worked.is_completed() and worked.name != SKIPPED, worked
    assert worked.result() == WORKED

    again = _run(middle)  # the latest has run: it still stands in for the earlier ones
    assert again.name == SKIPPED and str(newest.id) in again.message, again


def test_a_scheduled_run_whose_key_is_busy_is_skipped_and_a_run_by_hand_still_fails(prefect_harness):
    from prefect import get_client

    key = f"sched-busy-{uuid.uuid4().hex[:6]}"
    (scheduled,) = _missed(_api(), key, 1)
    holder = holding_process(key, Path(tempfile.gettempdir()))  # this machine's: the flow run's lock folder
    try:
        skipped = _run(scheduled)
        assert skipped.is_completed() and skipped.name == SKIPPED, skipped
        assert f"run key {key} is busy (pid {holder.pid} on this machine" in skipped.message, skipped.message
        assert "did nothing" in skipped.message, skipped.message

        with get_client(sync_client=True) as client:  # "Run" in the UI: not the schedule's
            by_hand = client.create_flow_run_from_deployment(scheduled.deployment_id)
        failed = _run(by_hand)
        assert failed.is_failed() and "RunKeyBusy" in failed.message, failed
    finally:
        holder.kill()
        holder.wait()


def test_which_later_runs_stand_in_for_a_missed_one():
    """Made by the schedule, due later than the missed run and by now, and not ended undone."""
    from types import SimpleNamespace

    from prefect.client.schemas.objects import StateType

    now = datetime(2026, 12, 7, 12, tzinfo=UTC)

    def run(hours_ago: float, state: str = "SCHEDULED", auto: bool = True, ident: str = "") -> Any:
        when = now - timedelta(hours=hours_ago)
        kind = StateType("COMPLETED" if state == SKIPPED else state)
        return SimpleNamespace(
            id=ident or str(hours_ago),
            expected_start_time=when,
            auto_scheduled=auto,
            state_type=kind,
            state_name=state.title(),
        )

    missed = run(48)
    assert supersedes(run(24), missed, now) and supersedes(run(0), missed, now)
    assert supersedes(run(24, "RUNNING"), missed, now) and supersedes(run(24, "COMPLETED"), missed, now)
    assert not supersedes(run(-1), missed, now)  # not due yet
    assert not supersedes(run(72), missed, now) and not supersedes(run(48, ident="other"), missed, now)
    assert not supersedes(run(24, auto=False), missed, now)  # a run by hand does not stand in
    for undone in ("FAILED", "CRASHED", "CANCELLED", "CANCELLING", SKIPPED):  # a skipped one did nothing
        assert not supersedes(run(24, undone), missed, now)
    assert not supersedes(missed, missed, now)
    assert latest([run(24), run(1), run(12)]).expected_start_time == now - timedelta(hours=1)
    assert latest([]) is None


def test_the_deployable_flows_skip_missed_runs_and_take_their_parameters():
    """The flows a deployment's schedule runs carry the decorator, outermost under `@flow`, and
    Prefect still reads their parameters: it resolves a flow's annotations in the module of the
    function it was given (the decorator's), and `Path` of the evaluate flow was not there (every
    deployment run of it failed "`Evaluate_ClustersModel` is not fully defined")."""
    from flows.catalogue import cluster_catalogue
    from flows.evaluate import evaluate_clusters
    from flows.pipeline import crowdclust_pipeline

    wrapper = skip_missed_runs(lambda: None).__code__
    params = _params("sched-params")
    for deployable, more in (
        (crowdclust_pipeline, {}),
        (cluster_catalogue, {"anchors_per_hit": "2"}),
        (evaluate_clusters, {"clusters_csv": "runs/x/clusters.csv"}),
    ):
        assert deployable.fn.__code__ is wrapper, deployable.name
        taken = deployable.validate_parameters(params | more)
        assert isinstance(taken["params"], PipelineParams), deployable.name
    assert taken["clusters_csv"] == Path("runs/x/clusters.csv")
