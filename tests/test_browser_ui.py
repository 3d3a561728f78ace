"""What a user sees in the Prefect UI, checked in a real browser (headless Chromium via playwright).

The demo run's page and each of its artifacts' pages are opened with the emulator stopped (only
what is always up with the service answers: the Prefect server and the read-only server of
`runs/`). Every `<img>` must have loaded (naturalWidth > 0) and every link to the run report must
answer 200. Chromium is Debian's (`tests/fixtures/browser.py`). Run it alone with
`.venv/bin/pytest tests/test_browser_ui.py`; with CROWDCLUST_SCREENSHOTS=<folder> it also saves a
full-page screenshot of every page it opens.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest

from crowdclust import service
from tests.fixtures.browser import browser_page, needs_chromium

pytestmark = pytest.mark.slow

# Waits until every image on the page has loaded or failed (lazy ones forced to load), then reports.
IMAGES_JS = """
async () => {
  const images = [...document.images];
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done); img.addEventListener("error", done); setTimeout(done, 10000);
  })));
  return images.map((img) => ({src: (img.currentSrc || img.src).slice(0, 120),
                               loaded: img.naturalWidth > 0}));
}
"""
REPORT_LINKS_JS = "() => [...document.links].map((a) => a.href).filter((h) => /report[.]html/.test(h))"


def _report_urls(artifact: dict[str, Any]) -> list[str]:
    """Link targets in a markdown artifact's text, `[text](url)`."""
    return re.findall(r"\]\(([^)\s]+)\)", str(artifact.get("data") or ""))


@pytest.fixture
def demo_artifacts(svc, demo_run) -> list[dict[str, Any]]:
    """The finished demo run's artifacts (a missing one is an error of the run, not of what it shows)."""
    if demo_run.run["state_type"] != "COMPLETED":
        raise RuntimeError(f"the demo run did not complete: {demo_run.run['state']}")
    artifacts = svc.artifacts(demo_run.id)
    missing = {"cluster-galleries", "intruder-chart", "run-report"} - {a["key"] for a in artifacts}
    if missing:
        raise RuntimeError(f"the demo run has no artifacts {sorted(missing)}")
    return artifacts


@needs_chromium
def test_demo_run_pages_render_every_image_with_the_emulator_stopped(svc, demo_run, demo_artifacts):
    ui = svc.cfg.ui_url
    artifacts = demo_artifacts
    report = next(a for a in artifacts if a["key"] == "run-report")
    pages = [f"{ui}/runs/flow-run/{demo_run.id}"] + [f"{ui}/artifacts/artifact/{a['id']}" for a in artifacts]
    pages += [url for url in _report_urls(report) if url.startswith("http")]  # the report's own images
    shots = os.environ.get("CROWDCLUST_SCREENSHOTS")
    broken: dict[str, list[str]] = {}
    image_counts: dict[str, int] = {}
    report_links: set[str] = set()
    service.stop(svc.cfg, "emulator")
    try:
        with browser_page() as page:
            for url in pages:
                page.goto(url, wait_until="networkidle", timeout=60_000)
                page.wait_for_timeout(500)  # the UI renders the artifact after its data arrives
                images = page.evaluate(IMAGES_JS)
                image_counts[url] = len(images)
                bad = [img["src"] for img in images if not img["loaded"]]
                if bad:
                    broken[url] = bad
                report_links.update(page.evaluate(REPORT_LINKS_JS))
                if shots:
                    name = re.sub(r"[^A-Za-z0-9]+", "-", url.split("//", 1)[-1])[-80:]
                    page.screenshot(path=f"{shots}/{len(image_counts):02d}-{name}.png", full_page=True)
    finally:
        service.start(svc.cfg, "emulator")
    targets = set(_report_urls(report)) | report_links
    print(f"images per page: {image_counts}\nnot loaded: {broken}\nreport links: {targets}")
    by_key = {a["key"]: f"{ui}/artifacts/artifact/{a['id']}" for a in artifacts}
    assert image_counts[by_key["intruder-chart"]] >= 1 and image_counts[by_key["cluster-galleries"]] >= 8
    assert not broken, f"images that did not load: {broken}"
    report_pages = [url for url in pages if url.endswith("report.html")]
    assert report_pages and all(image_counts[url] >= 82 for url in report_pages)  # every demo image
    assert targets, "no link to the run report"
    for target in targets:
        assert target.startswith("http"), f"the report link {target} cannot be opened from the UI"
        assert httpx.get(target, timeout=10).status_code == 200, target


