"""Every Prefect artifact of a run, so the UI tells its story: tables, progress, galleries, links.

Keys (lowercase, digits and dashes, as Prefect requires): `hit-coverage`, `main-pool-progress`,
`intruders-pool-progress`, `intruder-chart`, `cluster-galleries`, `run-metrics`,
`intruder-accuracy`, `run-report`, `catalogue-rounds`. Only public facts: ids, counts, metrics,
costs, image URLs; never the token.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks.stages import Coverage, PoolStats, RoundState, RunSummary


def hit_coverage(coverage: Coverage) -> None:
    create_table_artifact(
        key="hit-coverage",
        table=[{"item": k, "hits": v} for k, v in coverage.per_item.items()],
        description=f"HITs per image: {coverage.brief()}",
    )


class ProgressReporter:
    """A progress artifact plus one log line per poll (completion %, assignments, spend)."""

    def __init__(self, key: str, what: str) -> None:
        self.what = what
        self.logger = get_run_logger()
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=what)

    def __call__(self, stats: PoolStats) -> None:
        done = stats.completion_percentage or 0.0
        line = (
            f"{self.what}: {done:.0f}% complete, {_fmt(stats.submitted_assignments_count)} submitted, "
            f"{_fmt(stats.approved_assignments_count)} accepted, "
            f"${_fmt(stats.spent_budget, '.2f')} spent ({stats.elapsed:.0f} s)"
        )
        self.logger.info(line)
        update_progress_artifact(artifact_id=self.artifact_id, progress=float(done), description=line)


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "?" if value is None else format(value, spec)


def intruder_chart(chart: Path) -> None:
    create_image_artifact(
        image_url=chart.resolve().as_uri(), key="intruder-chart", description="accuracy per cluster"
    )


def gallery_markdown(clusters: pd.Series, per_cluster: int = 12) -> str:
    """Markdown galleries for the Prefect UI (a few images per cluster)."""
    lines = ["# Clusters", ""]
    for cluster, items in clusters.groupby(clusters):
        members = sorted(str(i) for i in items.index)
        lines.append(f"## Cluster {cluster} ({len(members)} images)")
        lines.append(" ".join(f"![]({url})" for url in members[:per_cluster]))
        lines.append("")
    return "\n".join(lines)


def run_results(summary: RunSummary, clusters: pd.Series) -> None:
    """Galleries, metrics and cost table, intruder table, a link to the report."""
    create_markdown_artifact(
        key="cluster-galleries", markdown=gallery_markdown(clusters), description="clusters"
    )
    rows = [{"metric": k, "value": v} for k, v in (summary.metrics or {}).items()]
    rows += [{"metric": f"cost_{k}", "value": v} for k, v in summary.cost.as_dict().items()]
    rows.append({"metric": "intruder_accuracy", "value": summary.intruder_accuracy})
    create_table_artifact(key="run-metrics", table=rows, description="metrics and cost")
    if summary.intruders is not None and summary.intruders.per_cluster:
        create_table_artifact(
            key="intruder-accuracy", table=[asdict(c) for c in summary.intruders.per_cluster]
        )
    create_link_artifact(
        key="run-report", link=summary.report.resolve().as_uri(), link_text=str(summary.report)
    )


def catalogue_rounds(key: str, state: list[RoundState], labelled_now: str | None) -> None:
    lines = ["| round | pool | items | status |", "|---|---|---|---|"]
    for entry in state:
        status = "completed" if entry.completed else "not completed"
        lines.append(f"| {entry.round} | {entry.pool_id} | {len(entry.items)} | {status} |")
    if labelled_now:
        lines.append(f"\nRound `{labelled_now}` was labelled by this run.")
    create_markdown_artifact(
        key="catalogue-rounds", markdown="\n".join(lines), description=f"rounds of catalogue {key}"
    )
