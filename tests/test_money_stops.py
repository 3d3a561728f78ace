"""Money when a run stops for it: an account whose balance runs out, a top-up, the price Toloka
charges, with the real flow, the real toloka-kit client and an emulator per test (each with its own
account). Small runs: the demo catalogue at 30 images, overlap 3, one exam, no intruder evaluation.

In the `money` lane (tests/conftest.py): the runs' pages are read back from its Prefect server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorSettings, run_in_background
from tasks.params import PipelineParams, load_params
from tests.fixtures.emulator import make_client, run_objects, small_run_config

pytestmark = pytest.mark.slow

TOKEN = "money-stops-token"
MAX_SPEND = 3.0


@contextmanager
def _account(
    folder: Path,
    key: str,
    monkeypatch: Any,
    size: int = 30,
    fee_rate: float | None = None,
    changes: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[tuple[Any, PipelineParams]]:
    """An emulator of `size` demo images with its own account (`settings`: balance, speed), and the
    small run's params for it under run key `key`, with `changes` to the config (`fee_rate`:
    `budget.fee_rate` instead of the platform's 0.3)."""
    emulator = EmulatorSettings(port=0, token=TOKEN, catalogue="demo-shoes", catalogue_size=size, **settings)
    with run_in_background(emulator) as running:
        monkeypatch.setenv("TOLOKA_TOKEN", running.token)
        monkeypatch.setenv("CROWDCLUST_LOCAL_URL", running.url)
        config = small_run_config(folder, running.url, "money", MAX_SPEND)
        params = load_params(config, {"run_key": key, **(changes or {})})
        if fee_rate is not None:
            budget = params.budget.model_copy(update={"fee_rate": fee_rate})
            params = params.model_copy(update={"budget": budget})
        yield running, params


@contextmanager
def _poor_account(
    folder: Path, key: str, monkeypatch: Any, size: int = 30, changes: dict[str, Any] | None = None
) -> Iterator[tuple[Any, PipelineParams]]:
    """An account that holds $0.80, and params at `budget.fee_rate: 0.0` (the platform takes 30%):
    an estimate of about $0.78 passes the balance check and the run costs about $1.00, so the
    balance runs out in the main pool. `changes`: to the config (e.g. its dataset)."""
    with _account(folder, key, monkeypatch, size, 0.0, changes, balance=0.8) as accounted:
        yield accounted


def _objects(emu: Any, key: str) -> dict[str, Any]:
    return run_objects(make_client(emu), key)


