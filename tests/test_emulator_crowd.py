"""The simulated crowd through the seed notebook's sequence: gating, QC, intruders, determinism."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import toloka.client as toloka
from toloka.client import exceptions

from emulator import EmulatorSettings, run_in_background
from tests.fixtures.emulator import (
    SKILL_THRESHOLD,
    VIEW,
    SeedDesign,
    create_project,
    create_simple_pool,
    create_spec_project,
    create_suites,
    make_client,
    parse_array_cell,
    restriction_rule,
)

SEED_WALL_LIMIT = 60.0  # wall seconds, on a shared 2-core machine


@pytest.fixture(scope="module")
def seed_run():
    """The seed design (82 suites x overlap 7, training, 3 exams) at the default demo speed.

    A small market (150 workers) keeps the requester's exam grading short; the default market runs
    the same sequence in `test_emulator_conformance.py`.
    """
    with run_in_background(EmulatorSettings(port=0, speed=600.0, seed=0, workers=150)) as emu:
        client = make_client(emu)
        design = SeedDesign(client)
        design.setup()
        design.open()
        wall = design.run(period=1.0, timeout=90)
        workers = {w["id"]: w for w in emu.workers()}
        main_df = client.get_assignments_df(pool_id=design.ids["main"])
        yield {
            "emu": emu,
            "client": client,
            "design": design,
            "wall": wall,
            "workers": workers,
            "main": main_df,
        }


def test_seed_design_completes_fast_and_closes_itself(seed_run):
    design, client = seed_run["design"], seed_run["client"]
    assert seed_run["wall"] <= SEED_WALL_LIMIT
    main = client.get_pool(design.ids["main"])
    assert main.status.value == "CLOSED" and main.last_close_reason.value == "COMPLETED"
    df = seed_run["main"]
    assert set(df["ASSIGNMENT:status"]) == {"APPROVED"}
    per_hit = Counter(df["INPUT:images"])
    assert len(per_hit) == design.n_hits == 82 and min(per_hit.values()) >= 7
    images = parse_array_cell(df["INPUT:images"].iloc[0])
    groups = parse_array_cell(df["OUTPUT:result"].iloc[0])
    assert len(images) == len(groups) == 10 and all(1 <= g["group"] <= 10 for g in groups)
    assert df["GOLDEN:result"].isna().all()
    op = client.get_analytics(
        [toloka.analytics_request.CompletionPercentagePoolAnalytics(subject_id=main.id)]
    )
    assert client.wait_operation(op).details["value"][0]["result"]["value"] == 100


def test_no_worker_is_issued_a_suite_twice(seed_run):
    """A suite's overlap is answered by that many different workers: a worker who took a suite (and
    submitted, skipped or ran out of time) is never issued it again, in the exam or the main pool."""
    design, client = seed_run["design"], seed_run["client"]
    for role in ("exam", "main"):
        by_suite = defaultdict(list)
        for assignment in client.get_assignments(pool_id=design.ids[role]):
            by_suite[assignment.task_suite_id].append(assignment.user_id)
        assert by_suite, role
        repeated = {s: users for s, users in by_suite.items() if len(users) != len(set(users))}
        assert not repeated, (role, repeated)
    main = client.get_assignments_df(pool_id=design.ids["main"])
    per_hit = main.groupby("INPUT:images")["ASSIGNMENT:worker_id"]
    assert (per_hit.nunique() == per_hit.size()).all() and per_hit.nunique().min() >= 7


def test_gating_decides_who_works_on_the_main_pool(seed_run):
    skill_id, workers = seed_run["design"].ids["skill"], seed_run["workers"]
    main_workers = set(seed_run["main"]["ASSIGNMENT:worker_id"])
    assert len(main_workers) >= 7
    for wid in main_workers:
        assert workers[wid]["skills"].get(skill_id, 0) >= SKILL_THRESHOLD, workers[wid]
    types = Counter(workers[w]["type"] for w in main_workers)
    assert types["spammer"] == 0 and types["colour_biased"] == 0
    # Someone was kept out: workers below the threshold exist and never worked there.
    below = [w for w in workers.values() if w["skills"].get(skill_id, 0) < SKILL_THRESHOLD]
    assert below and not main_workers & {w["id"] for w in below}


def test_colour_biased_workers_fail_the_exam_far_more_often(seed_run):
    client, design, workers = seed_run["client"], seed_run["design"], seed_run["workers"]
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for a in client.get_assignments(pool_id=design.ids["exam"]):
        outcomes[workers[a.user_id]["type"]][a.status.value] += 1
    diligent, biased = outcomes["diligent"], outcomes["colour_biased"]
    assert biased["REJECTED"] > 0 and diligent["ACCEPTED"] > 0
    diligent_rate = diligent["ACCEPTED"] / (diligent["ACCEPTED"] + diligent["REJECTED"])
    biased_rate = biased["ACCEPTED"] / (biased["ACCEPTED"] + biased["REJECTED"])
    assert diligent_rate >= 0.5 and biased_rate <= 0.1


def test_training_gates_the_exam(seed_run):
    client, design, workers = seed_run["client"], seed_run["design"], seed_run["workers"]
    training_id = design.ids["training"]
    exam_takers = {a.user_id for a in client.get_assignments(pool_id=design.ids["exam"])}
    assert exam_takers
    for wid in exam_takers:
        assert workers[wid]["trainings"][training_id] == 100.0
    # A finished training below 100 (0.0 included: spammers rarely follow the instructions) fails.
    failed = [
        w for w in workers.values() if (score := w["trainings"].get(training_id)) is not None and score < 100
    ]
    assert failed and not exam_takers & {w["id"] for w in failed}


def test_reject_adds_overlap_and_accept_is_final(seed_run):
    client, design = seed_run["client"], seed_run["design"]
    rejected = Counter(
        a.task_suite_id for a in client.get_assignments(pool_id=design.ids["exam"], status="REJECTED")
    )
    assert rejected
    for suite in client.get_task_suites(pool_id=design.ids["exam"]):
        assert suite.overlap == 100 + rejected[suite.id]
    accepted = next(iter(client.get_assignments(pool_id=design.ids["exam"], status="ACCEPTED")))
    with pytest.raises(exceptions.ConflictStateApiError):
        client.reject_assignment(accepted.id, "too late")


def test_balance_is_charged_for_accepted_work(seed_run):
    emu, client = seed_run["emu"], seed_run["client"]
    accepted = [
        a for p in client.get_pools() for a in client.get_assignments(pool_id=p.id, status="ACCEPTED")
    ]
    paid = sum(float(a.reward) for a in accepted) * 1.3
    assert paid > 0
    assert float(client.get_requester().balance) == pytest.approx(emu.settings.balance - paid, abs=1e-3)


# ------------------------------------------------------------------------------------------------------


def _grouping_pool(client, config_extra: dict, n_suites: int, overlap: int, catalogue_urls: list[str]):
    project = create_project(client, "qc")
    extra = {"auto_close_after_complete_delay_seconds": 0} | config_extra
    pool = create_simple_pool(client, project.id, "qc pool", overlap, **extra)
    n = len(catalogue_urls)
    create_suites(
        client, pool.id, [[catalogue_urls[(k * 10 + i) % n] for i in range(10)] for k in range(n_suites)]
    )
    return pool


def _wait_closed(emu, client, pool_id: str, step: float = 600.0, limit: int = 400):
    for _ in range(limit):
        if client.get_pool(pool_id).status.value == "CLOSED":
            return
        emu.advance(step)
    raise AssertionError("pool never completed")


def test_spammers_are_caught_by_the_fast_submit_rule():
    fast_rule = restriction_rule(
        {
            "type": "ASSIGNMENT_SUBMIT_TIME",
            "parameters": {"fast_submit_threshold_seconds": 10, "history_size": 10},
        },
        [{"key": "fast_submitted_count", "operator": "GTE", "value": 2}],
        "ALL_PROJECTS",
        10,
        "DAYS",
    )
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=3)) as emu:
        client = make_client(emu)
        urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(82)]
        pool = _grouping_pool(client, {"quality_control": {"configs": [fast_rule]}}, 60, 5, urls)
        client.open_pool(pool.id)
        _wait_closed(emu, client, pool.id)
        workers = {w["id"]: w for w in emu.workers()}
        # Submits only: the rule counts fast submits, and a suite skipped before them is no submit.
        per_worker = Counter(
            a.user_id for a in client.get_assignments(pool_id=pool.id) if a.status.value == "ACCEPTED"
        )
    spammers = [w for w in per_worker if workers[w]["type"] == "spammer"]
    assert spammers and all(per_worker[w] <= 2 for w in spammers), per_worker
    # The rule needs two fast submits: a spammer who came back for a second suite is out at once.
    repeat = [w for w in spammers if per_worker[w] == 2]
    assert repeat and all(workers[w]["restrictions"] for w in repeat)
    honest = [w for w in per_worker if workers[w]["type"] == "diligent"]
    assert honest and not any(workers[w]["restrictions"] for w in honest)


def test_intruder_pool_diligent_workers_find_the_odd_one():
    from emulator import build_catalogue

    # A small market, so that workers answer enough suites for the majority vote to judge them.
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=1, workers=300)) as emu:
        client = make_client(emu)
        cat = build_catalogue("demo-shoes", size=200, seed=0, base_url=emu.url)
        by_class = {c: list(g["image"]) for c, g in cat.groupby("class")}
        classes = sorted(by_class)
        hits, truth = [], []
        for k in range(40):
            main, odd = classes[k % len(classes)], classes[(k * 3 + 1) % len(classes)]
            if odd == main:
                odd = classes[(k + 1) % len(classes)]
            images = by_class[main][:7]
            position = k % 8
            images.insert(position, by_class[odd][k % len(by_class[odd])])
            hits.append(images)
            truth.append(str(position + 1))
        spec = {
            "input_spec": {"images": {"type": "array_json"}},
            "output_spec": {"answer": {"type": "string", "allowed_values": [str(i) for i in range(1, 9)]}},
            "view_spec": VIEW,
        }
        project = create_spec_project(client, "intruders", spec)
        # The published intruder filter names a skill of its authors' account: refused, as on Toloka.
        unknown_skill = {
            "and": [{"or": [{"key": "26366", "operator": "EQ", "value": 100, "category": "skill"}]}]
        }
        with pytest.raises(exceptions.ValidationApiError) as refused:
            create_simple_pool(client, project.id, "intruders", 5, filter=unknown_skill)
        assert refused.value.payload["filter.and[0].or[0].key"]["code"] == "DOES_NOT_EXIST"
        majority_vote = restriction_rule(  # the published intruder pool's rule: disagree -> out
            {"type": "MAJORITY_VOTE", "parameters": {"answer_threshold": 2, "history_size": 10}},
            [
                {"key": "total_answers_count", "operator": "GTE", "value": 4},
                {"key": "correct_answers_rate", "operator": "LT", "value": 75},
            ],
            "PROJECT",
            10,
            "DAYS",
        )
        pool = create_simple_pool(
            client,
            project.id,
            "intruders",
            5,
            quality_control={"configs": [majority_vote]},
        )
        create_suites(client, pool.id, hits)
        client.open_pool(pool.id)
        _wait_closed(emu, client, pool.id)
        df = client.get_assignments_df(pool_id=pool.id)
        workers = {w["id"]: w for w in emu.workers()}
    answer_of = {json.dumps(h, separators=(",", ":"))[1:-1]: t for h, t in zip(hits, truth, strict=True)}
    df["truth"] = df["INPUT:images"].map(answer_of)
    df["right"] = df["OUTPUT:answer"].astype(str) == df["truth"]
    df["type"] = df["ASSIGNMENT:worker_id"].map(lambda w: workers[w]["type"])
    accuracy = df.groupby("type")["right"].mean()
    assert accuracy["diligent"] >= 0.8
    assert accuracy.get("spammer", 0.0) <= 0.4
    restricted = Counter(w["type"] for w in workers.values() if w["restrictions"])
    worked = Counter(workers[w]["type"] for w in df["ASSIGNMENT:worker_id"].unique())
    # The majority-vote rule removes most spammers and few diligent workers (who sometimes lose a vote).
    assert restricted["spammer"] / worked["spammer"] >= 0.5, (restricted, worked)
    assert restricted["diligent"] / worked["diligent"] <= 0.2, (restricted, worked)


def _scripted_run(seed: int) -> tuple[str, list]:
    """The same requests at the same simulated instants (speed 0): the answers must repeat exactly."""
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=seed, start=1.8e9)) as emu:
        client = make_client(emu)
        urls = [f"http://elsewhere:1/images/demo-shoes/s0-{i:05d}.png" for i in range(82)]
        pool = _grouping_pool(client, {}, 20, 3, urls)
        emu.advance(300)
        client.open_pool(pool.id)
        _wait_closed(emu, client, pool.id, step=120)
        tsv = client.get_assignments_df(pool_id=pool.id).to_csv(index=False)
        workers = [(w["id"], w["type"]) for w in emu.workers()]
        return tsv, workers


def test_same_seed_and_requests_give_the_same_answers():
    first, workers_a = _scripted_run(seed=7)
    second, workers_b = _scripted_run(seed=7)
    other, workers_c = _scripted_run(seed=8)
    assert first == second and workers_a == workers_b
    assert first != other and workers_a != workers_c


def test_restricted_workers_come_back_when_the_restriction_ends():
    """An idle worker whose restriction runs out looks for work again (else this pool never completes)."""
    answer_cap = restriction_rule(
        {"type": "ANSWER_COUNT"},
        [{"key": "assignments_accepted_count", "operator": "GTE", "value": 3}],
        "POOL",
        1,
        "HOURS",
    )
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=5, workers=10)) as emu:
        client = make_client(emu)
        urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(82)]
        pool = _grouping_pool(client, {"quality_control": {"configs": [answer_cap]}}, 30, 2, urls)
        client.open_pool(pool.id)
        _wait_closed(emu, client, pool.id)
        per_worker = Counter(a.user_id for a in client.get_assignments(pool_id=pool.id, status="ACCEPTED"))
    assert sum(per_worker.values()) == 60 and max(per_worker.values()) > 3


def test_the_crowd_mix_can_be_set_and_an_impossible_one_is_refused():
    """`--crowd spammer=0.75`: three workers in four who answer are spammers (10% by default)."""
    from emulator.mix import DEFAULT_SHARES, MixError, parse_mix, shares

    assert shares() == DEFAULT_SHARES
    tilted = shares({"spammer": 0.75})
    assert tilted["spammer"] == 0.75 and tilted["diligent"] == pytest.approx(6 * tilted["careless"])
    assert sum(tilted.values()) == pytest.approx(1.0)
    for text, says in (
        ("spamer=0.3", "unknown worker type spamer"),
        ("spammer=1.5", "is 1.5; a share is between 0 and 1"),
        ("spammer=0.6,careless=0.6", r"add up to 1\.2"),
        ("spammer", "expected TYPE=SHARE"),
    ):
        with pytest.raises(MixError, match=says):
            parse_mix(text)
    with pytest.raises(MixError, match=r"add up to 0\.5"):
        EmulatorSettings(crowd=dict.fromkeys(DEFAULT_SHARES, 0.5 / 6))

    with run_in_background(EmulatorSettings(port=0, speed=0, seed=5, workers=40, crowd=tilted)) as emu:
        client = make_client(emu)
        urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(82)]
        pool = _grouping_pool(client, {}, 30, 2, urls)
        client.open_pool(pool.id)
        _wait_closed(emu, client, pool.id)
        answered = {a.user_id for a in client.get_assignments(pool_id=pool.id)}
        kinds = Counter(w["type"] for w in emu.workers() if w["id"] in answered)
    assert kinds["spammer"] >= 0.6 * len(answered), kinds


def _taken_in_twenty_minutes(emulator_factory, reward: float) -> tuple[Counter, float]:
    """One pool of 100 ten-image suites alone on a market of 400 (seed 2): who took its suites in the
    first 20 simulated minutes, by worker type, and the highest reservation wage among the diligent
    workers who took one."""
    with emulator_factory(speed=0, seed=2, workers=400, start=1.8e9) as emu:
        client = make_client(emu)
        urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(82)]
        pool = _grouping_pool(client, {"reward_per_assignment": reward}, 100, 5, urls)
        client.open_pool(pool.id)
        emu.advance(1200)
        workers = {w["id"]: w for w in emu.workers()}
        takers = {a.user_id for a in client.get_assignments(pool_id=pool.id)}
        wages = [workers[w]["reservation_wage"] for w in takers if workers[w]["type"] == "diligent"]
        kinds = Counter(workers[a.user_id]["type"] for a in client.get_assignments(pool_id=pool.id))
        return kinds, max(wages)


def test_a_pool_paying_the_least_reward_fills_slower(emulator_factory):
    """The same pool at Toloka's least reward ($0.005 a ten-image suite, ~$0.20 an hour of a diligent
    worker) and at $0.20: the workers whose reservation wage it misses pass it by, so it fills slower,
    and the fast (spammers) lose nothing by it. Before, both got the same answers from the same workers."""
    cheap, cheap_wage = _taken_in_twenty_minutes(emulator_factory, 0.005)
    dear, dear_wage = _taken_in_twenty_minutes(emulator_factory, 0.2)
    # A diligent worker needs 90 s for ten images at its median pace (the fastest ~50 s): $0.005 pays
    # ~$0.20-0.35 an hour, $0.20 ~$8-14, above every reservation wage of this market.
    assert cheap_wage < 0.35 < dear_wage, (cheap_wage, dear_wage)
    assert sum(cheap.values()) <= 0.8 * sum(dear.values()), (cheap, dear)
    assert cheap["diligent"] <= 0.7 * dear["diligent"], (cheap, dear)
    assert cheap["spammer"] >= 0.9 * dear["spammer"], (cheap, dear)


def _trained_pool(client: toloka.TolokaClient, retry_days: int | None, tasks: int = 1200) -> tuple[str, str]:
    """A training of two suites of three tasks (each answer known) and a pool that requires all of them
    right, through toloka-kit: (training id, pool id)."""
    spec = {
        "input_spec": {"image": {"type": "url"}},
        "output_spec": {"label": {"type": "string", "allowed_values": ["1", "2"]}},
        "view_spec": VIEW,
    }
    project = create_spec_project(client, f"retry {retry_days}", spec)
    training = client.create_training(
        toloka.Training(
            project_id=project.id,
            private_name="training",
            may_contain_adult_content=False,
            assignment_max_duration_seconds=600,
            training_tasks_in_task_suite_count=3,
            retry_training_after_days=retry_days,
            inherited_instructions=True,
        )
    )
    gold = toloka.task.BaseTask.KnownSolution(output_values={"label": "1"})
    client.create_tasks(
        [
            toloka.Task(
                pool_id=training.id, input_values={"image": f"https://x.org/t{k}.png"}, known_solutions=[gold]
            )
            for k in range(6)
        ]
    )
    requirement = {"training_pool_id": training.id, "training_passing_skill_value": 100}
    pool = create_simple_pool(
        client, project.id, "trained", 1, quality_control={"training_requirement": requirement}
    )
    client.create_tasks(
        [
            toloka.Task(pool_id=pool.id, input_values={"image": f"https://x.org/r{k}.png"})
            for k in range(tasks)
        ],
        allow_defaults=True,
    )
    client.open_training(training.id)
    return training.id, pool.id


def test_a_failed_training_is_taken_again_after_retry_training_after_days():
    """Toloka deletes a training skill `retry_training_after_days` after the training unless the worker
    completed tasks in a linked pool since: who failed may take it again, and who has not worked in
    the pool for that long must. Without the setting the skill is for good. Before, nobody ever took
    a training twice."""
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=4, workers=60, start=1.8e9)) as emu:
        client = make_client(emu)
        pools = {days: _trained_pool(client, days) for days in (1, None)}
        for _, pool_id in pools.values():
            client.open_pool(pool_id)
        emu.advance(8 * 3600)
        first = {days: _training_scores(emu, training) for days, (training, _) in pools.items()}
        for _, pool_id in pools.values():
            client.close_pool(pool_id)
        emu.advance(2 * 86400)  # the pools closed: nobody works in them for two days
        for _, pool_id in pools.values():
            client.open_pool(pool_id)
        emu.advance(8 * 3600)
        again = {
            days: Counter(a.user_id for a in client.get_assignments(pool_id=training))
            for days, (training, _) in pools.items()
        }
        later = {days: _training_scores(emu, training) for days, (training, _) in pools.items()}
        answered_later = {
            days: {
                a.user_id
                for a in client.get_assignments(pool_id=pool_id)
                if a.created.timestamp() > 1.8e9 + 2.5 * 86400
            }
            for days, (_, pool_id) in pools.items()
        }
    for days in (1, None):
        failed = {w for w, score in first[days].items() if score < 100}
        assert len(failed) >= 5, first[days]
    # Without `retry_training_after_days`: every worker took each suite once, and kept its score.
    assert max(again[None].values()) == 2
    assert all(later[None][w] == score for w, score in first[None].items())
    # With 1 day: workers who failed came back to the training (two suites per attempt), and some
    # of them passed it this time and worked in the pool.
    failed = {w for w, score in first[1].items() if score < 100}
    retried = {w for w in failed if again[1][w] > 2}
    assert len(retried) >= 3, (failed, again[1])
    passed_now = {w for w in retried if later[1].get(w) == 100}
    assert passed_now and passed_now & answered_later[1]
    # Who passed and did not work in the pool for two days took the training again before working.
    passed = {w for w, score in first[1].items() if score == 100}
    assert answered_later[1] & passed and all(again[1][w] > 2 for w in answered_later[1] & passed)


def _training_scores(emu, training_id: str) -> dict[str, float]:
    """Every worker's finished training score (`/_emulator/workers`), by worker id."""
    return {
        w["id"]: w["trainings"][training_id]
        for w in emu.workers()
        if w["trainings"].get(training_id) is not None
    }
