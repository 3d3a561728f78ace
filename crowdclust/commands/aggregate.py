"""`crowdclust aggregate`: a Toloka assignments export -> `item,cluster,confidence` CSV.

Only typer is imported at module level: the root CLI imports this module for every command, and
numba/pandas/the aggregation core are paid for only when `aggregate` actually runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    import pandas as pd

# A camp of workers agreeing on another grouping is printed whenever found (`aggregation.dissent`);
# from this share of the labels it is a warning: the crowd is split, not a few workers astray.
DISSENT_WARNING = 0.25
# Below this informedness (sensitivity + specificity - 1) a worker agrees with the clusters little
# better than chance: a spammer scores about 0, a colour-sorting worker too, a careful one about 0.9.
UNINFORMED = 0.2
# Of those, a worker who hardly ever puts two clusters' images together (specificity at least this)
# and still puts some of one cluster's together (sensitivity at least FINER_SENSITIVITY) splits the
# clusters finer, by style and colour say: a grouping, not chance, and not a spammer to block.
FINER_SPECIFICITY = 0.95
FINER_SENSITIVITY = 0.05
# Above this share of the items moved by --min-cluster-size, say so: the option merges clusters
# whatever the evidence, and at 700 on 10,000 images it left one cluster of 93% moved items.
DISSOLVED_WARNING = 0.25

EXIT_BAD_INPUT = 2
CONFIDENCE_DIGITS = 6  # of `-o` and `--recheck-output`: fixed, so the file is the same on any platform


class Method(StrEnum):
    gomes = "gomes"
    coassociation = "coassociation"


def _n(count: int, noun: str) -> str:
    """`1 item`, `2 items`, `1,234 items`: the summary's counts read as English."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_INPUT)


