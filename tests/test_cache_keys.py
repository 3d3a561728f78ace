"""Cache keys must not depend on the process: a new run or a Retry has to find the same record.

Prefect cloudpickles task inputs it cannot hash as JSON (any input dict holding a DataFrame), and a
pickled pydantic model carries a set of field names whose order follows PYTHONHASHSEED. The
aggregation task (labels DataFrame + AggregationParams) therefore got a different key in about
every other process until `tasks.caching.StableInputs` hashed models by their JSON dump.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.fixtures.prefect import RESULTS_DIR

KEY_SCRIPT = """
import pandas as pd
from flows.params import HitParams
from tasks.caching import StableInputs
labels = pd.DataFrame({"task": ["t1", "t1"], "worker": ["w", "w"], "item": ["a", "b"], "label": [1, 2]})
# Five fields set explicitly: with Prefect's plain INPUTS this gave 10 different keys in 10 processes.
params = HitParams.model_validate(
    {"size": 10, "overlap": 7, "hits_per_item": 10, "design": "balanced", "reward": 0.02}
)
inputs = {"labels": labels, "hits": params, "seed": 0}
print(StableInputs().compute_key(None, inputs, {}))
"""


def _key(hashseed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "CROWDCLUST_RESULTS_DIR": str(RESULTS_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", KEY_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def test_input_key_is_the_same_in_every_process() -> None:
    keys = {seed: _key(seed) for seed in ("0", "1", "2", "3", "7", "12345")}
    assert all(keys.values()), keys
    assert len(set(keys.values())) == 1, keys


def test_input_key_changes_with_the_parameters() -> None:
    from flows.params import AggregationParams
    from tasks.caching import StableInputs

    def key(method: str) -> str | None:
        params = AggregationParams.model_validate({"method": method})
        return StableInputs().compute_key(None, {"aggregation": params, "seed": 0}, {})

    assert key("crowd") != key("coassociation")
