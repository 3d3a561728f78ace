"""Process set-up shared by `crowdclust run` and `make demo`: a project-local Prefect home and cache.

Must run before `prefect` is imported: Prefect reads these settings at import time. Only defaults
are set (an exported PREFECT_API_URL, PREFECT_HOME or PREFECT_RESULTS_LOCAL_STORAGE_PATH wins), so a real
server or a shared result store is used when configured.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.settings import Settings

if TYPE_CHECKING:  # the CLI stays light: pandas is imported only by the commands that run flows
    from tasks.stages import CatalogueInfo, RunSummary


# Prefect's setting for the folder of persisted results, and its older alias (either may be exported).
STORAGE_SETTINGS = ("PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")

# How often a flow run sends a heartbeat (Prefect's minimum). The service's automation marks a run
# Crashed after three silent periods, so every process that runs flows against the service's server
# (its workers, and `crowdclust run` with the service's PREFECT_API_URL) must beat at this rate:
# Prefect's own default, 180 s, would have a healthy run marked Crashed after 90 s.
HEARTBEAT_SECONDS = 30


def prepare_prefect_env() -> None:
    """Project-local PREFECT_HOME and result folder, no telemetry, a patient ephemeral-server start-up,
    heartbeats at the rate the service's crash detection expects."""
    settings = Settings()
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    if not any(os.environ.get(name) for name in STORAGE_SETTINGS):
        os.environ[STORAGE_SETTINGS[0]] = str(settings.results_dir)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))


# What a file system error means for the user, by its errno.
FILE_TROUBLES = {
    errno.EACCES: "this user may not write there: see the folder's owner and mode",
    errno.EPERM: "this user may not write there: see the folder's owner and mode",
    errno.EROFS: "the file system is mounted read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would pass this process's file size limit (ulimit -f)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "a folder on the way is gone",
}


def said(error: OSError) -> str:
    """`Permission denied (this user may not write there: ...)`: the system's words and what they mean."""
    why = FILE_TROUBLES.get(error.errno or 0)
    return f"{error.strerror or type(error).__name__}{f' ({why})' if why else ''}"


def _cannot_write(folder: Path) -> str | None:
    """Why this process cannot make files in `folder` (or make it: its nearest existing parent,
    then named), or None. A file really made and dropped, as the run would: a mode, a read-only
    mount or an ACL."""
    existing = folder
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return said(error) if existing == folder else f"{existing}: {said(error)}"
    return None


def unwritable_folder(run_dir: Path | None, server: bool = True) -> str | None:
    """The first folder a run writes that this process cannot, what it is, why, and what to do; None
    when it can write them all: the Prefect home of a private server (`server`: one will start), the
    folder of finished stages' results and `run_dir`, the run's folder (None: no run, as with
    `--close`: neither).

    Run from a folder the user may not write in (`/` as a user, a read-only checkout), the command
    ended in a `PermissionError` traceback from its Prefect server's log file; with PREFECT_HOME
    elsewhere, the flow started and failed on `Permission denied: 'runs'`, naming no folder. The run's
    own folder, not `runs_dir`: a run resumed in its folder of its own needs no new one beside it.
    """
    settings = Settings()
    folders: list[tuple[Path, str, str]] = []
    writable = "a folder you can write to"
    project = (
        f"run from {writable} (the project folder is the working directory), or set CROWDCLUST_PROJECT_DIR "
        "to one"
    )
    if server and not os.environ.get("PREFECT_API_URL"):
        home = Path(os.environ.get("PREFECT_HOME") or settings.prefect_home).expanduser()
        fix = project if home == settings.prefect_home else f"set PREFECT_HOME to {writable}"
        folders.append((home, "the Prefect home", fix))
    stored = next((os.environ[name] for name in STORAGE_SETTINGS if os.environ.get(name)), None)
    if run_dir is not None and stored and not os.environ.get("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"):
        results = Path(stored).expanduser()
        fix = project if results == settings.results_dir else f"set {STORAGE_SETTINGS[0]} to {writable}"
        folders.append((results, "where finished stages are kept", fix))
    if run_dir is not None:
        fix = f"give runs_dir in the config {writable}, or run from one (a relative runs_dir is under it)"
        folders.append((run_dir.absolute(), "the run's folder (in runs_dir)", fix))
    for folder, what, fix in folders:
        why = _cannot_write(folder)
        if why is not None:
            return f"cannot write in {folder}, {what}: {why}: {fix}; nothing was created or paid"
    return None


