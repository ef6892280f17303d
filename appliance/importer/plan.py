"""hMailServer's rows → an appliance.toml and a report of what could not be carried over.

What maps where (hMailServer's columns on the left):
- `hm_tcpipports` → `[server.listeners]` (SMTP on 587 → submission, with SSL → submissions;
  POP3/IMAP with SSL → pop3s/imaps); the first port of each kind, the others reported.
- `hm_domains` → `[domains]` (`domainactive` → enabled, `domainpostmaster` → catch_all,
  `domainmaxmessagesize` KB → max_message_size); each `hm_domain_aliases` name becomes a domain
  of its own whose addresses are the target domain's accounts, aliases and lists.
- `hm_accounts` → accounts: `accountisad` → `active_directory = { domain, user }` with one
  `[directories]` entry per AD domain (`discover = true`: DCs from DNS, to complete by the
  admin); `accountpwencryption` 2 (MD5) and 3 (salted SHA-256) → `{HMAIL-MD5}` and
  `{HMAIL-SHA256}` password hashes, verified as they are; 0 (plain text) and 1 (Blowfish,
  reversible) → no password, reported "must be reset"; `accountmaxsize` MB → quota;
  forwarding → forward_to/keep_copy; `accountactive` = 0 → enabled = false.
- `hm_aliases` and `hm_distributionlists` (+ recipients) → aliases.
- vacation messages, rules, IP ranges, SURBL servers, greylisting, scripts: reported as not
  imported, with the object they belong to.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from appliance.importer.source import REPORTED_SETTINGS, Row, Tables, as_int, as_text
from appliance.manifest.hashes import HMAIL_MD5_PREFIX, HMAIL_SHA256_PREFIX
from appliance.manifest.loader import ManifestError, Problem, parse_manifest
from appliance.manifest.names import check_domain_name, check_local_part

# hMailServer's session types (hm_tcpipports.portprotocol) and connection security.
_SMTP, _POP3, _IMAP = 1, 3, 5
_SSL = 1
MAX_PASSES = 4  # manifest checks, leaving out what they refuse, before giving up
DEFAULT_MAX_MESSAGE_SIZE = 25_000_000  # [server.limits] max_message_size when not set
_MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
_SALTED_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{70}$")


@dataclass(frozen=True)
class Note:
    """One line of the report: something that needs the admin (`action`) or was left out."""

    kind: str  # "not imported", "must reset", "to complete"
    object: str  # what it belongs to: an address, a domain, "server"
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "object": self.object, "detail": self.detail}


@dataclass(frozen=True)
class Mailbox:
    """An imported account whose mail is copied: hMailServer's id, its Maildir place."""

    account_id: int
    domain: str
    local_part: str

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"


@dataclass
class Plan:
    toml: str
    counts: dict[str, int]
    notes: list[Note]
    mailboxes: list[Mailbox]


@dataclass
class _Domain:
    enabled: bool
    catch_all: str | None = None
    max_message_size: int | None = None
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    alias_of: str | None = None


