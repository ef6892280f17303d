"""SORT (RFC 5256 §3), its ESORT form (RFC 5267 §3) and THREAD (RFC 5256 §3), and their UID forms.

The messages are chosen as SEARCH chooses them (selected.matching); what each is sorted or
threaded by comes from its header alone (ordering.summarize), read in batches where message
reads are done and cached per folder, so a second SORT of a folder reads nothing. Ordering a big
result runs in the executor, not on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from appliance.imap import wire
from appliance.imap.commands import SELECTED, command
from appliance.imap.index import MessageInfo
from appliance.imap.ordering import SortError, Summary, parse_sort_criteria, sort_order
from appliance.imap.responses import Bad
from appliance.imap.selected import HEADER_BATCH, SEARCH_ON_LOOP, matching, return_options
from appliance.imap.threads import ALGORITHMS, ordered_subject, references, thread_list
from appliance.imap.tokens import Atom, Token, as_text

if TYPE_CHECKING:
    from appliance.imap.session import Session
    from appliance.imap.view import FolderView

_T = TypeVar("_T")


def _view(session: Session) -> FolderView:
    assert session.view is not None
    return session.view


async def _chosen(
    session: Session, args: list[Token], what: str
) -> tuple[list[int], list[MessageInfo], list[Summary]]:
    """The messages the search keys after the charset (args[0]) match: their sequence numbers,
    infos and summaries (ascending; those that vanished meanwhile left out)."""
    view = _view(session)
    if len(args) < 2:
        raise Bad(f"{what} needs a charset and search keys")
    seqs = await matching(session, view, args[1:], as_text(args[0]))
    messages = view.messages
    kept_seqs: list[int] = []
    kept_infos: list[MessageInfo] = []
    summaries: list[Summary] = []
    for start in range(0, len(seqs), HEADER_BATCH):
        part = seqs[start : start + HEADER_BATCH]
        infos = [messages[seq - 1] for seq in part]
        for seq, info, summary in zip(part, infos, await view.summaries(infos), strict=True):
            if summary is not None:
                kept_seqs.append(seq)
                kept_infos.append(info)
                summaries.append(summary)
    return kept_seqs, kept_infos, summaries


async def _compute(session: Session, size: int, function: Callable[..., _T], *args: object) -> _T:
    """`function(*args)`, in the executor when `size` (work units) is more than a slice of the loop."""
    if size <= SEARCH_ON_LOOP:
        return function(*args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(session.services.executor, function, *args)


@command("SORT", SELECTED, uid=True, holds_expunges=True)
async def sort(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    returns = None
    if (
        len(args) >= 2
        and isinstance(args[0], Atom)
        and args[0].upper() == "RETURN"
        and isinstance(args[1], list)
    ):
        returns = return_options(args[1], "SORT")  # RFC 5267 §3.2: SORT RETURN (...) criteria charset keys
        args = args[2:]
    if not args or not isinstance(args[0], list):
        raise Bad("SORT needs sort criteria in parentheses")
    try:
        criteria = parse_sort_criteria(args[0])
    except SortError as error:
        raise Bad(str(error)) from None
    seqs, infos, summaries = await _chosen(session, args[1:], "SORT")
    order = await _compute(
        session,
        len(seqs) * len(criteria),
        sort_order,
        criteria,
        summaries,
        [info.internaldate for info in infos],
        [info.size for info in infos],
    )
    numbers = [infos[i].uid for i in order] if uid else [seqs[i] for i in order]
    if returns is None:
        session.send(b"* SORT" + b"".join(b" %d" % number for number in numbers) + b"\r\n")
    else:
        session.send(_esort(tag, uid, numbers, returns))
    return "SORT completed"


@command("THREAD", SELECTED, uid=True, holds_expunges=True)
async def thread(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    """RFC 5256 §3: THREAD algorithm charset search-keys; answered with one THREAD response."""
    algorithm = args[0].upper() if args and isinstance(args[0], Atom) else ""
    if algorithm not in ALGORITHMS:
        raise Bad("Unknown THREAD algorithm")
    seqs, infos, summaries = await _chosen(session, args[1:], "THREAD")
    build = ordered_subject if algorithm == "ORDEREDSUBJECT" else references
    numbers = [info.uid for info in infos] if uid else seqs
    cache = _view(session).threads
    keys = tuple(info.key for info in infos)
    cached = cache.get(algorithm)
    if cached is not None and cached[0] == keys:  # the same messages: the same threads
        roots = cached[1]
    else:
        roots = await _compute(
            session, len(seqs) * 4, build, summaries, [info.internaldate for info in infos]
        )
        cache[algorithm] = (keys, roots)
    # RFC 5256 §4: thread-data = "THREAD" [SP 1*thread-list]
    session.send(b"* THREAD" + (b" " + thread_list(roots, numbers) if roots else b"") + b"\r\n")
    return "THREAD completed"


def _sorted_set(numbers: Sequence[int]) -> bytes:
    """RFC 5267 §3.2: ALL in the sort order as a sequence-set: ascending runs as ranges."""
    pieces: list[bytes] = []
    start = 0
    for end in range(1, len(numbers) + 1):
        if end == len(numbers) or numbers[end] != numbers[end - 1] + 1:
            first, last = numbers[start], numbers[end - 1]
            pieces.append(b"%d" % first if first == last else b"%d:%d" % (first, last))
            start = end
    return b",".join(pieces)


def _esort(tag: str, uid: bool, numbers: list[int], returns: frozenset[str]) -> bytes:
    """RFC 5267 §3.2: MIN and MAX are the first and the last message in the sort order."""
    out = b"* ESEARCH (TAG " + wire.string(tag) + b")" + (b" UID" if uid else b"")
    if numbers and "MIN" in returns:
        out += b" MIN %d" % numbers[0]
    if numbers and "MAX" in returns:
        out += b" MAX %d" % numbers[-1]
    if numbers and "ALL" in returns:
        out += b" ALL " + _sorted_set(numbers)
    if "COUNT" in returns:
        out += b" COUNT %d" % len(numbers)
    return out + b"\r\n"
