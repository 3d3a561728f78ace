"""One run per key across machines: the run key's Prefect concurrency slot, on the test harness's server.

A "machine" is a temp folder: the `flock` layer lives in `$TMPDIR/crowdclust-locks`, so a process
with another TMPDIR shares nothing with this one but the Prefect server, as a worker on another
host would. The holder is a real process, killed with SIGKILL where the test says so.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from prefect import flow

from tasks import run_lease
from tasks.params import TolokaTarget
from tasks.run_lock import RunKeyBusy, lock_path, run_lock
from tests.fixtures.locks import holding_process

TARGET = TolokaTarget(environment="local", url="http://127.0.0.1:1")


@pytest.fixture()
def machine(monkeypatch, tmp_path):
    """Put this process on a machine of its own (its own lock folder and host name), for the test."""

    def move(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        monkeypatch.setattr(tempfile, "tempdir", str(folder))
        # A host name of its own too: a slot naming a dead process of *this* host is stale (freed).
        monkeypatch.setattr(socket, "gethostname", lambda: f"machine-{name}")
        return folder

    return move


def test_a_second_run_on_another_machine_fails_at_once_and_a_kill_9_frees_the_key_on_its_machine(
    prefect_harness, machine
):
    key = f"hosts-{uuid.uuid4().hex[:8]}"
    first_machine = machine("a")
    holder = holding_process(key, first_machine)
    try:
        # On its own machine the flock refuses first, naming the process (not its lease id).
        same = rf"is already running \(pid {holder.pid} on this machine\); wait for it to end"
        with pytest.raises(RunKeyBusy, match=same), run_lock(TARGET, key):
            pass
        # The same emulator spelled another way is the same platform (both runs had gone on and paid).
        respelled = TolokaTarget(environment="local", url="http://LOCALHOST:1/")
        with pytest.raises(RunKeyBusy, match=same), run_lock(respelled, key):
            pass
        machine("b")
        started = time.monotonic()
        with pytest.raises(RunKeyBusy) as busy, run_lock(TARGET, key):
            pass
        assert time.monotonic() - started < 20  # at once: not after the lease (60 s)
        message = str(busy.value)
        assert f"run key {key} is already running (pid {holder.pid} on host " in message, message
        assert "Prefect concurrency limit crowdclust-run-" in message and "--run-key" in message, message

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        window = r"if that run was killed.*75 s.*CROWDCLUST_RUN_LOCK_WAIT_SECONDS"
        with pytest.raises(RunKeyBusy, match=window), run_lock(TARGET, key):
            pass  # another machine cannot know the holder died: its lease still runs

        machine("a")  # its own machine knows at once: the flock is free and the lock file names the lease
        assert f"pid {holder.pid} lease " in lock_path(TARGET, key).read_text()
        started = time.monotonic()
        with run_lock(TARGET, key):
            assert time.monotonic() - started < 20  # at once: not after the lease (60 s)
            assert f"pid {os.getpid()} lease " in lock_path(TARGET, key).read_text()
        assert lock_path(TARGET, key).read_text() == f"pid {os.getpid()}"  # released: nothing to take over
        machine("b")
        with run_lock(TARGET, key):  # released on exit: free for every machine
            pass
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_run_allowed_to_wait_gets_the_key_when_the_other_machine_lets_go(
    prefect_harness, machine, monkeypatch
):
    key = f"hosts-wait-{uuid.uuid4().hex[:8]}"
    machine("b")
    limit = run_lease.limit_name(lock_path(TARGET, key).stem)
    lease_id = run_lease.acquire(limit, lease_seconds=60, wait_seconds=0)  # another machine's slot
    releaser = threading.Timer(2.0, run_lease.release, args=(lease_id,))
    releaser.start()
    monkeypatch.setenv("CROWDCLUST_RUN_LOCK_WAIT_SECONDS", "30")
    started = time.monotonic()
    with run_lock(TARGET, key):
        waited = time.monotonic() - started
    releaser.join()
    assert 1.5 < waited < 10, waited


def test_without_a_prefect_server_only_the_flock_applies(machine, monkeypatch):
    """Ephemeral mode: a slot on a per-process server would protect nothing, so no API is asked."""
    monkeypatch.setattr(run_lease, "server_url", lambda: None)
    monkeypatch.setattr(run_lease, "acquire", lambda *a: pytest.fail("asked the ephemeral API for a slot"))
    machine("a")
    key = f"hosts-ephemeral-{uuid.uuid4().hex[:8]}"
    with run_lock(TARGET, key):
        assert lock_path(TARGET, key).read_text() == f"pid {os.getpid()}"


@pytest.mark.parametrize("where", ["same machine", "other machine"])
def test_a_retried_run_waits_for_the_crash_hook_that_still_closes_its_pools(prefect_harness, machine, where):
    """Prefect runs a crashed run's hook in a process of its own, seconds after the crash; a Retry
    started meanwhile must wait for it (a few seconds), not fail as if another run held the key."""
    key = f"hosts-hook-{uuid.uuid4().hex[:8]}"
    hook = holding_process(key, machine("a"), role="closing", seconds=3)
    try:
        machine("a" if where == "same machine" else "b")
        started = time.monotonic()
        with run_lock(TARGET, key):
            waited = time.monotonic() - started
        assert hook.wait(timeout=30) == 0
        assert 1.0 < waited < 20, waited
    finally:
        if hook.poll() is None:
            hook.kill()


def test_a_slot_the_server_forgot_is_named_stale_with_the_command_that_frees_it(prefect_harness, machine):
    """A Prefect server restarted while a run held its key (leases in memory) kept the key's slot
    taken after that run ended, and every run of the key was told to wait 75 s that never helped.
    Here the slot is taken with no lease and no holder's name, as such a server leaves it."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    key = f"hosts-stale-{uuid.uuid4().hex[:8]}"
    machine("a")
    limit = run_lease.limit_name(lock_path(TARGET, key).stem)
    run_lease._ensure_limit(limit)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active_slots=1))
    with pytest.raises(RunKeyBusy) as busy, run_lock(TARGET, key):
        pass
    message = str(busy.value)
    assert "(holder unknown: Prefect concurrency limit" in message, message
    assert message.endswith(f"the slot is stale and stays taken; free it with `prefect gcl delete {limit}`")
    with get_client(sync_client=True) as client:  # what the message says to do
        client.delete_global_concurrency_limit_by_name(limit)
    with run_lock(TARGET, key):
        pass


