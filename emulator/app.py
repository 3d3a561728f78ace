"""HTTP routes: the Toloka API toloka-kit 1.2.3 uses, control endpoints and images.

Toloka API under `/api` (`Authorization: OAuth <token>` required, see `guard.py`). Control and
inspection endpoints, not part of Toloka, never faulted or rate limited:

* `GET  /_emulator/health` — `{"status": "ok", "sim_time": ..., "speed": ...}`
* `GET  /_emulator/workers` — every worker who has shown up: id, type, profile, skills, training
  scores, restrictions, online or not (ground truth for tests and reports)
* `GET  /_emulator/catalogue` — the active catalogue: items with image URL, true class, attributes
* `GET  /_emulator/stats` — object counts, assignments by status, balance, simulated time, the
  per-token rate (peak requests/s, 429s answered), admitted requests by route (ids folded), faults
  injected
* `POST /_emulator/advance?seconds=N` — move the simulated clock forward (the only way with speed 0)
* `POST /_emulator/config?speed=&fail_rate=&latency_ms=&rate_limit=` — change speed, faults and the
  per-token rate limit at runtime (a new limit restarts the peak and 429 counts)
* `POST /_emulator/top-up?amount=N` — add N dollars to the account's balance (at most 1,000,000 at once)
* `GET  /images/<catalogue>/<file>.png` — the bundled catalogue images, drawn on demand

The three `POST /_emulator/*` routes change state: they need the API token (or the admin token) in
the same `Authorization` header, and refuse bad values with a 400 Toloka-style error.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from emulator.catalogues import render_png
from emulator.clock import MAX_SPEED
from emulator.core import Emulator
from emulator.errors import ApiError, field_errors, validation
from emulator.faults import Faults
from emulator.guard import Guard, RateLimiter, bearer, route_of
from emulator.records import public

log = logging.getLogger("emulator.app")
MAX_LATENCY_MS = 60_000
NOT_SUPPORTED = "NOT_SUPPORTED_BY_EMULATOR"  # 501: a Toloka endpoint the emulator does not have


class FastJSONResponse(JSONResponse):
    """A JSON answer serialised by orjson (~4 µs for a pool with quality-control rules, `json` ~50 µs).

    Documents orjson refuses (integers beyond 64 bits, which a client may send in a config) fall back
    to the standard library, so every stored document can still be answered.
    """

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def _json(data: Any, status: int = 200) -> JSONResponse:
    return FastJSONResponse(data, status_code=status)


def _error(status: int, code: str, message: str, payload: Any = None) -> JSONResponse:
    return _json(ApiError(status, code, message, payload).body(uuid.uuid4().hex), status)


def _params(request: Request) -> dict[str, str]:
    return dict(request.query_params)


def _op(result: tuple[int, Any]) -> Response:
    status, op = result
    return Response(status_code=204) if op is None else _json(public(op), status)


def create_app(emu: Emulator) -> Any:
    """The ASGI application serving one `Emulator` (FastAPI routes behind the `/api` guard)."""
    app = FastAPI(
        title="crowdclust Toloka emulator",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=FastJSONResponse,
        # No OpenTelemetry: looking for its providers costs ~0.02 ms on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    settings = emu.settings
    faults = Faults(settings.seed, settings.fail_rate, settings.latency_ms)
    limiter = RateLimiter(settings.rate_limit)
    app.state.emulator, app.state.faults, app.state.limiter = emu, faults, limiter

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.payload)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405) and request.url.path.startswith("/api/"):
            # No route: an endpoint of Toloka's API the emulator does not have (attachments, message
            # threads, webhooks, app projects, ...). A 404 DOES_NOT_EXIST would read "object missing".
            route = f"{request.method} {route_of(request.url.path)}"
            return _error(
                501, NOT_SUPPORTED, f"the Toloka emulator does not support {route}", {"route": route}
            )
        code = {404: "DOES_NOT_EXIST", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INTERNAL_ERROR")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        payload = {}
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query")]
            path = "body" if e.get("type") == "json_invalid" or not loc else ".".join(loc)
            payload[path] = ("INVALID_FORMAT", str(e.get("msg", "")))
        return _error(400, "VALIDATION_ERROR", "Validation failed", field_errors(payload))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        # The details go to the log only: an answer never carries exception text. The server closes
        # the connection after an unhandled error, so the answer says so (the client then reconnects
        # instead of reusing a dead connection).
        log.exception("internal error")
        answer = _error(500, "INTERNAL_ERROR", "Internal error of the emulator (see its log)")
        answer.headers["Connection"] = "close"
        return answer

    call = emu.call
    _polled_reads(app, emu)  # first, so that they are matched first

    # ---------------------------------------------------------------------------------- requester
    @app.get("/api/v1/requester")
    async def requester() -> Any:
        return call(emu.requester)

    # ----------------------------------------------------------------------------------- projects
    @app.post("/api/v1/projects", status_code=201)
    async def create_project(body: Any = Body(None)) -> Any:
        return _json(call(emu.create_project, body), 201)

    @app.get("/api/v1/projects")
    async def find_projects(request: Request) -> Any:
        return call(emu.search, "project", _params(request))

    @app.get("/api/v1/projects/{key}")
    async def get_project(key: str) -> Any:
        return call(lambda: public(emu.get("project", key)))

    @app.put("/api/v1/projects/{key}")
    async def update_project(key: str, body: Any = Body(None)) -> Any:
        return call(emu.update, "project", key, body)

    @app.post("/api/v1/projects/{key}/archive")
    async def archive_project(key: str) -> Response:
        return _op(call(emu.archive_project, key))

    # -------------------------------------------------------------------------- pools, trainings
    for collection, kind in (("pools", "pool"), ("trainings", "training")):
        _pool_routes(app, emu, collection, kind)

    # -------------------------------------------------------------------------------------- skills
    @app.post("/api/v1/skills", status_code=201)
    async def create_skill(body: Any = Body(None)) -> Any:
        return _json(call(emu.create_skill, body), 201)

    @app.get("/api/v1/skills")
    async def find_skills(request: Request) -> Any:
        return call(emu.search, "skill", _params(request))

    @app.get("/api/v1/skills/{key}")
    async def get_skill(key: str) -> Any:
        return call(lambda: public(emu.get("skill", key)))

    @app.put("/api/v1/skills/{key}")
    async def update_skill(key: str, body: Any = Body(None)) -> Any:
        return call(emu.update_skill, key, body)

    # ---------------------------------------------------------------------------- tasks and suites
    for collection, kind in (("tasks", "task"), ("task-suites", "suite")):
        _long_routes(app, emu, collection, kind)

    # ---------------------------------------------------------------------------------- operations
    @app.get("/api/v1/operations")
    async def find_operations(request: Request) -> Any:
        return call(emu.search, "operation", _params(request))

    @app.get("/api/v1/operations/{key}/log")
    async def get_operation_log(key: str) -> Any:
        return call(emu.get_operation_log, key)

    @app.post("/api/staging/analytics-2")
    async def analytics(body: Any = Body(None)) -> Any:
        return _json(public(call(emu.analytics, body)), 202)

    # --------------------------------------------------------------------------------- assignments
    @app.get("/api/v1/assignments")
    async def find_assignments(request: Request) -> Any:
        return call(emu.search, "assignment", _params(request))

    @app.get("/api/v1/assignments/{key}")
    async def get_assignment(key: str) -> Any:
        return call(emu.get_long, "assignment", key)

    @app.patch("/api/v1/assignments/{key}")
    async def patch_assignment(key: str, body: Any = Body(None)) -> Any:
        return call(emu.patch_assignment, key, body)

    @app.get("/api/new/requester/pools/{pool_id}/assignments.tsv")
    async def assignments_tsv(pool_id: str, request: Request) -> Any:
        chunks = call(emu.export_tsv, pool_id, _params(request))
        return StreamingResponse(chunks, media_type="text/tab-separated-values; charset=utf-8")

    # --------------------------------------------------------------------------------- user skills
    @app.get("/api/v1/user-skills")
    async def find_user_skills(request: Request) -> Any:
        return call(emu.search, "user_skill", _params(request))

    @app.get("/api/v1/user-skills/{key}")
    async def get_user_skill(key: str) -> Any:
        return call(emu.get_user_skill, key)

    @app.put("/api/v1/user-skills")
    async def set_user_skill(body: Any = Body(None)) -> Any:
        return call(emu.set_user_skill, body)

    @app.delete("/api/v1/user-skills/{key}")
    async def delete_user_skill(key: str) -> Response:
        call(emu.delete_user_skill, key)
        return Response(status_code=204)

    # ------------------------------------------------------------------ bonuses, restrictions, users
    @app.post("/api/v1/user-bonuses")
    async def create_bonuses(request: Request, body: Any = Body(None)) -> Any:
        status, data = call(emu.create_bonuses, body, _params(request))
        return _json(public(data) if "type" in data else data, status)

    @app.get("/api/v1/user-bonuses")
    async def find_bonuses(request: Request) -> Any:
        return call(emu.search, "user_bonus", _params(request))

    @app.get("/api/v1/user-bonuses/{key}")
    async def get_bonus(key: str) -> Any:
        return call(emu.get_long, "user_bonus", key)

    @app.put("/api/v1/user-restrictions", status_code=201)
    async def set_restriction(body: Any = Body(None)) -> Any:
        return _json(call(emu.set_restriction, body), 201)

    @app.get("/api/v1/user-restrictions")
    async def find_restrictions(request: Request) -> Any:
        return call(emu.search, "user_restriction", _params(request))

    @app.get("/api/v1/user-restrictions/{key}")
    async def get_restriction(key: str) -> Any:
        return call(lambda: public(emu.get("user_restriction", key)))

    @app.delete("/api/v1/user-restrictions/{key}")
    async def delete_restriction(key: str) -> Response:
        call(emu.delete_restriction, key)
        return Response(status_code=204)

    @app.get("/api/v1/user-metadata/{user_id}")
    async def user_metadata(user_id: str) -> Any:
        return call(emu.user_metadata, user_id)

    # ------------------------------------------------------------------------ aggregated solutions
    @app.post("/api/v1/aggregated-solutions/aggregate-by-pool")
    async def aggregate_by_pool(body: Any = Body(None)) -> Any:
        return _op(call(emu.aggregate_by_pool, body))

    @app.post("/api/v1/aggregated-solutions/aggregate-by-task")
    async def aggregate_by_task(body: Any = Body(None)) -> Any:
        return call(emu.aggregate_by_task, body)

    @app.get("/api/v1/aggregated-solutions/{op_id}")
    async def find_aggregated(op_id: str, request: Request) -> Any:
        return call(emu.find_aggregated, op_id, _params(request))

    # -------------------------------------------------------------------------- control, images
    _control_routes(app, emu, faults, limiter)

    @app.get("/images/{catalogue}/{file}")
    async def image(catalogue: str, file: str) -> Response:
        png = render_png(f"/images/{catalogue}/{file}")
        if png is None:
            return _error(404, "DOES_NOT_EXIST", f"no image /images/{catalogue}/{file}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    return app


def _polled_reads(app: FastAPI, emu: Emulator) -> None:
    """The reads a requester polls (`get_pool`, `get_training`, `wait_operation`) as plain Starlette routes.

    They take nothing but the id, so FastAPI's per-request work (dependency solving, `jsonable_encoder`)
    buys nothing here and costs ~0.13 ms, a fifth of the emulator's CPU per `get_pool` with it. Errors
    still go through the app's exception handlers.
    """
    reads: dict[str, Callable[[str], Any]] = {
        "/api/v1/pools/{key}": lambda key: emu.get_pool(key, "pool"),
        "/api/v1/trainings/{key}": lambda key: emu.get_pool(key, "training"),
        "/api/v1/operations/{key}": emu.get_operation,
    }
    for path, read in reads.items():

        async def route(request: Request, read: Callable[[str], Any] = read) -> Response:
            return FastJSONResponse(emu.read(read, request.path_params["key"]))

        app.add_route(path, route, methods=["GET"], name=f"get {path}")


def _pool_routes(app: FastAPI, emu: Emulator, collection: str, kind: str) -> None:
    """Pools and trainings: same shape, one id space."""
    call = emu.call

    @app.post(f"/api/v1/{collection}", status_code=201, name=f"create_{kind}")
    async def create(body: Any = Body(None)) -> Any:
        return _json(call(emu.create_pool, body, kind), 201)

    @app.get(f"/api/v1/{collection}", name=f"find_{kind}s")
    async def find(request: Request) -> Any:
        return call(emu.search, "pool", _params(request), kind)

    @app.put(f"/api/v1/{collection}/{{key}}", name=f"update_{kind}")
    async def update(key: str, body: Any = Body(None)) -> Any:
        return call(emu.update, "pool", key, body, kind)

    def action_route(method: Callable[[str, str], tuple[int, Any]]) -> Callable[[str], Awaitable[Response]]:
        async def route(key: str) -> Response:
            return _op(call(method, key, kind))

        return route

    actions = {
        "open": emu.open_pool,
        "close": emu.close_pool,
        "archive": emu.archive_pool,
        "clone": emu.clone_pool,
    }
    if kind == "pool":
        actions["close-for-update"] = emu.close_for_update

        @app.patch("/api/v1/pools/{key}", name="patch_pool")
        async def patch(key: str, body: Any = Body(None)) -> Any:
            return call(emu.patch_pool, key, body)

    for action, method in actions.items():
        app.post(f"/api/v1/{collection}/{{key}}/{action}", name=f"{action}_{kind}")(action_route(method))


def _long_routes(app: FastAPI, emu: Emulator, collection: str, kind: str) -> None:
    """Tasks and task suites: batch creates (sync or async with operation ids), search, get."""
    call = emu.call

    @app.post(f"/api/v1/{collection}", name=f"create_{kind}s")
    async def create(request: Request, body: Any = Body(None)) -> Any:
        status, data = call(emu.batch_create, kind, body, _params(request))
        return _json(data, status)  # every branch of batch_create answers public documents

    @app.get(f"/api/v1/{collection}", name=f"find_{kind}s")
    async def find(request: Request) -> Any:
        return call(emu.search, kind, _params(request))

    @app.get(f"/api/v1/{collection}/{{key}}", name=f"get_{kind}")
    async def get(key: str) -> Any:
        return call(emu.get_long, kind, key, True)

    @app.patch(f"/api/v1/{collection}/{{key}}", name=f"patch_{kind}")
    async def patch(key: str, body: Any = Body(None)) -> Any:
        return call(emu.patch_long, kind, key, body)

    @app.patch(f"/api/v1/{collection}/{{key}}/set-overlap-or-min", name=f"patch_{kind}_overlap_or_min")
    async def overlap_or_min(key: str, body: Any = Body(None)) -> Any:
        return call(emu.patch_long, kind, key, body, True)


def _control_routes(app: FastAPI, emu: Emulator, faults: Faults, limiter: RateLimiter) -> None:
    allowed = {emu.settings.token} | ({emu.settings.admin_token} if emu.settings.admin_token else set())

    def require_admin(request: Request) -> None:
        if bearer(request.scope["headers"]) not in allowed:
            raise ApiError(401, "AUTHENTICATION_ERROR", "this route needs the emulator's token")

    @app.get("/_emulator/health")
    async def health() -> Any:
        return {"status": "ok", "sim_time": emu.crowd.now, "speed": emu.clock.speed}

    @app.get("/_emulator/workers")
    async def workers() -> Any:
        return emu.call(lambda: [emu.crowd.worker_view(w) for w in emu.crowd.by_index])

    @app.get("/_emulator/catalogue")
    async def catalogue(request: Request) -> Any:
        base = str(request.base_url).rstrip("/")
        frame = emu.catalogue.frame(base)
        return {"name": emu.catalogue.name, "size": len(frame), "items": frame.to_dict("records")}

    @app.get("/_emulator/stats")
    async def stats() -> Any:
        def collect() -> Any:
            data = emu.store.data
            return {
                "sim_time": emu.crowd.now,
                "speed": emu.clock.speed,
                "balance": round(emu.balance(), 4),
                "objects": {
                    kind: len(docs)
                    for kind, docs in data.items()
                    if kind not in ("meta", "oplog", "aggregate")
                },
                "market": {
                    "size": emu.crowd.population.n,
                    "arrived": len(data["worker"]),
                    "online": sum(1 for w in data["worker"].values() if w["_rt"]["online_until"] is not None),
                },
                "assignments": dict(Counter(a["status"] for a in data["assignment"].values())),
                "pools": {
                    p["id"]: {"kind": p["_kind"], "status": p["status"], **p["_stats"]}
                    | ({"error": p["_error"]} if p.get("_error") else {})
                    for p in data["pool"].values()
                },
                "faults_injected": faults.injected,
                "lost_responses": faults.lost_responses,
                "rate": limiter.stats(),
            }

        return emu.call(collect)

    @app.post("/_emulator/advance")
    async def advance(request: Request, seconds: float = 0.0) -> Any:
        require_admin(request)
        return {"sim_time": emu.advance(seconds)}

    @app.post("/_emulator/top-up")
    async def top_up(request: Request, amount: float) -> Any:
        require_admin(request)
        return {"balance": emu.top_up(amount)}

    @app.post("/_emulator/config")
    async def config(
        request: Request,
        speed: float | None = None,
        fail_rate: float | None = None,
        latency_ms: int | None = None,
        rate_limit: float | None = None,
    ) -> Any:
        require_admin(request)
        errors = {}
        if rate_limit is not None and not (math.isfinite(rate_limit) and rate_limit >= 0):
            errors["rate_limit"] = ("INVALID_VALUE", "rate_limit must be 0 (none) or more requests/s")
        if fail_rate is not None and not (math.isfinite(fail_rate) and 0 <= fail_rate <= 1):
            errors["fail_rate"] = ("INVALID_VALUE", "fail_rate must be from 0 to 1")
        if latency_ms is not None and not 0 <= latency_ms <= MAX_LATENCY_MS:
            errors["latency_ms"] = ("INVALID_VALUE", f"latency_ms must be from 0 to {MAX_LATENCY_MS}")
        if speed is not None and not (math.isfinite(speed) and 0 <= speed <= MAX_SPEED):
            errors["speed"] = ("INVALID_VALUE", f"speed must be from 0 to {MAX_SPEED:g}")
        if errors:
            raise validation(errors)
        if speed is not None:
            emu.clock.set_speed(speed)
        if fail_rate is not None:
            faults.fail_rate = fail_rate
        if latency_ms is not None:
            faults.latency_ms = latency_ms
        if rate_limit is not None:
            limiter.set_rate(rate_limit)
        return {
            "speed": emu.clock.speed,
            "fail_rate": faults.fail_rate,
            "latency_ms": faults.latency_ms,
            "rate_limit": limiter.rate,
        }


def guarded(emu: Emulator) -> Any:
    """The application wrapped in the `/api` guard (what the server runs)."""
    app = create_app(emu)
    return Guard(app, emu.settings.token, app.state.faults, app.state.limiter, lambda: emu.now)
