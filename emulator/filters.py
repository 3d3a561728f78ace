"""Pool filter evaluation: `and`/`or` trees of skill, profile and computed conditions.

A condition on a skill id this emulator has never created (e.g. the hard-coded skill `26366` of the
published intruder configs) is treated as satisfied and logged once: enforcing it literally would
leave the pool without any eligible worker. Unknown profile/computed keys are also satisfied (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

log = logging.getLogger("emulator.filters")
_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def admits(
    node: Any, profile: dict[str, Any], skills: dict[str, float], known_skills: Container[str]
) -> bool:
    """Does the filter tree admit a worker with this profile and these skill values?"""
    if not node:
        return True
    if "and" in node:
        return all(admits(child, profile, skills, known_skills) for child in node["and"] or [])
    if "or" in node:
        children = node["or"] or []
        return not children or any(admits(child, profile, skills, known_skills) for child in children)
    return _leaf(node, profile, skills, known_skills)


def _leaf(
    node: dict[str, Any], profile: dict[str, Any], skills: dict[str, float], known: Container[str]
) -> bool:
    category, key, operator, value = (
        node.get("category"),
        str(node.get("key")),
        node.get("operator"),
        node.get("value"),
    )
    if category == "skill":
        if key not in known:
            _log_once(f"filter on unknown skill {key!r} treated as satisfied")
            return True
        return compare(skills.get(key), operator, value)
    if key not in profile:
        _log_once(f"filter on unsupported {category} key {key!r} treated as satisfied")
        return True
    actual = profile[key]
    if isinstance(actual, list):  # languages
        wanted = value if isinstance(value, list) else [value]
        hit = any(v in actual for v in wanted)
        return not hit if operator in ("NOT_IN", "NE") else hit
    return compare(actual, operator, value)


def compare(actual: Any, operator: str | None, value: Any) -> bool:
    """Toloka's condition operators; a missing value only satisfies `NE x` and `EQ null`."""
    if operator == "IN":
        return actual in (value if isinstance(value, list) else [value])
    if operator == "NOT_IN":
        return actual not in (value if isinstance(value, list) else [value])
    if actual is None or value is None:
        return (operator == "EQ" and actual is value) or (operator == "NE" and actual is not value)
    try:
        a, v = float(actual), float(value)
    except (TypeError, ValueError):
        a, v = str(actual), str(value)  # type: ignore[assignment]
    return {
        "EQ": a == v,
        "NE": a != v,
        "GT": a > v,
        "GTE": a >= v,
        "LT": a < v,
        "LTE": a <= v,
    }.get(operator or "", False)
