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

from prefect import get_run_logger

from tasks.params import PipelineParams, TolokaTarget
from tasks.stage import stage_task
from tasks.stages import CostEstimate, Evaluation, Labelled
from tasks.toloka_api import RunRegistry
from tasks.toloka_config import TolokaBundle, overlap_raise

INTRUDER_POOLS = "intruders-pool-"  # role prefix of intruder pools (one per evaluated clustering)


class BudgetExceeded(RuntimeError):
    """The stage would cost more than what is left of `budget.max_spend`; nothing has been opened or paid."""


def pool_cost(suites: int, overlap: int, reward: float, fee_rate: float) -> float:
    return round(suites * overlap * reward * (1.0 + fee_rate), 4)


def estimate_labelling(params: PipelineParams, bundle: TolokaBundle, n_main_suites: int) -> CostEstimate:
    """Labelling with `n_main_suites` HITs, its exams, and (when enabled) the intruder evaluation after it."""
    fee = params.budget.fee_rate
    main = pool_cost(
        n_main_suites, params.hits.overlap + overlap_raise(bundle.main_pool), params.hits.reward, fee
    )
    exam_overlap = params.exam.expected_workers + overlap_raise(bundle.exam_pool)
    exam = pool_cost(params.exam.n_exams, exam_overlap, params.exam.reward, fee)
    intruders = estimate_intruders(params, bundle, params.intruders.n_hits).intruders
    return CostEstimate(main=main, exam=exam, intruders=intruders if params.intruders.enabled else 0.0)


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
