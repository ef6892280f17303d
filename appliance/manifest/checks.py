"""Checks that look across tables: references exist, nothing is declared twice, no alias loops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.manifest.hashes import scheme_of
from appliance.manifest.loader import KeyPath, LoadedManifest, Problem, place_problems, render_path, suggest
from appliance.manifest.models import ActiveDirectory, Domain, Server, TrustedLogin
from appliance.manifest.names import check_domain_name, check_local_part


def cross_check(
    server: Server | None,
    directories: Mapping[str, Any],
    domains: Mapping[str, Domain | None],
    data: Mapping[str, Any],
    trusted_logins: Mapping[str, TrustedLogin | None] | None = None,
) -> list[Problem]:
    problems: list[Problem] = []
    _check_listeners(data.get("server"), problems)
    _check_directory_keys(directories, problems)
    local_domains = _check_domain_keys(domains, server, problems)
    owners = _collect_addresses(domains, local_domains, _raw_domains(data), problems)
    for name, domain in domains.items():
        if domain is not None:
            _check_references(name, domain, directories, owners, local_domains, problems)
    _check_loops(domains, problems)
    _check_trusted_logins(trusted_logins or {}, domains, local_domains, problems)
    return problems


def weak_hash_warnings(loaded: LoadedManifest) -> list[Problem]:
    """A warning for each password hash in a scheme that is quick to guess offline (MD5-crypt, DES
    crypt, salted or unsalted single digests): it verifies, but should be replaced (for `validate`)."""
    problems: list[Problem] = []
    for name, domain in loaded.manifest.domains.items():
        for local_part, account in domain.accounts.items():
            scheme = scheme_of(account.password_hash) if account.password_hash else None
            if scheme is not None and scheme.weakness is not None:
                problems.append(
                    Problem(
                        ("domains", name, "accounts", local_part, "password_hash"),
                        f"{scheme.weakness} (set a new password: `appliance hash-password` makes argon2id)",
                        warning=True,
                    )
                )
    if not problems:
        return problems
    try:
        text = loaded.path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return problems
    return place_problems(problems, text)


def _check_trusted_logins(
    rules: Mapping[str, TrustedLogin | None],
    domains: Mapping[str, Domain | None],
    local_domains: dict[str, str],
    problems: list[Problem],
) -> None:
    """A trusted login's service is an account of the manifest; its domains are local domains."""
    for name, rule in rules.items():
        if rule is None:
            continue
        path: KeyPath = ("trusted_logins", name)
        local_part, _, domain_name = rule.service.lower().rpartition("@")
        written = local_domains.get(domain_name)
        domain = domains.get(written) if written is not None else None
        accounts = {key.lower() for key in domain.accounts} if domain is not None else set()
        if local_part not in accounts:
            problems.append(
                Problem(
                    (*path, "service"),
                    f'"{rule.service}" is not an account of this manifest (the service logs in with one)',
                )
            )
        for index, listed in enumerate(rule.domains):
            if listed.lower() not in local_domains:
                problems.append(
                    Problem(
                        (*path, "domains", index),
                        f'"{listed}" is not a local domain' + suggest(listed, local_domains),
                    )
                )


def _check_listeners(server: Any, problems: list[Problem]) -> None:
    listeners = server.get("listeners") if isinstance(server, dict) else None
    if not isinstance(listeners, dict):
        return
    seen: dict[str, str] = {}
    for name, address in listeners.items():
        if not isinstance(address, str):
            continue
        if address in seen:
            problems.append(
                Problem(
                    ("server", "listeners", name),
                    f'"{address}" is already used by listeners.{seen[address]}',
                )
            )
        else:
            seen[address] = name


def _check_directory_keys(directories: Mapping[str, Any], problems: list[Problem]) -> None:
    lowered: dict[str, str] = {}
    for name, directory in directories.items():
        if name.lower() in lowered:
            problems.append(
                Problem(
                    ("directories", name),
                    f'is declared twice (also as "{lowered[name.lower()]}")',
                    on_key=True,
                )
            )
        lowered[name.lower()] = name
        if isinstance(directory, ActiveDirectory) and not directory.servers and not directory.discover:
            problems.append(
                Problem(
                    ("directories", name, "servers"),
                    "must have at least 1 item (or set discover = true to find the DCs in DNS)",
                )
            )
        if isinstance(directory, ActiveDirectory) and directory.upn_suffix is None:
            try:
                check_domain_name(name)
            except ValueError:
                problems.append(
                    Problem(
                        ("directories", name),
                        "an active-directory directory is keyed by its DNS name (e.g. "
                        '"cloudtech.local"), or needs upn_suffix',
                    )
                )


def _check_domain_keys(
    domains: Mapping[str, Domain | None], server: Server | None, problems: list[Problem]
) -> dict[str, str]:
    """Valid domain names, lower-cased → the key as written."""
    local: dict[str, str] = {}
    for name, domain in domains.items():
        path: KeyPath = ("domains", name)
        try:
            normal = check_domain_name(name)
        except ValueError as error:
            problems.append(Problem(path, str(error), on_key=True))
            continue
        if normal in local:
            problems.append(Problem(path, f'is declared twice (also as "{local[normal]}")', on_key=True))
            continue
        local[normal] = name
        if domain is None:
            continue
        if (
            server is not None
            and domain.max_message_size is not None
            and domain.max_message_size > server.limits.max_message_size
        ):
            problems.append(
                Problem(
                    (*path, "max_message_size"),
                    "is larger than server.limits.max_message_size; raise that limit too",
                )
            )
        for kind in ("accounts", "aliases"):
            for local_part in getattr(domain, kind):
                key_path: KeyPath = (*path, kind, local_part)
                try:
                    check_local_part(local_part)
                except ValueError as error:
                    problems.append(Problem(key_path, str(error), on_key=True))
                    continue
    return local


