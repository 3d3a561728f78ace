"""The rest of the requester API through an unmodified TolokaClient, answered as toloka-kit expects."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
import warnings
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import pytest

from emulator import EmulatorSettings, run_in_background
from emulator.guard import route_of
from tests.fixtures.emulator import restriction_rule

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import toloka.client as toloka
    from toloka.client import exceptions
    from toloka.client.aggregation import (
        PoolAggregatedSolutionRequest,
        WeightedDynamicOverlapTaskAggregatedSolutionRequest,
    )
    from toloka.client.primitives.retry import TolokaRetry

START = 1.8e9  # 2027-01-15T08:00:00, so that timestamps are known


@pytest.fixture(scope="module")
def emu():
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=11, start=START, workers=400)) as running:
        yield running


@pytest.fixture(scope="module")
def client(emu):
    return toloka.TolokaClient(emu.token, url=emu.url)


def _project(client, output="string"):
    spec = {
        "input_spec": {"images": {"type": "array_json", "required": True}},
        "output_spec": {"result": {"type": output}},
        "view_spec": {"type": "classic", "script": "", "markup": "", "styles": ""},
    }
    return client.create_project(
        toloka.Project(
            public_name="api",
            public_description="api",
            task_spec=toloka.project.task_spec.TaskSpec.structure(spec),
        )
    )


def _fast_retrying_client(emu):
    """toloka-kit's retry policy (4 attempts, POST included) without its 4 s and 8 s waits."""
    return toloka.TolokaClient(
        emu.token,
        url=emu.url,
        retryer_factory=lambda: TolokaRetry(
            retry_quotas=None,
            total=3,
            status_forcelist=[408, 429, 500, 503, 504],
            allowed_methods=["GET", "PUT", "DELETE", "POST", "PATCH"],
            backoff_factor=0,
        ),
    )


def _pool(client, project_id, **extra):
    config = {
        "project_id": project_id,
        "private_name": "api pool",
        "reward_per_assignment": 0.05,
        "assignment_max_duration_seconds": 600,
        "may_contain_adult_content": False,
        "will_expire": "2100-01-01T00:00:00",
        "auto_accept_solutions": True,
        "defaults": {"default_overlap_for_new_task_suites": 2, "default_overlap_for_new_tasks": 2},
    } | extra
    return client.create_pool(toloka.Pool.structure(config))


def _images(emu, n=10, offset=0):
    return [f"{emu.url}/images/demo-shoes/s0-{(offset + i) % 82:05d}.png" for i in range(n)]


def _wait_closed(emu, client, pool_id, step=600.0, limit=300):
    for _ in range(limit):
        pool = client.get_pool(pool_id)
        if not pool.is_open():
            return pool
        emu.advance(step)
    raise AssertionError("pool never closed")


def test_single_creates_with_default_options_go_through_operations(emu, client):
    pool = _pool(client, _project(client).id)
    task = client.create_task(toloka.Task(pool_id=pool.id, input_values={"images": _images(emu)}, overlap=1))
    assert task.id and task.overlap == 1
    suite = client.create_task_suite(
        toloka.TaskSuite(
            pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})], overlap=3
        )
    )
    assert suite.id and suite.overlap == 3
    ops = client.find_operations(type="TASK_SUITE.BATCH_CREATE", status="SUCCESS", sort=["-submitted"]).items
    assert ops and all(op.status.value == "SUCCESS" for op in ops)


def test_an_invalid_item_fails_the_whole_batch_with_field_errors(emu, client):
    pool = _pool(client, _project(client).id)
    good = toloka.Task(pool_id=pool.id, input_values={"images": _images(emu)}, overlap=1)
    bad = toloka.Task(pool_id=pool.id, input_values={}, overlap=1)
    with pytest.raises(exceptions.ValidationApiError) as failed:
        client.create_tasks([good, bad], skip_invalid_items=False)
    assert failed.value.payload["1"]["input_values.images"].code == "VALUE_REQUIRED"
    assert list(client.get_tasks(pool_id=pool.id)) == []
    done = client.create_tasks([good, bad], skip_invalid_items=True)
    assert list(done.items) == ["0"] and "1" in done.validation_errors


def test_allow_defaults_decides_where_the_overlap_comes_from(emu, client):
    pool = _pool(client, _project(client).id)
    bare = [toloka.Task(pool_id=pool.id, input_values={"images": _images(emu)})]
    with pytest.raises(exceptions.ValidationApiError) as refused:
        client.create_tasks(bare)
    assert "overlap" in refused.value.payload["0"]
    created = client.create_tasks(bare, allow_defaults=True)
    assert created.items["0"].overlap == 2


def test_patches_clone_and_close_for_update(emu, client):
    pool = _pool(client, _project(client).id)
    assert client.patch_pool(pool.id, priority=7).priority == 7
    suites = client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    suite = suites.items["0"]
    assert client.patch_task_suite(suite.id, overlap=4).overlap == 4
    assert client.patch_task_suite_overlap_or_min(suite.id, overlap=1).overlap == 1
    task = client.create_task(toloka.Task(pool_id=pool.id, input_values={"images": _images(emu)}, overlap=2))
    assert client.patch_task(task.id, overlap=5).overlap == 5
    assert client.patch_task_overlap_or_min(task.id, overlap=3).overlap == 3
    client.open_pool(pool.id)
    closed = client.close_pool_for_update(pool.id)
    assert closed.status.value == "CLOSED" and closed.last_close_reason.value == "FOR_UPDATE"
    clone = client.clone_pool(pool.id)
    assert clone.id != pool.id and clone.private_name == pool.private_name and clone.status.value == "CLOSED"
    assert list(client.get_task_suites(pool_id=clone.id)) == []


def test_skills_user_skills_range_and_deletion(emu, client):
    skill = client.create_skill(name="api skill")
    assert client.update_skill(skill.id, toloka.Skill(name="renamed")).name == "renamed"
    emu.advance(300)  # the market's first workers show up
    worker = emu.workers()[0]["id"]
    with pytest.raises(exceptions.ValidationApiError) as out_of_range:
        client.set_user_skill(skill_id=skill.id, user_id=worker, value=Decimal(150))
    assert out_of_range.value.payload["value"]["code"] == "VALUE_OUT_OF_RANGE"
    user_skill = client.set_user_skill(skill_id=skill.id, user_id=worker, value=Decimal(80))
    client.delete_user_skill(user_skill.id)
    assert list(client.get_user_skills(user_id=worker, skill_id=skill.id)) == []
    with pytest.raises(exceptions.ValidationApiError) as unknown:
        _pool(
            client,
            _project(client).id,
            filter={"and": [{"category": "skill", "key": "999999", "operator": "GTE", "value": 1}]},
        )
    assert unknown.value.payload["filter.and[0].or[0].key"]["code"] == "DOES_NOT_EXIST"


def test_work_bonuses_restrictions_aggregation_and_spend(emu, client):
    pool = _pool(client, _project(client, output="string").id)
    hits = [_images(emu, offset=10 * k) for k in range(6)]
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": h})]) for h in hits],
        allow_defaults=True,
    )
    # A worker banned from the project before it opens never works on it.
    emu.advance(300)
    banned = emu.workers()[0]["id"]
    restriction = client.set_user_restriction(
        toloka.user_restriction.ProjectUserRestriction(
            user_id=banned, project_id=pool.project_id, private_comment="x"
        )
    )
    assert [r.id for r in client.get_user_restrictions(user_id=banned)] == [restriction.id]
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    taken = list(client.get_assignments(pool_id=pool.id))
    # 6 suites x overlap 2 answered; a worker may also have skipped one (alone, this test saw one).
    assignments = [a for a in taken if a.status.value in ("SUBMITTED", "ACCEPTED")]
    assert len(assignments) == 12 and banned not in {a.user_id for a in taken}
    client.delete_user_restriction(restriction.id)
    assert list(client.get_user_restrictions(user_id=banned)) == []

    def spent() -> Decimal:
        op = client.get_analytics([toloka.analytics_request.SpentBudgetPoolAnalytics(subject_id=pool.id)])
        return client.wait_operation(op).details["value"][0]["result"]

    before = spent()
    assert float(before) == pytest.approx(12 * 0.05 * 1.3)
    pool.reward_per_assignment = 1.0
    client.update_pool(pool.id, pool)
    assert spent() == before  # what was paid stays paid

    balance = float(client.get_requester().balance)
    bonus = client.create_user_bonus(
        toloka.UserBonus(
            user_id=assignments[0].user_id, amount=Decimal("0.5"), assignment_id=assignments[0].id
        )
    )
    assert bonus.id and [b.id for b in client.get_user_bonuses(user_id=assignments[0].user_id)] == [bonus.id]
    assert float(client.get_requester().balance) == pytest.approx(balance - 0.5 * 1.3)

    user = client.get_user(assignments[0].user_id)
    assert user.id == assignments[0].user_id and user.languages
    op = client.aggregate_solutions_by_pool(
        type="DAWID_SKENE", pool_id=pool.id, fields=[PoolAggregatedSolutionRequest.Field(name="result")]
    )
    op = client.wait_operation(op)
    found = list(client.get_aggregated_solutions(op.id))
    assert len(found) == 6 and all(0 < s.confidence <= 1 for s in found)
    skill = client.create_skill(name="weights")
    one = client.aggregate_solutions_by_task(
        WeightedDynamicOverlapTaskAggregatedSolutionRequest(
            task_id=found[0].task_id,
            pool_id=pool.id,
            answer_weight_skill_id=skill.id,
            fields=[WeightedDynamicOverlapTaskAggregatedSolutionRequest.Field(name="result")],
        )
    )
    assert one.task_id == found[0].task_id and "result" in one.output_values


