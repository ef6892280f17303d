"""TOML text → validated `Manifest`, or every problem found, each with its line and column.

Each section (the server, each directory, each domain) is validated on its own, so one broken
table does not hide the errors of the others; the cross-checks then run on what validated.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import toml_rs
from pydantic import BaseModel, TypeAdapter, ValidationError

from appliance.manifest.locate import Locations
from appliance.manifest.models import (
    Account,
    AddressOrLocalPart,
    Directory,
    Domain,
    Filter,
    Manifest,
    Outbound,
    Security,
    Server,
    TrustedLogin,
)
from appliance.manifest.scripts import Scripts, compile_scripts
from appliance.memory import gc_paused

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: KeyPath
    message: str
    line: int | None = None
    column: int | None = None
    on_key: bool = False  # the problem is the key itself (its name), not its value
    warning: bool = False  # worth a look, but the manifest is usable (`validate` still exits 0)

    def format(self, filename: str) -> str:
        where = filename
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        key = render_path(self.path)
        message = f"warning: {self.message}" if self.warning else self.message
        return f"{where}: {key}: {message}" if key else f"{where}: {message}"

    def as_dict(self, filename: str) -> dict[str, Any]:
        return {
            "file": filename,
            "line": self.line,
            "column": self.column,
            "path": render_path(self.path),
            "message": self.message,
            "severity": "warning" if self.warning else "error",
        }


class ManifestError(Exception):
    """The manifest cannot be used. `problems` lists every reason, in file order."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.message))
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [p.format(self.filename) for p in self.problems]


@dataclass(frozen=True)
class LoadedManifest:
    manifest: Manifest
    path: Path  # the file as given (symlinks not resolved)
    base_dir: Path  # relative paths in the manifest are relative to this directory
    sha256: str
    scripts: Scripts | None = None  # the Sieve scripts it names, compiled


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def render_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.match(part) else json.dumps(part)
        out = f"{out}.{text}" if out else text
    return out


def suggest(word: str, choices: Any) -> str:
    """(did you mean "x"?) — or nothing when no choice is close."""
    options = {str(c).lower(): str(c) for c in choices}
    matches = difflib.get_close_matches(word.lower(), list(options), n=1, cutoff=0.6)
    return f' (did you mean "{options[matches[0]]}"?)' if matches else ""


def load_manifest(path: str | Path, *, display_name: str | None = None) -> LoadedManifest:
    """Read and validate the manifest at `path`; raise ManifestError listing every problem."""
    file = Path(path)
    name = display_name or str(path)
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise ManifestError(name, [Problem((), f"cannot read the manifest: {error.strerror}")]) from None
    return parse_manifest(raw, name, file=file)


def parse_manifest(raw: bytes, name: str, *, file: Path | None = None) -> LoadedManifest:
    file = file or Path(name)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ManifestError(name, [Problem((), "the file is not valid UTF-8", line, column)]) from None
    with gc_paused():
        data = _parse_toml(text, name)
        manifest, problems = validate_data(data)
    if problems or manifest is None:
        locations = Locations(text)
        raise ManifestError(name, [_place(p, locations) for p in problems])
    base_dir = file.absolute().parent
    scripts, script_problems = compile_scripts(manifest, base_dir)
    if script_problems:
        locations = Locations(text)
        raise ManifestError(name, [_place(Problem(p.path, p.message), locations) for p in script_problems])
    return LoadedManifest(manifest=manifest, path=file, base_dir=base_dir, sha256=digest, scripts=scripts)


