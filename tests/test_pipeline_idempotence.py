"""Idempotent Toloka side effects without any cache: every create is preceded by a look-up.

Runs the plain setup functions twice against the emulator (no Prefect) through a `RunRegistry`:
the second pass must find every object by its run-key tag and create nothing. This is what
protects a resumed run whose cached results were lost, or two processes racing on the same run key.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks import dataset, setup
from tasks.hits import plan_hits
from tasks.params import load_params
from tasks.toloka_api import RunRegistry, make_client, suites_of
from tasks.toloka_config import Placeholders, load_bundle

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo-shoes" / "pipeline.yaml"


@pytest.fixture
def demo(emulator, monkeypatch):
    monkeypatch.setenv("TOLOKA_TOKEN", emulator.token)
    params = load_params(DEMO, {"toloka": {"url": emulator.url}})
    return params, make_client(params.toloka), load_bundle(params.toloka_dir)


def _count(client) -> dict[str, int]:
    projects = list(client.get_projects())
    return {
        "projects": len(projects),
        "pools": sum(len(list(client.get_pools(project_id=p.id))) for p in projects),
        "skills": len(list(client.get_skills())),
    }


def test_setup_and_upload_twice_create_nothing_new(demo):
    params, client, bundle = demo
    values = Placeholders.of(params)
    registry = RunRegistry(client, "idem-1")
    ids = setup.setup_labelling(registry, bundle, values, "Idempotence")
    plan = plan_hits(
        [u for s in bundle.exam_suites for u in s["tasks"][0]["input_values"]["images"]], params.hits, 0
    )
    suites = suites_of(plan)
    registry.ensure_suites("main-suites", ids.main_pool, suites)
    counts = _count(client)

    again = setup.setup_labelling(RunRegistry(client, "idem-1"), bundle, values, "Idempotence")
    registry.ensure_suites("main-suites", ids.main_pool, suites)
    assert again == ids and _count(client) == counts
    assert len(list(client.get_task_suites(pool_id=ids.main_pool))) == len(suites)
    assert len(list(client.get_task_suites(pool_id=ids.exam_pool))) == 3
    assert len(list(client.get_tasks(pool_id=ids.training))) == len(bundle.training_tasks)

    # The skill was wired into the main pool's filter and SET_SKILL rule (no hard-coded id).
    pool = client.get_pool(ids.main_pool)
    assert pool.filter.and_[0].or_[0].key == ids.skill
    rules = [r for c in pool.quality_control.configs for r in c.rules]
    assert any(getattr(r.action.parameters, "skill_id", None) == ids.skill for r in rules)
    # The costs the flow priced are the costs Toloka was told.
    assert float(pool.reward_per_assignment) == params.hits.reward
    assert pool.defaults.default_overlap_for_new_task_suites == params.hits.overlap

    # Another run key is another world.
    other = setup.setup_labelling(RunRegistry(client, "idem-2"), bundle, values, "Idempotence")
    assert set(other.as_dict().values()).isdisjoint(ids.as_dict().values())


def test_partial_upload_is_completed_not_duplicated(demo):
    params, client, bundle = demo
    registry = RunRegistry(client, "idem-3")
    ids = setup.setup_labelling(registry, bundle, Placeholders.of(params), "Idempotence")
    suites = suites_of([f"https://x/{i}-{j}.png" for j in range(3)] for i in range(6))
    registry.ensure_suites("main-suites", ids.main_pool, suites[:4])  # "crash" after 4
    registry.ensure_suites("main-suites", ids.main_pool, suites)
    assert len(list(client.get_task_suites(pool_id=ids.main_pool))) == 6


def test_the_same_hits_in_another_pool_of_the_key_are_uploaded(demo):
    """A catalogue's first round plans the HITs a single run on the same file and key planned (a
    config's `run_key` holds for both): its round pool got none of them, because the upload's
    operation id named the key, the role and the suites but not the pool, so Toloka answered with
    the single run's finished operation; every later run failed opening an empty pool (409
    EMPTY_POOL)."""
    params, client, bundle = demo
    registry = RunRegistry(client, "idem-7")
    single = setup.setup_labelling(registry, bundle, Placeholders.of(params), "Idempotence")
    suites = suites_of([f"https://x/{i}-{j}.png" for j in range(3)] for i in range(4))
    registry.ensure_suites("main-suites", single.main_pool, suites)
    rounds = setup.setup_labelling(registry, bundle, Placeholders.of(params), "Idempotence", "main-pool-r1")
    assert rounds.main_pool != single.main_pool
    registry.ensure_suites("main-suites", rounds.main_pool, suites)
    assert len(list(client.get_task_suites(pool_id=rounds.main_pool))) == 4
    assert len(list(client.get_task_suites(pool_id=single.main_pool))) == 4


def test_close_open_closes_only_this_runs_pools(demo):
    params, client, bundle = demo
    values = Placeholders.of(params)
    mine = setup.setup_labelling(RunRegistry(client, "idem-4"), bundle, values, "Idempotence")
    theirs = setup.setup_labelling(RunRegistry(client, "idem-5"), bundle, values, "Idempotence")
    for ids in (mine, theirs):
        client.open_pool(ids.exam_pool)
    closed = RunRegistry(client, "idem-4").close_open()
    assert closed == [f"pool {mine.exam_pool}"]
    assert client.get_pool(mine.exam_pool).status.value == "CLOSED"
    assert client.get_pool(theirs.exam_pool).status.value == "OPEN"
    client.close_pool(theirs.exam_pool)


def test_spent_sums_only_this_runs_pools_in_the_chosen_roles(demo):
    params, client, bundle = demo
    registry = RunRegistry(client, "idem-6")
    ids = setup.setup_labelling(registry, bundle, Placeholders.of(params), "Idempotence")
    assert set(registry.pools()) == {"exam-pool", "main-pool"}
    assert registry.pools()["main-pool"].id == ids.main_pool
    assert registry.spent() == 0.0  # nothing opened, nothing paid
    assert registry.spent(lambda role: role == "nothing") == 0.0


def test_pools_expire_a_week_after_the_platforms_now_not_the_local_clock(emulator_factory, monkeypatch):
    """An accelerated platform's clock is far ahead of ours (600x for 20 minutes: 8 days): a pool must
    still get its week, counted on the platform's clock (its `Date` header), not expire as it opens."""
    import datetime as dt

    with emulator_factory(speed=0, workers=20) as emu:
        ahead = emu.advance(8 * 86400)
        monkeypatch.setenv("TOLOKA_TOKEN", emu.token)
        params = load_params(DEMO, {"toloka": {"url": emu.url}})
        client = make_client(params.toloka)
        registry = RunRegistry(client, "idem-7")
        ids = setup.setup_labelling(
            registry, load_bundle(params.toloka_dir), Placeholders.of(params), "Ahead"
        )
        registry.ensure_suites(
            "main-suites", ids.main_pool, suites_of([["https://x/1.png", "https://x/2.png"]])
        )
        expires = client.get_pool(ids.main_pool).will_expire.replace(tzinfo=None)
        platform_now = dt.datetime.fromtimestamp(ahead, dt.UTC).replace(tzinfo=None)
        assert dt.timedelta(days=6.9) < expires - platform_now <= dt.timedelta(days=7, seconds=2)
        client.open_pool(ids.main_pool)
        emu.advance(3600)
        assert client.get_pool(ids.main_pool).status.value == "OPEN"