def build_plan(tables: Tables, *, ad_domains: dict[str, str] | None = None) -> Plan:
    """The manifest and report for these tables. `ad_domains` maps a down-level (NetBIOS) AD
    domain name as hMailServer holds it to the domain's DNS name."""
    ad_domains = {key.upper(): value.lower() for key, value in (ad_domains or {}).items()}
    notes: list[Note] = []
    counts: dict[str, int] = defaultdict(int)
    settings = {as_text(row.get("settingname")).lower(): row for row in tables.get("hm_settings", [])}

    domains: dict[str, _Domain] = {}
    domain_names: dict[int, str] = {}
    for row in sorted(tables.get("hm_domains", []), key=lambda r: as_int(r.get("domainid"))):
        name = as_text(row.get("domainname")).lower()
        try:
            check_domain_name(name)
        except ValueError as error:
            notes.append(Note("not imported", name or "?", f"domain: {error}"))
            continue
        domain = _Domain(enabled=bool(as_int(row.get("domainactive"), 1)))
        max_kb = as_int(row.get("domainmaxmessagesize"))
        if max_kb > 0:
            domain.max_message_size = max_kb * 1024
        postmaster = as_text(row.get("domainpostmaster")).strip().lower()
        if postmaster:
            domain.catch_all = postmaster
        domains[name] = domain
        domain_names[as_int(row.get("domainid"))] = name
        _report_domain(name, row, notes)
        counts["domains"] += 1
    alias_domains: dict[str, list[str]] = defaultdict(list)  # target domain → its alias domains
    for row in tables.get("hm_domain_aliases", []):
        target = domain_names.get(as_int(row.get("dadomainid")))
        alias = as_text(row.get("daalias")).lower()
        if target is None or alias in domains:
            notes.append(Note("not imported", alias or "?", "domain alias: its domain is unknown or taken"))
            continue
        try:
            check_domain_name(alias)
        except ValueError as error:
            notes.append(Note("not imported", alias or "?", f"domain alias: {error}"))
            continue
        domains[alias] = _Domain(enabled=domains[target].enabled, alias_of=target)
        alias_domains[target].append(alias)
        counts["domain aliases"] += 1

    directories: dict[str, dict[str, Any]] = {}
    mailboxes: list[Mailbox] = []
    rules_by_account: dict[int, list[Row]] = defaultdict(list)
    for rule in tables.get("hm_rules", []):
        rules_by_account[as_int(rule.get("ruleaccountid"))].append(rule)
    for row in sorted(tables.get("hm_accounts", []), key=lambda r: as_int(r.get("accountid"))):
        address = as_text(row.get("accountaddress")).strip().lower()
        local, _, domain_name = address.rpartition("@")
        owner = domains.get(domain_name)
        if owner is None or domain_names.get(as_int(row.get("accountdomainid"))) != domain_name:
            notes.append(Note("not imported", address, "account: its domain was not imported"))
            continue
        try:
            check_local_part(local)
        except ValueError as error:
            notes.append(Note("not imported", address, f"account: {error}"))
            continue
        account = _account(row, address, ad_domains, directories, notes)
        if account is None:
            continue
        owner.accounts[local] = account
        counts["accounts"] += 1
        counts["accounts linked to AD" if "active_directory" in account else "local accounts"] += 1
        if not account.get("enabled", True):
            counts["disabled accounts"] += 1
        mailboxes.append(Mailbox(as_int(row.get("accountid")), domain_name, local))
        for rule in rules_by_account.get(as_int(row.get("accountid")), []):
            notes.append(Note("not imported", address, f'rule "{as_text(rule.get("rulename"))}"'))

    for row in tables.get("hm_aliases", []):
        name = as_text(row.get("aliasname")).strip().lower()
        local, _, domain_name = name.rpartition("@")
        holder = domains.get(domain_name)
        target = as_text(row.get("aliasvalue")).strip().lower()
        if holder is None or not local or not target:
            notes.append(Note("not imported", name or "?", "alias: unknown domain or no target"))
            continue
        if not as_int(row.get("aliasactive"), 1):
            notes.append(Note("not imported", name, "alias: disabled in hMailServer (left out)"))
            continue
        holder.aliases[local] = [target]
        counts["aliases"] += 1
    recipients: dict[int, list[str]] = defaultdict(list)
    for row in sorted(
        tables.get("hm_distributionlistsrecipients", []),
        key=lambda r: as_int(r.get("distributionlistrecipientid")),
    ):
        recipients[as_int(row.get("distributionlistrecipientlistid"))].append(
            as_text(row.get("distributionlistrecipientaddress")).strip().lower()
        )
    for row in tables.get("hm_distributionlists", []):
        name = as_text(row.get("distributionlistaddress")).strip().lower()
        local, _, domain_name = name.rpartition("@")
        list_domain = domains.get(domain_name)
        members = [m for m in recipients.get(as_int(row.get("distributionlistid")), []) if m]
        if list_domain is None or not local or not members:
            notes.append(Note("not imported", name or "?", "distribution list: unknown domain or no members"))
            continue
        if not as_int(row.get("distributionlistenabled"), 1):
            notes.append(Note("not imported", name, "distribution list: disabled in hMailServer (left out)"))
            continue
        list_domain.aliases[local] = members
        counts["distribution lists"] += 1
        if as_int(row.get("distributionlistrequireauth")) or as_int(row.get("distributionlistmode")):
            notes.append(
                Note("not imported", name, "distribution list: who may send to it (it is now an open alias)")
            )

    # A domain alias answers for every address of its domain.
    for target, aliases in alias_domains.items():
        source = domains[target]
        for alias in aliases:
            for local in source.accounts:
                source.accounts[local].setdefault("addresses", []).append(f"{local}@{alias}")
            for local in source.aliases:
                domains[alias].aliases[local] = [f"{local}@{target}"]
            if source.catch_all:
                domains[alias].catch_all = source.catch_all

    listeners = _listeners(tables.get("hm_tcpipports", []), notes)
    _report_server_settings(tables, settings, notes)
    queued = sum(1 for row in tables.get("hm_messages", []) if as_int(row.get("messageaccountid")) == 0)
    if queued:
        notes.append(Note("not imported", "server", f"{queued} message(s) in hMailServer's delivery queue"))
    hostname = _hostname(settings, domains)
    # The server's limit must be at least every domain's (hMailServer's own is in KB, 0 = none).
    largest = [d.max_message_size for d in domains.values() if d.max_message_size]
    setting = settings.get("maxmessagesize")
    if setting is not None and as_int(setting.get("settinginteger")) > 0:
        largest.append(as_int(setting.get("settinginteger")) * 1024)
    limit = max(largest) if largest and max(largest) > DEFAULT_MAX_MESSAGE_SIZE else None
    text = _render(hostname, listeners, directories, domains, limit)
    # What the manifest's checks refuse (an alias to an account deleted long ago, a forward to
    # nowhere) is left out and reported, rather than failing the whole import.
    for _ in range(MAX_PASSES):
        try:
            parse_manifest(text.encode("utf-8"), "appliance.toml")
        except ManifestError as error:
            if not _leave_out(error.problems, domains, mailboxes, notes, counts):
                break
            text = _render(hostname, listeners, directories, domains, limit)
        else:
            break
    return Plan(text, dict(counts), notes, mailboxes)


