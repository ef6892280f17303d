"""The client's name for rspamd and for Authentication-Results: iprev (RFC 8601 §3, RFC 8601
§2.7.3), the reverse DNS name of the client's address confirmed by a forward lookup — what
Postfix hands a milter as the client name ("unknown" when it does not confirm).

Asked of `[filter] resolver` or the system's resolvers, with a short lifetime so a slow DNS never
holds a message long; answers are cached for their TTL.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

MAX_NAMES = 10  # PTR names tried for one address


@dataclass(frozen=True)
class ReverseName:
    result: str  # RFC 8601 §2.7.3: pass, fail, temperror, permerror
    name: str | None  # the confirmed name when "pass"


class ReverseResolver:
    def __init__(self) -> None:
        self._resolvers: dict[tuple[str | None, float], dns.asyncresolver.Resolver] = {}

    def _resolver(self, server: str | None, lifetime: float) -> dns.asyncresolver.Resolver:
        key = (server, lifetime)
        resolver = self._resolvers.get(key)
        if resolver is None:
            if server is None:
                resolver = dns.asyncresolver.Resolver(configure=True)
            else:
                host, _, port = server.rpartition(":")
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [host.strip("[]")]
                resolver.port = int(port)
            resolver.cache = dns.resolver.Cache()
            resolver.lifetime = lifetime
            resolver.timeout = lifetime
            self._resolvers = {key: resolver}  # one configuration at a time: the manifest's
        return resolver

    async def lookup(self, ip: str, server: str | None, lifetime: float) -> ReverseName:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ReverseName("permerror", None)
        resolver = self._resolver(server, lifetime)
        try:
            answer = await resolver.resolve(dns.reversename.from_address(ip), "PTR", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ReverseName("fail", None)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException):
            return ReverseName("temperror", None)
        kind = "A" if address.version == 4 else "AAAA"
        failed = False
        for record in list(answer)[:MAX_NAMES]:
            name = record.to_text().rstrip(".").lower()
            try:
                forward = await resolver.resolve(name, kind, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException:
                failed = True
                continue
            if any(ipaddress.ip_address(r.to_text()) == address for r in forward):
                return ReverseName("pass", name)
        return ReverseName("temperror" if failed else "fail", None)


__all__ = ["ReverseName", "ReverseResolver"]
