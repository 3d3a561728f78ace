"""Open pools, poll until the main pool completes (gating exams every tick), close the helpers.

`wait_for_pool` is a plain function with an injectable sleep: the Prefect tasks add the progress
artifact and log lines. The main pool closes itself when all its suites are done
(`last_close_reason: COMPLETED`); the training and exam pools are closed here at the end, as the
seed does. Every wait ends within a poll of a Suspend pressed on the run's page (`Suspended`); the
flows around it close the run's pools.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from prefect import Task, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import Pause

from tasks.artifacts import ProgressReporter, counted, warn_up
from tasks.budget import LiveSpend, SpendGuard
from tasks.exam import GatingState, Staffing, check_staffing, exam_closed_for_good, gate_exams
from tasks.params import TolokaTarget
from tasks.pause import pause
from tasks.stage import stage_task
from tasks.stages import ExamTotals, LabellingIds, LabellingWait, PoolStats
from tasks.toloka_api import (
    BALANCE_CLOSE,
    Opening,
    TolokaClient,
    answers_owed,
    close_all,
    close_reason,
    closed_for_balance,
    count_assignments,
    has_work,
    is_completed,
    make_client,
    open_all,
    platform_now,
    pool_stats,
    reopen_expired,
    reopen_if_owed,
    status_of,
)
from tasks.toloka_config import TolokaBundle

# Assignments that will still be paid: taken ones in an auto-accepted pool; taken and submitted ones
# in a reviewed pool (the exam pool: what the gating accepts, or Toloka after auto_accept_period_day).
PENDING_AUTO = ("ACTIVE",)
PENDING_REVIEW = ("ACTIVE", "SUBMITTED")

FROZEN_SECONDS = 3.0  # a platform clock that has not moved for this long stands still
MAX_REOPENINGS = 5  # times a pool is reopened (exam pool after the wait; main pool with answers owed)
SLOW_GATING_SECONDS = 10.0  # a gating tick this long says what it did (hundreds of exams under a rate limit)
log = logging.getLogger(__name__)
T = TypeVar("T", bound=Task[..., Any])
CODE = ("tasks.budget", "tasks.exam", "tasks.toloka_api", "tasks.toloka_config")


class WaitTimeout(RuntimeError):
    """The pool did not complete in time (the run fails; its hooks close the pools); `stats` is the
    last poll; `short_of_workers`: too few workers had qualified for any HIT to get its last answers,
    so a longer wait alone would not have finished it."""

    def __init__(self, message: str, stats: PoolStats | None = None, short_of_workers: bool = False) -> None:
        super().__init__(message)
        self.stats = stats
        self.short_of_workers = short_of_workers


class PoolStopped(RuntimeError):
    """The pool closed for a reason other than completion (balance, expiry, manual close)."""

    def __init__(self, message: str, reason: str = "", stats: PoolStats | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.stats = stats


class SpendLimitReached(RuntimeError):
    """The spend guard closed the pool; `stats` is its last poll (what was bought is kept)."""

    def __init__(self, message: str, stats: PoolStats) -> None:
        super().__init__(message)
        self.stats = stats


class Suspended(Pause):
    """Suspend was pressed on the run's page (the top-level run's: Prefect suspends no sub-flow) while
    a wait polled Toloka; `state` is the run's Suspended state.

    Before, the wait went on until its pool completed, its crowd paid, and the run ended Suspended
    only at its next task. Prefect's engine hears of the Suspend (events, else a poll every 10 s) and
    marks the flow run's suspension request, shared by its sub-flows and tasks, but acts on it only
    between tasks. A `Pause` is how it ends a run there: raised from the wait, the task and the
    sub-flows around it end with it (no retry, no failure hook) and the run's process ends Suspended.
    The flow around the wait closes the run's open pools first (`flows.hooks.closed_when_suspended`);
    on Resume the run starts again from its cached steps and the wait, never cached unfinished, opens
    the same pools again (`open_all`: those closed before completing).
    """


def suspension() -> Any:
    """The run's Suspended state once Suspend was pressed on its page, else None (also outside a
    flow run, and for a run no deployment started: Prefect suspends only those)."""
    request = getattr(FlowRunContext.get(), "flow_run_suspension_request", None)
    return None if request is None else request.get_state()


def end_if_suspended(what: str) -> None:
    """Raise `Suspended` once Suspend was pressed on the run's page; `what` is the wait, for the log."""
    state = suspension()
    if state is None:
        return
    get_run_logger().warning(
        "Suspend pressed: the %s ends here, and the run's open pools are closed; Resume goes on with "
        "them and the answers already paid for (nothing is paid twice)",
        what,
    )
    _task_run_suspended(f"Suspend pressed during the {what}: Resume waits again in a new task run")
    raise Suspended(f"the run was suspended during the {what}", state=state)


