"""What the Prefect artifacts and report.html show, without a Prefect server.

Galleries are rendered by a CommonMark parser with tables (as the UI renders markdown) so that an
injected link would show up as an `<a>`; thumbnails are fetched from a real local HTTP server.
"""

from __future__ import annotations

import base64
import html
import http.server
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from tasks import artifacts, report, thumbnails
from tasks.params import TolokaTarget
from tasks.run_folder import RUNS_DIR_ENV, RUNS_URL_ENV, RunFolder
from tasks.stages import (
    Aggregated,
    AggregationInfo,
    CatalogueInfo,
    ClusterAccuracy,
    Cost,
    Evaluation,
    RunSummary,
)

HOSTILE = "http://img.example/a.png?q=)[click](https:evil.example) ![x](https:evil.example)"


def _png(size: tuple[int, int] = (400, 300)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def _thumbnails(urls: list[str], base_url: str | None = None) -> dict[str, str]:
    """URL -> thumbnail of each image that could be fetched and read, as the galleries get them."""
    fetched = thumbnails.fetch_images(urls, base_url)
    return {url: got.uri for url, got in fetched.items() if got.uri is not None}


def _html(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """/ok.png (an image), /text.png (text/plain), /broken.png (image/png that is not one), else 404."""
    bodies = {
        "/ok.png": ("image/png", _png()),
        "/text.png": ("text/plain", b"hello"),
        "/broken.png": ("image/png", b"not a png"),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in bodies:
                self.send_error(404)
                return
            kind, body = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_thumbnails_are_small_jpegs_and_unfetchable_images_are_absent(image_server):
    urls = [f"{image_server}/{name}" for name in ("ok.png", "text.png", "broken.png", "missing.png")]
    urls += ["file:///etc/passwd", "javascript:alert(1)", "relative/path.png"]
    got = _thumbnails(urls)
    assert list(got) == [f"{image_server}/ok.png"]
    prefix, data = got[f"{image_server}/ok.png"].split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    raw = base64.b64decode(data)
    assert len(raw) < 4000
    with Image.open(io.BytesIO(raw)) as image:
        assert image.format == "JPEG" and max(image.size) == thumbnails.BOX


def test_the_gallery_images_that_could_not_be_fetched_are_named(image_server):
    """A dataset row whose image is gone: the galleries show its name, and the log names it."""
    names = ("ok.png", "missing.png", "text.png")
    clusters = pd.Series([0, 0, 1], index=[f"{image_server}/{name}" for name in names])
    fit = Aggregated(clusters, None, AggregationInfo("gomes", 3, 1, 1, 1, 2, 1, -1.0))
    thumbs, unfetched = thumbnails.for_galleries(fit, None)
    assert list(thumbs) == [f"{image_server}/ok.png"]
    assert unfetched == {
        f"{image_server}/missing.png": "HTTP 404",
        f"{image_server}/text.png": "not an image (text/plain)",
    }
    assert thumbnails.unfetched_line(unfetched) == (
        f"2 image(s) the galleries show could not be fetched: 1 HTTP 404 ({image_server}/missing.png); "
        f"1 not an image (text/plain) ({image_server}/text.png)"
    )


def test_a_url_nothing_can_parse_is_an_unfetchable_image_not_an_error(image_server):
    """`http://[host/a.png` (an unbalanced bracket) made urllib raise and stopped the galleries."""
    bad = ["http://[cdn.example.com/img 11.png", "http://x:99999/a.png", "http://x/\x01a.png"]
    assert not any(thumbnails.is_fetchable(url) for url in bad)
    assert list(_thumbnails([*bad, f"{image_server}/ok.png"])) == [f"{image_server}/ok.png"]
    assert list(_thumbnails(bad, base_url=image_server)) == []
    clusters = pd.Series([0, 0, 1, 1], index=[*bad, f"{image_server}/ok.png"])
    fit = Aggregated(clusters, None, AggregationInfo("gomes", 4, 1, 1, 1, 2, 1, -1.0))
    thumbs, unfetched = thumbnails.for_galleries(fit, None)
    assert (list(thumbs), unfetched) == ([f"{image_server}/ok.png"], {})


def test_local_images_are_fetched_from_the_runs_emulator(image_server):
    """A demo dataset names the emulator's default address; the run's emulator is elsewhere."""
    got = _thumbnails(["http://127.0.0.1:9/ok.png"], base_url=image_server)
    assert list(got) == ["http://127.0.0.1:9/ok.png"]


def test_an_image_the_emulator_lacks_is_fetched_from_its_own_host(image_server):
    """A user rehearsing their own image host on the emulator: the emulator answers 404 for the
    host's paths, and every image was reported missing. The URL as written is tried next."""
    emulator = "http://127.0.0.1:9"  # nothing listens: the emulator has none of these images
    got = _thumbnails([f"{image_server}/ok.png"], base_url=emulator)
    assert list(got) == [f"{image_server}/ok.png"]


def test_an_image_neither_the_emulator_nor_its_own_host_serves_names_both_reasons(image_server):
    """configs/shoes on the emulator, offline: every photo was reported `HTTP 404` (the emulator's
    answer for a path it lacks) when the photos' own host could not even be reached, which read as
    photos taken down. The check names what the URL as written gave too."""
    unreachable = "http://127.0.0.1:9"  # nothing listens: the images' own host is out of reach
    got = thumbnails.fetch_images([f"{unreachable}/a.png"], base_url=image_server, thumbnails=False)
    assert got[f"{unreachable}/a.png"].problem == "HTTP 404 from the run's emulator; as written: ConnectError"
    same = thumbnails.fetch_images([f"{image_server}/missing.png"], base_url=image_server, thumbnails=False)
    assert same[f"{image_server}/missing.png"].problem == "HTTP 404"  # one address: one reason


def test_a_host_that_never_answers_is_given_up_and_one_that_answers_is_not(image_server, monkeypatch):
    """A 10,000-image clustering whose image host was out of reach spent 7 min 21 s fetching its
    galleries' 2,298 images one timeout at a time. A host that does not answer UNREACHABLE_AFTER
    times in a row is not tried again; a host that answers, even with 404s, is tried for every image."""
    import socket

    # Short, for the silent host's sake; not so short that the answering one misses it on a busy
    # machine (at 0.3 s, under a load of 14, some of its 404s came back as timeouts).
    monkeypatch.setattr(thumbnails, "TIMEOUT_SECONDS", 1.5)
    silent = socket.create_server(("127.0.0.1", 0), backlog=256)  # accepts, never answers
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:  # closed: the test is over
                return

    threading.Thread(target=accept, daemon=True).start()
    dead = [f"http://127.0.0.1:{silent.getsockname()[1]}/{i}.png" for i in range(60)]
    missing = [f"{image_server}/missing-{i}.png" for i in range(40)]
    try:
        got = thumbnails.fetch_images([*dead, *missing, f"{image_server}/ok.png"], thumbnails=False)
    finally:
        silent.close()
        for connection in accepted:
            connection.close()
    assert len(accepted) < thumbnails.UNREACHABLE_AFTER + thumbnails.WORKERS  # of 60
    problems = [got[url].problem or "" for url in dead]
    host = dead[0].split("/")[2]
    # An image asked reads as its own failure; one not asked says so, not a failure of its own.
    given_up = [problem for problem in problems if problem != "ReadTimeout"]
    assert set(given_up) == {f"not asked: {host} did not answer 16 times in a row (ReadTimeout)"}, problems
    assert len(given_up) >= 60 - len(accepted), problems
    assert thumbnails.hosts_given_up(got) == (
        f"{host} did not answer 16 connections in a row, "
        f"so its other {len(given_up)} images were not asked for."
    )
    assert {got[url].problem for url in missing} == {"HTTP 404"}  # each asked: the host answers
    assert got[f"{image_server}/ok.png"].problem is None


def test_the_check_before_paying_says_why_each_image_cannot_be_shown(image_server):
    """What `hits.check_images` reports: the HTTP status, a page that is not an image, bytes that do
    not decode, a URL that does not parse (an unbalanced bracket raised inside the fetch before)."""
    names = ("ok.png", "text.png", "broken.png", "missing.png")
    urls = [f"{image_server}/{name}" for name in names] + ["http://[cdn.example.com/img 11.png"]
    got = thumbnails.fetch_images(urls, thumbnails=False)
    problems = {url.rsplit("/", 1)[-1]: fetched.problem for url, fetched in got.items()}
    assert problems == {
        "ok.png": None,
        "text.png": "not an image (text/plain)",
        "broken.png": "not a readable image",
        "missing.png": "HTTP 404",
    }  # the unparsable URL is no web address: the dataset check refuses it by line


def test_gallery_is_one_row_per_cluster_and_never_injects_links():
    thumb = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpeg").decode()
    items = [f"http://img.example/{i}.png" for i in range(20)] + [HOSTILE]
    clusters = pd.Series([0] * 15 + [1] * 5 + [2], index=items)
    shown = {item: thumb for item in items[:20]}
    markdown = artifacts.gallery_markdown(clusters, shown, per_cluster=12, max_clusters=2)
    columns = artifacts.GALLERY_COLUMNS
    page = _html(markdown)
    assert "<a " not in page  # the hostile URL is text, not a link or an image
    assert page.count("<img ") == 12 + 5 and page.count(f'src="{thumb}"') == 17
    rows = -(-12 // columns) + 1  # cluster 0: 12 images; cluster 1: 5
    assert page.count("<tr>") == 1 + rows  # header + the two largest clusters, one image a cell
    assert page.count("<td>") == rows * (2 + columns)
    assert "1 smaller cluster (1 image) not shown" in markdown
    alone = _html(artifacts.gallery_markdown(clusters[clusters == 2], {}))
    assert "<a " not in alone and "<img" not in alone and "no image:" in alone
    assert "(no image: <code>a.png?q=)…l.example)</code>)" in alone  # its name, as text, shortened


def test_a_thumbnail_that_is_not_a_clean_data_uri_is_not_embedded():
    clusters = pd.Series([0], index=["http://img.example/a.png"])
    bad = {"http://img.example/a.png": "data:image/jpeg;base64,AAAA)[x](http://evil.example)"}
    page = _html(artifacts.gallery_markdown(clusters, bad))
    assert "<img" not in page and "<a " not in page


def _summary(folder: Path, info: AggregationInfo) -> RunSummary:
    return RunSummary(
        clusters=info.n_clusters,
        ari=None,
        nmi=None,
        intruder_accuracy=None,
        cost=Cost(0.0, None),
        wall_seconds=1.0,
        report=folder / "report.html",
        summary=folder / "summary.json",
        cluster_sizes={},
        metrics=None,
        intruders=None,
        run_key="k",
        toloka_ids=None,
        coverage=None,
        aggregation=info,
    )


def test_hit_coverage_lists_the_images_in_fewer_hits_than_planned_the_fewest_first_up_to_its_limit():
    from tasks.hits import coverage

    items = [f"img{i:04d}" for i in range(artifacts.HIT_COVERAGE_ROWS + 500)]
    plan = [items[i : i + 10] for i in range(0, len(items), 10)] + [items[:20]]  # the first 20 twice
    rows, description = artifacts.coverage_table(coverage(plan, items), target=2)
    assert len(rows) == artifacts.HIT_COVERAGE_ROWS and rows[0] == {
        "item": "`img0020`",
        "hits": 1,
        "image": "",
    }
    assert {"item": "`img0000`", "hits": 2, "image": ""} not in rows  # the best-covered images are left out
    assert description.startswith("HITs per image: 151 HITs over 1,500 images, each image in 1-2 HITs")
    assert description.endswith("1,480 images are in fewer than 2 HITs; the 1,000 in the fewest:")
    small, whole = artifacts.coverage_table(coverage(plan[:3], items[:30]), target=2)
    assert len(small) == 30 and "share no image, so no answer relates images across them." in whole
    assert whole.endswith("The 30 images in fewer than 2 HITs:")


def test_hit_coverage_of_a_plan_that_shows_every_image_as_often_as_planned_lists_no_image():
    """A 3,000-image run on the default balanced design (every image in 10 HITs) had a `hit-coverage`
    table of 1,000 rows that each read 10 (173 KB the UI loads whole, 1,001 table rows on the page),
    headed "The 1,000 in the fewest HITs" though the 2,000 left out were in as many. What a user
    looks for there is the images the design shows too seldom; the description says there are none."""
    from tasks.hits import make_plan
    from tasks.params import HitParams

    items = [f"http://img.example/{i:05d}.png" for i in range(3000)]
    plan = make_plan(items, HitParams(), seed=0)
    assert plan.coverage.histogram == {10: 3000}  # the defaults: balanced, 10 HITs per image
    rows, description = artifacts.coverage_table(
        plan.coverage, "http://127.0.0.1:4301", target=HitParams().hits_per_item
    )
    assert rows == []  # and no word of links where there are none
    assert description == (
        "HITs per image: 3,000 HITs over 3,000 images, each image in 10 HITs (mean 10.0); the HITs link "
        "every image to every other. No image is in fewer than 10 HITs; every image's count is in hits.json."
    )
    # The notebook's design shows images unevenly: those below the plan are listed, the fewest first.
    uneven = make_plan(items, HitParams(design="seed"), seed=0).coverage
    rows, description = artifacts.coverage_table(uneven, target=10)
    below = sum(count for hits, count in uneven.histogram.items() if hits < 10)
    assert below > artifacts.HIT_COVERAGE_ROWS and len(rows) == artifacts.HIT_COVERAGE_ROWS
    assert rows[0]["hits"] == uneven.min and all(row["hits"] < 10 for row in rows)
    assert [row["hits"] for row in rows] == sorted(row["hits"] for row in rows)
    assert description.endswith(f"{below:,} images are in fewer than 10 HITs; the 1,000 in the fewest:")


def test_hit_coverage_links_open_the_images_where_the_runs_emulator_serves_them(emulator):
    """The demo datasets name the emulator's default address (http://127.0.0.1:8765); the service's
    emulator listens elsewhere, so `hit-coverage`'s links (the UI renders a table's text cells as
    markdown) went nowhere. A `local` run's links open the image on its emulator, where the
    galleries' thumbnails come from, and the cell still reads the URL the dataset gives."""
    import httpx

    from emulator import DEFAULT_BASE_URL, build_catalogue
    from tasks.hits import coverage
    from tasks.thumbnails import images_base

    assert not emulator.url.endswith(":8765")
    items = build_catalogue("demo-shoes", size=6)["image"].tolist()
    assert all(item.startswith(f"{DEFAULT_BASE_URL}/images/") for item in items)
    base = images_base(TolokaTarget(environment="local", url=emulator.url))
    rows, description = artifacts.coverage_table(coverage([items[:4], items[2:]], items), base, target=3)
    assert f"Links open the images on the run's emulator, `{emulator.url}`." in description
    assert len(rows) == len(items)
    with httpx.Client(timeout=10) as client:
        for row in rows:
            # The URL as the dataset names it (to find it in hits.json), and no link that goes nowhere.
            item = row["item"].strip("`")
            assert item in items and _html(row["item"]).strip() == f"<p><code>{html.escape(item)}</code></p>"
            links = re.findall(r'<a href="([^"]*)">(.*?)</a>', _html(row["image"]))
            assert links == [(emulator.url + item.removeprefix(DEFAULT_BASE_URL), item.rsplit("/", 1)[1])]
            answer = client.get(links[0][0])
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", links
            assert Image.open(io.BytesIO(answer.content)).size[0] > 0

    # Elsewhere the URL as written; never markup of the URL's own, nor a link that is not http(s).
    odd = [HOSTILE, "javascript:alert(1)", "img0001"]
    rows, description = artifacts.coverage_table(coverage([odd], odd), target=2)
    assert "emulator" not in description
    cells = {html.unescape(re.sub(r"<[^>]+>", "", _html(row["item"]))).strip(): row for row in rows}
    assert set(cells) == set(odd) and all("<a " not in _html(row["item"]) for row in rows)
    hostile = _html(cells[HOSTILE]["image"])
    assert hostile.count("<a ") == 1 and "<img" not in hostile and ">a.png</a>" in hostile, hostile
    assert 'href="http://img.example/a.png?q=%29%5Bclick%5D%28https:evil.example%29%20' in hostile, hostile
    assert cells["javascript:alert(1)"]["image"] == cells["img0001"]["image"] == ""


def test_hit_coverage_links_on_a_service_on_the_network_name_the_address_teammates_reach(monkeypatch):
    """`make up LISTEN=0.0.0.0`: the service's runs reach its emulator at 127.0.0.1, and the
    `hit-coverage` table linked its images there, which a teammate's browser on another machine is
    its own machine. The service names its emulator's shared address (CROWDCLUST_SHARED_EMULATOR_URL):
    links to that emulator name it; links to any other emulator or to Toloka stay as fetched."""
    from tasks.hits import coverage
    from tasks.thumbnails import link_base

    local = TolokaTarget(environment="local", url="http://127.0.0.1:28282")
    monkeypatch.delenv("CROWDCLUST_SHARED_EMULATOR_URL", raising=False)
    assert link_base(local) == "http://127.0.0.1:28282"
    monkeypatch.setenv("CROWDCLUST_SHARED_EMULATOR_URL", "http://192.0.2.2:28282/")
    assert link_base(local) == "http://192.0.2.2:28282"
    assert (
        link_base(TolokaTarget(environment="local", url="http://localhost:28282/"))
        == "http://192.0.2.2:28282/"
    )
    # Another emulator of this machine (not the service's), one on another machine, and Toloka.
    assert (
        link_base(TolokaTarget(environment="local", url="http://127.0.0.1:8765")) == "http://127.0.0.1:8765"
    )
    assert (
        link_base(TolokaTarget(environment="local", url="http://10.0.0.7:28282")) == "http://10.0.0.7:28282"
    )
    assert link_base(TolokaTarget(environment="sandbox")) is None

    items = [f"http://127.0.0.1:8765/images/shoe{i}.png" for i in range(3)]
    rows, description = artifacts.coverage_table(coverage([items], items), link_base(local), target=2)
    assert "Links open the images on the run's emulator, `http://192.0.2.2:28282`." in description
    links = [re.findall(r'<a href="([^"]*)">', _html(row["image"])) for row in rows]
    assert links == [[f"http://192.0.2.2:28282/images/shoe{i}.png"] for i in range(3)], links


def test_run_metrics_are_rounded_for_reading_and_the_estimate_is_one_line(tmp_path):
    """The UI prints a table cell as it gets it: every digit of a float, a dict as JSON. The
    scores' image count is a row only when some clustered images have no class."""
    from dataclasses import replace

    from tasks.stages import CostEstimate

    done = replace(
        _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0)),
        cluster_sizes={"0": 40, "1": 42},
        metrics={"n_items": 80, "ari": 0.9090909090909091},
        cost=Cost(24.024, CostEstimate(14.924, 3.9, 5.2)),
        intruder_accuracy=10 / 11,
        intruders=Evaluation(10 / 11, 11, n_answers=55, answer_accuracy=48 / 55, image_accuracy=0.95123),
    )
    assert {row["metric"]: row["value"] for row in artifacts.metric_rows(done)} == {
        "images_with_a_class": 80,
        "ari": 0.9091,
        "cost_spent": "$24.02",
        "cost_estimate": "main $14.92, exam $3.90, intruders $5.20, total $24.02",
        "intruder_accuracy": 0.909,
        "intruder_accuracy_per_image": 0.951,
        "intruder_answer_accuracy": 0.873,
    }
    every_image = replace(done, metrics={"n_items": 82, "ari": 1.0})
    assert [row["metric"] for row in artifacts.metric_rows(every_image)][:2] == ["ari", "cost_spent"]
    nothing = {
        row["metric"]: row["value"] for row in artifacts.metric_rows(_summary(tmp_path, done.aggregation))
    }
    assert nothing == {
        "cost_spent": "$0.00",
        "cost_estimate": None,
        "intruder_accuracy": None,
        "intruder_accuracy_per_image": None,
        "intruder_answer_accuracy": None,
    }


def test_report_url_is_under_the_served_runs_folder(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "runs" / "my run")
    monkeypatch.delenv(RUNS_URL_ENV, raising=False)
    assert folder.url_of(folder.report) is None
    monkeypatch.setenv(RUNS_URL_ENV, "http://127.0.0.1:8123/")
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path / "runs"))
    assert folder.url_of(folder.report) == "http://127.0.0.1:8123/my%20run/report.html"
    assert RunFolder(tmp_path / "elsewhere").url_of(tmp_path / "elsewhere" / "report.html") is None


