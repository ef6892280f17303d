"""rspamd's normal worker over its HTTP protocol: POST /checkv2 with the envelope in request
headers (rspamd's "protocol" documentation: IP, Helo, From, Rcpt, Queue-Id, MTA-Name, TLS-*),
the message as the body, a JSON verdict back.

The client is ours, on asyncio streams: one small request and one JSON answer per message, with
the whole exchange under one timeout. An HTTP library (aiohttp, httpx) would bring a connection
pool, cookies, redirects and a dependency tree for a request this simple; what we need of HTTP/1.1
is a request line, headers, Content-Length and a status line, and we own that piece whole.
`Scanner` also keeps the scanner's health for `appliance status`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.filter.verdict import Verdict

if TYPE_CHECKING:
    from appliance.snapshot import FilterSettings

MAX_RESPONSE = 1 << 20  # a verdict is a few kB; more than this is not rspamd speaking
MAX_HEADER_LINES = 100


class ScanError(Exception):
    """rspamd could not be asked, or answered something that is not a verdict."""


@dataclass(frozen=True)
class Envelope:
    """What rspamd needs beyond the message to check SPF and DMARC against the real envelope."""

    client_ip: str
    helo: str
    sender: str  # "" for the null reverse-path
    recipients: tuple[str, ...]
    queue_id: str
    hostname: str  # ours: rspamd's MTA-Name
    tls_version: str | None = None
    tls_cipher: str | None = None
    user: str | None = None  # an authenticated submission's login
    client_name: str | None = None  # the client's confirmed reverse name (iprev pass)

    def headers(self) -> list[tuple[str, str]]:
        pairs = [
            ("IP", self.client_ip),
            ("Helo", self.helo),
            ("Hostname", self.client_name or "unknown"),  # "unknown": as Postfix says it
            ("From", self.sender),
            *(("Rcpt", recipient) for recipient in self.recipients),
            ("Queue-Id", self.queue_id),
            ("MTA-Name", self.hostname),
        ]
        if self.tls_version:
            pairs += [("TLS-Version", self.tls_version), ("TLS-Cipher", self.tls_cipher or "")]
        if self.user:
            pairs.append(("User", self.user))
        return pairs


def _header_value(value: str) -> str:
    """A request header value: no CR, LF or other control character can split the request."""
    return "".join(c if c >= " " and c != "\x7f" else "?" for c in value)


@dataclass
class Health:
    """The scanner as last seen: for `appliance status` and the log."""

    scanned: int = 0
    failures: int = 0
    last_ok_at: float | None = None
    last_failure_at: float | None = None
    last_error: str | None = None
    recent: list[float] = field(default_factory=list)  # milliseconds of the last scans

    def as_dict(self, address: str) -> dict[str, Any]:
        healthy = self.last_failure_at is None or (
            self.last_ok_at is not None and self.last_ok_at > self.last_failure_at
        )
        average = sum(self.recent) / len(self.recent) if self.recent else None
        return {
            "address": address,
            "healthy": healthy,
            "scanned": self.scanned,
            "failures": self.failures,
            "last_ok_at": self.last_ok_at,
            "last_failure_at": self.last_failure_at,
            "last_error": self.last_error,
            "average_ms": None if average is None else round(average, 1),
        }


class Scanner:
    """Asks rspamd about messages; the settings come with each call (a reload applies at once)."""

    def __init__(self) -> None:
        self.health = Health()

    async def check(self, settings: FilterSettings, message: bytes, envelope: Envelope) -> Verdict:
        """rspamd's verdict on `message`; ScanError when it cannot be had within the timeout."""
        started = time.perf_counter()
        try:
            status, body = await self._request(
                settings, "POST", "/checkv2", envelope.headers(), message, settings.timeout
            )
            if status != 200:
                raise ScanError(f"rspamd answered HTTP {status}")
            try:
                answer = json.loads(body)
            except ValueError:
                raise ScanError("rspamd's answer is not JSON") from None
            verdict = Verdict.from_json(answer)
        except ScanError as error:
            self._failed(str(error))
            raise
        self._succeeded((time.perf_counter() - started) * 1000)
        return verdict

    async def ping(self, settings: FilterSettings) -> bool:
        """Whether rspamd answers GET /ping (for the status when no mail comes)."""
        try:
            status, body = await self._request(settings, "GET", "/ping", [], b"", min(settings.timeout, 5.0))
        except ScanError as error:
            self._failed(str(error))
            return False
        if status == 200 and body.strip() == b"pong":
            self.health.last_ok_at = time.time()
            return True
        self._failed(f"rspamd answered HTTP {status} to /ping")
        return False

    def status(self, settings: FilterSettings) -> dict[str, Any]:
        return self.health.as_dict(_address(settings))

    def _succeeded(self, ms: float) -> None:
        health = self.health
        health.scanned += 1
        health.last_ok_at = time.time()
        health.recent = [*health.recent[-99:], ms]

    def _failed(self, error: str) -> None:
        self.health.failures += 1
        self.health.last_failure_at = time.time()
        self.health.last_error = error

    async def _request(
        self,
        settings: FilterSettings,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float,
    ) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {_address(settings)}", "Connection: close"]
        lines += [f"{name}: {_header_value(value)}" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(settings.host, settings.port)
                writer.write(head)
                writer.write(body)
                await writer.drain()
                return await _read_response(reader)
        except TimeoutError:
            raise ScanError(f"no answer within {timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            raise ScanError(str(error) or type(error).__name__) from None
        finally:
            if writer is not None:
                writer.close()


def _address(settings: FilterSettings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.port}"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """RFC 9112: the status line, the header fields, then Content-Length bytes (or to the end)."""
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ScanError("not an HTTP answer")
    length: int | None = None
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    else:
        raise ScanError("too many header lines")
    if length is not None:
        if length > MAX_RESPONSE:
            raise ScanError("answer too large")
        return int(parts[1]), await reader.readexactly(length)
    body = b""
    while len(body) <= MAX_RESPONSE:  # no length given: the answer ends with the connection
        chunk = await reader.read(65536)
        if not chunk:
            return int(parts[1]), body
        body += chunk
    raise ScanError("answer too large")
