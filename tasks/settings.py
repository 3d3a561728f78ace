"""Process-level settings, read from the environment: where the project lives, which emulator to use.

Distinct from `tasks.params` (the per-run parameters of a flow, shown in the Prefect UI): these
describe the machine a flow runs on, so they are never flow parameters and never part of a cache
key. Paths derive from `project_dir` (the working directory unless CROWDCLUST_PROJECT_DIR says
otherwise), never from where the code is installed, so an installed wheel behaves like a checkout.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """`CROWDCLUST_*` variables (and `TOLOKA_TOKEN`), read when an instance is made."""

    model_config = SettingsConfigDict(env_prefix="CROWDCLUST_", extra="ignore", frozen=True)

    project_dir: Path = Field(
        default_factory=Path.cwd,
        description="The project folder: `configs/`, `runs/`, `.prefect/` and `.prefect_results/` live here.",
    )
    local_url: str | None = Field(
        None,
        description="Emulator URL that wins over `toloka.url` for `local` runs: points a run at another "
        "emulator without editing its parameters (the local service instead deploys its real URL).",
    )
    shared_emulator_url: str | None = Field(
        None,
        description="The local service's emulator as teammates' browsers reach it, set by a service that "
        "listens on the network for its runs: the image links of their artifacts name it instead of "
        "127.0.0.1 (tasks/thumbnails.py `link_base`).",
    )
    toloka_rate_limit: bool = Field(
        False,
        description="Make every Toloka request take a slot of the Prefect global rate limit "
        "`toloka-api-<environment>` (the service sets it for its workers; see tasks/toloka_rate.py).",
    )
    toloka_rates: str | None = Field(
        None,
        description="Toloka requests per second per environment, e.g. `local=8,production=20` (over "
        "sandbox=10, production=10): the service's Prefect limits, and a run on its own throttles in "
        "its process (tasks/toloka_rate.py).",
    )
    run_lock_lease_seconds: float = Field(
        60.0,
        ge=60.0,  # the shortest lease a Prefect 3.9.1 server grants
        le=86400.0,
        description="Lease of the run key's Prefect concurrency slot (with a Prefect server): a run killed "
        "on another machine frees its key this long (plus up to 15 s) after its last renewal.",
    )
    run_lock_wait_seconds: float = Field(
        0.0,
        ge=0.0,
        description="How long a run waits for its key's Prefect slot held on another machine before it "
        "fails (0: at once). Lease + 15 lets a run resumed elsewhere after a kill -9 go on by itself.",
    )
    private_prefect: bool = Field(
        False,
        description="Set by `crowdclust run` and `make demo` while they run their own Prefect server: "
        "it lives and dies with the command, so like Prefect's ephemeral API it guards no run key "
        "across machines and the run lock's server layer is skipped (the flock alone applies).",
    )
    toloka_token: SecretStr | None = Field(
        None, validation_alias="TOLOKA_TOKEN", description="The Toloka (or emulator) OAuth token."
    )

    @property
    def configs_dir(self) -> Path:
        """The bundled pipeline configs (`configs/<dataset>/pipeline.yaml`)."""
        return self.project_dir / "configs"

    @property
    def prefect_home(self) -> Path:
        """Default PREFECT_HOME of `crowdclust run` and `make demo` (profile, SQLite database)."""
        return self.project_dir / ".prefect"

    @property
    def results_dir(self) -> Path:
        """Default PREFECT_RESULTS_LOCAL_STORAGE_PATH: where persisted task results (the resume cache) go."""
        return self.project_dir / ".prefect_results"


def token_problem(token: str) -> str | None:
    """Why `token` (without its surrounding whitespace) cannot be sent, never quoting it; else None.

    An OAuth token is visible ASCII. Any other character failed the first request inside httpx, and
    its error held the whole header: `UnicodeEncodeError('ascii', 'OAuth <token>...', ...)` for a
    zero-width space pasted with the token, `Illegal header value b'OAuth <token> ...'` for a space
    or a control character. Prefect logged that error's repr and persisted it as the failed run's
    result, so the token went to the run's log, the UI and the result storage.
    """
    for ch in token:
        if not "!" <= ch <= "~":
            name = unicodedata.name(ch, "a control character")
            return f"it holds a character an HTTP header cannot carry (U+{ord(ch):04X}, {name})"
    return None
