"""The data that flows between stages: one frozen dataclass per stage result.

Every task and flow takes and returns these types (or plain ids, paths and frames), never a
`dict[str, Any]`, so a reader sees what a stage hands on and a type checker finds a misspelt field.
They sit at the bottom of the layers with `tasks.params`: tasks fill them, flows pass them on, and
`RunSummary` is what `summary.json` holds. Cached task results pickle them, so they live in an
importable module and hold only plain values, frames and series.

Order of a run: `HitPlan` -> `CostEstimate` -> `LabellingIds` -> `LabellingWait` -> `Labelled` ->
`Aggregated` -> `Evaluation` -> `RunSummary`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

Scores = dict[str, float]  # metric name -> value (ARI, NMI, ...), see aggregation.clustering_scores


def counted(count: int, noun: str) -> str:
    """`1 answer`, `2 answers`, `1,234 answers`: counts in messages read as English (here, at the
    bottom, so that the stage types' own sentences use it too)."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


SIZES_SHOWN = 20  # cluster sizes in a line of text (every one is in summary.json and clusters.csv)


def sizes_shown(sizes: list[int]) -> str:
    """`[14, 13, 12]`, the first SIZES_SHOWN and how many more, for the run's last lines and the
    aggregation's log: a co-association clustering of 3,000 images printed a 599-character line of
    174 sizes, one of 4,000 images a 4,962-character log line of 1,618."""
    if len(sizes) <= SIZES_SHOWN:
        return str(sizes)
    return f"[{', '.join(map(str, sizes[:SIZES_SHOWN]))}, ...] and {len(sizes) - SIZES_SHOWN:,} more"


@dataclass(frozen=True)
class Coverage:
    """How often each image appears in a HIT plan (`tasks.hits.coverage`)."""

    n_hits: int
    n_items: int
    min: int
    mean: float
    max: int
    histogram: dict[int, int]
    per_item: dict[str, int]
    connected: bool

    def brief(self) -> dict[str, Any]:
        """Everything but the per-item counts: what logs, reports and `summary.json` show."""
        return {k: v for k, v in asdict(self).items() if k != "per_item"}

    def describe(self) -> str:
        """The plan in a sentence, for the pages a person reads (the UI's artifacts), e.g. "30 HITs
        over 100 images, each image in 2-4 HITs (mean 3.0); the HITs link every image to every other"."""
        spread = f"{self.min}" if self.min == self.max else f"{self.min}-{self.max}"
        linked = (
            "the HITs link every image to every other"
            if self.connected
            else "the HITs fall into groups that share no image, so no answer relates images across them"
        )
        return (
            f"{self.n_hits:,} HITs over {self.n_items:,} images, each image in {spread} HITs "
            f"(mean {self.mean:.1f}); {linked}"
        )


@dataclass(frozen=True)
class HitPlan:
    """The HITs of a main pool (image URLs per HIT) and their coverage of the items."""

    hits: list[list[str]]
    coverage: Coverage


@dataclass(frozen=True)
class CostEstimate:
    """Upper bound of what a stage's pools cost, USD, fee included (`tasks.budget.estimate`).

    `exam` bounds the exam pool over its whole life; `exam_paid` is what of it was charged before
    this run (a catalogue's rounds share one exam pool): `total` is what the run may still spend,
    so that pool's paid part is not counted again. A 10,000 -> 10,500 round showed $45.37, the
    earlier rounds' exams included, and spent $29.77.
    """

    main: float = 0.0
    exam: float = 0.0
    intruders: float = 0.0
    exam_paid: float = 0.0

    @property
    def exam_due(self) -> float:
        """What the exam pool may still cost: its bound less what was paid before this run."""
        return round(max(self.exam - self.exam_paid, 0.0), 4)

    @property
    def total(self) -> float:
        return round(self.main + self.exam_due + self.intruders, 4)

    def as_dict(self) -> dict[str, float]:
        """The parts that add up to `total`; `exam_paid_before_this_run` only when some was."""
        data = {"main": self.main, "exam": self.exam_due}
        if self.exam_paid:
            data["exam_paid_before_this_run"] = self.exam_paid
        return {**data, "intruders": self.intruders, "total": self.total}

    def parts(self) -> dict[str, float]:
        """The parts this run may spend (what `total` sums)."""
        return {"main": self.main, "exam": self.exam_due, "intruders": self.intruders}

    def describe(self) -> str:
        """One line in dollars: "main $14.92, exam $3.90, intruders $5.20, total $24.02"; an exam
        pool paid before this run says so, and that it is not spent again."""
        exam = f"exam ${self.exam_due:,.2f}"
        if self.exam_paid:
            exam += (
                f" (the exam pool's ${self.exam_paid:,.2f} was paid before this run, not spent again)"
                if self.exam_due == 0
                else f" more (${self.exam_paid:,.2f} of the exam pool's ${self.exam:,.2f} was paid "
                "before this run, not spent again)"
            )
        return f"main ${self.main:,.2f}, {exam}, intruders ${self.intruders:,.2f}, total ${self.total:,.2f}"

    @classmethod
    def of_rounds(cls, *rounds: Labelled | None) -> CostEstimate | None:
        """The estimate of the rounds a run labelled (None: it labelled nothing): every round's main
        pool, and the exam and intruder seats once (each round's estimate counts the same ones),
        less what the exam pool was paid before the run's first round."""
        done = [one.estimate for one in rounds if one is not None]
        if not done:
            return None
        main = round(sum(one.main for one in done), 4)
        return cls(main, done[-1].exam, done[-1].intruders, done[0].exam_paid)

    def with_evaluation(self, evaluated: Evaluation | None) -> CostEstimate:
        """The estimate with the intruder stage's own: made after the labelling, at the price Toloka
        charged it, where the labelling's counted the config's (a run's summary showed intruders
        $10.00 and "30% above the estimate" for a stage checked against $13.00)."""
        if evaluated is None or evaluated.estimate is None:
            return self
        return replace(self, intruders=evaluated.estimate)


def shown(value: float | None, spec: str = ".3f") -> str:
    """A score for a log line, as `crowdclust run` prints it: 3 decimals, `n/a` when not known."""
    return "n/a" if value is None else format(value, spec)


def truth_share(metrics: Scores | None, n_images: int) -> str:
    """` (over the 80 of 82 images with a class)` when the truth scores cover fewer images than were
    clustered (a dataset's blank `class` cells are unknown classes), else nothing: a score over part
    of the images must not read as a score over all of them."""
    scored = (metrics or {}).get("n_items")
    if scored is None or scored >= n_images:
        return ""
    return f" (over the {int(scored):,} of {n_images:,} images with a class)"


def named_ids(ids: dict[str, str]) -> str:
    """Toloka ids for a log line: "exam project 1, training 2, ..." (a dataclass repr is Python)."""
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in ids.items())


