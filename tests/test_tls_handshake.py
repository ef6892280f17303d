"""A TLS handshake that fails is one INFO line with the listener, the peer and OpenSSL's reason:
on SMTP STARTTLS and on the implicit-TLS ports (465, 993, 995), which asyncio would otherwise
drop without a word; and a good handshake still reaches the session."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Iterator

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context
from tests.test_imap import DOMAINS, NO_AUTOBAN

IMPLICIT = {"submissions": b"220 ", "imaps": b"* OK ", "pop3s": b"+OK "}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("tls-handshake"))
    try:
        yield factory.start(DOMAINS + NO_AUTOBAN, listeners=("smtp", *IMPLICIT))
    finally:
        factory.close()


def old_client() -> ssl.SSLContext:
    """A client that offers only TLS 1.0/1.1, which the server refuses (min_version 1.2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.TLSv1
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    return context


def refused(sock: socket.socket) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        old_client().wrap_socket(sock).recv(1)
    sock.close()


@pytest.mark.parametrize("listener", sorted(IMPLICIT))
def test_a_failed_implicit_tls_handshake_is_logged_with_peer_and_reason(
    server: RunningAppliance, listener: str
) -> None:
    port = server.ports[listener]
    start = len(server.log())
    refused(socket.create_connection(("127.0.0.1", port), timeout=10))
    server.wait_for_log(
        rf"INFO appliance\.tls tls handshake failed listener={listener} client=127\.0\.0\.1 "
        r"reason=unsupported_protocol error=.*UNSUPPORTED_PROTOCOL",
        after=start,
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(b"HELLO in clear text\r\n")  # no TLS at all
        assert plain.recv(100) == b""  # the server hangs up
    server.wait_for_log(
        rf"tls handshake failed listener={listener} client=127\.0\.0\.1 reason=wrong_version_number",
        after=start,
    )
    with client_context(server).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="mail.example.test"
    ) as good:
        assert good.recv(100).startswith(IMPLICIT[listener])  # the session greets as before
    assert "Traceback" not in server.log()[start:]


def test_a_failed_starttls_handshake_is_one_info_line_with_the_reason(server: RunningAppliance) -> None:
    start = len(server.log())
    sock = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220 ")
    sock.sendall(b"EHLO client.example\r\n")
    for _ in range(50):
        if reader.readline()[3:4] == b" ":
            break
    sock.sendall(b"STARTTLS\r\n")
    assert reader.readline().startswith(b"220 ")
    refused(sock)
    reader.close()
    server.wait_for_log(
        r"INFO appliance\.smtp tls handshake failed client=127\.0\.0\.1 reason=unsupported_protocol ",
        after=start,
    )
    assert " ERROR " not in server.log()[start:]
