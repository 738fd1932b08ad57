"""ClickHouse connections and schema migrations.

One code path for both engines: ``chdb:///path`` (the ClickHouse engine
in-process, through clickhouse-connect's chDB backend) and
``http(s)://user:pass@host:8123/db`` (a server). The SQL is identical.

chDB facts that shape callers (docs/measurements.md): one process opens one chDB path,
a second process on the same path fails with a lock error; the async client
does not take ``chdb://``, so async code calls the sync client through
``asyncio.to_thread``; one client is thread-safe but serialises calls.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from heatmap.retention import Retention, apply_retention
from heatmap.settings import ClickHouseSettings

logger = logging.getLogger(__name__)


class ClickHouseUnavailable(ConnectionError):
    """ClickHouse could not be reached or refused the operation for a transient reason."""


def is_chdb(url: str) -> bool:
    return urlsplit(url).scheme == "chdb"


def connect(settings: ClickHouseSettings, *, database: str | None = None) -> Client:
    """A client bound to ``database`` (default: the configured one)."""
    if not settings.url:
        raise ValueError("ClickHouse URL is not configured")
    db = database if database is not None else settings.database
    session_settings: dict[str, Any] = {"max_execution_time": settings.max_execution_time_s}
    try:
        if is_chdb(settings.url):
            return clickhouse_connect.get_client(
                dsn=settings.url, database=db, settings=session_settings
            )
        return clickhouse_connect.get_client(
            dsn=settings.url,
            database=db,
            settings=session_settings,
            connect_timeout=5,
            send_receive_timeout=max(30, int(settings.max_execution_time_s) + 5),
            autogenerate_session_id=False,
        )
    except Exception as e:
        raise ClickHouseUnavailable(f"cannot connect to ClickHouse: {e}") from e


# -------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str


_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def load_migrations() -> list[Migration]:
    """The versioned DDL files in ``schemas/clickhouse``, in order."""
    found = []
    for entry in resources.files("schemas").joinpath("clickhouse").iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        text = entry.read_text(encoding="utf-8")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                statements=split_statements(text),
                checksum=hashlib.sha256(text.encode()).hexdigest()[:16],
            )
        )
    return sorted(found, key=lambda m: m.version)


def split_statements(sql: str) -> tuple[str, ...]:
    """Statements of a DDL file: ``--`` comment lines dropped, split on ``;``.

    The DDL files keep ``;`` out of string literals so this stays this simple.
    """
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return tuple(s.strip() for s in "\n".join(lines).split(";") if s.strip())


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32   COMMENT 'Migration number (file prefix)',
    name       String   COMMENT 'Migration file name without prefix and .sql',
    checksum   String   COMMENT 'sha256 prefix of the file applied',
    applied_at DateTime('UTC') DEFAULT now() COMMENT 'When heatmap migrate applied it'
)
ENGINE = MergeTree ORDER BY version
COMMENT 'Schema migrations applied by heatmap migrate'
"""


def migrate(settings: ClickHouseSettings) -> list[str]:
    """Create the database, apply pending migrations, then the retention TTLs
    (``HEATMAP_RETENTION_*``, to existing tables too); idempotent.

    Returns the migration names applied by this call (empty when already current).
    """
    admin = connect(settings, database="default")
    try:
        admin.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(settings.database)}")
    finally:
        admin.close()
    client = connect(settings)
    try:
        client.command(_LEDGER)
        done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
        applied = apply_pending(client, [(m, m.statements) for m in load_migrations()], done)
        apply_retention(
            client, retention(settings), settings.database, quote_identifier(settings.database)
        )
        return applied
    finally:
        client.close()


def retention(settings: ClickHouseSettings) -> Retention:
    return Retention(settings.retention_per_user_days, settings.retention_all_users_days)


def apply_pending(
    client: Client,
    plan: Sequence[tuple[Migration, Sequence[str]]],
    done: set[int],
    where: str = "",
) -> list[str]:
    """Run each migration not in ``done`` (its given statements), then record it.

    Recording comes after the statements, and every statement is idempotent
    (IF NOT EXISTS...), so a failure part-way is repaired by running again.
    """
    applied = []
    for migration, statements in plan:
        if migration.version in done:
            continue
        for statement in statements:
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(f"{migration.version:03d}_{migration.name}")
        logger.info("applied migration %03d_%s%s", migration.version, migration.name, where)
    return applied


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# -------------------------------------------------------- read-only user

#: ``readonly = 2``, not 1: the query service sets ``max_execution_time`` on
#: each query (its deadline budget), which ``readonly = 1`` forbids (the
#: client would then drop it silently). 2 still refuses every write and DDL
#: and changing ``readonly`` itself; the grant below is SELECT only anyway.
READONLY_PROFILE = "SETTINGS readonly = 2"


def readonly_credentials(url: str) -> tuple[str, str]:
    """The user name and password in a ``http(s)://user:password@host/db`` URL."""
    parts = urlsplit(url)
    if not parts.username or not parts.password:
        raise ValueError("the read-only user URL carries no user name and password")
    return unquote(parts.username), unquote(parts.password)


def readonly_user_statements(
    user: str, password: str, database: str, cluster: str | None = None
) -> list[str]:
    """SQL that creates (or brings up to date) the query service's read-only user.

    Idempotent: ``ALTER USER`` re-states the password and profile, so a rotated
    secret takes effect by running ``heatmap migrate --create-readonly-user``
    again. The migrating user needs the ``ACCESS MANAGEMENT`` rights and
    ``SELECT ... WITH GRANT OPTION`` on the database (a server's
    ``access_management = 1`` user has both).
    """
    name = quote_identifier(user)
    on_cluster = f" ON CLUSTER {quote_identifier(cluster)}" if cluster else ""
    identified = f"IDENTIFIED WITH sha256_password BY {quote_string(password)}"
    return [
        f"CREATE USER IF NOT EXISTS {name}{on_cluster} {identified} {READONLY_PROFILE}",
        f"ALTER USER {name}{on_cluster} {identified} {READONLY_PROFILE}",
        f"GRANT{on_cluster} SELECT ON {quote_identifier(database)}.* TO {name}",
    ]


def create_readonly_user(settings: ClickHouseSettings, cluster: str | None = None) -> str:
    """Create or update the user of ``settings.readonly_url``; returns its name.

    A ClickHouse server only: chDB (in-process) has no writable user
    directory and refuses ``CREATE USER``; there the query service shares the
    process and its engine anyway.
    """
    if not settings.url or is_chdb(settings.url):
        raise ValueError("a read-only user needs a ClickHouse server, not chDB")
    if not settings.readonly_url:
        raise ValueError("no read-only user URL configured")
    user, password = readonly_credentials(settings.readonly_url)
    client = connect(settings, database="default")
    try:
        for statement in readonly_user_statements(user, password, settings.database, cluster):
            client.command(statement)
    finally:
        client.close()
    logger.info("read-only user %s: SELECT on %s", user, settings.database)
    return user


def quote_string(value: str) -> str:
    """A ClickHouse string literal (backslash escapes, as the server parses them)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
