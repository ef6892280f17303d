"""SRS for mail sent on to other domains (issue 25): a message from outside that an alias or
`forward_to` sends on leaves with an SRS sender in our domain, so the destination's SPF check
sees us; a bounce to that address comes back and goes on to the original sender; an SRS address
that does not verify is an unknown recipient (never an open relay).

The real `appliance serve` delivers to an aiosmtpd peer that stands for every remote domain (MX
records on the tests' DNS server), which records the envelope it was given."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.dns_server import DNSServer
from tests.support.lines import client_context
from tests.support.queue import Peer, free_port_on, message

PASSWORD = "Srs!Passw0rd"
HASH = hash_password(PASSWORD)
MX = "127.0.0.2"
SRS0 = re.compile(r"^SRS0=[^=]+=[^=]+=origin\.test=alice@example\.test$")


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer()
    yield server
    server.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    started = Peer(MX, free_port_on(MX))
    yield started
    started.stop()


@pytest.fixture
def server(
    appliance: ApplianceFactory, dns_server: DNSServer, peer: Peer, tmp_path: Path
) -> RunningAppliance:
    for domain in ("remote.test", "origin.test"):
        dns_server.add(domain, "MX", "10 mx.remote.test.")
    dns_server.add("mx.remote.test", "A", MX)
    secret = tmp_path / "srs.secret"
    secret.write_text("a secret of the tests\n")
    secret.chmod(0o600)
    body = f"""
[outbound]
resolver = "{dns_server.address}"
smtp_port = {peer.port}
retry_intervals = ["1s"]
srs_domain = "example.test"
srs_secret_file = "{secret}"

[domains."example.test"]
aliases = {{ outside = ["carol@remote.test"] }}
[domains."example.test".accounts]
fwd = {{ password_hash = "{HASH}", forward_to = ["dave@remote.test"], keep_copy = false }}
bob = {{ password_hash = "{HASH}" }}
"""
    return appliance.start(body, listeners=("smtp", "submission"))


@pytest.mark.parametrize("forwarder", ["outside@example.test", "fwd@example.test"])
def test_forwarded_mail_leaves_with_an_srs_sender_and_its_bounce_reaches_the_original_sender(
    server: RunningAppliance, peer: Peer, forwarder: str
) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail("alice@origin.test", [forwarder], message("alice@origin.test", forwarder, "fwd me"))
    [forwarded] = peer.wait_for(1)
    assert SRS0.match(forwarded.sender), forwarded.sender
    # The destination bounces it (RFC 5321 §4.5.5: from the null sender) to the SRS address.
    bounce = message("MAILER-DAEMON@remote.test", forwarded.sender, "Undelivered Mail Returned to Sender")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail("", [forwarded.sender], bounce)
    returned = peer.wait_for(2)[1]
    assert (returned.sender, returned.recipients) == ("<>", ["alice@origin.test"])  # aiosmtpd's null
    assert b"Undelivered Mail Returned to Sender" in returned.data


def test_an_srs_address_that_does_not_verify_is_an_unknown_recipient(
    server: RunningAppliance, peer: Peer
) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.ehlo("bouncer.test")
        client.mail("")
        code, text = client.rcpt("SRS0=AAAA=AB=origin.test=alice@example.test")
    assert (code, text.split()[0]) == (550, b"5.1.1")
    assert "reason=srs_invalid" in server.log()


def test_a_users_own_mail_keeps_its_sender(server: RunningAppliance, peer: Peer) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=15) as client:
        client.starttls(context=client_context(server))
        client.login("bob@example.test", PASSWORD)
        client.sendmail(
            "bob@example.test", ["carol@remote.test"], message("bob@example.test", "carol@remote.test")
        )
    [sent] = peer.wait_for(1)
    assert sent.sender == "bob@example.test"


def test_srs_domain_needs_its_secret_file_and_the_secret_must_be_private(tmp_path: Path) -> None:
    manifest = tmp_path / "appliance.toml"
    head = '[server]\nhostname = "mail.example.test"\n[domains."example.test"]\n[outbound]\nsrs_domain = "example.test"\n'
    manifest.write_text(head)
    alone = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(manifest)], capture_output=True, text=True
    )
    assert alone.returncode == 1
    assert "outbound: srs_domain and srs_secret_file go together" in alone.stdout + alone.stderr
    (tmp_path / "srs.secret").write_text("secret\n")
    (tmp_path / "srs.secret").chmod(0o644)
    manifest.write_text(head + 'srs_secret_file = "srs.secret"\n')
    exposed = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(manifest)], capture_output=True, text=True
    )
    assert exposed.returncode == 1
    assert "outbound.srs_secret_file" in exposed.stdout + exposed.stderr
