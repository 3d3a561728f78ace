"""The whole flow against the real emulator, through the real toloka-kit client and Prefect engine.

One module-scoped scenario is shared by the assertions (keeps the suite fast):
1. run the pipeline with a failure forced right after labelling (the aggregation sub-flow is
   monkeypatched to raise);
2. run it again with the same parameters: it must resume (labelling tasks Cached) and finish.
Separate, cheap runs cover the budget guard and the failure hook.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from crowdclust.runtime import describe
from emulator import EmulatorSettings, run_in_background
from tasks.params import PipelineParams, load_params
from tasks.run_folder import RunFolder
from tasks.toloka_api import make_client
from tests.fixtures.prefect import persisted_bytes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo-shoes" / "pipeline.yaml"
TOKEN = f"e2e-secret-{uuid.uuid4().hex}"
RUN_KEY = "e2e-demo"


@pytest.fixture(scope="module")
def emu():
    """The demo catalogue's emulator at 1800x: the default-settings scenario's two runs spent half their
    time in the wait's sleep at 600x (py-spy: 36 of 71 s); the module took 197 s alone instead of 226."""
    settings = EmulatorSettings(
        port=0, token=TOKEN, catalogue="demo-shoes", catalogue_size=82, seed=0, speed=1800.0
    )
    with run_in_background(settings) as running:
        previous = os.environ.get("TOLOKA_TOKEN")
        os.environ["TOLOKA_TOKEN"] = running.token
        yield running
        if previous is None:
            os.environ.pop("TOLOKA_TOKEN", None)
        else:
            os.environ["TOLOKA_TOKEN"] = previous


def _params(emu: Any, runs: Path, **changes: Any):
    base = {
        "toloka": {"url": emu.url},
        "runs_dir": str(runs),
        "run_key": RUN_KEY,
        "wait": {"poll_seconds": 0.5},
    }
    return load_params(DEMO, {**base, **changes})


def _objects(params: Any) -> dict[str, list[Any]]:
    """Everything on the emulator tagged with the params' run key."""
    client = make_client(params.toloka)
    prefix = f"crowdclust:{params.resolved_run_key}:"
    projects = [p for p in client.get_projects() if str(p.private_comment or "").startswith(prefix)]
    pools = [pool for p in projects for pool in client.get_pools(project_id=p.id)]
    trainings = [t for p in projects for t in client.get_trainings(project_id=p.id)]
    skills = [s for s in client.get_skills() if str(s.private_comment or "").startswith(prefix)]
    suites = {pool.id: len(list(client.get_task_suites(pool_id=pool.id))) for pool in pools}
    return {"projects": projects, "pools": pools, "trainings": trainings, "skills": skills, "suites": suites}


class ForcedFailure(RuntimeError):
    """Raised in place of the aggregation to fail a run right after labelling."""


def _fail(**kwargs: Any) -> None:
    raise ForcedFailure("forced failure after labelling")


@pytest.fixture(scope="module")
def scenario(prefect_harness, emu, tmp_path_factory):
    import flows.pipeline
    from flows.pipeline import crowdclust_pipeline

    params = _params(emu, tmp_path_factory.mktemp("runs"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.pipeline, "aggregate_export", _fail)
        with pytest.raises(ForcedFailure):
            crowdclust_pipeline(params)
    after_failure = _objects(params)
    state = crowdclust_pipeline(params, return_state=True)
    assert state.is_completed(), state.message
    return {
        "params": params,
        "summary": state.result(),
        "after_failure": after_failure,
        "final": _objects(params),
    }


def test_demo_quality_with_default_settings(scenario):
    summary = scenario["summary"]
    assert summary.ari >= 0.9, summary
    assert summary.nmi is not None and summary.clusters >= 6
    assert summary.intruder_accuracy is not None and summary.intruder_accuracy >= 0.7
    evaluated = summary.intruders
    assert evaluated.image_accuracy is not None and evaluated.image_accuracy >= 0.7
    assert 0 < evaluated.images_hosted <= 82
    run_dir = scenario["params"].run_dir
    saved = json.loads((run_dir / "summary.json").read_text())
    for key in ("clusters", "ari", "nmi", "intruder_accuracy", "cost", "wall_seconds", "report"):
        assert key in saved
    assert saved["cost"]["spent"] > 0
    assert saved == json.loads(summary.to_json())  # summary.json is the RunSummary, serialised
    export = pd.read_csv(run_dir / "assignments_main.tsv", sep="\t")
    info = summary.aggregation
    assert info.n_assignments == export["ASSIGNMENT:assignment_id"].nunique() > info.n_hits == 82
    page = (run_dir / "report.html").read_text()
    # 82 images, embedded (thumbnails fetched at aggregation) because the emulator stops after the run.
    assert page.count("<figure><img src='data:image/jpeg;base64,") >= 82
    assert "<img src='data:image/png;base64," in page  # the intruder chart, in the page like the thumbnails
    assert "Least certain items" in page and "Second round" not in page
    assert "second round" not in describe(summary)  # what `crowdclust run` prints: no second round
    table = pd.read_csv(run_dir / "clusters.csv")
    assert table["confidence"].between(0, 1).all() and len(table) == 82
    for name in (
        "clusters.csv",
        "assignments_main.tsv",
        "assignments_intruders.tsv",
        "hits.json",
        "intruders.png",
    ):
        assert (run_dir / name).is_file(), name


def test_exam_gating_keeps_colour_biased_workers_and_spammers_out(scenario, emu):
    workers = {w["id"]: w for w in httpx.get(f"{emu.url}/_emulator/workers", timeout=10).json()}
    export = pd.read_csv(scenario["params"].run_dir / "assignments_main.tsv", sep="\t")
    kinds = {workers[w]["type"] for w in export["ASSIGNMENT:worker_id"].unique()}
    assert kinds and not kinds & {"colour_biased", "spammer"}, kinds
    skill_id = scenario["summary"].toloka_ids.skill
    examined = [w for w in workers.values() if skill_id in (w.get("skills") or {})]
    bad = [w for w in examined if w["type"] in ("colour_biased", "spammer")]
    assert bad, "the scenario should have seen colour-biased workers or spammers take the exam"
    assert all(w["skills"][skill_id] < 75 for w in bad)
    # What the user reads of it: the exam's outcome in summary.json, the report and the last lines
    # (a crowd of half spammers ended with the same lines as a good one).
    outcome = scenario["summary"].exam
    assert outcome.takers == len(examined) and outcome.rejected > 0 and outcome.accepted > 0
    assert outcome.qualified == sum(w["skills"][skill_id] >= 75 for w in examined) < outcome.takers
    saved = json.loads((scenario["params"].run_dir / "summary.json").read_text())["exam"]
    assert saved["rejected"] == outcome.rejected and 0 < saved["rejected_share"] < 1
    line = f"{outcome.rejected} of {outcome.accepted + outcome.rejected} exam answers rejected"
    assert f"exam:               {line}" in describe(scenario["summary"])
    assert line in (scenario["params"].run_dir / "report.html").read_text()


def test_the_poll_lines_set_the_stages_spend_with_the_exams_against_the_budget(scenario, prefect_harness):
    """A team lead watching a run saw each poll's main-pool spend only: the exams ($7.80 in their
    run) and what is left of max_spend were in no line."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200) if r.name.startswith(RUN_KEY)]
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
        )
    polls = [
        log.message for log in logs if "% complete" in log.message and log.message.startswith("main pool")
    ]
    assert polls, [r.name for r in runs]
    found = re.search(r"; with the exams \$([\d.]+) of the \$([\d.]+) left of budget.max_spend$", polls[-1])
    assert found is not None, polls[-1]
    assert float(found[1]) > float(re.search(r"\$([\d.]+) spent", polls[-1])[1])  # the exams are counted
    assert float(found[2]) <= scenario["params"].budget.max_spend


def test_a_resumed_runs_report_times_every_attempt(scenario, prefect_harness):
    """After a resume, the report's timings were only the last attempt's: the first attempt's wait
    for the crowd (the run's longest stage) was in no figure."""
    summary = scenario["summary"]
    attempts = summary.attempts
    assert attempts is not None and attempts.count == 2, summary.timings
    assert summary.timings["labelling"] > attempts.last_timings["labelling"]  # the first attempt's wait
    assert summary.wall_seconds > attempts.last_wall
    run_dir = scenario["params"].run_dir
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["attempts"]["count"] == 2 and saved["timings"]["labelling"] == summary.timings["labelling"]
    page = (run_dir / "report.html").read_text()
    assert "2 attempts since" in page and "The last attempt alone (s)" in page
    assert "over 2 attempts since" in describe(summary)
    # The run's page in the UI too: its overview read "cost $31.82, 253 s." for a run stopped twice
    # by the balance and retried (the report and the last log line said 3 attempts).
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        overviews = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["run-overview"]))
        )
    ours = [a for a in overviews if str(run_dir) in str(a.data)]
    assert ours and f"{summary.wall_seconds:.0f} s over 2 attempts." in str(ours[-1].data), ours
    # Its scores read as the run's last log line reads them (it said 0.91 where the log said 0.910).
    assert f"intruder accuracy {summary.intruder_accuracy:.3f}, cost" in str(ours[-1].data), ours


