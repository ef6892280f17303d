"""Sieve script text -> syntax tree (RFC 5228 §8), every node with the line and column it starts at.

The lexical rules are RFC 5228 §8.1: `#` and `/* */` comments, identifiers, `:tags`, numbers
with a K/M/G quantifier, "quoted strings" (a backslash escapes the next character) and
`text:` multi-line strings ending in a line holding a lone dot (dot-stuffed). The grammar is
§8.2: a command is an identifier, arguments, then `;` or a block; arguments are string lists,
numbers and tags, then a test or a parenthesised test list. The meaning of names is checked
later (grammar.py); this module knows no command.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SCRIPT_BYTES = 1 << 20
MAX_NESTING = 64


class SieveError(Exception):
    """A script that cannot run: what is wrong and where (1-based line and column)."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.line = line
        self.column = column
        self.message = message


@dataclass(frozen=True)
class Tag:
    name: str  # with its colon, lower case: ":contains"
    line: int
    column: int


@dataclass(frozen=True)
class Number:
    value: int
    line: int
    column: int


@dataclass(frozen=True)
class Strings:
    values: tuple[str, ...]
    is_list: bool  # written in brackets
    line: int
    column: int


Argument = Tag | Number | Strings


@dataclass(frozen=True)
class Test:
    name: str  # lower case
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int
    column: int


@dataclass(frozen=True)
class Command:
    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None
    line: int
    column: int


@dataclass(frozen=True)
class _Token:
    kind: str  # "id", "tag", "number", "string", "text", or the punctuation character itself
    value: str
    line: int
    column: int


_QUANTIFIERS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_PUNCTUATION = set(";,[](){}")


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, line, line_start = 0, 1, 0
    n = len(text)
    while i < n:
        c = text[i]
        column = i - line_start + 1
        if c == "\n":
            i += 1
            line, line_start = line + 1, i
        elif c in " \t\r":
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise SieveError(line, column, "unterminated /* comment")
            for _ in range(text.count("\n", i, end)):
                line += 1
            if "\n" in text[i:end]:
                line_start = text.rfind("\n", i, end) + 1
            i = end + 2
        elif c in _PUNCTUATION:
            tokens.append(_Token(c, c, line, column))
            i += 1
        elif c == '"':
            i, value, lines, last_start = _quoted(text, i + 1, line, column)
            if lines:
                line, line_start = line + lines, last_start
            tokens.append(_Token("string", value, line - lines, column))
        elif c.isdigit():
            j = i
            while j < n and text[j].isdigit():
                j += 1
            number = int(text[i:j])
            if j < n and text[j].lower() in _QUANTIFIERS:
                number *= _QUANTIFIERS[text[j].lower()]
                j += 1
            tokens.append(_Token("number", str(number), line, column))
            i = j
        elif c == ":" or c.isalpha() or c == "_":
            j = i + 1 if c == ":" else i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word == ":":
                raise SieveError(line, column, "a tag needs a name after ':'")
            if word.lower() == "text" and j < n and text[j] == ":":
                i, value, lines, last_start = _multiline(text, j + 1, line, column)
                tokens.append(_Token("string", value, line, column))
                line, line_start = line + lines, last_start
                continue
            tokens.append(_Token("tag" if c == ":" else "id", word.lower(), line, column))
            i = j
        else:
            raise SieveError(line, column, f"unexpected character {c!r}")
    return tokens


def _quoted(text: str, i: int, line: int, column: int) -> tuple[int, str, int, int]:
    out: list[str] = []
    lines, last_start = 0, 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i + 1, "".join(out), lines, last_start
        if c == "\\" and i + 1 < n:
            # RFC 5228 §2.4.2: a backslash quotes the next character, whatever it is.
            c = text[i + 1]
            i += 1
        if c == "\n":
            lines, last_start = lines + 1, i + 1
        out.append(c)
        i += 1
    raise SieveError(line, column, "unterminated string")