def test_an_account_that_cannot_pay_the_estimate_is_refused_before_anything_opens(
    prefect_harness, monkeypatch, tmp_path
):
    """$0.50 on the account for a run estimated at $1.01: before, the budget check passed, the pools
    opened, and Toloka closed the main pool for lack of balance half done (a user: $9.84 of $31.82
    paid, the answers not even exported)."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.budget import BalanceTooLow

    with _account(tmp_path, "money-balance", monkeypatch, balance=0.5) as (running, params):
        with pytest.raises(
            BalanceTooLow, match=r"balance \$0\.50 is below what this stage may still cost, \$1\.01"
        ) as refused:
            crowdclust_pipeline(params)
        assert "run the same command again (or Retry the flow run)" in str(refused.value)  # UI users too
        assert _objects(running, "money-balance")["pools"] == {}


def test_after_a_top_up_the_same_run_finishes_the_pool_the_balance_stopped(
    prefect_harness, monkeypatch, tmp_path
):
    """The balance ran out in the main pool (Toloka closed it, NOT_ENOUGH_BALANCE); the run exported
    what was accepted and said to top up and run the same command again. That command was handed the
    cached wait, the same stop and the same advice, however much was added: the pool could not be
    finished under its key. Now it finishes the same pool, and the run's cost is what left the account.

    `budget.fee_rate: 0.0` (the platform takes 30%) lets an estimate of $0.78 pass the balance check
    with $0.80 on the account, and the run costs about $1.00. Run again before the top-up, it is
    refused up front at Toloka's price (it passed: what was paid at that price left nothing due
    against the config's estimate, and the pool opened to be stopped again)."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.budget import BalanceRanOut, BalanceTooLow
    from tasks.toloka_api import RunRegistry

    with _poor_account(tmp_path, "money-topup", monkeypatch) as (running, params):
        with pytest.raises(BalanceRanOut, match="balance ran out"):  # its own name in the UI
            crowdclust_pipeline(params)
        main = _objects(running, "money-topup")["pools"]["main-pool"]
        # The run's own page: it read "This run did not produce any artifacts" after money was paid.
        stopped = _latest_overview()
        charged = RunRegistry(make_client(running), "money-topup").spent()
        assert "Stopped before the end" in stopped and "balance ran out" in stopped, stopped
        assert f"Charged so far under run key `money-topup`: ${charged:.2f}." in stopped, stopped
        assert "| crowdclust-labelling |" in stopped and "Failed" in stopped, stopped
        assert main.last_close_reason.value == "NOT_ENOUGH_BALANCE"
        with pytest.raises(BalanceTooLow, match="top up the account"):
            crowdclust_pipeline(params)
        assert _objects(running, "money-topup")["pools"]["main-pool"].status.value == "CLOSED"
        running.control("top-up", method="POST", amount=1.0)  # the requester tops up the account
        summary = crowdclust_pipeline(params)
        found = _objects(running, "money-topup")
        client = make_client(running)
        left = float(client.get_requester().balance)
        accepted = len(list(client.get_assignments(pool_id=main.id, status="ACCEPTED")))
    assert (
        found["pools"]["main-pool"].id == main.id
        and found["pools"]["main-pool"].last_close_reason.value == "COMPLETED"
    )
    assert accepted == 9 * 3  # every HIT at its overlap, none paid twice
    assert summary.cost.spent == pytest.approx(0.8 + 1.0 - left, abs=1e-6)


def test_a_catalogue_round_the_balance_stopped_fails_and_a_top_up_finishes_its_pool(
    prefect_harness, monkeypatch, tmp_path
):
    """A growing catalogue's round whose main pool Toloka closed for lack of balance went on as if
    it had completed: the run clustered the part of the round that was answered (and kept that
    export cached, so the round's later answers never reached the clusters), showed the round as
    completed in its rounds table and ended Completed (or, with an evaluation, failed in its
    balance check saying that no pool was opened). Now the run fails as a single run does, the
    rounds table shows the round not completed, nothing of it is clustered, and after a top-up the
    same deployment run finishes the same pool and clusters all of its answers.

    `budget.fee_rate: 0.0` lets an estimate of $0.78 pass the balance check with $0.80 on the
    account, as in the single run's test above."""
    from flows.catalogue import cluster_catalogue
    from tasks import budget
    from tasks.budget import BalanceRanOut, BalanceTooLow
    from tasks.rounds import ROUND_ROLE

    key = "money-catalogue-topup"
    with _poor_account(tmp_path, key, monkeypatch) as (running, params):
        with pytest.raises(BalanceRanOut, match=r"catalogue round \w+ \(pool \d+\): .*balance ran out"):
            cluster_catalogue(params)
        pools = _objects(running, key)["pools"]
        role = next(role for role in pools if role.startswith(ROUND_ROLE))
        stopped = pools[role]
        assert stopped.last_close_reason.value == "NOT_ENOUGH_BALANCE"
        assert "Stopped before the end" in _latest_artifact("run-overview")
        table = _latest_artifact("catalogue-rounds")
        row = f"| {role[len(ROUND_ROLE) :]} | {stopped.id} | "
        assert row in table and "| not completed |" in table, table
        assert not list(params.runs_dir.glob(f"*{key}*/clusters.csv"))  # no part of a round clustered
        assert list(params.runs_dir.glob(f"*{key}*/rounds/*/assignments_main.tsv"))  # what was paid, kept
        # The price Toloka charged the round's pool is what the key's next stage is checked at (only
        # a single run's `main-pool` was read: a catalogue's rounds were checked at the config's).
        assert budget.price_ratio_seen_task.fn(params.toloka, key, params) == pytest.approx(1.3, abs=0.01)
        # Run again before the top-up: refused, nothing reopened.
        with pytest.raises(BalanceTooLow, match="top up the account"):
            cluster_catalogue(params)
        assert _objects(running, key)["pools"][role].last_close_reason.value == "NOT_ENOUGH_BALANCE"
        running.control("top-up", method="POST", amount=1.0)
        summary = cluster_catalogue(params)
        client = make_client(running)
        left = float(client.get_requester().balance)
        found = _objects(running, key)["pools"]
        accepted = len(list(client.get_assignments(pool_id=stopped.id, status="ACCEPTED")))
    assert sorted(found) == sorted(["exam-pool", role]) and found[role].id == stopped.id
    assert found[role].last_close_reason.value == "COMPLETED"
    assert accepted == summary.aggregation.n_assignments == 9 * 3  # every answer clustered, none paid twice
    assert summary.catalogue.round_pools == (str(stopped.id),)
    assert summary.cost.by_run_key == pytest.approx(0.8 + 1.0 - left, abs=1e-6)
    # The round's cost counts the attempt the balance stopped: the run resumed in its own folder
    # (its wall time is over all of its attempts) reported only what its last one added, the rest as
    # "earlier runs of the catalogue".
    assert summary.attempts is not None and summary.attempts.count == 3  # the refused one too
    assert summary.cost.spent == pytest.approx(summary.cost.by_run_key, abs=1e-6)
    assert summary.cost.earlier_pools == 0.0


