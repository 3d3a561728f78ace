"""Seeded synthetic crowds, with their truth, for tests and benchmarks.

Items belong to K classes of uneven size and carry a colour that is not part of the style. HITs
follow a design: `"seed"` is the seed notebook's (every item seeds one HIT of `hit_size` images
padded with random others, answered by `overlap` workers); `"random"` draws HITs of 2..35 random
images; `"queries"` draws many small partial-clustering queries of `hit_size` images (an int or a
(low, high) range), and each worker answers a number of them drawn from `answers_per_worker`.
Workers have a type: diligent (natural confusions at a per-worker error rate), colour-biased,
lumper, splitter (splits a style by colour, the nuisance attribute), careless (diligent with much
more noise) and spammer (random groups). Group numbers are local to an assignment (a random
permutation of 1..10), and more than 10 perceived groups are merged, as a person with 10 colours
would do. The export is written in the Toloka assignments TSV layout.

`crowd_shape(name, ...)` names the shapes the aggregation is tuned on (`SHAPES`): the shoes design,
small partial-clustering queries, large HITs with few answers, and very uneven class sizes.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

WORKER_TYPES = ("diligent", "colour", "lumper", "splitter", "careless", "spammer")
DEFAULT_SHARES = {
    "diligent": 0.6,
    "colour": 0.1,
    "lumper": 0.05,
    "splitter": 0.05,
    "careless": 0.1,
    "spammer": 0.1,
}
__all__ = ["SHAPES", "SyntheticCrowd", "crowd_shape", "followup_crowd", "generate_crowd", "partner_classes"]

N_COLOURS = 6
N_GROUPS = 10
EXPORT_COLUMNS = [
    "INPUT:images",
    "OUTPUT:result",
    "GOLDEN:result",
    "HINT:text",
    "HINT:default_language",
    "ASSIGNMENT:link",
    "ASSIGNMENT:task_suite_id",
    "ASSIGNMENT:assignment_id",
    "ASSIGNMENT:worker_id",
    "ASSIGNMENT:status",
    "ASSIGNMENT:started",
]


@dataclass
class SyntheticCrowd:
    """A generated crowd: long-format labels, the truth and the same answers as a Toloka export."""

    labels: pd.DataFrame
    truth: pd.Series
    export: pd.DataFrame
    workers: pd.DataFrame
    colours: pd.Series  # item -> its colour, the nuisance attribute (for `followup_crowd`)
    between: pd.Series  # item -> whether it sits between its class and the partner class

    def write_export(self, path: str | os.PathLike) -> None:
        """Write the export as Toloka sends it: TSV with minimal CSV quoting."""
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(
                handle, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
            )
            writer.writerow(self.export.columns)
            writer.writerows(self.export.itertuples(index=False, name=None))

    def write_truth(self, path: str | os.PathLike) -> None:
        """Write `item,class`."""
        self.truth.rename("class").rename_axis("item").reset_index().to_csv(path, index=False)


def _shares(shares: dict[str, float] | None, spammer_share: float | None) -> np.ndarray:
    table = dict(DEFAULT_SHARES if shares is None else shares)
    unknown = sorted(set(table) - set(WORKER_TYPES))
    if unknown:
        raise ValueError(f"unknown worker type(s): {', '.join(unknown)}")
    if spammer_share is not None:
        rest = sum(v for k, v in table.items() if k != "spammer")
        table = {k: v * (1.0 - spammer_share) / rest for k, v in table.items() if k != "spammer"}
        table["spammer"] = spammer_share
    values = np.array([table.get(name, 0.0) for name in WORKER_TYPES], dtype=np.float64)
    return values / values.sum()


def _size_range(hit_size: int | tuple[int, int]) -> tuple[int, int]:
    return (hit_size, hit_size) if isinstance(hit_size, int) else (int(hit_size[0]), int(hit_size[1]))


def _design(
    rng: np.random.Generator, n_items: int, design: str, hit_size: int | tuple[int, int], n_hits: int | None
) -> list[np.ndarray]:
    if design in ("queries", "sized"):
        low, high = _size_range(hit_size)
        sizes = rng.integers(low, min(high, n_items) + 1, size=n_hits)
        return [rng.choice(n_items, size=size, replace=False) for size in sizes]
    hit_size = _size_range(hit_size)[1]
    if design == "seed":
        hits = []
        for seed_item in np.arange(n_items if n_hits is None else n_hits) % n_items:
            others = rng.choice(n_items - 1, size=min(hit_size, n_items) - 1, replace=False)
            others = others + (others >= seed_item)
            hits.append(rng.permutation(np.r_[seed_item, others]))
        return hits
    if design == "random":
        n_hits = int(np.ceil(n_items * hit_size / 18.5))
        sizes = rng.integers(2, min(35, n_items) + 1, size=n_hits)
        return [rng.choice(n_items, size=size, replace=False) for size in sizes]
    raise ValueError(f"unknown HIT design {design!r} (use 'seed', 'random', 'sized' or 'queries')")


def _class_codes(
    rng: np.random.Generator, n_items: int, n_classes: int, size_ratio: float | None
) -> np.ndarray:
    """Class of every item: Dirichlet(2) shares, or geometric sizes from largest to smallest = size_ratio."""
    if size_ratio is None:
        weights = rng.dirichlet(np.full(n_classes, 2.0))
        codes = np.r_[np.arange(n_classes), rng.choice(n_classes, size=n_items - n_classes, p=weights)]
        return rng.permutation(codes)
    shares = size_ratio ** (-np.arange(n_classes) / max(n_classes - 1, 1))
    sizes = np.maximum(1, np.floor(shares / shares.sum() * n_items)).astype(int)
    sizes[0] += n_items - sizes.sum()
    return rng.permutation(np.repeat(np.arange(n_classes), sizes))


def _workers_per_hit(
    rng: np.random.Generator,
    n_hits: int,
    n_workers: int,
    overlap: int | tuple[int, int],
    answers_per_worker: tuple[int, int] | None,
) -> list[np.ndarray]:
    """Which workers answer each HIT: `overlap` distinct ones, or queues of `answers_per_worker`."""
    low, high = _size_range(overlap)
    counts = rng.integers(low, high + 1, size=n_hits)
    if answers_per_worker is None:
        return [rng.choice(n_workers, size=count, replace=False) for count in counts]
    # Each worker takes a budget of HITs; slots are dealt to workers in a seeded random order.
    slots = np.repeat(np.arange(n_hits), counts)
    budgets = rng.integers(answers_per_worker[0], answers_per_worker[1] + 1, size=len(slots))
    owner = np.repeat(np.arange(len(budgets)), budgets)[: len(slots)]
    owner = rng.permutation(owner) % n_workers
    order = np.argsort(slots, kind="stable")
    return np.split(owner[order], np.cumsum(counts)[:-1])


def partner_classes(n_classes: int) -> np.ndarray:
    """The class each class's errors go to: 0<->1, 2<->3, ...; with an odd count the last one goes to 0."""
    return np.array([c ^ 1 if (c ^ 1) < n_classes else (c + 1) % n_classes for c in range(n_classes)])