def _leave_out(
    problems: list[Problem],
    domains: dict[str, _Domain],
    mailboxes: list[Mailbox],
    notes: list[Note],
    counts: dict[str, int],
) -> bool:
    """Drop what each problem is about (an alias, a forward, a catch-all, an account); False
    when a problem is about something else (the import then fails, showing it)."""
    dropped = False
    for problem in problems:
        path = problem.path
        if problem.warning or len(path) < 3 or path[0] != "domains" or path[1] not in domains:
            return False
        domain_name = str(path[1])
        domain = domains[domain_name]
        if path[2] == "catch_all" and domain.catch_all is not None:
            notes.append(
                Note("not imported", domain_name, f"catch-all {domain.catch_all}: {problem.message}")
            )
            domain.catch_all = None
        elif path[2] == "aliases" and len(path) > 3 and str(path[3]) in domain.aliases:
            del domain.aliases[str(path[3])]
            notes.append(Note("not imported", f"{path[3]}@{domain_name}", f"alias: {problem.message}"))
            if domain.alias_of is None:
                counts["aliases left out"] += 1
        elif path[2] == "accounts" and len(path) > 3 and str(path[3]) in domain.accounts:
            local = str(path[3])
            account = domain.accounts[local]
            if len(path) > 4 and path[4] == "forward_to":
                account.pop("forward_to", None)
                account.pop("keep_copy", None)
                notes.append(Note("not imported", f"{local}@{domain_name}", f"forwarding: {problem.message}"))
            else:
                del domain.accounts[local]
                mailboxes[:] = [m for m in mailboxes if (m.domain, m.local_part) != (domain_name, local)]
                notes.append(Note("not imported", f"{local}@{domain_name}", f"account: {problem.message}"))
                counts["accounts left out"] += 1
        else:
            return False
        dropped = True
    return dropped


