"""Money and state under faults, with the real flow, the real toloka-kit client and one emulator.

The emulator's faults and speed are changed per test through its control route. Small runs: the
demo catalogue at 30 images, overlap 3, one exam, no intruder evaluation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorSettings, run_in_background
from tasks.params import PipelineParams, load_params
from tasks.toloka_api import TolokaClient
from tests.fixtures.emulator import make_client, run_objects, small_run_config
from tests.fixtures.prefect import persisted_bytes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TOKEN = f"faults-{uuid.uuid4().hex}"
MAX_SPEND = 3.0
POLL_STEP = 8.0  # simulated seconds of crowd work per poll in the live-guard test (30x at 0.25 s)
POLL_STEP_SLOW = 2.0  # simulated seconds of crowd work per poll in the poll-lines test


@pytest.fixture(scope="module")
def emu():
    settings = EmulatorSettings(port=0, token=TOKEN, catalogue="demo-shoes", catalogue_size=30, speed=600.0)
    with run_in_background(settings) as running, pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOLOKA_TOKEN", running.token)
        yield running


def _objects_with_hits(params: PipelineParams, key: str, bundle: Any, plan: Any) -> Any:
    """The run key's Toloka objects, its HITs uploaded to the main pool (inside a flow: these are
    the pipeline's own tasks); the pools stay closed for the test's wait to open."""
    from tasks import setup
    from tasks.toloka_config import Placeholders

    ids = setup.setup_labelling_task(
        params.toloka, key, bundle, Placeholders.of(params), params.exam.skill_name
    )
    setup.upload_hits_task(params.toloka, key, ids.main_pool, plan.hits)
    return ids


@pytest.fixture(scope="module")
def config(emu, tmp_path_factory) -> Path:
    return small_run_config(tmp_path_factory.mktemp("faults"), emu.url, "faults", MAX_SPEND)


def _plan_of(params: PipelineParams) -> tuple[Any, Any, Any]:
    """The run's Toloka configs, its HIT plan over the dataset's images and the labelling's estimate."""
    from tasks import budget
    from tasks.hits import make_plan
    from tasks.toloka_config import load_bundle

    bundle = load_bundle(params.toloka_dir)
    items = [line.split("\t")[0] for line in params.dataset.read_text().splitlines()[1:]]
    plan = make_plan(items, params.hits, params.seed)
    return bundle, plan, budget.estimate_labelling(params, bundle, len(plan.hits))


def _clock_per_poll(emu: Any) -> type:
    """A progress reporter under which each poll lets the crowd work POLL_STEP simulated seconds,
    however long the poll took (the emulator's clock frozen meanwhile).

    With the clock running, one slow tick on a loaded machine let the crowd take every exam seat
    between two polls, and the live guard (rightly) closed the pool before anything was paid.
    """
    from tasks.artifacts import ProgressReporter

    class PollClock(ProgressReporter):
        def __call__(self, stats: Any) -> None:
            super().__call__(stats)
            emu.advance(POLL_STEP)

    return PollClock


def _params(config: Path, key: str, **changes: Any) -> PipelineParams:
    return load_params(config, {"run_key": key, **changes})


def _client(emu: Any) -> TolokaClient:
    return make_client(emu, retries=5)  # the faults injected here come two in a row at most


def _objects(emu: Any, key: str) -> dict[str, Any]:
    return run_objects(_client(emu), key)


def _one_of_each(found: dict[str, Any], planned_hits: int) -> None:
    assert found["projects"] == 2 and found["trainings"] == 1 and found["skills"] == 1, found
    assert sorted(found["pools"]) == ["exam-pool", "main-pool"], found
    assert found["suites"][found["pools"]["main-pool"].id] == planned_hits, found


def _spent(emu: Any, key: str) -> float:
    from tasks.toloka_api import RunRegistry

    return RunRegistry(_client(emu), key).spent()


@pytest.fixture
def short_backoff(monkeypatch):
    """toloka-kit waits 2, 4, 8 s before its retries (`backoff_factor=2`): under 30% faults the
    end-to-end test took 100 s, 62-69 s with this, most of it sleeping while the suite's other waiting
    lanes left a core idle. The faults, the retries and what they cost are what is tested, not how
    long the client sleeps between them: 0.05 s, 0.1 s, ..."""
    import toloka.client

    default = toloka.client.TolokaClient._default_retryer_factory

    def factory(*args: Any, **kwargs: Any) -> Any:
        retry = default(*args, **kwargs)
        retry.backoff_factor = 0.05  # `Retry.new` carries it to every later attempt
        return retry

    monkeypatch.setattr(toloka.client.TolokaClient, "_default_retryer_factory", staticmethod(factory))


def test_thirty_percent_faults_and_300_ms_latency_end_to_end(prefect_harness, emu, config, short_backoff):
    from flows.pipeline import crowdclust_pipeline

    emu.control("config", method="POST", fail_rate=0.3, latency_ms=300)
    try:
        summary = crowdclust_pipeline(_params(config, "faults-e2e"))
    finally:
        emu.control("config", method="POST", fail_rate=0.0, latency_ms=0)
    _one_of_each(_objects(emu, "faults-e2e"), planned_hits=9)
    spent = _spent(emu, "faults-e2e")
    print(f"0.3 faults + 300 ms: spent ${spent:.3f} of max_spend ${MAX_SPEND:.2f}, estimate {summary.cost}")
    assert 0 < spent <= MAX_SPEND
    assert summary.clusters >= 2


