"""The requester side of the emulator: every Toloka object and operation the API exposes.

`Emulator` owns the store, the clock, the catalogue and the crowd. Each API call runs under the store
lock, first lets the crowd catch up to the current simulated instant (so a request always sees the
crowd as of "now"), then acts, then flushes state to SQLite. Routes (`app.py`) only translate HTTP.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from emulator import aggregate, qc
from emulator.catalogues import Catalogue
from emulator.clock import SimClock
from emulator.crowd import Crowd
from emulator.errors import ApiError, conflict, field_errors, not_found, validation
from emulator.filters import skill_keys
from emulator.mixer import mix_pending
from emulator.objects import analytics_value, create_items, item_index
from emulator.records import OWNER, READ_ONLY, Doc, public, strip_read_only, with_cost
from emulator.search import check_params, id_key, search
from emulator.settings import EmulatorSettings
from emulator.store import Store
from emulator.tsv import export
from emulator.util import digest, fmt_time, long_id, parse_time, sim_seconds
from emulator.validate import (
    filter_errors,
    is_number,
    known_solutions_errors,
    pool_settings_errors,
    quality_control_errors,
    spec_errors,
)

log = logging.getLogger("emulator")
T = TypeVar("T")

MAX_OPERATIONS = 20_000  # finished operations kept (oldest dropped first), so memory stays bounded
LONG_KINDS = ("task", "suite", "assignment", "user_bonus")
SKILL_RANGE = (0.0, 100.0)
BONUS_RANGE = (0.01, 100.0)
# A pool closed for update opens again by itself after 15 minutes (toloka-kit: close_pool_for_update).
REOPEN_AFTER_UPDATE = 15 * 60.0
MAX_TOP_UP = 1_000_000.0  # one top-up at most (a typo of a few zeros is refused)
CLONE_SKIPS = READ_ONLY | {"last_started", "last_stopped", "last_close_reason"}
# What a search of tasks, task suites or assignments must name (Toloka: "You must specify either
# task_id, pool_id, or task_suite_id"); a search without any is a 400.
SEARCH_SCOPES = {
    "task": ("pool_id",),
    "suite": ("pool_id", "task_id"),
    "assignment": ("pool_id", "task_id", "task_suite_id"),
}
# Search fields a stored document keeps under another name: a task's or suite's overlap (None, so
# matching no `overlap` filter, when infinite).
COMPUTED_FIELDS: dict[str, dict[str, Callable[[Doc], Any]]] = {
    kind: {"overlap": lambda d: d.get("_overlap")} for kind in ("task", "suite")
}


class Emulator:
    """State and behaviour of one emulated Toloka account with its simulated crowd."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.store = Store(settings.db)
        self.catalogue = Catalogue(settings.catalogue, size=settings.catalogue_size, seed=settings.seed)
        if self.store.meta("requester") is None:
            self.store.set_meta("requester", self._new_requester(settings, saved=self.store.meta("epoch")))
        if self.store.meta("epoch") is None:
            start = settings.start if settings.start is not None else float(int(time.time()))
            self.store.set_meta("epoch", float(start))
        epoch = float(self.store.meta("epoch"))
        self.clock = SimClock(settings.speed, start=float(self.store.meta("sim_now", epoch)))
        if self.store.meta("balance") is None:
            self.store.set_meta("balance", float(settings.balance))
        self.crowd = Crowd(self, epoch)
        self.store.flush()

    @staticmethod
    def _new_requester(settings: EmulatorSettings, saved: Any) -> str:
        """The requester id of a state that has none: see `requester`.

        A state saved before states had accounts (`saved`: it has a clock) keeps the id it always
        had, derived from the token, so the cached stages of its runs still apply.
        """
        if saved is not None and settings.account is None:
            return digest("requester", settings.token)[:12].hex()
        return digest("requester", settings.account or secrets.token_hex(8))[:12].hex()

    # ------------------------------------------------------------------------------------ plumbing
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one API action atomically at the current simulated instant."""
        with self.store.lock:
            self.crowd.advance_to(self.clock.now())
            try:
                return fn(*args, **kwargs)
            finally:
                self.store.flush()

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Like `call` for an action that changes nothing, without the SQLite transaction.

        The crowd's own progress up to now is written by the next heartbeat (`tick`, every 50 ms), so a
        polled `get_pool` with `--db` costs no disk write; what a requester changed is always written
        before its answer (`call`).
        """
        with self.store.lock:
            self.crowd.advance_to(self.clock.now())
            return fn(*args)

    def tick(self) -> None:
        """Background heartbeat: let the crowd work up to now."""
        with self.store.lock:
            self.crowd.advance_to(self.clock.now())
            self.store.flush()

    def advance(self, seconds: float) -> float:
        """Move the simulated clock forward (validated by the clock) and let the crowd catch up."""
        with self.store.lock:
            try:
                self.clock.advance(seconds)
            except ValueError as exc:
                raise validation({"seconds": ("INVALID_VALUE", str(exc))}) from None
        self.tick()
        return self.now

    @property
    def now(self) -> float:
        return self.crowd.now

    def stamp(self) -> str:
        return fmt_time(self.now)

    def _numeric_id(self) -> str:
        # Projects, pools, trainings and skills share one counter, so pools and trainings share ids.
        return str(self.store.next_seq("entity"))

    def long_id(self) -> str:
        return long_id(self.store.next_seq("long"), self.settings.seed)

    def balance(self) -> float:
        return float(self.store.meta("balance", 0.0))

    def charge(self, amount: float) -> None:
        self.store.set_meta("balance", round(self.balance() - amount, 6))

    def top_up(self, amount: float) -> float:
        """Add money to the account, as a requester does in Toloka's web interface; the new balance.

        A pool Toloka closed for lack of balance stays closed: the requester (the run) opens it again.
        """
        if not (math.isfinite(amount) and 0 < amount <= MAX_TOP_UP):
            problem = f"amount must be above 0 and at most {MAX_TOP_UP:,.0f}"
            raise validation({"amount": ("INVALID_VALUE", problem)})
        with self.store.lock:
            self.store.set_meta("balance", round(self.balance() + amount, 6))
            self.store.flush()
            return round(self.balance(), 4)

    # ---------------------------------------------------------------------------------- requester
    def requester(self) -> Doc:
        """The account behind the token: one per state, as on Toloka one per requester.

        Object ids count from 1 in every fresh state, so two in-memory emulators hand out the same
        ids for different objects, which on Toloka never happens: an id there names one object of
        one account for good. A client that caches results by object id (crowdclust keys every
        cached Toloka stage by the requester's id) must therefore see a new account in a new state,
        or a run on a restarted emulator would be given another instance's pool results for its own
        pool of the same id. The account is drawn when the state is created (or named by
        `EmulatorSettings.account`) and kept with `--db`.
        """
        return {
            "id": str(self.store.meta("requester")),
            "balance": round(self.balance(), 4),
            "public_name": {"EN": "crowdclust emulator requester"},
            "company": {"id": "1", "superintendent_id": "crowdclust-requester"},
        }

    # ----------------------------------------------------------------------------------- projects
    def create_project(self, body: Any) -> Doc:
        body = _object(body)
        self._check_project(body)
        doc = strip_read_only(body) | {
            "id": self._numeric_id(),
            "created": self.stamp(),
            "status": "ACTIVE",
            "owner": OWNER,
        }
        return public(self.store.put("project", doc["id"], doc))

    @staticmethod
    def _check_project(body: Doc) -> None:
        """A project needs a name and a task spec whose every field has a known type: the crowd
        answers from the output spec, so a malformed one would fail only later, inside the crowd."""
        spec = body.get("task_spec")
        spec = spec if isinstance(spec, dict) else {}
        errors = spec_errors(spec.get("input_spec"), "task_spec.input_spec")
        errors |= spec_errors(spec.get("output_spec"), "task_spec.output_spec")
        if not body.get("public_name"):
            errors["public_name"] = ("VALUE_REQUIRED", "public_name is required")
        if errors:
            raise validation(errors)

    def get(self, kind: str, key: str, label: str | None = None) -> Doc:
        doc = self.store.get(kind, str(key))
        if doc is None or (label and doc.get("_kind", label) != label):
            raise not_found((label or kind).replace("_", " "), key)
        return doc

    def archive_project(self, key: str) -> tuple[int, Doc | None]:
        project = self.get("project", key)
        if project["status"] == "ARCHIVED":
            return 204, None
        if any(
            p["project_id"] == key and p["status"] != "ARCHIVED" for p in self.store.data["pool"].values()
        ):
            raise conflict(
                "UNARCHIVED_POOLS_CONFLICT", "project has pools or trainings that are not archived"
            )
        project["status"] = "ARCHIVED"
        self.store.touch("project", key)
        return 202, self.operation("PROJECT.ARCHIVE", {"project_id": key})

    # -------------------------------------------------------------------------- pools and trainings
    def create_pool(self, body: Any, kind: str) -> Doc:
        """Create a pool (`kind="pool"`) or a training (`kind="training"`); they share one id space."""
        body = _object(body)
        self._check_pool(body, kind)
        doc = strip_read_only(body) | {
            "id": self._numeric_id(),
            "project_id": str(body["project_id"]),
            "created": self.stamp(),
        }
        return public(self._new_pool(doc, kind))

    def _new_pool(self, doc: Doc, kind: str) -> Doc:
        doc["status"] = "CLOSED"
        if kind == "pool":
            doc["type"] = "REGULAR"
        doc["_kind"] = kind
        doc["_stats"] = {"total": 0, "done": 0, "active": 0}
        _pool_defaults(doc)
        if "will_expire" in doc and doc["will_expire"] is None:
            del doc["will_expire"]
        return self.store.put("pool", doc["id"], doc)

    def _check_pool(self, body: Doc, kind: str) -> None:
        """Field checks of a pool or training config, as Toloka answers them (400 with field paths).

        A filter on a skill this account does not have is refused: Toloka validates skill ids in
        filters against the requester's skills, so a config copied from another account (like the
        seed's hard-coded intruder skill) fails here instead of silently admitting everybody.
        """
        errors = {}
        project_id = str(body.get("project_id") or "")
        if not project_id:
            errors["project_id"] = ("VALUE_REQUIRED", "project_id is required")
        elif (project := self.store.get("project", project_id)) is None:
            errors["project_id"] = ("DOES_NOT_EXIST", f"project {project_id} does not exist")
        elif project["status"] == "ARCHIVED":
            raise conflict("PROJECT_INAPPROPRIATE_STATUS", f"project {project_id} is archived")
        if not body.get("private_name"):
            errors["private_name"] = ("VALUE_REQUIRED", "private_name is required")
        if kind == "pool":
            errors |= _pool_required(body)
        errors |= pool_settings_errors(body, kind)
        shape = filter_errors(body.get("filter")) | quality_control_errors(body.get("quality_control"))
        errors |= shape
        if not shape:
            for path, key in skill_keys(body.get("filter"), "filter"):
                if self.store.get("skill", key) is None:
                    errors[f"{path}.key"] = ("DOES_NOT_EXIST", f"skill {key} does not exist")
        expire = body.get("will_expire")
        if expire is not None:
            try:
                when = sim_seconds(parse_time(str(expire)))
            except ValueError:
                errors["will_expire"] = ("INVALID_FORMAT", "will_expire must be a date and time")
            else:
                if when <= self.now:
                    errors["will_expire"] = ("VALUE_LESS_THAN_MIN", "will_expire must be in the future")
        if errors:
            raise validation(errors)

    def get_pool(self, key: str, kind: str) -> Doc:
        return public(self.get("pool", key, kind))

    def update(self, kind: str, key: str, body: Any, label: str | None = None) -> Doc:
        """PUT a project, pool, training or skill: replace the editable fields, keep id and runtime."""
        doc = self.get(kind, key, label)
        body = _object(body)
        if kind == "pool":
            if doc["status"] == "ARCHIVED":
                raise conflict("POOL_INAPPROPRIATE_STATUS", f"{doc['_kind']} {key} is archived")
            if doc["status"] == "OPEN" and doc["_kind"] == "pool":
                # Toloka: "The pool can't be edited if it's open" (close_pool_for_update first).
                raise conflict(
                    "POOL_INAPPROPRIATE_STATUS",
                    f"pool {key} is open: close it (close_pool_for_update) before editing it",
                )
            if body.get("project_id") is not None and str(body["project_id"]) != doc["project_id"]:
                raise validation({"project_id": ("INVALID_VALUE", "a pool cannot move to another project")})
            self._check_pool(body | {"project_id": doc["project_id"]}, doc["_kind"])
        elif kind == "project":
            if doc["status"] == "ARCHIVED":
                raise conflict("PROJECT_INAPPROPRIATE_STATUS", f"project {key} is archived")
            self._check_project(body)
        runtime = {k: v for k, v in doc.items() if k.startswith("_") or k in READ_ONLY or k == "project_id"}
        doc.clear()
        doc.update(strip_read_only(body) | runtime)
        if kind == "pool":
            _pool_defaults(doc)
        self.store.touch(kind, key)
        if kind == "pool" and doc["status"] == "OPEN":
            self.crowd.pool_opened(doc)  # an open training: its new settings apply at once
        return public(doc)

    def patch_pool(self, key: str, body: Any) -> Doc:
        """PATCH /pools/{id}: only the priority can be patched (PoolPatchRequest)."""
        pool = self.get("pool", key, "pool")
        if pool["status"] == "ARCHIVED":
            raise conflict("POOL_INAPPROPRIATE_STATUS", f"pool {key} is archived")
        body = _object(body)
        priority = body.get("priority")
        errors = pool_settings_errors({"priority": priority}, "pool")  # the range a PUT checks too
        if priority is None:
            errors["priority"] = ("VALUE_REQUIRED", "priority is required")
        if errors:
            raise validation(errors)
        pool["priority"] = priority
        self.store.touch("pool", key)
        if pool["status"] == "OPEN":
            self.crowd.notify()
        return public(pool)

    def open_pool(self, key: str, kind: str) -> tuple[int, Doc | None]:
        pool = self.get("pool", key, kind)
        if pool["status"] == "OPEN":
            return 204, None
        if pool["status"] == "ARCHIVED":
            raise conflict("POOL_INAPPROPRIATE_STATUS", f"{kind} {key} is archived")
        mix_pending(self, pool)  # tasks waiting for the mixer become suites now
        if not self.store.ids_in_pool("suite", key):
            raise conflict("EMPTY_POOL", "Pool contains no tasks. Operation is not allowed")
        if self._expired(pool):
            raise conflict(
                "CONFLICT_STATE", f"{kind} {key} expired at {pool['will_expire']}: move will_expire first"
            )
        # What the account can pay with: its balance less the money held for work issued and not yet
        # accepted or rejected, as the crowd counts it (Toloka reserves it for answers under review).
        if kind == "pool" and self.balance() - self.crowd.held < self.assignment_cost(pool):
            raise conflict("NOT_ENOUGH_BALANCE", "Not enough money on the balance to open the pool")
        self.set_pool_status(pool, "OPEN")
        return 202, self.operation(f"{kind.upper()}.OPEN", {f"{kind}_id": key})

    def _expired(self, pool: Doc) -> bool:
        expire = pool.get("will_expire")
        try:
            return expire is not None and sim_seconds(parse_time(str(expire))) <= self.now
        except ValueError:
            return False

    def close_pool(self, key: str, kind: str, reason: str = "MANUAL") -> tuple[int, Doc | None]:
        pool = self.get("pool", key, kind)
        if pool["status"] != "OPEN":
            return 204, None
        self.set_pool_status(pool, "CLOSED", reason)
        return 202, self.operation(f"{kind.upper()}.CLOSE", {f"{kind}_id": key})

    def close_for_update(self, key: str, kind: str) -> tuple[int, Doc | None]:
        """Close a pool to edit it; Toloka opens it again by itself `REOPEN_AFTER_UPDATE` seconds later
        unless the requester opened (or closed) it in the meantime."""
        status, op = self.close_pool(key, kind, "FOR_UPDATE")
        if op is not None:
            self.crowd.reopen_later(self.get("pool", key, kind), self.now + REOPEN_AFTER_UPDATE)
        return status, op

    def reopen_after_update(self, pool: Doc) -> None:
        """The pool closed for update was not opened again by the requester: it opens now, unless
        it cannot (no tasks, expired, not enough balance), then it stays closed."""
        try:
            self.open_pool(pool["id"], pool["_kind"])
        except ApiError as exc:
            log.info("pool %s closed for update stays closed: %s", pool["id"], exc.message)

    def archive_pool(self, key: str, kind: str) -> tuple[int, Doc | None]:
        pool = self.get("pool", key, kind)
        if pool["status"] == "ARCHIVED":
            return 204, None
        if pool["status"] == "OPEN":
            raise conflict("POOL_INAPPROPRIATE_STATUS", f"{kind} {key} is open: close it first")
        pool["status"] = "ARCHIVED"
        self.store.touch("pool", key)
        return 202, self.operation(f"{kind.upper()}.ARCHIVE", {f"{kind}_id": key})

    def clone_pool(self, key: str, kind: str) -> tuple[int, Doc]:
        """A new closed pool (or training) with the same settings and no tasks; the op names it."""
        source = self.get("pool", key, kind)
        config = {k: v for k, v in public(source).items() if k not in CLONE_SKIPS}
        clone = self._new_pool(config | {"id": self._numeric_id(), "created": self.stamp()}, kind)
        op = self.operation(f"{kind.upper()}.CLONE", {f"{kind}_id": key})
        op["details"] = {f"{kind}_id": clone["id"]}
        return 202, op

    def set_pool_status(self, pool: Doc, status: str, reason: str | None = None) -> None:
        pool["status"] = status
        if status == "OPEN":
            mix_pending(self, pool)
            pool["last_started"] = self.stamp()
            self.crowd.pool_opened(pool)
            self.crowd.check_complete(pool)  # nothing left to answer: it closes again (COMPLETED)
        else:
            pool["last_stopped"] = self.stamp()
            pool["last_close_reason"] = reason
        self.store.touch("pool", pool["id"])

    def output_spec(self, pool_id: str) -> Doc:
        """The output spec of a pool's project (what workers answer and known solutions name)."""
        pool = self.store.data["pool"][str(pool_id)]
        project = self.store.get("project", str(pool["project_id"])) or {}
        return (project.get("task_spec") or {}).get("output_spec") or {}

    def assignment_cost(self, pool: Doc) -> float:
        return with_cost(pool.get("reward_per_assignment") or 0.0)

    # -------------------------------------------------------------------------------------- skills
    def create_skill(self, body: Any) -> Doc:
        body = _object(body)
        if not body.get("name"):
            raise validation({"name": ("VALUE_REQUIRED", "name is required")})
        doc = strip_read_only(body) | {"id": self._numeric_id(), "created": self.stamp()}
        return public(self.store.put("skill", doc["id"], doc))

    def update_skill(self, key: str, body: Any) -> Doc:
        if not _object(body).get("name"):
            raise validation({"name": ("VALUE_REQUIRED", "name is required")})
        return self.update("skill", key, body)

    def user_skill_value(self, user_id: str, skill_id: str) -> float | None:
        doc = self.store.get("user_skill", f"{user_id}/{skill_id}")
        return None if doc is None else doc.get("exact_value")

    def set_user_skill(self, body: Any) -> Doc:
        body = _object(body)
        errors = {}
        for name in ("skill_id", "user_id", "value"):
            if body.get(name) is None:
                errors[name] = ("VALUE_REQUIRED", f"{name} is required")
        if not errors and self.store.get("skill", str(body["skill_id"])) is None:
            errors["skill_id"] = ("DOES_NOT_EXIST", f"skill {body['skill_id']} does not exist")
        value = body.get("value")
        if not errors and (not isinstance(value, int | float) or isinstance(value, bool)):
            errors["value"] = ("INVALID_FORMAT", "value must be a number")
        elif not errors and not SKILL_RANGE[0] <= value <= SKILL_RANGE[1]:
            errors["value"] = ("VALUE_OUT_OF_RANGE", "value must be from 0 to 100")
        if errors:
            raise validation(errors)
        return public(self.put_user_skill(str(body["user_id"]), str(body["skill_id"]), float(value)))

    def put_user_skill(self, user_id: str, skill_id: str, value: float) -> Doc:
        """Set a skill value (from the API or a quality-control rule); the worker looks for work."""
        key = f"{user_id}/{skill_id}"
        doc = self.store.get("user_skill", key)
        if doc is None:
            doc = {"id": str(self.store.next_seq("user_skill")), "skill_id": skill_id, "user_id": user_id}
            doc["created"] = self.stamp()
        doc.update(value=round(value), exact_value=value, modified=self.stamp())
        self.store.put("user_skill", key, doc)
        admitted = qc.admitted_pools(self, user_id)
        self.crowd.skills.setdefault(user_id, {})[skill_id] = value
        qc.on_skill_changed(self, user_id, admitted, skill_id)
        self.crowd.wake(user_id)
        return doc

    def _user_skill_by_id(self, key: str) -> tuple[str, Doc]:
        for store_key, doc in self.store.data["user_skill"].items():
            if doc["id"] == key:
                return store_key, doc
        raise not_found("user skill", key)

    def get_user_skill(self, key: str) -> Doc:
        return public(self._user_skill_by_id(key)[1])

    def delete_user_skill(self, key: str) -> None:
        store_key, doc = self._user_skill_by_id(key)
        self.store.delete("user_skill", store_key)
        admitted = qc.admitted_pools(self, doc["user_id"])
        self.crowd.skills.get(doc["user_id"], {}).pop(doc["skill_id"], None)
        qc.on_skill_changed(self, doc["user_id"], admitted, doc["skill_id"])

    # --------------------------------------------------------------------------- tasks and suites
    def batch_create(self, kind: str, body: Any, params: dict[str, str]) -> tuple[int, Any]:
        """POST /tasks or /task-suites: one object (dict) or a batch (list), sync or async.

        Async mode (toloka-kit's default, also for a single object) answers an operation and keeps a
        log the client reads back; with `skip_invalid_items=false` one invalid item fails the whole
        operation (status FAIL, nothing created, the log names each invalid item's fields).
        """
        single = isinstance(body, dict)
        if not single and not isinstance(body, list):
            raise validation({"body": ("INVALID_FORMAT", "expected a JSON object or a list of objects")})
        items = [body] if single else body
        if params.get("async_mode", "true").lower() != "true":
            created, errors = create_items(self, kind, items, params)
            if single:
                if errors:
                    raise ApiError(400, "VALIDATION_ERROR", "Validation failed", next(iter(errors.values())))
                return 201, self.crowd.present(kind, next(iter(created.values())))
            if errors and not created:
                raise ApiError(400, "VALIDATION_ERROR", "Validation failed", errors)
            return 201, {
                "items": {k: self.crowd.present(kind, v) for k, v in created.items()},
                "validation_errors": errors,
            }
        log_type = "TASK" if kind == "task" else "TASK_SUITE"
        op_id = self._new_operation_id(params)
        created, errors = create_items(self, kind, items, params)
        id_field = f"{log_type.lower()}_id"
        entries = []
        for pos, item in enumerate(items):
            idx = item_index(pos, item)
            if idx in created:
                entries.append(_log_entry(f"{log_type}_CREATE", item, {id_field: created[idx]["id"]}))
            elif idx in errors:
                entries.append(_log_entry(f"{log_type}_VALIDATE", item, errors[idx]))
        flags = ("skip_invalid_items", "allow_defaults", "open_pool")
        parameters = {k: params[k].lower() == "true" for k in flags if k in params}
        op = self.operation(f"{log_type}.BATCH_CREATE", parameters, op_id=op_id, failed=not created)
        op["details"] = _batch_details(len(items), len(created), len(errors))
        self.store.put("oplog", op_id, {"items": entries})
        return 202, op

    def _new_operation_id(self, params: dict[str, str]) -> str:
        op_id = params.get("operation_id") or str(uuid.uuid4())
        if self.store.get("operation", op_id) is not None:
            raise conflict("OPERATION_ALREADY_EXISTS", f"operation {op_id} already exists")
        return op_id

    def get_long(self, kind: str, key: str, mixed: bool = False) -> Doc:
        """A task, task suite, assignment or bonus by id. `mixed`: also a suite the pool's mixer made
        of its tasks (one that workers were issued, named by their assignments' `task_suite_id`),
        which searches by pool do not list and PATCH does not change."""
        doc = self.store.get(kind, key)
        if doc is None or (doc.get("_hidden") and not mixed):
            raise not_found(kind.replace("suite", "task suite").replace("_", " "), key)
        return self.crowd.present(kind, doc)

    def _suite_of(self, kind: str, key: str) -> tuple[Doc, Doc | None]:
        """A task or suite and the suite that carries its overlap: a task's own suite, the mixed
        suite it was issued in, or None for a task of a mixing pool not issued yet (or a control task)."""
        self.get_long(kind, key)
        doc = self.store.data[kind][key]
        suite = self.store.data["suite"].get(doc.get("_suite") or "") if kind == "task" else doc
        return doc, suite

    def patch_long(self, kind: str, key: str, body: Any, overlap_or_min: bool = False) -> Doc:
        """PATCH a task or task suite (overlap, infinite overlap, solutions, issuing order).

        `overlap_or_min` is `set-overlap-or-min`: an overlap below what was already done becomes the
        number done, instead of an error.
        """
        body = _object(body)
        doc, suite = self._suite_of(kind, key)
        if kind == "task" and not overlap_or_min and "known_solutions" in body:
            errors = known_solutions_errors(
                body["known_solutions"], self.output_spec(doc["pool_id"]), "known_solutions"
            )
            if errors:
                raise validation(errors)
        overlap = body.get("overlap")
        if suite is None:
            self._patch_unissued_overlap(doc, body)
        elif body.get("infinite_overlap") is True:
            self.crowd.set_overlap(suite, None)
        elif overlap is not None:
            if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
                raise validation({"overlap": ("INVALID_VALUE", "overlap must be an integer >= 0")})
            if overlap < suite["_done"]:
                if not overlap_or_min:
                    raise validation(
                        {
                            "overlap": (
                                "INVALID_VALUE",
                                f"overlap {overlap} is below the {suite['_done']} answers done",
                            )
                        }
                    )
                overlap = suite["_done"]
            self.crowd.set_overlap(suite, overlap)
        if kind == "task" and suite is not None:
            doc["_overlap"] = suite["_overlap"]
        if not overlap_or_min:
            for name in ("baseline_solutions", "known_solutions", "message_on_unknown_solution"):
                if name in body and kind == "task":
                    doc[name] = body[name]
            if "issuing_order_override" in body and kind == "suite":
                doc["issuing_order_override"] = body["issuing_order_override"]
        self.store.touch(kind, key)
        pool = self.store.data["pool"][doc["pool_id"]]
        if body.get("open_pool") and pool["status"] != "OPEN":
            self.open_pool(pool["id"], pool["_kind"])
        return self.crowd.present(kind, doc)

    @staticmethod
    def _patch_unissued_overlap(task: Doc, body: Doc) -> None:
        """A task not in a suite yet keeps its overlap for when the mixer issues it."""
        overlap = body.get("overlap")
        if body.get("infinite_overlap") is True:
            task["_overlap"] = None
        elif overlap is not None:
            if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
                raise validation({"overlap": ("INVALID_VALUE", "overlap must be an integer >= 0")})
            task["_overlap"] = overlap

    # ---------------------------------------------------------------------------------- operations
    def operation(
        self, op_type: str, parameters: dict[str, Any], op_id: str | None = None, failed: bool = False
    ) -> Doc:
        """A finished operation (the emulator does all work synchronously, which the client accepts).

        Only the newest `MAX_OPERATIONS` are kept (with their logs), so a long run of polling
        `get_analytics` does not grow memory without bound.
        """
        stamp = self.stamp()
        op = {
            "id": op_id
            or str(uuid.UUID(bytes=digest("op", self.store.next_seq("operation"), self.settings.seed)[:16])),
            "type": op_type,
            "status": "FAIL" if failed else "SUCCESS",
            "submitted": stamp,
            "started": stamp,
            "finished": stamp,
            "progress": 100,
            "parameters": parameters,
        }
        operations = self.store.data["operation"]
        while len(operations) >= MAX_OPERATIONS:
            oldest = next(iter(operations))
            self.store.delete("operation", oldest)
            self.store.delete("oplog", oldest)
            self.store.delete("aggregate", oldest)
        return self.store.put("operation", op["id"], op)

    def get_operation(self, key: str) -> Doc:
        return public(self.get("operation", key))

    def get_operation_log(self, key: str) -> list[Doc]:
        self.get("operation", key)
        return (self.store.get("oplog", key) or {"items": []})["items"]

    def analytics(self, body: Any) -> Doc:
        if not isinstance(body, list) or not body or len(body) > 10:
            raise validation({"body": ("INVALID_FORMAT", "expected a list of 1 to 10 analytics requests")})
        results = []
        for request in body:
            if not isinstance(request, dict) or request.get("subject") != "POOL":
                raise validation({"subject": ("INVALID_FORMAT", "only POOL analytics are supported")})
            pool = self.get("pool", str(request.get("subject_id")))
            hours = request.get("interval_hours")
            if hours is not None and not (is_number(hours) and hours > 0):
                raise validation(
                    {"interval_hours": ("INVALID_VALUE", "interval_hours must be a positive number")}
                )
            value = analytics_value(self, pool, str(request.get("name")), hours)
            results.append({"request": request, "result": value, "finished": self.stamp()})
        op = self.operation("ANALYTICS", {"value": body})
        op["details"] = {"value": results}
        return op

    # --------------------------------------------------------------------------------- assignments
    def patch_assignment(self, key: str, body: Any) -> Doc:
        body = _object(body)
        status = body.get("status")
        if status not in ("ACCEPTED", "REJECTED"):
            raise validation({"status": ("INVALID_VALUE", "status must be ACCEPTED or REJECTED")})
        if status == "REJECTED" and not str(body.get("public_comment") or "").strip():
            raise validation({"public_comment": ("VALUE_REQUIRED", "a rejection needs a public_comment")})
        assignment = self.get("assignment", key)
        if assignment["status"] == "REJECTED" and status == "ACCEPTED":
            # Toloka lets a requester take a rejection back: the work is paid now.
            if self.balance() < with_cost(assignment["reward"]):
                raise conflict("NOT_ENOUGH_BALANCE", "Not enough money on the balance to accept it")
            self.crowd.accept_after_reject(assignment, body.get("public_comment"))
            return self.crowd.present("assignment", assignment)
        if assignment["status"] != "SUBMITTED":
            raise conflict("CONFLICT_STATE", f"assignment {key} is {assignment['status']}, not SUBMITTED")
        self.crowd.assess(assignment, status, body.get("public_comment"))
        return self.crowd.present("assignment", assignment)

    # ------------------------------------------------------------------------ aggregated solutions
    def aggregate_by_pool(self, body: Any) -> tuple[int, Doc]:
        request = aggregate.check_request(_object(body), by_task=False)
        pool = self.get("pool", str(request["pool_id"]), "pool")
        results = aggregate.by_pool(self, pool, request)
        op = self.operation("SOLUTION.AGGREGATE", {"pool_id": pool["id"]})
        self.store.put("aggregate", op["id"], {"items": results})
        return 202, op

    def aggregate_by_task(self, body: Any) -> Doc:
        request = aggregate.check_request(_object(body), by_task=True)
        pool = self.get("pool", str(request["pool_id"]), "pool")
        task_id = str(request["task_id"])
        suites = self.store.data["suite"]
        if not any(
            t["id"] == task_id
            for s in self.store.ids_in_pool("suite", pool["id"])
            for t in suites[s]["tasks"]
        ):
            raise not_found("task", task_id)
        return aggregate.by_task(self, pool, task_id, request)

    def find_aggregated(self, op_id: str, params: dict[str, str]) -> Doc:
        self.get("operation", op_id)
        check_params("aggregate", params | {"sort": params.get("sort", "task_id")}, numeric_ids=False)
        docs = (self.store.get("aggregate", op_id) or {"items": []})["items"]
        page, more = search(docs, params | {"sort": params.get("sort", "task_id")}, numeric_ids=False)
        return {"items": page, "has_more": more}

    # ---------------------------------------------------------------------------------- user bonuses
    def create_bonuses(self, body: Any, params: dict[str, str]) -> tuple[int, Any]:
        """POST /user-bonuses: one or many bonuses, charged (with the fee) to the balance at once."""
        single = isinstance(body, dict)
        if not single and not isinstance(body, list):
            raise validation({"body": ("INVALID_FORMAT", "expected a JSON object or a list of objects")})
        items = [body] if single else body
        async_mode = params.get("async_mode", "true").lower() == "true"
        # A replayed operation (the client retries after a lost answer) must not pay twice: the
        # operation id is checked before anything is issued or charged.
        op_id = self._new_operation_id(params) if async_mode else None
        errors = {item_index(pos, item): self._bonus_errors(item) for pos, item in enumerate(items)}
        errors = {k: v for k, v in errors.items() if v}
        skip = params.get("skip_invalid_items", "false").lower() == "true"
        created: dict[str, Doc] = {}
        if not errors or skip:
            total = sum(
                with_cost(item["amount"])
                for pos, item in enumerate(items)
                if item_index(pos, item) not in errors
            )
            if total > self.balance():
                raise conflict("NOT_ENOUGH_BALANCE", "Not enough money on the balance for these bonuses")
            for pos, item in enumerate(items):
                idx = item_index(pos, item)
                if idx not in errors:
                    created[idx] = self._issue_bonus(item)
        if op_id is None:
            if single:
                if errors:
                    raise ApiError(
                        400,
                        "VALIDATION_ERROR",
                        "Validation failed",
                        errors["0"] if "0" in errors else next(iter(errors.values())),
                    )
                return 201, public(next(iter(created.values())))
            if errors and not created:
                raise ApiError(400, "VALIDATION_ERROR", "Validation failed", errors)
            return 201, {"items": {k: public(v) for k, v in created.items()}, "validation_errors": errors}
        entries = []
        for pos, item in enumerate(items):
            idx = item_index(pos, item)
            if idx in created:
                entries.append(_log_entry("USER_BONUS_CREATE", item, {"user_bonus_id": created[idx]["id"]}))
            elif idx in errors:
                entries.append(_log_entry("USER_BONUS_VALIDATE", item, errors[idx]))
        op = self.operation(
            "USER_BONUS.BATCH_CREATE", {"skip_invalid_items": skip}, op_id=op_id, failed=not created
        )
        op["details"] = _batch_details(len(items), len(created), len(errors))
        self.store.put("oplog", op_id, {"items": entries})
        return 202, op

    def _bonus_errors(self, item: Any) -> dict[str, dict[str, str]]:
        if not isinstance(item, dict):
            return field_errors({"": ("INVALID_FORMAT", "expected a JSON object")})
        problems = {}
        if not item.get("user_id"):
            problems["user_id"] = ("VALUE_REQUIRED", "user_id is required")
        amount = item.get("amount")
        if not isinstance(amount, int | float) or isinstance(amount, bool):
            problems["amount"] = ("VALUE_REQUIRED", "amount must be a number")
        elif not BONUS_RANGE[0] <= amount <= BONUS_RANGE[1]:
            problems["amount"] = ("VALUE_OUT_OF_RANGE", "amount must be from 0.01 to 100")
        user_id = item.get("user_id")
        if user_id and self.crowd.population.index_of(str(user_id)) is None:
            problems["user_id"] = ("DOES_NOT_EXIST", f"user {user_id} does not exist")
        assignment_id = item.get("assignment_id")
        if assignment_id is not None:
            assignment = self.store.get("assignment", str(assignment_id))
            if assignment is None:
                problems["assignment_id"] = ("DOES_NOT_EXIST", f"assignment {assignment_id} does not exist")
            elif user_id and assignment["user_id"] != str(user_id):
                problems["assignment_id"] = (
                    "INVALID_VALUE",
                    f"assignment {assignment_id} is not by {user_id}",
                )
        return field_errors(problems)

    def _issue_bonus(self, item: Doc) -> Doc:
        doc = strip_read_only(item) | {"id": self.long_id(), "created": self.stamp()}
        doc["amount"] = float(item["amount"])
        doc["_cost"] = with_cost(doc["amount"])
        self.charge(doc["_cost"])
        return self.store.put("user_bonus", doc["id"], doc)

    # ------------------------------------------------------------------------------ restrictions
    def add_restriction(self, fields: Doc, until: float | None) -> Doc:
        """A user restriction (from a QC rule or the requester); the crowd honours it at once."""
        doc = {k: v for k, v in fields.items() if v is not None} | {
            "id": str(self.store.next_seq("user_restriction")),
            "created": self.stamp(),
            "_until": until,
        }
        if until is not None:
            doc["will_expire"] = fmt_time(until)
        self.store.put("user_restriction", doc["id"], doc)
        self.crowd.restriction_added(doc)
        qc.on_restricted(self, doc["user_id"])
        return doc

    def set_restriction(self, body: Any) -> Doc:
        body = _object(body)
        errors = {}
        scope = body.get("scope")
        if scope not in ("ALL_PROJECTS", "PROJECT", "POOL", "SYSTEM"):
            errors["scope"] = ("INVALID_VALUE", "scope must be ALL_PROJECTS, PROJECT, POOL or SYSTEM")
        if not body.get("user_id"):
            errors["user_id"] = ("VALUE_REQUIRED", "user_id is required")
        target = {"PROJECT": ("project_id", "project"), "POOL": ("pool_id", "pool")}.get(str(scope))
        if target and self.store.get(target[1], str(body.get(target[0]))) is None:
            errors[target[0]] = ("DOES_NOT_EXIST", f"{target[1]} {body.get(target[0])} does not exist")
        until = None
        if body.get("will_expire") is not None:
            try:
                until = sim_seconds(parse_time(str(body["will_expire"])))
            except ValueError:
                errors["will_expire"] = ("INVALID_FORMAT", "will_expire must be a date and time")
        if errors:
            raise validation(errors)
        fields = strip_read_only(body) | {"scope": scope, "user_id": str(body["user_id"])}
        fields.pop("will_expire", None)
        return public(self.add_restriction(fields, until))

    def delete_restriction(self, key: str) -> None:
        doc = self.get("user_restriction", key)
        self.store.delete("user_restriction", key)
        self.crowd.restriction_removed(doc)

    # ---------------------------------------------------------------------------------- user data
    def user_metadata(self, user_id: str) -> Doc:
        """GET /user-metadata/{id}: the profile of a worker of the market."""
        index = self.crowd.population.index_of(user_id)
        if index is None:
            raise not_found("user", user_id)
        worker = self.crowd.population.worker(index)
        profile = worker["profile"]
        return {
            "id": user_id,
            "country": profile["country"],
            "languages": profile["languages"],
            "adult_allowed": profile["adult_allowed"],
            "attributes": {
                "country_by_phone": profile["country"],
                "country_by_ip": profile["country"],
                "client_type": profile["client_type"],
                "user_agent_type": "BROWSER" if profile["client_type"] == "BROWSER" else "MOBILE_APP",
                "device_category": profile["device_category"],
                "os_family": profile["os_family"],
            },
        }

    # ------------------------------------------------------------------------------------ searches
    def search(self, kind: str, params: dict[str, str], label: str | None = None) -> Doc:
        """GET on a collection: `{"items": [...], "has_more": bool}`."""
        check_params(kind, params, numeric_ids=kind not in LONG_KINDS and kind != "operation")
        if kind in LONG_KINDS:
            scope = SEARCH_SCOPES.get(kind, ())
            if scope and not any(params.get(name) for name in scope):
                named = " or ".join(scope)
                raise validation({scope[0]: ("VALUE_REQUIRED", f"a search of this collection needs {named}")})
            task_id = params.pop("task_id", None) if kind in ("assignment", "suite") else None
            if task_id is not None:
                docs = self._containing_task(kind, task_id, params.get("id_gt"))
            else:
                docs = self._long_candidates(kind, params)
            page, more = search(
                docs, params, numeric_ids=False, presorted=True, computed=COMPUTED_FIELDS.get(kind)
            )
            return {"items": [self.crowd.present(kind, d) for d in page], "has_more": more}
        if kind == "operation":
            page, more = search(self.store.data[kind].values(), params, numeric_ids=False)
            return {"items": [public(d) for d in page], "has_more": more}
        docs = self.store.data[kind].values()
        if label:
            docs = [d for d in docs if d.get("_kind") == label]
        docs = sorted(docs, key=lambda d: id_key(d["id"], True))
        page, more = search(docs, params, numeric_ids=True, presorted=True)
        return {"items": [public(d) for d in page], "has_more": more}

    def _long_candidates(self, kind: str, params: dict[str, str]) -> Any:
        after = params.get("id_gt")
        pool_id = params.get("pool_id")
        if kind != "user_bonus" and pool_id is not None:
            ids = self.store.ids_in_pool(kind, pool_id, after)
            data = self.store.data[kind]
            return (d for d in (data[i] for i in ids) if not d.get("_hidden"))
        return (d for d in self.store.data[kind].values() if not d.get("_hidden"))

    def _containing_task(self, kind: str, task_id: str, after: str | None) -> list[Doc]:
        """Task suites or assignments that hold the task `task_id`, in id order.

        Toloka's `task_id` filter of `/task-suites` and `/assignments` (`find_task_suites(task_id=)`,
        `get_assignments(task_id=)`): a task is found wherever it was issued, also in the suites a
        pool's mixer made of it, which a search by pool does not list.
        """
        task = self.store.get("task", task_id)
        pool_ids = (
            [task["pool_id"]]
            if task is not None
            else {s["pool_id"] for s in self.store.data["suite"].values() if _holds_task(s, task_id)}
        )
        data = self.store.data[kind]
        found = [
            data[i]
            for pool_id in pool_ids
            for i in self.store.ids_in_pool(kind, pool_id, after)
            if _holds_task(data[i], task_id) and (kind == "suite" or not data[i].get("_hidden"))
        ]
        return sorted(found, key=lambda d: d["id"])

    def export_tsv(self, pool_id: str, params: dict[str, str]) -> Iterator[str]:
        """The pool's export, checked now and written as it is read (`emulator.tsv.export`)."""
        return export(self, self.get("pool", pool_id), params)


