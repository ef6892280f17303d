"""Commands of the authenticated state (RFC 3501 §6.3): folders, their status, APPEND, plus
ENABLE (RFC 5161) and NAMESPACE (RFC 2342).

Hierarchy delimiter ".", names in modified UTF-7 as the client sends them; the folder store
(mailboxes.py) keeps them in Maildir++ layout. LIST applies the reference and pattern here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from appliance.imap import responses
from appliance.imap.commands import AUTHENTICATED, State, command
from appliance.imap.index import MailboxError
from appliance.imap.mailboxes import FolderInfo, FolderStatus, NewMessage
from appliance.imap.responses import Bad, No
from appliance.imap.sequence import format_set
from appliance.imap.session import text_argument
from appliance.imap.syntax import FileLiteral, MessageLiteral
from appliance.imap.tokens import Atom, Token, as_text

if TYPE_CHECKING:
    from appliance.imap.mailboxes import AccountMailboxes
    from appliance.imap.session import Session

DELIMITER = "."
SPECIAL_USE = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")


def folder_name(token: Token) -> str:
    """A mailbox argument; "INBOX" in any case is INBOX (RFC 3501 §5.1)."""
    name = text_argument(token, "Mailbox name")
    return "INBOX" if name.upper() == "INBOX" else name


def _folders(session: Session) -> AccountMailboxes:
    assert session.folders is not None
    return session.folders


# -- ENABLE, NAMESPACE -------------------------------------------------------------------------------
@command("ENABLE", AUTHENTICATED)
async def enable(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    """RFC 5161: none of the extensions that need enabling (CONDSTORE, QRESYNC, UTF8=ACCEPT) is
    offered, so the list of enabled ones is always empty."""
    if not args or not all(isinstance(arg, Atom) for arg in args):
        raise Bad("ENABLE takes capability names")
    session.send(b"* ENABLED\r\n")
    return "ENABLE completed"


@command("NAMESPACE", AUTHENTICATED)
async def namespace(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    """RFC 2342: one personal namespace, no prefix, "." between levels; no shared ones."""
    session.send(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
    return "NAMESPACE completed"


# -- SELECT, EXAMINE (RFC 3501 §6.3.1, §6.3.2) -------------------------------------------------------
async def _select(session: Session, args: list[Token], readonly: bool) -> str:
    if len(args) != 1:
        raise Bad("One mailbox name expected")
    name = folder_name(args[0])
    session.deselect()  # RFC 3501 §6.3.1: a failed SELECT leaves no folder selected
    view = await _folders(session).select(name, readonly=readonly)
    session.view = view
    session.state = State.SELECTED
    flags = responses.flag_list(dict.fromkeys([*responses.SYSTEM_FLAGS, *view.flags_in_use()]))
    session.send(b"* FLAGS " + flags + b"\r\n")
    if readonly:
        session.send(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
    else:
        permanent = responses.flag_list(dict.fromkeys([*responses.SYSTEM_FLAGS, *view.flags_in_use()]))
        if view.can_create_keywords():
            permanent = permanent[:-1] + b" \\*)"  # RFC 3501 §7.1: new keywords may be created
        session.send(b"* OK [PERMANENTFLAGS " + permanent + b"] Flags permitted\r\n")
    session.send(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(view.messages), view.recent_count()))
    unseen = view.first_unseen()
    if unseen is not None:
        session.send(b"* OK [UNSEEN %d] First unseen\r\n" % unseen)
    session.send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % view.uidvalidity)
    session.send(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % view.uidnext())
    return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {'EXAMINE' if readonly else 'SELECT'} completed"


@command("SELECT", AUTHENTICATED)
async def select(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    return await _select(session, args, readonly=False)


@command("EXAMINE", AUTHENTICATED)
async def examine(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    return await _select(session, args, readonly=True)


# -- CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE (RFC 3501 §6.3.3-§6.3.7) -------------------------
def _one_name(args: list[Token]) -> str:
    if len(args) != 1:
        raise Bad("One mailbox name expected")
    return folder_name(args[0])


@command("CREATE", AUTHENTICATED)
async def create(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    name = _one_name(args)
    if name.endswith(DELIMITER):
        name = name[: -len(DELIMITER)]  # RFC 3501 §6.3.3: a trailing delimiter only declares intent
    await _folders(session).create(name)
    return "CREATE completed"


@command("DELETE", AUTHENTICATED)
async def delete(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    name = _one_name(args)
    if session.view is not None and session.view.name == name:
        raise No("Mailbox is selected; select another one first", "INUSE")
    await _folders(session).delete(name)
    return "DELETE completed"


@command("RENAME", AUTHENTICATED)
async def rename(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) != 2:
        raise Bad("RENAME takes two mailbox names")
    old, new = folder_name(args[0]), folder_name(args[1])
    await _folders(session).rename(old, new)
    return "RENAME completed"


@command("SUBSCRIBE", AUTHENTICATED)
async def subscribe(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    await _folders(session).subscribe(_one_name(args))
    return "SUBSCRIBE completed"


@command("UNSUBSCRIBE", AUTHENTICATED)
async def unsubscribe(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    await _folders(session).unsubscribe(_one_name(args))
    return "UNSUBSCRIBE completed"


# -- LIST, LSUB (RFC 3501 §6.3.8, §6.3.9; RFC 6154; RFC 3348) ---------------------------------------
def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8: "*" matches anything, "%" anything but the delimiter."""
    full = reference + pattern
    if full[:5].upper() == "INBOX":
        full = "INBOX" + full[5:]  # INBOX is case-insensitive
    parts = []
    for char in full:
        if char == "*":
            parts.append(".*")
        elif char == "%":
            parts.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def matching(
    folders: list[FolderInfo], reference: str, pattern: str, *, parents: bool = True
) -> list[FolderInfo]:
    """The folders a LIST names, with the parents "%" reaches that do not exist as \\Noselect
    (unless not `parents`: RFC 5258 SUBSCRIBED lists only what is subscribed)."""
    regex = pattern_regex(reference, pattern)
    found = [folder for folder in folders if regex.fullmatch(folder.name)]
    if "%" in pattern and parents:
        known = {folder.name for folder in folders}
        implied: dict[str, FolderInfo] = {}
        for folder in folders:
            parts = folder.name.split(DELIMITER)
            for depth in range(1, len(parts)):
                parent = DELIMITER.join(parts[:depth])
                if parent not in known and parent not in implied and regex.fullmatch(parent):
                    implied[parent] = FolderInfo(parent, ("\\Noselect", "\\HasChildren"), False)
        found += implied.values()
    return found


