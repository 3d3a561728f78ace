"""Exam gating: grade exam answers against golden partitions and derive the workers' skill.

Plain functions (no Prefect), called from the wait loop every tick.

- An exam answer is *correct* when it equals the golden partition up to relabelling (colour 3 vs
  colour 5 does not matter, only which images go together). Correct answers are accepted,
  everything else rejected.
- Per-exam score (the seed's `exam_check`): 100 when exact, otherwise the share of golden groups
  the worker reproduced exactly, times 100.
- Skill = min(100, sum of the worker's per-exam scores / n_exams), computed from *all* reviewed
  (accepted + rejected) exam assignments of the worker every time. The seed added to the stored
  value instead, so running the check twice double-counted; here gating is idempotent.

A tick's reviews and skill updates are independent requests, sent GATING_THREADS at a time: a large
exam pool (hundreds of takers) makes a tick hundreds of requests, and on a flaky connection
toloka-kit sleeps 4 s before a request's second retry and 8 s before its third, one request after
another when sent in turn. What the tick records does not depend on the order they finish in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from tasks.advice import run_again, stop_the_run
from tasks.stages import ExamTotals
from tasks.toloka_api import (
    ALREADY_DONE,
    POOL_LIFETIME,
    TolokaClient,
    TooManyRequestsApiError,
    is_completed,
    skill_values,
)
from tasks.toloka_config import AnswerLimit

log = logging.getLogger(__name__)
GATING_THREADS = 8  # requests of one tick in flight at once (a Prefect rate limit, when on, still applies)
T = TypeVar("T")
R = TypeVar("R")


def _clusters(labels: Sequence[Any]) -> set[frozenset[int]]:
    groups: dict[Any, set[int]] = defaultdict(set)
    for position, label in enumerate(labels):
        groups[label].add(position)
    return {frozenset(members) for members in groups.values()}


def exam_score(answer: Sequence[Any] | None, golden: Sequence[Any]) -> float:
    """100 for an exact partition, else 100 x share of golden groups reproduced exactly; 0 if malformed."""
    if answer is None or len(answer) != len(golden) or any(a is None for a in answer):
        return 0.0
    truth = _clusters(golden)
    if _clusters(answer) == truth:
        return 100.0
    return 100.0 * len(_clusters(answer) & truth) / len(truth)


def skill_value(scores: Iterable[float], n_exams: int) -> float:
    """The seed formula over all reviewed exams of one worker, capped at 100."""
    return min(100.0, sum(scores) / n_exams)


@dataclass(frozen=True)
class ExamAnswer:
    """One exam assignment as read from Toloka."""

    assignment_id: str
    worker_id: str
    status: str  # SUBMITTED | ACCEPTED | REJECTED
    images: tuple[str, ...]
    groups: tuple[Any, ...] | None  # None when the answer could not be read


def parse_groups(result: Any) -> tuple[Any, ...] | None:
    """`[{"group": 1}, ...]` or `[1, ...]` -> (1, ...); None when the answer is malformed."""
    if not isinstance(result, list):
        return None
    groups = []
    for entry in result:
        value = entry.get("group") if isinstance(entry, dict) else entry
        if value is None or isinstance(value, bool):
            return None
        try:
            groups.append(int(value))
        except (TypeError, ValueError):
            return None
    return tuple(groups)


def answer_from_assignment(assignment: Any) -> ExamAnswer:
    """Read a toloka-kit `Assignment` of the exam pool (one task per suite)."""
    task = assignment.tasks[0]
    solution = assignment.solutions[0].output_values if assignment.solutions else {}
    return ExamAnswer(
        assignment_id=str(assignment.id),
        worker_id=str(assignment.user_id),
        status=str(getattr(assignment.status, "value", assignment.status)),
        images=tuple(str(x) for x in task.input_values["images"]),
        groups=parse_groups(solution.get("result")),
    )


@dataclass(frozen=True)
class Verdict:
    assignment_id: str
    worker_id: str
    accept: bool
    score: float


def grade(answers: Iterable[ExamAnswer], goldens: dict[tuple[str, ...], tuple[int, ...]]) -> list[Verdict]:
    """Verdicts for answers whose suite has a golden partition (others are left alone, with a log line)."""
    verdicts = []
    for answer in answers:
        golden = goldens.get(answer.images)
        if golden is None:
            log.warning("exam assignment %s: no golden partition for its images", answer.assignment_id)
            continue
        score = exam_score(answer.groups, golden)
        verdicts.append(Verdict(answer.assignment_id, answer.worker_id, score == 100.0, score))
    return verdicts


def skills(
    reviewed: Iterable[ExamAnswer], goldens: dict[tuple[str, ...], tuple[int, ...]], n_exams: int
) -> dict[str, float]:
    """Worker -> skill from all their reviewed exams (sorted by worker, deterministic)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for verdict in grade(reviewed, goldens):
        scores[verdict.worker_id].append(verdict.score)
    return {worker: skill_value(scores[worker], n_exams) for worker in sorted(scores)}