@dataclass(frozen=True)
class LabellingIds:
    """The Toloka objects of a labelling run (or of a catalogue round: its own main pool)."""

    exam_project: str
    training: str
    skill: str
    exam_pool: str
    main_project: str
    main_pool: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def describe(self, main_pool: str = "main pool") -> str:
        """ "exam project 1, ..., main project 5, main pool 6"; `main_pool` what that pool is called
        (`tasks.second_round.pool_name`: a second round's is the second-round pool)."""
        ids = self.as_dict()
        ids[main_pool] = ids.pop("main_pool")
        return named_ids(ids)


@dataclass(frozen=True)
class IntruderIds:
    """The Toloka objects of an intruder evaluation."""

    project: str
    training: str
    pool: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        return named_ids(self.as_dict())


@dataclass(frozen=True)
class PoolStats:
    """One poll of a pool: Toloka's analytics (None where it gave no answer) and the wait so far."""

    completion_percentage: float | None = None
    submitted_assignments_count: float | None = None
    approved_assignments_count: float | None = None
    spent_budget: float | None = None
    ticks: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class ExamTotals:
    """Exam gating over a whole wait: assignments accepted/rejected, skill values sent."""

    accepted: int = 0
    rejected: int = 0
    skills_set: int = 0

    def describe(self) -> str:
        accepted, rejected, skills = self.accepted, self.rejected, self.skills_set
        return f"{accepted:,} exams accepted, {rejected:,} rejected, {skills:,} skill values set"

    def __add__(self, other: ExamTotals) -> ExamTotals:
        return ExamTotals(
            self.accepted + other.accepted, self.rejected + other.rejected, self.skills_set + other.skills_set
        )


@dataclass(frozen=True)
class LabellingWait:
    """The end of the labelling wait: the main pool's last poll, exam gating, what Toloka charged."""

    main: PoolStats
    exams: ExamTotals
    skills: dict[str, float]  # worker -> skill value sent
    spent_main: float | None
    spent_exam: float | None
    stopped: str = ""  # why the spend guard closed the main pool before completion ("" = completed)


