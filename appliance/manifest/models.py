"""The manifest as typed, frozen models.

These models (on the value checks of names.py) check what one value or one table can check on its own: types, units, syntax of
names and addresses. Checks that look across tables (an alias target exists, a directory that an
account names is declared, no address is declared twice) live in `checks.py`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, Self, Union

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from appliance.dovecot_uidl import DEFAULT_UIDL_FORMAT, check_uidl_format
from appliance.manifest.names import (
    AddressOrLocalPart,
    DomainName,
    HostPort,
    Model,
    PasswordHash,
    _check_networks,
)
from appliance.manifest.units import Duration, Size

# --- [server] -------------------------------------------------------------------------------


class TLS(Model):
    """Certificate and key. Both are created, self-signed, on first start when missing."""

    certificate: str = Field(
        "var/tls/cert.pem", description="PEM certificate chain, relative to the manifest."
    )
    key: str = Field("var/tls/key.pem", description="PEM private key, relative to the manifest.")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = Field(
        "TLSv1.2", description="Oldest TLS version a client may use."
    )
    ciphers: str | None = Field(
        None, description="OpenSSL cipher list for TLS 1.2; the default is a modern AEAD-only list."
    )


class Listeners(Model):
    """Where each daemon listens, as "host:port". Leave one out to disable it."""

    smtp: HostPort | None = Field(None, description="Inbound mail (MX), port 25 in production.")
    submission: HostPort | None = Field(None, description="Submission with STARTTLS and AUTH (587).")
    submissions: HostPort | None = Field(None, description="Submission over implicit TLS (465).")
    pop3: HostPort | None = Field(None, description="POP3 with STLS (110).")
    pop3s: HostPort | None = Field(None, description="POP3 over implicit TLS (995).")
    imap: HostPort | None = Field(None, description="IMAP with STARTTLS (143).")
    imaps: HostPort | None = Field(None, description="IMAP over implicit TLS (993).")
    metrics: HostPort | None = Field(
        None,
        description='OpenMetrics for Prometheus over HTTP at /metrics, e.g. "127.0.0.1:9154"; '
        "no authentication, so loopback or a management network only.",
    )
    managesieve: HostPort | None = Field(
        None, description="ManageSieve (RFC 5804) with STARTTLS (4190): users manage their Sieve scripts."
    )


class Limits(Model):
    """Limits against abuse and mistakes. Each refusal comes with its own reply code."""

    max_message_size: Size = Field(25_000_000, description="Largest message any domain accepts.")
    max_recipients: int = Field(100, ge=1, description="Recipients per message (RFC 5321 §4.5.3.1.8).")
    max_connections: int = Field(1000, ge=1, description="Open connections, all clients together.")
    max_connections_per_client: int = Field(20, ge=1, description="Open connections per client address.")
    command_timeout: Duration = Field(300.0, description="Idle time allowed between commands.")
    data_timeout: Duration = Field(600.0, description="Time allowed for one message's DATA.")
    pop3_idle_timeout: Duration = Field(600.0, description="RFC 1939 §3: at least 10 minutes.")
    imap_idle_timeout: Duration = Field(1800.0, description="RFC 3501 §5.4: at least 30 minutes.")
    max_line_length: int | None = Field(
        None,
        ge=1000,
        description=(
            "Longest command line accepted, in bytes (RFC 5321 asks for at least 512). Unset: 8192 "
            "for SMTP and POP3, 65536 for IMAP (Dovecot's; long ID and SEARCH lines from real "
            "clients pass). Set: the same limit for all three."
        ),
    )


class Server(Model):
    hostname: DomainName = Field(description="This server's name, used in greetings and Received headers.")
    data_dir: str = Field("var", description="Mail store, queue and state; relative to the manifest.")
    tls: TLS = Field(default_factory=lambda: TLS())
    listeners: Listeners = Field(default_factory=lambda: Listeners())
    limits: Limits = Field(default_factory=lambda: Limits())
    allow_plaintext_auth: bool = Field(
        False,
        description="Allow logins before TLS. Off by default: passwords never cross the wire in clear.",
    )
    trusted_networks: list[str] = Field(
        default_factory=list,
        description="Client networks that may relay without AUTH (e.g. a web application host).",
    )
    recipient_delimiter: Literal["+", "-", ""] = Field(
        "+", description='Plus-addressing: john+news@ reaches john. "" turns it off.'
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    dovecot_pop3_uidl_format: Annotated[str, AfterValidator(check_uidl_format)] = Field(
        DEFAULT_UIDL_FORMAT,
        description=(
            "The pop3_uidl_format Dovecot served POP3 with, for Maildirs taken over from it: their "
            "messages keep the UIDLs Dovecot gave. %u UID, %v UIDVALIDITY, %f file name, with a "
            'width and X for hex; Dovecot\'s default "%08Xu%08Xv".'
        ),
    )

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


# --- [security] -----------------------------------------------------------------------------


class AutoBan(Model):
    """Refuse clients that keep failing to log in, before a directory locks its users out."""

    enabled: bool = True
    max_failures: int = Field(10, ge=1, description="Failed logins from one address within `window`.")
    window: Duration = Field(600.0, description="How far back failures count.")
    ban_time: Duration = Field(1800.0, description="How long a banned address is refused.")
    max_failures_per_account: int = Field(
        3,
        ge=1,
        description=(
            "Failed logins to one directory-linked account, from anywhere, within `window`, after "
            "which its logins are refused here for `ban_time` without asking the directory: keep "
            "it below the directory's lockout threshold so a password spray cannot lock AD users out."
        ),
    )
    allow_networks: list[str] = Field(
        default_factory=list, description="Client networks that are never banned (e.g. a webmail host)."
    )

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class Security(Model):
    auto_ban: AutoBan = Field(default_factory=lambda: AutoBan())


# --- [directories] --------------------------------------------------------------------------

_SERVER_URL_RE = re.compile(r"^(ldaps?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?$")


def check_server_url(value: str) -> str:
    if not _SERVER_URL_RE.match(value):
        raise ValueError(
            f'"{value}" is not a directory server URL (write "ldaps://dc1.example.com" or '
            '"ldap://dc1.example.com:389")'
        )
    return value


ServerURL = Annotated[str, AfterValidator(check_server_url)]


class _LDAPConnection(Model):
    servers: list[ServerURL] = Field(
        min_length=1, description="Servers in the order they are tried: ldaps:// or ldap:// (StartTLS)."
    )
    ca_file: str | None = Field(
        None, description="CA certificate(s) that signed the servers' certificates; default: system store."
    )
    tls_server_name: str | None = Field(
        None,
        description="Name to verify in the server certificate when it differs from the URL's host.",
    )
    allow_plaintext: bool = Field(
        False,
        description=(
            "Allow ldap:// without StartTLS, to any host: passwords then cross the network in clear. "
            "Only for a directory on this host or a trusted link; nothing checks which it is."
        ),
    )
    connect_timeout: Duration = Field(3.0, description="Time to open a connection to one server.")
    response_timeout: Duration = Field(5.0, description="Time to wait for one answer.")
    pool_size: int = Field(4, ge=1, le=64, description="Open connections kept per server.")
    require_group: str | None = Field(
        None,
        description="Only members of this group (nested membership counts) may log in. Name or DN.",
    )
    bind_dn: str | None = Field(
        None,
        description=(
            "Read-only service account: searches for users (ldap) and reads the state of users "
            "with open sessions (active-directory, for recheck_interval)."
        ),
    )
    bind_password_file: str | None = Field(
        None, description="File holding the service account's password (never inline)."
    )
    bind_password_env: str | None = Field(
        None, description="Environment variable holding the service account's password."
    )

    @model_validator(mode="after")
    def _service_account_has_a_secret(self) -> Self:
        if self.bind_dn and not (self.bind_password_file or self.bind_password_env):
            raise ValueError("bind_dn needs bind_password_file or bind_password_env")
        return self


class ActiveDirectory(_LDAPConnection):
    """An Active Directory domain, keyed by its DNS name. Users log in with their AD password."""

    type: Literal["active-directory"]
    servers: list[ServerURL] = Field(
        default_factory=list,
        description=(
            "DCs in the order they are tried: ldaps:// or ldap:// (StartTLS). Optional with "
            "discover = true, where they are tried after the DCs found in DNS."
        ),
    )
    discover: bool = Field(
        False,
        description=(
            "Find the DCs in DNS (SRV _ldap._tcp.dc._msdcs.<domain>, RFC 2782 priority and weight), "
            "asked again when the records' TTL runs out."
        ),
    )
    site: str | None = Field(
        None,
        description="AD site whose DCs come first (SRV _ldap._tcp.<site>._sites.dc._msdcs.<domain>).",
    )
    resolver: str | None = Field(
        None,
        description='DNS server to ask for the DCs, "ip:port" (default: the system resolver).',
    )
    recheck_interval: Duration = Field(
        60.0,
        description=(
            "How often the state of users with open sessions is read (needs bind_dn): a user "
            "disabled, locked out, expired, deleted or whose password changed loses every session."
        ),
    )
    netbios_name: str | None = Field(
        None, description='Down-level domain name (e.g. "CLOUDTECH"), needed for login_format = "down-level".'
    )
    login_format: Literal["upn", "down-level"] = Field(
        "upn", description='How the bind names the user: "upn" (user@domain) or "down-level" (DOMAIN\\user).'
    )
    upn_suffix: DomainName | None = Field(
        None, description="UPN suffix when it differs from the directory's key (its DNS name)."
    )
    base_dn: str | None = Field(
        None, description="Where to look users up for require_group; default: from the DNS name."
    )
    kerberos_keytab: str | None = Field(
        None,
        description=(
            "Keytab with the keys of imap/<hostname>, pop/<hostname> and smtp/<hostname> "
            "(samba-tool domain exportkeytab, ktpass): enables SASL GSSAPI (Kerberos single sign-on) "
            "for the users of this directory. Key material: mode 0600, the daemon's user."
        ),
    )
    kerberos_realm: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$",
        description="The Kerberos realm of this domain's users (default: the directory's key upper-cased).",
    )

    @field_validator("resolver")
    @classmethod
    def _resolver_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            if not 0 < int(port) < 65536:
                raise ValueError
        except ValueError:
            raise ValueError(f'"{value}" is not an "ip:port" address (e.g. "192.0.2.53:53")') from None
        return value

    @model_validator(mode="after")
    def _down_level_needs_netbios(self) -> ActiveDirectory:
        if self.login_format == "down-level" and not self.netbios_name:
            raise ValueError('login_format = "down-level" needs netbios_name (e.g. "CLOUDTECH")')
        return self


class LDAPDirectory(_LDAPConnection):
    """A generic LDAP directory such as OpenLDAP: bind with a DN template, or search then bind."""

    type: Literal["ldap"]
    base_dn: str | None = Field(
        None, description='Search base for users, e.g. "ou=people,dc=example,dc=test".'
    )
    bind_dn_template: str | None = Field(
        None,
        description=(
            'DN to bind as, "{user}" replaced (escaped per RFC 4514): '
            '"uid={user},ou=people,dc=example,dc=test".'
        ),
    )
    user_filter: str = Field(
        "(uid={user})", description="Search filter for search-then-bind; {user} is escaped per RFC 4515."
    )
    require_group: str | None = Field(
        None,
        description=(
            "Only direct members of this group may log in (listed in its group_member_attribute; "
            "members of a group that is a member do not count). Name or DN."
        ),
    )
    group_member_attribute: str = Field(
        "member", description="Attribute of require_group that lists members (member or uniqueMember)."
    )

    @model_validator(mode="after")
    def _one_way_to_find_users(self) -> LDAPDirectory:
        if self.bind_dn_template is None and self.base_dn is None:
            raise ValueError("set bind_dn_template, or base_dn (with user_filter) for search-then-bind")
        if self.bind_dn_template is not None and "{user}" not in self.bind_dn_template:
            raise ValueError('bind_dn_template must contain "{user}"')
        if "{user}" not in self.user_filter:
            raise ValueError('user_filter must contain "{user}"')
        return self


class LocalSystem(Model):
    """This machine's own accounts, checked through PAM (a WORKGROUP, no domain).

    The daemon needs root, or membership of group `shadow`, to check local passwords.
    """

    type: Literal["local-system"]
    pam_service: str = Field(
        "appliance", description="PAM service (file in /etc/pam.d) used to check passwords."
    )


Directory = Annotated[Union[ActiveDirectory, LDAPDirectory, LocalSystem], Field(discriminator="type")]


# --- [domains] ------------------------------------------------------------------------------


# Accounts (and their links) are the one kind of object a manifest has 100,000 of: they are
# slotted pydantic dataclasses, about a quarter of a BaseModel's memory (no __dict__, no
# fields-set per instance), validated the same way.
# Not strict as a whole: strict mode would accept only ready-made instances for the nested link;
# the scalar fields are strict one by one (StrictBool), as every other model is.
_ENTRY_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)


@pydantic_dataclass(config=_ENTRY_CONFIG, frozen=True, slots=True)
class DirectoryLink:
    """hMailServer's "Active Directory" tab: log in with this directory user's password."""

    domain: str = Field(description="A directory declared under [directories] (its key).")
    user: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$",
        description="The user name in that directory.",
    )


@pydantic_dataclass(config=_ENTRY_CONFIG, frozen=True, slots=True)
class Account:
    active_directory: DirectoryLink | None = Field(
        None, description="Link to a directory user; the account then has no password of its own."
    )
    password_hash: PasswordHash | None = Field(
        None,
        description=(
            "argon2id hash from `appliance hash-password`. Carried-over hashes also verify: bcrypt, "
            "SHA-512/SHA-256/MD5-crypt, argon2i, bare or after Dovecot's {SCHEME} prefix "
            "({SHA512-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, {CRYPT}, ...), and Dovecot's {SSHA512}, "
            "{SSHA256}, {SSHA}, {SMD5}, {SHA512}, {SHA256}, {SHA1}, {PLAIN-MD5}; `validate` warns "
            "about the weak ones. {PLAIN} is refused."
        ),
    )
    enabled: StrictBool = Field(True, description="A disabled account receives no mail and cannot log in.")
    quota: Size | None = Field(None, description='Mailbox size limit, e.g. "2 GB"; none by default.')
    # Tuples: the empty one is shared, where each empty list would cost 56 bytes per account.
    addresses: tuple[AddressOrLocalPart, ...] = Field(
        default=(), description="Extra addresses delivered to this account."
    )
    forward_to: tuple[AddressOrLocalPart, ...] = Field(
        default=(), description="Forward incoming mail to these addresses."
    )
    keep_copy: StrictBool = Field(
        default=True, description="With forward_to, also keep a copy in this mailbox."
    )
    send_as_any: StrictBool = Field(
        default=False,
        description="May send with any sender address in the local domains (e.g. a helpdesk tool).",
    )
    display_name: str | None = None
    sieve: str | None = Field(
        default=None,
        description="Sieve script (RFC 5228) run at delivery, relative to the manifest "
        '(e.g. "sieve/john.sieve"). Pinned: the user cannot replace it over ManageSieve.',
    )


class DKIM(Model):
    """DKIM signing (RFC 6376) of mail this domain sends out."""

    selector: str = Field(
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
        description='Selector: the public key is published at "<selector>._domainkey.<domain>".',
    )
    key_file: str = Field(description="PEM RSA or Ed25519 private key, relative to the manifest.")


class Domain(Model):
    enabled: bool = Field(True, description="A disabled domain receives no mail and nobody in it can log in.")
    catch_all: AddressOrLocalPart | None = Field(
        None,
        description="Where mail to unknown addresses of this domain goes; unknown mail is refused otherwise.",
    )
    max_message_size: Size | None = Field(None, description="Largest message this domain accepts.")
    accounts: dict[str, Account] = Field(default_factory=dict)
    aliases: dict[str, list[AddressOrLocalPart]] = Field(default_factory=dict)
    dkim: DKIM | None = Field(None, description="Sign outgoing mail from this domain with DKIM.")
    filter: StrictBool = Field(
        True, description="Scan inbound mail for this domain with [filter] (when declared); false skips it."
    )
    sieve_before: str | None = Field(
        None,
        description="Sieve script run at delivery for every account of the domain before the account's own "
        "(relative to the manifest); its stop ends the run.",
    )
    sieve_after: str | None = Field(
        None,
        description="Sieve script run after the account's own, unless a script stopped.",
    )


# --- [outbound] -----------------------------------------------------------------------------


class Outbound(Model):
    """Delivery of mail for other domains: to a smarthost, or to each domain's MX hosts."""

    relay_host: HostPort | None = Field(
        None, description='Smarthost that takes all outgoing mail, "host:port"; MX delivery when unset.'
    )
    relay_user: str | None = Field(None, description="User name for AUTH at the smarthost.")
    relay_password_file: str | None = Field(
        None, description="File holding the smarthost password (never inline)."
    )
    relay_password_env: str | None = Field(
        None, description="Environment variable holding the smarthost password."
    )
    relay_tls: Literal["required", "opportunistic", "none"] = Field(
        "opportunistic",
        description='STARTTLS to the smarthost: "required" (certificate verified), "opportunistic", "none".',
    )
    require_tls_domains: list[DomainName] = Field(
        default_factory=list,
        description="Recipient domains whose MX hosts must offer STARTTLS with a valid certificate.",
    )
    tls_ca_file: str | None = Field(
        None,
        description="CA certificate(s) to verify peers with when TLS is required; default: system store.",
    )
    resolver: HostPort | None = Field(
        None, description='DNS server for MX lookups, "ip:port"; default: the system resolver.'
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="Port of the MX hosts (25 on the Internet).")
    retry_intervals: list[Duration] = Field(
        default_factory=lambda: [300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0],
        min_length=1,
        description="Waits between attempts after a temporary failure; the last one repeats.",
    )
    max_queue_lifetime: Duration = Field(
        5 * 86400.0, description="After this, a message still not delivered bounces to its sender."
    )
    delay_warning_after: Duration | None = Field(
        4 * 3600.0, description="Tell the sender once that delivery is delayed (RFC 3464 delayed DSN)."
    )
    connections_per_destination: int = Field(
        10, ge=1, le=1000, description="Connections open at once to one domain (or to the smarthost)."
    )
    max_deliveries: int = Field(100, ge=1, le=10000, description="Delivery attempts in progress at once.")
    connect_timeout: Duration = Field(30.0, description="Time to open a connection to one host.")
    command_timeout: Duration = Field(
        300.0, description="Time to wait for one reply (RFC 5321 §4.5.3.2 suggests 5 minutes)."
    )

    srs_domain: DomainName | None = Field(
        None,
        description="SRS: forwarded mail leaves with a sender rewritten into this (local) domain, "
        "so it passes SPF at the destination; bounces to it go back to the original sender.",
    )
    srs_secret_file: str | None = Field(
        None, description="File holding the SRS secret (never inline); needed with srs_domain."
    )

    @model_validator(mode="after")
    def _relay_credentials(self) -> Outbound:
        if (self.srs_domain is None) != (self.srs_secret_file is None):
            raise ValueError("srs_domain and srs_secret_file go together")
        if self.relay_user and not (self.relay_password_file or self.relay_password_env):
            raise ValueError("relay_user needs relay_password_file or relay_password_env")
        if (self.relay_password_file or self.relay_password_env) and not self.relay_user:
            raise ValueError("a relay password needs relay_user")
        if self.relay_user and not self.relay_host:
            raise ValueError("relay_user needs relay_host")
        return self