# RFC 5258 §3 selection options and §3.2 return options (RFC 6154 SPECIAL-USE, RFC 5819 STATUS).
SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _options(tokens: list[Token], allowed: frozenset[str], what: str) -> tuple[set[str], list[str]]:
    """Option words (upper case) and, after STATUS, its items (RFC 5819)."""
    options: set[str] = set()
    items: list[str] = []
    position = 0
    while position < len(tokens):
        token = tokens[position]
        word = token.upper() if isinstance(token, Atom) else ""
        if word not in allowed:
            raise Bad(f"Unknown LIST {what} option")
        options.add(word)
        position += 1
        if word == "STATUS":
            listed = tokens[position] if position < len(tokens) else None
            if not isinstance(listed, list) or not listed:
                raise Bad("STATUS takes a list of items")
            items = _status_items(listed)
            position += 1
    return options, items


def _status_items(tokens: list[Token]) -> list[str]:
    items = []
    for item in tokens:
        word = (as_text(item) or "").upper()
        if not isinstance(item, Atom) or word not in STATUS_ITEMS:
            raise Bad(f"Unknown STATUS item {word[:40]}")
        items.append(word)
    return items


def _status_line(name: str, items: list[str], found: FolderStatus) -> bytes:
    values = {
        "MESSAGES": found.messages,
        "RECENT": found.recent,
        "UIDNEXT": found.uidnext,
        "UIDVALIDITY": found.uidvalidity,
        "UNSEEN": found.unseen,
    }
    pairs = " ".join(f"{item} {values[item]}" for item in items)
    return b"* STATUS " + responses.mailbox_name(name) + b" (" + pairs.encode() + b")\r\n"


async def _list(session: Session, args: list[Token], lsub: bool) -> str:
    selection: set[str] = set()
    returns: set[str] = set()
    status_items: list[str] = []
    if not lsub and args and isinstance(args[0], list):
        selection, _ = _options(args[0], SELECTION_OPTIONS, "selection")
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise Bad("RECURSIVEMATCH needs another selection option")  # RFC 5258 §3
        args = args[1:]
    if not lsub and len(args) == 4 and isinstance(args[2], Atom) and args[2].upper() == "RETURN":
        if not isinstance(args[3], list):
            raise Bad("RETURN takes a list of options")
        returns, status_items = _options(args[3], RETURN_OPTIONS, "return")
        args = args[:2]
    if len(args) != 2 or isinstance(args[0], list) or (lsub and isinstance(args[1], list)):
        raise Bad("A reference and a mailbox pattern expected")
    reference = text_argument(args[0], "Reference")
    # RFC 5258 §3: several patterns in a list.
    patterns = [
        text_argument(token, "Pattern") for token in (args[1] if isinstance(args[1], list) else [args[1]])
    ]
    if not patterns:
        raise Bad("A mailbox pattern expected")
    word = "LSUB" if lsub else "LIST"
    if patterns == [""]:
        # RFC 3501 §6.3.8: the delimiter and the root of the reference
        root = reference.split(DELIMITER)[0] + DELIMITER if DELIMITER in reference else ""
        session.send(b"* %s (\\Noselect) %s %s\r\n" % (word.encode(), b'"."', responses.mailbox_name(root)))
        return f"{word} completed"
    folders = await _folders(session).list()
    subscribed_only = "SUBSCRIBED" in selection
    if lsub or subscribed_only:
        known = {folder.name for folder in folders}
        gone = [
            FolderInfo(name, ("\\NonExistent",), True)  # RFC 5258 §3: subscribed, not there
            for name in await _folders(session).subscriptions()
            if name not in known
        ]
        folders = [folder for folder in folders if folder.subscribed] + ([] if lsub else gone)
    found: dict[str, FolderInfo] = {}
    for pattern in patterns:
        for folder in matching(folders, reference, pattern, parents=lsub or not subscribed_only):
            found.setdefault(folder.name, folder)
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in selection and subscribed_only:
        # RFC 5258 §3.5: a parent the patterns match, not itself subscribed, with a subscribed
        # child, is listed with CHILDINFO ("SUBSCRIBED").
        everything = await _folders(session).list()
        for pattern in patterns:
            regex = pattern_regex(reference, pattern)
            for folder in everything:
                if folder.name in found or not regex.fullmatch(folder.name):
                    continue
                if any(other.name.startswith(folder.name + DELIMITER) for other in folders):
                    found[folder.name] = FolderInfo(folder.name, folder.attributes, False)
                    childinfo.add(folder.name)
    chosen = list(found.values())
    if "SPECIAL-USE" in selection:
        chosen = [folder for folder in chosen if SPECIAL_USE.intersection(folder.attributes)]
    for folder in sorted(chosen, key=lambda f: (f.name != "INBOX", f.name)):
        attributes = list(folder.attributes)
        if lsub:
            attributes = [a for a in attributes if a == "\\Noselect"]
        elif folder.subscribed and (subscribed_only or "SUBSCRIBED" in returns):
            attributes.append("\\Subscribed")
        line = b'* %s (%s) "." %s' % (
            word.encode(),
            " ".join(attributes).encode(),
            responses.mailbox_name(folder.name),
        )
        if folder.name in childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        session.send(line + b"\r\n")
        if status_items and not {"\\Noselect", "\\NonExistent"}.intersection(attributes):
            # RFC 5819: the STATUS of each selectable mailbox listed, right after its LIST line.
            session.send(_status_line(folder.name, status_items, await _folders(session).status(folder.name)))
    return f"{word} completed"