def test_clock_expiry_and_auto_accept(emu, client):
    now = dt.datetime.fromtimestamp(emu.advance(0), dt.UTC).replace(tzinfo=None)
    assert now > dt.datetime(2027, 1, 15)
    project = _project(client)
    pool = _pool(
        client,
        project.id,
        auto_accept_solutions=False,
        auto_accept_period_day=1,
        will_expire=(now + dt.timedelta(hours=30)).isoformat(),
        defaults={"default_overlap_for_new_task_suites": 1},
    )
    assert [p.id for p in client.find_pools(created_gte=now - dt.timedelta(hours=1)).items][-1] == pool.id
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])] * 2,
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    emu.advance(3 * 3600)
    assert {a.status.value for a in client.get_assignments(pool_id=pool.id)} == {"SUBMITTED"}
    emu.advance(24 * 3600)  # the review period ends: accepted (and paid) without the requester
    assert {a.status.value for a in client.get_assignments(pool_id=pool.id)} == {"ACCEPTED"}
    expired = _pool(client, project.id, will_expire=(now + dt.timedelta(hours=40)).isoformat())
    client.create_task_suites(
        [
            toloka.TaskSuite(
                pool_id=expired.id, tasks=[toloka.Task(input_values={"images": ["x"]})], overlap=10**6
            )
        ],
    )
    client.open_pool(expired.id)
    emu.advance(24 * 3600)
    closed = client.get_pool(expired.id)
    assert closed.status.value == "CLOSED" and closed.last_close_reason.value == "EXPIRED"


def test_admin_routes_need_the_token_and_sane_values(emu, client):
    pool_id = _pool(client, _project(client).id).id
    with httpx.Client(base_url=emu.url, timeout=10) as raw:
        assert raw.post("/_emulator/advance", params={"seconds": 1}).status_code == 401
        auth = {"Authorization": f"OAuth {emu.token}"}
        huge = raw.post("/_emulator/advance", params={"seconds": 1e308}, headers=auth)
        assert huge.status_code == 400 and huge.json()["code"] == "VALIDATION_ERROR"
        nan = raw.post("/_emulator/advance", params={"seconds": "nan"}, headers=auth)
        assert nan.status_code == 400
        bad_speed = raw.post("/_emulator/config", params={"speed": -1}, headers=auth)
        assert bad_speed.status_code == 400 and "speed" in bad_speed.json()["payload"]
        before = float(client.get_requester().balance)
        assert raw.post("/_emulator/top-up", params={"amount": 5}).status_code == 401
        for bad in (-1, 0, "nan", 1e7):
            refused = raw.post("/_emulator/top-up", params={"amount": bad}, headers=auth)
            assert refused.status_code == 400 and "amount" in refused.json()["payload"], bad
        topped = raw.post("/_emulator/top-up", params={"amount": 12.5}, headers=auth).json()
        assert topped == {"balance": round(before + 12.5, 4)}
        assert float(client.get_requester().balance) == pytest.approx(before + 12.5)
        assert raw.post("/api/v1/skills", json={"name": "after"}, headers=auth).status_code == 201
        bad_filter = raw.get("/api/v1/pools", params={"created_gte": "yesterday"}, headers=auth)
        body = bad_filter.json()
        assert bad_filter.status_code == 400 and body["code"] == "VALIDATION_ERROR"
        assert "created_gte" in body["payload"] and "Error" not in body["message"]
        bad_export = raw.get(
            f"/api/new/requester/pools/{pool_id}/assignments.tsv",
            params={"startTimeFrom": "soon"},
            headers=auth,
        )
        assert bad_export.status_code == 400 and "startTimeFrom" in bad_export.json()["payload"]


def test_rate_limit_answers_429_that_the_client_retries():
    with run_in_background(EmulatorSettings(port=0, speed=0, rate_limit=20)) as emu:
        errors = []

        def hammer() -> None:
            client = toloka.TolokaClient(emu.token, url=emu.url)
            try:
                for _ in range(15):
                    client.get_requester()
            except Exception as exc:  # any escape is the failure this test looks for
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = emu.stats()["rate"]
    assert errors == []
    assert rate["limit_per_second"] == 20
    assert max(rate["peak_per_second"].values()) <= 20
    assert sum(rate["throttled"].values()) > 0
    # Only answered requests are counted, by route: the 45 calls, however many 429s they met.
    assert rate["requests"] == {"GET /api/v1/requester": 45}


def test_stats_count_requests_by_route_with_ids_folded():
    assert route_of("/api/v1/pools/123/open") == "/api/v1/pools/{id}/open"
    assert route_of("/api/v1/assignments/00000abc-def0-4123-8456-789abcdef012") == "/api/v1/assignments/{id}"
    assert route_of("/api/v1/user-skills") == "/api/v1/user-skills"


def test_rate_limit_can_be_set_at_run_time(emu):
    """`/_emulator/config?rate_limit=` switches the per-token limit on and off; counts start over."""
    auth = {"Authorization": f"OAuth {emu.token}"}
    with httpx.Client(base_url=emu.url, timeout=10, headers=auth) as raw:
        assert raw.post("/_emulator/config", params={"rate_limit": -1}).status_code == 400
        try:
            assert raw.post("/_emulator/config", params={"rate_limit": 3}).json()["rate_limit"] == 3
            codes = [raw.get("/api/v1/requester").status_code for _ in range(6)]
            rate = emu.stats()["rate"]
        finally:
            raw.post("/_emulator/config", params={"rate_limit": 0}).raise_for_status()
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:], codes
        assert rate["limit_per_second"] == 3 and sum(rate["throttled"].values()) >= 1
        assert {raw.get("/api/v1/requester").status_code for _ in range(6)} == {200}
        after = emu.stats()["rate"]
        assert after["limit_per_second"] is None and after["throttled"] == {}


def _worker(emu) -> str:
    emu.advance(0 if emu.workers() else 300)  # the market's first workers show up
    return emu.workers()[0]["id"]


def _balance(client) -> Decimal:
    return Decimal(str(client.get_requester().balance))


def test_a_replayed_bonus_operation_pays_once(emu, client):
    """toloka-kit replays a create with the same operation_id after a lost answer: one bonus, one charge."""
    worker = _worker(emu)
    before, bonuses = _balance(client), len(list(client.get_user_bonuses(user_id=worker)))
    params = toloka.user_bonus.UserBonusCreateRequestParameters(operation_id=uuid.uuid4())
    bonus = toloka.UserBonus(user_id=worker, amount=Decimal("1"), private_comment="replayed")
    first = client.create_user_bonus(bonus, parameters=params)
    assert client.create_user_bonus(bonus, parameters=params).id == first.id
    many = toloka.user_bonus.UserBonusCreateRequestParameters(operation_id=uuid.uuid4())
    batch = [toloka.UserBonus(user_id=worker, amount=Decimal("2"), private_comment=f"b{k}") for k in (1, 2)]
    ids = {b.id for b in client.create_user_bonuses(batch, parameters=many).items.values()}
    assert {b.id for b in client.create_user_bonuses(batch, parameters=many).items.values()} == ids
    op = client.create_user_bonuses_async(batch, parameters=many)
    assert str(op.id) == str(many.operation_id)
    assert _balance(client) == before - Decimal("5") * Decimal("1.3")
    assert len(list(client.get_user_bonuses(user_id=worker))) == bonuses + 3


def test_bonuses_through_lost_answers_are_charged_once(emu):
    """With faults injected after the work (lost answers), every bonus is still issued and paid once."""
    fast = _fast_retrying_client(emu)
    worker = _worker(emu)
    before, bonuses = _balance(fast), len(list(fast.get_user_bonuses(user_id=worker)))
    lost = emu.stats()["lost_responses"]
    emu.configure(fail_rate=0.5)
    try:
        for k in range(10):
            fast.create_user_bonus(
                toloka.UserBonus(user_id=worker, amount=Decimal("1"), private_comment=f"f{k}")
            )
    finally:
        emu.configure(fail_rate=0)
    assert emu.stats()["lost_responses"] > lost  # the replay path was taken
    assert _balance(fast) == before - Decimal("13")
    assert len(list(fast.get_user_bonuses(user_id=worker))) == bonuses + 10


