"""The dataset: a TSV of image URLs, optionally with the true class of each image.

Accepted columns: `image` (or the seed's `INPUT:image`), optional `class` (ground truth, used for
metrics only); see `tasks.dataset_file` for how the file is read. Every problem names the file
line, so a person can find it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd

from tasks.dataset_file import IMAGE_COLUMNS, TRUTH_COLUMN, DatasetError, read_table

__all__ = ["IMAGE_COLUMNS", "DatasetError", "load_dataset", "truth_of", "url_problem"]


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
    if parts.scheme not in ("http", "https") or not url.startswith(("http://", "https://")):
        return "is not an http(s) URL"
    if not host:
        return "has no host"
    if any(char.isspace() for char in host):
        return f"has a space in its host {host!r}"
    return None


def load_dataset(path: Path | str) -> pd.DataFrame:
    """DataFrame with `image` (str) and, when the file has it, `class` (str)."""
    table = read_table(path)
    path = table.path
    if not table.rows:
        raise DatasetError(f"{path}: no rows")
    seen: dict[str, int] = {}
    for row in table.rows:
        line, raw = row.line, row.fields[table.image]
        url = raw.strip()
        problem = url_problem(url)
        if problem is not None:
            raise DatasetError(f"{path}, line {line}: image {raw!r} {problem}")
        if url in seen:
            raise DatasetError(f"{path}, line {line}: image {url} repeats line {seen[url]}")
        seen[url] = line
        if table.truth is not None and not row.fields[table.truth].strip():
            raise DatasetError(
                f"{path}, line {line}: empty `class` (leave the column out if there is no truth)"
            )
    frame = pd.DataFrame({"image": table.images()})
    if table.truth is not None:
        frame[TRUTH_COLUMN] = [row.fields[table.truth].strip() for row in table.rows]
    return frame


def truth_of(dataset: pd.DataFrame) -> pd.Series | None:
    """Item -> true class, or None when the dataset has no truth."""
    if "class" not in dataset.columns:
        return None
    return pd.Series(dataset["class"].to_numpy(), index=dataset["image"].to_numpy(), name="class")
