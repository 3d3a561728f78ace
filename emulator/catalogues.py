"""Catalogues: items with ground truth that the simulated crowd perceives, and their images.

A catalogue item is recognised by the PATH of its image URL (`/images/<catalogue>/<file>.png`),
never by host or port, because datasets are written with the default base URL while tests run the
emulator on random ports. Bundled catalogues are generated, not stored:

* `demo-shoes`: Pillow-drawn shoes in 8 styles. Item `i` of seed `s` has the file `s<s>-<i:05d>`;
  its style comes from a seeded, shuffled pattern of 50 slots with uneven class shares (so every prefix
  of 50+ items holds every style) and its colour is drawn independently of the style.
* `digits`: scikit-learn's bundled 8x8 digits (1,797 images); the confusable class of an image is the
  nearest other class centroid (visual similarity, not uniform noise).
* a TSV path: image URL + `class` (+ optional attribute columns); any dataset with known truth.

URLs that match nothing get deterministic pseudo-attributes from sha256 of the URL (logged once).
"""

from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from emulator.settings import DEFAULT_BASE_URL
from emulator.util import rng, stable_int

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("emulator.catalogues")

COLOURS = ["black", "brown", "white", "red", "blue", "beige", "grey", "green", "pink", "navy"]
COLOUR_RGB = {
    "black": (30, 30, 30),
    "brown": (120, 72, 36),
    "white": (236, 236, 230),
    "red": (200, 40, 40),
    "blue": (50, 90, 200),
    "beige": (215, 190, 150),
    "grey": (140, 140, 140),
    "green": (60, 140, 70),
    "pink": (235, 140, 180),
    "navy": (25, 35, 90),
}

# style -> (share in the 50-slot pattern, attributes). Colour is deliberately not an attribute of style.
SHOE_STYLES: dict[str, tuple[int, dict[str, str]]] = {
    "mens_formal": (8, {"gender": "men", "height": "low", "heel": "no", "openness": "closed", "sport": "no"}),
    "mens_boots": (
        5,
        {"gender": "men", "height": "ankle", "heel": "no", "openness": "closed", "sport": "no"},
    ),
    "sneakers": (9, {"gender": "any", "height": "low", "heel": "no", "openness": "closed", "sport": "yes"}),
    "womens_knee_boots": (
        4,
        {"gender": "women", "height": "knee", "heel": "yes", "openness": "closed", "sport": "no"},
    ),
    "womens_ankle_boots": (
        5,
        {"gender": "women", "height": "ankle", "heel": "yes", "openness": "closed", "sport": "no"},
    ),
    "heeled_pumps": (
        7,
        {"gender": "women", "height": "low", "heel": "yes", "openness": "closed", "sport": "no"},
    ),
    "heeled_sandals": (
        5,
        {"gender": "women", "height": "low", "heel": "yes", "openness": "open", "sport": "no"},
    ),
    "flats_loafers": (
        7,
        {"gender": "women", "height": "low", "heel": "no", "openness": "closed", "sport": "no"},
    ),
}
# The natural mistakes between styles (ankle vs knee boots, pumps vs sandals, ...).
SHOE_CONFUSIONS: dict[str, tuple[str, ...]] = {
    "mens_formal": ("flats_loafers", "mens_boots"),
    "mens_boots": ("womens_ankle_boots", "mens_formal"),
    "sneakers": ("flats_loafers",),
    "womens_knee_boots": ("womens_ankle_boots",),
    "womens_ankle_boots": ("womens_knee_boots", "mens_boots"),
    "heeled_pumps": ("heeled_sandals", "flats_loafers"),
    "heeled_sandals": ("heeled_pumps",),
    "flats_loafers": ("heeled_pumps", "mens_formal"),
}
BUNDLED = ("demo-shoes", "digits")
IMAGE_PATH = re.compile(r"/images/(?P<catalogue>[A-Za-z0-9_.-]+)/(?P<file>[A-Za-z0-9_.-]+)\.png$")
SHOE_FILE = re.compile(r"^s(?P<seed>\d+)-(?P<index>\d+)$")
DIGIT_FILE = re.compile(r"^d-(?P<index>\d+)$")