def _raw(emu) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"OAuth {emu.token}"}, timeout=10)


def _pool_body(project_id: str, **extra) -> dict:
    return {
        "project_id": project_id,
        "private_name": "raw pool",
        "reward_per_assignment": 0.05,
        "assignment_max_duration_seconds": 600,
        "may_contain_adult_content": False,
        "will_expire": "2030-01-01T00:00:00",
        "defaults": {"default_overlap_for_new_task_suites": 1},
    } | extra


def test_malformed_configs_are_refused_and_nothing_is_stored(emu, client):
    """Configs the crowd could not read are 400s naming the field, not a stored object that fails later."""
    project = _project(client)
    history = {"type": "GOLDEN_SET", "parameters": {"history_size": "ten"}}
    bad_pools = {
        "filter.and": {"filter": {"and": "notalist"}},
        "filter.or[0].operator": {
            "filter": {"or": [{"category": "profile", "key": "languages", "value": "EN"}]}
        },
        "quality_control.configs[0].collector_config.parameters.history_size": {
            "quality_control": {"configs": [{"collector_config": history, "rules": []}]}
        },
        "quality_control.configs[0].rules[0].action.type": {
            "quality_control": {"configs": [{"collector_config": {"type": "ANSWER_COUNT"}, "rules": [{}]}]}
        },
    }
    with _raw(emu) as raw:
        pools_before = len(raw.get("/api/v1/pools", params={"limit": 300}).json()["items"])
        for field, extra in bad_pools.items():
            answer = raw.post("/api/v1/pools", json=_pool_body(project.id, **extra))
            assert answer.status_code == 400 and field in answer.json()["payload"], (field, answer.json())
        assert len(raw.get("/api/v1/pools", params={"limit": 300}).json()["items"]) == pools_before
        spec = {"input_spec": {"images": {"type": "array_json"}}, "output_spec": {"result": "string"}}
        bad_project = raw.post("/api/v1/projects", json={"public_name": "bad", "task_spec": spec})
        assert (
            bad_project.status_code == 400 and "task_spec.output_spec.result" in bad_project.json()["payload"]
        )
        pool = _pool(client, project.id)
        task = {"pool_id": pool.id, "input_values": {"images": ["x"]}, "overlap": 1, "known_solutions": "x"}
        for mode in ("false", "true"):
            answer = raw.post("/api/v1/tasks", json=[task], params={"async_mode": mode})
            assert answer.status_code in (400, 202) and answer.status_code != 500
        assert raw.post("/api/v1/tasks", json=task, params={"async_mode": "false"}).json()["payload"] == {
            "known_solutions": {"code": "INVALID_FORMAT", "message": "known_solutions must be a list"}
        }
    assert list(client.get_tasks(pool_id=pool.id)) == []


