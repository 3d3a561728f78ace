"""Intruder evaluation (Chang et al. 2009): can a second crowd spot the image that does not belong?

A HIT shows `images_per_hit` images: all but one from a host cluster, one (the intruder) from
another cluster, shuffled. Answers (the intruder's 1-based position) are aggregated per HIT with
one-coin Dawid-Skene; accuracy = share of HITs whose aggregated answer is the true intruder, overall
and per host cluster, next to the share of single answers that name it. Clusters too small to host
a HIT are skipped with a log line (never looped on).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger

from tasks import atomic_file
from tasks.artifacts import ProgressReporter, counted
from tasks.budget import LiveSpend, SpendGuard
from tasks.export_format import ANSWER, IMAGES, WORKER, parse_array_cell
from tasks.params import TolokaTarget
from tasks.results import export_accepted
from tasks.setup import intruder_pool_role, setup_intruders
from tasks.stage import stage_task
from tasks.stages import (
    ClusterAccuracy,
    Evaluation,
    IntruderHit,
    IntruderIds,
    IntruderWait,
    PoolStats,
    thin_hosts_line,
)
from tasks.toloka_api import (
    Opening,
    RunRegistry,
    close_all,
    count_assignments,
    make_client,
    open_all,
    operation_id,
    pool_stats,
    suites_of,
)
from tasks.toloka_config import Placeholders, TolokaBundle
from tasks.wait import PENDING_AUTO, wait_guarded

CODE = (
    "tasks.budget",
    "tasks.setup",
    "tasks.wait",
    "tasks.results",
    "tasks.toloka_api",
    "tasks.toloka_config",
)


def make_hits(
    clusters: pd.Series, n_hits: int, images_per_hit: int, seed: int
) -> tuple[list[IntruderHit], list[int]]:
    """Seeded intruder HITs and the list of clusters skipped as too small to host one."""
    members = {
        int(c): sorted(str(i) for i in items) for c, items in clusters.groupby(clusters).groups.items()
    }
    need = images_per_hit - 1
    hosts = sorted(c for c, items in members.items() if len(items) >= need)
    skipped = sorted(c for c in members if c not in hosts)
    if not hosts or len(members) < 2:
        return [], skipped
    rng = np.random.default_rng(seed)
    hits = []
    all_clusters = sorted(members)
    for _ in range(n_hits):
        host = hosts[rng.integers(len(hosts))]
        others = [c for c in all_clusters if c != host]
        intruder_cluster = others[rng.integers(len(others))]
        chosen = list(rng.choice(members[host], size=need, replace=False))
        intruder = members[intruder_cluster][rng.integers(len(members[intruder_cluster]))]
        position = int(rng.integers(images_per_hit))
        images = [str(x) for x in chosen]
        images.insert(position, intruder)
        hits.append(IntruderHit(tuple(images), str(position + 1), int(host), int(intruder_cluster)))
    return hits, skipped


def skipped_line(skipped: list[int], clusters: pd.Series, need: int, most: int = 10) -> str:
    """One log line for the clusters too small to host an intruder HIT, however many there are.

    A line per cluster flooded the run's log: a co-association clustering of 3,000 images had 163
    clusters under 7 images, 163 lines in the Prefect UI before the first line about the pool.
    """
    images = int(clusters.isin(skipped).sum())
    shown = ", ".join(map(str, skipped[:most]))
    more = f" and {len(skipped) - most:,} more" if len(skipped) > most else ""
    return (
        f"{len(skipped):,} cluster(s) have fewer than {need} images "
        f"({counted(images, 'image')} in all): no "
        f"intruder HIT hosted by them (cluster {shown}{more})"
    )


def thin_hosts(hits: list[IntruderHit], n_hosts: int) -> str | None:
    """A warning when the HITs leave each host cluster's accuracy to a handful of HITs, else None
    (`tasks.stages.thin_hosts_line`, which the report and the `intruder-accuracy` artifact use too)."""
    if not hits:
        return None
    return thin_hosts_line(len(hits), len({hit.host for hit in hits}), n_hosts)


def round_key(run_key: str, hits: list[IntruderHit]) -> str:
    """A digest of the HITs: a different clustering under the same run key gets its own pool."""
    return operation_id(run_key, "intruder-round", suites_of(h.images for h in hits)).hex[:8]


def pool_role(run_key: str, hits: list[IntruderHit]) -> str:
    """The tag role of the intruder pool of these HITs."""
    return intruder_pool_role(round_key(run_key, hits))


def accuracy(export: pd.DataFrame, hits: list[IntruderHit]) -> Evaluation:
    """One-coin Dawid-Skene per HIT over the export, then accuracy overall and per host cluster.

    One coin per worker (right with probability p, otherwise any other position), not a confusion
    matrix per worker: an answer is a position in a shuffled HIT, so "answered 3 when it was 5" says
    nothing about the worker that "answered 2 when it was 7" does not. A full matrix has 8 x 8 cells
    to fit per worker from the handful of HITs a market worker takes, and overfits: on a 5,000-image
    run whose clusters were exact (ARI 1.000), 116 workers answering 4.3 HITs each named the intruder
    in 94% of their answers, a majority of each HIT's 5 answers named it in every HIT, and full
    Dawid-Skene reported 0.85. One coin reports 1.00 there.
    """
    from crowdkit.aggregation import OneCoinDawidSkene

    index = {h.images: i for i, h in enumerate(hits)}
    rows = []
    for values in export.to_dict(orient="records"):
        key = tuple(parse_array_cell(values[IMAGES]))
        answer = values.get(ANSWER)
        if key in index and pd.notna(answer) and str(answer).strip():
            rows.append({"task": index[key], "worker": str(values[WORKER]), "label": str(answer)})
    if not rows:
        return Evaluation(accuracy=None, n_hits=0)
    labels = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crowd-kit 1.4.2 uses pandas keywords deprecated in pandas 3
        aggregated = OneCoinDawidSkene(n_iter=100).fit_predict(labels)
    table = pd.DataFrame(
        {
            "host": [hits[t].host for t in aggregated.index],
            "correct": [str(aggregated[t]) == hits[t].answer for t in aggregated.index],
        }
    )
    per_cluster = (
        table.groupby("host")["correct"]
        .agg(["mean", "size"])
        .reset_index()
        .rename(columns={"mean": "accuracy", "size": "hits"})
    )
    truth = labels["task"].map(lambda t: hits[t].answer)
    return Evaluation(
        accuracy=float(table["correct"].mean()),
        n_hits=len(table),
        n_answers=len(labels),
        answer_accuracy=float((labels["label"] == truth).mean()),
        per_cluster=tuple(
            ClusterAccuracy(int(r.host), float(r.accuracy), int(r.hits)) for r in per_cluster.itertuples()
        ),
    )


def per_image(result: Evaluation, clusters: pd.Series) -> Evaluation:
    """`result` with `image_accuracy`: each host cluster's accuracy weighted by its number of images,
    over the clusters that hosted a HIT (`images_hosted`), so that it reads per image of the
    catalogue rather than per HIT (see `Evaluation`)."""
    sizes = clusters.value_counts()
    weights = [(int(sizes.get(c.cluster, 0)), c.accuracy) for c in result.per_cluster]
    hosted = sum(size for size, _ in weights)
    if hosted == 0:
        return result
    accuracy = sum(size * value for size, value in weights) / hosted
    return replace(result, image_accuracy=float(accuracy), images_hosted=hosted)


CHART_WIDTH_INCHES = 8.0  # at 100 dpi 800 px: the Prefect UI's artifact pane is ~845 px in a 1,400 px window
BAR_INCHES = 0.6  # per host cluster along the cluster axis: room for the cluster's id under its bar


def bar_chart(result: Evaluation, path: Path) -> Path | None:
    """A PNG bar chart of accuracy per host cluster (None when there is nothing to draw).

    Upright bars while they fit CHART_WIDTH_INCHES, else one bar a row, the chart growing down. The
    Prefect UI shrinks an artifact's image to its pane, and with a bar per cluster a 79-cluster run
    drew a 3,260-pixel chart that the `intruder-chart` page showed at a quarter of its size: ids,
    axis and the overall accuracy's legend 3-4 pixels high. A page scrolls down, not sideways.
    """
    if not result.per_cluster or result.accuracy is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = result.per_cluster
    names, values = [str(d.cluster) for d in data], [d.accuracy for d in data]
    overall = {"color": "#d04020", "linestyle": "--", "label": f"overall {result.accuracy:.2f}"}
    upright = BAR_INCHES * len(data) + 2 <= CHART_WIDTH_INCHES
    if upright:
        fig, ax = plt.subplots(figsize=(max(4, BAR_INCHES * len(data) + 2), 3.2))
        bars = ax.bar(names, values, color="#3f7fbf")
        ax.axhline(result.accuracy, **overall)
        ax.set_ylim(0, 1.12)  # a line at 1.0 stays clear of the frame (at 1.05 the two merged)
        ax.set_xlabel("host cluster")
        ax.set_ylabel("intruder accuracy")
    else:
        fig, ax = plt.subplots(figsize=(CHART_WIDTH_INCHES, 0.22 * len(data) + 1.2))
        bars = ax.barh(names, values, color="#3f7fbf")
        ax.axvline(result.accuracy, **overall)
        ax.set_xlim(0, 1.12)
        ax.set_ylim(len(data) - 0.4, -0.6)  # the first cluster on top, as the tables list them
        ax.set_ylabel("host cluster")
        ax.set_xlabel("intruder accuracy")
        ax.tick_params(axis="x", top=True, labeltop=True)  # the scale in sight at either end
    # Each bar's value at its end: a cluster whose every HIT failed had no bar at all, an empty place.
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize="x-small")
    # Above the bars, not on them: inside the axes the legend hid the last bars' tops.
    ax.legend(
        loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small", borderaxespad=0.2
    )
    if not upright:  # above the top axis' labels, which take the room the legend has over upright bars
        ax.get_legend().set_bbox_to_anchor((1.0, 1.0 + 0.35 / fig.get_figheight()))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file.replaced(path) as temporary:  # whole or not at all
        fig.savefig(temporary, dpi=100, format="png")
    plt.close(fig)
    return path


@stage_task(name="setup-intruders", code=CODE, toloka=True)
def setup_intruders_task(
    target: TolokaTarget, run_key: str, bundle: TolokaBundle, values: Placeholders, hits: list[IntruderHit]
) -> IntruderIds:
    """Intruders project, training (with tasks) and pool gated by the main skill; HITs uploaded."""
    registry = RunRegistry.connect(target, run_key)
    key = round_key(run_key, hits)
    ids = setup_intruders(registry, bundle, values, key)
    registry.ensure_suites(f"intruder-suites-{key}", ids.pool, suites_of(h.images for h in hits))
    get_run_logger().info("intruder objects: %s; %d HITs uploaded", ids.describe(), len(hits))
    return ids


@stage_task(name="wait-intruders", code=CODE, toloka=True)
def wait_intruders_task(
    target: TolokaTarget, ids: IntruderIds, period: float, timeout: float, spend: SpendGuard
) -> IntruderWait:
    """Open the intruder training and pool, wait, close the training; the export and the pool's spend.

    The spend guard closes the pool before it could pass what is left of max_spend: the wait then
    ends with `stopped` set and the answers accepted until then.
    """
    client = make_client(target)
    helpers = [Opening("training", ids.training)]
    open_all(client, [*helpers, Opening("pool", ids.pool)])
    report = ProgressReporter("intruders-pool-progress", f"intruders pool {ids.pool}")
    live = LiveSpend(spend)

    def guard(stats: PoolStats) -> str | None:
        charged, ratio = spend.spent(stats, 0), live.ratio_of(stats)
        if spend.plan_fits(charged, ratio):
            return None
        in_flight = count_assignments(client, ids.pool, PENDING_AUTO) * spend.price * ratio
        return live.stop_reason(charged, in_flight, ratio)

    try:
        waited, stopped = wait_guarded(
            client, ids.pool, period=period, timeout=timeout, report=report, guard=guard
        )
        report.show_last()
    finally:
        report.flush()  # the line the wait ended on, however it ended
    close_all(client, helpers)
    spent = pool_stats(client, ids.pool).spent_budget if stopped else waited.spent_budget
    return IntruderWait(export=export_accepted(client, ids.pool), spent=spent, stopped=stopped)
