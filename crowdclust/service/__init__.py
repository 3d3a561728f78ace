"""Run crowdclust as a local service: Prefect server, Toloka emulator, file server of `runs/`, workers.

`make up` / `make down` / `make status` call `up()` / `down()` / `status()`. Everything lives under
`.service/` in the repository (Prefect's database or a PostgreSQL cluster, the emulator's database,
logs, pid files, the emulator token, the settings in use), so the service never leaks outside the
project. Modules: `config` (settings, remembered in the folder), `processes` (spawn/stop/health),
`postgres` (the `postgres` profile), `deployments` (deploy only on change, keeping UI edits),
`deployer` (provisions the work pool, blocks and rate limits, then deploys, in its own process),
`worker` (the process worker that ends its runs first), `supervisor` (up/down/status), `inflight`
(the runs a `down` would interrupt), `files` (the file server of `runs/` behind the API's password).
"""

from crowdclust.service.config import ServiceConfig, load
from crowdclust.service.processes import bin_path
from crowdclust.service.supervisor import down, left_running, start, status, stop, strangers, up

__all__ = [
    "ServiceConfig",
    "bin_path",
    "down",
    "left_running",
    "load",
    "start",
    "status",
    "stop",
    "strangers",
    "up",
]