def test_a_pool_that_fails_in_the_crowd_is_closed_and_the_market_goes_on(emu, client):
    """An unexpected error in one pool's simulation closes that pool (BLOCKED); others keep working."""
    project = _project(client)
    pools = [_pool(client, project.id, private_name=name) for name in ("broken", "healthy")]
    for pool in pools:
        client.create_task_suites(
            [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
            allow_defaults=True,
        )
        client.open_pool(pool.id)
    with emu.emulator.store.lock:  # as a state saved before filters were checked could hold
        emu.emulator.store.data["pool"][pools[0].id]["filter"] = {"and": "notalist"}
    emu.advance(600)
    with _raw(emu) as raw:  # raw: toloka-kit cannot parse the broken filter
        broken = raw.get(f"/api/v1/pools/{pools[0].id}").json()
    assert broken["status"] == "CLOSED" and broken["last_close_reason"] == "BLOCKED"
    assert "AttributeError" in emu.stats()["pools"][pools[0].id]["error"]
    healthy = _wait_closed(emu, client, pools[1].id)
    assert healthy.last_close_reason.value == "COMPLETED"


def _submitted(emu, client, pool_id: str, n: int, step: float = 600.0) -> list:
    for _ in range(100):
        found = list(client.get_assignments(pool_id=pool_id, status="SUBMITTED"))
        if len(found) >= n:
            return found
        emu.advance(step)
    raise AssertionError("nothing was submitted")


def _reviewed_by_hand(emu, client) -> Any:
    """An open pool without auto-accept, holding one HIT: its answers wait for the requester."""
    pool = _pool(client, _project(client).id, auto_accept_solutions=False)
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    return pool


def test_a_rejection_can_be_changed_to_accepted_and_is_paid_then(emu, client):
    pool = _reviewed_by_hand(emu, client)
    assignment = _submitted(emu, client, pool.id, 1)[0]
    before = _balance(client)
    assert client.reject_assignment(assignment.id, "wrong").status.value == "REJECTED"
    assert _balance(client) == before
    accepted = client.accept_assignment(assignment.id, "sorry, it was right")
    assert accepted.status.value == "ACCEPTED" and accepted.public_comment == "sorry, it was right"
    assert _balance(client) == before - Decimal("0.05") * Decimal("1.3")
    with pytest.raises(exceptions.ConflictStateApiError):
        client.reject_assignment(assignment.id, "changed my mind again")
    client.close_pool(pool.id)


def test_an_exam_pool_is_closed_for_good_once_every_answer_is_reviewed_and_no_seat_came_back(emu, client):
    """What the exam gating's warnings and `ExamStarved` rely on, on the wire: an exam pool (manual
    review, a rejection gives its seat back) closes COMPLETED while its answers still wait for
    review, and a rejection reopens it for a new answer (`tasks.exam.exam_closed_for_good`)."""
    from tasks.exam import exam_closed_for_good

    reopen = {"type": "CHANGE_OVERLAP", "parameters": {"delta": 1, "open_pool": True}}
    rejected = {"key": "assessment_event", "operator": "EQ", "value": "REJECT"}
    rules = [{"conditions": [rejected], "action": reopen}]
    pool = _pool(
        client,
        _project(client).id,
        auto_accept_solutions=False,
        auto_close_after_complete_delay_seconds=0,
        quality_control={
            "configs": [{"collector_config": {"type": "ASSIGNMENTS_ASSESSMENT"}, "rules": rules}]
        },
    )
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    first = _submitted(emu, client, pool.id, 2)
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    assert not exam_closed_for_good(client, pool.id)  # two answers wait for review
    client.reject_assignment(first[0].id, "wrong")
    client.accept_assignment(first[1].id, "right")
    assert not exam_closed_for_good(client, pool.id, rejected=1)
    assert client.get_pool(pool.id).is_open()  # the rejected answer's seat came back
    again = [a for a in _submitted(emu, client, pool.id, 1) if a.id != first[0].id]
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    assert not exam_closed_for_good(client, pool.id)  # the new answer waits for review
    client.accept_assignment(again[0].id, "right")
    assert exam_closed_for_good(client, pool.id)


def _field_errors(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 400, (answer.status_code, answer.text)
    return set(answer.json()["payload"])


def test_pools_are_checked_as_toloka_checks_them(emu, client):
    """Fields Toloka requires, its least reward, a future will_expire, no move between projects."""
    project = _project(client)
    with _raw(emu) as raw:
        bare = {"project_id": project.id, "private_name": "bare", "reward_per_assignment": 0.05}
        assert _field_errors(raw.post("/api/v1/pools", json=bare)) == {
            "will_expire",
            "may_contain_adult_content",
            "assignment_max_duration_seconds",
            "defaults",
        }
        cheap = _pool_body(project.id, reward_per_assignment=0.004)
        assert _field_errors(raw.post("/api/v1/pools", json=cheap)) == {"reward_per_assignment"}
        past = _pool_body(project.id, will_expire="2020-01-01T00:00:00")
        assert _field_errors(raw.post("/api/v1/pools", json=past)) == {"will_expire"}
        pool = raw.post("/api/v1/pools", json=_pool_body(project.id)).json()
        assert _field_errors(raw.put(f"/api/v1/pools/{pool['id']}", json=past)) == {"will_expire"}
        other = _project(client)
        moved = raw.put(f"/api/v1/pools/{pool['id']}", json=_pool_body(other.id))
        assert _field_errors(moved) == {"project_id"}
        assert raw.post(f"/api/v1/pools/{pool['id']}/archive").status_code == 202
        archived = raw.put(f"/api/v1/pools/{pool['id']}", json=_pool_body(project.id))
        assert archived.status_code == 409 and archived.json()["code"] == "POOL_INAPPROPRIATE_STATUS"


def test_the_settings_the_crowd_reads_are_checked_and_archived_objects_take_no_changes(emu, client):
    """A pool's settings are 400s naming the field when the crowd could not read them. Before, a
    string `priority` was stored and stopped every worker of the market (the crowd sorts all open
    pools by it), an overlap of -1 closed a pool COMPLETED with no answer, and a skill filter's
    string value broke every `get_pool` of the pool in toloka-kit. An archived project takes no new
    pool and no PUT, an archived pool no PATCH (409s, as Toloka answers changes to archived objects)."""
    project = _project(client)
    skill = client.create_skill(name="checked settings")
    bad = {
        "priority": {"priority": "high"},
        "auto_accept_solutions": {"auto_accept_solutions": "yes"},
        "auto_accept_period_day": {"auto_accept_period_day": 0},
        "auto_close_after_complete_delay_seconds": {"auto_close_after_complete_delay_seconds": -1},
        "defaults.default_overlap_for_new_task_suites": {
            "defaults": {"default_overlap_for_new_task_suites": -1}
        },
        "mixer_config.real_tasks_count": {"mixer_config": {"real_tasks_count": 2.5}},
        "filter.value": {"filter": {"category": "skill", "key": skill.id, "operator": "GTE", "value": "abc"}},
    }
    with _raw(emu) as raw:
        before = len(raw.get("/api/v1/pools", params={"limit": 300}).json()["items"])
        for field, extra in bad.items():
            assert _field_errors(raw.post("/api/v1/pools", json=_pool_body(project.id, **extra))) == {field}
        reward = raw.post("/api/v1/pools", json=_pool_body(project.id, reward_per_assignment="abc"))
        assert reward.json()["payload"]["reward_per_assignment"]["code"] == "INVALID_FORMAT"
        training = {"project_id": project.id, "private_name": "t", "training_tasks_in_task_suite_count": 0}
        assert _field_errors(raw.post("/api/v1/trainings", json=training)) == {
            "training_tasks_in_task_suite_count"
        }
        assert len(raw.get("/api/v1/pools", params={"limit": 300}).json()["items"]) == before
        fine = {
            "priority": -100,
            "filter": {"category": "skill", "key": skill.id, "operator": "EQ", "value": None},
        }
        pool = raw.post("/api/v1/pools", json=_pool_body(project.id, **fine)).json()
        assert client.get_pool(pool["id"]).priority == -100  # what toloka-kit reads back
        assert _field_errors(
            raw.put(f"/api/v1/pools/{pool['id']}", json=_pool_body(project.id, priority=101))
        ) == {"priority"}
        for priority in ("high", 101, None):
            assert _field_errors(raw.patch(f"/api/v1/pools/{pool['id']}", json={"priority": priority})) == {
                "priority"
            }
        assert raw.post(f"/api/v1/pools/{pool['id']}/archive").status_code == 202
        patched = raw.patch(f"/api/v1/pools/{pool['id']}", json={"priority": 5})
        assert patched.status_code == 409 and patched.json()["code"] == "POOL_INAPPROPRIATE_STATUS"
        assert raw.post(f"/api/v1/projects/{project.id}/archive").status_code == 202
        for answer in (
            raw.post("/api/v1/pools", json=_pool_body(project.id)),
            raw.put(f"/api/v1/projects/{project.id}", json={"public_name": "again", "task_spec": {}}),
        ):
            assert answer.status_code == 409 and answer.json()["code"] == "PROJECT_INAPPROPRIATE_STATUS", (
                answer.text
            )
    with pytest.raises(exceptions.IncorrectActionsApiError):
        client.create_pool(toloka.Pool.structure(_pool_body(project.id)))


def test_an_expired_pool_opens_only_with_a_new_will_expire_and_clones_keep_it(emu, client):
    now = dt.datetime.fromtimestamp(emu.advance(0), dt.UTC).replace(tzinfo=None)
    pool = _pool(client, _project(client).id, will_expire=(now + dt.timedelta(hours=1)).isoformat())
    assert client.clone_pool(pool.id).will_expire == pool.will_expire
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    emu.advance(2 * 3600)
    with pytest.raises(exceptions.ConflictStateApiError):
        client.open_pool(pool.id)
    assert client.get_pool(pool.id).status.value == "CLOSED"
    pool.will_expire = now + dt.timedelta(days=3)
    client.update_pool(pool.id, pool)
    assert client.open_pool(pool.id).is_open()
    client.close_pool(pool.id)


def test_tasks_must_fit_the_project_spec(emu, client):
    """input_values against the input spec, known solutions against the output spec's allowed values,
    and a training task needs known solutions."""
    spec = {
        "input_spec": {
            "image": {"type": "url", "required": True},
            "note": {"type": "string", "required": False},
        },
        "output_spec": {"label": {"type": "string", "allowed_values": ["cat", "dog"]}},
        "view_spec": {"type": "classic", "script": "", "markup": "", "styles": ""},
    }
    with _raw(emu) as raw:
        project = raw.post("/api/v1/projects", json={"public_name": "spec", "task_spec": spec}).json()
        pool = raw.post("/api/v1/pools", json=_pool_body(project["id"])).json()

        def refused(**task) -> set[str]:
            body = {"pool_id": pool["id"], "overlap": 1} | task
            return _field_errors(raw.post("/api/v1/tasks", json=body, params={"async_mode": "false"}))

        assert refused(input_values={"note": "x"}) == {"input_values.image"}
        assert refused(input_values={"image": 3}) == {"input_values.image"}
        assert refused(input_values={"image": "u", "extra": 1}) == {"input_values.extra"}
        gold = [{"output_values": {"label": "bird"}}]
        assert refused(input_values={"image": "u"}, known_solutions=gold) == {
            "known_solutions.0.output_values.label"
        }
        ok = {"pool_id": pool["id"], "overlap": 1, "input_values": {"image": "u"}}
        assert raw.post("/api/v1/tasks", json=ok, params={"async_mode": "false"}).status_code == 201
        training = raw.post(
            "/api/v1/trainings", json={"project_id": project["id"], "private_name": "t"}
        ).json()
        no_gold = {"pool_id": training["id"], "input_values": {"image": "u"}}
        assert _field_errors(raw.post("/api/v1/tasks", json=no_gold, params={"async_mode": "false"})) == {
            "known_solutions"
        }


def test_rejections_and_bonuses_name_what_is_missing(emu, client):
    pool = _reviewed_by_hand(emu, client)
    first, second = _submitted(emu, client, pool.id, 2)[:2]
    client.close_pool(pool.id)
    with pytest.raises(exceptions.ValidationApiError) as no_comment:
        client.reject_assignment(first.id, "")
    assert "public_comment" in no_comment.value.payload
    with _raw(emu) as raw:
        unknown = raw.post(
            "/api/v1/user-bonuses", json={"user_id": "nobody", "amount": 1}, params={"async_mode": "false"}
        )
        assert _field_errors(unknown) == {"user_id"}
        cited = {"user_id": first.user_id, "amount": 1, "assignment_id": second.id}
        assert _field_errors(
            raw.post("/api/v1/user-bonuses", json=cited, params={"async_mode": "false"})
        ) == {"assignment_id"}


def test_searches_refuse_what_toloka_refuses(emu, client):
    with _raw(emu) as raw:
        for path, params, field in (
            ("/api/v1/pools", {"limit": 0}, "limit"),
            ("/api/v1/pools", {"limit": 100_001}, "limit"),
            ("/api/v1/pools", {"status": "OPENED"}, "status"),
            ("/api/v1/pools", {"sort": "private_name"}, "sort"),
            ("/api/v1/pools", {"id_gt": "abc"}, "id_gt"),
            ("/api/v1/assignments", {"status": "APPROVED", "pool_id": "1"}, "status"),
            ("/api/v1/assignments", {"sort": "-reward", "pool_id": "1"}, "sort"),
            ("/api/v1/tasks", {"id_gt": "not an id", "pool_id": "1"}, "id_gt"),
            ("/api/v1/assignments", {"limit": 100_001, "pool_id": "1"}, "limit"),
            # Toloka: tasks need a pool, suites a pool or a task, assignments a pool, task or suite.
            ("/api/v1/assignments", {"status": "SUBMITTED"}, "pool_id"),
            ("/api/v1/task-suites", {}, "pool_id"),
            ("/api/v1/tasks", {"overlap": 1}, "pool_id"),
        ):
            assert _field_errors(raw.get(path, params=params)) == {field}, (path, params)
    assert client.find_pools(status="OPEN", sort=["-created"], limit=300).items is not None
    assert client.find_assignments(pool_id="1", limit=100_000).items is not None
    # Each collection's largest page is toloka-kit's documented maximum (pools answered 100,000).
    with _raw(emu) as raw:
        for path, most in (
            ("pools", 300),
            ("trainings", 300),
            ("projects", 300),
            ("skills", 100),
            ("operations", 500),
            ("user-bonuses", 300),
            ("user-restrictions", 500),
            ("user-skills", 1000),
        ):
            assert raw.get(f"/api/v1/{path}", params={"limit": most}).status_code == 200, path
            assert _field_errors(raw.get(f"/api/v1/{path}", params={"limit": most + 1})) == {"limit"}, path
            zero = raw.get(f"/api/v1/{path}", params={"limit": 0}).json()["payload"]["limit"]["message"]
            assert zero == f"limit must be from 1 to {most} in this collection", (path, zero)
    with pytest.raises(exceptions.ValidationApiError) as refused:
        client.find_skills(limit=101)
    assert set(refused.value.payload) == {"limit"}


def test_endpoints_the_emulator_lacks_say_so(emu, client):
    """Attachments, message threads, webhooks, app projects: 501 NOT_SUPPORTED_BY_EMULATOR with the
    route, not a 404 that reads as "this object does not exist"."""
    calls = (
        lambda: client.get_attachment("0000000000000001--000000000001"),
        lambda: list(client.get_message_threads(folder="INBOX")),
        lambda: client.get_webhook_subscription("1"),
        lambda: client.get_app_project("1"),
    )
    for call in calls:
        with pytest.raises(exceptions.ApiError) as refused:
            call()
        assert refused.value.status_code == 501 and refused.value.code == "NOT_SUPPORTED_BY_EMULATOR"
        assert "does not support" in refused.value.message
    with _raw(emu) as raw:
        answer = raw.delete("/api/v1/projects/1")
        assert answer.status_code == 501 and answer.json()["payload"] == {
            "route": "DELETE /api/v1/projects/{id}"
        }
        assert raw.get("/api/v1/pools/999999").json()["code"] == "DOES_NOT_EXIST"  # a missing object still is


def _classification_project(emu, name: str, labels: list[str]) -> dict[str, Any]:
    """A project of one image per task and one label of `labels` (created over raw HTTP)."""
    spec = {
        "input_spec": {"image": {"type": "url"}},
        "output_spec": {"label": {"type": "string", "allowed_values": labels}},
        "view_spec": {"type": "classic", "script": "", "markup": "", "styles": ""},
    }
    with _raw(emu) as raw:
        return raw.post("/api/v1/projects", json={"public_name": name, "task_spec": spec}).json()


def test_single_image_classification_is_answered_like_a_crowd(emu, client):
    """One image, a choice of labels: diligent workers mostly give the image's true class, spammers
    spread over the choices, and a golden task's known answer is its truth (not allowed_values[0])."""
    truth = {row["image"]: row["class"] for row in emu.control("catalogue")["items"][:12]}
    labels = sorted(set(emu.control("catalogue")["items"][i]["class"] for i in range(82)))
    pool = _pool(client, _classification_project(emu, "classify", labels)["id"])
    tasks = [toloka.Task(pool_id=pool.id, input_values={"image": url}, overlap=8) for url in truth]
    gold = toloka.Task(
        pool_id=pool.id,
        input_values={"image": "https://example.org/not-in-any-catalogue.png"},
        known_solutions=[toloka.task.BaseTask.KnownSolution(output_values={"label": labels[-1]})],
        overlap=8,
    )
    created = client.create_tasks([*tasks, gold])
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    types = {w["id"]: w["type"] for w in emu.workers()}
    by_task: dict[str, list[tuple[str, str]]] = {}
    for a in client.get_assignments(pool_id=pool.id, status="ACCEPTED"):
        by_task.setdefault(a.tasks[0].id, []).append(
            (types[a.user_id], a.solutions[0].output_values["label"])
        )
    right = {kind: [0, 0] for kind in ("diligent", "spammer")}
    for task in created.items.values():
        expected = labels[-1] if task.known_solutions else truth[task.input_values["image"]]
        for kind, answer in by_task[task.id]:
            if kind in right:
                right[kind][0] += answer == expected
                right[kind][1] += 1
    assert right["diligent"][1] >= 20 and right["diligent"][0] >= 0.85 * right["diligent"][1], right
    assert right["spammer"][1] >= 3 and right["spammer"][0] <= 0.6 * right["spammer"][1], right
    spam = [answer for answers in by_task.values() for kind, answer in answers if kind == "spammer"]
    assert len(set(spam)) > 1  # spread, not always the first choice


def test_a_misread_digit_is_read_as_a_look_alike(emulator_factory):
    """Classifying digits, a worker who misreads one names a look-alike (its image's nearest other
    class centroids), as on grouping HITs, not any other digit: 12 of 50 wrong labels of workers
    other than spammers were look-alikes (uniform noise over the nine others gives 2 in 9)."""
    from emulator.catalogues import Catalogue, url_path

    looks_like = {item.path: item.confusions for item in Catalogue("digits", size=60).items}
    with emulator_factory(
        speed=0, seed=4, workers=200, catalogue="digits", crowd={"careless": 0.9}
    ) as running:
        client = toloka.TolokaClient(running.token, url=running.url)
        images = [row["image"] for row in running.control("catalogue")["items"][:60]]
        truth = {row["image"]: row["class"] for row in running.control("catalogue")["items"][:60]}
        pool = _pool(client, _classification_project(running, "digits", [str(d) for d in range(10)])["id"])
        client.create_tasks(
            [toloka.Task(pool_id=pool.id, input_values={"image": u}, overlap=5) for u in images]
        )
        client.open_pool(pool.id)
        _wait_closed(running, client, pool.id)
        types = {w["id"]: w["type"] for w in running.workers()}
        wrong = [  # spammers answer at random by design
            (a.tasks[0].input_values["image"], a.solutions[0].output_values["label"])
            for a in client.get_assignments(pool_id=pool.id, status="ACCEPTED")
            if a.solutions[0].output_values["label"] != truth[a.tasks[0].input_values["image"]]
            and types[a.user_id] != "spammer"
        ]
    alike = sum(label in looks_like[url_path(image)] for image, label in wrong)
    assert len(wrong) >= 20 and alike >= 0.8 * len(wrong), (alike, len(wrong))


def test_slow_workers_expire_and_some_skip_unpaid(emu, client):
    """Who needs longer than assignment_max_duration_seconds ends EXPIRED, some workers skip; neither is
    paid, the suite goes back to the pool, and SKIPPED_IN_ROW_ASSIGNMENTS rules count the skips."""
    skips = restriction_rule(
        {"type": "SKIPPED_IN_ROW_ASSIGNMENTS"},
        [{"key": "skipped_in_row_count", "operator": "GTE", "value": 1}],
        "POOL",
        1,
        "DAYS",
    )
    pool = _pool(
        client,
        _project(client).id,
        assignment_max_duration_seconds=60,  # 10 images: only fast workers make it
        quality_control={"configs": [skips]},
        defaults={"default_overlap_for_new_task_suites": 3},
    )
    client.create_task_suites(
        [
            toloka.TaskSuite(
                pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu, offset=k)})]
            )
            for k in range(30)
        ],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    assignments = list(client.get_assignments(pool_id=pool.id))
    by_status: dict[str, list] = {}
    for a in assignments:
        by_status.setdefault(a.status.value, []).append(a)
    assert {"EXPIRED", "SKIPPED", "ACCEPTED"} <= set(by_status), sorted(by_status)
    assert len(by_status["ACCEPTED"]) == 30 * 3  # every suite still got its answers
    assert all(a.expired for a in by_status["EXPIRED"]) and all(a.skipped for a in by_status["SKIPPED"])
    op = client.get_analytics([toloka.analytics_request.SpentBudgetPoolAnalytics(subject_id=pool.id)])
    spent = client.wait_operation(op).details["value"][0]["result"]
    assert float(spent) == pytest.approx(90 * 0.05 * 1.3)
    skippers = {a.user_id for a in by_status["SKIPPED"]}
    restricted = {r.user_id for r in client.get_user_restrictions(pool_id=pool.id)}
    assert skippers and skippers <= restricted