@dataclass
class GatingState:
    """What one wait session knows: the reviewed exams and the skill values it sent.

    Reviewed exams are read from Toloka once per session (a resumed run finds what an earlier
    process reviewed); after that each tick adds its own verdicts, so a tick costs one search for
    new submissions plus one request per answer and per changed skill, however many were reviewed.
    """

    sent: dict[str, float]
    reviewed: dict[str, ExamAnswer] | None = None  # assignment id -> answer, None until first read

    @classmethod
    def empty(cls) -> GatingState:
        return cls(sent={})


@dataclass(frozen=True)
class Staffing:
    """What the main pool needs from the exam: `overlap` distinct workers per HIT, each with a skill
    of at least `min_skill`; and `needed` answers in all, which its tightest ANSWER_COUNT rule
    (`limit`) lets each qualified worker give only so many of (see `short_of_answers`)."""

    min_skill: float
    overlap: int
    needed: int = 0  # HITs x overlap; 0: not checked
    limit: AnswerLimit | None = None

    def qualified(self, state: GatingState) -> int:
        """The workers whose skill value lets them into the main pool."""
        return sum(1 for value in state.sent.values() if value >= self.min_skill)

    def short_of_answers(
        self, qualified: int, exam_complete: bool = True, answers: int | None = None
    ) -> str | None:
        """Why the main pool will slow down (or expire) with `qualified` workers, else None.

        The run's check before anything opened counts on `exam.pass_share` of the exam's takers
        passing; when fewer pass, every qualified worker is restricted before the pool is done. A
        10,000-image run qualified 1,036 workers where 1,400 were counted on: from ~51,800 of its
        70,000 answers the pace fell from ~240 to ~18 answers/s, nothing said why for 12 minutes,
        and the pool expired at 95%. Said once the exam pool is complete (nobody else qualifies),
        or, with `exam_complete` False, once the workers qualified so far have given what they may
        before a restriction (`used_up`) while the exam pool still fills: a market of 60 workers
        filled 48 of 318 exam seats, its 10 qualified workers were all restricted at 25% of the
        main pool, and the run timed out twice with nothing said but a pace. `answers`: the main
        pool's so far (else what the qualified workers may give before a restriction).
        """
        if self.limit is None or self.needed <= 0 or qualified <= 0:
            return None
        first = qualified * self.limit.answers
        if first >= self.needed:
            return None
        most = qualified * self.limit.most_per_worker(POOL_LIFETIME.total_seconds())
        expire = (
            f"; {'' if exam_complete else 'with no more workers, '}at most {most:,} in the pool's "
            f"{POOL_LIFETIME.days} days, so it {'will' if exam_complete else 'would'} expire unfinished"
            if most < self.needed
            else ""
        )
        rule = f"main_pool.json {self.limit.describe()}"
        if exam_complete:
            return (
                f"the exam pool is complete with {qualified:,} workers qualified: {rule}, so they give "
                f"{first:,} of the {self.needed:,} answers the main pool needs before each is restricted, "
                f"and then one answer per restriction: the pool slows down and may take days{expire}. To "
                f"finish sooner, raise exam.expected_workers and {run_again()} (the exam pool reopens "
                f"for the new seats; nothing is paid twice), or {stop_the_run()}"
            )
        return (
            f"the {qualified:,} workers qualified so far have given {answers or first:,} answers, all they "
            f"may before each is restricted ({rule}), of the {self.needed:,} the main pool needs, and "
            "the exam pool is still filling: from now on the main pool moves at one answer per "
            f"restriction and per worker who passes the exam, and may take days{expire}. If the exam "
            "fills slowly too, few workers can take it: loosen the pools' filters, lower exam.min_skill, "
            f"or let the rule allow more answers, and {run_again()} (nothing is paid twice), or "
            f"{stop_the_run()}"
        )

    def short_of_workers(self, qualified: int) -> str | None:
        """Why no HIT can get its last answers while the exam pool still fills: fewer workers have
        qualified than the `overlap` different ones each HIT needs (else None).

        On a market with fewer workers than that (an emulator started with a small `--workers`) the
        wait timed out saying only that the pool made no progress, and advised a longer timeout,
        which could never help: a market of 2 workers, overlap 3, one of them qualified.
        """
        if qualified >= self.overlap:
            return None
        return (
            f"only {qualified} worker(s) reached the skill {self.min_skill:g}, fewer than the "
            f"{self.overlap} different workers each HIT needs, so no HIT can get its last answers until "
            "more pass the exam, however long the wait (a market with fewer workers than that, such as "
            "an emulator started with a small --workers, never will)"
        )

    def used_up(self, qualified: int, answers: int) -> bool:
        """Whether `answers` in the main pool are all its `qualified` workers may give before each is
        restricted (its ANSWER_COUNT rule), with the pool short of what it needs."""
        if self.limit is None or qualified <= 0:
            return False
        return qualified * self.limit.answers <= answers < self.needed