@dataclass(frozen=True)
class Labelled:
    """What labelling hands to aggregation: the ids, the plan, the estimate, the export."""

    run_key: str
    ids: LabellingIds
    plan: HitPlan
    estimate: CostEstimate
    wait: LabellingWait
    export_path: Path | None = None
    n_assignments: int = 0


@dataclass(frozen=True)
class AggregationInfo:
    """How an aggregation went (logged, and `aggregation` in `summary.json`)."""

    method: str
    # Item labels: one per image of an answer (`crowdclust aggregate`'s "item labels"); an answer of
    # h images gives h(h-1)/2 pairwise labels, `n_pairwise_labels`.
    n_labels: int
    n_hits: int
    n_assignments: int
    n_workers: int
    n_clusters: int
    n_iter: int | None
    free_energy: float | None
    # A camp of workers agreeing on another grouping, in one line (`aggregation.find_dissent`).
    dissent: str | None = None
    # The images only the prior placed and what a round of them would cost (`aggregation.find_recheck`).
    recheck: str | None = None
    # The pairwise labels the model was fitted on (`PairLabels.n_labels`, `crowdclust aggregate`'s
    # "labels ... pairwise"). Last and optional: `summary.json` keeps its older keys as they were.
    n_pairwise_labels: int | None = None
    # Images no other image was grouped with by most workers who saw both (`crowdclust aggregate`'s
    # "unanchored"): the labels cannot place them. Optional, as above.
    unanchored: int | None = None
    # What the clusters must not be shown without (`aggregation.crowd_warnings`: too many images
    # unanchored, workers agreeing no better than chance, HITs answered once, ...), as
    # `crowdclust aggregate` prints them; the log and report.html show them.
    warnings: tuple[str, ...] = ()

    def log_warnings(self, logger: Any) -> None:
        """Each warning the clusters come with, one line apiece, as the aggregation stage and a run's
        closing lines both say them."""
        for warning in self.warnings:
            logger.warning("aggregation: %s", warning)

    def describe(self) -> str:
        """The aggregation in a sentence, for the logs (the camp and the recheck list follow it)."""
        # 0 or None: no embedding was fitted (the baseline; catalogues above `embedding_max_items`).
        fit = f"; the embedding took {self.n_iter} iterations" if self.n_iter else ""
        if not self.n_iter and self.method == "gomes":  # said, or a user misses embedding.csv and n_dims
            fit = (
                "; no embedding fitted (above the size it is fitted for, 3,000 images by default: the "
                "clusters do not come from it, aggregation.n_dims has no effect, no embedding.csv is written)"
            )
        answers = f"{self.n_assignments:,} answers to {self.n_hits:,} HITs by {self.n_workers:,} workers"
        if self.n_pairwise_labels is None:  # a result saved before the field existed
            labels = f"{self.n_labels:,} item labels ({answers})"
        else:
            labels = f"{self.n_pairwise_labels:,} pairwise labels ({answers}, {self.n_labels:,} item labels)"
        return f"{self.method}: {self.n_clusters} clusters from {labels}{fit}"


@dataclass(frozen=True)
class Aggregated:
    """One clustering: item -> cluster (0 = largest), the embedding, the fit, the truth if known."""

    clusters: pd.Series
    embedding: np.ndarray | None
    info: AggregationInfo
    metrics: Scores | None = None
    truth: pd.Series | None = None
    confidence: pd.Series | None = None  # item -> probability of its cluster under the fitted model
    # A camp of workers who agree on another grouping (`info.dissent` says it in one line): that
    # grouping (item -> cluster) and the camp's worker ids.
    dissent_clusters: pd.Series | None = None
    dissent_workers: tuple[str, ...] = ()
    # The images to show the crowd again (item, cluster, confidence; `info.recheck` says it in one line).
    recheck: pd.DataFrame | None = None


@dataclass(frozen=True)
class IntruderHit:
    """One intruder HIT: `images` with the intruder at 1-based position `answer`."""

    images: tuple[str, ...]
    answer: str
    host: int
    intruder_cluster: int


@dataclass(frozen=True)
class ClusterAccuracy:
    cluster: int
    accuracy: float
    hits: int


# Below this many HITs per host cluster, one HIT moves the cluster's accuracy by a fifth or more.
FEW_HITS_PER_HOST = 5