def test_a_stopped_catalogue_round_is_finished_before_the_images_added_since(
    prefect_harness, monkeypatch, tmp_path
):
    """The balance stopped a catalogue's round; before the next nightly run, the account was topped
    up and images were added to the file. That run gave the stopped round up: its 30 images and the
    10 new ones made a new round in a new pool, paid again, and the stopped pool's paid answers were
    never clustered. Now the run finishes the stopped round's pool (a warning says the added images
    wait), and the next run labels only the added images, in a round of their own."""
    from emulator import write_catalogue
    from flows.catalogue import cluster_catalogue
    from tasks.budget import BalanceRanOut
    from tasks.rounds import ROUND_ROLE

    key = "money-catalogue-grown"
    write_catalogue("demo-shoes", tmp_path / "all.tsv", size=40, seed=0)
    lines = (tmp_path / "all.tsv").read_text().splitlines()
    dataset = tmp_path / "catalogue.tsv"
    dataset.write_text("\n".join(lines[:31]) + "\n")
    added = {"dataset": str(dataset)}
    with _poor_account(tmp_path, key, monkeypatch, size=40, changes=added) as (running, params):
        with pytest.raises(BalanceRanOut):
            cluster_catalogue(params)
        stopped = next(
            pool for role, pool in _objects(running, key)["pools"].items() if role.startswith(ROUND_ROLE)
        )
        dataset.write_text("\n".join(lines) + "\n")  # 10 images added before the next run
        running.control("top-up", method="POST", amount=2.0)
        finished = cluster_catalogue(params)
        report = finished.report.read_text()  # the next run writes its own in the same folder
        overview = _latest_overview()
        rounds_then = {r: p for r, p in _objects(running, key)["pools"].items() if r.startswith(ROUND_ROLE)}
        client = make_client(running)
        answers = len(list(client.get_assignments(pool_id=stopped.id, status="ACCEPTED")))
        grown = cluster_catalogue(params)
        rounds_now = {r: p for r, p in _objects(running, key)["pools"].items() if r.startswith(ROUND_ROLE)}
    assert [p.id for p in rounds_then.values()] == [stopped.id], rounds_then  # no second pool for them
    assert rounds_then[next(iter(rounds_then))].last_close_reason.value == "COMPLETED"
    assert finished.catalogue.new_items == 30 and finished.catalogue.round_pools == (str(stopped.id),)
    # The summary says which of its 40 images the clusters leave out for now, and the report too.
    assert finished.catalogue.n_items == 40 and finished.catalogue.waiting == 10
    assert "<th>waiting for the next run</th><td>10</td>" in report
    assert "10 images of the catalogue's 40 are in no cluster yet" in overview, overview
    assert grown.catalogue.waiting == 0
    assert answers == finished.aggregation.n_assignments == 9 * 3  # none paid twice, all clustered
    assert grown.catalogue.new_items == 10 and len(rounds_now) == 2
    assert grown.aggregation.n_assignments > finished.aggregation.n_assignments


