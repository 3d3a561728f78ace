"""A finished run's plan topped up after its main pool's lifetime passed, with the real flow, the real
toloka-kit client and an emulator of its own (its clock is moved on by weeks).

Before, the top-up failed in `upload-hits` (`409 CONFLICT_STATE: pool P expired ...: move will_expire
first`) with advice the user could not follow, and the same command again passed the closed pool
as complete: it exported and aggregated the old answers as the new plan's, its new HITs never
answered.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorSettings, run_in_background
from tasks.params import PipelineParams, load_params
from tasks.toloka_api import TolokaClient, tls_context
from tests.fixtures.emulator import small_run_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EIGHT_DAYS = 8 * 86400  # past a pool's 7-day lifetime
KEY = "topup-expired"


@pytest.fixture(scope="module")
def emu():
    settings = EmulatorSettings(port=0, catalogue="demo-shoes", catalogue_size=30, speed=600.0)
    with run_in_background(settings) as running, pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOLOKA_TOKEN", running.token)
        yield running


@pytest.fixture(scope="module")
def config(emu, tmp_path_factory) -> Path:
    return small_run_config(tmp_path_factory.mktemp("topup"), emu.url, "topup", 5.0)


def _params(config: Path, hits_per_item: int) -> PipelineParams:
    return load_params(config, {"run_key": KEY, "hits": {"hits_per_item": hits_per_item}})


def _client(emu: Any) -> TolokaClient:
    return TolokaClient(emu.token, url=emu.url, retries=5, timeout=10.0, verify=tls_context())


def _main_pool(emu: Any) -> Any:
    from tasks.toloka_api import RunRegistry

    return RunRegistry(_client(emu), KEY).pools()["main-pool"]


def _answers_per_hit(emu: Any, pool_id: str) -> Counter[str]:
    """Submitted or accepted answers of the pool, per task suite."""
    return Counter(
        str(a.task_suite_id)
        for a in _client(emu).get_assignments(pool_id=pool_id)
        if a.status.value in ("SUBMITTED", "ACCEPTED")
    )


def _owed(client: TolokaClient, pool_id: str) -> int:
    """The answers the pool's task suites still need (their remaining overlap)."""
    return sum(s.remaining_overlap or 0 for s in client.get_task_suites(pool_id=pool_id))


def test_a_top_up_after_the_main_pools_lifetime_is_answered_and_clustered(prefect_harness, emu, config):
    """9 HITs answered, a week and a day later 12 (4 HITs per image): the pool gets a new lifetime,
    reopens, and the run ends with all 12 answered at overlap 3 and clusters made from them."""
    from flows.pipeline import crowdclust_pipeline

    first = crowdclust_pipeline(_params(config, 3))
    pool = _main_pool(emu)
    assert first.aggregation.n_hits == 9 and pool.status.value == "CLOSED"
    emu.advance(EIGHT_DAYS)

    more = crowdclust_pipeline(_params(config, 4))
    answered = _answers_per_hit(emu, pool.id)
    assert len(answered) == 12 and set(answered.values()) == {3}, answered
    assert more.aggregation.n_hits == 12 and more.aggregation.n_assignments == 36, more.aggregation
    assert _main_pool(emu).id == pool.id


def test_a_wait_does_not_take_a_completed_pool_with_unanswered_hits_for_done(prefect_harness, emu, config):
    """The state a failed top-up left: the new HITs in the pool, the pool CLOSED (COMPLETED) and
    expired. The wait reopens it with a new lifetime and returns once they are answered; before, it
    returned at once and the run exported the old answers as the new plan's."""
    from tasks.hits import make_plan
    from tasks.preflight import check_run
    from tasks.wait import wait_for_pool
    from tests.fixtures.emulator import create_suites

    params = _params(config, 5)
    client, pool = _client(emu), _main_pool(emu)
    assert pool.status.value == "CLOSED" and _owed(client, pool.id) == 0
    held = {json.dumps(s.tasks[0].input_values["images"]) for s in client.get_task_suites(pool_id=pool.id)}
    plan = make_plan(check_run(params).items, params.hits, params.seed).hits
    new = [hit for hit in plan if json.dumps(hit) not in held]
    assert len(new) == 3, len(new)
    emu.advance(EIGHT_DAYS)
    create_suites(client, pool.id, new)
    assert client.get_pool(pool.id).last_close_reason.value == "COMPLETED"
    assert _owed(client, pool.id) == 9

    stats = wait_for_pool(client, pool.id, period=0.3, timeout=120)
    answered = _answers_per_hit(emu, pool.id)
    assert stats.completion_percentage == 100.0
    assert len(answered) == 15 and set(answered.values()) == {3}, answered