def test_resume_after_failure_creates_nothing_twice(scenario, prefect_harness):
    before, final = scenario["after_failure"], scenario["final"]
    # Labelling objects existed after the failure and were reused, not re-created.
    assert len(before["projects"]) == 2 and len(before["pools"]) == 2 and len(before["skills"]) == 1
    assert {p.id for p in before["pools"]} <= {p.id for p in final["pools"]}
    # Exactly one of each after the resumed run: exam + main + intruders.
    assert len(final["projects"]) == 3 and len(final["pools"]) == 3 and len(final["trainings"]) == 2
    assert len(final["skills"]) == 1
    tags = [p.private_comment for p in final["pools"]]
    assert len(tags) == len(set(tags))
    ids = scenario["summary"].toloka_ids
    assert final["suites"][ids.main_pool] == 82 and final["suites"][ids.exam_pool] == 3
    # The second run took the labelling results from the cache.
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="wait-labelling"))
        )
    states = sorted((r.expected_start_time, r.state_name) for r in runs)
    assert [s for _, s in states][-2:] == ["Completed", "Cached"]
    # Runs are named after their run key, so a team's Runs page reads by key (not `adjective-animal`).
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId, FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        named = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[RUN_KEY])))
        flows = client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=[r.flow_id for r in named])))
    assert {"crowdclust-pipeline", "crowdclust-labelling", "crowdclust-evaluate"} <= {f.name for f in flows}
    with get_client(sync_client=True) as client:  # the aggregation is named after the folder it writes
        folder = scenario["params"].run_dir.name
        aggregations = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[folder]))
        )
    assert aggregations, folder


def test_spend_is_read_from_toloka_and_the_budget_is_shared_by_the_stages(scenario, prefect_harness):
    from flows.evaluate import evaluate_clusters
    from tasks.budget import BudgetExceeded, estimate_intruders
    from tasks.toloka_api import RunRegistry
    from tasks.toloka_config import load_bundle

    params, summary = scenario["params"], scenario["summary"]
    registry = RunRegistry(make_client(params.toloka), RUN_KEY)
    assert registry.spent() == pytest.approx(summary.cost.spent, abs=0.01) and summary.cost.spent > 0
    assert summary.cost.by_run_key == pytest.approx(registry.spent(), abs=0.01)  # no earlier pools here
    assert summary.cost.earlier_pools < 0.01
    # This run resumed one that failed after labelling: it paid only for the evaluation.
    assert summary.cost.added == pytest.approx(summary.intruders.spent, abs=0.01)
    paid_before = summary.cost.spent - summary.intruders.spent
    assert paid_before > 0 and summary.cost.paid_before == pytest.approx(paid_before, abs=0.01)
    done = f"cost ${summary.cost.spent:.2f} (${summary.cost.added:.2f} of it by this run)"
    assert done in summary.describe()  # the flow's `done:` line
    intruders = registry.spent(lambda role: role.startswith("intruders-pool-"))
    assert intruders == pytest.approx(summary.intruders.spent, abs=0.01) and intruders > 0
    # Re-evaluating on what is left: labelling already spent part of max_spend.
    need = estimate_intruders(params, load_bundle(params.toloka_dir), summary.intruders.n_hits).total
    tight = params.model_copy(update={"budget": params.budget.model_copy(update={"max_spend": need + 0.5})})
    with pytest.raises(BudgetExceeded, match=r"already spent by this run key"):
        evaluate_clusters(tight, skill_id=summary.toloka_ids.skill)


def test_an_intruder_pool_too_few_skilled_workers_could_complete_is_refused_before_it_is_created(
    scenario, prefect_harness, emu
):
    """The intruder pool admits only the workers whose labelling skill reaches exam.min_skill, and the
    exam is closed: with intruders.overlap above their number it would wait out its timeout."""
    from flows.evaluate import evaluate_clusters
    from tasks.preflight import IntrudersUnstaffed
    from tasks.toloka_api import skill_holders

    params, skill = scenario["params"], scenario["summary"].toloka_ids.skill
    workers = httpx.get(f"{emu.url}/_emulator/workers", timeout=10).json()
    skilled = sum(1 for w in workers if (w.get("skills") or {}).get(skill, 0.0) >= params.exam.min_skill)
    assert skill_holders(make_client(params.toloka), skill, params.exam.min_skill) == skilled
    assert skilled >= params.intruders.overlap  # the demo's own evaluation could be staffed
    before = _objects(params)
    # Other HITs (a new intruder pool, were it created), one more worker per HIT than hold the skill.
    changes = {"overlap": skilled + 1, "n_hits": 40}
    crowded = params.model_copy(
        update={
            "intruders": params.intruders.model_copy(update=changes),
            "budget": params.budget.model_copy(update={"max_spend": 1000.0}),
        }
    )
    found = rf"^intruders: {skilled} worker\(s\) hold the labelling skill at exam.min_skill 75, fewer"
    with pytest.raises(IntrudersUnstaffed, match=found):
        evaluate_clusters(crowded, skill_id=skill)
    after = _objects(params)
    assert [p.id for p in after["pools"]] == [p.id for p in before["pools"]]
    assert len(after["projects"]) == len(before["projects"])


def test_budget_guard_refuses_before_anything_is_created(prefect_harness, emu, tmp_path):
    from flows.labelling import labelling
    from tasks.budget import BudgetExceeded

    params = _params(emu, tmp_path, run_key="e2e-budget", budget={"max_spend": 5.0})
    with pytest.raises(BudgetExceeded, match=r"exceeds budget\.max_spend"):
        labelling(params)
    assert _objects(params)["projects"] == []
    # Nor on disk: a refused run's `run_key.txt` sent the next derived key to a folder of its own.
    assert not RunFolder.of(params).key_file.exists()


def test_clusters_too_small_to_host_an_intruder_hit_are_one_log_line(prefect_harness, emu, tmp_path):
    """A clustering of many small clusters (co-association on 3,000 images: 163 of its 174 under 7
    images) logged a line per cluster; now one line counts them, names the first ten and their
    images. Here 400 clusters of 1-3 images: none can host a HIT, so nothing is created on Toloka."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.evaluate import evaluate_clusters

    params = _params(emu, tmp_path, run_key="e2e-small-clusters")
    sizes = [1 + i % 3 for i in range(400)]
    items = [(f"https://img.example/{n:05d}.png", c) for c, size in enumerate(sizes) for n in range(size)]
    items = [(url.replace(".png", f"-{k}.png"), c) for k, (url, c) in enumerate(items)]
    path = tmp_path / "clusters.csv"
    pd.DataFrame(items, columns=["item", "cluster"]).to_csv(path, index=False)
    state = evaluate_clusters(params, clusters_csv=path, return_state=True)
    assert state.is_completed(), state.message
    assert state.result().n_hits == 0 and len(state.result().skipped) == 400
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        run_logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    small = [log.message for log in run_logs if "fewer than 7 images" in log.message]
    assert small == [
        f"400 cluster(s) have fewer than 7 images ({sum(sizes):,} images in all): no intruder HIT hosted "
        "by them (cluster 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 390 more)"
    ]
    assert _objects(params)["projects"] == []


def _run_logs(flow_run_id: Any) -> dict[str, list[Any]]:
    """The logs of a flow run and of each of its sub-flow runs, by run name and flow."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        subs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = [client.read_flow_run(flow_run_id), *subs]
        return {
            f"{run.name} ({'top' if run.id == flow_run_id else 'sub-flow'})": client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            for run in runs
        }