def _report_domain(name: str, row: Row, notes: list[Note]) -> None:
    if as_int(row.get("domainmaxsize")) > 0:
        notes.append(
            Note("not imported", name, f"domain size limit of {as_int(row.get('domainmaxsize'))} MB")
        )
    if as_int(row.get("domainenablesignature")):
        notes.append(Note("not imported", name, "signature added to outgoing mail"))
    selector = as_text(row.get("domaindkimselector")).strip()
    if selector:
        notes.append(
            Note(
                "to complete",
                name,
                f'DKIM selector "{selector}": copy its private key ({as_text(row.get("domaindkimprivatekeyfile"))}) '
                f'and add dkim = {{ selector = "{selector}", key_file = "..." }}',
            )
        )


def _account(
    row: Row,
    address: str,
    ad_domains: dict[str, str],
    directories: dict[str, dict[str, Any]],
    notes: list[Note],
) -> dict[str, Any] | None:
    account: dict[str, Any] = {}
    if as_int(row.get("accountisad")):
        written = as_text(row.get("accountaddomain")).strip()
        user = as_text(row.get("accountadusername")).strip()
        dns_name = ad_domains.get(written.upper()) or (written.lower() if "." in written else None)
        if dns_name is None or not user:
            notes.append(
                Note(
                    "not imported",
                    address,
                    f'account linked to AD domain "{written}": give its DNS name with '
                    f"--ad-domain {written or 'NAME'}=dns.name",
                )
            )
            return None
        if dns_name not in directories:
            directories[dns_name] = {"type": "active-directory", "discover": True}
            if "." not in written:
                directories[dns_name]["netbios_name"] = written.upper()
        account["active_directory"] = {"domain": dns_name, "user": user}
    else:
        password_hash = _password_hash(row)
        if password_hash is None:
            scheme = {0: "plain text", 1: "Blowfish (reversible)"}.get(
                as_int(row.get("accountpwencryption")), "an unknown encoding"
            )
            notes.append(Note("must reset", address, f"password stored as {scheme}: not carried over"))
        else:
            account["password_hash"] = password_hash
    if not as_int(row.get("accountactive"), 1):
        account["enabled"] = False
    max_mb = as_int(row.get("accountmaxsize"))
    if max_mb > 0:
        account["quota"] = f"{max_mb} MiB"
    forward = as_text(row.get("accountforwardaddress")).strip().lower()
    if as_int(row.get("accountforwardenabled")) and forward:
        account["forward_to"] = [forward]
        account["keep_copy"] = bool(as_int(row.get("accountforwardkeeporiginal")))
    name = " ".join(
        part
        for part in (as_text(row.get("accountpersonfirstname")), as_text(row.get("accountpersonlastname")))
        if part.strip()
    )
    if name:
        account["display_name"] = name.strip()
    if as_int(row.get("accountadminlevel")):
        notes.append(Note("not imported", address, "hMailServer administration rights"))
    if as_int(row.get("accountenablesignature")):
        notes.append(Note("not imported", address, "signature added to outgoing mail"))
    if as_int(row.get("accountvacationmessageon")):
        subject = as_text(row.get("accountvacationsubject"))
        notes.append(
            Note("not imported", address, f'vacation: auto-reply "{subject}" (no Sieve in this server yet)')
        )
    return account


def _password_hash(row: Row) -> str | None:
    """hMailServer's hash as a `password_hash` value; None when it cannot be kept."""
    encryption = as_int(row.get("accountpwencryption"))
    stored = as_text(row.get("accountpassword")).strip()
    if encryption == 2 and _MD5_HEX.match(stored):
        return HMAIL_MD5_PREFIX + stored.lower()
    if encryption == 3 and _SALTED_SHA256_HEX.match(stored):
        return HMAIL_SHA256_PREFIX + stored.lower()
    return None  # 0 plain text, 1 Blowfish: never carried over (the user sets a new password)