@pytest.mark.parametrize("fee_rate", [None, 0.0], ids=["fee-as-configured", "fee-rate-below-the-platforms"])
def test_live_guard_closes_the_pool_before_max_spend(prefect_harness, emu, config, monkeypatch, fee_rate):
    """A budget that the estimate fits but the crowd would pass: the pool closes, the answers stay.

    With `budget.fee_rate: 0.0` (the platform takes 30%) the estimate is 30% low: the limit lies just
    above it, so the guard, trusting it, stayed quiet until a poll found the limit passed (a user's
    run charged $16.07 against $15.00). It now counts the price Toloka charges."""
    from prefect import flow

    from tasks import budget, exam, wait

    key = "faults-guard" if fee_rate is None else "faults-guard-fee"
    params = _params(config, key)
    if fee_rate is not None:
        params = params.model_copy(update={"budget": params.budget.model_copy(update={"fee_rate": fee_rate})})
    bundle, plan, estimate = _plan_of(params)
    # The estimate is $1.01 (main $0.70 = 9 x 3 x $0.026, exams $0.31 if all 24 seats were paid); a
    # run costs about $0.85 (rejected exams are not paid). The limit lies below what the run costs.
    # At fee_rate 0 the estimate is $0.78 and the limit a cent above it.
    limit = 0.75 if fee_rate is None else round(estimate.main + estimate.exam + 0.01, 2)

    @flow
    def guarded() -> Any:
        ids = _objects_with_hits(params, key, bundle, plan)
        limited = params.model_copy(update={"budget": params.budget.model_copy(update={"max_spend": limit})})
        guard = budget.SpendGuard.of(limited, 0.0, estimate)
        staffing = exam.Staffing(params.exam.min_skill, params.hits.overlap)
        return wait.wait_labelling_task(params.toloka, ids, bundle, 1, 0.2, 120.0, guard, staffing)

    # A crowd slower than the polls, as on Toloka, and the same crowd on any machine: the clock
    # stands still and moves only by POLL_STEP per poll.
    monkeypatch.setattr(wait, "ProgressReporter", _clock_per_poll(emu))
    emu.control("config", method="POST", speed=0.0)
    try:
        waited = guarded()
    finally:
        emu.control("config", method="POST", speed=600.0)
    assert waited.stopped.startswith("spend guard:"), waited
    # A UI user pressed Retry, which keeps max_spend and replays the stop: the way on is a new run.
    assert "a Retry of the flow run keeps its max_spend and stops here again" in waited.stopped
    assert "Custom run" in waited.stopped
    time.sleep(2)  # let assignments in flight at the close be submitted and accepted
    found = _objects(emu, key)
    assert str(found["pools"]["main-pool"].status.value) == "CLOSED" and not found["open"], found
    spent = _spent(emu, key)
    print(f"live guard: spent ${spent:.3f} of a ${limit:.2f} limit")
    assert 0 < spent <= limit
    # What the evaluation's estimate then counts: the price this main pool was charged per answer.
    seen = budget.price_ratio_seen_task.fn(params.toloka, key, params)
    assert seen == (1.0 if fee_rate is None else pytest.approx(1.3, abs=0.01))


def test_pools_that_reach_the_end_of_their_lifetime_mid_wait_are_reopened(
    prefect_harness, emu, config, monkeypatch
):
    """A wait allowed longer than the pools live (a 10,000-image run on the emulator, whose clock
    runs 600x; a wait of over a week on Toloka) failed when the main pool expired at 96%, with its
    answers paid and only a Retry to finish it. Here both pools expire in the wait's first polls:
    the exam pool (nobody could qualify any more) and the main pool are reopened with a new
    lifetime, and the wait ends complete."""
    from datetime import UTC, timedelta

    from prefect import flow

    from tasks import budget, exam, wait
    from tasks.toloka_api import POOL_LIFETIME, platform_now

    key = "faults-expiry"
    params = _params(config, key)
    bundle, plan, estimate = _plan_of(params)
    client = _client(emu)

    @flow
    def waited() -> Any:
        ids = _objects_with_hits(params, key, bundle, plan)
        # Opened here, three polls to live: the wait's own opening gives a pool near its end a new
        # lifetime, and leaves an open one as it is.
        for pool_id in (ids.exam_pool, ids.main_pool):
            pool = client.get_pool(pool_id)
            pool.will_expire = platform_now(client) + timedelta(seconds=2 * POLL_STEP + 1)
            client.update_pool(pool_id, pool)
            client.open_pool(pool_id)
        guard = budget.SpendGuard.of(params, 0.0, estimate)
        staffing = exam.Staffing(params.exam.min_skill, params.hits.overlap)
        return ids, wait.wait_labelling_task(params.toloka, ids, bundle, 1, 0.01, 600.0, guard, staffing)

    monkeypatch.setattr(wait, "ProgressReporter", _clock_per_poll(emu))
    emu.control("config", method="POST", speed=0.0)
    try:
        ids, done = waited()
    finally:
        emu.control("config", method="POST", speed=600.0)
    assert done.main.completion_percentage == 100.0 and not done.stopped, done
    for pool_id in (ids.exam_pool, ids.main_pool):
        renewed = client.get_pool(pool_id).will_expire.astimezone(UTC).replace(tzinfo=None)
        assert renewed >= platform_now(client) + POOL_LIFETIME - timedelta(days=1), pool_id


