"""A bare socket read line by line, under the protocol clients of `smtp`, `pop3` and `imap`: for
what smtplib, poplib and imaplib will not send. It keeps a buffer of its own, so a read that times
out leaves it usable (a socket file is not after one timeout)."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Self

from tests.fixtures.appliance import RunningAppliance


def client_context(server: RunningAppliance) -> ssl.SSLContext:
    """A client's TLS context that trusts the appliance's generated certificate."""
    context = ssl.create_default_context(cafile=str(server.cafile))
    context.check_hostname = False  # the generated certificate names mail.example.test and 127.0.0.1
    return context


IMPLICIT_TLS = frozenset({"submissions", "pop3s", "imaps"})  # TLS from the first byte (RFC 8314)


class LineClient:
    """A connection to one of the appliance's listeners; TLS from the first byte when `tls` is given."""

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock: socket.socket = tls.wrap_socket(sock) if tls is not None else sock
        self.timeout = timeout
        self.buffer = bytearray()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self, want: int = 65536) -> bool:
        """Read what the server has sent into the buffer; False at the end of the stream."""
        data = self.sock.recv(min(max(want, 65536), 1 << 20))
        self.buffer += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def readline(self, limit: int = 1 << 20) -> bytes:
        """One line with its line end, at most `limit` octets; b"" once the server has closed."""
        for _ in range(1_000_000):
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self.buffer) >= limit:
                return self._take(end + 1 if end >= 0 else limit)
            if not self._fill():
                return self._take(len(self.buffer))
        raise AssertionError("no end of line")

    def line(self) -> bytes:
        """One line without its line end; ConnectionError once the server has closed."""
        line = self.readline()
        if not line:
            raise ConnectionError("connection closed")
        return line.rstrip(b"\r\n")

    def read(self, size: int) -> bytes:
        """Exactly `size` octets; ConnectionError if the server closes first."""
        for _ in range(1_000_000):
            if len(self.buffer) >= size:
                return self._take(size)
            if not self._fill(size - len(self.buffer)):
                raise ConnectionError("connection closed")
        raise AssertionError("no end of data")

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server closes the connection within `timeout` (what it says is read and
        dropped); False if it is still open then."""
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    if not self._fill():
                        return True
                except TimeoutError:
                    return False
                except OSError:
                    return True  # reset: closed with our bytes unread
                self.buffer.clear()
            return False
        finally:
            self._restore_timeout()

    def _restore_timeout(self) -> None:
        try:
            self.sock.settimeout(self.timeout)
        except OSError:
            pass  # already closed

    def wrap(self, context: ssl.SSLContext) -> None:
        """Start TLS on the connection (after the server's go-ahead to STARTTLS/STLS). Bytes the
        server sent before the handshake would be a protocol error; none may be buffered."""
        assert not self.buffer, bytes(self.buffer)
        self.sock = context.wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ListenerClient(LineClient):
    """A connection to one of a running appliance's listeners, in TLS on those of `IMPLICIT_TLS`."""

    def __init__(
        self, server: RunningAppliance, listener: str, *, source: str | None = None, timeout: float = 15.0
    ) -> None:
        tls = client_context(server) if listener in IMPLICIT_TLS else None
        super().__init__(server.ports[listener], tls=tls, source=source, timeout=timeout)
        self.server = server
