"""How a run ends short of completion: hooks that close the pools and trainings it left open, and
the overview of a run a stage stopped before it was done: for money, or a main pool that timed
out or closed (`overview_on_stop`).

Stateless on purpose: the hook rebuilds the run key from the flow run's parameters and has the
run's `RunRegistry` close every open pool/training tagged with it, so it also works for a process
that crashed mid-wait and was re-run, and never touches objects of other run keys. It closes only
while holding the run key's lock: when another live run of the same key holds it (this run failed
because the key was busy), that run's pools are left alone. Its hold is marked as a hook's, so that a
Retry pressed while a crashed run's hook still closes its pools waits for the hook.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler
from prefect.logging.loggers import flow_run_logger
from pydantic import ValidationError

from flows.run_names import by_run_key, run_key_of
from tasks import artifacts, budget, wait
from tasks.flow_wrapper import wraps_flow
from tasks.params import PipelineParams, endpoint
from tasks.run_lock import RunKeyBusy, flow_params, run_lock
from tasks.toloka_api import TRANSIENT, MissingTokenError, RunRegistry, make_client


def close_pools_hook(flow: Any, flow_run: Any, state: Any) -> None:
    log = flow_run_logger(flow_run, flow)
    raw = (flow_run.parameters or {}).get("params")
    if raw is None:
        return
    key = "K"
    try:
        params = raw if isinstance(raw, PipelineParams) else PipelineParams.model_validate(raw)
        key = run_key_of(flow.name, params)
        with run_lock(params.toloka, key, closing=True):
            # retries=3: toloka-kit sends a refused request again at once, then after 4 s and 8 s.
            # With one retry, under a limit of 2 requests a second, every try of the close got 2 of
            # its requests through and the main pool stayed open. A platform that never answered
            # this run gets one quick retry: the failure is said without waiting on it.
            retries = 1 if _unreachable_from_the_start(state) else 3
            closed = close_with_retries(RunRegistry(make_client(params.toloka, retries=retries), key))
        log.warning("%s", ended(flow_run, state, closed))
    except ValidationError:
        # Prefect refused the parameters before the flow ran (its state names the field): nothing was
        # opened. pydantic's text holds every refused value, and one may be a secret (a token given
        # as `toloka.token_secret_block` was logged here in full).
        log.warning("the run's parameters are not valid (its state says which): it opened nothing to close")
    except RunKeyBusy:
        log.warning("run key busy with another live run: its pools stay open")
    except MissingTokenError:
        log.warning("no usable Toloka token: nothing could have been opened, nothing to close")
    except TRANSIENT as exc:
        if _unreachable_from_the_start(state):
            # The run opened nothing; only an earlier attempt of the key may have left pools open.
            log.warning(
                "Toloka at %s did not answer, so this run opened nothing and could close nothing: if "
                "an earlier attempt of run key %s left pools open, they stay open until it answers; "
                "then Retry this run, or from a checkout `crowdclust run CONFIG --run-key %s --close`",
                endpoint(params.toloka) or params.toloka.environment,
                key,
                key,
            )
            return
        log.error(
            "could not close the run's pools (%s: %s): they may still be open, and the crowd answers "
            "them, paid, until they close. Once Toloka at %s answers, Retry this run (it goes on with "
            "them; Cancel it then to close them instead), or from a checkout: `crowdclust run CONFIG "
            "--run-key %s --close` with that URL and token",
            type(exc).__name__,
            exc,
            endpoint(params.toloka) or params.toloka.environment,
            key,
        )
    except Exception as exc:  # a hook must never hide the original failure
        log.error("could not close the run's pools: %s: %s", type(exc).__name__, exc)
    finally:
        send_logs_now()


def _unreachable_from_the_start(state: Any) -> bool:
    """Whether the run failed on its first request to Toloka, which did not answer (the flows'
    probe): the hook's "could not close the run's pools: they may still be open" read as if this
    run had opened some."""
    from tasks.toloka_api import PlatformUnreachable

    if isinstance(getattr(state, "data", None), PlatformUnreachable):  # a refusal returns it as data
        return True
    return f": {PlatformUnreachable.__name__}: " in f": {state.message or ''}"


def ended(flow_run: Any, state: Any, closed: list[str]) -> str:
    """The hook's line: how the run ended, what it closed (`pool 6, training 2`) and how to go on."""
    if state.is_paused():  # a wait saw a Suspend (`closed_when_suspended`)
        what = ", ".join(closed) or "nothing: none was open"
        return (
            f"run {flow_run.name} suspended: closed {what}. Resume goes on with the same pools and the "
            "answers already paid for (nothing is paid twice)"
        )
    # A top-level run ends after its stages and its sub-flows' hooks closed their pools: "none was
    # open" read as if nothing had been closed.
    why = " (its stages and sub-flows close their own)" if flow_run.parent_task_run_id is None else ""
    what = ", ".join(closed) or f"nothing: none was left open{why}"
    return f"run {flow_run.name} ended {state.type.value}: closed {what}{how_to_go_on(flow_run, state)}"


