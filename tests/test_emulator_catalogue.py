"""Catalogues, images, filters, TSV encoding, the CLI — the emulator's pieces on their own."""

from __future__ import annotations

import io
from collections import Counter

import httpx
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from emulator import build_catalogue, write_catalogue
from emulator.catalogues import Catalogue
from emulator.filters import admits
from emulator.tsv import encode
from emulator.util import worker_id
from emulator.workers import population
from tests.fixtures.cli import refused


def test_demo_shoes_have_uneven_styles_and_colour_independent_of_style():
    df = build_catalogue("demo-shoes", size=1000, seed=0)
    sizes = Counter(df["class"])
    assert len(sizes) >= 8 and max(sizes.values()) >= 1.8 * min(sizes.values())
    for _, group in df.groupby("class"):
        assert group["colour"].nunique() >= 8  # every style comes in (nearly) every colour
    assert {"image", "class", "gender", "height", "heel", "openness", "sport", "colour"} <= set(df.columns)
    small = build_catalogue("demo-shoes", size=82, seed=0)
    assert small["class"].nunique() == 8 and len(small) == 82
    assert small.equals(build_catalogue("demo-shoes", size=82, seed=0))
    assert not small["class"].equals(build_catalogue("demo-shoes", size=82, seed=1)["class"])
    assert small["image"].iloc[3] == df["image"].iloc[3]  # an item does not depend on the catalogue size


def test_items_are_recognised_by_path_whatever_the_host(tmp_path):
    catalogue = Catalogue("demo-shoes", size=82, seed=0)
    item = catalogue.items[5]
    for host in ("http://127.0.0.1:8765", "http://127.0.0.1:41234", "https://example.org"):
        assert catalogue.resolve(host + item.path) == item
    unknown = catalogue.resolve("https://tlk.s3.yandex.net/photos/0aff.jpg")
    assert unknown.pseudo and unknown == catalogue.resolve("https://tlk.s3.yandex.net/photos/0aff.jpg")
    path = write_catalogue("digits", tmp_path / "digits.tsv", size=30)
    user = Catalogue(str(path))
    assert len(user.items) == 30 and user.resolve(user.items[0].path).cls == user.items[0].cls
    digits = build_catalogue("digits", size=2000)
    assert len(digits) == 1797 and digits["class"].nunique() == 10


def test_images_are_served_as_png(emulator):
    with httpx.Client(base_url=emulator.url) as raw:
        shoe = raw.get("/images/demo-shoes/s0-00007.png")
        digit = raw.get("/images/digits/d-0003.png")
        assert raw.get("/images/demo-shoes/nothing.png").json()["code"] == "DOES_NOT_EXIST"
        listed = raw.get("/_emulator/catalogue").json()
    assert shoe.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(shoe.content)).size == (128, 96)
    assert Image.open(io.BytesIO(digit.content)).size == (64, 64)
    assert listed["size"] == 82 and listed["items"][0]["image"].startswith(
        emulator.url + "/images/demo-shoes/"
    )


def test_worker_ids_are_hex_and_never_numeric():
    ids = [worker_id(0, i) for i in range(2000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    frame = pd.read_csv(io.StringIO("w\n" + "\n".join(ids)))
    assert frame["w"].map(type).eq(str).all()
    types = Counter(w["type"] for w in population(0, 100))
    assert types == {
        "diligent": 60,
        "colour_biased": 10,
        "careless": 10,
        "spammer": 10,
        "lumper": 5,
        "splitter": 5,
    }


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"and": [{"or": [{"category": "skill", "key": "5", "operator": "GTE", "value": 75}]}]}, True),
        ({"and": [{"or": [{"category": "skill", "key": "5", "operator": "GTE", "value": 90}]}]}, False),
        ({"or": [{"category": "skill", "key": "6", "operator": "GTE", "value": 1}]}, False),  # no skill value
        (
            {"or": [{"category": "skill", "key": "777", "operator": "EQ", "value": 100}]},
            False,
        ),  # unknown skill (pool creation refuses it; should one slip through, it admits nobody)
        ({"and": [{"category": "profile", "key": "languages", "operator": "IN", "value": "EN"}]}, True),
        (
            {
                "and": [
                    {
                        "category": "computed",
                        "key": "device_category",
                        "operator": "NE",
                        "value": "SMARTPHONE",
                    }
                ]
            },
            False,
        ),
        (
            {
                "or": [
                    {"category": "computed", "key": "client_type", "operator": "EQ", "value": "TOLOKA_APP"},
                    {"category": "profile", "key": "languages", "operator": "IN", "value": "RU"},
                ]
            },
            False,
        ),
    ],
)
def test_pool_filters(tree, expected):
    profile = {"languages": ["EN"], "client_type": "BROWSER", "device_category": "SMARTPHONE"}
    assert admits(tree, profile, {"5": 80.0}, known_skills={"5", "6"}) is expected


def test_tsv_cell_encoding():
    assert encode(["https://a.jpg", "https://b.jpg"], "array_json") == '"https://a.jpg","https://b.jpg"'
    assert encode([{"group": 1}, {"group": 5}], "array_json") == '{"group":1},{"group":5}'
    assert encode([{"group": 1}], "json") == '[{"group":1}]'
    assert encode(True, "boolean") == "true" and encode(None, "string") == ""


