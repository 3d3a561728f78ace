"""Emulator benchmark: API throughput, the seed design's wall time, a 10,000-item catalogue.

Run: `.venv/bin/python bench/bench_emulator.py [--skip-10k]`. Prints figures; not part of the tests.
Targets: >= 300 simple API requests/s on 2 cores; the seed design (82 suites x overlap 7 + training +
exams) in <= 30 s wall at the default demo speed (600); 10^4 items upload, complete and export.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402
import toloka.client as toloka  # noqa: E402

from emulator import EmulatorSettings, build_catalogue, run_in_background  # noqa: E402
from tests.fixtures.emulator import (  # noqa: E402
    SeedDesign,
    create_project,
    create_simple_pool,
    create_suites,
    make_client,
)


def _hammer(url: str, headers: dict, project_id: str, stop: float, counts: list[int], k: int) -> None:
    """Alternate two simple GETs until `stop`, counting answers in `counts[k]`."""
    with httpx.Client(base_url=url, headers=headers) as raw:
        while time.monotonic() < stop:
            raw.get("/api/v1/requester" if counts[k] % 2 else f"/api/v1/projects/{project_id}")
            counts[k] += 1


@contextlib.contextmanager
def served_in_subprocess(token: str = "bench-token") -> Iterator[str]:
    """`crowdclust emulator` in its own process, so that the clients' CPU is not the server's GIL."""
    cli = Path(sys.executable).with_name("crowdclust")
    args = [str(cli), "emulator", "--port", "0", "--token", token, "--speed", "600"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the emulator did not start")
            if match := re.search(r"ready at (http://\S+)", line):
                url = match.group(1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def throughput(seconds: float = 3.0) -> None:
    token = "bench-token"
    with served_in_subprocess(token) as url:
        headers = {"Authorization": f"OAuth {token}"}
        client = toloka.TolokaClient(token, url=url)
        project = create_project(client, "bench")
        time.sleep(2.0)  # let the crowd's arrival burst pass (it shares the 2 cores)
        for threads in (1, 2, 4):
            counts = [0] * threads
            stop = time.monotonic() + seconds
            workers = [
                threading.Thread(target=_hammer, args=(url, headers, project.id, stop, counts, k))
                for k in range(threads)
            ]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            rate = sum(counts) / seconds
            print(f"simple GETs (requester, project), {threads} client thread(s): {rate:.0f} req/s")
        start, n = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            client.get_requester()
            n += 1
        print(f"TolokaClient.get_requester in a loop: {n / (time.monotonic() - start):.0f} req/s")


def seed_design() -> None:
    with run_in_background(EmulatorSettings(port=0, speed=600)) as emu:
        client = make_client(emu)
        start = time.monotonic()
        design = SeedDesign(client)
        design.setup()
        setup = time.monotonic() - start
        design.open()
        wall = design.run(period=1.0, timeout=120)
        rows = len(client.get_assignments_df(pool_id=design.ids["main"]))
        stats = emu.stats()
    print(
        f"seed design at speed 600: setup {setup:.2f} s, open->main pool closed {wall:.2f} s wall "
        f"({design.polls} requester polls of ~1 s), {rows} main-pool rows, "
        f"simulated {stats['sim_time'] / 3600:.1f} h, assignments {stats['assignments']}"
    )


def ten_thousand(size: int = 10_000, overlap: int = 3, workers: int = 300) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_in_background(
            EmulatorSettings(port=0, speed=0, catalogue_size=size, workers=workers, db=f"{tmp}/bench.db")
        ) as emu,
    ):
        client = make_client(emu)
        images = list(build_catalogue("demo-shoes", size=size, seed=0, base_url=emu.url)["image"])
        project = create_project(client, "10k")
        pool = create_simple_pool(client, project.id, "10k", overlap)
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
        f"{steps} advance calls); export {export:.1f} s for {len(df)} rows"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-10k", action="store_true", help="skip the large-catalogue run")
    parser.add_argument("--size", type=int, default=10_000, help="items (and suites) of the large run")
    parser.add_argument("--overlap", type=int, default=3, help="overlap of the large run")
    parser.add_argument("--workers", type=int, default=300, help="simulated workers of the large run")
    args = parser.parse_args()
    throughput()
    seed_design()
    if not args.skip_10k:
        ten_thousand(size=args.size, overlap=args.overlap, workers=args.workers)


if __name__ == "__main__":
    main()
