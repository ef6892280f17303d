"""The `appliance` command: validate, schema, hash-password, plan, serve, status, check-auth, queue,
lookup, reload, import.

The top layer: it may import every other. `check-auth` is in check_auth.py, `queue` in queue.py,
`lookup`, `reload` and `plan` in operations.py, the manifest's discovery in locate.py,
`import dovecot` in import_dovecot.py, `import hmailserver` in hmailserver.py; the server itself
is `appliance.serve`, imported only by `appliance serve`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version

from appliance.cli.check_auth import add_check_auth_parser
from appliance.cli.hmailserver import add_hmailserver_source
from appliance.cli.import_dovecot import add_dovecot_source
from appliance.cli.locate import add_manifest_option, data_dir_of, find_manifest
from appliance.cli.operations import add_operations_parsers
from appliance.manifest import ManifestError, load_manifest
from appliance.manifest.checks import weak_hash_warnings
from appliance.manifest.files import file_problems
from appliance.manifest.schema import schema_json
from appliance.status import read_status, serving_pid, status_path


def cmd_validate(args: argparse.Namespace) -> int:
    path = args.path or args.manifest
    try:
        loaded = load_manifest(path)
        # The files it names, on disk: key material others may read is an error; paths that
        # leave the manifest's directory and CA files with no certificate are warnings.
        found = file_problems(loaded) + weak_hash_warnings(loaded)
        if any(not problem.warning for problem in found):
            raise ManifestError(str(path), found)
    except ManifestError as error:
        if args.format == "json":
            print(
                json.dumps(
                    {"valid": False, "problems": [p.as_dict(error.filename) for p in error.problems]},
                    indent=2,
                )
            )
        else:
            for line in error.lines():
                print(line, file=sys.stderr)
            count = sum(1 for problem in error.problems if not problem.warning)
            print(f"{path}: {count} problem{'s' if count != 1 else ''}; nothing was changed", file=sys.stderr)
        return 1
    warnings = sorted(found, key=lambda p: (p.line or 0, p.column or 0, p.message))
    manifest = loaded.manifest
    accounts = sum(len(d.accounts) for d in manifest.domains.values())
    if args.format == "json":
        print(
            json.dumps(
                {
                    "valid": True,
                    "problems": [p.as_dict(str(path)) for p in warnings],
                    "sha256": loaded.sha256,
                    "domains": len(manifest.domains),
                    "accounts": accounts,
                    "directories": len(manifest.directories),
                },
                indent=2,
            )
        )
        return 0
    for problem in warnings:  # warnings are printed even with --quiet: exit 0 alone hides them
        print(problem.format(str(path)), file=sys.stderr)
    if not args.quiet:
        print(
            f"{path}: valid ({len(manifest.domains)} domains, {accounts} accounts, "
            f"{len(manifest.directories)} directories; sha256 {loaded.sha256[:12]})"
        )
    return 0


def cmd_schema(_args: argparse.Namespace) -> int:
    sys.stdout.write(schema_json())
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from appliance.auth.passwords import hash_password

    if sys.stdin.isatty() and not args.stdin:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("the two passwords differ; nothing was hashed", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("an empty password cannot be used", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from appliance.serve import main as serve_main

    return serve_main(args.manifest)


def cmd_status(args: argparse.Namespace) -> int:
    # The file on disk may be broken while the server keeps serving the last good one: its data
    # directory is then read leniently from the text.
    data_dir, problems = data_dir_of(args.manifest)
    if problems:
        print(
            f"{args.manifest}: the manifest on disk is broken ({len(problems)} problems, see "
            f"`appliance validate`); data_dir {data_dir} read from its text",
            file=sys.stderr,
        )
    status_file = status_path(data_dir)
    try:
        status = read_status(data_dir)
    except (OSError, ValueError):
        print(
            f"no status at {status_file}: is `appliance serve` running with this manifest?", file=sys.stderr
        )
        return 3
    alive = serving_pid(status) is not None
    if args.format == "json":
        print(json.dumps({**status, "running": alive, "manifest_problems": problems}, indent=2))
        return 0 if alive else 3
    loaded_at = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(status.get("loaded_at", 0)))
    print(f"state:      {'serving' if alive else 'not running'} (pid {status.get('pid')})")
    print(f"manifest:   {status.get('manifest')}")
    print(f"revision:   sha256 {status.get('revision')}")
    print(f"git commit: {status.get('git_commit') or '-'}")
    print(f"loaded at:  {loaded_at}")
    print(f"content:    {status.get('domains')} domains, {status.get('accounts')} accounts")
    for name, listener in status.get("listeners", {}).items():
        print(f"listener:   {name:<12} {listener['address']} ({listener['tls']})")
    for name, error in status.get("listener_errors", {}).items():
        print(f"listener:   {name:<12} NOT LISTENING: {error}")
    sessions = status.get("sessions") or {}
    print("sessions:   " + (", ".join(f"{k} {v}" for k, v in sorted(sessions.items())) or "none"))
    scanner = status.get("scanner")
    if scanner:
        state = "up" if scanner.get("healthy") else f"DOWN: {scanner.get('last_error')}"
        print(
            f"scanner:    rspamd {scanner.get('address')} {state} "
            f"({scanner.get('scanned')} scanned, {scanner.get('failures')} failures)"
        )
    errors = status.get("last_reload_error") or []
    if errors:
        print("last reload REJECTED (still serving the revision above):")
        for line in errors:
            print(f"  {line}")
    return 0 if alive else 3


def cmd_queue(args: argparse.Namespace) -> int:
    from appliance.cli.queue import queue_command  # the queue's modules only when asked for

    return queue_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="A mail server configured from one manifest, appliance.toml."
    )
    parser.add_argument("--version", action="version", version=f"appliance {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    validate = commands.add_parser("validate", help="check a manifest; exit 0 valid, 1 invalid, 2 usage")
    validate.add_argument("path", nargs="?", help="the manifest (default: --manifest, ./appliance.toml)")
    add_manifest_option(validate)
    validate.add_argument("--format", choices=("text", "json"), default="text")
    validate.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser("schema", help="print the manifest's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    hasher = commands.add_parser(
        "hash-password", help="read a password (stdin or prompt), print its argon2id hash"
    )
    hasher.add_argument("--stdin", action="store_true", help="read from standard input even on a terminal")
    hasher.set_defaults(func=cmd_hash_password)

    serve = commands.add_parser("serve", help="run every listener of the manifest, reloading it live")
    add_manifest_option(serve)
    serve.set_defaults(func=cmd_serve)

    status = commands.add_parser("status", help="what the running server serves, from its status file")
    add_manifest_option(status)
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd_status)

    queue = commands.add_parser(
        "queue", help="outbound mail waiting: list (default), flush (retry all now), delete ID..."
    )
    queue.add_argument("action", nargs="?", choices=("list", "flush", "delete"), default="list")
    queue.add_argument("ids", nargs="*", metavar="ID", help="queue ids, for delete")
    add_manifest_option(queue)
    queue.add_argument("--format", choices=("text", "json"), default="text")
    queue.set_defaults(func=cmd_queue)

    add_check_auth_parser(commands)
    importer = commands.add_parser(
        "import", help="write a manifest (and, from hmailserver, the mail store) from another mail server"
    )
    sources = importer.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True
    add_dovecot_source(sources)
    add_hmailserver_source(sources)
    add_operations_parsers(commands)
    return parser


def _version() -> str:
    try:
        return version("appliance")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "manifest"):
        args.manifest = find_manifest(args.manifest)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
