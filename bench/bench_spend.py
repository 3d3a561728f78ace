"""What a large run costs on the emulator against its `max_spend` and its estimate, with and without faults.

    nice .venv/bin/python bench/bench_spend.py                        # 10,000 items, fail rate 0 then 0.3
    nice .venv/bin/python bench/bench_spend.py --size 2000 --fail-rates 0.3 --max-spend 60

Each case: a fresh emulator (`crowdclust emulator --fail-rate F --latency-ms L`, its own process, the
demo-shoes catalogue at `--size` items) and `crowdclust run` of the end-to-end flow on it (HITs of 10,
overlap 3, 3 HITs per item, intruder evaluation on), in a temporary project folder with its own
Prefect home (and the Prefect server of `PREFECT_API_URL` when it is set: on a busy machine the
ephemeral one may not start in time). Prints one row per case: the run's exit code and `error:`
line if any, the estimate checked against the budget, `max_spend`, what Toloka charged (the run's
pools, read from the emulator after the run), the main pool's accepted assignments against the
plan, the wall time and the load average (the machine is shared: compare rows taken at similar
load).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emulator import write_catalogue  # noqa: E402

TOKEN = "bench-spend-token"
BIN = Path(sys.executable).parent


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@contextmanager
def emulator(size: int, fail_rate: float, latency_ms: int, speed: float) -> Iterator[str]:
    """`crowdclust emulator` in its own process; yields its URL."""
    args = [str(BIN / "crowdclust"), "emulator", "--port", "0", "--size", str(size), "--speed", str(speed)]
    args += ["--fail-rate", str(fail_rate), "--latency-ms", str(latency_ms)]
    env = os.environ | {"CROWDCLUST_EMULATOR_TOKEN": TOKEN}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := re.search(r"ready at (http://\S+)", line):
                yield match.group(1)
                return
        raise RuntimeError("the emulator did not start")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def config(folder: Path, url: str, size: int, max_spend: float, exam_workers: int) -> Path:
    write_catalogue("demo-shoes", folder / "dataset.tsv", size=size, seed=0)
    data = {
        "name": f"spend-{size}",
        "dataset": "dataset.tsv",
        "toloka_dir": str(ROOT / "configs" / "demo-shoes" / "toloka"),
        "runs_dir": str(folder / "runs"),
        "toloka": {"environment": "local", "url": url},
        "hits": {"size": 10, "overlap": 3, "hits_per_item": 3},
        "exam": {"expected_workers": exam_workers},
        "wait": {"poll_seconds": 1, "timeout_seconds": 7200},
        "budget": {"max_spend": max_spend},
    }
    path = folder / "pipeline.yaml"
    path.write_text(json.dumps(data))
    return path


def estimate(pipeline: Path) -> float:
    """The estimate the run checks against `max_spend` (main pool, exams, intruders)."""
    from tasks import budget
    from tasks.params import load_params
    from tasks.toloka_config import load_bundle

    params = load_params(pipeline)
    n_items = sum(1 for _ in (pipeline.parent / "dataset.tsv").open()) - 1
    plan = budget.planned_hits(n_items, params)
    return budget.estimate_labelling(params, load_bundle(params.toloka_dir), plan).total


def charged(url: str, key: str) -> dict[str, Any]:
    """What the run key's pools cost and hold, as the platform tells (the run's own view aside)."""
    from tasks.toloka_api import RunRegistry, TolokaClient

    client = TolokaClient(TOKEN, url=url, retries=10, timeout=60.0)
    registry = RunRegistry(client, key)
    main = registry.pools().get("main-pool")
    accepted = sum(1 for _ in client.get_assignments(pool_id=main.id, status="ACCEPTED")) if main else 0
    return {"spent": registry.spent(), "main_accepted": accepted}


def case(
    size: int, fail_rate: float, latency_ms: int, speed: float, max_spend: float, exam_workers: int
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-spend-") as tmp,
        emulator(size, fail_rate, latency_ms, speed) as url,
    ):
        folder = Path(tmp)
        key = f"bench-spend-{size}-{fail_rate}"
        env = os.environ | {
            "TOLOKA_TOKEN": TOKEN,
            "CROWDCLUST_PROJECT_DIR": tmp,
            "PREFECT_HOME": str(folder / ".prefect"),
        }
        pipeline = config(folder, url, size, max_spend, exam_workers)
        command = [str(BIN / "crowdclust"), "run", str(pipeline), "--run-key", key]
        started = time.monotonic()
        run = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        return {
            "fail_rate": fail_rate,
            "code": run.returncode,
            "error": errors[0] if errors else "",
            "estimate": estimate(pipeline),
            "planned": size * 3 // 10 * 3,
            "wall": wall,
            "load": load(),
            **charged(url, key),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="catalogue items")
    parser.add_argument("--fail-rates", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--speed", type=float, default=600.0, help="emulator seconds per wall second")
    parser.add_argument("--max-spend", type=float, default=275.0)
    parser.add_argument(
        "--exam-workers",
        type=int,
        default=400,
        help="exam.expected_workers: who may qualify; at 10,000 items 100 seats cannot finish the main "
        "pool in its 7 days (50 answers each, then one per 5 hours): the run refuses them before it opens",
    )
    args = parser.parse_args()
    print(
        f"{args.size} items, HIT 10, overlap 3, 3 HITs per item, intruders on, "
        f"exam seats {args.exam_workers}, max_spend ${args.max_spend:.2f}, latency {args.latency_ms} ms, "
        f"emulator speed {args.speed:g}"
    )
    print(
        f"{'faults':>6} {'exit':>4} {'estimate':>9} {'spent':>9} {'spent/max':>9} {'spent/est':>9} "
        f"{'main acc/plan':>14} {'wall s':>7}  load"
    )
    for fail_rate in args.fail_rates:
        row = case(args.size, fail_rate, args.latency_ms, args.speed, args.max_spend, args.exam_workers)
        print(
            f"{row['fail_rate']:>6.2f} {row['code']:>4} {row['estimate']:>9.2f} {row['spent']:>9.2f} "
            f"{row['spent'] / args.max_spend:>9.3f} {row['spent'] / row['estimate']:>9.3f} "
            f"{row['main_accepted']:>6}/{row['planned']:<7} {row['wall']:>7.0f}  {row['load']}",
            flush=True,
        )
        if row["error"]:
            print(f"       {row['error']}", flush=True)


if __name__ == "__main__":
    main()
