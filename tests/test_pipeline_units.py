"""Plain functions of the pipeline stages (no Prefect, no emulator): HIT plans, exam gating, budget,
intruder HITs and accuracy, report rendering."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks import budget, exam, hits, intruders, report, wait
from tasks.params import HitParams, PipelineParams, load_params
from tasks.run_folder import RunFolder
from tasks.stages import (
    Aggregated,
    AggregationInfo,
    ClusterAccuracy,
    Cost,
    CostEstimate,
    Evaluation,
    ExamTotals,
    LabellingIds,
    PoolStats,
)
from tasks.toloka_config import load_bundle

ITEMS = [f"https://img/{i:03d}.png" for i in range(82)]


# ------------------------------------------------------------------------------------------ HIT plans


def test_balanced_design_covers_every_item_equally_and_is_connected():
    plan = hits.plan_hits(ITEMS, HitParams(), seed=0)
    cover = hits.coverage(plan, ITEMS)
    assert (cover.n_hits, cover.min, cover.max, cover.connected) == (82, 10, 10, True)
    assert all(len(hit) == len(set(hit)) == 10 for hit in plan)
    assert cover.describe() == (
        "82 HITs over 82 images, each image in 10 HITs (mean 10.0); the HITs link every image to every other"
    )


def test_a_plan_in_pieces_is_described_as_such():
    """What the `hit-coverage` and `run-overview` artifacts say of HITs that share no image."""
    cover = hits.coverage([ITEMS[:3], ITEMS[3:6], ITEMS[:2]], ITEMS[:6])
    assert not cover.connected
    assert cover.describe() == (
        "3 HITs over 6 images, each image in 1-2 HITs (mean 1.3); "
        "the HITs fall into groups that share no image, so no answer relates images across them"
    )


def test_plans_are_deterministic_and_seeded():
    assert hits.plan_hits(ITEMS, HitParams(), 3) == hits.plan_hits(list(reversed(ITEMS)), HitParams(), 3)
    assert hits.plan_hits(ITEMS, HitParams(), 3) != hits.plan_hits(ITEMS, HitParams(), 4)


def test_seed_design_reproduces_the_notebook_shape():
    plan = hits.plan_hits(ITEMS, HitParams(design="seed"), seed=0)
    cover = hits.coverage(plan, ITEMS)
    assert cover.n_hits == 82 and cover.min >= 1 and cover.connected
    assert all(len(hit) == len(set(hit)) == 10 for hit in plan)


def test_uneven_sizes_stay_within_one_of_the_target():
    items = ITEMS[:77]
    plan = hits.plan_hits(items, HitParams(hits_per_item=7), seed=1)
    cover = hits.coverage(plan, items)
    assert cover.min == 7 and cover.max <= 8


def test_too_few_items_is_a_clear_error():
    with pytest.raises(hits.HitPlanError, match="cannot fill a HIT"):
        hits.plan_hits(ITEMS[:5], HitParams(), seed=0)


# ------------------------------------------------------------------------------------------ exam gating


def test_partition_equality_ignores_the_colour_numbers():
    assert exam.exam_score([1, 1, 2, 3], [5, 5, 9, 2]) == 100
    assert exam.exam_score([1, 1, 2, 3], [1, 2, 2, 3]) < 100


def test_exam_score_follows_the_seed_formula():
    golden = [1, 1, 2, 2, 3, 3]
    assert exam.exam_score([4, 4, 7, 7, 1, 1], golden) == 100
    assert exam.exam_score([1, 1, 2, 2, 2, 2], golden) == pytest.approx(100 / 3)  # one of three groups exact
    assert exam.exam_score([1, 2, 3, 4, 5, 6], golden) == 0
    assert exam.exam_score([1, 1], golden) == 0 and exam.exam_score(None, golden) == 0
    assert exam.skill_value([100, 100, 100, 100], 3) == 100
    assert exam.skill_value([100, 50], 3) == pytest.approx(50)


@dataclass
class _Assignment:
    id: str
    user_id: str
    status: str
    images: list[str]
    groups: list[int]

    @property
    def tasks(self) -> list[Any]:
        return [type("T", (), {"input_values": {"images": self.images}})()]

    @property
    def solutions(self) -> list[Any]:
        return [type("S", (), {"output_values": {"result": [{"group": g} for g in self.groups]}})()]


@dataclass
class _ExamPool:
    """The five client calls gating makes, over an in-memory exam pool."""

    assignments: list[_Assignment]
    skills: dict[str, Decimal] = field(default_factory=dict)
    puts: int = 0
    searches: int = 0

    def get_assignments(self, pool_id: str, status: Any) -> list[_Assignment]:
        self.searches += 1
        wanted = {status} if isinstance(status, str) else set(status)
        return [a for a in self.assignments if a.status in wanted]

    def accept_assignment(self, assignment_id: str, comment: str) -> None:
        self._set(assignment_id, "ACCEPTED")

    def reject_assignment(self, assignment_id: str, comment: str) -> None:
        self._set(assignment_id, "REJECTED")

    def _set(self, assignment_id: str, status: str) -> None:
        (a,) = [a for a in self.assignments if a.id == assignment_id]
        a.status = status

    def set_user_skill(self, skill_id: str, user_id: str, value: Decimal) -> None:
        self.skills[user_id] = value
        self.puts += 1

    def get_user_skills(self, skill_id: str) -> list[Any]:
        return [SimpleNamespace(user_id=u, exact_value=v, value=round(v)) for u, v in self.skills.items()]


@dataclass
class _SlowFlakyExamPool(_ExamPool):
    """Each review takes 50 ms (counting how many are in flight) and `broken` ones fail."""

    broken: set[str] = field(default_factory=set)
    refused: dict[str, Exception] = field(default_factory=dict)  # raised instead, as Toloka's answer
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _set(self, assignment_id: str, status: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.05)
        with self.lock:
            self.in_flight -= 1
        if assignment_id in self.broken:
            raise ConnectionError(f"review of {assignment_id} failed")
        if assignment_id in self.refused:
            raise self.refused[assignment_id]
        super()._set(assignment_id, status)


def test_gating_accepts_exact_rejects_the_rest_and_never_double_counts():
    images = [("a", "b", "c", "d"), ("e", "f", "g", "h"), ("i", "j", "k", "l")]
    goldens = {imgs: (1, 1, 2, 2) for imgs in images}
    pool = _ExamPool(
        [
            _Assignment("1", "good", "SUBMITTED", list(images[0]), [3, 3, 1, 1]),
            _Assignment("2", "good", "SUBMITTED", list(images[1]), [1, 1, 2, 2]),
            _Assignment("3", "good", "SUBMITTED", list(images[2]), [1, 1, 2, 3]),  # one group of two right
            _Assignment("4", "colour", "SUBMITTED", list(images[0]), [1, 2, 1, 2]),
        ]
    )
    state = exam.GatingState.empty()
    totals = exam.gate_exams(pool, "exam", "skill", goldens, 3, state)
    assert totals == exam.ExamTotals(accepted=2, rejected=2, skills_set=2)
    assert [a.status for a in pool.assignments] == ["ACCEPTED", "ACCEPTED", "REJECTED", "REJECTED"]
    assert float(pool.skills["good"]) == pytest.approx(250 / 3)
    assert float(pool.skills["colour"]) == 0
    # Re-running (same process or a resumed run with a fresh state) recomputes, never adds, and sends
    # nothing Toloka holds already (a retried wait under a rate limit re-sent all ~300 skill values).
    puts = pool.puts
    for fresh in (state, exam.GatingState.empty()):
        assert exam.gate_exams(pool, "exam", "skill", goldens, 3, fresh).skills_set == 0
        assert float(pool.skills["good"]) == pytest.approx(250 / 3)
    assert pool.puts == puts
    # A tick reads the reviewed exams only once per session: later ticks search new submissions only.
    searches = pool.searches
    exam.gate_exams(pool, "exam", "skill", goldens, 3, state)
    assert pool.searches == searches + 1


def test_gating_sends_a_ticks_reviews_together_and_keeps_what_succeeded_when_one_fails():
    images = [tuple(f"{n}{i}" for i in range(4)) for n in range(16)]
    goldens = {imgs: (1, 1, 2, 2) for imgs in images}
    pool = _SlowFlakyExamPool(
        [
            _Assignment(str(n), f"w{n % 4}", "SUBMITTED", list(imgs), [1, 1, 2, 2])
            for n, imgs in enumerate(images)
        ],
        broken={"5"},
    )
    state = exam.GatingState.empty()
    with pytest.raises(ConnectionError, match="review of 5"):
        exam.gate_exams(pool, "exam", "skill", goldens, 3, state)
    assert pool.most_in_flight > 1  # not one after another
    assert state.reviewed is not None and sorted(state.reviewed, key=int) == [
        str(n) for n in range(16) if n != 5
    ]
    pool.broken.clear()  # the next tick reviews the one that failed and sets every skill
    totals = exam.gate_exams(pool, "exam", "skill", goldens, 3, state)
    assert totals.accepted == 1 and totals.skills_set == 4
    assert {a.status for a in pool.assignments} == {"ACCEPTED"}
    assert {w: float(v) for w, v in pool.skills.items()} == {f"w{k}": 100.0 for k in range(4)}


def test_a_review_the_rate_limit_refused_is_sent_again_and_only_a_409_counts_as_already_reviewed(caplog):
    """A 429 that outlived toloka-kit's retries was taken for "already reviewed": the answer stayed
    SUBMITTED, the tick counted it reviewed, and runs under a rate limit ended with exams unreviewed
    (paid days later, outside the cost they reported)."""
    from toloka.client.exceptions import ConflictStateApiError, TooManyRequestsApiError

    images = [tuple(f"{n}{i}" for i in range(4)) for n in range(6)]
    goldens = {imgs: (1, 1, 2, 2) for imgs in images}
    pool = _SlowFlakyExamPool(
        [
            _Assignment(str(n), f"w{n}", "SUBMITTED", list(imgs), [1, 1, 2, 2])
            for n, imgs in enumerate(images)
        ],
        refused={
            "2": TooManyRequestsApiError(status_code=429, code="TOO_MANY_REQUESTS"),
            "4": ConflictStateApiError(status_code=409, code="CONFLICT_STATE"),  # reviewed by an earlier run
        },
    )
    state = exam.GatingState.empty()
    totals = exam.gate_exams(pool, "exam", "skill", goldens, 1, state)  # no exception: the tick goes on
    assert (totals.accepted, totals.skills_set) == (4, 5)  # "4" is already reviewed: counted, not accepted
    assert state.reviewed is not None and sorted(state.reviewed) == ["0", "1", "3", "4", "5"]
    assert [a.status for a in pool.assignments if a.status == "SUBMITTED"] == ["SUBMITTED", "SUBMITTED"]
    assert "rate limit refused 1 of 6 reviews" in caplog.text
    pool.refused.clear()
    pool.assignments[4].status = "ACCEPTED"  # as the earlier run left it
    assert exam.gate_exams(pool, "exam", "skill", goldens, 1, state).accepted == 1
    assert {a.status for a in pool.assignments} == {"ACCEPTED"}
    # Any other error still fails the tick (the wait's retries handle it), after keeping what was done.
    pool.assignments.append(_Assignment("6", "w6", "SUBMITTED", list(images[0]), [1, 1, 2, 2]))
    pool.refused["6"] = ConnectionError("review of 6 failed")
    with pytest.raises(ConnectionError):
        exam.gate_exams(pool, "exam", "skill", goldens, 1, state)


@dataclass
class _ClosedExamPool:
    """An exam pool after its close: `pending` answers in hand or unreviewed, one fewer per review,
    on a platform clock `per_request` seconds ahead at every request."""

    pending: int
    per_request: float = 0.0
    clock: float = 1_800_000_000.0
    open: bool = False
    reopen_with: list[int] = field(default_factory=list)  # answers taken while a review reopened it

    def review(self) -> None:
        self.pending = max(0, self.pending - 1)
        if self.reopen_with:  # a rejection's quality-control rule reopens the pool
            self.open, self.pending = True, self.pending + self.reopen_with.pop(0)

    def close(self) -> bool:
        was_open, self.open = self.open, False
        return was_open

    def get_assignments(self, pool_id: str, status: list[str]) -> list[int]:
        assert status == ["ACTIVE", "SUBMITTED"]
        return list(range(self.pending))

    def _raw_request(self, method: str, path: str) -> Any:
        from email.utils import formatdate

        self.clock += self.per_request
        return SimpleNamespace(headers={"date": formatdate(self.clock, usegmt=True)})


def test_exam_answers_that_arrive_after_the_exam_pool_closed_are_reviewed_before_the_wait_ends():
    """Closing a pool leaves the assignments in hand running: they were submitted after the last
    review and stayed unreviewed (5 in a run under a rate limit)."""
    pool, sleeps = _ClosedExamPool(pending=3), []
    assert wait.drain_exams(pool.review, pool.close, pool, "exam", 2.0, 600.0, sleep=sleeps.append) == 0
    assert pool.pending == 0 and sleeps == [2.0, 2.0]
    # A review that reopened the pool (a late answer rejected) closes it again, and the answers
    # taken meanwhile get their time: the limit counts from there.
    reopened = _ClosedExamPool(pending=1, per_request=400.0, reopen_with=[2])
    assert (
        wait.drain_exams(reopened.review, reopened.close, reopened, "exam", 2.0, 600.0, sleep=sleeps.append)
        == 0
    )
    assert not reopened.open

    # The pool's assignment_max_duration_seconds on the platform's clock bounds it (the emulator's
    # runs 600x): what is left is returned for the warning.
    slow, reviews = _ClosedExamPool(pending=10, per_request=200.0), []
    assert (
        wait.drain_exams(
            lambda: reviews.append(slow.clock), slow.close, slow, "exam", 2.0, 600.0, sleep=sleeps.append
        )
        == 10
    )
    # ... after one last review that starts once the limit has passed (answers submitted during
    # a review that straddled it were left unreviewed).
    assert [at - 1_800_000_200.0 for at in reviews] == [200.0, 400.0, 600.0]  # since the close


def test_a_platform_clock_that_stands_still_ends_the_exam_drain(monkeypatch):
    """An emulator held at speed 0 (as tests hold it) ends nothing in hand: the drain waited the
    pool's 600 s of assignment time in real seconds."""
    now = [0.0]
    monkeypatch.setattr(wait.time, "monotonic", lambda: now[0])
    frozen, reviews = _ClosedExamPool(pending=4), []

    def tick(seconds: float) -> None:
        now[0] += seconds

    left = wait.drain_exams(
        lambda: reviews.append(now[0]), frozen.close, frozen, "exam", 1.0, 600.0, sleep=tick
    )
    assert left == 4 and now[0] == wait.FROZEN_SECONDS and len(reviews) == 3