def test_a_long_wait_logs_the_polls_that_say_something_new(prefect_harness, emu, config, monkeypatch):
    """One wait of a 10,000-image pool logged about 775 near-identical poll lines. Here each poll
    stands for a minute of wait (the crowd works POLL_STEP_SLOW simulated seconds of it): hundreds
    of polls give a few tens of lines, the first and the last (100% complete) among them."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from tasks import artifacts, budget, exam, wait

    key = "faults-poll-lines"
    params = _params(config, key)
    bundle, plan, estimate = _plan_of(params)
    minutes = [0.0]
    polls: list[float] = []

    class MinutePolls(artifacts.ProgressReporter):
        """Each poll is a minute later on the reporter's clock; the crowd works POLL_STEP_SLOW."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, clock=lambda: minutes[0] * 60.0)

        def __call__(self, stats: Any) -> None:
            super().__call__(stats)
            polls.append(stats.completion_percentage or 0.0)
            minutes[0] += 1
            emu.advance(POLL_STEP_SLOW)

    @flow
    def waited() -> Any:
        ids = _objects_with_hits(params, key, bundle, plan)
        guard = budget.SpendGuard.of(params, 0.0, estimate)
        staffing = exam.Staffing(params.exam.min_skill, params.hits.overlap)
        return wait.wait_labelling_task(params.toloka, ids, bundle, 1, 0.01, 600.0, guard, staffing)

    monkeypatch.setattr(wait, "ProgressReporter", MinutePolls)
    emu.control("config", method="POST", speed=0.0)
    try:
        state = waited(return_state=True)
    finally:
        emu.control("config", method="POST", speed=600.0)
    assert state.is_completed(), state.message
    APILogHandler().flush()
    one_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        lines = [log.message for log in client.read_logs(log_filter=one_run) if "% complete" in log.message]
    print(f"poll lines: {len(lines)} logged of {len(polls)} polls ({minutes[0]:.0f} simulated minutes)")
    assert len(polls) >= 100, len(polls)
    assert (
        3 <= len(lines) <= 100 / artifacts.POLL_LOG_STEP + minutes[0] * 60 / artifacts.POLL_LOG_INTERVAL + 4
    )
    assert " 0% complete" in lines[0] and " 100% complete" in lines[-1], (lines[0], lines[-1])
    assert lines[-1].endswith("left of budget.max_spend"), lines[-1]


def test_a_starved_exam_ends_the_run_and_more_seats_under_the_same_key_finish_it(
    prefect_harness, emu, config
):
    """Three exam suites with one seat each and a pass mark of 100, and HITs that need ten workers.
    Only a handful can qualify: an accepted (perfect) answer holds each seat, and a rejected one frees
    its seat for another worker, whose partial scores may add up to the mark (it is not always the
    same number: a check made before the last answers were reviewed once said 3 when 4 qualified).
    Once the exam pool has closed and every answer is reviewed, the run ends with a line saying why
    and what to change, instead of waiting out its timeout; its pools close. Following that advice
    under the same run key then works, and a changed HIT plan under it is refused."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.exam import ExamStarved

    params = _params(
        config, "faults-starved", exam={"expected_workers": 1, "min_skill": 100}, hits={"overlap": 10}
    )
    started = time.monotonic()
    with pytest.raises(
        ExamStarved, match=r"only [1-9] worker\(s\) reached the skill 100, fewer than the 10 different"
    ):
        crowdclust_pipeline(params)
    assert time.monotonic() - started < 120  # not the wait's 300 s timeout
    found = _objects(emu, "faults-starved")
    assert str(found["pools"]["exam-pool"].status.value) == "CLOSED" and not found["open"], found

    # The error's advice, followed under the same run key: more seats and a lower pass mark. The
    # same exam pool gets the seats (its suites' overlap) and the main pool the new skill filter;
    # before, both kept what they were made with and the run starved again, whatever the config said.
    raised = _params(
        config, "faults-starved", exam={"expected_workers": 12, "min_skill": 75}, hits={"overlap": 4}
    )
    crowdclust_pipeline(raised)
    after = _objects(emu, "faults-starved")
    _one_of_each(after, planned_hits=9)
    exam_pool = after["pools"]["exam-pool"]
    assert (
        exam_pool.id == found["pools"]["exam-pool"].id
        and exam_pool.defaults.default_overlap_for_new_task_suites == 12
    )
    # 11 seats more on every suite, on top of those its quality control added for rejected answers
    assert min(suite.overlap for suite in _client(emu).get_task_suites(pool_id=exam_pool.id)) >= 12
    main = after["pools"]["main-pool"]
    answers = [
        a
        for a in _client(emu).get_assignments(pool_id=main.id)
        if a.status.value in ("SUBMITTED", "ACCEPTED")
    ]
    assert main.id == found["pools"]["main-pool"].id and len(answers) == 9 * 4, len(answers)

    # A changed HIT plan under the same key: before, its HITs joined the old ones in the same pool,
    # and the crowd answered both designs into one export (47% over the estimate in a user's run).
    from tasks.toloka_api import PlanChanged

    with pytest.raises(PlanChanged, match=r"holds 9 HIT\(s\) that are not in this run's plan of 15"):
        crowdclust_pipeline(_params(config, "faults-starved", hits={"size": 6, "overlap": 4}))
    assert _objects(emu, "faults-starved")["suites"][main.id] == 9  # nothing was uploaded


def test_a_refused_plan_with_a_raised_overlap_never_opens_the_finished_pool(prefect_harness, emu, config):
    """A finished run's config changed twice over, `hits.size` and `hits.overlap`: the HIT plan's
    check refuses the run before anything is uploaded, but the setup before it had given the
    completed main pool the new overlap and opened it, and the crowd answered (and was paid) until
    the failure hook closed it: 2 answers in a try on the demo config. The pool is never opened by
    a run that is refused; the emulator records every opening as an operation."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.toloka_api import PlanChanged

    crowdclust_pipeline(_params(config, "faults-replan"))
    client = _client(emu)
    main = _objects(emu, "faults-replan")["pools"]["main-pool"]

    def openings() -> int:
        return sum(
            type(op).__name__ == "PoolOpenOperation" and str(op.parameters.pool_id) == str(main.id)
            for op in client.get_operations()
        )

    def answers() -> int:
        return len(list(client.get_assignments(pool_id=main.id)))

    opened, answered = openings(), answers()
    assert opened >= 1
    with pytest.raises(PlanChanged, match=r"not in this run's plan"):
        crowdclust_pipeline(_params(config, "faults-replan", hits={"size": 6, "overlap": 5}))
    assert openings() == opened and answers() == answered
    assert str(client.get_pool(main.id).status.value) == "CLOSED"