def _real_and_golden(
    pool_id: str, prefix: str, n_real: int, overlap: int, golden_labels: list[str]
) -> list[toloka.Task]:
    """`n_real` tasks of made-up images answered `overlap` times, then one golden task (overlap 1)
    per label of `golden_labels`, whose known answer it is."""
    real = [
        toloka.Task(
            pool_id=pool_id, input_values={"image": f"https://x.org/{prefix}{k}.png"}, overlap=overlap
        )
        for k in range(n_real)
    ]
    golden = [
        toloka.Task(
            pool_id=pool_id,
            input_values={"image": f"https://x.org/{prefix}-gold{k}.png"},
            known_solutions=[toloka.task.BaseTask.KnownSolution(output_values={"label": label})],
            overlap=1,
        )
        for k, label in enumerate(golden_labels)
    ]
    return [*real, *golden]


def test_a_task_pool_issues_suites_by_its_mixer_config(emu, client):
    """4 real + 1 golden per suite: one assignment (and one charge) per suite, golden not counted as real."""
    labels = ["cat", "dog"]
    project = _classification_project(emu, "mixed", labels)
    mixer = {"real_tasks_count": 4, "golden_tasks_count": 1, "training_tasks_count": 0}
    pool = _pool(client, project["id"], mixer_config=mixer)
    client.create_tasks(_real_and_golden(pool.id, "mixed", 8, 1, ["dog", "dog"]))
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    accepted = list(client.get_assignments(pool_id=pool.id, status="ACCEPTED"))
    assert len(accepted) == 2
    assert all(len(a.tasks) == 5 and len(a.solutions) == 5 for a in accepted)
    golden_ids = {t.id for t in client.get_tasks(pool_id=pool.id) if t.known_solutions}
    assert all(sum(t.id in golden_ids for t in a.tasks) == 1 for a in accepted)
    requests = [
        toloka.analytics_request.SpentBudgetPoolAnalytics(subject_id=pool.id),
        toloka.analytics_request.RealTasksCountPoolAnalytics(subject_id=pool.id),
    ]
    spent, real_count = (
        v["result"] for v in client.wait_operation(client.get_analytics(requests)).details["value"]
    )
    assert float(spent) == pytest.approx(2 * 0.05 * 1.3) and real_count == 8