def _task_run_suspended(message: str) -> None:
    """Give the task run in hand the state Suspended, as its engine records a state (an event).

    Ended by a `Pause`, a task keeps the state it had: the wait's read Running for good, in a run
    Suspended and later Completed (Resume runs the wait as a new task run), and its engine logged
    `Finished in state Running()` as an error.
    """
    from prefect.context import TaskRunContext
    from prefect.states import Paused
    from prefect.utilities.engine import emit_task_run_state_change_event

    context = TaskRunContext.get()
    if context is None:
        return
    run, last = context.task_run, context.task_run.state
    state = Paused(name="Suspended", message=message)
    state.state_details.task_run_id, state.state_details.flow_run_id = run.id, run.flow_run_id
    run.state, run.state_id, run.state_type, run.state_name = state, state.id, state.type, state.name
    emit_task_run_state_change_event(task_run=run, initial_state=last, validated_state=state)


def pause_unless_suspended(seconds: float) -> None:
    """A wait's sleep between polls, ended early by a Suspend (`pause`)."""
    pause(seconds, until=suspension)


RATE_WINDOW_SECONDS = 900.0  # the polls a timed-out wait's pace is measured over (the whole wait if shorter)
EARLY_SECONDS = 600.0  # a wait shorter than this saw the crowd arrive and qualify, not its pace


def _timed_out(
    pool_id: str, timeout: float, stats: PoolStats, polls: Sequence[PoolStats] = (), needed: int = 0
) -> str:
    """Why the wait ended, with how far the pool got: a pool nobody answered is another problem
    (nobody qualified, a filter nobody passes, too small a market) than a slow one, and a slow one
    says how long it would need at its recent pace (`polls`, oldest first; `needed`: the answers
    its plan asks for, 0 when unknown), so the user knows what wait.timeout_seconds to give it."""
    done = stats.completion_percentage
    if done is None:
        return f"pool {pool_id} not complete after {timeout:.0f} s (wait.timeout_seconds)"
    answers = int(stats.submitted_assignments_count or 0)
    accepted = stats.approved_assignments_count
    submitted = f"{counted(answers, 'answer')} submitted" + (
        "" if accepted is None or answers == 0 else f" ({int(accepted):,} of them accepted)"
    )
    progress = f": at the last poll {done:.0f}% done, {submitted}"
    if answers == 0 and timeout < EARLY_SECONDS:
        progress += (
            f" (nobody answered in the first {timeout:.0f} s: workers take the exam before they can "
            "answer, so a wait this short may simply be too short; give it longer)"
        )
    elif answers == 0:
        progress += (
            " (nobody answered: check that workers can qualify and pass the pool's filter, "
            "or whether the market has enough of them)"
        )
    else:
        pace = _pace(stats, polls, timeout, needed)
        progress += pace
        if "answers a minute" in pace and timeout < EARLY_SECONDS:  # a 20 s wait advised 710 s: 27 s did
            progress += (
                " (measured in the wait's first minutes, while workers were still qualifying: a pool "
                "usually goes faster once they have, so take it as an upper bound)"
            )
    return f"pool {pool_id} not complete after {timeout:.0f} s (wait.timeout_seconds){progress}"


