"""The dataset: a TSV of image URLs, optionally with the true class of each image.

Accepted columns: `image` (or the seed's `INPUT:image`), optional `class` (ground truth, used for
metrics only); see `tasks.dataset_file` for how the file is read. Every problem names the file
line, so a person can find it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd

from aggregation.addresses import image_address
from tasks.dataset_file import IMAGE_COLUMNS, TRUTH_COLUMN, DatasetError, read_table

__all__ = [
    "IMAGE_COLUMNS",
    "Dataset",
    "DatasetError",
    "load_dataset",
    "read_dataset",
    "truth_for",
    "truth_of",
    "url_problem",
]


def url_problem(url: str) -> str | None:
    """What is wrong with an image URL (None: nothing), as the crowd's and the galleries' readers see it.

    The URL is read by `urllib.parse.urlsplit` (the emulator, the galleries) and by httpx (the
    thumbnails); one either refuses (`http://[cdn.example.com/a.png`: an unbalanced bracket) got
    through the check, and the main pool was blocked after the exam had been paid.
    """
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # a bad port raises only when read
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return f"is not a valid URL ({exc})"
    # `HTTP://`, `Http://` (a spreadsheet's capital): refused, as the crowd's task pages and the
    # emulator read `http://` as written, but not as "not an http(s) URL", which it is.
    # (urlsplit gives the scheme in lower case: a URL that starts with it only so has `http(s)`.)
    if url.lower().startswith(("http://", "https://")) and not url.startswith(f"{parts.scheme}://"):
        return f"has its scheme in capitals: write it {parts.scheme}://"
    if parts.scheme not in ("http", "https") or not url.startswith(("http://", "https://")):
        return "is not an http(s) URL"
    if not host:
        return "has no host"
    if any(char.isspace() for char in host):
        return f"has a space in its host {host!r}"
    return None


def _lines(lines: list[int], most: int = 5) -> str:
    """`2, 5, 9` or `2, 5, 9, 11, 12 and 3 more`: lines a message names without running on."""
    shown = ", ".join(map(str, lines[:most]))
    return shown if len(lines) <= most else f"{shown} and {len(lines) - most} more"


def _bad_rows(path: Path, bad: list[tuple[int, str, str]]) -> str:
    """One line for every row whose image cannot be used: the first in full, then how many more
    and where. Named one at a time, a catalogue with 50 repeated rows (two exports pasted
    together) took 50 runs to fix, each refused after reading the whole file."""
    line, what, _ = bad[0]
    message = f"{path}, line {line}: {what}"
    rest = bad[1:]
    if not rest:
        return message
    kinds = Counter(kind for _, _, kind in rest)
    counted = " and ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(kinds.items()))
    return f"{message}; and {len(rest)} more ({counted}): line {_lines([at for at, _, _ in rest])}"


@dataclass(frozen=True)
class Dataset:
    """The checked dataset and what a user should hear about it before anything is paid (one line each)."""

    frame: pd.DataFrame
    warnings: tuple[str, ...] = ()


def read_dataset(path: Path | str) -> Dataset:
    """The dataset's images (and truth, if any) with warnings; `DatasetError` for a file it cannot use.

    A blank `class` cell is an unknown class, not an error: the truth scores then cover the images
    that have one (the run's summary says how many), where a few blank cells used to stop the whole
    run with dropping the column as the only way on. Warned of: the blank cells; a file with columns
    but none read as the truth (a `Label` column would silently give no scores); the same image
    under two spellings of its URL (`image_address`), which the crowd would see twice as two images.
    """
    table = read_table(path, misshapen_ok=True)
    path = table.path
    if not table.rows and not table.misshapen:
        raise DatasetError(f"{path}: no rows")
    warnings: list[str] = []
    seen: dict[str, int] = {}
    by_address: dict[str, int] = {}  # what the server sees of the URL -> its line
    respelt: list[str] = []
    # line, what is wrong, its kind: every row, not the first. A row of the wrong shape too: named
    # alone, it stopped a run whose bad URLs the next run only then named.
    bad = [(line, what, "misshapen row") for line, what in table.misshapen]
    for row in table.rows:
        line, raw = row.line, row.fields[table.image]
        url = raw.strip()
        problem = url_problem(url)
        if problem is not None:
            bad.append((line, f"image {raw!r} {problem}", "bad URL"))
            continue
        if url in seen:
            bad.append((line, f"image {url} repeats line {seen[url]}", "repeated image"))
            continue
        seen[url] = line
        address = image_address(url)
        if address in by_address:
            respelt.append(f"line {line} repeats line {by_address[address]} ({url})")
        else:
            by_address[address] = line
    if bad:
        raise DatasetError(_bad_rows(path, sorted(bad)))
    if respelt:
        warnings.append(
            f"{path}: the same image under two spellings of its URL (http:// and https://, the host's "
            "case, a default port, %-encoding or a #fragment), which the crowd would see and group as "
            f"two images: {'; '.join(respelt[:3])}"
            + (f"; and {len(respelt) - 3} more" if len(respelt) > 3 else "")
            + ". Keep one row of each"
        )
    frame = pd.DataFrame({"image": table.images()})
    header = table.header
    if table.truth is None:
        others = [name for at, name in enumerate(header) if at != table.image]
        if others:
            warnings.append(
                f"{path}, line {table.header_line}: no `{TRUTH_COLUMN}` column, so no truth and no ARI / "
                f"NMI in the summary (columns read as nothing: {', '.join(others)}); name the column "
                f"with the true classes `{TRUTH_COLUMN}` to score the clustering"
            )
        return Dataset(frame, tuple(warnings))
    truth = [row.fields[table.truth].strip() for row in table.rows]
    frame[TRUTH_COLUMN] = truth
    blank = [row.line for row, value in zip(table.rows, truth, strict=True) if not value]
    column = header[table.truth]
    if len(blank) == len(truth):
        warnings.append(
            f"{path}: every `{column}` cell is blank, so no truth and no ARI / NMI in the summary"
        )
    elif blank:
        warnings.append(
            f"{path}: {len(blank)} image(s) with a blank `{column}` (line {_lines(blank)}): their class is "
            f"unknown, and the ARI / NMI cover the {len(truth) - len(blank):,} images that have one; fill "
            "them in for a score over every image"
        )
    return Dataset(frame, tuple(warnings))


def load_dataset(path: Path | str) -> pd.DataFrame:
    """DataFrame with `image` (str) and, when the file has it, `class` (str; blank: unknown)."""
    return read_dataset(path).frame


def _address(url: str) -> str:
    try:
        return image_address(url)
    except ValueError:  # not a URL urlsplit can read: its own address
        return url


def truth_for(truth: pd.Series | None, items: pd.Index | list[str]) -> pd.Series | None:
    """`truth` with the class of every item of `items` that the dataset names under another spelling
    of its URL (`image_address`: scheme, host case, default port, %-encoding, `#fragment`).

    A catalogue clusters an image re-spelled in its file under the spelling that was clustered, so
    read by the file's spelling the image had no class: `clusters.csv` left its `class` blank and the
    summary said `(over the 99 of 100 images with a class)` of a file whose 100 images all had one.
    """
    if truth is None:
        return None
    known = set(truth.index)
    by_address = {_address(url): value for url, value in truth.items()}
    found = {
        item: by_address[address]
        for item in items
        if item not in known and (address := _address(item)) in by_address
    }
    return pd.concat([truth, pd.Series(found, name=truth.name, dtype=truth.dtype)]) if found else truth


def truth_of(dataset: pd.DataFrame) -> pd.Series | None:
    """Item -> true class of the images that have one, or None when none has (or no `class` column)."""
    if TRUTH_COLUMN not in dataset.columns:
        return None
    known = dataset[dataset[TRUTH_COLUMN].astype(str).str.strip() != ""]
    if known.empty:
        return None
    return pd.Series(known[TRUTH_COLUMN].to_numpy(), index=known["image"].to_numpy(), name="class")
