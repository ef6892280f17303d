"""Who gets the domain's DKIM signature (issue 21, item 6): only mail a logged-in user submits
with a From the account may send as. Mail that came in on port 25 and an alias or `forward_to`
sends on leaves unsigned; a logged-in user who puts a colleague's address in From is refused.

The real `appliance serve` delivers to an aiosmtpd peer found through the test's DNS server;
dkimpy verifies what the peer got, with the key record fetched from that DNS server over UDP."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from appliance.auth.passwords import hash_password
from appliance.queue.spool import Envelope, Spool
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.dns_server import DNSServer
from tests.support.lines import client_context
from tests.support.queue import Peer, dkim_key, free_port_on, message

PASSWORD = "Dkim!Passw0rd"
HASH = hash_password(PASSWORD)
ALICE, BOB = "alice@example.test", "bob@example.test"
MX1 = "127.0.0.2"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer()
    yield server
    server.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    started = Peer(MX1, free_port_on(MX1))
    yield started
    started.stop()


@pytest.fixture
def server(
    appliance: ApplianceFactory, dns_server: DNSServer, peer: Peer, tmp_path: Path
) -> RunningAppliance:
    key_file = tmp_path / "dkim.pem"
    dkim_key(dns_server, key_file, "s1")
    dns_server.add("remote.test", "MX", "10 mx1.remote.test.")
    dns_server.add("mx1.remote.test", "A", MX1)
    body = f"""
[outbound]
resolver = "{dns_server.address}"
smtp_port = {peer.port}
retry_intervals = ["1s"]

[domains."example.test"]
aliases = {{ outside = ["carol@remote.test"] }}
[domains."example.test".dkim]
selector = "s1"
key_file = "{key_file}"
[domains."example.test".accounts]
alice = {{ password_hash = "{HASH}" }}
bob = {{ password_hash = "{HASH}" }}
fwd = {{ password_hash = "{HASH}", forward_to = ["dave@remote.test"], keep_copy = false }}
"""
    # No trusted networks: port 25 from 127.0.0.1 is anyone on the internet.
    return appliance.start(body, listeners=("smtp", "submission"))


def submit(server: RunningAppliance, login: str, data: bytes, to: str = "carol@remote.test") -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=15) as client:
        client.starttls(context=client_context(server))
        client.login(login, PASSWORD)
        client.sendmail(login, [to], data)


def verifies(data: bytes, dns_server: DNSServer) -> bool:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=timeout)
        return b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)

    return bool(dkim.verify(data, dnsfunc=lookup))


@pytest.mark.parametrize("forwarder", ["outside@example.test", "fwd@example.test"])
def test_forged_local_from_on_port_25_leaves_through_a_forward_unsigned(
    server: RunningAppliance, peer: Peer, forwarder: str
) -> None:
    forged = message("ceo@example.test", forwarder, "wire the money")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail("ceo@example.test", [forwarder], forged)
    [got] = peer.wait_for(1)
    assert b"wire the money" in got.data
    assert b"DKIM-Signature" not in got.data
    assert "dkim=no" in server.log()


def test_a_logged_in_user_with_an_own_from_leaves_signed(
    server: RunningAppliance, peer: Peer, dns_server: DNSServer
) -> None:
    submit(server, ALICE, message(f"Alice <{ALICE}>", "carol@remote.test", "from alice"))
    [got] = peer.wait_for(1)
    assert got.data.startswith(b"DKIM-Signature: ")
    assert verifies(got.data, dns_server)


def test_a_logged_in_user_with_a_colleagues_from_is_refused_and_nothing_leaves(
    server: RunningAppliance, peer: Peer, dns_server: DNSServer
) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(server, ALICE, message(f"Bob <{BOB}>", "carol@remote.test", "from bob?"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1")
    # A second From address is checked too (RFC 5322 §3.6.2 allows several).
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(server, ALICE, message(f"{ALICE}, {BOB}", "carol@remote.test", "from both"))
    assert refused.value.smtp_code == 550
    # So is a second From field, which the signature would cover (RFC 6376 §5.4.2: bottom-up).
    two_fields = message(ALICE, "carol@remote.test", "two fields").replace(
        b"To:", f"From: {BOB}\r\nTo:".encode(), 1
    )
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(server, ALICE, two_fields)
    assert refused.value.smtp_code == 550
    # What gets through afterwards is Alice's own, signed: nothing of the refused ones was queued.
    submit(server, ALICE, message(ALICE, "carol@remote.test", "own"))
    [got] = peer.wait_for(1)
    assert b"Subject: own" in got.data and verifies(got.data, dns_server)
    assert "reason=from_not_owned" in server.log()


def test_a_logged_in_user_with_a_from_of_another_domain_is_taken_but_not_signed(
    server: RunningAppliance, peer: Peer
) -> None:
    submit(server, ALICE, message("list@elsewhere.test", "carol@remote.test", "foreign"))
    [got] = peer.wait_for(1)
    assert b"Subject: foreign" in got.data and b"DKIM-Signature" not in got.data


def test_a_queue_file_written_before_the_signing_decision_was_kept_is_not_signed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.ensure()
    envelope = Envelope("0001", ALICE, ("carol@remote.test",), 1.0, "127.0.0.1", sign=True)
    spool.write(envelope, b"From: alice@example.test\r\n\r\nhi\r\n")
    assert spool.read_envelope("0001") == Envelope(
        "0001", ALICE, ("carol@remote.test",), 1.0, "127.0.0.1", size=32, sign=True
    )
    old = b'{"id":"0002","sender":"","recipients":["x@remote.test"],"arrived":1.0,"received_from":"bounce"}\n'
    (tmp_path / "0002.msg").write_bytes(old + b"From: alice@example.test\r\n\r\nhi\r\n")
    loaded = spool.read_envelope("0002")
    assert loaded is not None and loaded.sign is False
