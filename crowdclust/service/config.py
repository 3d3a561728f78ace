"""What the local service is made of: ports, profile, workers, storage, limits; remembered on disk.

`make up` writes the settings it used to `<state_dir>/service.json`, so `make status`, `make down`
and the next `make up` find the same ports, profile and worker count without any variable. Explicit
settings (CLI options / environment variables) win over remembered ones.

Nothing secret is remembered here: the emulator token and the PostgreSQL password live in their own
files with mode 0600.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from crowdclust.runtime import HEARTBEAT_SECONDS
from crowdclust.service.files import HEALTH_PATH as FILES_HEALTH
from tasks.atomic_file import write_atomic
from tasks.run_lock import is_loopback
from tasks.toloka_rate import DEFAULT_RATES

REPO = Path(__file__).resolve().parent.parent.parent
WORK_POOL = "crowdclust"
TOKEN_BLOCK = "crowdclust-local-token"
RESULTS_BLOCK = "crowdclust-results"
# The event the service's worker sends when a Suspended run's process ended (the heartbeat
# automation expects it: that run's silence is meant, and Resume starts it again).
SUSPENDED_EVENT = "crowdclust.flow-run.suspended"
TOKEN_ENV = "CROWDCLUST_EMULATOR_TOKEN"  # the emulator reads its token from here (never argv)
ADMIN_TOKEN_ENV = "CROWDCLUST_EMULATOR_ADMIN_TOKEN"  # the emulator's second token (its --admin-token)
DATABASE_URL_ENV = "CROWDCLUST_DATABASE_URL"  # `up`'s existing PostgreSQL, password included
RUNS_URL_ENV = "CROWDCLUST_RUNS_URL"  # base URL under which `runs_dir` is served read-only
RUNS_DIR_ENV = "CROWDCLUST_RUNS_DIR"  # the folder served at that URL
SHARED_EMULATOR_ENV = "CROWDCLUST_SHARED_EMULATOR_URL"  # the emulator as teammates reach it (image links)
SERVICE_DIR_ENV = "CROWDCLUST_SERVICE_DIR"  # the service folder (`make up/status/down`, `crowdclust run`)
RATE_LIMIT_ENV = "CROWDCLUST_TOLOKA_RATE_LIMIT"  # on: every Toloka request takes a rate-limit slot
API_AUTH_ENV = "PREFECT_API_AUTH_STRING"  # Prefect's clients send it as HTTP basic auth
SERVER_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING"  # Prefect's server then asks every request for it
AUTH_USER = "crowdclust"  # the user part of the service's own `user:password`
LOOPBACK = "127.0.0.1"
EVERY_ADDRESS = "0.0.0.0"


def basic_auth(password: str | None) -> dict[str, str]:
    """The `Authorization` header Prefect's clients send for a `user:password`; none without one."""
    return {"Authorization": "Basic " + base64.b64encode(password.encode()).decode()} if password else {}


@functools.cache
def machine_address() -> str:
    """This machine's name when it resolves to an address others reach, else the address of the
    interface its traffic leaves by, else its name.

    `socket.getfqdn()` said `localhost` on a machine whose /etc/hosts maps its name to 127.0.0.1,
    which would send teammates to their own machines. Connecting a UDP socket sends nothing; it only
    picks the route to a documentation-only address (TEST-NET-1). Asked once a process: `up` and
    `status` name it in several lines, each a name lookup.
    """
    name = socket.gethostname()
    try:
        if not is_loopback(socket.gethostbyname(name)):
            return name
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
    except OSError:
        return name
    return name if is_loopback(address) or address == EVERY_ADDRESS else address