def test_a_slot_naming_a_dead_process_of_this_host_is_freed(prefect_harness, machine):
    """The same forgotten slot, with the holder's name left on it (the run failed while the server
    was down): `pid N on host H since T` names this host and a process that no longer runs, so the
    slot is stale and the run frees it instead of being refused for good."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.variables import Variable

    key = f"hosts-dead-{uuid.uuid4().hex[:8]}"
    machine("a")
    limit = run_lease.limit_name(lock_path(TARGET, key).stem)
    run_lease._ensure_limit(limit)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )

    def taken_by(pid: int) -> None:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active_slots=1))
        Variable.set(
            limit, f"pid {pid} on host {socket.gethostname()} since 2026-12-04T20:00:00", overwrite=True
        )

    taken_by(int(ended.stdout))
    with run_lock(TARGET, key), get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit).active_slots == 1  # ours now
    taken_by(os.getppid())  # a live process of this host: a holder, refused as before
    with pytest.raises(RunKeyBusy, match=rf"pid {os.getppid()} on host machine-a"), run_lock(TARGET, key):
        pass


def test_a_lease_the_server_forgot_is_taken_again_while_the_key_is_free(prefect_harness, machine):
    """A server down longer than the lease repossesses it (410 on the next renewal). The run went on
    unprotected, warning every 20 s; it now takes the key's slot again, or says another run has it."""
    key = f"hosts-regain-{uuid.uuid4().hex[:8]}"
    machine("a")
    limit = run_lease.limit_name(lock_path(TARGET, key).stem)
    run_lease._ensure_limit(limit)

    def renew_from(lease: uuid.UUID) -> list[uuid.UUID]:
        held, stop = [lease], threading.Event()
        renewing = threading.Thread(target=run_lease._renew_until, args=(stop, limit, held, 60.0, 0.3))
        renewing.start()
        deadline = time.monotonic() + 15
        while held[0] == lease and renewing.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        renewing.join(timeout=10)
        return held

    held = renew_from(uuid.uuid4())  # a lease id the server does not know: repossessed
    assert held[0] is not None and run_lease._try_acquire(limit, 60.0) is None  # the slot is ours again
    run_lease.release(held[0])

    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.variables import Variable

    # A server restarted with its leases in memory keeps the slot taken by our forgotten lease, with
    # our name on it: that slot is ours to take again.
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active_slots=1))
    Variable.set(
        limit, f"pid {os.getpid()} on host {socket.gethostname()} since 2026-12-05T00:00:00", overwrite=True
    )
    held = renew_from(uuid.uuid4())
    assert run_lease._try_acquire(limit, 60.0) is None and run_lease.release(held[0])

    other = run_lease.acquire(limit, 60.0, 0.0)  # another run took the key meanwhile
    Variable.set(limit, "pid 1 on host elsewhere since 2026-12-05T00:00:00", overwrite=True)
    lost = uuid.uuid4()
    assert renew_from(lost) == [lost]  # left to it (an error in the log says two runs may now pay)
    run_lease.release(other)


