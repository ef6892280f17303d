"""`appliance import dovecot`: a manifest from Dovecot's passwd-file and Postfix's virtual alias map.

    appliance import dovecot --passwd-file users --postfix-virtual virtual --out DIR [--directory NAME]

Writes DIR/appliance.toml, checked as `validate` checks it, and prints what it could not carry
over (one line each, "not carried: ..."), and where each account's Maildir goes. Nothing is
written when the manifest would not validate. Passwords are never printed: a hash the manifest
cannot take is dropped (the account stays, and receives mail) and named in the report.

passwd-file (Dovecot's `passwd-file` driver): `user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:
extra fields`; with `--directory NAME` the accounts are linked by user name to that Active
Directory instead (for a Dovecot that authenticated against LDAP/AD).

Postfix virtual alias map (virtual(5), the source file of a hash: or texthash: table):
- `user@domain  targets`  an alias; for an account, a forward (`keep_copy` when the account is
  among its own targets, as Postfix then also delivers to the mailbox);
- `@domain      target`   the domain's catch-all;
- `domain       anything` a virtual alias domain (a domain with aliases only).
Keys without a domain (`user`), regular expressions and targets without a domain (Postfix adds
$myorigin) are not carried.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.manifest import ManifestError, parse_manifest
from appliance.manifest.hashes import scheme_of

MAX_INPUT_BYTES = 64 << 20  # a passwd-file or alias map larger than this is not read


@dataclass
class DomainDraft:
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    catch_all: str | None = None
    homes: dict[str, str] = field(default_factory=dict)  # local part → Dovecot's home
    own_entries: set[str] = field(default_factory=set)  # local parts with an entry in the map


@dataclass
class Import:
    domains: dict[str, DomainDraft] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was not carried over, one line each

    def domain(self, name: str) -> DomainDraft:
        return self.domains.setdefault(name.lower(), DomainDraft())


def _lines(path: Path) -> list[tuple[int, str]]:
    with open(path, "rb") as handle:
        data = handle.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"{path}: larger than {MAX_INPUT_BYTES >> 20} MB")
    return list(enumerate(data.decode("utf-8", "replace").splitlines(), start=1))


def _split_address(address: str) -> tuple[str, str] | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "." not in domain:
        return None
    return local, domain.lower()


# -- Dovecot's passwd-file -------------------------------------------------------------------------
def read_passwd_file(path: Path, result: Import, directory: str | None) -> None:
    for number, line in _lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        where = f"{path.name}:{number}"
        user = fields[0].strip()
        parts = _split_address(user)
        if parts is None:
            result.notes.append(f"not carried: {where}: user {user!r} has no @domain (whose domain is it?)")
            continue
        local, domain = parts
        draft = result.domain(domain)
        account: dict[str, Any] = {}
        if directory is not None:
            account["active_directory"] = {"domain": directory, "user": local}
        else:
            encoded = fields[1] if len(fields) > 1 else ""
            scheme = scheme_of(encoded)
            if scheme is not None:
                account["password_hash"] = encoded
            else:
                prefix = encoded.partition("}")[0] + "}" if encoded.startswith("{") else "its"
                result.notes.append(
                    f"not carried: {where}: {user}: a password in {prefix} form cannot be kept (set a new "
                    "one with `appliance hash-password`); the account receives mail meanwhile"
                )
        extra = [item.partition("=")[0] for item in ":".join(fields[7:]).split() if item]
        if extra:
            result.notes.append(f"not carried: {where}: {user}: extra fields {', '.join(extra)}")
        draft.accounts[local] = account
        if len(fields) > 5 and fields[5]:
            draft.homes[local] = fields[5]


# -- Postfix's virtual alias map -------------------------------------------------------------------
def _entries(path: Path) -> list[tuple[str, str, list[str]]]:
    """(where, key, targets) per entry; a line that starts with white space continues the last."""
    entries: list[tuple[str, str, list[str]]] = []
    for number, line in _lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1][2].extend(t for t in line.replace(",", " ").split() if t)
            continue
        key, _, rest = line.strip().partition(" ") if " " in line.strip() else line.strip().partition("\t")
        entries.append(
            (f"{path.name}:{number}", key.strip(), [t for t in rest.replace(",", " ").split() if t])
        )
    return entries


def read_virtual(path: Path, result: Import) -> None:
    for where, key, targets in _entries(path):
        if key.startswith(("/", "!")):
            result.notes.append(f"not carried: {where}: {key}: a regular expression table entry")
            continue
        if "@" not in key:
            if "." in key:
                result.domain(key)  # a virtual alias domain
            else:
                result.notes.append(f"not carried: {where}: {key}: a key without @domain ($myorigin)")
            continue
        qualified = []
        for target in targets:
            if _split_address(target) is None:
                result.notes.append(f"not carried: {where}: {key} -> {target}: a target without @domain")
            else:
                qualified.append(target)
        if not qualified:
            continue
        local, _, domain = key.rpartition("@")
        domain = domain.lower()
        draft = result.domain(domain)
        if not local:
            if len(qualified) == 1:
                draft.catch_all = qualified[0]
            else:  # one catch_all address: an alias holds the several
                draft.aliases["catch-all"] = qualified
                draft.catch_all = "catch-all"
            continue
        draft.own_entries.add(local)
        account = draft.accounts.get(local)
        if account is None:
            draft.aliases[local] = qualified
            continue
        itself = f"{local}@{domain}".lower()
        others = [target for target in qualified if target.lower() != itself]
        if others:  # Postfix rewrites before delivery: the mailbox gets mail only if listed too
            account["forward_to"] = others
            account["keep_copy"] = len(others) < len(qualified)
    for name, draft in result.domains.items():
        if draft.catch_all is None:
            continue
        for local in sorted(set(draft.accounts) - draft.own_entries):
            result.notes.append(
                f"differs: {local}@{name}: Postfix sends its mail to the catch-all (virtual(5): @{name} "
                "also catches mailbox users without an entry of their own); the appliance delivers it "
                "to its mailbox"
            )


# -- the manifest ----------------------------------------------------------------------------------
def _toml(value: Any) -> str:
    """A TOML value: JSON's strings and arrays are TOML's; tables inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def _key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    return name if bare else json.dumps(name, ensure_ascii=False)