def test_an_overlap_lowered_and_raised_back_pays_no_answer_above_it(prefect_harness, emu, config):
    """A finished run resumed at a lower `hits.overlap` keeps the answers its HITs hold (8 -> 7: each
    suite stays at 8, what it holds), and raised back to 8 every suite was moved up by one from there:
    9 answers per HIT, one more than the config asked, paid ($2.13 on the demo, "9% above the
    estimate"). Back at the first run's settings exactly, the setup stage comes from that run's
    cache: the pool kept overlap 2 (the uncached check of the ids now gives it the config's)."""
    from flows.pipeline import crowdclust_pipeline

    crowdclust_pipeline(_params(config, "faults-relower"))  # overlap 3
    crowdclust_pipeline(_params(config, "faults-relower", hits={"overlap": 2}))
    crowdclust_pipeline(_params(config, "faults-relower"))  # back to 3: as the first run, cached setup
    client = _client(emu)
    main = _objects(emu, "faults-relower")["pools"]["main-pool"]
    assert main.defaults.default_overlap_for_new_task_suites == 3
    suites = list(client.get_task_suites(pool_id=main.id))
    answers = [
        a for a in client.get_assignments(pool_id=main.id) if a.status.value in ("SUBMITTED", "ACCEPTED")
    ]
    assert {suite.overlap for suite in suites} == {3}, [suite.overlap for suite in suites]
    assert len(answers) == 3 * len(suites)


def test_exam_seats_lowered_and_raised_back_are_what_the_config_asks(prefect_harness, emu, config):
    """exam.expected_workers 8, then 4, then 8 again under one run key. The exam pool adds a seat for
    each rejected answer (CHANGE_OVERLAP on REJECT), so its suites were moved by the change from
    their overlap: lowered to 4 each suite stayed where its answers held it (8 seats + its rejected
    answers, set-overlap-or-min), and raised back it went up by 4 from there: 12 seats a suite
    where the config asked 8, paid for as soon as a run reopened the exam for gating. Each suite
    now holds the config's seats plus one per rejected answer, as the first run left it."""
    from flows.pipeline import crowdclust_pipeline

    key = "faults-seats-back"
    crowdclust_pipeline(_params(config, key))  # exam.expected_workers 8
    lowered = crowdclust_pipeline(_params(config, key, exam={"expected_workers": 4}))
    crowdclust_pipeline(_params(config, key))  # back to 8
    # Above its estimate (4 seats) by the seats the first run paid, at the config's price: the run
    # said "18% above the estimate: check budget.fee_rate", with the fee right and nothing paid.
    assert lowered.cost.added == pytest.approx(0.0, abs=0.001) and lowered.cost.over_estimate is not None
    said = lowered.cost.over_estimate_text()
    assert "budget.fee_rate" not in said and "bought under other settings" in said, said
    client = _client(emu)
    exam_pool = _objects(emu, key)["pools"]["exam-pool"]
    assert exam_pool.defaults.default_overlap_for_new_task_suites == 8
    assignments = list(client.get_assignments(pool_id=exam_pool.id))
    for suite in client.get_task_suites(pool_id=exam_pool.id):
        mine = [a.status.value for a in assignments if a.task_suite_id == suite.id]
        assert suite.overlap == 8 + mine.count("REJECTED"), (suite.overlap, sorted(mine))
        assert mine.count("ACCEPTED") + mine.count("SUBMITTED") <= 8, sorted(mine)


def test_the_intruder_pool_follows_the_config_when_its_setup_comes_from_the_cache(
    prefect_harness, emu, config
):
    """The intruder pool is tagged with its HITs' digest, so the same clustering evaluated again under
    one run key finds the same pool. Evaluated at intruders.overlap 3 and reward $0.02, then at 2 and
    $0.03, then at the first run's settings exactly: the setup stage came from the first run's cache
    and the pool kept overlap 2 and $0.03 while the config said 3 and $0.02 (a raised reward paid on
    by any answer it took next). The uncached check of its ids gives it the config's settings, as
    the labelling's pools get theirs."""
    from flows.pipeline import crowdclust_pipeline

    key = "faults-intruders-back"
    first = {"enabled": True, "n_hits": 10, "images_per_hit": 3, "overlap": 3, "reward": 0.02}
    crowdclust_pipeline(_params(config, key, intruders=first))
    crowdclust_pipeline(_params(config, key, intruders={**first, "overlap": 2, "reward": 0.03}))
    crowdclust_pipeline(_params(config, key, intruders=first))  # as the first run: its cached setup
    pools = _objects(emu, key)["pools"]
    intruder_pools = [pool for role, pool in pools.items() if role.startswith("intruders-pool-")]
    assert len(intruder_pools) == 1, sorted(pools)
    pool = intruder_pools[0]
    assert pool.defaults.default_overlap_for_new_task_suites == 3
    assert pool.reward_per_assignment == pytest.approx(0.02)


