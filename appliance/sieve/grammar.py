"""What each Sieve command and test takes, checked once when a script is compiled.

A script that names a command of an extension it did not `require` (RFC 5228 §3.2), gives a tag
twice, two match types, a number where a string belongs, or a test to a command that takes
none, is refused here with the line and column of the offending piece; the interpreter then
meets only well-formed nodes (`Node`): tags by name, positional arguments in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.sieve.syntax import Argument, Command, Number, SieveError, Strings, Tag, Test, parse

# The capabilities a script may require (RFC 5228 §6 and the extension RFCs the issue lists).
EXTENSIONS = frozenset(
    {
        "fileinto",
        "envelope",
        "encoded-character",
        "comparator-i;octet",
        "comparator-i;ascii-casemap",
        "comparator-i;ascii-numeric",
        "reject",  # RFC 5429
        "ereject",
        "vacation",  # RFC 5230
        "imap4flags",  # RFC 5232
        "copy",  # RFC 3894
        "body",  # RFC 5173
        "variables",  # RFC 5229
        "relational",  # RFC 5231
        "subaddress",  # RFC 5233
        "date",  # RFC 5260
        "index",
        "include",  # RFC 6609
        "mailbox",  # RFC 5490
    }
)

COMPARATORS = {"i;octet": None, "i;ascii-casemap": None, "i;ascii-numeric": "comparator-i;ascii-numeric"}
MATCH_TYPES = {
    ":is": None,
    ":contains": None,
    ":matches": None,
    ":count": "relational",
    ":value": "relational",
}
ADDRESS_PARTS = {
    ":all": None,
    ":localpart": None,
    ":domain": None,
    ":user": "subaddress",
    ":detail": "subaddress",
}
RELATIONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
DATE_PARTS = frozenset(
    {
        "year",
        "month",
        "day",
        "date",
        "julian",
        "hour",
        "minute",
        "second",
        "time",
        "iso8601",
        "std11",
        "zone",
        "weekday",
    }
)

# A tag's value: None (a flag), "string", "strings" or "number". Tags of one group exclude each other.
_MATCH = {":is": None, ":contains": None, ":matches": None, ":count": "string", ":value": "string"}
_COMPARATOR = {":comparator": "string"}
_ADDRESS = {":all": None, ":localpart": None, ":domain": None, ":user": None, ":detail": None}
_INDEX = {":index": "number", ":last": None}
_GROUPS: tuple[frozenset[str], ...] = (
    frozenset(_MATCH),
    frozenset(_ADDRESS),
    frozenset({":raw", ":content", ":text"}),
    frozenset({":zone", ":originalzone"}),
    frozenset({":personal", ":global"}),
    frozenset({":over", ":under"}),
    frozenset({":lower", ":upper"}),
    frozenset({":lowerfirst", ":upperfirst"}),
)


@dataclass(frozen=True)
class _Spec:
    extension: str | None
    positional: tuple[str, ...]  # "string", "strings", "number"; a trailing "?" makes it optional
    tags: Mapping[str, str | None] = field(default_factory=dict)
    tests: str = "none"  # "none", "one", "list"
    block: bool = False
    tag_extensions: Mapping[str, str] = field(default_factory=dict)


_S = "strings"
COMMANDS: dict[str, _Spec] = {
    "require": _Spec(None, (_S,)),
    "if": _Spec(None, (), tests="one", block=True),
    "elsif": _Spec(None, (), tests="one", block=True),
    "else": _Spec(None, (), block=True),
    "stop": _Spec(None, ()),
    "keep": _Spec(None, (), {":flags": _S}, tag_extensions={":flags": "imap4flags"}),
    "discard": _Spec(None, ()),
    "redirect": _Spec(None, ("string",), {":copy": None}, tag_extensions={":copy": "copy"}),
    "fileinto": _Spec(
        "fileinto",
        ("string",),
        {":copy": None, ":flags": _S, ":create": None},
        tag_extensions={":copy": "copy", ":flags": "imap4flags", ":create": "mailbox"},
    ),
    "reject": _Spec("reject", ("string",)),
    "ereject": _Spec("ereject", ("string",)),
    "vacation": _Spec(
        "vacation",
        ("string",),
        {
            ":days": "number",
            ":subject": "string",
            ":from": "string",
            ":addresses": _S,
            ":mime": None,
            ":handle": "string",
        },
    ),
    "setflag": _Spec("imap4flags", ("string?", _S)),
    "addflag": _Spec("imap4flags", ("string?", _S)),
    "removeflag": _Spec("imap4flags", ("string?", _S)),
    "set": _Spec(
        "variables",
        ("string", "string"),
        dict.fromkeys((":lower", ":upper", ":lowerfirst", ":upperfirst", ":quotewildcard", ":length")),
    ),
    "include": _Spec("include", ("string",), dict.fromkeys((":personal", ":global", ":once", ":optional"))),
    "return": _Spec("include", ()),
    "global": _Spec("include", (_S,)),
}

_MATCHING = {**_MATCH, **_COMPARATOR}
TESTS: dict[str, _Spec] = {
    "address": _Spec(None, (_S, _S), {**_MATCHING, **_ADDRESS, **_INDEX}),
    "header": _Spec(None, (_S, _S), {**_MATCHING, **_INDEX}),
    "envelope": _Spec("envelope", (_S, _S), {**_MATCHING, **_ADDRESS}),
    "exists": _Spec(None, (_S,)),
    "size": _Spec(None, ("number",), {":over": None, ":under": None}),
    "allof": _Spec(None, (), tests="list"),
    "anyof": _Spec(None, (), tests="list"),
    "not": _Spec(None, (), tests="one"),
    "true": _Spec(None, ()),
    "false": _Spec(None, ()),
    "body": _Spec("body", (_S,), {**_MATCHING, ":raw": None, ":content": _S, ":text": None}),
    "date": _Spec(
        "date",
        ("string", "string", _S),
        {**_MATCHING, **_INDEX, ":zone": "string", ":originalzone": None},
    ),
    "currentdate": _Spec("date", ("string", _S), {**_MATCHING, ":zone": "string"}),
    "string": _Spec("variables", (_S, _S), _MATCHING),
    "hasflag": _Spec("imap4flags", ("string?", _S), _MATCHING),
}
_TAG_EXTENSIONS = {**MATCH_TYPES, **ADDRESS_PARTS, ":index": "index", ":last": "index"}


@dataclass(frozen=True)
class Node:
    """A checked command or test: tags by name (value or True), positional values in order."""

    name: str
    tags: Mapping[str, object]
    positional: tuple[object, ...]
    tests: tuple[Node, ...]
    block: tuple[Node, ...] | None
    line: int
    column: int


@dataclass(frozen=True)
class Script:
    commands: tuple[Node, ...]
    requires: frozenset[str]
    includes: tuple[tuple[str, str, int, int], ...]  # (":personal"/":global", name, line, column)


def compile_script(text: str) -> Script:
    """Parse and check a script; SieveError names the first problem's line and column."""
    commands = parse(text)
    requires: set[str] = set()
    includes: list[tuple[str, str, int, int]] = []
    checked = _check_block(commands, requires, includes, top=True)
    return Script(checked, frozenset(requires), tuple(includes))