def short_of_workers(timed_out: WaitTimeout, why: str, pool_id: str, timeout: float) -> WaitTimeout:
    """A timeout of a pool too few workers qualified for: how far it got, and `why` no wait would do,
    without the pace's advice of a longer wait (a run on a market of 20 workers, 5 qualified where
    each HIT needs 7, was told to raise wait.timeout_seconds to about 4,300, then that no HIT could
    get its last answers however long the wait)."""
    stats = timed_out.stats
    plain = str(timed_out) if stats is None else _timed_out(pool_id, timeout, stats)
    return WaitTimeout(f"{plain}; {why}", stats, short_of_workers=True)


def _pace(last: PoolStats, polls: Sequence[PoolStats], timeout: float, needed: int) -> str:
    """'; at its pace over the last N s (A answers a minute) it needs about T more ...' from the
    polls of the last RATE_WINDOW_SECONDS (or of the later half of the wait, when shorter), or ''
    when they do not tell.

    Answers, not the completion percentage: Toloka gives that in whole percent, and a large pool's
    first hour can read 0% throughout. The answers left are the plan's (`needed`) less those
    submitted, or, without a plan, what the percentage implies.
    """
    # The later half of the wait at most: its start (exams being gated, nobody qualified yet) is no
    # measure of the pace the pool goes on at.
    window = [p for p in polls if p.elapsed >= last.elapsed - min(RATE_WINDOW_SECONDS, last.elapsed / 2)]
    if not window or last.elapsed <= window[0].elapsed:
        return ""
    first, span = window[0], last.elapsed - window[0].elapsed
    answers = int(last.submitted_assignments_count or 0)
    gained = answers - int(first.submitted_assignments_count or 0)
    if gained <= 0:
        return f"; it made no progress over the last {span:.0f} s"
    pace = f"; at its pace over the last {span:.0f} s ({60 * gained / span:,.1f} answers a minute)"
    done = last.completion_percentage or 0.0
    left = needed - answers if needed > answers else answers * (100 - done) / done if done > 0 else None
    if left is None:
        return pace
    seconds = left * span / gained
    return (
        f"{pace}, the {left:,.0f} answers left need about {_duration(seconds)} more: a "
        f"wait.timeout_seconds of about {_round_up(timeout + seconds):,}"
    )


