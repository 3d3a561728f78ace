"""State in SQLite: a restarted emulator continues with its objects, the crowd's progress, the balance
and its requester account; a state made anew is a new account."""

from __future__ import annotations

from emulator import EmulatorSettings, run_in_background
from tests.fixtures.emulator import create_project, create_simple_pool, create_suites, make_client


def test_state_survives_a_restart(tmp_path):
    db = str(tmp_path / "emulator.db")
    settings = EmulatorSettings(port=0, speed=0, seed=2, db=db)
    with run_in_background(settings) as emu:
        client = make_client(emu)
        project = create_project(client, "restart")
        pool = create_simple_pool(client, project.id, "restart pool", 3, reward_per_assignment=0.05)
        urls = [f"{emu.url}/images/demo-shoes/s0-{i:05d}.png" for i in range(50)]
        create_suites(client, pool.id, [urls[k : k + 10] for k in range(40)])
        skill = client.create_skill(name="restart skill")
        client.open_pool(pool.id)
        emu.advance(60)  # part of the work is done, some assignments are in progress
        before = emu.stats()
        before_workers = emu.workers()
        account = client.get_requester().id
        assert 0 < before["pools"][pool.id]["done"] < before["pools"][pool.id]["total"]
        assert before["balance"] < settings.balance

    with run_in_background(settings) as emu:
        after = emu.stats()
        assert after["objects"] == before["objects"]
        assert after["assignments"] == before["assignments"]
        assert after["balance"] == before["balance"]
        assert after["sim_time"] == before["sim_time"]
        assert emu.workers() == before_workers
        client = make_client(emu)
        assert client.get_requester().id == account  # the same account: its cached results still hold
        assert client.get_pool(pool.id).is_open()
        assert [s.name for s in client.find_skills(name="restart skill").items] == [skill.name]
        for _ in range(200):  # the crowd carries on where it stopped and completes the pool
            if client.get_pool(pool.id).status.value == "CLOSED":
                break
            emu.advance(300)
        assert client.get_pool(pool.id).last_close_reason.value == "COMPLETED"
        df = client.get_assignments_df(pool_id=pool.id)
        assert len(df) == 40 * 3 and df["INPUT:images"].nunique() == 40
        assert emu.stats()["balance"] < before["balance"]


def test_every_fresh_state_is_a_new_account_unless_named(tmp_path):
    """Ids count from 1 in each state: a client caching by object id must see another account."""
    ids = []
    for settings in (EmulatorSettings(port=0, speed=0), EmulatorSettings(port=0, speed=0)):
        with run_in_background(settings) as emu:
            client = make_client(emu)
            ids.append((client.get_requester().id, create_project(client, "first").id))
    assert ids[0][1] == ids[1][1] and ids[0][0] != ids[1][0]
    named = EmulatorSettings(port=0, speed=0, account="acme")
    seen = set()
    for _ in range(2):
        with run_in_background(named) as emu:
            seen.add(make_client(emu).get_requester().id)
    assert len(seen) == 1 and seen.isdisjoint({ids[0][0], ids[1][0]})


def test_a_state_saved_before_accounts_keeps_the_requester_it_had(tmp_path):
    """Its runs' cached Toloka stages are keyed by that requester: an upgrade must not orphan them."""
    import sqlite3

    from emulator.util import digest

    db = str(tmp_path / "old.db")
    settings = EmulatorSettings(port=0, speed=0, db=db, token="old-token")
    with run_in_background(settings) as emu:
        create_project(make_client(emu), "before accounts")
    with sqlite3.connect(db) as old:  # what a state written before this version holds: no requester
        old.execute("DELETE FROM objects WHERE kind = 'meta' AND id = 'requester'")
    with run_in_background(settings) as emu:
        assert make_client(emu).get_requester().id == digest("requester", "old-token")[:12].hex()
