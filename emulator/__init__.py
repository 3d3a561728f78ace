"""A local Toloka emulator with a simulated labour market (the embedded default "Toloka" of crowdclust).

It speaks the Toloka HTTP API as the unmodified toloka-kit 1.2.3 client expects, keeps its state in
SQLite, and runs a seeded market of thousands of simulated workers (see `crowd` for the model) over
demo catalogues with ground truth. Public API::

    from emulator import EmulatorSettings, run_in_background, build_catalogue, write_catalogue
    with run_in_background(EmulatorSettings(port=0)) as emu:
        client = toloka.client.TolokaClient(emu.token, url=emu.url)

Module map, each importing only the ones below it: `server` (uvicorn) -> `app` (HTTP routes,
control endpoints) -> `guard` (auth, rate limit, faults) and `core` (requester-side objects and
operations) -> `objects` (task and suite creation, analytics), `mixer` (tasks into suites),
`aggregate` (aggregated solutions), `tsv` (export), `crowd` (the market simulation) -> `qc`
(quality-control rules), `workers` (population and behaviour), `filters` (pool filters) -> `search`
(paging), `store` (SQLite state),
`validate` (config shape checks), `records` (document helpers), `clock`, `catalogues` (demo shoes,
digits, TSV catalogues, images), `faults`, `util`, `errors`. `crowd`, `objects`, `qc`, `aggregate`
and `tsv` receive the `Emulator` as an argument and name its type for checkers only, so there is no
import cycle at run time.
This package never imports prefect, flows, tasks or aggregation.
"""

from __future__ import annotations

from emulator.catalogues import build_catalogue, write_catalogue
from emulator.server import RunningEmulator, run_in_background, serve_forever
from emulator.settings import DEFAULT_BASE_URL, DEFAULT_TOKEN, EmulatorSettings

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TOKEN",
    "EmulatorSettings",
    "RunningEmulator",
    "build_catalogue",
    "run_in_background",
    "serve_forever",
    "write_catalogue",
]