@needs_chromium
def test_a_report_of_many_clusters_keeps_its_intruder_chart_inside_the_page(tmp_path):
    """A run of 1,139 images in 27 clusters drew a 1,640-pixel chart (a bar per host cluster), and its
    report was 1,672 pixels wide in a 1,400-pixel window: the whole page scrolled sideways, the
    chart's legend (the overall accuracy) out of sight. The chart is in a box of its own that would
    scroll, and past a few clusters it grows down, a row per cluster, so the box need not scroll."""
    import pandas as pd

    from tasks import report
    from tasks.intruders import bar_chart
    from tasks.stages import AggregationInfo, ClusterAccuracy, Cost, Evaluation, RunSummary

    per_cluster = tuple(ClusterAccuracy(k, (k % 5) / 4, 4) for k in range(40))
    evaluated = Evaluation(0.5, 160, per_cluster=per_cluster)
    chart = bar_chart(evaluated, tmp_path / "intruders.png")
    items = [f"http://img.example/{i}.png" for i in range(80)]
    clusters = pd.Series([i % 40 for i in range(80)], index=items, name="cluster")
    info = AggregationInfo("gomes", 80, 8, 8, 8, 40, 10, -1.0)
    summary = RunSummary(
        clusters=40,
        ari=None,
        nmi=None,
        intruder_accuracy=0.5,
        cost=Cost(0.0, None),
        wall_seconds=1.0,
        report=tmp_path / "report.html",
        summary=tmp_path / "summary.json",
        cluster_sizes={},
        metrics=None,
        intruders=evaluated,
        run_key="k",
        toloka_ids=None,
        coverage=None,
        aggregation=info,
    )
    links = report.ReportLinks(clusters="clusters.csv", chart=report._embedded(chart))
    page_file = tmp_path / "report.html"
    page_file.write_text(report.render_html(summary, clusters, None, "t", links, {}))
    with browser_page() as page:
        page.goto(page_file.as_uri(), wait_until="load")
        width, chart_width, box_width = page.evaluate(
            """() => {
              const img = [...document.images].find((i) => i.alt === "intruder accuracy per cluster");
              return [document.documentElement.scrollWidth, img.naturalWidth, img.parentElement.clientWidth];
            }"""
        )
    assert width <= 1400 and chart_width <= box_width  # the page fits, and the chart its box


@needs_chromium
def test_a_report_of_many_clusters_shows_every_image_it_embeds_once(tmp_path):
    """A least certain image in its cluster's gallery is embedded once and shown twice: the second
    <img> takes its source from the first as the page loads. Every image of a 250-cluster report
    must load, and the page keep to its width (ten images a row)."""
    import pandas as pd

    from tasks import report, thumbnails
    from tasks.stages import Aggregated, AggregationInfo
    from tests.test_artifacts import _png, _summary

    items = [f"http://img.example/{i:04d}.png" for i in range(2000)]
    clusters = pd.Series([i % 250 for i in range(2000)], index=items, name="cluster")
    confidence = pd.Series([0.5 + (i % 9) / 20 for i in range(2000)], index=items)
    info = AggregationInfo("gomes", 10, 2, 2, 2, 250, 10, -1.0)
    uncertain = thumbnails.least_certain(Aggregated(clusters, None, info, confidence=confidence))
    sources = dict.fromkeys(items, thumbnails.thumbnail(_png()))
    links = report.ReportLinks("clusters.csv")
    html = report.render_html(
        _summary(tmp_path, info), clusters, None, "t", links, sources, (uncertain, confidence)
    )
    page_file = tmp_path / "report.html"
    page_file.write_text(html)
    with browser_page() as page:
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.evaluate(IMAGES_JS)
        copies = page.evaluate("() => document.querySelectorAll('img[data-copy]').length")
        width = page.evaluate("() => document.documentElement.scrollWidth")
    assert len(images) == 2000 + 250 * thumbnails.LEAST_CERTAIN and copies == 250 * thumbnails.LEAST_CERTAIN
    assert all(image["loaded"] for image in images) and width <= 1400
