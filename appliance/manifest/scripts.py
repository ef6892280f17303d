"""The Sieve scripts a manifest names, read and compiled with it.

`sieve` of an account, `sieve_before`/`sieve_after` of a domain: each is read (relative to the
manifest) and compiled when the manifest loads, as are the scripts they `include` (`:personal`
beside the including script, `:global` in `sieve/global/` beside the manifest). A script that
is missing or does not compile makes the manifest unusable: `validate` says where in the script
(`sieve/john.sieve:3:10: ...`) at the manifest line that names it, and a reload keeps the old
manifest serving. `digest` follows the scripts' contents so that a reload sees a script change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.manifest.models import Manifest
from appliance.sieve import Script, SieveError, compile_script

MAX_SCRIPT_BYTES = 1 << 20
MAX_INCLUDES = 100
GLOBAL_DIRECTORY = Path("sieve") / "global"

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Scripts:
    """Compiled scripts by their resolved path, and what an include names resolves to."""

    compiled: Mapping[Path, Script]
    digest: str
    base_dir: Path

    def get(self, written: str | None) -> Script | None:
        return None if written is None else self.compiled.get(resolve(self.base_dir, written))

    def include(self, where: str, name: str, including: Script) -> Script | None:
        """The script an `include` names (interpreter.Resolver): `:personal` beside `including`."""
        directory = next((path.parent for path, script in self.compiled.items() if script is including), None)
        if directory is None:
            return None
        return self.compiled.get(_include_path(self.base_dir, directory, where, name))


def resolve(base_dir: Path, written: str) -> Path:
    return (base_dir / written).absolute()


def _include_path(base_dir: Path, directory: Path, where: str, name: str) -> Path:
    folder = (base_dir / GLOBAL_DIRECTORY).absolute() if where == ":global" else directory
    return folder / f"{name}.sieve"


def named_scripts(manifest: Manifest) -> Iterator[tuple[KeyPath, str]]:
    for domain_name, domain in manifest.domains.items():
        for key in ("sieve_before", "sieve_after"):
            value = getattr(domain, key)
            if value:
                yield ("domains", domain_name, key), value
        for local, account in domain.accounts.items():
            if account.sieve:
                yield ("domains", domain_name, "accounts", local, "sieve"), account.sieve


@dataclass(frozen=True)
class ScriptProblem:
    path: KeyPath
    message: str


def compile_scripts(manifest: Manifest, base_dir: Path) -> tuple[Scripts, list[ScriptProblem]]:
    """Every script the manifest names (and those they include), compiled; and what is wrong."""
    compiled: dict[Path, Script] = {}
    failed: dict[Path, str] = {}
    digest = hashlib.sha256()
    problems: list[ScriptProblem] = []
    for key_path, written in named_scripts(manifest):
        pending = [(resolve(base_dir, written), written)]
        while pending and len(compiled) + len(failed) <= MAX_INCLUDES * 100:
            path, shown = pending.pop()
            if path in compiled or path in failed:
                if path in failed and shown == written:
                    problems.append(ScriptProblem(key_path, failed[path]))
                continue
            error, script, data = _compile(path, shown)
            digest.update(str(path).encode() + b"\0" + data + b"\0")
            if script is None:
                failed[path] = error
                problems.append(ScriptProblem(key_path, error))
                continue
            compiled[path] = script
            for where, name, line, column in script.includes[:MAX_INCLUDES]:
                target = _include_path(base_dir, path.parent, where, name)
                if not target.is_file():
                    # RFC 6609 §3.2: a missing included script is an error unless :optional; whether it
                    # is, only running tells (`include :optional`): only a name that can never be a
                    # file is refused here.
                    if "/" in name or name in ("", ".", ".."):
                        problems.append(
                            ScriptProblem(key_path, f"{shown}:{line}:{column}: bad script name {name!r}")
                        )
                    continue
                pending.append((target, _shown(base_dir, target)))
    return Scripts(compiled, digest.hexdigest(), base_dir.absolute()), problems


def _shown(base_dir: Path, path: Path) -> str:
    try:
        return str(path.relative_to(base_dir.absolute()))
    except ValueError:
        return str(path)


def _compile(path: Path, shown: str) -> tuple[str, Script | None, bytes]:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SCRIPT_BYTES + 1)
    except OSError as error:
        return f'cannot read the Sieve script "{shown}": {error.strerror}', None, b""
    if len(data) > MAX_SCRIPT_BYTES:
        return f'the Sieve script "{shown}" is larger than {MAX_SCRIPT_BYTES} bytes', None, data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f'the Sieve script "{shown}" is not UTF-8 (RFC 5228 §2.2)', None, data
    try:
        return "", compile_script(text.replace("\r\n", "\n")), data
    except SieveError as error:
        return f"{shown}:{error.line}:{error.column}: {error.message}", None, data


def scripts_digest(scripts: Scripts) -> str:
    """The digest the same files give now (a reload compares it with the one it serves)."""
    digest = hashlib.sha256()
    for path in scripts.compiled:
        try:
            data = path.read_bytes()[: MAX_SCRIPT_BYTES + 1]
        except OSError:
            data = b""
        digest.update(str(path).encode() + b"\0" + data + b"\0")
    return digest.hexdigest()
