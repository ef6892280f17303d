"""Shape rules that import-linter cannot see, checked on the source (no server needed).

- The protocols read settings through the snapshot's named accessors (`snapshot.max_recipients`,
  `snapshot.command_timeout`, ... in appliance/snapshot.py), never `snapshot.manifest.server...`.
  import-linter only sees imports, and a protocol reaches the models without importing them: the
  snapshot hands them over as `.manifest`. Reaching four levels into the models ties every
  protocol to the manifest's layout (a renamed table breaks SMTP, POP3 and IMAP at once) and hides
  what a protocol depends on, so the source is read with `ast` here: any attribute named `manifest`
  in a protocol module (or `getattr(x, "manifest")`) fails, wherever it sits in a chain, whatever
  the line breaks or the variable names - which a regex would miss or trip over.
- Modules stay small enough to read in one sitting (STYLE.md: ~600 lines, uvicorn's largest).
"""

from __future__ import annotations

import ast
from pathlib import Path

import appliance
from appliance.manifest import parse_manifest
from appliance.snapshot import build_snapshot

PACKAGE = Path(appliance.__file__).parent

# What sits on the protocols' side of the snapshot: the protocols, the transport under them, and
# the login path they share.
PROTOCOL_MODULES = sorted(
    [
        *PACKAGE.glob("smtp/**/*.py"),
        *PACKAGE.glob("pop3/**/*.py"),
        *PACKAGE.glob("imap/**/*.py"),
        PACKAGE / "connection.py",
        PACKAGE / "auth" / "attempts.py",
        PACKAGE / "auth" / "sasl.py",
    ]
)

MAX_MODULE_LINES = 600
# A module over the limit is listed here with why it is one meaning (none today).
LONG_MODULES: dict[str, str] = {}


def manifest_reads(source: str) -> list[int]:
    """Line numbers where `source` reads an attribute called `manifest`."""
    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if _reads_manifest(node))


def _reads_manifest(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "manifest"  # x.manifest, however deep in a chain
    return (  # getattr(x, "manifest") / hasattr(x, "manifest")
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == "manifest"
    )


def test_the_check_finds_a_reach_into_the_manifest_however_it_is_written() -> None:
    assert manifest_reads("limit = snapshot.manifest.server.limits.max_recipients") == [1]
    assert manifest_reads("x = (\n    self.services.holder.current\n    .manifest.server\n)") == [2]
    assert manifest_reads("m = getattr(snapshot, 'manifest')") == [1]
    assert manifest_reads("limit = snapshot.max_recipients  # not snapshot.manifest") == []
    assert manifest_reads("manifest = 1\nprint('snapshot.manifest')") == []


def test_the_protocols_read_settings_through_named_snapshot_accessors() -> None:
    assert len(PROTOCOL_MODULES) > 20 and all(path.is_file() for path in PROTOCOL_MODULES)
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in PROTOCOL_MODULES
        for line in manifest_reads(path.read_text(encoding="utf-8"))
    ]
    assert not found, (
        "protocols read the manifest models; add a named accessor to appliance/snapshot.py "
        f"(Snapshot, 'settings the protocols read') and use it: {found}"
    )


def test_the_snapshot_accessors_give_the_manifests_settings() -> None:
    text = """
[server]
hostname = "mail.example.test"
allow_plaintext_auth = true
[server.limits]
max_line_length = 2000
command_timeout = "2 min"
data_timeout = "3 min"
pop3_idle_timeout = "11 min"
imap_idle_timeout = "31 min"
max_recipients = 7
max_connections = 50
max_connections_per_client = 5
[domains."Zeta.test"]
[domains."alpha.test"]
enabled = false
"""
    snapshot = build_snapshot(parse_manifest(text.encode(), "t.toml", file=Path("/srv/t.toml")))
    assert snapshot.max_line_length == 2000
    assert (snapshot.command_timeout, snapshot.data_timeout) == (120.0, 180.0)
    assert (snapshot.pop3_idle_timeout, snapshot.imap_idle_timeout) == (660.0, 1860.0)
    assert snapshot.max_recipients == 7
    assert (snapshot.max_connections, snapshot.max_connections_per_client) == (50, 5)
    assert snapshot.allow_plaintext_auth is True
    assert snapshot.domain_names == ("zeta.test", "alpha.test")  # the manifest's order, disabled too


def test_every_module_of_appliance_reads_in_one_sitting() -> None:
    sizes = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    over = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    unexplained = {name: lines for name, lines in over.items() if name not in LONG_MODULES}
    assert not unexplained, (
        f"modules over {MAX_MODULE_LINES} lines: split them by meaning, or say in LONG_MODULES "
        f"why one is one meaning: {unexplained}"
    )
