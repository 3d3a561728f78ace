"""`crowdclust run CONFIG.yaml [--env local|sandbox|production] [--catalogue]`: run the pipeline flow
for a config, or with `--catalogue` the growing-catalogue flow (its next round) under the catalogue key.

Prefect is imported inside the command so the root CLI stays light (`crowdclust aggregate` must not
pay for it).

What the user sees when it goes wrong is one `error:` line and an exit code:

- 2: the config or the data (dataset, HIT size, exam suites, overlap rules, budget, the account's
  balance), the token: checked before the stage they concern creates or pays anything (a budget
  refusal of the evaluation comes after the labelling it follows was paid, and keeps it);
- 1: the run failed (platform unreachable, the run key busy, the platform lost the run's
  objects, the spend guard closed the main pool, ...): the line says what to do; when it was the
  Prefect server that failed (so no hook could close the run's pools), the command closes them;
- 130 / 143 / 129: interrupted by Ctrl-C / SIGTERM / SIGHUP (the terminal closed); the run's open
  pools were closed first.

`--debug` shows the traceback as well, and Prefect's log lines on the console keep theirs (without
it they are printed without: the flow run's log in the UI has them).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from tasks.params import PipelineParams
    from tasks.toloka_api import ApiError, StoppedAnswering


class Env(StrEnum):
    local = "local"
    sandbox = "sandbox"
    production = "production"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C so that the flow run ends Crashed and
    its hooks run. A closed terminal (SIGHUP) would otherwise kill the run where it stands and leave
    its pools open for the crowd to finish, with nobody gating the exam."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOPS_SEEN: list[int] = []  # the stop signals this process got while its run went on


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """The first stop raises; the later ones are only noted, so that none cuts short the closing of
    the run's pools that the first one began (the flow run's hook, then `_interrupted`).

    Raised each time, a Ctrl-C pressed again while the first one's closing waited on Toloka
    interrupted it: the command ended with exit 130 and no `error:` line, and the main pool and the
    training stayed open for the crowd (9 presses a quarter of a second apart, 300 ms a request).
    `kill -9` (or Ctrl-\\) still stops the command at once, and leaves the pools open.
    """
    STOPS_SEEN.append(signum)
    if len(STOPS_SEEN) > 1:
        if len(STOPS_SEEN) == 2:  # os.write: no buffered I/O inside a signal handler
            os.write(2, b"stopping: the run's pools are being closed first, then the command exits\n")
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _catch_stops() -> dict[int, Any]:
    """SIGTERM and SIGHUP raise `Terminated`, Ctrl-C KeyboardInterrupt as ever, each noted in
    STOPS_SEEN; returns the handlers to put back. A SIGHUP that is ignored (`nohup`: the run is meant
    to outlive the terminal) stays ignored, and so does a SIGINT (a background job of a shell).

    Noted, because the interrupt does not always come out as one: a Ctrl-C just as a stage began came
    out of Prefect's task engine as `ValueError: Task run is not set`, and the command ended with
    exit 1, `error: ValueError: ... Fix the cause and run the same command again`, where it says
    that it was interrupted, which pools it closed, and exits 130 (1 time in 3 at that moment).
    """
    STOPS_SEEN.clear()
    wanted = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        wanted.append(signal.SIGHUP)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        wanted.append(signal.SIGINT)
    return {signum: signal.signal(signum, _raise_terminated) for signum in wanted}


RESUME = "Fix the cause and run the same command again: finished stages are reused"
SAYS_WHAT_TO_DO = re.compile(r"run the same command again|retry the flow run", re.IGNORECASE)


def with_resume(message: str) -> str:
    """`message` with RESUME appended, unless it already says to run the same command again: a
    timed-out wait's error ended '... Run the same command again (or Retry the flow run), with a
    larger wait.timeout_seconds ...: nothing is paid twice. Fix the cause and run the same command
    again: finished stages are reused', two pieces of advice where one was meant."""
    return message if SAYS_WHAT_TO_DO.search(message) else f"{message}. {RESUME}"


