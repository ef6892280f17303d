"""The command table: which method handles a command, and in which states (RFC 3501 §3, §6).

Handlers live in session.py (any state and not authenticated), folders.py (authenticated),
selected.py (selected) and idle.py; each registers itself here with `@command`. A handler gets
the session, the arguments (Tokens) and whether it runs as a UID command, writes its untagged
responses, and returns the text of the tagged OK, or raises responses.No / responses.Bad.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.imap.tokens import Token

if TYPE_CHECKING:
    from appliance.imap.session import Session


class State(enum.Enum):
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


Handler = Callable[["Session", str, list[Token], bool], Awaitable[str]]


@dataclass(frozen=True)
class Entry:
    handler: Handler
    states: frozenset[State]
    uid: bool  # may follow "UID" (RFC 3501 §6.4.8, RFC 4315 §2.1, RFC 6851 §3.3)
    # RFC 3501 §7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH (sequence numbers would
    # shift under the client); their UID forms may have them.
    holds_expunges: bool


COMMANDS: dict[str, Entry] = {}

ANY = (State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED)
NOT_AUTHENTICATED = (State.NOT_AUTHENTICATED,)
AUTHENTICATED = (State.AUTHENTICATED, State.SELECTED)
SELECTED = (State.SELECTED,)


def command(
    name: str, states: tuple[State, ...], *, uid: bool = False, holds_expunges: bool = False
) -> Callable[[Handler], Handler]:
    """Register `handler` for `name` in `states`."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Entry(handler, frozenset(states), uid, holds_expunges)
        return handler

    return register
