"""Deploying prefect.yaml so that `make up` respects what the user changed in the UI.

- The deployed file is `prefect.yaml` with the service's real emulator URL written into every
  `local` Toloka target, so the Custom run form shows the URL the run will use.
- A fingerprint of that file, the flows' source (parameter schemas) and the work pool is kept in
  `<state_dir>/deployed.json` with the values deployed. Same fingerprint and every deployment still
  on the server: nothing to do.
- Otherwise the server's current deployments are read first and a three-way merge keeps the user's
  edits: a parameter or a schedule's `active` flag whose server value differs from what was last
  deployed was changed in the UI and wins over prefect.yaml; everything else follows prefect.yaml.
  `force=True` (`make up FORCE=1`) deploys prefect.yaml as it is.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crowdclust.service.config import REPO, WORK_POOL, ServiceConfig
from tasks.atomic_file import write_atomic

_MISSING = object()


def _local_targets(params: Any) -> list[dict[str, Any]]:
    """Every `toloka` mapping with `environment: local` inside a deployment's parameters."""
    found: list[dict[str, Any]] = []
    if isinstance(params, dict):
        toloka = params.get("toloka")
        if isinstance(toloka, dict) and toloka.get("environment", "local") == "local":
            found.append(toloka)
        for key, value in params.items():
            if key != "toloka":
                found.extend(_local_targets(value))
    return found


def spec(cfg: ServiceConfig) -> dict[str, Any]:
    """prefect.yaml as this service deploys it (anchors resolved, local targets at its emulator)."""
    data = yaml.safe_load(cfg.prefect_yaml.read_text())
    data.pop("definitions", None)  # only anchors; already resolved by the loader
    for deployment in data.get("deployments") or []:
        for target in _local_targets(deployment.get("parameters")):
            target["url"] = cfg.emulator_url
    return data


def fingerprint(cfg: ServiceConfig, deployed: dict[str, Any]) -> str:
    """What decides whether a re-deploy is needed: the file, the flows' code, pool and folder.

    The flows' parameters are `tasks/params.py`'s models, whose JSON schema a deployment holds: the
    run form and Prefect's check of a run's parameters. Changed alone, it was not re-deployed, and
    the server went on accepting what the new models refuse (a token given as the Secret block's
    name, stored among the run's parameters before the flow refused it).
    """
    digest = hashlib.sha256(json.dumps(deployed, sort_keys=True, default=str).encode())
    for path in [*sorted((REPO / "flows").rglob("*.py")), REPO / "tasks" / "params.py"]:
        digest.update(path.read_bytes())
    digest.update(f"{WORK_POOL}|{REPO}|{cfg.api_url}".encode())
    return digest.hexdigest()


def _schedule_key(schedule: dict[str, Any]) -> str:
    """A schedule's identity across deploys (Prefect gives it a new id each time)."""
    fields = {k: schedule.get(k) for k in ("cron", "rrule", "timezone")}
    if schedule.get("interval") is not None:
        fields["interval"] = float(schedule["interval"])
    return json.dumps(fields, sort_keys=True)


def merge3(base: Any, theirs: Any, ours: Any) -> Any:
    """Three-way merge: `theirs` (the server) wins where it differs from `base` (last deployed)."""
    if isinstance(base, dict) and isinstance(theirs, dict) and isinstance(ours, dict):
        merged: dict[str, Any] = {}
        for key in [*ours, *(k for k in theirs if k not in ours)]:
            value = merge3(base.get(key, _MISSING), theirs.get(key, _MISSING), ours.get(key, _MISSING))
            if value is not _MISSING:
                merged[key] = value
        return merged
    if theirs is base or theirs == base:
        return ours
    return theirs


def entrypoint_modules(deployed: dict[str, Any]) -> list[str]:
    """`flows/pipeline.py:crowdclust_pipeline` -> `flows.pipeline`, once each, in file order."""
    modules = [
        d["entrypoint"].split(":")[0].removesuffix(".py").replace("/", ".") for d in deployed["deployments"]
    ]
    return list(dict.fromkeys(modules))


def _record_file(cfg: ServiceConfig) -> Path:
    return cfg.state_dir / "deployed.json"