SLEEPS_THROUGH_A_NOTED_SIGNAL = """
import _thread, signal, sys, threading, time
from tasks.pause import pause

class Stopped(BaseException):
    pass

def stop(*_):
    raise Stopped

signal.signal(signal.SIGTERM, stop)
for sleep, seconds in ((time.sleep, 2.0), (pause, 30.0)):
    # A SIGTERM that lands as the main thread waits for the GIL on its way into a sleep: noted (as
    # `interrupt_main` notes it), its handler due, the sleep not woken.
    threading.Timer(0.3, _thread.interrupt_main, args=(signal.SIGTERM,)).start()
    started = time.monotonic()
    try:
        sleep(seconds)
    except Stopped:
        pass
    print(sleep.__name__, round(time.monotonic() - started, 1), flush=True)
"""


def test_a_stop_noted_as_the_wait_falls_asleep_ends_the_wait_within_a_second():
    """A flow-run process given SIGTERM (`make down`, its worker stopped) as its wait fell asleep
    for a poll of real Toloka (60 s) slept through it, its handler due (CPython runs it between
    bytecodes, after the sleep): SIGKILL 15 s later, no crash hook, pools open. The faults test
    that stops a flow process as it starts to sleep hung so on a loaded machine. The wait's polls
    and the Toloka retries sleep in one-second slices (`tasks.pause`)."""
    import inspect
    import subprocess
    import sys

    from tasks import toloka_api
    from tasks.pause import pause

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", SLEEPS_THROUGH_A_NOTED_SIGNAL],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    slept = dict(line.split() for line in done.stdout.splitlines())
    assert done.returncode == 0 and set(slept) == {"sleep", "pause"}, done.stdout + done.stderr
    assert float(slept["sleep"]) >= 2.0, slept  # the cause: `time.sleep` is not woken
    assert float(slept["pause"]) < 2.5, slept  # 0.3 s, then the end of a one-second slice
    assert inspect.signature(wait.wait_for_pool).parameters["sleep"].default is wait.pause_unless_suspended
    assert inspect.signature(wait.finish_in_hand).parameters["sleep"].default is pause
    assert "pause(" in inspect.getsource(wait.pause_unless_suspended)
    assert "pause_unless_suspended if suspends else pause" in inspect.getsource(wait.drain_exams)
    assert "time.sleep" not in inspect.getsource(toloka_api)


def test_a_suspend_ends_the_waits_sleep_and_the_wait_before_its_next_request(monkeypatch):
    """Suspend pressed on a run's page took effect at its next task: a labelling wait went on until
    its pool completed, and the exam review after it until every answer in hand was in, the crowd
    paid meanwhile. Each wait now ends before its next request to Toloka, and its sleep between
    polls (`pause`) ends at the next one-second slice, not at the end of a 60 s poll."""
    from tasks.pause import pause

    slices: list[float] = []
    monkeypatch.setattr("tasks.pause.time.sleep", slices.append)
    pause(3.5, until=lambda: len(slices) == 2)
    assert slices == [1.0, 1.0]  # then the Suspend: no third slice
    pause(2.0, until=lambda: True)
    assert slices == [1.0, 1.0]

    pressed: list[str] = []
    monkeypatch.setattr(wait, "suspension", lambda: pressed[0] if pressed else None)
    monkeypatch.setattr(wait, "get_run_logger", lambda: logging.getLogger("test-suspend"))
    exams, press = _ClosedExamPool(pending=3), lambda _: pressed.append("Suspended")
    with pytest.raises(wait.Suspended, match="the run was suspended during the review of the exam answers"):
        wait.drain_exams(exams.review, exams.close, exams, "exam", 2.0, 600.0, sleep=press)
    assert exams.pending == 2  # one review, then the Suspend ended it
    # After a stop for money (spend guard, balance) the review goes on: resumed, the wait would
    # open again the main pool the stop had closed.
    stopped, sleeps = _ClosedExamPool(pending=3), []
    monkeypatch.setattr(wait, "pause", lambda seconds: sleeps.append(("pause", seconds)))
    assert wait.drain_exams(stopped.review, stopped.close, stopped, "exam", 2.0, 600.0, suspends=False) == 0
    assert sleeps == [("pause", 2.0), ("pause", 2.0)]  # its sleeps not cut short by the Suspend
    pools = _Pools({"main": ("OPEN", None)})
    with pytest.raises(wait.Suspended, match="the run was suspended during the wait for pool main"):
        wait.wait_for_pool(pools, "main", period=1.0, timeout=60.0)  # type: ignore[arg-type]
    assert pools.reads == 0


@dataclass
class _Pools:
    """`get_pool` over pools given as id -> (status, last close reason), counting the requests."""

    pools: dict[str, tuple[str, str | None]]
    reads: int = 0
    unreviewed: int = 0

    def get_pool(self, pool_id: str) -> Any:
        self.reads += 1
        status, reason = self.pools[pool_id]
        return type("P", (), {"status": status, "last_close_reason": reason})()

    def find_assignments(self, pool_id: str, status: str, limit: int) -> Any:
        self.reads += 1
        assert status == "SUBMITTED"
        return type("R", (), {"items": [f"{pool_id}-{n}" for n in range(min(limit, self.unreviewed))]})()


def test_staffing_ends_the_wait_only_when_the_closed_exam_left_too_few_qualified_workers():
    need = exam.Staffing(min_skill=75, overlap=3)
    two = exam.GatingState(sent={"a": 100.0, "b": 80.0, "c": 60.0})
    done, running = ("CLOSED", "COMPLETED"), ("OPEN", None)
    pools = _Pools({"exam": done, "main": running})
    with pytest.raises(exam.ExamStarved, match=r"only 2 worker.* the 3 different workers"):
        exam.check_staffing(pools, "exam", "main", need, two)
    # The pool completed on answers that arrived after this tick's gating: not starved (yet).
    late = _Pools({"exam": done, "main": running}, unreviewed=1)
    exam.check_staffing(late, "exam", "main", need, two)
    late.unreviewed = 0  # the next tick reviewed them and nobody else reached the skill
    exam.check_staffing(late, "exam", "main", need, two, rejected=1)  # but gave a seat back: not yet
    with pytest.raises(exam.ExamStarved):
        exam.check_staffing(late, "exam", "main", need, two)
    # One piece of advice, saying the same key goes on: `crowdclust run` printed "... and start the
    # run again. Fix the cause and run the same command again: finished stages are reused".
    from crowdclust.commands.run import with_resume

    with pytest.raises(exam.ExamStarved) as starved:
        exam.check_staffing(late, "exam", "main", need, two)
    advice = with_resume(str(starved.value))
    assert advice.endswith(
        "run the same command again: the run key's exam and main pools go on with what they hold"
    )
    assert advice.count("again") == 1, advice
    pools = _Pools({"exam": running, "main": running})  # more workers can still qualify
    exam.check_staffing(pools, "exam", "main", need, two)
    pools = _Pools({"exam": done, "main": done})  # the last tick after completion
    exam.check_staffing(pools, "exam", "main", need, two)
    pools = _Pools({"exam": done, "main": running})
    exam.check_staffing(pools, "exam", "main", need, exam.GatingState(sent={**two.sent, "d": 75.0}))
    assert pools.reads == 0  # enough qualified: no request at all


def test_the_exam_is_closed_for_good_only_with_every_answer_reviewed_and_no_seat_given_back():
    """The short-of-answers warning said "the exam pool is complete with 34 workers qualified" 2 s
    into a wait whose exam answers still waited for review; rejected, they gave their seats back,
    the pool reopened and 83 workers qualified (the demo's config on 820 images)."""
    done, running = ("CLOSED", "COMPLETED"), ("OPEN", None)
    assert not exam.exam_closed_for_good(_Pools({"exam": running}), "exam")
    waiting = _Pools({"exam": done}, unreviewed=2)
    assert not exam.exam_closed_for_good(waiting, "exam")
    waiting.unreviewed = 0
    assert exam.exam_closed_for_good(waiting, "exam")
    assert not exam.exam_closed_for_good(waiting, "exam", rejected=3)  # CHANGE_OVERLAP reopens it
    reads = waiting.reads
    exam.exam_closed_for_good(waiting, "exam", rejected=1)
    assert waiting.reads == reads  # nothing to ask Toloka after a rejection


# ------------------------------------------------------------------------------------------ budget


