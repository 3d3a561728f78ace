"""`make demo`: the whole pipeline against a fresh local emulator, then a summary.

Starts the emulator (demo shoes, 82 images, seed 0, 600 simulated seconds per wall second) in a
background thread, runs `crowdclust_pipeline` with `configs/demo-shoes/pipeline.yaml` pointed at
it, prints clusters, ARI/NMI against the truth, intruder accuracy, cost, wall time and the report
paths, and stops the emulator. No Prefect server is needed: a project-local PREFECT_HOME
(`.prefect/`) and Prefect's ephemeral API are used unless PREFECT_API_URL points at a server.

Every demo gets its own run key (the emulator starts empty each time, so nothing from an earlier
demo could be resumed); `crowdclust run` is the command for resumable runs.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from crowdclust.runtime import describe, prepare_prefect_env
from tasks.settings import Settings


def main() -> int:
    started = time.monotonic()
    prepare_prefect_env()
    from emulator import EmulatorSettings, run_in_background
    from flows.pipeline import crowdclust_pipeline
    from tasks.params import load_params

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    settings = EmulatorSettings(port=0, catalogue="demo-shoes", catalogue_size=82, seed=0, speed=600.0)
    print(
        f"starting the emulator (demo shoes, 82 images, seed 0, speed x{settings.speed:.0f}) ...", flush=True
    )
    with run_in_background(settings) as emu:
        os.environ["TOLOKA_TOKEN"] = emu.token
        params = load_params(
            Settings().configs_dir / "demo-shoes" / "pipeline.yaml",
            {
                "toloka": {"url": emu.url},
                "run_key": f"demo-shoes-{stamp}",
                "runs_dir": str(Path.cwd() / "runs"),
            },
        )
        print(f"emulator at {emu.url}; running the flow (run key {params.run_key}) ...", flush=True)
        summary = crowdclust_pipeline(params)
    print("\n== crowdclust demo ==")
    print(describe(summary))
    print(f"total wall time:    {time.monotonic() - started:.1f} s (including start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
