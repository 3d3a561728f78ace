"""Quality-control rules of a pool (`quality_control.configs`): collectors, conditions, actions.

Supported collectors (those the pipeline's configs use, plus golden set and majority vote):
`ASSIGNMENT_SUBMIT_TIME` (fast_submitted_count, total_submitted_count over the last `history_size`
submits), `ANSWER_COUNT` (assignments_accepted_count), `SKIPPED_IN_ROW_ASSIGNMENTS`
(skipped_in_row_count: skips since the worker's last submit, evaluated on each skip), `GOLDEN_SET`
and `MAJORITY_VOTE` (total_answers_count, correct_answers_rate, incorrect_answers_rate),
`ASSIGNMENTS_ASSESSMENT` (assessment_event on accept / reject), `USERS_ASSESSMENT`
(pool_access_revoked_reason and skill_id each time a worker who answered in the pool loses access to it:
a restriction, by a rule or by the requester, or a skill change, by a rule or by the requester,
that the pool's filter no longer admits).
Actions: `RESTRICTION_V2`/`RESTRICTION`, `SET_SKILL`, `CHANGE_OVERLAP`, `APPROVE_ALL_ASSIGNMENTS`,
`REJECT_ALL_ASSIGNMENTS`. Anything else is stored and logged once as unsupported.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from emulator.filters import compare
from emulator.records import Doc
from emulator.workers import matches_gold

if TYPE_CHECKING:
    from emulator.core import Emulator

log = logging.getLogger("emulator.qc")
_unsupported: set[str] = set()
UNIT_SECONDS = {"MINUTES": 60, "HOURS": 3600, "DAYS": 86400}
SUBMITTED = ("SUBMITTED", "ACCEPTED", "REJECTED")


def _configs(pool: Doc) -> list[dict[str, Any]]:
    return list((pool.get("quality_control") or {}).get("configs") or [])


def _holds(conditions: list[dict[str, Any]], values: dict[str, Any]) -> bool:
    return all(compare(values.get(c.get("key")), c.get("operator"), c.get("value")) for c in conditions or [])


def _worker_assignments(emu: Emulator, pool: Doc, worker_id: str) -> list[Doc]:
    worker = emu.store.data["worker"].get(worker_id)
    if worker is None:
        return []
    data = emu.store.data["assignment"]
    return [data[i] for i in worker["_rt"]["pools"].get(pool["id"], [])]


def _collect(emu: Emulator, collector: dict[str, Any], pool: Doc, worker: Doc) -> dict[str, Any] | None:
    kind = collector.get("type")
    if kind in ("ASSIGNMENTS_ASSESSMENT", "USERS_ASSESSMENT"):
        return None  # event-driven: `on_assessment`, `on_access_revoked`
    if kind == "SKIPPED_IN_ROW_ASSIGNMENTS":
        return {"skipped_in_row_count": skipped_in_row(_worker_assignments(emu, pool, worker["id"]))}
    params = collector.get("parameters") or {}
    history = int(params.get("history_size") or 10)
    mine = [a for a in _worker_assignments(emu, pool, worker["id"]) if a["status"] in SUBMITTED]
    if kind == "ASSIGNMENT_SUBMIT_TIME":
        recent = mine[-history:]
        threshold = float(params.get("fast_submit_threshold_seconds") or 0)
        fast = sum(1 for a in recent if a.get("_duration", threshold) < threshold)
        return {"fast_submitted_count": fast, "total_submitted_count": len(recent)}
    if kind == "ANSWER_COUNT":
        return {"assignments_accepted_count": len(mine)}
    if kind == "GOLDEN_SET":
        return _rates(_golden_answers(emu, mine)[-history:])
    if kind == "MAJORITY_VOTE":
        return _rates(_majority_answers(emu, pool, mine, int(params.get("answer_threshold") or 2))[-history:])
    if str(kind) not in _unsupported:
        _unsupported.add(str(kind))
        log.warning("quality-control collector %s is not supported by the emulator: rules ignored", kind)
    return None


def skipped_in_row(mine: list[Doc]) -> int:
    """Suites skipped since the worker's last submit in the pool (expired ones do not break a row)."""
    count = 0
    for a in reversed(mine):
        if a["status"] == "SKIPPED":
            count += 1
        elif a["status"] in SUBMITTED:
            break
    return count


def on_skip(emu: Emulator, worker: Doc, pool: Doc) -> None:
    """SKIPPED_IN_ROW_ASSIGNMENTS rules after the worker skipped a suite of the pool."""
    for config in _configs(pool):
        collector = config.get("collector_config") or {}
        if collector.get("type") != "SKIPPED_IN_ROW_ASSIGNMENTS":
            continue
        values = _collect(emu, collector, pool, worker)
        for rule in config.get("rules") or []:
            if values is not None and _holds(rule.get("conditions"), values):
                apply(emu, rule.get("action") or {}, pool, worker["id"], None)