def refused(error: ApiError) -> str:
    """What a refused Toloka request says, with what it refused: toloka-kit's `ApiError.message` is
    only the headline (`Validation failed`); the fields and their reasons are in its `payload`, the
    request in its `response`, and `find_or_create` notes the object it was creating. Before, the line
    ended `(400 VALIDATION_ERROR: Validation failed). Fix the cause and ...` with no cause to fix (an
    exam pool's `assignment_max_duration_seconds: 0`)."""
    details = []
    if isinstance(error.payload, dict):
        for field, reason in error.payload.items():
            said = (reason.get("message") or reason.get("code")) if isinstance(reason, dict) else reason
            details.append(f"{field}: {said}" if said else str(field))
    try:  # httpx's Response.request raises RuntimeError when the response was built without one
        request = error.response.request  # type: ignore[union-attr]
        what = f" ({request.method} {request.url.path})"
    except (AttributeError, RuntimeError):
        what = ""
    why = f"; {'; '.join(details)}" if details else ""
    doing = "".join(f" {note}" for note in getattr(error, "__notes__", ()))
    return f"Toloka refused a request{doing}{what}: {error.status_code} {error.code}: {error.message}{why}"


def where_the_token_was_sought(error: Exception) -> str:
    """A missing token's message, with the Prefect home whose Secret blocks `crowdclust run` read.

    That home is the project folder's, and the project folder is the working directory: a user who ran
    `crowdclust token save` in the checkout and `crowdclust run` in the folder of their own config was
    told to create the block they had just created (`no Toloka token: set TOLOKA_TOKEN or create a
    Prefect Secret block 'toloka-token' (ValueError)`), with nothing to say where it had been looked for.
    """
    from crowdclust.private_server import PRIVATE
    from tasks.toloka_api import MissingTokenError, TokenRefused

    if (
        not isinstance(error, MissingTokenError)
        or isinstance(error, TokenRefused)
        or not os.environ.get(PRIVATE)
    ):
        return str(error)
    return (
        f"{error}; looked in the Prefect home {os.environ.get('PREFECT_HOME')}, the project folder's "
        "(the working directory, unless CROWDCLUST_PROJECT_DIR or PREFECT_HOME says otherwise): run "
        "from the folder where `crowdclust token save` ran, or set CROWDCLUST_PROJECT_DIR to it"
    )


def file_trouble(error: BaseException, run_key: str) -> str | None:
    """A file the run could not write or read, as one sentence with what to do; None for other errors.

    A run folder made read-only while the crowd answered ended the run with `error: PermissionError:
    [Errno 13] Permission denied: 'runs/demo-shoes__k/.attempts.json.71d367f8.tmp'`: a relative
    path, a temporary file's name, and no word of the answers paid for (they are on Toloka, and the
    same command exports them once the folder can be written).
    """
    if not isinstance(error, OSError) or not error.filename:
        return None
    from crowdclust.runtime import said

    path = os.path.abspath(os.fsdecode(error.filename))
    return (
        f"{path}: {said(error)}. What was paid for stays on Toloka under run key {run_key}: once the folder "
        "can be written, run the same command again: finished stages are reused and nothing is paid twice"
    )


LOW_DISK = 64 * 2**20  # bytes free under which the Prefect home's disk is said to be full


def prefect_refusal(error: BaseException) -> str | None:
    """A Prefect server's error answer in a few words (`500 Internal Server Error on POST
    /api/artifacts/`), or None for other errors. Prefect's own text is the whole URL and a link to
    a page on HTTP status codes."""
    from prefect.exceptions import PrefectHTTPStatusError

    if not isinstance(error, PrefectHTTPStatusError):
        return None
    response = error.response
    request = f"{response.request.method} {response.request.url.path}"
    return f"{response.status_code} {response.reason_phrase} on {request}"


