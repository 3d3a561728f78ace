"""The `postgres` profile: a PostgreSQL cluster in the service folder for the Prefect server.

`initdb` once into `<state_dir>/postgres/data` (role `crowdclust`, password auth over TCP on
127.0.0.1 only, whatever address the service listens on; no Unix socket), `pg_ctl start/stop` with
`make up/down`, one database `prefect`. Nothing system-wide is touched: the binaries are Debian's
(`/usr/lib/postgresql/15/bin`, or `CROWDCLUST_PG_BIN`), and since PostgreSQL refuses to run as
root, a root caller runs them as an unprivileged system user (`postgres`, the Debian package's, or
`CROWDCLUST_PG_USER`), which then owns the cluster folder. The password is generated once and kept
in a 0600 file; it reaches the Prefect server through its environment only.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from crowdclust.service.config import LOOPBACK, ServiceConfig, read_secret_file
from tasks.atomic_file import create_exclusive, write_atomic

ROLE = "crowdclust"
DATABASE = "prefect"


def pg_bin(name: str) -> str:
    return str(Path(os.environ.get("CROWDCLUST_PG_BIN", "/usr/lib/postgresql/15/bin")) / name)


def _owner() -> str | None:
    """The unprivileged user that runs PostgreSQL when we are root (None: run as ourselves)."""
    return os.environ.get("CROWDCLUST_PG_USER", "postgres") if os.geteuid() == 0 else None


def _folder(cfg: ServiceConfig) -> Path:
    return cfg.state_dir / "postgres"


def _data(cfg: ServiceConfig) -> Path:
    return _folder(cfg) / "data"


def _password_file(cfg: ServiceConfig) -> Path:
    return cfg.state_dir / "postgres-password"


def _as_owner(command: list[str]) -> list[str]:
    owner = _owner()
    return ["runuser", "-u", owner, "--", *command] if owner else command


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({' '.join(command[:1])}): {result.stderr.strip() or result.stdout}"
        )
    return result.stdout


def password(cfg: ServiceConfig) -> str:
    """The role's password: made once, whole, readable by the owner of the checkout only (0600).

    It was created empty and written after; one left empty so by a kill is made again while the
    cluster has not been initialised with it (initdb runs after this).
    """
    path = _password_file(cfg)
    try:
        create_exclusive(path, secrets.token_urlsafe(24) + "\n", mode=0o600)
    except FileExistsError:
        if not path.read_text().strip() and not (_data(cfg) / "PG_VERSION").exists():
            write_atomic(path, secrets.token_urlsafe(24) + "\n", mode=0o600)
    return read_secret_file(path, "the PostgreSQL password")


def connection_url(cfg: ServiceConfig) -> str:
    """The SQLAlchemy URL the Prefect server uses (contains the password: environment only)."""
    if cfg.database_url:
        return cfg.database_url
    secret = quote(password(cfg), safe="")
    return f"postgresql+asyncpg://{ROLE}:{secret}@{LOOPBACK}:{cfg.postgres_port}/{DATABASE}"


def _prepare_folder(cfg: ServiceConfig) -> None:
    """Create the cluster folder owned by the unprivileged user; check that it can reach it."""
    folder = _folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    if owner is None:
        return
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and the user {owner!r} does not exist: create an "
            f"unprivileged one (useradd --system crowdclust-pg) and set CROWDCLUST_PG_USER"
        ) from None
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    probe = subprocess.run(["runuser", "-u", owner, "--", "test", "-w", str(folder)], check=False)
    if probe.returncode != 0:
        raise RuntimeError(
            f"user {owner!r} cannot write {folder}: every folder above it must be searchable by "
            f"others (chmod o+x), or choose another CROWDCLUST_SERVICE_DIR"
        )


def _initdb(cfg: ServiceConfig) -> None:
    """A new cluster: role `crowdclust` with a password, TCP on 127.0.0.1 only, no socket."""
    _prepare_folder(cfg)
    pwfile = _folder(cfg) / "initdb-password"
    pwfile.write_text(password(cfg) + "\n")
    owner = _owner()
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    pwfile.chmod(0o600)
    try:
        _run(
            _as_owner(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(_data(cfg)),
                    "-U",
                    ROLE,
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=reject",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            "initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with (_data(cfg) / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# crowdclust: TCP only (host and port are given by pg_ctl -o)\nunix_socket_directories = ''\n"
        )


def running(cfg: ServiceConfig) -> bool:
    if not (_data(cfg) / "PG_VERSION").exists():
        return False
    result = subprocess.run(
        _as_owner([pg_bin("pg_ctl"), "-D", str(_data(cfg)), "status"]), capture_output=True, check=False
    )
    return result.returncode == 0


def start(cfg: ServiceConfig) -> bool:
    """Initialise the cluster if needed, start it, create the database. Returns whether it started."""
    if not shutil.which(pg_bin("pg_ctl")):
        raise RuntimeError(f"PostgreSQL not found at {pg_bin('pg_ctl')} (apt-get install postgresql)")
    if running(cfg):
        return False
    if not (_data(cfg) / "PG_VERSION").exists():
        _initdb(cfg)
    options = f"-h {LOOPBACK} -p {cfg.postgres_port}"
    _run(
        _as_owner(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(_data(cfg)),
                "-l",
                str(_folder(cfg) / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        f"starting PostgreSQL on port {cfg.postgres_port} (log: {_folder(cfg) / 'postgres.log'})",
    )
    _create_database(cfg)
    return True


def _create_database(cfg: ServiceConfig) -> None:
    env = {**os.environ, "PGPASSWORD": password(cfg)}
    connect = ["-h", LOOPBACK, "-p", str(cfg.postgres_port), "-U", ROLE]
    exists = _run(
        [
            pg_bin("psql"),
            *connect,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname='{DATABASE}'",
        ],
        "listing databases",
        env,
    )
    if exists.strip() != "1":
        _run([pg_bin("createdb"), *connect, DATABASE], "createdb", env)


def stop(cfg: ServiceConfig) -> bool:
    """Stop the cluster (fast shutdown). Returns whether it was running."""
    if not running(cfg):
        return False
    _run(
        _as_owner([pg_bin("pg_ctl"), "-D", str(_data(cfg)), "-m", "fast", "-w", "stop"]),
        "stopping PostgreSQL",
    )
    return True