@flow(name="crowdclust-lock-holder")
def hold_key(key: str, seconds: float = 600) -> None:
    """A flow run that holds `key` (the deployed flow of the test below)."""
    with run_lock(TARGET, key):
        print("held", flush=True)
        time.sleep(seconds)


def test_a_refusal_names_the_flow_run_that_holds_the_key(prefect_harness, machine):
    """`RunKeyBusy` said `pid N on this machine`, which the Prefect UI shows nowhere: it names the
    holder's flow run (name, id) and deployment now, on the holder's machine (the lock file) and on
    another one (the slot's holder record). The holder is a deployment's flow run, started as a
    process worker starts one (`python -m prefect.engine` with its id)."""
    from prefect.deployments import run_deployment

    key = f"hosts-named-{uuid.uuid4().hex[:8]}"
    deployment_id = hold_key.to_deployment(name="holds-a-key").apply()
    run = run_deployment(deployment_id, parameters={"key": key}, timeout=0, flow_run_name=f"holding {key}")
    holder_machine = machine("a")
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "TMPDIR": str(holder_machine),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT__FLOW_RUN_ID": str(run.id),
    }
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen(
        [sys.executable, "-m", "prefect.engine"], env=env, cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        for line in holder.stdout:  # the engine's own lines come first
            if line.strip() == "held":
                break
        else:
            pytest.fail(f"the holder ended: {holder.wait()}")
        named = f"flow run 'holding {key}' (id {run.id}) of deployment 'crowdclust-lock-holder/holds-a-key'"
        with pytest.raises(RunKeyBusy) as busy, run_lock(TARGET, key):
            pass
        assert f"is already running (pid {holder.pid} on this machine, {named}); wait for it" in str(
            busy.value
        ), busy.value
        machine("b")
        with pytest.raises(RunKeyBusy) as busy, run_lock(TARGET, key):
            pass
        message = str(busy.value)
        assert f"is already running (pid {holder.pid} on host " in message, message
        assert f", {named}: Prefect concurrency limit crowdclust-run-" in message, message
    finally:
        holder.kill()
        holder.wait(timeout=10)
