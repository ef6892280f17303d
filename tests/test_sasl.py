"""The SASL mechanisms and the exchange (appliance.auth.sasl), without a server: pure functions."""

from __future__ import annotations

import asyncio
import base64

import pytest

from appliance.auth import sasl
from appliance.auth.sasl import Credentials, Login, Plain, SASLError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(mechanism: sasl.Mechanism, initial: str | None, answers: list[str]) -> tuple[Credentials, list[str]]:
    """Run an exchange with scripted client answers; the credentials and the challenges sent."""
    challenges: list[str] = []
    pending = list(answers)

    async def ask(challenge: str) -> str:
        challenges.append(challenge)
        return pending.pop(0)

    credentials = asyncio.run(sasl.exchange(mechanism, initial, ask))
    assert not pending, "the exchange ended before every answer was read"
    return credentials, challenges


def refusal(mechanism: sasl.Mechanism, initial: str | None, answers: list[str]) -> str:
    with pytest.raises(SASLError) as error:
        run(mechanism, initial, answers)
    return error.value.cause


# -- PLAIN (RFC 4616) -------------------------------------------------------------------------------
def test_plain_with_an_initial_response_needs_no_challenge() -> None:
    credentials, challenges = run(Plain(), b64(b"\0john@example.test\0S3cret pass"), [])
    assert credentials == Credentials("john@example.test", "S3cret pass", "")
    assert challenges == []


def test_plain_without_an_initial_response_sends_one_empty_challenge() -> None:
    credentials, challenges = run(Plain(), None, [b64(b"John@Example.Test\0john@example.test\0pw")])
    assert challenges == [""]
    assert credentials.authzid == "John@Example.Test" and credentials.authcid == "john@example.test"


def test_plain_keeps_utf8_and_every_other_octet_of_the_password() -> None:
    password = "Pässwörd \t with spaces and = signs"
    credentials, _ = run(Plain(), b64(f"\0jörg@bücher.example\0{password}".encode()), [])
    assert credentials.authcid == "jörg@bücher.example" and credentials.password == password


def test_the_password_never_shows_in_a_repr() -> None:
    assert "hunter2" not in repr(Credentials("john@example.test", "hunter2"))


@pytest.mark.parametrize(
    "message",
    [b"john@example.test\0pw", b"\0john\0pw\0extra", b"no nul at all", b""],
    ids=["two-parts", "four-parts", "one-part", "empty"],
)
def test_plain_with_the_wrong_number_of_parts_is_malformed(message: bytes) -> None:
    assert refusal(Plain(), b64(message), []) == "malformed"


def test_plain_with_an_empty_authcid_is_refused() -> None:
    assert refusal(Plain(), b64(b"\0\0password"), []) == "empty_authcid"
    assert refusal(Plain(), b64(b"john@example.test\0\0password"), []) == "empty_authcid"


def test_plain_with_an_empty_password_reaches_the_auth_service() -> None:
    credentials, _ = run(Plain(), b64(b"\0john@example.test\0"), [])
    assert credentials.password == ""  # rejected there as empty_password, counted as a failure


@pytest.mark.parametrize("part", [0, 1, 2])
def test_plain_with_non_utf8_in_any_part_is_refused(part: int) -> None:
    parts = [b"", b"john@example.test", b"password"]
    parts[part] = b"\xff\xfe"
    assert refusal(Plain(), b64(b"\0".join(parts)), []) == "not_utf8"


@pytest.mark.parametrize("text", ["not base64!", "AGpvaG4AcA", "AGpv aG4=", "=", "\u00e9"])
def test_a_response_that_is_not_strict_base64_is_refused(text: str) -> None:
    assert refusal(Plain(), text, []) == "bad_base64"
    assert refusal(Plain(), None, [text]) == "bad_base64"


def test_an_empty_response_is_an_empty_message() -> None:
    assert refusal(Plain(), "", []) == "malformed"  # "=" on the wire: present but empty
    assert refusal(Plain(), None, [""]) == "malformed"


def test_a_star_cancels_at_any_challenge() -> None:
    assert refusal(Plain(), None, ["*"]) == "cancelled"
    assert refusal(Login(), None, [b64(b"john"), "*"]) == "cancelled"


# -- LOGIN -------------------------------------------------------------------------------------------
def test_login_asks_for_the_user_name_then_the_password() -> None:
    credentials, challenges = run(Login(), None, [b64(b"john@example.test"), b64(b"pw")])
    assert challenges == [b64(b"Username:"), b64(b"Password:")]
    assert credentials == Credentials("john@example.test", "pw")


def test_login_takes_the_user_name_as_initial_response() -> None:
    credentials, challenges = run(Login(), b64(b"john@example.test"), [b64(b"pw")])
    assert challenges == [b64(b"Password:")]
    assert credentials.authcid == "john@example.test"


def test_login_asks_for_the_password_even_after_a_bad_user_name() -> None:
    with pytest.raises(SASLError) as error:
        run(Login(), b64(b"\xff"), [b64(b"pw")])
    assert error.value.cause == "not_utf8"
    assert refusal(Login(), None, [b64(b"john"), b64(b"\xc3")]) == "not_utf8"


def test_login_with_an_empty_user_name_is_refused() -> None:
    assert refusal(Login(), "", [b64(b"pw")]) == "empty_authcid"


def test_login_with_bad_base64_is_refused_at_either_step() -> None:
    assert refusal(Login(), None, ["!!"]) == "bad_base64"
    assert refusal(Login(), None, [b64(b"john"), "!!"]) == "bad_base64"


# -- choosing a mechanism -------------------------------------------------------------------------------
def test_a_mechanism_is_found_by_name_in_any_case_only_when_offered() -> None:
    assert isinstance(sasl.mechanism("plain", ("PLAIN",)), Plain)
    assert isinstance(sasl.mechanism("Login", ("PLAIN", "LOGIN")), Login)
    assert sasl.mechanism("LOGIN", ("PLAIN",)) is None
    assert sasl.mechanism("CRAM-MD5", ("PLAIN", "LOGIN", "CRAM-MD5")) is None  # not implemented
    first, second = sasl.mechanism("LOGIN", ("LOGIN",)), sasl.mechanism("LOGIN", ("LOGIN",))
    assert first is not second  # a fresh one per exchange: LOGIN keeps the user name between steps


def test_an_error_raised_by_the_protocols_framing_ends_the_exchange() -> None:
    async def too_long(challenge: str) -> str:
        raise SASLError("line_too_long")

    with pytest.raises(SASLError) as error:
        asyncio.run(sasl.exchange(Plain(), None, too_long))
    assert error.value.cause == "line_too_long"