def _read_truth(path: Path):
    """Read `item,class` (or `image,class`, in any case) into a Series item -> class.

    Comma- or tab-separated, by the header line: a pipeline's `dataset.tsv` (image URL, class and
    attributes, tab-separated) is a truth file as it stands. Other columns are ignored.
    """
    import pandas as pd

    from aggregation.unreadable import ARCHIVE_ERRORS, archive_problem, utf16_text

    archive = archive_problem(path)
    if archive is not None:
        _fail(f"truth file {path} {archive}")
    utf16 = utf16_text(path, "comma- or tab-separated")  # without a byte-order mark it reads as UTF-8
    if utf16 is not None:
        _fail(f"truth file {path}: {utf16}")
    try:  # the header line, then the whole file, both decompressed by the name's ending as pandas does
        header = pd.read_csv(path, sep="\0", header=None, nrows=1, dtype=str).iloc[0, 0]
        sep = "\t" if "\t" in header else ","
        if sep not in header and ";" in header:  # a spreadsheet's CSV under a decimal-comma locale
            _fail(
                f"truth file {path}: line 1 has no comma or tab and reads as semicolon-separated ({header}): "
                "save it comma- or tab-separated (a spreadsheet set to a decimal comma separates by ;)"
            )
        width, widest, beyond = _widths(path, sep)
        if beyond is not None:
            line, count = beyond
            _fail(
                f"truth file {path}, line {line}: {count} fields where the header has {width}, and a cell "
                f"beyond the header's that is not empty: a {'tab' if sep == chr(9) else 'comma'} too many?"
            )
        if widest > width:  # only empty cells beyond the header (a spreadsheet's empty last column)
            frame = pd.read_csv(
                path, dtype=str, sep=sep, keep_default_na=False, header=None, names=range(widest)
            )
            frame = frame.iloc[1:, :width].set_axis(frame.iloc[0, :width].tolist(), axis=1)
            frame = frame.reset_index(drop=True)
        else:
            frame = pd.read_csv(path, dtype=str, sep=sep, keep_default_na=False)
    except UnicodeDecodeError:  # pandas' message gave a byte offset in its read buffer
        from aggregation.unreadable import not_utf8

        why = not_utf8(path, "truth file", "comma- or tab-separated")
        _fail(f"truth file {path}{', ' if why.startswith('line') else ': '}{why}")
    except (OSError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError, *ARCHIVE_ERRORS) as exc:
        from aggregation.unreadable import compressed, decompressed

        # Compressed bytes under a plain name fail to decode, or, when they hold a quote (a gzip
        # header's time stamp may), to parse: "EOF inside string starting at row 0" named no cause.
        with contextlib.suppress(OSError, EOFError, ValueError, *ARCHIVE_ERRORS):
            packed = compressed(path, decompressed(path))
            if packed is not None:
                _fail(f"truth file {path}: not text: {packed}")
        _fail(f"cannot read truth file {path}: {exc}")
    except ImportError:  # .zst without the zstandard package
        from aggregation.unreadable import NO_ZSTANDARD

        _fail(f"truth file {path} {NO_ZSTANDARD}")
    # Headers are matched whatever their case, as in a run's dataset file (`Item,Class` was refused).
    named = {column.strip().lower(): column for column in reversed(frame.columns)}  # the first wins
    frame = frame.rename(columns={named[name]: name for name in ("item", "image", "class") if name in named})
    key = "item" if "item" in frame.columns else "image" if "image" in frame.columns else None
    if key is None or "class" not in frame.columns:
        _fail(f"truth file {path} needs columns item (or image) and class; found {', '.join(frame.columns)}")
    empty = frame[key].str.strip() == ""
    if empty.any():
        _fail(f"truth file {path}, line {int(empty.to_numpy().argmax()) + 2}: empty {key}")
    # A blank class is an unknown one, as in a run's dataset: the scores cover the items that have
    # one (the `truth` line counts the rest as clustered without a class). It stopped the command.
    blank = frame["class"].str.strip() == ""
    if blank.any():
        lines = [str(int(row) + 2) for row in blank.to_numpy().nonzero()[0]]
        shown = ", ".join(lines[:5]) + (f" and {len(lines) - 5:,} more" if len(lines) > 5 else "")
        print(f"note: truth file {path}: {len(lines):,} item(s) with a blank class (line {shown}): "
              "scored as items without a class", file=sys.stderr)  # fmt: skip
    repeats = frame[key].duplicated()
    if repeats.any():
        row = int(repeats.to_numpy().argmax())
        first = int((frame[key] == frame[key].iloc[row]).to_numpy().argmax())
        _fail(f"truth file {path}, line {row + 2}: {key} {frame[key].iloc[row]} repeats line {first + 2}")
    known = frame[~blank]
    if known.empty:
        _fail(f"truth file {path}: every class is blank, so there is nothing to score against")
    return pd.Series(
        known["class"].to_numpy(), index=pd.Index(known[key].to_numpy(), name="item"), name="class"
    )


def _widths(path: Path, sep: str) -> tuple[int, int, tuple[int, int] | None]:
    """The header's fields, the most fields of a row, and (line, fields) of the first row with a
    non-empty cell beyond the header's, if any.

    A pipeline's dataset.tsv whose rows end in a tab (a spreadsheet's empty last column), which a
    run reads, was misread as a truth file: pandas took the first column for the index when the
    first row had one field more than the header ("line 6: image mens_formal repeats line 5", the
    classes read as the images), or stopped at a later such row ("Error tokenizing data").
    """
    import csv

    from pandas.io.common import get_handle

    with get_handle(path, "r", compression="infer", encoding="utf-8") as handles:
        reader = csv.reader(handles.handle, delimiter=sep)
        width = len(next(reader, []))
        widest, beyond = width, None
        for fields in reader:
            widest = max(widest, len(fields))
            if beyond is None and any(cell.strip() for cell in fields[width:]):
                beyond = (reader.line_num, len(fields))
    return width, widest, beyond


def _check_writable(paths: list[Path | None]) -> None:
    """Refuse an output path that cannot be written before the fit (7 s at 10,000 images), not after."""
    import os

    for path in paths:
        if path is None or str(path) == "-":
            continue
        if path.is_dir():
            _fail(f"cannot write {path}: it is a directory")
        folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            _fail(f"cannot write {path}: {folder} is not a writable directory")
        if path.exists() and not os.access(path, os.W_OK):
            _fail(f"cannot write {path}: permission denied")