def thin_hosts_line(n_hits: int, hosted: int, n_hosts: int) -> str | None:
    """`n_hits` intruder HITs over `n_hosts` clusters that can host one (`hosted` of them did): a
    warning when that leaves each cluster's accuracy to fewer than FEW_HITS_PER_HOST HITs, else None.

    `intruders.n_hits` is fixed before the clusters are known; a catalogue of many clusters spreads
    it thin (100 HITs over 40 clusters: 2.5 each, and clusters with none at 200).
    """
    if n_hits <= 0 or n_hosts <= 0 or n_hits >= FEW_HITS_PER_HOST * n_hosts:
        return None
    return (
        f"{n_hits:,} intruder HITs over {n_hosts:,} clusters that can host one: "
        f"{n_hits / n_hosts:.1f} per cluster ({n_hosts - hosted:,} with none), so a cluster's "
        f"accuracy rests on a few HITs and only the overall figure is worth reading; "
        f"intruders.n_hits {FEW_HITS_PER_HOST * n_hosts:,} would give each about {FEW_HITS_PER_HOST}"
    )


@dataclass(frozen=True)
class Evaluation:
    """Intruder accuracy of a clustering, overall and per host cluster.

    `accuracy` is per HIT (its answers aggregated); `answer_accuracy` the share of single answers
    that name the intruder, what one worker alone would get right. Host clusters are drawn at even
    odds whatever their size, so `accuracy` weighs a junk cluster of 7 images that hosted 12 of 100
    HITs as much as 12 HITs of a 900-image one; `image_accuracy` weighs each host cluster's accuracy
    by its images (`images_hosted` of them in all): what share of the catalogue sits in clusters
    where the crowd spots the intruder.
    """

    accuracy: float | None
    n_hits: int
    per_cluster: tuple[ClusterAccuracy, ...] = ()
    skipped: tuple[int, ...] = ()
    n_answers: int = 0
    answer_accuracy: float | None = None
    image_accuracy: float | None = None
    images_hosted: int = 0
    ids: IntruderIds | None = None
    n_assignments: int = 0
    spent: float | None = None
    chart: Path | None = None
    estimate: float | None = None  # what the stage was checked against (at the price Toloka charged)

    def thin(self, n_clusters: int) -> str | None:
        """A warning when the HITs leave each host cluster's accuracy to a handful of HITs, else None.

        `n_clusters`: the clustering's clusters (those too small to host a HIT are `skipped`). The
        log of the evaluation, the report and the `intruder-accuracy` artifact say it in these words:
        a 4,000-image catalogue's report listed 25 clusters' accuracies from 2-6 HITs each and did
        not say that only the overall figure was worth reading, which only the evaluation's log did.
        """
        hosts = n_clusters - len(self.skipped)
        return thin_hosts_line(self.n_hits, len(self.per_cluster), hosts)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = list(self.skipped)
        data["per_cluster"] = [asdict(c) for c in self.per_cluster]
        data["chart"] = str(self.chart) if self.chart else None
        return data


