"""A bare socket speaking IMAP, for what imaplib and imapclient will not send."""

from __future__ import annotations

import itertools
import re

from tests.fixtures.appliance import RunningAppliance
from tests.support.lines import ListenerClient, client_context

_tags = itertools.count(1)
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class RawClient(ListenerClient):
    """IMAP over a listener ("imaps": TLS from the first byte; "imap": plain until `starttls`)."""

    def __init__(
        self,
        server: RunningAppliance,
        listener: str = "imaps",
        *,
        source: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        super().__init__(server, listener, source=source, timeout=timeout)
        self.greeting = self.line()

    def wire_line(self) -> bytes:
        """One response line byte for byte with its CRLF, literals included ("{n}" followed by its
        n octets, then the rest of the line; RFC 9051 §4.3)."""
        line = self.readline()
        if not line:
            raise ConnectionError("connection closed")
        for _ in range(10_000):
            match = _LITERAL.search(line)
            if match is None:
                return line
            line += self.read(int(match.group(1))) + self.readline()
        raise AssertionError("too many literals")

    def line(self) -> bytes:
        """One response line, literals included, without its final CRLF."""
        return self.wire_line().rstrip(b"\r\n")

    def response(self, tag: str) -> tuple[list[bytes], bytes]:
        """The untagged lines up to the tagged one, and the tagged one."""
        untagged: list[bytes] = []
        for _ in range(1_000_000):
            line = self.line()
            if line.startswith(tag.encode() + b" "):
                return untagged, line
            untagged.append(line)
        raise AssertionError("no tagged response")

    def read_until(self, tag: bytes | str) -> bytes:
        """Everything up to and including the tagged response `tag`, byte for byte."""
        prefix = (tag.encode() if isinstance(tag, str) else tag) + b" "
        out = bytearray()
        for _ in range(1_000_000):
            line = self.wire_line()
            out += line
            if line.startswith(prefix):
                return bytes(out)
        raise AssertionError("no tagged response")

    def exchange(self, text: str) -> bytes:
        """Send one command; its whole response byte for byte, which must end in OK."""
        tag = b"t%d" % next(_tags)
        self.send(tag + b" " + text.encode() + b"\r\n")
        response = self.read_until(tag)
        assert response.rsplit(b"\r\n", 2)[-2].startswith(tag + b" OK"), response[-300:]
        return response

    def command(self, text: bytes | str) -> tuple[list[bytes], bytes]:
        """Send one command under a fresh tag; its untagged lines and its tagged completion."""
        tag = f"t{next(_tags)}"
        self.send((tag + " ").encode() + (text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.response(tag)

    def ok(self, text: bytes | str) -> list[bytes]:
        untagged, done = self.command(text)
        assert done.split(b" ", 2)[1] == b"OK", (text, done, untagged)
        return untagged

    def starttls(self) -> None:
        _, done = self.command("STARTTLS")
        assert b" OK " in done
        self.wrap(client_context(self.server))

    def login(self, address: str, password: str) -> None:
        self.ok(f'LOGIN "{address}" "{password}"')