def low_disk() -> str:
    """`; the disk that holds ... has N MB free ...` when the private server's home (PREFECT_HOME,
    where its database is) is nearly full.

    A full disk under `crowdclust run`'s own server made it answer 500 to every write, and the run
    ended with Prefect's `PrefectHTTPStatusError: Server error '500 Internal Server Error' for url
    ...`: nothing said what was wrong (its log could not be written either)."""
    import shutil

    from crowdclust.private_server import PRIVATE

    home = os.environ.get("PREFECT_HOME")
    if not home or not os.environ.get(PRIVATE):
        return ""
    try:
        free = shutil.disk_usage(home).free
    except OSError:
        return ""
    if free >= LOW_DISK:
        return ""
    return f"; the disk that holds its database ({home}) has {free / 1e6:.1f} MB free: make room there"


def _prefect_failed(params: PipelineParams, what: str) -> str:
    """The line for a run whose Prefect server failed or went silent mid-run: what it did, a full disk
    under it, and what became of the run's pools.

    The run could not record its end, so Prefect never ran the hook that closes its pools: they stayed
    open for the crowd (a main pool still open after the command had exited). The command closes them
    itself, as after a Ctrl-C."""
    api = os.environ.get("PREFECT_API_URL", "")
    done = _close_left_open(params)
    return (
        f"the Prefect server at {api} failed the run ({what}){low_disk()}; "
        f"{done}. Run the same command again once it works: finished stages are reused and nothing "
        "paid is lost"
    )


def _silent(params: PipelineParams, error: Exception) -> str:
    """A failure's line; for Prefect's API gone silent, `_prefect_failed`'s, and for Toloka gone
    silent, `_toloka_silent`'s (the pools closed here in both)."""
    from tasks.toloka_api import StoppedAnswering

    if isinstance(error, StoppedAnswering) and error.prefect_api:
        return _prefect_failed(params, f"stopped answering: {error.cause}")
    if isinstance(error, StoppedAnswering) and error.cause:
        return _toloka_silent(params, error)
    return str(error)


def _toloka_silent(params: PipelineParams, error: StoppedAnswering) -> str:
    """The line for a run that Toloka stopped answering mid-run, after the command closed its pools.

    The run's hook tries to close them while Toloka is still silent, and fails. Toloka down for about
    100 s mid-wait: the run ended saying its pools "were closed if Toloka let them be", and when
    Toloka came back the main pool and training were still open, answered and paid for ($4.45 ->
    $6.34 in 5 s on the emulator) with nobody watching. The command tries again here, once more with
    backing off, and says what it closed, or that they may be open and how to close them."""
    done = _close_left_open(params)
    return (
        f"{error.where} stopped answering ({error.cause}) after the stage's retries; {done}. Check that "
        "it runs, then run the same command again: finished stages are reused and nothing paid is lost"
    )


def _run_folder(params: PipelineParams) -> Path:
    """The folder the run writes its files in (`RunFolder.of`: its own, when another key holds
    `runs/<name>/`)."""
    from tasks.run_folder import RunFolder

    return RunFolder.of(params).root


def _fail(message: str, code: int, debug: bool) -> typer.Exit:
    if debug:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


CLOSING_ATTEMPTS = 6  # of the whole close, 1 + 2 + 4 + 8 + 8 s apart, after a 429 or a 5xx


def _close_open(params: PipelineParams) -> list[str]:
    """Close every open pool and training of the run key, holding its lock (never a live run's).

    The command's close is the last one a stopped run gets, so it outlasts a storm of 429s: its
    client backs off (toloka-kit: again at once, then after 4 s and 8 s) and the close is tried again
    as a whole (`close_with_retries`, which gives up at once on a host that does not answer). With
    one quick retry, under the emulator's limit of 5 requests a second and 30% faults, a Ctrl-C's
    close failed every time (the hooks' and the command's), and the main pool of a 1,000-image run
    stayed open with 900 answers to pay for.
    """
    from flows.hooks import close_with_retries
    from tasks.run_lock import run_lock
    from tasks.toloka_api import RunRegistry, make_client

    key = params.resolved_run_key
    with run_lock(params.toloka, key):
        registry = RunRegistry(make_client(params.toloka, retries=3), key)
        return close_with_retries(registry, attempts=CLOSING_ATTEMPTS)


