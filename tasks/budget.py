"""Cost estimate and budget guard, run before any pool of a stage opens.

Estimate per pool = suites x (overlap + what its quality-control rules may add) x reward x (1 + fee).
The exam pool is bounded by the number of workers allowed to take each exam (its overlap) over its
whole life, whatever the number of rounds; training is free on Toloka.

`budget.max_spend` is the budget of a run key (a run, or a catalogue over all its rounds). Each
stage checks its estimate against what is left of it: max_spend minus what Toloka already charged
for the run's *other* pools (those its estimate does not cover), so labelling, the intruder
evaluation and every later catalogue round share one budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import get_run_logger

from tasks.advice import run_again
from tasks.params import PipelineParams, TolokaTarget
from tasks.stage import stage_task
from tasks.stages import CostEstimate, Evaluation, Labelled, PoolStats
from tasks.toloka_api import BALANCE_CLOSE, RunRegistry
from tasks.toloka_config import TolokaBundle, check_overlap_rules, overlap_raise

INTRUDER_POOLS = "intruders-pool-"  # role prefix of intruder pools (one per evaluated clustering)
EXAM_POOL = "exam-pool"  # role of the exam pool (shared by a catalogue's rounds)


class BudgetExceeded(RuntimeError):
    """The stage would cost more than what is left of `budget.max_spend`; nothing has been opened or paid."""


class BalanceTooLow(BudgetExceeded):
    """The account's balance is below what the stage may still cost; nothing has been opened or paid."""


class SpendGuardStopped(RuntimeError):
    """The spend guard closed the main pool before completion; what was accepted has been exported."""


class BalanceRanOut(SpendGuardStopped):
    """Toloka closed a pool because the account's balance ran out; what was accepted has been
    exported. Its own name: the UI's state message read `SpendGuardStopped: Toloka closed pool 15:
    the account's balance ran out`, as if the budget had stopped it."""


def stopped_run(reason: str, export: Path) -> SpendGuardStopped:
    """The error a run ends with when a wait was stopped (`reason`) and its accepted answers were
    exported to `export`."""
    kind = BalanceRanOut if f"({BALANCE_CLOSE})" in reason else SpendGuardStopped
    return kind(f"{reason}; accepted answers: {export}")


def pool_cost(suites: int, overlap: int, reward: float, fee_rate: float) -> float:
    return round(suites * overlap * reward * (1.0 + fee_rate), 4)


def estimate_labelling(params: PipelineParams, bundle: TolokaBundle, n_main_suites: int) -> CostEstimate:
    """Labelling with `n_main_suites` HITs, its exams, and (when enabled) the intruder evaluation after it."""
    fee = params.budget.fee_rate
    main = pool_cost(n_main_suites, main_overlap(params, bundle), params.hits.reward, fee)
    exam_overlap = params.exam.expected_workers + overlap_raise(bundle.exam_pool)
    # Every exam suite of the config is uploaded (a worker may take more than n_exams of them).
    exam = pool_cost(len(bundle.exam_suites), exam_overlap, params.exam.reward, fee)
    intruders = estimate_intruders(params, bundle, params.intruders.n_hits).intruders
    return CostEstimate(main=main, exam=exam, intruders=intruders if params.intruders.enabled else 0.0)


def main_overlap(params: PipelineParams, bundle: TolokaBundle) -> int:
    """The most paid answers one main-pool HIT can get (refuses chaining rules or ones past max_overlap)."""
    path = params.toloka_dir / "main_pool.json"
    return check_overlap_rules(path, bundle.main_pool, params.hits.overlap, params.hits.max_overlap)


