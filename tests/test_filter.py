"""Inbound mail hygiene through rspamd (issue 25): a real rspamd (tests/fixtures/rspamd.py) with
its resolver on the tests' loopback DNS server, which serves the SPF, DKIM and DMARC records of
the sending test domains; the real `appliance serve` asks it after DATA, before the 250.

What is checked is what a sending MTA sees (the reply after DATA) and what lands in the Maildirs
(the Authentication-Results field, X-Spam, the Junk folder).
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import subprocess
import sys
import time
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim
import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.clamav import EICAR, SIGNATURE
from tests.fixtures.rspamd import Rspamd
from tests.support.dns_server import DNSServer
from tests.support.lines import client_context
from tests.support.queue import dkim_key
from tests.support.wait import wait_for
from tests.test_metrics import scrape, total

PASSWORD = "Filter!Passw0rd"
HASH = hash_password(PASSWORD)
JOHN, MARY, ANN = "john@example.test", "mary@example.test", "ann@quiet.test"
HOST = "mail.example.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def body(rspamd: Rspamd, on_failure: str = "tempfail") -> str:
    return f"""
[filter]
rspamd = "{rspamd.address}"
timeout = "5s"
on_failure = "{on_failure}"
resolver = "{rspamd.dns.address}"

[domains."example.test"]
[domains."example.test".accounts]
john = {{ password_hash = "{HASH}" }}
mary = {{ password_hash = "{HASH}" }}

[domains."quiet.test"]
filter = false
[domains."quiet.test".accounts]
ann = {{ password_hash = "{HASH}" }}
"""


def publish(dns: DNSServer) -> None:
    """remote.test sends from loopback (SPF pass) with DMARC p=reject; forged.test's SPF names
    another address (SPF fail) and asks for p=reject; signed.test signs (DKIM), no DMARC."""
    if ("remote.test", "TXT") in dns.records:
        return  # published for an earlier test on the same (module's) DNS server
    dns.add("remote.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    dns.add("_dmarc.remote.test", "TXT", '"v=DMARC1; p=reject"')
    dns.add("forged.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    dns.add("_dmarc.forged.test", "TXT", '"v=DMARC1; p=reject"')
    dns.add("signed.test", "TXT", '"v=spf1 ip4:127.0.0.1 ~all"')
    # The client (127.0.0.1) has a reverse name that resolves back to it (iprev pass).
    dns.add("1.0.0.127.in-addr.arpa", "PTR", "mail.remote.test.")
    dns.add("mail.remote.test", "A", "127.0.0.1")


def start(appliance: ApplianceFactory, rspamd: Rspamd, on_failure: str = "tempfail") -> RunningAppliance:
    publish(rspamd.dns)
    return appliance.start(body(rspamd, on_failure), listeners=("smtp", "submission", "imaps"))


def compose(sender: str, subject: str = "hello", text: str = "Hello there.\r\n", to: str = JOHN) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        "Date: Mon, 07 Dec 2026 22:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}.{len(text)}@{sender.rpartition('@')[2]}>\r\n"
        f"\r\n{text}"
    ).encode()


def send(server: RunningAppliance, sender: str, data: bytes, to: str = JOHN) -> tuple[int, str]:
    """MAIL, RCPT, DATA on the MX listener: the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("mail.remote.test")
        client.mail(sender)
        code, _ = client.rcpt(to)
        assert code == 250
        code, text = client.data(data)
        return code, text.decode()


def stored(server: RunningAppliance, address: str = JOHN, folder: str = "") -> list[bytes]:
    local, _, domain = address.partition("@")
    new = server.data_dir / "mail" / domain / local / (f".{folder}" if folder else "") / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def all_messages(server: RunningAppliance) -> list[Path]:
    root = server.data_dir / "mail"
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")]


def header(message: bytes, name: str) -> list[str]:
    return [" ".join(str(v).split()) for v in message_from_bytes(message).get_all(name, [])]