def _rates(correct: list[bool]) -> dict[str, Any]:
    total = len(correct)
    rate = 100.0 * sum(correct) / total if total else None
    return {
        "total_answers_count": total,
        "golden_set_answers_count": total,
        "correct_answers_rate": rate,
        "golden_set_correct_answers_rate": rate,
        "incorrect_answers_rate": None if rate is None else 100.0 - rate,
        "golden_set_incorrect_answers_rate": None if rate is None else 100.0 - rate,
    }


def _golden_answers(emu: Emulator, mine: list[Doc]) -> list[bool]:
    out = []
    for a in mine:
        suite = emu.store.data["suite"][a["task_suite_id"]]
        for task, solution in zip(suite["tasks"], a.get("solutions") or [], strict=False):
            if task.get("known_solutions"):
                out.append(matches_gold(solution["output_values"], task))
    return out


def _majority_answers(emu: Emulator, pool: Doc, mine: list[Doc], threshold: int) -> list[bool]:
    """Agreement with the majority on each task of a completed suite whose majority has `threshold` votes."""
    data = emu.store.data["assignment"]
    out = []
    for a in mine:
        suite = emu.store.data["suite"][a["task_suite_id"]]
        if suite["_overlap"] is None or suite["_done"] < suite["_overlap"]:
            continue  # judged only once every answer is in, as Toloka does
        others = [data[i] for i in suite.get("_assignments", []) if data[i]["status"] in SUBMITTED]
        for pos, solution in enumerate(a.get("solutions") or []):
            votes = Counter(repr(sorted(o["solutions"][pos]["output_values"].items())) for o in others)
            majority, count = votes.most_common(1)[0]
            if count >= threshold:
                out.append(repr(sorted(solution["output_values"].items())) == majority)
    return out


def on_submit(emu: Emulator, worker: Doc, pool: Doc, assignment: Doc) -> None:
    """Evaluate the submit-driven collectors of the pool.

    Most collectors judge the worker who just submitted. MAJORITY_VOTE judges every worker of the suite
    once the suite's last answer is in (before that there is no majority to agree with).
    """
    suite = emu.store.data["suite"][assignment["task_suite_id"]]
    complete = suite["_overlap"] is not None and suite["_done"] >= suite["_overlap"]
    workers = emu.store.data["worker"]
    for config in _configs(pool):
        collector = config.get("collector_config") or {}
        if collector.get("type") == "MAJORITY_VOTE":
            if not complete:
                continue
            ids = dict.fromkeys(
                emu.store.data["assignment"][i]["user_id"] for i in suite.get("_assignments", [])
            )
            targets = [workers[w] for w in ids if w in workers]
        else:
            targets = [worker]
        for target in targets:
            values = _collect(emu, collector, pool, target)
            if values is None:
                continue
            for rule in config.get("rules") or []:
                if _holds(rule.get("conditions"), values):
                    apply(emu, rule.get("action") or {}, pool, target["id"], assignment)


def on_assessment(emu: Emulator, pool: Doc, assignment: Doc, event: str) -> None:
    """ASSIGNMENTS_ASSESSMENT rules after an accept or reject."""
    mine = _worker_assignments(emu, pool, assignment["user_id"])
    values = {
        "assessment_event": event,
        "pending_assignments_count": sum(1 for a in mine if a["status"] == "SUBMITTED"),
        "accepted_assignments_count": sum(1 for a in mine if a["status"] == "ACCEPTED"),
        "rejected_assignments_count": sum(1 for a in mine if a["status"] == "REJECTED"),
    }
    for config in _configs(pool):
        if (config.get("collector_config") or {}).get("type") != "ASSIGNMENTS_ASSESSMENT":
            continue
        for rule in config.get("rules") or []:
            if _holds(rule.get("conditions"), values):
                apply(emu, rule.get("action") or {}, pool, assignment["user_id"], assignment)


def on_access_revoked(
    emu: Emulator, pool: Doc, worker_id: str, reason: str, skill_id: str | None = None
) -> None:
    """USERS_ASSESSMENT rules: a worker lost access to the pool (restriction or skill change; for a
    skill change, `skill_id` is the skill whose new value the pool's filter no longer admits).

    Every loss of access counts (a worker banned, unbanned and banned again loses it twice), but an
    answer is redone once: the rules act on the worker's answers in the pool that no loss of access
    has acted on yet, so a second ban redoes what the worker answered since the first, and a second
    restriction of a worker still banned, with nothing new answered, changes nothing."""
    done = _recompleted(emu, pool)
    mine = _worker_assignments(emu, pool, worker_id)
    fresh = [a for a in mine if a["status"] in SUBMITTED and a["id"] not in done]
    if not fresh:
        return
    done.update(a["id"] for a in fresh)
    pool["_recompleted"] = sorted(done)
    emu.store.touch("pool", pool["id"])
    values = {"pool_access_revoked_reason": reason, "skill_id": skill_id}
    for config in _configs(pool):
        if (config.get("collector_config") or {}).get("type") != "USERS_ASSESSMENT":
            continue
        for rule in config.get("rules") or []:
            if not _holds(rule.get("conditions"), values):
                continue
            action = rule.get("action") or {}
            if action.get("type") == "CHANGE_OVERLAP":  # the suite of each answer to redo
                for assignment in fresh:
                    apply(emu, action, pool, worker_id, assignment)
            else:
                apply(emu, action, pool, worker_id, None)


