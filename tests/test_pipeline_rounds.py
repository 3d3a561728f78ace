"""Round planning of a growing catalogue (plain functions, no Prefect, no emulator)."""

from __future__ import annotations

import doctest
import importlib
from collections import Counter

import pandas as pd
import pytest

from tasks.params import HitParams
from tasks.rounds import pick_anchors, plan_round, round_key, with_round
from tasks.stages import RoundState

OLD = [f"http://x/old-{i:03d}.png" for i in range(60)]
NEW = [f"http://x/new-{i:03d}.png" for i in range(23)]
CLUSTERS = pd.Series([i % 6 for i in range(60)], index=OLD, name="cluster")
PARAMS = HitParams(size=10, hits_per_item=10)


def test_round_key_depends_on_the_items_not_their_order():
    assert round_key(NEW) == round_key(list(reversed(NEW)))
    assert round_key(NEW) != round_key(NEW[:-1])


def test_first_round_is_the_ordinary_plan():
    plan = plan_round(NEW, None, PARAMS, seed=0, anchors_per_hit=3)
    counts = Counter(x for hit in plan for x in hit)
    assert set(counts) == set(NEW) and min(counts.values()) >= 10


def test_later_round_mixes_new_items_with_anchors_from_every_cluster():
    plan = plan_round(NEW, CLUSTERS, PARAMS, seed=0, anchors_per_hit=3)
    assert plan == plan_round(NEW, CLUSTERS, PARAMS, seed=0, anchors_per_hit=3)  # seeded
    assert all(len(hit) == 10 and len(set(hit)) == 10 for hit in plan)
    new_counts = Counter(x for hit in plan for x in hit if x in NEW)
    assert set(new_counts) == set(NEW) and min(new_counts.values()) >= 10
    anchors = [x for hit in plan for x in hit if x not in NEW]
    assert all(sum(x not in NEW for x in hit) == 3 for hit in plan)
    assert set(CLUSTERS[anchors]) == set(range(6))  # every cluster is linked to the new items


@pytest.mark.parametrize("n_new", [1, 4])
def test_a_few_new_items_fill_up_with_more_anchors(n_new):
    plan = plan_round(NEW[:n_new], CLUSTERS, PARAMS, seed=0, anchors_per_hit=3)
    assert all(len(hit) == 10 and len(set(hit)) == 10 for hit in plan)
    assert all(set(NEW[:n_new]) <= set(hit) for hit in plan) and len(plan) >= 10


def test_anchors_of_a_hit_come_from_different_clusters():
    import numpy as np

    hits = pick_anchors(CLUSTERS, n_hits=20, per_hit=3, rng=np.random.default_rng(0))
    assert all(len(set(CLUSTERS[hit])) == 3 for hit in hits)


def test_state_after_a_round_counts_its_pool_as_completed():
    plan = plan_round(NEW, CLUSTERS, PARAMS, seed=0, anchors_per_hit=3)
    old = RoundState("p1", "r1", True, "t1", tuple(OLD))
    failed = RoundState("p2", round_key(NEW), False, "t2", tuple(NEW[:5]))
    resumed = with_round([old, failed], round_key(NEW), "p2", plan)
    assert [e.pool_id for e in resumed] == ["p1", "p2"] and resumed[0] == old
    assert resumed[1].completed and set(NEW) <= set(resumed[1].items) and resumed[1].created == "t2"
    assert len(resumed[1].items) == len({x for hit in plan for x in hit})
    fresh = with_round([old], round_key(NEW), "p3", plan)
    assert [e.pool_id for e in fresh] == ["p1", "p3"] and fresh[1].completed


def test_images_that_fill_a_hit_beside_its_anchors_make_a_second_round():
    """8 listed images and 2 anchors fill a HIT of 10: the round, its estimate and the recheck
    line all called 8 or 9 images too few for a HIT of 10."""
    import pandas as pd

    from aggregation import followup
    from tasks.params import HitParams, PipelineParams
    from tasks.second_round import pick_images

    params = PipelineParams.model_construct(hits=HitParams(size=10, second_round_share=0.5))
    for listed, shown in ((8, 8), (9, 9), (7, 0)):
        table = pd.DataFrame({"item": [f"i{k}" for k in range(listed)], "cluster": 0, "confidence": 0.3})
        assert len(pick_images(table, params, 82)) == shown
    clusters = pd.Series([0] * 8 + [0, 0, 1], index=[f"i{k}" for k in range(8)] + ["a", "b", "c"])
    hits = followup.plan(pd.DataFrame({"item": [f"i{k}" for k in range(8)]}), clusters, 10, 1, seed=0)
    assert [len(hit) for hit in hits] == [10]


@pytest.mark.parametrize("module", ["tasks.rounds", "tasks.second_round"])
def test_doctests(module):
    """Which round a second round follows, how many items a round brought, which images it shows."""
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_the_rounds_table_puts_each_second_round_under_its_round(monkeypatch):
    from tasks import artifacts

    tables: list[str] = []
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda **kw: tables.append(kw["markdown"]))
    first = RoundState("p1", "r1", True, "t1", tuple(OLD))
    later = RoundState("p2", "r2", True, "t3", tuple(NEW + OLD[:5]))  # 5 anchors from round 1
    again = RoundState("p3", "r1", False, "t2", tuple(OLD[:12]))
    artifacts.catalogue_rounds("cat", [later, first], "r2", [again])
    rows = [line for line in tables[0].splitlines() if line.startswith("| r")][1:]  # after the header
    assert rows == [
        "| r1 | p1 | 60 | 60 | completed |",
        "| r1, second round | p3 | 12 | 0 | not completed |",
        "| r2 | p2 | 28 | 23 | completed |",
    ]


def test_the_round_this_run_labelled_is_the_last_row_of_the_rounds_table(monkeypatch):
    """The round a run has just labelled is not in Toloka's listing read at its start, so it has no
    creation time (`with_round`): it sorted first and counted its anchors as new, and the rounds
    before it as mostly old (a user's second round read '208 of them new' for 100 new images, and
    the first round '192 of 300'), on the page of exactly the run that labelled it."""
    from tasks import artifacts

    tables: list[str] = []
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda **kw: tables.append(kw["markdown"]))
    first = RoundState("p1", "r1", True, "2026-12-05T11:33:35", tuple(OLD))
    plan = plan_round(NEW, CLUSTERS, PARAMS, seed=0, anchors_per_hit=3)
    state = with_round([first], "r2", "p2", plan)
    artifacts.catalogue_rounds("cat", state, "r2")
    shown = len({x for hit in plan for x in hit})
    rows = [line for line in tables[0].splitlines() if line.startswith("| r")][1:]
    assert rows == ["| r1 | p1 | 60 | 60 | completed |", f"| r2 | p2 | {shown} | {len(NEW)} | completed |"]