def _multiline(text: str, i: int, line: int, column: int) -> tuple[int, str, int, int]:
    # RFC 5228 §2.4.2: "text:" then spaces or a comment, CRLF, lines, and "." CRLF.
    end = text.find("\n", i)
    rest = text[i:end] if end >= 0 else text[i:]
    if end < 0 or (rest.strip() and not rest.strip().startswith("#")):
        raise SieveError(line, column, "text: must be followed by the end of the line")
    i, lines = end + 1, 1
    out: list[str] = []
    while True:
        end = text.find("\n", i)
        if end < 0:
            raise SieveError(line, column, "multi-line string never ends (a line with a lone '.')")
        content = text[i:end].rstrip("\r")
        lines += 1
        i = end + 1
        if content == ".":
            return i, "".join(out), lines, i
        out.append((content[1:] if content.startswith("..") else content) + "\r\n")


class _Parser:
    def __init__(self, tokens: list[_Token], text: str) -> None:
        self.tokens = tokens
        self.position = 0
        self.end_line = text.count("\n") + 1

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise SieveError(self.end_line, 1, "unexpected end of script")
        self.position += 1
        return token

    def expect(self, kind: str, what: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            raise SieveError(token.line, token.column, f"expected {what}, found {token.value!r}")
        return token

    def commands(self, depth: int, closing: bool) -> tuple[Command, ...]:
        if depth > MAX_NESTING:
            token = self.peek()
            raise SieveError(token.line if token else 1, token.column if token else 1, "nested too deep")
        out: list[Command] = []
        while (token := self.peek()) is not None and not (closing and token.kind == "}"):
            out.append(self.command(depth))
        if closing:
            self.expect("}", "'}'")
        return tuple(out)

    def command(self, depth: int) -> Command:
        name = self.expect("id", "a command")
        arguments, tests = self.arguments(depth)
        token = self.take()
        if token.kind == ";":
            return Command(name.value, arguments, tests, None, name.line, name.column)
        if token.kind == "{":
            block = self.commands(depth + 1, closing=True)
            return Command(name.value, arguments, tests, block, name.line, name.column)
        raise SieveError(token.line, token.column, f"expected ';' or a block, found {token.value!r}")

    def arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...]]:
        arguments: list[Argument] = []
        while (token := self.peek()) is not None:
            if token.kind == "tag":
                self.take()
                arguments.append(Tag(token.value, token.line, token.column))
            elif token.kind == "number":
                self.take()
                arguments.append(Number(int(token.value), token.line, token.column))
            elif token.kind in ("string", "["):
                arguments.append(self.string_list())
            else:
                break
        token = self.peek()
        if token is not None and token.kind == "(":
            self.take()
            tests = [self.test(depth + 1)]
            while self.peek() is not None and self.take().kind == ",":
                tests.append(self.test(depth + 1))
            last = self.tokens[self.position - 1]
            if last.kind != ")":
                raise SieveError(last.line, last.column, f"expected ')' or ',', found {last.value!r}")
            return tuple(arguments), tuple(tests)
        if token is not None and token.kind == "id":
            return tuple(arguments), (self.test(depth + 1),)
        return tuple(arguments), ()

    def test(self, depth: int) -> Test:
        if depth > MAX_NESTING:
            token = self.peek()
            raise SieveError(token.line if token else 1, token.column if token else 1, "nested too deep")
        name = self.expect("id", "a test")
        arguments, tests = self.arguments(depth)
        return Test(name.value, arguments, tests, name.line, name.column)

    def string_list(self) -> Strings:
        first = self.take()
        if first.kind == "string":
            return Strings((first.value,), False, first.line, first.column)
        values = [self.expect("string", "a string").value]
        while (token := self.take()).kind == ",":
            values.append(self.expect("string", "a string").value)
        if token.kind != "]":
            raise SieveError(token.line, token.column, f"expected ']' or ',', found {token.value!r}")
        return Strings(tuple(values), True, first.line, first.column)


def parse(text: str) -> tuple[Command, ...]:
    """The commands of a script; SieveError at the first thing that is not Sieve."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_SCRIPT_BYTES:
        raise SieveError(1, 1, f"script larger than {MAX_SCRIPT_BYTES} bytes")
    parser = _Parser(_tokens(text), text)
    return parser.commands(0, closing=False)
