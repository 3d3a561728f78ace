"""The run's human-facing output: `report.html`, `summary.json` (a `RunSummary`) and artifacts.

Only public facts go here: ids, counts, metrics, costs, image URLs. Never the token.
"""

from __future__ import annotations

import base64
import html
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from aggregation.uncertain import UNCERTAIN_BELOW
from tasks import artifacts, thumbnails
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.stages import (
    Aggregated,
    Attempt,
    Attempts,
    CatalogueInfo,
    Cost,
    Coverage,
    Evaluation,
    ExamOutcome,
    LabellingIds,
    RunSummary,
    SecondRound,
    counted,
    truth_share,
)

log = logging.getLogger(__name__)  # shipped to the run's log (`tasks.run_log`)

GALLERY_LIMIT = thumbnails.REPORT_PER_CLUSTER  # images shown per cluster in the HTML report, at most
# Images shown twice (a least certain one is in its cluster's gallery too) are embedded once: the
# other <img> takes its source from the one that has it (`data-copy`) when the page loads; without
# scripts it is a box of the same size with the image's name (the <img>s are blocks for that).
COPY_SCRIPT = (
    "<script>for(const i of document.querySelectorAll('img[data-copy]'))"
    "i.src=document.getElementById(i.dataset.copy).src;</script>"
)


@dataclass(frozen=True)
class ReportLinks:
    """Files of the run folder the report links to, relative to it (from `RunFolder`)."""

    clusters: str
    chart: str | None = None
    dissent: tuple[str, str] | None = None  # a dissenting camp's grouping and workers
    recheck: str | None = None  # the images to show the crowd again