def test_spf_pass_is_delivered_with_authentication_results_and_forged_ones_removed(
    appliance: ApplianceFactory, shared_rspamd: Rspamd
) -> None:
    server = start(appliance, shared_rspamd)
    forged = f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=x@remote.test; dmarc=pass\r\n"
    other = "Authentication-Results: mx.elsewhere.test; spf=fail\r\n"
    code, text = send(server, "a@remote.test", (forged + other).encode() + compose("a@remote.test"))
    assert code == 250, text
    [message] = stored(server)
    results = header(message, "Authentication-Results")
    assert results == [
        f"{HOST}; iprev=pass policy.iprev=127.0.0.1 (mail.remote.test); spf=pass smtp.mailfrom=a@remote.test;"
        " dkim=none; dmarc=pass header.from=remote.test; arc=none",
        "mx.elsewhere.test; spf=fail",
    ]
    assert header(message, "X-Spam") == []
    line = server.wait_for_log(r"scanned id=(\S+) action=no_action score=\S+ symbols=(\d+)")
    assert int(line.group(2)) > 0
    assert f"id={line.group(1)}" in server.wait_for_log(r"delivered id=\S+").group(0)


def test_a_client_whose_reverse_name_does_not_resolve_back_fails_iprev(
    appliance: ApplianceFactory, rspamd: Rspamd
) -> None:
    server = start(appliance, rspamd)
    rspamd.dns.records[("mail.remote.test", "A")] = ["192.0.2.9"]  # the PTR name points elsewhere
    assert send(server, "a@remote.test", compose("a@remote.test"))[0] == 250
    [message] = stored(server)
    assert header(message, "Authentication-Results")[0].startswith(
        f"{HOST}; iprev=fail policy.iprev=127.0.0.1;"
    )


def test_spf_fail_under_dmarc_reject_is_refused_at_data_and_nothing_is_stored(
    appliance: ApplianceFactory, shared_rspamd: Rspamd
) -> None:
    server = start(appliance, shared_rspamd)
    code, text = send(server, "a@forged.test", compose("a@forged.test"))
    assert (code, text.split()[0]) == (550, "5.7.1")
    assert all_messages(server) == []
    server.wait_for_log(r"rejected stage=data reason=spam_rejected code=550")
    server.wait_for_log(r"scanned id=\S+ action=reject ")


def test_dkim_good_signature_passes_and_broken_one_fails(
    appliance: ApplianceFactory, shared_rspamd: Rspamd, tmp_path: Path
) -> None:
    key_file = tmp_path / "signed.pem"
    dkim_key(shared_rspamd.dns, key_file, "s1", domain="signed.test")
    server = start(appliance, shared_rspamd)
    original = compose("a@signed.test", "signed")
    signature = dkim.sign(
        original, b"s1", b"signed.test", key_file.read_bytes(), include_headers=[b"from", b"to", b"subject"]
    )
    assert send(server, "a@signed.test", signature + original)[0] == 250
    broken = signature + original.replace(b"Hello there.", b"Hello, changed.")
    assert send(server, "a@signed.test", broken)[0] == 250
    good, bad = stored(server)
    assert "dkim=pass header.d=signed.test" in header(good, "Authentication-Results")[0]
    assert "dkim=fail header.d=signed.test" in header(bad, "Authentication-Results")[0]
    assert "spf=pass" in header(good, "Authentication-Results")[0]


def test_gtube_is_refused_with_rspamds_message(appliance: ApplianceFactory, shared_rspamd: Rspamd) -> None:
    server = start(appliance, shared_rspamd)
    code, text = send(server, "a@remote.test", compose("a@remote.test", text=f"{GTUBE}\r\n"))
    assert (code, text) == (550, "5.7.1 Gtube pattern")
    assert all_messages(server) == []