def _parse_toml(text: str, name: str) -> dict[str, Any]:
    """toml-rs (Rust) parses a 100k-account manifest about 6x faster than the standard library,
    in about the same memory. Its errors are worded differently, so when it refuses a file the
    standard library parses it again: the error a person reads is always tomllib's.

    TOML 1.0 only, as the standard library and the Ansible role (on the controller) read it:
    toml-rs would otherwise accept TOML 1.1 (newlines and trailing commas in inline tables, `\\e`
    and `\\xHH` escapes, times without seconds), and `validate` would pass a file the role reads
    differently or refuses."""
    try:
        data: dict[str, Any] = toml_rs.loads(text, toml_version="1.0.0")
        return data
    except ValueError:
        pass
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ManifestError(name, [_syntax_problem(str(error))]) from None


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _syntax_problem(message: str) -> Problem:
    match = _TOML_POSITION.search(message)
    if match:
        text = message[: match.start()]
        return Problem((), f"TOML syntax error: {text}", int(match.group(1)), int(match.group(2)))
    return Problem((), f"TOML syntax error: {message}")


def place_problems(problems: list[Problem], text: str) -> list[Problem]:
    """`problems` with the line and column of their key in the manifest's `text`."""
    locations = Locations(text)
    return [_place(problem, locations) for problem in problems]


def _place(problem: Problem, locations: Locations) -> Problem:
    if problem.line is not None:
        return problem
    exact = locations.has(problem.path)
    position = None
    if exact:
        position = locations.key(problem.path) if problem.on_key else locations.value(problem.path)
    if position is None:
        position = locations.key(problem.path)
    if position is None:
        return problem
    return Problem(
        problem.path, problem.message, position.line, position.column, problem.on_key, problem.warning
    )


# --- validation -------------------------------------------------------------------------------

_TOP_LEVEL = ("server", "security", "directories", "domains", "outbound", "filter", "trusted_logins")
_DIRECTORY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Directory)


def validate_data(data: Mapping[str, Any]) -> tuple[Manifest | None, list[Problem]]:
    """Validate parsed TOML. Returns the manifest (None when anything is wrong) and the problems."""
    from appliance.manifest.checks import cross_check

    problems: list[Problem] = []
    for key in data:
        if key not in _TOP_LEVEL:
            problems.append(
                Problem((key,), "unknown top-level table" + suggest(key, _TOP_LEVEL), on_key=True)
            )

    server: Server | None = None
    if "server" not in data:
        problems.append(Problem((), 'missing the [server] table (it needs at least hostname = "...")'))
    elif not isinstance(data["server"], dict):
        problems.append(Problem(("server",), "must be a table"))
    else:
        server = _validate(Server, data["server"], ("server",), problems)

    security: Security | None = Security()
    if "security" in data:
        security = _validate(Security, data["security"], ("security",), problems)

    outbound: Outbound | None = Outbound()
    if "outbound" in data:
        table = data["outbound"]
        if isinstance(table, dict) and "relay_password" in table:
            problems.append(
                Problem(
                    ("outbound", "relay_password"),
                    "a password is never written in the manifest; use relay_password_file or "
                    "relay_password_env",
                )
            )
            table = {k: v for k, v in table.items() if k != "relay_password"}
        outbound = _validate(Outbound, table, ("outbound",), problems)

    filter_: Filter | None = None
    if "filter" in data:
        filter_ = _validate(Filter, data["filter"], ("filter",), problems)

    directories: dict[str, Any] = {}
    for name, table in _table(data, "directories", problems).items():
        path: KeyPath = ("directories", name)
        if isinstance(table, dict) and "bind_password" in table:
            problems.append(
                Problem(
                    (*path, "bind_password"),
                    "a password is never written in the manifest; use bind_password_file or "
                    "bind_password_env",
                )
            )
            table = {k: v for k, v in table.items() if k != "bind_password"}
        directories[name] = _validate(_DIRECTORY_ADAPTER, table, path, problems, tagged=True)

    domains: dict[str, Domain | None] = {}
    for name, table in _table(data, "domains", problems).items():
        domains[name] = _validate_domain(table, ("domains", name), problems)

    trusted_logins: dict[str, TrustedLogin | None] = {}
    for name, table in _table(data, "trusted_logins", problems).items():
        trusted_logins[name] = _validate(TrustedLogin, table, ("trusted_logins", name), problems)

    problems.extend(cross_check(server, directories, domains, data, trusted_logins))
    if problems or server is None or security is None or outbound is None:
        return None, problems
    if "filter" in data and filter_ is None:
        return None, problems
    manifest = Manifest.model_construct(
        server=server,
        security=security,
        directories=directories,
        domains={name.lower(): domain for name, domain in domains.items() if domain is not None},
        outbound=outbound,
        filter=filter_,
        trusted_logins={name: rule for name, rule in trusted_logins.items() if rule is not None},
    )
    return manifest, problems


