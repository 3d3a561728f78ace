"""A local Toloka emulator with a simulated crowd (the embedded default "Toloka" of crowdclust).

It speaks the Toloka HTTP API as toloka-kit 1.2.3 expects (design/toloka-wire.md), keeps its state in
SQLite, and runs a seeded simulated crowd (design/crowd-simulation.md) over demo catalogues with ground
truth. Public API::

    from emulator import EmulatorSettings, run_in_background, build_catalogue, write_catalogue
    with run_in_background(EmulatorSettings(port=0)) as emu:
        client = toloka.client.TolokaClient(emu.token, url=emu.url)

Module map: `app` (HTTP routes, control endpoints), `core` (requester-side objects), `objects` (task
and suite creation, analytics), `crowd` (the simulation loop), `workers` (population and behaviour),
`qc` (quality-control rules), `filters` (pool filters), `tsv` (export), `search` (paging), `store`
(SQLite state), `clock`, `catalogues` (demo shoes, digits, TSV catalogues, images), `faults`, `server`.
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
