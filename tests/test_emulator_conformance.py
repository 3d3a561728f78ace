"""The seed notebook's whole sequence against the emulator, as a requester would run it.

An unmodified `TolokaClient` with its default options (retries, timeouts, async creates) drives the
shipped demo configs (`configs/demo-shoes/toloka/*.json`, read as data and filled like the pipeline
fills them): training, an exam pool with suites from JSON, the exam gating loop polling every 60
simulated seconds, the main pool until it closes itself, the export, then the intruder project with
its own training and QC rules until that pool closes itself too, and Dawid-Skene from crowd-kit over
the intruder answers.

It runs at speed 120 and at speed 1200 with the clock running: the requester's own work (grading
hundreds of exams) takes wall time, which at speed 1200 lets the crowd run ten times further ahead
between polls. The numbers of assignments must not depend on it.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from emulator import EmulatorSettings, run_in_background

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import toloka.client as toloka
    from crowdkit.aggregation import DawidSkene

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo-shoes"
PIPELINE = yaml.safe_load((CONFIGS / "pipeline.yaml").read_text())
VALUES = {  # what the pipeline fills in for the demo, from its pipeline.yaml
    "min_skill": float(PIPELINE["exam"]["min_skill"]),
    "reward": PIPELINE["hits"]["reward"],
    "overlap": PIPELINE["hits"]["overlap"],
    "exam_reward": PIPELINE["exam"]["reward"],
    "exam_overlap": PIPELINE["exam"]["expected_workers"],
    "intruder_reward": PIPELINE["intruders"]["reward"],
    "intruder_overlap": PIPELINE["intruders"]["overlap"],
}
N_EXAMS, HIT_SIZE, N_INTRUDER_HITS, POLL = (
    PIPELINE["exam"]["n_exams"],
    PIPELINE["hits"]["size"],
    PIPELINE["intruders"]["n_hits"],
    60.0,
)
SPEEDS = (120.0, 1200.0)  # simulated seconds per wall second: a slow and a ten times faster crowd
PLACEHOLDER = re.compile(r"^\$\{([a-z_]+)\}$")


def _config(name: str, **extra: Any) -> Any:
    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str) and (match := PLACEHOLDER.match(value)):
            return (VALUES | extra)[match.group(1)]
        return value

    return fill(json.loads((CONFIGS / "toloka" / name).read_text()))


def _project_and_training(client: Any, project: str, training: str, tasks: str) -> tuple[Any, Any]:
    """A project, its training and the training's tasks, created from config files (the notebook's way)."""
    created_project = client.create_project(toloka.Project.from_json(json.dumps(_config(project))))
    created_training = toloka.Training.from_json(json.dumps(_config(training)))
    created_training.project_id = created_project.id
    created_training = client.create_training(created_training)
    items = []
    for item in _config(tasks):
        task = toloka.Task.from_json(json.dumps(item))
        task.pool_id = created_training.id
        items.append(task)
    assert len(client.create_tasks(items).items) == len(items)
    return created_project, created_training


def _clusters(images: list[str], groups: list[dict[str, int]]) -> set[frozenset[str]]:
    by_group: dict[int, set[str]] = {}
    for image, g in zip(images, groups, strict=True):
        by_group.setdefault(int(g["group"]), set()).add(image)
    return {frozenset(v) for v in by_group.values()}


def _exam_check(client: Any, exam_pool_id: str, skill_id: str) -> None:
    """The notebook's exam_check: grade SUBMITTED exams, accept or reject, add score/3 to the skill."""
    df = client.get_assignments_df(pool_id=exam_pool_id, status=["SUBMITTED"])
    for assignment_id, rows in df.groupby("ASSIGNMENT:assignment_id", sort=True):
        row = rows.iloc[0]
        images = json.loads(f"[{row['INPUT:images']}]")
        answer = _clusters(images, json.loads(row["OUTPUT:result"]))
        gold = _clusters(images, json.loads(row["GOLDEN:result"]))
        if answer == gold:
            client.accept_assignment(assignment_id, "Excellent")
            score = 100.0
        else:
            client.reject_assignment(assignment_id, "Partly correct")
            score = 100.0 * len(answer & gold) / len(gold)
        worker = row["ASSIGNMENT:worker_id"]
        current = list(client.get_user_skills(user_id=worker, skill_id=skill_id))
        value = float(current[0].exact_value or 0) if current else 0.0
        client.set_user_skill(
            skill_id=skill_id, user_id=worker, value=Decimal(min(value + score / N_EXAMS, 100))
        )


