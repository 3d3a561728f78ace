"""The dataset: a TSV of image URLs, optionally with the true class of each image.

Accepted columns: `image` (or the seed's `INPUT:image`), optional `class` (ground truth, used for
metrics only). Every problem names the file line, so a person can find it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

IMAGE_COLUMNS = ("image", "INPUT:image")


class DatasetError(ValueError):
    """The dataset file cannot be used; the message names the file and line."""


def load_dataset(path: Path | str) -> pd.DataFrame:
    """DataFrame with `image` (str) and, when the file has it, `class` (str)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: cannot read as TSV: {exc}") from exc
    column = next((c for c in IMAGE_COLUMNS if c in frame.columns), None)
    if column is None:
        header = "\t".join(frame.columns)
        if len(frame.columns) == 1 and "," in header:  # one column named `image,class,...`
            raise DatasetError(
                f"{path}: line 1 has no tab: the dataset must be tab-separated (TSV), and this header "
                f"reads as comma-separated: {header[:80]}"
            )
        raise DatasetError(f"{path}: needs an `image` column (found: {', '.join(frame.columns) or 'none'})")
    frame = frame.rename(columns={column: "image"})
    if frame.empty:
        raise DatasetError(f"{path}: no rows")
    seen: dict[str, int] = {}
    for index, raw in enumerate(frame["image"]):
        line = index + 2  # 1-based, after the header
        url = raw.strip()
        if not url.startswith(("http://", "https://")):
            raise DatasetError(f"{path}, line {line}: image {raw!r} is not an http(s) URL")
        if url in seen:
            raise DatasetError(f"{path}, line {line}: image {url} repeats line {seen[url]}")
        seen[url] = line
        if "class" in frame.columns and not str(frame["class"].iloc[index]).strip():
            raise DatasetError(
                f"{path}, line {line}: empty `class` (leave the column out if there is no truth)"
            )
    frame["image"] = frame["image"].str.strip()
    keep = ["image", "class"] if "class" in frame.columns else ["image"]
    return frame[keep].reset_index(drop=True)


def truth_of(dataset: pd.DataFrame) -> pd.Series | None:
    """Item -> true class, or None when the dataset has no truth."""
    if "class" not in dataset.columns:
        return None
    return pd.Series(dataset["class"].to_numpy(), index=dataset["image"].to_numpy(), name="class")