def test_clusters_csv_has_the_confidence_and_the_report_lists_the_least_certain(tmp_path):
    items = [f"http://img.example/{i}.png" for i in range(8)] + [HOSTILE]
    clusters = pd.Series([0, 0, 0, 0, 0, 1, 1, 1, 1], index=items, name="cluster")
    confidence = pd.Series([0.99, 0.2, 0.95, 0.97, 0.6, 0.9, 0.3, 0.98, 0.45], index=items)
    info = AggregationInfo("gomes", 10, 2, 2, 2, 2, 10, -1.0)
    aggregated = Aggregated(clusters, None, info, confidence=confidence)
    folder = RunFolder(tmp_path)
    folder.write_clustering(aggregated)
    table = pd.read_csv(folder.clusters)
    assert list(table.columns) == ["item", "cluster", "confidence"]
    assert table.set_index("item")["confidence"].to_dict() == confidence.to_dict()

    uncertain = thumbnails.least_certain(aggregated)
    assert uncertain is not None
    assert uncertain.groupby("cluster")["item"].first().tolist() == [items[1], items[6]]
    summary = _summary(tmp_path, info)
    links = report.ReportLinks(clusters="clusters.csv")
    page = report.render_html(summary, clusters, None, "t", links, {}, (uncertain, confidence))
    section = page.split("<h2 id='least-certain'>", 1)[1].split("<h2 id='clusters'>", 1)[0]
    assert "3 of 9 items have a confidence below 0.5" in section
    assert section.index("0.20") < section.index("0.60")  # lowest first
    assert "<figcaption>0.45</figcaption>" in section
    # Each cluster's mean confidence, next to its least certain items and in its gallery's heading;
    # the only links there go to the galleries (a 200-cluster report's section ran 18,500 pixels).
    assert "cluster 0</a><br>mean&nbsp;0.74" in section and "cluster 1</a><br>mean&nbsp;0.66" in section
    assert re.findall(r"<a href='([^']*)'", section) == ["#cluster-0", "#cluster-1"]
    assert "<h3 id='cluster-0'>Cluster 0 (5 images, mean confidence 0.74)</h3>" in page
    # The page begins with a way to its long sections.
    assert "<a href='#least-certain'>Least certain items</a> · <a href='#clusters'>Clusters</a>" in page
    assert "did not find alike" not in page  # no evaluation: nothing to say