def test_a_pool_given_new_settings_while_open_stays_closed_until_the_run_opens_it(demo, emulator):
    """A run resumed with a raised reward while its main pool was open (left so by a killed run):
    the pool was closed *for update*, which Toloka opens again by itself 15 minutes later. A run
    refused after its setup (the budget check of the new reward, say) left it so: its failure hook
    closes open pools only, and the pool reopened and paid the crowd with nobody gating the exam."""
    params, client, bundle = demo
    key = "idem-update-open"
    ids = setup.setup_labelling(RunRegistry(client, key), bundle, Placeholders.of(params), "Idempotence")
    RunRegistry(client, key).ensure_suites(
        "main-suites", ids.main_pool, suites_of([["https://x/1.png", "https://x/2.png"]])
    )
    client.open_pool(ids.main_pool)

    raised = params.model_copy(update={"hits": params.hits.model_copy(update={"reward": 0.05})})
    again = setup.setup_labelling(RunRegistry(client, key), bundle, Placeholders.of(raised), "Idempotence")
    assert again == ids
    pool = client.get_pool(ids.main_pool)
    assert float(pool.reward_per_assignment) == 0.05 and pool.status.value == "CLOSED", pool.status
    emulator.control("advance", method="POST", seconds=20 * 60)  # past Toloka's 15-minute reopen
    assert client.get_pool(ids.main_pool).status.value == "CLOSED"