def _check_block(
    commands: tuple[Command, ...], requires: set[str], includes: list[tuple[str, str, int, int]], top: bool
) -> tuple[Node, ...]:
    out: list[Node] = []
    previous = ""
    for index, command in enumerate(commands):
        if command.name == "require":
            # RFC 5228 §3.2: require only at the start of the script.
            if not top or any(c.name != "require" for c in commands[:index]):
                raise SieveError(command.line, command.column, "require must come before any other command")
            node = _check(command, COMMANDS["require"], requires, "command")
            for name in node.positional[0]:  # type: ignore[attr-defined]
                if name not in EXTENSIONS:
                    raise SieveError(command.line, command.column, f"unsupported extension {name!r}")
                requires.add(name)
            continue
        spec = COMMANDS.get(command.name)
        if spec is None:
            raise SieveError(command.line, command.column, f"unknown command {command.name!r}")
        if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
            raise SieveError(command.line, command.column, f"{command.name} without a preceding if")
        if spec.block != (command.block is not None):
            want = "a block" if spec.block else "';'"
            raise SieveError(command.line, command.column, f"{command.name} must be followed by {want}")
        if command.name == "global" and "variables" not in requires:
            raise SieveError(command.line, command.column, 'global needs require "variables"')
        node = _check(command, spec, requires, "command")
        if command.block is not None:
            block = _check_block(command.block, requires, includes, top=False)
            node = Node(node.name, node.tags, node.positional, node.tests, block, node.line, node.column)
        if command.name == "include":
            where = ":global" if ":global" in node.tags else ":personal"
            includes.append((where, str(node.positional[0]), command.line, command.column))
        out.append(node)
        previous = command.name
    return tuple(out)