def planned_hits(n_items: int, params: PipelineParams, hits_per_item: int | None = None) -> int:
    """How many HITs a plan of `n_items` will have, without planning it (both designs cut the same);
    `hits_per_item` instead of the config's."""
    per_item = params.hits.hits_per_item if hits_per_item is None else hits_per_item
    return max(-(-n_items * per_item // params.hits.size), 1)


def check_plan_size(params: PipelineParams, bundle: TolokaBundle, n_items: int) -> None:
    """Refuse a plan whose main pool alone would cost more than max_spend, before it is planned.

    `hits_per_item: 100000` on 82 images would plan 820,000 HITs for half a minute and only then
    meet the budget check; this arithmetic says no at once.
    """
    n_hits = planned_hits(n_items, params)
    fee = params.budget.fee_rate
    cost = pool_cost(n_hits, main_overlap(params, bundle), params.hits.reward, fee)
    if cost > params.budget.max_spend:
        per_hit = pool_cost(1, main_overlap(params, bundle), params.hits.reward, fee)
        most = int(params.budget.max_spend // per_hit * params.hits.size // max(n_items, 1))
        fits = (
            f"at most hits_per_item {most} fits"
            if most
            else f"not even hits_per_item 1 fits: ${per_hit * planned_hits(n_items, params, 1):,.2f}"
        )
        raise BudgetExceeded(
            f"hits.hits_per_item {params.hits.hits_per_item} on {n_items} images needs {n_hits} HITs, "
            f"${cost:,.2f} for the main pool alone: exceeds budget.max_spend ${params.budget.max_spend:,.2f} "
            f"({fits}); nothing was planned or opened"
        )


def estimate_intruders(params: PipelineParams, bundle: TolokaBundle, n_hits: int) -> CostEstimate:
    """An intruder evaluation with `n_hits` HITs."""
    cfg = params.intruders
    overlap = cfg.overlap + overlap_raise(bundle.intruders_pool)
    return CostEstimate(intruders=pool_cost(n_hits, overlap, cfg.reward, params.budget.fee_rate))


def _apart(value: float, other: float) -> str:
    """`value` in dollars, with as many decimals as it takes to differ from `other` (at most 4).

    `estimated cost $31.82 exceeds budget.max_spend $31.82` read as a contradiction: the estimate
    was $31.824.
    """
    for places in (2, 3, 4):
        if f"{value:.{places}f}" != f"{other:.{places}f}":
            return f"{value:,.{places}f}"
    return f"{value:,.4f}"


def check_budget(costs: CostEstimate, max_spend: float, spent_before: float = 0.0) -> None:
    """Raise with the breakdown when the estimate exceeds what is left of the budget."""
    left = round(max_spend - spent_before, 4)
    if costs.total > left:
        parts = ", ".join(f"{k} ${v:,.2f}" for k, v in costs.parts().items() if v)
        already = (
            f" less ${spent_before:,.2f} already spent by this run key (${_apart(left, costs.total)} left)"
            if spent_before
            else ""
        )
        raise BudgetExceeded(
            f"estimated cost ${_apart(costs.total, left)} ({parts}) exceeds budget.max_spend "
            f"${_apart(max_spend, costs.total)}{already}; {_way_out(costs)}"
        )


def _way_out(costs: CostEstimate) -> str:
    """What to change after a refusal. An evaluation is refused after the labelling it follows was
    paid: changing `hits.*` then would change the plan the paid pool holds, so only the evaluation's
    settings are offered, and the user learns the clusters are kept (a user read the labelling's
    advice there and did not know clusters.csv was written)."""
    if costs.main == 0 and costs.exam_due == 0:
        return (
            "raise budget.max_spend, lower intruders.n_hits or intruders.overlap, or set "
            f"intruders.enabled: false, and {run_again()}: the labelling and the clusters it "
            "gave (written in the run folder) are kept and reused. No intruder pool was opened."
        )
    return (
        "raise budget.max_spend or lower hits.overlap / hits.hits_per_item / intruders.n_hits. "
        "No pool was opened."
    )


def check_balance(costs: CostEstimate, paid: float, balance: float | None) -> None:
    """Refuse a stage the account cannot pay for: its estimate less what its pools were paid already.

    Toloka closes a pool whose requester runs out of money (NOT_ENOUGH_BALANCE): a user with $10 on
    the account saw the budget check pass a $31.82 estimate, the pools open, $9.84 paid, and the run
    fail half done.
    """
    if balance is None:
        return
    due = round(costs.total - paid, 4)
    if due > balance:
        raise BalanceTooLow(
            f"the account's balance ${_apart(balance, due)} is below what this stage may still cost, "
            f"${_apart(due, balance)} (estimate ${costs.total:,.2f}"
            + (f" less ${paid:,.2f} paid already in its pools" if paid else "")
            + "): top up the account on Toloka, then run the same command again (or Retry the flow "
            "run). No pool was opened."
        )


@stage_task(name="answers-beyond-overlap", toloka=True, cache=False)
def answers_beyond_task(target: TolokaTarget, run_key: str, role: str, overlap: int) -> int:
    """`RunRegistry.answers_beyond`, read now (a question of each run, never cached).

    Logs what it read and how long it took: it reads every answer the pool holds, and a resumed
    run at ~70,000 answers was silent here for 19.5 s.
    """
    started = time.monotonic()
    extra = RunRegistry.connect(target, run_key).answers_beyond(role, overlap)
    get_run_logger().info(
        "%s: %d answers already held above %d per HIT (the pool's answers read in %.1f s)",
        role,
        extra,
        overlap,
        time.monotonic() - started,
    )
    return extra


def with_answers_beyond(
    costs: CostEstimate, extra: int, counted: int, params: PipelineParams
) -> CostEstimate:
    """The estimate with the main pool's answers above the plan's overlap (already paid or due).

    A run interrupted at overlap 7 and resumed at 5 paid 478 answers where the plan counted 410:
    $16.33 against a max_spend of $14.60 that the estimate ($14.56) had passed.
    """
    if extra <= 0:
        return costs
    added = pool_cost(extra, 1, params.hits.reward, params.budget.fee_rate)
    get_run_logger().warning(
        "the main pool already holds %d answers above the %d per HIT the plan counts (given before "
        "hits.overlap was lowered): they are paid too, $%.2f added to the estimate",
        extra,
        counted,
        added,
    )
    return replace(costs, main=round(costs.main + added, 4))


@stage_task(name="price-seen", toloka=True, cache=False)
def price_ratio_seen_task(target: TolokaTarget, run_key: str, params: PipelineParams) -> float:
    """What Toloka charged per accepted answer of the run key's labelling pools over the config's
    price (>= 1; 1 when nothing was accepted yet), as the labelling's spend guard measures it.

    Every pool paid `hits.reward` counts (a single run's main pool, a catalogue's rounds, second
    rounds): the platform's fee is the key's, not one pool's. Reading the single run's `main-pool`
    only, a catalogue round stopped for lack of balance under `budget.fee_rate: 0.0` was checked at
    the config's price when it resumed, as a single run was before it was checked at Toloka's.

    Each answer is set against the reward it was paid, not today's `hits.reward`: a catalogue
    whose reward was raised from $0.02 to $0.03 for a round read Toloka's $0.026 per earlier answer
    as below the config's $0.03 (ratio 1), so at `fee_rate 0.0` the round was checked at the
    config's price and opened with too little on the account; a lowered reward read the same
    charges as 2.6x the config's price and refused a round the account could pay. Nor the pool's
    reward of today: a pool updated from $0.03 to $0.02 under the same key keeps the answers it
    paid at $0.03, and read at $0.02 they said 1.5x, with a warning that `fee_rate` was below the
    platform's fee when it was the platform's.
    """
    from tasks.second_round import SECOND_ROUND_POOL
    from tasks.setup import MAIN_POOL  # a catalogue's rounds are MAIN_POOL-<round>
    from tasks.toloka_api import accepted_rewards, pool_stats

    registry = RunRegistry.connect(target, run_key)
    labelling = (MAIN_POOL, SECOND_ROUND_POOL)  # role prefixes of the pools paid hits.reward
    pools = [pool for role, pool in sorted(registry.pools().items()) if role.startswith(labelling)]
    charged = expected = 0.0
    for pool in pools:
        stats = pool_stats(registry.client, str(pool.id))
        charged += stats.spent_budget or 0.0
        # Read after the charge: an answer accepted in between raises the expected side, never the ratio.
        paid_at = float(pool.reward_per_assignment or params.hits.reward)  # for an answer that does not say
        rewards = accepted_rewards(registry.client, str(pool.id), paid_at)
        expected += rewards * (1.0 + params.budget.fee_rate)
    return charged_ratio(charged, expected)


def at_price_ratio(costs: CostEstimate, ratio: float, params: PipelineParams) -> CostEstimate:
    """The estimate at Toloka's price, when the labelling showed it above the config's.

    With `budget.fee_rate: 0.0` the labelling's guard saw $0.026 per answer for $0.020, yet the
    intruder stage was still estimated at $0.020: a user's evaluation opened with $11.18 left on the
    account for $13.00 of work, and ran out half done.
    """
    if ratio <= 1.0:
        return costs
    scaled = replace(
        costs,
        main=round(costs.main * ratio, 4),
        exam=round(costs.exam * ratio, 4),
        intruders=round(costs.intruders * ratio, 4),
    )
    get_run_logger().warning(
        "Toloka charged %.2fx the config's price per answer in this run key's labelling pools "
        "(budget.fee_rate %.2f is below the platform's fee): the estimate counts that price, %s",
        ratio,
        params.budget.fee_rate,
        scaled.describe(),
    )
    return scaled


def latest_evaluation(charged: list[tuple[str, str, float | None]]) -> tuple[str, ...]:
    """The role of the run key's newest intruder pool (by pool id: the platform counts them up), or
    none: the one evaluation a resumed run goes on with when its clustering stands."""
    pools = [(len(pool_id), pool_id, role) for role, pool_id, _ in charged if role.startswith(INTRUDER_POOLS)]
    return (max(pools)[2],) if pools else ()


# Who paid what the covered pools were charged before a check: an earlier attempt of the run, or
# the run itself (a second round's check covers the exam pool its first round paid). "(a resumed
# run)" was said of a 3,000-image catalogue run's second round, which resumed nothing.
PAID_BY = "earlier in this run, or by an earlier attempt of it"


@stage_task(name="check-budget", toloka=True, cache=False)
def check_budget_task(
    target: TolokaTarget,
    run_key: str,
    costs: CostEstimate,
    max_spend: float,
    covers: tuple[str, ...],
    resumes_evaluation: bool = False,
) -> float:
    """Check `costs` against max_spend less what the run's pools not in `covers` (role prefixes) cost.

    `resumes_evaluation`: `costs` hold the one evaluation a pipeline's labelling may go on to resume,
    so the newest intruder pool is covered too (`latest_evaluation`); the key's other intruder pools
    were paid for clusterings or `intruders.*` settings left behind and count as spent. Covering
    them all, a labelling check passed with the key's $5.69 past a max_spend of $5.50, the main pool
    was paid $0.47 more, and only the evaluation was then refused.

    Returns what those other pools cost. Never cached: money already spent is the question of each run.
    """
    registry = RunRegistry.connect(target, run_key)
    charged = registry.charged()
    if resumes_evaluation:
        covers = (*covers, *latest_evaluation(charged))
    before = round(sum(v or 0.0 for role, _, v in charged if not role.startswith(covers)), 4)
    # What the exam pool was paid before this run is outside `costs.total`: spent, not to spend.
    resumed = round(
        max(sum(v or 0.0 for role, _, v in charged if role.startswith(covers)) - costs.exam_paid, 0), 4
    )
    get_run_logger().info(
        "cost estimate: %s; budget $%s, already spent outside this estimate $%s%s",
        costs.describe(),
        f"{max_spend:,.2f}",
        f"{round(before + costs.exam_paid, 4):,.2f}",
        f"; ${resumed:,.2f} paid already in the pools the estimate covers ({PAID_BY})" if resumed else "",
    )
    check_budget(costs, max_spend, round(before + costs.exam_paid, 4))
    check_balance(costs, resumed, registry.balance())
    return before


@stage_task(name="exam-paid-at-start", toloka=True, per_flow_run=True)
def exam_paid_at_start_task(target: TolokaTarget, run_key: str) -> float:
    """What the run key's exam pool had been charged when the flow run first asked.

    A catalogue's rounds share one exam pool, bounded over its whole life: what earlier runs paid
    for it is not a later round's to spend. Read once per flow run, as `charges_at_start_task`: a
    Retry's estimate, like its cost, counts the exams its first attempt paid as the run's own.
    """
    charged = RunRegistry.connect(target, run_key).charged(lambda role: role == EXAM_POOL)
    return round(sum(value or 0.0 for _, _, value in charged), 4)


@stage_task(name="pool-charges", toloka=True, cache=False)
def pool_charges_task(target: TolokaTarget, run_key: str) -> dict[str, float | None]:
    """Pool id -> what Toloka has charged for it, for every pool of the run key, read now. Never
    cached: a run's cost is read at its end, charges that came in since its stages ran included
    (exam answers left unreviewed are accepted, and charged, days later)."""
    return {pool_id: value for _, pool_id, value in RunRegistry.connect(target, run_key).charged()}


@stage_task(name="pool-charges-at-start", toloka=True, per_flow_run=True)
def charges_at_start_task(target: TolokaTarget, run_key: str) -> dict[str, float | None]:
    """`pool_charges_task` as a flow run first read it: what the run key had paid before the run.

    A Retry of the flow run gets its first attempt's reading, so that what the run added counts
    every attempt (and what the crowd finished between them), not only the last one's: a run
    retried after an outage reported $13.00 added of $31.82, all of it paid by that one flow run.
    """
    return pool_charges_task.fn(target, run_key)


def total(charges: dict[str, float | None]) -> float:
    """What every pool of `pool_charges_task` cost together (pools of earlier settings included: a
    rerun after a config change leaves the earlier pool behind, paid)."""
    return round(sum(value or 0.0 for value in charges.values()), 4)


def price_ratio(stats: PoolStats, price: float) -> float:
    """What Toloka charged per accepted answer of a pool over the configured `price` (>= 1).

    The plan's prices come from `hits.reward` and `budget.fee_rate`; a fee_rate below the
    platform's (0.0 for Toloka's 0.3) made the spend guard's ceiling 30% low, the guard stayed quiet
    on it, and a run charged $16.07 against a max_spend of $15.00 before its first check.
    """
    return charged_ratio(stats.spent_budget, (stats.approved_assignments_count or 0) * price)


def charged_ratio(charged: float | None, expected: float) -> float:
    """What Toloka charged over what the config's prices say (>= 1; 1 when nothing is known yet)."""
    if not charged or expected <= 0:
        return 1.0
    ratio = charged / expected
    return round(ratio, 4) if ratio > 1.001 else 1.0  # rounding of the platform's figures aside


@dataclass(frozen=True)
class SpendGuard:
    """The live money bound of a wait: what its pools may still cost, their prices, their plan.

    `limit` is max_spend less what the run key's other pools cost when the stage started; `ceiling`
    is the most the waited pools can cost under the plan (the stage's estimate: every HIT at its
    highest overlap, every exam seat taken). While what Toloka charged stays within the ceiling
    and the ceiling within the limit, nothing can pass the budget and the guard costs no call.
    Otherwise every poll counts the assignments still in flight (taken, or submitted and not yet
    reviewed): they will be paid whatever happens next. The pool closes once charged + in flight,
    plus a margin for what the crowd may take before the next poll, could pass the limit.
    """

    limit: float
    max_spend: float
    ceiling: float
    price: float  # one assignment of the guarded pool, fee included
    exam_price: float = 0.0  # one exam assignment, fee included (0 when no exam pool is waited)
    # What the shared exam pool was charged before this run (a catalogue's earlier rounds:
    # `CostEstimate.exam_paid`). The guard counts it in `limit` and in what the pools charged; the
    # poll lines count it as spent before the round, as the estimate line does (`left_line`).
    exam_paid: float = 0.0

    @classmethod
    def of(cls, params: PipelineParams, spent_before: float, costs: CostEstimate) -> SpendGuard:
        """The guard of the labelling wait: main pool and exam pool."""
        fee = 1.0 + params.budget.fee_rate
        return cls(
            limit=round(params.budget.max_spend - spent_before, 4),
            max_spend=params.budget.max_spend,
            ceiling=round(costs.main + costs.exam, 4),
            price=round(params.hits.reward * fee, 6),
            exam_price=round(params.exam.reward * fee, 6),
            exam_paid=costs.exam_paid,
        )

    def left_line(self, charged: float) -> str:
        """What a poll line says of the budget: what the stage's pools `charged` (the exam pool's
        whole charge included) of what is left, and what was spent before the round when anything was.

        The exam pool that earlier rounds paid is spent before the round, not in its charges and
        not in what is left: a catalogue round read "with the exams $0.36 of the $37.50 left of
        budget.max_spend" under its estimate line's "exam $0.00 (the exam pool's $0.31 was paid
        before this run, not spent again) ...; budget $40.00, already spent outside this estimate
        $2.81", which left $37.19.
        """
        left, own = round(self.limit - self.exam_paid, 4), charged - self.exam_paid
        line = f"; with the exams ${own:,.2f} of the ${left:,.2f} left of budget.max_spend"
        before = round(self.max_spend - left, 4)
        if before >= 0.005:
            line += f" (${self.max_spend:,.2f}, of which ${before:,.2f} was spent before this round)"
        return line

    @classmethod
    def of_intruders(cls, params: PipelineParams, spent_before: float, costs: CostEstimate) -> SpendGuard:
        """The guard of an intruder wait."""
        return cls(
            limit=round(params.budget.max_spend - spent_before, 4),
            max_spend=params.budget.max_spend,
            ceiling=costs.intruders,
            price=round(params.intruders.reward * (1.0 + params.budget.fee_rate), 6),
        )

    def plan_fits(self, charged: float, ratio: float = 1.0) -> bool:
        """True while nothing the plan allows can pass the limit (no in-flight count needed).

        `ratio` (`price_ratio`): Toloka charges that much more per answer than the config says, so
        the plan's ceiling is that much higher.
        """
        ceiling = self.ceiling * ratio
        return ceiling <= self.limit and charged <= ceiling

    def price_note(self, ratio: float) -> str:
        """The log line of a `price_ratio` above 1."""
        return (
            f"Toloka charges ${self.price * ratio:,.4f} per answer where the config's price is "
            f"${self.price:,.4f} (hits.reward with budget.fee_rate): the spend guard counts Toloka's "
            "price from now on; set budget.fee_rate to the platform's fee for a right estimate"
        )

    def spent(self, stats: PoolStats, exams_accepted: int, ratio: float = 1.0) -> float:
        """Charged so far: Toloka's spent_budget, else accepted answers x price (main + exams)."""
        main = stats.spent_budget
        if main is None:
            main = (stats.approved_assignments_count or stats.submitted_assignments_count or 0) * self.price
        return round(main + exams_accepted * self.exam_price * ratio, 4)


# A Retry of a flow run keeps its parameters, so it meets the same limit (the stop is replayed):
# a team lead on the Prefect UI pressed Retry and read the same stop again.
NEW_RUN_NOT_RETRY = (
    " (a Retry of the flow run keeps its max_spend and stops here again: in the Prefect UI, run the "
    "deployment with Custom run and the same parameters but a higher budget.max_spend; the same pool "
    "goes on)"
)


@dataclass
class LiveSpend:
    """The guard's memory across the polls of one wait: what was committed at the last poll."""

    guard: SpendGuard
    last: float | None = None
    ratio: float = 1.0  # the highest `price_ratio` seen: a price above the config's is said once

    def ratio_of(self, stats: PoolStats) -> float:
        """`price_ratio` of this poll at the guard's price, never below an earlier poll's; logs a rise."""
        ratio = max(self.ratio, price_ratio(stats, self.guard.price))
        if ratio > self.ratio and self.ratio == 1.0:
            get_run_logger().warning("%s", self.guard.price_note(ratio))
        self.ratio = ratio
        return ratio

    def stop_reason(
        self, charged: float, in_flight: float, ratio: float = 1.0, earlier: float = 0.0
    ) -> str | None:
        """Why to close now, or None.

        `earlier`: what of `charged` the shared exam pool was paid before this stage (a catalogue's
        earlier rounds, a resumed run): a round's stop read "$5.10 charged" where the round itself
        had been charged $1.33, and nothing said where the rest came from.

        Committed = charged + in flight. Before the next poll the crowd may commit about as much
        again as since the last one: the margin is twice that step (never more than the plan leaves,
        while the plan holds) plus one assignment. Past the plan's ceiling the plan was wrong (answers
        held above a lowered overlap, a fee above the config's), so it caps nothing.
        """
        committed = charged + in_flight
        step = 0.0 if self.last is None else max(committed - self.last, 0.0)
        self.last = committed
        left = self.guard.ceiling * ratio - committed
        margin = (min(2 * step, left) if left > 0 else 2 * step) + self.guard.price * ratio
        if committed + margin <= self.guard.limit:
            return None
        before = ""
        if earlier >= 0.005:
            before = f" (the exam pool's ${earlier:,.2f} from before this stage included)"
        return (
            f"spend guard: ${charged:,.2f} charged{before} and ${in_flight:,.2f} in flight "
            f"(+${margin:,.2f} margin) "
            f"would pass the ${self.guard.limit:,.2f} left of budget.max_spend ${self.guard.max_spend:,.2f}; "
            "the pool was closed and its accepted answers kept. Raise budget.max_spend and run again "
            f"to finish it{NEW_RUN_NOT_RETRY}"
        )


def spent(
    params: PipelineParams,
    labelled: Labelled | None,
    evaluated: Evaluation | None,
    second: Labelled | None = None,
    charges: dict[str, float | None] | None = None,
) -> float:
    """Money paid for the pools behind a result: Toloka's charge per pool as read now (`charges`,
    from `pool_charges_task`), else as its stage read it, else accepted assignments x reward x (1 + fee).

    `labelled` is None when this run labelled nothing (an unchanged catalogue). A `second` round
    adds its main pool. The exam pool is shared: Toloka's figure for it is the total so far, read
    last by the last wait; without it, each wait counted the exams it accepted.
    """
    now = charges or {}
    fee = 1.0 + params.budget.fee_rate

    def charged(pool_id: str, read: float | None, estimate: float) -> float:
        return next(v for v in (now.get(pool_id), read, estimate) if v is not None)

    parts: list[float] = []
    rounds = [r for r in (labelled, second) if r is not None]
    for one in rounds:
        parts.append(
            charged(one.ids.main_pool, one.wait.spent_main, one.n_assignments * params.hits.reward * fee)
        )
    if rounds:
        accepted = sum(one.wait.exams.accepted for one in rounds)
        last = rounds[-1]
        parts.append(charged(last.ids.exam_pool, last.wait.spent_exam, accepted * params.exam.reward * fee))
    if evaluated is not None:
        pool = evaluated.ids.pool if evaluated.ids is not None else ""
        parts.append(charged(pool, evaluated.spent, evaluated.n_assignments * params.intruders.reward * fee))
    return round(sum(parts), 4)
