"""Running a compiled Sieve script on one message for one recipient: the actions it decides.

Nothing here touches a mailbox or the network: `run` returns an `Outcome` (the folders to store
into with their flags, redirects, a reject, a vacation reply to consider) and the caller acts
on it. RFC 5228 §2.10.2: the implicit keep files the message into INBOX unless an action
cancelled it (keep, fileinto, redirect without :copy, discard, reject). Runtime errors end the
script and fall back to the implicit keep (§2.10.6), said so in `Outcome.error`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from appliance.sieve.conditions import evaluate
from appliance.sieve.grammar import Node, Script
from appliance.sieve.matching import quote_wildcard
from appliance.sieve.message import Envelope, MessageView

MAX_INCLUDE_DEPTH = 10
MAX_REDIRECTS = 4
MAX_STEPS = 100_000
DAY = 86_400

# Finds an included script: (":personal" or ":global", name, the including script) -> the
# compiled script, or None.
Resolver = Callable[[str, str, Script], Script | None]


@dataclass(frozen=True)
class Store:
    mailbox: str
    flags: tuple[str, ...]
    create: bool = False


@dataclass(frozen=True)
class Vacation:
    reason: str
    subject: str | None
    sender: str | None  # :from
    addresses: tuple[str, ...]
    mime: bool
    seconds: int
    handle: str


@dataclass
class Outcome:
    stores: list[Store] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None
    extended_reject: bool = False
    vacation: Vacation | None = None
    discarded: bool = False
    error: str | None = None


class SieveRuntimeError(Exception):
    pass


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")


class _Frame:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.variables: dict[str, str] = {}
        self.globals: set[str] = set()


class _Run:
    def __init__(
        self, message: MessageView, envelope: Envelope, delimiter: str, resolver: Resolver | None
    ) -> None:
        self.message = message
        self.envelope = envelope
        self.delimiter = delimiter
        self.resolver = resolver
        self.outcome = Outcome()
        self.keep = True  # the implicit keep
        self.flags: list[str] = []  # RFC 5232 §3: the internal flags variable
        self.global_variables: dict[str, str] = {}
        self.match_variables: list[str] = []
        self.frames: list[_Frame] = []
        self.included: set[tuple[str, str]] = set()
        self.steps = 0
        self._now = datetime.datetime.now().astimezone()

    @property
    def frame(self) -> _Frame:
        return self.frames[-1]

    # --- the State the tests use
    def now(self) -> datetime.datetime:
        return self._now

    def expand(self, value: str) -> str:
        if "variables" not in self.frame.script.requires or "${" not in value:
            return value
        return _VARIABLE.sub(lambda found: self._lookup(found.group(1)), value)

    def expand_all(self, values: Sequence[str]) -> list[str]:
        return [self.expand(v) for v in values]

    def _lookup(self, name: str) -> str:
        if name.isdigit():
            index = int(name)
            return self.match_variables[index] if index < len(self.match_variables) else ""
        name = name.lower()
        if name.startswith("global."):
            return self.global_variables.get(name[7:], "")
        if "." in name:
            return ""
        if name in self.frame.globals:
            return self.global_variables.get(name, "")
        return self.frame.variables.get(name, "")

    def assign(self, name: str, value: str) -> None:
        name = name.lower()
        if name.startswith("global."):
            self.global_variables[name[7:]] = value
        elif name in self.frame.globals:
            self.global_variables[name] = value
        else:
            self.frame.variables[name] = value

    def set_match_variables(self, values: list[str]) -> None:
        if "variables" in self.frame.script.requires:
            self.match_variables = values

    def flag_variable(self, name: str | None) -> list[str]:
        if name is None:
            return list(self.flags)
        return _split_flags([self._lookup(name)])

    # --- running
    def run_script(self, script: Script) -> None:
        self.frames.append(_Frame(script))
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.frames.pop()

    def block(self, commands: Sequence[Node]) -> None:
        branch_taken = False
        for node in commands:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise SieveRuntimeError("script ran too many steps")
            if node.name == "if":
                branch_taken = evaluate(node.tests[0], self)
                if branch_taken:
                    self.block(node.block or ())
            elif node.name == "elsif":
                if not branch_taken:
                    branch_taken = evaluate(node.tests[0], self)
                    if branch_taken:
                        self.block(node.block or ())
            elif node.name == "else":
                if not branch_taken:
                    self.block(node.block or ())
                branch_taken = True
            else:
                _COMMANDS[node.name](self, node)

    def string(self, node: Node, index: int) -> str:
        return self.expand(str(node.positional[index]))

    def strings(self, values: object) -> list[str]:
        return self.expand_all(values)  # type: ignore[arg-type]

    def action_flags(self, node: Node) -> tuple[str, ...]:
        if ":flags" in node.tags:
            return tuple(_split_flags(self.strings(node.tags[":flags"])))
        return tuple(self.flags) if "imap4flags" in self.frame.script.requires else ()

    def store(self, mailbox: str, flags: tuple[str, ...], create: bool) -> None:
        key = _mailbox_key(mailbox)
        for index, existing in enumerate(self.outcome.stores):
            if _mailbox_key(existing.mailbox) == key:  # one store per folder, flags merged
                merged = tuple(_merge_flags(list(existing.flags), list(flags)))
                self.outcome.stores[index] = Store(existing.mailbox, merged, existing.create or create)
                return
        self.outcome.stores.append(Store(mailbox, flags, create))


def _mailbox_key(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


def _split_flags(values: Sequence[str]) -> list[str]:
    return _merge_flags([], [flag for value in values for flag in value.split()])


def _merge_flags(current: list[str], added: Sequence[str]) -> list[str]:
    # RFC 5232 §3: flags compare case-insensitively; each appears once.
    seen = {flag.lower() for flag in current}
    for flag in added:
        if flag.lower() not in seen:
            current.append(flag)
            seen.add(flag.lower())
    return current


def _require(run: _Run, node: Node) -> None:
    pass


def _stop(run: _Run, node: Node) -> None:
    raise _Stop


def _keep(run: _Run, node: Node) -> None:
    run.keep = False
    run.store("INBOX", run.action_flags(node), False)


def _discard(run: _Run, node: Node) -> None:
    run.keep = False
    run.outcome.discarded = True


def _redirect(run: _Run, node: Node) -> None:
    address = run.string(node, 0)
    if "@" not in address:
        raise SieveRuntimeError(f"redirect to an invalid address {address!r}")
    if ":copy" not in node.tags:
        run.keep = False
    if address.lower() not in (a.lower() for a in run.outcome.redirects):
        if len(run.outcome.redirects) >= MAX_REDIRECTS:
            raise SieveRuntimeError("too many redirects")
        run.outcome.redirects.append(address)


def _fileinto(run: _Run, node: Node) -> None:
    if ":copy" not in node.tags:
        run.keep = False
    run.store(run.string(node, 0), run.action_flags(node), ":create" in node.tags)


def _reject(run: _Run, node: Node) -> None:
    if run.outcome.reject is not None:
        raise SieveRuntimeError("more than one reject")
    run.keep = False
    run.outcome.reject = run.string(node, 0)
    run.outcome.extended_reject = node.name == "ereject"


def _vacation(run: _Run, node: Node) -> None:
    if run.outcome.vacation is not None:
        # One vacation action per run: a second one is an error (as Pigeonhole has it).
        raise SieveRuntimeError("more than one vacation action")
    tags = node.tags
    days = int(tags[":days"]) if ":days" in tags else 7  # type: ignore[call-overload]
    reason = run.string(node, 0)
    subject = run.expand(str(tags[":subject"])) if ":subject" in tags else None
    sender = run.expand(str(tags[":from"])) if ":from" in tags else None
    addresses = tuple(run.strings(tags.get(":addresses", ())))
    # RFC 5230 §4.2: without :handle the reply is identified by its reason, subject and from.
    handle = run.expand(str(tags[":handle"])) if ":handle" in tags else f"{reason}\0{subject}\0{sender}"
    run.outcome.vacation = Vacation(
        reason, subject, sender, addresses, ":mime" in tags, max(days, 1) * DAY, handle
    )


def _flags(run: _Run, node: Node) -> None:
    flags = _split_flags(run.strings(node.positional[-1]))
    variable = run.string(node, 0) if len(node.positional) == 2 else None
    current = run.flag_variable(variable)
    if node.name == "setflag":
        current = flags
    elif node.name == "addflag":
        current = _merge_flags(current, flags)
    else:
        gone = {flag.lower() for flag in flags}
        current = [flag for flag in current if flag.lower() not in gone]
    if variable is None:
        run.flags = current
    else:
        run.assign(variable, " ".join(current))


def _set(run: _Run, node: Node) -> None:
    name, value = run.string(node, 0), run.string(node, 1)
    tags = node.tags
    # RFC 5229 §4.1: modifiers apply by precedence: case (40), first letter (30), quoting (20), length (10).
    if ":lower" in tags:
        value = value.lower()
    if ":upper" in tags:
        value = value.upper()
    if ":lowerfirst" in tags:
        value = value[:1].lower() + value[1:]
    if ":upperfirst" in tags:
        value = value[:1].upper() + value[1:]
    if ":quotewildcard" in tags:
        value = quote_wildcard(value)
    if ":length" in tags:
        value = str(len(value))
    run.assign(name, value)


def _include(run: _Run, node: Node) -> None:
    where = ":global" if ":global" in node.tags else ":personal"
    name = run.string(node, 0)
    if ":once" in node.tags and (where, name) in run.included:
        return
    if len(run.frames) > MAX_INCLUDE_DEPTH:
        raise SieveRuntimeError("include nested too deep")
    script = run.resolver(where, name, run.frame.script) if run.resolver is not None else None
    if script is None:
        if ":optional" in node.tags:
            return
        raise SieveRuntimeError(f"included script {name!r} not found")
    run.included.add((where, name))
    run.run_script(script)


def _return(run: _Run, node: Node) -> None:
    raise _Return


def _global(run: _Run, node: Node) -> None:
    for name in run.strings(node.positional[0]):
        run.frame.globals.add(name.lower())


_COMMANDS: dict[str, Callable[[_Run, Node], None]] = {
    "require": _require,
    "stop": _stop,
    "keep": _keep,
    "discard": _discard,
    "redirect": _redirect,
    "fileinto": _fileinto,
    "reject": _reject,
    "ereject": _reject,
    "vacation": _vacation,
    "setflag": _flags,
    "addflag": _flags,
    "removeflag": _flags,
    "set": _set,
    "include": _include,
    "return": _return,
    "global": _global,
}


def run(
    scripts: Sequence[Script],
    message: bytes,
    envelope: Envelope,
    *,
    delimiter: str = "+",
    resolver: Resolver | None = None,
) -> Outcome:
    """Run scripts in turn (sieve_before, the account's, sieve_after) as one execution."""
    state = _Run(MessageView(message), envelope, delimiter, resolver)
    try:
        for script in scripts:
            state.run_script(script)
    except _Stop:
        pass
    except SieveRuntimeError as error:
        # RFC 5228 §2.10.6: on a runtime error the implicit keep is taken, nothing else.
        return Outcome(stores=[Store("INBOX", ())], error=str(error))
    outcome = state.outcome
    if outcome.reject is not None and (outcome.stores or outcome.redirects or outcome.vacation):
        # RFC 5429 §2.1/2.2: reject cannot be combined with delivering the message or a vacation reply.
        return Outcome(stores=[Store("INBOX", ())], error="reject conflicts with another action")
    if state.keep:
        state.store("INBOX", tuple(state.flags), False)
    return outcome