# --- [filter] ---------------------------------------------------------------------------------


class Filter(Model):
    """Inbound mail hygiene: messages from the MX listener are scanned by rspamd before the 250."""

    rspamd: HostPort = Field(
        description='rspamd\'s normal worker, "host:port" (e.g. "127.0.0.1:11333"), spoken to over HTTP /checkv2.'
    )
    timeout: Duration = Field(10.0, description="Time allowed for one scan, connection included.")
    on_failure: Literal["tempfail", "accept"] = Field(
        "tempfail",
        description='When rspamd cannot answer: "tempfail" (451, the sender retries) or "accept" (deliver unscanned).',
    )
    resolver: HostPort | None = Field(
        None,
        description='DNS server for the client\'s reverse name (iprev), "ip:port"; default: the system resolver.',
    )


# --- [trusted_logins] ------------------------------------------------------------------------


class TrustedLogin(Model):
    """A service, such as webmail that authenticated the user itself (Kerberos in the web server),
    allowed to log in to IMAP and SMTP submission *as* users: SASL PLAIN with the user's address
    as authzid and its own account as authcid (RFC 4616)."""

    service: str = Field(
        min_length=3,
        description=(
            'The account the service logs in with, e.g. "webmail@example.test": an account of the '
            "manifest, with a password_hash or an AD link."
        ),
    )
    domains: list[DomainName] = Field(
        min_length=1, description="It may act as any enabled account of these local domains."
    )
    networks: list[str] = Field(
        min_length=1,
        description='Only from these client networks (e.g. ["192.0.2.10/32"], the webmail host).',
    )

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class Manifest(Model):
    """The whole appliance.toml."""

    server: Server
    security: Security = Field(default_factory=lambda: Security())
    directories: dict[str, Directory] = Field(default_factory=dict)
    domains: dict[str, Domain] = Field(default_factory=dict)
    outbound: Outbound = Field(default_factory=lambda: Outbound())
    filter: Filter | None = Field(None, description="Scan inbound mail with rspamd; no scanning when absent.")

    trusted_logins: dict[str, TrustedLogin] = Field(
        default_factory=dict,
        description="Services (webmail) that may log in as the users of listed domains, from listed networks.",
    )