Profile = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class ServiceConfig:
    """Where the local service lives, which ports it uses and how it is built.

    - `profile`: `sqlite` (Prefect's default database in the service folder) or `postgres` (a
      PostgreSQL cluster initialised in the service folder, or `database_url` when set).
    - `server_url`: use an existing Prefect server instead of starting one.
    - `results`: where every worker persists task results: a folder (default `<state_dir>/results`)
      or an fsspec URL such as `s3://bucket/crowdclust` (saved as a RemoteFileSystem block).
    - `rates`: requests per second allowed per Toloka environment (Prefect global rate limits).
    - `auth`: the Prefect server asks every API request and the UI for a password, made once and
      kept in `<state_dir>/prefect-auth` (mode 0600), and so does the file server of `runs/`.
      Without it anyone who reaches the port (every user of the machine) can start paid runs and
      read the Secret blocks, the Toloka token's too.
    - `host`: the address the server, the emulator and the file server listen on: 127.0.0.1 (this
      machine only), or an address of the network (0.0.0.0: all of them) for a team on several
      machines, which needs `auth`. PostgreSQL always listens on 127.0.0.1.
    """

    state_dir: Path = REPO / ".service"
    host: str = "127.0.0.1"
    server_port: int = 4200
    emulator_port: int = 8765
    files_port: int = 4280
    postgres_port: int = 5433
    profile: Profile = "sqlite"
    database_url: str | None = None
    server_url: str | None = None
    workers: int = 1
    results: str | None = None
    runs_dir: Path = REPO / "runs"
    prefect_yaml: Path = REPO / "prefect.yaml"  # the deployments (another file: tests, variants)
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    emulator_speed: float = 600.0
    emulator_rate_limit: float | None = None  # requests/s per token the emulator answers 429 above
    # The emulator's --catalogue: the images it lists and, for URLs it does not draw itself, what its
    # crowd perceives: demo-shoes, digits, or a TSV of image URL + class (an absolute path) to rehearse
    # a catalogue of one's own. Named, not None, so that `demo-shoes` given again goes back to it.
    emulator_catalogue: str = "demo-shoes"
    worker_poll_seconds: float = 5.0  # how often a worker asks for runs (Prefect's default is 10)
    auth: bool = False

    @property
    def local_host(self) -> str:
        """The address this machine's clients (the workers, `make status`) reach the service at."""
        return LOOPBACK if self.host == EVERY_ADDRESS else self.host

    @property
    def public_host(self) -> str:
        """The address teammates on other machines reach the service at (what `up` tells them)."""
        return machine_address() if self.host == EVERY_ADDRESS else self.host

    @property
    def on_network(self) -> bool:
        """Whether the service listens on an address other machines reach."""
        return not is_loopback(self.host)

    @property
    def api_url(self) -> str:
        if self.server_url:
            return self.server_url.rstrip("/")
        return f"http://{self.local_host}:{self.server_port}/api"

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    @property
    def emulator_url(self) -> str:
        return f"http://{self.local_host}:{self.emulator_port}"

    @property
    def runs_url(self) -> str:
        return f"http://{self.local_host}:{self.files_port}"

    @property
    def shared_runs_url(self) -> str:
        """The file server's URL in the links of the runs' artifacts, which teammates open too."""
        return f"http://{self.public_host}:{self.files_port}" if self.on_network else self.runs_url

    @property
    def shared_emulator_url(self) -> str:
        """The emulator's URL in the links of the runs' artifacts (its images), which teammates open."""
        return f"http://{self.public_host}:{self.emulator_port}" if self.on_network else self.emulator_url

    @property
    def token_file(self) -> Path:
        return self.state_dir / "emulator-token"

    @property
    def auth_file(self) -> Path:
        return self.state_dir / "prefect-auth"

    def api_auth(self) -> str | None:
        """The `user:password` the server's API takes: for an existing server (`server_url`) what the
        environment gives (PREFECT_API_AUTH_STRING); for the service's own, its password when it asks
        for one (a password in the shell for another server is never sent to it), else None."""
        if self.server_url:
            return os.environ.get(API_AUTH_ENV) or None
        if not self.auth or not self.auth_file.exists():
            return None  # no password, or not made yet: `up` makes it before anything starts
        return read_secret_file(self.auth_file, "the Prefect API's password")

    def api_headers(self) -> dict[str, str]:
        """The headers of a request to the server's API made without Prefect's client (httpx)."""
        return basic_auth(self.api_auth())

    def link_env(self) -> dict[str, str]:
        """What a run on this service links its artifacts by: the served runs folder
        (CROWDCLUST_RUNS_URL/_DIR) and, on the network, the emulator as teammates reach it
        (CROWDCLUST_SHARED_EMULATOR_URL, its images' links). The workers' runs get it in `env()`, a
        `crowdclust run` against the service in `crowdclust.runtime.link_service_runs_folder`."""
        links = {RUNS_URL_ENV: self.shared_runs_url, RUNS_DIR_ENV: str(self.runs_dir)}
        if self.on_network:
            links[SHARED_EMULATOR_ENV] = self.shared_emulator_url
        return links

    def client_env(self) -> dict[str, str]:
        """`env()` and, when the API asks for one, its password (PREFECT_API_AUTH_STRING): for the
        processes that talk to the server (the deployer, the workers and their flow runs)."""
        env = self.env()
        auth = self.api_auth()
        if auth:
            env[API_AUTH_ENV] = auth
        return env

    @property
    def results_location(self) -> str:
        return self.results or str(self.state_dir / "results")

    @property
    def results_is_url(self) -> bool:
        return "://" in self.results_location

    @property
    def uses_local_postgres(self) -> bool:
        return self.profile == "postgres" and not self.database_url and not self.server_url

    def health_url(self, name: str) -> str:
        """The URL that answers 2xx while the component is up."""
        return {
            "server": f"{self.api_url}/health",
            "emulator": f"{self.emulator_url}/_emulator/health",
            # The file server behind a password (`auth`) answers only this path without it.
            "files": f"{self.runs_url}{FILES_HEALTH if self.auth else '/'}",
        }[name]

    def env(self) -> dict[str, str]:
        """The environment shared by the workers, deploys and flow runs (never a secret in it).

        - Result storage: Prefect's own settings (PREFECT_RESULTS_LOCAL_STORAGE_PATH, or a default storage
          block for a URL) with persistence on; every worker gets the same values, so a Retry on any
          worker finds the cache.
        - CROWDCLUST_RUNS_URL/_DIR: where `runs/` is served over http (links in artifacts); on the
          network, CROWDCLUST_SHARED_EMULATOR_URL: the emulator as teammates reach it (image links).
        - CROWDCLUST_TOLOKA_RATE_LIMIT: every Toloka request of a run takes a slot of the global rate
          limit `toloka-api-<environment>`, so all runs on all workers share the requester's quota.
        - TOLOKA_TOKEN, the emulator's tokens and database settings are removed: deployments name their
          Secret block, and a production token in the developer's shell must never reach the emulator.
          CROWDCLUST_DATABASE_URL, which `make up` reads, went on to every worker and flow run with
          its password; the server gets the URL as PREFECT_API_DATABASE_CONNECTION_URL alone.
        - Prefect API passwords are removed too: the server gets its own, the clients theirs
          (`client_env()`), the emulator and the file server none.
        """
        dropped = {
            "TOLOKA_TOKEN",
            TOKEN_ENV,
            ADMIN_TOKEN_ENV,
            DATABASE_URL_ENV,
            "CROWDCLUST_LOCAL_URL",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH",  # the service chooses result storage for its workers
            "PREFECT_LOCAL_STORAGE_PATH",
            "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK",
            API_AUTH_ENV,  # `client_env()` gives the clients the password of this server
            SERVER_AUTH_ENV,  # the server's own, set for the server alone
        }
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in dropped and not k.startswith(("PREFECT_API_DATABASE", "PREFECT_SERVER_DATABASE"))
        }
        env.update(
            PREFECT_HOME=str(self.state_dir / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS=str(self.worker_poll_seconds),
            # Heartbeats let the server crash runs whose process died (see deployer's automation).
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
            PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        )
        env.update(self.link_env())
        if self.on_network and not self.server_url:
            # The UI asks the API at the address its page came from: teammates' browsers reach the
            # server by the machine's name or address, not by 127.0.0.1.
            env["PREFECT_UI_API_URL"] = "/api"
        env[RATE_LIMIT_ENV] = "true"
        if self.results_is_url:
            slug = f"remote-file-system/{RESULTS_BLOCK}"
            env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] = slug
        else:
            env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = self.results_location
        return env

    # -- remembered settings -------------------------------------------------------------------

    @property
    def settings_file(self) -> Path:
        return self.state_dir / "service.json"

    @property
    def database_url_file(self) -> Path:
        return self.state_dir / "database-url"

    def remember(self) -> None:
        """Write the settings in use for `status`, `down` and the next `up`.

        `database_url` may hold a password: it goes to its own file with mode 0600. Both are replaced
        whole (`tasks.atomic_file`): written in place, a `make up` killed meanwhile left them cut
        short, and an empty `database-url` was read as none (the local PostgreSQL instead of the
        remembered server).
        """
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        data.pop("state_dir")
        data.pop("database_url")
        write_atomic(self.settings_file, json.dumps(data, indent=2, sort_keys=True) + "\n")
        if self.database_url:
            write_atomic(self.database_url_file, self.database_url + "\n", mode=0o600)
        else:
            self.database_url_file.unlink(missing_ok=True)


