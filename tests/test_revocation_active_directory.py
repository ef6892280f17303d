"""Sessions that follow the directory and the manifest: a real Samba AD DC, a running
`appliance serve`, real clients. For each trigger, an IMAP session in IDLE, an IMAP session between
commands, a POP3 session with a DELE pending and an authenticated SMTP session all end within the
directory's recheck_interval (or at once, for a reload), and the POP3 deletion is not applied."""

from __future__ import annotations

import base64
import smtplib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.samba import NETBIOS, SambaDomain

PASSWORD = "Revoke!Passw0rd1"
SERVICE_PASSWORD = "Svc!Revoke0rd1"
INTERVAL = 1.0
MARGIN = 6.0  # seconds past the interval a session may take to end on a loaded machine


def new_user(samba: SambaDomain, prefix: str, password: str = PASSWORD) -> str:
    user = f"{prefix}{int(time.time() * 1000) % 100_000_000}"
    samba.add_user(user, password)
    return user


def manifest(samba: SambaDomain, service: str, user: str, *, account: str = "", domain: str = "") -> str:
    return (
        '[directories."cloudtech.local"]\ntype = "active-directory"\n'
        f'servers = ["{samba.dcs[0].ldaps_url}"]\nnetbios_name = "{NETBIOS}"\nca_file = "tls/ca.pem"\n'
        f'bind_dn = "{service}@cloudtech.local"\nbind_password_file = "service.secret"\n'
        f"recheck_interval = {INTERVAL}\n"
        f'[domains."example.test"]\n{domain}\n'
        '[domains."example.test".accounts]\n'
        f'john = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }}{account} }}\n'
    )


def start(appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path, body: str) -> RunningAppliance:
    directory = tmp_path / "appliance"
    (directory / "tls").mkdir(parents=True, exist_ok=True)
    (directory / "tls" / "ca.pem").write_bytes(samba.ca_file.read_bytes())
    (directory / "service.secret").write_text(SERVICE_PASSWORD + "\n")
    return appliance.start(
        body, listeners=("smtp", "imap", "pop3", "submission"), server_extra="allow_plaintext_auth = true"
    )


