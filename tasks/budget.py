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

from dataclasses import dataclass

from prefect import get_run_logger

from tasks.params import PipelineParams, TolokaTarget
from tasks.stage import stage_task
from tasks.stages import CostEstimate, Evaluation, Labelled, PoolStats
from tasks.toloka_api import RunRegistry
from tasks.toloka_config import TolokaBundle, check_overlap_rules, overlap_raise

INTRUDER_POOLS = "intruders-pool-"  # role prefix of intruder pools (one per evaluated clustering)


class BudgetExceeded(RuntimeError):
    """The stage would cost more than what is left of `budget.max_spend`; nothing has been opened or paid."""


class SpendGuardStopped(RuntimeError):
    """The spend guard closed the main pool before completion; what was accepted has been exported."""


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


def planned_hits(n_items: int, params: PipelineParams) -> int:
    """How many HITs a plan of `n_items` will have, without planning it (both designs cut the same)."""
    return max(-(-n_items * params.hits.hits_per_item // params.hits.size), 1)


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
        raise BudgetExceeded(
            f"hits.hits_per_item {params.hits.hits_per_item} on {n_items} images needs {n_hits} HITs, "
            f"${cost:.2f} for the main pool alone: exceeds budget.max_spend ${params.budget.max_spend:.2f} "
            f"(at most hits_per_item {most} fits); nothing was planned or opened"
        )


def estimate_intruders(params: PipelineParams, bundle: TolokaBundle, n_hits: int) -> CostEstimate:
    """An intruder evaluation with `n_hits` HITs."""
    cfg = params.intruders
    overlap = cfg.overlap + overlap_raise(bundle.intruders_pool)
    return CostEstimate(intruders=pool_cost(n_hits, overlap, cfg.reward, params.budget.fee_rate))


def check_budget(costs: CostEstimate, max_spend: float, spent_before: float = 0.0) -> None:
    """Raise with the breakdown when the estimate exceeds what is left of the budget."""
    left = round(max_spend - spent_before, 4)
    if costs.total > left:
        parts = ", ".join(f"{k} ${v:.2f}" for k, v in costs.as_dict().items() if k != "total" and v)
        already = (
            f" less ${spent_before:.2f} already spent by this run key (${left:.2f} left)"
            if spent_before
            else ""
        )
        raise BudgetExceeded(
            f"estimated cost ${costs.total:.2f} ({parts}) exceeds budget.max_spend ${max_spend:.2f}"
            f"{already}; raise budget.max_spend or lower overlap / hits_per_item / intruders.n_hits. "
            "No pool was opened."
        )


@stage_task(name="check-budget", toloka=True, cache=False)
def check_budget_task(
    target: TolokaTarget, run_key: str, costs: CostEstimate, max_spend: float, covers: tuple[str, ...]
) -> float:
    """Check `costs` against max_spend less what the run's pools not in `covers` (role prefixes) cost.

    Returns what those other pools cost. Never cached: money already spent is the question of each run.
    """
    registry = RunRegistry.connect(target, run_key)
    before = registry.spent(lambda role: not role.startswith(covers))
    get_run_logger().info(
        "cost estimate (USD): %s; budget %.2f, already spent by other pools %.2f",
        costs.as_dict(),
        max_spend,
        before,
    )
    check_budget(costs, max_spend, before)
    return before


@dataclass(frozen=True)
class SpendGuard:
    """The live money bound of a wait: what the waited pools may still cost, and their prices.

    `limit` is max_spend less what the run key's other pools cost when the stage started. The wait
    closes the pool once what Toloka charged, plus what is still in flight, could pass it: what was
    accepted until then is kept and exported, nothing more is paid.
    """

    limit: float
    max_spend: float
    price: float  # one main-pool assignment with the fee
    exam_price: float  # one exam assignment with the fee
    overlap: int

    @classmethod
    def of(cls, params: PipelineParams, spent_before: float) -> SpendGuard:
        fee = 1.0 + params.budget.fee_rate
        return cls(
            limit=round(params.budget.max_spend - spent_before, 4),
            max_spend=params.budget.max_spend,
            price=round(params.hits.reward * fee, 6),
            exam_price=round(params.exam.reward * fee, 6),
            overlap=params.hits.overlap,
        )

    def spent(self, stats: PoolStats, exams_accepted: int) -> float:
        """Charged so far: Toloka's spent_budget, else accepted answers x price (main + exams)."""
        main = stats.spent_budget
        if main is None:
            main = (stats.approved_assignments_count or stats.submitted_assignments_count or 0) * self.price
        return round(main + exams_accepted * self.exam_price, 4)

    def stop_reason(self, spent_now: float, step: float) -> str | None:
        """Why to close now, or None. In flight: twice the last tick's spend plus one HIT's overlap."""
        in_flight = 2 * max(step, 0.0) + self.price * self.overlap
        if spent_now + in_flight <= self.limit:
            return None
        return (
            f"spend guard: ${spent_now:.2f} charged and about ${in_flight:.2f} in flight would pass the "
            f"${self.limit:.2f} left of budget.max_spend ${self.max_spend:.2f}; the main pool was closed "
            "and its accepted answers kept. Raise budget.max_spend and run again to finish it"
        )


def spent(params: PipelineParams, labelled: Labelled | None, evaluated: Evaluation | None) -> float:
    """Money paid: Toloka's `spent_budget` per pool, or accepted assignments x reward x (1 + fee).

    `labelled` is None when this run labelled nothing (an unchanged catalogue).
    """
    fee = 1.0 + params.budget.fee_rate
    parts: list[float] = []
    if labelled is not None:
        wait = labelled.wait
        parts += [
            wait.spent_main or labelled.n_assignments * params.hits.reward * fee,
            wait.spent_exam or wait.exams.accepted * params.exam.reward * fee,
        ]
    if evaluated is not None:
        parts.append(evaluated.spent or evaluated.n_assignments * params.intruders.reward * fee)
    return round(sum(parts), 4)
