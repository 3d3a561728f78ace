"""`RunFolder`: every file of `runs/<name>/`, its name and its writer, in one place.

The folder is `runs/<name>/` for the default run key and `runs/<name>__<run key>/` for any other
(`tasks.params.run_dir_of`), so two run keys of one config never share one.

Flows and tasks ask the folder for a path or hand it a value to write; no other module spells a
file name of the run folder. What a person finds there afterwards:

| file | what |
|---|---|
| `hits.json` | the HIT plan with per-item coverage |
| `assignments_main.tsv` | the raw export of the main pool (written before anything parses it) |
| `assignments_second.tsv` | the raw export of a run's second round (`hits.second_round_share`) |
| `assignments_all.tsv` | a catalogue's exports of all its round pools, or a run's two rounds, concatenated |
| `assignments_intruders.tsv` | the raw export of the intruder pool |
| `clusters.csv` | the clustering: item, cluster, confidence[, class] |
| `embedding.csv`, `metrics.json` | its embedding, agreement with the truth |
| `dissent.csv`, `dissent_workers.csv` | a camp of workers' other grouping (item, cluster), its workers |
| `recheck.csv` | the images only the prior placed, to show the crowd again (item, cluster, confidence) |
| `thumbnails.json` | image URL -> small JPEG data URI, fetched once at aggregation (galleries, report) |
| `intruder_hits.json`, `intruders.png` | the intruder HITs, the accuracy chart |
| `report.html`, `summary.json` | the report and `RunSummary` as JSON |
| `rounds/<round>/`, `before-round/` | a round's plan (a catalogue's, or `second`); where anchors came from |
| `run_key.txt` | the run key whose files these are (`RunFolder.claim`) |
| `attempts.json` | the run's attempts (a resume is one more): start, wall time, seconds per stage |

`runs/<name>/` would be shared by the derived keys of one config (its dataset's images or its seed
changed, or a catalogue and a single run of one name): it stays with the key that first wrote there,
and another gets `runs/<name>__<key>/` (`RunFolder.of`).
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from aggregation.uncertain import written
from aggregation.unreadable import short_last_row
from tasks.atomic_file import create_exclusive, replaced, write_atomic
from tasks.params import RUN_KEY_SEPARATOR, PipelineParams, keyed_run_dir, run_dir_of
from tasks.stages import Aggregated, Attempt, Evaluation, HitPlan, IntruderHit, RunSummary

log = logging.getLogger(__name__)  # shipped to the run's log (`tasks.run_log`)

RUNS_URL_ENV = "CROWDCLUST_RUNS_URL"  # base URL under which the service serves its runs folder
RUNS_DIR_ENV = "CROWDCLUST_RUNS_DIR"  # that folder
CONFIDENCE_DIGITS = 4  # in clusters.csv and recheck.csv


class DamagedFile(ValueError):
    """A file of the run folder that does not read as written (cut short, empty): the message names
    it and says how to get it whole again."""


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run (or a sub-folder of it, e.g. a catalogue round)."""

    root: Path

    @classmethod
    def of(cls, params: PipelineParams) -> RunFolder:
        """The run's folder: `runs/<name>/` for the default run key, `runs/<name>__<run key>/` for
        another (`PipelineParams.run_dir`), so runs with different keys keep their own files.

        Derived keys differ with the dataset's images and the seed, and each is "the default":
        `runs/<name>/` stays with the key that first wrote there (`run_key.txt`), and another
        derived key gets its own folder. Before, a run with seed 1 replaced the seed-0 run's
        exports (12,579 paid answers), clusters and report, and the seed-0 run's artifacts then
        linked to the seed-1 report.
        """
        folder, key = cls(params.run_dir), params.resolved_run_key
        if RUN_KEY_SEPARATOR not in folder.root.name and folder.owner() not in (None, key):
            return cls(keyed_run_dir(params.runs_dir, params.name, key))
        # A key given with --run-key whose files `runs/<name>/` already holds (it was derived when
        # they were written: the advice after a reordered dataset) stays there; before, it began a
        # second folder of reports and clusters for one paid job.
        shared = cls(run_dir_of(params.runs_dir, params.name))
        if folder.root != shared.root and not folder.root.exists() and shared.owner() == key:
            return shared
        return folder

    def taken_by(self, params: PipelineParams) -> str | None:
        """The other key whose files keep `runs/<name>/` when this run writes its own folder."""
        shared = RunFolder(params.run_dir)
        return shared.owner() if shared.root != self.root else None

    def create(self) -> RunFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def key_file(self) -> Path:
        return self.root / "run_key.txt"

    def owner(self) -> str | None:
        """The run key whose files the folder holds: `run_key.txt`, else (a folder written before
        it existed, or whose `run_key.txt` an older version left empty when it was killed) the key
        in `summary.json`; None when neither names one."""
        key = self._recorded_key()
        if key:
            return key
        try:
            key = json.loads(self.summary.read_text()).get("run_key")
        except (OSError, ValueError, AttributeError):
            return None
        return str(key) if key else None

    def _recorded_key(self) -> str | None:
        try:
            return self.key_file.read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def claim(self, run_key: str) -> bool:
        """Record that the folder holds `run_key`'s files (`run_key.txt`), so that a run of another
        key finds it taken (`RunFolder.of`); False when another key holds it.

        The file is created exclusively, and whole: two derived keys of one name that both found
        the folder free (runs started at the same moment) would otherwise both write into it, and
        the later one's `run_key.txt` would hide the earlier one's files. It used to be created
        empty and written after: a run killed in between left it empty, and every later run of the
        key wrote its labelling's files (`hits.json`, the export) to a second folder,
        `runs/<name>__<key>/`, and its clusters and report to this one. An empty one is claimed
        again (`_claim_empty`).
        """
        self.create()
        owner = self.owner()
        if owner is not None:
            if owner == run_key and self._recorded_key() is None:  # before run_key.txt, or left empty
                self._claim_empty(run_key)
            return owner == run_key
        try:
            create_exclusive(self.key_file, run_key + "\n")
        except FileExistsError:
            if self._recorded_key() is None:
                return self._claim_empty(run_key)
            return self.owner() == run_key
        return True

    def _claim_empty(self, run_key: str) -> bool:
        """Write `run_key.txt` where it is missing or empty, under a lock on the folder (two runs
        that both found it empty must not both take it)."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._recorded_key() is None:
                write_atomic(self.key_file, run_key + "\n")
            return self._recorded_key() == run_key
        finally:
            os.close(fd)  # and the lock with it

    @classmethod
    def take(cls, params: PipelineParams) -> RunFolder:
        """The run's folder, claimed for its key: `RunFolder.of`, or the key's own folder when
        another key claimed `runs/<name>/` in the meantime."""
        key = params.resolved_run_key
        folder = cls.of(params)
        if not folder.claim(key):
            folder = cls(keyed_run_dir(params.runs_dir, params.name, key))
            folder.claim(key)
        return folder

    def round(self, round_id: str) -> RunFolder:
        """Where a catalogue round keeps its HIT plan."""
        return RunFolder(self.root / "rounds" / round_id)

    def evaluation(self, key: str) -> RunFolder:
        """Where an intruder evaluation started on its own keeps its files (`evaluations/<HITs' digest>`).

        In the run's own folder it would replace the files of the evaluation that the run's
        `report.html` and `summary.json` describe (a user's 60-HIT evaluation overwrote the run's
        100-HIT one there, and its cost was in no file)."""
        return RunFolder(self.root / "evaluations" / key)

    def before_round(self) -> RunFolder:
        """Where the clustering that a round's anchors were drawn from is kept."""
        return RunFolder(self.root / "before-round")

    # ------------------------------------------------------------------------------------- paths

    def export(self, kind: str) -> Path:
        """Raw assignment export: `main`, `second` (a run's second round), `all` (rounds) or `intruders`."""
        return self.root / f"assignments_{kind}.tsv"

    @property
    def hits(self) -> Path:
        return self.root / "hits.json"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters.csv"

    @property
    def dissent(self) -> Path:
        return self.root / "dissent.csv"

    @property
    def dissent_workers(self) -> Path:
        return self.root / "dissent_workers.csv"

    @property
    def recheck(self) -> Path:
        return self.root / "recheck.csv"

    @property
    def embedding(self) -> Path:
        return self.root / "embedding.csv"

    @property
    def thumbnails(self) -> Path:
        return self.root / "thumbnails.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def intruder_hits(self) -> Path:
        return self.root / "intruder_hits.json"

    @property
    def intruder_chart(self) -> Path:
        return self.root / "intruders.png"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def relative(self, path: Path) -> str:
        """How the report links a file of this folder."""
        return path.relative_to(self.root).as_posix()

    # ----------------------------------------------------------------------------------- writers

    # Every file is replaced whole (`tasks.atomic_file`): a run killed while it wrote one leaves the
    # old file or the new one. Written in place, a kill left it cut short, and the next run or
    # command read what was left.

    def _ready(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write(self, path: Path, text: str) -> Path:
        return write_atomic(self._ready(path), text)

    def write_plan(self, plan: HitPlan) -> Path:
        data = {"hits": plan.hits, "coverage": asdict(plan.coverage)}
        return self._write(self.hits, json.dumps(data, indent=1))

    def write_export(self, frame: pd.DataFrame, kind: str) -> Path:
        path = self._ready(self.export(kind))
        with replaced(path) as temporary:
            frame.to_csv(temporary, sep="\t", index=False)
        return path

    def write_clustering(self, aggregated: Aggregated) -> None:
        """`clusters.csv` (item, cluster, confidence[, class]), `embedding.csv`, with truth `metrics.json`,
        and a dissenting camp's `dissent.csv` and `dissent_workers.csv` (removed when there is none, so
        a re-run in the same folder leaves no stale camp), and `recheck.csv` (removed when empty)."""
        table = aggregated.clusters.rename("cluster").rename_axis("item").reset_index()
        if aggregated.confidence is not None:
            table["confidence"] = written(table["item"].map(aggregated.confidence), CONFIDENCE_DIGITS)
        if aggregated.truth is not None:
            table["class"] = table["item"].map(aggregated.truth)
        with replaced(self._ready(self.clusters)) as temporary:
            table.sort_values(["cluster", "item"]).to_csv(temporary, index=False)
        if aggregated.embedding is not None:
            with replaced(self.embedding) as temporary:
                pd.DataFrame(aggregated.embedding).to_csv(temporary)
        if aggregated.metrics is not None:
            self._write(self.metrics, json.dumps(aggregated.metrics, indent=2))
        if aggregated.dissent_clusters is None:
            self.dissent.unlink(missing_ok=True)
            self.dissent_workers.unlink(missing_ok=True)
        else:
            from aggregation.dissent import write_camp  # here: the module loads numba's kernels

            with replaced(self.dissent) as grouping, replaced(self.dissent_workers) as workers:
                write_camp(aggregated.dissent_clusters, aggregated.dissent_workers, grouping, workers)
        if aggregated.recheck is None or aggregated.recheck.empty:
            self.recheck.unlink(missing_ok=True)
        else:
            with replaced(self._ready(self.recheck)) as temporary:
                recheck = aggregated.recheck
                recheck = recheck.assign(confidence=written(recheck["confidence"], CONFIDENCE_DIGITS))
                recheck.to_csv(temporary, index=False, float_format=f"%.{CONFIDENCE_DIGITS}f")

    def read_clusters(self, path: Path | None = None) -> pd.Series:
        """Item -> cluster from `clusters.csv` (this folder's, or `path`); `DamagedFile` when it is
        empty, cut short or lacks a cell it needs.

        An evaluation started on its own reads it: a file cut short in its last row (written in place
        by a run that was killed) was read with that row's item cut or its cluster missing, and
        intruder HITs were made, and paid for, from what was left.
        """
        source = path or self.clusters
        rewrite = (
            "run the same `crowdclust run` command again to rewrite it (its stages are cached: nothing "
            "is paid twice), or make it again with `crowdclust aggregate` from the run's export"
        )
        text = source.read_bytes()
        if not text.strip():
            raise DamagedFile(f"{source} is empty (a run killed while it wrote it?): {rewrite}")
        short = short_last_row(source, delimiter=",")
        if short is not None:
            line, cells, header = short
            raise DamagedFile(
                f"{source} is cut short: its last line (line {line}) has {cells} of the header's "
                f"{header} cells and no line end, as a file whose writing was stopped leaves it (a run "
                f"killed while it wrote it?): {rewrite}"
            )
        table = pd.read_csv(io.BytesIO(text))
        missing = [column for column in ("item", "cluster") if column not in table.columns]
        if missing:
            raise DamagedFile(f"{source} has no column {', '.join(missing)}: is it a clusters.csv? {rewrite}")
        blank = table["item"].isna() | pd.to_numeric(table["cluster"], errors="coerce").isna()
        if blank.any():
            line = int(blank.to_numpy().argmax()) + 2
            raise DamagedFile(
                f"{source}, line {line}: an item without a cluster (a damaged file?): {rewrite}"
            )
        return pd.Series(table["cluster"].to_numpy(), index=table["item"].astype(str).to_numpy())

    def write_thumbnails(self, thumbnails: dict[str, str]) -> Path:
        return self._write(self.thumbnails, json.dumps(thumbnails, sort_keys=True))

    def read_thumbnails(self) -> dict[str, str]:
        """URL -> data URI (empty when the folder has none, e.g. a clustering made elsewhere).

        A file that does not read (cut short by a kill, by an older version that wrote it in place)
        is a cache of images fetched for free: the galleries go without it, with a warning, and
        the next aggregation writes it again."""
        if not self.thumbnails.exists():
            return {}
        try:
            data = json.loads(self.thumbnails.read_text())
        except (OSError, ValueError) as error:
            data = error
        if not isinstance(data, dict):
            log.warning(
                "%s does not read (%s): the galleries go without thumbnails; the next aggregation "
                "writes it again",
                self.thumbnails,
                data if isinstance(data, Exception) else "not a mapping",
            )
            return {}
        return data

    def url_of(self, path: Path) -> str | None:
        """Where `path` is served over http: `$CROWDCLUST_RUNS_URL/<path under $CROWDCLUST_RUNS_DIR>`.

        The local service serves its `runs/` folder read-only and gives flow runs both variables;
        None outside the service or for a file outside the served folder.
        """
        base, served = os.environ.get(RUNS_URL_ENV), os.environ.get(RUNS_DIR_ENV)
        if not base or not served:
            return None
        try:
            inside = path.resolve().relative_to(Path(served).resolve())
        except ValueError:
            return None
        return f"{base.rstrip('/')}/{quote(inside.as_posix())}"

    def write_intruder_hits(self, hits: list[IntruderHit]) -> Path:
        return self._write(self.intruder_hits, json.dumps([asdict(h) for h in hits], indent=1))

    @property
    def evaluation_summary(self) -> Path:
        return self.root / "evaluation.json"

    def write_evaluation(self, evaluation: Evaluation) -> Path:
        """An evaluation started on its own: accuracy overall and per cluster, answers, cost."""
        return self._write(self.evaluation_summary, json.dumps(evaluation.as_dict(), indent=1, default=str))

    def write_report(self, page: str) -> Path:
        return self._write(self.report, page)

    @property
    def attempts(self) -> Path:
        return self.root / "attempts.json"

    def read_attempts(self) -> list[Attempt]:
        """The attempts recorded so far (none when the file is missing or unreadable: a warning
        says that the earlier attempts' times are lost then, rather than the report leaving them
        out unsaid)."""
        try:
            data = json.loads(self.attempts.read_text())
            return [Attempt(**entry) for entry in data]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as error:
            log.warning(
                "%s does not read (%s): the times of this run's earlier attempts are lost, and its "
                "wall time counts from this attempt",
                self.attempts,
                error,
            )
            return []

    def write_attempts(self, attempts: list[Attempt]) -> Path | None:
        """Replace `attempts.json` whole (a reader never sees half of it); nothing when the folder
        does not exist yet: a run refused before it wrote anything leaves no folder behind."""
        if not self.root.is_dir():
            return None
        return write_atomic(self.attempts, json.dumps([asdict(entry) for entry in attempts], indent=2))

    def write_summary(self, summary: RunSummary) -> Path:
        return self._write(self.summary, summary.to_json())