def _check(item: Command | Test, spec: _Spec, requires: set[str], kind: str) -> Node:
    if spec.extension is not None and spec.extension not in requires:
        raise SieveError(item.line, item.column, f"{kind} {item.name!r} needs require {spec.extension!r}")
    tags: dict[str, object] = {}
    positional: list[object] = []
    arguments = list(item.arguments)
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        i += 1
        if isinstance(argument, Tag):
            name = argument.name
            if name not in spec.tags:
                raise SieveError(argument.line, argument.column, f"{item.name} takes no tag {name}")
            if positional:
                raise SieveError(argument.line, argument.column, f"tag {name} after a positional argument")
            if name in tags:
                raise SieveError(argument.line, argument.column, f"tag {name} given twice")
            for group in _GROUPS:
                if name in group and group & tags.keys():
                    raise SieveError(argument.line, argument.column, f"{name} conflicts with another tag")
            needs = spec.tag_extensions.get(name) or _TAG_EXTENSIONS.get(name)
            if needs is not None and needs not in requires:
                raise SieveError(argument.line, argument.column, f"tag {name} needs require {needs!r}")
            value_kind = spec.tags[name]
            if value_kind is None:
                tags[name] = True
                continue
            if i >= len(arguments):
                raise SieveError(argument.line, argument.column, f"tag {name} needs a value")
            tags[name] = _value(arguments[i], value_kind, f"tag {name}")
            i += 1
        else:
            positional.append(argument)
    wanted = spec.positional
    required = [w for w in wanted if not w.endswith("?")]
    if not len(required) <= len(positional) <= len(wanted):
        count = f"{len(required)}" if len(required) == len(wanted) else f"{len(required)} or {len(wanted)}"
        raise SieveError(
            item.line, item.column, f"{item.name} takes {count} arguments, got {len(positional)}"
        )
    if len(positional) < len(wanted):  # the optional argument leads (setflag "var" ["flags"])
        wanted = wanted[len(wanted) - len(positional) :]
    values = tuple(
        _value(argument, kind.rstrip("?"), item.name)  # type: ignore[arg-type]
        for argument, kind in zip(positional, wanted, strict=True)
    )
    _check_values(item, tags, values, requires)
    tests: tuple[Node, ...] = ()
    if spec.tests == "none" and item.tests:
        raise SieveError(item.line, item.column, f"{item.name} takes no test")
    if spec.tests == "one" and len(item.tests) != 1:
        raise SieveError(item.line, item.column, f"{item.name} takes exactly one test")
    if spec.tests == "list" and not item.tests:
        raise SieveError(item.line, item.column, f"{item.name} takes a list of tests")
    for test in item.tests:
        test_spec = TESTS.get(test.name)
        if test_spec is None:
            raise SieveError(test.line, test.column, f"unknown test {test.name!r}")
        tests += (_check(test, test_spec, requires, "test"),)
    return Node(item.name, tags, values, tests, None, item.line, item.column)


def _value(argument: Argument, kind: str, what: str) -> object:
    if kind == "number":
        if not isinstance(argument, Number):
            raise SieveError(argument.line, argument.column, f"{what} needs a number")
        return argument.value
    if not isinstance(argument, Strings):
        raise SieveError(argument.line, argument.column, f"{what} needs a string")
    if kind == "string":
        if argument.is_list and len(argument.values) != 1:
            raise SieveError(argument.line, argument.column, f"{what} needs one string, not a list")
        return argument.values[0]
    return argument.values


def _check_values(
    item: Command | Test, tags: dict[str, object], values: tuple[object, ...], requires: set[str]
) -> None:
    comparator = tags.get(":comparator")
    if comparator is not None:
        if comparator not in COMPARATORS:
            raise SieveError(item.line, item.column, f"unknown comparator {comparator!r}")
        needs = COMPARATORS[str(comparator)]
        if needs is not None and needs not in requires:
            raise SieveError(item.line, item.column, f"comparator {comparator} needs require {needs!r}")
    for relational in (":count", ":value"):
        if relational in tags and str(tags[relational]).lower() not in RELATIONS:
            raise SieveError(
                item.line, item.column, f"{relational} needs one of {', '.join(sorted(RELATIONS))}"
            )
    if item.name in ("date", "currentdate"):
        part = values[1 if item.name == "date" else 0]
        if str(part).lower() not in DATE_PARTS and "variables" not in requires:
            raise SieveError(item.line, item.column, f"unknown date part {part!r}")
    if item.name == "envelope":
        for part in values[0]:  # type: ignore[attr-defined]
            if str(part).lower() not in ("from", "to") and "variables" not in requires:
                raise SieveError(item.line, item.column, f"unknown envelope part {part!r}")
    if item.name == "vacation" and ":days" in tags and int(tags[":days"]) < 0:  # type: ignore[call-overload]
        raise SieveError(item.line, item.column, ":days must not be negative")
