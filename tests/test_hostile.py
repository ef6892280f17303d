"""Attacks and faults against a real `appliance serve`: bans, slow and huge clients, STARTTLS
injection, kill -9 under load, a full disk. (Fuzzing: test_fuzz.py; the soak: test_soak.py.)"""

from __future__ import annotations

import base64
import os
import random
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import LineClient, ListenerClient, client_context
from tests.support.pop3 import RawClient as POP3Client
from tests.support.smtp import DOMAINS, JOHN, PASSWORD, stored
from tests.support.smtp import RawClient as SMTPClient
from tests.support.wait import wait_for

BAN = """
[security.auto_ban]
max_failures = 3
window = "10 min"
ban_time = "10 min"
allow_networks = ["127.0.0.3/32"]
"""


def open_socket(server: RunningAppliance, listener: str, source: str = "127.0.0.1") -> ListenerClient:
    """A connection to `listener` from the loopback address `source` (127.0.0.0/8 is all ours)."""
    return ListenerClient(server, listener, source=source)


def pop3_fail_login(server: RunningAppliance, source: str) -> bytes:
    """One failed POP3 login (USER/PASS, plaintext allowed by the manifest); the greeting."""
    client = POP3Client(server, source=source)
    try:
        if client.greeting.startswith(b"+OK"):
            assert client.command(f"USER {JOHN}").startswith(b"+OK")
            assert client.command("PASS wrong-password").startswith(b"-ERR [AUTH]")
        return client.greeting
    finally:
        client.close()


def test_an_address_that_keeps_failing_is_banned_from_every_protocol_and_others_still_get_in(
    appliance: ApplianceFactory,
) -> None:
    server = appliance.start(
        DOMAINS + BAN, listeners=("smtp", "pop3"), server_extra="allow_plaintext_auth = true"
    )
    for _ in range(3):
        assert pop3_fail_login(server, "127.0.0.2").startswith(b"+OK")
    server.wait_for_log(r"banned client=127\.0\.0\.2")

    # The banned address: POP3 gets -ERR and is closed; SMTP gets 421 and is closed.
    pop3 = POP3Client(server, source="127.0.0.2")
    assert pop3.greeting.startswith(b"-ERR")
    assert pop3.readline() == b""
    pop3.close()
    smtp = SMTPClient(server, source="127.0.0.2")
    assert smtp.greeting.startswith("421 4.7.0")
    assert smtp.readline() == b""
    smtp.close()

    # Anybody else is served as usual, and the right password still works from elsewhere.
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        assert client.ehlo()[0] == 250
        client.login(JOHN, PASSWORD)
    log = server.log()
    assert "wrong-password" not in log and PASSWORD not in log


def test_an_allowed_network_is_never_banned(appliance: ApplianceFactory) -> None:
    server = appliance.start(DOMAINS + BAN, listeners=("pop3",), server_extra="allow_plaintext_auth = true")
    for _ in range(6):
        assert pop3_fail_login(server, "127.0.0.3").startswith(b"+OK")
    assert "banned client=127.0.0.3" not in server.log()


def test_smtp_commands_pipelined_with_starttls_are_discarded(appliance: ApplianceFactory) -> None:
    server = appliance.start(DOMAINS, listeners=("submission",))
    client = SMTPClient(server, "submission")
    assert client.greeting.startswith("220")
    assert "STARTTLS" in client.command("EHLO client.example")
    # RFC 3207 §4.2 / CVE-2011-0411: what follows STARTTLS in the same packet travels in clear
    # and must not be executed after the handshake.
    plain = base64.b64encode(f"\0{JOHN}\0{PASSWORD}".encode()).decode()
    client.send(f"STARTTLS\r\nAUTH PLAIN {plain}\r\n")
    assert client.reply().startswith("220")
    client.wrap(client_context(server))
    assert client.command("EHLO client.example").startswith("250")  # EHLO's reply, not the AUTH's
    # Had the injected AUTH run, this MAIL would be accepted; unauthenticated, it is refused.
    assert client.command("MAIL FROM:<john@example.test>").startswith("530")
    client.close()


REFUSED_GREETING = {"smtp": b"421 4.7.0", "pop3": b"-ERR [SYS/TEMP]", "imap": b"* BYE [UNAVAILABLE]"}


