"""`appliance serve` as a process: status, systemd notifications, clean stop, bad start-up input."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, free_port
from tests.support.wait import wait_for

BODY = '[domains."example.test".accounts]\njohn = {}\n'


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_status_shows_the_revision_the_git_commit_listeners_and_counts(appliance: ApplianceFactory) -> None:
    server = appliance.start(BODY, listeners=("pop3",), wait=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.test"]
    subprocess.run([*git, "init", "-q"], cwd=server.directory, check=True)
    subprocess.run([*git, "add", "appliance.toml"], cwd=server.directory, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], cwd=server.directory, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=server.directory, capture_output=True, text=True, check=True
    ).stdout.strip()
    server.wait_until_serving(("pop3",))
    server.reload()  # the commit is read at start and at each reload
    server.wait_for_log(r"SIGHUP|revision", timeout=5)

    def committed() -> bool:
        if server.status().get("git_commit") == commit:
            return True
        server.write_manifest(BODY + f"# touch {time.monotonic()}\n")  # another reload, to read it
        return False

    wait_for(committed, 10, "the commit in the status file", every=0.3)
    status = json.loads(run_cli("status", "--manifest", str(server.manifest), "--format", "json").stdout)
    assert status["running"] is True
    assert status["git_commit"] == commit
    assert len(status["revision"]) == 64
    assert status["listeners"]["pop3"]["address"] == f"127.0.0.1:{server.ports['pop3']}"
    assert status["domains"] == 1 and status["accounts"] == 1
    text = run_cli("status", "--manifest", str(server.manifest)).stdout
    assert f"git commit: {commit}" in text and "pop3" in text


def test_status_says_when_nothing_is_running(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text('[server]\nhostname = "mail.example.test"\n')
    result = run_cli("status", cwd=tmp_path)
    assert result.returncode == 3
    assert "is `appliance serve` running" in result.stderr


def test_systemd_is_told_ready_reloading_and_stopping(appliance: ApplianceFactory, tmp_path: Path) -> None:
    socket_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(socket_path))
    listener.settimeout(15)
    try:
        server = appliance.start(BODY, listeners=("pop3",), env={"NOTIFY_SOCKET": str(socket_path)})
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=serving ")
        server.write_manifest(BODY + "anna = {}\n")
        reloading = listener.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
        ready_again = listener.recv(4096).decode()
        assert ready_again.startswith("READY=1")
        assert server.stop() == 0
        messages = []
        while True:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                break
            if "STOPPING=1" in messages[-1]:
                break
        assert any("STOPPING=1" in m for m in messages)
    finally:
        listener.close()


def test_sigterm_stops_cleanly_and_marks_the_status_stopped(appliance: ApplianceFactory) -> None:
    server = appliance.start(BODY, listeners=("pop3",))
    assert server.stop() == 0
    assert server.status()["state"] == "stopped"
    assert "stopped" in server.log()
    assert "Traceback" not in server.log()


def test_a_broken_manifest_at_start_exits_1_with_its_problems(tmp_path: Path) -> None:
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n[domains."example.test".accounts]\njohn = { enabeld = true }\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert 'appliance.toml:4:10: domains."example.test".accounts.john.enabeld: unknown key' in result.stderr


def test_a_port_in_use_is_reported_and_the_other_listeners_serve(appliance: ApplianceFactory) -> None:
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    port = free_port()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    try:
        server = appliance.start(BODY, listeners=("pop3s",))
        ports = {**server.ports, "pop3": port}
        offset = server.log_size()
        server.write_manifest(BODY, ports=ports)
        server.wait_for_log(
            r"listener failed name=pop3 address=127\.0\.0\.1:\d+ error=.*address already in use", after=offset
        )

        # The status file is written when the reload is over, a moment after the log line.
        def reported() -> dict[str, object] | None:
            status = server.status()
            return status if "pop3" in status["listener_errors"] else None  # type: ignore[operator]

        status = wait_for(
            reported,
            timeout=10,
            what=lambda: f"status naming the pop3 listener error: {server.status()}",
        )
        assert "pop3s" in status["listeners"]  # type: ignore[operator]
    finally:
        taken.close()


def test_the_example_manifest_serves_as_an_ordinary_user_layout(tmp_path: Path) -> None:
    """The README's run command: the example manifest validates and its data stays under ./var."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "appliance.toml").read_text()
    assert 'data_dir = "var"' in text
    ports = [int(port) for port in re.findall(r'= "127\.0\.0\.1:(\d+)"', text)]
    assert ports and all(1024 < port < 65536 for port in ports)  # unprivileged
    assert run_cli("validate", str(root / "appliance.toml")).returncode == 0
    assert os.access(root / "scripts" / "run-example.sh", os.R_OK)


def test_the_watchdog_is_fed_from_the_event_loop_and_starves_when_it_blocks(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    socket_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(socket_path))
    interval = 1.0  # WatchdogSec=2s: a keep-alive every second

    def next_message(timeout: float) -> str:
        listener.settimeout(timeout)
        return listener.recv(4096).decode()

    try:
        env = {
            "NOTIFY_SOCKET": str(socket_path),
            "WATCHDOG_USEC": str(int(2 * interval * 1_000_000)),
            "APPLIANCE_TEST_HOOKS": "1",
        }
        server = appliance.start(BODY, listeners=("pop3",), env=env)
        keepalives = 0
        for _ in range(20):  # bounded: READY=1 and a few keep-alives
            if next_message(15) == "WATCHDOG=1":
                keepalives += 1
            if keepalives == 2:
                break
        assert keepalives == 2
        server.process.send_signal(signal.SIGUSR2)  # the hook blocks the loop for 4 s
        for _ in range(20):
            if next_message(15).startswith("STATUS=stalling"):
                break
        with pytest.raises(TimeoutError):  # a whole interval and more with the loop blocked: none
            for _ in range(10):
                assert next_message(1.5 * interval) != "WATCHDOG=1"
        assert next_message(15) == "WATCHDOG=1"  # the loop runs again, and feeds it again
    finally:
        listener.close()