@dataclass(frozen=True)
class Item:
    """One catalogue item as the crowd sees it."""

    path: str
    cls: str
    colour: str
    attrs: dict[str, str] = field(default_factory=dict)
    confusions: tuple[str, ...] = ()
    group: str = ""  # what a "lumper" merges on (shoes: gender)
    pseudo: bool = False


def url_path(url: str) -> str:
    """The path part of an image URL (`/images/demo-shoes/s0-00001.png`)."""
    return urlsplit(str(url).strip()).path


@functools.lru_cache(maxsize=64)
def _shoe_pattern(seed: int) -> tuple[str, ...]:
    slots = [style for style, (share, _) in SHOE_STYLES.items() for _ in range(share)]
    rng("shoe-pattern", seed).shuffle(slots)
    return tuple(slots)


def shoe_item(seed: int, index: int) -> Item:
    """Item `index` of the demo-shoes catalogue of `seed` (independent of the catalogue size)."""
    style = _shoe_pattern(seed)[index % 50]
    colour = COLOURS[stable_int("shoe-colour", seed, index) % len(COLOURS)]
    attrs = {**SHOE_STYLES[style][1], "colour": colour}
    return Item(
        path=f"/images/demo-shoes/s{seed}-{index:05d}.png",
        cls=style,
        colour=colour,
        attrs=attrs,
        confusions=SHOE_CONFUSIONS[style],
        group=attrs["gender"],
    )


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Any, Any, list[tuple[str, ...]], list[str]]:
    """Images, targets, per-image confusable class and per-image ink level of sklearn's digits."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    flat = data.data.astype(float)
    centroids = np.stack([flat[data.target == k].mean(axis=0) for k in range(10)])
    distances = ((flat[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    confusions = []
    for row, target in zip(distances, data.target, strict=True):
        order = [int(k) for k in np.argsort(row) if int(k) != int(target)]
        confusions.append((str(order[0]), str(order[1])))
    ink = flat.sum(axis=1)
    low, high = np.quantile(ink, [1 / 3, 2 / 3])
    levels = ["thin" if v < low else "bold" if v > high else "medium" for v in ink]
    return data.images, data.target, confusions, levels


def digit_item(index: int) -> Item:
    """Item `index` of scikit-learn's digits."""
    _, targets, confusions, levels = _digits()
    cls = str(int(targets[index]))
    return Item(
        path=f"/images/digits/d-{index:04d}.png",
        cls=cls,
        colour=levels[index],
        attrs={"ink": levels[index]},
        confusions=confusions[index],
        group=str(int(cls) % 3),
    )


def pseudo_item(path: str) -> Item:
    """Deterministic pseudo-attributes for a URL no catalogue knows (sha256 of the path)."""
    h = stable_int("pseudo-item", path)
    style = list(SHOE_STYLES)[h % len(SHOE_STYLES)]
    colour = COLOURS[(h >> 8) % len(COLOURS)]
    attrs = {**SHOE_STYLES[style][1], "colour": colour}
    return Item(path, style, colour, attrs, SHOE_CONFUSIONS[style], attrs["gender"], pseudo=True)