def prefect_password_refused(timeout: float = 10.0) -> str | None:
    """Why the Prefect server PREFECT_API_URL names refuses this process, when it asks for a password
    (HTTP 401) that PREFECT_API_AUTH_STRING does not give; None when it lets it in, or is not set or
    does not answer (what then goes wrong is said where it does).

    Against a service started with a password (`make up AUTH=1`), `crowdclust run` without it ended
    with `no Toloka token: set TOLOKA_TOKEN or create a Prefect Secret block
    'crowdclust-local-token' (PrefectHTTPStatusError)`: the block existed; the server had refused to
    show it.
    """
    import httpx

    from crowdclust.service.config import API_AUTH_ENV, basic_auth

    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api:
        return None
    password = os.environ.get(API_AUTH_ENV)
    headers = basic_auth(password)
    try:
        answer = httpx.post(f"{api}/flows/filter", json={"limit": 1}, headers=headers, timeout=timeout)
    except httpx.HTTPError:
        return None
    if answer.status_code != 401:
        return None
    if password:
        return (
            f"the Prefect server at {api} refused the password in PREFECT_API_AUTH_STRING (401 "
            "Unauthorized): set it to the server's (a service's own is in its folder's prefect-auth); "
            "nothing was created or paid"
        )
    return (
        f"the Prefect server at {api} asks for a password (401 Unauthorized): set PREFECT_API_AUTH_STRING "
        "to it (a service started with `make up AUTH=1` keeps it in its folder's prefect-auth); nothing "
        "was created or paid"
    )


def link_service_runs_folder(state_dir: Path | None = None) -> str | None:
    """Link the run's files over http when `crowdclust run` talks to the local service's server.

    The service's workers get CROWDCLUST_RUNS_URL/_DIR from the service; a run started with
    `crowdclust run` and the service's PREFECT_API_URL wrote its report into the same served
    folder, yet its `run-report` artifact said "not served over http here". When PREFECT_API_URL is
    the remembered service's (`.service/service.json`) and its file server answers, the same two
    variables are set for this process. The service folder is CROWDCLUST_SERVICE_DIR's, as for `make
    status`, else the checkout's `.service/`. Returns the runs URL so linked, else None (an explicit
    setting, another server or a service that is down leaves everything as it was).
    """
    from crowdclust.service.config import RUNS_URL_ENV, SERVICE_DIR_ENV, ServiceConfig, load
    from crowdclust.service.processes import answers

    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    # The service folder as `make up`, `make status` and `make down` find it: CROWDCLUST_SERVICE_DIR,
    # else the checkout's `.service/` (a service kept elsewhere was never found, and its runs' reports
    # were "not served over http here" while its file server served them).
    state = state_dir or Path(os.environ.get(SERVICE_DIR_ENV) or ServiceConfig.state_dir)
    if not api or os.environ.get(RUNS_URL_ENV) or not (state / "service.json").exists():
        return None
    try:
        cfg = load(state)
    except RuntimeError:  # an unreadable service.json: not this command's business
        return None
    if cfg.api_url != api or not answers(cfg.health_url("files"), timeout=1.0):
        return None
    # As the service's own runs link theirs: at the address teammates reach on the network.
    os.environ.update(cfg.link_env())
    return cfg.shared_runs_url


def share_toloka_rate_limits() -> bool:
    """Take the server's Toloka rate limits when `crowdclust run` talks to a server of one's own.

    The service's workers take a slot of the Prefect limit `toloka-api-<environment>` for every Toloka
    request, so all their runs share the requester's quota; a `crowdclust run` pointed at the same
    server (a second user of the service, with the same token) throttled only in its own process, at
    none for the emulator: two users' runs against an emulator limited to 20 requests/s got 148 429s
    where two deployment runs got none. With PREFECT_API_URL set (no private server) and
    CROWDCLUST_TOLOKA_RATE_LIMIT not given, it is turned on; a server without the limits costs a
    lookup a minute and leaves the process's own bucket in charge (`tasks.toloka_rate.throttle`).
    Returns whether it is on.
    """
    from crowdclust.service.config import RATE_LIMIT_ENV

    if os.environ.get("PREFECT_API_URL") and RATE_LIMIT_ENV not in os.environ:
        os.environ[RATE_LIMIT_ENV] = "true"
    return Settings().toloka_rate_limit


