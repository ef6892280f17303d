"""QUOTA (RFC 9208): the account's `quota` as one quota root, "", over all its folders, with the
one resource the store counts, STORAGE (in units of 1024 octets). Quotas are set in the manifest,
so SETQUOTA is refused. An account without a quota has no quota root (RFC 9208 §4.3.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.imap import wire
from appliance.imap.commands import AUTHENTICATED, command
from appliance.imap.folders import folder_name
from appliance.imap.responses import Bad, No, mailbox_name
from appliance.imap.session import text_argument
from appliance.imap.tokens import Token

if TYPE_CHECKING:
    from appliance.imap.session import Session

ROOT = ""  # the account's one quota root


async def _usage(session: Session) -> tuple[int, int] | None:
    assert session.folders is not None
    return await session.folders.quota()


def _quota_line(used: int, limit: int) -> bytes:
    # RFC 9208 §5.1: STORAGE in units of 1024 octets (rounded down, as Dovecot does).
    return b"* QUOTA " + wire.string(ROOT) + b" (STORAGE %d %d)\r\n" % (used // 1024, limit // 1024)


@command("GETQUOTAROOT", AUTHENTICATED)
async def getquotaroot(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) != 1:
        raise Bad("GETQUOTAROOT takes a mailbox name")
    name = folder_name(args[0])
    assert session.folders is not None
    await session.folders.status(name)  # NO [NONEXISTENT] for a folder that does not exist
    usage = await _usage(session)
    if usage is None:
        session.send(b"* QUOTAROOT " + mailbox_name(name) + b"\r\n")
    else:
        session.send(b"* QUOTAROOT " + mailbox_name(name) + b" " + wire.string(ROOT) + b"\r\n")
        session.send(_quota_line(*usage))
    return "GETQUOTAROOT completed"


@command("GETQUOTA", AUTHENTICATED)
async def getquota(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) != 1:
        raise Bad("GETQUOTA takes a quota root")
    usage = await _usage(session)
    if text_argument(args[0], "Quota root") != ROOT or usage is None:
        raise No("No such quota root", "NONEXISTENT")
    session.send(_quota_line(*usage))
    return "GETQUOTA completed"


@command("SETQUOTA", AUTHENTICATED)
async def setquota(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) != 2 or not isinstance(args[1], list):
        raise Bad("SETQUOTA takes a quota root and a list of limits")
    raise No("Quotas are set in the server's manifest", "NOPERM")  # RFC 9208 §4.3.3
