"""Toloka-side aggregation (`/aggregated-solutions/*`): Dawid-Skene or skill-weighted majority.

`DAWID_SKENE` runs crowd-kit's Dawid-Skene over the pool's submitted and accepted answers, field by
field; `WEIGHTED_DYNAMIC_OVERLAP` weighs each answer by the worker's value of
`answer_weight_skill_id` (workers without it weigh as little as possible, not nothing). Answers are
compared as canonical JSON, so lists and objects (grouping answers) aggregate as well as labels. The
confidence of a task is the posterior (or weight share) of the chosen answer, the lowest over fields.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING

from emulator.errors import validation
from emulator.records import Doc

if TYPE_CHECKING:
    from emulator.core import Emulator

TYPES = ("DAWID_SKENE", "WEIGHTED_DYNAMIC_OVERLAP")
ANSWERED = ("SUBMITTED", "ACCEPTED")
MIN_WEIGHT = 1e-6


def check_request(body: Doc, by_task: bool) -> Doc:
    errors = {}
    if body.get("type") not in TYPES:
        errors["type"] = ("INVALID_VALUE", f"type must be one of {', '.join(TYPES)}")
    if not body.get("pool_id"):
        errors["pool_id"] = ("VALUE_REQUIRED", "pool_id is required")
    if by_task and not body.get("task_id"):
        errors["task_id"] = ("VALUE_REQUIRED", "task_id is required")
    fields = body.get("fields")
    if (
        not isinstance(fields, list)
        or not fields
        or not all(isinstance(f, dict) and f.get("name") for f in fields)
    ):
        errors["fields"] = ("VALUE_REQUIRED", "fields must be a non-empty list of {name}")
    if body.get("type") == "WEIGHTED_DYNAMIC_OVERLAP" and not body.get("answer_weight_skill_id"):
        errors["answer_weight_skill_id"] = ("VALUE_REQUIRED", "answer_weight_skill_id is required")
    if errors:
        raise validation(errors)
    return body


def _answers(emu: Emulator, pool: Doc, field: str) -> list[tuple[str, str, str]]:
    """(task id, worker id, canonical answer) of every answered task of the pool."""
    data = emu.store.data["assignment"]
    rows = []
    for aid in emu.store.ids_in_pool("assignment", pool["id"]):
        a = data[aid]
        if a["status"] not in ANSWERED:
            continue
        for task, solution in zip(a["tasks"], a.get("solutions") or [], strict=False):
            values = solution.get("output_values") or {}
            if field in values:
                rows.append((task["id"], a["user_id"], json.dumps(values[field], sort_keys=True)))
    return rows


def _dawid_skene(rows: list[tuple[str, str, str]]) -> dict[str, tuple[str, float]]:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from crowdkit.aggregation import DawidSkene

        frame = pd.DataFrame(rows, columns=["task", "worker", "label"])
        proba = DawidSkene(n_iter=100).fit_predict_proba(frame)
    return {str(task): (str(row.idxmax()), float(row.max())) for task, row in proba.iterrows()}


def _weighted(emu: Emulator, rows: list[tuple[str, str, str]], skill_id: str) -> dict[str, tuple[str, float]]:
    votes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for task, worker, label in rows:
        weight = emu.user_skill_value(worker, skill_id) or 0.0
        votes[task][label] += max(weight, MIN_WEIGHT)
    out = {}
    for task, counts in votes.items():
        label = min(counts, key=lambda k: (-counts[k], k))
        out[task] = (label, counts[label] / sum(counts.values()))
    return out


def _aggregate(emu: Emulator, pool: Doc, request: Doc, only_task: str | None) -> list[Doc]:
    per_task: dict[str, Doc] = {}
    for field in [f["name"] for f in request["fields"]]:
        rows = [r for r in _answers(emu, pool, field) if only_task is None or r[0] == only_task]
        if not rows:
            continue
        if request["type"] == "DAWID_SKENE":
            chosen = _dawid_skene(rows)
        else:
            chosen = _weighted(emu, rows, str(request["answer_weight_skill_id"]))
        for task, (label, confidence) in chosen.items():
            doc = per_task.setdefault(
                task, {"pool_id": pool["id"], "task_id": task, "confidence": 1.0, "output_values": {}}
            )
            doc["output_values"][field] = json.loads(label)
            doc["confidence"] = round(min(doc["confidence"], confidence), 6)
    return [per_task[t] for t in sorted(per_task)]


def by_pool(emu: Emulator, pool: Doc, request: Doc) -> list[Doc]:
    return _aggregate(emu, pool, request, None)


def by_task(emu: Emulator, pool: Doc, task_id: str, request: Doc) -> Doc:
    found = _aggregate(emu, pool, request, task_id)
    if not found:
        return {"pool_id": pool["id"], "task_id": task_id, "confidence": 0.0, "output_values": {}}
    return found[0]