@command("LIST", AUTHENTICATED)
async def list_command(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    return await _list(session, args, lsub=False)


@command("LSUB", AUTHENTICATED)
async def lsub(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    return await _list(session, args, lsub=True)


# -- STATUS (RFC 3501 §6.3.10) -----------------------------------------------------------------------
@command("STATUS", AUTHENTICATED)
async def status(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) != 2 or not isinstance(args[1], list) or not args[1]:
        raise Bad("STATUS takes a mailbox name and a list of items")
    name = folder_name(args[0])
    items = _status_items(args[1])
    session.send(_status_line(name, items, await _folders(session).status(name)))
    return "STATUS completed"


# -- APPEND (RFC 3501 §6.3.11, UIDPLUS RFC 4315 §3) --------------------------------------------------
def store_flags(tokens: list[Token]) -> set[str]:
    """A flag list for APPEND or STORE: system flags in their canonical case, keywords as sent."""
    flags: set[str] = set()
    for token in tokens:
        if not isinstance(token, Atom):
            raise Bad("Flags must be atoms")
        flag = token.value
        if flag.startswith("\\"):
            canonical = responses.SYSTEM_FLAGS_UPPER.get(flag.upper())
            if canonical is None:
                raise Bad(f"Unknown system flag {flag[:40]}")
            if canonical != "\\Recent":  # RFC 3501 §2.3.2: \Recent cannot be set by a client
                flags.add(canonical)
        elif any(char in flag for char in '()[]{%*"\\]') or not flag.isascii():
            raise Bad("Invalid keyword")
        else:
            flags.add(flag)
    return flags


@command("APPEND", AUTHENTICATED)
async def append(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) < 2:
        raise Bad("APPEND takes a mailbox name and a message")
    name = folder_name(args[0])
    messages = _messages(args[1:])
    try:
        uidvalidity, uids = await _folders(session).append(name, messages)
    except MailboxError as error:
        if error.code == "NONEXISTENT":
            raise No(error.text, "TRYCREATE") from None  # RFC 3501 §6.3.11
        raise
    # RFC 4315 §3: one UID, or the set of them for a MULTIAPPEND.
    return f"[APPENDUID {uidvalidity} {format_set(uids)}] APPEND completed"


def _messages(args: list[Token]) -> list[NewMessage]:
    """RFC 3502 §6.3.11: one or more of [flag-list] [date-time] literal."""
    messages: list[NewMessage] = []
    position = 0
    while position < len(args):
        flags: set[str] = set()
        internaldate: float | None = None
        first = args[position]
        if isinstance(first, list):
            flags = store_flags(first)
            position += 1
        token = args[position] if position < len(args) else None
        if isinstance(token, bytes) and not isinstance(token, MessageLiteral | FileLiteral):
            internaldate = responses.parse_date_time(token.decode("ascii", "replace"))
            position += 1
        token = args[position] if position < len(args) else None
        if isinstance(token, FileLiteral):
            messages.append(NewMessage(token.path, token.size, flags, internaldate))
        elif isinstance(token, MessageLiteral):
            messages.append(NewMessage(bytes(token), len(token), flags, internaldate))
        else:
            raise Bad("The message must be a literal")
        if messages[-1].size == 0:
            raise No("Empty message")
        position += 1
    return messages