def _file_key(path: Path) -> tuple:
    """What makes two paths one file: its device and inode when it exists (a link, `./x`, another
    spelling of the folder), else where it would be created. A folder not made yet counts as the
    real one it will be (`new/../export.tsv` is `export.tsv` once `new` is made)."""
    target = path.absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    where = Path(os.path.normpath(existing.resolve() / target.relative_to(existing)))
    try:
        stat = where.stat()
    except OSError:
        return ("path", where)
    return ("inode", stat.st_dev, stat.st_ino)


def _check_distinct(inputs: list[tuple[str, Path]], outputs: list[tuple[str, Path | None]]) -> None:
    """Refuse an output that is one of the inputs or another output, before anything is read or written.

    `-o export.tsv` (a name completed by the shell) replaced the user's export with the clusters,
    `-o` on the truth file replaced the truth, and two options naming one file kept the last one
    written: each with exit code 0 and nothing said. A device such as /dev/null may take several.
    """
    seen = {_file_key(path): f"{what} {path}" for what, path in inputs}
    for option, path in outputs:
        if path is None or str(path) == "-" or (path.exists() and not path.is_file()):
            continue
        key = _file_key(path)
        if key in seen:
            _fail(
                f"{option} {path} is {seen[key]}: writing there would replace it; "
                "give the output a path of its own"
            )
        seen[key] = f"the {option} file"


def _check_truth_items(path: Path, truth: pd.Series, items: pd.Series, exports: str) -> None:
    """Stop before the fit when the truth file names none of the exports' items.

    Scores against such a file are meaningless, and the usual cause (image URLs on one side, file
    names on the other) is plain from one item of each side. `isdisjoint` stops at the first common
    item, so a matching file costs only the set of its items (0.05 s at 50,000).
    """
    if set(truth.index).isdisjoint(items):
        _fail(
            f"truth file {path}: none of its {len(truth):,} items appear in {exports} "
            f"(the truth file has e.g. {truth.index[0]}, {exports} {items.iloc[0]})"
        )


