"""HIT planning: which images go together into one grouping HIT. Seeded, deterministic.

Two designs:
- `seed`: the notebook's scheme. Items are split into `n_hits` consecutive chunks (one "anchor"
  item each when n_hits == n_items) and every HIT is topped up with random other items. Coverage
  per item varies.
- `balanced`: `hits_per_item` random permutations of the items are laid end to end and cut into
  HITs; a HIT that would contain an item twice (at a permutation boundary) swaps it with a
  neighbouring HIT. Every item lands in exactly `hits_per_item` HITs when
  `n_items * hits_per_item` is a multiple of `size` (otherwise the last HIT is topped up with the
  least-covered items). The co-occurrence graph is checked to be connected: without that the
  aggregation could not relate the parts to each other.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tasks.params import HitParams
from tasks.stages import Coverage, HitPlan


class HitPlanError(ValueError):
    """The requested design cannot be built from this dataset."""


def seed_design(items: list[str], size: int, hits_per_item: int, rng: np.random.Generator) -> list[list[str]]:
    """The notebook's `hit_samples`, deterministic (items as a sorted list, a numpy Generator)."""
    n = len(items)
    per_hit_initial = max(size // min(size, hits_per_item), 1)
    n_hits = max(n * hits_per_item // size, 1)
    chunks = np.array_split(np.arange(n), min(n, n_hits))
    hits = []
    for chunk in chunks:
        chunk = chunk[:per_hit_initial] if len(chunk) > size else chunk
        others = np.setdiff1d(np.arange(n), chunk)
        extra = rng.choice(others, size=size - len(chunk), replace=False)
        hits.append([items[i] for i in (*chunk.tolist(), *extra.tolist())])
    return hits


def balanced_design(
    items: list[str], size: int, hits_per_item: int, rng: np.random.Generator
) -> list[list[str]]:
    """Every item in `hits_per_item` HITs of `size` distinct items (see module docstring)."""
    n = len(items)
    sequence = np.concatenate([rng.permutation(n) for _ in range(hits_per_item)])
    n_hits = -(-len(sequence) // size)
    missing = n_hits * size - len(sequence)
    if missing:
        counts = np.bincount(sequence, minlength=n)
        top_up = np.lexsort((rng.random(n), counts))[:missing]
        sequence = np.concatenate([sequence, top_up])
    hits = [list(sequence[i * size : (i + 1) * size]) for i in range(n_hits)]
    _repair_duplicates(hits, rng)
    return [[items[i] for i in hit] for hit in hits]


def _repair_duplicates(hits: list[list[int]], rng: np.random.Generator) -> None:
    """Swap repeated items out of a HIT with an item of another HIT where neither then repeats."""
    order = rng.permutation(len(hits))
    for h, hit in enumerate(hits):
        seen: set[int] = set()
        for pos, item in enumerate(hit):
            if item not in seen:
                seen.add(item)
                continue
            for other in order:
                if other == h:
                    continue
                donor = hits[other]
                swap = next(
                    (j for j, cand in enumerate(donor) if cand not in seen and item not in donor), None
                )
                if swap is not None:
                    hit[pos], donor[swap] = donor[swap], item
                    seen.add(hit[pos])
                    break
            else:
                raise HitPlanError("could not place every item without repeats; use fewer hits_per_item")


def is_connected(hits: list[list[str]]) -> bool:
    """Whether the co-occurrence graph (items linked when they share a HIT) is connected."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for hit in hits:
        for item in hit[1:]:
            parent[find(item)] = find(hit[0])
    roots = {find(x) for x in parent}
    return len(roots) <= 1


def plan_hits(items: list[str], params: HitParams, seed: int, max_attempts: int = 20) -> list[list[str]]:
    """The HIT plan for `items` (sorted first, so input order does not matter)."""
    items = sorted(dict.fromkeys(items))
    if len(items) < params.size:
        raise HitPlanError(f"{len(items)} items cannot fill a HIT of {params.size}; lower hits.size")
    build = balanced_design if params.design == "balanced" else seed_design
    for attempt in range(max_attempts):
        rng = np.random.default_rng([seed, attempt])
        hits = build(items, params.size, params.hits_per_item, rng)
        if is_connected(hits) and len({x for hit in hits for x in hit}) == len(items):
            return hits
    raise HitPlanError(
        f"no connected HIT plan after {max_attempts} attempts; "
        f"raise hits.hits_per_item ({params.hits_per_item})"
    )


def coverage(hits: list[list[str]], items: list[str]) -> Coverage:
    """Per-item coverage (number of HITs per item) and its summary, for the report and artifacts."""
    counts = Counter(x for hit in hits for x in hit)
    per_item = {item: counts.get(item, 0) for item in sorted(items)}
    values = np.array(list(per_item.values()))
    return Coverage(
        n_hits=len(hits),
        n_items=len(per_item),
        min=int(values.min()),
        mean=round(float(values.mean()), 3),
        max=int(values.max()),
        histogram={int(k): int(v) for k, v in sorted(Counter(values.tolist()).items())},
        per_item=per_item,
        connected=is_connected(hits),
    )


def make_plan(items: list[str], params: HitParams, seed: int) -> HitPlan:
    """The HIT plan of `items` with its coverage."""
    hits = plan_hits(items, params, seed)
    return HitPlan(hits=hits, coverage=coverage(hits, items))
