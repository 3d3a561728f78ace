"""Money and state under faults inside the flow: the real flow in this process on the lane's Prefect
harness, the real toloka-kit client and one emulator.

The emulator's faults and speed are changed per test through its control route. Small runs: the
demo catalogue at 30 images, overlap 3, one exam, no intruder evaluation. Runs as processes of their
own, stopped by signals, are in `test_faults_signals.py`, a lane of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorSettings, run_in_background
from tasks.params import PipelineParams
from tests.fixtures.emulator import small_run_config
from tests.fixtures.faults import (
    MAX_SPEND,
    TOKEN,
    faults_client,
    faults_config,
    faults_emulator,
    faults_objects,
    faults_params,
    faults_spent,
    one_of_each,
)
from tests.fixtures.prefect import persisted_bytes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
POLL_STEP = 8.0  # simulated seconds of crowd work per poll in the live-guard test (30x at 0.25 s)
POLL_STEP_SLOW = 2.0  # simulated seconds of crowd work per poll in the poll-lines test


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with faults_emulator() as running:
        yield running


@pytest.fixture(scope="module")
def config(emu: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return faults_config(emu, tmp_path_factory)


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
        summary = crowdclust_pipeline(faults_params(config, "faults-e2e"))
    finally:
        emu.control("config", method="POST", fail_rate=0.0, latency_ms=0)
    one_of_each(faults_objects(emu, "faults-e2e"), planned_hits=9)
    spent = faults_spent(emu, "faults-e2e")
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
    params = faults_params(config, key)
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
    found = faults_objects(emu, key)
    assert str(found["pools"]["main-pool"].status.value) == "CLOSED" and not found["open"], found
    spent = faults_spent(emu, key)
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
    params = faults_params(config, key)
    bundle, plan, estimate = _plan_of(params)
    client = faults_client(emu)

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
    params = faults_params(config, key)
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

    params = faults_params(
        config, "faults-starved", exam={"expected_workers": 1, "min_skill": 100}, hits={"overlap": 10}
    )
    started = time.monotonic()
    with pytest.raises(
        ExamStarved, match=r"only [1-9] worker\(s\) reached the skill 100, fewer than the 10 different"
    ):
        crowdclust_pipeline(params)
    assert time.monotonic() - started < 120  # not the wait's 300 s timeout
    found = faults_objects(emu, "faults-starved")
    assert str(found["pools"]["exam-pool"].status.value) == "CLOSED" and not found["open"], found

    # The error's advice, followed under the same run key: more seats and a lower pass mark. The
    # same exam pool gets the seats (its suites' overlap) and the main pool the new skill filter;
    # before, both kept what they were made with and the run starved again, whatever the config said.
    raised = faults_params(
        config, "faults-starved", exam={"expected_workers": 12, "min_skill": 75}, hits={"overlap": 4}
    )
    crowdclust_pipeline(raised)
    after = faults_objects(emu, "faults-starved")
    one_of_each(after, planned_hits=9)
    exam_pool = after["pools"]["exam-pool"]
    assert (
        exam_pool.id == found["pools"]["exam-pool"].id
        and exam_pool.defaults.default_overlap_for_new_task_suites == 12
    )
    # 11 seats more on every suite, on top of those its quality control added for rejected answers
    assert min(suite.overlap for suite in faults_client(emu).get_task_suites(pool_id=exam_pool.id)) >= 12
    main = after["pools"]["main-pool"]
    answers = [
        a
        for a in faults_client(emu).get_assignments(pool_id=main.id)
        if a.status.value in ("SUBMITTED", "ACCEPTED")
    ]
    assert main.id == found["pools"]["main-pool"].id and len(answers) == 9 * 4, len(answers)

    # A changed HIT plan under the same key: before, its HITs joined the old ones in the same pool,
    # and the crowd answered both designs into one export (47% over the estimate in a user's run).
    from tasks.toloka_api import PlanChanged

    with pytest.raises(PlanChanged, match=r"holds 9 HIT\(s\) that are not in this run's plan of 15"):
        crowdclust_pipeline(faults_params(config, "faults-starved", hits={"size": 6, "overlap": 4}))
    assert faults_objects(emu, "faults-starved")["suites"][main.id] == 9  # nothing was uploaded


def test_a_refused_plan_with_a_raised_overlap_never_opens_the_finished_pool(prefect_harness, emu, config):
    """A finished run's config changed twice over, `hits.size` and `hits.overlap`: the HIT plan's
    check refuses the run before anything is uploaded, but the setup before it had given the
    completed main pool the new overlap and opened it, and the crowd answered (and was paid) until
    the failure hook closed it: 2 answers in a try on the demo config. The pool is never opened by
    a run that is refused; the emulator records every opening as an operation."""
    from flows.pipeline import crowdclust_pipeline
    from tasks.toloka_api import PlanChanged

    crowdclust_pipeline(faults_params(config, "faults-replan"))
    client = faults_client(emu)
    main = faults_objects(emu, "faults-replan")["pools"]["main-pool"]

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
        crowdclust_pipeline(faults_params(config, "faults-replan", hits={"size": 6, "overlap": 5}))
    assert openings() == opened and answers() == answered
    assert str(client.get_pool(main.id).status.value) == "CLOSED"


def test_an_overlap_lowered_and_raised_back_pays_no_answer_above_it(prefect_harness, emu, config):
    """A finished run resumed at a lower `hits.overlap` keeps the answers its HITs hold (8 -> 7: each
    suite stays at 8, what it holds), and raised back to 8 every suite was moved up by one from there:
    9 answers per HIT, one more than the config asked, paid ($2.13 on the demo, "9% above the
    estimate"). Back at the first run's settings exactly, the setup stage comes from that run's
    cache: the pool kept overlap 2 (the uncached check of the ids now gives it the config's)."""
    from flows.pipeline import crowdclust_pipeline

    crowdclust_pipeline(faults_params(config, "faults-relower"))  # overlap 3
    crowdclust_pipeline(faults_params(config, "faults-relower", hits={"overlap": 2}))
    crowdclust_pipeline(faults_params(config, "faults-relower"))  # back to 3: as the first run, cached setup
    client = faults_client(emu)
    main = faults_objects(emu, "faults-relower")["pools"]["main-pool"]
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
    crowdclust_pipeline(faults_params(config, key))  # exam.expected_workers 8
    lowered = crowdclust_pipeline(faults_params(config, key, exam={"expected_workers": 4}))
    crowdclust_pipeline(faults_params(config, key))  # back to 8
    # Above its estimate (4 seats) by the seats the first run paid, at the config's price: the run
    # said "18% above the estimate: check budget.fee_rate", with the fee right and nothing paid.
    assert lowered.cost.added == pytest.approx(0.0, abs=0.001) and lowered.cost.over_estimate is not None
    said = lowered.cost.over_estimate_text()
    assert "budget.fee_rate" not in said and "bought under other settings" in said, said
    client = faults_client(emu)
    exam_pool = faults_objects(emu, key)["pools"]["exam-pool"]
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
    crowdclust_pipeline(faults_params(config, key, intruders=first))
    crowdclust_pipeline(faults_params(config, key, intruders={**first, "overlap": 2, "reward": 0.03}))
    crowdclust_pipeline(faults_params(config, key, intruders=first))  # as the first run: its cached setup
    pools = faults_objects(emu, key)["pools"]
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
        params = faults_params(small_run_config(tmp_path, tiny.url, "tiny", MAX_SPEND), "faults-tiny")
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
        return RunRegistry(faults_client(emu), key).spent(lambda role: role == "main-pool")

    first = crowdclust_pipeline(faults_params(config, key))
    pool, before = faults_objects(emu, key)["pools"]["main-pool"], main_spent()
    assert first.aggregation.n_hits == 9 and str(pool.status.value) == "CLOSED"
    more = crowdclust_pipeline(faults_params(config, key, hits={"hits_per_item": 4}))
    after = faults_objects(emu, key)
    one_of_each(after, planned_hits=12)
    assert after["pools"]["main-pool"].id == pool.id
    answered = [
        a
        for a in faults_client(emu).get_assignments(pool_id=pool.id)
        if a.status.value in ("SUBMITTED", "ACCEPTED")
    ]
    assert len(answered) == 12 * 3 and more.aggregation.n_hits == 12, (len(answered), more.aggregation)
    # The main pool was paid for the 9 new answers only (the exam pool, reopened for gating, may
    # fill seats the first run left, within the estimate); the run says what it added.
    per_answer = before / (9 * 3)  # the reward and the platform's fee
    assert main_spent() - before == pytest.approx(3 * 3 * per_answer, abs=0.001)
    assert more.cost.added == pytest.approx(faults_spent(emu, key) - first.cost.by_run_key, abs=0.001)

    # Overlap lowered to 2 under the same key: the 12 answers above it are paid all the same. A
    # max_spend that the plan at overlap 2 fits, but not those answers, is refused before anything
    # changes (a user's resume at a lower overlap charged $16.33 against a max_spend of $14.60).
    from tasks.budget import BudgetExceeded, estimate_labelling
    from tasks.toloka_config import load_bundle

    lowered = {"hits_per_item": 4, "overlap": 2}
    lower = faults_params(config, key, hits=lowered)
    plan_only = estimate_labelling(lower, load_bundle(lower.toloka_dir), 12)
    tight = faults_params(config, key, hits=lowered, budget={"max_spend": plan_only.total + 0.1})
    spent = faults_spent(emu, key)
    with pytest.raises(BudgetExceeded, match=r"exceeds budget\.max_spend"):
        crowdclust_pipeline(tight)
    assert faults_spent(emu, key) == pytest.approx(spent, abs=0.001)
    assert faults_objects(emu, key)["pools"]["main-pool"].defaults.default_overlap_for_new_task_suites == 3


def test_stale_cache_after_a_platform_reset_is_caught(prefect_harness, emu, config, monkeypatch):
    """Warm cache, fresh platform whose ids now belong to another run: a clear error, never its pool."""
    from prefect import flow
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from tasks import preflight, setup
    from tasks.toloka_api import RunRegistry, StaleRunError
    from tasks.toloka_config import Placeholders, load_bundle

    params = faults_params(
        config, "faults-stale", toloka={"url": "http://127.0.0.1:1"}
    )  # reached via local_url
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
        foreign = setup.setup_labelling(
            RunRegistry(faults_client(reset), "someone-else"), bundle, values, "Other"
        )
        assert foreign.main_pool == before.main_pool  # the same ids now name another run's objects
        lost = faults_client(reset).get_requester().id
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
        assert faults_client(restarted).get_requester().id != lost


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
    params = faults_params(config, "faults-pasted", toloka={"token_secret_block": block})
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
    assert faults_objects(emu, "faults-pasted")["pools"] == {}  # refused before anything was created


def test_a_token_read_with_its_line_end_is_sent_without_it(emu, config, monkeypatch):
    """`TOLOKA_TOKEN` from a `.env` file with Windows line ends ends in a carriage return: httpx
    refused the header (`Illegal header value b'OAuth <token>\\r'`, the token in the error's text)
    and the run read "cannot reach Toloka" with the emulator up. Surrounding whitespace is dropped."""
    from tasks.toloka_api import probe

    monkeypatch.setenv("TOLOKA_TOKEN", TOKEN + "\r\n")
    assert probe(faults_params(config, "faults-line-end").toloka, attempts=1)


def test_a_run_refused_for_its_parameters_logs_none_of_their_values(prefect_harness, config):
    """A token given as the Secret block's name in a run Prefect made before its deployment had the
    check (or of a server that does not enforce the parameters' schema): Prefect failed the run on
    its parameters, naming the field only, and the hook that closes pools logged pydantic's error,
    `input_value='<the token>'` and all."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.labelling import labelling

    token = f"AQAD-{uuid.uuid4().hex}-Secret"
    raw = faults_params(config, "faults-unvalidated").model_dump(mode="json")
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