def _duration(seconds: float) -> str:
    """A rough time span for a person: '40 s', '12 min', '3 h 20 min', '2.5 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{seconds / 86400:.1f} days"


def _round_up(seconds: float) -> int:
    """`seconds` rounded up to two significant digits (a setting, not a measurement)."""
    step = 10 ** max(0, len(str(int(seconds))) - 2)
    return int(-(-seconds // step) * step)


def wait_for_pool(
    client: TolokaClient,
    pool_id: str,
    *,
    period: float,
    timeout: float,
    on_tick: Callable[[], object] | None = None,
    report: Callable[[PoolStats], None] | None = None,
    guard: Callable[[PoolStats], str | None] | None = None,
    sleep: Callable[[float], None] = pause_unless_suspended,
    needed: int = 0,
) -> PoolStats:
    """Poll `pool_id` until it completes. `on_tick` runs every tick and once after completion.

    Complete means closed COMPLETED with nothing owed to the suites it holds (`answers_owed`): a
    pool given HITs after it completed stays CLOSED (COMPLETED), and a wait that trusted the status
    exported and aggregated the old answers as the new plan's. Such a pool is reopened (with a new
    lifetime when its own has passed) and the wait goes on, as it does for a pool that reached the
    end of its lifetime (`reopen_expired`): `timeout` is the wait's limit, not the pool's lifetime.

    `needed` (the answers the plan asks for, 0 when unknown) lets a timeout say how long the pool
    would need at its pace. `guard` sees every poll of an open pool; when it gives a reason, the
    pool is closed at once and `SpendLimitReached` carries the reason and the poll.

    A Suspend pressed on the run's page ends the wait before its next poll (`Suspended`).
    """
    started = time.monotonic()
    ticks = reopenings = 0
    polls: deque[PoolStats] = deque()  # the last RATE_WINDOW_SECONDS of polls, for a timeout's pace
    while True:
        end_if_suspended(f"wait for pool {pool_id}")
        pool = client.get_pool(pool_id)
        if on_tick is not None:
            on_tick()
        stats = pool_stats(client, pool_id, ticks, round(time.monotonic() - started, 1))
        if report is not None:
            report(stats)
        reason = guard(stats) if guard is not None and status_of(pool) == "OPEN" else None
        if reason is not None:
            client.close_pool(pool_id)
            raise SpendLimitReached(reason, stats)
        if status_of(pool) != "OPEN":
            if reopenings < MAX_REOPENINGS and reopen_expired(client, pool):
                reopenings += 1
            elif not is_completed(pool):
                raise PoolStopped(
                    f"pool {pool_id} is {status_of(pool)} (reason: {close_reason(pool) or 'unknown'}) "
                    "before completion",
                    close_reason(pool),
                    stats,
                )
            else:
                owed = answers_owed(client, pool_id)
                if not owed:
                    return replace(stats, completion_percentage=100.0)
                if reopenings >= MAX_REOPENINGS:
                    raise PoolStopped(
                        f"pool {pool_id} closed as completed {reopenings + 1} times with {owed:,} answers "
                        "of its HITs still owed",
                        close_reason(pool),
                        stats,
                    )
                reopen_if_owed(client, pool)
                reopenings += 1
        if time.monotonic() - started > timeout:
            raise WaitTimeout(_timed_out(pool_id, timeout, stats, polls, needed), stats)
        polls.append(stats)
        while polls and polls[0].elapsed < stats.elapsed - RATE_WINDOW_SECONDS:
            polls.popleft()
        ticks += 1
        sleep(period)


def wait_guarded(client: TolokaClient, pool_id: str, **options: Any) -> tuple[PoolStats, str]:
    """`wait_for_pool`, where a stop by the spend guard (or by Toloka for lack of balance) is an
    outcome, not an error.

    Returns the last poll and the reason ("" when the pool completed); the reason is logged as a
    warning, and the caller exports what was accepted. After a stop the answers in hand are waited
    for (`finish_in_hand`): closing a pool does not take them back, they are paid, and an export
    made at once left them out (7 of 7 answers paid in a test whose balance ran out).

    The pool's figures after that wait go to `report` too: the progress artifact and the wait's
    last line showed the poll of the stop (558 answers, $14.51) next to a reason that counted the
    563 accepted and paid.
    """
    try:
        return wait_for_pool(client, pool_id, **options), ""
    except SpendLimitReached as limit:
        stats, reason = _after_stop(client, pool_id, limit.stats, options), str(limit)
    except PoolStopped as stop:
        if stop.reason != BALANCE_CLOSE or stop.stats is None:
            raise
        # Like the guard's stop: what was bought is exported, and the same pool is finished later.
        stats = _after_stop(client, pool_id, stop.stats, options)
        answers = int(stats.approved_assignments_count or stats.submitted_assignments_count or 0)
        reason = (
            f"Toloka closed pool {pool_id}: the account's balance ran out ({BALANCE_CLOSE}) with "
            f"{counted(answers, 'answer')} accepted; top up the account, then run the same command "
            "again (or Retry) to finish the same pool"
        )
    get_run_logger().warning("%s", reason)
    return stats, reason


def _after_stop(client: TolokaClient, pool_id: str, stats: PoolStats, options: dict[str, Any]) -> PoolStats:
    """The pool's figures once the answers in hand at a stop were submitted (or ran out of time)."""
    left = finish_in_hand(client, pool_id, options["period"], options.get("sleep", pause))
    final = pool_stats(client, pool_id, stats.ticks, stats.elapsed)
    taken = int(final.submitted_assignments_count or 0) - int(stats.submitted_assignments_count or 0)
    if taken or left:
        get_run_logger().info(
            "pool %s: %s submitted after the stop by workers who had taken them before it%s",
            pool_id,
            counted(taken, "answer"),
            f"; {left} still in progress when the pool's time for an assignment ran out" if left else "",
        )
    report = options.get("report")
    if report is not None and final != stats:  # what was paid after the stop's poll
        report(final)
    return final