def test_an_expired_pool_gets_a_new_lifetime_before_it_reopens(demo, caplog):
    """A run resumed after its main pool expired a few answers short failed with `PoolStopped:
    pool P is CLOSED (reason: EXPIRED)` on every resume: opened as it was, the pool expired again at
    once, and everything the run had paid for was stranded (a new user's try-out, 2,500 images).
    And a wait whose `timeout_seconds` outlasts the pool's lifetime failed the run the same way
    mid-wait (a 10,000-image run at 96%): the wait now reopens it, as a resume does."""
    from datetime import UTC, timedelta

    from tasks.toloka_api import POOL_LIFETIME, Opening, open_all, platform_now
    from tasks.wait import WaitTimeout, wait_for_pool

    params, client, bundle = demo
    registry = RunRegistry(client, "idem-expired")
    ids = setup.setup_labelling(registry, bundle, Placeholders.of(params), "Idempotence")
    registry.ensure_suites("main-suites", ids.main_pool, suites_of([["https://x/1.png", "https://x/2.png"]]))
    pool = client.get_pool(ids.main_pool)
    # 3 s at the emulator's 600x: long enough to be in the future when the update and the open
    # arrive (Toloka refuses a past will_expire, and an expired pool does not open), then it expires.
    pool.will_expire = platform_now(client) + timedelta(minutes=30)
    client.update_pool(ids.main_pool, pool)
    client.open_pool(ids.main_pool)

    def expires():  # naive UTC, as the platform's clock reads
        return client.get_pool(ids.main_pool).will_expire.astimezone(UTC).replace(tzinfo=None)

    def renewed() -> bool:
        week = platform_now(client) + POOL_LIFETIME - timedelta(hours=1)
        return client.get_pool(ids.main_pool).status.value == "OPEN" and expires() >= week

    # Nobody holds the pool's skill here, so nobody answers: the wait runs to its own limit.
    with pytest.raises(WaitTimeout, match="not complete after 8 s"), caplog.at_level("WARNING"):
        wait_for_pool(client, ids.main_pool, period=0.2, timeout=8)
    assert renewed()
    assert f"pool {ids.main_pool} had expired with work left: it reopens until " in caplog.text

    client.close_pool(ids.main_pool)  # a run stopped; its pool's lifetime ends before it is resumed
    pool = client.get_pool(ids.main_pool)
    pool.will_expire = platform_now(client) + timedelta(minutes=30)
    client.update_pool(ids.main_pool, pool)
    while expires() >= platform_now(client):  # 3 s at 600x (no jump of the clock other tests share)
        time.sleep(0.2)
    open_all(client, [Opening("pool", ids.main_pool)])
    assert renewed()
    client.close_pool(ids.main_pool)


