"""Where each key of a TOML document stands, so an error can name its line and column.

The standard library's TOML parser gives values, not positions. This scanner reads a document
that has already parsed cleanly and records, for every key path, the position of its key and of
its value. It runs only when there are errors to report, so it favours being simple over fast.
"""

from __future__ import annotations

from dataclasses import dataclass

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class _Entry:
    key: Position
    value: Position


class Locations:
    """Key path → positions, for one document."""

    def __init__(self, text: str) -> None:
        self._entries: dict[Path, _Entry] = {}
        _Scanner(text, self._entries).scan()

    def key(self, path: Path) -> Position | None:
        """Where the key of `path` (or of its nearest recorded parent) is written."""
        entry = self._nearest(path)
        return entry.key if entry else None

    def value(self, path: Path) -> Position | None:
        """Where the value of `path` starts (or that of its nearest recorded parent)."""
        entry = self._nearest(path)
        return entry.value if entry else None

    def has(self, path: Path) -> bool:
        return path in self._entries

    def _nearest(self, path: Path) -> _Entry | None:
        for end in range(len(path), 0, -1):
            entry = self._entries.get(path[:end])
            if entry is not None:
                return entry
        return None


_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str, entries: dict[Path, _Entry]) -> None:
        self.text = text
        self.entries = entries
        self.i = 0
        self.line = 1
        self.line_start = 0
        self.array_tables: dict[Path, int] = {}

    # -- positions -----------------------------------------------------------------------------
    def here(self) -> Position:
        return Position(self.line, self.i - self.line_start + 1)

    def advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self.i < len(self.text) and self.text[self.i] == "\n":
                self.line += 1
                self.line_start = self.i + 1
            self.i += 1

    def peek(self, offset: int = 0) -> str:
        index = self.i + offset
        return self.text[index] if index < len(self.text) else ""

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.text):
            char = self.text[self.i]
            if char in " \t\r" or (newlines and char == "\n"):
                self.advance()
            elif char == "#":
                while self.i < len(self.text) and self.text[self.i] != "\n":
                    self.advance()
            else:
                return

    def record(self, path: Path, key: Position, value: Position) -> None:
        self.entries.setdefault(path, _Entry(key, value))

    # -- grammar -------------------------------------------------------------------------------
    def scan(self) -> None:
        table: Path = ()
        while True:
            self.skip_space(newlines=True)
            if self.i >= len(self.text):
                return
            if self.peek() == "[":
                table = self.table_header()
            else:
                self.key_value(table)

    def table_header(self) -> Path:
        start = self.here()
        is_array = self.peek(1) == "["
        self.advance(2 if is_array else 1)
        self.skip_space(newlines=False)
        keys = self.dotted_key()
        self.skip_space(newlines=False)
        self.advance(2 if is_array else 1)
        path: Path = tuple(keys)
        if is_array:
            index = self.array_tables.get(path, -1) + 1
            self.array_tables[path] = index
            self.record(path, start, start)
            path = path + (index,)
        for end in range(1, len(path) + 1):
            self.record(path[:end], start, start)
        return path

    def dotted_key(self) -> list[str]:
        keys = [self.simple_key()]
        while True:
            self.skip_space(newlines=False)
            if self.peek() != ".":
                return keys
            self.advance()
            self.skip_space(newlines=False)
            keys.append(self.simple_key())

    def simple_key(self) -> str:
        char = self.peek()
        if char in ('"', "'"):
            return self.string()
        start = self.i
        while self.peek() in _BARE and self.peek():
            self.advance()
        return self.text[start : self.i]

    def key_value(self, table: Path) -> None:
        key_pos = self.here()
        keys = self.dotted_key()
        self.skip_space(newlines=False)
        if self.peek() == "=":
            self.advance()
        self.skip_space(newlines=False)
        path = table + tuple(keys)
        for end in range(len(table) + 1, len(path)):
            self.record(path[:end], key_pos, key_pos)
        self.record(path, key_pos, self.here())
        self.value(path)

    def value(self, path: Path) -> None:
        char = self.peek()
        if char == "{":
            self.inline_table(path)
        elif char == "[":
            self.array(path)
        elif char in ('"', "'"):
            self.string()
        else:
            while self.peek() and self.peek() not in ",]}\n#":
                self.advance()

    def inline_table(self, path: Path) -> None:
        self.advance()  # {
        while True:
            self.skip_space(newlines=True)
            char = self.peek()
            if char in ("}", ""):
                self.advance()
                return
            if char == ",":
                self.advance()
                continue
            self.key_value(path)

    def array(self, path: Path) -> None:
        self.advance()  # [
        index = 0
        while True:
            self.skip_space(newlines=True)
            char = self.peek()
            if char in ("]", ""):
                self.advance()
                return
            if char == ",":
                self.advance()
                continue
            position = self.here()
            self.record(path + (index,), position, position)
            self.value(path + (index,))
            index += 1

    def string(self) -> str:
        quote = self.peek()
        if self.text.startswith(quote * 3, self.i):
            self.advance(3)
            start = self.i
            while self.i < len(self.text) and not self.text.startswith(quote * 3, self.i):
                self.advance(2 if quote == '"' and self.peek() == "\\" else 1)
            end = self.i
            self.advance(3)
            while self.peek() == quote:  # up to two quotes may close the string too
                self.advance()
                end += 1
            return self.text[start:end]
        self.advance()
        chars: list[str] = []
        while self.i < len(self.text) and self.peek() != quote and self.peek() != "\n":
            char = self.peek()
            if quote == '"' and char == "\\":
                chars.append(self._escape())
                continue
            chars.append(char)
            self.advance()
        self.advance()
        return "".join(chars)

    def _escape(self) -> str:
        self.advance()  # backslash
        char = self.peek()
        simple = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}
        if char in simple:
            self.advance()
            return simple[char]
        if char in ("u", "U"):
            width = 4 if char == "u" else 8
            digits = self.text[self.i + 1 : self.i + 1 + width]
            self.advance(1 + width)
            try:
                return chr(int(digits, 16))
            except ValueError:
                return ""
        self.advance()
        return char
