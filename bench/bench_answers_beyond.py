"""What a resume's `answers-beyond-overlap` step costs on a big main pool.

Run: `.venv/bin/python bench/bench_answers_beyond.py [--suites 7000 --overlap 10 --counted 7]`.
Builds a run's main pool on the emulator (its default, 7,000 HITs x overlap 10 = 70,000 answers, as
a 10,000-image run that was interrupted and is resumed at a lower overlap), lets the crowd complete
it, then times `RunRegistry.answers_beyond` as a resumed run calls it, and the same count through
toloka-kit's `get_assignments` as it was made before. Prints figures (with the load average, since
other processes share the cores); not part of the tests.
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
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import toloka.client as toloka  # noqa: E402

from bench.bench_emulator import create_pool, create_project  # noqa: E402
from emulator import build_catalogue  # noqa: E402
from tasks.toloka_api import RunRegistry, TolokaClient  # noqa: E402

KEY = "bench-beyond"
TOKEN = "bench-beyond-token"
ROLE = "main-pool"


def main_pool(client: TolokaClient, overlap: int) -> str:
    """A project and a pool tagged as `KEY`'s main pool, as `RunRegistry` finds them."""
    project = create_project(client, "bench", private_comment=f"crowdclust:{KEY}:main-project")
    return str(create_pool(client, project.id, overlap, private_comment=f"crowdclust:{KEY}:{ROLE}").id)


def through_toloka_kit(client: TolokaClient, pool_id: str, overlap: int) -> int:
    """The count as it was made before: `get_assignments` (pages of 50, a full `Assignment` each)."""
    held: dict[str, int] = {}
    for answer in client.get_assignments(pool_id=pool_id, status=["ACTIVE", "SUBMITTED", "ACCEPTED"]):
        held[str(answer.task_suite_id)] = held.get(str(answer.task_suite_id), 0) + 1
    return sum(max(0, count - overlap) for count in held.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", type=int, default=7_000, help="HITs of the pool")
    parser.add_argument("--overlap", type=int, default=10, help="answers per HIT the pool was given")
    parser.add_argument("--counted", type=int, default=7, help="overlap the resumed run counts")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls of each way")
    args = parser.parse_args()
    size = 10_000
    with served(size) as (url, advance):
        client = TolokaClient(TOKEN, url=url)
        images = list(build_catalogue("demo-shoes", size=size, seed=0, base_url=url)["image"])
        pool_id = main_pool(client, args.overlap)
        hits = [[images[(k + 37 * i) % size] for i in range(10)] for k in range(args.suites)]
        suites = [
            toloka.TaskSuite(pool_id=pool_id, tasks=[toloka.Task(input_values={"images": h})]) for h in hits
        ]
        client.create_task_suites(suites, allow_defaults=True)
        client.open_pool(pool_id)
        start = time.monotonic()
        while client.get_pool(pool_id).is_open():
            advance(1800)
        built = time.monotonic() - start
        registry = RunRegistry(client, KEY)
        ways = {
            "RunRegistry.answers_beyond": lambda: registry.answers_beyond(ROLE, args.counted),
            "get_assignments, as before": lambda: through_toloka_kit(client, pool_id, args.counted),
        }
        print(
            f"{args.suites:,} HITs x overlap {args.overlap} = {args.suites * args.overlap:,} answers "
            f"(built in {built:.0f} s), counted above overlap {args.counted}; emulator in its own process:"
        )
        for name, way in ways.items():
            for attempt in range(args.repeat):
                start, cpu = time.monotonic(), time.process_time()
                extra = way()
                print(
                    f"  {name}: {extra:,} answers beyond, {time.monotonic() - start:.2f} s wall, "
                    f"{time.process_time() - cpu:.2f} s CPU of this process (call {attempt + 1}; "
                    f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})"
                )


@contextlib.contextmanager
def served(size: int) -> Iterator[tuple[str, Callable[[float], None]]]:
    """`crowdclust emulator` at speed 0 in its own process: the client's CPU is not the server's."""
    cli = Path(sys.executable).with_name("crowdclust")
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(cli), "emulator", "--port", "0", "--speed", "0", "--size", str(size), "--workers", "400"]
        env = os.environ | {"CROWDCLUST_EMULATOR_TOKEN": TOKEN}
        proc = subprocess.Popen(
            [*args, "--db", f"{tmp}/bench.db"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            url = None
            while url is None:
                line = proc.stdout.readline() if proc.stdout else ""
                if not line:
                    raise RuntimeError("the emulator did not start")
                if match := re.search(r"ready at (http://\S+)", line):
                    url = match.group(1)

            def advance(seconds: float) -> None:
                request = urllib.request.Request(
                    f"{url}/_emulator/advance?seconds={seconds}",
                    method="POST",
                    headers={"Authorization": f"OAuth {TOKEN}"},
                )
                with urllib.request.urlopen(request, timeout=60):
                    pass

            yield url, advance
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
