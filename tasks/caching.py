"""Common Prefect task options: persisted, input-keyed caching and retries of transient Toloka errors.

Why these options (design/prefect-notes.md):
- `INPUTS + TASK_SOURCE` so a *new* flow run with the same parameters resumes (the default policy
  includes RUN_ID and does not); never `INPUTS` alone, which lets two tasks share one cache entry.
  `StableInputs` is INPUTS made independent of the process (see its docstring).
- Results are persisted with the default pickle serializer (json silently fails for DataFrames) in a
  project-local folder, `CROWDCLUST_RESULTS_DIR` to point it elsewhere, or in a saved storage block
  named by `CROWDCLUST_RESULTS_BLOCK` (shared object storage); no separate key storage.
- TASK_SOURCE hashes only the task function itself, so tasks whose behaviour lives in helper modules
  take a `code_version` argument computed from those modules' source (`source_version`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.tasks import exponential_backoff
from pydantic import BaseModel
from toloka.client.exceptions import (
    InternalApiError,
    RemoteServiceUnavailableApiError,
    TooManyRequestsApiError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ENV = "CROWDCLUST_RESULTS_DIR"
RESULTS_BLOCK_ENV = "CROWDCLUST_RESULTS_BLOCK"


def results_dir() -> Path:
    """Where persisted task results live: `$CROWDCLUST_RESULTS_DIR` or `<repo>/.prefect_results`."""
    return Path(os.environ.get(RESULTS_ENV) or REPO_ROOT / ".prefect_results").resolve()


def result_storage() -> Path | str:
    """A saved Prefect storage block (`$CROWDCLUST_RESULTS_BLOCK`, e.g. `remote-file-system/crowd-results`,
    for several machines sharing one cache) or the local results folder."""
    return os.environ.get(RESULTS_BLOCK_ENV) or results_dir()


TRANSIENT = (
    InternalApiError,
    RemoteServiceUnavailableApiError,
    TooManyRequestsApiError,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)


def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry Toloka 5xx/429 and network errors, fail fast on everything else."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


@dataclass
class StableInputs(CachePolicy):
    """`INPUTS`, with pydantic models hashed by their JSON dump.

    When a task's inputs include a DataFrame, Prefect cannot hash them as JSON and cloudpickles the
    whole input dict; a pydantic model then pickles its `__pydantic_fields_set__`, a set of strings
    whose order follows PYTHONHASHSEED. The key changed from one process to the next, so the
    aggregation (DataFrame + AggregationParams) re-ran in about every other new run or Retry.
    Not a subclass of `Inputs`: a compound policy replaces every `Inputs` by a plain one.
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        stable = {
            name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for name, value in (inputs or {}).items()
        }
        return Inputs().compute_key(task_ctx, stable, flow_parameters, **kwargs)


def cached(**extra: Any) -> dict[str, Any]:
    """Options for a task whose result is persisted and reused by later runs with the same inputs."""
    return {
        "cache_policy": StableInputs() + TASK_SOURCE,
        "persist_result": True,
        "result_storage": result_storage(),
        **extra,
    }


def toloka_retries() -> dict[str, Any]:
    """Retries with backoff of transient Toloka errors only (for any task that talks to Toloka)."""
    return {
        "retries": 3,
        "retry_delay_seconds": exponential_backoff(backoff_factor=2),
        "retry_jitter_factor": 0.2,
        "retry_condition_fn": only_transient,
    }


def toloka_cached(**extra: Any) -> dict[str, Any]:
    """Cached options plus retries with backoff for tasks that talk to Toloka."""
    return cached(**toloka_retries(), **extra)


def source_version(*modules: ModuleType) -> str:
    """A short hash of the given modules' source (every .py file of a package): a `code_version` input."""
    digest = hashlib.sha256()
    for module in modules:
        if hasattr(module, "__path__"):
            for path in sorted(Path(p) for root in module.__path__ for p in Path(root).rglob("*.py")):
                digest.update(path.read_bytes())
        else:
            digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]