def _answer(rng, kind: str, err: float, cls, colour, partner, between) -> np.ndarray:
    """Perceived group keys of one worker for the items of one HIT.

    `between` marks images that sit between their style and its partner: a worker who tries
    reads each of them as either, at even odds, whatever their own error rate.
    """
    if kind in ("diligent", "careless"):
        flip = rng.random(len(cls)) < err
        if between.any():
            flip |= between & (rng.random(len(cls)) < 0.5)
        return np.where(flip, partner[cls], cls)
    if kind == "colour":
        return colour
    if kind == "lumper":
        return cls // 2
    if kind == "splitter":
        return cls * N_COLOURS + colour
    return rng.integers(0, rng.integers(2, 6), size=len(cls))


def generate_crowd(
    n_items: int = 82,
    n_classes: int = 8,
    seed: int = 0,
    design: str = "seed",
    hit_size: int | tuple[int, int] = 10,
    overlap: int | tuple[int, int] = 7,
    n_workers: int | None = None,
    shares: dict[str, float] | None = None,
    spammer_share: float | None = None,
    result_encoding: str = "array",
    n_hits: int | None = None,
    answers_per_worker: tuple[int, int] | None = None,
    error_range: tuple[float, float] = (0.0, 0.08),
    size_ratio: float | None = None,
    between_share: float = 0.0,
    hits_per_item: float | None = None,
    _given: tuple[SyntheticCrowd, np.ndarray, str, list[np.ndarray] | None] | None = None,
) -> SyntheticCrowd:
    """Generate a crowd's answers; everything follows from `seed`.

    `shares` maps worker types to their share (default: 60% diligent, 10% each colour-biased,
    careless and spammer, 5% each lumper and splitter); `spammer_share` overrides the spammers'
    share and rescales the others. `result_encoding` chooses how OUTPUT:result is written: "array"
    (array_json without brackets), "json" (full JSON text) or "mixed" (alternating), since real
    exports hold both. `n_hits` sets the number of HITs of the "sized" and "queries" designs;
    `answers_per_worker` (low, high) deals HITs to workers in queues of that length instead of
    drawing `overlap` workers per HIT; `error_range` is the diligent workers' error rates;
    `size_ratio` makes class sizes geometric with largest / smallest = size_ratio;
    `between_share` of the images sit between their class and its partner class (a real
    catalogue's ambiguous images): careful workers read each as either at even odds;
    `hits_per_item` sets the "seed" design's number of HITs to n_items * hits_per_item / hit_size
    (default: one HIT seeded by each item, i.e. hits_per_item = hit_size; the seeds cycle through
    the items), so that each image appears in about `hits_per_item` HITs.

    >>> crowd = generate_crowd(30, 3, seed=0)
    >>> len(crowd.truth), crowd.truth.nunique(), list(crowd.labels.columns)
    (30, 3, ['task', 'worker', 'item', 'label'])
    """
    if n_classes < 1 or n_items < 2 or (n_items < n_classes and _given is None):
        raise ValueError("need n_items >= n_classes >= 1 and n_items >= 2")
    if design in ("sized", "queries") and n_hits is None:
        raise ValueError(f"design {design!r} needs n_hits")
    if not 0.0 <= between_share <= 1.0:
        raise ValueError(f"between_share must be a share of the images, in [0, 1]; got {between_share}")
    rng = np.random.default_rng(seed)
    prefix, given_hits = "", None
    if _given is None:
        truth_codes = _class_codes(rng, n_items, n_classes, size_ratio)
        colour = rng.integers(0, N_COLOURS, size=n_items)
        items = np.array([f"https://img.example/{i:06d}.jpg" for i in range(n_items)])
        # Drawn only when asked for, so that the crowds of every other call keep their seeds' draws.
        between = rng.random(n_items) < between_share if between_share > 0 else np.zeros(n_items, bool)
    else:  # `followup_crowd`: these images of an earlier crowd, with their classes and colours
        earlier, items, prefix, given_hits = _given
        truth_codes = earlier.truth.reindex(items).to_numpy()
        colour = earlier.colours.reindex(items).to_numpy()
        between = earlier.between.reindex(items).to_numpy()
    partner = partner_classes(n_classes)

    if design == "seed" and hits_per_item is not None:
        n_hits = max(1, round(n_items * hits_per_item / _size_range(hit_size)[1]))
    hits = _design(rng, n_items, design, hit_size, n_hits) if given_hits is None else given_hits
    most = _size_range(overlap)[1]
    if n_workers is None:
        n_workers = max(3 * most, len(hits) * most // 25)
    if most > n_workers:
        raise ValueError("overlap exceeds the number of workers")
    kinds = np.array(WORKER_TYPES)[
        rng.choice(len(WORKER_TYPES), size=n_workers, p=_shares(shares, spammer_share))
    ]
    err = np.where(
        kinds == "careless", rng.uniform(0.25, 0.45, n_workers), rng.uniform(*error_range, n_workers)
    )
    worker_ids = np.array([f"{prefix}w{j:05d}" for j in range(n_workers)])
    if isinstance(overlap, int) and answers_per_worker is None:
        per_hit = None  # the original draw order, so existing seeds give the same crowds
    else:
        per_hit = _workers_per_hit(rng, len(hits), n_workers, overlap, answers_per_worker)

    rows, long_parts = [], []
    for h, hit in enumerate(hits):
        suite = f"{prefix}suite-{h:06d}"
        answering = rng.choice(n_workers, size=overlap, replace=False) if per_hit is None else per_hit[h]
        for j in np.unique(answering) if per_hit is not None else answering:
            keys = _answer(rng, kinds[j], err[j], truth_codes[hit], colour[hit], partner, between[hit])
            _, inverse = np.unique(keys, return_inverse=True)
            groups = rng.permutation(N_GROUPS)[inverse % N_GROUPS] + 1
            assignment = f"{suite}--{worker_ids[j]}"
            cells = ",".join(json.dumps(u) for u in items[hit])
            objects = ",".join(f'{{"group":{g}}}' for g in groups)
            as_json = result_encoding == "json" or (result_encoding == "mixed" and len(rows) % 2 == 1)
            rows.append(
                (
                    cells,
                    f"[{objects}]" if as_json else objects,
                    "",
                    "",
                    "",
                    f"https://toloka.example/task/{assignment}",
                    suite,
                    assignment,
                    worker_ids[j],
                    "APPROVED",
                    "2024-05-01T12:00:00.000",
                )
            )
            long_parts.append((suite, worker_ids[j], hit, groups))

    labels = pd.DataFrame(
        {
            "task": np.concatenate([np.full(len(p[2]), p[0]) for p in long_parts]),
            "worker": np.concatenate([np.full(len(p[2]), p[1]) for p in long_parts]),
            "item": items[np.concatenate([p[2] for p in long_parts])],
            "label": np.concatenate([p[3] for p in long_parts]).astype(np.int64),
        }
    )
    truth = pd.Series(truth_codes, index=pd.Index(items, name="item"), name="class")
    export = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    workers = pd.DataFrame({"worker": worker_ids, "type": kinds, "error_rate": err}).set_index("worker")
    colours = pd.Series(colour, index=truth.index, name="colour")
    return SyntheticCrowd(
        labels=labels,
        truth=truth,
        export=export,
        workers=workers,
        colours=colours,
        between=pd.Series(between, index=truth.index, name="between"),
    )


def followup_crowd(
    crowd: SyntheticCrowd,
    items,
    seed: int,
    round_name: str = "r2",
    hits: list[list[str]] | None = None,
    **design,
) -> SyntheticCrowd:
    """A later round over some of `crowd`'s images: new HITs among `items` only, new workers.

    The images keep their classes and colours; the HITs are `hits` (lists of image names, all in
    `items`), or follow `design` (`generate_crowd`'s design arguments, default the shoes design).
    A new crowd of workers of the same types answers them, with ids prefixed by `round_name` (new
    suites and workers, as a second Toloka pool gets). What a second round over the images the
    clusters do not vouch for buys (`aggregation.followup.plan`).

    >>> first = generate_crowd(60, 3, seed=0)
    >>> second = followup_crowd(first, first.truth.index[:20], seed=1)
    >>> sorted(set(second.labels["item"])) == sorted(first.truth.index[:20])
    True
    >>> second.labels["worker"].iloc[0], second.labels["task"].iloc[0]
    ('r2-w00018', 'r2-suite-000000')
    """
    items = np.asarray(items)
    n_classes = int(crowd.truth.max()) + 1
    local = None
    if hits is not None:
        where = pd.Series(np.arange(len(items)), index=items)
        local = [where.loc[list(hit)].to_numpy() for hit in hits]
    given = (crowd, items, f"{round_name}-", local)
    return generate_crowd(len(items), n_classes, seed=seed, _given=given, **design)


# name -> (description, generate_crowd arguments); n_items / n_classes may be overridden.
SHAPES: dict[str, tuple[str, dict]] = {
    "shoes": (
        "the shoes design: HIT 10, overlap 7, uneven class sizes, ~10% spammers",
        {"n_items": 500, "n_classes": 20, "design": "seed", "hit_size": 10, "overlap": 7},
    ),
    "queries": (
        "partial-clustering queries of 2-5 images, many workers answering 10-50 each, error rates "
        "5-40%, some workers splitting by colour",
        {
            "n_items": 342,
            "n_classes": 6,
            "design": "queries",
            "hit_size": (2, 5),
            "n_hits": 2000,
            "overlap": 1,
            "answers_per_worker": (10, 50),
            "n_workers": 120,
            "error_range": (0.05, 0.4),
            "shares": {"diligent": 0.8, "splitter": 0.1, "spammer": 0.1},
        },
    ),
    "large-hits": (
        "HITs of 30-40 images, 3-5 answers each, few workers",
        {
            "n_items": 765,
            "n_classes": 16,
            "design": "sized",
            "hit_size": (30, 40),
            "n_hits": 90,
            "overlap": (3, 5),
            "n_workers": 12,
            "error_range": (0.02, 0.12),
            "shares": {"diligent": 0.75, "colour": 0.08, "careless": 0.09, "lumper": 0.08},
        },
    ),
    "uneven": (
        "the shoes design with geometric class sizes, largest / smallest = 60",
        {"n_items": 600, "n_classes": 10, "design": "seed", "size_ratio": 60.0},
    ),
}


def crowd_shape(name: str, seed: int = 0, **overrides) -> SyntheticCrowd:
    """A crowd of one of the named `SHAPES` (overrides replace its generate_crowd arguments).

    >>> crowd = crowd_shape("queries", seed=0, n_items=60, n_hits=200)
    >>> int(crowd.labels.groupby(["task", "worker"]).size().max()) <= 5
    True
    """
    if name not in SHAPES:
        raise ValueError(f"unknown crowd shape {name!r} (known: {', '.join(SHAPES)})")
    return generate_crowd(seed=seed, **{**SHAPES[name][1], **overrides})