@dataclass(frozen=True)
class Cost:
    """Money of a run: what Toloka charged, and the estimate that was checked against the budget."""

    spent: float
    estimate: CostEstimate | None
    # What every pool of the run key cost: in a pipeline more than `spent` when a rerun after a
    # config change left pools of the earlier settings behind (an intruder pool of another n_hits,
    # say), paid all the same; in a catalogue, whose `spent` is what this run added, the earlier
    # rounds too. None where it was not read.
    by_run_key: float | None = None
    # What the run key's charges grew by while this run ran: less than `spent` for a run that resumed
    # (or repeated) one whose answers were paid before, so that a rerun of a finished run does not
    # read as paying its cost again. None where it was not read.
    added: float | None = None
    # What Toloka charged per labelling answer over the config's price (`budget.price_ratio_seen_task`,
    # 1.0: the config's price), read only when `spent` is above the estimate, to tell why. None: not read.
    price_ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {"spent": self.spent, "estimate": self.estimate.as_dict() if self.estimate else None}
        if self.by_run_key is not None:
            data["spent_by_run_key"] = self.by_run_key
        if self.added is not None:
            data["added_by_this_run"] = self.added
        if self.over_estimate is not None:
            data["above_estimate"] = self.over_estimate_text()
        return data

    @property
    def over_estimate(self) -> float | None:
        """How far `spent` went above the estimate, as a share (None within 2% of it or below, or no
        estimate): the estimate is an upper bound, so a run above it was priced wrong, most often
        by a `budget.fee_rate` below the platform's fee."""
        total = self.estimate.total if self.estimate is not None else 0.0
        if total <= 0 or self.spent <= total * 1.02:
            return None
        return round(self.spent / total - 1, 4)

    def over_estimate_text(self) -> str:
        """ "30% above the estimate: check budget.fee_rate ..." ("" when not above it).

        Not that advice when Toloka charged the config's price (`price_ratio` 1.0): then the pools
        hold answers that earlier runs of the key bought under other settings. A run resumed with
        hits.overlap lowered from 3 to 2 (or fewer exam seats, or intruders.overlap lowered) said "17%
        above the estimate: check budget.fee_rate", having paid nothing itself, with the fee right."""
        over = self.over_estimate
        if over is None:
            return ""
        if self.price_ratio is not None and self.price_ratio <= 1.0:
            return (
                f"{over:.0%} above the estimate, at the config's price per answer: the run key's pools "
                "hold answers that earlier runs bought under other settings (a higher overlap, more exam "
                "seats), paid all the same"
            )
        return (
            f"{over:.0%} above the estimate: check budget.fee_rate against the platform's fee (the log "
            "says what it charged per answer)"
        )

    @property
    def paid_before(self) -> float:
        """What of `spent` earlier runs of the key paid (0 when all of it is this run's, or not read)."""
        return 0.0 if self.added is None else round(max(0.0, self.spent - self.added), 4)

    @property
    def earlier_pools(self) -> float:
        """What pools of the run key outside this result cost (0 when none or not read)."""
        return 0.0 if self.by_run_key is None else round(max(0.0, self.by_run_key - self.spent), 4)


@dataclass(frozen=True)
class RoundState:
    """One round pool of a growing catalogue, as Toloka sees it."""

    pool_id: str
    round: str
    completed: bool
    created: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class CatalogueInfo:
    """What a catalogue run adds to its summary."""

    catalogue_key: str
    n_items: int
    new_items: int
    round: str | None
    round_pools: tuple[str, ...]
    # Images of the file that are in no cluster yet and left for the next run: added after a round
    # that stopped, which this run finishes first. `n_items` counts them, clusters.csv does not.
    waiting: int = 0


@dataclass(frozen=True)
class SecondRound:
    """A run's second round (`hits.second_round_share`): the images it showed again, its pool."""

    images: int
    hits: int
    assignments: int
    main_pool: str

    def describe(self) -> str:
        """`41 images shown again (12 HITs, 36 answers)`: the closing lines and the run's overview."""
        again = f"{counted(self.hits, 'HIT')}, {counted(self.assignments, 'answer')}"
        return f"{counted(self.images, 'image')} shown again ({again})"

    @classmethod
    def of(cls, labelled: Labelled) -> SecondRound:
        """The round's figures from its labelling: the images of its plan (anchors not counted)."""
        plan = labelled.plan
        return cls(
            len(plan.coverage.per_item), len(plan.hits), labelled.n_assignments, labelled.ids.main_pool
        )


@dataclass(frozen=True)
class Attempt:
    """One attempt of a run (a flow run, or a Retry of one) as the run folder's `attempts.json`
    keeps it: when it began, its wall time and its stages' seconds until it ended or was last
    seen (a killed attempt keeps what its last heartbeat wrote), whether the run ended there, and
    what the run key's pools had cost when it began (`Stopwatch.charged_from`; None when not read)."""

    started: str  # ISO 8601, UTC
    wall: float
    laps: dict[str, float]
    done: bool = False
    charged_before: float | None = None


@dataclass(frozen=True)
class Attempts:
    """The attempts a run took, when more than one: how many, since when, the last one's seconds.

    A resumed run's report showed only the last attempt's durations: a 10,000-image run that
    waited hours for its crowd, then resumed, read as taking minutes.
    """

    count: int
    since: str  # ISO 8601, UTC: when the first began
    last_wall: float
    last_timings: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        last = {"wall_seconds": self.last_wall, "timings": self.last_timings}
        return {"count": self.count, "since": self.since, "last_attempt": last}

    def describe(self) -> str:
        """ "2 attempts since 2026-12-05 07:12 UTC (the last one 61.2 s)" """
        since = self.since.replace("T", " ")[:16]
        return f"{self.count} attempts since {since} UTC (the last one {self.last_wall:.1f} s)"


