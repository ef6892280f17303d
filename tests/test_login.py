"""The one login path (appliance.auth.attempts) as SMTP, POP3 and IMAP clients meet it: the same
credentials get the same answer on all three, and every login writes one log line.

The authorization-identity rule is also checked on its own, against a snapshot built from a
manifest (no server needed for that part).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.auth.attempts import Refusal, admission, may_act_as
from appliance.auth.passwords import hash_password
from appliance.context import SessionCounter
from appliance.manifest import parse_manifest
from appliance.security import AutoBan
from appliance.snapshot import Snapshot, SnapshotHolder, build_snapshot
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient as IMAPClient
from tests.support.pop3 import RawClient as POP3Client
from tests.support.smtp import RawClient as SMTPClient

PASSWORD = "Login!Passw0rd"
HASH = hash_password(PASSWORD)
JOHN = "john@example.test"
DOMAINS = f"""
[domains."example.test"]
aliases = {{ sales = ["john"], team = ["john", "mary"] }}
catch_all = "john"
[domains."example.test".accounts]
john = {{ password_hash = "{HASH}", addresses = ["j.doe", "john@other.test"] }}
mary = {{ password_hash = "{HASH}" }}

[domains."other.test"]
"""
NO_AUTOBAN = "\n[security.auto_ban]\nenabled = false\n"
LISTENERS = ("submissions", "pop3s", "imaps")
PROTOCOLS = ("smtp", "pop3", "imap")


# -- the rule, on a snapshot ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    text = f'[server]\nhostname = "mail.example.test"\n{DOMAINS}'
    return build_snapshot(parse_manifest(text.encode(), "t.toml", file=Path("/srv/t.toml")))


@pytest.mark.parametrize(
    "authzid",
    [
        "",
        JOHN,
        "John@Example.Test",
        "JOHN@EXAMPLE.TEST",
        "j.doe@example.test",
        "J.Doe@Example.TEST",
        "john@other.test",
    ],
)
def test_an_authzid_naming_the_logins_own_account_in_any_case_is_accepted(
    snapshot: Snapshot, authzid: str
) -> None:
    assert may_act_as(snapshot, JOHN, authzid)
    assert may_act_as(snapshot, "J.Doe@example.test", authzid)  # logged in by another of its addresses


@pytest.mark.parametrize(
    "authzid",
    [
        "mary@example.test",  # another account
        "sales@example.test",  # an alias that reaches only john: a delivery address, not a login
        "team@example.test",
        "john+news@example.test",  # plus-addressing: delivered to john, not john's name
        "whoever@example.test",  # the catch-all delivers it to john
        "john",
        "nobody@example.test",
    ],
)
def test_an_authzid_naming_anything_else_is_refused(snapshot: Snapshot, authzid: str) -> None:
    assert not may_act_as(snapshot, JOHN, authzid)


def test_for_an_unknown_login_only_the_same_name_passes_so_the_service_refuses_it_as_usual(
    snapshot: Snapshot,
) -> None:
    assert may_act_as(snapshot, "nobody@example.test", "Nobody@Example.Test")
    assert not may_act_as(snapshot, "nobody@example.test", JOHN)


def test_admission_refuses_a_banned_client_first_then_over_the_total_then_over_the_per_client_limit() -> None:
    text = (
        '[server]\nhostname = "mail.example.test"\n[server.limits]\n'
        "max_connections = 3\nmax_connections_per_client = 2\n[security.auto_ban]\nmax_failures = 1\n"
    )
    holder = SnapshotHolder(build_snapshot(parse_manifest(text.encode(), "t.toml", file=Path("/srv/t.toml"))))
    sessions, autoban = SessionCounter(), AutoBan(holder)
    family = ("smtp", "submission", "submissions")

    def admit(name: str, client: str) -> Refusal | None:
        return admission(holder.current, sessions, autoban, name=name, client=client, family=family)

    assert admit("smtp", "192.0.2.1") is None
    sessions.opened("smtp", "192.0.2.1")
    sessions.opened("smtp", "192.0.2.1")
    assert admit("smtp", "192.0.2.1") is Refusal.MAX_CONNECTIONS_PER_CLIENT
    assert admit("submission", "192.0.2.1") is None  # the per-client limit is per listener
    sessions.opened("submissions", "192.0.2.2")
    assert admit("submission", "192.0.2.3") is Refusal.MAX_CONNECTIONS  # the three listeners together
    autoban.failed("192.0.2.9", None)
    assert admit("smtp", "192.0.2.9") is Refusal.BANNED


# -- real clients on the three protocols ------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("login"))
    try:
        yield factory.start(DOMAINS + NO_AUTOBAN, listeners=LISTENERS)
    finally:
        factory.close()


def plain(authzid: str, login: str = JOHN, password: str = PASSWORD) -> str:
    return base64.b64encode(f"{authzid}\0{login}\0{password}".encode()).decode()


def smtp_plain(server: RunningAppliance, response: str) -> str:
    client = SMTPClient(server, "submissions")
    try:
        assert client.command("EHLO client.example").startswith("250")
        answer = client.command(f"AUTH PLAIN {response}")
        client.command("QUIT")
        return "accepted" if answer.startswith("235 ") else "refused" if answer.startswith("535 ") else answer
    finally:
        client.close()


def pop3_plain(server: RunningAppliance, response: str) -> str:
    client = POP3Client(server, "pop3s")
    try:
        answer = client.command(f"AUTH PLAIN {response}").decode("utf-8", "replace")
        client.command("QUIT")  # releases the maildrop before the next test logs in
        return (
            "accepted"
            if answer.startswith("+OK")
            else "refused"
            if answer.startswith("-ERR [AUTH]")
            else answer
        )
    finally:
        client.close()


def imap_plain(server: RunningAppliance, response: str) -> str:
    client = IMAPClient(server, "imaps")
    try:
        untagged, done = client.command(f"AUTHENTICATE PLAIN {response}")
        client.command("LOGOUT")
        status = done.split(b" ", 1)[1]
        if not untagged and status.startswith(b"OK "):
            return "accepted"
        if not untagged and status.startswith(b"NO [AUTHENTICATIONFAILED]"):
            return "refused"
        return repr((untagged, done))
    finally:
        client.close()


LOGIN: dict[str, Callable[[RunningAppliance, str], str]] = {
    "smtp": smtp_plain,
    "pop3": pop3_plain,
    "imap": imap_plain,
}


@pytest.mark.parametrize("authzid", ["", "John@Example.Test", "JOHN@example.test", "j.doe@Example.Test"])
def test_an_authzid_that_differs_only_in_case_gets_the_same_acceptance_on_smtp_pop3_and_imap(
    server: RunningAppliance, authzid: str
) -> None:
    answers = {protocol: LOGIN[protocol](server, plain(authzid)) for protocol in PROTOCOLS}
    assert answers == {"smtp": "accepted", "pop3": "accepted", "imap": "accepted"}


@pytest.mark.parametrize("authzid", ["mary@example.test", "sales@example.test", "john+news@example.test"])
def test_an_authzid_naming_another_account_or_an_alias_is_refused_on_smtp_pop3_and_imap(
    server: RunningAppliance, authzid: str
) -> None:
    answers = {protocol: LOGIN[protocol](server, plain(authzid)) for protocol in PROTOCOLS}
    assert answers == {"smtp": "refused", "pop3": "refused", "imap": "refused"}


LISTENER = {"smtp": "submissions", "pop3": "pop3s", "imap": "imaps"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("authzid", "password", "result", "cause"),
    [
        ("", PASSWORD, "accepted", "ok"),
        ("", "Wrong!Passw0rd", "rejected", "bad_credentials"),
        ("mary@example.test", PASSWORD, "rejected", "authzid_not_authcid"),
    ],
    ids=["accepted", "wrong-password", "other-authzid"],
)
def test_each_login_writes_one_line_with_mechanism_listener_tls_client_login_result_and_cause(
    server: RunningAppliance, protocol: str, authzid: str, password: str, result: str, cause: str
) -> None:
    offset = server.log_size()
    LOGIN[protocol](server, plain(authzid, JOHN, password))
    expected = (
        rf"auth result={result} login=john@example\.test protocol={protocol} listener={LISTENER[protocol]} "
        rf"mechanism=PLAIN tls=yes client=127\.0\.0\.1 cause={cause}(?: \w+=\S+)* directory=- server=\S+ ms=[\d.]+"
    )
    server.wait_for_log(expected, after=offset)
    # The client has had the answer to its QUIT/LOGOUT: every line of the login is written by now.
    lines = re.findall(r"^.*auth result=.*$", server.log()[offset:], re.MULTILINE)
    assert len(lines) == 1, lines
    assert (f"authzid={authzid}" in lines[0]) == bool(authzid)
    assert PASSWORD not in server.log() and "Wrong!Passw0rd" not in server.log()