def test_a_refused_deployment_run_says_why_in_one_line_without_tracebacks(prefect_harness, emu, tmp_path):
    """A plan over budget, run as a worker runs a deployment's flow run (`python -m prefect.engine`
    in a process of its own). Its page in the UI showed the reason above two tracebacks of Prefect's
    engine ("Encountered exception during execution", "Engine execution exited with unexpected
    exception"), as for a bug; the labelling sub-flow's page had one more. Now each run says why in
    one error line, and its state's message still carries the reason."""
    import subprocess
    import sys

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import crowdclust_pipeline

    params = _params(emu, tmp_path, run_key="e2e-refused-log", budget={"max_spend": 0.5})
    deployment = crowdclust_pipeline.to_deployment(name="refused-log").apply()
    run = run_deployment(deployment, parameters={"params": params.model_dump(mode="json")}, timeout=0)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT__FLOW_RUN_ID": str(run.id)}
    engine = subprocess.run(
        [sys.executable, "-m", "prefect.engine"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert engine.returncode == 0, engine.stderr  # as before: the run reported its own end (Failed)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.is_failed()
    assert state.message.startswith("Flow run encountered an exception: BudgetExceeded: "), state.message
    assert "exceeds budget.max_spend $0.50" in state.message
    logs = _run_logs(run.id)
    assert len(logs) == 2, list(logs)  # the pipeline and its labelling sub-flow
    for name, lines in logs.items():
        errors = [line.message for line in lines if line.level >= logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith("BudgetExceeded: "), (name, errors)
        assert "exceeds budget.max_spend $0.50" in errors[0], (name, errors)
        assert not [line.message for line in lines if "Traceback" in line.message], name
    assert not RunFolder.of(params).key_file.exists()  # refused before anything was written


def test_a_stage_that_refuses_keeps_its_line_without_a_traceback(prefect_harness, emu, tmp_path):
    """A stage (a task) that refuses: the image check, before anything is paid. Prefect logged it
    as "Task run failed with exception: DatasetError(...)" with its traceback; the line stays."""
    from flows.labelling import labelling

    lines = (ROOT / "configs" / "demo-shoes" / "dataset.tsv").read_text().splitlines()
    lines[3] = lines[3].replace(".png", "_MISSING.png", 1)
    dataset = tmp_path / "missing.tsv"
    dataset.write_text("\n".join(lines) + "\n")
    params = _params(emu, tmp_path, run_key="e2e-refused-stage", dataset=str(dataset))
    state = labelling(params, return_state=True)
    assert state.is_failed() and "DatasetError: " in state.message, state.message
    (logs,) = _run_logs(state.state_details.flow_run_id).values()
    errors = [line.message for line in logs if line.level >= logging.ERROR]
    assert [m for m in errors if m.startswith("Task run failed with exception: DatasetError(")], errors
    assert [m for m in errors if m.startswith("DatasetError: ") and "could not be fetched" in m], errors
    assert not [m for m in errors if "Traceback" in m], errors


def test_a_bug_in_a_flow_keeps_its_traceback(prefect_harness, emu, tmp_path, monkeypatch):
    """What is not a refusal is logged as Prefect logs it, traceback and all."""
    from flows.labelling import labelling
    from tasks import preflight

    def broken(params: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(preflight, "check_run", broken)
    state = labelling(_params(emu, tmp_path, run_key="e2e-bug-log"), return_state=True)
    assert state.is_failed() and "KeyError" in state.message
    (lines,) = _run_logs(state.state_details.flow_run_id).values()
    errors = [line.message for line in lines if line.level >= logging.ERROR]
    assert errors and errors[0].startswith("Encountered exception during execution: KeyError")
    assert "Traceback (most recent call last)" in errors[0], errors


def test_a_design_that_cannot_place_every_image_is_logged_before_anything_is_created(
    prefect_harness, emu, tmp_path, monkeypatch
):
    """`hits.expected_styles: 40` on the 82-image demo design: each image would meet ~1.2 of its
    style. The flow run's log says so, with the design that would do, before the token is even
    tried (a refused one here), so nothing exists on Toloka."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.labelling import labelling

    params = _params(emu, tmp_path, run_key="e2e-design", hits={"expected_styles": 40})
    with monkeypatch.context() as patch:
        patch.setenv("TOLOKA_TOKEN", "not-the-token")
        state = labelling(params, return_state=True)
    assert state.is_failed()
    APILogHandler().flush()  # the log worker sends in batches; read only what it has sent
    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        warnings = [log.message for log in client.read_logs(log_filter=only_this_run) if log.level == 30]
    advice = "~1.2 of its own style", "hits.hits_per_item 46 would show ~5.4"
    assert any(all(part in line for part in advice) for line in warnings), warnings
    assert _objects(params)["projects"] == []


# A team reading a run in the Prefect UI never saw this line of a rerun paying for more answers:
# `tasks/toloka_api.py` logs through its module logger, which Prefect does not send to the API
# unless told to (`tasks.run_log`).
HELPER_WARNING = "pool 6 (main-pool) was made with other settings; updating it: overlap 7 -> 8"


def test_a_helpers_warning_is_in_the_flow_runs_log_and_one_outside_a_run_is_not_sent(prefect_harness):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    import tasks.stage  # noqa: F401  (importing the stages attaches the handler, as in a worker's process)

    helper = logging.getLogger("tasks.toloka_api")

    @flow(name="helper-warning")
    def rerun_with_more_overlap() -> None:
        helper.warning(HELPER_WARNING)
        helper.info("created pool 6")  # below the logger's level: neither console nor UI

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        helper.warning("a warning outside any run")  # Prefect would warn that it has no run to file it
    assert not [w for w in caught if "flow run id" in str(w.message)], [str(w.message) for w in caught]

    @flow(name="helper-warning-parent")
    def started_from_the_form() -> str:
        """The user's top-level run: the warning comes from its labelling sub-flow."""
        return str(rerun_with_more_overlap(return_state=True).state_details.flow_run_id)

    def helper_lines(flow_run_id: str) -> list[tuple[str, int, str]]:
        one_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=one_run)
        return [(log.name, log.level, log.message) for log in logs if log.name.startswith("tasks.")]

    state = rerun_with_more_overlap(return_state=True)
    assert state.is_completed()
    parent = started_from_the_form(return_state=True)
    APILogHandler().flush()
    expected = [("tasks.toloka_api", logging.WARNING, HELPER_WARNING)]
    assert helper_lines(state.state_details.flow_run_id) == expected  # a top-level run: once
    assert helper_lines(parent.result()) == expected  # the sub-flow's own log
    assert helper_lines(parent.state_details.flow_run_id) == expected  # and the run the user started


def test_prefects_line_for_each_finished_stage_and_sub_flow_is_at_debug_and_failures_keep_theirs(
    prefect_harness, caplog
):
    """A catalogue run's log was about one third `Finished in state Completed()`, Prefect's line for
    every task run and sub-flow run, on the same loggers as the poll lines. They are DEBUG lines now:
    neither in the run's log (the UI) nor on the console. A failed task or sub-flow keeps its line,
    and the run the user started still ends with its own."""
    from prefect import flow, get_client, task
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    import tasks.stage  # noqa: F401  (importing the stages sets the level, as in a worker's process)

    @task(name="bookkeeping-fine", cache_policy=None)
    def fine() -> int:
        return 1

    @task(name="bookkeeping-broken", cache_policy=None)
    def broken() -> None:
        raise ValueError("broken on purpose")

    @flow(name="bookkeeping-sub-flow")
    def inner() -> int:
        return fine()

    @flow(name="bookkeeping-failing-sub-flow")
    def failing() -> None:
        raise ValueError("failed on purpose")

    @flow(name="bookkeeping-run")
    def started_by_the_user() -> list[str]:
        fine()
        done = inner(return_state=True)
        with contextlib.suppress(ValueError):
            broken()
        stopped = failing(return_state=True)
        return [str(sub.state_details.flow_run_id) for sub in (done, stopped)]

    with caplog.at_level(logging.INFO):
        state = started_by_the_user(return_state=True)
    runs = [state.state_details.flow_run_id, *state.result()]
    APILogHandler().flush()
    one_run_and_its_sub_flows = LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs))
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=one_run_and_its_sub_flows, sort=LogSort.TIMESTAMP_ASC)
    logged = [(log.level, log.message.split("(")[0]) for log in logs if log.message.startswith("Finished")]
    on_console = [record for record in caplog.records if str(record.msg).startswith("Finished")]
    shown = [(record.levelno, record.getMessage().split("(")[0]) for record in on_console]
    expected = [
        (logging.ERROR, "Finished in state Failed"),  # the broken task
        (logging.INFO, "Finished in state Failed"),  # the failing sub-flow
        (logging.INFO, "Finished in state Completed"),  # the run the user started
    ]
    assert logged == expected, logged
    assert shown == expected, shown


