"""How large `report.html` is at 25 and at 250 clusters; prints one row per case.

    .venv/bin/python bench/bench_report.py                          # 3,500 images, photo-like thumbnails
    .venv/bin/python bench/bench_report.py --images 3250 32500 --clusters 25 250 --shoes
    .venv/bin/python bench/bench_report.py --out /tmp/reports      # keep the pages (to open in a browser)

Each case renders a synthetic clustering with `tasks.report.render_html`, as a run's last stage
does: cluster sizes from a Dirichlet draw (seed 0), a confidence per image, the least certain items,
the intruder chart of every cluster, and a thumbnail for every image the galleries show (the ones
`tasks.thumbnails.for_galleries` would fetch): a unique noisy picture per image, 1.8 KB as a data
URI, like a photo's 2-4 KB, or with `--shoes` the emulator's drawn shoes (1.5 KB). Nothing is
fetched. A row: the page's size, the thumbnails embedded (and how many of them twice), how many
images of each cluster the galleries show, and how many thumbnails the aggregation would fetch.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks import intruders, report, thumbnails  # noqa: E402
from tasks.stages import (  # noqa: E402
    Aggregated,
    AggregationInfo,
    ClusterAccuracy,
    Cost,
    Evaluation,
    RunSummary,
)


def photo(seed: int) -> bytes:
    """A 200x150 PNG of smooth colour blobs and noise: compresses as badly as a photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)).resize(
        (200, 150), Image.BICUBIC
    )
    pixels = np.asarray(blobs).astype(int) + rng.integers(-25, 25, (150, 200, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def shoe(url: str) -> bytes | None:
    from emulator.catalogues import render_png

    return render_png("/" + url.split("/", 3)[3])


def case(n_clusters: int, n_images: int, shoes: bool, out: Path) -> str:
    rng = np.random.default_rng(0)
    items = [f"http://127.0.0.1:8765/images/demo-shoes/s0-{i:05d}.png" for i in range(n_images)]
    sizes = np.floor(rng.dirichlet(np.ones(n_clusters) * 3) * (n_images - 2 * n_clusters) + 2).astype(int)
    labels = np.concatenate([np.repeat(np.arange(n_clusters), sizes), rng.integers(0, n_clusters, n_images)])
    labels = labels[:n_images]
    rng.shuffle(labels)
    largest_first = {old: new for new, old in enumerate(pd.Series(labels).value_counts().index)}
    clusters = pd.Series([largest_first[label] for label in labels], index=items, name="cluster")
    confidence = pd.Series(rng.beta(8, 1, n_images), index=items)
    info = AggregationInfo("gomes", n_images * 10, n_images, n_images * 7, 200, n_clusters, 10, -1.0)
    uncertain = thumbnails.least_certain(Aggregated(clusters, None, info, confidence=confidence))
    assert uncertain is not None
    per_cluster = getattr(thumbnails, "report_per_cluster", lambda _: thumbnails.REPORT_PER_CLUSTER)(clusters)
    shown = thumbnails.gallery_items(clusters, per_cluster, uncertain["item"].astype(str).tolist())
    sources = {url: thumbnails.thumbnail(shoe(url) if shoes else photo(int(url[-9:-4]))) for url in shown}
    accuracy = tuple(ClusterAccuracy(c, float(rng.uniform(0.3, 1)), 4) for c in range(n_clusters))
    folder = out / f"{n_clusters}-{n_images}{'-shoes' if shoes else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    evaluated = Evaluation(0.8, 4 * n_clusters, per_cluster=accuracy)
    chart = intruders.bar_chart(evaluated, folder / "intruders.png")
    summary = RunSummary(
        clusters=n_clusters,
        ari=None,
        nmi=None,
        intruder_accuracy=0.8,
        cost=Cost(10.0, None),
        wall_seconds=1.0,
        report=folder / "report.html",
        summary=folder / "summary.json",
        cluster_sizes={str(k): int(v) for k, v in clusters.value_counts().sort_index().items()},
        metrics=None,
        intruders=evaluated,
        run_key="bench",
        toloka_ids=None,
        coverage=None,
        aggregation=info,
    )
    links = report.ReportLinks(clusters="clusters.csv", chart=report._embedded(chart))
    page = report.render_html(summary, clusters, None, "bench", links, sources, (uncertain, confidence))
    (folder / "report.html").write_text(page)
    shown_items = Counter(re.findall(r"<img src='data:image/jpeg[^']*' (?:id='t\d+' )?title='([^']*)'", page))
    twice = sum(1 for count in shown_items.values() if count > 1)
    return (
        f"{n_clusters:>8} {n_images:>7,} {len(page.encode()) / 1e6:>8.2f} MB {sum(shown_items.values()):>9,} "
        f"{twice:>6,} {per_cluster:>11} {len(shown):>8,}   {folder / 'report.html'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, nargs="+", default=[25, 250])
    parser.add_argument("--images", type=int, nargs="+", default=[3500])
    parser.add_argument("--shoes", action="store_true", help="the emulator's drawn shoes as the images")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to keep the pages (default: a temporary folder)"
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-report-"))
    print("clusters  images     page  embedded  twice per cluster  fetched   page")
    for n_images in args.images:
        for n_clusters in args.clusters:
            print(case(n_clusters, n_images, args.shoes, out), flush=True)


if __name__ == "__main__":
    main()
