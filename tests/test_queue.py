"""Outbound delivery through the real `appliance serve`: mail is submitted over SMTP, queued on
disk, and delivered to SMTP peers (aiosmtpd on other loopback addresses) found through a DNS
server the test runs and the manifest points `[outbound] resolver` at."""

from __future__ import annotations

import json
import re
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from appliance.auth.passwords import hash_password
from appliance.manifest import ManifestError, parse_manifest
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.dns_server import DNSServer
from tests.support.queue import (
    Behaviour,
    Peer,
    delivery_status,
    dkim_key,
    free_port_on,
    mailbox_messages,
    make_certificate,
    message,
    server_context,
)
from tests.support.wait import wait_for

HASH = hash_password("Queue!Passw0rd")
ALICE = "alice@example.test"
TRUSTED = 'trusted_networks = ["127.0.0.1/32"]'
MX1, MX2, MX3 = "127.0.0.2", "127.0.0.3", "127.0.0.4"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer()
    yield server
    server.close()


@pytest.fixture
def port() -> int:
    return free_port_on(MX1, MX2, MX3)


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(host: str, port: int, **options: object) -> Peer:
        peer = Peer(host, port, **options)  # type: ignore[arg-type]
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def manifest(dns_server: DNSServer, port: int, outbound: str = "", domains: str = "") -> str:
    return f"""
[outbound]
resolver = "{dns_server.address}"
smtp_port = {port}
retry_intervals = ["1s"]
{outbound}

[domains."example.test".accounts]
alice = {{ password_hash = "{HASH}" }}
{domains}
"""


def start(appliance: ApplianceFactory, body: str, *, name: str = "appliance") -> RunningAppliance:
    return appliance.start(body, listeners=("smtp",), server_extra=TRUSTED, name=name)