def _table(rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _count(value: int | None) -> str | None:
    """`3,000`: a count as the log lines write it (the tables printed `3000`)."""
    return None if value is None else f"{value:,}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)  # as the log lines and the artifacts say


COST_ROWS = {  # summary.json's cost keys, as the report names them
    "spent": "spent (the pools behind this result)",
    "added_by_this_run": "of it added by this run",
    "spent_by_run_key": "every pool of the run key",
    "estimate": "estimate",
    "above_estimate": "above the estimate",
}


def _money(value: Any) -> Any:
    """Dollars with cents ($1,234.56; 4 significant digits gave $1235); text as it is."""
    return f"${value:,.2f}" if isinstance(value, int | float) else value


# A catalogue run's `spent` is what the key's pools grew by while it ran (`added_by_this_run` is the
# same figure): a run that finished a stopped round read "spent (the pools behind this result) $0.22"
# where those pools had been charged $1.01.
CATALOGUE_COST_ROWS = {**COST_ROWS, "spent": "spent by this run (what the pools of the key grew by)"}


def _cost_table(cost: dict[str, Any], catalogue: bool = False) -> str:
    rows = CATALOGUE_COST_ROWS if catalogue else COST_ROWS
    if catalogue and cost.get("added_by_this_run") == cost.get("spent"):
        cost = {key: value for key, value in cost.items() if key != "added_by_this_run"}
    known = [key for key in rows if key in cost] + [key for key in cost if key not in rows]
    return _table({rows.get(key, key): _money(cost[key]) for key in known})


def _summary_table(data: dict[str, Any], exam: ExamOutcome | None = None) -> str:
    """The run in a few named rows; scores to 3 decimals as `crowdclust run` prints them."""

    def score(key: str) -> str | None:
        return None if data.get(key) is None else f"{data[key]:.3f}"

    scored_over = truth_share(data.get("metrics"), sum((data.get("cluster_sizes") or {}).values()))
    attempts = data.get("attempts")
    wall = (
        {"wall time of the flow (s)": data.get("wall_seconds")}
        if not attempts
        else {
            "wall time of the flow, every attempt (s)": data.get("wall_seconds"),
            "attempts": f"{attempts['count']} since {attempts['since'].replace('T', ' ')[:16]} UTC "
            f"(the last one {attempts['last_attempt']['wall_seconds']:.1f} s)",
        }
    )
    return _table(
        {
            "clusters": data.get("clusters"),
            "ARI vs truth": None if score("ari") is None else f"{score('ari')}{scored_over}",
            "NMI vs truth": score("nmi"),
            "intruder accuracy": score("intruder_accuracy"),
            **({"exam": exam.describe()} if exam is not None else {}),
            **wall,
            "run key": data.get("run_key"),
        }
    )


def _timings(summary: RunSummary) -> list[str]:
    """Seconds per stage; over every attempt of a resumed run, the last one's in a table of its own."""
    attempts = summary.attempts
    if attempts is None:
        return ["<h2>Timings (s)</h2>", _table(summary.timings)]
    return [
        f"<h2>Timings (s): the {html.escape(attempts.describe())}, together</h2>",
        _table(summary.timings),
        "<h3>The last attempt alone (s)</h3>",
        _table(attempts.last_timings),
    ]


def _figure(
    item: str, sources: dict[str, str], caption: str, ident: str | None = None, copy: str | None = None
) -> str:
    """One image: its embedded thumbnail, else its URL when it is a web address, else a text box.

    `ident` names the <img> that holds a thumbnail shown twice; `copy` makes this one take its
    source from that one (the thumbnail is embedded once)."""
    src = sources.get(item) or (item if thumbnails.is_fetchable(item) else None)
    name = html.escape(item.rstrip("/").rsplit("/", 1)[-1])
    attributes = f"title='{html.escape(item)}' alt='{name}'"
    if src and copy is not None:
        image = f"<img data-copy='{copy}' {attributes}>"
    elif src:
        named = "" if ident is None else f" id='{ident}'"
        image = f"<img src='{html.escape(src)}'{named} {attributes}>"
    else:
        image = f"<div class='missing' title='{html.escape(item)}'>no image: {name}</div>"
    # Class names like womens_ankle_boots ran into the next caption: they may break after a `_`.
    text = html.escape(caption).replace("_", "_<wbr>")
    return f"<figure>{image}<figcaption>{text}</figcaption></figure>"


CONTENTS_FROM = 10  # clusters past which the galleries begin with a link to each


def _cluster_anchor(cluster: object) -> str:
    """The id of a cluster's gallery heading (`cluster-3`)."""
    return html.escape(f"cluster-{cluster}", quote=True)


def _to_cluster(cluster: object, word: str = "cluster ") -> str:
    """A link to the cluster's gallery: a 200-cluster report's least certain items ran 18,500 pixels
    before the galleries began, and a row there named its cluster without a way to it."""
    return f"<a href='#{_cluster_anchor(cluster)}'>{word}{html.escape(str(cluster))}</a>"


def _embedded(chart: Path) -> str | None:
    """The chart as a data URI, so that a copied or mailed report.html keeps it as it keeps the
    thumbnails (a link to intruders.png broke once the page left the run folder)."""
    try:
        return "data:image/png;base64," + base64.b64encode(Path(chart).read_bytes()).decode("ascii")
    except OSError:
        return None


SURE = 0.99  # least certain items at or above it are not shown: none of them is worth a second look


def _least_certain(
    uncertain: pd.DataFrame,
    confidence: pd.Series,
    means: pd.Series,
    sources: dict[str, str],
    recheck: bool = False,
    twice: dict[str, str] | None = None,
) -> list[str]:
    """The items to send back to the crowd: the least certain of every cluster, with confidences.

    `means` is each cluster's mean confidence: low when the answers place its images in several
    ways (images between two styles, say), not only a few of them. `twice`: the items whose
    embedded thumbnail the galleries below hold, and the id of the <img> that holds it.
    """
    twice = twice or {}
    below = int((confidence < UNCERTAIN_BELOW).sum())
    parts = [
        "<h2 id='least-certain'>Least certain items</h2>",
        f"<p>{below:,} of {len(confidence):,} items have a confidence below {UNCERTAIN_BELOW} (the "
        "probability of their cluster under the fitted model, averaged over resamplings of the answers, "
        "times the share of the images linked with them). The least certain items of each cluster are "
        "the ones to send back to the crowd. A cluster whose mean confidence is low holds images that "
        "the answers place in several ways, such as images between two styles.</p>",
    ]
    doubtful = uncertain[uncertain["confidence"] < SURE]  # a gallery of images at 1.00 says nothing
    if doubtful.empty and recheck:
        # The images to show again are those no answer links to their piece, however sure the
        # prior makes them: "none to send back" under that section read as a contradiction.
        parts.append(
            f"<p>Every image's confidence is {SURE} or more; the images to show again above are those "
            "that only the prior placed, whatever their confidence.</p>"
        )
    elif doubtful.empty:
        parts.append(f"<p>Every image's confidence is {SURE} or more: none to send back.</p>")
    for cluster, rows in doubtful.groupby("cluster", sort=True):  # one row per cluster
        label = f"{_to_cluster(cluster)}<br>mean&nbsp;{means[cluster]:.2f}"
        parts.append(f"<div class='g'><figure class='label'>{label}</figure>")
        parts += [
            _figure(str(r.item), sources, f"{r.confidence:.2f}", copy=twice.get(str(r.item)))
            for r in rows.itertuples()
        ]
        parts.append("</div>")
    return parts


NOT_ALIKE = 0.5  # intruder accuracy below which a cluster's images do not look alike to the second crowd
NOT_ALIKE_HITS = 3  # fewer HITs than this say too little about one cluster


def _not_alike(found: dict[int, dict[str, Any]], means: pd.Series | None) -> list[str]:
    """The clusters in which the second crowd seldom found the intruder, whatever the model's
    confidence: a user's cluster at mean confidence 0.86 was 44% one style, and its intruder
    accuracy, 0.31, was only in a table further up."""
    weak = [
        d for cluster, d in sorted(found.items()) if d["accuracy"] < NOT_ALIKE and d["hits"] >= NOT_ALIKE_HITS
    ]
    if not weak:
        return []
    named = ", ".join(
        f"{d['cluster']} ({d['accuracy']:.2f} of {d['hits']} HITs"
        + ("" if means is None else f", mean confidence {means[d['cluster']]:.2f}")
        + ")"
        for d in weak
    )
    return [
        "<h2>Clusters the second crowd did not find alike</h2>",
        f"<p>In cluster{'s' if len(weak) > 1 else ''} {html.escape(named)} the intruder was found in "
        f"fewer than {NOT_ALIKE:.0%} of the HITs: to other people their images do not look like one "
        "group, whatever the model's confidence (it rests on the first crowd's answers). Such a cluster "
        "may hold several styles: look at its gallery below, or send its images back to the crowd.</p>",
    ]


def render_html(
    summary: RunSummary,
    clusters: pd.Series,
    truth: pd.Series | None,
    title: str,
    links: ReportLinks,
    sources: dict[str, str] | None = None,
    uncertain: tuple[pd.DataFrame, pd.Series] | None = None,
) -> str:
    """A self-contained page: metrics, cost, timings, chart, galleries, least certain items.

    `sources` maps image URLs to embedded thumbnails; `uncertain` is (least certain items per
    cluster, every item's confidence).
    """
    sources = sources or {}
    data = summary.as_dict()
    contents = [("least-certain", "Least certain items")] if uncertain is not None else []
    contents.append(("clusters", "Clusters"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}.g{display:flex;flex-wrap:wrap;gap:6px}"
        ".g figure{margin:0;width:110px;font-size:11px;text-align:center}"
        ".g img,.g .missing{display:block;margin:0 auto;width:104px;height:78px;object-fit:contain;"
        "border:1px solid #ddd}"
        ".g .missing{font-size:10px;overflow:hidden;"
        "word-break:break-all;color:#888}.g .label{width:70px;font-size:13px;font-weight:bold;"
        "text-align:left;align-self:center}.g figcaption{overflow-wrap:anywhere}"
        ".chart{overflow-x:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>" + " · ".join(f"<a href='#{anchor}'>{name}</a>" for anchor, name in contents) + "</p>",
        "<h2>Summary</h2>",
        _summary_table(data, summary.exam),
    ]
    if data.get("catalogue_key"):
        rounds = {  # in words: summary.json's keys read `n_items 3000`, `new_items`
            "catalogue key": data.get("catalogue_key"),
            "images in the catalogue": _count(data.get("n_items")),
            "new images labelled by this run": _count(data.get("new_items")),
            "round": data.get("round"),
        }
        if data.get("waiting"):  # in n_items, not in the clusters below
            rounds["waiting for the next run"] = _count(data["waiting"])
        rounds["pools aggregated"] = ", ".join(map(str, data.get("round_pools") or ()))
        parts += ["<h2>Catalogue</h2>", _table(rounds)]
    if data.get("metrics"):
        n_images = sum((data.get("cluster_sizes") or {}).values())
        scores = {row["metric"]: row["value"] for row in artifacts.truth_rows(data["metrics"], n_images)}
        parts += ["<h2>Agreement with the truth</h2>", _table(scores)]
    dissent = (data.get("aggregation") or {}).get("dissent")
    if dissent:
        from aggregation.dissent import ADVICE  # here: the module loads numba's kernels

        advice = html.escape(ADVICE)
        parts += ["<h2>Workers who group another way</h2>", f"<p>{html.escape(dissent)}. {advice}.</p>"]
        if links.dissent is not None:
            grouping, workers = (html.escape(link, quote=True) for link in links.dissent)
            parts.append(
                f"<p>Their grouping: <a href='{grouping}'>{grouping}</a>; "
                f"the workers: <a href='{workers}'>{workers}</a>.</p>"
            )
    warnings = (data.get("aggregation") or {}).get("warnings")
    if warnings:  # the run's log says them too, among a hundred other lines
        said = "".join(f"<li>{html.escape(warning)}</li>" for warning in warnings)
        parts += ["<h2>What the clusters must be read with</h2>", f"<ul>{said}</ul>"]
    recheck = (data.get("aggregation") or {}).get("recheck")
    if recheck and links.recheck is not None:
        where = html.escape(links.recheck, quote=True)
        parts += [
            "<h2>Images to show again</h2>",
            f"<p>{html.escape(recheck)}: <a href='{where}'>{where}</a>.</p>",
        ]
    cost = dict(data.get("cost", {}))
    if summary.cost.estimate is not None:  # as the run-metrics artifact writes it, not its keys
        cost["estimate"] = summary.cost.estimate.describe()
    parts += ["<h2>Cost (USD)</h2>", _cost_table(cost, bool(data.get("catalogue_key")))]
    if data.get("timings"):
        parts += _timings(summary)
    if summary.coverage is not None:
        parts += ["<h2>HIT plan</h2>", f"<p>{html.escape(summary.coverage.describe())}.</p>"]
    if data.get("second_round"):
        again = data["second_round"]
        rows = {
            "images shown again": _count(again.get("images")),
            "HITs": _count(again.get("hits")),
            "answers": _count(again.get("assignments")),
            "main pool": again.get("main_pool"),
        }
        parts += ["<h2>Second round</h2>", _table(rows)]
    intr = data.get("intruders")
    if intr:
        parts.append("<h2>Intruder evaluation</h2>")
        if links.chart:
            # In a box of its own that scrolls: a bar per host cluster (0.6 inch each) is wider than
            # the page from ~18 clusters, and 26 made the whole page scroll sideways, the chart's
            # legend (the overall accuracy) out of sight.
            parts.append(
                f"<div class='chart'><img src='{html.escape(links.chart)}' "
                "alt='intruder accuracy per cluster'></div>"
            )
        thin = summary.intruders.thin(summary.clusters) if summary.intruders is not None else None
        if thin is not None:  # before the per-cluster rows it is about, not in the evaluation's log only
            parts.append(f"<p>{html.escape(thin)}.</p>")
        rows = {}
        if intr.get("image_accuracy") is not None:
            hosted = intr.get("images_hosted", 0)
            rows["per image (each host cluster weighted by its images)"] = (
                f"{intr['image_accuracy']:.2f} ({hosted} images in clusters that hosted a HIT)"
            )
        if intr.get("answer_accuracy") is not None:
            rows["single answers naming the intruder"] = (
                f"{intr['answer_accuracy']:.2f} ({intr.get('n_answers', 0)} answers)"
            )
        rows |= {
            f"cluster {d['cluster']}": f"{d['accuracy']:.2f} ({counted(d['hits'], 'HIT')})"
            for d in intr.get("per_cluster", [])
        }
        skipped = intr.get("skipped") or []
        rows["clusters too small to host a HIT"] = artifacts.cluster_ids(skipped) if skipped else "none"
        parts.append(_table(rows))
    means = None
    if uncertain is not None:
        from aggregation import cluster_confidence  # here: the aggregation's modules load numba

        means = cluster_confidence(clusters, uncertain[1])
    found = {d["cluster"]: d for d in (intr or {}).get("per_cluster", [])}
    parts += _not_alike(found, means)
    limit = thumbnails.report_per_cluster(clusters)
    galleries = {
        cluster: sorted(str(i) for i in items.index) for cluster, items in clusters.groupby(clusters)
    }
    shown = {item for members in galleries.values() for item in members[:limit]}
    doubtful = [] if uncertain is None else uncertain[0]["item"].astype(str).tolist()
    twice = {item: f"t{n}" for n, item in enumerate(i for i in doubtful if i in shown and i in sources)}
    if uncertain is not None:
        shown_again = bool(recheck and links.recheck is not None)
        parts += _least_certain(*uncertain, means, sources, shown_again, twice)
    parts.append("<h2 id='clusters'>Clusters</h2>")
    if len(galleries) > CONTENTS_FROM:
        parts.append(f"<p>Go to {' · '.join(_to_cluster(c, '') for c in galleries)}</p>")
    where = html.escape(links.clusters, quote=True)
    if limit < max(map(len, galleries.values()), default=0):
        fewer = (
            ""
            if limit == GALLERY_LIMIT
            else f" ({GALLERY_LIMIT} when there are fewer clusters: the galleries show about "
            f"{thumbnails.REPORT_IMAGES:,} images in all)"
        )
        parts.append(
            f"<p>Up to {limit} images of each cluster, the first by name{fewer}; every image and its "
            f"cluster are in <a href='{where}'>{where}</a>.</p>"
        )
    for cluster, members in galleries.items():
        mean = "" if means is None else f", mean confidence {means[cluster]:.2f}"
        if cluster in found:
            mean += f", intruders found {found[cluster]['accuracy']:.2f}"
        parts.append(
            f"<h3 id='{_cluster_anchor(cluster)}'>Cluster {html.escape(str(cluster))} "
            f"({artifacts.counted(len(members), 'image')}{mean})</h3><div class='g'>"
        )
        for item in members[:limit]:
            caption = str(truth.get(item, "")) if truth is not None else ""
            parts.append(_figure(item, sources, caption, ident=twice.get(item)))
        if len(members) > limit:
            more = len(members) - limit
            parts.append(f"<p>… and {more} more (see <a href='{where}'>{where}</a>)</p>")
        parts.append("</div>")
    if twice:
        parts.append(COPY_SCRIPT)
    parts.append("</body></html>")
    return "\n".join(parts)


def finish_run(
    params: PipelineParams,
    folder: RunFolder,
    aggregated: Aggregated,
    evaluated: Evaluation | None,
    cost: Cost,
    *,
    wall_seconds: float,
    run_key: str,
    ids: LabellingIds | None,
    coverage: Coverage | None,
    timings: dict[str, float] | None = None,
    catalogue: CatalogueInfo | None = None,
    second_round: SecondRound | None = None,
    attempts: Attempts | None = None,
    exam: ExamOutcome | None = None,
) -> RunSummary:
    """The common end of a run (pipeline or catalogue round): summary, report.html, artifacts.

    Images are the thumbnails embedded at aggregation time (`RunFolder.thumbnails`), so the
    report and the galleries show them with nothing else running.
    """
    clusters = aggregated.clusters
    metrics = aggregated.metrics
    summary = RunSummary(
        clusters=int(clusters.nunique()),
        ari=metrics.get("ari") if metrics else None,
        nmi=metrics.get("nmi") if metrics else None,
        intruder_accuracy=evaluated.accuracy if evaluated else None,
        cost=cost,
        wall_seconds=round(wall_seconds, 1),
        report=folder.report,
        summary=folder.summary,
        cluster_sizes={str(k): int(v) for k, v in clusters.value_counts().sort_index().items()},
        metrics=metrics,
        intruders=evaluated,
        run_key=run_key,
        toloka_ids=ids,
        coverage=coverage,
        aggregation=aggregated.info,
        timings=timings or {},
        catalogue=catalogue,
        second_round=second_round,
        attempts=attempts,
        exam=exam,
    )
    sources = folder.read_thumbnails()
    uncertain = thumbnails.least_certain(aggregated)
    links = ReportLinks(
        clusters=folder.relative(folder.clusters),
        chart=_embedded(evaluated.chart) if evaluated and evaluated.chart else None,
        dissent=(folder.relative(folder.dissent), folder.relative(folder.dissent_workers))
        if aggregated.dissent_clusters is not None
        else None,
        recheck=folder.relative(folder.recheck) if folder.recheck.exists() else None,
    )
    page = render_html(
        summary,
        clusters,
        aggregated.truth,
        f"crowdclust: {params.name}",
        links,
        sources,
        None if uncertain is None else (uncertain, aggregated.confidence),
    )
    folder.write_report(page)
    folder.write_summary(summary)
    artifacts.run_results(summary, clusters, sources, folder.url_of(folder.report))
    return summary


def log_the_end(summary: RunSummary) -> None:
    """The closing lines of a run's log, a pipeline's or a catalogue's: the outcome in a line
    (`RunSummary.describe`), then the warnings its clusters come with, as the aggregation logged them.

    Those warnings were only in the aggregation sub-flow's log (report.html and the `run-overview`
    artifact list them), and a catalogue closed on a line of its own without the intruder accuracy:
    `catalogue k: round r labelled (40 new items); 8 clusters from 2 pools, ARI 0.954, spent $2.81
    this run`.
    """
    from prefect import get_run_logger

    logger = get_run_logger()
    logger.info("done: %s", summary.describe())
    summary.aggregation.log_warnings(logger)


# How often a running stage's seconds are written to `attempts.json`: what a kill -9 loses at most
# (at 30 s, an attempt killed 31 s in was on record with 0.5 s). A write is a few hundred bytes.
HEARTBEAT_SECONDS = 5.0
FIRST_SAVE_SECONDS = 0.5  # how often a stage looks for the run folder until its attempt is on record


class Stopwatch:
    """Wall time of a run and of its stages over all its attempts (`timings` in the summary).

    A resumed run (the same command again, or a Retry) is one run in several attempts, and its
    report showed only the last one's durations. Each attempt is kept in the run folder's
    `attempts.json`: written as soon as it starts (as a stage starts, or within `FIRST_SAVE_SECONDS`
    of the folder's creation by the first stage of a new run), at the end of every stage, failed
    ones included, and every `HEARTBEAT_SECONDS` while one runs, so an attempt killed outright still
    counts up to its last heartbeat. Before, the first write was at the first heartbeat: an attempt
    killed sooner (a Retry killed again at once) left no record. A run that finished (`finish`)
    starts the next count afresh. Without a folder it times this attempt only (a run refused before
    it wrote anything leaves no folder behind: the folder is never created here).
    """

    def __init__(self, folder: RunFolder | None = None, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.laps: dict[str, float] = {}
        self.folder = folder
        self.heartbeat = heartbeat
        kept = folder.read_attempts() if folder is not None else []
        self.earlier = [] if kept and kept[-1].done else kept  # a finished run's attempts are done with
        self._running: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self.saved = False  # this attempt is in `attempts.json`
        self.unwritable = False  # a write of `attempts.json` failed (said once)
        self.charged_before: float | None = None  # the run key's charges as this attempt began

    def charged_from(self, now: float) -> float:
        """What the run key's pools had cost when this run began: `now` (this attempt's reading),
        unless an earlier attempt of the run recorded its own.

        A catalogue's cost is what its pools cost after the run less before it, and a round
        resumed by the same command after a kill (a new flow run, so a new reading) reported only
        what its last attempt added: $72.49 of a round that cost $115.88, the rest counted as
        "earlier runs of the catalogue", beside a wall time over both attempts.
        """
        earlier = [one.charged_before for one in self.earlier if one.charged_before is not None]
        self.charged_before = now
        return earlier[0] if earlier else now

    @contextmanager
    def lap(self, stage: str) -> Iterator[None]:
        began = time.monotonic()
        self._running = (stage, began)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop,), name=f"stopwatch {stage}", daemon=True)
        if self.folder is not None:
            self.save()  # on record from the start (when the folder exists: a resumed run's does)
            beat.start()
        try:
            yield
        finally:
            stop.set()
            if beat.is_alive():
                beat.join()
            self._running = None
            self.laps[stage] = round(self.laps.get(stage, 0.0) + time.monotonic() - began, 1)
            self.save()

    def _beat(self, stop: threading.Event) -> None:
        # A new run's folder appears during its first stage: record the attempt as soon as it does.
        while not self.saved and not stop.wait(min(FIRST_SAVE_SECONDS, self.heartbeat)):
            if self.folder is not None and self.folder.root.is_dir():
                self.save()
        while not stop.wait(self.heartbeat):
            self.save()

    def total(self) -> float:
        """This attempt's wall time so far."""
        return time.monotonic() - self.started

    def attempt(self, done: bool = False) -> Attempt:
        """This attempt as `attempts.json` keeps it, the running stage counted up to now."""
        laps = dict(self.laps)
        if self._running is not None:
            stage, began = self._running
            laps[stage] = round(laps.get(stage, 0.0) + time.monotonic() - began, 1)
        return Attempt(self.started_at, round(self.total(), 1), laps, done, self.charged_before)

    def save(self, done: bool = False) -> None:
        """Write `attempts.json`. A folder that cannot be written (made read-only, a full disk) is
        said once in the log and left to the stage's own files: raised here, the error came out of
        the stage's `finally` in place of the stage's own (a read-only run folder ended the run with
        `Permission denied: '.../.attempts.json.71d367f8.tmp'`, not the export it could not write),
        and out of the heartbeat thread as a traceback on the console."""
        if self.folder is None:
            return
        with self._lock:
            try:
                written = self.folder.write_attempts([*self.earlier, self.attempt(done)])
            except OSError as error:
                if not self.unwritable:
                    log.warning(
                        "cannot write %s (%s): the time of this attempt is not on record",
                        self.folder.attempts.absolute(),
                        error.strerror or error,
                    )
                self.unwritable = True
                return
            if written is not None:
                self.saved = True

    def finish(self) -> tuple[float, dict[str, float], Attempts | None]:
        """The run's wall time and seconds per stage over all its attempts, and (when there were
        several) the `Attempts`; records the run as finished."""
        this = self.attempt(done=True)
        self.save(done=True)
        every = [*self.earlier, this]
        timings: dict[str, float] = {}
        for one in every:
            for stage, seconds in one.laps.items():
                timings[stage] = round(timings.get(stage, 0.0) + seconds, 1)
        wall = round(sum(one.wall for one in every), 1)
        if not self.earlier:
            return wall, timings, None
        return wall, timings, Attempts(len(every), every[0].started, this.wall, this.laps)
