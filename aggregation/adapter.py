"""Toloka assignment export -> long-format labels (task, worker, item, label).

The export has one row per task of an assignment. `INPUT:images`
holds the task's images as array_json without brackets; `OUTPUT:result` holds one `{"group": k}`
object per image, either as array_json without brackets or as full JSON text. Both occur in real
exports, so both are read. Every problem is reported with the 1-based data row (as in the file,
the header not counted) and the assignment id, because a person has to find that row afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aggregation.pairs import REQUIRED
from aggregation.unreadable import (
    ARCHIVE_ERRORS,
    NO_ZSTANDARD,
    archive_problem,
    cut_short,
    export_not_utf8,
    ragged_row,
    utf16_text,
)

__all__ = ["ExportFormatError", "ExportReading", "load_export", "read_export"]

IMAGES = "INPUT:images"
RESULT = "OUTPUT:result"
WORKER = "ASSIGNMENT:worker_id"
ASSIGNMENT = "ASSIGNMENT:assignment_id"
SUITE = "ASSIGNMENT:task_suite_id"
TASK = "ASSIGNMENT:task_id"
STATUS = "ASSIGNMENT:status"
SHOWN = "HIT of these images"  # the task column derived when the export has no task id
REQUIRED_COLUMNS = (IMAGES, RESULT, WORKER, ASSIGNMENT)
# Answers that are not answers: rejected by the requester, a task the worker skipped or let expire, or
# one still in a worker's hands (ACTIVE: its OUTPUT:result is empty until submitted, and an export of
# every status taken while the pool runs has such rows; they stopped the command as bad rows).
# A web-UI export of "all" statuses has them; toloka-kit's default is accepted ones only.
NOT_ANSWERS = ("REJECTED", "SKIPPED", "EXPIRED", "ACTIVE")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the labels' dtype


class ExportFormatError(ValueError):
    """An export (or one of its rows) cannot be read; the message names the row and the problem."""


class ExportCutShort(ExportFormatError):
    """The export stops inside its last row (its writing was stopped): whatever else it may be, that
    is what to tell. Read again without quoting, a file cut inside a quoted cell was blamed on its
    first row's JSON and on spreadsheet quoting (a cut lands in `INPUT:images` more often than not)."""


class _RowError(Exception):
    """Internal: a problem in one row, turned into ExportFormatError or a lenient skip."""


@dataclass
class ExportReading:
    """The result of reading an export.

    `labels` has one row per (assignment, image); `problems` lists the rows skipped in lenient
    mode (empty in strict mode, where the first problem raises instead); `notes` say how the export
    was read where a user could not tell (rows of rejected assignments left out, HITs told apart by
    their images for want of a task id). `unanswered` lists, sorted, the images that only rows left
    out (not answers) or skipped (lenient mode) show: they have no label, so no clustering places
    them, and before they vanished without a word, though they are the ones to send again.
    """

    labels: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)


def _is_empty(cell: object) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float) and np.isnan(cell):
        return True
    return isinstance(cell, str) and not cell.strip()


def _parse_array(cell: str, what: str) -> list:
    """Parse array_json without brackets, or full JSON text starting with '['."""
    text = cell.strip()
    try:
        value = json.loads(text if text.startswith("[") else "[" + text + "]")
    except json.JSONDecodeError as exc:
        # Some of json's messages end in "at" ("Unterminated string starting at"): one "at" is enough.
        raise _RowError(
            f"{what} is not valid JSON ({exc.msg.removesuffix(' at')} at char {exc.pos})"
        ) from None
    if not isinstance(value, list):
        raise _RowError(f"{what} is not a JSON array")
    return value


def _parse_group(obj: object, position: int) -> int:
    group = obj.get("group") if isinstance(obj, dict) else obj
    if isinstance(group, bool):
        group = None
    if isinstance(group, float) and group.is_integer():
        group = int(group)
    if isinstance(group, str) and group.strip().lstrip("-").isdigit():
        group = int(group)
    if not isinstance(group, int):
        raise _RowError(f"OUTPUT:result element {position + 1} has a non-integer group: {obj!r}")
    if not INT64_MIN <= group <= INT64_MAX:
        raise _RowError(f"OUTPUT:result element {position + 1} has a group beyond 64-bit integers: {obj!r}")
    return group