def test_eicar_attachment_is_refused_by_clamav_behind_rspamd(
    appliance: ApplianceFactory, shared_rspamd: Rspamd
) -> None:
    server = start(appliance, shared_rspamd)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@remote.test", JOHN, "invoice"
    mail["Date"], mail["Message-ID"] = "Mon, 07 Dec 2026 22:00:00 +0000", "<eicar@remote.test>"
    mail.set_content("See the attachment.\n")
    mail.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="invoice.com")
    code, text = send(server, "a@remote.test", mail.as_bytes(policy=SMTP))
    assert (code, text) == (550, f"5.7.1 Virus found: {SIGNATURE}.UNOFFICIAL")
    assert all_messages(server) == []
    server.wait_for_log(r"rejected stage=data reason=spam_rejected code=550")


def test_spam_is_marked_and_goes_to_junk_where_the_account_has_one(
    appliance: ApplianceFactory, shared_rspamd: Rspamd
) -> None:
    server = start(appliance, shared_rspamd)
    # An IMAP login prepares the special-use folders, Junk among them (john has one, mary not).
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_context(server)) as imap:
        imap.login(JOHN, PASSWORD)
    for to in (JOHN, MARY):
        code, text = send(server, "a@remote.test", compose("a@remote.test", "TEST-SPAM offer", to=to), to=to)
        assert code == 250, text
    assert stored(server, JOHN) == []
    [junk] = stored(server, JOHN, "Junk")
    [inbox] = stored(server, MARY)
    for message in (junk, inbox):
        assert header(message, "X-Spam") == ["Yes"]
        assert header(message, "X-Spam-Action") == ["add header"]
    server.wait_for_log(r"delivered id=\S+ .* folder=Junk")


def test_rewrite_subject_changes_the_subject(appliance: ApplianceFactory, shared_rspamd: Rspamd) -> None:
    server = start(appliance, shared_rspamd)
    assert send(server, "a@remote.test", compose("a@remote.test", "TEST-REWRITE deal"))[0] == 250
    [message] = stored(server)
    assert header(message, "Subject") == ["[SPAM] TEST-REWRITE deal"]
    assert header(message, "X-Spam") == ["Yes"]


def test_soft_reject_is_a_451(appliance: ApplianceFactory, shared_rspamd: Rspamd) -> None:
    server = start(appliance, shared_rspamd)
    code, text = send(server, "a@remote.test", compose("a@remote.test", "TEST-DEFER now"))
    assert (code, text.split()[0]) == (451, "4.7.1")
    assert all_messages(server) == []


def test_domain_with_filter_off_and_submissions_are_not_scanned(
    appliance: ApplianceFactory, shared_rspamd: Rspamd
) -> None:
    server = start(appliance, shared_rspamd)
    gtube = compose("a@remote.test", text=f"{GTUBE}\r\n", to=ANN)
    assert send(server, "a@remote.test", gtube, to=ANN)[0] == 250
    assert len(stored(server, ANN)) == 1
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context(server))
        client.login(JOHN, PASSWORD)
        client.sendmail(JOHN, [MARY], compose(JOHN, text=f"{GTUBE}\r\n", to=MARY))
    [message] = stored(server, MARY)
    assert header(message, "Authentication-Results") == []
    assert "scanned id=" not in server.log()


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
def test_scanner_down_tempfails_or_accepts_and_the_message_is_stored_once(
    appliance: ApplianceFactory, rspamd: Rspamd, on_failure: str
) -> None:
    server = start(appliance, rspamd, on_failure)
    rspamd.stop()
    data = compose("a@remote.test", "while down")
    code, text = send(server, "a@remote.test", data)
    server.wait_for_log(rf"scan failed id=\S+ client=127.0.0.1 error=.* on_failure={on_failure}")
    if on_failure == "tempfail":
        assert (code, text.split()[0]) == (451, "4.3.0")
        assert all_messages(server) == []
        rspamd.start()  # the sender tries again, as a 4xx tells it to
        code, text = send(server, "a@remote.test", data)
        assert code == 250, text
        [message] = stored(server)
        assert "spf=pass" in header(message, "Authentication-Results")[0]
    else:
        assert code == 250, text
        [message] = stored(server)
        assert header(message, "Authentication-Results") == []
    assert len(all_messages(server)) == 1


