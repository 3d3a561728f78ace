"""The simulated worker population and how each worker type answers.

A worker's answer to a suite depends only on (seed, worker, suite, the images): perception errors are
systematic per (worker, image), random choices are hashed from (seed, worker, suite, position). So the
same worker answers the same suite identically whenever it happens to take it.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import NormalDist
from typing import Any

import numpy as np

from emulator.catalogues import Catalogue, Item
from emulator.mix import DEFAULT_SHARES, shares
from emulator.util import rng, stable_int, unit, worker_id

# type -> (per-image misperception range, seconds per image, probability of following a training instruction)
TYPE_PARAMS: dict[str, tuple[tuple[float, float], float, float]] = {
    "diligent": ((0.0, 0.04), 9.0, 0.97),
    "colour_biased": ((0.0, 0.04), 6.0, 0.93),
    "lumper": ((0.0, 0.04), 7.0, 0.93),
    "splitter": ((0.0, 0.04), 7.0, 0.93),
    "careless": ((0.12, 0.25), 4.0, 0.65),
    "spammer": ((1.0, 1.0), 0.35, 0.05),
}
# Share of the suites each type skips (SKIPPED: looked at, given back unanswered).
SKIP_RATES: dict[str, float] = {
    "diligent": 0.02,
    "colour_biased": 0.03,
    "lumper": 0.03,
    "splitter": 0.03,
    "careless": 0.08,
    "spammer": 0.05,
}
# The least pay a worker takes a pool's work for, in USD per hour of its own time on the pool's suites:
# log-normal over the market (median, spread of the log). At the least reward Toloka allows ($0.005
# for a 10-image suite, ~$0.20/h for a diligent worker) about a quarter of the diligent workers pass the
# pool by; at the demo's $0.02 (~$0.80/h) fewer than 1 in 50; fast workers (spammers above all) earn
# more per hour on any pool, so cheap pools get a larger share of them.
RESERVATION_WAGE = (0.12, 0.9)
MAX_GROUPS = 10
TYPES = tuple(DEFAULT_SHARES)
LANGUAGES = (["EN"], ["EN", "RU"], ["RU"])
DEVICES = ("PERSONAL_COMPUTER", "SMARTPHONE", "TABLET")
COUNTRIES = ("US", "GB", "IN", "DE", "RU", "BR")


def _allocate(n: int, seed: int, mix: dict[str, float] | None = None) -> np.ndarray:
    """Exactly-proportional worker types (largest remainder), shuffled by the seed: codes into TYPES."""
    raw = np.array([share * n for share in shares(mix).values()])
    counts = raw.astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    codes = np.repeat(np.arange(len(TYPES)), counts)
    np.random.default_rng(stable_int("worker-types", seed)).shuffle(codes)
    return codes


class Population:
    """The whole market of a seed, as arrays: thousands of workers cost a few numpy vectors.

    Nothing here is per-worker Python state: a worker's profile, type, error rate and pace are read
    from the arrays when the worker first shows up (`worker(index)`), and the crowd keeps runtime state
    only for workers who have arrived.
    """

    def __init__(self, seed: int, n: int, mix: dict[str, float] | None = None) -> None:
        self.seed, self.n = seed, n
        r = np.random.default_rng(stable_int("worker-profile", seed))
        self.types = _allocate(n, seed, mix)
        u = r.random((n, 7))
        # languages: 80% EN only, then EN+RU or RU only; 15% use the app (mostly on smartphones)
        self.languages = np.where(u[:, 0] < 0.8, 0, np.where(u[:, 1] < 0.5, 1, 2))
        self.app = u[:, 2] < 0.15
        pc = u[:, 3] < 0.85
        self.device = np.where(
            self.app,
            np.where(u[:, 3] < 0.8, 1, 2),
            np.where(pc, 0, np.where(u[:, 4] < 0.6, 1, 2)),
        )
        self.windows = u[:, 5] < 0.7
        self.country = r.integers(0, len(COUNTRIES), n)
        low = np.array([TYPE_PARAMS[t][0][0] for t in TYPES])[self.types]
        high = np.array([TYPE_PARAMS[t][0][1] for t in TYPES])[self.types]
        self.error_rate = np.round(low + (high - low) * u[:, 6], 4)
        self.pace = np.round(r.lognormal(0.0, 0.25, n), 4)
        self._ids: list[str] | None = None
        self._index: dict[str, int] | None = None

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = [worker_id(self.seed, i) for i in range(self.n)]
        return self._ids

    def index_of(self, wid: str) -> int | None:
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.ids)}
        return self._index.get(wid)

    def worker(self, index: int) -> dict[str, Any]:
        """One worker's static description (what `/_emulator/workers` shows and answers depend on)."""
        app = bool(self.app[index])
        return {
            "id": self.ids[index],
            "index": index,
            "type": TYPES[int(self.types[index])],
            "profile": {
                "languages": LANGUAGES[int(self.languages[index])],
                "client_type": "TOLOKA_APP" if app else "BROWSER",
                "device_category": DEVICES[int(self.device[index])],
                "os_family": "ANDROID" if app else ("WINDOWS" if self.windows[index] else "MAC_OS"),
                "country": COUNTRIES[int(self.country[index])],
                "adult_allowed": True,
            },
            "error_rate": float(self.error_rate[index]),
            "pace": float(self.pace[index]),
        }