@dataclass(frozen=True)
class ExamOutcome:
    """How the crowd did on the exam, read from Toloka when the labelling ends.

    A run against a crowd of half spammers ended with the same lines as one against a good crowd:
    the exam kept them out of the main pool, but the user never learnt that 47% of the exam answers
    were rejected (only a log line said so). `summary.json`, the report and the run's last lines
    carry this now.
    """

    accepted: int  # exam answers accepted (the golden grouping reproduced)
    rejected: int  # exam answers rejected
    takers: int  # workers with a value of the run's skill (every worker whose exams were graded)
    qualified: int  # of them, those at exam.min_skill or above: admitted to the main pool
    min_skill: float

    @property
    def rejected_share(self) -> float | None:
        answers = self.accepted + self.rejected
        return self.rejected / answers if answers else None

    def describe(self) -> str:
        """ "270 of 570 exam answers rejected (47%); 45 of 190 workers qualified (skill >= 75)" """
        share = self.rejected_share
        rejected = (
            "no exam answer reviewed"
            if share is None
            else f"{self.rejected:,} of {self.accepted + self.rejected:,} exam answers rejected ({share:.0%})"
        )
        return (
            f"{rejected}; {self.qualified:,} of {self.takers:,} workers qualified "
            f"(skill >= {self.min_skill:g})"
        )


@dataclass(frozen=True)
class RunSummary:
    """The machine-readable end of a run: `summary.json` is exactly `to_json()` of this."""

    clusters: int
    ari: float | None
    nmi: float | None
    intruder_accuracy: float | None
    cost: Cost
    wall_seconds: float
    report: Path
    summary: Path
    cluster_sizes: dict[str, int]
    metrics: Scores | None
    intruders: Evaluation | None
    run_key: str
    toloka_ids: LabellingIds | None
    coverage: Coverage | None
    aggregation: AggregationInfo
    timings: dict[str, float] = field(default_factory=dict)
    catalogue: CatalogueInfo | None = None
    second_round: SecondRound | None = None
    # When the run took more than one attempt (a resume, a Retry): `wall_seconds` and `timings`
    # then add up every attempt's, and this says how many, since when, and the last one's figures.
    attempts: Attempts | None = None
    exam: ExamOutcome | None = None  # how the crowd did on the exam (None: not read, e.g. no labelling)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: flat keys as documented in docs/running.md; catalogue fields at the top level."""
        data: dict[str, Any] = {
            "clusters": self.clusters,
            "ari": self.ari,
            "nmi": self.nmi,
            "intruder_accuracy": self.intruder_accuracy,
            "cost": self.cost.as_dict(),
            "wall_seconds": self.wall_seconds,
            "report": str(self.report),
            "cluster_sizes": self.cluster_sizes,
            "metrics": self.metrics,
            "intruders": self.intruders.as_dict() if self.intruders else None,
            "run_key": self.run_key,
            "toloka_ids": self.toloka_ids.as_dict() if self.toloka_ids else None,
            "coverage": self.coverage.brief() if self.coverage else None,
            "aggregation": asdict(self.aggregation),
            "timings": self.timings,
            "summary": str(self.summary),
            "second_round": asdict(self.second_round) if self.second_round else None,
        }
        if self.attempts is not None:
            data["attempts"] = self.attempts.as_dict()
        if self.exam is not None:
            data["exam"] = {**asdict(self.exam), "rejected_share": self.exam.rejected_share}
        if self.catalogue is not None:
            data.update(asdict(self.catalogue), round_pools=list(self.catalogue.round_pools))
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def describe(self) -> str:
        """The run's outcome in a line, for the flow's last log line (`done: ...`)."""
        intruders = shown(self.intruder_accuracy)
        added = self.cost.added
        this_run = (
            f" (${added:,.2f} of it by this run)"
            if added is not None and self.cost.paid_before >= 0.005
            else ""
        )
        return (
            f"{self.clusters} clusters, ARI {shown(self.ari)}, intruder accuracy {intruders}, "
            f"cost ${self.cost.spent:,.2f}{this_run}, {self.wall_seconds:.0f} s"
            + (f" over {self.attempts.count} attempts" if self.attempts else "")
            + f"; report {self.report}"
        )


@dataclass(frozen=True)
class IntruderWait:
    """The end of the intruder wait: the pool's accepted answers and what Toloka charged."""

    export: pd.DataFrame
    spent: float | None
    stopped: str = ""  # the spend guard's reason when it closed the pool early
