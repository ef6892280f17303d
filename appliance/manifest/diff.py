"""What changes between two manifests, one line per thing, like `terraform plan`.

Everything a reload changes applies live (listeners open and close, certificates are re-read,
sessions the new manifest no longer allows end) except the keys in RESTART_KEYS, which the running
server reads once, at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from appliance.manifest.models import Account, Manifest


@dataclass(frozen=True)
class Change:
    action: str  # "+" added, "-" removed, "~" changed
    kind: str  # server, directory, domain, account, alias, trusted_login
    name: str
    detail: str = ""

    def format(self) -> str:
        line = f"{self.action} {self.kind} {self.name}".rstrip()
        return f"{line}: {self.detail}" if self.detail else line


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dumps → {"a.b": value}; lists stay whole values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


# Server keys (flattened, as in the plan's lines) that only a restart applies.
RESTART_KEYS = frozenset({"data_dir"})


def needs_restart(change: Change) -> bool:
    """True when the running server applies `change` only when it restarts."""
    return change.kind == "server" and change.detail.split(" ", 1)[0] in RESTART_KEYS


def _changed(old: Any, new: Any) -> list[str]:
    before, after = _flatten(old), _flatten(new)
    parts = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a != b:
            if key.endswith("password_hash"):
                parts.append(f"{key} changed")  # hashes are long and say nothing to a reviewer
            else:
                parts.append(f"{key} {_show(a)} → {_show(b)}")
    return parts


def _fields(old: Any, new: Any) -> str:
    return "; ".join(_changed(old, new))


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("'", '"')


def _dump(model: Any) -> Any:
    if isinstance(model, BaseModel):
        return model.model_dump(mode="json", exclude_defaults=False)
    return _ACCOUNT.dump_python(model, mode="json")  # Account is a pydantic dataclass


_ACCOUNT: TypeAdapter[Account] = TypeAdapter(Account)


def _compare(kind: str, old: dict[str, Any], new: dict[str, Any], changes: list[Change]) -> None:
    for name in sorted(set(old) | set(new)):
        if name not in new:
            changes.append(Change("-", kind, name))
        elif name not in old:
            changes.append(Change("+", kind, name))
        elif old[name] != new[name]:
            changes.append(Change("~", kind, name, _fields(old[name], new[name])))


def plan(old: Manifest, new: Manifest) -> list[Change]:
    changes: list[Change] = []
    old_server, new_server = _dump(old.server), _dump(new.server)
    # One line per server key: some apply live, some only at a restart.
    changes.extend(Change("~", "server", "", part) for part in _changed(old_server, new_server))
    _compare(
        "directory",
        {k: _dump(v) for k, v in old.directories.items()},
        {k: _dump(v) for k, v in new.directories.items()},
        changes,
    )

    def domain_fields(manifest: Manifest) -> dict[str, Any]:
        return {
            k: _dump(v.model_copy(update={"accounts": {}, "aliases": {}}))
            for k, v in manifest.domains.items()
        }

    _compare("domain", domain_fields(old), domain_fields(new), changes)

    def accounts(manifest: Manifest) -> dict[str, Any]:
        return {
            f"{local.lower()}@{domain}": _dump(account)
            for domain, model in manifest.domains.items()
            for local, account in model.accounts.items()
        }

    def aliases(manifest: Manifest) -> dict[str, Any]:
        return {
            f"{local.lower()}@{domain}": list(targets)
            for domain, model in manifest.domains.items()
            for local, targets in model.aliases.items()
        }

    _compare("account", accounts(old), accounts(new), changes)
    _compare("alias", aliases(old), aliases(new), changes)
    _compare(
        "trusted_login",
        {k: _dump(v) for k, v in old.trusted_logins.items()},
        {k: _dump(v) for k, v in new.trusted_logins.items()},
        changes,
    )
    return changes
