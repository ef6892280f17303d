"""The files a manifest names, looked at on disk: for `appliance validate`.

A path in the manifest is relative to the manifest's directory. Three things are worth a word:
- a relative path that leaves that directory, through `../` or a symlink (warning: the file an
  admin reviews beside the manifest is not the one the server reads);
- a CA or certificate file that holds no PEM certificate, such as `ca_file = "/etc/shadow"`
  (warning: a typo, or a secret file read by a setting that does not need one);
- key material (the TLS key, a DKIM key, a service account's or the relay's password file) that
  others may read (error: the secret is no longer the server's alone), or a group other than
  the manifest's may read (warning: the Ansible role installs keys 0640 with the daemon's group).

A Kerberos keytab that is missing or unreadable is an error (nothing else would make it).
Any other missing file is not reported here: the TLS pair is made on first start, and the services say
what they cannot read when they need it. Everything here reads the file system; nothing writes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from appliance.manifest.loader import KeyPath, LoadedManifest, Problem, place_problems

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_KEYTAB_MAGIC = b"\x05\x02"
_READ_LIMIT = 1 << 20  # a CA bundle is well under a megabyte; more is not read


def file_problems(loaded: LoadedManifest) -> list[Problem]:
    """Warnings and errors about the files `loaded` names, placed at their keys."""
    problems: list[Problem] = []
    try:
        manifest_group: int | None = loaded.path.stat().st_gid
    except OSError:
        manifest_group = None
    for path, value, secret in named_files(loaded):
        problems.extend(_check(loaded.base_dir, path, value, secret=secret, manifest_group=manifest_group))
    problems.extend(_keytab_problems(loaded))
    if not problems:
        return problems
    try:
        text = loaded.path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return problems
    return place_problems(problems, text)


def named_files(loaded: LoadedManifest) -> Iterator[tuple[KeyPath, str, bool]]:
    """(key path, the path as written, is it key material) for every file the manifest names."""
    manifest = loaded.manifest
    yield ("server", "tls", "certificate"), manifest.server.tls.certificate, False
    yield ("server", "tls", "key"), manifest.server.tls.key, True
    for name, directory in manifest.directories.items():
        ca_file = getattr(directory, "ca_file", None)
        if ca_file:
            yield ("directories", name, "ca_file"), ca_file, False
        password_file = getattr(directory, "bind_password_file", None)
        if password_file:
            yield ("directories", name, "bind_password_file"), password_file, True
        keytab = getattr(directory, "kerberos_keytab", None)
        if keytab:
            yield ("directories", name, "kerberos_keytab"), keytab, True
    for name, domain in manifest.domains.items():
        if domain.dkim is not None:
            yield ("domains", name, "dkim", "key_file"), domain.dkim.key_file, True
    outbound = manifest.outbound
    if outbound.relay_password_file:
        yield ("outbound", "relay_password_file"), outbound.relay_password_file, True
    if outbound.srs_secret_file:
        yield ("outbound", "srs_secret_file"), outbound.srs_secret_file, True
    if outbound.tls_ca_file:
        yield ("outbound", "tls_ca_file"), outbound.tls_ca_file, False


def _keytab_problems(loaded: LoadedManifest) -> Iterator[Problem]:
    """A keytab must be there and readable: it is what turns GSSAPI on, and unlike the TLS pair
    nothing makes it on first start."""
    for name, directory in loaded.manifest.directories.items():
        keytab = getattr(directory, "kerberos_keytab", None)
        if not keytab:
            continue
        path = ("directories", name, "kerberos_keytab")
        try:
            with open(loaded.base_dir / keytab, "rb") as file:
                head = file.read(2)
        except OSError as error:
            yield Problem(path, f'"{keytab}" cannot be read: {error.strerror} (GSSAPI needs it)')
            continue
        if head != _KEYTAB_MAGIC:
            # MIT's file format (the one ktpass and samba-tool write) starts with 0x05 0x02.
            yield Problem(
                path, f'"{keytab}" is not a keytab (ktpass or samba-tool domain exportkeytab writes one)'
            )


def _exposed(status: os.stat_result) -> bool:
    """Others may read it, or group or others may write it."""
    return bool(status.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP))


def _check(
    base_dir: Path, path: KeyPath, value: str, *, secret: bool, manifest_group: int | None
) -> list[Problem]:
    problems: list[Problem] = []
    written = Path(value)
    full = base_dir / written
    resolved = Path(os.path.realpath(full))
    home = Path(os.path.realpath(base_dir))
    if not written.is_absolute() and not resolved.is_relative_to(home):
        problems.append(
            Problem(
                path,
                f'"{value}" leaves the manifest\'s directory (it is {resolved}); '
                "keep the files beside the manifest, or write the absolute path",
                warning=True,
            )
        )
    try:
        status = os.stat(full)
    except FileNotFoundError:
        return problems
    except OSError as error:
        problems.append(Problem(path, f'"{value}" cannot be examined: {error.strerror}', warning=True))
        return problems
    if not stat.S_ISREG(status.st_mode):
        problems.append(Problem(path, f'"{value}" is not a regular file', warning=True))
        return problems
    if secret:
        mode = stat.S_IMODE(status.st_mode)
        if _exposed(status):
            problems.append(
                Problem(
                    path,
                    f'"{value}" holds key material and others may read or write it (mode {mode:04o}); '
                    "chmod 600 it, or 640 with the daemon's group",
                )
            )
        elif status.st_mode & stat.S_IRGRP and status.st_gid != manifest_group:
            # The Ansible role installs keys 0640 with the daemon's group, and validates a copy of
            # the manifest that is not in that group: a group that reads it is worth a word only.
            problems.append(
                Problem(
                    path,
                    f'"{value}" holds key material that its group (gid {status.st_gid}) may read '
                    f"(mode {mode:04o}); make sure that group is the daemon's alone",
                    warning=True,
                )
            )
        return problems
    try:
        with open(full, "rb") as file:
            head = file.read(_READ_LIMIT)
    except OSError as error:
        problems.append(Problem(path, f'"{value}" cannot be read: {error.strerror}', warning=True))
        return problems
    if _PEM_CERTIFICATE not in head:
        problems.append(
            Problem(path, f'"{value}" holds no PEM certificate ("{_PEM_CERTIFICATE.decode()}")', warning=True)
        )
    return problems
