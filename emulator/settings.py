"""Settings of one emulator instance (CLI flags, fixtures and `run_in_background` all build one)."""

from __future__ import annotations

from dataclasses import dataclass

from emulator.mix import shares

DEFAULT_TOKEN = "crowdclust-emulator-token"
DEFAULT_PORT = 8765
DEFAULT_BASE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_WORKERS = 3000  # size of the simulated labour market


@dataclass
class EmulatorSettings:
    """Everything that shapes an emulator: where it listens, its state, its crowd and its faults.

    `port=0` picks a free port; `db=None` keeps all state in memory (tests). `speed` is the number of
    simulated seconds per wall second; `speed=0` freezes the clock so that only
    `POST /_emulator/advance` moves it (fully deterministic tests). `start` is the simulated instant
    the clock starts at (POSIX seconds; default: the real current time). `catalogue` is a bundled
    name (`demo-shoes`, `digits`) or the path of a TSV with an image URL column and a `class` column.
    `workers` is the size of the market the crowd is drawn from. `rate_limit` is a per-token limit in
    requests per second (0: none); `admin_token` opens the state-changing `/_emulator/*` routes in
    addition to `token` (default: only `token`). `account` names the requester account a fresh state
    belongs to (default: a new random one; a state loaded from `db` keeps its own): see
    `Emulator.requester`. `crowd` sets the share of some worker types (`emulator.mix.shares`: the
    types not named share the rest in their default proportions); default: the default mix.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: str | None = None
    token: str = DEFAULT_TOKEN
    catalogue: str = "demo-shoes"
    catalogue_size: int = 82
    speed: float = 600.0
    start: float | None = None
    seed: int = 0
    workers: int = DEFAULT_WORKERS
    fail_rate: float = 0.0
    latency_ms: int = 0
    rate_limit: float = 0.0
    admin_token: str | None = None
    balance: float = 10_000.0
    log_level: str = "warning"
    account: str | None = None
    crowd: dict[str, float] | None = None

    def __post_init__(self) -> None:
        shares(self.crowd)  # an impossible mix fails here, not when the first worker arrives
