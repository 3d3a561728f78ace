"""Cost estimate and budget guard, run before any pool opens.

Estimate per pool = suites x overlap x reward x (1 + fee). The exam pool is bounded by the number
of workers allowed to take each exam (its overlap); training is free on Toloka.
"""

from __future__ import annotations

from typing import Any

from flows.params import PipelineParams


class BudgetExceeded(RuntimeError):
    """The run would cost more than `budget.max_spend`; nothing has been opened or paid."""


def pool_cost(suites: int, overlap: int, reward: float, fee_rate: float) -> float:
    return round(suites * overlap * reward * (1.0 + fee_rate), 4)


def estimate(params: PipelineParams, n_main_suites: int) -> dict[str, float]:
    """Cost breakdown of a run, USD (upper bound for the exam pool and the intruder HITs)."""
    fee = params.budget.fee_rate
    costs = {
        "main": pool_cost(n_main_suites, params.hits.overlap, params.hits.reward, fee),
        "exam": pool_cost(params.exam.n_exams, params.exam.expected_workers, params.exam.reward, fee),
        "intruders": 0.0,
    }
    if params.intruders.enabled:
        cfg = params.intruders
        costs["intruders"] = pool_cost(cfg.n_hits, cfg.overlap, cfg.reward, fee)
    costs["total"] = round(sum(costs.values()), 4)
    return costs


def check_budget(costs: dict[str, float], max_spend: float) -> None:
    """Raise with the breakdown when the estimate exceeds the budget."""
    if costs["total"] > max_spend:
        parts = ", ".join(f"{k} ${v:.2f}" for k, v in costs.items() if k != "total")
        raise BudgetExceeded(
            f"estimated cost ${costs['total']:.2f} ({parts}) exceeds budget.max_spend ${max_spend:.2f}; "
            "raise budget.max_spend or lower overlap / hits_per_item / intruders.n_hits. No pool was opened."
        )


def spent(params: PipelineParams, labelled: dict[str, Any] | None, evaluated: dict[str, Any] | None) -> float:
    """Money paid: Toloka's `spent_budget` per pool, or accepted assignments x reward x (1 + fee).

    `labelled` is a labelling result (`waited`, `n_assignments`), None when nothing was labelled.
    """
    fee = 1.0 + params.budget.fee_rate
    parts = []
    if labelled:
        reported = labelled["waited"].get("spent") or {}
        exams = labelled["waited"].get("exams", {}).get("accepted", 0)
        parts += [
            reported.get("main") or labelled["n_assignments"] * params.hits.reward * fee,
            reported.get("exam") or exams * params.exam.reward * fee,
        ]
    if evaluated:
        parts.append(
            evaluated.get("spent") or evaluated.get("n_assignments", 0) * params.intruders.reward * fee
        )
    return round(sum(parts), 4)