def _table(data: Mapping[str, Any], key: str, problems: list[Problem]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(Problem((key,), "must be a table"))
        return {}
    return value


_ACCOUNT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Account)
_ACCOUNTS_ADAPTER: TypeAdapter[Any] = TypeAdapter(dict[str, Account])
_ALIAS_ADAPTER: TypeAdapter[Any] = TypeAdapter(list[AddressOrLocalPart])
_ALIASES_ADAPTER: TypeAdapter[Any] = TypeAdapter(dict[str, list[AddressOrLocalPart]])


def _validate_domain(table: Any, path: KeyPath, problems: list[Problem]) -> Domain | None:
    """A domain's own keys, then its accounts and aliases, each on its own: one bad account does
    not hide the problems (or the cross-checks) of the others."""
    if not isinstance(table, dict):
        problems.append(Problem(path, "must be a table"))
        return None
    table = _refuse_plaintext_passwords(table, path, problems)
    own = {k: v for k, v in table.items() if k not in ("accounts", "aliases")}
    domain = _validate(Domain, own, path, problems)
    accounts = _validate_entries(table, "accounts", _ACCOUNTS_ADAPTER, _ACCOUNT_ADAPTER, path, problems)
    aliases = _validate_entries(table, "aliases", _ALIASES_ADAPTER, _ALIAS_ADAPTER, path, problems)
    # The raw tables are not needed past this point, only their key names (for the cross-checks):
    # dropping their values keeps peak memory near one copy of the accounts, not two.
    for key in ("accounts", "aliases"):
        if isinstance(table.get(key), dict):
            table[key] = dict.fromkeys(table[key])
    fields = (
        dict(domain)
        if domain is not None
        else {
            name: field.get_default(call_default_factory=True) for name, field in Domain.model_fields.items()
        }
    )
    return Domain.model_construct(**{**fields, "accounts": accounts, "aliases": aliases})


def _validate_entries(
    table: dict[str, Any],
    key: str,
    whole: TypeAdapter[Any],
    single: TypeAdapter[Any],
    path: KeyPath,
    problems: list[Problem],
) -> dict[str, Any]:
    entries = table.get(key, {})
    if not isinstance(entries, dict):
        problems.append(Problem((*path, key), "must be a table"))
        return {}
    try:
        return dict(whole.validate_python(entries))  # the fast path: everything is fine
    except ValidationError:
        pass
    valid: dict[str, Any] = {}
    for name, value in entries.items():
        entry = _validate(single, value, (*path, key, name), problems)
        if entry is not None:
            valid[name] = entry
    return valid


def _refuse_plaintext_passwords(
    table: dict[str, Any], path: KeyPath, problems: list[Problem]
) -> dict[str, Any]:
    """Report (and drop, so it is not also "an unknown key") every `password` written inline."""
    accounts = table.get("accounts")
    if isinstance(accounts, dict):
        for local, account in accounts.items():
            if isinstance(account, dict) and "password" in account:
                problems.append(
                    Problem(
                        (*path, "accounts", local, "password"),
                        "plaintext passwords are not allowed; run `appliance hash-password` and set "
                        "password_hash to what it prints",
                    )
                )
                del account["password"]
    return table


def _validate(
    model: type[BaseModel] | TypeAdapter[Any],
    value: Any,
    path: KeyPath,
    problems: list[Problem],
    *,
    tagged: bool = False,
) -> Any:
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(value)
        return model.model_validate(value)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            location = tuple(item["loc"])
            if tagged and location and isinstance(value, dict) and location[0] == value.get("type"):
                location = location[1:]
            root = _root_model(model, value)
            problems.append(_humanize(item, path, location, value, root))
        return None