def test_the_report_names_the_clusters_the_second_crowd_did_not_find_alike(tmp_path):
    """A user's cluster at mean confidence 0.86 was 44% one style; its intruder accuracy, 0.31, was
    only in the evaluation's table. The report says it next to the confidence, whatever that is."""
    from dataclasses import replace

    items = [f"http://img.example/{i}.png" for i in range(8)]
    clusters = pd.Series([0, 0, 0, 0, 1, 1, 1, 1], index=items, name="cluster")
    confidence = pd.Series([0.9, 0.95, 0.85, 0.74, 0.99, 0.98, 1.0, 0.97], index=items)
    info = AggregationInfo("gomes", 10, 2, 2, 2, 2, 10, -1.0)
    per_cluster = (ClusterAccuracy(0, 0.31, 13), ClusterAccuracy(1, 0.2, 2))  # 2 HITs say too little
    evaluated = Evaluation(0.3, 15, per_cluster=per_cluster)
    summary = replace(_summary(tmp_path, info), intruders=evaluated, intruder_accuracy=0.3)
    uncertain = thumbnails.least_certain(Aggregated(clusters, None, info, confidence=confidence))
    links = report.ReportLinks(clusters="clusters.csv")
    page = report.render_html(summary, clusters, None, "t", links, {}, (uncertain, confidence))
    section = page.split("<h2>Clusters the second crowd did not find alike</h2>", 1)[1].split("<h2", 1)[0]
    assert "In cluster 0 (0.31 of 13 HITs, mean confidence 0.86) the intruder was found" in section
    assert "cluster 1" not in section
    assert "<h3 id='cluster-0'>Cluster 0 (4 images, mean confidence 0.86, intruders found 0.31)</h3>" in page


