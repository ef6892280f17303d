"""The Sieve scripts users keep themselves over ManageSieve (RFC 5804), and which one is active.

`<data_dir>/sieve/users/<domain>/<local>/`: one `<name>.sieve` per script (the name hex-encoded
when it holds anything but letters, digits, `-`, `_` and `.`) and `active`, holding the name of
the active script (absent: none). Every write replaces its file whole (durable.py), so a crash
leaves the old or the new script, never half of one. `compiled_active` keeps the compiled active
script per account and compiles again only when its file changed. Everything here blocks: run it
in an executor.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from appliance.sieve import Script, SieveError, compile_script
from appliance.store import durable

MAX_SCRIPT_BYTES = 1 << 20
MAX_SCRIPTS = 50  # per account
MAX_NAME = 128  # characters (RFC 5804 §1.6: any UTF-8 name; we bound it)
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_SUFFIX = ".sieve"
_ACTIVE = "active"


class ScriptStoreError(Exception):
    """A request that cannot be done; `code` is the RFC 5804 response code (NONEXISTENT, ACTIVE,
    ALREADYEXISTS, QUOTA/MAXSCRIPTS, QUOTA/MAXSIZE), or "" for a plain NO."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _file_name(name: str) -> str:
    if _PLAIN_NAME.match(name) and not name.endswith(_SUFFIX):
        return name + _SUFFIX
    return "=" + name.encode("utf-8").hex() + _SUFFIX


def _script_name(file_name: str) -> str | None:
    if not file_name.endswith(_SUFFIX):
        return None
    stem = file_name[: -len(_SUFFIX)]
    if stem.startswith("="):
        try:
            return bytes.fromhex(stem[1:]).decode("utf-8")
        except ValueError:
            return None
    return stem


def check_name(name: str) -> None:
    # RFC 5804 §1.6: no control characters, no line breaks; not empty.
    if not name or len(name) > MAX_NAME or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise ScriptStoreError("", "Invalid script name")


class UserScripts:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "sieve" / "users"
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[str, int, int], Script | None]] = {}
        # Accounts with an active script, so that delivery asks the disk only for them; None
        # until `load` has looked (then every account is asked).
        self._active: set[str] | None = None

    def load(self) -> None:
        """Find the accounts with an active script (at start, in an executor)."""
        active: set[str] = set()
        try:
            domains = list(self.root.iterdir())
        except FileNotFoundError:
            domains = []
        for domain in domains:
            try:
                locals_ = list(domain.iterdir()) if domain.is_dir() else []
            except OSError:
                continue
            active.update(f"{local.name}@{domain.name}" for local in locals_ if (local / _ACTIVE).is_file())
        self._active = active

    def may_have_active(self, account: str) -> bool:
        return self._active is None or account in self._active

    def directory(self, account: str) -> Path:
        local, _, domain = account.rpartition("@")
        return self.root / domain / local

    def list(self, account: str) -> list[tuple[str, bool]]:
        """(name, active) of every script of the account, by name."""
        directory = self.directory(account)
        active = self.active_name(account)
        try:
            names = [_script_name(entry) for entry in os.listdir(directory)]
        except FileNotFoundError:
            return []
        return sorted((name, name == active) for name in names if name is not None)

    def active_name(self, account: str) -> str | None:
        try:
            return (self.directory(account) / _ACTIVE).read_text("utf-8").strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def get(self, account: str, name: str) -> bytes:
        check_name(name)
        try:
            return (self.directory(account) / _file_name(name)).read_bytes()
        except FileNotFoundError:
            raise ScriptStoreError("NONEXISTENT", "There is no script by that name") from None

    def put(self, account: str, name: str, data: bytes) -> None:
        check_name(name)
        if len(data) > MAX_SCRIPT_BYTES:
            raise ScriptStoreError("QUOTA/MAXSIZE", "The script is too large")
        directory = self.directory(account)
        with self._lock:
            target = directory / _file_name(name)
            if not target.exists() and len(self.list(account)) >= MAX_SCRIPTS:
                raise ScriptStoreError("QUOTA/MAXSCRIPTS", "Too many scripts")
            directory.mkdir(parents=True, exist_ok=True)
            durable.replace_file(target, data)

    def set_active(self, account: str, name: str) -> None:
        """Activate `name`; "" deactivates every script (RFC 5804 §2.8)."""
        directory = self.directory(account)
        with self._lock:
            if name == "":
                if self._active is not None:
                    self._active.discard(account)
                try:
                    os.unlink(directory / _ACTIVE)
                    durable.fsync_directory(directory)
                except FileNotFoundError:
                    pass
                return
            check_name(name)
            if not (directory / _file_name(name)).is_file():
                raise ScriptStoreError("NONEXISTENT", "There is no script by that name")
            durable.replace_file(directory / _ACTIVE, name.encode("utf-8"))
            if self._active is not None:
                self._active.add(account)

    def delete(self, account: str, name: str) -> None:
        check_name(name)
        with self._lock:
            if self.active_name(account) == name:
                raise ScriptStoreError("ACTIVE", "The active script cannot be deleted")
            try:
                os.unlink(self.directory(account) / _file_name(name))
            except FileNotFoundError:
                raise ScriptStoreError("NONEXISTENT", "There is no script by that name") from None

    def rename(self, account: str, old: str, new: str) -> None:
        check_name(old)
        check_name(new)
        directory = self.directory(account)
        with self._lock:
            source, target = directory / _file_name(old), directory / _file_name(new)
            if not source.is_file():
                raise ScriptStoreError("NONEXISTENT", "There is no script by that name")
            if target.exists():
                raise ScriptStoreError("ALREADYEXISTS", "A script by that name exists")
            os.rename(source, target)
            if self.active_name(account) == old:
                durable.replace_file(directory / _ACTIVE, new.encode("utf-8"))
            durable.fsync_directory(directory)

    def compiled_active(self, account: str) -> Script | None:
        """The account's active script, compiled (cached while its file is unchanged); None when
        there is none or it no longer compiles (PUTSCRIPT refuses such scripts)."""
        name = self.active_name(account)
        if name is None:
            return None
        path = self.directory(account) / _file_name(name)
        try:
            status = path.stat()
        except FileNotFoundError:
            return None
        key = (name, status.st_mtime_ns, status.st_size)
        cached = self._cache.get(account)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            script: Script | None = compile_script(path.read_bytes().decode("utf-8").replace("\r\n", "\n"))
        except (SieveError, UnicodeDecodeError, OSError):
            script = None
        self._cache[account] = (key, script)
        return script
