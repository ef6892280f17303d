"""Which manifest a command uses, and where its server keeps its data even when it is broken.

The manifest is the first of: `--manifest PATH`, `$APPLIANCE_MANIFEST`, `./appliance.toml`,
`/etc/appliance/appliance.toml` (what the Ansible role installs), so on the host a bare
`appliance status` finds the server the role set up.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from pathlib import Path

from appliance.manifest import ManifestError, load_manifest

MANIFEST_ENV = "APPLIANCE_MANIFEST"
LOCAL_MANIFEST = Path("appliance.toml")
SYSTEM_MANIFEST = Path("/etc/appliance/appliance.toml")
DEFAULT_DATA_DIR = "var"  # the model's default for server.data_dir

# `data_dir = "..."` in the [server] table, for a file that is not even valid TOML.
_SERVER_TABLE = re.compile(r"^\s*\[\s*server\s*\]\s*(?:#.*)?$", re.MULTILINE)
_ANY_TABLE = re.compile(r"^\s*\[", re.MULTILINE)
_DATA_DIR = re.compile(r"""^\s*data_dir\s*=\s*(?:"([^"\\\n]*)"|'([^'\n]*)')""", re.MULTILINE)


def add_manifest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        default=None,
        metavar="PATH",
        help=f"the manifest (default: ${MANIFEST_ENV}, then ./{LOCAL_MANIFEST}, then {SYSTEM_MANIFEST})",
    )


def find_manifest(given: str | None, environ: dict[str, str] | None = None) -> Path:
    """The manifest a command uses: the option, the environment, ./appliance.toml, /etc/appliance.
    When none of the files exists, ./appliance.toml (so the error names the usual place)."""
    if given:
        return Path(given)
    named = (os.environ if environ is None else environ).get(MANIFEST_ENV)
    if named:
        return Path(named)
    for candidate in (LOCAL_MANIFEST, SYSTEM_MANIFEST):
        if candidate.is_file():
            return candidate
    return LOCAL_MANIFEST


def data_dir_of(manifest: Path) -> tuple[Path, list[str]]:
    """The manifest's data directory and, when the file is broken, its problems.

    The server keeps serving the last good revision while the file on disk is broken, and its
    status is under the data directory that revision named: so a broken file is read leniently -
    as TOML when it parses, else line by line - for `server.data_dir` alone.
    """
    try:
        loaded = load_manifest(manifest)
    except ManifestError as error:
        problems = error.lines()
    else:
        return (loaded.base_dir / loaded.manifest.server.data_dir).resolve(), []
    base = manifest.absolute().parent
    return (base / _lenient_data_dir(manifest)).resolve(), problems


def _lenient_data_dir(manifest: Path) -> str:
    try:
        text = manifest.read_bytes().decode("utf-8", "replace")
    except OSError:
        return DEFAULT_DATA_DIR
    try:
        server = tomllib.loads(text).get("server")
    except tomllib.TOMLDecodeError:
        server = None
    else:
        value = server.get("data_dir") if isinstance(server, dict) else None
        return value if isinstance(value, str) and value else DEFAULT_DATA_DIR
    table = _SERVER_TABLE.search(text)
    if table is None:
        return DEFAULT_DATA_DIR
    following = _ANY_TABLE.search(text, table.end())
    body = text[table.end() : following.start() if following else len(text)]
    found = _DATA_DIR.search(body)
    if found is None:
        return DEFAULT_DATA_DIR
    return found.group(1) if found.group(1) is not None else found.group(2)
