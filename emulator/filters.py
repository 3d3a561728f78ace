"""Pool filter evaluation: `and`/`or` trees of skill, profile and computed conditions.

Pools naming a skill this account does not have are refused when they are created (`skill_keys`
finds them); should one still be met here, its condition admits nobody. Unknown profile/computed
keys are satisfied (logged once): the simulated profiles do not have every attribute Toloka knows.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
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
        return key in known and compare(skills.get(key), operator, value)
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


def skill_keys(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, skill id) of every skill condition of a filter tree, e.g. `filter.and[0].or[1]`."""
    if not isinstance(node, dict):
        return
    for op in ("and", "or"):
        if op in node:
            for i, child in enumerate(node[op] or []):
                yield from skill_keys(child, f"{path}.{op}[{i}]")
            return
    if node.get("category") == "skill":
        yield path, str(node.get("key"))