def test_a_market_smaller_than_the_overlap_times_out_saying_so(
    prefect_harness, emulator_factory, tmp_path, monkeypatch
):
    """A market of two workers for HITs that need three: the exam never fills its seats, so nothing
    ends the wait but its timeout, which said only that the pool made no progress and advised a
    longer timeout, which could never help. It now says that fewer workers qualified than each HIT
    needs, and what to change."""
    from prefect import flow

    from tasks import budget, exam, wait
    from tasks.artifacts import ProgressReporter

    with emulator_factory(token=TOKEN, speed=0, workers=2, catalogue_size=30) as tiny:
        monkeypatch.setenv("TOLOKA_TOKEN", tiny.token)
        params = _params(small_run_config(tmp_path, tiny.url, "tiny", MAX_SPEND), "faults-tiny")
        bundle, plan, estimate = _plan_of(params)

        class DayPerPoll(ProgressReporter):  # the two workers arrive, train, pass or fail, answer
            def __call__(self, stats: Any) -> None:
                super().__call__(stats)
                tiny.advance(1800)

        monkeypatch.setattr(wait, "ProgressReporter", DayPerPoll)

        @flow
        def tiny_market() -> Any:
            ids = _objects_with_hits(params, "faults-tiny", bundle, plan)
            guard = budget.SpendGuard.of(params, 0.0, estimate)
            needed = len(plan.hits) * params.hits.overlap
            staffing = exam.Staffing(params.exam.min_skill, params.hits.overlap, needed)
            return wait.wait_labelling_task(params.toloka, ids, bundle, 1, 0.1, 15.0, guard, staffing)

        with pytest.raises(wait.WaitTimeout) as timed_out:
            tiny_market()
    assert timed_out.value.short_of_workers
    assert "fewer than the 3 different workers each HIT needs" in str(timed_out.value), timed_out.value


def test_more_hits_per_image_on_a_finished_run_are_answered_and_only_they_are_paid(
    prefect_harness, emu, config
):
    """30 images in HITs of 10: 4 HITs per image extend the plan of 3 by 3 HITs. Before, they went
    into the completed pool and nobody answered them; the run exported the old answers, reused the
    old clusters and reported the new plan's coverage (a new user's try-out, at 80 and 2,500 images)."""
    from flows.pipeline import crowdclust_pipeline

    key = "faults-more-hits"
    from tasks.toloka_api import RunRegistry

    def main_spent() -> float:
        return RunRegistry(_client(emu), key).spent(lambda role: role == "main-pool")

    first = crowdclust_pipeline(_params(config, key))
    pool, before = _objects(emu, key)["pools"]["main-pool"], main_spent()
    assert first.aggregation.n_hits == 9 and str(pool.status.value) == "CLOSED"
    more = crowdclust_pipeline(_params(config, key, hits={"hits_per_item": 4}))
    after = _objects(emu, key)
    _one_of_each(after, planned_hits=12)
    assert after["pools"]["main-pool"].id == pool.id
    answered = [
        a
        for a in _client(emu).get_assignments(pool_id=pool.id)
        if a.status.value in ("SUBMITTED", "ACCEPTED")
    ]
    assert len(answered) == 12 * 3 and more.aggregation.n_hits == 12, (len(answered), more.aggregation)
    # The main pool was paid for the 9 new answers only (the exam pool, reopened for gating, may
    # fill seats the first run left, within the estimate); the run says what it added.
    per_answer = before / (9 * 3)  # the reward and the platform's fee
    assert main_spent() - before == pytest.approx(3 * 3 * per_answer, abs=0.001)
    assert more.cost.added == pytest.approx(_spent(emu, key) - first.cost.by_run_key, abs=0.001)

    # Overlap lowered to 2 under the same key: the 12 answers above it are paid all the same. A
    # max_spend that the plan at overlap 2 fits, but not those answers, is refused before anything
    # changes (a user's resume at a lower overlap charged $16.33 against a max_spend of $14.60).
    from tasks.budget import BudgetExceeded, estimate_labelling
    from tasks.toloka_config import load_bundle

    lowered = {"hits_per_item": 4, "overlap": 2}
    lower = _params(config, key, hits=lowered)
    plan_only = estimate_labelling(lower, load_bundle(lower.toloka_dir), 12)
    tight = _params(config, key, hits=lowered, budget={"max_spend": plan_only.total + 0.1})
    spent = _spent(emu, key)
    with pytest.raises(BudgetExceeded, match=r"exceeds budget\.max_spend"):
        crowdclust_pipeline(tight)
    assert _spent(emu, key) == pytest.approx(spent, abs=0.001)
    assert _objects(emu, key)["pools"]["main-pool"].defaults.default_overlap_for_new_task_suites == 3


