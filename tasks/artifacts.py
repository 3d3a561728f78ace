"""Every Prefect artifact of a run, so the UI tells its story: tables, progress, galleries, links.

Keys (lowercase, digits and dashes, as Prefect requires): `hit-coverage`, `main-pool-progress`,
`intruders-pool-progress`, `intruder-chart`, `cluster-galleries`, `run-metrics`,
`intruder-accuracy`, `run-report`, `run-overview`, `catalogue-rounds`, `evaluation-metrics`. Only
public facts: ids, counts, metrics, costs, image URLs (escaped, never markup); never the token.

Every artifact renders with nothing but the Prefect server running: images are embedded as data
URIs, and the report is linked over http only where the service serves the runs folder.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks.stages import (  # `counted` is the layers' one plural: callers use `artifacts.counted`
    Aggregated,
    Coverage,
    Evaluation,
    PoolStats,
    RoundState,
    RunSummary,
    counted,
    shown,
)

GALLERY_PER_CLUSTER = 10  # thumbnails per cluster in `cluster-galleries`
GALLERY_COLUMNS = 5  # thumbnails per table row: fits the UI's artifact page at 1400 px
GALLERY_MAX_CLUSTERS = 40  # largest clusters shown there (the report lists them all)
HIT_COVERAGE_ROWS = 1000  # images in too few HITs listed in `hit-coverage`, the fewest first


def coverage_table(
    coverage: Coverage, images_base: str | None = None, target: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """`hit-coverage`'s rows and description: the images in fewer HITs than `target` (the plan's
    `hits.hits_per_item`; without it, the most any image is in), the fewest first, at most
    `HIT_COVERAGE_ROWS` of them.

    Those are the images a user looks for there: the ones the design shows too seldom to place.
    Listing every image regardless gave a 3,000-image run on the default balanced design 1,000 rows
    that each read "10" (173 KB the UI loads whole), headed "The 1,000 in the fewest HITs" though
    2,000 more were in as many. Prefect stores a table artifact in its database and the UI loads it
    whole, so the rows stay capped. Every image's count is in the run folder's `hits.json`.

    The UI renders a table's text cells as markdown. An image reads as the dataset names it (how
    `hits.json` and `clusters.csv` name it too: a code span, never markup), and the `image` column
    links it to where a browser opens it: for a `local` run the same path on the run's emulator
    (`images_base`), as the galleries fetch their thumbnails. The bare URL was linked as written,
    and the demo datasets name the emulator's default address (http://127.0.0.1:8765), where the
    service's emulator does not listen. The link's text is the file name, in letters, digits, `.`,
    `_` and `-` (the UI shows a code span inside a link's text as backticks), its address
    percent-encoded where markdown would end it.
    """
    from tasks.thumbnails import image_link

    below = coverage.max if target is None else target
    short = sorted(
        ((item, hits) for item, hits in coverage.per_item.items() if hits < below),
        key=lambda kv: (kv[1], kv[0]),
    )
    fewest = short[:HIT_COVERAGE_ROWS]
    if not short:
        shown = f" No image is in fewer than {below:,} HITs; every image's count is in {run_file('hits')}."
    elif len(fewest) == len(short):
        shown = f" The {counted(len(short), 'image')} in fewer than {below:,} HITs:"
    else:
        shown = f" {len(short):,} images are in fewer than {below:,} HITs; the {len(fewest):,} in the fewest:"
    rows = [
        {"item": literal(item), "hits": hits, "image": _link(item, image_link(item, images_base))}
        for item, hits in fewest
    ]
    opened = (
        f" Links open the images on the run's emulator, {literal(images_base)}."
        if images_base and rows
        else ""
    )
    return rows, f"HITs per image: {coverage.describe()}.{opened}{shown}"


def run_file(attribute: str) -> str:
    """The name of the run folder's file `attribute` (`RunFolder.hits`, `.clusters`, ...): only
    `tasks.run_folder` spells them."""
    from tasks.run_folder import RunFolder  # here: it loads the aggregation package

    return str(getattr(RunFolder(Path()), attribute).name)


def hit_coverage(
    coverage: Coverage, images_base: str | None = None, target: int | None = None, key: str = "hit-coverage"
) -> None:
    """The `hit-coverage` table; `images_base`: a `local` run's emulator (`thumbnails.images_base`);
    `target`: the plan's `hits.hits_per_item`; `key`: another plan's (a second round's)."""
    rows, description = coverage_table(coverage, images_base, target)
    create_table_artifact(key=key, table=rows, description=description)


_UNSAFE_IN_LINK = re.compile(r"[\s()<>\\`\"']")


def _link(item: str, url: str | None) -> str:
    """A markdown link to `url` named after `item`'s file name ("" without a URL); every character
    of the address that could end it or start markup percent-encoded (a `)` in it ended the link)."""
    if url is None:
        return ""
    name = name_text(item.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])[:40] or "image"
    address = _UNSAFE_IN_LINK.sub(lambda found: "".join(f"%{b:02X}" for b in found[0].encode()), url)
    return f"[{name}]({address})"


def warn_up(message: str) -> None:
    """A warning in this run's log and, from a sub-flow, the top-level run's: what a run is warned
    of before it pays was only in the labelling sub-flow's log, where a team lead looking at the
    run from the UI did not see it."""
    get_run_logger().warning(message)
    parent = parent_run_logger()
    if parent is not None:
        parent.warning(message)


def parent_run_logger() -> logging.LoggerAdapter[logging.Logger] | None:
    """A logger whose lines go to the top-level flow run's log (None when that is the current run).

    Poll and progress lines come from tasks of sub-flow runs; logged here too, they are readable
    from the parent run's page. Only the Prefect API gets them (the console shows them once).
    """
    from prefect.logging.handlers import APILogHandler

    from tasks.run_log import root_run_of_a_subflow

    root = root_run_of_a_subflow()
    if root is None:
        return None
    logger = logging.getLogger("crowdclust.parent_run")
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(APILogHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logging.LoggerAdapter(logger, {"flow_run_id": root, "task_run_id": None})


POLL_LOG_STEP = 5.0  # points of completion that earn a poll line of their own
POLL_LOG_INTERVAL = 600.0  # seconds of wait after which a poll line is logged however little moved
POLL_STALL_SECONDS = 600.0  # seconds without a new answer that make a pool "stalled"
PROGRESS_EVERY = 5.0  # least seconds between two updates of a wait's progress artifact


class ProgressReporter:
    """A progress artifact updated with the polls, and a log line (completion %, assignments, spend)
    for the polls that say something new, the line in the top-level run's log too.

    The artifact shows the latest poll at most `PROGRESS_EVERY` seconds old, and the poll a wait
    ended on (`show_last` once it returned; a wait that raised keeps the one before, rather than
    an API call in the way of a Ctrl-C or to a server that is gone). Updated on every poll, a run of
    the demo's config (its waits poll each second) sent 74 updates, each an API request and a
    `prefect.artifact.updated` event the server stores, of its 207 API requests and 178 events.

    A line every poll gave one wait of a 10,000-image pool about 775 near-identical lines. A poll is
    logged when it is the first, when completion moved `POLL_LOG_STEP` points since the last line or
    reached 100%, when answers stop coming for `POLL_STALL_SECONDS` or come again after that, and at
    least every `POLL_LOG_INTERVAL` seconds; `flush` logs the last poll when it was not, so the line
    a wait ends on is always there. A wait of hours gives tens of lines, one of minutes a few.
    `clock` is where the seconds are read (a test's simulated one).
    """

    def __init__(
        self,
        key: str,
        what: str,
        also: Callable[[PoolStats], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.also = also  # more of the line, e.g. the run's spend with the exams against the budget
        self.clock = clock
        self.logger = get_run_logger()
        self.parent = parent_run_logger()
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=what)
        self.shown_at: float | None = None  # clock of the artifact's last update
        self.unshown: tuple[float, str] | None = None  # the last poll's (completion, line) until shown
        self.unlogged: str | None = None  # the last poll's line while it was not logged
        self.logged_at: tuple[float, float] | None = None  # (clock, completion) of the last line
        self.answers: tuple[float | None, float] = (None, clock())  # submitted, when it last grew
        self.stalled = False

    def __call__(self, stats: PoolStats) -> None:
        done = stats.completion_percentage or 0.0
        now = self.clock()
        line = poll_line(self.what, stats)
        also = self.also(stats) if self.also is not None else ""  # every poll: it may warn
        self.unshown = (float(done), line + also)
        if self.shown_at is None or now - self.shown_at >= PROGRESS_EVERY or done >= 100.0:
            self._show(now)
        news = self._news(stats, done, now)
        if news is None:
            self.unlogged = line + also
            return
        self._log(line + news + also, now, done)

    def _news(self, stats: PoolStats, done: float, now: float) -> str | None:
        """Why this poll earns a line ("" for no note), or None when it says nothing new."""
        submitted, since = self.answers
        if stats.submitted_assignments_count != submitted:
            self.answers = (stats.submitted_assignments_count, now)
            if self.stalled:
                self.stalled = False
                return f"; answers coming again after {now - since:.0f} s without"
        elif not self.stalled and now - since >= POLL_STALL_SECONDS and done < 100.0:
            self.stalled = True
            return f"; stalled: no new answer for {now - since:.0f} s"
        if self.logged_at is None:
            return ""
        last_at, last_done = self.logged_at
        moved = abs(done - last_done) >= POLL_LOG_STEP or (done >= 100.0 > last_done)
        if moved or now - last_at >= POLL_LOG_INTERVAL:
            return f"; no new answer for {now - since:.0f} s" if self.stalled else ""
        return None

    def _log(self, line: str, now: float, done: float) -> None:
        self.logger.info(line)
        if self.parent is not None:
            self.parent.info(line)
        self.unlogged = None
        self.logged_at = (now, done)

    def _show(self, now: float) -> None:
        if self.unshown is not None:
            done, line = self.unshown
            update_progress_artifact(artifact_id=self.artifact_id, progress=done, description=line)
            self.unshown, self.shown_at = None, now

    def show_last(self) -> None:
        """Show the last poll in the artifact if it was not: the figures a wait returned with."""
        self._show(self.clock())

    def flush(self) -> None:
        """Log the last poll if it was not: the line a wait ends on (completed, stopped, timed out)."""
        if self.unlogged is not None:
            self._log(self.unlogged, self.clock(), (self.logged_at or (0.0, 0.0))[1])


def poll_line(what: str, stats: PoolStats) -> str:
    """A poll in words: `main pool 6: 80% complete, 56,016 submitted, 56,016 accepted, $1,456.42
    spent (359 s)`. Counts and dollars have thousands separators as the rest of the line (the
    budget's `$20,000.00`) and the other log lines have: a 10,000-image run read `56016 submitted,
    ..., $1456.42 spent (359 s); with the exams $1,493.65 of the $20,000.00 left` on one line."""
    done = stats.completion_percentage or 0.0
    return (
        f"{what}: {done:.0f}% complete, {_fmt(stats.submitted_assignments_count)} submitted, "
        f"{_fmt(stats.approved_assignments_count)} accepted, "
        f"${_fmt(stats.spent_budget, ',.2f')} spent ({stats.elapsed:.0f} s)"
    )


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "?" if value is None else format(value, spec)


def intruder_chart(chart: Path) -> None:
    """The accuracy bar chart: a markdown artifact whose image is the PNG as a data URI.

    A `file://` image never loads from the UI, and the file server is up only with the service. An
    image artifact would show the picture too, but the UI prints its URL under it, and ~20 KB of
    data URI ran across the page and under the side panel.
    """
    data = base64.b64encode(chart.read_bytes()).decode("ascii")
    create_markdown_artifact(
        markdown=f"![intruder accuracy per host cluster](data:image/png;base64,{data})",
        key="intruder-chart",
        description="intruder accuracy per host cluster (dashed: overall)",
    )


def literal(text: str) -> str:
    """`text` as a markdown code span: shown as is, never parsed as a link, image or emphasis.

    Image URLs and paths are data, never markup: a `)` or `](` in one must not end a link or start
    a new one. Backslash escapes are not enough (the Prefect UI shows them), code spans are; a
    backtick or `|` (a table cell's end) inside is replaced.
    """
    cleaned = " ".join(str(text).split()).replace("`", "'").replace("|", "¦")
    return f"`{cleaned}`" if cleaned else ""


def name_text(text: str) -> str:
    """A name (run, flow, state) as plain text: letters, digits, space, `.`, `_`, `-` and parentheses
    only (an aggregate run is named `<name> (<run key>)`; parentheses neither open nor close a link's
    text or a table cell, brackets, pipes and markup characters do)."""
    return re.sub(r"[^A-Za-z0-9 ._()-]", "_", str(text))


def _image_cell(item: str, thumbnails: dict[str, str], alt: str) -> str:
    uri = thumbnails.get(item, "")
    if uri.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) and _BASE64.fullmatch(
        uri.split(",", 1)[1]
    ):
        return f"![{alt}]({uri})"
    name = item.rstrip("/").rsplit("/", 1)[-1]
    if len(name) > 20:  # a code span does not wrap: five of 40 characters pushed the grid off screen
        name = f"{name[:9]}…{name[-10:]}"
    return f"(no image: {literal(name)})"


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def gallery_markdown(
    clusters: pd.Series,
    thumbnails: dict[str, str],
    per_cluster: int = GALLERY_PER_CLUSTER,
    max_clusters: int = GALLERY_MAX_CLUSTERS,
    report_note: str = "",
) -> str:
    """A grid: per cluster its id, its size and up to `per_cluster` embedded thumbnails, one per
    table cell, GALLERY_COLUMNS cells a row (the UI shows an image as a block: a row of images
    outside a table would be a column of them).

    Thumbnails are the run folder's data URIs (fetched at aggregation time), so the artifact needs
    nothing else running; an image without one shows as a text cell. The largest `max_clusters`
    clusters are shown, which keeps the artifact near 1 MB at most.
    """
    groups = sorted(clusters.groupby(clusters), key=lambda group: (-len(group[1]), group[0]))
    lines = [
        f"{counted(len(clusters), 'image')} in {counted(len(groups), 'cluster')}; "
        f"up to {per_cluster} a cluster shown.",
        "",
        "| cluster | images |" + " |" * GALLERY_COLUMNS,
        "|---|---|" + "---|" * GALLERY_COLUMNS,
    ]
    for cluster, items in groups[:max_clusters]:
        members = sorted(str(i) for i in items.index)[:per_cluster]
        cells = [
            _image_cell(item, thumbnails, f"cluster {cluster} image {n + 1}")
            for n, item in enumerate(members)
        ]
        for start in range(0, len(cells), GALLERY_COLUMNS):
            row = cells[start : start + GALLERY_COLUMNS]
            row += [" "] * (GALLERY_COLUMNS - len(row))
            head = f"**{cluster}** | {len(items)}" if start == 0 else "  |  "
            lines.append(f"| {head} | " + " | ".join(row) + " |")
    if len(groups) > max_clusters:
        rest = groups[max_clusters:]
        hidden = sum(len(g[1]) for g in rest)
        lines += ["", f"{counted(len(rest), 'smaller cluster')} ({counted(hidden, 'image')}) not shown."]
    if report_note:
        lines += ["", report_note]
    return "\n".join(lines)


def _ui_run_url(flow_run_id: object) -> str | None:
    """The run's page in the Prefect UI (None without a UI, e.g. an ephemeral server)."""
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def sub_flow_runs() -> list[tuple[str, str, str, str | None]]:
    """(flow name, run name, state, UI URL) of the current flow run's sub-flow runs, oldest first."""
    from prefect import runtime
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    run_id = runtime.flow_run.id
    if run_id is None:
        return []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        names = {f.id: f.name for f in client.read_flows()}
    return [
        (names.get(r.flow_id, "?"), r.name, r.state.name if r.state else "?", _ui_run_url(r.id)) for r in runs
    ]


def run_overview(summary: RunSummary, report_where: str) -> None:
    """The parent run's page in one artifact: outcome, HIT plan, cost, the report, each sub-flow run.

    Sub-flow runs (labelling with its poll lines and progress, aggregation, intruders) keep their
    own logs and artifacts; the links lead there.
    """
    lines = [
        f"**{summary.clusters} clusters**, ARI {shown(summary.ari)}, "  # `n/a` as in the log lines
        f"intruder accuracy {shown(summary.intruder_accuracy)}, "
        f"cost ${summary.cost.spent:,.2f}, {summary.wall_seconds:.0f} s"
        + (f" over {summary.attempts.count} attempts." if summary.attempts else "."),
        "",
        f"Report: {report_where}",
    ]
    estimate = summary.cost.estimate
    if estimate is not None:
        lines += ["", f"Cost estimate checked against the budget: ${estimate.total:,.2f}."]
    if summary.coverage is not None:
        lines += ["", f"HIT plan: {summary.coverage.describe()}."]
    if summary.aggregation.dissent is not None:  # counts and fixed words only: no markup to escape
        lines += ["", f"Workers who group another way: {summary.aggregation.dissent}."]
    if summary.second_round is not None:
        lines += ["", f"Second round: {summary.second_round.describe()}."]
    if summary.aggregation.recheck is not None:
        lines += ["", f"Images to show again: {summary.aggregation.recheck}."]
    for warning in summary.aggregation.warnings:  # two "~" in a line strike the text between out
        lines += ["", f"**Warning:** {warning.replace('~', 'about ')}"]
    if summary.catalogue is not None and summary.catalogue.waiting:
        waiting = summary.catalogue.waiting
        lines += [
            "",
            f"{waiting:,} images of the catalogue's {summary.catalogue.n_items:,} are in no cluster yet: "
            "added after a round that stopped, which this run finished first; the next run labels them.",
        ]
    _publish_overview(lines)


def _publish_overview(lines: list[str]) -> None:
    """The `run-overview` artifact: `lines`, then the run's sub-flow runs."""
    markdown = "\n".join([*lines, *_sub_flow_table()])
    create_markdown_artifact(key="run-overview", markdown=markdown, description="the whole run")


def _sub_flow_table() -> list[str]:
    """The current flow run's sub-flow runs as a markdown table with links (nothing without any)."""
    runs = sub_flow_runs()
    if not runs:
        return []
    lines = ["", "| sub-flow | run | state |", "|---|---|---|"]
    for flow_name, run_name, state, url in runs:
        run_cell = f"[{name_text(run_name)}]({url})" if url else name_text(run_name)
        lines.append(f"| {name_text(flow_name)} | {run_cell} | {name_text(state)} |")
    return [
        *lines,
        "",
        "Poll and progress lines are in these runs' logs and in this run's.",
    ]


def run_stopped(reason: str, run_key: str, charged: float | None) -> None:
    """The parent run's overview when a stage stopped with answers paid for (the spend guard, the
    account's balance run out, a main pool that timed out or closed before it completed): why, what
    the run key has been charged, what to do, and the sub-flow runs.

    The run page of a team lead whose balance ran out read "This run did not produce any
    artifacts" after $18.54 had been paid and the answers exported: the progress and the export
    were only on the labelling sub-flow's page.
    """
    lines = [f"**Stopped before the end**: {literal(reason)}"]
    if charged is not None:
        lines += [
            "",
            f"Charged so far under run key {literal(run_key)}: ${charged:,.2f}. The accepted answers "
            "are kept; going on finishes the same pools and pays nothing twice.",
        ]
    _publish_overview(lines)


def report_link(summary: RunSummary, url: str | None) -> str:
    """The `run-report` artifact: a link over http when the runs folder is served, else where it is.

    Returns the same as markdown for the overview.
    """
    if url is not None:
        name = name_text(summary.report.name)
        create_link_artifact(key="run-report", link=url, link_text=name, description="the run report")
        return f"[{name}]({url})"
    # The absolute path and the host: on a Prefect server that several people use, `runs/x/report.html`
    # named no one's files (each user's checkout has a `runs/`, and a run key resumed by another user
    # has a folder of the same name in both).
    where = (
        f"{literal(str(Path(summary.report).absolute()))} on {literal(socket.gethostname())}, the machine "
        "that ran the flow (not in a folder served over http: the local service, `make up`, serves its "
        "own runs folder)."
    )
    create_markdown_artifact(key="run-report", markdown=f"Report: {where}", description="the run report")
    return where


def evaluation_metrics(evaluation: Evaluation, folder: Path) -> None:
    """`evaluation-metrics`: what an evaluation started on its own found and cost (it writes no
    report; before, its cost was only in a log line)."""
    rows = [
        {"metric": "intruder_accuracy", "value": shown(evaluation.accuracy)},
        {"metric": "intruder_accuracy_per_image", "value": shown(evaluation.image_accuracy)},
        {"metric": "single_answers_naming_the_intruder", "value": shown(evaluation.answer_accuracy)},
        {"metric": "hits", "value": evaluation.n_hits},
        {"metric": "answers", "value": evaluation.n_assignments},
        {"metric": "cost_spent", "value": "n/a" if evaluation.spent is None else f"${evaluation.spent:,.2f}"},
    ]
    create_table_artifact(
        key="evaluation-metrics",
        table=rows,
        description=f"An evaluation on its own; its files: {literal(str(folder))}",
    )


def aggregation_alone(aggregated: Aggregated, thumbnails: dict[str, str], folder: Path) -> None:
    """`cluster-galleries` and `aggregation-metrics` of an aggregate run started on its own (the
    `reaggregate` deployment), which writes no report: a re-clustering of a 10,000-image export
    (100 s, 4.7 GB) ended on a page whose Artifacts tab read "This run did not produce any
    artifacts", its log saying "487 thumbnails embedded for the galleries" that nothing showed.
    In a pipeline the top-level run publishes these, with the report."""
    clusters_csv = literal(str(folder / run_file("clusters")))
    create_markdown_artifact(
        key="cluster-galleries",
        markdown=gallery_markdown(
            aggregated.clusters, thumbnails, report_note=f"Every image's cluster: {clusters_csv}"
        ),
        description="clusters with embedded thumbnails",
    )
    rows: list[dict[str, Any]] = [
        {"metric": "clusters", "value": aggregated.info.n_clusters},
        {"metric": "images", "value": len(aggregated.clusters)},
        *truth_rows(aggregated.metrics, len(aggregated.clusters)),
    ]
    create_table_artifact(
        key="aggregation-metrics",
        table=rows,
        description=f"{aggregated.info.describe()}; its files: {literal(str(folder))}",
    )


def truth_rows(metrics: dict[str, Any] | None, n_images: int) -> list[dict[str, Any]]:
    """Agreement with the truth as table rows, floats to 4 places (the UI prints them whole).

    The scores' `n_items` (the images with a class) is a row only when it is fewer than the
    `n_images` clustered, named for what it counts: beside an `images` row of the same value, an
    `n_items` row read as a second, unexplained count of the same thing."""
    rows = []
    for key, value in (metrics or {}).items():
        if key == "n_items":
            if value < n_images:
                rows.append({"metric": "images_with_a_class", "value": int(value)})
            continue
        rows.append({"metric": key, "value": round(value, 4) if isinstance(value, float) else value})
    return rows


def metric_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """The `run-metrics` table, rounded for reading (`summary.json` keeps every digit).

    The UI prints a cell as it gets it: 0.9090909090909091 for a float, a JSON object for a dict.
    """
    rows = truth_rows(summary.metrics, sum(summary.cluster_sizes.values()))
    estimate = summary.cost.estimate
    rows.append({"metric": "cost_spent", "value": f"${summary.cost.spent:,.2f}"})
    if summary.cost.paid_before >= 0.005:
        rows.append({"metric": "cost_added_by_this_run", "value": f"${summary.cost.added:,.2f}"})
    if summary.cost.earlier_pools >= 0.005:
        rows.append({"metric": "cost_spent_by_run_key", "value": f"${summary.cost.by_run_key:,.2f}"})
    rows.append(
        {
            "metric": "cost_estimate",
            "value": estimate.describe() if estimate else None,
        }
    )
    evaluated = summary.intruders
    for metric, value in (
        ("intruder_accuracy", summary.intruder_accuracy),
        ("intruder_accuracy_per_image", evaluated.image_accuracy if evaluated else None),
        ("intruder_answer_accuracy", evaluated.answer_accuracy if evaluated else None),
    ):
        rows.append({"metric": metric, "value": None if value is None else round(value, 3)})
    return rows


def run_results(
    summary: RunSummary, clusters: pd.Series, thumbnails: dict[str, str], report_url: str | None
) -> None:
    """The summary artifacts of a run, in the flow run that finishes it (the top-level one).

    `cluster-galleries`, `run-metrics`, `intruder-accuracy`, `intruder-chart`, `run-report` and
    `run-overview` (links to the sub-flow runs).
    """
    where = report_link(summary, report_url)
    create_markdown_artifact(
        key="cluster-galleries",
        markdown=gallery_markdown(clusters, thumbnails, report_note=report_note(clusters, where)),
        description="clusters with embedded thumbnails",
    )
    create_table_artifact(key="run-metrics", table=metric_rows(summary), description="metrics and cost")
    if summary.intruders is not None and summary.intruders.per_cluster:
        per_cluster = [
            {"cluster": c.cluster, "accuracy": round(c.accuracy, 3), "hits": c.hits}
            for c in summary.intruders.per_cluster
        ]
        create_table_artifact(
            key="intruder-accuracy",
            table=per_cluster,
            description=intruder_description(summary.intruders, summary.clusters),
        )
        if summary.intruders.chart is not None and summary.intruders.chart.exists():
            intruder_chart(summary.intruders.chart)
    run_overview(summary, where)


def report_note(clusters: pd.Series, where: str) -> str:
    """What the galleries say of the report under them: all the images when it shows them all, else
    how many of each cluster it shows. "All images: report.html" under a 3,000-image run's galleries
    led to a report that shows 60 of each cluster (480 of 3,000), each cluster's rest in clusters.csv."""
    from tasks.thumbnails import report_per_cluster  # here: the module loads numba's kernels

    shown = report_per_cluster(clusters)
    if clusters.empty or int(clusters.value_counts().max()) <= shown:
        return f"All images: {where}"
    rest = run_file("clusters")
    return f"Every cluster, up to {shown} images of each (the rest in {rest}): {where}"


def cluster_ids(ids: Sequence[int]) -> str:
    """`cluster 26` or `clusters 8, 26`: ids named as such, as the tables name their rows; a bare
    "26" after "clusters too small to host a HIT" read as a count of 26 clusters."""
    return f"cluster{'s' * (len(ids) != 1)} {', '.join(map(str, ids))}"


def intruder_description(evaluated: Evaluation, n_clusters: int) -> str:
    """The `intruder-accuracy` table's description: the overall figures, the clusters the table
    lacks because they were too small to host a HIT (the gallery beside it shows them: a 4-image
    junk cluster was missing from the table without a word), and whether its rows rest on too few
    HITs to be read one by one (`Evaluation.thin`)."""
    per_image = "" if evaluated.image_accuracy is None else f", {evaluated.image_accuracy:.3f} per image"
    skipped = evaluated.skipped
    too_small = f"; too small to host a HIT, not in the table: {cluster_ids(skipped)}" if skipped else ""
    thin = evaluated.thin(n_clusters)
    return (
        f"Intruder accuracy per host cluster: {shown(evaluated.accuracy)} over {evaluated.n_hits} HITs"
        f"{per_image}{too_small}" + (f". {thin}" if thin else "")
    )


def catalogue_rounds(
    key: str, state: list[RoundState], labelled_now: str | None, seconds: Sequence[RoundState] = ()
) -> None:
    """The catalogue's rounds, each followed by its second round when it had one.

    A round's HITs show its new images and anchors from earlier rounds (which link them to the
    clusters), so its images shown are more than it added: the table says both (the count of images
    shown alone read as more images than the round brought). A second round shows again images
    already labelled: none of them is new.
    """
    lines = ["| round | pool | images shown | of them new | status |", "|---|---|---|---|---|"]
    seen: set[str] = set()
    # The round this run labelled has no creation time (`rounds.with_round`): it is the newest.
    for entry in sorted(state, key=lambda one: (not one.created, one.created, one.pool_id)):
        new = sum(item not in seen for item in entry.items)
        seen.update(entry.items)
        after = [(f"{entry.round}, second round", one, 0) for one in seconds if one.round == entry.round]
        for name, one, added in [(entry.round, entry, new), *after]:
            status = "completed" if one.completed else "not completed"
            lines.append(f"| {name} | {one.pool_id} | {len(one.items):,} | {added:,} | {status} |")
    if labelled_now:
        lines.append(f"\nRound `{labelled_now}` was labelled by this run.")
    create_markdown_artifact(
        key="catalogue-rounds", markdown="\n".join(lines), description=f"rounds of catalogue {key}"
    )