def test_report_shows_the_workers_who_group_another_way(tmp_path: Path):
    clusters = pd.Series([0, 1], index=["http://img.example/a.png", "http://img.example/b.png"])
    line = "4 workers (36% of the labels) agree with one another (kappa 1.00; 0.00 with the rest)"
    info = AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0, dissent=line)
    links = report.ReportLinks("c.csv", dissent=("dissent.csv", "dissent_workers.csv"))
    page = report.render_html(_summary(tmp_path, info), clusters, None, "t", links, {})
    section = page.split("<h2>Workers who group another way</h2>", 1)[1].split("<h2>", 1)[0]
    assert html.escape(line) in section and "check the instructions" in section
    assert "href='dissent.csv'" in section and "href='dissent_workers.csv'" in section
    plain = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))
    assert "group another way" not in report.render_html(
        plain, clusters, None, "t", report.ReportLinks("c.csv"), {}
    )


def test_report_links_the_images_to_show_again(tmp_path: Path):
    clusters = pd.Series([0, 1], index=["http://img.example/a.png", "http://img.example/b.png"])
    line = "12 images (24%) only the prior placed (12 outside their cluster's linked piece, 0 below 0.5)"
    info = AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0, recheck=line)
    page = report.render_html(
        _summary(tmp_path, info), clusters, None, "t", report.ReportLinks("c.csv", recheck="recheck.csv"), {}
    )
    section = page.split("<h2>Images to show again</h2>", 1)[1].split("<h2>", 1)[0]
    assert html.escape(line) in section and "href='recheck.csv'" in section
    unlisted = report.render_html(
        _summary(tmp_path, info), clusters, None, "t", report.ReportLinks("c.csv"), {}
    )
    assert "Images to show again" not in unlisted  # no file, no section


