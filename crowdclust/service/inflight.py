"""The flow runs a `down` would interrupt, so that it can say so before it stops anything.

On a Prefect server a team shares, anyone with the service's folder can `make down`: the workers'
flow runs are stopped (they crash, closing their pools; a Retry resumes them) and the users'
`crowdclust run`s lose the emulator and the server under them. Nothing paid is lost, but hours of a
crowd's work stop, and the person who stopped them used to learn of it from the others. `down` asks
the server first, names what would stop, and asks (or, without a terminal, refuses) before it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from crowdclust.service.config import ServiceConfig
from crowdclust.service.processes import answers

IN_FLIGHT = ("PENDING", "RUNNING", "CANCELLING")
"""State types of a run that is doing something now (a Scheduled run only starts after `up`)."""
WHO_TAG = "by "
"""The prefix of the tag a `crowdclust run`'s flow runs carry (`by USER@HOST`)."""
SHOWN = 50
"""Runs fetched and named at most: past that, `down` says how many more there are."""


@dataclass(frozen=True)
class RunInFlight:
    """One flow run doing something now, as `down` names it."""

    name: str
    state: str
    deployment: str | None
    who: str | None

    def line(self) -> str:
        """`name (State; deployment X)` or `name (State; crowdclust run by USER@HOST)`."""
        source = f"deployment {self.deployment}" if self.deployment else "crowdclust run"
        if self.who:
            source += f" {self.who}"
        return f"{self.name} ({self.state}; {source})"


@dataclass(frozen=True)
class InFlight:
    """The server's answer: the runs (at most `SHOWN`) and how many there are in all."""

    runs: list[RunInFlight]
    total: int


def runs_in_flight(cfg: ServiceConfig, timeout: float = 10.0) -> InFlight | None:
    """The flow runs on the service's server that are pending, running or being cancelled; None when
    the server does not answer (nothing of it can be interrupted then, or nothing can be known)."""
    import httpx

    if not answers(cfg.health_url("server")):
        return None
    # Top-level runs only: a run's sub-flows (labelling, aggregation, evaluation) stop with it.
    body = {
        "flow_runs": {"state": {"type": {"any_": list(IN_FLIGHT)}}, "parent_task_run_id": {"is_null_": True}}
    }
    try:
        with httpx.Client(base_url=cfg.api_url, headers=cfg.api_headers(), timeout=timeout) as api:
            total = api.post("/flow_runs/count", json=body).raise_for_status().json()
            if not total:
                return InFlight([], 0)
            found = api.post("/flow_runs/filter", json={**body, "limit": SHOWN, "sort": "START_TIME_DESC"})
            runs = found.raise_for_status().json()
            ids = sorted({r["deployment_id"] for r in runs if r.get("deployment_id")})
            names = {}
            if ids:
                deployments = api.post("/deployments/filter", json={"deployments": {"id": {"any_": ids}}})
                names = {d["id"]: d["name"] for d in deployments.raise_for_status().json()}
    except (httpx.HTTPError, ValueError):
        return None
    return InFlight(
        [
            RunInFlight(
                name=run["name"],
                state=(run.get("state") or {}).get("name") or run["state_type"].title(),
                deployment=names.get(run.get("deployment_id") or "", run.get("deployment_id")),
                who=next((tag for tag in run.get("tags") or [] if tag.startswith(WHO_TAG)), None),
            )
            for run in runs
        ],
        total,
    )


def what_stops(found: InFlight, cfg: ServiceConfig, forced: bool = False) -> list[str]:
    """The lines `down` says about the runs it would interrupt, or does (`forced`), and how each
    comes back."""
    verb = "interrupted" if forced else "would be interrupted"
    lines = [f"{found.total} flow run(s) on {cfg.ui_url} {verb}:"]
    lines += [f"  {run.line()}" for run in found.runs]
    if found.total > len(found.runs):
        lines.append(f"  ... and {found.total - len(found.runs)} more (the UI's Runs page lists them)")
    lines.append(
        "Stopped, each ends Crashed, closing its pools; nothing paid is lost. After `make up`, a "
        "deployment's run resumes with Retry in the UI, a `crowdclust run` with the same command again."
    )
    return lines