class PlatformClock:
    """How long a wait has lasted: on the platform's clock or the local one, whichever says more.

    The emulator's clock runs ahead of the real one when its crowd is accelerated, and a deadline
    such as a pool's `assignment_max_duration_seconds` passes on it; an emulator held at --speed 0
    has a clock that stands still, and nothing in hand ever ends there.
    """

    def __init__(self, client: TolokaClient) -> None:
        self.client = client
        self.restart()

    def restart(self) -> None:
        """Count from now."""
        self.started, self.start = time.monotonic(), platform_now(self.client)
        self.still = (self.started, self.start)  # when the platform's clock last moved, its reading then

    def read(self) -> tuple[float, bool]:
        """Seconds waited, and whether the platform's clock has stood still for FROZEN_SECONDS."""
        platform = platform_now(self.client)
        if platform != self.still[1]:
            self.still = (time.monotonic(), platform)
        frozen = time.monotonic() - self.still[0] >= FROZEN_SECONDS
        return max(time.monotonic() - self.started, (platform - self.start).total_seconds()), frozen


def finish_in_hand(
    client: TolokaClient, pool_id: str, period: float, sleep: Callable[[float], None] = pause
) -> int:
    """Wait until no assignment of a closed, auto-accepted pool is in progress; how many still are.

    Toloka lets each assignment taken before a close run to the pool's
    `assignment_max_duration_seconds`, and an auto-accepted one is paid when it is submitted; the
    wait ends at that limit (on the platform's clock) at the latest.
    """
    limit = float(client.get_pool(pool_id).assignment_max_duration_seconds or 600)
    clock, told = PlatformClock(client), False
    while True:
        left = count_assignments(client, pool_id, PENDING_AUTO)
        waited, frozen = clock.read()
        if left == 0 or frozen or waited >= limit:
            return left
        if not told:  # one line: on Toloka this wait can last many minutes
            told = True
            get_run_logger().info(
                "pool %s: waiting for the %s workers took before the stop (they are paid when "
                "submitted; at most the pool's %s for an assignment)",
                pool_id,
                counted(left, "answer"),
                _duration(limit),
            )
        sleep(period)


def waits_again_after_top_up(task: T, target: TolokaTarget, pool_id: str, retries: int) -> T:
    """`task` (a wait on `pool_id`) with `retries`, run anew instead of served from the stage cache
    when Toloka closed the pool for lack of balance: nothing a top-up changes is in the wait's cache
    key, and after a $20 top-up the same command was handed the cached stop and told to top up again.
    """
    return task.with_options(retries=retries, refresh_cache=closed_for_balance(make_client(target), pool_id))