def test_a_warning_given_before_a_run_pays_is_in_the_log_of_the_run_the_user_started(prefect_harness):
    """The style and staffing warnings, given before the pools open, were only in the labelling
    sub-flow's log: a team lead reading the run they started from the UI saw none of them."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from tasks.artifacts import warn_up

    @flow(name="labelling-like")
    def labelling_like() -> None:
        warn_up("hits: with about 40 styles, this design leaves ~27% of the images with none")

    @flow(name="pipeline-like")
    def pipeline_like() -> str:
        return str(labelling_like(return_state=True).state_details.flow_run_id)

    def warnings_of(flow_run_id: str) -> list[str]:
        one_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        with get_client(sync_client=True) as client:
            return [
                log.message for log in client.read_logs(log_filter=one_run) if log.level == logging.WARNING
            ]

    top = pipeline_like(return_state=True)
    APILogHandler().flush()
    expected = ["hits: with about 40 styles, this design leaves ~27% of the images with none"]
    assert warnings_of(top.result()) == expected  # the sub-flow's own log
    assert warnings_of(str(top.state_details.flow_run_id)) == expected  # and the run the user started


def test_a_retried_flow_run_counts_from_what_the_key_had_paid_when_it_began(
    prefect_harness, emu, tmp_path, monkeypatch
):
    """A run retried in the UI after an outage said it added $13.00 of $31.82, all of it paid by
    that one flow run: each attempt read the key's charges afresh at its start. The pools' charges
    are stood in for here (each reading $15 more than the last), so that the attempts can tell."""
    from prefect import flow

    from tasks import budget
    from tasks.toloka_api import RunRegistry

    readings = iter([10.0, 25.0, 40.0, 55.0])
    monkeypatch.setattr(RunRegistry, "charged", lambda self: [("main-pool", "1", next(readings))])
    params = _params(emu, tmp_path, run_key=f"e2e-retry-{uuid.uuid4().hex[:8]}")
    attempts: list[tuple[float, float]] = []

    @flow(retries=1, retry_delay_seconds=0)
    def retried_after_an_outage() -> None:
        key = params.resolved_run_key
        before = budget.total(budget.charges_at_start_task(params.toloka, key))
        attempts.append((before, budget.total(budget.pool_charges_task(params.toloka, key))))
        if len(attempts) == 1:
            raise ConnectionError("the platform went away")

    retried_after_an_outage()
    assert attempts == [(10.0, 25.0), (10.0, 40.0)]  # the second attempt added 30, not 15


def test_a_retry_after_the_dataset_changed_is_named_after_the_key_it_runs_under(prefect_harness, tmp_path):
    """A service run retried after a row was added to its dataset (refused: the derived key changed)
    was renamed `svc-big-44a32faec0-s0 (svc-big-0879a5db37-s0)`, the earlier key read as a name
    someone gave, and after the row was taken out and the run retried again, `svc-big-44a32faec0-s0
    (svc-big-0879a5db37-s0) (svc-big-44a32faec0-s0)`: three keys on the Runs page for one paid job.
    Each attempt here is the real engine running the same flow run, as a worker does on a Retry."""
    from prefect import flow, get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.run_names import by_run_key

    data = tmp_path / "dataset.tsv"
    rows = "".join(f"http://x/{n}.png\n" for n in range(20))
    data.write_text("image\n" + rows)
    params = load_params(DEMO, {"dataset": str(data), "runs_dir": str(tmp_path / "runs")})
    first = params.resolved_run_key

    @flow(name="named-by-its-key", flow_run_name=by_run_key)
    def attempt(params: PipelineParams) -> str:
        return params.resolved_run_key

    parameters = {"params": params.model_dump(mode="json")}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(attempt, parameters=parameters)

        def retried() -> tuple[str, str]:
            """The key an attempt ran under and the run's name after it."""
            client.set_flow_run_state(run.id, Scheduled(), force=True)  # what Retry does
            key = run_flow(attempt, flow_run=client.read_flow_run(run.id), parameters=parameters)
            return key, client.read_flow_run(run.id).name

        assert retried() == (first, first)
        data.write_text("image\n" + rows + "http://x/added.png\n")
        second, name = retried()
        assert second != first and name == second
        data.write_text("image\n" + rows)
        assert retried() == (first, first)
        client.set_flow_run_name(run.id, f"bob-by-hand ({first})")  # a name given in the run form
        data.write_text("image\n" + rows + "http://x/added.png\n")
        assert retried() == (second, f"bob-by-hand ({second})")


def test_a_two_word_name_typed_in_the_run_form_stays_in_front_of_the_key(prefect_harness, tmp_path):
    """A Custom run named `lead-tmo` in the UI's form showed as `tmo-ff082a71c9-s0` on the Runs page:
    any two lowercase words were taken for the server's own `adjective-animal` name and dropped, where
    `lead-big2k` stayed (`lead-big2k (big2k-1f835088c5-s0)`). The real engine names runs created as
    the form creates them (a name given), and one created without a name (the server's)."""
    from prefect import flow, get_client
    from prefect.flow_engine import run_flow

    from flows.run_names import by_run_key

    data = tmp_path / "dataset.tsv"
    data.write_text("image\n" + "".join(f"http://x/{n}.png\n" for n in range(20)))
    params = load_params(DEMO, {"dataset": str(data), "runs_dir": str(tmp_path / "runs")})
    key = params.resolved_run_key

    @flow(name="named-by-its-key", flow_run_name=by_run_key)
    def named_run(params: PipelineParams) -> None:
        pass

    parameters = {"params": params.model_dump(mode="json")}

    def name_after_running(given: str | None) -> tuple[str, str]:
        """The run's name before it ran (the server's, when none was given) and after."""
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(named_run, parameters=parameters, name=given)
            run_flow(named_run, flow_run=client.read_flow_run(run.id), parameters=parameters)
            return run.name, client.read_flow_run(run.id).name

    for typed in ("lead-tmo", "alice-rerun", "bob-test"):
        assert name_after_running(typed) == (typed, f"{typed} ({key})")
    for _ in range(3):
        servers, name = name_after_running(None)  # `ambitious-woodpecker`: nobody gave it
        assert name == key, servers