def population(seed: int, n: int, mix: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Every worker of a seed's market, described (for tests and reports; the crowd reads lazily)."""
    pop = Population(seed, n, mix)
    return [pop.worker(i) for i in range(n)]


def duration(seed: int, worker: dict[str, Any], suite_id: str, n_images: int) -> float:
    """Simulated seconds a worker spends on a suite (spammers: seconds; diligent: a minute or two)."""
    per_image = TYPE_PARAMS[worker["type"]][1]
    noise = rng("duration", seed, worker["id"], suite_id).lognormvariate(0, 0.2)
    return max(2.0, per_image * max(n_images, 1) * worker["pace"] * noise)


def expected_seconds(worker: dict[str, Any], n_images: int) -> float:
    """How long a worker expects to spend on a suite of `n_images` images (its own pace, no noise)."""
    return max(2.0, TYPE_PARAMS[worker["type"]][1] * max(n_images, 1) * worker["pace"])


def reservation_wage(seed: int, worker: dict[str, Any]) -> float:
    """The least pay per hour (USD) the worker takes work for: systematic per worker (`RESERVATION_WAGE`)."""
    u = min(max(unit("reservation-wage", seed, worker["id"]), 1e-9), 1 - 1e-9)
    median, spread = RESERVATION_WAGE
    return median * math.exp(spread * NormalDist().inv_cdf(u))


def pause(seed: int, worker: dict[str, Any], assignment_id: str) -> float:
    """Simulated seconds between two assignments."""
    return 5.0 + 25.0 * unit("pause", seed, worker["id"], assignment_id)


# ------------------------------------------------------------------------------------------ perception


def perceived_class(seed: int, worker: dict[str, Any], item: Item) -> str:
    """The style a worker sees: systematic per (worker, image); errors go to a confusable style."""
    if item.confusions and unit("misperceive", seed, worker["id"], item.path) < worker["error_rate"]:
        return item.confusions[
            stable_int("confuse-with", seed, worker["id"], item.path) % len(item.confusions)
        ]
    return item.cls


def grouping_key(seed: int, worker: dict[str, Any], item: Item, salt: str) -> str:
    """What the worker groups an image by, according to the worker's type."""
    kind = worker["type"]
    if kind == "spammer":
        return f"random-{stable_int('spam', seed, worker['id'], salt) % 5}"
    if kind == "colour_biased":
        return item.colour
    if kind == "lumper":
        return item.group or perceived_class(seed, worker, item)
    if kind == "splitter":
        return f"{perceived_class(seed, worker, item)}/{item.colour}"
    return perceived_class(seed, worker, item)


def group_images(seed: int, worker: dict[str, Any], items: list[Item], suite_id: str) -> list[dict[str, int]]:
    """A grouping answer `[{"group": g}, ...]`: groups numbered by first appearance, at most 10."""
    keys = [grouping_key(seed, worker, item, f"{suite_id}/{pos}") for pos, item in enumerate(items)]
    numbers: dict[str, int] = {}
    for key, item in zip(keys, items, strict=True):
        if key not in numbers:
            # Beyond 10 distinct groups the worker runs out of colours and merges into the closest one.
            numbers[key] = len(numbers) + 1 if len(numbers) < MAX_GROUPS else _closest(key, item, numbers)
    return [{"group": numbers[key]} for key in keys]


def _closest(key: str, item: Item, numbers: dict[str, int]) -> int:
    """The group a worker out of colours puts `item` (grouped by `key`) into: one of the same style
    (a splitter's `style/colour` keys), else one of a style the item is confused with (nearest
    first), else one picked by a hash of the key."""
    style = key.split("/", 1)[0]
    for closer in (style, *item.confusions):
        for other, number in numbers.items():
            if other.split("/", 1)[0] == closer:
                return number
    return stable_int(key) % MAX_GROUPS + 1


def pick_intruder(seed: int, worker: dict[str, Any], items: list[Item], suite_id: str) -> int:
    """0-based index of the image the worker thinks differs from the majority."""
    if worker["type"] == "spammer" or not items:
        return stable_int("intruder-spam", seed, worker["id"], suite_id) % max(len(items), 1)
    keys = [grouping_key(seed, worker, item, suite_id) for item in items]
    counts = Counter(keys)
    rarest = min(counts.values())
    candidates = [pos for pos, key in enumerate(keys) if counts[key] == rarest]
    return candidates[stable_int("intruder-tie", seed, worker["id"], suite_id) % len(candidates)]


# ------------------------------------------------------------------------------------------------ answers


def answer_task(
    seed: int,
    worker: dict[str, Any],
    catalogue: Catalogue,
    task: dict[str, Any],
    output_spec: dict[str, Any],
    salt: str,
    training: bool,
) -> dict[str, Any]:
    """The worker's `output_values` for one task."""
    images = _images(task.get("input_values") or {})
    known = task.get("known_solutions") or []
    if training and known:
        # Training tasks spell out what to do: the gold is an instruction, followed with a type-dependent
        # probability, otherwise the worker slips on one element.
        gold = known[0].get("output_values") or {}
        if unit("follow", seed, worker["id"], salt) < TYPE_PARAMS[worker["type"]][2]:
            return dict(gold)
        return _slip(gold, stable_int("slip", seed, worker["id"], salt))
    items = [catalogue.resolve(url) for url in images]
    output: dict[str, Any] = {}
    for name, spec in output_spec.items():
        kind = (spec or {}).get("type", "string")
        allowed = (spec or {}).get("allowed_values")
        if kind in ("json", "array_json") and items:
            output[name] = group_images(seed, worker, items, salt)
        elif allowed and len(items) > 1:
            # Several images and a choice: an intruder HIT, pick the odd one out.
            index = pick_intruder(seed, worker, items, salt)
            output[name] = allowed[index] if index < len(allowed) else str(index + 1)
        elif allowed:
            truth = true_label(seed, task, items, name, allowed)
            # The image's look-alikes (digits: nearest other class centroids), when its truth is its class.
            alike = items[0].confusions if items and truth == items[0].cls else ()
            output[name] = classify(seed, worker, truth, allowed, _item_key(task, items), salt, alike)
        elif kind == "boolean":
            output[name] = bool(stable_int("bool", seed, worker["id"], salt, name) % 2)
        elif kind in ("integer", "float"):
            output[name] = 0
        else:
            output[name] = ""
    return output


def _item_key(task: dict[str, Any], items: list[Item]) -> str:
    """What identifies the thing being classified (its image, else its input values)."""
    return items[0].path if items else repr(sorted((task.get("input_values") or {}).items()))


def true_label(seed: int, task: dict[str, Any], items: list[Item], name: str, allowed: list[Any]) -> Any:
    """The one right answer of a classification task, the same for every worker: its golden answer,
    else the catalogue class of its image when that is a choice, else a seeded pick of the item."""
    for solution in task.get("known_solutions") or []:
        gold = (solution.get("output_values") or {}).get(name)
        if gold in allowed:
            return gold
    if items and not items[0].pseudo and items[0].cls in allowed:
        return items[0].cls
    return allowed[stable_int("true-label", seed, _item_key(task, items), name) % len(allowed)]


def classify(
    seed: int,
    worker: dict[str, Any],
    truth: Any,
    allowed: list[Any],
    key: str,
    salt: str,
    alike: tuple[str, ...] = (),
) -> Any:
    """A worker's answer to a classification task: spammers pick at random; the others see the item
    wrongly with their error rate (systematic per worker and item), and then name one of its
    look-alikes (`alike`: the classes it is confused with, as on grouping HITs) when any is a choice,
    else another choice."""
    if worker["type"] == "spammer":
        return allowed[stable_int("class-spam", seed, worker["id"], salt) % len(allowed)]
    if len(allowed) < 2 or unit("misclassify", seed, worker["id"], key) >= worker["error_rate"]:
        return truth
    others = [value for value in allowed if value != truth]
    others = [value for value in alike if value in others] or others
    return others[stable_int("class-wrong", seed, worker["id"], key) % len(others)]


def _images(input_values: dict[str, Any]) -> list[str]:
    images = input_values.get("images")
    if isinstance(images, list):
        return [str(x) for x in images]
    for value in input_values.values():
        if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
            return value
    return [str(v) for v in input_values.values() if isinstance(v, str) and v.startswith(("http", "/"))]


def _slip(gold: dict[str, Any], h: int) -> dict[str, Any]:
    """A near miss of a golden answer: one group label or the chosen option changes."""
    wrong = dict(gold)
    for name, value in gold.items():
        if isinstance(value, list) and value and isinstance(value[0], dict) and "group" in value[0]:
            pos = h % len(value)
            changed = [dict(v) for v in value]
            changed[pos]["group"] = changed[pos]["group"] % MAX_GROUPS + 1
            wrong[name] = changed
            return wrong
        if isinstance(value, str) and value.isdigit():
            wrong[name] = str(int(value) % 8 + 1)
            return wrong
    return wrong


def matches_gold(output: dict[str, Any], task: dict[str, Any]) -> bool:
    """Does an answer equal one of the task's known solutions (on the fields the solution names)?"""
    for solution in task.get("known_solutions") or []:
        gold = solution.get("output_values") or {}
        if all(output.get(k) == v for k, v in gold.items()):
            return True
    return False
