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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.params import PipelineParams, config_text
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


def _line_column(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def json_problem(text: str, exc: json.JSONDecodeError) -> str:
    """Where the JSON of a config file goes wrong and why, in plain words for the usual slips.

    Python's own words named the cause of none of them: a trailing comma read "Expecting property
    name enclosed in double quotes: line 173 column 1 (char 4208)", the line of the `}` after it.
    A trailing comma is named at the comma, a `//` or `#` comment and a single-quoted string where
    they start; anything else keeps json's words, with the line and column.
    """
    at = exc.pos
    here = text[at : at + 1]
    before = text[:at].rstrip()
    if here in ("}", "]") and before.endswith(","):
        comma = len(before) - 1
        what = "the last member of an object" if here == "}" else "the last element of an array"
        where = _line_column(text, comma)
        return f"{where}: a trailing comma before {here} (JSON allows none after {what}): remove it"
    if text.startswith(("//", "/*", "#"), at):
        return f"{_line_column(text, at)}: a comment, which JSON does not allow: remove it"
    if here == "'":
        return f'{_line_column(text, at)}: a string in single quotes: JSON takes double quotes (")'
    return f"{_line_column(text, at)}: {exc.msg}"


def load_bundle(folder: Path) -> TolokaBundle:
    """Read and check every file of a config folder."""
    folder = Path(folder)
    parts: dict[str, Any] = {}
    for role, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise TolokaConfigError(f"{path}: missing ({role} config)")
        text = config_text(path, TolokaConfigError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TolokaConfigError(f"{path}: not valid JSON: {json_problem(text, exc)}") from exc
        items = data if role in LISTS else [data]
        if role in LISTS and (not isinstance(data, list) or not data):
            raise TolokaConfigError(f"{path}: expected a non-empty JSON list")
        for index, item in enumerate(items):
            where = f"{path}[{index}]" if role in LISTS else str(path)
            if not isinstance(item, dict):
                raise TolokaConfigError(f"{where}: expected a JSON object")
            _check_costs(role, item, where)
            if role in COST_FIELDS:
                check_overlap_rules(path, item, 0, None)  # refuses chains at load time
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


RESTRICTIONS = ("RESTRICTION", "RESTRICTION_V2")


def _rules(pool_spec: dict[str, Any], actions: tuple[str, ...]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, collector type, rule) of every quality-control rule of a pool spec with one of `actions`."""
    for i, config in enumerate((pool_spec.get("quality_control") or {}).get("configs") or []):
        collector = str((config.get("collector_config") or {}).get("type"))
        for j, rule in enumerate(config.get("rules") or []):
            if (rule.get("action") or {}).get("type") in actions:
                yield f"quality_control.configs[{i}].rules[{j}]", collector, rule


def _overlap_rules(pool_spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    return _rules(pool_spec, ("CHANGE_OVERLAP",))


def _condition(rule: dict[str, Any], key: str) -> Any:
    return next((c.get("value") for c in rule.get("conditions") or [] if c.get("key") == key), None)


def _replaces_rejected(rule: dict[str, Any]) -> bool:
    """Triggered by a rejected (unpaid) assignment: the replacement does not raise what a suite costs."""
    return _condition(rule, "assessment_event") == "REJECT"


def overlap_raise(pool_spec: dict[str, Any]) -> int:
    """How much the pool's quality-control rules may add to a suite's paid overlap.

    Every CHANGE_OVERLAP rule counts its delta once per suite, except one triggered by a rejected
    assignment (`assessment_event == REJECT`): a rejected assignment is not paid, so its
    replacement does not raise what the suite costs. Rule sets that can add more than that (chains)
    are refused by `check_overlap_rules`.
    """
    return sum(
        int((rule.get("action") or {}).get("parameters", {}).get("delta", 0))
        for _, _, rule in _overlap_rules(pool_spec)
        if not _replaces_rejected(rule)
    )


def _restricts_by_answer_count(pool_spec: dict[str, Any]) -> bool:
    """An ANSWER_COUNT rule that takes access away: every extra answer brings it closer."""
    return any(collector == "ANSWER_COUNT" for _, collector, _ in _rules(pool_spec, RESTRICTIONS))


UNIT_SECONDS = {"MINUTES": 60, "HOURS": 3600, "DAYS": 86400}
# Toloka's condition operators, as the first count at which a rule on a number of answers fires.
FIRST_FIRING = {"GTE": 0, "GT": 1, "EQ": 0}


@dataclass(frozen=True)
class AnswerLimit:
    """An ANSWER_COUNT rule that takes a worker's access away after `answers` answers in the pool.

    `seconds` is how long the restriction lasts (None: for good). Once it lapses the count is still
    past the threshold, so the next answer restricts the worker again: after the first `answers`,
    a worker gives one answer per restriction.
    """

    answers: int
    seconds: float | None
    where: str

    def most_per_worker(self, lifetime_seconds: float) -> int:
        """The most answers one worker can give in a pool open for `lifetime_seconds`."""
        if self.seconds is None:
            return self.answers
        return self.answers + -(-int(lifetime_seconds) // max(int(self.seconds), 1))

    def describe(self) -> str:
        span = "for good" if self.seconds is None else f"for {_duration(self.seconds)}"
        return f"restricts a worker after {self.answers} answers, {span} ({self.where})"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            value = int(seconds // size)
            return f"{value} {unit[:-1] if value == 1 else unit}"
    return f"{seconds:g} seconds"


def answer_limits(pool_spec: dict[str, Any]) -> list[AnswerLimit]:
    """Every ANSWER_COUNT rule of a pool spec that restricts a worker past a number of answers.

    Only qualified workers may answer a gated pool, so this rule, times the workers the exam can
    qualify, bounds how many answers the pool can ever collect (`preflight.check_staffing`).
    """
    limits = []
    for where, collector, rule in _rules(pool_spec, RESTRICTIONS):
        condition = next(
            (c for c in rule.get("conditions") or [] if c.get("key") == "assignments_accepted_count"), None
        )
        if collector != "ANSWER_COUNT" or condition is None or condition.get("operator") not in FIRST_FIRING:
            continue
        params = rule["action"].get("parameters") or {}
        span, unit = params.get("duration"), params.get("duration_unit")
        if span is None and params.get("duration_days") is not None:  # RESTRICTION (v1)
            span, unit = params["duration_days"], "DAYS"
        lasting = span is None or unit == "PERMANENT"
        seconds = None if lasting else float(span) * UNIT_SECONDS.get(unit, 86400)
        if condition["operator"] == "EQ" and seconds is not None:
            continue  # fires once, at exactly n: once it lapses, nothing stops the worker again
        answers = int(condition.get("value")) + FIRST_FIRING[condition["operator"]]
        limits.append(AnswerLimit(answers, seconds, where))
    return limits


def tightest_limit(pool_spec: dict[str, Any], lifetime_seconds: float) -> AnswerLimit | None:
    """The pool's ANSWER_COUNT rule that lets a worker give the fewest answers in its lifetime, or None."""
    limits = answer_limits(pool_spec)
    if not limits:
        return None
    return min(limits, key=lambda rule: (rule.most_per_worker(lifetime_seconds), rule.answers))


def check_overlap_rules(path: Path, pool_spec: dict[str, Any], overlap: int, max_overlap: int | None) -> int:
    """Refuse CHANGE_OVERLAP rules that can chain into runaway overlap; return the worst paid overlap.

    A chain: an overlap increase whose new answers can trigger the same increase again, without
    bound. Two shapes do: a rule on accepted assignments (every paid answer buys another), and an
    increase on a revoked worker (USERS_ASSESSMENT) in a pool that restricts workers by their
    number of answers (ANSWER_COUNT), because the replacements' answers push more workers over the
    count. Under faults or latency the crowd hands out more assignments per worker, and such a
    pool went from overlap 7 to 45. `max_overlap` (when set) bounds the rest.
    """
    for where, collector, rule in _overlap_rules(pool_spec):
        if _replaces_rejected(rule):
            continue
        chain = (
            collector == "ASSIGNMENTS_ASSESSMENT" and _condition(rule, "assessment_event") != "REJECT"
        ) or (collector == "USERS_ASSESSMENT" and _restricts_by_answer_count(pool_spec))
        if chain:
            cause = (
                "every accepted answer raises the overlap again"
                if collector == "ASSIGNMENTS_ASSESSMENT"
                else "the ANSWER_COUNT restriction fires again on the replacement answers"
            )
            raise TolokaConfigError(
                f"{path}: {where} ({collector} -> CHANGE_OVERLAP) can chain into runaway overlap: {cause}; "
                "drop the rule (or the ANSWER_COUNT restriction) so that a HIT's paid overlap is bounded"
            )
    worst = overlap + overlap_raise(pool_spec)
    if max_overlap is not None and worst > max_overlap:
        raise TolokaConfigError(
            f"{path}: quality-control rules may raise a HIT's overlap to {worst}, above hits.max_overlap "
            f"{max_overlap}; raise hits.max_overlap or drop CHANGE_OVERLAP rules"
        )
    return worst


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