def _close_left_open(params: PipelineParams) -> str:
    """Close what a stopped or failed run left open (its hook may have too; closing twice is a no-op)."""
    key = params.resolved_run_key
    try:
        closed = _close_open(params)
    except Exception as exc:  # the platform may be what failed; say so, never hide the interruption
        return (
            f"could not close the pools of run key {key} ({type(exc).__name__}): they may still be open, "
            "answered and paid for; once Toloka answers, close them with the same command and --close"
        )
    if not closed:  # the flow run's crash hook got there first: "none was left open" read as nothing
        return f"the pools and trainings of run key {key} are closed"
    return _closed(key, closed)


def who() -> str:
    """The tag a `crowdclust run`'s flow runs carry: `by USER@HOST`.

    On a Prefect server several people use, the Runs page showed two users' command-line runs alike
    (no deployment, no worker): only the run key told them apart, never whose they were. A
    deployment's run is the service's and carries no such tag.
    """
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        user = str(os.getuid())
    return f"by {user}@{socket.gethostname()}"


def _interrupted(params: PipelineParams, signum: int, debug: bool) -> typer.Exit:
    """A run stopped by `signum`: what was closed, how to resume, exit 128 + the signal's number."""
    done = _close_left_open(params)
    message = f"interrupted by {signal.Signals(signum).name}: {done}; run the same command again to resume"
    return _fail(message, 128 + signum, debug)


def _closed(key: str, closed: list[str]) -> str:
    """What closing the run key's open pools and trainings did, in one sentence."""
    if not closed:
        return f"no pool or training of run key {key} was left open"
    return f"closed {', '.join(closed)} of run key {key}"


def _token_in_environment() -> bool:
    """TOLOKA_TOKEN is set (not empty): no Secret block, so no Prefect API, is needed to read it."""
    from tasks.toloka_api import BadToken, token_in_environment

    try:
        return token_in_environment() is not None
    except BadToken:  # set, but no request could send it: the run's `error:` line says so, exit 2
        return True


def _close_only(params: PipelineParams, debug: bool, catalogue: bool = False) -> typer.Exit:
    """`--close`: stop the crowd's work on a run that died where nothing could close its pools
    (`kill -9`, a lost machine), without resuming it. Refused while a live run holds the key."""
    from tasks.run_lock import RunKeyBusy

    key = params.resolved_run_key
    try:
        closed = _close_open(params)
    except RunKeyBusy as error:
        return _fail(f"{error}. A live run closes its own pools when stopped (Ctrl-C or SIGTERM)", 1, debug)
    except Exception as error:
        return _fail(
            f"could not close the pools of run key {key} ({type(error).__name__}: {error})", 1, debug
        )
    resume = f"; run {'with --catalogue and ' * catalogue}without --close to resume it"
    typer.echo(_closed(key, closed) + (resume if closed else _unknown_key(params, catalogue)))
    return typer.Exit(0)


def _unknown_key(params: PipelineParams, catalogue: bool = False) -> str:
    """When the key has no object on the account, the keys of the name and seed that do: a derived
    key follows the dataset's images, so `--close` after the file changed looked at a key nobody
    used and said only that nothing of it was open. A catalogue's key is its name and seed, never
    the images: it is only said to be unknown."""
    from tasks.toloka_api import RunRegistry, derived_run_keys, make_client

    client, key = make_client(params.toloka, retries=1), params.resolved_run_key
    if RunRegistry(client, key).projects():
        return ""
    if catalogue:
        return f" (catalogue key {key} has no Toloka object on this account: give its key with --run-key)"
    others = [other for other in derived_run_keys(client, params.name, params.seed) if other != key]
    listed = f"; keys of {params.name} and seed {params.seed} that do: {', '.join(others)}" if others else ""
    grown = params.default_catalogue_key  # a growing catalogue's objects: `--catalogue --close`
    if grown != key and RunRegistry(client, grown).projects():
        listed += f"; the catalogue key {grown} does: close it with --catalogue --close"
    # Only a derived key follows the images: a mistyped --run-key was told it did.
    origin = "it follows the dataset's images"
    if params.run_key is not None:
        origin = "it is the key given (--run-key, or run_key in the config): check its spelling"
    return (
        f" (run key {key} has no Toloka object on this account: {origin}{listed}; give the one to close "
        "with --run-key)"
    )