def test_a_training_issues_its_suites_and_passes_as_configured(emu, client):
    """training_tasks_in_task_suite_count tasks per training suite; after task_suites_required_to_pass
    suites a worker has a training score and goes on to the pool that requires it."""
    spec = {
        "input_spec": {"image": {"type": "url"}},
        "output_spec": {"label": {"type": "string", "allowed_values": ["cat", "dog"]}},
        "view_spec": {"type": "classic", "script": "", "markup": "", "styles": ""},
    }
    with _raw(emu) as raw:
        project = raw.post("/api/v1/projects", json={"public_name": "trained", "task_spec": spec}).json()
    training = client.create_training(
        toloka.Training(
            project_id=project["id"],
            private_name="training",
            training_tasks_in_task_suite_count=2,
            task_suites_required_to_pass=1,
        )
    )
    gold = toloka.task.BaseTask.KnownSolution(output_values={"label": "cat"})
    client.create_tasks(
        [
            toloka.Task(
                pool_id=training.id, input_values={"image": f"https://x.org/t{k}.png"}, known_solutions=[gold]
            )
            for k in range(6)
        ]
    )
    requirement = {"training_pool_id": training.id, "training_passing_skill_value": 50}
    pool = _pool(client, project["id"], quality_control={"training_requirement": requirement, "configs": []})
    client.create_tasks(
        [
            toloka.Task(pool_id=pool.id, input_values={"image": f"https://x.org/r{k}.png"}, overlap=2)
            for k in range(3)
        ]
    )
    client.open_training(training.id)
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    client.close_training(training.id)
    trained = list(client.get_assignments(pool_id=training.id))
    assert trained and all(len(a.tasks) == 2 for a in trained)
    per_worker = {a.user_id for a in trained}
    assert len(per_worker) == len(trained)  # one suite each was enough to pass
    workers = {w["id"]: w for w in emu.workers()}
    worked = {a.user_id for a in client.get_assignments(pool_id=pool.id, status="ACCEPTED")}
    assert worked and worked <= per_worker
    assert all(workers[w]["trainings"][training.id] >= 50 for w in worked)


def test_better_paid_pools_fill_sooner(emu, client):
    """Two open pools of the same work and priority: the one paying five times as much per task gets
    most of the workers who come by first."""
    project = _project(client)
    pools = {reward: _pool(client, project.id, reward_per_assignment=reward) for reward in (0.01, 0.05)}
    for pool in pools.values():
        client.create_task_suites(
            [
                toloka.TaskSuite(
                    pool_id=pool.id,
                    tasks=[toloka.Task(input_values={"images": _images(emu, offset=k)})],
                    overlap=10,
                )
                for k in range(40)
            ],
            allow_defaults=True,
        )
    for pool in pools.values():
        client.open_pool(pool.id)
    emu.advance(300)
    taken = {reward: len(list(client.get_assignments(pool_id=pool.id))) for reward, pool in pools.items()}
    assert taken[0.05] >= 2 * max(taken[0.01], 1), taken
    for pool in pools.values():
        client.close_pool(pool.id)


def test_a_task_is_found_in_the_suites_and_assignments_that_hold_it(emu, client):
    """`task_id` filters /task-suites and /assignments (toloka-kit's `find_task_suites(task_id=)`,
    `get_assignments(task_id=)`), also in suites a pool's mixer made: a script reviewing one task's
    answers got nothing, and the suite named by an assignment was a 404."""
    project = _classification_project(emu, "by task", ["cat", "dog"])
    mixer = {"real_tasks_count": 2, "golden_tasks_count": 0, "training_tasks_count": 0}
    mixed = _pool(client, project["id"], mixer_config=mixer)
    tasks = [
        toloka.Task(pool_id=mixed.id, input_values={"image": f"https://x.org/m{k}.png"}, overlap=3)
        for k in range(4)
    ]
    created = list(client.create_tasks(tasks).items.values())
    plain = _pool(client, _project(client).id)
    suites = client.create_task_suites(
        [
            toloka.TaskSuite(
                pool_id=plain.id, tasks=[toloka.Task(input_values={"images": _images(emu, 3, k)})]
            )
            for k in range(3)
        ],
        allow_defaults=True,
    )
    client.open_pool(mixed.id)
    client.open_pool(plain.id)
    _wait_closed(emu, client, mixed.id)
    _wait_closed(emu, client, plain.id)

    task = created[1]
    holding = list(client.get_task_suites(task_id=task.id))
    assert len(holding) == 1 and task.id in [t.id for t in holding[0].tasks]
    answers = list(client.get_assignments(task_id=task.id, status="ACCEPTED"))
    assert len(answers) == 3 and {a.task_suite_id for a in answers} == {holding[0].id}
    assert client.get_task_suite(answers[0].task_suite_id).id == holding[0].id
    assert len(client.find_assignments(task_id=task.id, limit=2).items) == 2  # pages like any search

    suite = suites.items["1"]
    inner = suite.tasks[0].id
    assert [s.id for s in client.get_task_suites(task_id=inner)] == [suite.id]
    by_task = {a.id for a in client.get_assignments(task_id=inner)}
    assert by_task and by_task == {a.id for a in client.get_assignments(task_suite_id=suite.id)}
    assert list(client.get_assignments(task_id="00000000000000ff--000000000000")) == []


def test_tasks_and_suites_are_found_by_overlap(emu, client):
    """`overlap` and `overlap_lt|lte|gt|gte` filter tasks and task suites as Toloka does: a script
    looking for the suites whose overlap a rule raised (`find_task_suites(overlap_gt=...)`) found none."""
    pool = _pool(client, _project(client).id)
    suites = [
        toloka.TaskSuite(
            pool_id=pool.id, overlap=k + 1, tasks=[toloka.Task(input_values={"images": _images(emu, 3, k)})]
        )
        for k in range(3)
    ]
    created = client.create_task_suites(suites)
    ids = {s.overlap: s.id for s in created.items.values()}
    client.patch_task_suite(ids[1], infinite_overlap=True)
    assert [s.id for s in client.get_task_suites(pool_id=pool.id, overlap=2)] == [ids[2]]
    assert [s.id for s in client.get_task_suites(pool_id=pool.id, overlap_gte=2)] == [ids[2], ids[3]]
    assert [s.id for s in client.get_task_suites(pool_id=pool.id, overlap_lt=3)] == [ids[2]]

    task_pool = _pool(client, _project(client).id)
    tasks = client.create_tasks(
        [toloka.Task(pool_id=task_pool.id, input_values={"images": _images(emu, 2, k)}) for k in range(2)],
        allow_defaults=True,
    )
    first = tasks.items["0"]
    client.patch_task_overlap_or_min(first.id, overlap=5)
    assert [t.id for t in client.get_tasks(pool_id=task_pool.id, overlap_gt=2)] == [first.id]
    assert [t.id for t in client.get_tasks(pool_id=task_pool.id, overlap=2)] == [tasks.items["1"].id]
    with _raw(emu) as raw:
        answer = raw.get("/api/v1/tasks", params={"pool_id": task_pool.id, "overlap_gt": "many"})
    assert answer.status_code == 400 and "overlap_gt" in _field_errors(answer)


