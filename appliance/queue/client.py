"""A small asyncio SMTP client (RFC 5321) for handing mail to other servers.

Only what an MTA needs: EHLO (HELO as fallback), STARTTLS (RFC 3207), AUTH PLAIN/LOGIN (RFC 4954),
one transaction with a reply per recipient, QUIT. Every read has a timeout and a length limit.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from dataclasses import dataclass

MAX_REPLY_LINES = 100
MAX_LINE = 4096
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # the text of every line, joined with "; "

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463), from the text or else from the reply's class."""
        match = _ENHANCED.match(self.text)
        if match:
            return match.group(0)
        return f"{self.code // 100}.0.0"

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SMTPError(Exception):
    """The session cannot go on: a connection problem, a timeout, or a reply that ends it."""

    def __init__(self, message: str, reply: Reply | None = None, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.reply = reply
        self.permanent = permanent


class SMTPClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.tls = False

    @classmethod
    async def connect(cls, host: str, port: int, *, connect_timeout: float, timeout: float) -> SMTPClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_LINE * 4), connect_timeout
            )
        except TimeoutError:
            raise SMTPError(f"connection to {host}:{port} timed out") from None
        except OSError as error:
            raise SMTPError(f"cannot connect to {host}:{port}: {error.strerror or error}") from None
        return cls(reader, writer, timeout)

    async def read_reply(self) -> Reply:
        lines: list[str] = []
        code = 0
        for _ in range(MAX_REPLY_LINES):
            try:
                raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except TimeoutError:
                raise SMTPError("timed out waiting for a reply") from None
            except (ValueError, asyncio.LimitOverrunError):
                raise SMTPError("reply line too long") from None
            except OSError as error:
                raise SMTPError(f"connection lost: {error.strerror or error}") from None
            if not raw:
                raise SMTPError("connection closed by the server")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise SMTPError(f"malformed reply: {line[:80]!r}")
            code = int(line[:3])
            lines.append(line[4:].strip())
            if len(line) == 3 or line[3] != "-":
                return Reply(code, "; ".join(part for part in lines if part))
        raise SMTPError("reply has too many lines")

    async def command(self, line: str) -> Reply:
        await self.send(line.encode("utf-8") + b"\r\n")
        return await self.read_reply()

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            raise SMTPError("timed out sending") from None
        except OSError as error:
            raise SMTPError(f"connection lost: {error.strerror or error}") from None

    async def greeting(self) -> Reply:
        reply = await self.read_reply()
        if not reply.ok:
            # RFC 5321 §3.1: 554 means no service here; try another host either way.
            raise SMTPError(f"greeting refused: {reply}", reply)
        return reply

    async def hello(self, name: str) -> None:
        reply = await self.command(f"EHLO {name}")
        self.extensions = {}
        if reply.ok:
            for index, part in enumerate(reply.text.split("; ")):
                if index == 0:
                    continue  # the server's name and greeting
                keyword, _, parameters = part.partition(" ")
                self.extensions[keyword.upper()] = parameters
            return
        # RFC 5321 §3.2: an old server answers EHLO with an error; HELO is the fallback.
        reply = await self.command(f"HELO {name}")
        if not reply.ok:
            raise SMTPError(f"HELO refused: {reply}", reply)

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        reply = await self.command("STARTTLS")
        if not reply.ok:
            raise SMTPError(f"STARTTLS refused: {reply}", reply)
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=server_hostname), self.timeout
            )
        except TimeoutError:
            raise SMTPError("TLS handshake timed out") from None
        except (ssl.SSLError, OSError) as error:
            raise SMTPError(f"TLS handshake failed: {error}") from None
        self.tls = True
        self.extensions = {}  # RFC 3207 §4.2: forget everything learnt before TLS

    async def authenticate(self, user: str, password: str) -> None:
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechanisms:
            reply = await self.command("AUTH LOGIN")
            if reply.code == 334:
                reply = await self.command(base64.b64encode(user.encode()).decode())
            if reply.code == 334:
                reply = await self.command(base64.b64encode(password.encode()).decode())
        else:
            raise SMTPError("the relay offers no AUTH mechanism we support (PLAIN, LOGIN)")
        if reply.code != 235:
            raise SMTPError(f"authentication refused: {reply}", reply)

    async def data(self, message: bytes) -> Reply:
        reply = await self.command("DATA")
        if reply.code != 354:
            return reply
        await self.send(dot_stuff(message) + b".\r\n")
        return await self.read_reply()

    async def quit(self) -> None:
        try:
            await asyncio.wait_for(self.command("QUIT"), 5.0)
        except (TimeoutError, SMTPError):
            pass
        self.close()

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass


_LEADING_DOT = re.compile(rb"(?m)^\.")


_LINE_END = re.compile(rb"\r\n|\r|\n")


def canonical_line_ends(message: bytes) -> bytes:
    """Every line end as CRLF and no NUL (RFC 5322 §2.3: CR and LF only together; RFC 5321
    §4.1.1.4). What goes to another server must not let it see a line end, and so a second
    message, where this one saw none: a bare CR or LF is the SMTP smuggling trick."""
    if b"\0" in message:
        message = message.replace(b"\0", b"")
    crlf = message.count(b"\r\n")
    if message.count(b"\r") == crlf and message.count(b"\n") == crlf:
        return message
    return _LINE_END.sub(b"\r\n", message)


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line starting with "." gets another one; the data ends with CRLF."""
    message = canonical_line_ends(message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _LEADING_DOT.sub(b"..", message)