def _params(**changes: Any) -> PipelineParams:
    return load_params(
        __import__("pathlib").Path(__file__).resolve().parent.parent
        / "configs"
        / "demo-shoes"
        / "pipeline.yaml",
        changes,
    )


def test_cost_estimate_and_guard():
    params = _params()
    bundle = load_bundle(params.toloka_dir)
    costs = budget.estimate_labelling(params, bundle, n_main_suites=82)
    # The shipped pools have no rule that raises a paid overlap (the exam pool's CHANGE_OVERLAP
    # only replaces rejected, unpaid answers), so every suite costs its overlap.
    assert costs.main == pytest.approx(82 * 7 * 0.02 * 1.3)
    assert costs.exam == pytest.approx(3 * 100 * 0.01 * 1.3)
    assert costs.intruders == pytest.approx(100 * 5 * 0.02 * 1.3)
    assert costs.total == pytest.approx(costs.main + costs.exam + costs.intruders)
    budget.check_budget(costs, 100)
    with pytest.raises(budget.BudgetExceeded, match=r"exceeds budget.max_spend \$10.00.*No pool was opened"):
        budget.check_budget(costs, 10)
    # What is left counts: the same estimate fails once other pools of the run key spent enough.
    budget.check_budget(costs, 50, spent_before=10)
    with pytest.raises(budget.BudgetExceeded, match=r"less \$20.00 already spent .*\$30.00 left"):
        budget.check_budget(costs, 50, spent_before=20)
    assert budget.estimate_labelling(_params(intruders={"enabled": False}), bundle, 82).intruders == 0
    # An evaluation refused after its labelling was paid: no hits.* advice (it would change the paid
    # plan); the evaluation's own settings, and the clusters are kept.
    evaluation = budget.estimate_intruders(params, bundle, 100)
    with pytest.raises(budget.BudgetExceeded) as refused:
        budget.check_budget(evaluation, 30, spent_before=25.74)
    text = str(refused.value)
    assert "hits." not in text and "intruders.enabled: false" in text and "the clusters it gave" in text


def test_spend_guard_stays_quiet_while_the_plan_fits_and_counts_what_is_in_flight_otherwise():
    params = _params(budget={"max_spend": 50.0})
    costs = budget.estimate_labelling(params, load_bundle(params.toloka_dir), n_main_suites=82)
    fits = budget.SpendGuard.of(params, 0.0, costs)
    assert fits.ceiling == round(costs.main + costs.exam, 4) <= fits.limit
    assert fits.plan_fits(costs.main) and not fits.plan_fits(fits.ceiling + 0.01)  # beyond plan: watch

    tight = budget.SpendGuard.of(params, spent_before=40.0, costs=costs)  # $10 left of $50
    assert tight.limit == 10.0 and not tight.plan_fits(0.0)
    live = budget.LiveSpend(tight)
    assert live.stop_reason(charged=2.0, in_flight=1.0) is None
    assert live.stop_reason(charged=4.0, in_flight=1.0) is None  # committed 5, step 2: 5 + 4 + price < 10
    reason = live.stop_reason(charged=6.0, in_flight=1.5)  # committed 7.5, step 2.5: 7.5 + 5 > 10
    assert reason is not None and "$6.00 charged and $1.50 in flight" in reason and "$10.00 left" in reason
    # A catalogue round: the shared exam pool's charge from earlier rounds is in `charged`, and said.
    later = budget.LiveSpend(tight).stop_reason(charged=9.0, in_flight=1.5, earlier=3.77)
    said = "$9.00 charged (the exam pool's $3.77 from before this stage included) and $1.50 in flight"
    assert later is not None and said in later


def test_a_rounds_poll_line_counts_the_exams_earlier_rounds_paid_as_spent_before_it():
    """A catalogue round whose shared exam pool earlier rounds had paid $0.31 read "with the exams
    $0.36 of the $37.50 left of budget.max_spend" under its estimate line's "exam $0.00 (the exam
    pool's $0.31 was paid before this run, not spent again) ...; budget $40.00, already spent
    outside this estimate $2.81": consistent ($0.05 of $37.19), yet it read as a contradiction."""
    params = _params(budget={"max_spend": 40.0})
    costs = CostEstimate(main=0.47, exam=0.31, intruders=1.56, exam_paid=0.31)
    # The key's other pools (main, second round, intruders) cost $2.50; the exam pool $0.31 more.
    guard = budget.SpendGuard.of(params, spent_before=2.50, costs=costs)
    assert guard.limit == 37.50  # the guard's own arithmetic is as it was
    line = guard.left_line(0.05 + 0.31)  # the round's main pool $0.05, the exam pool's whole charge
    assert line == (
        "; with the exams $0.05 of the $37.19 left of budget.max_spend ($40.00, of which $2.81 was spent "
        "before this round)"
    )
    # A first round: nothing spent before it, nothing said of it.
    first = budget.SpendGuard.of(params, 0.0, CostEstimate(main=0.62, exam=0.31, intruders=1.56))
    assert first.left_line(0.87) == "; with the exams $0.87 of the $40.00 left of budget.max_spend"


def test_price_seen_sets_each_pools_answers_against_the_reward_that_pool_pays(monkeypatch):
    """A catalogue's rounds at $0.02, charged $0.026 an answer (the platform's 30% at fee_rate 0.0),
    then hits.reward raised to $0.03 (or lowered to $0.01): the price seen was read against today's
    reward, 1.0 and 2.6 instead of 1.3, so a round opened with too little on the account (or was
    refused one it could pay)."""
    from tasks import toloka_api

    stats = {
        "6": PoolStats(approved_assignments_count=27, spent_budget=0.702),  # round 1 at $0.02
        "10": PoolStats(approved_assignments_count=15, spent_budget=0.39),  # round 2 at $0.02
        "19": PoolStats(approved_assignments_count=12, spent_budget=0.468),  # round 3 at $0.03
        "4": PoolStats(approved_assignments_count=24, spent_budget=0.312),  # the exam pool: not counted
    }
    pools = {
        "main-pool-r1": SimpleNamespace(id="6", reward_per_assignment=0.02),
        "main-pool-r2": SimpleNamespace(id="10", reward_per_assignment=0.02),
        "exam-pool": SimpleNamespace(id="4", reward_per_assignment=0.01),
    }
    registry = SimpleNamespace(client=None, pools=lambda: pools)
    monkeypatch.setattr(budget.RunRegistry, "connect", classmethod(lambda cls, target, key: registry))
    monkeypatch.setattr(toloka_api, "pool_stats", lambda client, pool_id: stats[pool_id])
    paid_at = {"6": 0.02, "10": 0.02, "19": 0.03}  # every answer of a round at its pool's reward

    def accepted_rewards(client: Any, pool_id: str, default: float) -> float:
        return (stats[pool_id].approved_assignments_count or 0) * paid_at[pool_id]

    monkeypatch.setattr(toloka_api, "accepted_rewards", accepted_rewards)
    for reward in (0.01, 0.02, 0.03):
        params = _params(hits={"reward": reward}, budget={"fee_rate": 0.0})
        assert budget.price_ratio_seen_task.fn(params.toloka, "key", params) == pytest.approx(1.3), reward
    pools["main-pool-r3"] = SimpleNamespace(id="19", reward_per_assignment=0.03)  # rounds at both
    params = _params(hits={"reward": 0.02}, budget={"fee_rate": 0.0})
    assert budget.price_ratio_seen_task.fn(params.toloka, "key", params) == pytest.approx(1.3)
    params = _params(budget={"fee_rate": 0.3})  # the platform's fee: Toloka's price is the config's
    assert budget.price_ratio_seen_task.fn(params.toloka, "key", params) == 1.0


def test_overlap_raise_counts_change_overlap_rules_except_replacements_of_rejected_work():
    from tasks.toloka_config import overlap_raise

    def rule(key: str, value: str, delta: int) -> dict[str, Any]:
        action = {"type": "CHANGE_OVERLAP", "parameters": {"delta": delta, "open_pool": True}}
        return {"rules": [{"conditions": [{"key": key, "operator": "EQ", "value": value}], "action": action}]}

    pool = {"quality_control": {"configs": [rule("pool_access_revoked_reason", "RESTRICTION", 2)]}}
    assert overlap_raise(pool) == 2
    pool["quality_control"]["configs"].append(rule("assessment_event", "REJECT", 1))
    assert overlap_raise(pool) == 2
    assert overlap_raise({}) == 0


# ------------------------------------------------------------------------------------------ intruders


def _clusters() -> pd.Series:
    sizes = {0: 12, 1: 9, 2: 7, 3: 3}
    items, labels = [], []
    for cluster, size in sizes.items():
        for i in range(size):
            items.append(f"c{cluster}-{i}")
            labels.append(cluster)
    return pd.Series(labels, index=items)


def test_intruder_hits_skip_small_clusters_and_are_seeded():
    made, skipped = intruders.make_hits(_clusters(), 50, 8, seed=0)
    assert skipped == [3]
    assert made == intruders.make_hits(_clusters(), 50, 8, seed=0)[0]
    for hit in made:
        assert len(hit.images) == len(set(hit.images)) == 8
        odd = hit.images[int(hit.answer) - 1]
        assert odd.startswith(f"c{hit.intruder_cluster}-") and hit.intruder_cluster != hit.host
        assert sum(x.startswith(f"c{hit.host}-") for x in hit.images) == 7
    assert intruders.make_hits(pd.Series([0] * 3 + [1] * 3, index=list("abcdef")), 10, 8, 0) == ([], [0, 1])


def test_intruder_hits_spread_thin_over_many_clusters_are_called_so():
    many = pd.Series([c for c in range(40) for _ in range(10)], index=[f"i{k}" for k in range(400)])
    made, skipped = intruders.make_hits(many, 100, 8, seed=0)
    note = intruders.thin_hosts(made, many.nunique() - len(skipped))
    assert note is not None and note.startswith("100 intruder HITs over 40 clusters that can host one: 2.5")
    assert note.endswith("intruders.n_hits 200 would give each about 5")
    assert intruders.thin_hosts(*intruders.make_hits(_clusters(), 50, 8, seed=0)[:1], 3) is None


def test_intruder_accuracy_aggregates_answers_per_hit(tmp_path):
    made, _ = intruders.make_hits(_clusters(), 20, 8, seed=1)
    rng = np.random.default_rng(0)
    rows = []
    for hit in made:
        cell = ",".join(json.dumps(x) for x in hit.images)
        for worker in range(5):
            right = worker < 4 or rng.random() < 0.5
            answer = hit.answer if right else str(int(hit.answer) % 8 + 1)
            rows.append({"INPUT:images": cell, "OUTPUT:answer": answer, "ASSIGNMENT:worker_id": f"w{worker}"})
    result = intruders.accuracy(pd.DataFrame(rows), made)
    assert result.accuracy == 1.0 and result.n_hits == 20
    assert result.n_answers == 100 and 0.8 <= result.answer_accuracy < 1.0
    assert {d.cluster for d in result.per_cluster} <= {0, 1, 2}
    assert sum(d.hits for d in result.per_cluster) == 20
    assert all(d.accuracy == 1.0 for d in result.per_cluster)
    assert intruders.bar_chart(result, tmp_path / "chart.png").stat().st_size > 1000


