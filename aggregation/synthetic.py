"""A seeded synthetic crowd for tests and benchmarks (design/crowd-simulation.md).

Items belong to K classes of uneven size and carry a colour that is not part of the style. HITs
follow a design: `"seed"` is the seed notebook's (every item seeds one HIT of `hit_size` images
padded with random others, answered by `overlap` workers); `"random"` draws HITs of 2..35 random
images. Workers have a type: diligent (rare natural confusions), colour-biased, lumper, splitter,
careless (diligent with much more noise) and spammer (random groups). Group numbers are local to an
assignment (a random permutation of 1..10), and more than 10 perceived groups are merged, as a
person with 10 colours would do. The export is written in the Toloka TSV layout
(design/toloka-wire.md, section 5).
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


def _design(rng: np.random.Generator, n_items: int, design: str, hit_size: int) -> list[np.ndarray]:
    if design == "seed":
        hits = []
        for seed_item in range(n_items):
            others = rng.choice(n_items - 1, size=min(hit_size, n_items) - 1, replace=False)
            others = others + (others >= seed_item)
            hits.append(rng.permutation(np.r_[seed_item, others]))
        return hits
    if design == "random":
        n_hits = int(np.ceil(n_items * hit_size / 18.5))
        sizes = rng.integers(2, min(35, n_items) + 1, size=n_hits)
        return [rng.choice(n_items, size=size, replace=False) for size in sizes]
    raise ValueError(f"unknown HIT design {design!r} (use 'seed' or 'random')")


def _answer(rng, kind: str, err: float, cls, colour, partner) -> np.ndarray:
    """Perceived group keys of one worker for the items of one HIT."""
    if kind in ("diligent", "careless"):
        flip = rng.random(len(cls)) < err
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
    hit_size: int = 10,
    overlap: int = 7,
    n_workers: int | None = None,
    shares: dict[str, float] | None = None,
    spammer_share: float | None = None,
    result_encoding: str = "array",
) -> SyntheticCrowd:
    """Generate a crowd's answers; everything follows from `seed`.

    `shares` maps worker types to their share (default: design/crowd-simulation.md);
    `spammer_share` overrides the spammers' share and rescales the others. `result_encoding`
    chooses how OUTPUT:result is written: "array" (array_json without brackets), "json" (full JSON
    text) or "mixed" (alternating), since real exports hold both.
    """
    if n_classes < 1 or n_items < max(2, n_classes):
        raise ValueError("need n_items >= n_classes >= 1 and n_items >= 2")
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_classes, 2.0))
    truth_codes = np.r_[np.arange(n_classes), rng.choice(n_classes, size=n_items - n_classes, p=weights)]
    truth_codes = rng.permutation(truth_codes)
    colour = rng.integers(0, N_COLOURS, size=n_items)
    partner = np.array([c ^ 1 if (c ^ 1) < n_classes else (c + 1) % n_classes for c in range(n_classes)])
    items = np.array([f"https://img.example/{i:06d}.jpg" for i in range(n_items)])

    hits = _design(rng, n_items, design, hit_size)
    if n_workers is None:
        n_workers = max(3 * overlap, len(hits) * overlap // 25)
    if overlap > n_workers:
        raise ValueError("overlap exceeds the number of workers")
    kinds = np.array(WORKER_TYPES)[
        rng.choice(len(WORKER_TYPES), size=n_workers, p=_shares(shares, spammer_share))
    ]
    err = np.where(kinds == "careless", rng.uniform(0.25, 0.45, n_workers), rng.uniform(0.0, 0.08, n_workers))
    worker_ids = np.array([f"w{j:05d}" for j in range(n_workers)])

    rows, long_parts = [], []
    for h, hit in enumerate(hits):
        suite = f"suite-{h:06d}"
        for j in rng.choice(n_workers, size=overlap, replace=False):
            keys = _answer(rng, kinds[j], err[j], truth_codes[hit], colour[hit], partner)
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
    return SyntheticCrowd(labels=labels, truth=truth, export=export, workers=workers)