def test_a_new_derived_run_key_names_the_earlier_ones_of_its_name_and_seed(demo, tmp_path):
    """The derived key follows the dataset's images only: a corrected truth label keeps it (before,
    the same command after such a fix started a new key and paid the work again). A key that is new
    while others of its name and seed hold pools is said, with the one to go on with."""
    from tasks.preflight import earlier_run_keys_task

    params, client, bundle = demo
    derived = params.model_copy(update={"run_key": None})
    lines = params.dataset.read_text().splitlines()
    relabelled = tmp_path / "relabelled.tsv"
    relabelled.write_text(
        "\n".join([lines[0], lines[1].replace("\tsneakers\t", "\tboots\t"), *lines[2:]]) + "\n"
    )
    assert lines[1] != relabelled.read_text().splitlines()[1]
    same = derived.model_copy(update={"dataset": relabelled})
    assert same.resolved_run_key == derived.resolved_run_key
    other = tmp_path / "other.tsv"
    other.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # one image fewer: another catalogue
    assert derived.model_copy(update={"dataset": other}).resolved_run_key != derived.resolved_run_key

    earlier = f"{params.name}-0123456789-s{params.seed}"
    registry = RunRegistry(client, earlier)
    setup.setup_labelling(registry, bundle, Placeholders.of(params), "Earlier")
    [warning] = earlier_run_keys_task.fn(derived)  # nothing charged to it: a warning, the run goes on
    assert warning.startswith(f"run key {derived.resolved_run_key} is new on this account, but ")
    assert f"{earlier} ($0.00 charged)" in warning and "unpaid" in warning
    assert earlier_run_keys_task.fn(params.model_copy(update={"run_key": "given"})) == []


def test_a_new_derived_run_key_is_stopped_while_an_earlier_one_was_paid(demo, tmp_path, monkeypatch):
    """A user corrected one image URL and paid the whole job again ($38.74): the new derived key was a
    warning 0.3 s before the pools opened, and its advice (the earlier --run-key) failed, since the
    earlier pool holds HITs of other images. Now nothing is created and the way on fits the case."""
    from tasks.preflight import EarlierRunKeys, earlier_run_keys_task

    params, client, bundle = demo
    derived = params.model_copy(update={"run_key": None})
    earlier = f"{params.name}-9876543210-s{params.seed}"
    registry = RunRegistry(client, earlier)
    ids = setup.setup_labelling(registry, bundle, Placeholders.of(params), "Earlier paid")
    images = dataset.load_dataset(params.dataset)["image"].tolist()
    registry.ensure_suites(
        "main-suites", ids.main_pool, suites_of([images[i : i + 10] for i in range(0, 82, 10)])
    )
    charged = {earlier: 38.74}
    monkeypatch.setattr(RunRegistry, "spent", lambda self, include=None: charged.get(self.run_key, 0.0))
    counts = _count(client)

    with pytest.raises(EarlierRunKeys) as same:  # the same images: only their order or the rule changed
        earlier_run_keys_task.fn(derived)
    assert f"{earlier} ($38.74 charged)" in str(same.value) and "nothing was created" in str(same.value)
    assert "the same 82 images" in str(same.value) and f"--run-key {earlier} " in str(same.value)

    lines = params.dataset.read_text().splitlines()
    fixed = tmp_path / "fixed.tsv"  # one URL corrected: the earlier pool cannot take this plan
    fixed.write_text("\n".join([lines[0], lines[1].replace(".png", ".png?v=2", 1), *lines[2:]]) + "\n")
    changed = derived.model_copy(update={"dataset": fixed})
    with pytest.raises(EarlierRunKeys) as other:
        earlier_run_keys_task.fn(changed)
    text = str(other.value)
    assert "other images: 1 of this dataset's 82 images are new to it, and 1 of the 82 it labelled" in text
    assert f"--run-key {changed.resolved_run_key} " in text and f"--run-key {earlier} " not in text
    assert "restore its dataset" in text
    fewer = tmp_path / "fewer.tsv"  # one row removed: every image left was labelled, nothing to buy
    fewer.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    subset = derived.model_copy(update={"dataset": fewer})
    with pytest.raises(EarlierRunKeys) as smaller:
        earlier_run_keys_task.fn(subset)
    text = str(smaller.value)
    assert "Every image of this dataset was labelled under" in text and "crowdclust aggregate " in text
    assert f"--run-key {subset.resolved_run_key} would pay for all 81 images again" in text
    assert _count(client) == counts  # the check created nothing
    assert earlier_run_keys_task.fn(changed.model_copy(update={"run_key": changed.resolved_run_key})) == []