def _qualified(target: str, domain: str) -> str:
    return target.lower() if "@" in target else f"{target.lower()}@{domain.lower()}"


def _raw_domains(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    raw = data.get("domains")
    if not isinstance(raw, dict):
        return {}
    return {name: table for name, table in raw.items() if isinstance(table, dict)}


def _collect_addresses(
    domains: Mapping[str, Domain | None],
    local_domains: dict[str, str],
    raw_domains: dict[str, dict[str, Any]],
    problems: list[Problem],
) -> dict[str, KeyPath]:
    """Every local address → where it is declared. Reports addresses declared twice."""
    owners: dict[str, KeyPath] = {}

    def claim(address: str, path: KeyPath, on_key: bool = False) -> None:
        if address in owners:
            problems.append(
                Problem(
                    path,
                    f'address "{address}" is already declared at {render_path(owners[address])}',
                    on_key=on_key,
                )
            )
        else:
            owners[address] = path

    # Names as written, valid or not: an account with a broken value still exists, so nothing that
    # points at it should be reported as pointing at nothing.
    for name, table in raw_domains.items():
        for kind in ("accounts", "aliases"):
            entries = table.get(kind)
            if isinstance(entries, dict):
                for local_part in entries:
                    claim(_qualified(local_part, name), ("domains", name, kind, local_part), on_key=True)
    for name, domain in domains.items():
        if domain is None:
            continue
        for local_part, account in domain.accounts.items():
            for index, extra in enumerate(account.addresses):
                path: KeyPath = ("domains", name, "accounts", local_part, "addresses", index)
                address = _qualified(extra, name)
                extra_domain = address.rpartition("@")[2]
                if extra_domain not in local_domains:
                    problems.append(
                        Problem(
                            path,
                            f'"{extra}" is not in a domain declared here; add [domains."{extra_domain}"] '
                            "or forward with forward_to",
                        )
                    )
                    continue
                claim(address, path)
    return owners


def _check_references(
    name: str,
    domain: Domain,
    directories: Mapping[str, Any],
    owners: dict[str, KeyPath],
    local_domains: dict[str, str],
    problems: list[Problem],
) -> None:
    base: KeyPath = ("domains", name)

    def check_target(target: str, path: KeyPath) -> None:
        address = _qualified(target, name)
        local_part, _, target_domain = address.rpartition("@")
        if target_domain not in local_domains:
            return  # a remote address: mail to it is relayed
        if address not in owners:
            candidates = [a.rpartition("@")[0] for a in owners if a.endswith("@" + target_domain)]
            problems.append(
                Problem(
                    path,
                    f'no account or alias "{local_part}" in {target_domain}'
                    + suggest(local_part, candidates),
                )
            )

    if domain.catch_all is not None:
        check_target(domain.catch_all, (*base, "catch_all"))
    for local_part, account in domain.accounts.items():
        account_path: KeyPath = (*base, "accounts", local_part)
        link = account.active_directory
        if link is not None and account.password_hash is not None:
            problems.append(
                Problem(
                    account_path,
                    "has both active_directory and password_hash; a linked account logs in with its "
                    "directory password only",
                )
            )
        if link is not None and link.domain not in directories:
            problems.append(
                Problem(
                    (*account_path, "active_directory", "domain"),
                    f'no directory "{link.domain}" is declared' + suggest(link.domain, directories),
                )
            )
        for index, target in enumerate(account.forward_to):
            check_target(target, (*account_path, "forward_to", index))
    for local_part, targets in domain.aliases.items():
        if not targets:
            problems.append(Problem((*base, "aliases", local_part), "an alias needs at least one target"))
        for index, target in enumerate(targets):
            check_target(target, (*base, "aliases", local_part, index))


def _check_loops(domains: Mapping[str, Domain | None], problems: list[Problem]) -> None:
    """Aliases (and forwards without a kept copy) must not reach themselves again."""
    edges: dict[str, list[str]] = {}
    paths: dict[str, KeyPath] = {}
    for name, domain in domains.items():
        if domain is None:
            continue
        for local_part, targets in domain.aliases.items():
            address = _qualified(local_part, name)
            edges[address] = [_qualified(t, name) for t in targets]
            paths[address] = ("domains", name, "aliases", local_part)
        for local_part, account in domain.accounts.items():
            if account.forward_to and not account.keep_copy:
                address = _qualified(local_part, name)
                edges[address] = [_qualified(t, name) for t in account.forward_to]
                paths[address] = ("domains", name, "accounts", local_part, "forward_to")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    reported: set[frozenset[str]] = set()
    for start in edges:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = []
        while stack:
            node, index = stack.pop()
            if index == 0:
                state[node] = 1
                trail.append(node)
            targets = edges.get(node, [])
            if index < len(targets):
                stack.append((node, index + 1))
                target = targets[index]
                if state.get(target) == 1:
                    loop = [*trail[trail.index(target) :], target]
                    key = frozenset(loop)
                    if key not in reported:
                        reported.add(key)
                        problems.append(Problem(paths[target], "loop: " + " → ".join(loop)))
                elif not state.get(target) and target in edges:
                    stack.append((target, 0))
            else:
                state[node] = 2
                trail.pop()
