"""Small embedded thumbnails of the dataset's images, fetched once when a clustering is made.

The Prefect UI and `report.html` must show the clusters with nothing else running: the local
emulator that serves the demo images stops after the run, and a real catalogue's image host may
refuse a browser. So the images the galleries show are fetched once, at aggregation time, and kept
as `data:image/jpeg;base64,...` URIs (a few KB each) in the run folder (`RunFolder.thumbnails`).

Only `http(s)` URLs are fetched, with a short timeout, a size cap and no credentials. An image that
cannot be fetched or decoded is simply absent: the galleries show a text cell in its place. A host
that does not answer (refused, unresolvable, timed out) UNREACHABLE_AFTER times in a row is not
tried for the rest of the images: a 10,000-image clustering whose image host was unreachable spent
7 min 21 s on the galleries' 2,298 images (each lookup of a name that does not resolve waited out
the resolver's 5 s when eight ran at once), and a host that drops connections costs the 5 s
timeout an image, as long again for the check before a run.
"""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

import aggregation
from tasks.params import TolokaTarget
from tasks.run_lock import is_loopback
from tasks.settings import Settings
from tasks.stages import Aggregated, counted
from tasks.toloka_api import endpoint

REPORT_PER_CLUSTER = 60  # thumbnails per cluster in report.html at most (the artifact shows fewer of them)
REPORT_IMAGES = 1_500  # thumbnails the galleries of report.html show in all: 25 clusters of 60
REPORT_ROW = 10  # thumbnails per cluster at least, whatever the clusters: one row of the page
BOX = 96  # a thumbnail fits in BOX x BOX pixels
QUALITY = 70  # JPEG quality: ~2-4 KB per thumbnail
MAX_SOURCE_BYTES = 5_000_000  # a larger source image is not fetched
TIMEOUT_SECONDS = 5.0
WORKERS = 8  # concurrent fetches
UNREACHABLE_AFTER = 2 * WORKERS  # failed connections in a row before a host is given up
LEAST_CERTAIN = 5  # least certain items per cluster listed in report.html


def least_certain(aggregated: Aggregated) -> pd.DataFrame | None:
    """cluster, item, confidence of the LEAST_CERTAIN lowest-confidence items of every cluster."""
    if aggregated.confidence is None:
        return None
    return aggregation.least_certain(aggregated.clusters, aggregated.confidence, LEAST_CERTAIN)


def report_per_cluster(clusters: pd.Series) -> int:
    """How many images of each cluster report.html shows: as many as keep its galleries within
    REPORT_IMAGES thumbnails, REPORT_PER_CLUSTER at most and REPORT_ROW at least.

    Every cluster showed up to 60 whatever their number, so the page grew with the clusters: a
    3,500-image catalogue in 25 clusters made a 2-3 MB report, in 250 clusters one of 9-16 MB (every
    image shown, 2-4 KB each), and the galleries fetched up to 60 thumbnails a cluster. Small
    clusters leave their share to the large ones (the cut is the largest that fits the budget), and
    the rest of each cluster is in clusters.csv, as the galleries say.
    """
    sizes = clusters.value_counts().to_numpy()
    for cut in range(REPORT_PER_CLUSTER, REPORT_ROW, -1):
        if int(np.minimum(sizes, cut).sum()) <= REPORT_IMAGES:
            return cut
    return REPORT_ROW


def images_base(target: TolokaTarget | None) -> str | None:
    """Where a `local` run's images really are: its emulator (None: fetch the URLs as they are)."""
    if target is None or target.environment != "local":
        return None
    return endpoint(target)


def link_base(target: TolokaTarget | None) -> str | None:
    """`images_base` as a browser reaches it, for links in the run's artifacts.

    The service's runs reach its emulator at 127.0.0.1, the address in their parameters. On a service
    that listens on the network (`make up LISTEN=...`) teammates open the same artifacts from other
    machines, where 127.0.0.1 is their own: the `hit-coverage` table's image links went nowhere.
    The service names its emulator's shared address in CROWDCLUST_SHARED_EMULATOR_URL
    (`Settings.shared_emulator_url`); a loopback base on that emulator's port is linked there. Any
    other base (another emulator, Toloka) is linked as it is fetched.
    """
    base = images_base(target)
    shared = (Settings().shared_emulator_url or "").rstrip("/")
    if not base or not shared:
        return base
    parts, to = urlsplit(base), urlsplit(shared)
    try:
        same_port = parts.port == to.port
    except ValueError:  # a port out of range in either: link as fetched
        return base
    if not same_port or not is_loopback(parts.hostname or ""):
        return base
    return urlunsplit(parts._replace(scheme=to.scheme, netloc=to.netloc))


