"""pyproject.toml and constraints.txt agree, so a fresh machine gets what CI tested.

pyproject.toml says what the code needs (exact pins where the server touches a library's
internals); constraints.txt pins every version installed (scripts/setup-venv.sh uses it).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = [project["dependencies"], *project["optional-dependencies"].values()]
    return [Requirement(line) for group in groups for line in group]


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_a_version_every_declared_requirement_accepts() -> None:
    pins = pinned()
    wrong = []
    for requirement in declared():
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement} (constraints.txt: {version})")
    assert not wrong, f"constraints.txt does not satisfy pyproject.toml: {wrong}"


def test_ldap3_whose_internals_the_directory_client_touches_is_pinned_exactly() -> None:
    (ldap3,) = [r for r in declared() if canonicalize_name(r.name) == "ldap3"]
    assert [spec.operator for spec in ldap3.specifier] == ["=="]
