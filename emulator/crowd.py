"""The simulated crowd: a labour market over simulated time, event-driven.

The market (`workers.Population`) holds thousands of workers as numpy arrays; none of them costs
anything until it shows up. Each worker alternates between online sessions (log-normal, about
`MEAN_SESSION` minutes) and being away (exponential: `MEAN_GAP` on average, but only
`MEAN_GAP_ENGAGED` after a session with paid work, as regulars who found work they can do come back
sooner). A visit ends when its time is up or after a batch of `SESSION_TASKS` paid assignments,
so no worker can take over a pool however fast the simulated clock runs past a slow requester
(results do not depend on the client's speed). When the emulator starts, the market is already
running: a steady-state share of the workers is online, the others arrive over the next hours.
There is no per-worker, per-tick loop: only online workers have events, in one heap keyed by
(simulated time, kind, key).

While online, a worker looks for work when its event comes due: trainings it needs, then open pools
whose filter admits it and that pay at least its reservation wage for its own time on a suite
(`workers.reservation_wage`), in (priority, appeal) order, the appeal being the log of the pool's reward
per task plus a per-worker Gumbel taste (better-paid pools fill sooner, as on a market), taking the
first suite in creation order (or, for pools with `issue_task_suites_in_creation_order: false`, from a
per-worker hashed place) that it has not answered and that has overlap left. It works for a
type-dependent time, submits, pauses and looks again, until its session is over; an assignment in
hand is always finished, except that a worker skips a suite now and then (its type's rate) and
one slower than the pool's `assignment_max_duration_seconds` runs out of time (EXPIRED): both
unpaid, the suite open to others.
A worker that finds nothing re-checks the task list every `RECHECK` minutes or so; when something
changes (a pool opens, suites are added, an overlap grows) up to `WAKE_CAP` idle online workers look
at once, and a worker whose skill changes looks at once. Restricted workers come back when the
restriction ends. Because new workers keep arriving and restricted ones return, restrictions and
overlap increases slow a pool down but never starve one that a large crowd would finish.

Pools close themselves `auto_close_after_complete_delay_seconds` after their last suite is complete
(`COMPLETED`) or when `will_expire` passes (`EXPIRED`); submitted assignments of pools without
auto-accept are accepted `auto_accept_period_day` days after submission unless the requester decided.

Determinism: events are processed in (time, kind, key) order and every random choice is hashed from
(seed, worker, suite, session, ...), so a run is a pure function of the seed, the start instant and
the simulated instants at which requests arrive. With `speed=0` (clock moved only by
`/_emulator/advance`) runs repeat exactly. Each worker's answer to a given suite never depends on time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Iterable
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from emulator import filters, qc
from emulator.records import OWNER, Doc, public, with_cost
from emulator.util import fmt_time, parse_time, sim_seconds, stable_int, unit
from emulator.workers import (
    SKIP_RATES,
    Population,
    answer_task,
    duration,
    expected_seconds,
    matches_gold,
    pause,
    reservation_wage,
)

if TYPE_CHECKING:
    from emulator.core import Emulator

log = logging.getLogger("emulator.crowd")
# Event kinds, in processing order at equal instants.
WORKER, ARRIVE, POOL_CHECK, AUTO_ACCEPT = 0, 1, 2, 3
MEAN_SESSION = 45 * 60.0  # seconds online per visit (log-normal around it)
MEAN_GAP = 6 * 3600.0  # seconds away after a visit without paid work (exponential)
MEAN_GAP_ENGAGED = 2 * 3600.0  # seconds away after a visit with paid work: regulars come back sooner
SESSION_TASKS = (3, 10)  # a visit ends after this many paid assignments at most (uniform, hashed)
RECHECK = 20 * 60.0  # an idle online worker looks at the task list again after about this long
WAKE_CAP = 24  # idle online workers who react at once to a change


class Crowd:
    def __init__(self, emu: Emulator, epoch: float) -> None:
        self.emu = emu
        self.store = emu.store
        self.seed = emu.settings.seed
        self.population = Population(self.seed, max(1, emu.settings.workers), emu.settings.crowd)
        self.now = float(self.store.meta("sim_now", epoch))
        self.heap: list[tuple[float, int, str]] = []
        self.idle: set[str] = set()
        self.pointer: dict[str, int] = {}
        self.skills: dict[str, dict[str, float]] = {}
        self.restrictions: dict[str, list[Doc]] = {}
        self.pool_in_hand: Doc | None = None  # the pool the current event is about (`_contain`)
        data = self.store.data
        # Money reserved for issued paid assignments not yet accepted or rejected (as Toloka blocks it).
        self.held = sum(
            with_cost(a["reward"])
            for a in data["assignment"].values()
            if a["status"] in ("ACTIVE", "SUBMITTED") and data["pool"][a["pool_id"]]["_kind"] == "pool"
        )
        for doc in data["user_restriction"].values():
            self.restriction_added(doc)
        for worker in data["worker"].values():
            rt = worker["_rt"]
            if rt["next_at"] is not None:
                self.heap.append((rt["next_at"], WORKER, worker["id"]))
            if rt["online_until"] is not None and rt["assignment"] is None:
                self.idle.add(worker["id"])
        arrived = {w["index"] for w in data["worker"].values()}
        self.heap.extend(
            (first, ARRIVE, str(i))
            for i, first in enumerate(self._first_arrivals(epoch).tolist())
            if i not in arrived
        )
        for doc in data["user_skill"].values():
            self.skills.setdefault(doc["user_id"], {})[doc["skill_id"]] = doc["exact_value"]
        for suite in data["suite"].values():
            self.learn(data["pool"][suite["pool_id"]], suite)
        for pool in data["pool"].values():
            for at in (pool.get("_close_at"), pool.get("_expire_at"), pool.get("_reopen_at")):
                if at is not None:
                    self.heap.append((at, POOL_CHECK, pool["id"]))
        for assignment in data["assignment"].values():
            if assignment["status"] == "SUBMITTED" and assignment.get("_accept_at") is not None:
                self.heap.append((assignment["_accept_at"], AUTO_ACCEPT, assignment["id"]))
        heapq.heapify(self.heap)

    def _first_arrivals(self, epoch: float) -> np.ndarray:
        """When each worker of the market first shows up: a steady-state share is online at `epoch`."""
        share_online = MEAN_SESSION / (MEAN_SESSION + MEAN_GAP)
        u = np.random.default_rng(stable_int("first-arrival", self.seed)).random(self.population.n)
        away = (u - share_online) / (1 - share_online)
        later = epoch + 120.0 - MEAN_GAP * np.log1p(-np.clip(away, 0.0, 1 - 1e-12))
        return np.round(np.where(u < share_online, epoch + 120.0 * u / share_online, later), 3)

    @property
    def by_index(self) -> list[Doc]:
        """The workers who have shown up so far, in market order."""
        return sorted(self.store.data["worker"].values(), key=lambda w: w["index"])

    # ------------------------------------------------------------------------------------ the loop
    def advance_to(self, target: float) -> None:
        """Process every event due up to `target` (simulated seconds)."""
        while self.heap and self.heap[0][0] <= target:
            at, kind, key = heapq.heappop(self.heap)
            self.now = max(self.now, at)
            self.pool_in_hand = None
            try:
                self._handle(at, kind, key)
            except Exception as exc:  # one broken pool must not stop the market
                self._contain(kind, key, exc)
        if target > self.now:
            self.now = target
        self.store.set_meta("sim_now", self.now)

    def _handle(self, at: float, kind: int, key: str) -> None:
        if kind == WORKER:
            worker = self.store.data["worker"][key]
            if worker["_rt"]["next_at"] == at:
                self._act(worker)
        elif kind == ARRIVE:
            self._arrive(int(key))
        elif kind == POOL_CHECK:
            self.pool_in_hand = self.store.data["pool"][key]
            self._pool_check(key, at)
        else:
            self._auto_accept(key, at)

    def _contain(self, kind: int, key: str, exc: Exception) -> None:
        """An event failed unexpectedly: log it, close the pool it was about, free its worker.

        Without this, the failing event stays due and every later request (each lets the crowd catch
        up first) would fail too. The pool is closed with `last_close_reason: BLOCKED` and its error
        is shown in `/_emulator/stats`; the rest of the market carries on.
        """
        pool = self.pool_in_hand
        log.error(
            "crowd: event %s/%s failed%s",
            kind,
            key,
            f" in pool {pool['id']}: the pool is closed" if pool else "",
            exc_info=exc,
        )
        if pool is not None:
            pool["_error"] = f"{type(exc).__name__}: {exc}"
            if pool["status"] == "OPEN":
                self.emu.set_pool_status(pool, "CLOSED", "BLOCKED")
            self.store.touch("pool", pool["id"])
        workers = self.store.data["worker"]
        worker = None
        if kind == WORKER:
            worker = workers.get(key)
        elif kind == ARRIVE:
            worker = workers.get(self.population.ids[int(key)])
        if worker is not None:
            self._drop_assignment(worker, "EXPIRED")
            self._leave(worker)

    def _drop_assignment(self, worker: Doc, status: str) -> None:
        """The worker gives back the assignment in hand (unpaid); its suite is open to others again."""
        rt = worker["_rt"]
        assignment = self.store.data["assignment"].get(rt["assignment"] or "")
        rt["assignment"] = None
        if assignment is None or assignment["status"] != "ACTIVE":
            return
        pool = self.store.data["pool"][assignment["pool_id"]]
        suite = self.store.data["suite"][assignment["task_suite_id"]]
        assignment["status"] = status
        assignment[status.lower()] = fmt_time(self.now)
        suite["_taken"] -= 1
        pool["_stats"]["active"] -= 1
        self.pointer[pool["id"]] = 0
        if pool["_kind"] == "pool":
            self.held = max(0.0, self.held - with_cost(assignment["reward"]))
        for kind, doc in (("assignment", assignment), ("suite", suite), ("pool", pool)):
            self.store.touch(kind, doc["id"])
        self.check_complete(pool)

    def push(self, at: float, kind: int, key: str) -> None:
        heapq.heappush(self.heap, (at, kind, key))

    def _schedule(self, worker: Doc, at: float | None) -> None:
        worker["_rt"]["next_at"] = at
        self.store.touch("worker", worker["id"])
        if at is not None:
            self.push(at, WORKER, worker["id"])

    def _arrive(self, index: int) -> None:
        """A worker of the market shows up for the first time: its state starts here."""
        wid = self.population.ids[index]
        if wid in self.store.data["worker"]:
            return
        worker = self.population.worker(index) | {
            "_rt": {
                "next_at": None,
                "assignment": None,
                "trainings": {},
                "pools": {},
                "online_until": None,
                "session": 0,
            }
        }
        self.store.put("worker", wid, worker)
        self._start_session(worker)

    def _start_session(self, worker: Doc) -> None:
        rt = worker["_rt"]
        u = min(max(unit("session-length", self.seed, worker["id"], rt["session"]), 1e-9), 1 - 1e-9)
        spread = math.exp(0.5 * NormalDist().inv_cdf(u))
        rt["online_until"] = self.now + MEAN_SESSION * spread / math.exp(0.125)
        # A visit is also a batch: workers leave after a handful of assignments, whatever they are.
        rt["batch"] = SESSION_TASKS[0] + stable_int(
            "session-tasks", self.seed, worker["id"], rt["session"]
        ) % (SESSION_TASKS[1] - SESSION_TASKS[0] + 1)
        self._look_for_work(worker)

    def _leave(self, worker: Doc) -> None:
        rt = worker["_rt"]
        rt["online_until"] = None
        rt["seen"] = self.now  # last active: `active_workers_by_filter_count` over an interval
        rt["session"] += 1
        self.idle.discard(worker["id"])
        mean = MEAN_GAP_ENGAGED if rt.pop("earned", False) else MEAN_GAP
        gap = -mean * math.log1p(-unit("session-gap", self.seed, worker["id"], rt["session"]))
        self._schedule(worker, self.now + max(60.0, gap))

    def wake(self, worker_id: str) -> None:
        """One worker looks at the task list soon (its skill or access changed)."""
        if worker_id in self.idle:
            worker = self.store.data["worker"][worker_id]
            self._schedule(worker, self.now + 5 + 55 * unit("wake-one", self.seed, worker_id, self.now))

    def notify(self) -> None:
        """Something changed: up to `WAKE_CAP` idle online workers come and look after a short delay."""
        if not self.idle:
            return
        generation = int(self.store.meta("generation", 0)) + 1
        self.store.set_meta("generation", generation)
        workers = self.store.data["worker"]
        soon = self.now + 60
        # Workers who look within the minute anyway need no nudge; the others in a hashed order.
        waiting = [wid for wid in self.idle if (workers[wid]["_rt"]["next_at"] or soon + 1) > soon]
        waiting.sort(key=lambda wid: stable_int("wake-order", self.seed, wid, generation))
        for wid in waiting[:WAKE_CAP]:
            self._schedule(workers[wid], self.now + 5 + 55 * unit("wake", self.seed, wid, generation))

    def _act(self, worker: Doc) -> None:
        rt = worker["_rt"]
        if rt["assignment"]:
            assignment = self.store.data["assignment"][rt["assignment"]]
            if assignment.get("_outcome"):
                self._give_up(worker, assignment)
            else:
                self._submit(worker, assignment)
                rt["assignment"] = None  # only now: should the submit fail, `_contain` still finds it
                if self.store.data["pool"][assignment["pool_id"]]["_kind"] == "pool":
                    rt["batch"] = rt.get("batch", 1) - 1  # trainings are not part of the batch
            if rt["online_until"] is not None and self.now < rt["online_until"] and rt["batch"] > 0:
                self._schedule(worker, self.now + pause(self.seed, worker, assignment["id"]))
            else:
                self._leave(worker)
            return
        if rt["online_until"] is None:
            self._start_session(worker)
        elif self.now >= rt["online_until"]:
            self._leave(worker)
        else:
            self._look_for_work(worker)

    def _look_for_work(self, worker: Doc) -> None:
        rt = worker["_rt"]
        choice = self._choose(worker)
        if choice is None:
            # Idle: looks again later, at once when woken, or when one of its restrictions runs out.
            recheck = RECHECK * (0.5 + unit("recheck", self.seed, worker["id"], self.now))
            ends = [
                r["_until"]
                for r in self.restrictions.get(worker["id"], ())
                if r["_until"] is not None and r["_until"] > self.now
            ]
            self.idle.add(worker["id"])
            self._schedule(worker, min([self.now + recheck, rt["online_until"], *ends]))
            return
        self.idle.discard(worker["id"])
        pool, suite = choice
        assignment = self._start(worker, pool, suite)
        spent = duration(self.seed, worker, suite["id"], _n_images(suite["tasks"]))
        assignment["_duration"] = round(spent, 3)
        outcome, ends = self._outcome(worker, pool, suite["id"], spent)
        if outcome is not None:
            assignment["_outcome"] = outcome
        self._schedule(worker, self.now + ends)

    def _outcome(self, worker: Doc, pool: Doc, suite_id: str, spent: float) -> tuple[str | None, float]:
        """How an assignment ends other than by a submit, and after how long (simulated seconds).

        A worker skips a suite with its type's skip rate (after a short look), and one who needs longer
        than the pool's `assignment_max_duration_seconds` runs out of time: EXPIRED at the limit.
        Trainings are always finished (a worker who skipped one could never complete it).
        """
        if pool["_kind"] != "pool":
            return None, spent
        if unit("skip", self.seed, worker["id"], suite_id) < SKIP_RATES[worker["type"]]:
            return "SKIPPED", min(spent, 5.0 + 25.0 * unit("skip-after", self.seed, worker["id"], suite_id))
        limit = pool.get("assignment_max_duration_seconds")
        if isinstance(limit, int | float) and spent > limit:
            return "EXPIRED", float(limit)
        return None, spent

    def _give_up(self, worker: Doc, assignment: Doc) -> None:
        """The assignment ends SKIPPED or EXPIRED: unpaid, its suite open to others, never to this
        worker again; skips feed the pool's SKIPPED_IN_ROW_ASSIGNMENTS rules."""
        outcome = assignment.pop("_outcome")
        self._drop_assignment(worker, outcome)
        if outcome == "SKIPPED":
            pool = self.store.data["pool"][assignment["pool_id"]]
            self.pool_in_hand = pool
            qc.on_skip(self.emu, worker, pool)

    # ---------------------------------------------------------------------------------- choosing
    def _choose(self, worker: Doc) -> tuple[Doc, Doc] | None:
        pools = [
            p for p in self.store.data["pool"].values() if p["status"] == "OPEN" and p["_kind"] == "pool"
        ]
        pools.sort(key=lambda p: (-(p.get("priority") or 0), -self._appeal(worker, p)))
        for pool in pools:
            self.pool_in_hand = pool
            if self.banned(worker["id"], pool) or not self.admits(worker, pool):
                continue
            if not self.pays_enough(worker, pool):
                continue  # too little for this worker's time: it passes the pool (and its training) by
            if self.emu.balance() - self.held < self.emu.assignment_cost(pool):
                self.emu.set_pool_status(pool, "CLOSED", "NOT_ENOUGH_BALANCE")
                continue
            requirement = (pool.get("quality_control") or {}).get("training_requirement") or {}
            training_id = requirement.get("training_pool_id")
            if training_id:
                training = self.store.get("pool", str(training_id))
                self._retry_training(worker, str(training_id))
                score = self.training_score(worker, str(training_id))
                if score is None:
                    self.pool_in_hand = training
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
            self.pool_in_hand = pool
            suite = self._next_suite(pool, worker)
            if suite is not None:
                return pool, suite
        self.pool_in_hand = None
        return None

    def _appeal(self, worker: Doc, pool: Doc) -> float:
        """How much a worker wants a pool, among pools of one priority: a random-utility choice.

        The log of the pay per task (better-paid work is picked first more often: of two pools, the
        one paying twice as much per task comes first for two workers in three) plus a per-(worker,
        pool) Gumbel taste, so that workers still spread over pools; equally paid pools keep the
        hashed order they always had.
        """
        u = min(max(unit("prefers", self.seed, worker["id"], pool["id"]), 1e-12), 1 - 1e-12)
        taste = -math.log(-math.log1p(-u))  # Gumbel, decreasing in u (u ascending was the old order)
        return math.log(max(self.pay_per_task(pool), 1e-9)) + taste

    def _next_tasks(self, pool: Doc) -> list[Doc]:
        """The tasks of the pool's next suite with work left, which stands for all its suites."""
        ids = self.store.ids_in_pool("suite", pool["id"])
        at = min(self.pointer.get(pool["id"], 0), len(ids) - 1)
        return self.store.data["suite"][ids[at]]["tasks"] if ids else []

    def pay_per_task(self, pool: Doc) -> float:
        """A pool's reward per task of its suites (the next suite with work left stands for all)."""
        return float(pool.get("reward_per_assignment") or 0.0) / max(len(self._next_tasks(pool)), 1)

    def pays_enough(self, worker: Doc, pool: Doc) -> bool:
        """Does the pool pay at least the worker's reservation wage for the worker's own time on a suite?

        Without it a pool paying Toloka's least reward filled exactly as fast, from the same workers,
        as one paying forty times as much; on Toloka underpaid work waits, and is left to the fastest.
        """
        hours = expected_seconds(worker, _n_images(self._next_tasks(pool))) / 3600.0
        reward = float(pool.get("reward_per_assignment") or 0.0)
        return reward >= reservation_wage(self.seed, worker) * hours

    def admits(self, worker: Doc, pool: Doc) -> bool:
        known = self.store.data["skill"]  # skill ids this emulator created (membership only)
        return filters.admits(pool.get("filter"), worker["profile"], self.skills.get(worker["id"], {}), known)

    def banned(self, worker_id: str, pool: Doc) -> bool:
        """Does a live user restriction (from QC rules or the requester) keep the worker out of `pool`:
        one on it, its project or all projects (what the export's `excludeBanned` leaves out, too)?"""
        for r in self.restrictions.get(worker_id, ()):
            if r["_until"] is not None and r["_until"] <= self.now:
                continue
            if (
                r["scope"] in ("ALL_PROJECTS", "SYSTEM")
                or (r["scope"] == "PROJECT" and r.get("project_id") == pool["project_id"])
                or (r["scope"] == "POOL" and r.get("pool_id") == pool["id"])
            ):
                return True
        return False

    def restriction_added(self, doc: Doc) -> None:
        self.restrictions.setdefault(doc["user_id"], []).append(doc)

    def restriction_removed(self, doc: Doc) -> None:
        mine = self.restrictions.get(doc["user_id"], [])
        if doc in mine:
            mine.remove(doc)
        self.wake(doc["user_id"])

    def training_expired(self, training_id: str, progress: Doc | None) -> bool:
        """Has the worker's training skill run out? With `retry_training_after_days` set, Toloka deletes
        it that many days after the training was finished unless the worker completed tasks in a pool
        linked to the training since: the worker may (and, for the linked pools, must) take the
        training again. Without it the skill never runs out."""
        training = self.store.data["pool"].get(training_id) or {}
        days = training.get("retry_training_after_days")
        if not progress or progress.get("finished") is None or not isinstance(days, int | float) or days <= 0:
            return False
        since = max(progress["finished"], progress.get("active", -math.inf))
        return self.now >= since + 86400.0 * float(days)

    def _retry_training(self, worker: Doc, training_id: str) -> None:
        """A worker whose training skill ran out starts the training afresh (its next attempt)."""
        progress = worker["_rt"]["trainings"].get(training_id)
        if progress is None or not self.training_expired(training_id, progress):
            return
        worker["_rt"]["trainings"][training_id] = {
            "done": 0,
            "correct": 0,
            "tasks": 0,
            "attempt": progress.get("attempt", 0) + 1,
            "suites": [],
        }
        self.store.touch("worker", worker["id"])

    def _suites_to_pass(self, training_id: str) -> int:
        """The suites a worker does to finish a training: `task_suites_required_to_pass`, or all."""
        total = len(self.store.ids_in_pool("suite", training_id))
        training = self.store.data["pool"].get(training_id) or {}
        required = training.get("task_suites_required_to_pass")
        if isinstance(required, int) and not isinstance(required, bool) and required > 0:
            total = min(total, required)
        return total

    def training_score(self, worker: Doc, training_id: str) -> float | None:
        """The worker's training score (percent of training tasks right), or None until the worker
        has done the training's `task_suites_required_to_pass` suites (default: all of them), and
        again once it runs out (`training_expired`)."""
        progress = worker["_rt"]["trainings"].get(training_id)
        if self.training_expired(training_id, progress):
            return None
        total = self._suites_to_pass(training_id)
        if not progress or progress["done"] < total or total == 0:
            return None
        # The share of training tasks answered right (states saved before counted suites, one task each).
        return 100.0 * progress["correct"] / progress.get("tasks", progress["done"])

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
        # A training is taken once per attempt (`_retry_training`): the suites of this attempt.
        attempt = worker["_rt"]["trainings"].get(pool["id"]) if pool["_kind"] == "training" else None
        for index in order:
            suite = suites[ids[index]]
            if self.remaining(suite) <= 0:
                continue
            if attempt is not None and "suites" in attempt:
                if suite["id"] not in attempt["suites"]:
                    return suite
            elif worker["id"] not in suite["_workers"]:
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
            "id": self.emu.long_id(),
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
        if not training:
            self.held += with_cost(assignment["reward"])  # reserved until accepted or rejected
            worker["_rt"]["earned"] = True
        suite["_workers"].append(worker["id"])
        if training:
            progress = worker["_rt"]["trainings"].setdefault(
                pool["id"], {"done": 0, "correct": 0, "tasks": 0, "suites": []}
            )
            if "suites" in progress:  # (a state saved before attempts were kept has none)
                progress["suites"].append(suite["id"])
        suite.setdefault("_assignments", []).append(assignment["id"])
        worker["_rt"]["pools"].setdefault(pool["id"], []).append(assignment["id"])
        self.store.touch("suite", suite["id"])
        pool["_stats"]["active"] += 1
        self.store.touch("pool", pool["id"])
        worker["_rt"]["assignment"] = assignment["id"]
        return assignment

    def _submit(self, worker: Doc, assignment: Doc) -> None:
        pool = self.store.data["pool"][assignment["pool_id"]]
        self.pool_in_hand = pool
        suite = self.store.data["suite"][assignment["task_suite_id"]]
        project = self.store.get("project", str(pool["project_id"])) or {}
        output_spec = (project.get("task_spec") or {}).get("output_spec") or {}
        training = pool["_kind"] == "training"
        # A worker taking a training again (`_retry_training`) answers it afresh: a first attempt's
        # answers are what they always were.
        attempt = (worker["_rt"]["trainings"].get(pool["id"]) or {}).get("attempt", 0) if training else 0
        retry = f"/attempt-{attempt}" if attempt else ""
        outputs = [
            answer_task(
                self.seed,
                worker,
                self.emu.catalogue,
                task,
                output_spec,
                f"{suite['id']}/{i}{retry}",
                training,
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
            progress = worker["_rt"]["trainings"].setdefault(
                pool["id"], {"done": 0, "correct": 0, "tasks": 0}
            )
            progress["done"] += 1
            if progress["done"] >= self._suites_to_pass(pool["id"]):
                progress["finished"] = self.now  # the skill's retry period counts from here
            progress["tasks"] = progress.get("tasks", progress["done"] - 1) + len(outputs)
            progress["correct"] += sum(
                matches_gold(o, t) for o, t in zip(outputs, suite["tasks"], strict=True)
            )
            self._finish(assignment, "ACCEPTED", None, charge=False)
        elif pool.get("auto_accept_solutions"):
            self._finish(assignment, "ACCEPTED", None, charge=True)
        elif pool.get("auto_accept_period_day"):
            # Work nobody reviews is accepted (and paid) when the pool's review period ends.
            at = self.now + 86400.0 * float(pool["auto_accept_period_day"])
            assignment["_accept_at"] = at
            self.push(at, AUTO_ACCEPT, assignment["id"])
        self.store.touch("suite", suite["id"])
        self.store.touch("pool", pool["id"])
        self.store.touch("worker", worker["id"])
        if not training:
            self._keep_training(worker, pool)
            qc.on_submit(self.emu, worker, pool, assignment)
        self.check_complete(pool)

    def _keep_training(self, worker: Doc, pool: Doc) -> None:
        """Work in a pool linked to a training keeps the worker's training skill: its retry period
        (`training_expired`) counts from the worker's last submit there."""
        requirement = (pool.get("quality_control") or {}).get("training_requirement") or {}
        progress = worker["_rt"]["trainings"].get(str(requirement.get("training_pool_id")))
        if progress is not None and progress.get("finished") is not None:
            progress["active"] = self.now

    def _finish(
        self, assignment: Doc, status: str, comment: str | None, charge: bool, held: bool = True
    ) -> None:
        if charge and held:
            self.held = max(0.0, self.held - with_cost(assignment["reward"]))
        assignment["status"] = status
        assignment["accepted" if status == "ACCEPTED" else "rejected"] = fmt_time(self.now)
        if comment is not None:
            assignment["public_comment"] = comment
        assignment.pop("_accept_at", None)
        if charge and status == "ACCEPTED":
            # The price is fixed here, from the reward the assignment was issued at: later pool
            # updates never change what was paid (`spent_budget` sums these).
            assignment["_cost"] = with_cost(assignment["reward"])
            self.emu.charge(assignment["_cost"])
        self.store.touch("assignment", assignment["id"])

    def _auto_accept(self, assignment_id: str, at: float) -> None:
        assignment = self.store.data["assignment"].get(assignment_id)
        self.pool_in_hand = None if assignment is None else self.store.data["pool"][assignment["pool_id"]]
        if (
            assignment is not None
            and assignment["status"] == "SUBMITTED"
            and assignment.get("_accept_at") == at
        ):
            self.assess(assignment, "ACCEPTED", None)

    def accept_after_reject(self, assignment: Doc, comment: str | None) -> None:
        """The requester turns a rejection into an acceptance: charged now (nothing is held for a
        rejected assignment), and ASSIGNMENTS_ASSESSMENT rules see `ACCEPT_AFTER_REJECT`."""
        self._finish(assignment, "ACCEPTED", comment, charge=True, held=False)
        pool = self.store.data["pool"][assignment["pool_id"]]
        qc.on_assessment(self.emu, pool, assignment, "ACCEPT_AFTER_REJECT")

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
        self.check_complete(pool)  # a completed pool given a new suite is no longer complete
        if pool["status"] == "OPEN":
            self.notify()

    def change_overlap(self, suite: Doc, delta: int, open_pool: bool) -> None:
        """CHANGE_OVERLAP: the suite needs `delta` more answers; optionally reopen a completed pool."""
        if suite["_overlap"] is None or delta == 0:
            return
        self.set_overlap(suite, max(0, suite["_overlap"] + delta))
        pool = self.store.data["pool"][suite["pool_id"]]
        if open_pool and pool["status"] == "CLOSED" and pool.get("last_close_reason") == "COMPLETED":
            self.emu.set_pool_status(pool, "OPEN")

    def set_overlap(self, suite: Doc, overlap: int | None) -> None:
        """A suite's overlap changes (QC rule or PATCH); `None` is infinite overlap."""
        pool = self.store.data["pool"][suite["pool_id"]]
        stats = pool["_stats"]
        if suite["_overlap"] is not None:
            stats["total"] -= suite["_overlap"]
            stats["done"] -= min(suite["_done"], suite["_overlap"])
        suite["_overlap"] = overlap
        if overlap is not None:
            stats["total"] += overlap
            stats["done"] += min(suite["_done"], overlap)
        self.pointer[pool["id"]] = 0
        self.store.touch("suite", suite["id"])
        self.store.touch("pool", pool["id"])
        self.check_complete(pool)
        if self.remaining(suite) > 0 and pool["status"] == "OPEN":
            self.notify()

    def check_complete(self, pool: Doc) -> None:
        """A complete open pool closes its auto-close delay after it completed; given more to answer
        meanwhile, it is no longer complete and its delay counts again from its next completion."""
        stats = pool["_stats"]
        if pool["_kind"] != "pool" or pool["status"] != "OPEN" or not stats["total"]:
            return
        complete = stats["done"] >= stats["total"] and stats["active"] == 0
        if not complete and pool.get("_close_at") is not None:
            pool["_close_at"] = None  # its event, still in the heap, no longer matches: ignored
            self.store.touch("pool", pool["id"])
        if complete and pool.get("_close_at") is None:
            at = self.now + float(pool.get("auto_close_after_complete_delay_seconds") or 0)
            pool["_close_at"] = at
            self.push(at, POOL_CHECK, pool["id"])

    def pool_opened(self, pool: Doc) -> None:
        """Schedule the pool's expiry (`will_expire`) and let idle workers see it."""
        expire = pool.get("will_expire")
        pool["_expire_at"] = None
        if isinstance(expire, str):
            try:
                pool["_expire_at"] = max(self.now, sim_seconds(parse_time(expire)))
            except ValueError:
                pool["_expire_at"] = None
        if pool["_expire_at"] is not None:
            self.push(pool["_expire_at"], POOL_CHECK, pool["id"])
        self.notify()

    def reopen_later(self, pool: Doc, at: float) -> None:
        """A pool closed for update opens again at `at` if it is still closed for update then."""
        pool["_reopen_at"] = at
        self.store.touch("pool", pool["id"])
        self.push(at, POOL_CHECK, pool["id"])

    def _pool_check(self, pool_id: str, at: float) -> None:
        """A pool's auto-close delay or its expiry came due."""
        pool = self.store.data["pool"][pool_id]
        if pool["status"] == "OPEN" and pool.get("_expire_at") == at:
            pool["_expire_at"] = None
            self.emu.set_pool_status(pool, "CLOSED", "EXPIRED")
        if pool.get("_reopen_at") == at:
            pool["_reopen_at"] = None
            self.store.touch("pool", pool_id)
            if pool["status"] == "CLOSED" and pool.get("last_close_reason") == "FOR_UPDATE":
                self.emu.reopen_after_update(pool)
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

    def count_admitted(self, pool: Doc, hours: float | None = None) -> int:
        """Workers the pool's filter admits and no restriction keeps out who are online, or (with
        `hours`) were active in the last `hours` hours: online now or left a visit since."""
        since = -math.inf if hours is None else self.now - 3600.0 * hours
        active = [
            w
            for w in self.store.data["worker"].values()
            if w["_rt"]["online_until"] is not None
            or (hours is not None and w["_rt"].get("seen", -math.inf) >= since)
        ]
        return sum(1 for w in active if self.admits(w, pool) and not self.banned(w["id"], pool))

    def worker_view(self, worker: Doc) -> dict[str, Any]:
        """Ground truth about one worker for `/_emulator/workers`."""
        rt = worker["_rt"]
        return {
            "id": worker["id"],
            "type": worker["type"],
            "profile": worker["profile"],
            "error_rate": worker["error_rate"],
            "reservation_wage": round(reservation_wage(self.seed, worker), 4),
            "online": rt["online_until"] is not None,
            "sessions": rt["session"] + (rt["online_until"] is not None),
            "skills": self.skills.get(worker["id"], {}),
            "trainings": {tid: self.training_score(worker, tid) for tid in sorted(rt["trainings"])},
            "restrictions": [public(r) for r in self.restrictions.get(worker["id"], ())],
            "busy": rt["assignment"] is not None,
        }


def _n_images(tasks: list[Doc]) -> int:
    """The images a worker looks at in a suite of these tasks (a task without images counts as one)."""
    return sum(len((t.get("input_values") or {}).get("images") or [1]) for t in tasks)
