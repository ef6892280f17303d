"""`appliance lookup`, `appliance reload` and `appliance plan`: questions about what serves.

`lookup ADDRESS` says what an address is, as `doveadm user` and `postmap -q` do. `reload` signals
the running server and waits until the new revision serves, or says why it was refused. `plan NEW`
compares a manifest with the copy of the revision the server serves (`state/serving.toml`), and
`plan OLD NEW` two files; each line says whether it applies `live` or needs a `restart`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from appliance.cli.locate import add_manifest_option, data_dir_of
from appliance.manifest import LoadedManifest, ManifestError, load_manifest, parse_manifest
from appliance.manifest.diff import needs_restart, plan
from appliance.snapshot import Snapshot, build_snapshot
from appliance.status import read_status, serving_copy_path, serving_pid
from appliance.store.mailstore import mailbox_size

RELOAD_TIMEOUT = 120.0  # a 100k-account manifest builds in a few seconds; this bounds the wait


def add_operations_parsers(commands: Any) -> None:
    lookup = commands.add_parser("lookup", help="what an address is: account or alias, link, mailbox")
    lookup.add_argument("address")
    add_manifest_option(lookup)
    lookup.add_argument("--format", choices=("text", "json"), default="text")
    lookup.set_defaults(func=lookup_command)

    reload = commands.add_parser(
        "reload", help="reload the running server; wait until the new revision serves"
    )
    add_manifest_option(reload)
    reload.add_argument("--timeout", type=float, default=RELOAD_TIMEOUT, help=argparse.SUPPRESS)
    reload.set_defaults(func=reload_command)

    planner = commands.add_parser(
        "plan",
        help="what would change: from what the server serves to NEW, or from OLD to NEW",
        usage="appliance plan [-h] [--manifest PATH] [OLD] NEW",
    )
    planner.add_argument("manifests", nargs="+", metavar="[OLD] NEW", help="one or two manifests")
    add_manifest_option(planner)  # NEW alone: the server serving this manifest is the one compared
    planner.set_defaults(func=plan_command)


# -- lookup --------------------------------------------------------------------------------------
def lookup_command(args: argparse.Namespace) -> int:
    try:
        snapshot = build_snapshot(load_manifest(args.manifest))
    except ManifestError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        return 2
    found = describe(snapshot, args.address)
    if args.format == "json":
        print(json.dumps(found, indent=2))
    else:
        _print_lookup(found)
    return 0 if found["found"] else 1


def describe(snapshot: Snapshot, address: str) -> dict[str, Any]:
    """What `address` is in `snapshot`, as plain data (the JSON output)."""
    _, _, domain = address.lower().rpartition("@")
    result: dict[str, Any] = {
        "address": address,
        "found": False,
        "domain": domain,
        "domain_enabled": snapshot.domain_enabled(domain),
        "receives_mail": snapshot.resolve_recipient(address) is not None,
    }
    matched = snapshot.matched_address(address)
    if matched is None:
        return result
    key, how = matched
    result.update(found=True, matched=key, matched_by=how)
    account = snapshot.account_by_address(key)
    if account is not None:
        result.update(kind="account", account=_account(snapshot, key))
        return result
    resolution = snapshot.resolve_recipient(key)
    result.update(
        kind="alias",
        targets=list(snapshot.alias_targets(key) or ()),
        mailboxes=[_account(snapshot, m.address) for m in resolution.mailboxes] if resolution else [],
        forwards=list(resolution.forwards) if resolution else [],
    )
    return result


def _account(snapshot: Snapshot, address: str) -> dict[str, Any]:
    entry = snapshot.account_by_address(address)
    assert entry is not None
    model = entry.account
    link: dict[str, Any] | None = None
    if model.active_directory is not None:
        directory = snapshot.directory(model.active_directory.domain)
        link = {
            "directory": model.active_directory.domain,
            "type": getattr(directory, "type", None),
            "user": model.active_directory.user,
        }
    mailbox = snapshot.data_dir / "mail" / entry.mailbox
    return {
        "address": entry.address,
        "addresses": list(entry.addresses),
        "enabled": entry.enabled,
        "account_enabled": model.enabled,
        "login": "directory" if link else ("password" if model.password_hash else "none"),
        "directory_link": link,
        "mailbox": str(mailbox),
        "mailbox_bytes": mailbox_size(mailbox),
        "quota": model.quota,
        "forward_to": list(model.forward_to),
        "keep_copy": model.keep_copy,
        "send_as_any": model.send_as_any,
        "display_name": model.display_name,
    }


def _print_lookup(found: dict[str, Any]) -> None:
    address = found["address"]
    if found["domain_enabled"] is None:
        print(f"{address}: not found ({found['domain']} is not a local domain)")
        return
    if not found["found"]:
        print(f"{address}: not found (no account, alias or catch-all in {found['domain']})")
        return
    via = {"address": "", "recipient-delimiter": " (plus-addressing)", "catch-all": " (catch-all)"}
    print(f"{address}: {found['kind']} {found['matched']}{via[found['matched_by']]}")
    print(f"  domain {found['domain']}: {'enabled' if found['domain_enabled'] else 'DISABLED'}")
    print(f"  receives mail: {'yes' if found['receives_mail'] else 'no'}")
    if found["kind"] == "alias":
        print(f"  targets: {', '.join(found['targets'])}")
        for forward in found["forwards"]:
            print(f"  forwards to {forward}")
    for account in [found["account"]] if found["kind"] == "account" else found["mailboxes"]:
        _print_account(account)


def _print_account(account: dict[str, Any]) -> None:
    print(f"  account {account['address']}: {'enabled' if account['enabled'] else 'DISABLED'}")
    if len(account["addresses"]) > 1:
        print(f"    addresses: {', '.join(account['addresses'])}")
    link = account["directory_link"]
    if link:
        print(f"    login: directory {link['directory']} ({link['type']}) user {link['user']}")
    else:
        print(f"    login: {account['login']}")
    quota = account["quota"]
    print(f"    mailbox: {account['mailbox']} ({account['mailbox_bytes']} bytes; quota {quota or 'none'})")
    if account["forward_to"]:
        copy = ", keeps a copy" if account["keep_copy"] else ""
        print(f"    forwards to: {', '.join(account['forward_to'])}{copy}")


# -- reload --------------------------------------------------------------------------------------
def reload_command(args: argparse.Namespace) -> int:
    data_dir, _problems = data_dir_of(args.manifest)  # a broken file is what reload reports below
    try:
        status = read_status(data_dir)
    except (OSError, ValueError):
        status = {}
    pid = serving_pid(status)
    if pid is None:
        print(f"no server is running with data_dir {data_dir}: nothing to reload", file=sys.stderr)
        return 3
    seen = int(status.get("reloads", {}).get("finished", 0))
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            status = read_status(data_dir)
        except (OSError, ValueError):
            continue  # replaced whole by rename; a moment without it is possible on some filesystems
        if serving_pid(status) != pid:
            print(f"the server (pid {pid}) stopped during the reload", file=sys.stderr)
            return 1
        finished = int(status.get("reloads", {}).get("finished", 0))
        if finished <= seen:
            continue
        seen = finished
        if status["reloads"].get("last_result") == "rejected":
            print(f"reload REFUSED; still serving {status['revision'][:12]}:", file=sys.stderr)
            for line in status.get("last_reload_error") or []:
                print(f"  {line}", file=sys.stderr)
            return 1
        # A reload that a file change started before the signal arrived may end first: the one
        # asked for ends after it, serving what the file holds.
        if status.get("revision") == _sha256_of(args.manifest):
            print(f"serving revision {status['revision'][:12]} (pid {pid})")
            return 0
    print(f"the server (pid {pid}) did not finish the reload within {args.timeout:.0f}s", file=sys.stderr)
    return 1


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# -- plan ----------------------------------------------------------------------------------------
def plan_command(args: argparse.Namespace) -> int:
    if len(args.manifests) > 2:
        print("plan takes NEW, or OLD and NEW", file=sys.stderr)
        return 2
    try:
        new = load_manifest(args.manifests[-1])
        old = load_manifest(args.manifests[0]) if len(args.manifests) == 2 else _serving(args.manifest)
    except ManifestError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        return 1
    except LookupError as error:
        print(error.args[0], file=sys.stderr)
        return 3
    changes = plan(old.manifest, new.manifest)
    restarts = 0
    for change in changes:
        restart = needs_restart(change)
        restarts += restart
        print(f"{change.format()}  [{'restart' if restart else 'live'}]")
    counts = {action: sum(1 for c in changes if c.action == action) for action in "+~-"}
    if not changes:
        print("No changes.")
    else:
        after = f"; {restarts} only at the next restart" if restarts else "; all apply live"
        print(f"Plan: {counts['+']} to add, {counts['~']} to change, {counts['-']} to remove{after}.")
    return 0


def _serving(manifest: Path) -> LoadedManifest:
    """The revision the server of `manifest` serves, from its copy; LookupError saying why there
    is none. (Not NEW's data_dir: NEW may move it.)"""
    data_dir, _problems = data_dir_of(manifest)
    copy = serving_copy_path(data_dir)
    try:
        raw = copy.read_bytes()
        status = read_status(data_dir)
    except (OSError, ValueError):
        raise LookupError(
            f"no copy of a serving revision at {copy}: is `appliance serve` running with this "
            "manifest? (`appliance plan OLD NEW` compares two files)"
        ) from None
    served = Path(status.get("manifest") or manifest)
    return parse_manifest(raw, f"{served} (serving)", file=served)