def drain_exams(
    review: Callable[[], None],
    close: Callable[[], bool],
    client: TolokaClient,
    exam_pool_id: str,
    period: float,
    limit_seconds: float,
    sleep: Callable[[float], None] | None = None,
    suspends: bool = True,
) -> int:
    """Review the exam answers that arrive after the exam pool closed; how many are left.

    Closing a pool does not take back the assignments in hand: Toloka lets each run to the pool's
    assignment_max_duration_seconds, and a tick rate-limited before the close leaves answers
    SUBMITTED. Unreviewed, they are accepted and paid days after the run, outside the cost it
    reported (12 of 300 in a user's run; 139 SUBMITTED mid-run under a limit of 10 requests/s).
    So the wait reviews until none is in progress or waiting, and once more after `limit_seconds`
    have passed on the platform's clock (the emulator's runs faster than the real one) or on the
    real one: by then every assignment in hand at the close was submitted or expired. (A limit
    checked after the review ended a run on the emulator with 10 answers submitted during it.)

    `close` runs after every review and says whether the pool was open: the exam pool's quality
    control (a rejection adds an answer and opens the pool) reopens it when a late answer is
    rejected, and workers then took exams after the run, unreviewed and paid. Assignments taken
    meanwhile get their time again (up to MAX_REOPENINGS times).

    `suspends`: a Suspend pressed on the run's page ends it before its next review (`Suspended`);
    the wait after the Resume reviews what is left. `sleep` by default: `pause`, ended early by a
    Suspend when `suspends`.
    """
    if sleep is None:
        sleep = pause_unless_suspended if suspends else pause
    reopenings = 0
    clock = PlatformClock(client)
    while True:
        if suspends:
            end_if_suspended(f"review of the exam answers of pool {exam_pool_id}")
        waited, frozen = clock.read()
        if frozen:  # a clock that stands still ends nothing in hand
            return count_assignments(client, exam_pool_id, PENDING_REVIEW)
        review()
        if close() and reopenings < MAX_REOPENINGS:
            reopenings += 1
            log.info(
                "exam pool %s ran again after a late answer's rejection (its quality control adds an "
                "answer and opens the pool): closed again, reviewing what its workers submit",
                exam_pool_id,
            )
            clock.restart()
            waited = 0.0
        pending = count_assignments(client, exam_pool_id, PENDING_REVIEW)
        if pending == 0 or waited >= limit_seconds:
            return pending
        sleep(period)