def aggregate(
    exports: Annotated[
        list[Path],
        typer.Argument(
            help="Toloka assignments export(s) (TSV, as get_assignments_df reads it); several rounds' "
            "exports are clustered together.",
            metavar="EXPORT...",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the item,cluster,confidence CSV ('-': standard output, and the "
            "summary to standard error).",
        ),
    ],
    method: Annotated[
        Method,
        # `<gomes|coassociation>` in the table's type column left the help ~21 columns at 80, and
        # words such as item,cluster,confidence were cut; the help names both choices.
        typer.Option(metavar="<str>", help="gomes (the crowd-clustering model) or coassociation."),
    ] = Method.gomes,
    seed: Annotated[
        int, typer.Option(help="Random seed of the model (restarts, mixture): 0 to 2**64 - 1.")
    ] = 0,
    truth: Annotated[
        Path | None, typer.Option(help="Optional item,class CSV: print ARI, NMI, ... against it.")
    ] = None,
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Skip bad export rows (and report them) instead of failing.")
    ] = False,
    min_cluster_size: Annotated[
        int | None,
        typer.Option(
            help="Dissolve smaller clusters into their most likely neighbours (default: the model "
            "decides; an item joins its most likely cluster unless its labels rule out every one).",
        ),
    ] = None,
    dissent_output: Annotated[
        Path | None,
        typer.Option(help="Write the grouping a camp of dissenting workers agrees on (item,cluster CSV)."),
    ] = None,
    dissent_workers: Annotated[
        Path | None,
        typer.Option(help="Write the worker ids of that camp (one column, worker)."),
    ] = None,
    workers_output: Annotated[
        Path | None,
        typer.Option(
            help="Write each worker's agreement with the clusters (worker, answers, labels, agreement, "
            "sensitivity, specificity, informedness, ...), least informed first: the workers to block."
        ),
    ] = None,
    unanswered_output: Annotated[
        Path | None,
        typer.Option(
            help="Write the images of the export(s) that no answer is left for (one column, item): "
            "those shown only by rejected, skipped, expired or active assignments or by skipped bad rows, "
            "to send again."
        ),
    ] = None,
    recheck_output: Annotated[
        Path | None,
        typer.Option(
            help="Write the images only the prior placed (item,cluster,confidence CSV): a second "
            "round of HITs among them with anchors (aggregation.followup.plan), aggregated "
            "with this export, links the small styles."
        ),
    ] = None,
) -> None:
    """Cluster the images of a Toloka export; write item,cluster,confidence and print a summary."""
    from aggregation import MAX_SEED  # the package alone: neither pandas nor numba

    started = time.perf_counter()
    if not 0 <= seed <= MAX_SEED:
        # Checked here rather than with typer's min/max: one `error:` line like every other bad input.
        _fail(f"--seed {seed}: must be from 0 to 2**64 - 1")
    if min_cluster_size is not None and min_cluster_size < 1:
        _fail(f"--min-cluster-size {min_cluster_size}: must be 1 or more")
    outputs = [
        ("--output", output),
        ("--dissent-output", dissent_output),
        ("--dissent-workers", dissent_workers),
        ("--recheck-output", recheck_output),
        ("--workers-output", workers_output),
        ("--unanswered-output", unanswered_output),
    ]
    for option, path in outputs[1:]:
        # Only -o writes to standard output: the others wrote a file named "-" in the working
        # directory, two of them the same one, the second over the first.
        if path is not None and str(path) == "-":
            _fail(f"{option} -: only -o writes to standard output; give {option} a file path")
    inputs = [("the export", path) for path in exports] + ([("the truth file", truth)] if truth else [])
    _check_distinct(inputs, outputs)
    _check_writable([path for _, path in outputs])
    from aggregation.startup import lean_imports

    lean_imports()  # pandas and numba without pyarrow, scipy.linalg and cffi (a third of the start-up)
    from aggregation import (
        CoAssociationClustering,
        CrowdClustering,
        ExportFormatError,
        clustering_scores,
        confidence_scores,
        doubtful_clusters,
        find_dissent,
        read_export,
        single_item_clusters,
    )
    from aggregation.crowd_warnings import crowd_warnings
    from aggregation.pairs import group_use
    from aggregation.recheck import MEETS_ALL, find_recheck
    from aggregation.uncertain import UNCERTAIN_BELOW, written
    from aggregation.workers import answers_per_worker, judged, worker_quality

    labels, problems, unanswered = _read_exports(exports, lenient, read_export, ExportFormatError)
    from aggregation.addresses import respellings

    # One picture under two spellings of its URL (a round's input file re-saved) is two items.
    respelled = respellings(labels["item"].unique())
    exported = "the export" if len(exports) == 1 else "the exports"
    truth_series = _read_truth(truth) if truth is not None else None
    if truth is not None:
        _check_truth_items(truth, truth_series, labels["item"], exported)
    for problem in problems[:10]:
        print(f"skipped {problem}", file=sys.stderr)
    if len(problems) > 10:
        print(f"... and {_n(len(problems) - 10, 'more skipped row')}", file=sys.stderr)

    n_items = labels["item"].nunique()
    if min_cluster_size is not None and min_cluster_size > n_items:
        # Known before the fit: no cluster can be larger than all the items.
        _fail(
            f"--min-cluster-size {min_cluster_size:,}: {exported} {'has' if len(exports) == 1 else 'have'} "
            f"only {_n(n_items, 'item')}; lower it"
        )
    model = (
        # The clusters and confidences do not come from the embedding, and this command writes nothing
        # else: fitting it would cost its kernels' loading and sweeps (a fifth of an 82-image run).
        CrowdClustering(random_state=seed, min_cluster_size=min_cluster_size, embedding_max_items=0)
        if method is Method.gomes
        else CoAssociationClustering(random_state=seed, min_cluster_size=min_cluster_size)
    )
    from aggregation.consensus import MinClusterSizeError

    try:
        clusters = model.fit_predict(labels)
    except MinClusterSizeError as exc:
        _fail(f"--min-cluster-size {min_cluster_size:,}: {exc}; lower it")
    except ValueError as exc:
        _fail(f"{', '.join(map(str, exports))}: {exc}")
    table = clusters.rename_axis("item").reset_index()
    table["confidence"] = written(model.confidence_.reset_index(drop=True), CONFIDENCE_DIGITS)
    # Fixed precision: the file is byte-identical whatever the platform's float formatting.
    to_stdout = str(output) == "-"
    if to_stdout:
        closed = not _to_stdout(table, float_format=f"%.{CONFIDENCE_DIGITS}f")
    else:
        _write_csv(table, output, float_format=f"%.{CONFIDENCE_DIGITS}f")

    # The baseline's clusters are not checked: the camp's grouping is the model's.
    dissent = find_dissent(model, labels) if method is Method.gomes else None
    _write_dissent(dissent, dissent_output, dissent_workers, checked=method is Method.gomes)
    recheck = find_recheck(model, labels)
    alone = recheck.unanchored
    use = group_use(labels, clusters)
    singles, doubtful = single_item_clusters(clusters), doubtful_clusters(clusters, model.confidence_)
    # The model's table has them already (as `n_labels`, next to its embedding's columns).
    fitted = getattr(model, "worker_params_", None)
    quality = worker_quality(model.pairs_, clusters.to_numpy()) if fitted is None else fitted
    low = quality["informedness"] < UNINFORMED
    enough = judged(model.pairs_, clusters.to_numpy())
    thin = int((low & ~enough).sum())  # a pair or two the clusters may have wrong decides theirs
    low &= enough
    finer = (
        low & (quality["specificity"] >= FINER_SPECIFICITY) & (quality["sensitivity"] >= FINER_SENSITIVITY)
    )
    uninformed, splitting = int((low & ~finer).sum()), int(finer.sum())
    uncertain = int((model.confidence_ < UNCERTAIN_BELOW).sum())
    if workers_output is not None:
        _write_workers(quality, answers_per_worker(model.pairs_), dissent, workers_output)
    notes = [f"{singles:,} of them a single item"] if singles else []
    notes += (
        [f"{_n(doubtful, 'cluster')} of several items with a mean confidence below 0.5"] if doubtful else []
    )
    if unanswered_output is not None:
        import pandas as pd

        _write_csv(pd.DataFrame({"item": unanswered}), unanswered_output)
    if recheck_output is not None:
        shown = recheck.table.assign(confidence=written(recheck.table["confidence"], CONFIDENCE_DIGITS))
        _write_csv(shown, recheck_output, float_format=f"%.{CONFIDENCE_DIGITS}f")
    lines = [
        f"method      {method.value}",
        f"items       {clusters.size:,}",
        f"workers     {model.pairs_.n_workers:,}{_workers_note(uninformed, splitting, workers_output, thin)}",
        f"labels      {model.pairs_.n_labels:,} pairwise",
        f"assignments {model.pairs_.n_assignments:,} ({len(labels):,} item labels)",
        f"clusters    {model.n_clusters_:,}" + (f" ({'; '.join(notes)})" if notes else ""),
        f"uncertain   {_n(uncertain, 'item')} with confidence < {UNCERTAIN_BELOW}",
        f"unanchored  {_n(alone, 'item')} no other item was grouped with by most workers"
        + (
            f" ({recheck.set_apart:,} of them set apart from every item they were shown with, "
            f"{MEETS_ALL:.0%} of the others or more: placed alone)"
            if recheck.set_apart
            else ""
        ),
        f"groups      at most {use.most} per answer (~{use.images:.0f} images each); "
        f"{use.saturated:.0%} of the answers used {use.most} for images of more clusters",
        f"dissent     {_dissent_line(dissent, method)}",
        f"recheck     {recheck.summary()}",
        f"skipped     {_n(len(problems), 'row')}",
        f"unanswered  {_n(len(unanswered), 'image')} of {exported} with no answer left, in no cluster",
        f"seconds     {time.perf_counter() - started:.2f} (fit {model.fit_seconds_:.2f})",
        f"output      {'standard output' if to_stdout else output}",
    ]
    if truth_series is not None:
        scores = clustering_scores(clusters, truth_series)
        untrue = int((~clusters.index.isin(truth_series.index)).sum())
        outside = truth_series.index[~truth_series.index.isin(clusters.index)]
        lines.append(
            f"truth       {_n(int(scores.pop('n_items')), 'item')} in common; {untrue:,} clustered "
            f"without a class in the truth file; {len(outside):,} of its items not clustered"
            + _unclustered_why(outside, unanswered, exported)
        )
        calibration = confidence_scores(clusters, model.confidence_, truth_series)
        scores |= {f"confidence_{name}": value for name, value in calibration.items()}
        lines += [f"{name:<20}{value:.4f}" for name, value in scores.items()]
    # With `-o -` the CSV has standard output to itself, so that it can be piped.
    print("\n".join(lines), file=sys.stderr if to_stdout else sys.stdout)
    if unanswered:
        hint = "" if unanswered_output else "; --unanswered-output writes them all"
        one = len(unanswered) == 1
        print(
            f"warning: {_n(len(unanswered), 'image')} of {exported} {'has' if one else 'have'} no answer "
            "left (shown only by rejected, skipped, expired or active assignments or by skipped rows) "
            f"and {'is' if one else 'are'} in no cluster: "
            f"{', '.join(unanswered[:5])}{', ...' if len(unanswered) > 5 else ''}. Send them again{hint}.",
            file=sys.stderr,
        )
    if respelled:
        shown = ", ".join(" and ".join(group) for group in respelled[:3])
        one = len(respelled) == 1
        print(
            f"warning: {_n(len(respelled), 'image')} of {exported} {'appears' if one else 'appear'} under "
            f"more than one spelling of {'its' if one else 'their'} URL, and each spelling is clustered as "
            f"an image of its own: {shown}{', ...' if len(respelled) > 3 else ''}; they name one "
            "picture (they differ in the scheme, the host's case, a default port, %-encoding, a "
            "#fragment, or in an accented letter written as one character or as a letter and an accent): "
            "write one spelling in every export, or the picture is listed twice and its answers are "
            "split between the two.",
            file=sys.stderr,
        )
    moved, dissolved = model.dissolved_
    if moved > DISSOLVED_WARNING * clusters.size:
        print(
            f"warning: --min-cluster-size {min_cluster_size:,} moved {moved:,} of {clusters.size:,} items "
            f"({moved / clusters.size:.0%}) out of {_n(dissolved, 'cluster')} below that size into the "
            f"{_n(model.n_clusters_, 'cluster')} left, whatever their labels say: the clusters and "
            "confidences describe that merge, not the crowd's grouping. Lower the option, or leave it "
            "out to let the model decide.",
            file=sys.stderr,
        )
    for warning in crowd_warnings(model, labels, recheck, use):
        print(f"warning: {warning}", file=sys.stderr)
    if dissent is not None and dissent.label_share >= DISSENT_WARNING:
        from aggregation.dissent import ADVICE

        hint = "" if dissent_output else " (--dissent-output writes that grouping)"
        print(f"warning: the crowd is split. {dissent.summary()}. {ADVICE}{hint}.", file=sys.stderr)
    if to_stdout and closed:
        print(
            "warning: standard output was closed before the clusters were all written (its reader "
            "stopped early, as head does): the other outputs and this summary are complete; -o FILE "
            "writes every cluster",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def _to_stdout(table: pd.DataFrame, **options: str) -> bool:
    """Write `table` as CSV to standard output; False when its reader closed it first.

    `-o - | head` closed the pipe while the clusters were written: click ended the command there,
    with exit code 1 and no word, so the summary (with its warnings) and every other output asked
    for (`--workers-output`, ...) were never written. Standard output is then pointed at /dev/null,
    as Python's documentation advises, so that its flush at exit does not fail again.
    """
    try:
        table.to_csv(sys.stdout, index=False, **options)
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # a standard output without a descriptor
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - standard output for the rest of the process
        return False
    return True


def _read_exports(exports: list[Path], lenient: bool, read_export, format_error) -> tuple:
    """All exports' labels as one table, the skipped rows (each named by its file when several), and
    the images no answer is left for (sorted; one export's such image answered in another is not).

    An assignment in two exports (a pool's results downloaded twice, an export of day 1 and one of
    days 1-2) is counted once, with a note (`_without_repeats`); with another answer in each it
    stops the command, as does a worker's second assignment to a HIT of another export.
    """
    import pandas as pd

    tables, problems, unanswered = [], [], set()
    for path in exports:
        try:
            reading = read_export(path, strict=not lenient)
        except format_error as exc:
            _fail(f"{path}: {exc}")
        for note in reading.notes:
            print(f"note: {path}: {note}", file=sys.stderr)
        tables.append(reading.labels)
        unanswered.update(reading.unanswered)
        problems += [f"{path}: {problem}" if len(exports) > 1 else problem for problem in reading.problems]
    if len(tables) > 1:
        tables = _without_repeats(exports, tables)
        answers = pd.concat(
            [table[["task", "worker"]].drop_duplicates().assign(file=k) for k, table in enumerate(tables)]
        )
        again = answers[answers.duplicated(["task", "worker"])]
        if len(again):
            task, worker, k = again.iloc[0]
            first = answers[(answers["task"] == task) & (answers["worker"] == worker)]["file"].iloc[0]
            _fail(f"{exports[k]}: the answer of worker {worker} to task {task} is also in {exports[first]}")
    labels = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
    if len(tables) > 1 and unanswered:
        unanswered -= set(labels["item"].unique())
    return labels, problems, sorted(unanswered)


def _without_repeats(exports: list[Path], tables: list) -> list:
    """`tables` (the labels of each export) without the answers of an assignment an earlier export
    holds too, with a note per export that had any: the same assignment id with the same answer
    (`INPUT:images`, `OUTPUT:result`, worker and task id) is one answer, downloaded twice.

    The same assignment id with another answer stops the command, naming both files, both rows and
    the field: one of the files was edited, and which answer is right is not for the command to
    guess. The exports' rows are read again only when two of them share a worker's answer to a task.
    """
    import pandas as pd

    from aggregation.adapter import IMAGES, RESULT, WORKER, answer_rows

    pairs = pd.concat(
        [table[["task", "worker"]].drop_duplicates().assign(file=k) for k, table in enumerate(tables)]
    )
    shared = pairs[pairs.duplicated(["task", "worker"], keep=False)]
    if not len(shared):
        return tables
    rows = {k: answer_rows(exports[k]) for k in sorted(set(shared["file"]))}
    fields = {IMAGES: IMAGES, RESULT: RESULT, "worker": WORKER, "task": "task id"}  # column: as named
    tables = list(tables)
    for k in sorted(rows):
        later = rows[k].assign(n=rows[k].groupby("assignment").cumcount())
        for first in sorted(f for f in rows if f < k):
            earlier = rows[first].assign(n=rows[first].groupby("assignment").cumcount())
            both = later.merge(earlier, on=["assignment", "n"], suffixes=("", "_first"))
            if not len(both):
                continue
            for field, named in fields.items():
                differ = both[both[field].fillna("") != both[f"{field}_first"].fillna("")]
                if len(differ):
                    one = differ.iloc[0]
                    _fail(
                        f"{exports[k]} row {one['row']} and {exports[first]} row {one['row_first']}: "
                        f"assignment {one['assignment']} has another {named} in each file; one of them "
                        "was changed after Toloka wrote it: download the pool's results again, or give "
                        "only one of the two files"
                    )
            repeated = set(zip(both["task"], both["worker"], strict=True))
            table = tables[k]
            keep = [pair not in repeated for pair in zip(table["task"], table["worker"], strict=True)]
            tables[k] = table[keep]
            later = later[~later["assignment"].isin(both["assignment"])]
            n = both["assignment"].nunique()
            print(
                f"note: {exports[k]}: {_n(n, 'assignment')} also in {exports[first]}, with the same "
                "answers: counted once",
                file=sys.stderr,
            )
    return tables


def _unclustered_why(outside: pd.Index, unanswered: list[str], exported: str) -> str:
    """Why the truth file's items outside the clusters are: never shown, or shown without an answer.

    "7 of its items not clustered" read as if the command had dropped them; 35-image HITs drawn at
    random had never shown those 7 images.
    """
    if not len(outside):
        return ""
    left = int(outside.isin(unanswered).sum())
    why = [f"{len(outside) - left:,} not in {exported}"] if len(outside) > left else []
    why += [f"{left:,} with no answer left"] if left else []
    return f" ({', '.join(why)})"


def _workers_note(uninformed: int, splitting: int, workers_output: Path | None, thin: int = 0) -> str:
    """The workers line's note: those who agree with the clusters no better than chance, and apart
    from them those whose informedness is as low because they split the clusters finer.

    A third of a crowd splitting each style by colour (specificity 1.00, sensitivity ~0.17) read
    "39 of them agree with the clusters no better than chance": a list of spammers to block. Those
    below it on fewer than `MIN_JUDGED` labels of one kind are counted as too few to tell: 7 careful
    workers were called chance for setting apart the one pair the clusters had wrongly merged.
    """
    from aggregation.workers import MIN_JUDGED

    notes = []
    if uninformed:
        notes.append(
            f"{uninformed:,} of them agree with the clusters no better than chance: "
            f"informedness < {UNINFORMED}"
        )
    if splitting:
        notes.append(
            f"{splitting:,} {'more' if uninformed else 'of them'} split the clusters finer but hardly ever "
            f"join two (informedness < {UNINFORMED}, specificity >= {FINER_SPECIFICITY}): a finer grouping, "
            "such as style and colour, not chance"
        )
    listed = bool(notes)
    if thin:
        notes.append(
            f"{thin:,} {'more' if listed else 'of them'} score informedness < {UNINFORMED} on fewer than "
            f"{MIN_JUDGED} labels of pairs the clusters put together (or keep apart): too few to tell "
            "from chance"
        )
    if not notes:
        return ""
    return f" ({'; '.join(notes)}{'' if workers_output or not listed else '; --workers-output lists them'})"


def _dissent_line(dissent, method: Method) -> str:
    if method is not Method.gomes:
        return "not checked (the baseline)"
    return "none: no camp of workers agrees on another grouping" if dissent is None else dissent.summary()


def _write_dissent(dissent, grouping: Path | None, workers: Path | None, checked: bool = True) -> None:
    """Write the camp's grouping and worker ids where asked; with no camp, say so and write nothing."""
    from aggregation.dissent import write_camp

    if dissent is None:
        for path in (grouping, workers):
            if path is not None:
                earlier = path.is_file()
                path.unlink(missing_ok=True)  # an earlier run's camp must not pass for this one's
                removed = " (the file of an earlier run removed)" if earlier else ""
                why = "no dissenting camp" if checked else "the baseline does not look for a dissenting camp"
                print(f"{why}: {path} not written{removed}", file=sys.stderr)
        return
    try:
        with contextlib.ExitStack() as written:
            grouping, workers = (
                None if path is None else written.enter_context(_replaced(path))
                for path in (grouping, workers)
            )
            write_camp(dissent.clusters, dissent.workers, grouping, workers)
    except OSError as exc:
        _fail(f"cannot write the dissent: {exc}")


def _write_workers(quality, answers, dissent, path: Path) -> None:
    """The workers' table, least informed first (ties by worker id), with the dissenting camp marked."""
    columns = ["labels", "agreement", "sensitivity", "specificity", "informedness", "mean_abs_llr"]
    table = quality.rename(columns={"n_labels": "labels"})[columns]
    table.insert(0, "answers", answers)
    table = table.reset_index()
    if dissent is not None:
        table["dissenting_camp"] = table["worker"].isin(set(dissent.workers))
    _write_csv(table.sort_values(["informedness", "worker"], kind="mergesort"), path, float_format="%.6f")


@contextlib.contextmanager
def _replaced(path: Path) -> Iterator[Path]:
    """Where to write `path`'s new content so that it replaces the file whole (`tasks.atomic_file`).

    Written in place, an output cut short by Ctrl-C or a kill lost the earlier run's file and left
    part of the new one, which whatever reads it next takes for the whole. A path that is not a
    regular file (`/dev/stdout`, a named pipe) is written as it is, and a symbolic link keeps
    pointing at the file it names.
    """
    from tasks.atomic_file import replaced

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        yield path
        return
    with replaced(path.resolve()) as temporary:
        yield temporary


def _write_csv(table: pd.DataFrame, path: Path, **options: str) -> None:
    """`table` as CSV at `path`, replaced whole; one error line when it cannot be written."""
    try:
        with _replaced(path) as temporary:
            table.to_csv(temporary, index=False, **options)
    except OSError as exc:  # the file's name is the line's own: the system's words alone
        _fail(f"cannot write {path}: {exc.strerror or exc}")
