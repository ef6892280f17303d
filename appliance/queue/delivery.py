"""One delivery attempt of one message to one destination: a domain's MX hosts, or the smarthost.

Hosts are tried in preference order (RFC 5321 §5.1); a host that cannot be reached, greets with an
error, fails TLS or defers MAIL FROM is skipped for the next one. From RCPT on, the replies are the
answer: per recipient 2xx delivered, 4xx deferred, 5xx failed (RFC 5321 §4.2.1).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.queue.client import Reply, SMTPClient, SMTPError
from appliance.queue.routing import Resolver, RouteError, system_addresses

Result = Literal["delivered", "deferred", "failed"]
TLSPolicy = Literal["required", "opportunistic", "none"]


@dataclass(frozen=True)
class Outcome:
    recipient: str
    result: Result
    status: str  # enhanced status code, RFC 3463 ("2.0.0", "4.4.1", "5.1.1")
    diagnostic: str  # the server's reply, or what went wrong in words
    remote: str | None = None  # the host that answered, when one did
    smtp: bool = False  # the diagnostic is an SMTP reply (DSN Diagnostic-Code type "smtp")


@dataclass(frozen=True)
class Destination:
    """Where a group of recipients goes, and how."""

    key: str  # for concurrency limits: the domain, or "relay:<host:port>"
    domain: str | None  # MX delivery to this domain
    relay: tuple[str, int] | None  # or this smarthost
    port: int  # the MX port (25 on the Internet)
    tls: TLSPolicy
    ca_file: str | None = None
    credentials: tuple[str, str] | None = None


@dataclass(frozen=True)
class Timeouts:
    connect: float
    command: float


class _TryNextHost(Exception):
    def __init__(self, status: str, diagnostic: str, remote: str | None, *, smtp: bool = False) -> None:
        super().__init__(diagnostic)
        self.status = status
        self.diagnostic = diagnostic
        self.remote = remote
        self.smtp = smtp


class RemoteDelivery:
    """Hands messages to other servers. Keeps TLS contexts (costly to build) between attempts."""

    def __init__(self, helo_name: str) -> None:
        self.helo_name = helo_name
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._opportunistic: ssl.SSLContext | None = None

    def _verifying_context(self, ca_file: str | None) -> ssl.SSLContext:
        context = self._contexts.get(ca_file)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
            self._contexts[ca_file] = context
        return context

    def _any_certificate_context(self) -> ssl.SSLContext:
        # RFC 7435 (opportunistic security): encrypt when we can, without checking whom we talk to.
        if self._opportunistic is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self._opportunistic = context
        return self._opportunistic

    async def deliver(
        self,
        message: bytes,
        sender: str,
        recipients: Sequence[str],
        destination: Destination,
        resolver: Resolver,
        timeouts: Timeouts,
    ) -> list[Outcome]:
        try:
            hosts = await self._hosts(destination, resolver)
        except RouteError as error:
            result: Result = "failed" if error.permanent else "deferred"
            return [Outcome(r, result, error.status, str(error)[len(error.status) + 1 :]) for r in recipients]
        last = _TryNextHost("4.4.1", "no host could be reached", None)
        for name, address, port in hosts:
            try:
                return await self._session(
                    message, sender, recipients, destination, name, address, port, timeouts
                )
            except _TryNextHost as error:
                last = error
        return [
            Outcome(r, "deferred", last.status, last.diagnostic, last.remote, last.smtp) for r in recipients
        ]

    async def _hosts(self, destination: Destination, resolver: Resolver) -> list[tuple[str, str, int]]:
        """(name, address, port) to try, in order."""
        if destination.relay is not None:
            host, port = destination.relay
            return [(host, address, port) for address in await system_addresses(host, port)]
        assert destination.domain is not None
        names = await resolver.mx_hosts(destination.domain)
        hosts: list[tuple[str, str, int]] = []
        first_error: RouteError | None = None
        for name in names:
            if name == self.helo_name:
                continue  # an MX pointing back here would loop (RFC 5321 §5.1)
            try:
                hosts.extend((name, address, destination.port) for address in await resolver.addresses(name))
            except RouteError as error:
                first_error = first_error or error
        if not hosts:
            if first_error is not None:
                raise first_error
            if names and all(name == self.helo_name for name in names):
                raise RouteError("5.4.6", f"the MX of {destination.domain} is this server: mail would loop")
            raise RouteError("4.4.4", f"no address found for the MX hosts of {destination.domain}")
        return hosts

    async def _session(
        self,
        message: bytes,
        sender: str,
        recipients: Sequence[str],
        destination: Destination,
        name: str,
        address: str,
        port: int,
        timeouts: Timeouts,
        *,
        allow_tls: bool = True,
    ) -> list[Outcome]:
        remote = f"{name}[{address}]:{port}"
        try:
            client = await SMTPClient.connect(
                address, port, connect_timeout=timeouts.connect, timeout=timeouts.command
            )
        except SMTPError as error:
            raise _TryNextHost("4.4.1", str(error), remote) from None
        try:
            try:
                await client.greeting()
                await client.hello(self.helo_name)
            except SMTPError as error:
                raise _TryNextHost("4.4.2", str(error), remote, smtp=error.reply is not None) from None
            if destination.tls != "none" and allow_tls and "STARTTLS" in client.extensions:
                required = destination.tls == "required"
                context = (
                    self._verifying_context(destination.ca_file)
                    if required
                    else self._any_certificate_context()
                )
                try:
                    await client.starttls(context, name)
                    await client.hello(self.helo_name)
                except SMTPError as error:
                    if required:
                        raise _TryNextHost("4.7.5", f"TLS with {name} failed: {error}", remote) from None
                    # Opportunistic: a broken TLS stack at the peer must not stop mail; go on in clear.
                    client.close()
                    return await self._session(
                        message,
                        sender,
                        recipients,
                        destination,
                        name,
                        address,
                        port,
                        timeouts,
                        allow_tls=False,
                    )
            elif destination.tls == "required":
                raise _TryNextHost("4.7.4", f"TLS is required but {name} does not offer STARTTLS", remote)
            if destination.credentials is not None:
                if not client.tls and destination.tls != "none":
                    # Never send the relay password in clear unless the manifest says the link is safe.
                    raise _TryNextHost("4.7.4", "not sending the relay password without TLS", remote)
                try:
                    await client.authenticate(*destination.credentials)
                except SMTPError as error:
                    raise _TryNextHost("4.7.0", str(error), remote, smtp=error.reply is not None) from None
            return await self._transaction(client, message, sender, recipients, remote)
        finally:
            client.close()

    async def _transaction(
        self, client: SMTPClient, message: bytes, sender: str, recipients: Sequence[str], remote: str
    ) -> list[Outcome]:
        parameters = ""
        if "SIZE" in client.extensions:
            parameters += f" SIZE={len(message)}"  # RFC 1870
        if "8BITMIME" in client.extensions and not message.isascii():
            parameters += " BODY=8BITMIME"  # RFC 6152
        if "SMTPUTF8" in client.extensions and not (
            sender.isascii() and all(r.isascii() for r in recipients)
        ):
            parameters += " SMTPUTF8"  # RFC 6531
        try:
            reply = await client.command(f"MAIL FROM:<{sender}>{parameters}")
        except SMTPError as error:
            raise _TryNextHost("4.4.2", str(error), remote) from None
        if reply.temporary:
            raise _TryNextHost(reply.status, str(reply), remote, smtp=True)
        if reply.permanent:
            await client.quit()
            return [Outcome(r, "failed", reply.status, str(reply), remote, True) for r in recipients]
        outcomes: dict[str, Outcome] = {}
        accepted: list[str] = []
        try:
            for recipient in recipients:
                reply = await client.command(f"RCPT TO:<{recipient}>")
                if reply.ok:
                    accepted.append(recipient)
                else:
                    outcomes[recipient] = _from_reply(recipient, reply, remote)
        except SMTPError as error:
            raise _TryNextHost("4.4.2", str(error), remote) from None
        if accepted:
            try:
                reply = await client.data(message)
            except SMTPError as error:
                # The data may or may not have arrived; trying again later risks a duplicate,
                # which RFC 5321 §6.1 prefers to a loss.
                for recipient in accepted:
                    outcomes[recipient] = Outcome(recipient, "deferred", "4.4.2", str(error), remote)
            else:
                for recipient in accepted:
                    outcomes[recipient] = _from_reply(recipient, reply, remote)
        await client.quit()
        return [outcomes[r] for r in recipients]


def _from_reply(recipient: str, reply: Reply, remote: str) -> Outcome:
    result: Result = "delivered" if reply.ok else "deferred" if reply.temporary else "failed"
    return Outcome(recipient, result, reply.status, str(reply), remote, True)
