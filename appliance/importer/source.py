"""hMailServer's tables, read as rows: from its MySQL/MariaDB or PostgreSQL database, or from a
JSON export.

Both give the same thing: a `Tables` mapping of table name to rows (column name → value), with
hMailServer's own table and column names (`hm_accounts.accountaddress`, ...). The JSON export
(scripts/hmailserver-export.ps1, for installations on the built-in SQL Server Compact database)
writes `{"format": "hmailserver-tables", "version": 1, "tables": {"hm_domains": [...], ...}}`
with the same columns, dates as ISO 8601 strings.

The database is only read: one connection, `SELECT` statements in a read-only transaction.
SQL Server is not read (no maintained driver could be tested against a server here).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

Row = dict[str, Any]
Tables = dict[str, list[Row]]

JSON_FORMAT = "hmailserver-tables"
JSON_VERSION = 1

# The tables the import reads; the last ones only to report what it cannot carry over.
TABLES = (
    "hm_settings",
    "hm_tcpipports",
    "hm_domains",
    "hm_domain_aliases",
    "hm_accounts",
    "hm_aliases",
    "hm_distributionlists",
    "hm_distributionlistsrecipients",
    "hm_imapfolders",
    "hm_messages",
    "hm_rules",
    "hm_securityranges",
    "hm_surblservers",
)
# Settings whose non-default value the report names (greylisting, spam checks, scripting).
REPORTED_SETTINGS = {
    "usegreylisting": "greylisting",
    "usespf": "SPF checks",
    "usemxchecks": "MX checks",
    "scriptingenabled": "event scripts (EventHandlers)",
    "spamassassinenabled": "SpamAssassin",
    "clamavenabled": "ClamAV virus scanning",
    "avclamwinenable": "ClamWin virus scanning",
}


class SourceError(Exception):
    """The source could not be read; the message says what and why."""


def read_json(path: Path) -> Tables:
    try:
        data = json.loads(Path(path).read_text("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(f"{path}: cannot read the export: {error}") from None
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise SourceError(f'{path}: not an hMailServer export (no "format": "{JSON_FORMAT}")')
    if data.get("version") != JSON_VERSION:
        raise SourceError(f"{path}: export version {data.get('version')!r}; this reads {JSON_VERSION}")
    tables = data.get("tables")
    if not isinstance(tables, dict):
        raise SourceError(f'{path}: "tables" is not an object')
    result: Tables = {}
    for name in TABLES:
        rows = tables.get(name, [])
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise SourceError(f'{path}: "{name}" is not a list of rows')
        result[name] = [{key.lower(): value for key, value in row.items()} for row in rows]
    return result


def database_password(password_file: Path | None, password_env: str | None) -> str | None:
    if password_file is not None:
        try:
            return Path(password_file).read_text("utf-8").rstrip("\r\n")
        except OSError as error:
            raise SourceError(f"{password_file}: cannot read the password: {error.strerror}") from None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise SourceError(f"environment variable {password_env} is not set")
        return value
    return None


MYSQL_SCHEMES = ("mysql", "mariadb")
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class _Login:
    host: str
    port: int | None
    user: str
    password: str | None
    database: str


def read_database(url: str, password: str | None, *, timeout: float = 10.0) -> Tables:
    """Every table of TABLES from `mysql://user@host:port/database` or
    `postgresql://user@host:port/database` (a missing table: no rows)."""
    parts = urlsplit(url)
    if parts.scheme not in (*MYSQL_SCHEMES, *POSTGRESQL_SCHEMES):
        raise SourceError(
            f'"{url}": only mysql://user@host[:port]/database and postgresql://user@host[:port]/database '
            "are read here (for SQL Server and the built-in database, export with the script and use --json)"
        )
    database = parts.path.lstrip("/")
    if not parts.hostname or not database or not parts.username:
        raise SourceError(f'"{url}": write {parts.scheme}://user@host[:port]/database')
    if parts.password:
        raise SourceError(f'"{url}": give the password in a file or an environment variable, not the URL')
    try:
        port = parts.port
    except ValueError:
        raise SourceError(f'"{url}": the port is not a number from 1 to 65535') from None
    login = _Login(parts.hostname, port, unquote(parts.username), password, unquote(database))
    if parts.scheme in POSTGRESQL_SCHEMES:
        return _read_postgresql(login, timeout)
    return _read_mysql(login, timeout)


def _read_mysql(login: _Login, timeout: float) -> Tables:
    import pymysql  # only this command needs the driver

    try:
        connection = pymysql.connect(
            host=login.host,
            port=login.port or 3306,
            user=login.user,
            password=login.password or "",
            database=login.database,
            charset="utf8mb4",
            connect_timeout=timeout,
            read_timeout=timeout * 6,
            cursorclass=pymysql.cursors.DictCursor,
            autocommit=False,
        )
    except pymysql.err.MySQLError as error:
        raise SourceError(f"cannot connect to {login.host}: {error}") from None
    try:
        with connection.cursor() as cursor:
            # Nothing here writes; a read-only transaction makes the server refuse it if it tried.
            cursor.execute("START TRANSACTION READ ONLY")
            cursor.execute("SHOW TABLES")
            present = {str(next(iter(row.values()))).lower() for row in cursor.fetchall()}
            result: Tables = {}
            for name in TABLES:
                if name not in present:
                    result[name] = []
                    continue
                cursor.execute(f"SELECT * FROM `{name}`")  # names from TABLES only
                result[name] = [_plain(row) for row in cursor.fetchall()]
            connection.rollback()
    except pymysql.err.MySQLError as error:
        raise SourceError(f"reading the database failed: {error}") from None
    finally:
        connection.close()
    return result


def _read_postgresql(login: _Login, timeout: float) -> Tables:
    """hMailServer's PostgreSQL layout: the same tables and columns (lower case) in the schemas of
    the user's search path. Read through psycopg 3 (libpq) in one read-only transaction."""
    import psycopg  # only this command needs the driver
    from psycopg import sql
    from psycopg.rows import dict_row

    try:
        connection = psycopg.connect(
            host=login.host,
            port=login.port or 5432,
            user=login.user,
            # None lets libpq look in PGPASSWORD and ~/.pgpass as psql would
            password=login.password,
            dbname=login.database,
            connect_timeout=max(1, round(timeout)),
            options=f"-c statement_timeout={round(timeout * 6 * 1000)}",
            application_name="appliance import hmailserver",
            row_factory=dict_row,
        )
    except psycopg.Error as error:
        raise SourceError(f"cannot connect to {login.host}: {str(error).strip()}") from None
    try:
        # Nothing here writes; a read-only transaction (BEGIN READ ONLY) makes the server refuse it if it tried.
        connection.read_only = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT lower(table_name) AS name FROM information_schema.tables"
                " WHERE table_schema = ANY (current_schemas(false))"
            )
            present = {str(row["name"]) for row in cursor.fetchall()}
            result: Tables = {}
            for name in TABLES:
                if name not in present:
                    result[name] = []
                    continue
                cursor.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name)))
                result[name] = [_plain(row) for row in cursor.fetchall()]
        connection.rollback()
    except psycopg.Error as error:
        raise SourceError(f"reading the database failed: {str(error).strip()}") from None
    finally:
        connection.close()
    return result


def _plain(row: Mapping[str, Any]) -> Row:
    return {str(key).lower(): value for key, value in row.items()}


def as_time(value: Any, zone: datetime.tzinfo = datetime.UTC) -> float | None:
    """Epoch seconds from a database datetime or an ISO 8601 string from the export.
    hMailServer stores its server's local time: a time without a zone is read in `zone`."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)
        return value.timestamp()
    return None


def as_int(value: Any, default: int = 0) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