class ExamStarved(RuntimeError):
    """The exam pool is complete and too few workers qualified for the main pool ever to complete."""


def exam_closed_for_good(client: TolokaClient, exam_pool_id: str, rejected: int = 0) -> bool:
    """Whether nobody else can qualify: the exam pool closed COMPLETED, none of its answers waits
    for review, and the review just made (`rejected`: its rejections) gave no seat back.

    A pool completes on *submitted* answers, so answers that arrived after a tick's review had read
    the SUBMITTED list still wait for the next one; and a rejected answer gives its seat back (the
    exam pool's CHANGE_OVERLAP rule reopens the pool, on Toloka a moment after the rejection). The
    demo's config on 820 images was told 2 s into its wait that the exam pool was complete with 34
    workers qualified, who could give at most 2,856 answers in the pool's 7 days; the next ticks
    rejected answers, the pool reopened, and 83 workers gave 5,283 answers in 6.3 simulated days.
    Costs one request (two when the pool closed and nothing was rejected).
    """
    if rejected or not is_completed(client.get_pool(exam_pool_id)):
        return False
    return not client.find_assignments(pool_id=exam_pool_id, status="SUBMITTED", limit=1).items


def check_staffing(
    client: TolokaClient,
    exam_pool_id: str,
    main_pool_id: str,
    staffing: Staffing,
    state: GatingState,
    rejected: int = 0,
) -> None:
    """Raise `ExamStarved` when the main pool can no longer complete for want of qualified workers.

    Each HIT needs `overlap` different qualified workers. Once the exam pool has filled its seats and
    closed, nobody else can qualify: with fewer qualified workers than the overlap, the main pool
    would wait until its expiry (7 days on Toloka) for workers who cannot come. Costs one request per
    tick, and only while too few have qualified (two more, only when it looks starved).

    A pool completes on *submitted* answers, so the last ones may have arrived after this tick's
    gating read the SUBMITTED list: while any exam answer still waits for review, its worker may
    yet qualify, and the verdict waits for the next tick (a run was once failed here for that).
    """
    qualified = staffing.qualified(state)
    if qualified >= staffing.overlap or not exam_closed_for_good(client, exam_pool_id, rejected):
        return  # enough workers, or more may yet qualify (`rejected`: by this tick's review)
    if is_completed(client.get_pool(main_pool_id)):  # the last tick, after completion: nothing is missing
        return
    raise ExamStarved(
        f"the exam pool {exam_pool_id} is complete and only {qualified} worker(s) reached the skill "
        f"{staffing.min_skill:g}, fewer than the {staffing.overlap} different workers each HIT needs: "
        "the main pool cannot complete; raise exam.expected_workers (exam seats) or lower "
        f"exam.min_skill and {run_again()}: the run key's exam and main pools go on "
        "with what they hold"
    )


