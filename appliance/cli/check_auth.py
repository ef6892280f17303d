"""`appliance check-auth ADDRESS`: check one login exactly as the server would.

The password is read from standard input (one line, its line end removed; a prompt without echo
on a terminal), so it never appears in the process list or the shell history. Prints the
outcome and its cause; the log line of the attempt (directory, server, AD code) goes to
standard error. Exit code 0 accepted, 1 rejected, 2 unavailable (or the manifest is broken).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from typing import Any

from appliance.auth.service import AuthResult, AuthService, Outcome
from appliance.cli.locate import add_manifest_option
from appliance.manifest import ManifestError, load_manifest
from appliance.snapshot import SnapshotHolder, build_snapshot

EXIT_CODES = {Outcome.ACCEPTED: 0, Outcome.REJECTED: 1, Outcome.UNAVAILABLE: 2}


def add_check_auth_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-auth",
        help="check a login (password on stdin); exit 0 accepted, 1 rejected, 2 unavailable",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add_manifest_option(parser)
    parser.add_argument("address", help="the login: one of the account's mail addresses")
    parser.add_argument("--protocol", default="check-auth", help=argparse.SUPPRESS)
    parser.set_defaults(func=check_auth_command)
    return parser


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    line = sys.stdin.readline()
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


async def _check(service: AuthService, address: str, password: str, protocol: str) -> AuthResult:
    try:
        return await service.authenticate(address, password, protocol=protocol, client="local")
    finally:
        await service.close()


def check_auth_command(args: argparse.Namespace) -> int:
    try:
        loaded = load_manifest(args.manifest)
    except ManifestError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        print(f"{args.manifest}: the manifest has problems; nothing was checked", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{args.manifest}: {error.strerror}", file=sys.stderr)
        return 2
    password = _read_password()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    auth_log = logging.getLogger("appliance.auth")
    auth_log.addHandler(handler)
    auth_log.setLevel(logging.INFO)
    try:
        service = AuthService(SnapshotHolder(build_snapshot(loaded)), max_workers=2)
        result = asyncio.run(_check(service, args.address, password, args.protocol))
    finally:
        auth_log.removeHandler(handler)
    line = f"{result.outcome.value}: {result.cause}"
    if result.account is not None:
        line += f" (account {result.account.address})"
    print(line)
    if result.directory is not None:
        warning = lockout_warning(service, result.directory)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_CODES[result.outcome]


def lockout_warning(service: AuthService, directory: str) -> str | None:
    """What to tell the admin when the manifest's guessing limit is not below the directory's own
    lockout threshold (read from the domain with the login just made): the server then keeps
    fewer binds than the manifest says, or, with a threshold of 1, none at all."""
    policy = service.guard.policy(directory)
    if policy is None or policy.threshold == 0:
        return None
    limit, window = service.guard.settings()
    budget, guard_window = service.guard.budget(directory)
    if limit < policy.threshold and window >= policy.window:
        return None
    if budget == 0:
        return (
            f"directory {directory} locks a user after {policy.threshold} wrong password(s): no login "
            "to it can be guarded; raise its lockout threshold"
        )
    return (
        f"directory {directory} locks a user after {policy.threshold} wrong passwords within "
        f"{policy.window:.0f} s, but [security.auto_ban] allows max_failures_per_account = {limit} within "
        f"{window:.0f} s: the server keeps to {budget} within {guard_window:.0f} s; set the manifest below the "
        "directory's threshold to say what is enforced"
    )