def for_galleries(
    aggregated: Aggregated, target: TolokaTarget | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Thumbnails of what the galleries and the least-certain lists show (fetched once, here), and
    the web images among those that could not be fetched, each with why (gone, not an image, too
    large, its host out of reach): the galleries show their names instead, and the log names them
    (`unfetched_line`) so a user can look."""
    uncertain = least_certain(aggregated)
    extra = [] if uncertain is None else uncertain["item"].astype(str).tolist()
    items = gallery_items(aggregated.clusters, report_per_cluster(aggregated.clusters), extra)
    fetched = fetch_images(items, images_base(target))
    thumbs = {url: got.uri for url, got in fetched.items() if got.uri is not None}
    failed = {url: got.problem for url, got in fetched.items() if got.uri is None}
    unfetched = {url: problem or "not a readable image" for url, problem in failed.items()}
    return thumbs, unfetched


def unfetched_line(unfetched: dict[str, str], examples: int = 3) -> str:
    """`N image(s) ... could not be fetched`, by reason, the most frequent first, with a few URLs each.

    An unreachable image host made 2,298 images read "gone, not an image, or too large"."""
    by_problem: dict[str, list[str]] = {}
    for url, problem in unfetched.items():
        by_problem.setdefault(problem, []).append(url)
    reasons = sorted(by_problem.items(), key=lambda pair: (-len(pair[1]), pair[0]))
    parts = [
        f"{len(urls):,} {problem} ({', '.join(urls[:examples])}{', ...' if len(urls) > examples else ''})"
        for problem, urls in reasons
    ]
    return f"{len(unfetched):,} image(s) the galleries show could not be fetched: {'; '.join(parts)}"


def gallery_items(clusters: pd.Series, per_cluster: int, extra: list[str] | None = None) -> list[str]:
    """The items a gallery shows: the first `per_cluster` of each cluster (sorted), plus `extra`."""
    shown = [
        item
        for _, items in clusters.groupby(clusters, sort=True)
        for item in sorted(map(str, items.index))[:per_cluster]
    ]
    return list(dict.fromkeys([*shown, *(extra or [])]))


def is_fetchable(url: str) -> bool:
    """An absolute http(s) URL with a host (file:, data:, javascript: and relative paths are not).

    A URL urllib or httpx cannot parse (`http://[host/a.png`) is not fetchable either: it raised
    here and stopped the galleries of a clustering that had been paid for.
    """
    import httpx

    try:
        parts = urlsplit(url)
        _ = parts.port  # a port out of range raises only when read
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _via(url: str, base_url: str | None) -> str:
    """The URL to fetch: the same path on `base_url` when given (the run's emulator), else `url`."""
    if not base_url:
        return url
    parts = urlsplit(url)
    return base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def image_link(url: str, base_url: str | None = None) -> str | None:
    """Where a browser can open the image `url` names, as the galleries' thumbnails were fetched:
    the same path on the run's emulator for a `local` run (`base_url`, `images_base`), else the URL
    as written; None for what is not an http(s) URL (never a link: file:, data:, javascript:).

    Demo datasets name the emulator's default address (http://127.0.0.1:8765), where the service's
    emulator does not listen: a link to the URL as written went nowhere.
    """
    return _via(url, base_url) if is_fetchable(url) else None


def thumbnail(content: bytes) -> str | None:
    """A JPEG data URI of `content` shrunk to fit BOX x BOX; None when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as image:
            image.thumbnail((BOX, BOX))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=QUALITY, optimize=True)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _readable(content: bytes) -> bool:
    """Whether `content` is an image a browser can show (its header and structure check out), without
    decoding its pixels: the check before a run reads every image of the dataset."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    return True


@dataclass(frozen=True)
class Fetched:
    """What fetching one image gave: its thumbnail (when asked for) or why it could not be shown."""

    uri: str | None = None
    problem: str | None = None
    no_answer: bool = False  # the host did not answer at all (counted by `_Hosts`)
    not_asked: bool = False  # not fetched: its host had been given up (`_Hosts`)


class _Hosts:
    """The hosts of one batch of fetches that failed to answer UNREACHABLE_AFTER times in a row,
    with no image served in between: their other images are not tried (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, int] = {}
        self._given_up: dict[str, str] = {}

    def given_up(self, url: str) -> Fetched | None:
        """What to report for `url` without fetching it, if its host was given up."""
        with self._lock:
            problem = self._given_up.get(urlsplit(url).netloc)
        return None if problem is None else Fetched(problem=problem, no_answer=True, not_asked=True)

    def record(self, url: str, got: Fetched) -> None:
        host = urlsplit(url).netloc
        with self._lock:
            failed = self._failed.get(host, 0) + 1 if got.no_answer else 0
            self._failed[host] = failed
            if failed >= UNREACHABLE_AFTER and host not in self._given_up:
                # The images not asked read so, not as the failure of their own a bare reason implied.
                self._given_up[host] = (
                    f"not asked: {host} did not answer {failed} times in a row ({got.problem})"
                )


def _get(client: Any, url: str, thumbnails: bool) -> Fetched:
    """GET one image with the size cap; the problem in words a user can act on."""
    import httpx

    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                return Fetched(problem=f"HTTP {response.status_code}")
            kind = response.headers.get("content-type", "")
            if not kind.startswith("image/"):
                return Fetched(problem=f"not an image ({kind or 'no content type'})")
            content = b""
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > MAX_SOURCE_BYTES:
                    return Fetched(problem=f"larger than {MAX_SOURCE_BYTES // 1_000_000} MB")
    except (httpx.ConnectError, httpx.TimeoutException) as error:
        return Fetched(problem=type(error).__name__, no_answer=True)
    except httpx.HTTPError as error:
        return Fetched(problem=type(error).__name__)
    except (ValueError, httpx.InvalidURL):  # a URL httpx cannot use
        return Fetched(problem="not a valid URL")
    if thumbnails:
        uri = thumbnail(content)
        return Fetched(uri=uri) if uri is not None else Fetched(problem="not a readable image")
    return Fetched() if _readable(content) else Fetched(problem="not a readable image")


def hosts_given_up(fetched: dict[str, Fetched]) -> str:
    """A sentence on the hosts whose images were not all asked for (`_Hosts`), or ""."""
    not_asked: dict[str, int] = {}
    for url, got in fetched.items():
        if got.not_asked:
            host = urlsplit(url).netloc
            not_asked[host] = not_asked.get(host, 0) + 1
    return " ".join(
        f"{host} did not answer {UNREACHABLE_AFTER} connections in a row, so its other "
        f"{counted(count, 'image')} {'was' if count == 1 else 'were'} not asked for."
        for host, count in sorted(not_asked.items())
    )


def fetch_images(urls: list[str], base_url: str | None = None, thumbnails: bool = True) -> dict[str, Fetched]:
    """URL -> what fetching it gave, for every http(s) URL in `urls` (others are left out).

    `base_url` (the local emulator's address) replaces scheme and host first: demo datasets name
    the emulator's default address, which may not be where this run's emulator listens. When the
    image is not there, the URL as written is tried: a user rehearsing their own image host on the
    emulator had every image reported missing (the emulator answered 404 for the host's paths).
    When both fail differently the problem names both (an unreachable host read as `HTTP 404`).
    A host that does not answer UNREACHABLE_AFTER times in a row is given up (`_Hosts`).
    `thumbnails=False` only checks that each image can be shown (a run's check before paying).
    """
    import httpx

    wanted = list(dict.fromkeys(url for url in urls if is_fetchable(url)))
    if not wanted:
        return {}
    hosts = _Hosts()

    def get(url: str) -> Fetched:
        got = hosts.given_up(url)
        if got is None:
            got = _get(client, url, thumbnails)
            hosts.record(url, got)
        return got

    def one(url: str) -> tuple[str, Fetched]:
        first = _via(url, base_url)
        got = get(first)
        if got.problem is not None and first != url:
            again = get(url)
            if again.problem is None:
                return url, again
            if again.problem != got.problem:  # say both: the host's own failure was hidden behind a 404
                both = f"{got.problem} from the run's emulator; as written: {again.problem}"
                return url, Fetched(problem=both)
        return url, got

    limits = httpx.Limits(max_connections=WORKERS)
    client = httpx.Client(timeout=TIMEOUT_SECONDS, limits=limits, follow_redirects=True)
    with client, ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(one, wanted))
