"""The hand-written LDAP bind codec against ldap3's pyasn1 encoder and decoder.

The real directories (Samba AD, slapd) check the codec end to end in the auth tests; these check
the byte level, including the lengths where BER switches to its long form, and the answers a
connection must be dropped for.
"""

from __future__ import annotations

import pytest
from ldap3 import SIMPLE
from ldap3.operation.bind import bind_operation
from ldap3.protocol.rfc4511 import (
    LDAPDN,
    BindResponse,
    ExtendedResponse,
    LDAPMessage,
    LDAPString,
    MessageID,
    ProtocolOp,
    ResultCode,
)
from ldap3.utils.asn1 import decoder, encode

from appliance.auth.simple_bind import (
    BindProtocolError,
    decode_bind_response,
    encode_bind_request,
    read_message,
    simple_bind,
)


def ldap3_message(message_id: int, kind: str, operation: object) -> bytes:
    message = LDAPMessage()
    message["messageID"] = MessageID(message_id)
    message["protocolOp"] = ProtocolOp().setComponentByName(kind, operation)
    return bytes(encode(message))


def bind_response(message_id: int, code: int, matched: str = "", diagnostic: str = "") -> bytes:
    response = BindResponse()
    response["resultCode"] = ResultCode(code)
    response["matchedDN"] = LDAPDN(matched)
    response["diagnosticMessage"] = LDAPString(diagnostic)
    return ldap3_message(message_id, "bindResponse", response)


@pytest.mark.parametrize(
    ("message_id", "name", "password"),
    [
        (1, "john@cloudtech.local", "Passw0rd!"),
        (127, "CLOUDTECH\\john", "x"),
        (128, "cn=Jörg Ünal,ou=people,dc=example,dc=test", "pässwörd ünicode"),
        (2**31 - 1, "u" * 200, "p" * 300),  # long-form lengths on every level
        (40_000, "n", "p"),
    ],
)
def test_bind_requests_are_byte_for_byte_what_ldap3_sends(message_id: int, name: str, password: str) -> None:
    expected = ldap3_message(message_id, "bindRequest", bind_operation(3, SIMPLE, name, password))
    assert encode_bind_request(message_id, name, password) == expected


@pytest.mark.parametrize(
    ("code", "matched", "diagnostic"),
    [
        (0, "", ""),
        (
            49,
            "",
            "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1",
        ),
        (32, "dc=example,dc=test", "no such object"),
        (53, "", "é" * 400),  # long diagnostic: two-byte lengths
    ],
)
def test_bind_responses_decode_as_ldap3_reads_them(code: int, matched: str, diagnostic: str) -> None:
    raw = bind_response(77, code, matched, diagnostic)
    message_id, result = decode_bind_response(raw)
    assert message_id == 77
    assert (result["result"], result["dn"], result["message"]) == (code, matched, diagnostic)
    decoded, rest = decoder.decode(raw, asn1Spec=LDAPMessage())
    assert rest == b"" and int(decoded["messageID"]) == 77  # the test's bytes are valid BER


class FakeSocket:
    """Bytes in chunks as a TLS socket hands them over; what was sent is kept."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_an_empty_name_or_password_is_never_sent() -> None:
    for name, password in (("", "pw"), ("john@cloudtech.local", ""), ("", "")):
        sock = FakeSocket([bind_response(1, 0)])
        with pytest.raises(ValueError):
            simple_bind(sock, name, password)
        assert sock.sent == b""


def test_a_response_split_over_reads_is_put_together() -> None:
    raw = bind_response(9, 0, "", "x" * 300)
    chunks = [raw[:1], raw[1:3], raw[3:10], raw[10:]]
    assert read_message(FakeSocket(chunks)) == raw


def test_simple_bind_sends_one_request_and_checks_the_answer_id() -> None:
    sock = FakeSocket([])
    # The answer is built after the request is sent, with the id the request carried.
    sock.recv = lambda size: bind_response(  # type: ignore[method-assign]
        decoder.decode(sock.sent, asn1Spec=LDAPMessage())[0]["messageID"], 0
    )
    assert simple_bind(sock, "john@cloudtech.local", "pw")["result"] == 0

    wrong_id = FakeSocket([bind_response(0x7FFF_0000, 0)])
    with pytest.raises(BindProtocolError, match="answer to message"):
        simple_bind(wrong_id, "john@cloudtech.local", "pw")


def test_answers_that_end_the_connection() -> None:
    notice = ExtendedResponse()
    notice["resultCode"] = ResultCode(52)
    notice["matchedDN"] = LDAPDN("")
    notice["diagnosticMessage"] = LDAPString("server shutting down")
    disconnection = ldap3_message(0, "extendedResp", notice)
    with pytest.raises(BindProtocolError, match="not a bind response"):
        decode_bind_response(disconnection)
    with pytest.raises(ConnectionResetError):
        read_message(FakeSocket([]))
    with pytest.raises(BindProtocolError):
        read_message(FakeSocket([b"\x30\x85\x00\x00\x00\x00\x01"]))  # 5-byte length
    with pytest.raises(BindProtocolError, match="bytes"):
        read_message(FakeSocket([b"\x30\x84\x7f\xff\xff\xff"]))  # 2 GB announced
    raw = bind_response(5, 0)
    with pytest.raises(BindProtocolError, match="more than one"):
        read_message(FakeSocket([raw + raw]))
    with_text = bind_response(5, 0, "", "abc")
    assert with_text[-5:] == b"\x04\x03abc"
    with pytest.raises(BindProtocolError):
        decode_bind_response(with_text[:-4] + b"\x09abc")  # diagnostic overruns its sequence
    truncated = bytearray(raw)
    truncated[1] -= 1
    with pytest.raises(BindProtocolError):
        decode_bind_response(bytes(truncated))