def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/demo-shoes/pipeline.yaml.")],
    env: Annotated[
        Env | None,
        typer.Option("--env", help="Toloka environment (overrides the config's toloka.environment)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Toloka/emulator URL (overrides toloka.url).")
    ] = None,
    run_key: Annotated[
        str | None,
        typer.Option(
            "--run-key",
            help="Tag of the Toloka objects; same key = resume the same objects. A key other than the "
            "default writes its own folder, runs/<name>__<key>/.",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Ignore cached stage results (e.g. after the platform lost this run's objects): every "
            "stage runs again and looks its objects up by tag, creating those that are gone.",
        ),
    ] = False,
    close: Annotated[
        bool,
        typer.Option(
            "--close",
            help="Only close the run key's open pools and trainings, then exit (after a kill -9 or a lost "
            "machine left them open for the crowd); run without it to resume.",
        ),
    ] = False,
    catalogue: Annotated[
        bool,
        typer.Option(
            "--catalogue",
            help="Run the growing-catalogue flow: label only the images that no completed round has "
            "clustered, under the catalogue key (--run-key, default <name>-s<seed>), and cluster all of "
            "them; what the catalogue deployment does on its schedule, for cron or a shell.",
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks with errors.")] = False,
) -> None:
    """Run the crowd-clustering flow end to end. The token comes from TOLOKA_TOKEN or a Secret block."""
    from crowdclust.runtime import (
        describe,
        link_service_runs_folder,
        prefect_password_refused,
        prepare_prefect_env,
        share_toloka_rate_limits,
        unwritable_folder,
    )

    prepare_prefect_env()
    link_service_runs_folder()
    share_toloka_rate_limits()
    if fresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    from tasks.params import ConfigError, load_params

    overrides: dict[str, Any] = {}
    if env is not None:
        overrides["toloka"] = {"environment": env.value}
        if env is not Env.local and url is None:
            overrides["toloka"]["url"] = None  # real Toloka: toloka-kit's own endpoint
    if url is not None:
        overrides.setdefault("toloka", {})["url"] = url
    if run_key is not None:
        overrides["run_key"] = run_key
    try:
        params = load_params(config, overrides)
    except ConfigError as error:
        raise _fail(str(error), 2, debug) from None
    if catalogue:  # the key the flow runs under: what --close and an interruption close
        params = params.model_copy(update={"run_key": params.catalogue_key})
    # Before the Prefect server starts (its log goes to the Prefect home): what the run writes.
    server_needed = not (close and _token_in_environment())
    unwritable = unwritable_folder(None if close else _run_folder(params), server=server_needed)
    if unwritable is not None:
        raise _fail(unwritable, 2, debug)
    unauthorised = prefect_password_refused() if server_needed else None
    if unauthorised is not None:
        raise _fail(unauthorised, 2, debug)

    from crowdclust.console_logs import console_without_tracebacks
    from crowdclust.private_server import private_server
    from crowdclust.service.processes import StartupFailed

    # A server of its own, out of the terminal's reach: Ctrl-C must stop the run, not its Prefect API.
    # It starts now, while the checks below import the pipeline's modules. `--close` with the token in
    # TOLOKA_TOKEN needs none: closing pools asks only Toloka (and the run key's lock file).
    with private_server("run-server.log", needed=server_needed) as server:
        from tasks.budget import SpendGuardStopped
        from tasks.preflight import DATA_ERRORS, check_catalogue, check_run, warnings_of
        from tasks.run_lock import RunKeyBusy, RunLockUnusable, run_lock
        from tasks.toloka_api import (
            TRANSIENT,
            ApiError,
            DoesNotExistApiError,
            MissingTokenError,
            PlanChanged,
            PlatformUnreachable,
            StaleRunError,
            StoppedAnswering,
            probe,
            stopped_answering,
            token_in_environment,
        )

        try:
            # Before the token is tried: a user fixing the token still sees them.
            # Closing reads no images: a catalogue file being rewritten must not keep pools open.
            if not close:
                for warning in check_catalogue(params) if catalogue else check_run(params).warnings:
                    typer.echo(f"warning: {warning}", err=True)
            if not token_in_environment():  # a token in a Secret block is read from this server
                server.wait_ready()
            probe(params.toloka)  # within ~15 s for an unreachable URL, the server's start-up aside
        except (*DATA_ERRORS, MissingTokenError) as error:
            for warning in warnings_of(error):  # what holds whatever the plan: said before its refusal
                typer.echo(f"warning: {warning}", err=True)
            raise _fail(where_the_token_was_sought(error), 2, debug) from None
        except (PlatformUnreachable, StartupFailed) as error:  # StartupFailed: the private server
            raise _fail(str(error), 1, debug) from None

        if close:
            raise _close_only(params, debug, catalogue)

        previous = _catch_stops()
        try:
            server.wait_ready()  # at once when the token's Secret block needed it above
            with run_lock(params.toloka, params.resolved_run_key):  # a busy key fails before the flow loads
                from prefect import tags

                if catalogue:
                    from flows.catalogue import cluster_catalogue as the_flow
                else:
                    from flows.pipeline import crowdclust_pipeline as the_flow

                with contextlib.nullcontext() if debug else console_without_tracebacks(), tags(who()):
                    summary = the_flow(params)
        except KeyboardInterrupt as stop:
            signum = stop.signum if isinstance(stop, Terminated) else signal.SIGINT
            raise _interrupted(params, signum, debug) from None
        except (
            RunKeyBusy,
            RunLockUnusable,
            PlatformUnreachable,
            StaleRunError,
            SpendGuardStopped,
            PlanChanged,
            StoppedAnswering,
        ) as error:
            raise _fail(_silent(params, error), 1, debug) from None  # each message says what to do next
        except TRANSIENT as error:  # outside the flow (its own decorator turns these into the above)
            raise _fail(_silent(params, stopped_answering(error, params.toloka)), 1, debug) from None
        except (*DATA_ERRORS, MissingTokenError) as error:
            raise _fail(where_the_token_was_sought(error), 2, debug) from None
        except DoesNotExistApiError as error:  # toloka-kit's own text is five lines and a request id
            raise _fail(
                f"Toloka no longer has an object this run was using ({error.message}): it was lost "
                "mid-run (an emulator restarted without --db is a new, empty account). Run the same "
                "command again: what the platform still has is reused, and what is gone is made anew",
                1,
                debug,
            ) from None
        except ApiError as error:
            raise _fail(
                with_resume(refused(error)),
                1,
                debug,
            ) from None
        except Exception as error:  # the flow run has the traceback; show the reason and how to resume
            if STOPS_SEEN:  # the stop, come out as another error
                raise _interrupted(params, STOPS_SEEN[0], debug) from None
            trouble = file_trouble(error, params.resolved_run_key)
            if trouble is not None:
                raise _fail(trouble, 1, debug) from None
            refusal = prefect_refusal(error)
            if refusal is not None:
                raise _fail(_prefect_failed(params, refusal), 1, debug) from None
            raise _fail(with_resume(f"{type(error).__name__}: {error}"), 1, debug) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    typer.echo(describe(summary))
    sys.stdout.flush()