def test_a_catalogue_round_exported_before_it_completed_is_exported_again_once_it_has(
    prefect_harness, monkeypatch, tmp_path
):
    """A catalogue run that went on after the balance stopped its round (before that stop failed the
    run) exported the round's pool with 34 of its 129 answers, keyed by the pool id alone: after the
    top-up the pool completed, yet every later run clustered those 34 answers (ARI 0.84, 16 images
    left out of clusters.csv). The export is now keyed by the pool's analytics as well."""
    from prefect import flow

    from flows.catalogue import cluster_catalogue
    from tasks import results
    from tasks.budget import BalanceRanOut
    from tasks.rounds import ROUND_ROLE

    key = "money-catalogue-export"
    with _poor_account(tmp_path, key, monkeypatch) as (running, params):
        with pytest.raises(BalanceRanOut):
            cluster_catalogue(params)
        pools = _objects(running, key)["pools"]
        stopped = next(pool for role, pool in pools.items() if role.startswith(ROUND_ROLE))

        @flow
        def export_as_before() -> int:  # what such a run left in the cache
            return len(results.export_task(params.toloka, str(stopped.id)))

        part = export_as_before()
        running.control("top-up", method="POST", amount=1.0)
        summary = cluster_catalogue(params)
    assert 0 < part < 9 * 3
    assert summary.aggregation.n_assignments == 9 * 3


def test_the_intruder_guard_counts_the_platforms_price_once(prefect_harness, monkeypatch, tmp_path):
    """`budget.fee_rate: 0.0` where the platform takes 30%: the evaluation is estimated at Toloka's
    price (1.3x the config's), and its spend guard multiplied that estimate by 1.3 again. With a
    budget that covers the evaluation (a user's: $13.00 of work, $13.68 left), the guard counted
    1.69x the config's price as the worst case, watched every poll and closed the pool at 96%:
    the run failed and asked for a higher max_spend it did not need."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.toloka_api import RunRegistry

    with _account(tmp_path, "money-intruder-price", monkeypatch, speed=600.0) as (running, params):
        cheap = {"fee_rate": 0.0, "max_spend": 10.0}
        params = params.model_copy(update={"budget": params.budget.model_copy(update=cheap)})
        crowdclust_pipeline(params)  # the labelling, paid at Toloka's price
        labelling = RunRegistry(make_client(running), "money-intruder-price").spent()
        evaluation = {"enabled": True, "n_hits": 20, "images_per_hit": 3, "overlap": 2, "reward": 0.02}
        estimate = round(20 * 2 * 0.02 * 1.3, 4)  # $1.04 at Toloka's price; the guard took $1.35
        budget_ = {"fee_rate": 0.0, "max_spend": round(labelling + estimate + 0.06, 2)}
        params = params.model_copy(
            update={
                "intruders": params.intruders.model_copy(update=evaluation),
                "budget": params.budget.model_copy(update=budget_),
            }
        )
        summary = crowdclust_pipeline(params)  # no SpendGuardStopped: the budget covers it
        pools = _objects(running, "money-intruder-price")["pools"]
        intruder_pool = next(pool for role, pool in pools.items() if role.startswith("intruders-pool-"))
    assert intruder_pool.last_close_reason.value == "COMPLETED"
    assert summary.intruders is not None and summary.intruders.n_assignments == 20 * 2
    assert summary.cost.spent <= budget_["max_spend"]
    # The run's estimate carries what the stage was checked against, not the labelling's $0.80.
    assert summary.cost.estimate is not None and summary.cost.estimate.intruders == pytest.approx(estimate)


def _latest_overview() -> str:
    """The text of the newest `run-overview` artifact on the Prefect server."""
    return _latest_artifact("run-overview")


def _latest_artifact(key: str) -> str:
    """The text of the newest artifact `key` on the Prefect server."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(found[0].data) if found else ""