def record(cfg: ServiceConfig) -> dict[str, Any]:
    """What was provisioned and deployed last (keys `provisioned`, `fingerprint`, `deployed`);
    empty when there is no record or it does not read (`damaged_record` says so)."""
    try:
        data = json.loads(_record_file(cfg).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def damaged_record(cfg: ServiceConfig) -> str | None:
    """What to tell the user when the record exists but does not read (None otherwise): without
    it the UI's edits since the last deploy are not known, and prefect.yaml is deployed as written."""
    path = _record_file(cfg)
    if not path.exists() or record(cfg):
        return None
    return (
        f"{path} does not read (a `make up` killed while it wrote it?): the edits made in the UI "
        "since the last deploy (parameters, schedules switched on or off) cannot be told apart, so "
        "prefect.yaml is deployed as written; check the deployments' schedules in the UI"
    )


def save_record(cfg: ServiceConfig, data: dict[str, Any]) -> None:
    """Replaced whole (`tasks.atomic_file`): cut short by a kill, it read as no record at all, and
    the next `up` deployed prefect.yaml over the schedules switched off in the UI."""
    write_atomic(_record_file(cfg), json.dumps(data, indent=1, default=str) + "\n")


def _api(cfg: ServiceConfig, method: str, path: str, body: Any = None) -> Any:
    import httpx

    response = httpx.request(method, f"{cfg.api_url}{path}", json=body, headers=cfg.api_headers(), timeout=30)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def pool_exists(cfg: ServiceConfig) -> bool:
    return _api(cfg, "GET", f"/work_pools/{WORK_POOL}") is not None


def server_deployments(cfg: ServiceConfig) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _api(cfg, "POST", "/deployments/filter", {}) or []}


@dataclass(frozen=True)
class Plan:
    """A deploy to do: the file to deploy, the user edits kept, and the record to save after it."""

    path: Path
    kept: list[str]
    count: int
    record: dict[str, Any]


def up_to_date(cfg: ServiceConfig, last: dict[str, Any], server: dict[str, dict[str, Any]]) -> bool:
    """Whether prefect.yaml and the flows are as last deployed and the server has every deployment."""
    wanted = spec(cfg)
    names = {d["name"] for d in wanted.get("deployments") or []}
    return last.get("fingerprint") == fingerprint(cfg, wanted) and names <= set(server)


def plan(cfg: ServiceConfig, last: dict[str, Any], force: bool) -> Plan | None:
    """None when the server has every deployment as last deployed; else what to deploy."""
    server = server_deployments(cfg)
    if not force and up_to_date(cfg, last, server):
        return None
    wanted = spec(cfg)
    mark = fingerprint(cfg, wanted)
    names = {d["name"] for d in wanted.get("deployments") or []}
    to_deploy, kept = (wanted, []) if force else with_user_edits(wanted, last.get("deployed") or {}, server)
    path = cfg.state_dir / "prefect.deployed.yaml"
    header = "# Written by `make up` from prefect.yaml (service URLs, UI edits kept): edit prefect.yaml.\n"
    path.write_text(header + yaml.safe_dump(to_deploy, sort_keys=False))
    return Plan(path, kept, len(names), {"fingerprint": mark, "deployed": wanted})


def with_user_edits(
    deployed: dict[str, Any], last: dict[str, Any], server: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """`deployed` with the user's UI edits (relative to `last`, the previous deploy) re-applied.

    `server` maps deployment name -> the server's deployment JSON. Returns the file to deploy and
    a list of human-readable notes about what was kept.
    """
    result = copy.deepcopy(deployed)
    kept: list[str] = []
    last_by_name = {d["name"]: d for d in last.get("deployments") or []}
    for deployment in result.get("deployments") or []:
        name = deployment["name"]
        before, now = last_by_name.get(name), server.get(name)
        if before is None or now is None:
            continue
        params = merge3(
            before.get("parameters") or {}, now.get("parameters") or {}, deployment.get("parameters") or {}
        )
        if params != (deployment.get("parameters") or {}):
            kept.append(f"{name}: parameters edited in the UI")
        deployment["parameters"] = params
        was = {_schedule_key(s): s.get("active", True) for s in before.get("schedules") or []}
        is_now = {_schedule_key(s["schedule"]): s["active"] for s in now.get("schedules") or []}
        for schedule in deployment.get("schedules") or []:
            key = _schedule_key(schedule)
            if key in was and key in is_now and is_now[key] != was[key]:
                schedule["active"] = is_now[key]
                kept.append(f"{name}: schedule {'on' if is_now[key] else 'off'} as set in the UI")
    return result, kept
