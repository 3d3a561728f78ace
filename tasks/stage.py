"""`stage_task`: the one decorator every pipeline task uses, and its cache policy.

A stage's result is persisted and reused by any later run with the same inputs and the same code,
so a failed run resumes where it stopped and a Retry in the UI skips finished stages. The key is:

- the task's qualified name (two tasks with equal inputs never share a record);
- the source of the module that defines the task and of every module or package it names in
  `code=` (e.g. `aggregation` for the aggregate task): changing a helper invalidates the stages
  built on it, without a hand-kept `code_version` argument;
- the inputs, with pydantic models hashed by their JSON dump and dataclasses field by field, so the
  key does not depend on the process (a pickled model carries a set whose order follows
  PYTHONHASHSEED; tests/test_cache_keys.py checks this across processes).

Results go where Prefect's own settings say: `PREFECT_RESULTS_LOCAL_STORAGE_PATH` (a folder; `crowdclust
run` and `make demo` default it to `<project>/.prefect_results`) or
`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK` (a saved storage block, e.g. shared object storage for
several workers). One JSON record holds key and result, so a moved folder still gives cache hits.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE, RUN_ID, CachePolicy, Inputs
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from tasks.refusals import quiet_refusals
from tasks.run_log import bookkeeping_at_debug, ship_library_logs

F = TypeVar("F", bound=Callable[..., Any])

ship_library_logs()  # every process that runs stages puts their helpers' warnings in the run's log
bookkeeping_at_debug()  # and logs a stage's or sub-flow's `Finished in state Completed()` at DEBUG
quiet_refusals()  # and logs no traceback for a run refused on purpose (`tasks.refusals`)


@functools.cache
def source_digest(*modules: str) -> str:
    """A hash of the source of the named modules (every .py file of a package), by import name.

    Found through the import system without importing them, so naming a heavy package costs a
    file read, not an import.
    """
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or (spec.origin is None and not spec.submodule_search_locations):
            raise ModuleNotFoundError(f"stage_task code={name!r}: no such module")
        if spec.submodule_search_locations:
            roots = [Path(p) for p in spec.submodule_search_locations]
            files = sorted((p.relative_to(root).as_posix(), p) for root in roots for p in root.rglob("*.py"))
        else:
            files = [("", Path(str(spec.origin)))]
        for relative, path in files:
            digest.update(f"{name}/{relative}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def stable(value: Any) -> Any:
    """`value` with models and dataclasses turned into plain data whose hash is the same in every process."""
    if isinstance(value, BaseModel):
        return {"__model__": type(value).__qualname__, **value.model_dump(mode="json")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: stable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__dataclass__": type(value).__qualname__, **fields}
    if isinstance(value, dict):
        return {key: stable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [stable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stage_key(fn: Callable[..., Any], inputs: dict[str, Any], modules: tuple[str, ...] = ()) -> str | None:
    """The cache key of a call of task function `fn` with `inputs` (see the module docstring)."""
    code = source_digest(fn.__module__, *modules)
    inputs_key = Inputs().compute_key(None, stable(inputs or {}), {})  # type: ignore[arg-type]
    if inputs_key is None:
        return None
    whole = f"{fn.__module__}.{fn.__qualname__}\0{code}\0{inputs_key}"
    return hashlib.sha256(whole.encode()).hexdigest()


@dataclass
class StageCache(CachePolicy):
    """Prefect cache policy of `stage_task`: task name + source of its code + stable inputs."""

    modules: tuple[str, ...] = ()
    who: bool = False  # a Toloka stage: its key also holds who is asking (see `requester_digest`)

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        if task_ctx is None:
            return None
        key = stage_key(task_ctx.task.fn, inputs, self.modules)
        target = inputs.get("target")
        if key is None or not self.who or target is None:
            return key
        from tasks.toloka_api import requester_digest

        return hashlib.sha256(f"{key}\0{requester_digest(target)}".encode()).hexdigest()


def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry Toloka 5xx/429 and network errors, fail fast on everything else."""
    from tasks.toloka_api import TRANSIENT

    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


def _dropping_credentials(fn: F) -> F:
    """`fn`, whose errors leave it without credentials (`drop_credentials`): they may be persisted."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as error:
            from tasks.toloka_api import drop_credentials  # toloka-kit: only once a stage runs

            drop_credentials(error)
            raise

    return run  # type: ignore[return-value]


def stage_task(
    name: str,
    *,
    code: tuple[str, ...] = (),
    toloka: bool = False,
    cache: bool = True,
    per_flow_run: bool = False,
    **options: Any,
) -> Callable[[F], F]:
    """A Prefect task for one pipeline stage.

    Args:
        name: the task's name in the UI and the logs.
        code: modules or packages (import names) whose source the result depends on, besides the
            module that defines the task.
        toloka: the task talks to Toloka: retry transient errors (5xx, 429, network) with backoff,
            and key its cache by who is asking as well (a hash of the token's requester id).
        cache: persist the result and reuse it for the same inputs and code; False for a stage
            that is the question of each run (e.g. "which rounds exist now").
        per_flow_run: reuse the result only within the same flow run: a Retry of it in the UI gets
            its first attempt's answer (e.g. what the run key had paid when the run began), a new
            run asks again.
        options: other `prefect.task` options.
    """

    def wrap(fn: F) -> F:
        opts: dict[str, Any] = {"cache_policy": NO_CACHE}
        if cache:
            policy = StageCache(modules=code, who=toloka)
            opts = {"cache_policy": policy + RUN_ID if per_flow_run else policy, "persist_result": True}
        if toloka:
            opts.update(
                retries=3,
                retry_delay_seconds=exponential_backoff(backoff_factor=2),
                retry_jitter_factor=0.2,
                retry_condition_fn=only_transient,
            )
        return task(name=name, **{**opts, **options})(_dropping_credentials(fn))  # type: ignore[return-value]

    return wrap
