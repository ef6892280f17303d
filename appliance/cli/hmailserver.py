"""`appliance import hmailserver`: an hMailServer installation as a manifest and a mail store.

    appliance import hmailserver --database mysql://user@host:port/db --password-file F \\
        --data-dir PATH --out DIR
    appliance import hmailserver --database postgresql://user@host:port/db --password-env VAR \\
        --data-dir PATH --out DIR
    appliance import hmailserver --json export.json --data-dir PATH --out DIR

Writes DIR/appliance.toml (which `appliance validate` accepts) and copies the mail into DIR's
data directory (`var/mail/...`), then prints a report: counts, and every object it could not
carry over (`--format json` for scripts). Run again, it copies only mail that is new; a manifest
that differs from the one on disk (edited by the admin since) is written beside it as
appliance.imported.toml instead. The hMailServer database is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import zoneinfo
from pathlib import Path
from typing import Any

from appliance.importer.mail import MailResult, copy_mail
from appliance.importer.plan import Note, build_plan
from appliance.importer.source import SourceError, database_password, read_database, read_json
from appliance.manifest import ManifestError, load_manifest
from appliance.status import read_status, serving_pid

MANIFEST = "appliance.toml"
MANIFEST_BESIDE = "appliance.imported.toml"


def add_hmailserver_source(sources: Any) -> argparse.ArgumentParser:
    """`appliance import hmailserver`, under the `import` command's sources."""
    hmail: argparse.ArgumentParser = sources.add_parser(
        "hmailserver",
        help="hMailServer: its database (or the export script's JSON) and its data directory",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    origin = hmail.add_mutually_exclusive_group(required=True)
    origin.add_argument(
        "--database",
        metavar="URL",
        help="mysql://user@host[:port]/database or postgresql://user@host[:port]/database",
    )
    origin.add_argument("--json", metavar="FILE", type=Path, help="the export of hmailserver-export.ps1")
    secret = hmail.add_mutually_exclusive_group()
    secret.add_argument("--password-file", type=Path, metavar="FILE", help="the database password")
    secret.add_argument("--password-env", metavar="VARIABLE", help="environment variable with it")
    hmail.add_argument(
        "--data-dir", type=Path, metavar="PATH", help="hMailServer's data directory (its .eml files)"
    )
    hmail.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    hmail.add_argument(
        "--ad-domain",
        action="append",
        default=[],
        metavar="NAME=DNS",
        help="DNS name of an AD domain hMailServer names by its down-level name (CLOUDTECH=cloudtech.local)",
    )
    hmail.add_argument(
        "--timezone",
        default="UTC",
        metavar="ZONE",
        help="the hMailServer machine's time zone, e.g. Europe/Berlin: its dates are local times (default UTC)",
    )
    hmail.add_argument("--format", choices=("text", "json"), default="text")
    hmail.set_defaults(func=import_hmailserver)
    return hmail


def import_hmailserver(args: argparse.Namespace) -> int:
    ad_domains: dict[str, str] = {}
    for item in args.ad_domain:
        name, sep, dns_name = item.partition("=")
        if not sep or not name or "." not in dns_name:
            print(
                f'--ad-domain "{item}": write NAME=dns.name, e.g. CLOUDTECH=cloudtech.local', file=sys.stderr
            )
            return 2
        ad_domains[name] = dns_name
    try:
        zone = zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        print(f'--timezone "{args.timezone}": not a time zone name (e.g. Europe/Berlin)', file=sys.stderr)
        return 2
    try:
        if args.json is not None:
            tables = read_json(args.json)
        else:
            password = database_password(args.password_file, args.password_env)
            tables = read_database(args.database, password)
    except SourceError as error:
        print(f"import: {error}", file=sys.stderr)
        return 1
    plan = build_plan(tables, ad_domains=ad_domains)
    out: Path = args.out
    target = out / MANIFEST
    running = _serving(target)
    if running is not None:
        print(
            f"import: the server (pid {running}) serves {target}: stop it before copying mail",
            file=sys.stderr,
        )
        return 1
    out.mkdir(parents=True, exist_ok=True)
    written_to = target
    if target.exists() and target.read_text("utf-8") != plan.toml:
        written_to = out / MANIFEST_BESIDE  # the admin's edits are never overwritten
    if not written_to.exists() or written_to.read_text("utf-8") != plan.toml:
        written_to.write_text(plan.toml, "utf-8")
    try:
        loaded = load_manifest(target)
    except ManifestError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        print(f"import: {target} is not valid; no mail was copied", file=sys.stderr)
        return 1
    data_dir = (loaded.base_dir / loaded.manifest.server.data_dir).resolve()
    mail = MailResult()
    if args.data_dir is not None:
        mail = copy_mail(tables, plan.mailboxes, args.data_dir, data_dir / "mail", zone)
    else:
        plan.notes.append(Note("not imported", "server", "mail: no --data-dir given"))
    notes = [*plan.notes, *mail.notes]
    report = {
        "manifest": str(written_to),
        "data_dir": str(data_dir),
        "counts": plan.counts,
        "mail": {
            "folders": mail.folders,
            "messages_copied": mail.messages,
            "bytes_copied": mail.bytes,
            "messages_already_there": mail.already,
        },
        "notes": [note.as_dict() for note in notes],
    }
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    print(f"manifest: {written_to}" + ("" if written_to == target else f" ({target} differs: compare them)"))
    for kind, count in plan.counts.items():
        print(f"{kind}: {count}")
    print(
        f"mail: {mail.messages} messages copied ({mail.bytes} bytes) into {mail.folders} folders, "
        f"{mail.already} already there"
    )
    for note in notes:
        print(f"{note.kind}: {note.detail} ({note.object})")
    return 0


def _serving(manifest: Path) -> int | None:
    """The pid of a server serving the data directory of the manifest at `manifest`, if any."""
    if not manifest.exists():
        return None
    try:
        loaded = load_manifest(manifest)
        status = read_status((loaded.base_dir / loaded.manifest.server.data_dir).resolve())
    except (ManifestError, OSError, ValueError):
        return None
    return serving_pid(status)