def _listeners(ports: list[Row], notes: list[Note]) -> dict[str, str]:
    listeners: dict[str, str] = {}
    for row in sorted(ports, key=lambda r: as_int(r.get("portid"))):
        protocol, number = as_int(row.get("portprotocol")), as_int(row.get("portnumber"))
        implicit = as_int(row.get("portconnectionsecurity")) == _SSL
        if protocol == _SMTP:
            kind = "submissions" if implicit else ("submission" if number == 587 else "smtp")
        elif protocol == _POP3:
            kind = "pop3s" if implicit else "pop3"
        elif protocol == _IMAP:
            kind = "imaps" if implicit else "imap"
        else:
            continue
        host = _address(row.get("portaddress1"))
        if kind in listeners:
            notes.append(Note("not imported", "server", f"port {number} ({kind}): one listener per kind"))
            continue
        listeners[kind] = f"{host}:{number}"
    if not listeners:
        notes.append(Note("to complete", "server", "no TCP/IP ports found: add [server.listeners]"))
    return listeners


def _address(value: Any) -> str:
    """hm_tcpipports.portaddress1: an IPv4 address as a number (0 = every address), or text."""
    if isinstance(value, str) and not value.isdigit():
        return value
    number = as_int(value)
    return "0.0.0.0" if number == 0 else str(ipaddress.IPv4Address(number & 0xFFFFFFFF))


def _report_server_settings(tables: Tables, settings: dict[str, Row], notes: list[Note]) -> None:
    for row in tables.get("hm_securityranges", []):
        notes.append(Note("not imported", "server", f'IP range "{as_text(row.get("rangename"))}"'))
    for row in tables.get("hm_surblservers", []):
        notes.append(Note("not imported", "server", f'SURBL server "{as_text(row.get("surblhost"))}"'))
    for row in tables.get("hm_rules", []):
        if as_int(row.get("ruleaccountid")) == 0:
            notes.append(Note("not imported", "server", f'global rule "{as_text(row.get("rulename"))}"'))
    for name, what in REPORTED_SETTINGS.items():
        setting = settings.get(name)
        if setting is not None and as_int(setting.get("settinginteger")):
            notes.append(Note("not imported", "server", f"{what} (setting {name})"))


def _hostname(settings: dict[str, Row], domains: dict[str, _Domain]) -> str:
    row = settings.get("hostname")
    if row is not None:
        try:
            return check_domain_name(as_text(row.get("settingstring")).strip())
        except ValueError:
            pass
    first = next((name for name, domain in domains.items() if domain.alias_of is None), "example.test")
    return f"mail.{first}"


# -- TOML ------------------------------------------------------------------------------------------
def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _key(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else json.dumps(name, ensure_ascii=False)


def _render(
    hostname: str,
    listeners: dict[str, str],
    directories: dict[str, dict[str, Any]],
    domains: dict[str, _Domain],
    max_message_size: int | None,
) -> str:
    lines = [
        "# Imported from hMailServer by `appliance import hmailserver`; see its report.",
        "",
        "[server]",
        f"hostname = {_value(hostname)}",
        'data_dir = "var"',
        "",
        "[server.listeners]",
        *(f"{kind} = {_value(address)}" for kind, address in listeners.items()),
    ]
    if max_message_size is not None:
        lines += ["", "[server.limits]", f"max_message_size = {max_message_size}"]
    for name, directory in sorted(directories.items()):
        lines += [
            "",
            "# Linked accounts log in with this domain's AD passwords. The DCs are found in DNS;",
            "# or list them in servers = [...] (and ca_file) and drop discover.",
            f"[directories.{_key(name)}]",
            *(f"{key} = {_value(value)}" for key, value in directory.items()),
        ]
    for name, domain in domains.items():
        lines += ["", f"[domains.{_key(name)}]"]
        if domain.alias_of:
            lines.insert(len(lines) - 1, f"# An alias of {domain.alias_of} in hMailServer.")
        if not domain.enabled:
            lines.append("enabled = false")
        if domain.catch_all:
            lines.append(f"catch_all = {_value(domain.catch_all)}")
        if domain.max_message_size:
            lines.append(f"max_message_size = {domain.max_message_size}")
        if domain.accounts:
            lines += ["", f"[domains.{_key(name)}.accounts]"]
            lines += [f"{_key(local)} = {_value(account)}" for local, account in domain.accounts.items()]
        if domain.aliases:
            lines += ["", f"[domains.{_key(name)}.aliases]"]
            lines += [f"{_key(local)} = {_value(targets)}" for local, targets in domain.aliases.items()]
    return "\n".join(lines) + "\n"