_PATTERN_MESSAGES = {
    "password_hash": (
        "not a supported password hash (argon2id, bcrypt or SHA-512-crypt); "
        "make one with `appliance hash-password`"
    ),
    "user": "must not contain control characters, nor begin or end with a space",
}

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dataclass_type": "a table",
    "dataclass_args_type": "a table",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _humanize(
    item: Any, base: KeyPath, location: tuple[Any, ...], value: Any, root: type[BaseModel] | None
) -> Problem:
    kind = item["type"]
    path = base + location
    context = item.get("ctx") or {}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model / a dataclass
        known = _known_keys(root, location, value)
        return Problem(path, "unknown key" + suggest(str(location[-1]), known), on_key=True)
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        return Problem(path[:-1], f'missing required key "{location[-1]}"')
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ("active-directory", "ldap", "local-system")
        if kind == "union_tag_not_found":
            return Problem(path, 'missing required key "type" (one of "' + '", "'.join(tags) + '")')
        given = str(context.get("tag", ""))
        return Problem(
            (*path, "type"),
            f'unknown directory type "{given}"; use one of "'
            + '", "'.join(tags)
            + '"'
            + suggest(given, tags),
        )
    if kind == "literal_error":
        expected = context.get("expected", "")
        given = item.get("input")
        hint = suggest(str(given), re.findall(r"'([^']*)'", str(expected)))
        return Problem(path, "must be " + str(expected).replace("'", '"') + hint)
    if kind == "string_pattern_mismatch" and location and location[-1] in _PATTERN_MESSAGES:
        return Problem(path, _PATTERN_MESSAGES[str(location[-1])])
    if kind in _TYPE_NAMES:
        return Problem(path, f"must be {_TYPE_NAMES[kind]}, not {_toml_type(item.get('input'))}")
    if kind in ("value_error", "assertion_error"):
        message = str(item["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        return Problem(path, message)
    if kind == "too_short":
        count = context.get("min_length", 1)
        return Problem(path, f"must have at least {count} item{'s' if count != 1 else ''}")
    if kind == "too_long":
        return Problem(path, f"must have at most {context.get('max_length')} items")
    if kind == "string_too_short":
        return Problem(path, "must not be empty")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {
            "greater_than_equal": "at least",
            "greater_than": "more than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }
        bound = next(iter(context.values()), "")
        return Problem(path, f"must be {words[kind]} {bound}")
    return Problem(path, str(item["msg"]))


def _root_model(model: type[BaseModel] | TypeAdapter[Any], value: Any) -> type[Any] | None:
    if isinstance(model, type):
        return model
    from appliance.manifest import models

    if model is _ACCOUNT_ADAPTER:
        return models.Account
    roots: dict[str, type[Any]] = {
        "active-directory": models.ActiveDirectory,
        "ldap": models.LDAPDirectory,
        "local-system": models.LocalSystem,
    }
    return roots.get(str(value.get("type"))) if isinstance(value, dict) else None


def _known_keys(root: type[Any] | None, location: tuple[Any, ...], value: Any) -> list[str]:
    """Field names of the model at `location` (for "did you mean"), found by walking the models."""
    current: type[Any] | None = root
    for part in location[:-1]:
        if current is None:
            return []
        annotation = _field_types(current).get(part) if isinstance(part, str) else None
        if annotation is None:
            continue  # a key of a dict (a domain, an account name): the model stays the same
        current = _model_in(annotation)
    return list(_field_types(current)) if current else []


def _field_types(model: type[Any]) -> dict[str, Any]:
    """The fields of a pydantic model or (pydantic) dataclass and their types, through public
    interfaces only: `model_fields`, and for a dataclass the standard library's view of it."""
    if issubclass(model, BaseModel):
        return {name: field.annotation for name, field in model.model_fields.items()}
    if dataclasses.is_dataclass(model):
        return typing.get_type_hints(model)
    return {}


def _model_in(annotation: Any) -> type[Any] | None:
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