class Catalogue:
    """The active catalogue (what `/_emulator/catalogue` lists) plus a resolver for any image URL."""

    def __init__(self, name: str, size: int = 82, seed: int = 0) -> None:
        self.name = name
        self.seed = seed
        self._table: dict[str, Item] = {}
        self._logged: set[str] = set()
        self._parent: dict[str, str] = {}  # union-find over unknown images grouped together by exam gold
        if name == "demo-shoes":
            self.items = [shoe_item(seed, i) for i in range(size)]
        elif name == "digits":
            self.items = [digit_item(i) for i in range(min(size, len(_digits()[1])))]
        else:
            self.items = _load_tsv(Path(name))
            self._table = {item.path: item for item in self.items}

    def resolve(self, url: str) -> Item:
        """The item behind an image URL, recognised by its path whatever host and port it names."""
        path = url_path(url)
        item = self._table.get(path) or bundled_item(path)
        if item is not None:
            return item
        if path in self._parent:
            base = pseudo_item(path)
            cls = f"gold:{self._root(path)}"
            return Item(path, cls, base.colour, base.attrs, (), base.group, pseudo=True)
        if path not in self._logged:
            self._logged.add(path)
            log.info("image %s is in no catalogue: using deterministic pseudo-attributes", url)
        return pseudo_item(path)

    def learn_from_gold(self, images: list[str], groups: list[Any]) -> None:
        """Make unknown images that a golden grouping (an exam task) puts together look alike.

        Published configs use exam images no catalogue knows; without this their gold could never agree
        with what the crowd perceives and nobody would pass the exam. Images grouped together by any gold
        share one class (union-find); images that a catalogue knows are never changed.
        """
        if len(images) != len(groups):
            return
        first: dict[Any, str] = {}
        for url, g in zip(images, groups, strict=True):
            path = url_path(url)
            if self._table.get(path) or bundled_item(path):
                continue
            self._parent.setdefault(path, path)
            label = g.get("group") if isinstance(g, dict) else g
            if label in first:
                a, b = self._root(first[label]), self._root(path)
                self._parent[max(a, b)] = min(a, b)
            else:
                first[label] = path

    def _root(self, path: str) -> str:
        while self._parent[path] != path:
            self._parent[path] = self._parent[self._parent[path]]
            path = self._parent[path]
        return path

    def frame(self, base_url: str = DEFAULT_BASE_URL) -> pd.DataFrame:
        """The catalogue as a table: image URL, true class, attributes."""
        import pandas as pd

        rows = [
            {"image": _absolute(base_url, item.path), "class": item.cls, **item.attrs} for item in self.items
        ]
        return pd.DataFrame(rows)


@functools.lru_cache(maxsize=65536)
def bundled_item(path: str) -> Item | None:
    """Resolve a bundled path (`/images/demo-shoes/s0-00012.png`, `/images/digits/d-0007.png`)."""
    match = IMAGE_PATH.search(path)
    if not match:
        return None
    catalogue, file = match["catalogue"], match["file"]
    if catalogue == "demo-shoes" and (m := SHOE_FILE.match(file)):
        return shoe_item(int(m["seed"]), int(m["index"]))
    if catalogue == "digits" and (m := DIGIT_FILE.match(file)) and int(m["index"]) < len(_digits()[1]):
        return digit_item(int(m["index"]))
    return None


def _absolute(base_url: str, path: str) -> str:
    return path if "://" in path else base_url.rstrip("/") + path


class CatalogueError(ValueError):
    """A catalogue that is neither bundled nor a usable TSV: the user's input, not a fault of ours."""


def _load_tsv(path: Path) -> list[Item]:
    """Read a user catalogue: an image URL column (`image`, `url` or the first) and `class`."""
    import pandas as pd

    if not path.is_file():
        raise CatalogueError(
            f"catalogue {str(path)!r} is neither a bundled name {BUNDLED} nor a readable TSV file"
        )
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CatalogueError(f"catalogue {path}: not a readable TSV ({exc})") from None
    image_col = next((c for c in ("image", "url", "INPUT:image") if c in frame.columns), frame.columns[0])
    class_col = next((c for c in ("class", "label", "truth") if c in frame.columns), None)
    if class_col is None:
        raise CatalogueError(f"catalogue {path}: needs a 'class' column next to {image_col!r}")
    classes = sorted(set(frame[class_col]))
    items = []
    for row in frame.to_dict("records"):
        cls = row[class_col]
        full_path = url_path(row[image_col])
        attrs = {k: v for k, v in row.items() if k not in (image_col, class_col) and v != ""}
        colour = attrs.get("colour") or COLOURS[stable_int("tsv-colour", full_path) % len(COLOURS)]
        others = tuple(c for c in classes if c != cls)
        shift = stable_int("tsv-confusion", cls) % max(len(others), 1)
        confusions = others[shift:] + others[:shift]
        items.append(Item(full_path, cls, colour, attrs, confusions[:2], attrs.get("gender", "")))
    return items


