"""Idempotent Toloka side effects without any cache: every create is preceded by a look-up.

Runs the plain setup/upload functions twice against the emulator (no Prefect): the second pass must
find every object by its run-key tag and create nothing. This is what protects a resumed run whose
cached results were lost, or two processes racing on the same run key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.params import load_params
from tasks import configs, setup, upload
from tasks.connect import make_client
from tasks.hits import plan_hits

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo-shoes" / "pipeline.yaml"


@pytest.fixture
def demo(emulator, monkeypatch):
    monkeypatch.setenv("TOLOKA_TOKEN", emulator.token)
    params = load_params(DEMO, {"toloka": {"url": emulator.url}})
    return params, make_client(params.toloka), configs.load_bundle(params.toloka_dir)


def _count(client) -> dict[str, int]:
    projects = list(client.get_projects())
    return {
        "projects": len(projects),
        "pools": sum(len(list(client.get_pools(project_id=p.id))) for p in projects),
        "skills": len(list(client.get_skills())),
    }


def test_setup_and_upload_twice_create_nothing_new(demo):
    params, client, bundle = demo
    values = configs.placeholder_values(params)
    ids = setup.setup_labelling(client, "idem-1", bundle, values, "Idempotence")
    plan = plan_hits(
        [u for s in bundle["exam_suites"] for u in s["tasks"][0]["input_values"]["images"]], params.hits, 0
    )
    suites = [{"tasks": [{"input_values": {"images": hit}}]} for hit in plan]
    upload.ensure_suites(client, "idem-1", "main-suites", ids["main_pool"], suites)
    counts = _count(client)

    again = setup.setup_labelling(client, "idem-1", bundle, values, "Idempotence")
    upload.ensure_suites(client, "idem-1", "main-suites", ids["main_pool"], suites)
    assert again == ids and _count(client) == counts
    assert len(list(client.get_task_suites(pool_id=ids["main_pool"]))) == len(suites)
    assert len(list(client.get_task_suites(pool_id=ids["exam_pool"]))) == 3
    assert len(list(client.get_tasks(pool_id=ids["training"]))) == len(bundle["training_tasks"])

    # The skill was wired into the main pool's filter and SET_SKILL rule (no hard-coded id).
    pool = client.get_pool(ids["main_pool"])
    assert pool.filter.and_[0].or_[0].key == ids["skill"]
    rules = [r for c in pool.quality_control.configs for r in c.rules]
    assert any(getattr(r.action.parameters, "skill_id", None) == ids["skill"] for r in rules)

    # Another run key is another world.
    other = setup.setup_labelling(client, "idem-2", bundle, values, "Idempotence")
    assert set(other.values()).isdisjoint(ids.values())


def test_partial_upload_is_completed_not_duplicated(demo):
    params, client, bundle = demo
    ids = setup.setup_labelling(client, "idem-3", bundle, configs.placeholder_values(params), "Idempotence")
    suites = [
        {"tasks": [{"input_values": {"images": [f"https://x/{i}-{j}.png" for j in range(3)]}}]}
        for i in range(6)
    ]
    upload.ensure_suites(client, "idem-3", "main-suites", ids["main_pool"], suites[:4])  # "crash" after 4
    upload.ensure_suites(client, "idem-3", "main-suites", ids["main_pool"], suites)
    assert len(list(client.get_task_suites(pool_id=ids["main_pool"]))) == 6


def test_close_run_pools_closes_only_this_runs_pools(demo):
    params, client, bundle = demo
    values = configs.placeholder_values(params)
    mine = setup.setup_labelling(client, "idem-4", bundle, values, "Idempotence")
    theirs = setup.setup_labelling(client, "idem-5", bundle, values, "Idempotence")
    for ids in (mine, theirs):
        client.open_pool(ids["exam_pool"])
    closed = setup.close_run_pools(client, "idem-4")
    assert closed == [f"pool {mine['exam_pool']}"]
    assert client.get_pool(mine["exam_pool"]).status.value == "CLOSED"
    assert client.get_pool(theirs["exam_pool"]).status.value == "OPEN"
    client.close_pool(theirs["exam_pool"])