def test_a_labelling_check_counts_the_intruder_pools_of_earlier_settings_as_spent(
    prefect_harness, monkeypatch, tmp_path
):
    """The labelling's budget check left every intruder pool of the run key out of what was spent,
    as if the estimate's one evaluation covered them all. A user who had changed `intruders.n_hits`
    once (its first pool left behind, paid) raised `hits.overlap` under a lower `max_spend`: the
    check passed, the main pool was reopened and paid, and only the evaluation was then refused,
    with the key past `max_spend` (on the emulator: $0.47 more with $5.69 spent of $5.50). Now only
    the latest evaluation's pool, which a resumed run goes on with, is the estimate's; the earlier
    ones count as spent, and all of them when the evaluation is off."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.budget import BudgetExceeded
    from tasks.toloka_api import RunRegistry

    key = "money-earlier-evaluations"
    with _account(tmp_path, key, monkeypatch, speed=600.0) as (running, params):

        def config(max_spend: float, intruders: dict[str, Any], hits: dict[str, Any] | None = None) -> Any:
            evaluation = {"enabled": True, "images_per_hit": 3, "overlap": 2, "reward": 0.02, **intruders}
            return params.model_copy(
                update={
                    "intruders": params.intruders.model_copy(update=evaluation),
                    "hits": params.hits.model_copy(update=hits or {}),
                    "budget": params.budget.model_copy(update={"max_spend": max_spend}),
                }
            )

        crowdclust_pipeline(config(10.0, intruders={"n_hits": 20}))
        registry = RunRegistry(make_client(running), key)
        first = registry.spent(lambda role: role.startswith("intruders-pool-"))  # left behind, paid
        latest = crowdclust_pipeline(config(10.0, intruders={"n_hits": 10}))
        assert latest.cost.estimate is not None and first > 0
        estimate = latest.cost.estimate.total
        # The latest evaluation is the estimate's: the same run again, with room for the earlier
        # pool and this estimate only, is not refused.
        crowdclust_pipeline(config(round(estimate + first + 0.01, 2), intruders={"n_hits": 10}))
        spent = registry.spent()
        main = _objects(running, key)["pools"]["main-pool"]
        answered = len(list(make_client(running).get_assignments(pool_id=main.id, status="ACCEPTED")))
        # One more answer per HIT (9 HITs at $0.026) fits max_spend only if the first pool is not counted.
        tight = round(estimate + 9 * 0.026 + first / 2, 2)
        raised = config(tight, intruders={"n_hits": 10}, hits={"overlap": 4})
        with pytest.raises(BudgetExceeded, match=r"already spent by this run key") as refused:
            crowdclust_pipeline(raised)
        assert "No pool was opened" in str(refused.value)
        off = config(tight, intruders={"n_hits": 10, "enabled": False}, hits={"overlap": 4})
        with pytest.raises(BudgetExceeded, match=r"already spent by this run key"):
            crowdclust_pipeline(off)  # no evaluation: every intruder pool was paid for earlier settings
        client = make_client(running)
        assert len(list(client.get_assignments(pool_id=main.id, status="ACCEPTED"))) == answered == 9 * 3
        assert registry.spent() == pytest.approx(spent)  # nothing paid past max_spend


def test_a_finished_run_run_again_with_other_settings_opens_no_exam(prefect_harness, monkeypatch, tmp_path):
    """A finished run run again after a change that its labelling's wait depends on (here only
    `budget.max_spend`) reopened the training and the exam pool for gating, though the main pool
    owed no answer: workers filled the exam's free seats meanwhile and were paid ($0.013 in a test,
    $0.026 on the demo's config with `hits.reward` raised), and the wait then held the run for the
    exams in hand. Now a main pool with nothing left to answer opens neither."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.toloka_api import RunRegistry

    key = "money-finished-exam"
    # Free seats left when the main pool completes: the main pool needs 27 answers; at 30 seats a
    # suite the exam pool filled all 90 first once, on a loaded machine (the crowd's clock runs on).
    seats = {"exam": {"expected_workers": 100}, "budget": {"max_spend": 6.0}}  # exam estimate ~$3.90
    with _account(tmp_path, key, monkeypatch, changes=seats, speed=600.0) as (running, params):
        crowdclust_pipeline(params)
        registry = RunRegistry(make_client(running), key)
        spent = registry.spent()
        before = _objects(running, key)["pools"]["exam-pool"]
        more = params.model_copy(update={"budget": params.budget.model_copy(update={"max_spend": 7.0})})
        summary = crowdclust_pipeline(more)
        after = _objects(running, key)["pools"]["exam-pool"]
        spent_after = registry.spent()
    assert before.last_close_reason.value != "COMPLETED"  # it could have taken more workers
    assert after.last_started == before.last_started  # not opened again
    assert spent_after == pytest.approx(spent) and summary.cost.added == 0


