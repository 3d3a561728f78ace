"""The requester side of the emulator: every Toloka object and operation the API exposes.

`Emulator` owns the store, the clock, the catalogue and the crowd. Each API call runs under the store
lock, first lets the crowd catch up to the current simulated instant (so a request always sees the
crowd as of "now"), then acts, then flushes state to SQLite. Routes (`app.py`) only translate HTTP.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from emulator.catalogues import Catalogue
from emulator.clock import SimClock
from emulator.errors import ApiError, conflict, not_found, validation
from emulator.search import id_key, search
from emulator.settings import EmulatorSettings
from emulator.store import Doc, Store
from emulator.util import digest, fmt_time, long_id

log = logging.getLogger("emulator")
T = TypeVar("T")

FEE_RATE = 0.3  # platform fee on top of every accepted reward
READ_ONLY = {"id", "created", "status", "owner", "last_started", "last_stopped", "last_close_reason", "type"}
REQUEST_FLAGS = {"__item_idx", "allow_defaults", "remaining_overlap"}
OWNER = {"id": "crowdclust-requester", "myself": True, "company_id": "1"}


def public(doc: Doc) -> Doc:
    """A stored document without its private (`_`-prefixed) runtime keys."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


class Emulator:
    """State and behaviour of one emulated Toloka account with its simulated crowd."""

    def __init__(self, settings: EmulatorSettings) -> None:
        from emulator.crowd import Crowd

        self.settings = settings
        self.store = Store(settings.db)
        self.catalogue = Catalogue(settings.catalogue, size=settings.catalogue_size, seed=settings.seed)
        self.clock = SimClock(settings.speed, start=float(self.store.meta("sim_now", 0.0)))
        if self.store.meta("balance") is None:
            self.store.set_meta("balance", float(settings.balance))
        self.crowd = Crowd(self)
        self.store.flush()

    # ------------------------------------------------------------------------------------ plumbing
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one API action atomically at the current simulated instant."""
        with self.store.lock:
            self.crowd.advance_to(self.clock.now())
            try:
                return fn(*args, **kwargs)
            finally:
                self.store.flush()

    def tick(self) -> None:
        """Background heartbeat: let the crowd work up to now."""
        with self.store.lock:
            self.crowd.advance_to(self.clock.now())
            self.store.flush()

    @property
    def now(self) -> float:
        return self.crowd.now

    def stamp(self) -> str:
        return fmt_time(self.now)

    def _numeric_id(self) -> str:
        # Projects, pools, trainings and skills share one counter, so pools and trainings share ids.
        return str(self.store.next_seq("entity"))

    def _long_id(self) -> str:
        return long_id(self.store.next_seq("long"), self.settings.seed)

    def balance(self) -> float:
        return float(self.store.meta("balance", 0.0))

    def charge(self, amount: float) -> None:
        self.store.set_meta("balance", round(self.balance() - amount, 6))

    # ---------------------------------------------------------------------------------- requester
    def requester(self) -> Doc:
        return {
            "id": digest("requester", self.settings.token)[:12].hex(),
            "balance": round(self.balance(), 4),
            "public_name": {"EN": "crowdclust emulator requester"},
            "company": {"id": "1", "superintendent_id": "crowdclust-requester"},
        }

    # ----------------------------------------------------------------------------------- projects
    def create_project(self, body: Any) -> Doc:
        body = _object(body)
        spec = body.get("task_spec")
        errors = {}
        if not isinstance(spec, dict) or not isinstance(spec.get("input_spec"), dict):
            errors["task_spec.input_spec"] = ("VALUE_REQUIRED", "task_spec.input_spec is required")
        if not isinstance(spec, dict) or not isinstance(spec.get("output_spec"), dict):
            errors["task_spec.output_spec"] = ("VALUE_REQUIRED", "task_spec.output_spec is required")
        if not body.get("public_name"):
            errors["public_name"] = ("VALUE_REQUIRED", "public_name is required")
        if errors:
            raise validation(errors)
        doc = strip_read_only(body) | {
            "id": self._numeric_id(),
            "created": self.stamp(),
            "status": "ACTIVE",
            "owner": OWNER,
        }
        return public(self.store.put("project", doc["id"], doc))

    def get(self, kind: str, key: str, label: str | None = None) -> Doc:
        doc = self.store.get(kind, str(key))
        if doc is None or (label and doc.get("_kind", label) != label):
            raise not_found(label or kind, key)
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
        errors = {}
        project_id = str(body.get("project_id") or "")
        if not project_id:
            errors["project_id"] = ("VALUE_REQUIRED", "project_id is required")
        elif self.store.get("project", project_id) is None:
            errors["project_id"] = ("DOES_NOT_EXIST", f"project {project_id} does not exist")
        if not body.get("private_name"):
            errors["private_name"] = ("VALUE_REQUIRED", "private_name is required")
        if kind == "pool":
            reward = body.get("reward_per_assignment")
            if not isinstance(reward, int | float) or reward < 0:
                errors["reward_per_assignment"] = (
                    "VALUE_REQUIRED",
                    "reward_per_assignment must be a number >= 0",
                )
        if errors:
            raise validation(errors)
        doc = strip_read_only(body) | {
            "id": self._numeric_id(),
            "project_id": project_id,
            "created": self.stamp(),
        }
        doc["status"] = "CLOSED"
        if kind == "pool":
            doc["type"] = "REGULAR"
        doc["_kind"] = kind
        doc["_stats"] = {"total": 0, "done": 0, "active": 0}
        if "will_expire" in doc and doc["will_expire"] is None:
            del doc["will_expire"]
        return public(self.store.put("pool", doc["id"], doc))

    def get_pool(self, key: str, kind: str) -> Doc:
        return public(self.get("pool", key, kind))

    def update(self, kind: str, key: str, body: Any, label: str | None = None) -> Doc:
        """PUT a project, pool or training: replace the editable fields, keep id, status and runtime."""
        doc = self.get(kind, key, label)
        body = _object(body)
        runtime = {k: v for k, v in doc.items() if k.startswith("_") or k in READ_ONLY or k == "project_id"}
        doc.clear()
        doc.update(strip_read_only(body) | runtime)
        self.store.touch(kind, key)
        if kind == "pool" and doc["status"] == "OPEN":
            self.crowd.notify()  # a new filter or priority may admit idle workers
        return public(doc)

    def open_pool(self, key: str, kind: str) -> tuple[int, Doc | None]:
        pool = self.get("pool", key, kind)
        if pool["status"] == "OPEN":
            return 204, None
        if pool["status"] == "ARCHIVED":
            raise conflict("POOL_INAPPROPRIATE_STATUS", f"{kind} {key} is archived")
        if not self.store.ids_in_pool("suite", key):
            raise conflict("EMPTY_POOL", "Pool contains no tasks. Operation is not allowed")
        if kind == "pool" and self.balance() < self.assignment_cost(pool):
            raise conflict("NOT_ENOUGH_BALANCE", "Not enough money on the balance to open the pool")
        self.set_pool_status(pool, "OPEN")
        return 202, self.operation(f"{kind.upper()}.OPEN", {f"{kind}_id": key})

    def close_pool(self, key: str, kind: str) -> tuple[int, Doc | None]:
        pool = self.get("pool", key, kind)
        if pool["status"] != "OPEN":
            return 204, None
        self.set_pool_status(pool, "CLOSED", "MANUAL")
        return 202, self.operation(f"{kind.upper()}.CLOSE", {f"{kind}_id": key})

    def archive_pool(self, key: str, kind: str) -> tuple[int, Doc | None]:
        pool = self.get("pool", key, kind)
        if pool["status"] == "ARCHIVED":
            return 204, None
        if pool["status"] == "OPEN":
            raise conflict("POOL_INAPPROPRIATE_STATUS", f"{kind} {key} is open: close it first")
        pool["status"] = "ARCHIVED"
        self.store.touch("pool", key)
        return 202, self.operation(f"{kind.upper()}.ARCHIVE", {f"{kind}_id": key})

    def set_pool_status(self, pool: Doc, status: str, reason: str | None = None) -> None:
        pool["status"] = status
        if status == "OPEN":
            pool["last_started"] = self.stamp()
            self.crowd.notify()
        else:
            pool["last_stopped"] = self.stamp()
            pool["last_close_reason"] = reason
        self.store.touch("pool", pool["id"])

    def assignment_cost(self, pool: Doc) -> float:
        return float(pool.get("reward_per_assignment") or 0.0) * (1 + FEE_RATE)

    # -------------------------------------------------------------------------------------- skills
    def create_skill(self, body: Any) -> Doc:
        body = _object(body)
        if not body.get("name"):
            raise validation({"name": ("VALUE_REQUIRED", "name is required")})
        doc = strip_read_only(body) | {"id": self._numeric_id(), "created": self.stamp()}
        return public(self.store.put("skill", doc["id"], doc))

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
        if not errors and not isinstance(body["value"], int | float):
            errors["value"] = ("INVALID_FORMAT", "value must be a number")
        if errors:
            raise validation(errors)
        return public(self.put_user_skill(str(body["user_id"]), str(body["skill_id"]), float(body["value"])))

    def put_user_skill(self, user_id: str, skill_id: str, value: float) -> Doc:
        """Set a skill value (from the API or a quality-control rule); wakes the crowd."""
        key = f"{user_id}/{skill_id}"
        doc = self.store.get("user_skill", key)
        if doc is None:
            doc = {"id": str(self.store.next_seq("user_skill")), "skill_id": skill_id, "user_id": user_id}
            doc["created"] = self.stamp()
        doc.update(value=round(value), exact_value=value, modified=self.stamp())
        self.store.put("user_skill", key, doc)
        self.crowd.skills.setdefault(user_id, {})[skill_id] = value
        self.crowd.notify()
        return doc

    # --------------------------------------------------------------------------- tasks and suites
    def batch_create(self, kind: str, body: Any, params: dict[str, str]) -> tuple[int, Any]:
        """POST /tasks or /task-suites: one object (dict) or a batch (list), sync or async."""
        from emulator.objects import create_items, item_index

        if isinstance(body, dict):
            # One item: keyed by its `__item_idx` if it carries one, so take the only entry whatever its key.
            created, errors = create_items(self, kind, [body], params)
            if errors:
                raise ApiError(400, "VALIDATION_ERROR", "Validation failed", next(iter(errors.values())))
            return 201, self.crowd.present(kind, next(iter(created.values())))
        if not isinstance(body, list):
            raise validation({"body": ("INVALID_FORMAT", "expected a JSON object or a list of objects")})
        if params.get("async_mode", "true").lower() != "true":
            created, errors = create_items(self, kind, body, params)
            if errors and not created:
                raise ApiError(400, "VALIDATION_ERROR", "Validation failed", errors)
            items = {k: self.crowd.present(kind, v) for k, v in created.items()}
            return 201, {"items": items, "validation_errors": errors}
        op_id = params.get("operation_id") or str(uuid.uuid4())
        if self.store.get("operation", op_id) is not None:
            raise conflict("OPERATION_ALREADY_EXISTS", f"operation {op_id} already exists")
        created, errors = create_items(self, kind, body, params)
        log_type = "TASK" if kind == "task" else "TASK_SUITE"
        id_field = f"{log_type.lower()}_id"
        entries = []
        for pos, item in enumerate(body):
            idx = item_index(pos, item)
            ok = idx in created
            entries.append(
                {
                    "type": f"{log_type}_{'CREATE' if ok else 'VALIDATE'}",
                    "success": ok,
                    "input": item if isinstance(item, dict) else {"value": item},
                    "output": {id_field: created[idx]["id"]} if ok else errors.get(idx),
                }
            )
        parameters = {
            k: params[k].lower() == "true"
            for k in ("skip_invalid_items", "allow_defaults", "open_pool")
            if k in params
        }
        op = self.operation(f"{log_type}.BATCH_CREATE", parameters, op_id=op_id)
        op["details"] = {"success_count": len(created), "failure_count": len(errors)}
        self.store.put("oplog", op_id, {"items": entries})
        return 202, op

    def get_long(self, kind: str, key: str) -> Doc:
        doc = self.store.get(kind, key)
        if doc is None or doc.get("_hidden"):
            raise not_found(kind.replace("suite", "task suite"), key)
        return self.crowd.present(kind, doc)

    # ---------------------------------------------------------------------------------- operations
    def operation(self, op_type: str, parameters: dict[str, Any], op_id: str | None = None) -> Doc:
        """A finished operation (the emulator does all work synchronously, which the client accepts)."""
        stamp = self.stamp()
        op = {
            "id": op_id
            or str(uuid.UUID(bytes=digest("op", self.store.next_seq("operation"), self.settings.seed)[:16])),
            "type": op_type,
            "status": "SUCCESS",
            "submitted": stamp,
            "started": stamp,
            "finished": stamp,
            "progress": 100,
            "parameters": parameters,
        }
        return self.store.put("operation", op["id"], op)

    def get_operation(self, key: str) -> Doc:
        return public(self.get("operation", key))

    def get_operation_log(self, key: str) -> list[Doc]:
        self.get("operation", key)
        return (self.store.get("oplog", key) or {"items": []})["items"]

    def analytics(self, body: Any) -> Doc:
        from emulator.objects import analytics_value

        if not isinstance(body, list) or not body or len(body) > 10:
            raise validation({"body": ("INVALID_FORMAT", "expected a list of 1 to 10 analytics requests")})
        results = []
        for request in body:
            if not isinstance(request, dict) or request.get("subject") != "POOL":
                raise validation({"subject": ("INVALID_FORMAT", "only POOL analytics are supported")})
            pool = self.get("pool", str(request.get("subject_id")))
            value = analytics_value(self, pool, str(request.get("name")))
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
        assignment = self.get("assignment", key)
        if assignment["status"] != "SUBMITTED":
            raise conflict("CONFLICT_STATE", f"assignment {key} is {assignment['status']}, not SUBMITTED")
        self.crowd.assess(assignment, status, body.get("public_comment"))
        return self.crowd.present("assignment", assignment)

    # ------------------------------------------------------------------------------------ searches
    def search(self, kind: str, params: dict[str, str], label: str | None = None) -> Doc:
        """GET on a collection: `{"items": [...], "has_more": bool}`."""
        if kind in ("task", "suite", "assignment"):
            docs = self._long_candidates(kind, params)
            page, more = search(docs, params, numeric_ids=False, presorted=True)
            return {"items": [self.crowd.present(kind, d) for d in page], "has_more": more}
        docs = self.store.data[kind].values()
        if label:
            docs = [d for d in docs if d.get("_kind") == label]
        docs = sorted(docs, key=lambda d: id_key(d["id"], True))
        page, more = search(docs, params, numeric_ids=True, presorted=True)
        return {"items": [public(d) for d in page], "has_more": more}

    def _long_candidates(self, kind: str, params: dict[str, str]) -> Any:
        after = params.get("id_gt")
        pool_id = params.get("pool_id")
        if pool_id is not None and "," not in pool_id:
            ids = self.store.ids_in_pool(kind, pool_id, after)
            data = self.store.data[kind]
            return (d for d in (data[i] for i in ids) if not d.get("_hidden"))
        return (d for d in self.store.data[kind].values() if not d.get("_hidden"))

    def export_tsv(self, pool_id: str, params: dict[str, str]) -> str:
        from emulator.tsv import export

        return export(self, self.get("pool", pool_id), params)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation({"body": ("INVALID_FORMAT", "expected a JSON object")})
    return body


def strip_read_only(body: dict[str, Any]) -> dict[str, Any]:
    """Drop read-only and request-only keys that exported configs carry (they must not be rejected)."""
    return {
        k: v
        for k, v in body.items()
        if k not in READ_ONLY and k not in REQUEST_FLAGS and not k.startswith("_")
    }


__all__ = ["Emulator", "public", "strip_read_only"]
