"""Emulator benchmark: API throughput, memory over a long run, the seed notebook, a 10,000-item catalogue.

Run: `.venv/bin/python bench/bench_emulator.py [--skip-10k | --throughput-only]`. Prints figures (with
the load average, since other processes share the cores); not part of the tests. Targets: >= 300
`get_pool` calls/s through toloka-kit on 2 cores; memory that stops growing over a long polling run;
the seed notebook (training, exams, main pool, intruders) at speed 600; 10^4 items upload, complete
and export.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import toloka.client as toloka  # noqa: E402

from emulator import EmulatorSettings, build_catalogue, run_in_background  # noqa: E402

VIEW = {"type": "classic", "script": "", "markup": "", "styles": ""}
TOKEN = "bench-token"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def create_project(
    client: toloka.TolokaClient, name: str, private_comment: str | None = None
) -> toloka.Project:
    """An images-in, groups-out project; `private_comment` tags it (how `RunRegistry` finds a run's)."""
    spec = {
        "input_spec": {"images": {"type": "array_json", "required": True}},
        "output_spec": {"result": {"type": "array_json"}},
        "view_spec": VIEW,
    }
    task_spec = toloka.project.task_spec.TaskSpec.structure(spec)
    return client.create_project(
        toloka.Project(
            public_name=name, public_description=name, task_spec=task_spec, private_comment=private_comment
        )
    )


def create_pool(
    client: toloka.TolokaClient, project_id: str, overlap: int, private_comment: str | None = None
) -> toloka.Pool:
    """An auto-accepting pool far from expiry; `private_comment` tags it as a run's pool."""
    config = {
        "project_id": project_id,
        "private_name": "bench",
        "private_comment": private_comment,
        "reward_per_assignment": 0.02,
        "auto_accept_solutions": True,
        "assignment_max_duration_seconds": 600,
        "may_contain_adult_content": False,
        "will_expire": "2100-01-01T00:00:00",
        "defaults": {"default_overlap_for_new_task_suites": overlap},
    }
    return client.create_pool(toloka.Pool.from_json(json.dumps(config)))


def create_suites(client: toloka.TolokaClient, pool_id: str, hits: list[list[str]]) -> None:
    suites = [
        toloka.TaskSuite(pool_id=pool_id, tasks=[toloka.Task(input_values={"images": h})]) for h in hits
    ]
    client.create_task_suites(suites, allow_defaults=True)


@contextlib.contextmanager
def served_in_subprocess(token: str = TOKEN, speed: float = 600) -> Iterator[tuple[str, int]]:
    """`crowdclust emulator` in its own process, so that the clients' CPU is not the server's GIL."""
    cli = Path(sys.executable).with_name("crowdclust")
    args = [str(cli), "emulator", "--port", "0", "--speed", str(speed)]
    env = os.environ | {"CROWDCLUST_EMULATOR_TOKEN": token}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the emulator did not start")
            if match := re.search(r"ready at (http://\S+)", line):
                url = match.group(1)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _get_pools(url: str, token: str, pool_id: str, barrier: Any, seconds: float) -> tuple[int, float]:
    """`get_pool` in a loop for `seconds` after `barrier`: the calls made and this process's CPU seconds.

    A client per thread (toloka-kit's sessions are per thread anyway) or per process.
    """
    client = toloka.TolokaClient(token, url=url)
    client.get_pool(pool_id)  # connected and warm before the clock starts
    barrier.wait()
    calls, cpu, stop = 0, _own_cpu_seconds(), time.monotonic() + seconds
    while time.monotonic() < stop:
        client.get_pool(pool_id)
        calls += 1
    return calls, _own_cpu_seconds() - cpu


def _put_counts(args: tuple[Any, ...], results: Any) -> None:
    results.put(_get_pools(*args))


def _load_test(url: str, pid: int, pool_id: str, clients: int, processes: bool, seconds: float) -> str:
    """`clients` threads of this process or `clients` processes calling get_pool at once: req/s and CPU."""
    if processes:
        spawn = multiprocessing.get_context("spawn")
        barrier, results = spawn.Barrier(clients + 1), spawn.Queue()
        args = (url, TOKEN, pool_id, barrier, seconds)
        runners = [spawn.Process(target=_put_counts, args=(args, results)) for _ in range(clients)]
    else:
        barrier, results = threading.Barrier(clients + 1), queue.Queue()
        args = (url, TOKEN, pool_id, barrier, seconds)
        runners = [threading.Thread(target=_put_counts, args=(args, results)) for _ in range(clients)]
    for runner in runners:
        runner.start()
    barrier.wait()
    server, mine = _cpu_seconds(pid), _own_cpu_seconds()
    counted = [results.get() for _ in runners]
    server = _cpu_seconds(pid) - server
    for runner in runners:
        runner.join()
    calls = sum(n for n, _ in counted)
    # Threads share this process's CPU (each thread's figure would count all of it).
    client = sum(cpu for _, cpu in counted) if processes else _own_cpu_seconds() - mine
    noun = ("process", "processes") if processes else ("thread", "threads")
    return (
        f"{clients} client {noun[clients > 1]}: "
        f"{calls / seconds:.0f} req/s; CPU per call: server {1000 * server / calls:.2f} ms, "
        f"toloka-kit client {1000 * client / calls:.2f} ms ({load()})"
    )


def throughput(seconds: float = 5.0) -> None:
    """`get_pool` through toloka-kit against a served emulator (its market running at speed 600).

    From one process (threads share its GIL, and toloka-kit's request plus the structuring of a Pool
    costs more CPU than the emulator's answer) and from several processes, as a requester's several
    workers or runs would call the API. The server's CPU includes its market's background work.
    """
    with served_in_subprocess(TOKEN) as (url, pid):
        client = toloka.TolokaClient(TOKEN, url=url)
        pool = create_pool(client, create_project(client, "bench").id, 3)
        time.sleep(1.0)
        print("get_pool through toloka-kit, server at speed 600:")
        for clients, processes in ((1, False), (2, False), (4, False), (1, True), (2, True)):
            print("  " + _load_test(url, pid, pool.id, clients, processes, seconds))


def long_run(hours: float = 24.0) -> None:
    """Memory over a long polling run: a pool worked for days, analytics polled every simulated minute."""
    with run_in_background(EmulatorSettings(port=0, speed=0, seed=0)) as emu:
        client = toloka.TolokaClient(emu.token, url=emu.url)
        images = list(build_catalogue("demo-shoes", size=82, seed=0, base_url=emu.url)["image"])
        pool = create_pool(client, create_project(client, "long").id, 3)
        create_suites(client, pool.id, [[images[(k + 9 * i) % 82] for i in range(10)] for k in range(400)])
        client.open_pool(pool.id)
        request = [toloka.analytics_request.CompletionPercentagePoolAnalytics(subject_id=pool.id)]
        marks = []
        start = time.monotonic()
        for minute in range(int(hours * 60)):
            client.wait_operation(client.get_analytics(request))
            emu.advance(60)
            if minute % (6 * 60) == 0:
                marks.append((minute // 60, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))
        stats = emu.stats()
    print(
        f"{hours:.0f} simulated h, {int(hours * 60)} analytics polls, "
        f"{stats['market']['arrived']} workers seen, "
        f"{stats['objects']['operation']} operations kept: {time.monotonic() - start:.1f} s wall; "
        f"max RSS (MB) by simulated hour: {marks} ({load()})"
    )


def seed_notebook() -> None:
    """The seed notebook's whole sequence (the conformance test's driver) at speed 600."""
    from tests.test_emulator_conformance import _notebook

    start = time.monotonic()
    run = _notebook(600.0)
    print(
        f"seed notebook at speed 600: {time.monotonic() - start:.1f} s wall, {run['main_rows']} main rows, "
        f"{run['intruder_rows']} intruder rows, polls {run['polls']} ({load()})"
    )


def ten_thousand(size: int = 10_000, overlap: int = 3, workers: int = 300) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_in_background(
            EmulatorSettings(port=0, speed=0, catalogue_size=size, workers=workers, db=f"{tmp}/bench.db")
        ) as emu,
    ):
        client = toloka.TolokaClient(emu.token, url=emu.url)
        images = list(build_catalogue("demo-shoes", size=size, seed=0, base_url=emu.url)["image"])
        project = create_project(client, "10k")
        pool = create_pool(client, project.id, overlap)
        hits = [[images[(k + 37 * i) % size] for i in range(10)] for k in range(size)]
        start = time.monotonic()
        create_suites(client, pool.id, hits)
        upload = time.monotonic() - start
        client.open_pool(pool.id)
        start, steps = time.monotonic(), 0
        while client.get_pool(pool.id).is_open():
            emu.advance(1800)
            steps += 1
        done = time.monotonic() - start
        start = time.monotonic()
        df = client.get_assignments_df(pool_id=pool.id)
        export = time.monotonic() - start
        sim_h = emu.stats()["sim_time"] / 3600
    print(
        f"{size} items / {size} suites x overlap {overlap}, {workers} workers, SQLite state: "
        f"upload {upload:.1f} s; completion {done:.1f} s wall of simulation ({sim_h:.0f} simulated h, "
        f"{steps} advance calls); export {export:.1f} s for {len(df)} rows ({load()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-10k", action="store_true", help="skip the large-catalogue run")
    parser.add_argument("--throughput-only", action="store_true", help="only the get_pool req/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each req/s measurement")
    parser.add_argument("--size", type=int, default=10_000, help="items (and suites) of the large run")
    parser.add_argument("--overlap", type=int, default=3, help="overlap of the large run")
    parser.add_argument("--workers", type=int, default=300, help="simulated workers of the large run")
    args = parser.parse_args()
    throughput(args.seconds)
    if args.throughput_only:
        return
    long_run()
    seed_notebook()
    if not args.skip_10k:
        ten_thousand(size=args.size, overlap=args.overlap, workers=args.workers)


if __name__ == "__main__":
    main()