def test_a_platform_gone_mid_run_fails_the_flow_run_naming_its_url_and_what_to_do(
    prefect_harness, tmp_path, monkeypatch
):
    """The UI showed `Flow run encountered an exception: ConnectError: [Errno 111] Connection
    refused` for an emulator stopped mid-run: no URL, nothing on the open pools or on resuming."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.hooks import CLOSES_POOLS
    from tasks.run_lock import locked_run
    from tasks.toloka_api import StoppedAnswering, TolokaClient

    monkeypatch.setenv("TOLOKA_TOKEN", "a-token")
    params = load_params(DEMO, {"toloka": {"url": "http://127.0.0.1:1"}, "runs_dir": str(tmp_path)})

    @flow(name="platform-gone", **CLOSES_POOLS)
    @locked_run()
    def platform_gone(params) -> None:
        TolokaClient("token", url=params.toloka.url, retries=0, timeout=5).get_requester()

    state = platform_gone(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(StoppedAnswering) as gone:
        state.result()
    assert isinstance(gone.value.__cause__, httpx.ConnectError)
    message = str(gone.value)
    assert message.startswith("Toloka at http://127.0.0.1:1 stopped answering (ConnectError: "), message
    assert "Retry the flow run: finished stages are reused and nothing paid is lost" in message
    assert "stopped answering (ConnectError" in state.message
    APILogHandler().flush()
    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        errors = [log.message for log in client.read_logs(log_filter=only_this_run) if log.level == 40]
    hook = "they may still be open, and the crowd answers them, paid, until they close"
    assert any(hook in line and f"--run-key {params.resolved_run_key} --close" in line for line in errors), (
        errors
    )


@pytest.mark.parametrize("flow_name", ["pipeline", "catalogue"])
def test_a_deployment_run_against_a_platform_that_never_answered_is_refused_in_one_line(
    prefect_harness, tmp_path, monkeypatch, flow_name
):
    """A `demo` run from the UI with a mistyped `toloka.url` (or its emulator not started): the
    first stage's retries took 75 s, four `Error encountered when computing cache key` lines, and the
    run ended `StoppedAnswering: Toloka at ... stopped answering ... The run's open pools were closed
    if Toloka let them be`, for a key that had nothing anywhere. `crowdclust run` probes first and
    says `cannot reach Toloka` in 15 s; so do the flows now (the nightly catalogue run with its
    emulator down too)."""
    from flows.catalogue import cluster_catalogue
    from flows.pipeline import crowdclust_pipeline

    monkeypatch.setenv("TOLOKA_TOKEN", "a-token")
    gone = {"toloka": {"url": "http://127.0.0.1:1"}, "runs_dir": str(tmp_path), "run_key": "e2e-unanswered"}
    params = load_params(DEMO, gone)
    flow = {"pipeline": crowdclust_pipeline, "catalogue": cluster_catalogue}[flow_name]
    state = flow(params, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(
        "Flow run encountered an exception: PlatformUnreachable: cannot reach Toloka at http://127.0.0.1:1 "
    ), state.message
    logs = [line.message for lines in _run_logs(state.state_details.flow_run_id).values() for line in lines]
    for misleading in ("stopped answering", "computing cache key", "may still be open"):
        assert not [line for line in logs if misleading in line], (misleading, logs)
    assert [line for line in logs if "so this run opened nothing and could close nothing" in line], logs
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_the_run_form_refuses_a_toloka_url_without_its_scheme(prefect_harness, tmp_path):
    """A Custom run whose `toloka.url` was typed as `127.0.0.1:8765` (or any text): the server took
    the run, which then failed three connections later. Now the deployment's parameter schema
    refuses it, as the run form does for a HIT size of 1, naming the field (what the UI shows)."""
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import crowdclust_pipeline

    deployment = crowdclust_pipeline.to_deployment(name="url-form").apply()
    params = load_params(DEMO, {"runs_dir": str(tmp_path)}).model_dump(mode="json")
    api = f"{PREFECT_API_URL.value()}/deployments/{deployment}/create_flow_run"
    for typed in ("127.0.0.1:8765", "not a url"):
        params["toloka"]["url"] = typed
        answer = httpx.post(api, json={"parameters": {"params": params}}, timeout=30)
        assert answer.status_code == 409, answer.text
        assert "Validation failed for field 'params.toloka.url'" in answer.json()["detail"], answer.text
    params["toloka"]["url"] = "http://127.0.0.1:8765"
    assert httpx.post(api, json={"parameters": {"params": params}}, timeout=30).status_code == 201


def test_a_stage_failed_on_a_network_error_persists_no_token(prefect_harness, results_dir):
    """A stage that failed on a network error had its error persisted as its result, pickled with
    the httpx request it carried: `Authorization: OAuth <token>` in the result storage every worker
    shares (found in a service's results after its emulator was restarted during a run's wait)."""
    import base64

    from prefect import flow

    from tasks.stage import stage_task
    from tasks.toloka_api import TolokaClient

    token = f"token-{uuid.uuid4().hex}"

    @stage_task("token-stays-out", toloka=True, retries=0)
    def ask(url: str) -> None:
        TolokaClient(token, url=url, retries=0, timeout=5).get_requester()

    @flow(name="token-stays-out")
    def platform_gone() -> None:
        ask("http://127.0.0.1:1")

    before = set(results_dir.rglob("*"))
    state = platform_gone(return_state=True)
    assert state.is_failed()
    with pytest.raises(httpx.ConnectError):
        state.result()
    records = []
    for path in set(results_dir.rglob("*")) - before:
        raw = path.read_bytes() if path.is_file() else b""
        try:  # a result record: JSON whose `result` is the pickle, base64
            records.append(base64.b64decode(json.loads(raw)["result"]))
        except (ValueError, KeyError, TypeError):
            records.append(raw)
    assert any(b"ConnectError" in record for record in records), "the failure was not persisted"
    assert not [record for record in records if token.encode() in record]


def test_a_main_pool_stopped_before_completion_leaves_its_paid_answers_on_disk(
    prefect_harness, emu, tmp_path
):
    """A 10,000-image run whose main pool expired at 95% failed with `PoolStopped` and only
    `hits.json` in its folder: 66,816 paid answers ($1,774.27) off disk. Here the pool is closed by
    hand once it has answers (Toloka's other stop before completion)."""
    import threading
    import time

    from flows.labelling import labelling
    from tasks.wait import PoolStopped

    params = _params(emu, tmp_path, run_key="e2e-stopped", wait={"poll_seconds": 0.2})
    client = make_client(params.toloka)
    marker = f"crowdclust:{params.resolved_run_key}:main-pool"
    closed: list[str] = []

    def close_when_answered() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not closed:
            for pool in [p for p in client.get_pools(status="OPEN") if p.private_comment == marker]:
                if client.find_assignments(pool_id=pool.id, status="ACCEPTED", limit=1).items:
                    client.close_pool(pool.id)
                    closed.append(pool.id)
            time.sleep(0.1)

    closer = threading.Thread(target=close_when_answered, daemon=True)
    closer.start()
    with pytest.raises(PoolStopped, match=r"before completion\. The pool is closed; its") as ended:
        labelling(params)
    closer.join(5)
    assert closed, "the main pool was never answered"
    export = RunFolder.of(params).export("main")
    kept = re.search(
        r"its ([\d,]+) accepted answers?(?: \([^)]*\))? are in (\S+?)(?: \(|\. Run the same)",
        str(ended.value),
    )
    assert kept is not None and kept[2] == str(export), str(ended.value)
    rows = pd.read_csv(export, sep="\t", dtype=str)
    assert rows["ASSIGNMENT:assignment_id"].nunique() == int(kept[1].replace(",", "")) > 0
    assert "closed by hand is reopened" in str(ended.value) and "nothing is paid twice" in str(ended.value)


def test_a_run_whose_main_pool_stopped_short_says_so_on_its_own_page(prefect_harness, emu, tmp_path):
    """A 10,000-image service run whose main pool expired at 96% (67,635 answers, $1,795.74 paid
    with the exams) failed with a page whose Artifacts tab read "This run did not produce any
    artifacts": only a stop for money got the run's overview (why, what the key was charged, the
    sub-flow runs). A wait that timed out is the same story, and is the one here."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.pipeline import crowdclust_pipeline
    from tasks.toloka_api import RunRegistry

    key = "e2e-timeout-page"
    params = _params(emu, tmp_path, run_key=key, wait={"poll_seconds": 0.2, "timeout_seconds": 0.5})
    state = crowdclust_pipeline(params, return_state=True)
    assert state.is_failed() and "(wait.timeout_seconds)" in str(state.message), state.message
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["run-overview"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert len(found) == 1, found
    overview = str(found[0].data)
    assert overview.startswith("**Stopped before the end**: `pool ") and "(wait.timeout_seconds)" in overview
    charged = RunRegistry(make_client(params.toloka), key).spent()
    assert f"Charged so far under run key `{key}`: ${charged:,.2f}." in overview, overview
    assert "| crowdclust-labelling |" in overview and "| Failed |" in overview, overview


def test_failure_hook_closes_the_pools_it_opened(prefect_harness, emu, tmp_path):
    from flows.labelling import labelling
    from tasks.wait import WaitTimeout

    params = _params(emu, tmp_path, run_key="e2e-timeout", wait={"poll_seconds": 0.2, "timeout_seconds": 0.5})
    with pytest.raises(
        WaitTimeout, match=r"\(wait.timeout_seconds\): at the last poll \d+% done, [\d,]+ answers? submitted"
    ) as ended:
        labelling(params)
    # What the pool holds is paid whatever happens next: it is exported, and the error says how to go
    # on. Its counts add up: what the last poll counted, and what was accepted between it and the close.
    export = RunFolder.of(params).export("main")
    kept = re.search(
        r"The pool is closed; its ([\d,]+) accepted answers?(?: \(([\d,]+) at the last poll, ([\d,]+) "
        r"accepted after it\))? are in (\S+?)(?: \(|\. Run the same)",
        str(ended.value),
    )
    assert kept is not None and kept[4] == str(export), str(ended.value)
    rows = pd.read_csv(export, sep="\t", dtype=str)
    exported = int(kept[1].replace(",", ""))
    assert rows["ASSIGNMENT:assignment_id"].nunique() == exported
    if kept[2] is not None:
        polled, after = int(kept[2].replace(",", "")), int(kept[3].replace(",", ""))
        assert polled == ended.value.stats.approved_assignments_count and polled + after == exported
        if ended.value.stats.submitted_assignments_count:  # else "nobody answered in the first ..."
            assert f"({polled:,} of them accepted)" in str(ended.value)
    assert "nothing is paid twice" in str(ended.value)
    objects = _objects(params)
    assert len(objects["pools"]) == 2
    assert all(str(p.status.value) == "CLOSED" for p in objects["pools"]), [
        p.status for p in objects["pools"]
    ]
    assert all(str(t.status.value) == "CLOSED" for t in objects["trainings"])


def test_token_appears_nowhere(scenario, prefect_harness, results_dir):
    # The stages' results went to the folder Prefect's own setting names (tests/fixtures/prefect.py).
    assert len([p for p in results_dir.rglob("*") if p.is_file()]) >= 6
    for folder in (scenario["params"].run_dir, results_dir):
        for path in folder.rglob("*"):
            if path.is_file():  # a result's pickle is base64 text: searched decoded
                assert TOKEN.encode() not in persisted_bytes(path), path
    from prefect import get_client

    with get_client(sync_client=True) as client:
        logs = _all_pages(lambda offset: client.read_logs(limit=200, offset=offset))
        artifacts = _all_pages(lambda offset: client.read_artifacts(limit=200, offset=offset))
        flow_runs = _all_pages(lambda offset: client.read_flow_runs(limit=200, offset=offset))
    assert len(logs) > 20 and artifacts and flow_runs
    assert all(TOKEN not in (log.message or "") for log in logs)
    assert all(TOKEN not in json.dumps(a.data, default=str) + str(a.description) for a in artifacts)
    assert all(TOKEN not in json.dumps(r.parameters, default=str) for r in flow_runs)


def test_aggregate_subflow_reaggregates_an_export_with_other_settings(scenario, prefect_harness, tmp_path):
    from flows.aggregate import aggregate_export
    from tasks.params import AggregationParams

    params = scenario["params"]
    result = aggregate_export(
        out_dir=tmp_path,
        export=params.run_dir / "assignments_main.tsv",
        aggregation=AggregationParams(method="coassociation"),
        seed=1,
        dataset=params.dataset,
    )
    assert result.metrics is not None and result.metrics["ari"] >= 0.8
    table = pd.read_csv(tmp_path / "clusters.csv")
    assert len(table) == 82 and {"item", "cluster", "class"} <= set(table.columns)


def test_an_image_the_dataset_spells_otherwise_keeps_its_class(prefect_harness, tmp_path):
    """A catalogue clusters an image re-spelled in its file (`https://h:443/a.png` for
    `https://h/a.png`) under the spelling that was clustered; read by the file's spelling, that image
    had no class: `clusters.csv` left its `class` blank, and a file of 100 images that all had one
    was scored `(over the 99 of 100 images with a class)`."""
    from aggregation import generate_crowd
    from flows.aggregate import aggregate_export
    from tasks.params import AggregationParams

    crowd = generate_crowd(40, 4, seed=5)
    export = tmp_path / "export.tsv"
    crowd.write_export(export)
    rows = [(str(item), str(label)) for item, label in crowd.truth.items()]
    respelled = rows[0][0].replace("img.example/", "img.example:443/")
    assert respelled != rows[0][0]
    dataset = tmp_path / "dataset.tsv"
    lines = ["image\tclass", f"{respelled}\t{rows[0][1]}", *(f"{item}\t{label}" for item, label in rows[1:])]
    dataset.write_text("\n".join(lines) + "\n")

    result = aggregate_export(
        out_dir=tmp_path / "out",
        export=export,
        aggregation=AggregationParams(method="coassociation"),
        dataset=dataset,
    )
    assert result.metrics is not None and result.metrics["n_items"] == 40
    table = pd.read_csv(tmp_path / "out" / "clusters.csv", dtype=str)
    assert len(table) == 40 and table["class"].notna().all()
    assert table.set_index("item").loc[rows[0][0], "class"] == rows[0][1]


def test_an_aggregate_run_started_on_its_own_shows_its_clusters_on_its_page(prefect_harness, tmp_path):
    """The `reaggregate` deployment writes no report: re-clustering a 10,000-image export ended on a
    page whose Artifacts tab read "This run did not produce any artifacts", its log saying "487
    thumbnails embedded for the galleries" that nothing showed. Started on its own it now shows its
    galleries and figures; inside a pipeline the top-level run does (with the report), not it."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from aggregation import generate_crowd
    from flows.aggregate import aggregate_export
    from tasks.params import AggregationParams

    crowd = generate_crowd(40, 4, seed=5)
    export = tmp_path / "export.tsv"
    crowd.write_export(export)
    alone = aggregate_export(
        out_dir=tmp_path / "alone",
        export=export,
        aggregation=AggregationParams(method="coassociation"),
        return_state=True,
    )

    @flow
    def pipeline_like() -> str:
        inner = aggregate_export(
            out_dir=tmp_path / "inner",
            export=export,
            aggregation=AggregationParams(method="coassociation"),
            return_state=True,
        )
        return str(inner.state_details.flow_run_id)

    inner_id = pipeline_like()

    def published(run_id: object) -> dict[str, Any]:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        return {a.key: a for a in found if a.key}

    result = alone.result()
    shown = published(alone.state_details.flow_run_id)
    assert set(shown) == {"cluster-galleries", "aggregation-metrics"}, shown
    gallery = str(shown["cluster-galleries"].data)
    assert gallery.startswith(f"40 images in {result.info.n_clusters} clusters")
    assert gallery.endswith(f"Every image's cluster: `{tmp_path / 'alone' / 'clusters.csv'}`")
    rows = json.loads(shown["aggregation-metrics"].data)
    assert rows[:2] == [
        {"metric": "clusters", "value": result.info.n_clusters},
        {"metric": "images", "value": 40},
    ]
    assert str(shown["aggregation-metrics"].description).startswith("coassociation: ")
    assert published(inner_id) == {}


def test_the_aggregations_log_shows_the_first_cluster_sizes_not_thousands(prefect_harness, tmp_path):
    """A co-association re-clustering of a 4,000-image catalogue logged `1618 clusters, sizes [438,
    388, ...]` with every size: one log line of 4,962 characters on the run's page. It says the
    first 20 and how many more, as the run's last lines do (every size is in clusters.csv)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from aggregation import generate_crowd
    from flows.aggregate import aggregate_export
    from tasks.params import AggregationParams

    export = tmp_path / "export.tsv"
    generate_crowd(120, 30, seed=1, overlap=2).write_export(export)
    state = aggregate_export(
        out_dir=tmp_path / "out",
        export=export,
        aggregation=AggregationParams(method="coassociation"),
        return_state=True,
    )
    n_clusters = state.result().info.n_clusters
    assert n_clusters > 21  # more sizes than the line shows
    APILogHandler().flush()  # the log worker sends in batches
    run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        said = [log.message for log in client.read_logs(log_filter=run) if "clusters, sizes" in log.message]
    assert len(said) == 1 and said[0].endswith(f", ...] and {n_clusters - 20} more"), said
    assert said[0].count(",") == 21 and said[0].startswith(f"{n_clusters} clusters, sizes [")


def test_aggregating_a_pool_that_is_still_filling_exports_it_again_later(prefect_harness, tmp_path):
    """The aggregate flow given a pool id: each call clusters the answers accepted by then.

    The export is a cached stage; keyed by the pool id alone, a second call an hour later was served
    the first call's export, whatever the crowd had done since."""
    from flows.aggregate import aggregate_export
    from tasks.params import TolokaTarget
    from tests.fixtures.emulator import create_project, create_simple_pool, create_suites

    frozen = EmulatorSettings(port=0, token=TOKEN, catalogue_size=82, seed=0, speed=0)
    with run_in_background(frozen) as emu, pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOLOKA_TOKEN", TOKEN)
        client = make_client(TolokaTarget(url=emu.url))
        pool = create_simple_pool(client, create_project(client, "still filling").id, "filling", 3)
        urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(82)]
        create_suites(client, pool.id, [urls[k : k + 10] for k in range(0, 72, 3)])
        client.open_pool(pool.id)
        emu.advance(60)

        def rows() -> int:
            # The `reaggregate` deployment's form holds a default export as well: the pool id wins
            # (before, that export was read: another run's answers, or a FileNotFoundError).
            other = tmp_path / "another-runs-assignments.tsv"
            aggregate_export(
                out_dir=tmp_path, export=other, pool_id=pool.id, toloka=TolokaTarget(url=emu.url)
            )
            return len(pd.read_csv(tmp_path / "assignments_main.tsv", sep="\t"))

        early = rows()
        for _ in range(200):
            if client.get_pool(pool.id).status.value == "CLOSED":
                break
            emu.advance(300)
        assert 0 < early < rows() == 24 * 3  # 24 HITs of one task, 3 answers each


