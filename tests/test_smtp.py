"""The SMTP server, driven through `appliance serve` by real clients over real sockets."""

from __future__ import annotations

import base64
import json
import os
import re
import smtplib
import subprocess
import sys

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context
from tests.support.smtp import (
    DOMAINS,
    JOHN,
    MARY,
    PASSWORD,
    RawClient,
    all_stored,
    connect,
    login,
    maildir,
    message,
    start,
    stored,
)
from tests.support.wait import wait_for


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return start(appliance)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# -- delivery -----------------------------------------------------------------------------------


def test_delivered_message_is_the_sent_bytes_with_lf_ends_after_return_path_and_received(
    server: RunningAppliance,
) -> None:
    body = message("byte for byte", "line one\r\n.dot line\r\n\r\n  spaced \t\r\nlast\r\n")
    with connect(server) as client:
        client.sendmail("a@remote.example", [JOHN], body)
    [path] = stored(server)
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    assert header == b"Return-Path: <a@remote.example>"
    match = re.match(rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\n(\t[^\n]*\n)+", rest)
    assert match, rest[:300]
    received = match.group(0)
    assert b"by mail.example.test (appliance) with ESMTP id " in received
    assert b"for <john@example.test>;" in received
    assert rest[match.end() :] == body.replace(b"\r\n", b"\n")
    # Dovecot's size fields: S= on disk, W= with CRLF line ends.
    wire_size = len(data) + data.count(b"\n")
    assert re.fullmatch(rf".+,S={len(data)},W={wire_size}", path.name)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not os.listdir(maildir(server) / "tmp")


def test_eight_bit_and_smtputf8_mail_is_stored_unchanged(server: RunningAppliance) -> None:
    body = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nÄpfel und Birnen\r\n".encode()
    with connect(server) as client:
        client.sendmail("jörg@bücher.example", [JOHN], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    data = stored(server)[0].read_bytes()
    assert data.startswith("Return-Path: <jörg@xn--bcher-kva.example>\n".encode())
    assert b" with UTF8SMTP id " in data
    assert data.endswith(body.replace(b"\r\n", b"\n"))


def test_one_message_to_several_local_recipients_is_one_file_per_mailbox(server: RunningAppliance) -> None:
    with connect(server) as client:
        refused = client.sendmail("a@remote.example", [JOHN, MARY, "team@example.test"], message("many"))
    assert refused == {}
    [john], [mary] = stored(server, JOHN), stored(server, MARY)
    assert john.read_bytes() == mary.read_bytes()  # alias "team" adds no second copy
    assert b"for <" not in john.read_bytes()  # several recipients: none named in Received


def test_aliases_extra_addresses_plus_addressing_and_catch_all_reach_their_mailboxes(
    server: RunningAppliance,
) -> None:
    with connect(server) as client:
        for address in [
            "sales@example.test",
            "J.Doe@Example.Test",
            "john+news@example.test",
            "x@catchall.test",
        ]:
            client.sendmail("a@remote.example", [address], message(address))
    assert len(stored(server, JOHN)) == 4
    assert stored(server, MARY) == []


def test_upper_case_and_trailing_dot_local_domains_deliver_locally(server: RunningAppliance) -> None:
    client = RawClient(server)
    client.command("EHLO client.example")
    assert client.command("MAIL FROM:<a@remote.example>").startswith("250 2.1.0")
    assert client.command("RCPT TO:<John@EXAMPLE.TEST.>").startswith("250 2.1.5")
    assert client.command("DATA").startswith("354")
    assert client.command(b"Subject: x\r\n\r\nhi\r\n.").startswith("250 2.0.0")
    assert len(stored(server)) == 1


def test_the_log_has_one_key_value_line_per_event_and_never_the_password(server: RunningAppliance) -> None:
    with login(server) as client:
        client.sendmail(JOHN, [MARY], message("logged"))
    server.wait_for_log(
        r"delivered id=\S+ queue=- from=john@example.test to=mary@example.test size=\d+ ms=[\d.]+"
    )
    log = server.log()
    assert re.search(r"connect client=127\.0\.0\.1 listener=submission", log)
    assert re.search(
        r"auth result=accepted login=john@example\.test protocol=smtp listener=submission mechanism=PLAIN "
        r"tls=yes client=127\.0\.0\.1 cause=ok ",
        log,
    )
    assert log.count("auth result=") == 1  # one line per login: the auth service writes none of its own
    assert PASSWORD not in log and plain(JOHN, PASSWORD) not in log
    assert "Subject: logged" not in log


def test_pipelined_commands_get_their_replies_in_order(server: RunningAppliance) -> None:
    client = RawClient(server)
    assert "PIPELINING" in client.command("EHLO client.example")
    client.send(
        b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<john@example.test>\r\n"
        b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<mary@example.test>\r\nDATA\r\n"
    )
    replies = [client.reply() for _ in range(5)]
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354 End d"]
    assert client.command(b"Subject: p\r\n\r\nx\r\n.\r\nQUIT").startswith("250 2.0.0")
    assert client.reply().startswith("221 2.0.0")
    assert len(stored(server, JOHN)) == len(stored(server, MARY)) == 1


# -- EHLO, TLS, AUTH ------------------------------------------------------------------------------


def test_ehlo_offers_auth_only_after_starttls(server: RunningAppliance) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.example")
        for keyword in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "starttls"):
            assert client.has_extn(keyword), keyword
        assert client.esmtp_features["size"] == "25000000"
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN " + plain(JOHN, PASSWORD))[0] == 538
        client.starttls(context=client_context(server))
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 503


def test_plaintext_auth_is_offered_when_the_manifest_allows_it(appliance: ApplianceFactory) -> None:
    server = start(appliance, listeners=("submission",), server_extra="allow_plaintext_auth = true")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("auth")
        client.login(JOHN, PASSWORD)
        client.sendmail(JOHN, [MARY], message("clear"))
    assert b" with ESMTPA id " in stored(server, MARY)[0].read_bytes()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_with_starttls_and_auth_delivers_as_esmtpsa(
    server: RunningAppliance, mechanism: str
) -> None:
    with connect(server, "submission") as client:
        client.user, client.password = JOHN, PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        client.sendmail("j.doe@example.test", [MARY], message("submitted"))
    data = stored(server, MARY)[0].read_bytes()
    assert data.startswith(b"Return-Path: <j.doe@example.test>\n")
    assert re.search(rb"with ESMTPSA id \S+\n\t\(using TLSv1\.[23] with cipher \S+\)", data), data[:400]


def test_submissions_speaks_implicit_tls_with_the_generated_certificate(server: RunningAppliance) -> None:
    with login(server, "submissions") as client:
        client.sendmail(JOHN, [MARY], message("implicit"))
    assert b" with ESMTPSA id " in stored(server, MARY)[0].read_bytes()


def test_a_wrong_password_and_an_unknown_user_get_the_same_535(server: RunningAppliance) -> None:
    client = RawClient(server, "submissions")
    client.command("EHLO client.example")
    wrong = client.command("AUTH PLAIN " + plain(JOHN, "not-the-password"))
    unknown = client.command("AUTH PLAIN " + plain("nobody@example.test", PASSWORD))
    disabled = client.command("AUTH PLAIN " + plain("gone@example.test", PASSWORD))
    assert wrong == unknown == "535 5.7.8 Authentication credentials invalid"
    assert disabled.startswith("421 4.7.0")  # the third failure closes the connection
    assert client.closed()
    assert "not-the-password" not in server.log()


def test_auth_login_and_an_empty_plain_initial_response_are_understood(server: RunningAppliance) -> None:
    client = RawClient(server, "submissions")
    client.command("EHLO client.example")
    assert client.command("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert client.command(base64.b64encode(JOHN.encode())) == "334 UGFzc3dvcmQ6"
    assert client.command(base64.b64encode(PASSWORD.encode())).startswith("235 2.7.0")
    assert client.command("AUTH PLAIN").startswith("503 5.5.1")
    other = RawClient(server, "submissions")
    other.command("EHLO client.example")
    assert other.command("AUTH PLAIN") == "334 "
    assert other.command("*").startswith("501 5.7.0")
    assert other.command("AUTH PLAIN not-base64!").startswith("501 5.5.2")
    assert other.command("AUTH CRAM-MD5").startswith("504 5.5.4")


def test_submission_refuses_mail_before_auth(server: RunningAppliance) -> None:
    for listener in ("submission", "submissions"):
        with connect(server, listener) as client:
            code, text = client.mail(JOHN)
            assert (code, text[:5]) == (530, b"5.7.0"), listener


def test_an_authenticated_user_may_send_only_as_its_own_addresses(server: RunningAppliance) -> None:
    with login(server) as client:
        assert client.mail(MARY)[0] == 553
        assert client.mail("someone@remote.example")[0] == 553
        assert client.mail("")[0] == 553
        assert client.mail("team@example.test")[0] == 250  # an alias it belongs to
        client.rset()
        assert client.mail("J.Doe@example.test")[0] == 250


def test_inbound_smtp_accepts_any_sender_without_auth(server: RunningAppliance) -> None:
    with connect(server) as client:
        for sender in ["", "a@remote.example", MARY]:
            assert client.mail(sender)[0] == 250
            assert client.rcpt(JOHN)[0] == 250
            client.rset()


# -- recipients and relaying ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    ["nobody@example.test", "gone@example.test", "bob@off.test", "nobody+tag@example.test"],
)
def test_unknown_and_disabled_recipients_are_refused_at_rcpt(
    server: RunningAppliance, recipient: str
) -> None:
    with connect(server) as client:
        client.mail("a@remote.example")
        code, text = client.rcpt(recipient)
    assert (code, text[:5]) == (550, b"5.1.1")
    server.wait_for_log(r"rejected stage=rcpt reason=unknown_recipient code=550")


# Each trick names a remote mailbox in a way some old MTA would route on; none may be accepted
# from a client that has not logged in, and nothing may land anywhere.
RELAY_TRICKS = {
    "user%other.test@example.test": 550,  # %-hack: a local part, unknown here
    '"user@other.test"@example.test': 550,  # quoted local part holding an @
    "other.test!user@example.test": 550,  # bang path: a local part, unknown here
    "@example.test:user@other.test": 554,  # source route: the mailbox is user@other.test
    "@example.test,@mail.example.test:user@other.test": 554,
    "user@[127.0.0.1]": 554,  # IP literal
    "user@[IPv6:::1]": 554,
    "user@OTHER.TEST": 554,
    "user@other.test.": 554,
    "user@": 501,  # empty domain
    "user": 501,
    "user@example.test@other.test": 501,
    "user@other.test\\@example.test": 501,
}


@pytest.mark.parametrize("recipient", list(RELAY_TRICKS))
def test_relay_tricks_are_refused_without_auth(server: RunningAppliance, recipient: str) -> None:
    client = RawClient(server)
    client.command("EHLO client.example")
    assert client.command("MAIL FROM:<a@remote.example>").startswith("250")
    reply = client.command(f"RCPT TO:<{recipient}>")
    expected = RELAY_TRICKS[recipient]
    assert reply.startswith(str(expected)), reply
    if expected == 554:
        assert reply.startswith("554 5.7.1") and "Relay access denied" in reply
    assert client.command("DATA").startswith("503")
    assert all_stored(server) == []


def test_a_catch_all_takes_percent_hack_mail_locally_and_never_relays_it(server: RunningAppliance) -> None:
    with connect(server) as client:
        client.sendmail("a@remote.example", ["user%other.test@catchall.test"], message("pct"))
    assert len(stored(server, JOHN)) == 1  # delivered to the catch-all's mailbox, nowhere else


def test_remote_recipients_from_an_authorised_client_go_to_the_outbound_queue(
    appliance: ApplianceFactory,
) -> None:
    # The queue's resolver is a closed loopback port: delivery is deferred, so the messages stay
    # queued (tests/test_queue.py covers delivery itself).
    body = DOMAINS + '\n[outbound]\nresolver = "127.0.0.1:9"\nconnect_timeout = "1s"\n'
    server = start(appliance, server_extra='trusted_networks = ["127.0.0.0/8"]', body=body)
    with login(server) as client:
        client.sendmail(JOHN, ["someone@remote.example"], message("out"))
    with connect(server) as client:  # trusted network, no AUTH
        client.sendmail("a@remote.example", ["other@remote.example", JOHN], message("split"))
    server.wait_for_log(r"queued id=\S+ from=john@example\.test to=someone@remote\.example")
    server.wait_for_log(r"queued id=\S+ from=a@remote\.example to=other@remote\.example ")
    # The split message's local copy was delivered directly, never through the queue.
    [local] = stored(server, JOHN)
    assert b"Subject: split" in local.read_bytes()
    listing = subprocess.run(
        [sys.executable, "-m", "appliance", "queue", "--manifest", str(server.manifest), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert sorted(r for item in json.loads(listing.stdout) for r in item["recipients"]) == [
        "other@remote.example",
        "someone@remote.example",
    ]


# -- limits ------------------------------------------------------------------------------------


def test_size_limits_refuse_with_552_at_mail_rcpt_and_data(server: RunningAppliance) -> None:
    with connect(server) as client:
        code, text = client.mail("a@remote.example", ["SIZE=30000000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.mail("a@remote.example", ["SIZE=2000"])[0] == 250
        code, text = client.rcpt("ann@tiny.test")  # tiny.test takes 1 KB at most
        assert (code, text[:5]) == (552, b"5.3.4")
        client.rset()
        client.mail("a@remote.example")
        client.rcpt("ann@tiny.test")
        code, text = client.data(message("big", "x" * 2000 + "\r\n"))
        assert (code, text[:5]) == (552, b"5.3.4")
        client.sendmail("a@remote.example", ["ann@tiny.test"], message("small"))
    assert len(stored(server, "ann@tiny.test")) == 1


def test_a_full_mailbox_gets_452_4_2_2_and_keeps_its_mail(server: RunningAppliance) -> None:
    small = "small@example.test"
    with connect(server) as client:
        client.sendmail("a@remote.example", [small], message("fits", "x" * 1200 + "\r\n"))
        client.mail("a@remote.example")
        client.rcpt(small)
        code, text = client.data(message("too much", "y" * 1200 + "\r\n"))
        assert (code, text[:5]) == (452, b"4.2.2")
        client.mail("a@remote.example", ["SIZE=1200"])
        code, text = client.rcpt(small)  # the declared size would not fit: refused at RCPT
        assert (code, text[:5]) == (452, b"4.2.2")
    assert len(stored(server, small)) == 1


def test_too_many_recipients_get_452_4_5_3(appliance: ApplianceFactory) -> None:
    server = start(appliance, listeners=("smtp",), limits="max_recipients = 2")
    with connect(server) as client:
        client.mail("a@remote.example")
        assert client.rcpt(JOHN)[0] == 250
        assert client.rcpt(MARY)[0] == 250
        code, text = client.rcpt("j.doe@example.test")
        assert (code, text[:5]) == (452, b"4.5.3")


def test_connections_over_the_per_client_limit_get_421_and_are_closed(appliance: ApplianceFactory) -> None:
    server = start(appliance, listeners=("smtp",), limits="max_connections_per_client = 2")
    first, second = RawClient(server), RawClient(server)
    third = RawClient(server)
    assert first.greeting.startswith("220") and second.greeting.startswith("220")
    assert third.greeting.startswith("421 4.7.0")
    assert third.closed()
    first.command("QUIT")
    first.close()

    def fourth_is_served() -> bool:
        client = RawClient(server)
        served = client.greeting.startswith("220")
        client.close()
        return served

    wait_for(fourth_is_served)


def test_an_idle_client_is_told_421_and_disconnected(appliance: ApplianceFactory) -> None:
    server = start(appliance, listeners=("smtp",), limits="command_timeout = 1")
    client = RawClient(server)
    client.command("EHLO client.example")
    assert client.reply().startswith("421 4.4.2")
    assert client.closed()


def test_an_overlong_command_line_gets_500_5_5_2_and_the_session_goes_on(appliance: ApplianceFactory) -> None:
    server = start(appliance, listeners=("smtp",), limits="max_line_length = 1000")
    client = RawClient(server)
    client.command("EHLO client.example")
    assert client.command("NOOP " + "x" * 5000).startswith("500 5.5.2")
    assert client.command("NOOP").startswith("250 2.0.0")


def test_a_disk_error_gives_451_and_leaves_no_file_in_any_mailbox(server: RunningAppliance) -> None:
    with connect(server) as client:
        client.sendmail("a@remote.example", [MARY], message("first"))  # mary's Maildir exists
        broken = maildir(server, JOHN)
        broken.mkdir(parents=True)
        for sub in ("tmp", "cur"):
            (broken / sub).mkdir()
        (broken / "new").write_text("a file where new/ should be")
        client.mail("a@remote.example")
        client.rcpt(MARY)
        client.rcpt(JOHN)
        code, text = client.data(message("second"))
        assert (code, text[:5]) == (451, b"4.3.0")
    assert len(stored(server, MARY)) == 1  # the copy placed before the error was taken back
    assert os.listdir(broken / "tmp") == [] and os.listdir(maildir(server, MARY) / "tmp") == []
    server.wait_for_log(r"delivery failed id=\S+ client=127\.0\.0\.1")


def test_recipients_follow_a_manifest_reload_without_reconnecting(appliance: ApplianceFactory) -> None:

    server = start(appliance, listeners=("smtp",))
    with connect(server) as client:
        client.mail("a@remote.example")
        assert client.rcpt("newcomer@example.test")[0] == 550
        offset = server.log_size()
        server.write_manifest(DOMAINS.replace("mary = {", "newcomer = {}\nmary = {"))
        server.reload()
        server.wait_for_log(r"manifest (applied|reloaded)", after=offset)
        assert client.rcpt("newcomer@example.test")[0] == 250


# -- external clients ---------------------------------------------------------------------------


def test_swaks_submits_over_starttls_with_auth_login(server: RunningAppliance) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.ports['submission']}", "-tls", "--auth", "LOGIN"]
        + ["--auth-user", JOHN, "--auth-password", PASSWORD, "--from", JOHN, "--to", MARY]
        + ["--header", "Subject: from swaks", "--body", "swaks body"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = stored(server, MARY)[0].read_bytes()
    assert b"Subject: from swaks" in data and b"swaks body" in data


def test_swaks_sees_the_relay_refused(server: RunningAppliance) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.ports['smtp']}", "--from", "a@remote.example"]
        + ["--to", "someone@elsewhere.example", "--quit-after", "RCPT"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "554 5.7.1 <someone@elsewhere.example>: Relay access denied" in result.stdout


def test_curl_sends_over_implicit_tls_with_auth(server: RunningAppliance) -> None:
    mail = b"From: john@example.test\r\nTo: mary@example.test\r\nSubject: curl\r\n\r\nfrom curl\r\n"
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--cacert", str(server.cafile)]
        + ["--resolve", f"mail.example.test:{server.ports['submissions']}:127.0.0.1"]
        + [f"smtps://mail.example.test:{server.ports['submissions']}", "--user", f"{JOHN}:{PASSWORD}"]
        + ["--mail-from", JOHN, "--mail-rcpt", MARY, "--upload-file", "-"],
        input=mail,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stored(server, MARY)[0].read_bytes().endswith(mail.replace(b"\r\n", b"\n"))
