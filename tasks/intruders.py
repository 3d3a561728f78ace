"""Intruder evaluation (Chang et al. 2009): can a second crowd spot the image that does not belong?

A HIT shows `images_per_hit` images: all but one from a host cluster, one (the intruder) from
another cluster, shuffled. Answers (the intruder's 1-based position) are aggregated per HIT with
Dawid-Skene; accuracy = share of HITs whose aggregated answer is the true intruder, overall and per
host cluster. Clusters too small to host a HIT are skipped with a log line (never looped on).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from flows.params import TolokaTarget
from tasks import configs, setup, upload, wait
from tasks.caching import source_version, toloka_cached
from tasks.connect import make_client
from tasks.wait import Opening, ProgressReporter, close_all, open_all, wait_for_pool

log = logging.getLogger(__name__)
CODE_VERSION = source_version(configs, setup, upload, wait, sys.modules[__name__])


def make_hits(
    clusters: pd.Series, n_hits: int, images_per_hit: int, seed: int
) -> tuple[list[dict[str, Any]], list[int]]:
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
        hits.append(
            {
                "images": images,
                "answer": str(position + 1),
                "host": host,
                "intruder_cluster": intruder_cluster,
            }
        )
    return hits, skipped


def _images_key(cell: Any) -> tuple[str, ...]:
    text = str(cell).strip()
    return tuple(json.loads(text if text.startswith("[") else f"[{text}]"))


def accuracy(export: pd.DataFrame, hits: list[dict[str, Any]]) -> dict[str, Any]:
    """Dawid-Skene per HIT over the export, then accuracy overall and per host cluster."""
    from crowdkit.aggregation import DawidSkene

    index = {tuple(h["images"]): i for i, h in enumerate(hits)}
    rows = []
    for values in export.to_dict(orient="records"):
        key = _images_key(values["INPUT:images"])
        answer = values.get("OUTPUT:answer")
        if key in index and pd.notna(answer) and str(answer).strip():
            rows.append(
                {"task": index[key], "worker": str(values["ASSIGNMENT:worker_id"]), "label": str(answer)}
            )
    if not rows:
        return {"accuracy": None, "n_hits": 0, "per_cluster": []}
    labels = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crowd-kit 1.4.2 uses pandas keywords deprecated in pandas 3
        aggregated = DawidSkene(n_iter=100).fit_predict(labels)
    table = pd.DataFrame(
        {
            "host": [hits[t]["host"] for t in aggregated.index],
            "correct": [str(aggregated[t]) == hits[t]["answer"] for t in aggregated.index],
        }
    )
    per_cluster = (
        table.groupby("host")["correct"]
        .agg(["mean", "size"])
        .reset_index()
        .rename(columns={"mean": "accuracy", "size": "hits"})
    )
    return {
        "accuracy": float(table["correct"].mean()),
        "n_hits": len(table),
        "n_answers": len(labels),
        "per_cluster": [
            {"cluster": int(r.host), "accuracy": float(r.accuracy), "hits": int(r.hits)}
            for r in per_cluster.itertuples()
        ],
    }


def bar_chart(result: dict[str, Any], path: Path) -> Path | None:
    """A PNG bar chart of accuracy per host cluster (None when there is nothing to draw)."""
    if not result.get("per_cluster"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = result["per_cluster"]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(data) + 2), 3.2))
    ax.bar([str(d["cluster"]) for d in data], [d["accuracy"] for d in data], color="#3f7fbf")
    ax.axhline(result["accuracy"], color="#d04020", linestyle="--", label=f"overall {result['accuracy']:.2f}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("host cluster")
    ax.set_ylabel("intruder accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@task(name="setup-intruders", **toloka_cached())
def setup_intruders_task(
    target: TolokaTarget,
    run_key: str,
    bundle: dict[str, Any],
    values: dict[str, Any],
    hits: list[dict[str, Any]],
    code_version: str = CODE_VERSION,
) -> dict[str, str]:
    """Intruders project, training (with tasks) and pool gated by the main skill; HITs uploaded."""
    client = make_client(target)
    suites = upload.suites_of([hit["images"] for hit in hits])
    round_key = upload.operation_id(run_key, "intruder-round", suites).hex[:8]
    ids = setup.setup_intruders(client, run_key, bundle, values, round_key, make_client(target, retries=0))
    upload.ensure_suites(client, run_key, f"intruder-suites-{round_key}", ids["pool"], suites)
    get_run_logger().info("intruder objects: %s; %d HITs uploaded", ids, len(hits))
    return ids


@task(name="wait-intruders", **toloka_cached())
def wait_intruders_task(
    target: TolokaTarget, ids: dict[str, str], period: float, timeout: float, code_version: str = CODE_VERSION
) -> dict[str, Any]:
    """Open the intruder training and pool, wait, close the training; the export and the pool's spend."""
    client = make_client(target)
    helpers = [Opening("training", ids["training"])]
    open_all(client, [*helpers, Opening("pool", ids["pool"])])
    report = ProgressReporter("intruders-pool-progress", f"intruders pool {ids['pool']}")
    waited = wait_for_pool(client, ids["pool"], period=period, timeout=timeout, report=report)
    close_all(client, helpers)
    from tasks.results import export_accepted

    return {"export": export_accepted(client, ids["pool"]), "spent": waited.get("spent_budget")}
