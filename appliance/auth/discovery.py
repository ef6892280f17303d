"""Domain controllers found in DNS, as Windows clients find them.

AD publishes its DCs as SRV records ([MS-ADTS] 6.3.2.3): `_ldap._tcp.dc._msdcs.<domain>` for the
whole domain and `_ldap._tcp.<site>._sites.dc._msdcs.<domain>` per site. With `discover = true`
a directory asks for them (the site's first when `site` is set), orders them as RFC 2782 says -
lowest priority first, and within one priority a random pick weighted by `weight` for each
login - and asks again once the records' TTL has run out, so DCs added or retired in DNS are used
or left without a reload. When DNS cannot answer, the last answer keeps serving (and the
manifest's `servers`, if any, come after the discovered ones in any case).

Everything here blocks (dnspython's resolver): it runs in the auth service's threads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver

log = logging.getLogger("appliance.auth")

RETRY_SECONDS = 30.0  # after a failed lookup, the last answer serves this long before asking again
MIN_TTL = 1.0  # however short the records' TTL, no more than one lookup per second
MAX_TARGETS = 32


@dataclass(frozen=True)
class Target:
    name: str  # the SRV target: the DC's host name (verified in its certificate)
    address: str  # where to connect
    port: int
    priority: int
    weight: int


class DomainControllers:
    def __init__(self, domain: str, *, site: str | None, resolver: str | None, timeout: float) -> None:
        self.domain = domain.rstrip(".")
        self.site = site
        self._resolver = _resolver(resolver, timeout)
        self._lock = threading.Lock()
        self._targets: list[Target] = []
        self._expires = 0.0

    def names(self) -> list[str]:
        """The SRV names asked, in order."""
        names = []
        if self.site:
            names.append(f"_ldap._tcp.{self.site}._sites.dc._msdcs.{self.domain}")
        names.append(f"_ldap._tcp.dc._msdcs.{self.domain}")
        return names

    def targets(self) -> list[Target]:
        """The DCs in the order to try them (RFC 2782), looked up again when the TTL has run out."""
        with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                try:
                    self._targets, ttl = self._lookup()
                    self._expires = now + max(MIN_TTL, ttl)
                except dns.exception.DNSException as error:
                    self._expires = now + RETRY_SECONDS
                    log.warning(
                        "directory discovery failed domain=%s error=%s kept=%d",
                        self.domain,
                        type(error).__name__,
                        len(self._targets),
                    )
            targets = list(self._targets)
        site = [t for t in targets if t.priority < 0]  # the site's own DCs come first
        return _rfc2782_order(site) + _rfc2782_order([t for t in targets if t.priority >= 0])

    def _lookup(self) -> tuple[list[Target], float]:
        found: list[Target] = []
        ttl = float("inf")
        seen: set[tuple[str, int]] = set()
        errors: list[dns.exception.DNSException] = []
        for index, name in enumerate(self.names()):
            site_records = self.site is not None and index == 0
            try:
                answer = self._resolver.resolve(name, dns.rdatatype.SRV)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as error:
                errors.append(error)
                continue
            ttl = min(ttl, float(answer.rrset.ttl if answer.rrset is not None else MIN_TTL))
            for record in answer:
                host = record.target.to_text().rstrip(".")
                if host in ("", ".") or (host, record.port) in seen:  # "." : no service here
                    continue
                seen.add((host, record.port))
                for address, address_ttl in self._addresses(host, answer.response):
                    ttl = min(ttl, address_ttl)
                    # The site's DCs sort before all others: a negative priority, kept in order.
                    priority = record.priority - 65536 if site_records else record.priority
                    found.append(Target(host, address, record.port, priority, record.weight))
                    break  # one address per DC
        if not found:
            raise errors[-1] if errors else dns.resolver.NoAnswer()
        found = found[:MAX_TARGETS]
        log.info(
            "directory discovered domain=%s dcs=%s ttl=%d",
            self.domain,
            ",".join(f"{t.name}:{t.port}/{t.priority % 65536}" for t in found),
            ttl,
        )
        return found, ttl

    def _addresses(self, host: str, response: dns.message.Message) -> list[tuple[str, float]]:
        """The host's addresses: from the SRV answer's additional section, or asked for."""
        extra = [
            (item.address, float(rrset.ttl))
            for rrset in response.additional
            if rrset.name.to_text().rstrip(".") == host
            and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for item in rrset
        ]
        if extra:
            return extra
        for kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = self._resolver.resolve(host, kind)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            ttl = float(answer.rrset.ttl if answer.rrset is not None else MIN_TTL)
            return [(item.address, ttl) for item in answer]
        return []


def _rfc2782_order(targets: list[Target]) -> list[Target]:
    """Lowest priority first; within a priority, a random order weighted by `weight` (RFC 2782:
    a target of weight 0 is picked only when no other is left)."""
    ordered: list[Target] = []
    for priority in sorted({t.priority for t in targets}):
        group = [t for t in targets if t.priority == priority]
        group.sort(key=lambda t: t.weight)  # the weight-0 ones first, as RFC 2782 lists them
        while group:
            total = sum(t.weight for t in group)
            pick = random.randint(0, total)
            running = 0
            for index, target in enumerate(group):
                running += target.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def _resolver(address: str | None, timeout: float) -> dns.resolver.Resolver:
    if address is None:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = address.rpartition(":")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host.strip("[]")]
        resolver.port = int(port)
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver
