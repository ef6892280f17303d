"""Open LDAP connections to a directory's servers: TLS, a small pool per server, failover.

Each server keeps at most `pool_size` connections; a login takes an idle one (or opens one when
fewer are open), binds on it and gives it back. Binding again on an open connection costs one
round trip (2-3 ms against Samba) where a new TLS connection costs a handshake on top.

Failover: servers are tried in the manifest's order, those that failed in the last
`DOWN_BACKOFF` seconds after the others. A pooled connection found dead (the server restarted,
an idle timeout) is dropped and the operation retried once on a new connection to the same
server; a server that cannot be reached, times out or fails TLS makes the next server be tried.
When none answers the caller gets `DirectoryUnreachable`: the login is UNAVAILABLE, never
REJECTED.

Everything here blocks: it runs in the auth service's thread pool, never on the event loop.
"""

from __future__ import annotations

import functools
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors

from appliance.auth.discovery import DomainControllers
from appliance.auth.simple_bind import BindProtocolError, simple_bind

T = TypeVar("T")

DOWN_BACKOFF = 10.0  # seconds a failed server is tried only after the others


class DirectoryUnreachable(Exception):
    """No server of the directory answered."""

    def __init__(self, cause: str, servers: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause  # "unreachable" | "timeout" | "tls_error" | "busy"
        self.servers = servers
        self.detail = detail


class ServerFailure(Exception):
    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


class ConnectionLost(ldap_errors.LDAPCommunicationError):
    """A pooled connection that ldap3 had already closed (it would reopen it without TLS)."""


_LOST = (
    ldap_errors.LDAPSocketSendError,
    ldap_errors.LDAPSocketReceiveError,
    ldap_errors.LDAPSessionTerminatedByServerError,
    ldap_errors.LDAPSocketCloseError,
    ConnectionLost,
)


def _failure(error: BaseException) -> ServerFailure:
    """Classify why a server did not answer, for the log."""
    text = str(error)[:300]
    if isinstance(error, ssl.SSLError | ldap_errors.LDAPStartTLSError | ldap_errors.LDAPCertificateError):
        return ServerFailure("tls_error", text)
    if isinstance(error, TimeoutError) or "timed out" in str(error):
        return ServerFailure("timeout", text)
    return ServerFailure("unreachable", text)


class _ContextTls(ldap3.Tls):
    """ldap3's Tls with one SSLContext built once, and OpenSSL checking the server's name.

    ldap3 builds a new context (loading the CA file, or the whole system store: 15 ms) for every
    connection and checks the name itself with ssl.match_hostname, gone in Python 3.12. Here the
    context is made once per directory with check_hostname on, so IP subjectAltNames work too.
    """

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._server_name = server_name

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_name,
        )


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the server against `ca_file`, or the system store when None; TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class ServerSettings:
    context: ssl.SSLContext | None  # None only with allow_plaintext
    tls_server_name: str | None
    allow_plaintext: bool
    connect_timeout: float
    response_timeout: float
    pool_size: int


