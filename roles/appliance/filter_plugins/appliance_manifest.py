"""Filters the appliance role runs on the controller.

`appliance_manifest_facts` reads what the host set-up needs from the manifest text: where its data
directory and TLS files are, which directory types it declares (a `local-system` directory needs
group `shadow` and a PAM service file) and which listeners it opens. It validates nothing: the
real check is `appliance validate`, run on the host before the manifest is put in place, so a
manifest TOML cannot parse yields empty facts here and is refused there.
"""

from __future__ import annotations

import posixpath
import tomllib
from typing import Any

DEFAULT_DATA_DIR = "var"
DEFAULT_CERTIFICATE = "var/tls/cert.pem"
DEFAULT_KEY = "var/tls/key.pem"
# server.limits.max_connections and outbound.max_deliveries when the manifest leaves them out.
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_DELIVERIES = 100
# Listeners whose connections count against one max_connections (appliance/context.py).
FAMILIES = {"smtp": "smtp", "submission": "smtp", "submissions": "smtp", "pop3": "pop3", "pop3s": "pop3"}
FAMILIES |= {"imap": "imap", "imaps": "imap"}
BASE_OPEN_FILES = 1024  # listeners, log, helper processes' pipes, watchers, directory connections


def _resolve(base_dir: str, path: str) -> str:
    """A manifest path as the daemon resolves it: relative to the manifest's directory."""
    return posixpath.normpath(posixpath.join(base_dir, path))


def appliance_manifest_facts(text: str, config_dir: str) -> dict[str, Any]:
    try:
        manifest = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        manifest = {}
    server = manifest.get("server") if isinstance(manifest.get("server"), dict) else {}
    tls = server.get("tls") if isinstance(server.get("tls"), dict) else {}
    listeners = server.get("listeners") if isinstance(server.get("listeners"), dict) else {}
    directories = manifest.get("directories") if isinstance(manifest.get("directories"), dict) else {}
    types = sorted({str(d.get("type")) for d in directories.values() if isinstance(d, dict)})
    pam_services = sorted(
        {
            str(d.get("pam_service", "appliance"))
            for d in directories.values()
            if isinstance(d, dict) and d.get("type") == "local-system"
        }
    )
    limits = server.get("limits") if isinstance(server.get("limits"), dict) else {}
    outbound = manifest.get("outbound") if isinstance(manifest.get("outbound"), dict) else {}
    ports = []
    for address in listeners.values():
        _host, _sep, port = str(address).rpartition(":")
        if port.isdigit():
            ports.append(int(port))
    return {
        "hostname": str(server.get("hostname", "")),
        "data_dir": _resolve(config_dir, str(server.get("data_dir", DEFAULT_DATA_DIR))),
        "tls_certificate": _resolve(config_dir, str(tls.get("certificate", DEFAULT_CERTIFICATE))),
        "tls_key": _resolve(config_dir, str(tls.get("key", DEFAULT_KEY))),
        "directory_types": types,
        "local_system": "local-system" in types,
        "pam_services": pam_services,
        "listeners": {str(name): str(address) for name, address in listeners.items()},
        "privileged_ports": any(port < 1024 for port in ports),
        "open_files": open_files(listeners, limits, outbound),
    }


def open_files(listeners: dict[str, Any], limits: dict[str, Any], outbound: dict[str, Any]) -> int:
    """LimitNOFILE for the manifest: each protocol may hold max_connections connections (a
    socket, and a message file while one is read or written), each outbound delivery a socket
    and the message, and the process needs some for itself. The default limits (3 protocols of
    1,000) already need more than the 1,024 a unit gets by default."""
    connections = _integer(limits.get("max_connections"), DEFAULT_MAX_CONNECTIONS)
    deliveries = _integer(outbound.get("max_deliveries"), DEFAULT_MAX_DELIVERIES)
    families = {FAMILIES[name] for name in listeners if name in FAMILIES}
    return BASE_OPEN_FILES + 2 * connections * len(families) + 2 * deliveries


def _integer(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"appliance_manifest_facts": appliance_manifest_facts}