def render_manifest(result: Import, hostname: str, directory: str | None, sources: list[str]) -> str:
    out = [
        f"# Written by `appliance import dovecot` from {', '.join(sources)}. Review it, then",
        "# `appliance validate` and `appliance plan` before it is served.",
        "",
        "[server]",
        f"hostname = {_toml(hostname)}",
    ]
    if directory is not None:
        out += ["", f"[directories.{_key(directory)}]", 'type = "active-directory"', "discover = true"]
    for name, draft in sorted(result.domains.items()):
        out += ["", f"[domains.{_key(name)}]"]
        if draft.catch_all is not None:
            out.append(f"catch_all = {_toml(draft.catch_all)}")
        if draft.accounts:
            out += ["", f"[domains.{_key(name)}.accounts]"]
            out += [f"{_key(local)} = {_toml(fields)}" for local, fields in sorted(draft.accounts.items())]
        if draft.aliases:
            out += ["", f"[domains.{_key(name)}.aliases]"]
            out += [f"{_key(local)} = {_toml(targets)}" for local, targets in sorted(draft.aliases.items())]
    return "\n".join(out) + "\n"


def import_dovecot_command(args: argparse.Namespace) -> int:
    if args.passwd_file is None and args.postfix_virtual is None:
        print("nothing to import: give --passwd-file and/or --postfix-virtual", file=sys.stderr)
        return 2
    result = Import()
    sources = []
    try:
        if args.passwd_file is not None:
            read_passwd_file(Path(args.passwd_file), result, args.directory)
            sources.append(Path(args.passwd_file).name)
        if args.postfix_virtual is not None:
            read_virtual(Path(args.postfix_virtual), result)
            sources.append(Path(args.postfix_virtual).name)
    except (OSError, ValueError) as error:
        print(f"cannot read: {error}", file=sys.stderr)
        return 1
    if not result.domains:
        print("no domain found: nothing to write", file=sys.stderr)
        return 1
    hostname = args.hostname or f"mail.{next(iter(result.domains))}"  # the passwd-file's first
    text = render_manifest(result, hostname, args.directory, sources)
    out = Path(args.out)
    target = out / "appliance.toml"
    try:
        parse_manifest(text.encode(), str(target))
    except ManifestError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        print(f"{target}: the imported manifest does not validate; nothing was written", file=sys.stderr)
        return 1
    if target.exists():
        print(f"{target} exists; nothing was written (choose another --out)", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    for name, draft in sorted(result.domains.items()):
        for local, home in sorted(draft.homes.items()):
            print(
                f"maildir: {local}@{name}: move the Maildir under {home} to <data_dir>/mail/{name}/{local}/"
            )
    for note in result.notes:
        print(note)
    accounts = sum(len(d.accounts) for d in result.domains.values())
    aliases = sum(len(d.aliases) for d in result.domains.values())
    print(
        f"{target}: {len(result.domains)} domains, {accounts} accounts, {aliases} aliases; "
        f"{sum(1 for n in result.notes if n.startswith('not carried'))} entries not carried"
    )
    return 0


def add_dovecot_source(sources: Any) -> argparse.ArgumentParser:
    """`appliance import dovecot`, under the `import` command's sources."""
    dovecot: argparse.ArgumentParser = sources.add_parser(
        "dovecot",
        help="Dovecot's passwd-file and Postfix's virtual alias map",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dovecot.add_argument("--passwd-file", metavar="FILE", help="Dovecot's passwd-file (users and hashes)")
    dovecot.add_argument(
        "--postfix-virtual", metavar="FILE", help="Postfix's virtual alias map (source file)"
    )
    dovecot.add_argument("--out", metavar="DIR", required=True, help="where to write appliance.toml")
    dovecot.add_argument(
        "--directory",
        metavar="NAME",
        help="link the accounts by user name to this Active Directory (its DNS name) instead of hashes",
    )
    dovecot.add_argument("--hostname", help="[server] hostname (default: mail.<the first user's domain>)")
    dovecot.set_defaults(func=import_dovecot_command)
    return dovecot