def _recompleted(emu: Emulator, pool: Doc) -> set[str]:
    """The answers of the pool a loss of access has acted on. (A state saved when the rules fired
    once per worker and pool kept those workers, `_revoked`: take all their answers as acted on.)"""
    if "_recompleted" in pool:
        return set(pool["_recompleted"])
    return {a["id"] for worker in pool.get("_revoked", []) for a in _worker_assignments(emu, pool, worker)}


def _answered_pools(emu: Emulator, worker: Doc | None) -> list[Doc]:
    """The regular pools the worker has taken assignments in (where losing access matters)."""
    if worker is None:
        return []
    pools = emu.store.data["pool"]
    return [pools[p] for p in worker["_rt"]["pools"] if p in pools and pools[p]["_kind"] == "pool"]


def on_restricted(emu: Emulator, worker_id: str) -> None:
    """A restriction (a rule's, or the requester's through the API: Toloka's "banned by you or the
    system") took effect: RESTRICTION for each pool it now keeps the worker out of."""
    worker = emu.store.data["worker"].get(worker_id)
    for pool in _answered_pools(emu, worker):
        if emu.crowd.banned(worker_id, pool):
            on_access_revoked(emu, pool, worker_id, "RESTRICTION")


def admitted_pools(emu: Emulator, worker_id: str) -> list[Doc]:
    """The pools the worker has answered in whose filter admits it now (before a skill change)."""
    worker = emu.store.data["worker"].get(worker_id)
    return [pool for pool in _answered_pools(emu, worker) if emu.crowd.admits(worker, pool)]


def on_skill_changed(emu: Emulator, worker_id: str, admitted_before: list[Doc], skill_id: str) -> None:
    """A skill value changed (a rule's SET_SKILL, or the requester's set or delete): SKILL_CHANGE,
    with the skill's id, for each pool whose filter admitted the worker before and does not now."""
    worker = emu.store.data["worker"].get(worker_id)
    for pool in admitted_before:
        if worker is not None and not emu.crowd.admits(worker, pool):
            on_access_revoked(emu, pool, worker_id, "SKILL_CHANGE", skill_id)


def apply(emu: Emulator, action: dict[str, Any], pool: Doc, worker_id: str, assignment: Doc | None) -> None:
    kind = action.get("type")
    params = action.get("parameters") or {}
    crowd = emu.crowd
    worker = emu.store.data["worker"].get(worker_id)
    if kind in ("RESTRICTION_V2", "RESTRICTION") and worker is not None:
        scope = params.get("scope", "POOL")
        span = params.get("duration")
        unit = params.get("duration_unit")
        until = (
            None
            if span is None or unit == "PERMANENT"
            else crowd.now + float(span) * UNIT_SECONDS.get(unit, 86400)
        )
        # The same user restriction the requester sees (and can lift) through /user-restrictions.
        emu.add_restriction(
            {
                "scope": scope,
                "user_id": worker_id,
                "private_comment": params.get("private_comment"),
                **({"project_id": pool["project_id"]} if scope == "PROJECT" else {}),
                **({"pool_id": pool["id"]} if scope == "POOL" else {}),
            },
            until,
        )  # USERS_ASSESSMENT of the pools it closes to the worker: `on_restricted`
    elif kind == "SET_SKILL":
        # USERS_ASSESSMENT of the pools the new value closes to the worker: `on_skill_changed`
        emu.put_user_skill(worker_id, str(params.get("skill_id")), float(params.get("skill_value") or 0))
    elif kind == "CHANGE_OVERLAP":
        delta, reopen = int(params.get("delta") or 0), bool(params.get("open_pool"))
        if assignment is not None:
            crowd.change_overlap(emu.store.data["suite"][assignment["task_suite_id"]], delta, reopen)
        else:
            for a in _worker_assignments(emu, pool, worker_id):
                if a["status"] in SUBMITTED:
                    crowd.change_overlap(emu.store.data["suite"][a["task_suite_id"]], delta, reopen)
    elif kind in ("APPROVE_ALL_ASSIGNMENTS", "REJECT_ALL_ASSIGNMENTS"):
        status = "ACCEPTED" if kind.startswith("APPROVE") else "REJECTED"
        for a in _worker_assignments(emu, pool, worker_id):
            if a["status"] == "SUBMITTED":
                crowd.assess(a, status, params.get("public_comment"))
    elif str(kind) not in _unsupported:
        _unsupported.add(str(kind))
        log.warning("quality-control action %s is not supported by the emulator: ignored", kind)