def _all_pages(read: Any) -> list[Any]:
    items: list[Any] = []
    while page := read(len(items)):
        items.extend(page)
    return items


def test_a_second_round_shows_again_what_only_the_prior_placed(prefect_harness, emu, tmp_path):
    """Each image in 2 HITs of 10 with 3 answers: the first clustering lists the images no chain of
    majority answers ties to their cluster. The second round puts them in HITs of their own with at
    most two anchors each, in a pool of its own, and the clusters come from both rounds' answers;
    the spend counts both pools.
    Run again, it reuses both rounds instead of paying twice."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import crowdclust_pipeline
    from tasks.export_format import parse_array_cell
    from tasks.second_round import SECOND_ROUND_POOL

    hits = {"hits_per_item": 2, "overlap": 3, "second_round_share": 0.5}
    params = _params(emu, tmp_path, run_key="e2e-second", hits=hits, intruders={"enabled": False})
    summary = crowdclust_pipeline(params)
    done = summary.second_round
    assert done is not None and 10 <= done.images <= 41, summary
    run_dir = params.run_dir
    first = pd.read_csv(run_dir / "assignments_main.tsv", sep="\t")
    second = pd.read_csv(run_dir / "assignments_second.tsv", sep="\t")
    listed = set(
        json.loads((run_dir / "rounds" / "second" / "hits.json").read_text())["coverage"]["per_item"]
    )
    shown = [set(parse_array_cell(cell)) for cell in second["INPUT:images"]]
    assert len(listed) == done.images and set().union(*shown) >= listed
    assert all(len(hit - listed) <= 2 for hit in shown)  # at most two anchors per HIT
    assert done.assignments == second["ASSIGNMENT:assignment_id"].nunique()
    assert summary.aggregation.n_assignments == done.assignments + first["ASSIGNMENT:assignment_id"].nunique()
    objects = _objects(params)
    roles = sorted(str(p.private_comment).rsplit(":", 1)[1] for p in objects["pools"])
    assert roles == sorted(["exam-pool", "main-pool", SECOND_ROUND_POOL]), roles
    reward = params.hits.reward * (1 + params.budget.fee_rate)
    assert summary.cost.spent >= (len(first) + len(second)) * reward - 1e-6
    page = (run_dir / "report.html").read_text()
    assert "<h2>Second round</h2>" in page
    shown = f"{done.images} images shown again ({done.hits} HITs, {done.assignments} answers)"
    assert f"second round:       {shown}" in describe(summary).splitlines()
    # Its own progress bar and HIT plan in the UI, not a second "main pool" beside the first.
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["second-round-pool-progress", "second-round-hit-coverage"])
            )
        )
    progress = [a for a in found if a.key == "second-round-pool-progress"]
    assert any(
        str(a.description).startswith(f"second-round pool {done.main_pool}: 100% complete") for a in progress
    )
    assert any(a.key == "second-round-hit-coverage" for a in found), found
    # The first round's estimate line is not the whole run's: the log says where the second's is.
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = [r.id for r in client.read_flow_runs(limit=200) if "e2e-second" in r.name]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs)))
    said = [log.message for log in logs if "is not in this estimate" in log.message]
    assert said == [
        "the second round (hits.second_round_share 0.5) is not in this estimate: it is estimated and "
        "checked when it is planned, after this round's aggregation (the check before the run counted "
        "up to 41 of its images)"
    ], said
    # The second round's check covers the exam pool the first round paid: not "a resumed run".
    checks = [log.message for log in logs if log.message.startswith("cost estimate:")]
    assert len(checks) >= 2 and not any("a resumed run" in line for line in checks), checks
    assert checks[-1].endswith("covers (earlier in this run, or by an earlier attempt of it)"), checks
    # Its setup lines call it what its poll lines do: they read "main pool 7" beside "second-round pool 7".
    messages = [log.message for log in logs]
    assert f"second-round pool {done.main_pool} holds the {done.hits} planned HITs" in messages, messages
    assert any(
        line.startswith("labelling objects: ") and line.endswith(f", second-round pool {done.main_pool}")
        for line in messages
    ), messages
    assert not any(f"main pool {done.main_pool}" in line for line in messages), messages

    again = crowdclust_pipeline(params)
    assert again.second_round == done and len(_objects(params)["pools"]) == 3


def test_a_catalogue_round_is_followed_by_its_second_round_once(prefect_harness, emu, tmp_path):
    """A growing catalogue with `hits.second_round_share`: its round (each image in 2 HITs of 3
    answers) is followed by a second round over the images only the prior placed, at most half the
    round's new items, in a pool whose role names the round.
    1. The run fails once that pool is created and its HITs uploaded (the wait raises).
    2. Run again on the same file: no new round; the second round resumes its pool (no second
       pool, no HIT uploaded twice), and the clusters come from both pools.
    3. Run again: the round is not shown again, nothing is created or paid, and the clustering
       still uses the second round's answers."""
    import flows.labelling
    import flows.second_round
    from flows.catalogue import cluster_catalogue
    from tasks.rounds import ROUND_ROLE, SECOND_ROUND_ROLE, second_round_role

    hits = {"hits_per_item": 2, "overlap": 3, "second_round_share": 0.5}
    key = f"e2e-catalogue-second-{uuid.uuid4().hex[:6]}"
    params = _params(emu, tmp_path, run_key=key, hits=hits, intruders={"enabled": False})
    collect = flows.labelling.collect_labels

    class FailingWait:
        def with_options(self, **options: Any) -> Any:
            def wait(*args: Any, **kwargs: Any) -> None:
                raise ForcedFailure("forced failure before the second round's wait")

            return wait

    def wait_fails_in_second_rounds(*args: Any, **kwargs: Any) -> Any:
        if not args[-1].startswith(SECOND_ROUND_ROLE):
            return collect(*args, **kwargs)
        with pytest.MonkeyPatch.context() as inner:
            inner.setattr(flows.labelling.wait, "wait_labelling_task", FailingWait())
            return collect(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.second_round, "collect_labels", wait_fails_in_second_rounds)
        with pytest.raises(ForcedFailure):
            cluster_catalogue(params)
    failed = _objects(params)
    pools = {str(p.private_comment).rsplit(":", 1)[1]: str(p.id) for p in failed["pools"]}
    round_role = next(role for role in pools if role.startswith(ROUND_ROLE))
    round_id = round_role[len(ROUND_ROLE) :]
    second_role = second_round_role(round_id)
    assert sorted(pools) == sorted(["exam-pool", round_role, second_role]), pools
    uploaded = failed["suites"][pools[second_role]]
    assert uploaded > 0

    resumed_run = cluster_catalogue(params, return_state=True)
    summary = resumed_run.result()
    done, catalogue = summary.second_round, summary.catalogue
    assert catalogue is not None and catalogue.new_items == 0 and catalogue.round is None
    assert done is not None and params.hits.size <= done.images <= 41, summary
    assert done.main_pool == pools[second_role] and done.hits == uploaded
    resumed = _objects(params)
    assert len(resumed["pools"]) == 3 and resumed["suites"][pools[second_role]] == uploaded
    assert catalogue.round_pools == (pools[round_role], pools[second_role])
    run_dir = params.run_dir
    second = pd.read_csv(run_dir / "assignments_second.tsv", sep="\t")
    both = pd.read_csv(run_dir / "assignments_all.tsv", sep="\t")
    assert done.assignments == second["ASSIGNMENT:assignment_id"].nunique() > 0
    assert summary.aggregation.n_assignments == both["ASSIGNMENT:assignment_id"].nunique() > done.assignments
    plan = json.loads((run_dir / "rounds" / f"{round_id}-second" / "hits.json").read_text())
    assert len(plan["coverage"]["per_item"]) == done.images
    assert summary.cost.spent > 0 and summary.cost.estimate is not None
    page = (run_dir / "report.html").read_text()
    assert "<h2>Second round</h2>" in page and "<h2>Catalogue</h2>" in page
    assert f"<td>{pools[round_role]}, {pools[second_role]}</td>" in page  # the pools aggregated
    # The run's overview tells its two aggregations apart: the round's, then both rounds' (it listed
    # two identical `crowdclust-aggregate | <name>` rows).
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (overview,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["run-overview"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[resumed_run.state_details.flow_run_id]),
            )
        )
    rows = [row for row in str(overview.data).splitlines() if row.startswith("| crowdclust-aggregate |")]
    names = [re.sub(r"^\[(.*)\]\(.*\)$", r"\1", row.split(" | ")[1]) for row in rows]  # a UI link's text
    assert len(names) == 2 and names[1] == f"{names[0]} with the second round", rows

    # Once more, the file's truth now blank on one row: the dataset's warnings reach the catalogue
    # run's log as a single run's (a catalogue showed none of them).
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    lines = params.dataset.read_text().splitlines()
    cells = lines[5].split("\t")
    cells[1] = ""
    blank = tmp_path / "blank-class.tsv"
    blank.write_text("\n".join([*lines[:5], "\t".join(cells), *lines[6:]]) + "\n")
    state = cluster_catalogue(params.model_copy(update={"dataset": blank}), return_state=True)
    again = state.result()
    assert again.catalogue.new_items == 0 and again.second_round is None
    assert again.cost.spent == 0 and again.catalogue.round_pools == catalogue.round_pools
    assert again.aggregation.n_assignments == summary.aggregation.n_assignments
    assert len(_objects(params)["pools"]) == 3
    # Both pools' exports come back Cached: the second round's pool was exported again on every
    # unchanged run (its first export was keyed by its wait, the later ones by its analytics).
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=this_run)
    exports = [task.state_name for task in tasks if task.name.startswith("export-results")]
    assert exports == ["Cached", "Cached"], exports
    APILogHandler().flush()
    one_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        logged = [log.message for log in client.read_logs(log_filter=one_run) if log.level == logging.WARNING]
    assert any("1 image(s) with a blank `class` (line 6)" in line for line in logged), logged


