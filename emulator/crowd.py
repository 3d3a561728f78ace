"""The simulated crowd: an event-driven simulation over simulated time.

Each worker is an event in a heap keyed by (simulated time, worker index). When a worker's event comes
due it either submits the assignment it holds or looks for work: trainings it needs, then open pools
whose filter admits it, in (priority, a per-worker preference) order, taking the first suite in creation
order (or, for pools with `issue_task_suites_in_creation_order: false`, from a per-worker hashed place)
that it has not answered and that has overlap left. Workers that find nothing go idle and are
woken (after a short, hashed delay) whenever something changes: a pool opens, suites are added, a skill
or an overlap changes. Pools close themselves `auto_close_after_complete_delay_seconds` after their
last suite is complete.

Determinism: events are processed in (time, kind, key) order and every random choice is hashed from
(seed, worker, suite, ...), so a run is a pure function of the seed and of the simulated instants at
which requests arrive. With `speed=0` (clock moved only by `/_emulator/advance`) runs repeat exactly.
With a running clock, which worker gets which suite depends on when the requester's requests land;
each worker's answer to a given suite does not.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from emulator import filters, qc
from emulator.core import FEE_RATE, OWNER, public
from emulator.store import Doc
from emulator.util import fmt_time, stable_int, unit
from emulator.workers import answer_task, duration, matches_gold, pause, population

if TYPE_CHECKING:
    from emulator.core import Emulator

log = logging.getLogger("emulator.crowd")
WORKER, POOL_CHECK = 0, 1


class Crowd:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.store = emu.store
        self.seed = emu.settings.seed
        self.now = float(self.store.meta("sim_now", 0.0))
        self.heap: list[tuple[float, int, str]] = []
        self.idle: set[str] = set()
        self.pointer: dict[str, int] = {}
        self.skills: dict[str, dict[str, float]] = {}
        if not self.store.data["worker"]:
            for worker in population(self.seed, emu.settings.workers or 100):
                worker["_rt"] = {
                    "next_at": worker["arrival"],
                    "assignment": None,
                    "trainings": {},
                    "pools": {},
                    "restrictions": [],
                }
                self.store.put("worker", worker["id"], worker)
        self.by_index = sorted(self.store.data["worker"].values(), key=lambda w: w["index"])
        for worker in self.by_index:
            rt = worker["_rt"]
            if rt["next_at"] is not None:
                heapq.heappush(self.heap, (rt["next_at"], WORKER, worker["id"]))
            waiting_for_release = rt["assignment"] is None and any(
                r["until"] == rt["next_at"] for r in rt["restrictions"]
            )
            if rt["next_at"] is None or waiting_for_release:
                self.idle.add(worker["id"])
        for doc in self.store.data["user_skill"].values():
            self.skills.setdefault(doc["user_id"], {})[doc["skill_id"]] = doc["exact_value"]
        for suite in self.store.data["suite"].values():
            self.learn(self.store.data["pool"][suite["pool_id"]], suite)
        for pool in self.store.data["pool"].values():
            if pool.get("_close_at") is not None:
                heapq.heappush(self.heap, (pool["_close_at"], POOL_CHECK, pool["id"]))

    # ------------------------------------------------------------------------------------ the loop
    def advance_to(self, target: float) -> None:
        """Process every event due up to `target` (simulated seconds)."""
        while self.heap and self.heap[0][0] <= target:
            at, kind, key = heapq.heappop(self.heap)
            self.now = max(self.now, at)
            if kind == WORKER:
                worker = self.store.data["worker"][key]
                if worker["_rt"]["next_at"] == at:
                    self._act(worker)
            else:
                self._auto_close(key, at)
        if target > self.now:
            self.now = target
        self.store.set_meta("sim_now", self.now)

    def _schedule(self, worker: Doc, at: float | None) -> None:
        worker["_rt"]["next_at"] = at
        self.store.touch("worker", worker["id"])
        if at is None:
            self.idle.add(worker["id"])
        else:
            self.idle.discard(worker["id"])
            heapq.heappush(self.heap, (at, WORKER, worker["id"]))

    def notify(self) -> None:
        """Something changed: idle workers come back and look for work after a short delay."""
        if not self.idle:
            return
        generation = int(self.store.meta("generation", 0)) + 1
        self.store.set_meta("generation", generation)
        for wid in sorted(self.idle):
            self._schedule(
                self.store.data["worker"][wid], self.now + 5 + 55 * unit("wake", self.seed, wid, generation)
            )

    def _act(self, worker: Doc) -> None:
        rt = worker["_rt"]
        if rt["assignment"]:
            assignment = self.store.data["assignment"][rt["assignment"]]
            rt["assignment"] = None
            self._submit(worker, assignment)
            self._schedule(worker, self.now + pause(self.seed, worker, assignment["id"]))
            return
        choice = self._choose(worker)
        if choice is None:
            # Idle: woken by `notify`, and also when one of its restrictions runs out.
            ends = [
                r["until"] for r in rt["restrictions"] if r["until"] is not None and r["until"] > self.now
            ]
            self._schedule(worker, min(ends, default=None))
            self.idle.add(worker["id"])
            return
        pool, suite = choice
        assignment = self._start(worker, pool, suite)
        n_images = sum(len((t.get("input_values") or {}).get("images") or [1]) for t in suite["tasks"])
        spent = duration(self.seed, worker, suite["id"], n_images)
        assignment["_duration"] = round(spent, 3)
        self._schedule(worker, self.now + spent)

    # ---------------------------------------------------------------------------------- choosing
    def _choose(self, worker: Doc) -> tuple[Doc, Doc] | None:
        pools = [
            p for p in self.store.data["pool"].values() if p["status"] == "OPEN" and p["_kind"] == "pool"
        ]
        pools.sort(
            key=lambda p: (-(p.get("priority") or 0), unit("prefers", self.seed, worker["id"], p["id"]))
        )
        for pool in pools:
            if self.restricted(worker, pool) or not self.admits(worker, pool):
                continue
            if self.emu.balance() < self.emu.assignment_cost(pool):
                self.emu.set_pool_status(pool, "CLOSED", "NOT_ENOUGH_BALANCE")
                continue
            requirement = (pool.get("quality_control") or {}).get("training_requirement") or {}
            training_id = requirement.get("training_pool_id")
            if training_id:
                training = self.store.get("pool", str(training_id))
                score = self.training_score(worker, str(training_id))
                if score is None:
                    suite = (
                        self._next_suite(training, worker)
                        if training and training["status"] == "OPEN"
                        else None
                    )
                    if suite is not None:
                        return training, suite
                    continue
                if score < float(requirement.get("training_passing_skill_value") or 0):
                    continue
            suite = self._next_suite(pool, worker)
            if suite is not None:
                return pool, suite
        return None

    def admits(self, worker: Doc, pool: Doc) -> bool:
        known = self.store.data["skill"]  # skill ids this emulator created (membership only)
        return filters.admits(pool.get("filter"), worker["profile"], self.skills.get(worker["id"], {}), known)

    def restricted(self, worker: Doc, pool: Doc) -> bool:
        for r in worker["_rt"]["restrictions"]:
            if r["until"] is not None and r["until"] <= self.now:
                continue
            if (
                r["scope"] == "ALL_PROJECTS"
                or (r["scope"] == "PROJECT" and r["target"] == pool["project_id"])
                or (r["scope"] == "POOL" and r["target"] == pool["id"])
            ):
                return True
        return False

    def training_score(self, worker: Doc, training_id: str) -> float | None:
        """The worker's training score in percent, or None while the training is unfinished."""
        progress = worker["_rt"]["trainings"].get(training_id)
        total = len(self.store.ids_in_pool("suite", training_id))
        if not progress or progress["done"] < total or total == 0:
            return None
        return 100.0 * progress["correct"] / progress["done"]

    def _next_suite(self, pool: Doc, worker: Doc) -> Doc | None:
        ids = self.store.ids_in_pool("suite", pool["id"])
        suites = self.store.data["suite"]
        start = self.pointer.get(pool["id"], 0)
        while start < len(ids) and self.remaining(suites[ids[start]]) <= 0:
            start += 1
        self.pointer[pool["id"]] = start
        order: Iterable[int] = range(start, len(ids))
        if (pool.get("assignments_issuing_config") or {}).get("issue_task_suites_in_creation_order") is False:
            # Explicitly unordered issuing: each worker starts at its own (hashed) place in the pool.
            shift = stable_int("issue-order", self.seed, worker["id"], pool["id"]) % max(len(ids) - start, 1)
            offset = start + shift
            order = itertools.chain(range(offset, len(ids)), range(start, offset))
        for index in order:
            suite = suites[ids[index]]
            if self.remaining(suite) > 0 and worker["id"] not in suite["_workers"]:
                return suite
        return None

    @staticmethod
    def remaining(suite: Doc) -> float:
        overlap = suite["_overlap"]
        return float("inf") if overlap is None else overlap - suite["_taken"]

    # ------------------------------------------------------------------------------- assignments
    def _start(self, worker: Doc, pool: Doc, suite: Doc) -> Doc:
        training = pool["_kind"] == "training"
        assignment = {
            "id": self.emu._long_id(),
            "task_suite_id": suite["id"],
            "pool_id": pool["id"],
            "user_id": worker["id"],
            "status": "ACTIVE",
            "reward": 0.0 if training else float(pool.get("reward_per_assignment") or 0.0),
            "mixed": False,
            "automerged": False,
            "created": fmt_time(self.now),
            "tasks": [{"id": t["id"], "input_values": t.get("input_values")} for t in suite["tasks"]],
            "owner": OWNER,
        }
        self.store.put("assignment", assignment["id"], assignment)
        suite["_taken"] += 1
        suite["_workers"].append(worker["id"])
        suite.setdefault("_assignments", []).append(assignment["id"])
        worker["_rt"]["pools"].setdefault(pool["id"], []).append(assignment["id"])
        self.store.touch("suite", suite["id"])
        pool["_stats"]["active"] += 1
        self.store.touch("pool", pool["id"])
        worker["_rt"]["assignment"] = assignment["id"]
        return assignment

    def _submit(self, worker: Doc, assignment: Doc) -> None:
        pool = self.store.data["pool"][assignment["pool_id"]]
        suite = self.store.data["suite"][assignment["task_suite_id"]]
        project = self.store.get("project", str(pool["project_id"])) or {}
        output_spec = (project.get("task_spec") or {}).get("output_spec") or {}
        training = pool["_kind"] == "training"
        outputs = [
            answer_task(
                self.seed, worker, self.emu.catalogue, task, output_spec, f"{suite['id']}/{i}", training
            )
            for i, task in enumerate(suite["tasks"])
        ]
        assignment["solutions"] = [{"output_values": out} for out in outputs]
        assignment["status"] = "SUBMITTED"
        assignment["submitted"] = fmt_time(self.now)
        suite["_done"] += 1
        stats = pool["_stats"]
        stats["active"] -= 1
        if suite["_overlap"] is not None and suite["_done"] <= suite["_overlap"]:
            stats["done"] += 1
        if training:
            progress = worker["_rt"]["trainings"].setdefault(pool["id"], {"done": 0, "correct": 0})
            progress["done"] += 1
            progress["correct"] += all(
                matches_gold(o, t) for o, t in zip(outputs, suite["tasks"], strict=True)
            )
            self._finish(assignment, "ACCEPTED", None, charge=False)
        elif pool.get("auto_accept_solutions"):
            self._finish(assignment, "ACCEPTED", None, charge=True)
        self.store.touch("suite", suite["id"])
        self.store.touch("pool", pool["id"])
        self.store.touch("worker", worker["id"])
        if not training:
            qc.on_submit(self.emu, worker, pool, assignment)
        self.check_complete(pool)

    def _finish(self, assignment: Doc, status: str, comment: str | None, charge: bool) -> None:
        assignment["status"] = status
        assignment["accepted" if status == "ACCEPTED" else "rejected"] = fmt_time(self.now)
        if comment is not None:
            assignment["public_comment"] = comment
        if charge and status == "ACCEPTED":
            self.emu.charge(assignment["reward"] * (1 + FEE_RATE))
        self.store.touch("assignment", assignment["id"])

    def assess(self, assignment: Doc, status: str, comment: str | None) -> None:
        """The requester (or a QC rule) accepts or rejects a submitted assignment."""
        self._finish(assignment, status, comment, charge=True)
        pool = self.store.data["pool"][assignment["pool_id"]]
        qc.on_assessment(self.emu, pool, assignment, "ACCEPT" if status == "ACCEPTED" else "REJECT")

    # ---------------------------------------------------------------------------- pool bookkeeping
    def learn(self, pool: Doc, suite: Doc) -> None:
        """Exam gold in regular pools tells the catalogue how to see images it does not know."""
        if pool["_kind"] != "pool":
            return
        for task in suite["tasks"]:
            images = (task.get("input_values") or {}).get("images")
            for solution in task.get("known_solutions") or []:
                for value in (solution.get("output_values") or {}).values():
                    if isinstance(images, list) and isinstance(value, list):
                        self.emu.catalogue.learn_from_gold(images, value)

    def suite_added(self, pool: Doc, suite: Doc) -> None:
        self.learn(pool, suite)
        if suite["_overlap"] is not None:
            pool["_stats"]["total"] += suite["_overlap"]
        self.store.touch("pool", pool["id"])
        if pool["status"] == "OPEN":
            self.notify()

    def change_overlap(self, suite: Doc, delta: int, open_pool: bool) -> None:
        """CHANGE_OVERLAP: the suite needs `delta` more answers; optionally reopen a completed pool."""
        if suite["_overlap"] is None or delta == 0:
            return
        pool = self.store.data["pool"][suite["pool_id"]]
        before = min(suite["_done"], suite["_overlap"])
        suite["_overlap"] = max(0, suite["_overlap"] + delta)
        pool["_stats"]["total"] += delta
        pool["_stats"]["done"] += min(suite["_done"], suite["_overlap"]) - before
        self.pointer[pool["id"]] = 0
        self.store.touch("suite", suite["id"])
        self.store.touch("pool", pool["id"])
        if open_pool and pool["status"] == "CLOSED" and pool.get("last_close_reason") == "COMPLETED":
            self.emu.set_pool_status(pool, "OPEN")
        self.notify()

    def check_complete(self, pool: Doc) -> None:
        stats = pool["_stats"]
        if pool["_kind"] != "pool" or pool["status"] != "OPEN" or not stats["total"]:
            return
        if stats["done"] >= stats["total"] and stats["active"] == 0 and pool.get("_close_at") is None:
            at = self.now + float(pool.get("auto_close_after_complete_delay_seconds") or 0)
            pool["_close_at"] = at
            heapq.heappush(self.heap, (at, POOL_CHECK, pool["id"]))

    def _auto_close(self, pool_id: str, at: float) -> None:
        pool = self.store.data["pool"][pool_id]
        if pool.get("_close_at") != at:
            return
        pool["_close_at"] = None
        stats = pool["_stats"]
        if pool["status"] == "OPEN" and stats["done"] >= stats["total"] and stats["active"] == 0:
            self.emu.set_pool_status(pool, "CLOSED", "COMPLETED")
        self.store.touch("pool", pool_id)

    # ----------------------------------------------------------------------------- presentation
    def present(self, kind: str, doc: Doc) -> Doc:
        out = public(doc)
        if kind in ("suite", "task"):
            overlap = doc.get("_overlap")
            if overlap is None:
                out |= {"infinite_overlap": True}
            else:
                out |= {"overlap": overlap, "infinite_overlap": False}
                if kind == "suite":
                    out["remaining_overlap"] = max(0, overlap - doc["_taken"])
        return out

    def count_admitted(self, pool: Doc) -> int:
        return sum(
            1
            for w in self.by_index
            if w["arrival"] <= self.now and self.admits(w, pool) and not self.restricted(w, pool)
        )

    def worker_view(self, worker: Doc) -> dict[str, Any]:
        """Ground truth about one worker for `/_emulator/workers`."""
        rt = worker["_rt"]
        return {
            "id": worker["id"],
            "type": worker["type"],
            "profile": worker["profile"],
            "error_rate": worker["error_rate"],
            "arrived": worker["arrival"] <= self.now,
            "skills": self.skills.get(worker["id"], {}),
            "trainings": {tid: self.training_score(worker, tid) for tid in sorted(rt["trainings"])},
            "restrictions": rt["restrictions"],
            "busy": rt["assignment"] is not None,
        }