def test_a_scanner_that_never_answers_is_given_up_after_the_timeout(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    # Something listens where rspamd should be and never answers (a hung rspamd).
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        text = f"""
[filter]
rspamd = "127.0.0.1:{port}"
timeout = "1s"

[domains."example.test"]
[domains."example.test".accounts]
john = {{ password_hash = "{HASH}" }}
"""
        server = appliance.start(text, listeners=("smtp",))
        started = time.monotonic()
        code, reply = send(server, "a@remote.test", compose("a@remote.test"))
        waited = time.monotonic() - started
    assert (code, reply.split()[0]) == (451, "4.3.0")
    assert 1.0 <= waited < 10.0
    assert all_messages(server) == []
    server.wait_for_log(
        r"scan failed id=\S+ client=127.0.0.1 error=\"no answer within 1s\" on_failure=tempfail"
    )


def test_status_shows_the_scanners_health(appliance: ApplianceFactory, rspamd: Rspamd) -> None:
    server = start(appliance, rspamd)

    def scanner() -> dict[str, object] | None:
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "appliance",
                "status",
                "--manifest",
                str(server.manifest),
                "--format",
                "json",
            ],
            capture_output=True,
            check=True,
        )
        value = json.loads(status.stdout)["scanner"]
        return value if isinstance(value, dict) else None

    # No mail yet: the status loop asks rspamd itself (GET /ping).
    pinged = wait_for(lambda: (s := scanner()) and s["last_ok_at"] and s, 10, "scanner pinged")
    assert (pinged["healthy"], pinged["scanned"], pinged["address"]) == (True, 0, rspamd.address)
    assert send(server, "a@remote.test", compose("a@remote.test"))[0] == 250
    wait_for(lambda: (s := scanner()) and s["scanned"] == 1, 10, "one message scanned")
    rspamd.stop()
    assert send(server, "a@remote.test", compose("a@remote.test", "later"))[0] == 451
    down = wait_for(lambda: (s := scanner()) and not s["healthy"] and s, 10, "scanner down in status")
    assert down["failures"] == 1 and down["last_error"]
    text = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--manifest", str(server.manifest)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"scanner:    rspamd {rspamd.address} DOWN" in text


def test_filter_table_is_checked_like_the_rest_of_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n[filter]\nrspamd = "localhost"\non_failure = "maybe"\n'
        '[domains."example.test"]\nfilter = "no"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(manifest)], capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    for problem in ("filter.rspamd:", "filter.on_failure:", 'domains."example.test".filter:'):
        assert problem in output, output


def test_each_verdict_is_counted_in_the_metrics(appliance: ApplianceFactory, shared_rspamd: Rspamd) -> None:
    publish(shared_rspamd.dns)
    server = appliance.start(body(shared_rspamd), listeners=("smtp", "metrics"))
    sent = [
        send(server, "a@remote.test", compose("a@remote.test", text=f"{GTUBE}\r\n"))[0],
        send(server, "a@remote.test", compose("a@remote.test", "TEST-DEFER now"))[0],
        send(server, "a@remote.test", compose("a@remote.test", "plain"))[0],
        send(server, "a@remote.test", compose("a@remote.test", "plain again"))[0],
    ]
    assert sent == [550, 451, 250, 250]
    samples = scrape(server)
    assert total(samples, "appliance_scanner_verdicts_total", action="reject") == 1
    assert total(samples, "appliance_scanner_verdicts_total", action="soft_reject") == 1
    assert total(samples, "appliance_scanner_verdicts_total") == 4
    assert total(samples, "appliance_messages_accepted_total", listener="smtp") == 2