def _parse_row(images_cell: object, result_cell: object, worker: object) -> list[tuple[str, int]]:
    """Validate one export row; return its (item, group) pairs."""
    for column, cell in ((IMAGES, images_cell), (RESULT, result_cell), (WORKER, worker)):
        if _is_empty(cell):
            raise _RowError(f"empty cell in {column}")
    images = _parse_array(str(images_cell), IMAGES)
    results = _parse_array(str(result_cell), RESULT)
    if not images:
        raise _RowError(f"{IMAGES} holds no images")
    if results and not any(map(_group_like, results)):
        raise _RowError(
            f'{RESULT} holds {_shape(results)}, where one {{"group": n}} object per image of {IMAGES} '
            f"was expected ({_counted(len(images), 'image')} here)"
        )
    if len(images) != len(results):
        groups, shown = _counted(len(results), "group"), _counted(len(images), "image")
        raise _RowError(f"{RESULT} has {groups} but {IMAGES} has {shown}")
    shown = [_image_name(image, f"{IMAGES} element {position + 1}") for position, image in enumerate(images)]
    pairs = []
    for position, (image, obj) in enumerate(zip(shown, results, strict=True)):
        group = _parse_group(obj, position)
        item = image
        if isinstance(obj, dict) and "image" in obj:
            item = _image_name(obj["image"], f"{RESULT} element {position + 1}")
            if item not in shown:
                raise _RowError(
                    f"{RESULT} element {position + 1} names image {item}, which the row's {IMAGES} "
                    "does not show: an answer can only group the images of its HIT"
                )
        pairs.append((item, group))
    return pairs


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _group_like(value: object) -> bool:
    """An element a grouping is made of (`_parse_group` reads it or names what is wrong with it): a
    `{"group": n}` object, or a bare group number."""
    if isinstance(value, dict):
        return "group" in value
    if isinstance(value, str):
        return value.strip().lstrip("-").isdigit()
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shape(values: list) -> str:
    """What a result cell holds, in words: `a JSON object with key "groups"`, `2 JSON arrays`.

    A cell of another shape than the grouping (another template's output, an object of image ->
    group) read as "OUTPUT:result has 1 groups but INPUT:images has 10 images", which said neither
    what was expected nor what was found.
    """
    if len(values) == 1:
        return _kind(values[0], one=True)
    kinds = list(dict.fromkeys(_kind(value, one=False) for value in values))
    if len(kinds) == 1:
        return f"{len(values)} {kinds[0]}"
    return f"{len(values)} JSON values ({', '.join(kinds)})"


def _quoted(value: object, width: int = 40) -> str:
    text = str(value)
    return json.dumps(text if len(text) <= width else text[: width - 1] + "…", ensure_ascii=False)


def _kind(value: object, one: bool) -> str:
    """One JSON value in words, as one (`a JSON array`) or as one of several alike (`JSON arrays`)."""
    if isinstance(value, dict) and value:
        keys = [_quoted(key) for key in value]
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        named = f"key{'s' if len(keys) > 1 else ''} {', '.join(keys[:3])}{more}"
        return f"a JSON object with {named}" if one else f"JSON objects with {named}"
    if isinstance(value, dict):
        return "an empty JSON object" if one else "empty JSON objects"
    if isinstance(value, list):
        return "a JSON array" if one else "JSON arrays"
    if isinstance(value, str):
        return f"the string {_quoted(value)}" if one else "strings"
    return json.dumps(value)  # null, true, false


def _image_name(value: object, where: str) -> str:
    """An image's name without surrounding whitespace, or the reason it is not one.

    Stripped because a space pasted before a URL (` https://.../1.jpg`) made a second item of the
    same image; the output names the image as stripped, the same in `INPUT:images` and an answer's
    `image` key.
    """
    if not isinstance(value, str) or not value.strip():
        raise _RowError(f"{where} is not a non-empty image name: {value!r}")
    return value.strip()