def test_a_lowered_reward_is_not_read_as_a_platform_fee_above_the_configs(
    prefect_harness, monkeypatch, tmp_path
):
    """`hits.reward` lowered under the same run key (0.03 -> 0.02): the main pool is updated to the
    new reward, but its answers were paid at the one they were issued with. The price seen at Toloka
    set what they cost against the pool's reward of today and read 1.5x the config's price: a warning
    said `budget.fee_rate` was below the platform's fee (it was the platform's), and the next stages
    were estimated and checked at 1.5x (on the demo's config an evaluation of $1.56 was estimated at
    $1.87). Each answer is now set against the reward it was paid."""
    from flows.pipeline import crowdclust_pipeline
    from tasks import budget

    key = "money-lowered-reward"
    with _account(tmp_path, key, monkeypatch, speed=600.0) as (running, params):
        dear = params.model_copy(update={"hits": params.hits.model_copy(update={"reward": 0.03})})
        crowdclust_pipeline(dear)
        assert budget.price_ratio_seen_task.fn(params.toloka, key, dear) == 1.0
        crowdclust_pipeline(params)  # the same answers, the pool updated to hits.reward 0.02
        main = _objects(running, key)["pools"]["main-pool"]
        assert float(main.reward_per_assignment) == params.hits.reward == 0.02
        assert budget.price_ratio_seen_task.fn(params.toloka, key, params) == 1.0
        at_fee_0 = params.model_copy(update={"budget": params.budget.model_copy(update={"fee_rate": 0.0})})
        assert budget.price_ratio_seen_task.fn(params.toloka, key, at_fee_0) == pytest.approx(1.3, abs=0.01)