class Line:
    """A bare socket reading lines (IMAP, POP3), with a deadline per read."""

    def __init__(self, server: RunningAppliance, listener: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.ports[listener]), timeout=30)
        self.buffer = b""
        self.greeting = self.read()

    def read(self, timeout: float = 30.0) -> bytes:
        """One line; b"" when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def command(self, text: str, tag: str = "") -> bytes:
        self.send(text)
        for _ in range(100):
            line = self.read()
            if not tag or line.startswith(tag.encode() + b" ") or not line:
                return line
        raise AssertionError("no answer")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Sessions:
    idle: Line
    between: Line
    pop3: Line
    smtp: smtplib.SMTP


def open_sessions(server: RunningAppliance) -> Sessions:
    idle = Line(server, "imap")
    assert idle.command(f'a LOGIN john@example.test "{PASSWORD}"', "a").startswith(b"a OK")
    assert idle.command("b SELECT INBOX", "b").startswith(b"b OK")
    idle.send("c IDLE")
    assert idle.read().startswith(b"+ ")
    between = Line(server, "imap")
    assert between.command(f'a LOGIN john@example.test "{PASSWORD}"', "a").startswith(b"a OK")
    pop3 = Line(server, "pop3")
    plain = base64.b64encode(f"\0john@example.test\0{PASSWORD}".encode()).decode()
    assert pop3.command(f"AUTH PLAIN {plain}").startswith(b"+OK")
    assert pop3.command("DELE 1").startswith(b"+OK")
    smtp = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
    smtp.ehlo("client.example")
    smtp.login("john@example.test", PASSWORD)
    return Sessions(idle, between, pop3, smtp)


def assert_all_end(sessions: Sessions, within: float) -> dict[str, bytes]:
    """Every session ends within `within` seconds; what each said last."""
    deadline = time.monotonic() + within
    said: dict[str, bytes] = {}
    for name, line in (("idle", sessions.idle), ("between", sessions.between), ("pop3", sessions.pop3)):
        last = b""
        for _ in range(50):
            got = line.read(max(0.1, deadline - time.monotonic()))
            if not got:
                break
            last = got
        said[name] = last
        line.close()
    # SMTP: the next command is refused with 421 and nothing more is accepted.
    code, text = sessions.smtp.docmd("NOOP")
    said["smtp"] = f"{code} {text.decode()}".encode()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        sessions.smtp.mail("john@example.test")
    return said


def put_message(server: RunningAppliance) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.sendmail("a@remote.example", ["john@example.test"], b"Subject: keep me\r\n\r\nHello.\r\n")


def mailbox_files(server: RunningAppliance) -> list[Path]:
    root = server.data_dir / "mail" / "example.test" / "john"
    return [p for sub in ("new", "cur") for p in (root / sub).glob("*") if p.is_file()]


TRIGGERS: dict[str, Callable[[SambaDomain, RunningAppliance, str, str], None]] = {
    "disabled_in_directory": lambda samba, server, user, service: samba.samba_tool("user", "disable", user),
    "password_changed": lambda samba, server, user, service: samba.set_password(user, "Other!Passw0rd2"),
    "locked_out": lambda samba, server, user, service: (
        [samba.dcs[0].bind(user, "Wrong!x1") for _ in range(3)] and None
    ),
    "deleted_in_directory": lambda samba, server, user, service: samba.samba_tool("user", "delete", user),
    "relinked_in_manifest": lambda samba, server, user, service: server.write_manifest(
        manifest(samba, service, new_user(samba, "other"))
    ),
    "disabled_in_manifest": lambda samba, server, user, service: server.write_manifest(
        manifest(samba, service, user, account=", enabled = false")
    ),
    "domain_disabled": lambda samba, server, user, service: server.write_manifest(
        manifest(samba, service, user, domain="enabled = false")
    ),
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_every_session_of_the_account_ends_when_it_is_no_longer_allowed(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path, trigger: str
) -> None:
    service, user = new_user(samba, "svc", SERVICE_PASSWORD), new_user(samba, "rv")
    server = start(appliance, samba, tmp_path, manifest(samba, service, user))
    put_message(server)
    sessions = open_sessions(server)
    started = time.monotonic()
    TRIGGERS[trigger](samba, server, user, service)
    said = assert_all_end(sessions, INTERVAL + MARGIN)
    took = time.monotonic() - started
    assert said["idle"].startswith(b"* BYE"), said
    assert said["between"].startswith(b"* BYE"), said
    assert said["pop3"].startswith(b"-ERR [AUTH]"), said
    assert said["smtp"].startswith(b"421 4.7.0"), said
    assert len(mailbox_files(server)) == 1  # the POP3 DELE was never applied
    reason = "disabled_in_manifest" if trigger == "domain_disabled" else trigger
    server.wait_for_log(rf"session revoked login=john@example\.test protocol=imap client=\S+ reason={reason}")
    print(f"{trigger}: all four sessions ended {took:.1f} s after the change")


def test_the_new_password_logs_in_at_once_after_a_reset(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    service, user = new_user(samba, "svc", SERVICE_PASSWORD), new_user(samba, "rs")
    server = start(appliance, samba, tmp_path, manifest(samba, service, user))
    put_message(server)
    imap = Line(server, "imap")
    assert imap.command(f'a LOGIN john@example.test "{PASSWORD}"', "a").startswith(b"a OK")
    samba.set_password(user, "Reset!Passw0rd3")
    assert imap.read(INTERVAL + MARGIN).startswith(b"* BYE")
    again = Line(server, "imap")
    assert again.command('a LOGIN john@example.test "Reset!Passw0rd3"', "a").startswith(b"a OK")
    assert again.command("b NOOP", "b").startswith(b"b OK")


def test_smtp_asks_again_at_mail_from(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    """As hMailServer does: the next MAIL FROM after a password change is refused, whatever the
    interval (here an hour)."""
    service, user = new_user(samba, "svc", SERVICE_PASSWORD), new_user(samba, "sm")
    body = manifest(samba, service, user).replace(f"recheck_interval = {INTERVAL}", "recheck_interval = 3600")
    server = start(appliance, samba, tmp_path, body)
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.ehlo("client.example")
        client.login("john@example.test", PASSWORD)
        client.sendmail("john@example.test", ["john@example.test"], b"Subject: one\r\n\r\nfirst\r\n")
        samba.set_password(user, "Changed!Passw0rd4")
        code, text = client.docmd("MAIL", "FROM:<john@example.test>")
        assert (code, text[:5]) == (421, b"4.7.0"), (code, text)


def test_without_a_service_account_sessions_follow_the_manifest_only(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    service, user = new_user(samba, "svc", SERVICE_PASSWORD), new_user(samba, "nm")
    body = manifest(samba, service, user).replace(f'bind_dn = "{service}@cloudtech.local"\n', "")
    body = body.replace('bind_password_file = "service.secret"\n', "")
    server = start(appliance, samba, tmp_path, body)
    imap = Line(server, "imap")
    assert imap.command(f'a LOGIN john@example.test "{PASSWORD}"', "a").startswith(b"a OK")
    samba.samba_tool("user", "disable", user)
    with pytest.raises(TimeoutError):
        imap.read(INTERVAL + 2)  # nobody asks the directory: the session goes on
    server.write_manifest(body.replace('user = "' + user + '" }', 'user = "' + user + '" }, enabled = false'))
    assert imap.read(MARGIN).startswith(b"* BYE")
