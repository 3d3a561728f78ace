"""Cache keys of `stage_task`: the same in every process, different when inputs or code change.

A new run or a Retry has to find the record an earlier process wrote. Prefect cloudpickles task
inputs it cannot hash as JSON (any input holding a DataFrame), and a pickled pydantic model carries
a set of field names whose order follows PYTHONHASHSEED; `tasks.stage.stable` hashes models by
their JSON dump and dataclasses field by field. The keys are computed in a few subprocesses at once
(no flow runs, no toloka-kit or numba import), one per PYTHONHASHSEED.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tasks.params import AggregationParams, HitParams
from tasks.stage import source_digest, stage_key

KEY_SCRIPT = """
import json
import pandas as pd
from tasks.params import AggregationParams, HitParams, TolokaTarget
from tasks.stage import stage_key
from tasks.hits import make_plan as task  # any function of an importable module (not __main__)
from tasks.stages import Coverage, CostEstimate, LabellingIds

labels = pd.DataFrame({"task": ["t1", "t1"], "worker": ["w", "w"], "item": ["a", "b"], "label": [1, 2]})
# Fields set explicitly: with Prefect's plain INPUTS this gave a different key in every process.
aggregation = AggregationParams.model_validate({"method": "gomes", "n_dims": 4})
hits = HitParams.model_validate(
    {"size": 10, "overlap": 7, "hits_per_item": 10, "design": "balanced", "reward": 0.02}
)
coverage = Coverage(2, 2, 1, 1.0, 1, {1: 2}, {"a": 1, "b": 1}, True)
ids = LabellingIds("1", "2", "3", "4", "5", "6")
keys = {
    "frame+models": stage_key(
        task, {"export": labels, "params": aggregation, "hits": hits, "seed": 0}, ("aggregation",)
    ),
    "models": stage_key(task, {"target": TolokaTarget(), "hits": hits, "costs": CostEstimate(1.0)}),
    "dataclasses+frame": stage_key(task, {"ids": ids, "coverage": coverage, "frame": labels}, ("tasks",)),
}
print(json.dumps(keys))
"""

ROOT = Path(__file__).resolve().parent.parent


def test_keys_are_the_same_in_every_process(capsys) -> None:
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-c", KEY_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("0", "12345")
    }
    exec(compile(KEY_SCRIPT, "<key script>", "exec"), {})  # and this process (a random hash seed)
    keys = {"this process": json.loads(capsys.readouterr().out.strip().splitlines()[-1])}
    for seed, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        keys[seed] = json.loads(out.strip().splitlines()[-1])
    first = keys["this process"]
    assert all(first.values()) and len(set(first.values())) == 3, first
    assert all(k == first for k in keys.values()), keys


def _fn(x: int) -> int:
    return x


def test_key_changes_with_the_inputs_and_the_named_code() -> None:
    frame = pd.DataFrame({"a": [1, 2]})

    def key(method: str, modules: tuple[str, ...] = ()) -> str | None:
        params = AggregationParams.model_validate({"method": method})
        return stage_key(_fn, {"aggregation": params, "frame": frame, "seed": 0}, modules)

    assert key("gomes") == key("gomes") != key("coassociation")
    assert key("gomes") != key("gomes", ("aggregation",))
    hits = HitParams()
    assert stage_key(_fn, {"hits": hits, "seed": 0}) != stage_key(_fn, {"hits": hits, "seed": 1})


def test_editing_a_named_module_changes_its_digest(tmp_path, monkeypatch) -> None:
    package = tmp_path / "helperpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rules.py").write_text(textwrap.dedent("def rate():\n    return 1\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = source_digest("helperpkg")
    (package / "rules.py").write_text(textwrap.dedent("def rate():\n    return 2\n"))
    source_digest.cache_clear()
    assert source_digest("helperpkg") != before


@pytest.mark.parametrize("module", ["tasks.aggregate", "tasks.setup", "tasks.wait", "tasks.intruders"])
def test_stage_tasks_name_their_code_instead_of_a_code_version(module: str) -> None:
    import importlib

    from prefect import Task

    from tasks.stage import StageCache

    tasks = [t for t in vars(importlib.import_module(module)).values() if isinstance(t, Task)]
    assert tasks
    for task in tasks:
        assert isinstance(task.cache_policy, StageCache), task.name
        assert task.persist_result is True
