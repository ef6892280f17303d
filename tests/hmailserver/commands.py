"""What the hMailServer import tests share: a source installation in a database, and running
`appliance import hmailserver` on it as a subprocess, as an admin would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.imap.uidlist import UIDLIST
from tests.hmailserver.installation import Installation

DB_PASSWORD = "Reader-only-1"


@dataclass
class Source:
    installation: Installation
    url: str
    database: str
    password_file: Path
    ports: dict[str, int]


def run(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HMAIL_DB_PASSWORD": DB_PASSWORD},
    )


def import_command(source: Source, out: Path, *, password_env: bool = False) -> list[str | Path]:
    secret: list[str | Path] = (
        ["--password-env", "HMAIL_DB_PASSWORD"] if password_env else ["--password-file", source.password_file]
    )
    return [
        "import", "hmailserver", "--database", source.url, *secret,
        "--data-dir", source.installation.data_dir, "--out", out, "--ad-domain", "OTHERAD=other.test",
        "--format", "json",
    ]  # fmt: skip


def import_from_database(source: Source, out: Path, *, password_env: bool = False) -> dict[str, object]:
    result = run(*import_command(source, out, password_env=password_env))
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def store_files(out: Path) -> dict[str, bytes]:
    """Every file under the mail store (the UID lists without their UIDVALIDITY header)."""
    found = {}
    for path in sorted((out / "var" / "mail").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == UIDLIST:
                data = data.split(b"\n", 1)[1]
            found[str(path.relative_to(out))] = data
    return found
