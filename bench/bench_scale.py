"""Six tiny demo runs at once on the local service with 1 and with 2 workers; prints the figures.

    .venv/bin/python bench/bench_scale.py                # PostgreSQL profile, 1 then 2 workers
    .venv/bin/python bench/bench_scale.py --workers 2    # one setting only

For each worker count: a fresh service (`crowdclust.service.up`, free ports, temporary folder, the
scale test's emulator limit and Prefect rate limit), its cold `make up` time, the wall
time of the six runs of tests/test_scale_service.py (24 shoes, overlap 2, no intruders) created at
once, the emulator's peak requests/s per token against its limit, its 429s and the requests it
answered, and the load average (the machine is shared: compare figures taken at similar load).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crowdclust import service  # noqa: E402
from tests.fixtures.service import (  # noqa: E402
    HAS_POSTGRES,
    SCALE_EMULATOR_LIMIT,
    SCALE_PREFECT_RATE,
    SCALE_RUNS,
    Service,
    scale_runs,
    service_config,
    service_folder,
)


def measure(workers: int, profile: str) -> None:
    folder = service_folder()
    cfg = service_config(
        folder,
        profile=profile,
        workers=workers,
        emulator_rate_limit=SCALE_EMULATOR_LIMIT,
        rates={"local": SCALE_PREFECT_RATE},
    )
    try:
        started = time.monotonic()
        service.up(cfg, say=lambda _: None)
        up_seconds = time.monotonic() - started
        svc = Service(cfg)
        started = time.monotonic()
        ids = scale_runs(svc, uuid.uuid4().hex[:6])
        states = [svc.wait(run_id, timeout=1800)["state_type"] for run_id in ids.values()]
        wall = time.monotonic() - started
        rate = svc.api.get(f"{cfg.emulator_url}/_emulator/stats").json()["rate"]
        svc.api.close()
        print(
            f"{profile}, {workers} worker(s): make up {up_seconds:.1f} s; {SCALE_RUNS} runs {wall:.1f} s "
            f"({', '.join(sorted(set(states)))}); emulator peak {max(rate['peak_per_second'].values())} "
            f"req/s (limit {rate['limit_per_second']:g}, Prefect limit {SCALE_PREFECT_RATE:g}), "
            f"429s {sum(rate['throttled'].values())}; {sum(rate['requests'].values())} Toloka requests; "
            f"load average {os.getloadavg()}",
            flush=True,
        )
    finally:
        service.down(cfg, say=lambda _: None)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, action="append", help="worker counts (default: 1 and 2)")
    parser.add_argument("--profile", choices=["sqlite", "postgres"], default=None)
    args = parser.parse_args()
    profile = args.profile or ("postgres" if HAS_POSTGRES else "sqlite")
    for workers in args.workers or [1, 2]:
        measure(workers, profile)


if __name__ == "__main__":
    main()