def test_the_intruder_chart_of_many_clusters_fits_the_artifact_pane(tmp_path):
    """A bar per host cluster, side by side, made a 79-cluster run's chart 3,260 pixels wide; the
    Prefect UI shrinks an artifact's image to its pane (~845 px in a 1,400 px window), so the
    `intruder-chart` page showed the cluster ids, the axis and the overall accuracy 3-4 pixels high.
    Past the width of a few bars the chart grows down, a row per cluster, and keeps its width."""
    from PIL import Image

    def size(n: int) -> tuple[int, int]:
        per_cluster = tuple(ClusterAccuracy(k, (k % 5) / 4, 2) for k in range(n))
        chart = intruders.bar_chart(Evaluation(0.84, 100, per_cluster=per_cluster), tmp_path / f"{n}.png")
        with Image.open(chart) as image:
            return image.size

    assert size(8) == (680, 320)  # a few clusters: upright bars, as before
    for n in (11, 51, 200):
        width, height = size(n)
        assert width <= 845, (n, width)  # shown at its own size: the text as drawn, ~14 px
        assert height >= 20 * n, (n, height)  # a row of at least 20 px per cluster


def test_intruder_accuracy_per_image_weighs_host_clusters_by_their_images():
    """A junk cluster of 7 images that hosted 12 of 100 HITs (every one failed) weighs as much as
    12 HITs of a 900-image cluster in the per-HIT figure (0.88); per image it is 7 of 907."""
    from tasks.stages import ClusterAccuracy, Evaluation

    clusters = pd.Series([0] * 900 + [1] * 7 + [2] * 3, index=[f"i{k}" for k in range(910)])
    scored = Evaluation(
        accuracy=0.88,
        n_hits=100,
        per_cluster=(ClusterAccuracy(0, 1.0, 88), ClusterAccuracy(1, 0.0, 12)),
    )
    weighted = intruders.per_image(scored, clusters)
    assert weighted.images_hosted == 907  # cluster 2 hosted none
    assert weighted.image_accuracy == pytest.approx(900 / 907)
    assert weighted.accuracy == 0.88 and weighted.per_cluster == scored.per_cluster
    assert intruders.per_image(Evaluation(accuracy=None, n_hits=0), clusters).image_accuracy is None


def test_intruder_accuracy_holds_when_each_worker_answers_only_a_few_hits():
    """A market crowd: 120 workers, 5 answers per HIT, each worker in about 4 HITs, 94% right.

    A majority names the intruder in every HIT here, and so must the aggregate. A confusion matrix
    per worker (full Dawid-Skene) overfits a handful of answers and gave 0.80-0.92 on these crowds.
    """
    made, _ = intruders.make_hits(_clusters(), 100, 8, seed=2)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        rows, right = [], 0
        for hit in made:
            cell = ",".join(json.dumps(x) for x in hit.images)
            for worker in rng.choice(120, 5, replace=False):
                wrong = [str(p) for p in range(1, 9) if str(p) != hit.answer]
                answer = hit.answer if rng.random() < 0.94 else wrong[rng.integers(len(wrong))]
                right += answer == hit.answer
                rows.append(
                    {"INPUT:images": cell, "OUTPUT:answer": answer, "ASSIGNMENT:worker_id": f"w{worker}"}
                )
        result = intruders.accuracy(pd.DataFrame(rows), made)
        assert result.accuracy == 1.0, seed
        assert result.answer_accuracy == right / 500 and 0.9 < result.answer_accuracy < 0.98


def test_the_log_lines_of_the_stages_read_as_sentences():
    """What the UI's log pages print: no dataclass reprs or dicts."""
    ids = LabellingIds("1", "2", "3", "4", "5", "6")
    assert ids.describe() == "exam project 1, training 2, skill 3, exam pool 4, main project 5, main pool 6"
    second = "exam project 1, training 2, skill 3, exam pool 4, main project 5, second-round pool 6"
    assert ids.describe("second-round pool") == second
    assert ExamTotals(12, 3, 11).describe() == "12 exams accepted, 3 rejected, 11 skill values set"
    info = AggregationInfo("gomes", 28_000, 400, 2_800, 53, 10, 26, -1.5, n_pairwise_labels=126_000)
    assert info.describe() == (
        "gomes: 10 clusters from 126,000 pairwise labels (2,800 answers to 400 HITs by 53 workers, "
        "28,000 item labels); the embedding took 26 iterations"
    )
    large = AggregationInfo(
        "gomes", 31_500_000, 700_000, 4_900_000, 40_000, 60, 0, None, n_pairwise_labels=220_500_000
    )
    # No embedding fitted above 3,000 images: said, or a user misses embedding.csv and n_dims' effect.
    assert large.describe().endswith(
        "by 40,000 workers, 31,500,000 item labels); no embedding fitted (above the size it is fitted for, "
        "3,000 images by default: the clusters do not come from it, aggregation.n_dims has no effect, no "
        "embedding.csv is written)"
    )
    baseline = AggregationInfo("coassociation", 28_000, 400, 2_800, 53, 10, None, None)
    assert baseline.describe().endswith("by 53 workers)")  # the baseline has no embedding to speak of
    saved_before = AggregationInfo("gomes", 28_000, 400, 2_800, 53, 10, 26, -1.5)  # a cached result
    assert saved_before.describe().startswith("gomes: 10 clusters from 28,000 item labels (2,800 answers")
    assert CostEstimate(72.8, 3.9, 13).describe() == "main $72.80, exam $3.90, intruders $13.00, total $89.70"


# ------------------------------------------------------------------------------------------ report