def test_report_shows_a_text_box_for_an_image_without_a_thumbnail(tmp_path: Path):
    clusters = pd.Series([0, 0], index=["http://img.example/a.png", "file:///secret/b.png"])
    summary = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 1, 1, -1.0))
    thumb = "data:image/jpeg;base64,AAAA"
    page = report.render_html(
        summary, clusters, None, "t", report.ReportLinks("clusters.csv"), {"http://img.example/a.png": thumb}
    )
    assert f"<img src='{thumb}'" in page and "no image: b.png" in page and "src='file:" not in page


def test_pools_of_earlier_settings_under_the_run_key_are_counted_apart(tmp_path):
    """A rerun with another intruders.n_hits leaves the earlier intruder pool behind, paid: the run's
    cost (the pools behind its result) said $15.08 while the key had cost $17.68."""
    from dataclasses import replace

    from crowdclust.runtime import describe

    base = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))
    rerun = replace(base, cost=Cost(15.08, None, by_run_key=17.68), run_key="shoes-k")
    assert rerun.cost.earlier_pools == 2.6 and rerun.cost.as_dict()["spent_by_run_key"] == 17.68
    line = next(line for line in describe(rerun).splitlines() if line.startswith("cost:"))
    assert line.endswith(
        "$15.08 spent; $17.68 under run key shoes-k in all, $2.60 of it for pools of earlier settings"
    )
    rows = {row["metric"]: row["value"] for row in artifacts.metric_rows(rerun)}
    assert rows["cost_spent_by_run_key"] == "$17.68"
    alone = replace(base, cost=Cost(15.08, None, by_run_key=15.08))
    assert "in all" not in describe(alone) and "cost_spent_by_run_key" not in {
        row["metric"] for row in artifacts.metric_rows(alone)
    }


def test_scores_over_the_images_with_a_class_say_how_many(tmp_path):
    """Blank `class` cells are unknown classes: a score over 80 of 82 images must say so."""
    from dataclasses import replace

    from crowdclust.runtime import describe

    base = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))
    part = replace(
        base, ari=0.9, nmi=0.8, cluster_sizes={"0": 50, "1": 32}, metrics={"ari": 0.9, "n_items": 80}
    )
    line = next(line for line in describe(part).splitlines() if line.startswith("ARI / NMI"))
    assert line.endswith("0.900 / 0.800 (over the 80 of 82 images with a class)")
    clusters = pd.Series([0, 1], index=["http://img.example/a.png", "http://img.example/b.png"])
    page = report.render_html(part, clusters, None, "t", report.ReportLinks("c.csv"), {})
    assert "0.900 (over the 80 of 82 images with a class)" in page
    assert "<tr><th>images_with_a_class</th><td>80</td></tr>" in page and "n_items" not in page
    whole = replace(part, metrics={"ari": 0.9, "n_items": 82})
    assert "images with a class" not in describe(whole)
    page = report.render_html(whole, clusters, None, "t", report.ReportLinks("c.csv"), {})
    assert "images_with_a_class" not in page and "n_items" not in page


def test_the_report_and_the_closing_lines_list_the_warnings_the_clusters_come_with(tmp_path, monkeypatch):
    """The aggregation stage's warnings were in the run's log only, among a hundred other lines."""
    from dataclasses import replace

    said = (
        "409 of 1,139 images (36%) were grouped with no other image <by most workers>",
        "100% of the HITs have a single answer",
    )
    info = replace(AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0), unanchored=409, warnings=said)
    clusters = pd.Series([0, 1], index=["http://img.example/a.png", "http://img.example/b.png"])
    page = report.render_html(_summary(tmp_path, info), clusters, None, "t", report.ReportLinks("c.csv"), {})
    listed = "".join(f"<li>{html.escape(one)}</li>" for one in said)
    assert f"<h2>What the clusters must be read with</h2>\n<ul>{listed}</ul>" in page
    quiet = replace(info, unanchored=0, warnings=())
    page = report.render_html(_summary(tmp_path, quiet), clusters, None, "t", report.ReportLinks("c.csv"), {})
    assert "must be read with" not in page
    # And last in what `crowdclust run` prints at the end.
    from crowdclust.runtime import describe

    assert describe(_summary(tmp_path, info)).splitlines()[-2:] == [
        f"warning:            {one}" for one in said
    ]
    assert "warning" not in describe(_summary(tmp_path, quiet))

    # And in the run's `run-overview` artifact, with no "~" that would strike a stretch of it out.
    published = {}
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda **kw: published.update(kw))
    monkeypatch.setattr(artifacts, "_sub_flow_table", lambda: [])
    unanchored = "409 of 1,139 images (36%): HITs of ~10 images, ~10 HITs per image"
    artifacts.run_overview(_summary(tmp_path, replace(info, warnings=(unanchored,))), "report.html")
    assert published["markdown"].endswith(
        "**Warning:** 409 of 1,139 images (36%): HITs of about 10 images, about 10 HITs per image"
    )


def test_the_reports_second_round_and_catalogue_rows_are_named_in_words(tmp_path):
    """The tables read `main_pool`, `hits`, `assignments`, `n_items 3000`: summary.json's keys and
    bare numbers, not a report's; and a cluster of one image was "(1 images)"."""
    from dataclasses import replace

    from tasks.stages import CatalogueInfo, SecondRound

    base = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))
    clusters = pd.Series([0, 1], index=["http://img.example/a.png", "http://img.example/b.png"])
    again = replace(
        base,
        second_round=SecondRound(1_041, 312, 1_128, "7"),
        catalogue=CatalogueInfo("bigcat", 4_000, 1_000, "2", ("6", "7"), waiting=1_200),
    )
    page = report.render_html(again, clusters, None, "t", report.ReportLinks("c.csv"), {})

    def rows(section: str) -> list[tuple[str, str]]:
        table = page.split(f"<h2>{section}</h2>\n", 1)[1].split("</table>", 1)[0]
        return re.findall(r"<th>(.*?)</th><td>(.*?)</td>", table)

    assert rows("Second round") == [
        ("images shown again", "1,041"),
        ("HITs", "312"),
        ("answers", "1,128"),
        ("main pool", "7"),
    ]
    assert rows("Catalogue") == [
        ("catalogue key", "bigcat"),
        ("images in the catalogue", "4,000"),
        ("new images labelled by this run", "1,000"),
        ("round", "2"),
        ("waiting for the next run", "1,200"),
        ("pools aggregated", "6, 7"),
    ]
    assert "<h3 id='cluster-1'>Cluster 1 (1 image)</h3>" in page