def test_a_pool_that_does_not_say_accepts_answers_automatically(emu, client):
    """`auto_accept_solutions` defaults to true on Toloka: a pool created without it had its answers
    kept SUBMITTED for good, unpaid and missing from `get_assignments_df`'s default (APPROVED) export."""
    body = _pool_body(_project(client).id, defaults={"default_overlap_for_new_task_suites": 2})
    with _raw(emu) as raw:
        created = raw.post("/api/v1/pools", json=body).json()
        updated = raw.put(f"/api/v1/pools/{created['id']}", json=body).json()
    assert created["auto_accept_solutions"] is True and updated["auto_accept_solutions"] is True
    pool = client.get_pool(created["id"])
    assert pool.auto_accept_solutions is True
    before = _balance(client)
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu, 3)})])],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    assert {a.status.value for a in client.get_assignments(pool_id=pool.id)} >= {"ACCEPTED"}
    assert "SUBMITTED" not in {a.status.value for a in client.get_assignments(pool_id=pool.id)}
    assert len(client.get_assignments_df(pool.id)) == 2
    assert before - _balance(client) == pytest.approx(Decimal("0.13"))


def test_a_pools_export_flows_in_chunks_and_holds_every_answer(monkeypatch):
    """The export was written whole before its first byte was sent: at 90,000 answers (a 100,000-image
    run) on a busy machine that took 101 s, past toloka-kit's 10 s read timeout, so the run's export
    failed on every try. Now it is sent in chunks as it is written (chunked, no length known up
    front), each chunk written under the store's lock, and toloka-kit's reader still gets every
    answer once. (An emulator of its own: the module's shared crowd would work this pool instead of
    the next test's.)"""
    from emulator import tsv

    monkeypatch.setattr(tsv, "ROWS_PER_CHUNK", 2)
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=11, start=START, workers=100)) as emu:
        client = toloka.TolokaClient(emu.token, url=emu.url)
        body = _pool_body(_project(client).id, defaults={"default_overlap_for_new_task_suites": 2})
        with _raw(emu) as raw:
            pool = client.get_pool(raw.post("/api/v1/pools", json=body).json()["id"])
        images = [_images(emu, 3, 3 * i) for i in range(3)]
        suites = [
            toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": i})]) for i in images
        ]
        client.create_task_suites(suites, allow_defaults=True)
        client.open_pool(pool.id)
        _wait_closed(emu, client, pool.id)
        accepted = sorted(a.id for a in client.get_assignments(pool_id=pool.id, status="ACCEPTED"))
        assert len(accepted) == 6, accepted
        export = f"/api/new/requester/pools/{pool.id}/assignments.tsv"
        with _raw(emu) as raw, raw.stream("GET", export) as answer:
            assert answer.status_code == 200 and "content-length" not in answer.headers, answer.headers
            assert answer.headers.get("transfer-encoding") == "chunked", answer.headers
            text = answer.read().decode()
        frame = client.get_assignments_df(pool.id, field=["ASSIGNMENT:assignment_id"])
    assert text.count("\n") == 1 + 6, text
    assert sorted(frame["ASSIGNMENT:assignment_id"]) == accepted


def test_an_open_pool_is_closed_for_update_before_it_is_edited(emu, client):
    """Toloka refuses to edit an open pool (close it for update first): the emulator took the edit,
    so a script raising an open pool's reward passed its rehearsal and failed against Toloka."""
    pool = _pool(client, _project(client).id)
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    pool.reward_per_assignment = 0.5
    with pytest.raises(exceptions.IncorrectActionsApiError) as refused:
        client.update_pool(pool.id, pool)
    assert refused.value.code == "POOL_INAPPROPRIATE_STATUS"
    assert float(client.get_pool(pool.id).reward_per_assignment) == 0.05
    client.close_pool_for_update(pool.id)
    assert float(client.update_pool(pool.id, pool).reward_per_assignment) == 0.5
    assert client.open_pool(pool.id).is_open()
    client.close_pool(pool.id)


def test_a_pool_closed_for_update_opens_again_by_itself(emu, client):
    """toloka-kit: a pool closed for update that is not opened again opens by itself 15 minutes later
    (and goes on spending); the emulator left it closed. Opened or closed by the requester in the
    meantime, it stays as the requester left it."""
    pool = _pool(client, _project(client).id, defaults={"default_overlap_for_new_task_suites": 10**6})
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    closed = client.close_pool_for_update(pool.id)
    assert (closed.status.value, closed.last_close_reason.value) == ("CLOSED", "FOR_UPDATE")
    emu.advance(14 * 60)
    assert client.get_pool(pool.id).status.value == "CLOSED"
    emu.advance(2 * 60)
    reopened = client.get_pool(pool.id)
    assert reopened.status.value == "OPEN" and reopened.last_started > closed.last_stopped

    client.close_pool_for_update(pool.id)
    client.open_pool(pool.id)
    client.close_pool(pool.id)  # the requester's own decision stands
    emu.advance(20 * 60)
    assert client.get_pool(pool.id).status.value == "CLOSED"


def _open_one_suite_pool(emu, client, close_delay: int):
    """An open pool of one suite of ten images, overlap 1, closing `close_delay` s after it completes."""
    pool = _pool(
        client,
        _project(client).id,
        defaults={"default_overlap_for_new_task_suites": 1},
        auto_close_after_complete_delay_seconds=close_delay,
    )
    client.create_task_suites(
        [toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu)})])],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    return pool


def test_a_completed_pool_opened_again_closes_again(emu, client):
    """A pool with every suite answered that is opened again closes itself again (COMPLETED) after
    its auto-close delay, as on Toloka: it stayed open for good, and a script waiting for the pool to
    close (the seed notebook's `while pool.is_open()`) never ended."""
    pool = _open_one_suite_pool(emu, client, close_delay=600)
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    assert client.open_pool(pool.id).is_open()
    emu.advance(300)
    assert client.get_pool(pool.id).is_open()  # the auto-close delay runs again
    emu.advance(400)
    again = client.get_pool(pool.id)
    assert (again.status.value, again.last_close_reason.value) == ("CLOSED", "COMPLETED")


def test_the_auto_close_delay_counts_from_the_last_completion(emu, client):
    """A pool that completes, is given more to answer within its auto-close delay and completes again
    closes the delay after its last completion: it closed the delay after its first one, while the
    requester was still counting on the delay (here 40 minutes early)."""
    pool = _open_one_suite_pool(emu, client, close_delay=3600)
    suite_id = next(iter(client.get_task_suites(pool_id=pool.id))).id

    def advance_until_accepted(count: int) -> float:
        """The simulated instant at which the pool first holds `count` accepted answers (minute steps)."""
        for _ in range(30):
            if len(list(client.get_assignments(pool_id=pool.id, status="ACCEPTED"))) >= count:
                return emu.advance(0)
            emu.advance(60)
        raise AssertionError(f"fewer than {count} answers")

    first = advance_until_accepted(1)  # complete: its delay runs from at most now
    emu.advance(1200)
    client.patch_task_suite(suite_id, toloka.task_suite.TaskSuitePatch(overlap=2))
    second = advance_until_accepted(2)  # complete again, at least 20 minutes later
    emu.advance(first + 3601 - second)
    assert client.get_pool(pool.id).is_open(), "closed the delay after the first completion"
    emu.advance(second + 3660 - emu.advance(0))
    closed = client.get_pool(pool.id)
    assert (closed.status.value, closed.last_close_reason.value) == ("CLOSED", "COMPLETED")


def test_a_golden_set_rule_restricts_the_workers_who_miss_the_gold(emu, client):
    """GOLDEN_SET (correct answers on control tasks): workers whose rate falls below the rule's bound
    are restricted from the pool, which catches the spammers (a quarter right on four labels) and
    leaves the diligent workers (a few percent wrong) alone."""
    labels = ["a", "b", "c", "d"]
    rule = restriction_rule(
        {"type": "GOLDEN_SET", "parameters": {"history_size": 10}},
        [
            {"key": "total_answers_count", "operator": "GTE", "value": 4},
            {"key": "correct_answers_rate", "operator": "LT", "value": 50},
        ],
        "POOL",
        1,
        "DAYS",
    )
    pool = _pool(
        client,
        _classification_project(emu, "golden", labels)["id"],
        mixer_config={"real_tasks_count": 1, "golden_tasks_count": 2, "training_tasks_count": 0},
        quality_control={"configs": [rule]},
    )
    client.create_tasks(_real_and_golden(pool.id, "golden", 60, 3, [labels[k % 4] for k in range(16)]))
    client.open_pool(pool.id)
    _wait_closed(emu, client, pool.id)
    types = {w["id"]: w["type"] for w in emu.workers()}
    restricted = {r.user_id for r in client.get_user_restrictions(pool_id=pool.id)}
    workers = {a.user_id for a in client.get_assignments(pool_id=pool.id)}
    kinds, worked = Counter(types[w] for w in restricted), Counter(types[w] for w in workers)
    assert restricted <= workers and kinds["spammer"] >= 2, (kinds, worked)
    assert kinds["spammer"] >= worked["spammer"] / 2 and kinds["diligent"] <= worked["diligent"] / 10