def build_catalogue(
    name: str, size: int = 82, seed: int = 0, base_url: str = DEFAULT_BASE_URL
) -> pd.DataFrame:
    """A catalogue as a DataFrame: `image` (URL), `class` (true style) and attribute columns."""
    return Catalogue(name, size=size, seed=seed).frame(base_url)


def write_catalogue(
    name: str, path: str | Path, size: int = 82, seed: int = 0, base_url: str = DEFAULT_BASE_URL
) -> Path:
    """Write a catalogue with its truth as a TSV (same columns as `build_catalogue`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    build_catalogue(name, size=size, seed=seed, base_url=base_url).to_csv(target, sep="\t", index=False)
    return target


# ----------------------------------------------------------------------------------------------- images


@functools.lru_cache(maxsize=4096)
def render_png(path: str) -> bytes | None:
    """PNG bytes of a bundled image path, drawn on demand and cached (never written to disk)."""
    match = IMAGE_PATH.search(path)
    if not match:
        return None
    item = bundled_item(path)
    if item is None:
        return None
    if match["catalogue"] == "digits":
        return _render_digit(int(DIGIT_FILE.match(match["file"])["index"]))  # type: ignore[index]
    return _render_shoe(item, stable_int("shoe-jitter", path))


def _render_digit(index: int) -> bytes:
    from PIL import Image

    pixels = _digits()[0][index]
    image = Image.new("L", (8, 8))
    image.putdata([int(255 - v * 255 / 16) for v in pixels.flatten()])
    return _png(image.resize((64, 64), Image.NEAREST))


def _render_shoe(item: Item, jitter: int) -> bytes:
    """A simple but recognisable silhouette: shaft height, heel, openness and sport stripes by style."""
    from PIL import Image, ImageDraw

    w, h = 128, 96
    image = Image.new("RGB", (w, h), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    fill = COLOUR_RGB[item.colour]
    outline = (20, 20, 20) if item.colour != "black" else (120, 120, 120)
    dx = jitter % 9 - 4
    sole = 78
    style = item.cls
    heel = item.attrs.get("heel") == "yes"
    toe, back = 112 + dx, 22 + dx
    top = {"low": 58, "ankle": 34, "knee": 6}.get(item.attrs.get("height", "low"), 58)
    if heel:
        # Arched sole: the heel is raised on a thin heel and the toe sits on the ground.
        top = min(top, 46)
        body = [
            (back, top),
            (back + 14, top),
            (back + 34, top + 10),
            (toe - 12, 64),
            (toe, 70),
            (toe, sole),
            (back + 44, 74),
            (back + 14, 62),
            (back, 62),
        ]
        draw.polygon(body, fill=fill, outline=outline)
        draw.polygon([(back, 62), (back + 10, 62), (back + 7, sole), (back + 3, sole)], fill=outline)
    else:
        body = [(back, top), (back + 20, top), (toe - 26, 58), (toe, 64), (toe, sole - 4), (back, sole - 4)]
        draw.polygon(body, fill=fill, outline=outline)
        draw.rectangle(
            [back, sole - 4, toe, sole], fill=(40, 40, 40) if style != "sneakers" else (245, 245, 245)
        )
    if item.attrs.get("openness") == "open":
        # Sandals: cut the upper away and keep straps.
        draw.polygon([(back + 18, 50), (toe - 12, 58), (toe - 12, 66), (back + 40, 64)], fill=(250, 250, 248))
        for x in range(back + 24, toe - 10, 14):
            draw.line([(x, 50), (x + 6, 68)], fill=outline, width=3)
    if style == "sneakers":
        draw.rectangle([back - 2, sole - 8, toe + 2, sole], fill=(245, 245, 245), outline=outline)
        for x in range(back + 30, back + 60, 8):
            draw.line([(x, 52), (x + 8, 60)], fill=(250, 250, 250), width=2)
        draw.line([(back + 10, 66), (toe - 30, 70)], fill=(250, 250, 250), width=3)
    if style == "flats_loafers":
        draw.ellipse([toe - 40, 58, toe - 30, 64], fill=(230, 200, 60), outline=outline)
    if style == "mens_formal":
        draw.line([(back + 40, 58), (back + 52, 60)], fill=outline, width=2)
    return _png(image)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