def _each(call: Callable[[T], R], items: list[T], record: Callable[[T, R], None], what: str) -> list[R]:
    """`call` on every item, GATING_THREADS at a time; `record(item, result)` for each success in the
    items' order, also when another call failed (what was done on the platform is never forgotten
    by the session); then the first failure, if any, is raised.

    Calls that Toloka's rate limit still refused after toloka-kit's retries are only logged: the
    next tick reads the SUBMITTED list and the skills to send again, where failing the wait would
    reopen and re-read everything. (Such a review was once counted as "already reviewed" and left
    the answer unreviewed when the run ended.)
    """
    if not items:
        return []
    with ThreadPoolExecutor(min(GATING_THREADS, len(items)), thread_name_prefix="exam-gating") as pool:
        futures = [pool.submit(call, item) for item in items]
    results = []
    for item, future in zip(items, futures, strict=True):
        if future.exception() is None:
            record(item, future.result())
            results.append(future.result())
    failures = [f.exception() for f in futures if f.exception() is not None]
    failed = next((e for e in failures if not isinstance(e, TooManyRequestsApiError)), None)
    if failed is not None:
        raise failed
    if failures:
        log.warning(
            "exam gating: Toloka's rate limit refused %d of %d %s after toloka-kit's retries; "
            "they are sent again on the next tick",
            len(failures),
            len(items),
            what,
        )
    return results


def _review(client: TolokaClient, verdict: Verdict) -> str:
    """Accept or reject one exam answer: "accepted", "rejected" or "already" (reviewed before)."""
    try:
        if verdict.accept:
            client.accept_assignment(verdict.assignment_id, "Correct grouping")
            return "accepted"
        client.reject_assignment(
            verdict.assignment_id, f"Grouping differs from the reference ({verdict.score:.0f}%)"
        )
        return "rejected"
    except ALREADY_DONE as exc:  # reviewed by a previous tick or run: the verdict is the same
        log.info("exam assignment %s already reviewed (%s)", verdict.assignment_id, type(exc).__name__)
        return "already"


def gate_exams(
    client: TolokaClient,
    exam_pool_id: str,
    skill_id: str,
    goldens: dict[tuple[str, ...], tuple[int, ...]],
    n_exams: int,
    state: GatingState,
) -> ExamTotals:
    """One gating tick: review SUBMITTED exams, then set each reviewed worker's skill from scratch."""
    if state.reviewed is None:
        state.reviewed = {
            answer.assignment_id: answer
            for answer in map(
                answer_from_assignment,
                client.get_assignments(pool_id=exam_pool_id, status=["ACCEPTED", "REJECTED"]),
            )
        }
        # What an earlier session (a retried task, a resumed run) sent is on Toloka: not sent again.
        # Under a rate limit of 10 requests/s each retry of the wait re-sent all ~300 skill values.
        state.sent.update(skill_values(client, skill_id))
    submitted = {
        answer.assignment_id: answer
        for answer in map(
            answer_from_assignment, client.get_assignments(pool_id=exam_pool_id, status="SUBMITTED")
        )
    }
    reviewed, sent = state.reviewed, state.sent

    def remember_review(verdict: Verdict, _: str) -> None:
        reviewed[verdict.assignment_id] = submitted[verdict.assignment_id]

    def send_skill(change: tuple[str, float]) -> None:
        worker, value = change
        client.set_user_skill(skill_id=skill_id, user_id=worker, value=Decimal(str(round(value, 6))))

    def remember_skill(change: tuple[str, float], _: None) -> None:
        sent[change[0]] = change[1]

    outcomes = _each(
        lambda verdict: _review(client, verdict),
        grade(submitted.values(), goldens),
        remember_review,
        "reviews",
    )
    changes = [
        (worker, round(value, 6))
        for worker, value in skills(reviewed.values(), goldens, n_exams).items()
        if sent.get(worker) != round(value, 6)
    ]
    done = _each(send_skill, changes, remember_skill, "skill values")
    return ExamTotals(
        accepted=outcomes.count("accepted"), rejected=outcomes.count("rejected"), skills_set=len(done)
    )
