"""Where mail for a domain goes: its MX hosts by preference (RFC 5321 §5.1), or the smarthost."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

MAX_MX_HOSTS = 10  # hosts tried per attempt, best preference first
MAX_ADDRESSES = 4  # addresses tried per host


class RouteError(Exception):
    """No host can be tried for the domain now (temporary) or ever (permanent)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.permanent = status.startswith("5")


@dataclass(frozen=True)
class Host:
    name: str  # the name the certificate must carry when TLS is required
    port: int


class Resolver:
    """DNS lookups for delivery, asked of the configured server (`[outbound] resolver`) or the
    system's resolvers (/etc/resolv.conf)."""

    def __init__(self, server: str | None, *, lifetime: float = 10.0) -> None:
        self.server = server
        if server is None:
            self._dns = dns.asyncresolver.Resolver(configure=True)
        else:
            host, _, port = server.rpartition(":")
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [host.strip("[]")]
            self._dns.port = int(port)
        self._dns.cache = dns.resolver.Cache()  # answers are kept for their TTL
        self._dns.lifetime = lifetime
        self._dns.timeout = min(3.0, lifetime)

    async def mx_hosts(self, domain: str) -> list[str]:
        """The names of the domain's mail exchangers, best preference first."""
        try:
            answer = await self._dns.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise RouteError("5.1.2", f"the domain {domain} does not exist (DNS NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX records; the domain itself is the host (its A/AAAA records).
            return [domain]
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
            raise RouteError("4.4.3", f"MX lookup for {domain} failed: {_words(error)}") from None
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        # RFC 7505: a single MX of "." (a "null MX") says the domain accepts no mail.
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise RouteError("5.1.10", f"the domain {domain} accepts no mail (null MX, RFC 7505)")
        return [r.exchange.to_text(omit_final_dot=True).lower() for r in records][:MAX_MX_HOSTS]

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of a host; [] when it has none."""
        if _is_ip(host):
            return [host]
        found: list[str] = []
        failures: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(host, kind, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
                failures.append(_words(error))
                continue
            found.extend(r.address for r in answer)
        if not found and failures:
            raise RouteError("4.4.3", f"address lookup for {host} failed: {failures[0]}")
        return found[:MAX_ADDRESSES]


async def system_addresses(host: str, port: int) -> list[str]:
    """The smarthost's addresses as the system resolves them (so /etc/hosts counts)."""
    if _is_ip(host):
        return [host]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RouteError("4.4.3", f"cannot resolve the relay {host}: {error.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))[:MAX_ADDRESSES]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _words(error: Exception) -> str:
    if isinstance(error, dns.exception.Timeout):
        return "timed out"
    if isinstance(error, dns.resolver.NoNameservers):
        return "no server answered (SERVFAIL or refused)"
    return type(error).__name__