class ServerPool:
    """Connections to one server URL."""

    def __init__(self, url: str, settings: ServerSettings, address: str | None = None) -> None:
        """`address`: where to connect when it is not the URL's host (a DC found in DNS: the URL
        names it, as its certificate does)."""
        parts = urlsplit(url)
        secure = parts.scheme == "ldaps"
        host = parts.hostname or ""
        port = parts.port or (636 if secure else 389)
        self.url = url
        self._start_tls = not secure and not settings.allow_plaintext
        self._settings = settings
        tls = None
        if settings.context is not None and (secure or self._start_tls):
            tls = _ContextTls(settings.context, settings.tls_server_name or host)
        self._host, self._port, self._secure, self._tls = address or host, port, secure, tls
        self._encrypted = secure or self._start_tls
        self._idle: list[ldap3.Connection] = []
        self._open = 0
        self._closed = False
        self._condition = threading.Condition()
        self.down_until = 0.0

    # -- one operation, with the dead-connection retry ----------------------------------------
    def run(self, operation: Callable[[ldap3.Connection], T]) -> T:
        connection, pooled = self._checkout(reuse=True)
        try:
            result = operation(connection)
        except _LOST as error:
            self._discard(connection)
            if not pooled or isinstance(error, TimeoutError):
                raise _failure(error) from error
            # A pooled connection that died while idle: once more on a new one.
            connection, _ = self._checkout(reuse=False)
            try:
                result = operation(connection)
            except _LOST as again:
                self._discard(connection)
                raise _failure(again) from again
            except BaseException:
                self._discard(connection)
                raise
        except BaseException:
            self._discard(connection)
            raise
        self._checkin(connection)
        return result

    # -- the pool ------------------------------------------------------------------------------
    def _checkout(self, *, reuse: bool) -> tuple[ldap3.Connection, bool]:
        deadline = time.monotonic() + self._settings.connect_timeout + self._settings.response_timeout
        with self._condition:
            while True:
                if reuse and self._idle:
                    connection = self._idle.pop()
                    if not connection.closed:
                        return connection, True
                    self._open -= 1  # closed by ldap3 after an error: forget it
                    continue
                if self._open < self._settings.pool_size:
                    self._open += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerFailure("busy", f"all {self._settings.pool_size} connections in use")
                self._condition.wait(remaining)
        try:
            return self._connect(), False
        except BaseException:
            with self._condition:
                self._open -= 1
                self._condition.notify()
            raise

    def _connect(self) -> ldap3.Connection:
        # A Server per connection: ldap3's Server remembers failed addresses for 5 s, shared by
        # every connection made from it, which would hide a server that has just come back.
        server = ldap3.Server(
            self._host, port=self._port, use_ssl=self._secure, tls=self._tls, get_info=ldap3.NONE,
            connect_timeout=self._settings.connect_timeout,
        )  # fmt: skip
        connection = ldap3.Connection(
            server,
            auto_bind=ldap3.AUTO_BIND_NONE,
            client_strategy=ldap3.SYNC,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds ("LL"): it must be an int.
            receive_timeout=max(1, math.ceil(self._settings.response_timeout)),
            raise_exceptions=False,
            read_only=True,
            auto_referrals=False,
            return_empty_attributes=False,
        )
        try:
            connection.open(read_server_info=False)
            # ldap3 leaves Nagle on: each small TLS record then waits for a delayed ACK (~40 ms).
            connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._start_tls:
                connection.start_tls(read_server_info=False)
        except ldap_errors.LDAPException as error:
            _close_quietly(connection)
            raise _failure(error) from error
        except OSError as error:
            _close_quietly(connection)
            raise _failure(error) from error
        return connection

    def _checkin(self, connection: ldap3.Connection) -> None:
        with self._condition:
            if self._closed or connection.closed:
                self._open -= 1
                _close_quietly(connection)
            else:
                self._idle.append(connection)
            self._condition.notify()

    def _discard(self, connection: ldap3.Connection) -> None:
        _close_quietly(connection)
        with self._condition:
            self._open -= 1
            self._condition.notify()

    def drop_idle(self) -> None:
        with self._condition:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._condition.notify_all()
        for connection in idle:
            _close_quietly(connection)

    def close(self) -> None:
        self._closed = True
        self.drop_idle()

    def bind(self, connection: ldap3.Connection, name: str, password: str) -> dict[str, Any]:
        """A simple bind as `name`, encoded here (`simple_bind`): ldap3 never holds the password."""
        if connection.closed:
            raise ConnectionLost("connection closed")  # never let ldap3 reopen it (without TLS)
        if not self._encrypted and not self._settings.allow_plaintext:
            raise ServerFailure("tls_error", "refusing a simple bind without TLS")
        if not name or not password:
            return {"result": 53, "message": "empty name or password: not sent", "dn": ""}
        try:
            result = simple_bind(connection.socket, name, password)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError) as error:
            # SO_RCVTIMEO (ldap3's receive_timeout) ends a blocking read with EAGAIN.
            raise ConnectionLost(f"bind timed out: {error}") from error
        except (OSError, BindProtocolError) as error:
            raise ConnectionLost(f"bind failed: {error}") from error
        # ldap3 did not see this bind: keep its idea of the connection's identity in step.
        connection.bound = result.get("result") == 0
        connection.result = result
        return result

    def bind_anonymously(self, connection: ldap3.Connection) -> dict[str, Any]:
        if connection.closed:
            raise ConnectionLost("connection closed")
        connection.authentication = ldap3.ANONYMOUS
        connection.user = None
        connection.password = None
        connection.bind(read_server_info=False)
        result: dict[str, Any] = connection.result or {}
        return result


def _close_quietly(connection: ldap3.Connection) -> None:
    try:
        connection.strategy.close()
    except Exception:
        pass
    connection.password = None


class DirectoryServers:
    """The servers of one directory, tried in order with failover: those found in DNS first (when
    the directory discovers them), then the listed ones."""

    def __init__(
        self, urls: list[str], settings: ServerSettings, locator: DomainControllers | None = None
    ) -> None:
        self.pools = [ServerPool(url, settings) for url in urls]
        self._settings = settings
        self._locator = locator
        self._discovered: dict[tuple[str, str, int], ServerPool] = {}
        self._lock = threading.Lock()

    def _in_order(self) -> list[ServerPool]:
        pools = self._found() + self.pools
        now = time.monotonic()
        up = [pool for pool in pools if pool.down_until <= now]
        return up + [pool for pool in pools if pool.down_until > now]

    def _found(self) -> list[ServerPool]:
        """Pools for the DCs DNS names now, in RFC 2782 order; those it no longer names close."""
        if self._locator is None:
            return []
        targets = self._locator.targets()
        with self._lock:
            found = []
            for target in targets:
                key = (target.name, target.address, target.port)
                pool = self._discovered.get(key)
                if pool is None:
                    scheme = "ldaps" if target.port in (636, 3269) else "ldap"  # else StartTLS
                    url = f"{scheme}://{target.name}:{target.port}"
                    pool = self._discovered[key] = ServerPool(url, self._settings, target.address)
                found.append(pool)
            gone = [
                key for key in self._discovered if key not in {(t.name, t.address, t.port) for t in targets}
            ]
            for key in gone:
                self._discovered.pop(key).close()
        return found

    def run(self, operation: Callable[[ServerPool, ldap3.Connection], T]) -> tuple[T, str]:
        """Run `operation` on the first server that answers; returns its result and the URL."""
        failures: list[tuple[str, ServerFailure]] = []
        for pool in self._in_order():
            try:
                result = pool.run(functools.partial(operation, pool))
            except ServerFailure as failure:
                pool.down_until = time.monotonic() + DOWN_BACKOFF
                pool.drop_idle()  # likely dead too; new ones are opened when it is back
                failures.append((pool.url, failure))
                continue
            pool.down_until = 0.0
            return result, pool.url
        causes = {failure.cause for _, failure in failures}
        cause = causes.pop() if len(causes) == 1 else "unreachable"
        servers = ",".join(url for url, _ in failures)
        detail = "; ".join(f"{url} {failure.cause}: {failure.detail}" for url, failure in failures)
        raise DirectoryUnreachable(cause, servers, detail)

    def close(self) -> None:
        with self._lock:
            discovered, self._discovered = list(self._discovered.values()), {}
        for pool in [*self.pools, *discovered]:
            pool.close()
