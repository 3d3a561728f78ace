"""Shape checks of requester configs, answered as Toloka's field-level 400s before anything is stored.

Everything the crowd later reads from a pool, project or task passes through here at creation (and
on every update): a malformed filter, quality-control rule, task spec or known solution is refused
with the field's path, instead of being stored and then crashing the simulation on every request.
Each check returns `{field path: (CODE, message)}`; an empty dict means valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Errors = dict[str, tuple[str, str]]

OPERATORS = {"EQ", "NE", "GT", "GTE", "LT", "LTE", "IN", "NOT_IN"}
FILTER_CATEGORIES = {"profile", "computed", "skill"}
FIELD_TYPES = {
    "boolean",
    "string",
    "float",
    "integer",
    "url",
    "file",
    "coordinates",
    "json",
    "array_boolean",
    "array_string",
    "array_integer",
    "array_float",
    "array_url",
    "array_file",
    "array_coordinates",
    "array_json",
}
# Numeric parameters of collectors and actions (toloka-kit types them int or float), and their minimum.
NUMERIC_PARAMETERS = {
    "history_size": 1,
    "fast_submit_threshold_seconds": 0,
    "answer_threshold": 1,
    "delta": None,
    "skill_value": 0,
    "duration": 1,
    "training_passing_skill_value": 0,
}


def is_number(value: Any) -> bool:
    """A JSON number (not a bool, not NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _names(values: set[str]) -> str:
    return ", ".join(sorted(values))


def _check_numbers(params: Any, path: str) -> Errors:
    if params is None:
        return {}
    if not isinstance(params, dict):
        return {path: ("INVALID_FORMAT", f"{path} must be an object")}
    errors: Errors = {}
    for name, minimum in NUMERIC_PARAMETERS.items():
        value = params.get(name)
        if value is None:
            continue
        if not is_number(value):
            errors[f"{path}.{name}"] = ("INVALID_FORMAT", f"{name} must be a number")
        elif minimum is not None and value < minimum:
            errors[f"{path}.{name}"] = ("VALUE_OUT_OF_RANGE", f"{name} must be at least {minimum}")
    return errors


# ------------------------------------------------------------------------------------------ filters
def filter_errors(node: Any, path: str = "filter") -> Errors:
    """A pool filter: `{"and"|"or": [nodes]}` or a condition `{category, key, operator, value}`."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        return {path: ("INVALID_FORMAT", f"{path} must be an object")}
    for op in ("and", "or"):
        if op in node:
            children = node[op]
            if not isinstance(children, list):
                return {f"{path}.{op}": ("INVALID_FORMAT", f"{path}.{op} must be a list of filters")}
            errors: Errors = {}
            for i, child in enumerate(children):
                errors |= filter_errors(child, f"{path}.{op}[{i}]")
            return errors
    return _condition_errors(node, path, category=True)


def _condition_errors(node: dict[str, Any], path: str, category: bool) -> Errors:
    errors: Errors = {}
    if category and node.get("category") not in FILTER_CATEGORIES:
        errors[f"{path}.category"] = ("INVALID_VALUE", "category must be profile, computed or skill")
    if not isinstance(node.get("key"), str | int) or isinstance(node.get("key"), bool):
        errors[f"{path}.key"] = ("VALUE_REQUIRED", "key is required")
    if node.get("operator") not in OPERATORS:
        errors[f"{path}.operator"] = ("INVALID_VALUE", f"operator must be one of {_names(OPERATORS)}")
    if "value" not in node:
        errors[f"{path}.value"] = ("VALUE_REQUIRED", "value is required")
    elif category and node.get("category") == "skill" and not _skill_value(node["value"]):
        # toloka-kit reads a skill condition's value as a number (None: the skill is not set); any
        # other value was stored and then broke every `get_pool` of that pool in the client.
        errors[f"{path}.value"] = ("INVALID_FORMAT", "a skill condition's value must be a number or null")
    return errors


# ------------------------------------------------------------------------------ pool settings
# A pool's or training's settings the crowd reads, as (field path, smallest value, largest value):
# each must be an integer in range when given. A string priority stored as it came stopped every
# worker of the market (the crowd sorts all open pools by it); an overlap of -1 in `defaults` closed
# the pool COMPLETED before any worker came. Bounds are toloka-kit's (priority -100..100, as PATCH).
POOL_INTEGERS: tuple[tuple[str, int, int | None], ...] = (
    ("priority", -100, 100),
    ("assignment_max_duration_seconds", 1, None),
    ("auto_accept_period_day", 1, None),
    ("auto_close_after_complete_delay_seconds", 0, None),
    ("defaults.default_overlap_for_new_task_suites", 0, None),
    ("defaults.default_overlap_for_new_tasks", 0, None),
    ("mixer_config.real_tasks_count", 0, None),
    ("mixer_config.golden_tasks_count", 0, None),
    ("mixer_config.training_tasks_count", 0, None),
)
TRAINING_INTEGERS: tuple[tuple[str, int, int | None], ...] = (
    ("training_tasks_in_task_suite_count", 1, None),
    ("task_suites_required_to_pass", 1, None),
    ("retry_training_after_days", 1, None),
)
POOL_BOOLEANS = ("auto_accept_solutions", "assignments_issuing_config.issue_task_suites_in_creation_order")
POOL_OBJECTS = ("defaults", "mixer_config", "assignments_issuing_config")


def _at(body: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, None where any step is missing (objects are checked apart)."""
    value: Any = body
    for step in path.split("."):
        value = value.get(step) if isinstance(value, dict) else None
    return value


def is_integer(value: Any) -> bool:
    """A JSON integer (not a bool; 3.0 is not one either: Toloka's integer fields refuse it)."""
    return isinstance(value, int) and not isinstance(value, bool)


def pool_settings_errors(body: dict[str, Any], kind: str) -> Errors:
    """The settings of a pool (`kind="pool"`) or training that the crowd reads: objects, integers in
    range, booleans. Checked at creation and on every PUT, so nothing stored can stop the crowd."""
    errors: Errors = {}
    for name in POOL_OBJECTS:
        if body.get(name) is not None and not isinstance(body[name], dict):
            errors[name] = ("INVALID_FORMAT", f"{name} must be an object")
    integers = POOL_INTEGERS + (TRAINING_INTEGERS if kind == "training" else ())
    for path, low, high in integers:
        value = _at(body, path)
        if value is None or path.split(".")[0] in errors:
            continue
        name = path.rsplit(".", 1)[-1]
        if not is_integer(value):
            errors[path] = ("INVALID_FORMAT", f"{name} must be an integer")
        elif value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            errors[path] = ("VALUE_OUT_OF_RANGE", f"{name} must be {span}")
    for path in POOL_BOOLEANS:
        value = _at(body, path)
        if value is not None and not isinstance(value, bool) and path.split(".")[0] not in errors:
            errors[path] = ("INVALID_FORMAT", f"{path.rsplit('.', 1)[-1]} must be true or false")
    return errors


def _skill_value(value: Any) -> bool:
    return value is None or is_number(value)


# ---------------------------------------------------------------------------------- quality control
def quality_control_errors(qc: Any, path: str = "quality_control") -> Errors:
    """`quality_control`: an optional training requirement and a list of collector configs with rules."""
    if qc is None:
        return {}
    if not isinstance(qc, dict):
        return {path: ("INVALID_FORMAT", f"{path} must be an object")}
    errors: Errors = {}
    requirement = qc.get("training_requirement")
    if requirement is not None:
        if not isinstance(requirement, dict):
            errors[f"{path}.training_requirement"] = ("INVALID_FORMAT", "must be an object")
        else:
            errors |= _check_numbers(requirement, f"{path}.training_requirement")
    configs = qc.get("configs")
    return errors if configs is None else errors | _listed(configs, f"{path}.configs", _config_errors)


def _listed(items: Any, path: str, check: Callable[[Any, str], Errors]) -> Errors:
    """A list field: INVALID_FORMAT unless it is a list, then `check(item, "path[i]")` on each item."""
    if not isinstance(items, list):
        return {path: ("INVALID_FORMAT", f"{path.rsplit('.', 1)[-1]} must be a list")}
    errors: Errors = {}
    for i, item in enumerate(items):
        errors |= check(item, f"{path}[{i}]")
    return errors


def _typed(obj: Any, path: str) -> Errors:
    """An object with a `type` and numeric `parameters`: a collector config, a rule's action."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return {f"{path}.type": ("VALUE_REQUIRED", f"{path.rsplit('.', 1)[-1]}.type is required")}
    return _check_numbers(obj.get("parameters"), f"{path}.parameters")


def _config_errors(config: Any, path: str) -> Errors:
    if not isinstance(config, dict):
        return {path: ("INVALID_FORMAT", f"{path} must be an object")}
    return _typed(config.get("collector_config"), f"{path}.collector_config") | _listed(
        config.get("rules"), f"{path}.rules", _rule_errors
    )


def _rule_errors(rule: Any, path: str) -> Errors:
    if not isinstance(rule, dict):
        return {path: ("INVALID_FORMAT", f"{path} must be an object")}
    return _listed(rule.get("conditions"), f"{path}.conditions", _rule_condition) | _typed(
        rule.get("action"), f"{path}.action"
    )


def _rule_condition(condition: Any, path: str) -> Errors:
    if not isinstance(condition, dict):
        return {path: ("INVALID_FORMAT", f"{path} must be an object")}
    return _condition_errors(condition, path, category=False)


# ------------------------------------------------------------------------------------- task specs
def spec_errors(spec: Any, path: str) -> Errors:
    """An input or output spec: `{field name: {"type": <field type>, ...}}`."""
    if not isinstance(spec, dict):
        return {path: ("VALUE_REQUIRED", f"{path} is required")}
    errors: Errors = {}
    for name, field in spec.items():
        where = f"{path}.{name}"
        if not isinstance(field, dict):
            errors[where] = ("INVALID_FORMAT", f"{where} must be an object with a type")
        elif field.get("type") not in FIELD_TYPES:
            errors[f"{where}.type"] = ("INVALID_VALUE", f"type must be one of {_names(FIELD_TYPES)}")
        elif "allowed_values" in field and not isinstance(field["allowed_values"], list | type(None)):
            errors[f"{where}.allowed_values"] = ("INVALID_FORMAT", "allowed_values must be a list")
    return errors


def known_solutions_errors(solutions: Any, output_spec: dict[str, Any], path: str) -> Errors:
    """`known_solutions`: a list of `{"output_values": {...}, "correctness_weight": n}` whose values
    name output fields and, where the field lists `allowed_values`, one of them."""
    if solutions is None:
        return {}
    if not isinstance(solutions, list):
        return {path: ("INVALID_FORMAT", "known_solutions must be a list")}
    errors: Errors = {}
    for i, solution in enumerate(solutions):
        where = f"{path}.{i}"
        values = solution.get("output_values") if isinstance(solution, dict) else None
        if not isinstance(values, dict):
            errors[f"{where}.output_values"] = ("VALUE_REQUIRED", "output_values is required")
            continue
        weight = solution.get("correctness_weight")
        if weight is not None and not is_number(weight):
            errors[f"{where}.correctness_weight"] = ("INVALID_FORMAT", "correctness_weight must be a number")
        for name, value in values.items():
            field = output_spec.get(name)
            if not isinstance(field, dict):
                errors[f"{where}.output_values.{name}"] = ("UNKNOWN_FIELD", f"{name} is not an output field")
                continue
            allowed = field.get("allowed_values")
            if allowed and value not in allowed:
                errors[f"{where}.output_values.{name}"] = ("INVALID_VALUE", f"must be one of {allowed}")
    return errors


# ------------------------------------------------------------------------------------ input values
_SCALAR_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "url": lambda v: isinstance(v, str),
    "file": lambda v: isinstance(v, str),
    "coordinates": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": is_number,
    "json": lambda v: True,
}


def value_matches(field_type: str, value: Any) -> bool:
    """Is `value` of the spec's field type (`array_x`: a list of x)?"""
    if field_type.startswith("array_"):
        check = _SCALAR_CHECKS.get(field_type[len("array_") :], lambda v: True)
        return isinstance(value, list) and all(check(v) for v in value)
    return _SCALAR_CHECKS.get(field_type, lambda v: True)(value)


def input_values_errors(values: dict[str, Any], input_spec: dict[str, Any], path: str) -> Errors:
    """A task's `input_values` against the project's input spec: every required field present, each
    value of its field's type, no field the spec does not have."""
    errors: Errors = {}
    for name, field in input_spec.items():
        field = field if isinstance(field, dict) else {}
        value = values.get(name)
        if value is None:
            if field.get("required", True):
                errors[f"{path}.{name}"] = ("VALUE_REQUIRED", f"{path}.{name} is required")
        elif not value_matches(str(field.get("type")), value):
            errors[f"{path}.{name}"] = ("INVALID_FORMAT", f"{name} must be of type {field.get('type')}")
    for name in values:
        if name not in input_spec:
            errors[f"{path}.{name}"] = ("UNKNOWN_FIELD", f"{name} is not a field of the project's input spec")
    return errors
