"""Toloka object configs of one dataset: load, validate, fill the run's values in.

A config folder (`toloka_dir`) holds JSON files named after the role of the object they describe
(`FILES` below). Values that only exist at run time are written as placeholders and filled in by
`TolokaBundle.filled`: `"${skill_id}"` (the skill this run created), `"${min_skill}"`,
`"${reward}"`, ... A placeholder that is the whole JSON string is replaced by the value itself (so
`"${min_skill}"` becomes the number 75.0). Nothing is hard-coded to one Toloka account.

Money is the flow's business: every cost-bearing field of a pool (`reward_per_assignment`, the
default overlaps) must be the placeholder the flow fills from `pipeline.yaml` (`COST_FIELDS`), so
the budget estimate always prices what Toloka will be told. A literal there is a load-time error
naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.params import PipelineParams
from tasks.toloka_api import Pool, Project, Task, TaskSuite, Training

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
CLASSES: dict[str, Any] = {
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
# Pool role -> cost-bearing field (a path into the JSON) -> the placeholder it must be.
COST_FIELDS: dict[str, dict[tuple[str, ...], str]] = {
    "main_pool": {
        ("reward_per_assignment",): "reward",
        ("defaults", "default_overlap_for_new_task_suites"): "overlap",
    },
    "exam_pool": {
        ("reward_per_assignment",): "exam_reward",
        ("defaults", "default_overlap_for_new_task_suites"): "exam_overlap",
        ("defaults", "default_overlap_for_new_tasks"): "exam_overlap",
    },
    "intruders_pool": {
        ("reward_per_assignment",): "intruder_reward",
        ("defaults", "default_overlap_for_new_task_suites"): "intruder_overlap",
    },
}
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


class TolokaConfigError(ValueError):
    """A Toloka config file that is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Placeholders:
    """The run's values for the `${...}` placeholders of the Toloka configs (from `PipelineParams`)."""

    min_skill: float
    reward: float
    overlap: int
    exam_reward: float
    exam_overlap: int
    intruder_reward: float
    intruder_overlap: int
    skill_id: str | None = None  # known once the run's skill exists

    @classmethod
    def of(cls, params: PipelineParams) -> Placeholders:
        return cls(
            min_skill=params.exam.min_skill,
            reward=params.hits.reward,
            overlap=params.hits.overlap,
            exam_reward=params.exam.reward,
            exam_overlap=params.exam.expected_workers,
            intruder_reward=params.intruders.reward,
            intruder_overlap=params.intruders.overlap,
        )

    def with_skill(self, skill_id: str) -> Placeholders:
        return dataclasses.replace(self, skill_id=skill_id)

    def mapping(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_PROBE = Placeholders(75.0, 0.02, 7, 0.01, 100, 0.02, 5, skill_id="1")


@dataclass(frozen=True)
class TolokaBundle:
    """The parsed JSON of every config file of a folder, by role (see `FILES`)."""

    exam_project: dict[str, Any]
    training: dict[str, Any]
    training_tasks: list[dict[str, Any]]
    exam_pool: dict[str, Any]
    exam_suites: list[dict[str, Any]]
    main_project: dict[str, Any]
    main_pool: dict[str, Any]
    intruders_project: dict[str, Any]
    intruders_training: dict[str, Any]
    intruders_training_tasks: list[dict[str, Any]]
    intruders_pool: dict[str, Any]

    def filled(self, values: Placeholders) -> TolokaBundle:
        """The bundle with every placeholder that `values` knows replaced."""
        mapping = values.mapping()
        return TolokaBundle(
            **{f.name: fill(getattr(self, f.name), mapping) for f in dataclasses.fields(self)}
        )

    def goldens(self) -> dict[tuple[str, ...], tuple[int, ...]]:
        """Images -> golden groups of the exam suites."""
        return dict(golden_partition(suite) for suite in self.exam_suites)


def load_bundle(folder: Path) -> TolokaBundle:
    """Read and check every file of a config folder."""
    folder = Path(folder)
    parts: dict[str, Any] = {}
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
            where = f"{path}[{index}]" if role in LISTS else str(path)
            if not isinstance(item, dict):
                raise TolokaConfigError(f"{where}: expected a JSON object")
            _check_costs(role, item, where)
            probe = fill(item, _PROBE.mapping(), strict=False)
            try:
                CLASSES[role].structure(probe)
            except Exception as exc:
                raise TolokaConfigError(
                    f"{where}: not a valid Toloka {CLASSES[role].__name__}: {exc}"
                ) from exc
        parts[role] = data
    bundle = TolokaBundle(**parts)
    for index, suite in enumerate(bundle.exam_suites):
        try:
            golden_partition(suite)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TolokaConfigError(
                f"{folder / FILES['exam_suites']}[{index}]: needs tasks[0].input_values.images and "
                f"known_solutions[0].output_values.result with one group per image ({exc})"
            ) from exc
    return bundle


def _check_costs(role: str, item: dict[str, Any], where: str) -> None:
    """Cost-bearing fields are the flow's placeholders; a suite or task sets no overlap of its own."""
    for path, name in COST_FIELDS.get(role, {}).items():
        node: Any = item
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node != f"${{{name}}}":
            raise TolokaConfigError(
                f'{where}: {".".join(path)} must be the placeholder "${{{name}}}", found {node!r}: '
                "the flow fills it from pipeline.yaml so that the budget estimate prices it"
            )
    if role == "exam_suites":
        for key in ("overlap", "infinite_overlap"):
            if key in item or any(key in t for t in item.get("tasks", []) if isinstance(t, dict)):
                raise TolokaConfigError(
                    f"{where}: {key} is set on the suite; exam overlap comes from the pool "
                    '("${exam_overlap}") so that the budget estimate prices it'
                )


def overlap_raise(pool_spec: dict[str, Any]) -> int:
    """How much the pool's quality-control rules may add to a suite's paid overlap.

    Every CHANGE_OVERLAP rule counts its delta once per suite, except one triggered by a rejected
    assignment (`assessment_event == REJECT`): a rejected assignment is not paid, so its
    replacement does not raise what the suite costs.
    """
    extra = 0
    for config in (pool_spec.get("quality_control") or {}).get("configs") or []:
        for rule in config.get("rules") or []:
            action = rule.get("action") or {}
            if action.get("type") != "CHANGE_OVERLAP":
                continue
            conditions = rule.get("conditions") or []
            replaces_rejected = any(
                c.get("key") == "assessment_event" and c.get("value") == "REJECT" for c in conditions
            )
            if not replaces_rejected:
                extra += int((action.get("parameters") or {}).get("delta", 0))
    return extra


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
