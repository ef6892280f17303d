"""`appliance import hmailserver` from hMailServer's PostgreSQL variant: a real PostgreSQL holding
the same installation as the MariaDB tests (tests/hmailserver/installation.py, the schema in
PostgreSQL's types) gives the same manifest and the same mail store, read in one read-only
transaction by a role that may only SELECT.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from tests.fixtures.appliance import free_port
from tests.fixtures.mariadb import MariaDB
from tests.fixtures.postgresql import PostgreSQL
from tests.hmailserver.commands import (
    DB_PASSWORD,
    Source,
    import_command,
    import_from_database,
    run,
    store_files,
)
from tests.hmailserver.installation import SCHEMA, SCHEMA_POSTGRESQL, build

_databases = itertools.count(1)


def test_postgresql_database_gives_the_same_manifest_and_store_as_mariadb(
    mariadb: MariaDB, postgresql: PostgreSQL, tmp_path: Path
) -> None:
    installation = build(tmp_path / "hmail-data", {"smtp": free_port(), "imaps": free_port()})
    name = f"hmail{os.getpid()}_pg{next(_databases)}"
    password_file = tmp_path / "db-password"
    password_file.write_text(DB_PASSWORD + "\n")
    password_file.chmod(0o600)
    from_mariadb = Source(
        installation,
        mariadb.create_database(name, schema=SCHEMA, reader=("hmreader", DB_PASSWORD)),
        name,
        password_file,
        {},
    )
    from_postgresql = Source(
        installation,
        postgresql.create_database(name, schema=SCHEMA_POSTGRESQL, reader=("hmreader", DB_PASSWORD)),
        name,
        password_file,
        {},
    )
    assert from_postgresql.url.startswith("postgresql://hmreader@127.0.0.1:")
    for table, rows in installation.tables.items():
        mariadb.insert(name, table, rows)
        postgresql.insert(name, table, rows)

    mariadb_report = import_from_database(from_mariadb, tmp_path / "mariadb")
    postgresql_report = import_from_database(from_postgresql, tmp_path / "postgresql", password_env=True)
    assert (tmp_path / "postgresql" / "appliance.toml").read_text() == (
        tmp_path / "mariadb" / "appliance.toml"
    ).read_text()
    assert store_files(tmp_path / "postgresql") == store_files(tmp_path / "mariadb")
    assert postgresql_report["counts"] == mariadb_report["counts"]
    assert postgresql_report["mail"]["messages_copied"] == 9  # type: ignore[index]

    # What the import sent, as the server logged it: one read-only transaction of SELECTs.
    sent = re.findall(rf"^hmreader@{name} LOG:  statement: (\w+[^\n]*)", postgresql.log(), re.M)
    assert sent[0] == "BEGIN READ ONLY", sent
    assert sent[-1] == "ROLLBACK", sent
    assert {statement.split()[0] for statement in sent[1:-1]} == {"SELECT"}, sent
    assert sum(statement.startswith("SELECT * FROM") for statement in sent) == 13


def test_a_wrong_postgresql_password_is_refused_without_writing_anything(
    postgresql: PostgreSQL, tmp_path: Path
) -> None:
    name = f"hmail{os.getpid()}_pg{next(_databases)}"
    url = postgresql.create_database(name, schema=SCHEMA_POSTGRESQL, reader=("hmreader", DB_PASSWORD))
    password_file = tmp_path / "wrong-password"
    password_file.write_text("not-the-password\n")
    source = Source(build(tmp_path / "hmail-data", {"smtp": 1, "imaps": 2}), url, name, password_file, {})
    result = run(*import_command(source, tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith("import: cannot connect to 127.0.0.1: ")
    assert 'password authentication failed for user "hmreader"' in result.stderr
    assert "Traceback" not in result.stderr and "not-the-password" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_sql_server_url_is_refused_naming_the_databases_that_are_read(tmp_path: Path) -> None:
    result = run(
        "import", "hmailserver", "--database", "mssql://hmail@127.0.0.1:1433/hmailserver",
        "--data-dir", tmp_path, "--out", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        'import: "mssql://hmail@127.0.0.1:1433/hmailserver": only mysql://user@host[:port]/database and '
        "postgresql://user@host[:port]/database are read here (for SQL Server and the built-in database, "
        "export with the script and use --json)\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_database_url_with_a_bad_port_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run(
        "import", "hmailserver", "--database", "postgresql://hmail@127.0.0.1:99999/hmailserver",
        "--data-dir", tmp_path, "--out", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        'import: "postgresql://hmail@127.0.0.1:99999/hmailserver": the port is not a number from 1 to 65535\n'
    )