def test_a_rerun_says_how_much_of_the_cost_it_added(tmp_path):
    """A rerun of a finished run printed `cost: $31.82 spent`, as if it had paid it again."""
    from dataclasses import replace

    from crowdclust.runtime import describe

    base = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))

    def cost_line(cost: Cost) -> str:
        return next(
            line for line in describe(replace(base, cost=cost)).splitlines() if line.startswith("cost:")
        )

    repeated = Cost(31.82, None, by_run_key=31.82, added=0.0)
    assert cost_line(repeated).endswith(
        "$31.82 spent, $0.00 of it in this run (the rest in earlier runs of key k)"
    )
    assert repeated.as_dict()["added_by_this_run"] == 0.0
    rows = {row["metric"]: row["value"] for row in artifacts.metric_rows(replace(base, cost=repeated))}
    assert rows["cost_added_by_this_run"] == "$0.00"
    from tasks.stages import CostEstimate

    cheap = Cost(28.34, CostEstimate(14.0, 3.0, 4.8), by_run_key=28.34, added=2.6)  # fee_rate 0, fee 30%
    assert cost_line(cheap).endswith(
        "$28.34 spent (estimate $21.80), $2.60 of it in this run (the rest in earlier runs of key k); "
        "30% above the estimate: check budget.fee_rate against the platform's fee (the log says what "
        "it charged per answer)"
    )
    assert cheap.as_dict()["above_estimate"].startswith("30% above the estimate")  # summary.json
    page = report.render_html(
        replace(base, cost=cheap), pd.Series([0], index=["http://img.example/a.png"]), None, "t",
        report.ReportLinks(clusters="clusters.csv"),
    )  # fmt: skip
    assert "<th>above the estimate</th><td>30% above the estimate: check budget.fee_rate" in page
    assert "<th>estimate</th><td>main $14.00, exam $3.00, intruders $4.80, total $21.80</td>" in page
    assert cost_line(Cost(19.80, CostEstimate(14.0, 3.0, 2.8))).endswith("(estimate $19.80)")
    round_two = Cost(5.0, CostEstimate(0.47, 3.9, 2.6, exam_paid=3.71), by_run_key=9.0, added=5.0)
    page = report.render_html(
        replace(base, cost=round_two), pd.Series([0], index=["http://img.example/a.png"]), None, "t",
        report.ReportLinks(clusters="clusters.csv"),
    )  # fmt: skip
    assert "exam_paid_before_this_run" not in page  # a catalogue round's estimate read its raw key
    assert html.escape("($3.71 of the exam pool's $3.90 was paid before this run, not spent again)") in page
    resumed = Cost(31.82, None, by_run_key=44.82, added=13.0)
    assert cost_line(resumed).endswith(
        "$31.82 spent, $13.00 of it in this run (the rest in earlier runs of key k); "
        "$44.82 under run key k in all, $13.00 of it for pools of earlier settings"
    )
    page = report.render_html(
        replace(base, cost=Cost(1234.567, None, by_run_key=1300.0, added=0.0)),
        pd.Series([0], index=["http://img.example/a.png"]),
        None,
        "t",
        report.ReportLinks("c.csv"),
        {},
    )
    costs = page.split("<h2>Cost (USD)</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<th>spent (the pools behind this result)</th><td>$1,234.57</td>" in costs  # was 1235
    assert "<th>of it added by this run</th><td>$0.00</td>" in costs
    assert "<th>every pool of the run key</th><td>$1,300.00</td>" in costs
    assert "<th>estimate</th><td>n/a</td>" in costs and "–" not in page
    assert page.index("added by this run") < page.index("every pool of the run key")
    assert "<th>ARI vs truth</th><td>n/a</td>" in page and "<th>run key</th><td>k</td>" in page
    first = Cost(31.82, None, by_run_key=31.82, added=31.82)
    assert cost_line(first).endswith("$31.82 spent") and "cost_added_by_this_run" not in {
        row["metric"] for row in artifacts.metric_rows(replace(base, cost=first))
    }
    # A catalogue run's `spent` is what this run added: a run that finished a stopped round read
    # "spent (the pools behind this result) $0.22" where those pools had been charged $1.01.
    catalogue = CatalogueInfo("k", 40, 30, "r1", ("17",), waiting=10)
    page = report.render_html(
        replace(base, cost=Cost(0.221, None, by_run_key=1.014, added=0.221), catalogue=catalogue),
        pd.Series([0], index=["http://img.example/a.png"]), None, "t", report.ReportLinks("c.csv"), {},
    )  # fmt: skip
    costs = page.split("<h2>Cost (USD)</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<th>spent by this run (what the pools of the key grew by)</th><td>$0.22</td>" in costs, costs
    assert "pools behind this result" not in costs and "added by this run" not in costs
    assert "<th>every pool of the run key</th><td>$1.01</td>" in costs


def test_a_report_of_sure_images_shows_no_gallery_to_send_back_and_links_the_rest(tmp_path):
    """At 2,500 images a user saw 40 images at 1.00 under 'the ones to send back'; the gallery's
    '... and N more (see clusters.csv)' was not a link."""
    items = [f"http://img.example/{i}.png" for i in range(report.GALLERY_LIMIT + 5)]
    clusters = pd.Series(0, index=items)
    confidence = pd.Series(1.0, index=items)
    uncertain = pd.DataFrame({"item": items[:3], "cluster": 0, "confidence": 1.0})
    info = AggregationInfo("gomes", 1, 1, 1, 1, 1, 1, -1.0)
    page = report.render_html(
        _summary(tmp_path, info),
        clusters,
        None,
        "t",
        report.ReportLinks("clusters.csv"),
        {},
        (uncertain, confidence),
    )
    section = page.split("<h2 id='least-certain'>", 1)[1].split("<h2 id='clusters'>", 1)[0]
    assert "Every image's confidence is 0.99 or more: none to send back." in section
    assert "<figure>" not in section
    assert "… and 5 more (see <a href='clusters.csv'>clusters.csv</a>)" in page
    # Images that only the prior placed are listed to show again, however sure: the page said both
    # "Images to show again: 4 images" and "none to send back".
    shown_again = replace(info, recheck="4 images (0%) only the prior placed")
    page = report.render_html(
        _summary(tmp_path, shown_again),
        clusters,
        None,
        "t",
        report.ReportLinks("clusters.csv", recheck="recheck.csv"),
        {},
        (uncertain, confidence),
    )
    assert "<h2>Images to show again</h2>" in page and "none to send back" not in page
    assert "the images to show again above are those that only the prior placed" in page


def test_a_long_class_name_breaks_inside_its_own_caption():
    """1,500 shoes: 'womens_ankle_boots' ran into the next image's caption in the galleries."""
    figure = report._figure("http://img.example/1.png", {}, "womens_ankle_boots")
    assert "<figcaption>womens_<wbr>ankle_<wbr>boots</figcaption>" in figure
    assert "<figcaption>a&lt;b_<wbr>c</figcaption>" in report._figure("x", {}, "a<b_c")  # escaped first


def test_the_runs_last_lines_count_the_single_item_clusters(tmp_path):
    """`crowdclust aggregate` says `(2 of them a single item)`; the run's summary said nothing."""
    from crowdclust.runtime import describe

    base = _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))
    lone = replace(base, clusters=3, cluster_sizes={"0": 40, "1": 1, "2": 1})
    assert describe(lone).splitlines()[0].endswith("3 (sizes [40, 1, 1]; 2 of them a single item)")
    assert (
        describe(replace(lone, cluster_sizes={"0": 40, "1": 2})).splitlines()[0].endswith("(sizes [40, 2])")
    )
    # 174 clusters of a co-association clustering: 599 characters of sizes in one line
    many = {str(i): 40 - i if i < 30 else 1 for i in range(174)}
    first = describe(replace(lone, clusters=174, cluster_sizes=many)).splitlines()[0]
    shown = ", ".join(str(40 - i) for i in range(20))
    assert first.endswith(f"174 (sizes [{shown}, ...] and 154 more; 144 of them a single item)"), first


