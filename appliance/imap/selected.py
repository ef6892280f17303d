"""Commands of the selected state (RFC 3501 §6.4) and their UID forms (§6.4.8), with UIDPLUS
(RFC 4315: APPENDUID/COPYUID, UID EXPUNGE), MOVE (RFC 6851) and UNSELECT (RFC 3691).

Messages are read in batches (`FolderView.read`, one executor call per batch) and responses
go out in large writes with back-pressure, so a FETCH of every message of a big folder costs
a few slices per message. On a clear-text connection such a FETCH is written by the sender
processes instead (sender.py).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

from appliance.imap import responses, wire
from appliance.imap.commands import SELECTED, command
from appliance.imap.fetch import (
    BATCH_BYTES,
    BATCH_MESSAGES,
    BINARY_ITEMS,
    WHOLE_TAIL,
    Request,
    UnknownTransferEncoding,
    batch_bounds,
    metadata_lines,
    parse_items,
    render_pieces,
    whole_message_head,
)
from appliance.imap.folders import folder_name, store_flags
from appliance.imap.index import MailboxError, MessageInfo
from appliance.imap.message import ParsedMessage
from appliance.imap.responses import Bad, No
from appliance.imap.search import SearchBatch, SearchError, compile_search
from appliance.imap.sender import FetchJob, Senders, Unavailable
from appliance.imap.sequence import SequenceSet, format_set
from appliance.imap.session import FLUSH_ABOVE
from appliance.imap.tokens import Atom, Token, as_text
from appliance.imap.view import FolderView

if TYPE_CHECKING:
    from appliance.imap.session import Session

log = logging.getLogger("appliance.imap")

JOB_MESSAGES = 20_000  # messages per job handed to a sender process (a 1 MB pickle or so)
METADATA_CHUNK = 1000  # messages per write when FETCH needs no message bytes
FIRST_METADATA_CHUNK = 100  # ... but the first write is sooner: the client starts reading at once
HEADER_BATCH = 5000  # messages per batch when SEARCH needs only cached header fields
HEADER_BATCH_BYTES = BATCH_BYTES * HEADER_BATCH // BATCH_MESSAGES  # their sizes (only headers are read)
# Key passes times messages (about 10 ms of work) above which a SEARCH batch is matched off the loop.
SEARCH_ON_LOOP = 50_000
# RFC 2180 §4.1 leaves the answer to a FETCH of a message another session expunged open. As
# Dovecot does, the messages still there are answered, the vanished ones left out, and the
# command completes OK with EXPUNGEISSUED (RFC 5530): clients retry or resync, not fail.
EXPUNGE_ISSUED = "[EXPUNGEISSUED] Some messages were already expunged"
_STORE_ITEM = re.compile(r"^([+-]?)FLAGS(\.SILENT)?$")
_STORE_MODES: dict[str, Literal["set", "add", "remove"]] = {"": "set", "+": "add", "-": "remove"}


def _view(session: Session) -> FolderView:
    assert session.view is not None
    return session.view


def resolve(view: FolderView, token: Token, uid: bool) -> list[int]:
    """The sequence numbers (ascending) a sequence set names: message numbers, or UIDs for a UID
    command (RFC 3501 §6.4.8: UIDs that do not exist are ignored)."""
    if not isinstance(token, Atom):
        raise Bad("Sequence set expected")
    numbers = SequenceSet.parse(token.value)
    messages = view.messages
    if not uid:
        return numbers.seqs(len(messages))
    uids = view.uids
    chosen = numbers.select(uids, uids[-1] if uids else 0)
    if len(chosen) == len(uids):
        return list(range(1, len(uids) + 1))  # every message (the usual "1:*" resync)
    return [bisect.bisect_left(uids, number) + 1 for number in chosen]


def batches(
    view: FolderView, seqs: list[int], count: int = BATCH_MESSAGES, max_bytes: int = BATCH_BYTES
) -> Iterator[tuple[list[int], list[MessageInfo]]]:
    """Sequence numbers and their messages, in batches bounded by count and by message bytes."""
    messages = view.messages
    infos = [messages[seq - 1] for seq in seqs]
    for start, end in batch_bounds((info.size for info in infos), count, max_bytes):
        yield seqs[start:end], infos[start:end]


def _writable(view: FolderView) -> None:
    if view.readonly:
        raise No("The mailbox is read-only (EXAMINE)", "READ-ONLY")


# -- CHECK, CLOSE, UNSELECT, EXPUNGE (RFC 3501 §6.4.1-§6.4.3, RFC 3691, RFC 4315 §2.1) ------------
@command("CHECK", SELECTED)
async def check(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    return "CHECK completed"  # every change is durable when its command completes


@command("CLOSE", SELECTED)
async def close(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    if not view.readonly:
        await view.expunge()  # RFC 3501 §6.4.2: silently, no EXPUNGE responses
    session.deselect()
    return "CLOSE completed"


@command("UNSELECT", SELECTED)
async def unselect(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    session.deselect()  # RFC 3691: like CLOSE without the expunge
    return "UNSELECT completed"


@command("EXPUNGE", SELECTED, uid=True)
async def expunge(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    chosen: list[int] | None = None
    if uid:
        if len(args) != 1:
            raise Bad("UID EXPUNGE takes a UID set")
        chosen = [view.messages[seq - 1].uid for seq in resolve(view, args[0], True)]
    elif args:
        raise Bad("EXPUNGE takes no arguments")
    _writable(view)
    await session.send_updates(expunges=True, refresh=False)  # numbers as the client knows them
    for seq in await view.expunge(chosen):
        session.send(b"* %d EXPUNGE\r\n" % seq)
    return "EXPUNGE completed"


# -- SEARCH (RFC 3501 §6.4.4) ---------------------------------------------------------------------
class _Parsed:
    """The messages of a batch, each parsed at its first use by a search key."""

    __slots__ = ("_parsed", "_raws")

    def __init__(self, raws: list[bytes | None]) -> None:
        self._raws = raws
        self._parsed: dict[int, ParsedMessage] = {}

    def __call__(self, position: int) -> ParsedMessage:
        parsed = self._parsed.get(position)
        if parsed is None:
            parsed = self._parsed[position] = ParsedMessage.parse(self._raws[position] or b"")
        return parsed


@command("SEARCH", SELECTED, uid=True, holds_expunges=True)
async def search(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    returns = None
    if (
        len(args) >= 2
        and isinstance(args[0], Atom)
        and args[0].upper() == "RETURN"
        and isinstance(args[1], list)
    ):
        returns = return_options(args[1])  # RFC 4731 §3.1: RETURN comes before CHARSET
        args = args[2:]
    charset = None
    if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        charset = as_text(args[1])
        args = args[2:]
    if not args:
        raise Bad("SEARCH needs search keys")
    found = await matching(session, view, args, charset)
    if uid:
        messages = view.messages
        found = [messages[seq - 1].uid for seq in found]
    if returns is None:
        session.send(b"* SEARCH" + b"".join(b" %d" % number for number in found) + b"\r\n")
    else:
        session.send(_esearch(tag, uid, found, returns))
    return "SEARCH completed"


async def matching(session: Session, view: FolderView, args: list[Token], charset: str | None) -> list[int]:
    """The sequence numbers (ascending) of the messages that match the search keys `args`;
    BAD for keys that cannot be used, NO [BADCHARSET] for a charset this server does not know.
    SEARCH, SORT and THREAD (RFC 5256) select their messages with it."""
    messages = view.messages
    try:
        compiled = compile_search(
            args, max_seq=len(messages), max_uid=messages[-1].uid if messages else 0, charset=charset
        )
    except SearchError as error:
        text, code = str(error), None
        if text.startswith("[") and "] " in text:  # the response code comes with the text
            code, text = text[1:].split("] ", 1)
        if getattr(error, "code", None) == "BADCHARSET":
            raise No(text, code or "BADCHARSET (US-ASCII UTF-8)") from None  # RFC 3501 §6.4.4, §7.1
        raise Bad(text) from None
    found: list[int] = []
    every = list(range(1, len(messages) + 1))
    if not compiled.needs_message:  # flags, sizes, dates, sets: all in memory, one batch
        parts: Iterable[tuple[list[int], list[MessageInfo]]] = [(every, list(messages))]
    elif compiled.header_only:
        parts = batches(view, every, HEADER_BATCH, HEADER_BATCH_BYTES)
    else:
        parts = batches(view, every)
    names = sorted(compiled.fields)
    for seqs, infos in parts:
        batch = SearchBatch(seqs, infos, view.is_recent, _Parsed([]))
        candidates: list[int] | None = None
        if compiled.header_only:  # only header fields: from the folder's cache, no message read
            batch.fields, gone = await view.header_columns(infos, names)
            if gone:  # vanished meanwhile
                candidates = [i for i in range(len(infos)) if i not in gone]
        elif compiled.needs_message:
            raws = await view.read(infos)
            batch.message = _Parsed(raws)
            candidates = [i for i, raw in enumerate(raws) if raw is not None]
        if compiled.keys * len(infos) > SEARCH_ON_LOOP:
            # Many keys over a batch: matched in a disk thread, so the event loop (every other
            # session) gets its turn meanwhile instead of waiting for the whole batch.
            loop = asyncio.get_running_loop()
            matched = await loop.run_in_executor(
                session.services.executor, compiled.select, batch, candidates
            )
        else:
            matched = compiled.select(batch, candidates)
        found += [seqs[i] for i in matched]
    return found


_RETURN_OPTIONS = ("MIN", "MAX", "ALL", "COUNT")  # RFC 4731 §3.1, in the order answered (as Dovecot)


def return_options(tokens: list[Token], command: str = "SEARCH") -> frozenset[str]:
    """RFC 4731 §3.1 (and RFC 5267 §3.2 for SORT): RETURN () is RETURN (ALL); an option this
    server does not know is BAD."""
    options = set()
    for token in tokens:
        word = token.upper() if isinstance(token, Atom) else ""
        if word not in _RETURN_OPTIONS:
            raise Bad(f"Unknown {command} return option")
        options.add(word)
    return frozenset(options or {"ALL"})


def _esearch(tag: str, uid: bool, found: list[int], returns: frozenset[str]) -> bytes:
    """RFC 4731 §3.1: MIN, MAX and ALL only when something matched; COUNT always when asked."""
    out = b"* ESEARCH (TAG " + wire.string(tag) + b")" + (b" UID" if uid else b"")
    if found and "MIN" in returns:
        out += b" MIN %d" % found[0]
    if found and "MAX" in returns:
        out += b" MAX %d" % found[-1]
    if found and "ALL" in returns:
        out += b" ALL " + format_set(found).encode()
    if "COUNT" in returns:
        out += b" COUNT %d" % len(found)
    return out + b"\r\n"


# -- FETCH (RFC 3501 §6.4.5) ----------------------------------------------------------------------
@command("FETCH", SELECTED, uid=True, holds_expunges=True)
async def fetch(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    if len(args) < 2:
        raise Bad("FETCH takes a sequence set and data items")
    seqs = resolve(view, args[0], uid)
    request = parse_items(args[1:], uid)
    sets_seen = request.sets_seen and not view.readonly
    if not request.needs_bytes and not sets_seen:
        # Flags, UIDs, sizes, dates: all in memory, rendered a chunk of messages at a time.
        messages, lines = view.messages, metadata_lines(request)
        starts = [0, *range(FIRST_METADATA_CHUNK, len(seqs), METADATA_CHUNK)]
        for start, end in zip(starts, [*starts[1:], len(seqs)], strict=True):
            chunk = seqs[start:end]
            if chunk and chunk[-1] - chunk[0] == len(chunk) - 1:  # ascending, no repeats (resolve): a run
                infos = messages[chunk[0] - 1 : chunk[-1]]
            else:
                infos = [messages[seq - 1] for seq in chunk]
            session.send(lines(chunk, infos, view.recent))
            await session.flush()  # the client reads one chunk while the next is rendered
        return "FETCH completed"
    senders = session.senders
    binary = any(item.name in BINARY_ITEMS for item in request.items)
    if (
        senders is not None
        and not sets_seen
        and not binary  # an UNKNOWN-CTE answer is given here, not by a sender process
        and len(seqs) >= senders.min_messages
        and session.connection.plain_descriptor() is not None
    ):
        done, gone = await _fetch_by_sender(session, view, seqs, request, senders)
        if done == len(seqs):
            return EXPUNGE_ISSUED if gone else "FETCH completed"
        seqs = seqs[done:]  # no sender to be had (any more): the rest is rendered here
        missing = gone > 0
    else:
        missing = False
    head = None if sets_seen else whole_message_head(request)  # \Seen set here adds FLAGS
    planned = list(batches(view, seqs))
    ahead: asyncio.Future[list[bytes | None]] | None = None  # the next batch, read meanwhile
    try:
        for number, (batch, infos) in enumerate(planned):
            changed: set[int] = set()
            if sets_seen:  # RFC 3501 §6.4.5: BODY[...] without PEEK sets \Seen
                unseen = [info.uid for info in infos if "\\Seen" not in info.flags]
                if unseen:
                    updated = {info.uid: info for info in await view.mark_seen(unseen)}
                    changed = set(updated)
                    infos = [updated.get(info.uid, info) for info in infos]
                raws = await view.read(infos)
            else:
                raws = await (ahead if ahead is not None else view.read(infos))
                ahead = None
                if number + 1 < len(planned):  # read the next batch while this one goes out
                    ahead = asyncio.ensure_future(view.read(planned[number + 1][1]))
            for seq, info, raw in zip(batch, infos, raws, strict=True):
                if raw is None:
                    missing = True  # RFC 2180 §4.1: expunged by another session meanwhile
                    continue
                if head is not None:
                    session.send_pieces([head(seq, info.uid, len(raw)), raw, WHOLE_TAIL])
                else:
                    parsed = ParsedMessage.parse(raw) if request.needs_parse else None
                    recent = view.is_recent(info.uid)
                    try:
                        pieces = render_pieces(seq, info, recent, request, raw, parsed, info.uid in changed)
                    except UnknownTransferEncoding:
                        raise No(
                            "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE"
                        ) from None  # RFC 3516 §4.3
                    session.send_pieces(pieces)
                if session.unflushed >= FLUSH_ABOVE:
                    await session.flush()
    finally:
        if ahead is not None:  # the session ended or failed meanwhile: nobody wants that read
            ahead.cancel()
            if ahead.done() and not ahead.cancelled():
                ahead.exception()  # seen, so that it is not logged as never retrieved
    return EXPUNGE_ISSUED if missing else "FETCH completed"


async def _fetch_by_sender(
    session: Session, view: FolderView, seqs: list[int], request: Request, senders: Senders
) -> tuple[int, int]:
    """The FETCH responses written by sender processes (sender.py says when and why), one job
    per JOB_MESSAGES messages: (messages done, messages that vanished meanwhile). Fewer done than
    asked when no sender could take a job: the caller renders the rest."""
    messages = view.messages
    names = {item.name for item in request.items}
    with_flags = "FLAGS" in names
    done = gone = 0
    await session.flush()
    while done < len(seqs):
        part = seqs[done : done + JOB_MESSAGES]
        infos = [messages[seq - 1] for seq in part]
        job = FetchJob(
            folder=str(view.path),
            request=request,
            seqs=part,
            uids=[info.uid for info in infos],
            names=view.file_names(infos),
            sizes=[info.size for info in infos],
            flags=[info.flags for info in infos] if with_flags else None,
            dates=[info.internaldate for info in infos] if "INTERNALDATE" in names else None,
            recent=[view.is_recent(info.uid) for info in infos] if with_flags else None,
        )
        try:
            sent, vanished = await senders.send(session.connection, job)
        except Unavailable as error:
            log.warning("fetch rendered by the session: no sender process error=%s", error)
            break
        session.bytes_out += sent
        done += len(part)
        gone += vanished
    return done, gone


# -- STORE (RFC 3501 §6.4.6) ----------------------------------------------------------------------
@command("STORE", SELECTED, uid=True, holds_expunges=True)
async def store(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    if len(args) < 3 or not isinstance(args[1], Atom):
        raise Bad("STORE takes a sequence set, an item and flags")
    seqs = resolve(view, args[0], uid)
    action = _STORE_ITEM.match(args[1].upper())
    if action is None:
        raise Bad("STORE item must be FLAGS, +FLAGS or -FLAGS, with or without .SILENT")
    tokens = args[2] if len(args) == 3 and isinstance(args[2], list) else args[2:]
    flags = store_flags(tokens)
    _writable(view)
    uids = [view.messages[seq - 1].uid for seq in seqs]
    mode = _STORE_MODES[action.group(1)]
    changed = {info.uid: info for info in await view.store(uids, mode, flags)}
    # A new keyword is announced (FLAGS) before any FETCH response that carries it.
    await session.send_updates(expunges=False, refresh=False)
    if action.group(2):
        return "STORE completed"  # .SILENT: no FETCH responses for this session's own change
    messages = view.messages
    for seq, message_uid in zip(seqs, uids, strict=True):
        info = changed.get(message_uid)
        if info is None:
            current = messages[seq - 1] if seq <= len(messages) else None
            if current is None or current.uid != message_uid:
                continue
            info = current
        flag_list = responses.flag_list(info.flags, view.is_recent(message_uid))
        if uid:
            session.send(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, message_uid, flag_list))
        else:
            session.send(b"* %d FETCH (FLAGS %s)\r\n" % (seq, flag_list))
    return "STORE completed"


# -- COPY, MOVE (RFC 3501 §6.4.7, RFC 4315 §3, RFC 6851) ------------------------------------------
def _target(args: list[Token]) -> tuple[Token, str]:
    if len(args) != 2:
        raise Bad("A sequence set and a mailbox name expected")
    return args[0], folder_name(args[1])


def _trycreate(error: MailboxError) -> No:
    code = "TRYCREATE" if error.code in ("NONEXISTENT", "TRYCREATE") else error.code
    return No(error.text, code)  # RFC 3501 §6.4.7: TRYCREATE when the target does not exist


@command("COPY", SELECTED, uid=True)
async def copy(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    sequence, target = _target(args)
    uids = [view.messages[seq - 1].uid for seq in resolve(view, sequence, uid)]
    if not uids:
        return "COPY completed (nothing to copy)"
    try:
        uidvalidity, source, created = await view.copy(uids, target)
    except MailboxError as error:
        raise _trycreate(error) from None
    if not created:
        return "COPY completed"
    return f"[COPYUID {uidvalidity} {format_set(source)} {format_set(created)}] COPY completed"


@command("MOVE", SELECTED, uid=True)
async def move(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    view = _view(session)
    sequence, target = _target(args)
    uids = [view.messages[seq - 1].uid for seq in resolve(view, sequence, uid)]
    _writable(view)
    if not uids:
        return "MOVE completed (nothing to move)"
    await session.send_updates(expunges=True, refresh=False)
    try:
        uidvalidity, source, created, expunged = await view.move(uids, target)
    except MailboxError as error:
        raise _trycreate(error) from None
    if created:  # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs
        session.send(
            f"* OK [COPYUID {uidvalidity} {format_set(source)} {format_set(created)}] Moved\r\n".encode()
        )
    for seq in expunged:
        session.send(b"* %d EXPUNGE\r\n" % seq)
    return "MOVE completed"
