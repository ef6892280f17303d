"""The immutable runtime view of one manifest: lookup tables built once per (re)load.

Protocols ask the current snapshot (`holder.current`) at the start of each command. A reload
builds a new snapshot and swaps one reference; nothing ever mutates a live snapshot.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.manifest import LoadedManifest
from appliance.manifest.models import Account, ActiveDirectory, LDAPDirectory, LocalSystem, Manifest
from appliance.manifest.scripts import Scripts
from appliance.memory import gc_paused
from appliance.sieve import Script
from appliance.sieve.interpreter import Resolver

DirectoryModel = ActiveDirectory | LDAPDirectory | LocalSystem
DEFAULT_LINE_LENGTH = 8192  # SMTP and POP3, when server.limits.max_line_length is unset
DEFAULT_IMAP_LINE_LENGTH = 65536  # IMAP: Dovecot's imap_max_line_length


@dataclass(frozen=True, slots=True)
class AccountEntry:
    """One account as the protocols see it (100k of them: slotted, derived values computed)."""

    address: str  # primary address, lower-case
    local_part: str
    domain: str
    account: Account
    enabled: bool  # the account and its domain are both enabled
    addresses: tuple[str, ...]  # every address delivered to it, primary first (a tuple: 100k of them)

    @property
    def mailbox(self) -> str:
        """The Maildir path relative to <data_dir>/mail."""
        return f"{self.domain}/{self.local_part}"


@dataclass(frozen=True)
class Resolution:
    """What RCPT TO <address> means: local mailboxes and addresses to relay to."""

    mailboxes: tuple[AccountEntry, ...]
    forwards: tuple[str, ...]


@dataclass(frozen=True)
class KerberosRealm:
    """A directory that accepts Kerberos tickets (SASL GSSAPI): its realm and its keytab."""

    realm: str
    directory: str
    keytab: Path


@dataclass(frozen=True)
class TrustedLoginRule:
    """[trusted_logins.NAME]: the service account `name` may act as users of `domains` from
    `networks` (appliance.auth.trusted)."""

    name: str
    domains: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows_client(self, ip: str) -> bool:
        return address_in_networks(ip, self.networks)


@dataclass(frozen=True)
class _Domain:
    name: str
    enabled: bool
    catch_all: str | None
    max_message_size: int | None
    filter: bool  # inbound mail is scanned (when [filter] is declared)


@dataclass(frozen=True)
class FilterSettings:
    """[filter]: where rspamd listens and what to do when it cannot answer."""

    host: str
    port: int
    timeout: float
    tempfail: bool  # on_failure = "tempfail" (else "accept")
    resolver: str | None  # "ip:port" for the client's reverse name; None: the system's


@dataclass(frozen=True, eq=False)
class Snapshot:
    manifest: Manifest
    revision: str
    loaded_at: float
    base_dir: Path
    path: Path
    data_dir: Path
    hostname: str
    _domains: dict[str, _Domain] = field(repr=False)
    _accounts: dict[str, AccountEntry] = field(repr=False)  # every address of an account → entry
    _aliases: dict[str, tuple[str, ...]] = field(repr=False)  # full alias address → full targets
    _alias_members: dict[str, frozenset[str]] = field(repr=False)  # account address → aliases it is in
    _trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(repr=False)
    # the service account's primary address → its [trusted_logins] rule
    _trusted_logins: dict[str, TrustedLoginRule] = field(repr=False)
    # (directory, AD user case-folded) → accounts linked to that user, manifest order
    _linked: dict[tuple[str, str], tuple[AccountEntry, ...]] = field(repr=False)

    # -- settings the protocols read ------------------------------------------------------------
    # The one place that knows where a setting sits in the manifest models. The protocols (smtp/,
    # pop3/, imap/, the transport, the login path) read these names and never `snapshot.manifest`
    # (tests/test_layers.py keeps it so): a model can be reshaped without touching a protocol, and
    # a reader of a protocol sees what it depends on. Copied from the manifest once per snapshot
    # (`_build`), so a read costs one attribute lookup, not four; each read is of the snapshot in
    # force when a command started, so a reload applies from the next command on.
    # Longest command line, CR LF included (RFC 5321 §4.5.3.1.4: ≥ 512): SMTP and POP3, and IMAP.
    max_line_length: int
    imap_max_line_length: int
    # Seconds of silence between commands (SMTP; IMAP before login).
    command_timeout: float
    # Seconds for each piece of one DATA (RFC 5321 §4.5.3.2.5/6).
    data_timeout: float
    # RFC 1939 §3: at least 10 minutes.
    pop3_idle_timeout: float
    # Logged in; RFC 3501 §5.4: at least 30 minutes.
    imap_idle_timeout: float
    # Recipients per message (RFC 5321 §4.5.3.1.8).
    max_recipients: int
    # Open connections, all clients (per protocol or SMTP family).
    max_connections: int
    # Open connections from one client address.
    max_connections_per_client: int
    # Logins before TLS (RFC 8314 discourages them).
    allow_plaintext_auth: bool
    # Dovecot's pop3_uidl_format, for the UIDLs of messages Dovecot served (store/dovecot.py).
    dovecot_pop3_uidl_format: str
    # Local domains, enabled or not, manifest order.
    domain_names: tuple[str, ...]
    # [filter]: inbound mail scanned by rspamd; None when not declared.
    filter: FilterSettings | None
    # SRS ([outbound] srs_domain, srs_secret_file): None when not declared.
    srs_domain: str | None
    srs_secret_file: Path | None
    # SASL GSSAPI: the active-directory directories with a keytab, manifest order.
    kerberos: tuple[KerberosRealm, ...]
    # The Sieve scripts the manifest names, compiled (manifest/scripts.py).
    sieve: Scripts | None = field(default=None, repr=False)

    # -- lookups -------------------------------------------------------------------------------
    @property
    def account_count(self) -> int:
        return sum(len(d.accounts) for d in self.manifest.domains.values())

    @property
    def domain_count(self) -> int:
        return len(self.manifest.domains)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self._domains

    def account_by_address(self, address: str) -> AccountEntry | None:
        """The account that logs in with `address` (any of its addresses; no plus-addressing)."""
        return self._accounts.get(address.lower())

    def sieve_scripts(
        self, entry: AccountEntry, personal: Script | None = None
    ) -> tuple[tuple[Script, ...], Resolver | None]:
        """The scripts delivery runs for the account, in order (domain sieve_before, the account's,
        domain sieve_after), and how their `include`s resolve. `personal` (the user's active
        ManageSieve script) takes the account's place unless the manifest pins one."""
        scripts = self.sieve
        domain = self.manifest.domains.get(entry.domain)
        if scripts is None or domain is None:
            return ((personal,) if personal is not None else ()), None
        own = scripts.get(entry.account.sieve) if entry.account.sieve else personal
        found = tuple(
            s for s in (scripts.get(domain.sieve_before), own, scripts.get(domain.sieve_after)) if s
        )
        return found, (scripts.include if found else None)

    def sieve_pinned(self, entry: AccountEntry) -> bool:
        """The manifest names the account's script: users may not change it (ManageSieve)."""
        return entry.account.sieve is not None

    @property
    def recipient_delimiter(self) -> str:
        return self.manifest.server.recipient_delimiter

    def accounts_linked_to(self, directory: str, user: str) -> tuple[AccountEntry, ...]:
        """The accounts whose `active_directory` link names `user` (any case) of `directory`."""
        return self._linked.get((directory, user.casefold()), ())

    def trusted_login(self, service: AccountEntry) -> TrustedLoginRule | None:
        """The rule that lets `service` log in as other users, if any."""
        return self._trusted_logins.get(service.address)

    def kerberos_realm(self, realm: str) -> KerberosRealm | None:
        """The directory whose users authenticate with tickets of `realm` (exact, upper case)."""
        return next((entry for entry in self.kerberos if entry.realm == realm), None)

    def directory(self, name: str) -> DirectoryModel | None:
        return self.manifest.directories.get(name)

    def max_message_size(self, domain: str | None = None) -> int:
        limit = self.manifest.server.limits.max_message_size
        if domain is not None:
            entry = self._domains.get(domain.lower())
            if entry is not None and entry.max_message_size is not None:
                return min(limit, entry.max_message_size)
        return limit

    def filters(self, domain: str) -> bool:
        """Whether inbound mail for local `domain` is scanned ([filter] declared, not turned off)."""
        entry = self._domains.get(domain.lower())
        return self.filter is not None and (entry is None or entry.filter)

    def is_trusted(self, ip: str) -> bool:
        return address_in_networks(ip, self._trusted)

    def may_send_as(self, account: AccountEntry, address: str) -> bool:
        """Own addresses, aliases the account is in, or any local address with send_as_any."""
        address = address.lower()
        if address in account.addresses or address in self._alias_members.get(account.address, ()):
            return True
        if account.account.send_as_any:
            _, _, domain = address.rpartition("@")
            return domain in self._domains
        return False

    def domain_enabled(self, domain: str) -> bool | None:
        """Whether a local domain is enabled; None when `domain` is not local."""
        entry = self._domains.get(domain.lower().rstrip("."))
        return None if entry is None else entry.enabled

    def alias_targets(self, address: str) -> tuple[str, ...] | None:
        """The full target addresses of the alias `address`; None when it is no alias."""
        return self._aliases.get(address.lower())

    def matched_address(self, address: str) -> tuple[str, str] | None:
        """The account or alias address mail to `address` is for, and how it was found: "address",
        "recipient-delimiter" (plus-addressing) or "catch-all"; None when nothing here matches.
        Enabled flags are not looked at (`resolve_recipient` does that)."""
        local, at, domain = address.lower().rpartition("@")
        if not at or not local:
            return None
        entry = self._domains.get(domain)
        if entry is None:
            return None
        full = f"{local}@{domain}"
        if full in self._accounts or full in self._aliases:
            return full, "address"
        delimiter = self.manifest.server.recipient_delimiter
        if delimiter and delimiter in local:
            base = local.split(delimiter, 1)[0]
            if base and (f"{base}@{domain}" in self._accounts or f"{base}@{domain}" in self._aliases):
                return f"{base}@{domain}", "recipient-delimiter"
        if entry.catch_all is None:
            return None
        return entry.catch_all, "catch-all"

    def resolve_recipient(self, address: str) -> Resolution | None:
        """Local mailboxes and remote forwards for RCPT TO <address>; None when it is unknown here."""
        _, _, domain = address.lower().rpartition("@")
        entry = self._domains.get(domain)
        if entry is None or not entry.enabled:
            return None
        matched = self.matched_address(address)
        if matched is None:
            return None
        full = matched[0]
        mailboxes: dict[str, AccountEntry] = {}
        forwards: dict[str, None] = {}
        self._expand(full, mailboxes, forwards, depth=0)
        if not mailboxes and not forwards:
            return None
        return Resolution(tuple(mailboxes.values()), tuple(forwards))

    def _expand(
        self, address: str, mailboxes: dict[str, AccountEntry], forwards: dict[str, None], depth: int
    ) -> None:
        if depth > 20:  # the loader refuses loops; this bounds a pathological chain anyway
            return
        account = self._accounts.get(address)
        if account is not None:
            if not account.enabled:
                return
            model = account.account
            if model.forward_to:
                for target in model.forward_to:
                    if target != address:
                        self._expand(target, mailboxes, forwards, depth + 1)
                if not model.keep_copy:
                    return
            mailboxes.setdefault(account.address, account)
            return
        targets = self._aliases.get(address)
        if targets is not None:
            for target in targets:
                self._expand(target, mailboxes, forwards, depth + 1)
            return
        _, _, domain = address.rpartition("@")
        if domain not in self._domains:
            forwards.setdefault(address, None)