def test_an_aggregate_runs_name_keeps_its_parentheses_and_markup_stays_text():
    """An aggregate run is named `<name> (<run key>)`: the run overview's link read
    `big-shoes _big-shoes-756e96604f-s0_`. Parentheses are kept; what could end a link's text, a
    table cell or start markup is not."""
    name = "big-shoes (big-shoes-756e96604f-s0)"
    assert artifacts.name_text(name) == name
    assert artifacts.name_text("x](http://evil) | *y* `z` <b>") == "x_(http___evil) _ _y_ _z_ _b_"
    page = _html(f"| run |\n|---|\n| [{artifacts.name_text(name)}](http://127.0.0.1:4200/runs/flow-run/1) |")
    assert page.count("<a ") == 1 and f">{name}</a>" in page


def test_the_intruder_table_says_which_clusters_it_lacks_for_want_of_a_hit():
    """A cluster too small to host a HIT is in the gallery and not in the table: a 4-image junk
    cluster was missing from it without a word."""
    from tasks.stages import ClusterAccuracy, Evaluation

    hosted = (ClusterAccuracy(0, 0.9, 10), ClusterAccuracy(1, 0.92, 12))
    evaluated = Evaluation(accuracy=0.91, n_hits=22, per_cluster=hosted, skipped=(8,), image_accuracy=0.934)
    assert artifacts.intruder_description(evaluated, 3) == (
        "Intruder accuracy per host cluster: 0.910 over 22 HITs, 0.934 per image; too small to host a "
        "HIT, not in the table: cluster 8"
    )
    two = artifacts.intruder_description(replace(evaluated, skipped=(8, 26)), 4)
    assert two.endswith("too small to host a HIT, not in the table: clusters 8, 26")
    assert "too small" not in artifacts.intruder_description(replace(evaluated, skipped=()), 2)


def test_intruder_hits_spread_thin_are_said_in_the_report_and_the_artifact_not_only_the_log(tmp_path):
    """A 4,000-image catalogue of 28 clusters: 100 intruder HITs, 2-6 per cluster. Only the
    evaluation's log said that a cluster's accuracy then rests on a few HITs; report.html and the
    `intruder-accuracy` artifact listed every cluster's figure (0.00 of 2 HITs, 1.00 of 2) without it."""
    from tasks.stages import ClusterAccuracy, Evaluation

    per_cluster = tuple(ClusterAccuracy(c, 0.5, 4) for c in range(25))
    evaluated = Evaluation(accuracy=0.31, n_hits=100, per_cluster=per_cluster, skipped=(26, 27))
    said = (
        "100 intruder HITs over 26 clusters that can host one: 3.8 per cluster (1 with none), so a "
        "cluster's accuracy rests on a few HITs and only the overall figure is worth reading; "
        "intruders.n_hits 130 would give each about 5"
    )
    assert artifacts.intruder_description(evaluated, 28).endswith(f"clusters 26, 27. {said}")
    info = AggregationInfo("gomes", 10, 2, 2, 2, 2, 10, -1.0)
    summary = replace(_summary(tmp_path, info), clusters=28, intruders=evaluated, intruder_accuracy=0.31)
    clusters = pd.Series(range(28), index=[f"i{k}" for k in range(28)], name="cluster")
    page = report.render_html(summary, clusters, None, "t", report.ReportLinks("c.csv"), {})
    section = page.split("<h2>Intruder evaluation</h2>", 1)[1].split("<table>", 1)[0]
    assert f"<p>{html.escape(said)}.</p>" in section
    enough = replace(evaluated, n_hits=130)
    assert "worth reading" not in artifacts.intruder_description(enough, 28)
    assert "worth reading" not in report.render_html(
        replace(summary, intruders=enough), clusters, None, "t", report.ReportLinks("c.csv"), {}
    )


def test_a_poll_line_of_a_large_pool_writes_its_counts_and_dollars_as_the_budget_beside_them():
    """A 10,000-image run's poll line read `56016 submitted, 56016 accepted, $1456.42 spent (359 s);
    with the exams $1,493.65 of the $20,000.00 left`: two ways to write a number on one line. Every
    count and sum now has its thousands separator, as the budget and the other log lines have."""
    from tasks.stages import PoolStats

    stats = PoolStats(
        completion_percentage=80.2,
        submitted_assignments_count=56016.0,
        approved_assignments_count=56016.0,
        spent_budget=1456.42,
        elapsed=359.4,
    )
    assert artifacts.poll_line("main pool 24", stats) == (
        "main pool 24: 80% complete, 56,016 submitted, 56,016 accepted, $1,456.42 spent (359 s)"
    )
    small = PoolStats(completion_percentage=100.0, submitted_assignments_count=574.0, spent_budget=14.92)
    assert artifacts.poll_line("main pool 6", small) == (
        "main pool 6: 100% complete, 574 submitted, ? accepted, $14.92 spent (0 s)"
    )


def test_the_galleries_say_how_much_of_each_cluster_the_report_shows():
    """`cluster-galleries` ended "All images: report.html" at any size; a 3,000-image run's report
    shows 60 images of each of its 8 clusters (480) and sends the rest to clusters.csv."""
    from tasks.thumbnails import REPORT_PER_CLUSTER

    link = "[report.html](http://127.0.0.1:4280/big/report.html)"
    items = [f"http://img.example/{i:05d}.png" for i in range(3000)]
    large = pd.Series([i % 8 for i in range(3000)], index=items, name="cluster")
    thumbs: dict[str, str] = {}
    page = artifacts.gallery_markdown(large, thumbs, report_note=artifacts.report_note(large, link))
    assert "All images" not in page
    assert page.endswith(
        f"Every cluster, up to {REPORT_PER_CLUSTER} images of each (the rest in clusters.csv): {link}"
    )
    small = large.iloc[: 8 * REPORT_PER_CLUSTER]  # every cluster whole in the report
    assert artifacts.report_note(small, link) == f"All images: {link}"


