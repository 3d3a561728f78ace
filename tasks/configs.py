"""Toloka object configs of one dataset: load, validate, fill the run's values in.

A config folder (`toloka_dir`) holds JSON files named after the role of the object they describe
(`FILES` below). Values that only exist at run time are written as placeholders and filled in by
`fill`: `"${skill_id}"` (the skill this run created), `"${min_skill}"`, `"${reward}"`, ... A
placeholder that is the whole JSON string is replaced by the value itself (so `"${min_skill}"`
becomes the number 75.0). Nothing is hard-coded to one Toloka account: no skill ids in the files.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

FILES = {
    "exam_project": "exam_project.json",
    "training": "training.json",
    "training_tasks": "training_tasks.json",
    "exam_pool": "exam_pool.json",
    "exam_suites": "exam_suites.json",
    "main_project": "main_project.json",
    "main_pool": "main_pool.json",
    "intruders_project": "intruders_project.json",
    "intruders_training": "intruders_training.json",
    "intruders_training_tasks": "intruders_training_tasks.json",
    "intruders_pool": "intruders_pool.json",
}
LISTS = {"training_tasks", "exam_suites", "intruders_training_tasks"}
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


class TolokaConfigError(ValueError):
    """A Toloka config file that is missing or malformed; the message names the file."""


def _toloka_classes() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from toloka.client import Pool, Project, Task, TaskSuite, Training
    return {
        "exam_project": Project,
        "main_project": Project,
        "intruders_project": Project,
        "training": Training,
        "intruders_training": Training,
        "exam_pool": Pool,
        "main_pool": Pool,
        "intruders_pool": Pool,
        "training_tasks": Task,
        "intruders_training_tasks": Task,
        "exam_suites": TaskSuite,
    }


def load_bundle(folder: Path) -> dict[str, Any]:
    """Read and check every file of a config folder; returns role -> parsed JSON (dict or list)."""
    folder = Path(folder)
    classes = _toloka_classes()
    bundle: dict[str, Any] = {}
    for role, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise TolokaConfigError(f"{path}: missing ({role} config)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TolokaConfigError(f"{path}: not valid JSON: {exc}") from exc
        items = data if role in LISTS else [data]
        if role in LISTS and (not isinstance(data, list) or not data):
            raise TolokaConfigError(f"{path}: expected a non-empty JSON list")
        for index, item in enumerate(items):
            probe = fill(item, _PROBE_VALUES, strict=False)
            try:
                classes[role].structure(probe)
            except Exception as exc:
                where = f"{path}[{index}]" if role in LISTS else str(path)
                raise TolokaConfigError(
                    f"{where}: not a valid Toloka {classes[role].__name__}: {exc}"
                ) from exc
        bundle[role] = data
    for index, suite in enumerate(bundle["exam_suites"]):
        try:
            golden_partition(suite)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TolokaConfigError(
                f"{folder / FILES['exam_suites']}[{index}]: needs tasks[0].input_values.images and "
                f"known_solutions[0].output_values.result with one group per image ({exc})"
            ) from exc
    return bundle


_PROBE_VALUES: dict[str, Any] = {
    "skill_id": "1",
    "min_skill": 75.0,
    "reward": 0.02,
    "overlap": 7,
    "exam_reward": 0.01,
    "exam_overlap": 100,
    "intruder_reward": 0.02,
    "intruder_overlap": 5,
}


def placeholder_values(params: Any) -> dict[str, Any]:
    """The run's values for the placeholders (the skill id is added once the skill exists)."""
    return {
        "min_skill": params.exam.min_skill,
        "reward": params.hits.reward,
        "overlap": params.hits.overlap,
        "exam_reward": params.exam.reward,
        "exam_overlap": params.exam.expected_workers,
        "intruder_reward": params.intruders.reward,
        "intruder_overlap": params.intruders.overlap,
    }


def fill(obj: Any, values: dict[str, Any], strict: bool = True) -> Any:
    """Replace `${name}` placeholders anywhere in a JSON value (whole strings keep the value's type)."""
    if isinstance(obj, dict):
        return {key: fill(value, values, strict) for key, value in obj.items()}
    if isinstance(obj, list):
        return [fill(value, values, strict) for value in obj]
    if isinstance(obj, str) and "${" in obj:
        whole = _PLACEHOLDER.fullmatch(obj)
        if whole and whole.group(1) in values:
            return values[whole.group(1)]

        def sub(match: re.Match[str]) -> str:
            if match.group(1) not in values:
                if strict:
                    raise TolokaConfigError(f"unknown placeholder {match.group(0)!r}")
                return match.group(0)
            return str(values[match.group(1)])

        return _PLACEHOLDER.sub(sub, obj)
    return obj


def golden_partition(suite: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(images, golden group per image) of an exam suite config."""
    task = suite["tasks"][0]
    images = tuple(str(x) for x in task["input_values"]["images"])
    result = task["known_solutions"][0]["output_values"]["result"]
    groups = tuple(int(r["group"]) if isinstance(r, dict) else int(r) for r in result)
    if len(groups) != len(images):
        raise ValueError(f"{len(images)} images but {len(groups)} golden groups")
    return images, groups