def test_cli_writes_a_catalogue(tmp_path):
    from crowdclust.commands.emulator import app

    out = tmp_path / "shoes.tsv"
    result = CliRunner().invoke(
        app, ["catalogue", "demo-shoes", "-o", str(out), "--size", "120", "--base-url", "http://h:1"]
    )
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out, sep="\t")
    assert len(df) == 120 and df["image"].str.startswith("http://h:1/images/demo-shoes/").all()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["demo-shoes", "--size", "0"], "Invalid value for '--size': 0 is not in the range x>=1"),
        (["nope"], "Invalid value for NAME: catalogue 'nope' is neither a bundled name"),
    ],
)
def test_cli_refuses_an_empty_or_unknown_catalogue(tmp_path, args, says):
    """`--size 0` used to write a header-only file and exit 0; an unknown name was a traceback."""
    out = tmp_path / "c.tsv"
    assert says in refused("emulator", "catalogue", *args, "-o", str(out))
    assert not out.exists()


def test_digits_asked_for_more_images_than_it_has_says_how_many_it_wrote(tmp_path):
    """`catalogue digits --size 5000` wrote 1,797 rows and said only `wrote d.tsv`."""
    from tests.fixtures.cli import invoke

    out = tmp_path / "d.tsv"
    done = invoke("emulator", "catalogue", "digits", "--size", "5000", "-o", str(out))
    assert done.returncode == 0 and len(pd.read_csv(out, sep="\t")) == 1797
    assert done.stdout == f"wrote {out} (1,797 items: digits has no more; --size asked 5,000)\n"
    done = invoke("emulator", "catalogue", "digits", "--size", "1797", "-o", str(out))
    assert done.stdout == f"wrote {out}\n"


def test_unknown_exam_images_are_seen_as_their_gold_groups():
    from emulator.workers import group_images

    catalogue = Catalogue("demo-shoes", size=82, seed=0)
    urls = [f"https://tlk.s3.yandex.net/relsubstitutes/photos/{i:02x}.jpg" for i in range(10)]
    gold = [{"group": g} for g in (1, 5, 1, 3, 2, 2, 2, 3, 4, 4)]
    diligent = next(w for w in population(0, 100) if w["type"] == "diligent") | {"error_rate": 0.0}
    before = group_images(0, diligent, [catalogue.resolve(u) for u in urls], "s")
    catalogue.learn_from_gold(urls, gold)
    after = group_images(0, diligent, [catalogue.resolve(u) for u in urls], "s")

    def partition(groups):
        return {
            frozenset(u for u, g in zip(urls, groups, strict=True) if g["group"] == k)
            for k in {g["group"] for g in groups}
        }

    assert partition(after) == partition(gold) != partition(before)


def test_digit_confusions_follow_visual_similarity():
    from emulator.workers import perceived_class

    digits = Catalogue("digits", size=1797)
    always_wrong = next(w for w in population(0, 100) if w["type"] == "diligent") | {"error_rate": 1.0}
    mistakes = Counter()
    for item in digits.items:
        seen = perceived_class(0, always_wrong, item)
        assert seen != item.cls and seen in item.confusions
        mistakes[(item.cls, seen)] += 1
    # Not uniform noise: each digit's mistakes concentrate on a few look-alikes (e.g. 1 -> 8, 3 -> 9).
    for digit in "0123456789":
        per = sorted((v for k, v in mistakes.items() if k[0] == digit), reverse=True)
        assert sum(per[:2]) >= 0.45 * sum(per)  # the two closest look-alikes; uniform noise would give ~0.22


def test_beyond_ten_groups_a_worker_merges_into_the_closest_group():
    """Out of colours (10 groups), a worker puts a new kind of image with the group it is most like:
    a splitter's new colour of a style goes with that style, a new style with a style it is confused
    with, never into an unrelated group picked at random."""
    from emulator.catalogues import Item
    from emulator.workers import group_images

    workers = population(0, 100)
    diligent = next(w for w in workers if w["type"] == "diligent") | {"error_rate": 0.0}
    splitter = next(w for w in workers if w["type"] == "splitter") | {"error_rate": 0.0}
    styles = [f"style{i}" for i in range(12)]
    items = [Item(f"/x/{s}.png", s, "red") for s in styles[:10]]
    items += [
        Item("/x/style10.png", "style10", "red", confusions=("style3",)),
        Item("/x/style11.png", "style11", "red", confusions=("style7", "style1")),
    ]
    groups = [g["group"] for g in group_images(0, diligent, items, "suite")]
    assert groups[:10] == list(range(1, 11)) and groups[10:] == [4, 8]

    split = [Item(f"/y/{s}.png", s, "red") for s in styles[:10]]
    split += [Item("/y/style5-blue.png", "style5", "blue"), Item("/y/style2-green.png", "style2", "green")]
    groups = [g["group"] for g in group_images(0, splitter, split, "suite")]
    assert groups[:10] == list(range(1, 11)) and groups[10:] == [6, 3]