def _thumb(n: int) -> str:
    """A distinct data URI of about the size of a real thumbnail (2-4 KB)."""
    return "data:image/jpeg;base64," + base64.b64encode(n.to_bytes(4, "big") * 600).decode()


def test_the_report_of_many_clusters_stays_near_the_size_of_a_few(tmp_path):
    """A 3,500-image catalogue made a 2-3 MB report in 25 clusters and 9-16 MB in 250: every cluster
    showed up to 60 images, so the 250 small clusters showed every image, and the least certain
    ones were embedded twice (in their cluster's gallery as well). The galleries now share about
    1,500 images (at least a row of 10 a cluster), each thumbnail is embedded once, and the page
    says where the rest are."""
    from tasks.thumbnails import REPORT_IMAGES, REPORT_ROW, report_per_cluster

    def page_of(n_clusters: int, size: int) -> tuple[str, pd.Series, dict[str, str]]:
        items = [f"http://img.example/{i:05d}.png" for i in range(n_clusters * size)]
        clusters = pd.Series([i % n_clusters for i in range(len(items))], index=items, name="cluster")
        confidence = pd.Series([0.5 + (i % 7) / 20 for i in range(len(items))], index=items)
        info = AggregationInfo("gomes", 10, 2, 2, 2, n_clusters, 10, -1.0)
        uncertain = thumbnails.least_certain(Aggregated(clusters, None, info, confidence=confidence))
        sources = {item: _thumb(n) for n, item in enumerate(items)}
        page = report.render_html(
            _summary(tmp_path, info), clusters, None, "t", report.ReportLinks("clusters.csv"), sources,
            (uncertain, confidence),
        )  # fmt: skip
        return page, clusters, sources

    few, clusters, sources = page_of(25, 140)
    assert report_per_cluster(clusters) == 60 and few.count("data:image/jpeg") == 25 * 60
    many, clusters, sources = page_of(250, 14)
    assert report_per_cluster(clusters) == REPORT_ROW
    # 10 of each cluster, and the least certain that are not among them (each embedded once): it
    # embedded every image (3,500), and 1,250 least certain ones again.
    uris = re.findall(r"src='(data:[^']*)'", many)
    embedded = len(uris)
    assert len(set(uris)) == embedded and set(uris) <= set(sources.values())
    assert 250 * REPORT_ROW < embedded < 2 * REPORT_IMAGES and len(many) < 2 * len(few)
    # The least certain images in a gallery take their source from its <img> when the page loads.
    copies = re.findall(r"<img data-copy='(t\d+)'", many)
    assert len(copies) + embedded - 250 * REPORT_ROW == 250 * thumbnails.LEAST_CERTAIN
    assert all(re.search(rf"<img src='data:[^']*' id='{c}'", many) for c in copies[:3])
    assert report.COPY_SCRIPT in many and report.COPY_SCRIPT not in report.render_html(
        _summary(tmp_path, AggregationInfo("gomes", 1, 1, 1, 1, 1, 1, -1.0)),
        clusters.iloc[:3], None, "t", report.ReportLinks("clusters.csv"), {},
    )  # fmt: skip
    assert "<p>Up to 10 images of each cluster, the first by name (60 when there are fewer clusters" in many
    assert "… and 4 more (see <a href='clusters.csv'>clusters.csv</a>)" in many
    # Past 10 clusters the galleries begin with a link to each; 10 clusters have none.
    assert "<p>Go to <a href='#cluster-0'>0</a> · <a href='#cluster-1'>1</a> · " in many
    assert many.count("<a href='#cluster-") == 2 * 250 and "Go to" not in page_of(10, 14)[0]
    link = "[report.html](http://127.0.0.1:4280/big/report.html)"
    assert artifacts.report_note(clusters, link) == (
        f"Every cluster, up to 10 images of each (the rest in clusters.csv): {link}"
    )


def test_an_unserved_report_is_named_by_its_absolute_path_and_host(tmp_path: Path, monkeypatch):
    """A `crowdclust run` of a second user of the service writes into that user's checkout: its
    `run-report` read `runs/tiny-shoes__diff-b/report.html` on the shared server's UI, a path every
    user's checkout has, and for a run key resumed by another user, a folder of the same name."""
    import socket

    published = {}
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda **kw: published.update(kw))
    monkeypatch.chdir(tmp_path)
    summary = _summary(Path("runs") / "shoes__k", AggregationInfo("gomes", 1, 1, 1, 1, 2, 1, -1.0))
    where = artifacts.report_link(summary, None)
    assert f"`{tmp_path / 'runs' / 'shoes__k' / 'report.html'}` on `{socket.gethostname()}`" in where
    assert published["markdown"] == f"Report: {where}"


def test_a_waits_progress_artifact_shows_a_poll_every_few_seconds_and_the_one_it_ended_on(monkeypatch):
    """Updated on every poll, a run of the demo's config (waits polling each second) sent 74 artifact
    updates, each an API request and an event the server stores. Now the artifact takes a poll at
    most every PROGRESS_EVERY seconds, a poll at 100% at once, and the poll the wait returned with
    (`show_last`); the log lines are as before."""
    import logging

    from tasks.stages import PoolStats

    shown: list[tuple[float, str]] = []
    monkeypatch.setattr(artifacts, "get_run_logger", lambda: logging.getLogger("test-progress"))
    monkeypatch.setattr(artifacts, "parent_run_logger", lambda: None)
    monkeypatch.setattr(artifacts, "create_progress_artifact", lambda **kwargs: "artifact-1")
    monkeypatch.setattr(
        artifacts,
        "update_progress_artifact",
        lambda artifact_id, progress, description: shown.append((progress, description)),
    )
    now = [0.0]
    reporter = artifacts.ProgressReporter("main-pool-progress", "main pool 7", clock=lambda: now[0])

    def poll(done: float) -> None:
        reporter(PoolStats(completion_percentage=done, submitted_assignments_count=done, elapsed=now[0]))
        now[0] += 1.0  # a poll a second, as the demo's config

    for done in range(12):  # 0 s .. 11 s: the first poll, then one each PROGRESS_EVERY (5 s)
        poll(float(done))
    assert artifacts.PROGRESS_EVERY == 5.0
    assert [progress for progress, _ in shown] == [0.0, 5.0, 10.0], shown
    poll(11.5)
    reporter.show_last()  # the wait returned after this poll
    assert shown[-1] == (11.5, artifacts.poll_line("main pool 7", PoolStats(11.5, 11.5, elapsed=12.0)))
    reporter.show_last()  # nothing new to show: no second request
    poll(100.0)  # completed: shown at once, however soon after the last
    assert [progress for progress, _ in shown] == [0.0, 5.0, 10.0, 11.5, 100.0], shown