def _wait_closed(client: Any, pool_id: str, sleep: Callable[[], None], each: Callable[[], None]) -> int:
    """The notebook's loop: poll the completion analytics every 60 s until the pool closes itself."""
    pool, polls = client.get_pool(pool_id), 0
    while pool.is_open():
        assert polls < 2000, "the pool never closed itself"
        each()
        op = client.get_analytics(
            [toloka.analytics_request.CompletionPercentagePoolAnalytics(subject_id=pool_id)]
        )
        percentage = client.wait_operation(op).details["value"][0]["result"]["value"]
        assert 0 <= percentage <= 100
        sleep()
        pool, polls = client.get_pool(pool_id), polls + 1
    assert pool.last_close_reason.value == "COMPLETED"
    return polls


def _notebook(speed: float) -> dict[str, Any]:
    settings = EmulatorSettings(port=0, speed=speed, seed=0)
    with run_in_background(settings) as emu:
        client = toloka.TolokaClient(emu.token, url=emu.url)
        clock = emu.emulator.clock
        last = [clock.now()]

        def sleep() -> None:
            """`sleep(60)` in simulated time: only what the requester's own work has not used up."""
            used = clock.now() - last[0]
            if used < POLL:
                emu.advance(POLL - used)
            last[0] = clock.now()

        assert client.get_requester().balance > 0
        # Training and exam project, training, its tasks, the exam pool and its suites (Task.from_json).
        exam_project, training = _project_and_training(
            client, "exam_project.json", "training.json", "training_tasks.json"
        )
        exam_pool = toloka.Pool.from_json(json.dumps(_config("exam_pool.json")))
        exam_pool.project_id = exam_project.id
        exam_pool.quality_control.training_requirement.training_pool_id = training.id
        exam_pool.will_expire = datetime.now() + timedelta(days=7)
        exam_pool = client.create_pool(exam_pool)
        suites = []
        for item in _config("exam_suites.json"):
            suite = toloka.Task.from_json(json.dumps(item))
            suite.pool_id = exam_pool.id
            suites.append(suite)
        assert len(client.create_task_suites(suites, allow_defaults=True).items) == N_EXAMS
        skill = client.create_skill(name="Shoes clustering")

        # Main project and pool (the skill id goes into the filter and the SET_SKILL rule).
        main_project = client.create_project(
            toloka.Project.from_json(json.dumps(_config("main_project.json")))
        )
        main_pool = toloka.Pool.from_json(json.dumps(_config("main_pool.json", skill_id=skill.id)))
        main_pool.project_id = main_project.id
        main_pool.will_expire = datetime.now() + timedelta(days=7)
        main_pool = client.create_pool(main_pool)
        dataset = pd.read_csv(CONFIGS / "dataset.tsv", sep="\t")
        truth = {Path(u).name: c for u, c in zip(dataset["image"], dataset["class"], strict=True)}
        images = sorted(dataset["image"])
        n = len(images)
        hits = [[images[(k + 9 * i) % n] for i in range(HIT_SIZE)] for k in range(n)]
        created = client.create_task_suites(
            [
                toloka.TaskSuite(pool_id=main_pool.id, tasks=[toloka.Task(input_values={"images": h})])
                for h in hits
            ],
            allow_defaults=True,
        )
        assert len(created.items) == n

        client.open_training(training.id)
        client.open_pool(exam_pool.id)
        client.open_pool(main_pool.id)
        main_polls = _wait_closed(
            client, main_pool.id, sleep, lambda: _exam_check(client, exam_pool.id, skill.id)
        )
        _exam_check(client, exam_pool.id, skill.id)
        client.close_training(training.id)
        client.close_pool(exam_pool.id)
        main = client.get_assignments_df(pool_id=main_pool.id)[
            [
                "INPUT:images",
                "OUTPUT:result",
                "GOLDEN:result",
                "ASSIGNMENT:assignment_id",
                "ASSIGNMENT:worker_id",
            ]
        ]
        groups = main["OUTPUT:result"].map(lambda c: json.loads(c if c.startswith("[") else f"[{c}]"))
        assert groups.map(len).eq(HIT_SIZE).all()

        # Intruders: HITs of 7 images of one class and 1 of another; own project, training, QC rules.
        by_class: dict[str, list[str]] = {}
        for url in images:
            by_class.setdefault(truth[Path(url).name], []).append(url)
        big = sorted(c for c, members in by_class.items() if len(members) >= 7)
        r = random.Random(0)
        intruder_hits, odd_one = [], []
        for _ in range(N_INTRUDER_HITS):
            cluster, other = r.sample(big, 2)
            hit = r.sample(by_class[cluster], 7) + r.sample(by_class[other], 1)
            r.shuffle(hit)
            intruder_hits.append(hit)
            odd_one.append(str(1 + next(i for i, u in enumerate(hit) if truth[Path(u).name] == other)))
        intruder_project, intruder_training = _project_and_training(
            client, "intruders_project.json", "intruders_training.json", "intruders_training_tasks.json"
        )
        intruder_pool = toloka.Pool.from_json(json.dumps(_config("intruders_pool.json", skill_id=skill.id)))
        intruder_pool.project_id = intruder_project.id
        intruder_pool.quality_control.training_requirement.training_pool_id = intruder_training.id
        intruder_pool.will_expire = datetime.now() + timedelta(days=7)
        intruder_pool = client.create_pool(intruder_pool)
        client.create_task_suites(
            [
                toloka.TaskSuite(pool_id=intruder_pool.id, tasks=[toloka.Task(input_values={"images": h})])
                for h in intruder_hits
            ],
            allow_defaults=True,
        )
        client.open_training(intruder_training.id)
        client.open_pool(intruder_pool.id)
        intruder_polls = _wait_closed(client, intruder_pool.id, sleep, lambda: None)
        client.close_training(intruder_training.id)
        client.close_pool(intruder_pool.id)
        intruders = client.get_assignments_df(pool_id=intruder_pool.id)[
            ["INPUT:images", "OUTPUT:answer", "GOLDEN:answer", "ASSIGNMENT:worker_id", "ASSIGNMENT:status"]
        ]
        stats = emu.stats()

    answers = pd.DataFrame(
        {
            "task": intruders["INPUT:images"],
            "worker": intruders["ASSIGNMENT:worker_id"],
            "label": intruders["OUTPUT:answer"],
        }
    ).astype(str)
    found = DawidSkene(n_iter=100).fit_predict(answers)
    expected = {
        json.dumps(h, separators=(",", ":"))[1:-1]: odd for h, odd in zip(intruder_hits, odd_one, strict=True)
    }
    return {
        "main_rows": len(main),
        "main_assignments": main["ASSIGNMENT:assignment_id"].nunique(),
        "main_workers": main["ASSIGNMENT:worker_id"].nunique(),
        "intruder_rows": len(intruders),
        "intruder_statuses": set(intruders["ASSIGNMENT:status"]),
        "intruder_accuracy": sum(found[t] == expected[t] for t in found.index) / len(expected),
        "polls": (main_polls, intruder_polls),
        "exam_pool": stats["pools"][exam_pool.id],
    }


@pytest.fixture(scope="module")
def runs() -> dict[float, dict[str, Any]]:
    return {speed: _notebook(speed) for speed in SPEEDS}


@pytest.mark.parametrize("speed", SPEEDS)
def test_every_stage_completes_and_both_pools_close_themselves(runs, speed):
    run = runs[speed]
    assert run["main_rows"] == run["main_assignments"] == 82 * VALUES["overlap"]
    assert run["main_workers"] >= 574 // 50  # nobody reaches the ANSWER_COUNT restriction alone
    assert run["intruder_rows"] == N_INTRUDER_HITS * VALUES["intruder_overlap"]
    assert run["intruder_statuses"] == {"APPROVED"}
    assert run["intruder_accuracy"] >= 0.8, run
    assert run["exam_pool"]["done"] >= 3 * VALUES["exam_overlap"]
    assert all(p >= 1 for p in run["polls"])


def test_the_numbers_do_not_depend_on_the_clients_speed(runs):
    slow, fast = runs[SPEEDS[0]], runs[SPEEDS[1]]
    keys = ("main_rows", "main_assignments", "intruder_rows")
    assert {k: slow[k] for k in keys} == {k: fast[k] for k in keys}
