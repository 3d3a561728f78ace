"""Provision the Prefect server and deploy prefect.yaml, in one process started with `up`.

`python -m crowdclust.service.deployer STATE_DIR [--force] [--parent PID]` reads the service's
remembered settings, then:

1. imports Prefect and the flows (the slow part: 5-12 s) while the server is still starting;
2. waits until the server answers;
3. provisions, when its inputs changed or the pool is missing: the process work pool `crowdclust`
   (Prefect's default job template, with `JOB_DEFAULTS`), the Secret block with the emulator
   token, one global rate limit per Toloka environment (`toloka-api-<env>`, shaped by
   `tasks.toloka_rate.limit_shape`: a small burst plus a decay, so that any one-second window sees
   at most `rate` requests across every run and worker), and for a results URL the
   RemoteFileSystem block workers use as result storage;
   then prints `PROVISIONED` so that `up` starts the workers;
4. deploys prefect.yaml when it or the flows changed, keeping the user's UI edits
   (`deployments.plan`), through Prefect's own `prefect deploy` command (in-process).

Every other line it prints is a message for the user. A separate process because Prefect must be
imported with the service's settings, whatever the calling process configured.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from crowdclust.service import deployments
from crowdclust.service.config import (
    HEARTBEAT_SECONDS,
    RESULTS_BLOCK,
    SUSPENDED_EVENT,
    TOKEN_BLOCK,
    WORK_POOL,
    ServiceConfig,
    load,
    read_secret_file,
)
from crowdclust.service.processes import answers
from tasks.toloka_rate import limit_name, limit_shape

PROVISIONED = "PROVISIONED"
# Defaults the service puts in the process work pool's job template (Prefect's default otherwise).
# stream_output off: a flow run's console goes to /dev/null instead of a pipe to its worker, so a
# worker that dies or is restarted does not take its running flow runs with it (they crashed on
# the broken pipe at their next console line). Their logs are where they always are: the Prefect
# API, so the UI and `prefect flow-run logs` show them.
JOB_DEFAULTS = {"stream_output": False}


def limits(cfg: ServiceConfig) -> dict[str, float]:
    """Rate-limit name -> Toloka requests per second (0: that environment is not throttled).

    The local emulator is not throttled unless it was started with a per-token limit: then its
    limit is three quarters of that, so runs stay under it. Throttling costs a Prefect API call per
    Toloka request, which is most of a run's requests when nothing needs protecting.
    """
    rates = dict(cfg.rates)
    if rates.get("local", 0.0) <= 0 and cfg.emulator_rate_limit:
        rates["local"] = round(0.75 * cfg.emulator_rate_limit, 3)
    return {limit_name(env): max(rate, 0.0) for env, rate in sorted(rates.items())}


def provision_key(cfg: ServiceConfig) -> str:
    """Changes whenever what `provision` creates would change (token, limits, storage, server)."""
    token = read_secret_file(cfg.token_file, "the emulator's token")
    parts = [WORK_POOL, JOB_DEFAULTS, TOKEN_BLOCK, hashlib.sha256(token.encode()).hexdigest(), limits(cfg)]
    parts += [cfg.results_location, cfg.api_url]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def provision(cfg: ServiceConfig) -> None:
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolCreate,
        WorkPoolUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        template = ProcessWorker.get_default_base_job_template()
        for name, value in JOB_DEFAULTS.items():
            template["variables"]["properties"][name]["default"] = value
        try:
            pool = client.read_work_pool(WORK_POOL)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # a worker created it meanwhile
                client.create_work_pool(
                    WorkPoolCreate(name=WORK_POOL, type="process", base_job_template=template)
                )
        else:
            variables = pool.base_job_template.get("variables", {}).get("properties", {})
            if any(variables.get(name, {}).get("default") != value for name, value in JOB_DEFAULTS.items()):
                client.update_work_pool(WORK_POOL, WorkPoolUpdate(base_job_template=template))
        for name, rate in limits(cfg).items():
            if rate <= 0:
                with contextlib.suppress(ObjectNotFound):  # switched off since the last `up`
                    client.delete_global_concurrency_limit_by_name(name)
                continue
            limit, decay = limit_shape(rate)
            try:
                current = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay)
                )
                continue
            if (current.limit, current.slot_decay_per_second) != (limit, decay):
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay)
                )
    Secret(value=read_secret_file(cfg.token_file, "the emulator's token")).save(TOKEN_BLOCK, overwrite=True)
    ensure_unresponsive_run_automation()
    if cfg.results_is_url:
        from prefect.filesystems import RemoteFileSystem

        RemoteFileSystem(basepath=cfg.results_location).save(RESULTS_BLOCK, overwrite=True)


UNRESPONSIVE = "crowdclust: crash unresponsive runs"
MISSED_HEARTBEATS = 3  # a run silent this many heartbeat periods is marked Crashed


def ensure_unresponsive_run_automation() -> None:
    """An automation that marks a RUNNING flow run Crashed once its heartbeats stop.

    A flow-run process that dies with its machine (or a worker killed with -9) cannot report its own
    crash, and the run would show Running forever, blocking nothing but misleading everyone. Flow runs
    of the service send a heartbeat event every HEARTBEAT_SECONDS (`env()` sets
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY); after MISSED_HEARTBEATS silent periods without a final state
    the server sets Crashed, and the run can be Retried from the UI (cached steps are kept).
    """
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    silence = HEARTBEAT_SECONDS * MISSED_HEARTBEATS
    # A server down longer than that hears no heartbeat either: its own outage reads as silence.
    message = (
        f"no heartbeat for {silence} s: the run's process is gone, or the Prefect server could not hear "
        "it (down or restarting). Retry it; a process still running refuses the Retry (its run key is "
        "busy) and reports its own end"
    )
    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={
            "prefect.flow-run.heartbeat",
            "prefect.flow-run.Completed",
            "prefect.flow-run.Failed",
            "prefect.flow-run.Cancelled",
            "prefect.flow-run.Crashed",
            # Suspend in the UI: the run's process ends by design and Resume starts it again.
            # Unexpected, a Suspended run was Crashed 90 s later and could no longer be resumed.
            # Its process beats on until its stage ends, so the worker says when it ended.
            "prefect.flow-run.Suspended",
            "prefect.flow-run.Paused",
            SUSPENDED_EVENT,
        },
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=silence),
    )
    try:
        existing = Automation.read(name=UNRESPONSIVE)
    except ValueError:  # not there yet
        existing = None
    if existing is not None:
        messages = [getattr(action, "message", None) for action in existing.actions]
        if messages == [message] and getattr(existing.trigger, "expect", None) == trigger.expect:
            return
        existing.delete()  # made by an earlier version (another message, or Suspended runs crashed)
    Automation(
        name=UNRESPONSIVE,
        description="Marks a flow run Crashed when its heartbeats stop (worker or machine lost).",
        trigger=trigger,
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=message,
            )
        ],
    ).create()


def deploy(path: Path) -> None:
    """`prefect --no-prompt deploy --all --prefect-file PATH`, in this process (flows already imported)."""
    from prefect.cli import app

    argv = sys.argv
    sys.argv = ["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(path)]
    try:
        app()
        code: Any = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    if code not in (0, None):
        raise RuntimeError(f"prefect deploy --prefect-file {path} failed (exit code {code})")


SERVER_WAIT_SECONDS = 180


def wait_for_server(cfg: ServiceConfig, parent: int | None) -> None:
    """Until the Prefect server answers; give up when it does not within SERVER_WAIT_SECONDS, or at
    once when the `up` that started this process (`parent`) is gone.

    An `up` killed while the server started (`kill PID`, a killed test) left this process waiting the
    full 180 s for a server nobody would start, holding the service folder's files open.
    """
    deadline = time.monotonic() + SERVER_WAIT_SECONDS
    while not answers(cfg.health_url("server")):
        if parent is not None and os.getppid() != parent:
            gone = f"the `up` that started this deployer (pid {parent}) ended"
            raise SystemExit(f"{gone} before the server answered")
        if time.monotonic() > deadline:
            late = f"did not answer within {SERVER_WAIT_SECONDS} s"
            raise SystemExit(f"the Prefect server at {cfg.api_url} {late}")
        time.sleep(0.2)


def main(state_dir: Path, force: bool, parent: int | None = None) -> None:
    cfg = load(state_dir)
    import prefect  # noqa: F401  (the slow imports, while the server starts)

    for module in deployments.entrypoint_modules(deployments.spec(cfg)):
        importlib.import_module(module)
    wait_for_server(cfg, parent)
    record = deployments.record(cfg)
    damaged = deployments.damaged_record(cfg)
    if damaged is not None:
        print(f"deployments: {damaged}", flush=True)
    key = provision_key(cfg)
    if record.get("provisioned") != key or not deployments.pool_exists(cfg):
        provision(cfg)
        record["provisioned"] = key
        deployments.save_record(cfg, record)
        names = ", ".join(f"{name} {rate:g}/s" for name, rate in limits(cfg).items() if rate > 0) or "none"
        print(f"provisioned: work pool {WORK_POOL}, Secret block {TOKEN_BLOCK}, rate limits {names}")
    print(PROVISIONED, flush=True)
    plan = deployments.plan(cfg, record, force)
    if plan is None:
        print("deployments: unchanged", flush=True)
        return
    deploy(plan.path)
    for note in plan.kept:
        print(f"deployments: kept {note}")
    print(f"deployments: {'re-applied as in prefect.yaml (FORCE)' if force else 'applied'} ({plan.count})")
    record.update(plan.record)
    deployments.save_record(cfg, record)


def _parent(args: list[str]) -> int | None:
    """`--parent PID`: the `up` process this deployer works for (it passes its own pid)."""
    return int(args[args.index("--parent") + 1]) if "--parent" in args else None


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--force" in sys.argv[2:], _parent(sys.argv[2:]))