@pytest.mark.parametrize("listener", ["smtp", "pop3", "imap"])
def test_connections_over_the_per_client_and_overall_limits_are_refused_and_closed(
    appliance: ApplianceFactory, listener: str
) -> None:
    server = appliance.start(
        DOMAINS, listeners=(listener,), limits="max_connections = 3\nmax_connections_per_client = 2"
    )
    held = [open_socket(server, listener) for _ in range(2)]
    assert all(not client.readline().startswith(REFUSED_GREETING[listener]) for client in held)
    third = open_socket(server, listener)  # a third from the same address
    assert third.readline().startswith(REFUSED_GREETING[listener])
    assert third.readline() == b""
    third.close()
    other = open_socket(server, listener, "127.0.0.2")  # another address: the third of three
    assert not other.readline().startswith(REFUSED_GREETING[listener])
    fourth = open_socket(server, listener, "127.0.0.3")  # over the overall limit
    assert fourth.readline().startswith(REFUSED_GREETING[listener])
    fourth.close()
    for client in [*held, other]:
        client.close()

    def served() -> bool:
        again = open_socket(server, listener)
        refused = again.readline().startswith(REFUSED_GREETING[listener])
        again.close()
        return not refused

    wait_for(served, 10, "the address served again once its connections closed")
    server.wait_for_log(r"reason=max_connections_per_client")


def trickle(sock: socket.socket, text: bytes, interval: float, bound: float) -> float:
    """Send `text` a byte at a time; seconds until the server closes (bounded by `bound`)."""
    started = time.monotonic()
    sock.settimeout(interval)
    for byte in text:
        if time.monotonic() - started > bound:
            break
        try:
            sock.sendall(bytes([byte]))
            data = sock.recv(4096)
            if data == b"" or data.startswith((b"421", b"-ERR")):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"still connected after {bound}s of trickling")


def test_a_client_trickling_a_command_a_byte_at_a_time_is_cut_off(appliance: ApplianceFactory) -> None:
    server = appliance.start(
        DOMAINS,
        listeners=("smtp", "pop3"),
        limits='command_timeout = "2s"\npop3_idle_timeout = "2s"',
    )
    smtp = SMTPClient(server)
    assert smtp.greeting.startswith("220")
    pop3 = POP3Client(server)
    assert pop3.greeting.startswith(b"+OK")
    # Each byte arrives well within the timeout; the line never ends.
    assert trickle(smtp.sock, b"EHLO " + b"x" * 200, 0.3, bound=10) < 5
    assert trickle(pop3.sock, b"USER " + b"x" * 200, 0.3, bound=10) < 5
    smtp.close()
    pop3.close()


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# What each protocol answers to a line that is too long, and a command that shows the session goes on.
AFTER_LONG_LINE = {
    "smtp": (b"500 5.5.2", b"NOOP\r\n", b"250"),
    "pop3": (b"-ERR", b"CAPA\r\n", b"+OK"),
    "imap": (b"A" * 64 + b" BAD", b"a1 NOOP\r\n", b"a1 OK"),  # RFC 3501 §7.1.3: the tag, if any
}


@pytest.mark.parametrize("listener", ["smtp", "pop3", "imap"])
def test_a_quarter_gigabyte_line_is_refused_without_being_buffered(
    appliance: ApplianceFactory, listener: str
) -> None:
    server = appliance.start(DOMAINS, listeners=(listener,))
    before = peak_rss_mb(server.process.pid)
    client = open_socket(server, listener)
    client.readline()
    chunk = b"A" * (1 << 20)
    for _ in range(256):
        client.send(chunk)
    client.send(b"\r\n")
    refused, command, accepted = AFTER_LONG_LINE[listener]
    reply = client.readline(65536)
    assert reply.startswith(refused), reply[:200]
    client.send(command)  # the session goes on
    assert client.readline().startswith(accepted)
    client.close()
    assert peak_rss_mb(server.process.pid) - before < 32
    assert "Traceback" not in server.log()


# -- kill -9 under load --------------------------------------------------------------------------

END = "END-OF-MESSAGE"


def kill_round(server: RunningAppliance, round_number: int, senders: int = 4) -> set[str]:
    """SMTP load from `senders` threads until the server is killed; the subjects that got 250."""
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = time.monotonic() + 10

    def send(thread: int) -> None:
        for attempt in range(1000):
            if time.monotonic() > stop:
                return
            try:
                with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as client:
                    for index in range(1000):
                        subject = f"k9-{round_number}-{thread}-{attempt}-{index}"
                        body = f"Subject: {subject}\r\n\r\n" + "line of text\r\n" * 200 + END + "\r\n"
                        client.sendmail("load@remote.example", [JOHN], body)
                        with lock:
                            acknowledged.add(subject)
            except (OSError, smtplib.SMTPException):
                return  # the server is gone

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    time.sleep(random.uniform(0.5, 1.5))  # a random moment under load: when the kill falls
    server.process.kill()  # SIGKILL: no cleanup, no flush
    server.process.wait(10)
    for thread in threads:
        thread.join(15)
    return acknowledged