def test_the_aggregation_stage_counts_the_pairwise_labels_as_crowdclust_aggregate_does(tmp_path):
    """Each answer of h images gives h(h-1)/2 pairwise labels: the stage's log line and summary.json
    report the figure `crowdclust aggregate` prints for the same export, and the item labels as such."""
    from typer.testing import CliRunner

    from aggregation import generate_crowd, read_export
    from crowdclust.cli import app
    from tasks.aggregate import aggregate
    from tasks.params import AggregationParams

    crowd = generate_crowd(60, 4, seed=0, shares={"diligent": 1.0})
    crowd.write_export(tmp_path / "export.tsv")
    printed = CliRunner().invoke(
        app, ["aggregate", str(tmp_path / "export.tsv"), "-o", str(tmp_path / "c.csv")]
    )
    assert printed.exit_code == 0, printed.output
    pairwise = int(re.search(r"^labels +([\d,]+) pairwise$", printed.output, re.M)[1].replace(",", ""))
    answers, items = re.search(
        r"^assignments +([\d,]+) \(([\d,]+) item labels\)$", printed.output, re.M
    ).groups()

    info = aggregate(crowd.export, AggregationParams(), 0).info
    sizes = read_export(crowd.export).labels.groupby(["task", "worker"]).size()  # images per answer
    assert info.n_pairwise_labels == pairwise == int((sizes * (sizes - 1) // 2).sum())
    assert info.n_labels == int(items.replace(",", "")) == int(sizes.sum()) < pairwise
    assert info.n_assignments == int(answers.replace(",", ""))
    assert f"from {pairwise:,} pairwise labels ({answers} answers to " in info.describe()
    assert info.describe().endswith(
        f"workers, {items} item labels); the embedding took {info.n_iter} iterations"
    )
    assert asdict(info)["n_pairwise_labels"] == pairwise  # summary.json's `aggregation`


def test_a_resumed_runs_timings_add_up_every_attempt(tmp_path):
    """A resumed run's report showed only the last attempt's durations. Attempts are kept in the
    run folder: a failed stage counts, a stage of an attempt killed outright counts up to its last
    heartbeat, and a finished run starts the next count afresh."""
    folder = RunFolder(tmp_path / "run")
    refused = report.Stopwatch(folder, heartbeat=0.05)
    with pytest.raises(RuntimeError), refused.lap("labelling"):
        raise RuntimeError("refused before anything was written")
    assert not folder.root.exists()  # a refused run leaves no folder behind

    folder.create()
    first = report.Stopwatch(folder, heartbeat=0.05)
    with pytest.raises(RuntimeError), first.lap("labelling"):
        time.sleep(0.3)
        raise RuntimeError("interrupted")
    killed = report.Stopwatch(folder, heartbeat=0.05)
    with killed.lap("labelling"):
        pass
    running = killed.lap("aggregation")
    running.__enter__()
    # Its heartbeat records the lap as it runs: every 0.05 s here, later on a loaded machine.
    deadline = time.monotonic() + 60
    while (seen := folder.read_attempts()) and seen[-1].laps.get("aggregation", 0.0) < 0.2:
        assert time.monotonic() < deadline, f"the running lap was never recorded: {seen}"
        time.sleep(0.05)
    killed.folder = None  # the process dies here: nothing more is written
    running.__exit__(None, None, None)
    assert [len(one.laps) for one in seen] == [1, 2] and seen[-1].laps["aggregation"] >= 0.2

    resumed = report.Stopwatch(folder, heartbeat=0.05)
    with resumed.lap("labelling"):
        time.sleep(0.1)
    with resumed.lap("aggregation"):
        pass
    wall, timings, attempts = resumed.finish()
    assert attempts is not None and attempts.count == 3 and attempts.since == seen[0].started
    assert list(timings) == ["labelling", "aggregation"]
    assert timings["labelling"] >= 0.4 > attempts.last_timings["labelling"]
    assert timings["aggregation"] >= 0.2 > attempts.last_timings["aggregation"]
    assert wall >= 0.6 > attempts.last_wall
    assert "3 attempts since " in attempts.describe()
    after = report.Stopwatch(folder)
    assert after.finish()[2] is None and len(folder.read_attempts()) == 1  # the next run counts anew


def test_an_attempts_file_that_cannot_be_written_leaves_the_stage_its_own_error(tmp_path, caplog):
    """A run folder made read-only mid-run: `attempts.json`, written as a stage ends, raised from the
    stage's `finally` in place of the stage's own error (the run ended on `Permission denied:
    '.../.attempts.json.71d367f8.tmp'`, not on the export it could not write), and its heartbeat
    thread died with a traceback on the console. Here its name is taken by a folder, which refuses
    root as well."""
    folder = RunFolder(tmp_path / "run").create()
    folder.attempts.mkdir()
    watch = report.Stopwatch(folder, heartbeat=0.01)
    with caplog.at_level(logging.WARNING, logger="tasks.report"):
        with pytest.raises(OSError, match="the export's own"), watch.lap("labelling"):
            time.sleep(0.1)  # heartbeats that cannot write either
            raise OSError("the export's own")
        with watch.lap("aggregation"):
            pass
    said = [record.getMessage() for record in caplog.records if record.name == "tasks.report"]
    assert said == [
        f"cannot write {folder.attempts} (Is a directory): the time of this attempt is not on record"
    ]


ATTEMPT = """
import sys, time
from pathlib import Path
from tasks.report import Stopwatch
from tasks.run_folder import RunFolder
folder = RunFolder(Path(sys.argv[1]))
clock = Stopwatch(folder, heartbeat=600)  # no heartbeat before the kill: the early save alone
with clock.lap("labelling"):
    if sys.argv[2] == "new":  # a new run: its first stage makes the folder
        time.sleep(0.2)
        folder.create()
    print("started", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("run", ["resumed", "new"])
def test_an_attempt_killed_before_its_first_heartbeat_is_on_record(tmp_path, run):
    """`attempts.json` was first written at an attempt's first heartbeat (30 s in then) or at the end of
    its first stage: an attempt killed (`kill -9`) sooner left no trace, and the run's timings
    missed it. A resumed run's folder is there as it starts; a new run's appears in its first stage."""
    import signal
    import subprocess
    import sys

    folder = RunFolder(tmp_path / "run")
    if run == "resumed":
        folder.create()
        earlier = report.Stopwatch(folder)
        with earlier.lap("labelling"):
            pass  # an attempt that stopped in its labelling, recorded
        assert len(folder.read_attempts()) == 1
    root = Path(__file__).resolve().parents[1]
    attempt = subprocess.Popen(
        [sys.executable, "-c", ATTEMPT, str(folder.root), run], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert attempt.stdout is not None and attempt.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20  # room for a loaded machine
        while len(folder.read_attempts()) < (2 if run == "resumed" else 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        attempt.send_signal(signal.SIGKILL)
        attempt.wait(timeout=10)
    finally:
        if attempt.poll() is None:
            attempt.kill()
    seen = folder.read_attempts()
    assert len(seen) == (2 if run == "resumed" else 1), seen
    assert "labelling" in seen[-1].laps and not seen[-1].done


def test_report_and_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(report.artifacts, "run_results", lambda *args: None)  # no Prefect API here
    folder = RunFolder(tmp_path)
    clusters = pd.Series([0, 0, 1], index=["https://i/a.png", "https://i/b.png", "https://i/c.png"])
    info = AggregationInfo("gomes", 6, 2, 2, 2, 2, 10, -1.5)
    chart = tmp_path / "intruders.png"
    chart.write_bytes(b"\x89PNG\r\n\x1a\n the chart")
    evaluated = Evaluation(
        0.9,
        10,
        per_cluster=(ClusterAccuracy(0, 0.9, 10),),
        skipped=(1,),
        n_answers=50,
        answer_accuracy=0.84,
        image_accuracy=0.9,
        images_hosted=2,
        chart=chart,
    )
    params = _params(toloka={"environment": "sandbox", "url": None})
    plan = hits.coverage([list(clusters.index[:2]), list(clusters.index[1:])], list(clusters.index))

    def finish(aggregated: Aggregated, evaluation: Evaluation | None) -> Any:
        cost = Cost(1.5, CostEstimate(main=1.0, exam=0.5))
        return report.finish_run(
            params,
            folder,
            aggregated,
            evaluation,
            cost,
            wall_seconds=12.34,
            run_key="k",
            ids=None,
            coverage=plan,
        )

    summary = finish(Aggregated(clusters, None, info, metrics={"ari": 1.0, "nmi": 1.0}), evaluated)
    saved = json.loads(folder.summary.read_text())
    assert {
        "clusters",
        "ari",
        "nmi",
        "intruder_accuracy",
        "cost",
        "wall_seconds",
        "report",
        "summary",
    } <= saved.keys()
    assert (saved["clusters"], saved["ari"], saved["intruder_accuracy"], saved["wall_seconds"]) == (
        2,
        1.0,
        0.9,
        12.3,
    )
    assert saved["cost"] == {
        "spent": 1.5,
        "estimate": {"main": 1.0, "exam": 0.5, "intruders": 0.0, "total": 1.5},
    }
    assert saved["intruders"]["per_cluster"] == [{"cluster": 0, "accuracy": 0.9, "hits": 10}]
    assert saved == json.loads(summary.to_json())
    page = folder.report.read_text()
    assert page.count("<img src='https://i/") == 3 and "Cluster 1 (1 image)" in page
    # The chart the evaluation drew, in the page itself: a copied report.html keeps it.
    assert "<img src='data:image/png;base64," + base64.b64encode(chart.read_bytes()).decode() + "'" in page
    assert "<th>single answers naming the intruder</th><td>0.84 (50 answers)</td>" in page
    assert "<td>0.90 (2 images in clusters that hosted a HIT)</td>" in page
    assert "<th>clusters too small to host a HIT</th><td>cluster 1</td>" in page  # an id, not a count
    assert "<p>2 HITs over 3 images, each image in 1-2 HITs (mean 1.3); the HITs link every image" in page
    unknown = finish(Aggregated(clusters, None, info), None)
    assert unknown.ari is None

    # The flow's `done:` line: scores to 3 decimals as `crowdclust run` prints them, n/a when unknown.
    odd = replace(summary, ari=0.9239024390243903, intruder_accuracy=2 / 3)
    assert odd.describe() == (
        f"2 clusters, ARI 0.924, intruder accuracy 0.667, cost $1.50, 12 s; report {folder.report}"
    )
    assert unknown.describe().startswith("2 clusters, ARI n/a, intruder accuracy n/a, cost $1.50")


# ------------------------------------------------------------------------------------ idempotent creates


def test_lost_create_response_is_found_not_created_twice(monkeypatch):
    import httpx

    from tasks import toloka_api

    monkeypatch.setattr(toloka_api, "pause", lambda s: None)
    store: list[str] = []

    def create():
        store.append("p1")  # the server did the work ...
        raise httpx.ReadTimeout("response lost")  # but the answer never arrived

    found = toloka_api.find_or_create(lambda: store[0] if store else None, create, "project")
    assert found == "p1" and store == ["p1"]


def test_operation_ids_are_deterministic_per_run_role_and_batch():
    from tasks.toloka_api import operation_id

    batch = [{"tasks": [{"input_values": {"images": ["a", "b"]}}]}]
    assert operation_id("k", "main-suites", batch) == operation_id("k", "main-suites", batch)
    assert operation_id("k", "main-suites", batch) != operation_id("k2", "main-suites", batch)
    assert operation_id("k", "main-suites", batch) != operation_id("k", "exam-suites", batch)


def test_assignment_count_of_an_export():
    from tasks.export_format import n_assignments

    export = pd.DataFrame({"ASSIGNMENT:assignment_id": ["a1", "a1", "a2"], "INPUT:images": ["x", "y", "z"]})
    assert n_assignments(export) == 2  # one row per task, counted per assignment
    assert n_assignments(pd.DataFrame()) == 0  # an empty export has no columns


def test_skill_is_found_by_the_run_key_in_its_name():
    from tasks.toloka_api import RunRegistry

    class Skill:
        def __init__(self, id: str, name: str) -> None:
            self.id, self.name = id, name

    class Client:
        def get_skills(self, name: str) -> list[Skill]:  # a loose server-side match must not fool it
            return [s for s in skills if name in s.name]

    skills = [Skill("1", "Shoes [run-a] old"), Skill("2", "Shoes [run-a]"), Skill("3", "Shoes [run-b]")]
    assert RunRegistry(Client(), "run-a").find_skill("Shoes") == "2"
    assert RunRegistry(Client(), "run-c").find_skill("Shoes") is None
    assert RunRegistry(Client(), "run-b").ensure_skill("Shoes") == "3"  # found, not created (no create_skill)


def test_failure_hook_closes_again_after_a_429_but_not_when_the_host_is_down(monkeypatch):
    import httpx
    from toloka.client.exceptions import TooManyRequestsApiError

    from flows import hooks

    class Registry:
        def __init__(self, errors: list[Exception]) -> None:
            self.errors, self.calls = errors, 0

        def close_open(self) -> list[str]:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return ["pool 1"]

    monkeypatch.setattr(hooks.time, "sleep", lambda seconds: None)
    busy = Registry([TooManyRequestsApiError(status_code=429, code="TOO_MANY_REQUESTS")] * 2)
    assert hooks.close_with_retries(busy) == ["pool 1"] and busy.calls == 3
    down = Registry([httpx.ConnectError("refused")])
    with pytest.raises(httpx.ConnectError):
        hooks.close_with_retries(down)
    assert down.calls == 1


def test_a_catalogue_round_too_big_for_the_budget_is_refused_before_planning():
    from tasks import preflight

    preflight.check_plan(_params(), 30)  # the demo design fits
    with pytest.raises(budget.BudgetExceeded, match=r"hits_per_item 100000 on 30 images needs 300000 HITs"):
        preflight.check_plan(_params(hits={"hits_per_item": 100000}), 30)


def test_expected_styles_prices_the_design_that_would_place_every_image():
    """Unset, or 8 styles on the demo's 82 images (each image meets ~10 of its style): no warning.
    40 styles: ~1.2, and 31% meet none; 46 HITs per image would show 5.4, priced with the same
    overlap, reward and fee as the estimate (82 x 7 x $0.02 x 1.3 now)."""
    from tasks import preflight
    from tasks.hits import HitPlanError

    assert preflight.check_run(_params()).warnings == ()
    assert preflight.check_run(_params(hits={"expected_styles": 8})).warnings == ()
    (warning,) = preflight.check_run(_params(hits={"expected_styles": 40})).warnings
    assert "shows each image ~1.2 of its own style and leaves ~31% of the images with none" in warning
    assert "hits.hits_per_item 46 would show ~5.4 and leave ~0.5% with none" in warning
    assert "its main pool would cost $68.80 instead of $14.92" in warning
    # 378 HITs x 7 answers x 45 pairs: what aggregating the advised design takes.
    assert warning.endswith("above budget.max_spend $50.00 (119,070 pairwise labels, ~0.3 GB to aggregate)")
    roomy = _params(hits={"expected_styles": 40}, budget={"max_spend": 200.0})
    assert "max_spend" not in preflight.check_run(roomy).warnings[0]
    too_many = r"hits\.expected_styles 100 exceeds the 82 images of .*dataset\.tsv"
    with pytest.raises(HitPlanError, match=too_many):
        preflight.check_run(_params(hits={"expected_styles": 100}))


def test_a_budget_no_design_fits_says_what_one_hit_per_image_costs():
    """It said `(at most hits_per_item 0 fits)`."""
    params = _params(budget={"max_spend": 1.0})
    bundle = load_bundle(params.toloka_dir)
    with pytest.raises(budget.BudgetExceeded) as refused:
        budget.check_plan_size(params, bundle, 10_000)
    per_hit = budget.pool_cost(
        1, budget.main_overlap(params, bundle), params.hits.reward, params.budget.fee_rate
    )
    assert f"(not even hits_per_item 1 fits: ${per_hit * 1000:,.2f}); nothing was planned" in str(
        refused.value
    )
    # Every dollar figure of a message is written one way: it read "$18200.00 ... $1,820.00".
    assert f"HITs, ${per_hit * 10_000:,.2f} for the main pool alone" in str(refused.value)
    with pytest.raises(budget.BudgetExceeded, match=r"\(at most hits_per_item 2 fits\)"):
        budget.check_plan_size(_params(budget={"max_spend": per_hit * 250}), bundle, 1000)


def test_a_main_pool_the_exam_cannot_staff_is_refused_before_planning():
    """The demo's main pool restricts a worker after 50 answers for 5 hours, and its 100 exam seats
    on 3 suites (3 exams each to reach skill 75, 70% of the takers passing) qualify ~70 workers:
    3,500 answers before a first restriction, 70 x (50 + 34) = 5,880 in the pool's 7 days. 600
    images x 7 answers: a warning; 1,000: refused before anything is planned; 200 seats finish it
    without a restriction. Every taker passing (`exam.pass_share` 1), 1,000 images only warn."""
    from tasks import preflight

    roomy = _params(budget={"max_spend": 1000.0})
    bundle = load_bundle(roomy.toloka_dir)
    assert preflight.staffing_warning(roomy, bundle, 82) is None
    preflight.check_plan(roomy, 600)
    warning = preflight.staffing_warning(roomy, bundle, 600)
    assert warning.startswith("exam: the main pool needs 4,200 answers (600 HITs x hits.overlap 7)")
    assert "at most ~70 workers can qualify" in warning and "exam.pass_share 0.7 of the takers" in warning
    assert "restricts a worker after 50 answers, for 5 hours" in warning
    assert "3,500 answers at most before their first restriction; the other 700" in warning
    assert warning.endswith(
        "exam.expected_workers 120 would qualify enough workers to finish without waiting for them"
    )
    with pytest.raises(preflight.ExamSeatsShort, match=r"5,880 answers at most in the pool's 7 days") as no:
        preflight.check_plan(roomy, 1000)
    assert "exam.expected_workers to 200, enough workers to finish without" in str(no.value)
    assert "(120 at the very least)" in str(no.value)
    everyone = roomy.model_copy(update={"exam": roomy.exam.model_copy(update={"pass_share": 1.0})})
    preflight.check_plan(everyone, 1000)  # ~100 workers: 8,400 answers at most
    assert "at most ~100 workers can qualify" in preflight.staffing_warning(everyone, bundle, 1000)
    assert issubclass(preflight.ExamSeatsShort, preflight.DATA_ERRORS)  # one error line, exit 2
    staffed = _params(budget={"max_spend": 1000.0}, exam={"expected_workers": 400})
    preflight.check_plan(staffed, 2000)
    # Over budget too: one error names both settings (the budget, then the seats, took two runs).
    with pytest.raises(budget.BudgetExceeded) as both:
        preflight.check_plan(_params(budget={"max_spend": 50.0}), 2000)
    assert "exceeds budget.max_spend $50.00" in str(both.value)
    assert "; and exam: the main pool needs 14,000 answers" in str(both.value)
    assert str(both.value).count("nothing was planned or opened") == 1
    assert preflight.staffing_warning(staffed, bundle, 2000) is None


def test_a_main_pool_short_of_qualified_workers_is_called_so_once_the_exam_is_complete():
    """A 10,000-image run qualified 1,036 workers where 1,400 were counted on: every one was
    restricted from ~51,800 of the 70,000 answers, the pace fell from ~240 to ~18 answers/s, and
    nothing said why until the pool expired at 95%."""
    from tasks.exam import GatingState
    from tasks.exam import Staffing as Needs
    from tasks.toloka_api import POOL_LIFETIME
    from tasks.toloka_config import tightest_limit

    bundle = load_bundle(_params().toloka_dir)
    lifetime = POOL_LIFETIME.total_seconds()
    needs = Needs(75.0, 7, 7_000, tightest_limit(bundle.main_pool, lifetime))
    state = GatingState(sent={f"w{i}": 80.0 if i < 70 else 60.0 for i in range(90)})
    assert needs.qualified(state) == 70
    short = needs.short_of_answers(70)
    assert short.startswith("the exam pool is complete with 70 workers qualified: main_pool.json restricts")
    assert "they give 3,500 of the 7,000 answers" in short
    assert "at most 5,880 in the pool's 7 days, so it will expire unfinished" in short
    assert "raise exam.expected_workers and run the same command again" in short
    slow = needs.short_of_answers(100)  # 5,000 before a restriction, 8,400 in 7 days
    assert "they give 5,000 of the 7,000" in slow and "expire" not in slow
    assert needs.short_of_answers(140) is None
    assert Needs(75.0, 7).short_of_answers(70) is None  # no need given: nothing to say
    # The exam still filling: said once the 70 qualified so far have given their 3,500 answers.
    assert not needs.used_up(70, 3_499) and needs.used_up(70, 3_500) and not needs.used_up(70, 7_000)
    assert not needs.used_up(140, 6_000) and not Needs(75.0, 7, 7_000).used_up(70, 5_000)  # no rule
    filling = needs.short_of_answers(70, exam_complete=False, answers=3_500)
    assert needs.short_of_answers(70, False, 3_612).startswith(
        "the 70 workers qualified so far have given 3,612"
    )
    assert filling.startswith(
        "the 70 workers qualified so far have given 3,500 answers, all they may before each is "
        "restricted (main_pool.json restricts a worker after 50 answers"
    )
    assert "), of the 7,000 the main pool needs, and the exam pool is still filling" in filling
    assert "loosen the pools' filters, lower exam.min_skill" in filling
    assert (
        "with no more workers, at most 5,880 in the pool's 7 days, so it would expire unfinished" in filling
    )


def test_an_intruder_pool_is_refused_when_the_skilled_workers_cannot_give_its_answers():
    """The demo's intruder pool restricts a worker after 250 answers for a day: 257 answers each in
    the pool's 7 days. Each HIT needs intruders.overlap (5) different skilled workers."""
    from tasks.preflight import DATA_ERRORS, IntrudersUnstaffed, check_intruder_staffing

    params = _params()
    bundle = load_bundle(params.toloka_dir)
    short = IntrudersUnstaffed
    check_intruder_staffing(7, params, bundle, 359)  # 1,795 answers: what 7 workers can give is 1,799
    with pytest.raises(short, match=r"^intruders: 360 HITs x intruders.overlap 5 need 1,800 answers") as no:
        check_intruder_staffing(7, params, bundle, 360)
    assert "7 worker(s) hold the labelling skill" in str(no.value)
    assert "restricts a worker after 250 answers, for 1 day" in str(no.value)
    assert "1,799 answers at most in the pool's 7 days" in str(no.value)
    with pytest.raises(short, match=r"4 worker\(s\) hold .* fewer than the 5 different workers"):
        check_intruder_staffing(4, params, bundle, 1)
    # Six for an overlap of 5: a few restricted by the pool's quality control would leave HITs short.
    with pytest.raises(short, match=r"\(intruders.overlap\) and a quarter to spare \(7 in all\)") as thin:
        check_intruder_staffing(6, params, bundle, 1)
    assert "Lower intruders.overlap to 4 or less" in str(thin.value)
    crowded = _params(intruders={"overlap": 69})
    with pytest.raises(short, match=r"71 worker\(s\) hold .* fewer than the 69 .* \(87 in all\)"):
        check_intruder_staffing(71, crowded, bundle, 1)
    assert issubclass(short, DATA_ERRORS)  # one error line, exit 2


def test_answer_count_restrictions_bound_a_workers_answers():
    """GTE n fires at n, GT n at n + 1, EQ n once; RESTRICTION (v1) counts days; a permanent one allows
    n in all."""
    from tasks.toloka_config import answer_limits

    def pool(condition: dict, action: dict) -> dict:
        rule = {"conditions": [{"key": "assignments_accepted_count", **condition}], "action": action}
        config = {"collector_config": {"type": "ANSWER_COUNT"}, "rules": [rule]}
        return {"quality_control": {"configs": [config]}}

    week = 7 * 86400
    hours = {"type": "RESTRICTION_V2", "parameters": {"duration": 5, "duration_unit": "HOURS"}}
    (gte,) = answer_limits(pool({"operator": "GTE", "value": 50}, hours))
    assert (gte.answers, gte.seconds, gte.most_per_worker(week)) == (50, 18000.0, 84)
    assert answer_limits(pool({"operator": "GT", "value": 50}, hours))[0].answers == 51
    days = {"type": "RESTRICTION", "parameters": {"duration_days": 2}}
    assert answer_limits(pool({"operator": "GTE", "value": 10}, days))[0].most_per_worker(week) == 14
    forever = {"type": "RESTRICTION_V2", "parameters": {"duration_unit": "PERMANENT"}}
    (permanent,) = answer_limits(pool({"operator": "GTE", "value": 20}, forever))
    assert permanent.most_per_worker(week) == 20 and "for good" in permanent.describe()
    assert answer_limits(pool({"operator": "LT", "value": 5}, hours)) == []
    # EQ fires at exactly n: a lapsing restriction bounds nothing, a permanent one bounds n.
    assert answer_limits(pool({"operator": "EQ", "value": 5}, hours)) == []
    assert answer_limits(pool({"operator": "EQ", "value": 5}, forever))[0].most_per_worker(week) == 5
    assert answer_limits(pool({"operator": "GTE", "value": 5}, {"type": "SET_SKILL"})) == []
    assert answer_limits({}) == []


def test_the_run_folder_keeps_a_dissenting_camp_and_drops_a_stale_one(tmp_path):
    """60% of the workers sort by colour: the aggregation stage records the style camp, and the run
    folder gets its grouping and workers. Re-aggregated in the same folder from a crowd with no
    camp, the old camp's files are gone."""
    from aggregation import clustering_scores, generate_crowd
    from tasks.aggregate import aggregate
    from tasks.params import AggregationParams

    folder = RunFolder(tmp_path).create()
    split = generate_crowd(300, 8, seed=0, shares={"diligent": 0.4, "colour": 0.6})
    result = aggregate(split.export, AggregationParams(), 0)
    assert result.info.dissent is not None and "agree with one another" in result.info.dissent
    folder.write_clustering(result)
    grouping = pd.read_csv(folder.dissent).set_index("item")["cluster"]
    assert clustering_scores(grouping, split.truth)["ari"] > 0.9
    workers = pd.read_csv(folder.dissent_workers)["worker"]
    assert list(workers) == list(result.dissent_workers)
    assert set(split.workers.loc[workers, "type"]) == {"diligent"}

    plain = generate_crowd(300, 8, seed=0, shares={"diligent": 0.9, "spammer": 0.1})
    again = aggregate(plain.export, AggregationParams(), 0)
    assert again.info.dissent is None and again.dissent_clusters is None
    folder.write_clustering(again)
    assert not folder.dissent.exists() and not folder.dissent_workers.exists()


def test_the_run_folder_lists_the_images_only_the_prior_placed(tmp_path):
    """1,000 images of 25 styles, 10 HITs per image: the aggregation stage says how many images a
    second round should show again and what it would cost; `recheck.csv` lists them. A crowd whose
    labels hold every image leaves no list behind."""
    from aggregation import generate_crowd
    from tasks.aggregate import aggregate
    from tasks.params import AggregationParams

    folder = RunFolder(tmp_path).create()
    result = aggregate(generate_crowd(1000, 25, seed=3).export, AggregationParams(), 0)
    assert "only the prior placed" in result.info.recheck and "same design: ~" in result.info.recheck
    folder.write_clustering(result)
    listed = pd.read_csv(folder.recheck)
    assert list(listed.columns) == ["item", "cluster", "confidence"]
    assert listed["item"].tolist() == result.recheck["item"].tolist() and len(listed) > 100

    tight = aggregate(generate_crowd(200, 4, seed=0, shares={"diligent": 1.0}).export, AggregationParams(), 0)
    assert tight.info.recheck.startswith("none:")
    folder.write_clustering(tight)
    assert not folder.recheck.exists()


def test_an_uncertain_image_stays_below_one_half_in_the_run_folders_files(tmp_path):
    """A confidence of 0.49996 was rounded to `0.5` in clusters.csv: an 8,000-image run's report counted
    1,156 images below 0.5, its clusters.csv 1,155, and a user filtering the file for the images to
    send back lost one. The files keep every uncertain image below the line, the rest as rounded."""
    from dataclasses import replace

    from aggregation import generate_crowd
    from tasks.aggregate import aggregate
    from tasks.params import AggregationParams

    result = aggregate(generate_crowd(200, 4, seed=0).export, AggregationParams(), 0)
    items = result.clusters.index[:4]
    shaky = pd.Series([0.49996, 0.5, 0.123456, 0.99999], index=items)
    confidence = result.confidence.copy()
    confidence[items] = shaky
    recheck = pd.DataFrame({"item": items, "cluster": result.clusters[items].to_numpy(), "confidence": shaky})
    folder = RunFolder(tmp_path).create()
    folder.write_clustering(replace(result, confidence=confidence, recheck=recheck))

    written = pd.read_csv(folder.clusters).set_index("item")["confidence"]
    assert written[items].tolist() == [0.4999, 0.5, 0.1235, 1.0]
    assert (written < 0.5).sum() == (confidence < 0.5).sum()
    assert pd.read_csv(folder.recheck)["confidence"].tolist() == [0.4999, 0.5, 0.1235, 1.0]


def test_the_aggregation_stage_warns_as_crowdclust_aggregate_does_when_the_images_are_unanchored(tmp_path):
    """400 images of 100 styles in 10-image HITs, 10 HITs per image: over a third of the images are
    grouped with no other, and the stage says the clusters are unreliable and which hits_per_item
    would place them, with the count `crowdclust aggregate` prints for the same export. A run of
    1,139 images of 120 styles (36% unanchored) ended with exit 0 and no such warning. A crowd whose
    images are anchored gets none."""
    from typer.testing import CliRunner

    from aggregation import generate_crowd
    from crowdclust.cli import app
    from tasks.aggregate import aggregate
    from tasks.params import AggregationParams

    crowd = generate_crowd(400, 100, seed=0)
    crowd.write_export(tmp_path / "export.tsv")
    printed = CliRunner().invoke(
        app, ["aggregate", str(tmp_path / "export.tsv"), "-o", str(tmp_path / "c.csv")]
    )
    assert printed.exit_code == 0, printed.output
    alone = int(re.search(r"^unanchored +([\d,]+) items", printed.output, re.M)[1].replace(",", ""))
    said = printed.output[
        printed.output.index(f"warning: {alone:,} of 400 images ({alone / 400:.0%}) were") :
    ]

    info = aggregate(crowd.export, AggregationParams(), 0).info
    assert info.unanchored == alone > 100
    (unanchored,) = info.warnings
    assert unanchored.startswith(
        f"{alone:,} of 400 images ({alone / 400:.0%}) were grouped with no other image by most workers "
        "who saw them: the labels cannot place them and the clusters are unreliable. Each image met ~"
    )
    assert f"warning: {unanchored}" in printed.output  # one sentence, said alike
    advised = int(re.search(r"more HITs per image do: hits.size 10, hits.hits_per_item (\d+),", said)[1])
    assert advised > 10  # more HITs per image than the crowd's 10
    assert asdict(info)["unanchored"] == alone  # summary.json's `aggregation`

    anchored = aggregate(generate_crowd(200, 4, seed=0).export, AggregationParams(), 0).info
    assert anchored.warnings == () and anchored.unanchored is not None


def test_the_aggregation_stage_warns_as_crowdclust_aggregate_does_when_most_hits_have_one_answer(tmp_path):
    """`hits.overlap: 1`: every HIT answered once, so nothing checks an answer against another. A run
    of 300 images so (3-image HITs) ended with ARI 0.65, exit 0 and no warning, while
    `crowdclust aggregate` on its export said the clusters were unreliable. The stage says it in the
    same words; with 3 answers per HIT it says nothing."""
    from typer.testing import CliRunner

    from aggregation import generate_crowd
    from crowdclust.cli import app
    from tasks.aggregate import aggregate
    from tasks.params import AggregationParams

    crowd = generate_crowd(200, 4, seed=0, overlap=1)
    crowd.write_export(tmp_path / "export.tsv")
    printed = CliRunner().invoke(
        app, ["aggregate", str(tmp_path / "export.tsv"), "-o", str(tmp_path / "c.csv")]
    )
    assert printed.exit_code == 0, printed.output
    info = aggregate(crowd.export, AggregationParams(), 0).info
    lone = [one for one in info.warnings if "single answer" in one]
    assert lone == [
        "100% of the HITs have a single answer: nothing checks it against another worker's, so a "
        "careless or spamming worker's groups stand as given and the clusters are unreliable. Three or "
        "more answers per HIT (the overlap) let the model weigh the workers."
    ]
    assert f"warning: {lone[0]}" in printed.output
    checked = aggregate(generate_crowd(200, 4, seed=0, overlap=3).export, AggregationParams(), 0).info
    assert not any("single answer" in one for one in checked.warnings)


def test_the_budget_check_counts_a_second_round_before_anything_is_paid():
    """Half the demo's images may be shown again: the check (a run's, or a catalogue round's for its
    new items) counts their HITs too, as the second round will plan them (41 listed images, 8 per
    HIT with 2 anchors, 10 HITs each), so a budget that covers one round but not two says no before
    the first round opens. Without a second round the same budget is enough."""
    from tasks import preflight
    from tasks.second_round import make_plan

    params = _params(hits={"second_round_share": 0.5})
    bundle = load_bundle(params.toloka_dir)
    one = budget.planned_hits(82, params)
    images = [f"http://img.example/{i}.png" for i in range(82)]
    clusters = pd.Series(np.arange(82) % 8, index=images)
    two = one + len(make_plan(images[:41], clusters, params).hits)
    assert two - one == 60
    totals = [budget.estimate_labelling(params, bundle, n).total for n in (one, two)]
    between = _params(hits={"second_round_share": 0.5}, budget={"max_spend": sum(totals) / 2})
    with pytest.raises(budget.BudgetExceeded):
        preflight.check_plan(between, 82)
    preflight.check_plan(_params(budget={"max_spend": sum(totals) / 2}), 82)


def test_spent_counts_both_rounds_main_pools_and_the_shared_exams_once():
    """Toloka's figures: each round's main pool, and the exam pool's total as the later wait read
    it (it already holds the first round's exams). Without them: answers and accepted exams x price."""
    from tasks.stages import ExamTotals, Labelled, LabellingIds, LabellingWait, PoolStats

    params = _params()
    ids = LabellingIds("p", "t", "s", "e", "m", "pool")
    plan = hits.make_plan([f"http://img.example/{i}.png" for i in range(20)], params.hits, 0)

    def labelled(main, exam, accepted, answers) -> Labelled:
        wait = LabellingWait(PoolStats(), ExamTotals(accepted=accepted), {}, main, exam)
        return Labelled("key", ids, plan, CostEstimate(), wait, None, answers)

    first, second = labelled(10.0, 3.0, 30, 140), labelled(2.5, 3.5, 5, 35)
    assert budget.spent(params, first, None, second) == 10.0 + 2.5 + 3.5
    assert budget.spent(params, first, None) == 10.0 + 3.0
    fee = 1 + params.budget.fee_rate
    blind = labelled(None, None, 30, 140), labelled(None, None, 5, 35)
    expected = (140 + 35) * params.hits.reward * fee + (30 + 5) * params.exam.reward * fee
    assert budget.spent(params, blind[0], None, blind[1]) == pytest.approx(expected)
    # Charges read at the run's end win over those its stages read: exams left unreviewed were
    # accepted (and charged) after the run, and counted as 'pools of earlier settings'.
    assert budget.spent(params, first, None, charges={"pool": 10.4, "e": 3.2}) == pytest.approx(13.6)
    assert budget.spent(params, first, None, charges={"pool": None, "other": 9.0}) == 10.0 + 3.0


def test_a_wait_that_timed_out_says_how_far_its_pool_got():
    """A 5-worker market never filled the exam: the run ended with a bare 'not complete after 90 s'."""
    from tasks.stages import PoolStats
    from tasks.wait import _timed_out

    idle = _timed_out("6", 90, PoolStats(completion_percentage=0.0, submitted_assignments_count=0))
    assert idle.startswith(
        "pool 6 not complete after 90 s (wait.timeout_seconds): at the last poll 0% done, 0 answers"
    )
    assert "nobody answered in the first 90 s" in idle and "may simply be too short" in idle
    quiet = _timed_out("6", 3600, PoolStats(completion_percentage=0.0, submitted_assignments_count=0))
    assert "(nobody answered: check that workers can qualify" in quiet  # an hour is no start-up
    slow = _timed_out("6", 90, PoolStats(completion_percentage=41.5, submitted_assignments_count=1234))
    assert slow.endswith(": at the last poll 42% done, 1,234 answers submitted")
    unknown = _timed_out("6", 90, PoolStats())
    assert unknown == "pool 6 not complete after 90 s (wait.timeout_seconds)"


def test_a_wait_that_timed_out_says_how_long_its_pool_would_need_at_its_recent_pace():
    """The error gave '568 answers submitted' and nothing on how much longer the pool needed: the
    user could only guess a new wait.timeout_seconds."""
    from tasks.stages import PoolStats
    from tasks.wait import RATE_WINDOW_SECONDS, _timed_out

    def poll(elapsed: float, done: float, answers: int) -> PoolStats:
        return PoolStats(done, answers, answers - 3, elapsed=elapsed)

    # An early burst outside the window does not count: 50 answers in the last 15 minutes.
    polls = [poll(0, 0, 0), poll(600, 30, 300), poll(3600 - RATE_WINDOW_SECONDS, 55, 550)]
    last = poll(3600, 60, 600)
    assert _timed_out("6", 3600, last, polls, needed=1000) == (
        "pool 6 not complete after 3600 s (wait.timeout_seconds): at the last poll 60% done, 600 answers "
        "submitted (597 of them accepted); at its pace over the last 900 s (3.3 answers a minute), the "
        "400 answers left need about 2 h more: a wait.timeout_seconds of about 11,000"
    )
    # Without the plan's count, the percentage tells what is left; a pool that read 0% all along
    # gives its pace alone.
    assert _timed_out("6", 3600, last, polls).endswith(
        "the 400 answers left need about 2 h more: a wait.timeout_seconds of about 11,000"
    )
    early = _timed_out("6", 60, poll(60, 0, 20), [poll(30, 0, 5)])
    # Measured in a wait's first minutes, while workers qualify: an upper bound (a tester's 20 s
    # wait advised 710 s; the pool needed 27 s more).
    assert "at its pace over the last 30 s (30.0 answers a minute) (measured in the wait's first" in early
    assert early.endswith("so take it as an upper bound)")
    stuck = _timed_out("6", 60, poll(60, 60, 600), [poll(30, 60, 600)])
    assert stuck.endswith("(597 of them accepted); it made no progress over the last 30 s")


def test_a_timeout_short_of_workers_advises_no_longer_wait():
    """A market of 20 workers, 5 of them qualified where each HIT needs 7: the timeout advised "a
    wait.timeout_seconds of about 4,300" and then said that no HIT could get its last answers however
    long the wait. It says how far the pool got and why no wait would do, not both."""
    from tasks import exam
    from tasks.stages import PoolStats
    from tasks.wait import WaitTimeout, _timed_out, short_of_workers

    polls = [PoolStats(10, 100, 97, elapsed=300), PoolStats(20, 200, 197, elapsed=600)]
    last = PoolStats(30, 300, 297, elapsed=900)
    paced = WaitTimeout(_timed_out("6", 900, last, polls, needed=1000), last)
    assert "a wait.timeout_seconds of about" in str(paced)  # what the wait raised
    why = exam.Staffing(min_skill=75, overlap=7).short_of_workers(5)
    assert why is not None
    told = short_of_workers(paced, why, "6", 900)
    assert told.short_of_workers and told.stats is last
    assert str(told) == (
        "pool 6 not complete after 900 s (wait.timeout_seconds): at the last poll 30% done, 300 answers "
        f"submitted (297 of them accepted); {why}"
    )


def test_a_pool_read_back_from_the_platform_differs_only_where_the_config_changed():
    """`RunRegistry.ensure_pool` updates a found pool whose settings differ from the config; what the
    platform adds (ids, defaults, status) or writes otherwise (a number as a string) is no change, or
    every resumed run would close and update its pools."""
    from tasks.toloka_api import Pool, pool_changes
    from tasks.toloka_config import Placeholders, load_bundle

    configs = Path(__file__).resolve().parent.parent / "configs"
    bundle = load_bundle(configs / "demo-shoes" / "toloka")
    spec = bundle.filled(Placeholders(75.0, 0.02, 7, 0.01, 100, 0.02, 5, skill_id="3")).main_pool
    wanted = Pool.structure(spec)
    back = json.loads(json.dumps(wanted.unstructure()))
    back |= {"id": "6", "status": "OPEN", "created": "2026-12-04T10:00:00", "owner": {"id": "r"}}
    back["reward_per_assignment"] = "0.02"
    back["defaults"]["default_overlap_for_new_tasks"] = 7
    assert pool_changes(Pool.structure(back), wanted) == []
    changed = bundle.filled(Placeholders(70.0, 0.03, 9, 0.01, 100, 0.02, 5, skill_id="3")).main_pool
    assert pool_changes(Pool.structure(back), Pool.structure(changed)) == [
        "defaults",
        "filter",
        "reward_per_assignment",
    ]


def test_a_rate_limit_is_named_as_such_not_as_a_platform_that_stopped_answering():
    """A user's run under a 10 requests/s limit ended `Toloka ... stopped answering
    (TooManyRequestsApiError) ...: check that it runs`; Toloka was answering, with 429s."""
    from tasks.params import TolokaTarget
    from tasks.toloka_api import TooManyRequestsApiError, stopped_answering

    target = TolokaTarget(environment="local", url="http://127.0.0.1:4450")
    limited = stopped_answering(TooManyRequestsApiError(status_code=429, code="TOO_MANY_REQUESTS"), target)
    assert str(limited).startswith(
        "Toloka at http://127.0.0.1:4450 kept refusing requests over its rate limit"
    )
    assert "CROWDCLUST_TOLOKA_RATES" in str(limited) and "stopped answering" not in str(limited)
    import httpx

    gone = stopped_answering(httpx.ConnectError("refused"), target)
    assert str(gone).startswith("Toloka at http://127.0.0.1:4450 stopped answering (ConnectError: refused)")
    assert not gone.prefect_api


def test_prefect_s_api_gone_silent_is_told_apart_from_toloka(monkeypatch):
    """Only a request to Prefect's API means the run could not record its end (so no hook closed its
    pools): `crowdclust run` then closes them itself. Told by the request's URL."""
    import httpx

    from tasks.params import TolokaTarget
    from tasks.toloka_api import stopped_answering

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    target = TolokaTarget(environment="local", url="http://127.0.0.1:4450")
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/flow_runs/f00/set_state")
    silent = stopped_answering(httpx.ConnectError("refused", request=request), target)
    assert silent.prefect_api and silent.cause == "ConnectError: refused"
    assert str(silent).startswith("the Prefect API at http://127.0.0.1:4200/api stopped answering")
    toloka = httpx.Request("GET", "http://127.0.0.1:4450/api/v1/pools/1")
    assert not stopped_answering(httpx.ConnectError("refused", request=toloka), target).prefect_api


def test_a_run_is_named_after_its_key_after_a_name_someone_gave_it():
    """Runs are named after their run key; a name typed in the run form was replaced by it."""
    from flows.run_names import named

    assert named("ambitious-woodpecker", "bob1") == "bob1"  # Prefect's own name
    # What the UI's run form fills in: it was kept as a name given, `theta6-... (formrun-...)`
    for form in ("theta6-firiendfeld-anomaly", "mu6-cheron-a", "alpha-canis-majoris", "omega12-vega"):
        assert named(form, "bob1") == "bob1", form
    assert named("beta-test-3", "bob1") == "beta-test-3 (bob1)"  # a digit of its own: typed
    assert named("bob-try-by-hand", "bob1") == "bob-try-by-hand (bob1)"
    assert named("bob-try-by-hand (bob1)", "bob1") == "bob-try-by-hand (bob1)"  # a Retry names it again
    assert named("", "bob1") == named("bob1", "bob1") == "bob1"


def test_an_aggregation_is_named_after_its_folder_and_the_key_whose_files_it_holds(tmp_path):
    """`runs/<name>/` holds the first derived key's files: its aggregation was named `<name>` alone,
    and could not be told from another seed's in the UI."""
    from flows.run_names import folder_run_name
    from tasks.run_folder import RunFolder

    shared = RunFolder(tmp_path / "demo-shoes").create()
    assert folder_run_name(shared.root) == "demo-shoes"  # nobody's yet (a reaggregation's output)
    shared.claim("demo-shoes-1a2b-s0")
    assert folder_run_name(shared.root) == "demo-shoes (demo-shoes-1a2b-s0)"
    keyed = RunFolder(tmp_path / "demo-shoes__nightly").create()
    keyed.claim("nightly")
    assert folder_run_name(keyed.root) == "demo-shoes__nightly"


def test_an_evaluation_is_estimated_at_the_price_the_labelling_paid():
    """`fee_rate: 0.0`: the labelling paid $0.026 an answer for $0.020, yet the evaluation was still
    estimated at $0.020 and opened with too little money left to finish (a user's: $11.15 for half)."""
    from prefect.logging import disable_run_logger

    params = _params(budget={"fee_rate": 0.0})
    costs = budget.estimate_intruders(params, load_bundle(params.toloka_dir), 100)
    with disable_run_logger():
        assert budget.at_price_ratio(costs, 1.0, params) == costs
        assert budget.at_price_ratio(costs, 1.3, params).intruders == pytest.approx(costs.intruders * 1.3)


def test_the_aggregation_stage_names_the_images_no_answer_is_left_for(monkeypatch, caplog):
    """An export of the user's own whose new images were only in rejected answers: the stage says
    which images are in no cluster (before, they were left out without a word)."""
    import logging

    from aggregation import generate_crowd
    from tasks import aggregate as agg
    from tasks.params import AggregationParams

    export = generate_crowd(40, 4, seed=1).export
    rejected = export.iloc[:1].assign(
        **{"INPUT:images": '"NEW1","NEW2"', "OUTPUT:result": '{"group":1},{"group":2}'},
        **{"ASSIGNMENT:status": "REJECTED", "ASSIGNMENT:assignment_id": "new--1"},
    )
    monkeypatch.setattr(agg, "get_run_logger", lambda: logging.getLogger("stage"))
    with caplog.at_level(logging.WARNING, logger="stage"):
        result = agg.aggregate(pd.concat([export, rejected]), AggregationParams(method="coassociation"), 0)
    assert "NEW1" not in result.clusters.index
    assert "export: 2 image(s) have no answer left" in caplog.text and "cluster: NEW1, NEW2" in caplog.text


def test_an_export_that_answers_fewer_hits_than_the_plan_is_named():
    """A plan of 36 HITs whose export answers 24: the run says so (before, its summary showed the
    plan's coverage over clusters made from two thirds of it, without a word)."""
    from aggregation import generate_crowd
    from tasks.export_format import SUITE
    from tasks.results import unanswered_hits

    export = generate_crowd(40, 4, seed=1).export
    answered = export[SUITE].nunique()
    assert unanswered_hits(export, answered, "7") is None
    warning = unanswered_hits(export, answered + 12, "7")
    assert warning == (
        f"pool 7: 12 of the plan's {answered + 12:,} HITs have no accepted answer; "
        f"the clusters are made from the other {answered:,}"
    )


def test_errors_leave_a_flow_or_a_stage_without_the_token_of_their_requests():
    """httpx keeps the request, headers included, on its errors, and a failed stage's or flow run's
    exception is persisted like a result: `OAuth <token>` was found in a service's result storage.
    The header is blanked on the error, its response's request and its cause."""
    import httpx

    request = httpx.Request("GET", "http://toloka/api/v1/pools/1", headers={"Authorization": "OAuth s3cret"})
    status = httpx.HTTPStatusError("409", request=request, response=httpx.Response(409, request=request))
    cause = httpx.ConnectError("refused", request=httpx.Request("GET", "http://t", headers=request.headers))
    from tasks.run_lock import locked_run

    @locked_run()
    def flow_body(params) -> None:  # as a flow's function is wrapped under `@flow`
        try:
            raise cause
        except httpx.ConnectError as inner:
            raise status from inner

    with pytest.raises(httpx.HTTPStatusError):
        flow_body(_params())
    assert status.request.headers["authorization"] == "[removed]"
    assert status.response.request.headers["authorization"] == "[removed]"
    assert cause.request.headers["authorization"] == "[removed]"
    assert "s3cret" not in repr(status.__dict__) + repr(cause.__dict__)


def test_advice_to_change_a_setting_names_what_a_deployments_run_has(monkeypatch):
    """A UI run's exam warning said "raise exam.expected_workers and run the same command again ...,
    or stop the run (--close)": the UI has no command and no flag, and its Retry runs the parameters
    the run had. A deployment's run (its own process, PREFECT__FLOW_RUN_ID set, and Prefect's engine
    holding the deployment's id for it and its sub-flows) is told to run the deployment again under
    the same run key, or to cancel; `crowdclust run`'s stays as it was."""
    import uuid

    from prefect.context import _deployment_id

    from tasks.exam import GatingState
    from tasks.exam import Staffing as Needs
    from tasks.toloka_api import POOL_LIFETIME
    from tasks.toloka_config import tightest_limit

    bundle = load_bundle(_params().toloka_dir)
    needs = Needs(75.0, 7, 7_000, tightest_limit(bundle.main_pool, POOL_LIFETIME.total_seconds()))
    assert needs.qualified(GatingState(sent={f"w{i}": 80.0 for i in range(70)})) == 70
    by_command = needs.short_of_answers(70)
    assert "raise exam.expected_workers and run the same command again (the exam pool" in by_command
    assert by_command.endswith("or stop the run (--close)")

    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(uuid.uuid4()))
    token = _deployment_id.set(uuid.uuid4())
    try:
        deployed = needs.short_of_answers(70)
    finally:
        _deployment_id.reset(token)
    assert "raise exam.expected_workers and run the deployment again with the same run_key" in deployed
    assert "(a Custom run: a Retry keeps the old ones)" in deployed
    assert deployed.endswith("or cancel the run (its pools are closed)")
    assert "--close" not in deployed and "command" not in deployed


def test_a_cancelled_or_crashed_run_is_told_how_to_go_on_and_a_failed_one_by_its_error():
    """The hook's last line of a top-level run stopped from outside says how to go on: Retry for a
    deployment's run (the UI's button), the same command for one started by `crowdclust run`.
    A failed run's error says it itself; a sub-flow's line is not the run's last word."""
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Cancelled, Cancelling, Completed, Crashed, Failed, Paused

    from flows.hooks import ended, how_to_go_on

    deployed = FlowRun(flow_id=uuid.uuid4(), deployment_id=uuid.uuid4())
    by_hand = FlowRun(flow_id=uuid.uuid4())
    sub_flow = FlowRun(flow_id=uuid.uuid4(), deployment_id=uuid.uuid4(), parent_task_run_id=uuid.uuid4())
    for state in (Cancelling(), Cancelled(), Crashed()):
        assert how_to_go_on(deployed, state).endswith("(nothing is paid twice): Retry this run")
        assert how_to_go_on(by_hand, state).endswith("run the same command again (same config and run key)")
        assert how_to_go_on(sub_flow, state) == ""
    for state in (Failed(), Completed()):
        assert how_to_go_on(deployed, state) == "" and how_to_go_on(by_hand, state) == ""
    # What was closed reads as a list of objects (it read "closed ['pool 15', 'training 3']").
    deployed.name = "demo-shoes-s5"
    assert ended(deployed, Crashed(), ["pool 15", "training 3"]) == (
        "run demo-shoes-s5 ended CRASHED: closed pool 15, training 3. To go on with the same pools and the "
        "answers already paid for (nothing is paid twice): Retry this run"
    )
    assert (
        ended(sub_flow, Failed(), [])
        == f"run {sub_flow.name} ended FAILED: closed nothing: none was left open"
    )
    # A Suspend seen in a wait (`closed_when_suspended`): what was closed, and that Resume goes on.
    assert ended(deployed, Paused(name="Suspended"), ["pool 6", "training 2"]) == (
        "run demo-shoes-s5 suspended: closed pool 6, training 2. Resume goes on with the same pools and "
        "the answers already paid for (nothing is paid twice)"
    )
