"""The POP3 server against the clients Debian ships: fetchmail and curl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.pop3 import JOHN, PASSWORD, files, login, message, put_message, start


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return start(appliance)


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:  # .ci/apt/pop3.txt installs it; missing means the machine is not set up
        pytest.fail(f"{program} is not installed (apt-get install {program}; see .ci/apt/pop3.txt)")
    return path


def fetchmail(server: RunningAppliance, home: Path, *, implicit_tls: bool, keep: bool) -> Path:
    """Run fetchmail once; every message goes to an mbox-like file through its MDA."""
    home.mkdir(exist_ok=True)
    received = home / "received"
    port = server.ports["pop3s" if implicit_tls else "pop3"]
    tls = "ssl" if implicit_tls else "sslproto 'tls1.2+'"  # without "ssl": STLS, required
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\nset no syslog\n"
        f"poll 127.0.0.1 service {port} protocol pop3 auth password timeout 30\n"
        f'  user "{JOHN}" there with password "{PASSWORD}" is root here\n'
        f'  {tls} sslcertck sslcertfile "{server.cafile}" sslcommonname "mail.example.test"\n'
        f"  {'keep' if keep else 'nokeep'}\n"
        f"  mda \"/bin/sh -c 'cat >> {received}'\"\n"
    )
    rc.chmod(0o600)
    result = subprocess.run(
        [need("fetchmail"), "-f", str(rc), "--pidfile", str(home / "pid"), "-i", str(home / "ids")],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "FETCHMAILHOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # 0: messages fetched; 1: nothing to fetch
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return received


def curl(server: RunningAppliance, url_path: str, *extra: str, implicit_tls: bool = True) -> bytes:
    scheme, port = ("pop3s", server.ports["pop3s"]) if implicit_tls else ("pop3", server.ports["pop3"])
    result = subprocess.run(
        [
            need("curl"),
            "--silent",
            "--show-error",
            "--max-time",
            "60",
            "--cacert",
            str(server.cafile),
            "--ssl-reqd",
            "--user",
            f"{JOHN}:{PASSWORD}",
            *extra,
            f"{scheme}://127.0.0.1:{port}/{url_path}",
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_fetchmail_over_stls_downloads_everything_and_deletes_it(
    server: RunningAppliance, tmp_path: Path
) -> None:
    for n in range(3):
        put_message(server, message(f"fetchmail {n}"))
    received = fetchmail(server, tmp_path / "fm", implicit_tls=False, keep=False)
    text = received.read_text()
    assert [f"Subject: fetchmail {n}" in text for n in range(3)] == [True] * 3
    assert files(server) == []  # fetchmail deleted them and quit: UPDATE removed them
    client = login(server)
    assert client.stat()[0] == 0
    client.quit()


def test_fetchmail_over_pop3s_with_keep_leaves_the_mail(server: RunningAppliance, tmp_path: Path) -> None:
    put_message(server, message("kept"))
    received = fetchmail(server, tmp_path / "fm", implicit_tls=True, keep=True)
    assert "Subject: kept" in received.read_text()
    assert len(files(server)) == 1
    server.wait_for_log(
        r"auth result=accepted login=john@example\.test protocol=pop3 listener=pop3s mechanism=\w+ tls=yes "
        r"client=127\.0\.0\.1 cause=ok "
    )


def test_curl_lists_retrieves_byte_for_byte_and_deletes(server: RunningAppliance) -> None:
    body = b"From: a@remote.example\nSubject: curl\n\n.starts with a dot\n..two dots\n.\nend\n"
    put_message(server, body)
    put_message(server, message("second"))
    listing = curl(server, "", implicit_tls=False)  # STLS, then LIST
    assert listing.split(b"\r\n")[:2] == [
        b"1 %d" % len(body.replace(b"\n", b"\r\n")),
        b"2 " + listing.split(b"\r\n")[1].split()[1],
    ]
    assert curl(server, "1") == body.replace(b"\n", b"\r\n")  # curl undoes the dot-stuffing
    curl(server, "1", "--request", "DELE", "--head")
    assert len(files(server)) == 1
    assert b"Subject: second" in curl(server, "1")