def _load_frame(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    return source if isinstance(source, pd.DataFrame) else load_export(source)


def load_export(source: str | os.PathLike) -> pd.DataFrame:
    """An export TSV as a frame of strings (empty cells NaN), the one way every reader loads it.

    Every cell stays the text of the file: a plain `pd.read_csv` turns a worker id `0019` into the
    number 19, the same worker as `19`, so the pipeline's flows counted fewer workers than
    `crowdclust aggregate` on the same file. Raises `ExportFormatError` (without the file name,
    which the caller adds) for a missing, empty, unreadable or cut-short file.
    """
    path = Path(source)
    if not path.is_file():  # the caller names the file, as for every other error of its reading
        raise ExportFormatError("is a directory, not an export file" if path.is_dir() else "no such file")
    archive = archive_problem(path)
    if archive is not None:
        raise ExportFormatError(f"export file {archive}")
    utf16 = utf16_text(path)
    if utf16 is not None:
        raise ExportFormatError(f"export file is {utf16}")
    try:  # compressed by its name's ending (.gz, .bz2, .xz, .zip, .zst), as pandas infers
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ExportFormatError("export file is empty (no header)") from None
    except UnicodeDecodeError:
        raise ExportFormatError(export_not_utf8(path)) from None
    except pd.errors.ParserError as exc:  # a quoted cell cut short, say
        short = cut_short(path)
        if short is not None:
            raise ExportCutShort(short) from None
        raise ExportFormatError(ragged_row(path) or f"export file is not a readable TSV: {exc}") from None
    except (EOFError, OSError, zlib.error, *ARCHIVE_ERRORS) as exc:  # compressed, cut short or not compressed
        raise ExportFormatError(f"export file cannot be decompressed ({type(exc).__name__}: {exc})") from None
    except ImportError:  # the only codec pandas imports from outside the standard library
        raise ExportFormatError(f"export file {NO_ZSTANDARD}") from None
    short = cut_short(path)
    if short is not None:
        raise ExportCutShort(short)
    return frame


def _bulk_json(cells: pd.Series) -> list:
    """Parse a column of array_json cells (with or without brackets) in one json.loads call."""
    text = cells.to_numpy(dtype=object)
    wrapped = [cell if cell.startswith("[") else "[" + cell + "]" for cell in text]
    value = json.loads("[" + ",".join(wrapped) + "]")
    if len(value) != len(text):  # a cell held "],[" and split in two
        raise ValueError("cells do not parse one by one")
    return value


# A result cell that is nothing but {"group": n} objects (the common case), with or without brackets.
# n has at most 18 digits, so it fits an int64; anything else is read as JSON.
_GROUP = r'\{\s*"group"\s*:\s*-?(?:0|[1-9][0-9]{0,17})\s*\}'
_GROUPS = rf"{_GROUP}(?:\s*,\s*{_GROUP})*"
GROUPS_ONLY = re.compile(rf"\[\s*{_GROUPS}\s*\]|{_GROUPS}")


def _plain_groups(cells: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Each cell's number of objects and all group numbers in order, when every cell is GROUPS_ONLY.

    Then the only digits in the column are the group numbers, and they are read in one pass over
    the joined text instead of as one JSON dict per image: at 100,000 images (7 M dicts) that
    took 16 s and made the reader's peak memory.
    """
    if not all(GROUPS_ONLY.fullmatch(cell) for cell in cells.to_numpy(dtype=object)):
        return None  # stops at the first other cell
    counts = cells.str.count(r"\{").to_numpy(dtype=np.int64)
    digits = re.sub(r"[^0-9-]+", " ", ",".join(cells.to_numpy(dtype=object)))
    groups = np.fromstring(digits, dtype=np.int64, sep=" ")
    return (counts, groups) if len(groups) == int(counts.sum()) else None


def _json_groups(
    cells: pd.Series, items: list[str], lengths: np.ndarray
) -> tuple[list[str], np.ndarray] | None:
    """The items (an object's "image" overrides INPUT:images) and group numbers of JSON result cells."""
    results = _bulk_json(cells)
    if any(
        not isinstance(res, list) or len(res) != n for res, n in zip(results, lengths.tolist(), strict=True)
    ):
        return None
    objects = [obj for row in results for obj in row]
    if not all(type(obj) is dict and type(obj.get("group")) is int for obj in objects):
        return None
    if any("image" in obj for obj in objects):
        named = [obj.get("image", item) for obj, item in zip(objects, items, strict=True)]
        if not all(type(item) is str and item for item in named):
            return None
        ends = np.cumsum(lengths).tolist()
        if any(
            not set(named[end - n : end]) <= set(items[end - n : end])
            for end, n in zip(ends, lengths.tolist(), strict=True)
        ):
            return None  # an image the row does not show: the row-by-row reader names it
        items = named
    groups = [obj["group"] for obj in objects]
    if not all(INT64_MIN <= group <= INT64_MAX for group in groups):
        return None  # the row-by-row reader names the row
    return items, np.fromiter(groups, np.int64, len(groups))


# A column name of a Toloka export, as a cell: the header line of a second export in the file.
COLUMN_NAME = re.compile(r"\ufeff?(?:INPUT|OUTPUT|GOLDEN|HINT|ACCEPT|ASSIGNMENT):\S*")
JOINED = (
    "a header line, not an answer: two exports joined into one file (cat day1.tsv day2.tsv)? Give "
    "each export as an argument of its own: they are clustered together, an assignment in both "
    "counted once"
)


def _header_line(images: object, *others: object) -> bool:
    """Whether a row's `INPUT:images` cell and its other cells given (but empty ones) are column
    names, as a second export's header line has them where two exports were joined with `cat`: the
    row read as an answer whose `INPUT:images is not valid JSON`, named by its "assignment
    ASSIGNMENT:assignment_id"."""
    cells = [images, *(cell for cell in others if not _is_empty(cell))]
    return all(isinstance(cell, str) and COLUMN_NAME.fullmatch(cell.strip()) for cell in cells)


def _reused_task(worker: object, task: object, task_column: str, first: object) -> str:
    """Why a worker's second assignment to one task id, showing other images, is not read."""
    return (
        f"worker {worker} answered {task_column} {task} before, in assignment {first}, with other "
        f"images: {task_column} names two HITs here (ids restarted for a second batch?), and the two "
        "answers would be read as one grouping, each group number of one matched with the other's. "
        f"Make the ids unique, or remove the {task_column} column to have HITs told apart by their "
        "images"
    )


def _no_repeats(frame: pd.DataFrame, task_column: str, items: list[str], lengths: np.ndarray) -> bool:
    """True when no (task, worker, item) can occur twice: every (task, worker) is one row, and no row
    shows an image twice. Checked on the rows, not on one entry per image (8 s at 100,000 images)."""
    if frame.duplicated([task_column, WORKER]).any():
        return False
    ends = np.cumsum(lengths).tolist()
    return all(len(set(items[end - n : end])) == n for end, n in zip(ends, lengths.tolist(), strict=True))


def _read_fast(frame: pd.DataFrame, task_column: str, one_id_one_hit: bool = True) -> pd.DataFrame | None:
    """The whole export at C speed when every row is well formed; None sends the caller to the
    row-by-row reader, which names the first bad row (or reads the rarer encodings)."""
    columns = [IMAGES, RESULT, WORKER, task_column]
    if frame[columns].isna().any().any():
        return None
    try:
        if any(frame[c].str.strip().eq("").any() for c in (WORKER, task_column)):
            return None
        images = _bulk_json(frame[IMAGES].str.strip())
        lengths = np.fromiter(
            (len(row) if isinstance(row, list) else -1 for row in images), np.int64, len(images)
        )
        if (lengths <= 0).any():
            return None
        items = [item for row in images for item in row]
        if not all(type(item) is str and item for item in items):
            return None
        cells = frame[RESULT].str.strip()
        plain = _plain_groups(cells)
        if plain is not None and np.array_equal(plain[0], lengths):
            groups = plain[1]
        elif plain is not None:
            return None  # a row with more or fewer groups than images
        else:
            parsed = _json_groups(cells, items, lengths)
            if parsed is None:
                return None
            items, groups = parsed
    except (ValueError, AttributeError, TypeError):
        return None
    # One string object per image rather than one per answer that shows it (about 70 at the shoes
    # design): the frame is kept for the whole command. Names are stripped of surrounding
    # whitespace (`_image_name`), once per distinct name.
    names: dict[str, str] = {}  # stripped name -> its one string object
    one_each: dict[str, str] = {}  # name as written -> that object
    for item in dict.fromkeys(items):
        name = item.strip()
        if not name:
            return None
        one_each[item] = names.setdefault(name, name)
    items = [one_each[item] for item in items]
    labels = pd.DataFrame(
        {
            "task": np.repeat(frame[task_column].to_numpy(dtype=object), lengths),
            "worker": np.repeat(frame[WORKER].to_numpy(dtype=object), lengths),
            "item": items,
            "label": groups,
        }
    )
    if not _no_repeats(frame, task_column, items, lengths) and (
        labels.duplicated(["task", "worker", "item"]).any()
        # one task id, one worker, two assignments: the row-by-row reader names them
        or (
            one_id_one_hit
            and frame.drop_duplicates([task_column, WORKER, ASSIGNMENT])
            .duplicated([task_column, WORKER])
            .any()
        )
    ):
        return None
    return labels


def _answers(frame: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    """Which rows are real answers, and a note on those left out: by `ASSIGNMENT:status`, and rows
    whose every cell is empty (a line of tabs between assignments, as an export with row delimiters
    has them, which stopped the command as `row 2: empty cell in INPUT:images`; a blank line was
    always skipped)."""
    empty = frame.isna().all(axis=1).to_numpy()
    blank = f"left out {int(empty.sum()):,} rows with every cell empty" if empty.any() else None
    if STATUS not in frame.columns:
        return ~empty, blank
    status = frame[STATUS].fillna("").str.strip().str.upper()
    left_out = status.isin(NOT_ANSWERS).to_numpy()
    if not left_out.any():
        return ~empty, blank
    counts = status[left_out].value_counts()
    named = ", ".join(f"{n:,} {s.lower()}" for s, n in sorted(counts.items()))
    # Active assignments are answered later: their images need the pool to finish, not a new round.
    later = "; the active ones are still in workers' hands: export again once the pool has closed"
    note = f"left out {int(left_out.sum()):,} rows that are not answers ({STATUS}: {named})"
    note += later if "ACTIVE" in counts.index else ""
    return ~(left_out | empty), note if blank is None else f"{blank}; {note}"


def _shown(cells: list[object]) -> set[str]:
    """The images that rows' `INPUT:images` cells show (stripped; unreadable cells give none)."""
    images: set[str] = set()
    for cell in cells:
        if _is_empty(cell):
            continue
        try:
            names = _parse_array(str(cell), IMAGES)
        except _RowError:
            continue
        images.update(name.strip() for name in names if isinstance(name, str) and name.strip())
    return images


def _unanswered(shown: set[str], labels: pd.DataFrame) -> list[str]:
    """The images of `shown` that no label has, sorted."""
    return sorted(shown - set(labels["item"].unique())) if shown else []


def _hit_of(cell: object) -> str | None:
    """A task id for an export without one: the HIT is what it shows, so rows with the same images
    are answers to one HIT. A digest, not a running number, so that two exports' ids never clash."""
    if _is_empty(cell):
        return None
    return "images:" + hashlib.blake2b(str(cell).strip().encode(), digest_size=8).hexdigest()


def _task_column(frame: pd.DataFrame) -> tuple[pd.DataFrame, str, str | None]:
    """The column that tells HITs apart, derived from the images when the export has no task id.

    Without it, each assignment would count as a HIT of its own: a design of 10 HITs per image,
    7 answers each read as 70 HITs of one answer, and so did the design advice and the held-out
    folds, which are dealt by HIT.
    """
    if TASK in frame.columns and SUITE in frame.columns and _one_image_per_task(frame):
        note = (
            f"every task shows one image ({IMAGES}), so the tasks of one suite are read as one HIT "
            f"({SUITE}): an assignment is a worker's answer to its suite"
        )
        return frame, SUITE, note
    if TASK in frame.columns and SUITE not in frame.columns and _one_image_each(frame):
        raise ExportFormatError(
            f"every task shows one image ({IMAGES}), and the export has no {SUITE} to tell which tasks "
            "a worker answered together, so no answer compares two images: export the suite ids too"
        )
    for column in (TASK, SUITE):
        if column in frame.columns:
            return frame, column, None
    note = (
        f"the export has no task id ({TASK} or {SUITE}): answers that show the same images "
        f"({IMAGES}) are read as answers to one HIT"
    )
    return frame.assign(**{SHOWN: frame[IMAGES].map(_hit_of)}), SHOWN, note


def _one_image_per_task(frame: pd.DataFrame) -> bool:
    """True when a suite has several tasks and no task shows two or more images.

    Such a task cannot be grouped on its own: the worker groups the images of the whole suite (one
    image per task, ten tasks per suite), so its group numbers are comparable across the suite's
    tasks. Read by task id, no answer held two images and the command stopped for want of pairwise
    labels. Only looked at when there are more tasks than suites (the images parsed once more).
    """
    return frame[TASK].nunique() > frame[SUITE].nunique() and _one_image_each(frame)


def _one_image_each(frame: pd.DataFrame) -> bool:
    """True when no readable row shows two or more images."""
    sizes = []
    for cell in frame[IMAGES].dropna().tolist():
        try:
            sizes.append(len(_parse_array(str(cell), IMAGES)))
        except _RowError:
            continue  # a bad row is named by the reader
    return bool(sizes) and max(sizes) == 1


KNOWN_COLUMNS = (*REQUIRED_COLUMNS, TASK, SUITE, STATUS)  # every column the reader looks up by name


def _misspelt(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(the header's name, the column it spells) of each column the reader knows that the header
    names only in another case or with spaces around it (`input:images`, `Output:Result`).

    Toloka never writes them so: its exports (the web UI's and toloka-kit's `get_assignments_df`)
    name `INPUT:`, `OUTPUT:` and `ASSIGNMENT:` columns in capitals and a field as the project's
    spec names it, which is case-sensitive (`result` and `Result` are two fields). Such a header was
    edited, and the columns were said to be missing though they were there; an optional column
    (`assignment:status`) was not read at all, so rejected answers counted as answers.
    """
    header = [str(name) for name in frame.columns]
    found = []
    for column in KNOWN_COLUMNS:
        if column in header:
            continue
        found += [(name, column) for name in header if name.strip().casefold() == column.casefold()]
    return found


def _misspelt_message(misspelt: list[tuple[str, str]], missing: list[str]) -> str:
    named = ", ".join(f"`{name}` for {column}" for name, column in misspelt)
    spelt = {column for _, column in misspelt}
    lacks = [column for column in missing if column not in spelt]
    also = f"; it also lacks column(s): {', '.join(lacks)}" if lacks else ""
    return (
        f"export names column(s) otherwise than Toloka does: {named}: rename them in the header line "
        f"as Toloka writes them, capitals and all (a field's name is case-sensitive in Toloka){also}"
    )


# Files of crowdclust's own that sit beside an export (a run folder, the command's outputs), by the
# columns of their header, and what each is.
OWN_FILES = (
    (
        {"item", "cluster", "confidence"},
        "a clusters file, as crowdclust writes it (item,cluster,confidence)",
        "",
    ),
    ({"item", "cluster"}, "a grouping of items into clusters, as crowdclust writes it (item,cluster)", ""),
    ({"worker", "informedness"}, "the workers' table that crowdclust aggregate --workers-output writes", ""),
    ({"item", "class"}, "a truth file (item,class)", ": give it with --truth"),
    ({"image", "class"}, "a dataset or truth file (image,class)", ": give it with --truth"),
)


def _not_an_export(frame: pd.DataFrame) -> str:
    """What a file that lacks the export's columns is instead, when that can be told; else "".

    A clusters.csv given in the export's place was told to be tab-separated ("the file looks
    comma-separated, but the export must be tab-separated"), as if converting it would help, the
    export of another project (the intruder pool's, whose answer is `OUTPUT:answer`) only that it
    lacked `OUTPUT:result`, and a web page saved in its place (a download that got a sign-in page)
    only that it lacked every column.
    """
    header = [str(name).strip() for name in frame.columns]
    if header and re.match(r"(?i)\ufeff?\s*<(?:!doctype\s+html|html)\b", header[0]):
        return (
            "; it is an HTML page (a web page saved in the export's place: a sign-in or error page?), "
            "not a Toloka assignments export"
        )
    if len(header) == 1:
        header = [cell.strip() for cell in re.split(r"[,;]", header[0])]
    names = {name.casefold() for name in header}
    for columns, what, advice in OWN_FILES:
        if columns <= names:
            return f"; it is {what}, not a Toloka assignments export{advice}"
    outputs = [name for name in header if name.startswith("OUTPUT:")]
    if outputs and RESULT not in header:
        return (
            f"; its answers are {', '.join(outputs)}, not {RESULT}: the export of another project (a "
            "run's intruder pool answers OUTPUT:answer)?"
        )
    return ""


def _separator_hint(frame: pd.DataFrame) -> str:
    """Why the columns are missing when the header was one comma-separated cell.

    A CSV (what a spreadsheet saves) read as a TSV has a single column named by its whole header
    line; listing every required column as missing would not say that the separator is the problem.
    """
    header = str(frame.columns[0]) if len(frame.columns) == 1 else ""
    for char, name in ((",", "comma"), (";", "semicolon")):  # a semicolon: a European spreadsheet's CSV
        if char in header:
            return (
                f"; the header line has {name}s and no tabs: the file looks {name}-separated, but the "
                "export must be tab-separated (the TSV Toloka gives)"
            )
    return ""


UNQUOTED = (
    "read with no CSV quoting: its cells are written as they are, not quoted as Toloka quotes them "
    "(a spreadsheet's tab-separated download writes them so), and read with quoting every cell that "
    f"starts with a double quote, as {IMAGES} does, lost its quotes"
)


def _json_start(source: str | os.PathLike | pd.DataFrame) -> str | None:
    """`[` or `{` when the file (decompressed by its name) starts so, as JSON does and no TSV
    header can; else None.

    A JSON file (the API's assignments, JSON lines) read as a TSV was named by whatever its first
    line did: lacking every column (`[` alone on it), comma-separated (one line of JSON), or with a
    row of more fields than the header (indented by tabs).
    """
    if isinstance(source, pd.DataFrame):
        return None
    from pandas.io.common import get_handle

    try:
        with get_handle(Path(source), "rb", compression="infer", is_text=False) as handles:
            start = handles.handle.read(4096)
    except (ValueError, OSError, EOFError, ImportError, zlib.error, *ARCHIVE_ERRORS):
        return None
    text = start.removeprefix(b"\xef\xbb\xbf").lstrip()
    return f"`{chr(text[0])}`" if text[:1] in (b"[", b"{") else None


def _unquoted(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame | None:
    """The export file read with no CSV quoting, or None (a frame, a file that does not read so, or
    one whose cells are quoted).

    Toloka quotes a TSV cell that holds double quotes (the cell `"a","b"` is written with its quotes
    doubled, inside quotes); a file written without quoting (Google Sheets' and many scripts' TSV)
    has `"a","b"` as it is, which a quoting reader takes for a quoted `a` followed by `,"b"`: every
    row stopped with `INPUT:images is not valid JSON`, though each cell was valid JSON as written.
    """
    if isinstance(source, pd.DataFrame):
        return None
    try:
        raw = pd.read_csv(
            Path(source), sep="\t", dtype=str, keep_default_na=False, na_values=[""], quoting=csv.QUOTE_NONE
        )
    except (ValueError, OSError, EOFError, ImportError, zlib.error, *ARCHIVE_ERRORS):  # pandas': ValueErrors
        return None
    # Quoted as Toloka quotes it, a cell that starts with a double quote is one quoted field: its
    # quotes inside doubled, one at its end (`"[""a"",""b""]"`). Written as it is, the cell of
    # two images has a lone quote inside (`"a","b"`).
    cells = raw[IMAGES].dropna() if IMAGES in raw.columns else pd.Series(dtype=str)
    cells = cells[cells.str.startswith('"')]
    if cells.empty or cells.str.fullmatch(r'"(?:[^"]|"")*"').all():
        return None
    return raw


def answer_rows(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The rows of an export that `read_export` reads as answers, one per row: `row` (as the file
    numbers its rows, the header not counted), `assignment`, `task` and `worker` (as the labels name
    them) and the answer's cells, `INPUT:images` and `OUTPUT:result`. What tells the same assignment
    in two exports (`crowdclust aggregate` given overlapping downloads) from two answers."""
    frame = _load_frame(source)
    answers, _ = _answers(frame)
    numbers = np.flatnonzero(answers) + 1
    frame, task_column, _ = _task_column(frame[answers])
    return pd.DataFrame(
        {
            "row": numbers,
            "assignment": frame[ASSIGNMENT].to_numpy(dtype=object),
            "task": frame[task_column].to_numpy(dtype=object),
            "worker": frame[WORKER].to_numpy(dtype=object),
            IMAGES: frame[IMAGES].to_numpy(dtype=object),
            RESULT: frame[RESULT].to_numpy(dtype=object),
        }
    )


def read_export(source: str | os.PathLike | pd.DataFrame, strict: bool = True) -> ExportReading:
    """Read a Toloka assignments export (a TSV path or `get_assignments_df`'s DataFrame).

    A file that does not read as a quoted TSV and whose cells are written unquoted (`_unquoted`)
    is read with no quoting, with a note (or its bad row named, with the same words).

    Strict mode raises `ExportFormatError` on the first bad row; lenient mode skips bad rows and
    lists them in `ExportReading.problems`. The task id is the first of `ASSIGNMENT:task_id`,
    `ASSIGNMENT:task_suite_id` that the export has (so several workers' answers to one HIT share a
    task), else the HIT's images; the suite id when a suite's tasks show one image each.
    Group numbers are local to one (task, worker): if an export without
    task ids held several tasks per suite, their rows would be read as one grouping (the seed design
    has one task, holding all images, per suite). Rows of rejected, skipped, expired or active assignments
    (`ASSIGNMENT:status`) are left out, and `ExportReading.notes` says so.
    """
    try:
        return _read_frame(_load_frame(source), strict)
    except ExportCutShort:
        raise
    except ExportFormatError:
        json_start = _json_start(source)
        if json_start is not None:
            raise ExportFormatError(
                f"export file is JSON (it starts with {json_start}), not the tab-separated export Toloka "
                "gives: download the pool's assignments as TSV, or write toloka-kit's "
                "get_assignments_df(pool_id) with .to_csv(path, sep='\\t', index=False)"
            ) from None
        raw = _unquoted(source)
        if raw is None:
            raise
        try:
            reading = _read_frame(raw, strict)
        except ExportFormatError as exc:  # a bad row of the file as written, named as such
            raise ExportFormatError(f"{exc} ({UNQUOTED})") from None
        reading.notes.append(UNQUOTED)
        return reading


def _read_frame(frame: pd.DataFrame, strict: bool) -> ExportReading:
    """`read_export` of the loaded frame."""
    misspelt = _misspelt(frame)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if misspelt:
        raise ExportFormatError(_misspelt_message(misspelt, missing))
    if missing:
        hint = _not_an_export(frame) or _separator_hint(frame)
        raise ExportFormatError(f"export lacks column(s): {', '.join(missing)}{hint}")
    if len(frame) == 0:
        raise ExportFormatError("export has no rows (empty input)")

    answers, left_out = _answers(frame)
    shown_elsewhere = _shown(frame.loc[~answers, IMAGES].tolist()) if left_out else set()
    numbers = np.flatnonzero(answers) + 1  # the rows as the file numbers them, the header not counted
    frame = frame[answers]
    frame, task_column, derived = _task_column(frame)
    notes = [note for note in (left_out, derived) if note]
    if len(frame) == 0:
        raise ExportFormatError(f"export has no answers: {left_out}")
    # A task id names one HIT, so one worker's two assignments to it are one HIT answered twice
    # or two HITs under one id; not so for the HITs read from images or from suites of one image a
    # task, whose rows are tasks.
    one_id_one_hit = derived is None
    fast = _read_fast(frame, task_column, one_id_one_hit)
    if fast is not None:
        return ExportReading(labels=fast, notes=notes, unanswered=_unanswered(shown_elsewhere, fast))
    columns = [frame[c].tolist() for c in (IMAGES, RESULT, WORKER, ASSIGNMENT, task_column)]
    problems: list[str] = []
    records: list[tuple[str, str, str, int]] = []
    seen: dict[tuple[str, str], tuple[object, set[str]]] = {}  # (first assignment, items) per (task, worker)
    rows_seen: dict[tuple[object, ...], int] = {}  # each row's cells -> the first row that has them
    for row, images, result, worker, assignment, task in zip(numbers.tolist(), *columns, strict=True):
        header = _header_line(images, result, worker)
        where = f"row {row}" + ("" if _is_empty(assignment) or header else f" (assignment {assignment})")
        try:
            if header:
                raise _RowError(JOINED)
            # A row pasted twice is named as such, not as an image shown twice in one assignment.
            first_row = rows_seen.setdefault((images, result, worker, assignment, task), row)
            if first_row != row and not _is_empty(assignment):
                raise _RowError(
                    f"repeats row {first_row}: the same row of assignment {assignment} twice "
                    "(an export holds each task of an assignment once); remove one of them"
                )
            pairs = _parse_row(images, result, worker)
            if _is_empty(task):
                raise _RowError(f"empty cell in {task_column}")
            first, items = seen.setdefault((str(task), str(worker)), (assignment, set()))
            row_items = [item for item, _ in pairs]
            if (
                one_id_one_hit
                and first != assignment
                and not _is_empty(first)
                and not _is_empty(assignment)
                and not items & set(row_items)
            ):
                raise _RowError(_reused_task(worker, task, task_column, first))
            repeated = sorted({i for i in row_items if row_items.count(i) > 1} | (items & set(row_items)))
            if repeated and first != assignment and items & set(row_items):
                hit = "the HIT of these images" if task_column == SHOWN else f"HIT {task} ({task_column})"
                raise _RowError(
                    f"worker {worker} answered {hit} before, in assignment {first}: an export holds one "
                    "answer per worker and HIT"
                )
            if repeated:
                raise _RowError(f"item {repeated[0]} appears twice in one assignment")
            items.update(row_items)
        except _RowError as exc:
            if strict:
                raise ExportFormatError(f"{where}: {exc}") from None
            problems.append(f"{where}: {exc}")
            shown_elsewhere |= _shown([images])
            continue
        records.extend((str(task), str(worker), item, group) for item, group in pairs)

    if not records:
        detail = f" ({len(problems)} bad row(s); first: {problems[0]})" if problems else ""
        raise ExportFormatError(f"export has no usable rows{detail}")
    labels = pd.DataFrame.from_records(records, columns=list(REQUIRED))
    labels["label"] = labels["label"].astype(np.int64)
    unanswered = _unanswered(shown_elsewhere, labels)
    return ExportReading(labels=labels, problems=problems, notes=notes, unanswered=unanswered)