def test_a_pool_closed_for_lack_of_balance_ends_the_wait_like_the_spend_guard(emulator_factory):
    """Toloka closes a pool whose requester runs out of money (NOT_ENOUGH_BALANCE). The wait used to
    fail with `PoolStopped` and the run exported nothing it had paid for; it now returns the last
    poll and a reason that says to top up, and the flow exports the accepted answers.

    The close leaves the assignments in hand running (the money they hold is what ran out), and
    they are paid when submitted: the wait returns once they are, so the export holds all that was
    bought (a CI run returned at the close with 0 accepted and 7 in hand)."""
    from prefect.logging import disable_run_logger

    from tasks.toloka_api import count_assignments
    from tasks.wait import wait_guarded
    from tests.fixtures.emulator import create_project, create_simple_pool, create_suites
    from tests.fixtures.emulator import make_client as emulator_client

    with emulator_factory(speed=30.0, seed=2, balance=0.2) as emu:  # ~7 answers at $0.026
        client = emulator_client(emu)
        pool = create_simple_pool(client, create_project(client, "poor").id, "poor", 1)
        create_suites(client, pool.id, [[f"{emu.url}/images/demo-shoes/s0-{i:05d}.png"] for i in range(20)])
        client.open_pool(pool.id)
        with disable_run_logger():
            stats, reason = wait_guarded(client, pool.id, period=0.2, timeout=120)
        in_hand = count_assignments(client, pool.id, ("ACTIVE",))
        accepted = count_assignments(client, pool.id, ("ACCEPTED",))
    assert reason.startswith(f"Toloka closed pool {pool.id}: the account's balance ran out"), reason
    assert "top up the account" in reason and f"with {accepted} answer" in reason
    assert in_hand == 0 and 0 < accepted == (stats.approved_assignments_count or 0) < 20


def test_the_last_figures_of_a_wait_the_balance_stopped_count_the_answers_paid_after_the_stop(
    emulator_factory,
):
    """After a stop the wait waits for the answers in hand and they are paid; the progress artifact
    and the wait's last line kept the poll of the stop. A team lead's run read `97% complete, 558
    submitted, 558 accepted, $14.51 spent` under a reason that counted 563 answers accepted, and
    Toloka had charged for 563. The figures after that wait are reported too.

    The emulator's clock stands still and each sleep of the wait moves it 3 simulated seconds: the
    same crowd on any machine, with answers in hand at the stop."""
    from prefect.logging import disable_run_logger

    from tasks.toloka_api import count_assignments
    from tasks.wait import wait_guarded
    from tests.fixtures.emulator import create_project, create_simple_pool, create_suites
    from tests.fixtures.emulator import make_client as emulator_client

    with emulator_factory(speed=0.0, seed=2, balance=0.2) as emu:  # ~7 answers at $0.026
        client = emulator_client(emu)
        pool = create_simple_pool(client, create_project(client, "poor").id, "poor", 1)
        create_suites(client, pool.id, [[f"{emu.url}/images/demo-shoes/s0-{i:05d}.png"] for i in range(20)])
        client.open_pool(pool.id)
        reported = []
        with disable_run_logger():
            stats, reason = wait_guarded(
                client,
                pool.id,
                period=0.05,
                timeout=120,
                report=reported.append,
                sleep=lambda seconds: emu.advance(3.0),
            )
        accepted = count_assignments(client, pool.id, ("ACCEPTED",))
        charged = round(0.2 - float(client.get_requester().balance), 4)
    assert "balance ran out" in reason and f"with {accepted} answer" in reason, reason
    # answers were in hand at the stop's poll (else this test would prove nothing) ...
    assert len(reported) >= 2 and (reported[-2].approved_assignments_count or 0) < accepted, reported
    # ... and the last figures reported are those paid for, as the reason's
    assert reported[-1].approved_assignments_count == accepted == stats.approved_assignments_count
    assert reported[-1].spent_budget == pytest.approx(charged, abs=1e-6)