@stage_task(name="wait-labelling", code=CODE, toloka=True)
def wait_labelling_task(
    target: TolokaTarget,
    ids: LabellingIds,
    bundle: TolokaBundle,
    n_exams: int,
    period: float,
    timeout: float,
    spend: SpendGuard,
    staffing: Staffing,
    what: str = "main pool",
) -> LabellingWait:
    """Open training, exam and main pool; poll with exam gating every tick; close training and exam.

    `what` the main pool is, in its progress artifact's key and lines (`second-round pool`: a run
    with a second round showed two progress bars both called "main pool").

    Ends with `ExamStarved` when the exam pool has closed with fewer qualified workers than the HIT
    overlap (`check_staffing`): the main pool could not complete.

    The spend guard closes the main pool before what Toloka charged for it and the exams could
    pass what is left of max_spend; the wait then ends with `stopped` set and the accepted answers
    are exported as usual.
    """
    client = make_client(target)
    goldens = bundle.goldens()
    state = GatingState.empty()
    totals = [ExamTotals()]
    helpers = [Opening("training", ids.training), Opening("pool", ids.exam_pool)]
    # A main pool with nothing left to answer (a finished run run again after a change its wait
    # depends on) needs nobody gated: opened, the exam paid workers for its free seats, for nothing.
    if has_work(client, ids.main_pool):
        open_all(client, [*helpers, Opening("pool", ids.main_pool)])

    def review() -> ExamTotals:
        started = time.monotonic()
        tick = gate_exams(client, ids.exam_pool, ids.skill, goldens, n_exams, state)
        totals[0] += tick
        if time.monotonic() - started >= SLOW_GATING_SECONDS:  # a long silence between poll lines
            get_run_logger().info("exam gating: %s in %.0f s", tick.describe(), time.monotonic() - started)
        return tick

    warned: set[bool] = set()  # which of the two short-of-answers warnings was said (exam complete?)
    polled: list[PoolStats] = []  # the main pool's last poll (`guard` sees each one)

    def gate() -> None:
        rejected = review().rejected
        exam_pool = client.get_pool(ids.exam_pool)
        # Nobody could qualify from an expired exam pool while the main pool waits for workers.
        reopen_expired(client, exam_pool)
        check_staffing(client, ids.exam_pool, ids.main_pool, staffing, state, rejected)
        # Once nobody else qualifies; while the exam still fills, once those qualified are restricted.
        complete = is_completed(exam_pool)
        qualified = staffing.qualified(state)
        if complete in warned or staffing.short_of_answers(qualified) is None or not polled:
            return  # said already, nothing to say, or no poll yet
        if complete and not exam_closed_for_good(client, ids.exam_pool, rejected):
            return  # answers wait for review, or seats came back: more may qualify
        main = polled[-1]
        answers = int(max(main.submitted_assignments_count or 0, main.approved_assignments_count or 0))
        if complete or staffing.used_up(qualified, answers):
            warned.add(complete)
            warn_up(f"exam gating: {staffing.short_of_answers(qualified, complete, answers)}")

    live = LiveSpend(spend)

    def guard(stats: PoolStats) -> str | None:
        polled[:] = [stats]
        ratio = live.ratio_of(stats)
        if spend.plan_fits(spend.spent(stats, totals[0].accepted, ratio), ratio):
            return None
        exam = pool_stats(client, ids.exam_pool)
        charged = spend.spent(stats, 0) + (exam.spent_budget or totals[0].accepted * spend.exam_price * ratio)
        in_flight = count_assignments(client, ids.main_pool, PENDING_AUTO) * spend.price
        in_flight += count_assignments(client, ids.exam_pool, PENDING_REVIEW) * spend.exam_price
        earlier = exams_before if exam.spent_budget is not None else 0.0  # in `charged`, or not
        return live.stop_reason(charged, round(in_flight * ratio, 4), ratio, earlier)

    # What the exam pool was charged before this wait: the main pool's spend counts its whole pool,
    # the gating only this session's exams (a resumed run's line was $2.34 short).
    exams_before = pool_stats(client, ids.exam_pool).spent_budget or 0.0

    def with_exams(stats: PoolStats) -> str:
        """The stage's spend against the budget: the main pool's line alone left out the exams, and
        a team lead watching the run saw no total to set against max_spend."""
        total = spend.spent(stats, totals[0].accepted, live.ratio_of(stats)) + exams_before
        return spend.left_line(total)

    key = f"{what.replace(' ', '-')}-progress"
    report = ProgressReporter(key, f"{what} {ids.main_pool}", also=with_exams)
    try:
        main, stopped = wait_guarded(
            client,
            ids.main_pool,
            period=period,
            timeout=timeout,
            on_tick=gate,
            report=report,
            guard=guard,
            needed=staffing.needed,
        )
        report.show_last()
    except WaitTimeout as timed_out:
        short = staffing.short_of_workers(staffing.qualified(state))
        if short is None:
            raise
        raise short_of_workers(timed_out, short, ids.main_pool, timeout) from None
    finally:
        report.flush()  # the line the wait ended on, however it ended
    close_all(client, helpers)

    in_hand = float(bundle.exam_pool.get("assignment_max_duration_seconds") or 600)

    started_at = [client.get_pool(ids.exam_pool).last_started]

    def close_again() -> bool:
        """Close what a review reopened; whether the exam pool ran again since the last look (it
        may have completed again meanwhile: one late answer was left so on the emulator). The
        training stays closed: no rule reopens it."""
        pool = client.get_pool(ids.exam_pool)
        reopened = status_of(pool) == "OPEN" or pool.last_started != started_at[0]
        started_at[0] = pool.last_started
        if status_of(pool) == "OPEN":
            client.close_pool(ids.exam_pool)
        return reopened

    # After a stop for money the stage ends as it did, Suspend or not: resumed, its wait would open
    # again the main pool the stop had closed.
    suspends = not stopped
    unreviewed = drain_exams(review, close_again, client, ids.exam_pool, period, in_hand, suspends=suspends)
    if unreviewed:
        get_run_logger().warning(
            "exam gating: %d exam answers still in progress or unreviewed %.0f s after the exam pool "
            "closed: Toloka accepts and charges them %s days after submission, outside this run's cost",
            unreviewed,
            in_hand,
            bundle.exam_pool.get("auto_accept_period_day", "some"),
        )
    get_run_logger().info(
        "exam gating: %s; %d workers hold a skill value", totals[0].describe(), len(state.sent)
    )
    return LabellingWait(
        main=main,
        exams=totals[0],
        skills=dict(state.sent),
        spent_main=main.spent_budget,
        spent_exam=pool_stats(client, ids.exam_pool).spent_budget,
        stopped=stopped,
    )