def test_a_catalogue_round_counts_the_earlier_rounds_evaluations_as_spent(prefect_harness, emu, tmp_path):
    """A round's budget check left every intruder pool of the key out of what was already spent
    (right for a pipeline, which may resume its one evaluation; wrong for a catalogue, whose earlier
    rounds' evaluations are paid): a round opened and paid its pool, then its evaluation was refused.
    Round 1 with an evaluation; round 2 (20 new images) with max_spend below what the key spent
    plus round 2's estimate: refused before its pool exists. Then round 2 with room for it: its
    estimate leaves out what round 1 paid for the shared exam pool."""
    from flows.catalogue import cluster_catalogue
    from tasks.budget import BudgetExceeded
    from tasks.rounds import ROUND_ROLE
    from tasks.toloka_api import RunRegistry

    lines = (ROOT / "configs" / "demo-shoes" / "dataset.tsv").read_text().splitlines()
    dataset = tmp_path / "catalogue.tsv"
    dataset.write_text("\n".join(lines[:41]) + "\n")
    key = f"e2e-catalogue-budget-{uuid.uuid4().hex[:6]}"
    small = {"hits_per_item": 2, "overlap": 3}
    first = _params(emu, tmp_path, run_key=key, dataset=str(dataset), hits=small, intruders={"n_hits": 20})
    summary = cluster_catalogue(first)
    assert list(summary.timings) == ["labelling", "aggregation", "intruders"]  # in report.html too
    registry = RunRegistry(make_client(first.toloka), key)
    spent = registry.spent()
    # A first run spent all the key has; the rounds' shared exam pool counted once.
    assert (
        summary.cost.spent == pytest.approx(spent, abs=0.01) and summary.cost.by_run_key == summary.cost.spent
    )
    evaluated = registry.spent(lambda role: role.startswith("intruders-pool-"))
    assert evaluated > 0
    dataset.write_text("\n".join(lines[:61]) + "\n")
    # Room for round 2 only if the first evaluation were not counted.
    budget = {"max_spend": round(spent + 1.0, 2)}
    second = _params(
        emu, tmp_path, run_key=key, dataset=str(dataset), hits=small, intruders={"n_hits": 20}, budget=budget
    )
    with pytest.raises(BudgetExceeded, match=r"already spent by this run key"):
        cluster_catalogue(second)
    roles = [str(p.private_comment).rsplit(":", 1)[1] for p in _objects(second)["pools"]]
    assert sum(role.startswith(ROUND_ROLE) for role in roles) == 1, roles  # round 2 opened nothing

    # With the budget for it, round 2's estimate is what round 2 may spend: the exam pool that
    # round 1 paid is shown as paid, not counted again (a 10,000 -> 10,500 round showed $45.37 and
    # spent $29.77).
    exam_paid = registry.spent(lambda role: role == "exam-pool")
    assert exam_paid > 0
    roomy = second.model_copy(update={"budget": second.budget.model_copy(update={"max_spend": 1000.0})})
    grown_run = cluster_catalogue(roomy, return_state=True)
    grown = grown_run.result()
    estimate = grown.cost.estimate
    assert estimate is not None and grown.catalogue.new_items == 20
    assert estimate.total < estimate.main + estimate.exam + estimate.intruders
    assert estimate.exam_paid == pytest.approx(exam_paid, abs=0.01)
    assert estimate.total == pytest.approx(
        estimate.main + max(estimate.exam - exam_paid, 0.0) + estimate.intruders, abs=0.01
    )
    assert 0 < grown.cost.spent <= estimate.total
    saved = json.loads((second.run_dir / "summary.json").read_text())["cost"]["estimate"]
    assert saved["exam_paid_before_this_run"] == pytest.approx(exam_paid, abs=0.01)
    assert saved["total"] == pytest.approx(saved["main"] + saved["exam"] + saved["intruders"], abs=0.01)
    assert f"(estimate ${estimate.total:.2f})" in describe(grown)
    page = (second.run_dir / "report.html").read_text()
    assert html.escape(estimate.describe()) in page and "was paid before this run" in estimate.describe()
    # Its poll lines count that exam pool as spent before the round, as the estimate line does: they
    # read "with the exams $0.36 of the $997.66 left" (the $0.31 in both) under "exam $0.00 (the exam
    # pool's $0.31 was paid before this run, not spent again) ...; already spent outside this estimate".
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    one_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[grown_run.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        lines = [log.message for log in client.read_logs(log_filter=one_run)]
    polls = [line for line in lines if line.startswith("main pool ") and "% complete" in line]
    left = re.search(
        r"; with the exams \$([\d.]+) of the \$([\d,.]+) left of budget.max_spend "
        r"\(\$1,000.00, of which \$([\d.]+) was spent before this round\)$",
        polls[-1] if polls else "",
    )
    assert left is not None, polls
    assert float(left[3]) == pytest.approx(spent, abs=0.01)  # round 1's pools, its exams included
    assert float(left[2].replace(",", "")) == pytest.approx(1000.0 - spent, abs=0.01)
    assert float(left[1]) <= estimate.main + estimate.exam_due + 0.01  # this round's own charges


def test_a_catalogue_runs_log_closes_as_a_pipeline_runs_does(prefect_harness, emu, tmp_path):
    """A catalogue run's log closed on a line of its own (`...; 7 clusters from 1 pool, ARI 0.536,
    spent $2.07 this run`) without the intruder accuracy of a pipeline run's `done: ...` line, and
    the aggregation's warnings were only in the aggregation sub-flow's log (report.html and the
    `run-overview` artifact list them). Each HIT here has a single answer: after what the round
    labelled, the top-level log closes with a pipeline run's `done:` line, then that warning."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    from flows.catalogue import cluster_catalogue

    lines = (ROOT / "configs" / "demo-shoes" / "dataset.tsv").read_text().splitlines()
    dataset = tmp_path / "catalogue.tsv"
    dataset.write_text("\n".join(lines[:41]) + "\n")
    key = f"e2e-catalogue-end-{uuid.uuid4().hex[:6]}"
    hits = {"hits_per_item": 2, "overlap": 1}
    params = _params(emu, tmp_path, run_key=key, dataset=str(dataset), hits=hits, intruders={"n_hits": 20})
    state = cluster_catalogue(params, return_state=True)
    summary = state.result()
    assert summary.intruder_accuracy is not None and summary.catalogue.round is not None
    (single,) = [one for one in summary.aggregation.warnings if "have a single answer" in one]
    APILogHandler().flush()
    one_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=one_run, sort=LogSort.TIMESTAMP_ASC)
    said = [(log.level, log.message) for log in logs if not log.message.startswith("Finished in state")]
    round_id = summary.catalogue.round
    labelled = f"catalogue {key}: round {round_id} labelled (40 new items); clusters from 1 pool"
    # Then the aggregation's warnings, every one: which others come with the single-answer one
    # depends on the answers the crowd gave (one run of the suite also had the warning of images
    # in a cluster with parts no answer compared).
    warned = [(logging.WARNING, f"aggregation: {one}") for one in summary.aggregation.warnings]
    assert said[-2 - len(warned) :] == [
        (logging.INFO, labelled),
        (logging.INFO, f"done: {summary.describe()}"),
        *warned,
    ], said[-5:]
    assert (logging.WARNING, f"aggregation: {single}") in warned
    assert f", intruder accuracy {summary.intruder_accuracy:.3f}, " in summary.describe()


def test_a_run_folder_cut_short_by_a_kill_is_refused_then_made_whole_by_the_same_command(
    scenario, prefect_harness, emu
):
    """Files of a finished run's folder cut short as a kill while they were written left them (an
    older version wrote them in place): an evaluation started on its own refuses the cut
    `clusters.csv` before it creates anything (it made, and paid for, intruder HITs from the rows
    left), and the same pipeline run again makes every file whole from its cached stages."""
    from flows.evaluate import evaluate_clusters
    from flows.pipeline import crowdclust_pipeline
    from tasks.run_folder import DamagedFile

    params = scenario["params"]
    folder = RunFolder.of(params)
    names = ("clusters.csv", "assignments_main.tsv", "thumbnails.json", "summary.json", "report.html")
    whole = {name: (folder.root / name).read_bytes() for name in names}
    for name in names:
        (folder.root / name).write_bytes(whole[name][: len(whole[name]) * 2 // 3])  # where the kill came
    pools = len(_objects(params)["pools"])
    with pytest.raises(DamagedFile, match=r"clusters\.csv is cut short.*run the same `crowdclust run`"):
        evaluate_clusters(params)
    assert len(_objects(params)["pools"]) == pools  # nothing created, nothing paid
    state = crowdclust_pipeline(params, return_state=True)
    assert state.is_completed(), state.message
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:  # the labelling's answers came from the cache
        waits = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="wait-labelling"))
        )
    assert max(waits, key=lambda run: run.expected_start_time).state_name == "Cached"
    assert {name: (folder.root / name).read_bytes() for name in names[:3]} == {n: whole[n] for n in names[:3]}
    assert json.loads((folder.root / "summary.json").read_text())["clusters"] == scenario["summary"].clusters
    assert (folder.root / "report.html").read_text().rstrip().endswith("</html>")
    assert len(_objects(params)["pools"]) == pools
    assert not list(folder.root.glob(".*.tmp"))


def test_an_evaluation_started_on_its_own_leaves_the_runs_files_and_writes_its_own(scenario, prefect_harness):
    """The `evaluate` deployment on a finished run's key replaced the intruder HITs, answers and
    chart of the run's folder with its own, while report.html and summary.json still described the
    run's evaluation, and its cost was in no file. (Last in the module: it adds to the key's spend.)"""
    from flows.evaluate import evaluate_clusters

    params, summary = scenario["params"], scenario["summary"]
    run_dir = params.run_dir
    kept = ("summary.json", "report.html", "intruder_hits.json", "assignments_intruders.tsv", "intruders.png")
    before = {name: (run_dir / name).read_bytes() for name in kept}
    fewer = params.model_copy(
        update={
            "intruders": params.intruders.model_copy(update={"n_hits": 20}),
            "budget": params.budget.model_copy(update={"max_spend": 1000.0}),
        }
    )
    result = evaluate_clusters(fewer, skill_id=summary.toloka_ids.skill)
    assert result.n_hits == 20 and result.spent and result.spent > 0
    assert {name: (run_dir / name).read_bytes() for name in kept} == before
    [folder] = list((run_dir / "evaluations").iterdir())
    saved = json.loads((folder / "evaluation.json").read_text())
    assert saved["n_hits"] == 20 and saved["spent"] == pytest.approx(result.spent)
    assert saved["accuracy"] == pytest.approx(result.accuracy)
    assert len(json.loads((folder / "intruder_hits.json").read_text())) == 20
    answers = pd.read_csv(folder / "assignments_intruders.tsv", sep="\t")
    assert answers["ASSIGNMENT:assignment_id"].nunique() == result.n_assignments
    from prefect import get_client  # its cost in the UI too: it writes no report
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-metrics"]))
        )
    table = json.loads(found[-1].data) if isinstance(found[-1].data, str) else found[-1].data
    assert {"metric": "cost_spent", "value": f"${result.spent:,.2f}"} in table


def test_the_aggregate_flow_reads_an_export_as_the_command_does(prefect_harness, tmp_path):
    """Worker ids `0019` and `19` are two workers for the flow as for `crowdclust aggregate`.

    The flow read the file with a plain `pd.read_csv`, which made both the number 19: one worker
    fewer than the command counted, and other clusters when their answers disagree.
    """
    import subprocess
    import sys

    from aggregation import generate_crowd
    from flows.aggregate import aggregate_export
    from tasks.params import AggregationParams

    crowd = generate_crowd(40, 4, seed=5)
    workers = sorted(crowd.export["ASSIGNMENT:worker_id"].unique())
    # Every worker id numeric-looking; two of them differ only by leading zeros.
    numeric = {worker: f"{k:04d}" for k, worker in enumerate(workers)}
    numeric[workers[1]] = "0"
    crowd.export["ASSIGNMENT:worker_id"] = crowd.export["ASSIGNMENT:worker_id"].map(numeric)
    export = tmp_path / "export.tsv"
    crowd.write_export(export)

    result = aggregate_export(
        out_dir=tmp_path / "flow", export=export, aggregation=AggregationParams(method="coassociation")
    )
    args = [str(export), "-o", str(tmp_path / "cli.csv"), "--method", "coassociation"]
    command = subprocess.run(
        [sys.executable, "-m", "crowdclust.cli", "aggregate", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert command.returncode == 0, command.stderr
    assert f"workers     {len(workers):,}" in command.stdout
    assert result.info.n_workers == len(workers)
    cli = pd.read_csv(tmp_path / "cli.csv").set_index("item")["cluster"]
    assert result.clusters.reindex(cli.index).tolist() == cli.tolist()