def test_the_answers_beyond_the_overlap_are_read_a_page_of_thousands_at_a_time(emulator_factory, monkeypatch):
    """A resumed run at ~70,000 answers was silent for 19.5 s while it counted the answers its main
    pool holds above the overlap: toloka-kit's search pages 50 assignments at a time and builds a
    full Assignment of each. Here 300 HITs answered 5 times, counted above 3: one request, the same
    count as a page of 400 (four requests, `id_gt` paging)."""

    from emulator import build_catalogue
    from tasks import toloka_api
    from tests.fixtures.emulator import create_simple_pool, create_spec_project, create_suites
    from tests.fixtures.emulator import make_client as emulator_client

    with emulator_factory(speed=0.0, seed=0) as emu:
        client = emulator_client(emu)
        spec = {
            "input_spec": {"images": {"type": "array_json", "required": True}},
            "output_spec": {"result": {"type": "array_json"}},
            "view_spec": {"type": "classic", "script": "", "markup": "", "styles": ""},
        }
        project = create_spec_project(
            client, "beyond", spec, private_comment="crowdclust:beyond:main-project"
        )
        pool = create_simple_pool(
            client, project.id, "beyond", 5, private_comment="crowdclust:beyond:main-pool"
        )
        images = list(build_catalogue("demo-shoes", size=82, seed=0, base_url=emu.url)["image"])
        create_suites(client, pool.id, [[images[(k + 7 * i) % 82] for i in range(10)] for k in range(300)])
        client.open_pool(pool.id)
        while client.get_pool(pool.id).is_open():
            emu.advance(1800)
        registry = RunRegistry(client, "beyond")

        def searches() -> int:
            return emu.stats()["rate"]["requests"].get("GET /api/v1/assignments", 0)

        before = searches()
        assert registry.answers_beyond("main-pool", 3) == 300 * 2
        assert searches() - before == 1
        monkeypatch.setattr(toloka_api, "ASSIGNMENT_PAGE", 400)
        before = searches()
        assert registry.answers_beyond("main-pool", 3) == 300 * 2
        assert searches() - before == 4
        assert registry.answers_beyond("main-pool", 5) == 0 and registry.answers_beyond("other-pool", 0) == 0


def test_a_timed_out_wait_says_its_pools_pace_and_what_timeout_would_do(emulator_factory):
    """A main pool's timeout gave '568 answers submitted' and nothing on how long the pool needed
    at its pace: here a slow market's pool times out, and the error gives its pace, the time it
    needs and a timeout that would do, with the counts of the poll the exception carries."""
    import re

    from tasks.wait import WaitTimeout, wait_for_pool
    from tests.fixtures.emulator import create_project, create_simple_pool, create_suites
    from tests.fixtures.emulator import make_client as emulator_client

    with emulator_factory(speed=20.0, seed=3) as emu:
        client = emulator_client(emu)
        pool = create_simple_pool(client, create_project(client, "pace").id, "pace", 5)
        images = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(1200)]
        create_suites(client, pool.id, [images[i : i + 4] for i in range(0, 1200, 4)])
        client.open_pool(pool.id)
        with pytest.raises(WaitTimeout) as ended:
            wait_for_pool(client, pool.id, period=0.3, timeout=4, needed=300 * 5)
        client.close_pool(pool.id)
    stats, message = ended.value.stats, str(ended.value)
    pace = re.search(
        r": at the last poll (\d+)% done, ([\d,]+) answers? submitted \(([\d,]+) of them accepted\); at its "
        r"pace over the last (\d+) s \(([\d.,]+) answers a minute\), the ([\d,]+) answers left need about "
        r".+ more: a wait\.timeout_seconds of about ([\d,]+) \(measured in the wait's first minutes, .+\)$",
        message,
    )
    assert pace is not None, message
    assert int(pace[2].replace(",", "")) == stats.submitted_assignments_count > 0
    assert int(pace[3].replace(",", "")) == stats.approved_assignments_count
    assert int(pace[6].replace(",", "")) == 1500 - stats.submitted_assignments_count
    assert int(pace[7].replace(",", "")) > 4
