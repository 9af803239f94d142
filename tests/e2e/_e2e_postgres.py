"""PostgreSQL for the end-to-end tests: reach the server (start it when installed), one fresh DB.

CI machines have PostgreSQL on 127.0.0.1:5432 with trust auth (database `postgres`, user
`postgres` or `root`). When nothing listens there, the cluster of the installed Debian package is
started with `pg_ctlcluster`; when PostgreSQL is not installed the tests fail saying so.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from _e2e_procs import E2EError

HOST = "127.0.0.1"
PORT = 5432
USERS = ("postgres", "root")
_PG_ETC = Path("/etc/postgresql")


def _connect(user: str, dbname: str = "postgres") -> Any:
    import psycopg2  # type: ignore[import-untyped]

    return psycopg2.connect(host=HOST, port=PORT, user=user, dbname=dbname, connect_timeout=3)


def _try_users() -> tuple[str | None, list[str]]:
    import psycopg2

    errors: list[str] = []
    for user in USERS:
        try:
            _connect(user).close()
            return user, errors
        except psycopg2.OperationalError as exc:
            errors.append(f"user {user}: {str(exc).strip()}")
    return None, errors


def _start_cluster() -> str:
    """Start the installed cluster(s); returns what was done (for error messages)."""
    versions = sorted(p.name for p in _PG_ETC.iterdir()) if _PG_ETC.is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise E2EError(
            f"PostgreSQL is not reachable on {HOST}:{PORT} and not installed here "
            f"(no {_PG_ETC}/<version>/main or no pg_ctlcluster). The end-to-end tests need a "
            "PostgreSQL server with trust auth for user postgres or root: install the Debian "
            "package `postgresql` (apt-get install -y postgresql) or start one on that port."
        )
    done = []
    for version in versions:
        result = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        done.append(
            f"pg_ctlcluster {version} main start -> {result.returncode} "
            f"{(result.stdout + result.stderr).strip()}"
        )
    return "\n".join(done)


def server_user() -> str:
    """A superuser that can connect; starts the installed server if nothing answers."""
    user, errors = _try_users()
    if user is not None:
        return user
    started = _start_cluster()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        user, errors = _try_users()
        if user is not None:
            return user
        time.sleep(0.5)
    raise E2EError(
        f"PostgreSQL on {HOST}:{PORT} refuses users {USERS} even after starting it:\n"
        f"{started}\n" + "\n".join(errors)
    )


def create_database(user: str) -> str:
    """CREATE DATABASE relay_e2e_<hex>; returns its SQLAlchemy URL for Airflow."""
    name = f"relay_e2e_{uuid.uuid4().hex[:10]}"
    conn = _connect(user)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return f"postgresql+psycopg2://{user}@{HOST}:{PORT}/{name}"


def drop_database(url: str) -> None:
    """DROP DATABASE ... WITH (FORCE) (PostgreSQL 13+): ends leftover sessions too."""
    user = url.split("//", 1)[1].split("@", 1)[0]
    name = url.rsplit("/", 1)[1]
    conn = _connect(user)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()
