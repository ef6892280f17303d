"""A directory's read-only service account: its password from a file (re-read when the file
changes) or an environment variable, never from the manifest itself."""

from __future__ import annotations

import os
from pathlib import Path


class ServicePasswordError(Exception):
    """The service account's password cannot be read."""


class ServicePassword:
    def __init__(self, file: Path | None, env: str | None) -> None:
        self._file = file
        self._env = env or ""
        self._cached: tuple[tuple[int, int], str] | None = None  # (mtime_ns, size) → password

    def read(self) -> str:
        if self._file is not None:
            try:
                status = self._file.stat()
                key = (status.st_mtime_ns, status.st_size)
                if self._cached is None or self._cached[0] != key:
                    self._cached = (key, self._file.read_text(encoding="utf-8").rstrip("\r\n"))
            except (OSError, UnicodeDecodeError) as error:
                raise ServicePasswordError(f"{self._file}: {error.__class__.__name__}") from None
            return self._cached[1]
        value = os.environ.get(self._env)
        if not value:
            raise ServicePasswordError(f"environment variable {self._env} is not set")
        return value
