"""DCs found in DNS (`discover = true`): SRV records served by a DNS server on loopback name the
suite's two Samba DCs; logins go where RFC 2782 says, fail over when a DC stops, and follow the
records when they change, without a reload."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from appliance.auth import Outcome
from tests.fixtures.auth_service import AuthServices, Logins
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.support.dns_server import DNSServer
from tests.support.wait import wait_for
from tests.test_auth_active_directory import PASSWORD, account_toml, auth_lines, new_user

SRV = "_ldap._tcp.dc._msdcs.cloudtech.local"


@pytest.fixture
def dns_server(samba: SambaDomain) -> Iterator[DNSServer]:
    server = DNSServer()
    server.ttl = 1
    for index, dc in enumerate(samba.dcs, 1):
        server.add(f"dc{index}.cloudtech.local", "A", dc.ip)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _auth_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="appliance.auth")


def start(
    auth_services: AuthServices, samba: SambaDomain, dns_server: DNSServer, user: str, extra: str = ""
) -> Logins:
    body = (
        '[directories."cloudtech.local"]\n'
        'type = "active-directory"\n'
        "discover = true\n"
        f'resolver = "{dns_server.address}"\n'
        f'netbios_name = "{NETBIOS}"\n'
        'ca_file = "tls/cloudtech-ca.pem"\n'
        "connect_timeout = 2\nresponse_timeout = 3\n" + extra + account_toml(user)
    )
    return auth_services.start(body, files={"tls/cloudtech-ca.pem": samba.ca_file.read_bytes()})


def server_of_last_login(caplog: pytest.LogCaptureFixture) -> str:
    match = re.search(r" server=(\S+) ", auth_lines(caplog)[-1])
    assert match, auth_lines(caplog)[-1]
    return match.group(1)


def test_logins_go_to_the_preferred_dc_then_the_other_when_it_stops(
    samba: SambaDomain, auth_services: AuthServices, dns_server: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.add(SRV, "SRV", "0 100 389 dc1.cloudtech.local.", "10 100 389 dc2.cloudtech.local.")
    login = start(auth_services, samba, dns_server, new_user(samba))
    for _ in range(5):
        assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        assert server_of_last_login(caplog) == "ldap://dc1.cloudtech.local:389"
    samba.dcs[0].stop()
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    assert server_of_last_login(caplog) == "ldap://dc2.cloudtech.local:389"


def test_changed_records_are_followed_after_their_ttl_without_a_reload(
    samba: SambaDomain, auth_services: AuthServices, dns_server: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.add(SRV, "SRV", "0 100 389 dc1.cloudtech.local.", "10 100 389 dc2.cloudtech.local.")
    login = start(auth_services, samba, dns_server, new_user(samba))
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    assert server_of_last_login(caplog) == "ldap://dc1.cloudtech.local:389"
    dns_server.records[(SRV.lower(), "SRV")] = ["0 100 389 dc2.cloudtech.local."]  # dc1 retired

    def on_dc2() -> bool:
        assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        return server_of_last_login(caplog) == "ldap://dc2.cloudtech.local:389"

    wait_for(on_dc2, 10, "a login on dc2 once DNS names it alone", every=0.2)
    assert samba.dcs[0].running  # dc1 still answers: only DNS moved the logins


def test_the_sites_dcs_come_first(
    samba: SambaDomain, auth_services: AuthServices, dns_server: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.add(SRV, "SRV", "0 100 389 dc1.cloudtech.local.", "10 100 389 dc2.cloudtech.local.")
    dns_server.add(
        "_ldap._tcp.branch._sites.dc._msdcs.cloudtech.local", "SRV", "0 100 389 dc2.cloudtech.local."
    )
    login = start(auth_services, samba, dns_server, new_user(samba), extra='site = "branch"\n')
    for _ in range(3):
        assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        assert server_of_last_login(caplog) == "ldap://dc2.cloudtech.local:389"


def test_without_dns_answers_the_listed_servers_serve(
    samba: SambaDomain, auth_services: AuthServices, dns_server: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    login = start(
        auth_services, samba, dns_server, new_user(samba), extra=f'servers = ["{samba.dcs[1].ldaps_url}"]\n'
    )
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED  # no SRV records at all
    assert server_of_last_login(caplog) == samba.dcs[1].ldaps_url


def test_within_a_priority_dcs_are_picked_in_proportion_to_their_weight() -> None:
    """RFC 2782: the lowest priority first; within it a weighted random pick for each login."""
    from appliance.auth.discovery import Target, _rfc2782_order

    targets = [
        Target("a", "192.0.2.1", 389, 0, 10),
        Target("b", "192.0.2.2", 389, 0, 30),
        Target("c", "192.0.2.3", 389, 5, 100),
    ]
    firsts = [_rfc2782_order(targets)[0].name for _ in range(4000)]
    assert {_rfc2782_order(targets)[-1].name for _ in range(100)} == {"c"}
    share = firsts.count("b") / len(firsts)
    assert 0.68 < share < 0.82, share  # 30 / (10 + 30), give or take chance
