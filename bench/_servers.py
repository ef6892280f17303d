"""Real directory servers for the benchmarks: the test fixtures' provisioning, without pytest."""

from __future__ import annotations

from tests.fixtures.samba import ADMIN, DNS_DOMAIN, NETBIOS, SambaDomain, is_root, start_domain

__all__ = ["ADMIN", "DNS_DOMAIN", "NETBIOS", "SambaDomain", "is_root", "start_domain"]