def stored_subjects(server: RunningAppliance) -> Iterator[tuple[str, bytes]]:
    root = server.data_dir / "mail" / "example.test" / "john"
    for sub in ("new", "cur"):
        for path in (root / sub).iterdir():
            data = path.read_bytes()
            match = re.search(rb"^Subject: (\S+)$", data, re.MULTILINE)
            yield (match.group(1).decode() if match else "?"), data


def test_kill_9_under_smtp_load_loses_no_acknowledged_message_and_stores_none_twice(
    appliance: ApplianceFactory,
) -> None:
    rounds, acknowledged_total, stored_total = 3, 0, 0
    acknowledged: set[str] = set()
    server = appliance.start(DOMAINS, listeners=("smtp",))
    for number in range(rounds):
        acknowledged |= kill_round(server, number)
        # A delivery cut short before its rename: what a crash leaves in tmp/.
        tmp = server.data_dir / "mail" / "example.test" / "john" / "tmp"
        leftover = tmp / f"crash-{number}"
        leftover.write_bytes(b"Subject: half\n\nwritten")
        os.utime(leftover, (time.time() - 60, time.time() - 60))
        offset = 0
        server = appliance.start(DOMAINS, listeners=("smtp",), wait=True)
        server.wait_for_log(r"tmp cleanup removed=\d+", after=offset)
        assert list(tmp.iterdir()) == []

    counts = Counter(subject for subject, _ in stored_subjects(server))
    for subject, data in stored_subjects(server):
        assert data.rstrip(b"\n").endswith(END.encode()), f"{subject} is incomplete"
    duplicates = [s for s, n in counts.items() if n > 1]
    lost = sorted(acknowledged - set(counts))
    acknowledged_total, stored_total = len(acknowledged), sum(counts.values())
    print(
        f"kill -9: {rounds} rounds, {acknowledged_total} acknowledged, {stored_total} stored, "
        f"{len(lost)} lost, {len(duplicates)} duplicated"
    )
    assert acknowledged_total > 50, "too little load to prove anything"
    assert lost == [] and duplicates == []
    # Stored but never acknowledged is allowed (the 250 was lost with the process); the client
    # resends those under a new subject here, so they are not duplicates either.


# -- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs where the appliance's data_dir ("var") will be."""
    var = tmp_path / "appliance" / "var"
    var.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(var)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs (the test needs root): {result.stderr.strip()}")
    try:
        yield var
    finally:
        subprocess.run(["umount", "-l", str(var)], check=False)


def test_a_full_disk_gives_452_keeps_every_mailbox_whole_and_recovers(
    appliance: ApplianceFactory, small_disk: Path
) -> None:
    server = appliance.start(DOMAINS, listeners=("smtp",))
    assert server.data_dir == small_disk
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(0, free - 400_000))
    body = "Subject: fill\r\n\r\n" + ("x" * 76 + "\r\n") * 1000 + END + "\r\n"  # ~78 KB
    codes = []
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        for _ in range(20):
            try:
                client.sendmail("a@remote.example", [JOHN], body)
                codes.append(250)
            except smtplib.SMTPDataError as error:
                codes.append(error.smtp_code)
                assert error.smtp_error.startswith(b"4.3.1"), error.smtp_error
                break
    assert codes[-1] == 452 and 250 in codes, codes
    root = server.data_dir / "mail" / "example.test" / "john"
    assert list((root / "tmp").iterdir()) == []  # the failed write left nothing behind
    for path in stored(server, JOHN):
        assert path.read_bytes().rstrip(b"\n").endswith(END.encode())
    server.wait_for_log(r'delivery failed .*error="?No space left on device')

    filler.unlink()  # space comes back: mail flows again, on the same connection and new ones
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail("a@remote.example", [JOHN], body)
    assert len(stored(server, JOHN)) == codes.count(250) + 1


def test_tls_below_1_2_is_refused(appliance: ApplianceFactory) -> None:
    server = appliance.start(DOMAINS, listeners=("submissions",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.minimum_version = ssl.TLSVersion.TLSv1
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError)):
        LineClient(server.ports["submissions"], tls=context).readline()
