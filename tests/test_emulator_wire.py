"""toloka-kit 1.2.3 against the emulator: every method the pipeline uses, shapes and error bodies."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
import toloka.client as toloka
from toloka.client import exceptions

from tests.fixtures.emulator import VIEW, create_spec_project, make_client, project_json

LONG_ID = re.compile(r"^[0-9a-f]{16}--[0-9a-f]{12}$")


def _project(client, output_type: str = "json", name: str = "wire") -> toloka.Project:
    return client.create_project(toloka.Project.from_json(project_json(name, output_type, True)))


def _pool(client, project_id: str, **extra) -> toloka.Pool:
    return client.create_pool(toloka.Pool.from_json(json.dumps(_pool_config(project_id) | extra)))


def _pool_config(project_id: str) -> dict:
    return {
        "project_id": project_id,
        "private_name": "wire pool",
        "reward_per_assignment": 0.01,
        "assignment_max_duration_seconds": 600,
        "may_contain_adult_content": False,
        "will_expire": "2100-01-01T00:00:00",
        "defaults": {"default_overlap_for_new_task_suites": 3},
        "auto_accept_solutions": False,
        # Nobody speaks "ZZ": wire tests keep the simulated crowd out of their pools.
        "filter": {
            "and": [{"or": [{"category": "profile", "key": "languages", "operator": "IN", "value": "ZZ"}]}]
        },
        # read-only keys of exported configs must be accepted and ignored
        "id": "999",
        "status": "OPEN",
        "owner": {"id": "x"},
        "created": "2020-01-01T00:00:00",
    }


def _created(result) -> list:
    """Items of a batch-create result in request order."""
    return [result.items[str(i)] for i in range(len(result.items))]


def _raw(emu) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"OAuth {emu.token}"}, timeout=10)


def test_requester_and_projects(toloka_client):
    requester = toloka_client.get_requester()
    assert requester.balance > 0
    first = _project(toloka_client, name="p-first")
    second = _project(toloka_client, name="p-second")
    assert first.id != "108336" and first.status == toloka.Project.ProjectStatus.ACTIVE
    assert toloka_client.get_project(second.id).public_name == "p-second"
    names = [p.public_name for p in toloka_client.get_projects(status="ACTIVE")]
    assert {"p-first", "p-second"} <= set(names)
    newest = toloka_client.find_projects(status="ACTIVE", sort=["-created"], limit=1)
    assert newest.has_more and [p.id for p in newest.items] == [second.id]
    with pytest.raises(exceptions.DoesNotExistApiError):
        toloka_client.get_project("987654")


def test_newest_first_also_on_a_frozen_clock(emulator_factory):
    """`sort=-created` lists the newest object first even when objects share a timestamp (speed 0,
    or several creates in one simulated millisecond): ties are in id order, the sort's direction, as
    Toloka's strictly increasing creation times give. `find_projects(sort=['-created'], limit=1)`
    is how a notebook finds its newest project."""
    with emulator_factory(speed=0) as emu:
        client = make_client(emu)
        projects = [_project(client, name=f"frozen-{i}") for i in range(3)]
        assert len({p.created for p in projects}) == 1
        newest = client.find_projects(status="ACTIVE", sort=["-created"], limit=1)
        assert [p.id for p in newest.items] == [projects[-1].id] and newest.has_more
        listed = client.find_projects(sort=["-created"]).items
        assert [p.id for p in listed] == [p.id for p in reversed(projects)]
        assert [p.id for p in client.find_projects(sort=["created"]).items] == [p.id for p in projects]


def test_paging_follows_id_gt(emulator, toloka_client):
    for i in range(3):
        _project(toloka_client, name=f"page-{i}")
    with _raw(emulator) as raw:
        page = raw.get("/api/v1/projects", params={"sort": "id", "limit": 1}).json()
        assert page["has_more"] and len(page["items"]) == 1
        nxt = raw.get(
            "/api/v1/projects", params={"sort": "id", "limit": 1, "id_gt": page["items"][0]["id"]}
        ).json()
        assert int(nxt["items"][0]["id"]) > int(page["items"][0]["id"])
    all_ids = [int(p.id) for p in toloka_client.get_projects()]
    assert all_ids == sorted(all_ids) and len(all_ids) == len(set(all_ids))


def test_pools_trainings_open_close_and_one_id_space(emulator, toloka_client):
    project = _project(toloka_client)
    training = toloka_client.create_training(
        toloka.Training(project_id=project.id, private_name="t", training_tasks_in_task_suite_count=1)
    )
    pool = _pool(toloka_client, project.id)
    assert pool.id != "999" and pool.status == toloka.Pool.Status.CLOSED and pool.type.value == "REGULAR"
    assert int(pool.id) != int(training.id)
    with pytest.raises(exceptions.IncorrectActionsApiError) as empty:
        toloka_client.open_pool(pool.id)
    assert empty.value.code == "EMPTY_POOL"
    toloka_client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": ["u1", "u2"]})])],
        allow_defaults=True,
    )
    toloka_client.create_tasks(
        [
            toloka.Task(
                pool_id=training.id,
                input_values={"images": ["a"]},
                known_solutions=[
                    toloka.task.BaseTask.KnownSolution(output_values={"result": [{"group": 1}]})
                ],
                infinite_overlap=True,
            )
        ]
    )
    assert toloka_client.open_pool(pool.id).is_open()
    assert toloka_client.open_training(training.id).is_open()
    with _raw(emulator) as raw:
        again = raw.post(f"/api/v1/pools/{pool.id}/open")
        assert again.status_code == 204 and again.content == b""
        assert raw.get(f"/api/v1/trainings/{pool.id}").status_code == 404  # a pool is not a training
    closed = toloka_client.close_pool(pool.id)
    assert closed.status == toloka.Pool.Status.CLOSED and closed.last_close_reason.value == "MANUAL"
    assert toloka_client.close_training(training.id).status.value == "CLOSED"
    assert [p.id for p in toloka_client.find_pools(project_id=project.id, status="CLOSED").items] == [pool.id]
    toloka_client.archive_pool(pool.id)
    toloka_client.archive_training(training.id)
    toloka_client.archive_project(project.id)
    assert toloka_client.get_project(project.id).status.value == "ARCHIVED"


def test_skills_and_user_skills(toloka_client):
    name = f"skill-{uuid.uuid4().hex[:6]}"
    skill = toloka_client.create_skill(name=name)
    assert [s.id for s in toloka_client.find_skills(name=name).items] == [skill.id]
    assert list(toloka_client.get_user_skills(user_id="abcdef0123", skill_id=skill.id)) == []
    from decimal import Decimal

    set_ = toloka_client.set_user_skill(
        skill_id=skill.id, user_id="abcdef0123", value=Decimal("33.333333333333336")
    )
    assert set_.value == 33 and set_.exact_value == Decimal("33.333333333333336")
    toloka_client.set_user_skill(skill_id=skill.id, user_id="abcdef0123", value=Decimal(80))
    found = list(toloka_client.get_user_skills(user_id="abcdef0123", skill_id=skill.id))
    assert len(found) == 1 and found[0].value == 80


def test_a_skill_name_with_a_comma_is_found_by_that_name(toloka_client):
    """`find_skills(name=...)` is an exact match on the whole name: a comma in it is no list separator
    (only `status` takes comma-joined lists), so a run whose skill name has a comma finds its skill
    again instead of creating another one on every resume."""
    tag = uuid.uuid4().hex[:6]
    whole = toloka_client.create_skill(name=f"Shoes, boots {tag}")
    toloka_client.create_skill(name="Shoes")
    toloka_client.create_skill(name=f"boots {tag}")
    found = toloka_client.find_skills(name=f"Shoes, boots {tag}").items
    assert [(s.id, s.name) for s in found] == [(whole.id, f"Shoes, boots {tag}")]
    assert [s.id for s in toloka_client.get_skills(name=f"Shoes, boots {tag}")] == [whole.id]


def test_async_and_sync_batch_creates(emulator, toloka_client):
    project = _project(toloka_client)
    pool = _pool(toloka_client, project.id)
    suites = [
        toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": [f"u{i}", "v"]})])
        for i in range(60)  # more than one search page (50)
    ]
    created = _created(toloka_client.create_task_suites(suites, allow_defaults=True))
    assert len(created) == 60 and all(LONG_ID.match(s.id) for s in created)
    assert [s.id for s in created] == sorted(s.id for s in created)
    assert {s.overlap for s in created} == {3} and created[0].remaining_overlap == 3
    sync = _created(
        toloka_client.create_task_suites(
            [
                toloka.TaskSuite(
                    pool_id=pool.id, overlap=2, tasks=[toloka.Task(input_values={"images": ["s"]})]
                )
            ],
            async_mode=False,
        )
    )
    assert sync[0].overlap == 2
    # The exam shape: loaded with Task.from_json, stray keys ride along.
    exam_item = toloka.Task.from_json(
        json.dumps(
            {
                "tasks": [{"input_values": {"images": ["e1", "e2"]}, "known_solutions": []}],
                "issuing_order_override": 0.0,
                "mixed": False,
                "allow_defaults": True,
            }
        )
    )
    exam_item.pool_id = pool.id
    assert len(_created(toloka_client.create_task_suites([exam_item], allow_defaults=True))) == 1
    with pytest.raises(exceptions.ValidationApiError) as invalid:
        toloka_client.create_task_suites(
            [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={})])]
        )
    assert "tasks.0.input_values.images" in invalid.value.payload["0"]
    # A single object that carries the `__item_idx` of an exported config is created all the same.
    with _raw(emulator) as raw:
        single = {"pool_id": pool.id, "tasks": [{"input_values": {"images": ["x"]}}], "__item_idx": "7"}
        sync = {"async_mode": "false", "allow_defaults": "true"}
        one = raw.post("/api/v1/task-suites", json=single, params=sync)
        assert one.status_code == 201 and LONG_ID.match(one.json()["id"]), one.text
        del single["tasks"][0]["input_values"]["images"]
        bad = raw.post("/api/v1/task-suites", json=single, params=sync)
        assert bad.status_code == 400 and "tasks.0.input_values.images" in bad.json()["payload"], bad.text


def test_operation_ids_are_idempotent(emulator, toloka_client):
    project = _project(toloka_client)
    pool = _pool(toloka_client, project.id)
    op_id = uuid.uuid4()
    suites = [
        toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": [f"i{i}"]})])
        for i in range(5)
    ]
    params = {"operation_id": op_id, "allow_defaults": True}
    first = _created(toloka_client.create_task_suites(suites, **params))
    # A retry with the same operation id: 409 OPERATION_ALREADY_EXISTS, then the client reads the operation.
    second = _created(toloka_client.create_task_suites(suites, **params))
    assert [s.id for s in first] == [s.id for s in second]
    assert len(list(toloka_client.get_task_suites(pool_id=pool.id))) == 5
    with _raw(emulator) as raw:
        body = [{"pool_id": pool.id, "tasks": [{"input_values": {"images": ["x"]}}]}]
        conflict = raw.post(
            "/api/v1/task-suites", params={"operation_id": str(op_id), "async_mode": "true"}, json=body
        )
        assert conflict.status_code == 409 and conflict.json()["code"] == "OPERATION_ALREADY_EXISTS"
        log = raw.get(f"/api/v1/operations/{op_id}/log").json()
        assert len(log) == 5 and all(e["success"] and e["type"] == "TASK_SUITE_CREATE" for e in log)
        assert {e["input"]["__item_idx"] for e in log} == {str(i) for i in range(5)}
    op = toloka_client.get_operation(str(op_id))
    assert op.status.value == "SUCCESS" and op.type.value == "TASK_SUITE.BATCH_CREATE"


def test_training_tasks_infinite_overlap_round_trip(toloka_client):
    project = _project(toloka_client)
    training = toloka_client.create_training(toloka.Training(project_id=project.id, private_name="t"))
    task = toloka.Task.from_json(
        json.dumps(
            {
                "input_values": {"instructions": "do", "images": ["a", "b"]},
                "known_solutions": [
                    {"output_values": {"result": [{"group": 1}, {"group": 2}]}, "correctness_weight": 1}
                ],
                "message_on_unknown_solution": "hint",
                "infinite_overlap": True,
                "overlap": None,
            }
        )
    )
    task.pool_id = training.id
    created = _created(toloka_client.create_tasks([task]))
    assert len(created) == 1 and created[0].infinite_overlap and created[0].overlap is None
    assert [t.id for t in toloka_client.get_tasks(pool_id=training.id)] == [created[0].id]


def test_analytics_and_tsv_of_empty_pool(toloka_client):
    project = _project(toloka_client)
    pool = _pool(toloka_client, project.id)
    toloka_client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": ["a"]})])],
        allow_defaults=True,
    )
    op = toloka_client.get_analytics(
        [
            toloka.analytics_request.CompletionPercentagePoolAnalytics(subject_id=pool.id),
            toloka.analytics_request.EstimatedAssignmentsCountPoolAnalytics(subject_id=pool.id),
        ]
    )
    details = toloka_client.wait_operation(op).details["value"]
    assert details[0]["result"]["value"] == 0 and details[1]["result"] == 3
    df = toloka_client.get_assignments_df(pool_id=pool.id)
    assert df.empty
    assert {"INPUT:images", "OUTPUT:result", "GOLDEN:result", "HINT:text", "ASSIGNMENT:worker_id"} <= set(
        df.columns
    )


def test_error_bodies_always_carry_a_code(emulator):
    with _raw(emulator) as raw:
        for response in (
            raw.get("/api/v1/no-such-thing"),
            raw.delete("/api/v1/projects"),
            raw.post("/api/v1/skills", content=b"{bad", headers={"Content-Type": "application/json"}),
            raw.post("/api/v1/skills", json={}),
            raw.patch("/api/v1/assignments/0000000000000000--000000000000", json={"status": "ACCEPTED"}),
        ):
            assert response.status_code >= 400 and "code" in response.json(), response.text
            assert "retry-after" not in response.headers
        assert raw.post("/api/v1/skills", json={}).json()["payload"]["name"]["code"] == "VALUE_REQUIRED"
    bad = toloka.TolokaClient("wrong-token", url=emulator.url, retries=0)
    with pytest.raises(exceptions.AuthenticationApiError):
        bad.get_requester()


def test_polled_reads_answer_like_every_route(emulator, toloka_client):
    """get_pool / get_training / get_operation skip FastAPI's machinery: same errors, any stored document."""
    project = _project(toloka_client)
    with _raw(emulator) as raw:
        for path in ("/api/v1/pools/987654", "/api/v1/trainings/987654", "/api/v1/operations/nope"):
            missing = raw.get(path)
            assert missing.status_code == 404 and missing.json()["code"] == "DOES_NOT_EXIST", path
        # An integer beyond 64 bits (orjson refuses it) is still answered as sent.
        config = json.loads(toloka.Pool.from_json(json.dumps(_pool_config(project.id))).to_json())
        created = raw.post("/api/v1/pools", json=config | {"metadata": {"big": [2**70]}})
        read = raw.get(f"/api/v1/pools/{created.json()['id']}")
        assert read.status_code == 200 and read.json()["metadata"] == {"big": [2**70]}
    assert toloka_client.get_pool(created.json()["id"]).private_name == "wire pool"


