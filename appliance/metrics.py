"""OpenMetrics for Prometheus: `[server.listeners] metrics = "127.0.0.1:9154"`, at `/metrics`.

Counters are counted where the event happens (a login in the login path, a message in SMTP, an
outbound delivery in the queue, a reload in `serve`); figures that are a state rather than an
event (open sessions, the queue's size and age, the revision serving) are read when Prometheus
scrapes, from the callbacks `serve` registers with `Metrics.gauge`. The exposition is
prometheus-client's own (OpenMetrics when the scraper asks for it, the classic text format
otherwise); the listener is a few lines of HTTP/1.0 on the server's event loop. It has no
authentication: bind it to loopback or a management network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

log = logging.getLogger("appliance.metrics")

REQUEST_LIMIT = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0  # seconds to send them
# Directory answers: a bind on a LAN takes milliseconds, a DC that is slow or failing over seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A gauge read at scrape time: (label values, value) pairs.
Reading = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class Metrics:
    """Every figure the server exports, in one registry of its own (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.logins = Counter(
            "appliance_logins", "Login attempts by protocol, result and cause.",
            ("protocol", "result", "cause"), registry=registry,
        )  # fmt: skip
        self.directory_seconds = Histogram(
            "appliance_directory_request_seconds", "Time a directory took to answer a login, per server.",
            ("directory", "server"), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.messages = Counter(
            "appliance_messages_accepted", "Messages accepted over SMTP (the 250 after DATA).",
            ("listener",), registry=registry,
        )  # fmt: skip
        self.rejections = Counter(
            "appliance_smtp_rejections", "SMTP refusals by stage and reason.",
            ("stage", "reason"), registry=registry,
        )  # fmt: skip
        self.outbound = Counter(
            "appliance_outbound_recipients", "Outbound deliveries per recipient: delivered, failed, expired.",
            ("result",), registry=registry,
        )  # fmt: skip
        self.verdicts = Counter(
            "appliance_scanner_verdicts", "[filter] scans by rspamd's action (\"failed\": no answer).",
            ("action",), registry=registry,
        )  # fmt: skip
        self.bounces = Counter("appliance_bounces", "Delivery status notifications sent.", registry=registry)
        self.reloads = Counter(
            "appliance_reloads",
            "Manifest reloads: applied, unchanged, rejected.",
            ("result",),
            registry=registry,
        )
        self._gauges: list[tuple[str, str, tuple[str, ...], Reading]] = []
        registry.register(_Readings(self._gauges))

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...], read: Reading) -> None:
        """A gauge whose values `read()` gives at each scrape."""
        self._gauges.append((name, documentation, labels, read))

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and content type for a scraper that sent `Accept: accept`."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _Readings(Collector):
    def __init__(self, gauges: list[tuple[str, str, tuple[str, ...], Reading]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, labels, read in self._gauges:
            family = GaugeMetricFamily(name, documentation, labels=labels)
            try:
                for values, value in read():
                    family.add_metric(list(values), value)
            except Exception:  # a figure that cannot be read leaves the rest of the scrape whole
                log.exception("metrics reading failed name=%s", name)
                continue
            yield family


async def start_metrics_listener(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """The HTTP listener: GET /metrics gets the exposition, anything else 404 (or 405)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, body, content_type = _respond(metrics, head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, body, content_type = "400 Bad Request", b"bad request\n", "text/plain"
        try:
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, limit=REQUEST_LIMIT, reuse_address=True)


def _respond(metrics: Metrics, head: bytes) -> tuple[str, bytes, str]:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    if path != "/metrics":
        return "404 Not Found", b"see /metrics\n", "text/plain"
    if method not in ("GET", "HEAD"):
        return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
    accept = next((v for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "accept"), "")
    body, content_type = metrics.exposition(accept.strip())
    return "200 OK", b"" if method == "HEAD" else body, content_type
