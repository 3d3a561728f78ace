"""Before anything is paid: can every image of a HIT plan be shown?

An image whose URL does not load (a typo, a file taken down, a page instead of a picture) is paid
for in every HIT it is in, and the crowd's answers about a broken picture place it with full
confidence: a user's run with 6 such images of 120 charged $25.74, put each missing image in a
cluster of another class at confidence 1.0, and said so only in a log line after the payment. So
the labelling stage fetches every image of its plan first (`tasks.thumbnails.fetch_images`, the
same fetch as the galleries, without making thumbnails) and stops, naming them, when any fails.
A check that passed is cached with the plan's images, so a resumed run does not fetch them again.
"""

from __future__ import annotations

from prefect import get_run_logger

from tasks.dataset import DatasetError
from tasks.dataset_file import read_table
from tasks.stage import stage_task
from tasks.thumbnails import fetch_images, hosts_given_up

SHOWN = 5  # failing images named in the error (all are counted)


def _lines_of(dataset: str) -> dict[str, int]:
    """Image URL -> its line in the dataset file (as `grep -n` counts), for the error to name."""
    table = read_table(dataset)
    return {row.fields[table.image].strip(): row.line for row in table.rows}


def unshowable(problems: dict[str, str], total: int, dataset: str, given_up: str = "") -> DatasetError:
    """The error for the images that could not be fetched: how many, the first few with their lines
    and why, the lines of the rest, the hosts given up (`thumbnails.hosts_given_up`), what to do."""
    lines = _lines_of(dataset)

    def at(url: str) -> str:
        return f"line {lines[url]}: " if url in lines else ""

    by_line = sorted(problems, key=lambda url: lines.get(url, 0))
    named = "; ".join(f"{at(url)}{url} ({problems[url]})" for url in by_line[:SHOWN])
    rest = [str(lines[url]) for url in by_line[SHOWN:] if url in lines]
    more = ""
    if len(problems) > SHOWN:
        more = f"; and {len(problems) - SHOWN:,} more" + (
            f" (line {', '.join(rest[:20])}{', ...' if len(rest) > 20 else ''})" if rest else ""
        )
    return DatasetError(
        f"{dataset}: {len(problems):,} of {total:,} images could not be fetched, so the crowd would be "
        f"paid to group pictures it cannot see: {named}{more}. {given_up + ' ' if given_up else ''}"
        "Fix or remove those rows and run the "
        "same command again; or, if they load in a browser but not from this machine, set "
        "hits.check_images: false"
    )


@stage_task(name="check-images", code=("tasks.thumbnails",))
def check_images_task(images: list[str], base_url: str | None, dataset: str) -> int:
    """Fetch every image in `images` (through `base_url`, the local emulator, when given); raise
    `DatasetError` naming those that cannot be shown. Returns how many were checked."""
    wanted = sorted(set(images))
    fetched = fetch_images(wanted, base_url, thumbnails=False)
    problems = {url: got.problem for url, got in sorted(fetched.items()) if got.problem is not None}
    if problems:
        raise unshowable(problems, len(wanted), dataset, hosts_given_up(fetched))
    get_run_logger().info("images: all %s of the plan can be fetched", f"{len(wanted):,}")
    return len(wanted)