def test_task_spec_is_echoed(toloka_client):
    spec = {
        "input_spec": {"url": {"type": "url"}},
        "output_spec": {"ok": {"type": "boolean"}},
        "view_spec": VIEW,
    }
    project = create_spec_project(toloka_client, "echo", spec)
    assert set(toloka_client.get_project(project.id).task_spec.output_spec) == {"ok"}


def test_update_keeps_identity_and_status(toloka_client):
    project = _project(toloka_client, name="before")
    project.public_name = "after"
    updated = toloka_client.update_project(project.id, project)
    assert updated.id == project.id and updated.public_name == "after" and updated.status.value == "ACTIVE"
    pool = _pool(toloka_client, project.id)
    pool.private_name = "renamed"
    pool.priority = 5
    renamed = toloka_client.update_pool(pool.id, pool)
    assert (renamed.id, renamed.private_name, renamed.priority, renamed.project_id) == (
        pool.id,
        "renamed",
        5,
        project.id,
    )


def test_money_guard_and_internal_errors(emulator_factory):
    with emulator_factory(speed=0, balance=0.01) as emu:
        client = make_client(emu)
        project = _project(client)
        pool = _pool(client, project.id, reward_per_assignment=0.02)
        client.create_task_suites(
            [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": ["a"]})])],
            allow_defaults=True,
        )
        with pytest.raises(exceptions.IncorrectActionsApiError) as poor:
            client.open_pool(pool.id)
        assert poor.value.code == "NOT_ENOUGH_BALANCE"

        def boom():
            raise RuntimeError("bug")

        emu.emulator.requester = boom
        emu.emulator.get_pool = lambda *_: boom()
        with _raw(emu) as raw:
            for path in ("/api/v1/requester", f"/api/v1/pools/{pool.id}"):
                crash = raw.get(path)
                assert crash.status_code == 500 and crash.json()["code"] == "INTERNAL_ERROR", path


def _open_pool_of_ten_suites(emu, images: int, **pool_settings):
    """A client and an open pool of 10 suites of `images` demo images each, for anyone to answer."""
    client = make_client(emu)
    project = _project(client, output_type="array_json")
    pool = _pool(client, project.id, filter=None, **pool_settings)
    urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(images)]
    client.create_task_suites(
        [
            toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": urls})])
            for _ in range(10)
        ],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    return client, pool


def test_pool_closes_when_the_balance_runs_out(emulator_factory):
    with emulator_factory(speed=0, balance=0.1) as emu:
        client, pool = _open_pool_of_ten_suites(
            emu, 20, reward_per_assignment=0.02, auto_accept_solutions=True
        )
        for _ in range(50):
            emu.advance(300)
        closed = client.get_pool(pool.id)
        assert closed.status.value == "CLOSED" and closed.last_close_reason.value == "NOT_ENOUGH_BALANCE"
        accepted = len(list(client.get_assignments(pool_id=pool.id, status="ACCEPTED")))
        assert 0 < accepted < 30


def test_a_pool_does_not_open_on_money_held_for_answers_awaiting_review(emulator_factory):
    """Toloka reserves the money for submitted answers until they are reviewed, and a pool starts only
    if the account can pay for its work: the balance less what is reserved. Before, `open_pool` looked
    at the balance alone and opened a pool the first worker to come by closed again
    (NOT_ENOUGH_BALANCE), as the crowd counts the reserved money."""
    with emulator_factory(speed=0, balance=0.5) as emu:
        client, pool = _open_pool_of_ten_suites(emu, 10, reward_per_assignment=0.1)  # reviewed by hand
        for _ in range(50):
            if client.get_pool(pool.id).status.value == "CLOSED":
                break
            emu.advance(300)
        closed = client.get_pool(pool.id)
        assert closed.last_close_reason.value == "NOT_ENOUGH_BALANCE"
        waiting = list(client.get_assignments(pool_id=pool.id, status="SUBMITTED"))
        # Nothing is paid yet: the $0.50 is all there, $0.13 a suite of it reserved for what waits.
        assert float(client.get_requester().balance) == 0.5 and len(waiting) == 3
        with pytest.raises(exceptions.IncorrectActionsApiError) as poor:
            client.open_pool(pool.id)
        assert poor.value.code == "NOT_ENOUGH_BALANCE"
        assert client.get_pool(pool.id).status.value == "CLOSED"
        client.reject_assignment(waiting[0].id, "wrong groups")  # frees its reserved $0.13
        assert client.open_pool(pool.id).status.value == "OPEN"


def test_the_export_leaves_out_banned_workers_when_asked(emulator_factory):
    """`get_assignments_df(..., exclude_banned=True)` sends `excludeBanned=true`: the answers of
    workers banned from the pool (a user restriction on the pool, its project, all projects) are left
    out, whatever their status; a ban elsewhere, or no such parameter, leaves them in."""
    with emulator_factory(speed=0, seed=2, workers=300) as emu:
        client = make_client(emu)
        project = _project(client, output_type="array_json")
        other = _project(client, output_type="array_json", name="elsewhere")
        pool = _pool(client, project.id, auto_accept_solutions=True, filter=None)
        urls = [f"{emu.url}/images/demo-shoes/s2-{i:05d}.png" for i in range(40)]
        client.create_task_suites(
            [
                toloka.TaskSuite(
                    pool_id=pool.id, tasks=[toloka.Task(input_values={"images": urls[k : k + 4]})]
                )
                for k in range(0, 40, 4)
            ],
            allow_defaults=True,
        )
        client.open_pool(pool.id)
        for _ in range(30):
            if client.get_pool(pool.id).status.value == "CLOSED":
                break
            emu.advance(600)
        everyone = client.get_assignments_df(pool_id=pool.id)
        workers = sorted(set(everyone["ASSIGNMENT:worker_id"]))
        assert len(everyone) == 30 and len(workers) >= 4
        restriction = toloka.user_restriction
        banned = {
            workers[0]: restriction.PoolUserRestriction(user_id=workers[0], pool_id=pool.id),
            workers[1]: restriction.ProjectUserRestriction(user_id=workers[1], project_id=project.id),
            workers[2]: restriction.AllProjectsUserRestriction(user_id=workers[2]),
        }
        for ban in banned.values():
            client.set_user_restriction(ban)
        client.set_user_restriction(
            restriction.ProjectUserRestriction(user_id=workers[3], project_id=other.id)
        )
        kept = client.get_assignments_df(pool_id=pool.id, exclude_banned=True)
        assert set(kept["ASSIGNMENT:worker_id"]) == set(workers) - set(banned)
        assert len(kept) == (~everyone["ASSIGNMENT:worker_id"].isin(list(banned))).sum()
        assert client.get_assignments_df(pool_id=pool.id, exclude_banned=False).equals(everyone)
        assert client.get_assignments_df(pool_id=pool.id).equals(everyone)