def send(server: RunningAppliance, sender: str, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail(sender, recipients, data)


def queue_cli(server: RunningAppliance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "queue", *args, "--manifest", str(server.manifest)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def queue_files(server: RunningAppliance) -> list[Path]:
    return sorted((server.data_dir / "queue").glob("*.msg"))


def two_mx(dns_server: DNSServer, domain: str = "remote.test") -> None:
    dns_server.add(domain, "MX", f"10 mx1.{domain}.", f"20 mx2.{domain}.")
    dns_server.add(f"mx1.{domain}", "A", MX1)
    dns_server.add(f"mx2.{domain}", "A", MX2)


# -- routing -----------------------------------------------------------------------------------


def test_mail_for_another_domain_goes_to_its_most_preferred_mx(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    first, second = peers(MX1, port), peers(MX2, port)
    server = start(appliance, manifest(dns_server, port))
    data = message(ALICE, "bob@remote.test", "to the best MX")
    send(server, ALICE, ["bob@remote.test"], data)
    [got] = first.wait_for(1)
    assert (got.sender, got.recipients) == (ALICE, ["bob@remote.test"])
    # The message as sent, behind the Received field this server added (RFC 5321 §4.4).
    assert got.data.startswith(b"Received: from ")
    assert b"by mail.example.test (appliance)" in got.data
    assert got.data.endswith(data)
    assert second.received == []
    wait_for(lambda: not queue_files(server), what="the queue file removed after delivery")
    assert re.search(
        r"delivery id=\S+ to=bob@remote.test result=delivered status=2.0.0 remote=mx1", server.log()
    )


def test_bare_carriage_returns_and_nuls_never_reach_the_next_hop(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    """Outbound SMTP smuggling: a next hop that ends lines at a bare CR would read
    "hello<CR>.<CR>MAIL FROM..." as the end of the message and a second one. smtplib mends line
    ends itself, so this client is a bare socket."""
    two_mx(dns_server)
    first = peers(MX1, port)
    server = start(appliance, manifest(dns_server, port))
    smuggled = b"MAIL FROM:<ceo@example.test>\rRCPT TO:<victim@remote.test>\rDATA\rforged\r.\r"
    body = b"Subject: smuggle\r\n\r\nhello\r.\r" + smuggled + b"tail\x00end\r\n"
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=15) as sock:
        replies = sock.makefile("rb")
        for line in (
            b"",
            b"EHLO client.example",
            f"MAIL FROM:<{ALICE}>".encode(),
            b"RCPT TO:<bob@remote.test>",
        ):
            if line:
                sock.sendall(line + b"\r\n")
            while (reply := replies.readline())[3:4] == b"-":
                pass
            assert reply[:1] in (b"2",), reply
        sock.sendall(b"DATA\r\n")
        assert replies.readline().startswith(b"354")
        sock.sendall(body + b".\r\n")
        assert replies.readline().startswith(b"250")
    [got] = first.wait_for(1)
    assert re.search(rb"\r(?!\n)", got.data) is None, got.data
    assert b"\x00" not in got.data
    assert b"hello\r\n.\r\nMAIL FROM:<ceo@example.test>\r\nRCPT TO:" in got.data
    assert got.data.endswith(b"tailend\r\n")
    assert (got.sender, got.recipients) == (ALICE, ["bob@remote.test"])


def test_when_the_preferred_mx_is_down_the_next_one_gets_the_mail(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)  # nothing listens on mx1 (127.0.0.2)
    second = peers(MX2, port)
    server = start(appliance, manifest(dns_server, port))
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test"))
    [got] = second.wait_for(1)
    assert got.recipients == ["bob@remote.test"]
    assert "remote=mx2.remote.test" in server.wait_for_log(
        r"delivery id=\S+ to=bob@remote.test result=delivered[^\n]*"
    ).group(0)


def test_a_domain_without_mx_records_gets_mail_at_its_own_address(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    dns_server.add("plain.test", "A", MX3)  # RFC 5321 §5.1: the implicit MX
    peer = peers(MX3, port)
    server = start(appliance, manifest(dns_server, port))
    send(server, ALICE, ["carol@plain.test"], message(ALICE, "carol@plain.test"))
    [got] = peer.wait_for(1)
    assert got.recipients == ["carol@plain.test"]


def test_recipients_in_different_domains_each_reach_their_own_mx(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    dns_server.add("one.test", "MX", "10 mx.one.test.")
    dns_server.add("mx.one.test", "A", MX1)
    dns_server.add("two.test", "MX", "10 mx.two.test.")
    dns_server.add("mx.two.test", "A", MX2)
    one, two = peers(MX1, port), peers(MX2, port)
    server = start(appliance, manifest(dns_server, port))
    send(server, ALICE, ["a@one.test", "b@two.test", "c@one.test"], message(ALICE, "a@one.test"))
    assert sorted(one.wait_for(1)[0].recipients) == ["a@one.test", "c@one.test"]
    assert two.wait_for(1)[0].recipients == ["b@two.test"]


# -- retries and bounces -----------------------------------------------------------------------


def test_a_temporary_refusal_is_retried_until_the_peer_takes_the_message(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    peer = peers(MX1, port, behaviour=Behaviour(data=["451 4.3.0 busy, try again later"]))
    peers(MX2, port, behaviour=Behaviour(data=["451 4.3.0 also busy"]))
    server = start(appliance, manifest(dns_server, port))
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test"))
    server.wait_for_log(r"delivery id=\S+ to=bob@remote.test result=deferred status=4.3.0 [^\n]*busy")
    [got] = peer.wait_for(1, timeout=20)
    assert got.recipients == ["bob@remote.test"]
    server.wait_for_log(r"queue done id=\S+ delivered=1 failed=0 attempts=2")
    assert mailbox_messages(server.data_dir, ALICE) == []  # no bounce, no warning


def test_a_permanent_refusal_bounces_a_dsn_into_the_local_senders_mailbox(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    peer = peers(MX1, port, behaviour=Behaviour(rcpt={"nobody@remote.test": "550 5.1.1 no such user here"}))
    server = start(appliance, manifest(dns_server, port))
    original = message(ALICE, "bob@remote.test", "a bounce please", "Body that must not come back.\r\n")
    send(server, ALICE, ["bob@remote.test", "nobody@remote.test"], original)
    [got] = peer.wait_for(1)
    assert got.recipients == ["bob@remote.test"]  # the good recipient got it at once
    [dsn] = wait_for(lambda: mailbox_messages(server.data_dir, ALICE), what="a DSN in alice's Maildir")
    assert dsn["Return-Path"] == "<>"
    assert dsn["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.test"
    assert dsn["Auto-Submitted"] == "auto-replied"
    message_fields, *recipients = delivery_status(dsn)
    assert message_fields["reporting-mta"] == "dns; mail.example.test"
    [failed] = recipients
    assert failed["final-recipient"] == "rfc822; nobody@remote.test"
    assert failed["action"] == "failed"
    assert failed["status"] == "5.1.1"
    assert failed["remote-mta"] == "dns; mx1.remote.test"
    assert failed["diagnostic-code"] == "smtp; 550 5.1.1 no such user here"
    headers = next(p for p in dsn.walk() if p.get_content_type() == "text/rfc822-headers")
    text = headers.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "Subject: a bounce please" in text
    assert "Body that must not come back" not in dsn.as_string()
    wait_for(lambda: not queue_files(server), what="the queue emptied")


def test_mail_no_peer_takes_before_its_lifetime_ends_bounces_to_the_sender(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int
) -> None:
    two_mx(dns_server)  # neither MX is up
    body = manifest(dns_server, port, 'max_queue_lifetime = "3s"')
    server = start(appliance, body)
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test", "never arrives"))
    [dsn] = wait_for(lambda: mailbox_messages(server.data_dir, ALICE), timeout=20, what="the expiry DSN")
    [failed] = delivery_status(dsn)[1:]
    assert failed["action"] == "failed"
    assert failed["status"] == "4.4.7"
    assert "delivery time expired" in failed["diagnostic-code"]
    assert "cannot connect to 127.0.0.3" in failed["diagnostic-code"]  # the last host tried
    wait_for(lambda: not queue_files(server), what="the queue emptied")


def test_the_sender_is_told_once_that_delivery_is_delayed(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int
) -> None:
    two_mx(dns_server)
    body = manifest(dns_server, port, 'delay_warning_after = "2s"')
    server = start(appliance, body)
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test", "slow"))
    [dsn] = wait_for(lambda: mailbox_messages(server.data_dir, ALICE), timeout=20, what="a delay DSN")
    [delayed] = delivery_status(dsn)[1:]
    assert delayed["action"] == "delayed"
    assert delayed["status"].startswith("4.")
    assert "will-retry-until" in delayed
    # Still queued and still tried; no second warning.
    attempts = server.log().count("to=bob@remote.test result=deferred")
    wait_for(
        lambda: server.log().count("to=bob@remote.test result=deferred") >= attempts + 2,
        what="two more attempts",
    )
    assert len(mailbox_messages(server.data_dir, ALICE)) == 1
    assert len(queue_files(server)) == 1


def test_a_failure_of_mail_from_the_null_sender_is_never_bounced(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    peers(MX1, port, behaviour=Behaviour(rcpt={"bob@remote.test": "550 5.1.1 gone"}))
    server = start(appliance, manifest(dns_server, port))
    send(server, "", ["bob@remote.test"], message("MAILER-DAEMON@elsewhere.test", "bob@remote.test"))
    server.wait_for_log(r"bounce skipped id=\S+ action=failed reason=null_sender")
    wait_for(lambda: not queue_files(server), what="the queue emptied")
    assert mailbox_messages(server.data_dir, ALICE) == []


def test_a_domain_that_does_not_exist_bounces_at_once(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int
) -> None:
    server = start(appliance, manifest(dns_server, port))
    send(server, ALICE, ["bob@no-such-domain.test"], message(ALICE, "bob@no-such-domain.test"))
    [dsn] = wait_for(lambda: mailbox_messages(server.data_dir, ALICE), what="the DSN")
    [failed] = delivery_status(dsn)[1:]
    assert failed["status"] == "5.1.2"
    assert "does not exist" in failed["diagnostic-code"]


def test_a_bounce_for_a_remote_sender_is_queued_to_that_sender_with_the_null_sender(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    dns_server.add("sender.test", "MX", "10 mx.sender.test.")
    dns_server.add("mx.sender.test", "A", MX3)
    peers(MX1, port, behaviour=Behaviour(rcpt={"bob@remote.test": "550 5.1.1 gone"}))
    home = peers(MX3, port)
    server = start(appliance, manifest(dns_server, port))
    send(server, "web@sender.test", ["bob@remote.test"], message("web@sender.test", "bob@remote.test"))
    [dsn] = home.wait_for(1)
    assert (dsn.sender, dsn.recipients) == ("<>", ["web@sender.test"])  # aiosmtpd writes <> for it
    assert b"report-type=delivery-status" in dsn.data


# -- durability and the queue command ----------------------------------------------------------


def test_mail_queued_before_a_restart_is_delivered_after_it(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    body = manifest(dns_server, port).replace('retry_intervals = ["1s"]', 'retry_intervals = ["1h"]')
    server = start(appliance, body)
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test", "survives"))
    server.wait_for_log(r"queue deferred id=\S+ pending=1 attempts=1")
    assert server.stop() == 0
    assert len(queue_files(server)) == 1
    peer = peers(MX1, port)
    again = start(appliance, body)  # the same directory, so the same data_dir
    assert again.data_dir == server.data_dir
    again.wait_for_log(r"queue started messages=1 ")
    assert queue_cli(again, "flush").returncode == 0  # the 1 h retry interval would wait otherwise
    [got] = peer.wait_for(1)
    assert b"Subject: survives" in got.data
    wait_for(lambda: not queue_files(again), what="the queue emptied")


def test_queue_command_lists_waiting_mail_and_flush_and_delete_act_on_it(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    body = manifest(dns_server, port).replace('retry_intervals = ["1s"]', 'retry_intervals = ["1h"]')
    server = start(appliance, body)
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test", "keep"))
    send(server, ALICE, ["eve@remote.test"], message(ALICE, "eve@remote.test", "drop"))
    wait_for(lambda: server.log().count("queue deferred id=") >= 2, what="two deferred messages")
    listing = queue_cli(server, "--format", "json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["recipients"][0]: row for row in json.loads(listing.stdout)}
    assert set(rows) == {"bob@remote.test", "eve@remote.test"}
    assert rows["bob@remote.test"]["sender"] == ALICE
    assert rows["bob@remote.test"]["attempts"] == 1
    assert "cannot connect" in rows["bob@remote.test"]["last_error"]
    text = queue_cli(server).stdout
    assert rows["eve@remote.test"]["id"] in text and "attempts: 1, next try in" in text
    deleted = queue_cli(server, "delete", rows["eve@remote.test"]["id"])
    assert deleted.returncode == 0, deleted.stderr
    assert queue_cli(server, "delete", "0000NOSUCHID").returncode == 1
    peer = peers(MX1, port)
    flushed = queue_cli(server, "flush")
    assert "retries every waiting message now" in flushed.stdout
    [got] = peer.wait_for(1)
    assert got.recipients == ["bob@remote.test"]
    wait_for(lambda: queue_cli(server).stdout.strip() == "The queue is empty.", what="an empty listing")
    assert len(peer.received) == 1  # the deleted message never went out


def test_connections_to_one_destination_stay_within_the_limit(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer]
) -> None:
    two_mx(dns_server)
    peer = peers(MX1, port, behaviour=Behaviour(delay=0.3))
    server = start(appliance, manifest(dns_server, port, "connections_per_destination = 2"))
    for number in range(6):
        send(server, ALICE, [f"user{number}@remote.test"], message(ALICE, f"user{number}@remote.test"))
    peer.wait_for(6, timeout=30)
    assert peer.max_concurrent == 2


# -- TLS, smarthost, DKIM ----------------------------------------------------------------------


def test_starttls_is_used_when_a_peer_offers_it_even_with_an_untrusted_certificate(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    two_mx(dns_server)
    cert, key = make_certificate(tmp_path, "someone-else.test")
    peer = peers(MX1, port, tls_context=server_context(cert, key))
    server = start(appliance, manifest(dns_server, port))
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test"))
    [got] = peer.wait_for(1)
    assert got.tls


def test_a_domain_that_requires_tls_gets_mail_only_over_verified_tls(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    dns_server.add("secure.test", "MX", "10 mx.secure.test.")
    dns_server.add("mx.secure.test", "A", MX1)
    dns_server.add("clear.test", "MX", "10 mx.clear.test.")
    dns_server.add("mx.clear.test", "A", MX2)
    cert, key = make_certificate(tmp_path, "mx.secure.test")
    secure = peers(MX1, port, tls_context=server_context(cert, key))
    clear = peers(MX2, port)  # offers no STARTTLS
    outbound = f'require_tls_domains = ["secure.test", "clear.test"]\ntls_ca_file = "{cert}"'
    server = start(appliance, manifest(dns_server, port, outbound))
    send(server, ALICE, ["bob@secure.test", "bob@clear.test"], message(ALICE, "bob@secure.test"))
    [got] = secure.wait_for(1)
    assert got.tls and got.recipients == ["bob@secure.test"]
    server.wait_for_log(r"to=bob@clear.test result=deferred status=4.7.4 [^\n]*does not offer STARTTLS")
    assert clear.received == []


def test_a_required_tls_peer_with_a_certificate_for_another_name_gets_nothing(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    dns_server.add("secure.test", "MX", "10 mx.secure.test.")
    dns_server.add("mx.secure.test", "A", MX1)
    cert, key = make_certificate(tmp_path, "impostor.test")
    impostor = peers(MX1, port, tls_context=server_context(cert, key))
    outbound = f'require_tls_domains = ["secure.test"]\ntls_ca_file = "{cert}"'
    server = start(appliance, manifest(dns_server, port, outbound))
    send(server, ALICE, ["bob@secure.test"], message(ALICE, "bob@secure.test"))
    server.wait_for_log(
        r"to=bob@secure.test result=deferred status=4.7.5 [^\n]*TLS with mx.secure.test failed"
    )
    assert impostor.received == []


def test_a_smarthost_gets_all_mail_after_starttls_and_auth(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path, "relay.provider.test")
    relay_port = free_port_on("127.0.0.1")
    relay = peers(
        "127.0.0.1", relay_port, tls_context=server_context(cert, key), logins={"appliance": "Relay!Secret"}
    )
    (tmp_path / "relay-password").write_text("Relay!Secret\n")
    outbound = (
        f'relay_host = "127.0.0.1:{relay_port}"\nrelay_user = "appliance"\n'
        f'relay_password_file = "{tmp_path / "relay-password"}"\nrelay_tls = "opportunistic"'
    )
    server = start(appliance, manifest(dns_server, port, outbound))
    send(server, ALICE, ["bob@remote.test", "x@elsewhere.test"], message(ALICE, "bob@remote.test"))
    [got] = relay.wait_for(1)
    assert sorted(got.recipients) == ["bob@remote.test", "x@elsewhere.test"]
    assert got.tls and got.login == "appliance"
    assert dns_server.queries == []  # no MX lookup: the smarthost takes everything
    assert "Relay!Secret" not in server.log()


def test_outgoing_mail_of_a_domain_with_a_dkim_key_carries_a_valid_signature(
    appliance: ApplianceFactory, dns_server: DNSServer, port: int, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    key_file = tmp_path / "dkim.pem"
    dkim_key(dns_server, key_file, "s2024")
    two_mx(dns_server)
    peer = peers(MX1, port)
    domains = f'[domains."example.test".dkim]\nselector = "s2024"\nkey_file = "{key_file}"\n'
    body = manifest(dns_server, port).replace(
        '[domains."example.test".accounts]', domains + '[domains."example.test".accounts]'
    )
    server = start(appliance, body)
    send(server, ALICE, ["bob@remote.test"], message(ALICE, "bob@remote.test", "signed"))
    [got] = peer.wait_for(1)
    assert got.data.startswith(b"DKIM-Signature: ")
    assert b"d=example.test" in got.data[:600] and b"s=s2024" in got.data[:600]

    # Verified by dkimpy's verifier, which looks the key up through the test's DNS server over
    # real UDP (the same record a receiving MTA would fetch).
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=timeout)
        return b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)

    assert dkim.verify(got.data, dnsfunc=lookup)
    tampered = got.data.replace(b"Subject: signed", b"Subject: changed")
    assert not dkim.verify(tampered, dnsfunc=lookup)


# -- the manifest ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('relay_password = "x"', "outbound.relay_password: a password is never written in the manifest"),
        ('relay_host = "smtp.example.net:587"\nrelay_user = "me"', "relay_user needs relay_password_file"),
        ('relay_tls = "sometimes"', 'outbound.relay_tls: must be "required", "opportunistic" or "none"'),
        ("retry_intervals = []", "outbound.retry_intervals: must have at least 1 item"),
        (
            'require_tls_domains = ["not a domain"]',
            'outbound.require_tls_domains[0]: "not a domain" is not a fully qualified domain name',
        ),
    ],
)
def test_outbound_settings_that_cannot_work_are_refused_with_their_place(table: str, expected: str) -> None:
    text = f'[server]\nhostname = "mail.example.test"\n\n[outbound]\n{table}\n'
    with pytest.raises(ManifestError) as raised:
        parse_manifest(text.encode(), "appliance.toml")
    assert any(expected in line for line in raised.value.lines()), raised.value.lines()
