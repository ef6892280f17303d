"""Values the manifest's models check on their own: names, addresses, host:port, networks, hash
syntax; and the frozen, strict base model every table is. Imported by models.py (and re-exported
there, where the rest of the code finds them)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from appliance.manifest.hashes import HASH_PATTERN

# RFC 5322 §3.2.3 atext, minus "+" (the recipient delimiter for plus-addressing).
_ATEXT = r"A-Za-z0-9!#$%&'*/=?^_`{|}~-"
LOCAL_PART_RE = re.compile(rf"^[{_ATEXT}]+(\.[{_ATEXT}]+)*$")
# RFC 1035 §2.3.1 / RFC 1123 §2.1: letters, digits and hyphens, labels of 1-63 characters.
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_domain_name(value: str) -> str:
    name = value.lower()
    if name.endswith("."):
        raise ValueError(f'"{value}" ends with a dot (write the domain without it)')
    if len(name) > 253:
        raise ValueError(f'"{value}" is longer than 253 characters')
    labels = name.split(".")
    if len(labels) < 2:
        raise ValueError(f'"{value}" is not a fully qualified domain name (e.g. "example.test")')
    for label in labels:
        if not _LABEL_RE.match(label):
            raise ValueError(
                f'"{value}" is not a valid domain name (label "{label}": use letters, digits '
                "and inner hyphens, 1 to 63 characters)"
            )
    return name


def check_local_part(value: str) -> str:
    if "+" in value:
        raise ValueError(
            f'"{value}" contains "+", which is reserved for plus-addressing (john+news@ reaches john)'
        )
    if "@" in value:
        raise ValueError(f'"{value}" is a full address; write only the part before the "@"')
    if len(value) > 64:
        raise ValueError(f'"{value}" is longer than 64 characters (RFC 5321 §4.5.3.1.1)')
    if not LOCAL_PART_RE.match(value):
        raise ValueError(
            f'"{value}" is not a valid local part (letters, digits, and !#$%&\'*/=?^_`{{|}}~- '
            "with single inner dots)"
        )
    return value.lower()


def check_address_or_local_part(value: str) -> str:
    """A full address, or a bare local part that means "in this domain"."""
    if "@" not in value:
        return check_local_part(value)
    local, _, domain = value.rpartition("@")
    if not local:
        raise ValueError(f'"{value}" has no local part before the "@"')
    if len(local) > 64 or not LOCAL_PART_RE.match(local.replace("+", "-")):
        raise ValueError(f'"{value}" is not a valid mail address')
    return f"{local.lower()}@{check_domain_name(domain)}"


def check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f'"{value}" is not an address; write "host:port", e.g. "127.0.0.1:2525"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{value}": "{host}" is not an IPv6 address') from None
    elif ":" in host:
        raise ValueError(f'"{value}": write an IPv6 address in brackets, e.g. "[::1]:2525"')
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'"{value}": the port must be a number from 1 to 65535')
    return value


DomainName = Annotated[str, AfterValidator(check_domain_name)]
LocalPart = Annotated[str, AfterValidator(check_local_part)]
AddressOrLocalPart = Annotated[str, AfterValidator(check_address_or_local_part)]
HostPort = Annotated[str, AfterValidator(check_host_port)]


PasswordHash = Annotated[str, StringConstraints(pattern=HASH_PATTERN)]


def _check_networks(value: list[str]) -> list[str]:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f'"{item}" is not a network (write e.g. "192.0.2.0/24")') from None
    return value


class Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, strict=True, validate_default=True
    )