def test_an_unsupported_collector_is_kept_and_named_in_the_log(emu, client, caplog, monkeypatch):
    """A pool config copied from a real project may use a collector the crowd does not simulate
    (CAPTCHA): the pool is created and answered as sent, its rules are ignored, the pool is worked
    to completion, and the emulator's log names the collector."""
    from emulator import qc

    monkeypatch.setattr(qc, "_unsupported", set())  # logged once per process: start afresh
    captcha = restriction_rule(
        {"type": "CAPTCHA", "parameters": {"history_size": 5}},
        [{"key": "success_rate", "operator": "LT", "value": 60}],
        "POOL",
        1,
        "DAYS",
    )
    pool = _pool(client, _project(client).id, quality_control={"configs": [captcha]})
    assert client.get_pool(pool.id).quality_control.configs[0].collector_config.type.value == "CAPTCHA"
    suites = [
        toloka.TaskSuite(pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu, 3, k)})])
        for k in range(3)
    ]
    client.create_task_suites(suites, allow_defaults=True)
    with caplog.at_level("WARNING", logger="emulator.qc"):
        client.open_pool(pool.id)
        closed = _wait_closed(emu, client, pool.id)
    assert closed.last_close_reason.value == "COMPLETED"
    assert len(list(client.get_assignments(pool_id=pool.id, status="ACCEPTED"))) == 6
    assert any("collector CAPTCHA is not supported" in r.getMessage() for r in caplog.records)


def _recompletion(*conditions: dict[str, Any]) -> dict[str, Any]:
    """USERS_ASSESSMENT ("recompletion of assignments from banned users"): one more answer for each
    suite of a worker who lost access to the pool, the pool opened again if it had completed."""
    action = {"type": "CHANGE_OVERLAP", "parameters": {"delta": 1, "open_pool": True}}
    return {
        "collector_config": {"type": "USERS_ASSESSMENT"},
        "rules": [{"conditions": list(conditions), "action": action}],
    }


def test_suites_of_banned_and_filtered_out_workers_are_answered_again(emu, client):
    """A worker the requester bans through the API (reason RESTRICTION), or whose skill the requester
    lowers below the pool's skill filter (reason SKILL_CHANGE, condition `skill_id`), loses access to
    the pool: its USERS_ASSESSMENT rules raise the overlap of that worker's suites, as Toloka's
    documented "recompletion" rules do, and the reopened pool gets the extra answers from others."""
    skill = client.create_skill(name=f"recompletion {uuid.uuid4().hex[:6]}")
    emu.advance(3600)
    for worker in emu.workers():  # the workers on the market now may enter the pool
        client.set_user_skill(skill_id=skill.id, user_id=worker["id"], value=Decimal(80))
    reason = {"key": "pool_access_revoked_reason", "operator": "EQ"}
    pool = _pool(
        client,
        _project(client, "array_json").id,
        filter={"and": [{"or": [{"category": "skill", "key": skill.id, "operator": "GTE", "value": 50}]}]},
        quality_control={
            "configs": [
                _recompletion(reason | {"value": "RESTRICTION"}),
                _recompletion(
                    reason | {"value": "SKILL_CHANGE"},
                    {"key": "skill_id", "operator": "EQ", "value": skill.id},
                ),
            ]
        },
    )
    client.create_task_suites(
        [
            toloka.TaskSuite(
                pool_id=pool.id, tasks=[toloka.Task(input_values={"images": _images(emu, 3, k)})]
            )
            for k in range(12)
        ],
        allow_defaults=True,
    )
    client.open_pool(pool.id)
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    first = list(client.get_assignments(pool_id=pool.id, status="ACCEPTED"))
    assert len(first) == 24
    busiest = [w for w, _ in Counter(a.user_id for a in first).most_common(2)]
    banned, demoted = busiest
    client.set_user_restriction(
        toloka.user_restriction.ProjectUserRestriction(user_id=banned, project_id=pool.project_id)
    )
    client.set_user_skill(skill_id=skill.id, user_id=demoted, value=Decimal(10))
    redone = Counter(a.task_suite_id for a in first if a.user_id in busiest)  # each loses one answer
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    overlaps = {s.id: s.overlap for s in client.get_task_suites(pool_id=pool.id)}
    assert overlaps == {s: 2 + redone[s] for s in overlaps} and sum(redone.values()) >= 2
    answers = list(client.get_assignments(pool_id=pool.id, status="ACCEPTED"))
    assert Counter(a.task_suite_id for a in answers) == Counter(overlaps)
    assert {a.user_id for a in answers if a.id not in {f.id for f in first}}.isdisjoint(busiest)


def test_a_worker_banned_again_has_its_new_answers_redone_and_its_old_ones_not_twice(emu, client):
    """Banned, unbanned, banned again: each ban takes the worker's access to the pool, so each
    fires the pool's USERS_ASSESSMENT rules, for the answers not yet redone: the suites the worker
    answered between the bans get one more answer, those redone after the first ban no second
    one. Before, the rules fired once per worker and pool: the second ban left the answers given
    after the first one counted."""
    skill = client.create_skill(name=f"banned again {uuid.uuid4().hex[:6]}")
    emu.advance(3600)
    # Five workers of the market who take this pay may enter the pool: who answers is known.
    five = sorted(emu.workers(), key=lambda w: (w["reservation_wage"], w["id"]))[:5]
    for worker in five:
        client.set_user_skill(skill_id=skill.id, user_id=worker["id"], value=Decimal(80))
    reason = {"key": "pool_access_revoked_reason", "operator": "EQ", "value": "RESTRICTION"}
    pool = _pool(
        client,
        _project(client, "array_json").id,
        filter={"and": [{"or": [{"category": "skill", "key": skill.id, "operator": "GTE", "value": 50}]}]},
        quality_control={"configs": [_recompletion(reason)]},
    )

    def suites(offset: int, overlap: int) -> set[str]:
        created = client.create_task_suites(
            [
                toloka.TaskSuite(
                    pool_id=pool.id,
                    tasks=[toloka.Task(input_values={"images": _images(emu, 3, offset + k)})],
                    overlap=overlap,
                )
                for k in range(6)
            ]
        )
        return {s.id for s in created.items.values()}

    early = suites(0, 2)
    client.open_pool(pool.id)
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    worker = Counter(a.user_id for a in client.get_assignments(pool_id=pool.id)).most_common(1)[0][0]
    ban = toloka.user_restriction.ProjectUserRestriction(user_id=worker, project_id=pool.project_id)
    restriction = client.set_user_restriction(ban)
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    answered = {"pool_id": pool.id, "user_id": worker, "status": "ACCEPTED"}
    answered_early = {a.task_suite_id for a in client.get_assignments(**answered)}
    after_first = {s.id: s.overlap for s in client.get_task_suites(pool_id=pool.id)}
    assert after_first == {s: 2 + (s in answered_early) for s in early}

    client.delete_user_restriction(restriction.id)
    late = suites(6, 4)  # four of the five answer each: the worker some of them
    client.open_pool(pool.id)
    assert _wait_closed(emu, client, pool.id).last_close_reason.value == "COMPLETED"
    answered_late = {a.task_suite_id for a in client.get_assignments(**answered)} - answered_early
    assert answered_late and answered_late <= late
    client.set_user_restriction(ban)
    overlaps = {s.id: s.overlap for s in client.get_task_suites(pool_id=pool.id)}
    client.close_pool(pool.id)
    assert overlaps == after_first | {s: 4 + (s in answered_late) for s in late}


def test_active_workers_by_filter_count_counts_the_hours_asked():
    """`active_workers_by_filter_count` counts the workers the pool's filter admits who were active
    in the last `interval_hours` (toloka-kit's ActiveWorkersByFilterCountPoolAnalytics requires it):
    more for a day than for an hour, and every worker who has come by for an interval as long as the
    market has run. It used to count the workers online at that instant, whatever the interval."""
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=4, start=START, workers=300)) as emu:
        client = toloka.TolokaClient(emu.token, url=emu.url)
        project = _project(client)
        everyone = _pool(client, project.id)
        nobody = _pool(
            client,
            project.id,
            filter={
                "and": [
                    {"or": [{"category": "profile", "key": "languages", "operator": "IN", "value": "ZZ"}]}
                ]
            },
        )
        emu.advance(48 * 3600)

        def active(pool, hours):
            request = toloka.analytics_request.ActiveWorkersByFilterCountPoolAnalytics(
                subject_id=pool.id, interval_hours=hours
            )
            return client.wait_operation(client.get_analytics([request])).details["value"][0]["result"]

        workers = emu.workers()
        online = sum(w["online"] for w in workers)
        hour, day, ever = active(everyone, 1), active(everyone, 24), active(everyone, 24 * 365)
        assert online <= hour < day <= ever == len(workers) > online, (online, hour, day, ever)
        assert active(nobody, 24 * 365) == 0
        with pytest.raises(exceptions.ValidationApiError):
            active(everyone, 0)