def how_to_go_on(flow_run: Any, state: Any) -> str:
    """What a top-level run cancelled or crashed can do next, for the end of its last line.

    A failed run's own error says how to go on; a cancelled or crashed one ended on the hook's
    "closed ..." line, and a user who cancelled to change something, or whose worker died, was not
    told that the run can go on where it stopped, with its pools and the answers already paid for.
    """
    if flow_run.parent_task_run_id is not None or not (
        state.is_cancelling() or state.is_cancelled() or state.is_crashed()
    ):
        return ""
    how = (
        "Retry this run"
        if flow_run.deployment_id is not None
        else "run the same command again (same config and run key)"
    )
    return f". To go on with the same pools and the answers already paid for (nothing is paid twice): {how}"


def send_logs_now() -> None:
    """Send the log lines Prefect still holds to its API before the hook returns.

    A flow-run process stopped from outside (the worker's or `make down`'s SIGTERM) marks its run
    Crashed, runs this hook, then sends itself the SIGTERM again under the default handler: it dies
    at once, without the exit-time flush of its log queue. The run's page then ended at its last poll,
    without "Crash detected", the hook, or which pools it closed. Lines logged after this go on as
    usual (the queue starts again).
    """
    with contextlib.suppress(Exception):  # never in the way of the hook's own outcome
        APILogHandler().flush()


def close_with_retries(registry: RunRegistry, attempts: int = 4) -> list[str]:
    """`close_open`, again after a 429 or a 5xx (closing is idempotent), at once if the host is down.

    A busy platform must not leave a failed run's pools open and paying; an unreachable one must
    not hold the failure report for minutes (the client tries a request 4 times over some 12 s).
    """
    for attempt in range(attempts):
        try:
            return registry.close_open()
        except httpx.TransportError:
            raise
        except TRANSIENT:
            if attempt == attempts - 1:
                raise
            time.sleep(min(2.0**attempt, 8.0))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def closed_when_suspended() -> Iterator[None]:
    """Around a wait: when it ends for a Suspend (`wait.Suspended`), the run's open pools and
    trainings are closed as for a Cancel (`close_pools_hook`, under the run key's lock), then the
    run ends Suspended.

    Suspend took effect at the run's next task: a run suspended in its labelling wait went on until
    its main pool completed, and its crowd was paid for all of it. Now the crowd stops within a poll;
    the answers in hand are handed in (paid, as Toloka lets them), and on Resume the wait opens the
    same pools again and the estimate holds.

    A sub-flow in hand (the pipeline's labelling or evaluation) reads Suspended too
    (`sub_flow_suspended`).
    """
    try:
        yield
    except wait.Suspended as suspended:
        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            close_pools_hook(context.flow, context.flow_run, suspended.state)
            if context.flow_run.parent_task_run_id is not None:
                sub_flow_suspended(context.flow, context.flow_run)
        raise


def sub_flow_suspended(flow: Any, flow_run: Any) -> None:
    """Set the sub-flow run in hand Suspended (Paused, named so, with no timeout of its own).

    Prefect suspends the top-level run only: the sub-flow read Running, and on the service the
    heartbeat automation set it Crashed 90 s after the process ended (`no heartbeat ... Retry it`),
    beside a parent that read Suspended. On Resume the parent takes up the same sub-flow run, which
    goes from Suspended to Running as a paused run does.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Paused

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Paused(name="Suspended", message="the run was suspended"))
    except Exception as exc:  # the Suspend is the news: a sub-flow left Running is Crashed, and resumes
        flow_run_logger(flow_run, flow).warning(
            "the sub-flow could not be marked Suspended (%s: %s); Resume goes on with it all the same",
            type(exc).__name__,
            exc,
        )


# `@flow(name=..., **CLOSES_POOLS)`: the run's pools are closed however it ends short of completion,
# and the run is named after its run key.
CLOSES_POOLS: dict[str, Any] = {
    "flow_run_name": by_run_key,
    "on_failure": [close_pools_hook],
    "on_cancellation": [close_pools_hook],
    "on_crashed": [close_pools_hook],
}


F = TypeVar("F", bound=Callable[..., Any])


def overview_on_stop(key: str = "resolved_run_key") -> Callable[[F], F]:
    """Flow decorator (under `@flow`): a run a stage stopped with answers paid for (the spend guard,
    the account's balance run out, a main pool whose wait timed out or that closed before it
    completed) gets its overview artifact before it fails, with why, what the run key was charged and
    the sub-flow runs (`artifacts.run_stopped`); the error goes on as raised.

    A 10,000-image run whose main pool expired at 96% (67,635 answers, $1,795.74 paid with the
    exams) failed with a page whose Artifacts tab read "This run did not produce any artifacts":
    only stops for money had their overview.

    The flow's first argument (or `params=`) is its `PipelineParams`, as for `locked_run`.
    """

    def wrap(fn: F) -> F:
        @wraps_flow(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (budget.SpendGuardStopped, wait.WaitTimeout, wait.PoolStopped) as stop:
                params = flow_params(args, kwargs)
                run_key = getattr(params, key)
                try:
                    charged: float | None = budget.total(budget.pool_charges_task(params.toloka, run_key))
                except Exception:  # the stop is the news; a failed read must not replace it
                    charged = None
                artifacts.run_stopped(str(stop), run_key, charged)
                raise

        return run  # type: ignore[return-value]

    return wrap