def _intruder_detail(summary: RunSummary) -> str:
    """The figure per image of the clusters (the HITs' figure weighs every host cluster alike) and
    how often one answer alone named the intruder (the HITs' figure aggregates five or so)."""
    evaluated = summary.intruders
    if evaluated is None:
        return ""
    figures = (("per image", evaluated.image_accuracy), ("single answers", evaluated.answer_accuracy))
    parts = [f"{name} {value:.3f}" for name, value in figures if value is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _earlier_pools(summary: RunSummary) -> str:
    """The run key's pools outside this result, when they cost anything (see `Cost.by_run_key`)."""
    earlier = summary.cost.earlier_pools
    if earlier < 0.005:
        return ""
    # A catalogue's `spent` is this run's; the rest of its key is its earlier runs' rounds.
    whose = "earlier runs of the catalogue" if summary.catalogue is not None else "pools of earlier settings"
    in_all = f"${summary.cost.by_run_key:,.2f} under run key {summary.run_key} in all"
    return f"; {in_all}, ${earlier:,.2f} of it for {whose}"


def _paid_before(summary: RunSummary) -> str:
    """How much of the cost this run added, when earlier runs of the key paid part of it."""
    cost = summary.cost
    if cost.added is None or cost.paid_before < 0.005:
        return ""
    return f", ${cost.added:,.2f} of it in this run (the rest in earlier runs of key {summary.run_key})"


def describe(summary: RunSummary) -> str:
    """The few lines a person wants after a run."""
    from tasks.stages import sizes_shown, truth_share  # loaded by the run already; the CLI starts light

    def num(value: float | None, spec: str = ".3f") -> str:
        return "n/a" if value is None else format(value, spec)

    estimate, again = summary.cost.estimate, summary.second_round
    sizes = list(summary.cluster_sizes.values())
    singles = sum(size == 1 for size in sizes)  # as `crowdclust aggregate` counts them
    lone = f"; {singles} of them a single item" if singles else ""
    lines = [
        f"clusters:           {summary.clusters} (sizes {sizes_shown(sizes)}{lone})",
        f"ARI / NMI vs truth: {num(summary.ari)} / {num(summary.nmi)}"
        + truth_share(summary.metrics, sum(sizes)),
        f"intruder accuracy:  {num(summary.intruder_accuracy)}" + _intruder_detail(summary),
        f"cost:               ${num(summary.cost.spent, '.2f')} spent"
        + (f" (estimate ${estimate.total:,.2f})" if estimate else "")
        + _paid_before(summary)
        + _earlier_pools(summary)
        # Last: in the middle, ", $2.60 of it in this run" read as part of the warning.
        + (f"; {summary.cost.over_estimate_text()}" if summary.cost.over_estimate is not None else ""),
        *([f"exam:               {summary.exam.describe()}"] if summary.exam else []),
        f"wall time:          {num(summary.wall_seconds, '.1f')} s (flow)"
        + (f", over {summary.attempts.describe()}" if summary.attempts else ""),
        f"report:             {summary.report}",
        f"summary:            {summary.summary}",
    ]
    if again is not None:
        lines.insert(1, f"second round:       {again.describe()}")
    if summary.catalogue is not None:
        lines.insert(0, f"catalogue:          {_catalogue_line(summary.catalogue)}")
    # Last, as `crowdclust aggregate` prints them: in the log they were among a hundred other lines.
    lines += [f"warning:            {warning}" for warning in summary.aggregation.warnings]
    return "\n".join(lines)


def _catalogue_line(info: CatalogueInfo) -> str:
    """A catalogue run in a line: what it labelled, what waits, how many pools the clusters come from."""
    labelled = f"{info.new_items:,} new, labelled in round {info.round}" if info.round else "nothing new"
    waiting = f"; {info.waiting:,} wait for the next run" if info.waiting else ""
    pools = len(info.round_pools)
    return f"{info.n_items:,} images ({labelled}{waiting}); clusters from {pools} pool{'s' * (pools != 1)}"