def read_secret_file(path: Path, what: str) -> str:
    """The content of one of the service's private files (token, password, database URL), stripped;
    a clear error when it is empty (left so by an older version killed while it wrote it)."""
    text = path.read_text().strip()
    if not text:
        # The database URL is read by every service command (`make down` too), so it cannot come first.
        then = (
            "Delete it and `make up` again with the database URL"
            if what == "the PostgreSQL URL"
            else "`make down`, delete it, and `make up` again (a new one is made)"
        )
        raise RuntimeError(
            f"{path} is empty: {what} was never written whole (a `make up` killed while it wrote it?). {then}"
        )
    return text


def load(state_dir: Path | None = None, **explicit: Any) -> ServiceConfig:
    """The remembered settings of `state_dir` (if any), overridden by the `explicit` ones given."""
    base = ServiceConfig(state_dir=(state_dir or ServiceConfig.state_dir).resolve())
    known = {f.name for f in fields(ServiceConfig)}
    remembered: dict[str, Any] = {}
    if base.settings_file.exists():
        try:
            remembered = {k: v for k, v in json.loads(base.settings_file.read_text()).items() if k in known}
        except json.JSONDecodeError as error:
            raise RuntimeError(
                f"{base.settings_file} is not valid JSON ({error}): a `make up` killed while it wrote "
                "it? Delete it and give the settings you started the service with again (ports, "
                "PROFILE, WORKERS)"
            ) from None
    if base.database_url_file.exists():
        remembered["database_url"] = read_secret_file(base.database_url_file, "the PostgreSQL URL")
    merged = remembered | {k: v for k, v in explicit.items() if v is not None}
    for name in ("runs_dir", "prefect_yaml"):
        if name in merged:
            merged[name] = Path(merged[name]).resolve()
    return replace(base, **merged)