MIN_REWARD = 0.005  # a regular pool's least reward per assignment (toloka-kit's Pool docs)


def _pool_defaults(doc: Doc) -> None:
    """What Toloka fills in for a regular pool that does not say: answers are accepted automatically
    (`auto_accept_solutions` defaults to true), so they are paid and exported as APPROVED."""
    if doc.get("_kind") == "pool" and doc.get("auto_accept_solutions") is None:
        doc["auto_accept_solutions"] = True


def _pool_required(body: Doc) -> dict[str, tuple[str, str]]:
    """The fields Toloka requires of a regular pool, and its least reward."""
    errors = {}
    reward = body.get("reward_per_assignment")
    if reward is None:
        errors["reward_per_assignment"] = ("VALUE_REQUIRED", "reward_per_assignment is required")
    elif not is_number(reward):
        errors["reward_per_assignment"] = ("INVALID_FORMAT", "reward_per_assignment must be a number")
    elif reward < MIN_REWARD:
        errors["reward_per_assignment"] = (
            "VALUE_LESS_THAN_MIN",
            f"reward_per_assignment must be >= {MIN_REWARD}",
        )
    if not isinstance(body.get("may_contain_adult_content"), bool):
        errors["may_contain_adult_content"] = ("VALUE_REQUIRED", "may_contain_adult_content is required")
    duration = "assignment_max_duration_seconds"  # its type and range: `pool_settings_errors`
    if body.get(duration) is None:
        errors[duration] = ("VALUE_REQUIRED", f"{duration} is required")
    if body.get("will_expire") is None:
        errors["will_expire"] = ("VALUE_REQUIRED", "will_expire is required")
    if not isinstance(body.get("defaults"), dict):
        errors["defaults"] = ("VALUE_REQUIRED", "defaults is required")
    return errors


def _holds_task(doc: Doc, task_id: str) -> bool:
    return any(t.get("id") == task_id for t in doc.get("tasks") or ())


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation({"body": ("INVALID_FORMAT", "expected a JSON object")})
    return body


def _log_entry(kind: str, item: Any, output: Any) -> Doc:
    success = kind.endswith("_CREATE")
    return {
        "type": kind,
        "success": success,
        "input": item if isinstance(item, dict) else {"value": item},
        "output": output,
    }


def _batch_details(total: int, created: int, invalid: int) -> Doc:
    return {
        "total_count": total,
        "valid_count": total - invalid,
        "not_valid_count": invalid,
        "success_count": created,
        "failed_count": total - created,
    }


__all__ = ["Emulator"]