def test_suspend_in_the_labelling_wait_closes_the_pools_and_resume_pays_only_the_estimate(
    prefect_harness, monkeypatch, tmp_path
):
    """Suspend on a deployment run's page during its labelling wait took effect only when the main
    pool had completed: the crowd worked on, paid, after the user had pressed it. Now the wait sees
    the Suspend within a poll, the run's pools are closed and the run ends Suspended; Resume reopens
    them and the run completes, charged its estimate and no more.

    The emulator's clock stands still (speed 0): the crowd works only when the test advances it, so
    what the closed pools take after the Suspend is what an hour of the crowd does to them. The run
    is a deployment's, run in this process as a worker runs it (Prefect watches for a Suspend only
    in those), and suspended through the API as the UI's button does."""
    import threading
    from datetime import UTC, datetime, timedelta

    import httpx
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import crowdclust_pipeline
    from tasks.toloka_api import pool_stats

    key = "money-suspend"
    with _account(tmp_path, key, monkeypatch, speed=0.0) as (running, params):
        client = make_client(running)
        balance = float(client.get_requester().balance)
        with get_client(sync_client=True) as prefect:
            flow_id = prefect.create_flow_from_name(crowdclust_pipeline.name)
            deployment = prefect.create_deployment(flow_id=flow_id, name=key)
            created = prefect.create_flow_run_from_deployment(
                deployment, parameters={"params": params.model_dump(mode="json")}
            )
        ended: list[BaseException | None] = []

        def run() -> None:
            with get_client(sync_client=True) as prefect:
                flow_run = prefect.read_flow_run(created.id)
            try:
                run_flow(crowdclust_pipeline, flow_run=flow_run)
                ended.append(None)
            except BaseException as error:  # Pause: the run ended Suspended
                ended.append(error)

        first = threading.Thread(target=run, daemon=True)
        first.start()

        def main_pool() -> Any:
            return _objects(running, key)["pools"].get("main-pool")

        def answers(pool: Any) -> int:
            return len(list(client.get_assignments(pool_id=pool.id, status=["SUBMITTED", "ACCEPTED"])))

        # The crowd takes exams, is gated, and answers the main pool: an answer or more, not all.
        # The clock moves once the run has opened its pools.
        for _ in range(600):
            pool = main_pool()
            if pool is not None and pool.status.value == "OPEN" and answers(pool) > 0:
                break
            assert first.is_alive(), ended
            if pool is None or pool.status.value != "OPEN":
                first.join(0.5)
            else:
                running.advance(20)
        else:
            raise AssertionError("the main pool never had an answer")
        api = httpx.Client(base_url=PREFECT_API_URL.value(), timeout=10)
        details = {
            "pause_timeout": (datetime.now(UTC) + timedelta(minutes=30)).isoformat(),
            "pause_reschedule": True,
        }
        suspend = {"state": {"type": "PAUSED", "name": "Suspended", "state_details": details}}
        assert api.post(f"/flow_runs/{created.id}/set_state", json=suspend).json()["status"] == "ACCEPT"
        # Before, the wait went on while the crowd worked: the clock moves until the run ends, in
        # small steps (Prefect may take a 10 s poll to hear of the Suspend).
        for _ in range(600):
            first.join(0.5)
            if not first.is_alive():
                break
            running.advance(5)
        assert not first.is_alive() and isinstance(ended[0], Pause), ended
        state = api.get(f"/flow_runs/{created.id}").json()["state"]
        assert (state["type"], state["name"]) == ("PAUSED", "Suspended"), state
        stopped = _objects(running, key)
        pool = stopped["pools"]["main-pool"]
        assert stopped["open"] == [] and pool.last_close_reason.value == "MANUAL", stopped
        # An hour of the crowd: what was in hand is handed in, nothing more is taken or paid.
        running.advance(3600)
        charged, taken = float(client.get_requester().balance), answers(pool)
        running.advance(3600)
        assert (float(client.get_requester().balance), answers(pool)) == (charged, taken)
        assert taken < 9 * 3

        # The labelling sub-flow in hand reads Suspended too (Prefect suspends only the run itself).
        subflows = {"flow_runs": {"parent_flow_run_id": {"any_": [str(created.id)]}}}
        (labelling,) = api.post("/flow_runs/filter", json=subflows).json()
        assert (labelling["state_type"], labelling["state_name"]) == ("PAUSED", "Suspended"), labelling

        running.configure(speed=600)
        assert api.post(f"/flow_runs/{created.id}/resume", json={}).json()["status"] == "ACCEPT"
        with get_client(sync_client=True) as prefect:
            summary = run_flow(crowdclust_pipeline, flow_run=prefect.read_flow_run(created.id))
        # Resume went on in the same sub-flow run.
        assert api.get(f"/flow_runs/{labelling['id']}").json()["state"]["type"] == "COMPLETED"
        api.close()
        found = _objects(running, key)
        left = float(client.get_requester().balance)
        accepted = len(list(client.get_assignments(pool_id=pool.id, status="ACCEPTED")))
        main_spent = pool_stats(client, pool.id).spent_budget
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_task_runs(  # the labelling sub-flow's waits
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[created.id])
                ),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="wait-labelling")),
            )
        waits = [(r.state.type.value, r.state.name) for r in sorted(runs, key=lambda r: r.created)]
    assert found["pools"]["main-pool"].id == pool.id  # the same pools, reopened
    assert found["pools"]["main-pool"].last_close_reason.value == "COMPLETED"
    assert accepted == 9 * 3  # every HIT at its overlap, none paid twice
    estimate = summary.cost.estimate
    assert estimate is not None
    assert summary.cost.spent == pytest.approx(balance - left, abs=1e-6)  # what the account was charged
    assert main_spent == pytest.approx(estimate.main, abs=1e-6)  # the main pool: its estimate exactly
    assert summary.cost.spent <= estimate.total  # the exams: at most the seats estimated
    assert waits == [("PAUSED", "Suspended"), ("COMPLETED", "Completed")], waits