def address_in_networks(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True when `ip` (IPv4-mapped IPv6 counts as IPv4; garbage never matches) is in a network."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class SnapshotHolder:
    """The one reference to the snapshot in force. Swapping it is the whole of a reload."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot:
        old, self.current = self.current, snapshot
        return old


def _qualify(target: str, domain: str) -> str:
    return target if "@" in target else f"{target}@{domain}"


def build_snapshot(loaded: LoadedManifest) -> Snapshot:
    with gc_paused():
        return _build(loaded)


def _build(loaded: LoadedManifest) -> Snapshot:
    manifest = loaded.manifest
    server = manifest.server
    data_dir = (loaded.base_dir / server.data_dir).resolve()
    domains: dict[str, _Domain] = {}
    accounts: dict[str, AccountEntry] = {}
    aliases: dict[str, tuple[str, ...]] = {}
    for name, domain in manifest.domains.items():
        domains[name] = _Domain(
            name=name,
            enabled=domain.enabled,
            catch_all=_qualify(domain.catch_all, name) if domain.catch_all else None,
            max_message_size=domain.max_message_size,
            filter=domain.filter,
        )
        for written, account in domain.accounts.items():
            local = written.lower()
            local = written if local == written else local  # the key's own string, not a copy
            primary = f"{local}@{name}"
            extra = (_qualify(a, name) for a in account.addresses)
            entry = AccountEntry(
                address=primary,
                local_part=local,
                domain=name,
                account=account,
                enabled=account.enabled and domain.enabled,
                addresses=tuple(dict.fromkeys((primary, *extra))),
            )
            for address in entry.addresses:
                accounts[address] = entry
        for local, targets in domain.aliases.items():
            aliases[f"{local.lower()}@{name}"] = tuple(_qualify(t, name) for t in targets)
    # Normalise the forward_to targets once, so resolution never has to qualify names.
    for address, entry in list(accounts.items()):
        if entry.account.forward_to and any("@" not in t for t in entry.account.forward_to):
            qualified = tuple(_qualify(t, entry.domain) for t in entry.account.forward_to)
            entry = dataclasses.replace(
                entry, account=dataclasses.replace(entry.account, forward_to=qualified)
            )
            accounts[address] = entry
    linked: dict[tuple[str, str], tuple[AccountEntry, ...]] = {}
    for address, entry in accounts.items():
        link = entry.account.active_directory
        if link is not None and address == entry.address:  # once per account, by its primary
            key = (link.domain, link.user.casefold())
            linked[key] = (*linked.get(key, ()), entry)
    kerberos = tuple(
        KerberosRealm(
            directory.kerberos_realm or name.upper(), name, loaded.base_dir / directory.kerberos_keytab
        )
        for name, directory in manifest.directories.items()
        if isinstance(directory, ActiveDirectory) and directory.kerberos_keytab
    )
    trusted_logins: dict[str, TrustedLoginRule] = {}
    for name, rule in manifest.trusted_logins.items():
        service = accounts.get(rule.service.lower())
        if service is not None:
            trusted_logins[service.address] = TrustedLoginRule(
                name,
                frozenset(d.lower() for d in rule.domains),
                tuple(ipaddress.ip_network(n, strict=False) for n in rule.networks),
            )
    members: dict[str, set[str]] = {}
    for alias in aliases:
        for account_address in _alias_accounts(alias, aliases, accounts):
            members.setdefault(account_address, set()).add(alias)
    return Snapshot(
        manifest=manifest,
        revision=loaded.sha256,
        loaded_at=time.time(),
        base_dir=loaded.base_dir,
        path=loaded.path,
        data_dir=data_dir,
        hostname=server.hostname,
        _domains=domains,
        _accounts=accounts,
        _aliases=aliases,
        _alias_members={k: frozenset(v) for k, v in members.items()},
        _trusted=tuple(ipaddress.ip_network(n, strict=False) for n in server.trusted_networks),
        _linked=linked,
        _trusted_logins=trusted_logins,
        max_line_length=server.limits.max_line_length or DEFAULT_LINE_LENGTH,
        imap_max_line_length=server.limits.max_line_length or DEFAULT_IMAP_LINE_LENGTH,
        command_timeout=float(server.limits.command_timeout),
        data_timeout=float(server.limits.data_timeout),
        pop3_idle_timeout=float(server.limits.pop3_idle_timeout),
        imap_idle_timeout=float(server.limits.imap_idle_timeout),
        max_recipients=server.limits.max_recipients,
        max_connections=server.limits.max_connections,
        max_connections_per_client=server.limits.max_connections_per_client,
        allow_plaintext_auth=server.allow_plaintext_auth,
        dovecot_pop3_uidl_format=server.dovecot_pop3_uidl_format,
        domain_names=tuple(domains),
        filter=_filter_settings(manifest),
        srs_domain=manifest.outbound.srs_domain,
        srs_secret_file=(
            loaded.base_dir / manifest.outbound.srs_secret_file if manifest.outbound.srs_secret_file else None
        ),
        kerberos=kerberos,
        sieve=loaded.scripts,
    )


def _filter_settings(manifest: Manifest) -> FilterSettings | None:
    if manifest.filter is None:
        return None
    host, _, port = manifest.filter.rspamd.rpartition(":")
    on_failure = manifest.filter.on_failure
    return FilterSettings(
        host.strip("[]"),
        int(port),
        float(manifest.filter.timeout),
        on_failure == "tempfail",
        manifest.filter.resolver,
    )


def _alias_accounts(
    alias: str, aliases: dict[str, tuple[str, ...]], accounts: dict[str, AccountEntry]
) -> Iterable[str]:
    """Primary addresses of the accounts an alias reaches (for "may send as this alias")."""
    seen: set[str] = set()
    stack = [alias]
    found: list[str] = []
    while stack and len(seen) < 10_000:
        address = stack.pop()
        if address in seen:
            continue
        seen.add(address)
        if address in accounts:
            found.append(accounts[address].address)
        else:
            stack.extend(aliases.get(address, ()))
    return found
