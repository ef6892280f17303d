"""Mail clients (smtplib, imaplib, poplib) that connect from inside a host's network namespace,
to an appliance that only listens on that host's own loopback (tests/fixtures/nspawn.py)."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
from dataclasses import dataclass

from tests.fixtures.nspawn import NspawnHost
from tests.support.wait import wait_for


def _logout(client: imaplib.IMAP4) -> None:
    try:
        client.logout()
    except (OSError, imaplib.IMAP4.error):
        pass


@dataclass
class NamespacedMail:
    """SMTP submission, IMAP and POP3 with STARTTLS/STLS on `host`'s 127.0.0.1, trusting `cadata`."""

    host: NspawnHost
    cadata: str
    submission: int = 587
    imap: int = 143
    pop3: int = 110

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.cadata)

    def submit(self, login: str, password: str, recipient: str, subject: str) -> None:
        """Submission with STARTTLS and AUTH, as a mail client would."""

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", self.submission, timeout=30) as client:
                client.starttls(context=self._context())
                client.login(login, password)
                message = (
                    f"From: {login}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nover the real unit\r\n"
                )
                assert client.sendmail(login, [recipient], message.encode()) == {}

        self.host.in_namespace(submit)

    def smtp_login_refused(self, login: str, password: str) -> bool:
        def attempt() -> bool:
            with smtplib.SMTP("127.0.0.1", self.submission, timeout=30) as client:
                client.starttls(context=self._context())
                try:
                    client.login(login, password)
                except smtplib.SMTPAuthenticationError:
                    return True
                return False

        return self.host.in_namespace(attempt)

    def imap_subjects(self, login: str, password: str) -> list[bytes]:
        """The Subject lines of the INBOX, over IMAP with STARTTLS."""

        def read() -> list[bytes]:
            client = imaplib.IMAP4("127.0.0.1", self.imap, timeout=30)
            try:
                client.starttls(ssl_context=self._context())
                client.login(login, password)
                status, data = client.select("INBOX", readonly=True)
                assert status == "OK", data
                if data[0] == b"0":
                    return []
                status, fetched = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                assert status == "OK", fetched
                return [part[1] for part in fetched if isinstance(part, tuple)]
            finally:
                _logout(client)

        return self.host.in_namespace(read)

    def imap_login_refused(self, login: str, password: str) -> bool:
        def attempt() -> bool:
            client = imaplib.IMAP4("127.0.0.1", self.imap, timeout=30)
            try:
                client.starttls(ssl_context=self._context())
                try:
                    client.login(login, password)
                except imaplib.IMAP4.error:
                    return True
                return False
            finally:
                _logout(client)

        return self.host.in_namespace(attempt)

    def pop3_messages(self, login: str, password: str) -> list[bytes]:
        """Every message of the maildrop, over POP3 with STLS (nothing deleted)."""

        def read() -> list[bytes]:
            client = poplib.POP3("127.0.0.1", self.pop3, timeout=30)
            try:
                client.stls(context=self._context())
                client.user(login)
                client.pass_(password)
                count, _size = client.stat()
                return [b"\n".join(client.retr(number)[1]) for number in range(1, count + 1)]
            finally:
                client.quit()

        return self.host.in_namespace(read)

    def wait_for_mail(self, login: str, password: str, subject: str, timeout: float = 20.0) -> None:
        wait_for(
            lambda: any(subject.encode() in line for line in self.imap_subjects(login, password)),
            timeout,
            f"{subject!r} in the INBOX of {login}",
            every=0.5,
        )