def _until_the_main_pool_opens(emu: Any, key: str, process: subprocess.Popen[str]) -> None:
    """Wait (5 min at most) for run `key`'s main pool to open, while `process` (the run) lives."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pools = _objects(emu, key)["pools"]
        if "main-pool" in pools and str(pools["main-pool"].status.value) == "OPEN":
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)
    pytest.fail("the main pool never opened")


def _stderr_once_exited(process: subprocess.Popen[str], seconds: float, signalled: str) -> str:
    """`process`'s stderr once it exits; if it has not within `seconds`, fail with that stderr and
    every thread's stack (`crowdclust.cli` and `STOPPED_FLOW` print them on SIGUSR1), so a hang says where
    it stands."""
    try:
        return process.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(1)
        process.kill()
        pytest.fail(f"not exited {seconds} s after {signalled}:\n{process.communicate()[1][-20_000:]}")


def _run_as_a_terminal_does(
    emu: Any, config: Path, tmp_path: Path, key: str, migrated_prefect_home: Any, **streams: Any
) -> subprocess.Popen[str]:
    """`crowdclust run` of `key` in its own process group, as a terminal's foreground job, with no
    Prefect server named (its private one starts on a migrated home) and the crowd slowed so that a
    signal lands mid-wait. `streams`: stdout/stderr (pipes unless given)."""
    migrated_prefect_home(tmp_path / ".prefect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"CROWDCLUST_PROJECT_DIR": str(tmp_path), "TOLOKA_TOKEN": emu.token}
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
    emu.control("config", method="POST", speed=2.0)  # a wait that lasts: the signal lands mid-wait
    return subprocess.Popen(
        command,
        env=env,
        stdout=streams.get("stdout", subprocess.PIPE),
        stderr=streams.get("stderr", subprocess.PIPE),
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
        preexec_fn=_signal_defaults,
    )


def _signal_defaults() -> None:
    """In the child: SIGINT and SIGHUP at their defaults, as in a terminal's foreground job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_a_run_folder_that_cannot_take_the_export_names_it_and_the_same_command_goes_on_unpaid(
    emu, config, tmp_path, migrated_prefect_home
):
    """A run folder made read-only while the crowd answered (or a full disk) ended the run with
    `error: PermissionError: [Errno 13] Permission denied: 'runs/x/.attempts.json.71d367f8.tmp'`: a
    relative path, a temporary file's name (the export's own error lost behind the attempts file's),
    and no word of the answers paid for. Here the export's name is taken by a folder, which refuses
    root as well as a user; the same command, once it is free, exports the same answers."""
    key = "faults-unwritable"
    params = load_params(config, {"run_key": key})
    folder = (params.runs_dir / f"{params.name}__{key}").absolute()
    (folder / "assignments_main.tsv").mkdir(parents=True)
    migrated_prefect_home(tmp_path / ".prefect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"CROWDCLUST_PROJECT_DIR": str(tmp_path), "TOLOKA_TOKEN": emu.token}
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert first.returncode == 1 and len(errors) == 1, first.stderr[-5000:]
    assert errors[0] == (
        f"error: {folder}/assignments_main.tsv: Is a directory. What was paid for stays on Toloka under run "
        f"key {key}: once the folder can be written, run the same command again: finished stages are "
        "reused and nothing is paid twice"
    )
    paid = _spent(emu, key)
    assert paid > 0

    (folder / "assignments_main.tsv").rmdir()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "$0.00 of it in this run" in again.stdout, again.stdout
    assert _spent(emu, key) == paid
    exported = (folder / "assignments_main.tsv").read_text().splitlines()
    assert len(exported) > 1 and exported[0].startswith("INPUT:")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_ctrl_c_or_a_closed_terminal_closes_the_pools(emu, config, tmp_path, signum, migrated_prefect_home):
    """`crowdclust run` with no Prefect server named, signalled as a terminal does: to the group.

    With Prefect's ephemeral server (a child in the same group) Ctrl-C stopped the server too: the
    run retried against it for two minutes, left its pools open and blamed Toloka. A closed terminal
    (SIGHUP) killed the run where it stood, its pools open for the crowd to finish. The project's
    Prefect home has its database already, as after a first run: its private server skips creating
    the schema (about 4 of its 10 CPU-seconds)."""
    name = signal.Signals(signum).name
    key = f"faults-{name.lower()}"
    run = _run_as_a_terminal_does(emu, config, tmp_path, key, migrated_prefect_home)
    try:
        _until_the_main_pool_opens(emu, key, run)
        os.killpg(run.pid, signum)
        err = _stderr_once_exited(run, 120, name)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        emu.control("config", method="POST", speed=600.0)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert run.returncode == 128 + signum and len(errors) == 1, err
    assert f"interrupted by {name}" in errors[0], err
    # The hook or the command closed them; it read "no pool or training ... was left open".
    assert "was left open" not in errors[0] and "closed" in errors[0], err
    assert _objects(emu, key)["open"] == []


def test_ctrl_c_pressed_again_while_the_pools_close_still_closes_them_and_says_so(
    emu, config, tmp_path, migrated_prefect_home
):
    """Ctrl-C pressed again and again, as a user does when the command does not stop at once, while
    each request to the platform takes 300 ms: the later presses raised in the middle of the closing
    the first one began (the flow run's hook, then the command's own), and the command ended with
    exit 130, no `error:` line and the main pool and the training open for the crowd to answer, paid,
    with nobody gating the exam."""
    key = "faults-ctrl-c-again"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err_file:  # read while it runs: the presses stop at its error line
        run = _run_as_a_terminal_does(
            emu, config, tmp_path, key, migrated_prefect_home, stdout=subprocess.DEVNULL, stderr=err_file
        )
    presses = 0
    try:
        _until_the_main_pool_opens(emu, key, run)
        emu.control("config", method="POST", latency_ms=300)  # every close waits on the platform
        while run.poll() is None and "error:" not in stderr.read_text() and presses < 400:
            os.killpg(run.pid, signal.SIGINT)
            presses += 1
            time.sleep(0.25)
        run.wait(120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        emu.control("config", method="POST", speed=600.0, latency_ms=0)
    err = stderr.read_text()
    assert presses > 1, err  # pressed again while the first press's closing ran
    # A press after the error line may land as the interpreter exits: a shell says 130 for both.
    assert run.returncode in (130, -signal.SIGINT), err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGINT" in errors[0], err
    assert _objects(emu, key)["open"] == []


def test_ctrl_c_under_a_storm_of_429s_still_closes_the_pools(emu, config, tmp_path, migrated_prefect_home):
    """Ctrl-C while Toloka refuses all but 2 requests a second (429 TOO_MANY_REQUESTS): closing
    takes some 8 requests, and each try, retried at once, got 2 of them through. The hooks' closes and
    the command's own all failed; the command said `could not close the pools of run key K
    (TooManyRequestsApiError); run the same command again to resume`, and the main pool stayed open
    for the crowd (a 1,000-image run's, with 900 answers to pay for). The command's close now backs
    off and tries again."""
    key = "faults-ctrl-c-429"
    run = _run_as_a_terminal_does(emu, config, tmp_path, key, migrated_prefect_home)
    try:
        _until_the_main_pool_opens(emu, key, run)
        emu.control("config", method="POST", rate_limit=2)
        os.killpg(run.pid, signal.SIGINT)
        err = _stderr_once_exited(run, 180, "SIGINT")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        emu.control("config", method="POST", speed=600.0, rate_limit=0)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert run.returncode == 130 and len(errors) == 1, err
    assert "interrupted by SIGINT" in errors[0] and "could not close" not in errors[0], err
    assert _objects(emu, key)["open"] == []


def test_sigterm_mid_wait_closes_pools_and_a_second_run_of_the_key_on_another_host_fails_at_once(
    prefect_harness, emu, config, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    key = "faults-signal"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "CROWDCLUST_PROJECT_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "crowdclust.cli", "run", str(config), "--run-key", key]
    emu.control("config", method="POST", speed=2.0)  # a wait that lasts: the signal lands mid-wait
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until_the_main_pool_opens(emu, key, first)

        elsewhere = tmp_path / "another-host"  # its own lock folder: only the Prefect server is shared
        elsewhere.mkdir()
        second = subprocess.run(
            command, env={**env, "TMPDIR": str(elsewhere)}, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 1, second.stderr
        assert f"run key {key} is already running (pid {first.pid} on host" in second.stderr, second.stderr
        assert "Prefect concurrency limit crowdclust-run-" in second.stderr, second.stderr
        assert first.poll() is None, first.communicate()
        assert _objects(emu, key)["open"], "the second run's failure closed the first run's pools"

        first.send_signal(signal.SIGTERM)
        err = _stderr_once_exited(first, 90, "SIGTERM")
    finally:
        if first.poll() is None:
            first.kill()
        emu.control("config", method="POST", speed=600.0)
    assert first.returncode == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0], err
    stopped = _objects(emu, key)
    assert stopped["open"] == [], stopped

    from flows.pipeline import crowdclust_pipeline

    crowdclust_pipeline(_params(config, key))  # the rerun resumes the same objects
    resumed = _objects(emu, key)
    _one_of_each(resumed, planned_hits=9)
    assert resumed["pools"]["main-pool"].id == stopped["pools"]["main-pool"].id


STOPPED_FLOW = """
import faulthandler, signal, sys
# A hang's SIGUSR1 (`_stderr_once_exited`) prints every thread's stack; it killed a plain `python -c`.
faulthandler.register(signal.SIGUSR1, all_threads=True)
from prefect import flow
from flows.hooks import CLOSES_POOLS
from tasks.params import PipelineParams
from tasks.pause import pause

@flow(name="crowdclust-pipeline", **CLOSES_POOLS)
def stopped(params: PipelineParams) -> None:
    print("running", flush=True)
    pause(120)  # as the wait sleeps between polls: `time.sleep` slept through a SIGTERM due

stopped(PipelineParams.model_validate_json(sys.argv[1]))
"""


def test_a_flow_run_process_stopped_from_outside_sends_its_crash_lines_before_it_dies(
    prefect_harness, emu, config
):
    """A worker's flow-run process (here one with the pipeline's hooks and no handler of its own)
    stopped by SIGTERM: Prefect marks the run Crashed, runs its hooks, then re-sends itself the
    signal under the default handler and dies without flushing its log queue. The run's page ended
    at its last poll, without "Crash detected" or the hook's line of what it closed.

    Signalled as its flow falls asleep, when its log and event workers send the run's first lines:
    with `time.sleep(120)` the process could hang (4 of 44 runs under load; likely the 2 of 3 full
    suites that hung with another lane order), its SIGTERM noted during a wait for the GIL and
    handled only after the sleep (`tasks.pause`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    key = f"faults-outside-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", STOPPED_FLOW, _params(config, key).model_dump_json()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "running\n", process.communicate()
        process.send_signal(signal.SIGTERM)
        err = _stderr_once_exited(process, 60, "SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGTERM, err
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[key])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert run.state is not None and run.state.is_crashed(), run.state
    messages = "\n".join(log.message for log in logs)
    assert "Crash detected" in messages, messages
    assert f"run {key} ended CRASHED: closed nothing: none was left open" in messages, messages
    assert "(nothing is paid twice): run the same command again" in messages, messages


RUN_FLOW = """
import sys
from flows.pipeline import crowdclust_pipeline
from tasks.params import PipelineParams

crowdclust_pipeline(PipelineParams.model_validate_json(sys.argv[1]))
"""


def test_a_flow_run_process_stopped_under_a_storm_of_429s_closes_its_pools(prefect_harness, emu, config):
    """A flow-run process (a worker's, which no `crowdclust run` follows to close what is left)
    stopped by SIGTERM mid-wait while Toloka refuses all but 2 requests a second: its hook's client
    retried a 429 once, at once, so each of the hook's tries got 2 of the close's requests through
    and failed ("could not close the run's pools (TooManyRequestsApiError ...)"), and the main pool
    stayed open for the crowd. The hook's client now backs off before its later retries."""
    from prefect.settings import PREFECT_API_URL

    key = "faults-hook-429"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT)}
    emu.control("config", method="POST", speed=2.0)  # a wait that lasts: the signal lands mid-wait
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_FLOW, _params(config, key).model_dump_json()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _until_the_main_pool_opens(emu, key, process)
        emu.control("config", method="POST", rate_limit=2)
        process.send_signal(signal.SIGTERM)
        err = _stderr_once_exited(process, 180, "SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
        emu.control("config", method="POST", speed=600.0, rate_limit=0)
    assert process.returncode == -signal.SIGTERM, err
    assert "could not close the run's pools" not in err, err
    assert _objects(emu, key)["open"] == []


def test_stale_cache_after_a_platform_reset_is_caught(prefect_harness, emu, config, monkeypatch):
    """Warm cache, fresh platform whose ids now belong to another run: a clear error, never its pool."""
    from prefect import flow
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from tasks import preflight, setup
    from tasks.toloka_api import RunRegistry, StaleRunError
    from tasks.toloka_config import Placeholders, load_bundle

    params = _params(config, "faults-stale", toloka={"url": "http://127.0.0.1:1"})  # reached via local_url
    bundle = load_bundle(params.toloka_dir)
    values = Placeholders.of(params)

    @flow
    def set_up() -> Any:
        ids = setup.setup_labelling_task(params.toloka, "faults-stale", bundle, values, "Stale")
        preflight.verify_labelling_task(params.toloka, "faults-stale", ids, setup.MAIN_POOL, bundle, values)
        return ids

    # The same account on both: a platform that lost the account's objects (a fresh emulator state is
    # a new account unless told otherwise, see the end of this test).
    account = EmulatorSettings(port=0, token=TOKEN, catalogue_size=30, account="lost-its-objects")
    with run_in_background(account) as first:
        monkeypatch.setenv("CROWDCLUST_LOCAL_URL", first.url)
        before = set_up()
    with run_in_background(account) as reset:
        monkeypatch.setenv("CROWDCLUST_LOCAL_URL", reset.url)
        foreign = setup.setup_labelling(RunRegistry(_client(reset), "someone-else"), bundle, values, "Other")
        assert foreign.main_pool == before.main_pool  # the same ids now name another run's objects
        lost = _client(reset).get_requester().id
        with pytest.raises(StaleRunError, match=r"no longer has this run's objects.*--fresh"):
            set_up()
        with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
            fresh = set_up()
        assert set(fresh.as_dict().values()).isdisjoint(foreign.as_dict().values())

        monkeypatch.setenv("TOLOKA_TOKEN", "a-wrong-token")  # warm cache, wrong token: must fail
        with pytest.raises(Exception, match=r"401|refused the token"):
            set_up()
    monkeypatch.setenv("TOLOKA_TOKEN", TOKEN)
    with run_in_background(EmulatorSettings(port=0, token=TOKEN, catalogue_size=30)) as restarted:
        # A restarted in-memory emulator is a new account: nothing cached for the old one is used,
        # so the same ids are created again here (no stale error, no --fresh needed) ...
        monkeypatch.setenv("CROWDCLUST_LOCAL_URL", restarted.url)
        assert set_up() == before
        # ... and a stage keyed by object ids alone (wait, export) can never be served another
        # instance's result for an object of the same id.
        assert _client(restarted).get_requester().id != lost


def test_a_token_saved_with_a_character_no_header_can_carry_reaches_no_log_and_no_result(
    prefect_harness, emu, config, results_dir, monkeypatch
):
    """A token pasted into its Secret block with a zero-width space after it (invisible in the UI's
    field and in a terminal): httpx failed the run's first request with `UnicodeEncodeError('ascii',
    'OAuth <token>\u200b', 40, 41, ...)`, which Prefect logged as it is ("Encountered exception during
    execution: ...", in the run's log and the UI) and persisted as the failed run's result, pickled in
    the result storage every worker shares. The token is now refused as it is read, without it."""
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    from flows.labelling import labelling

    block = "faults-pasted-token"
    Secret(value=TOKEN + "\u200b").save(block, overwrite=True)
    monkeypatch.delenv("TOLOKA_TOKEN")
    params = _params(config, "faults-pasted", toloka={"token_secret_block": block})
    before = {path for path in results_dir.rglob("*") if path.is_file()}
    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):  # as the service's workers
        state = labelling(params, return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    assert logs and all(TOKEN not in log.message for log in logs), [log.message for log in logs]
    written = [path for path in results_dir.rglob("*") if path.is_file() and path not in before]
    assert written, "the failed run's result was not persisted"  # so the check below checks something
    assert all(TOKEN.encode() not in persisted_bytes(path) for path in written), written
    assert (
        f"the Toloka token in the Prefect Secret block '{block}' cannot be used: it holds a character "
        "an HTTP header cannot carry (U+200B, ZERO WIDTH SPACE)"
    ) in str(state.message), state.message
    assert _objects(emu, "faults-pasted")["pools"] == {}  # refused before anything was created


def test_a_token_read_with_its_line_end_is_sent_without_it(emu, config, monkeypatch):
    """`TOLOKA_TOKEN` from a `.env` file with Windows line ends ends in a carriage return: httpx
    refused the header (`Illegal header value b'OAuth <token>\\r'`, the token in the error's text)
    and the run read "cannot reach Toloka" with the emulator up. Surrounding whitespace is dropped."""
    from tasks.toloka_api import probe

    monkeypatch.setenv("TOLOKA_TOKEN", TOKEN + "\r\n")
    assert probe(_params(config, "faults-line-end").toloka, attempts=1)


def test_a_run_refused_for_its_parameters_logs_none_of_their_values(prefect_harness, config):
    """A token given as the Secret block's name in a run Prefect made before its deployment had the
    check (or of a server that does not enforce the parameters' schema): Prefect failed the run on
    its parameters, naming the field only, and the hook that closes pools logged pydantic's error,
    `input_value='<the token>'` and all."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.labelling import labelling

    token = f"AQAD-{uuid.uuid4().hex}-Secret"
    raw = _params(config, "faults-unvalidated").model_dump(mode="json")
    raw["toloka"]["token_secret_block"] = token
    state = labelling(raw, return_state=True)
    assert state.is_failed() and "params.toloka.token_secret_block" in str(state.message), state.message
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    assert all(token not in log.message for log in logs), [log.message for log in logs]
    assert any("opened nothing to close" in log.message for log in logs), [log.message for log in logs]
    assert token not in str(state.message)
