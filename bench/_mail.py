"""What bench/pop3.py and bench/imap.py share: a Dovecot instance of their own, and CPU figures
read from /proc for the processes that serve the sessions."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

MAIL_UID = MAIL_GID = 8  # Debian's "mail": Dovecot reads the Maildirs as this user


def dovecot_config(directory: Path, protocol: str, port: int, extra: str = "") -> Path:
    """`directory`/dovecot.conf for one protocol ("pop3" or "imap") in clear on 127.0.0.1:`port`,
    users from `directory`/users (passwd-file), base/state/log/index/control all under `directory`,
    Dovecot's defaults otherwise; `extra` is appended. /etc/dovecot is not used."""
    config = directory / "dovecot.conf"
    config.write_text(
        f"""
protocols = {protocol}
listen = 127.0.0.1
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
ssl = no
disable_plaintext_auth = no
first_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_GID}
passdb {{
  driver = passwd-file
  args = {directory}/users
}}
userdb {{
  driver = passwd-file
  args = {directory}/users
}}
# The Maildir is the home itself; index and control files (dovecot-uidlist) go elsewhere, so the
# Maildir is only read.
mail_location = maildir:~:INDEX={directory}/index/%u:CONTROL={directory}/control/%u
service {protocol}-login {{
  inet_listener {protocol} {{
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
{extra}"""
    )
    return config


def run_dovecot(config: Path, package: str) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Dovecot in the foreground on `config` (stderr to stderr.log beside it), and the command
    that stops it. `package` names what to install when it is missing."""
    dovecot = shutil.which("dovecot")
    if dovecot is None:
        raise SystemExit(f"dovecot is not installed (apt-get install dovecot-core {package})")
    with open(config.parent / "stderr.log", "wb") as errors:
        process = subprocess.Popen(
            [dovecot, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            stdin=subprocess.DEVNULL,
        )
    return process, [shutil.which("doveadm") or "doveadm", "-c", str(config), "stop"]


def stop_server(process: subprocess.Popen[bytes], stop_command: list[str] | None) -> None:
    """Its own stop command first (Dovecot), then SIGTERM; SIGKILL after 30 s."""
    if stop_command is not None:
        subprocess.run(stop_command, capture_output=True, timeout=30, check=False)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def process_stat(pid: int) -> list[str]:
    """/proc/PID/stat as [name, state, ppid, ...] (proc(5) fields 2, 3, 4, ...); [] once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return []
    return [text[text.index("(") + 1 : text.rindex(")")], *text[text.rindex(")") + 2 :].split()]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, threads included) of one process."""
    fields = process_stat(pid)  # fields[12], [13]: utime, stime (proc(5) fields 14 and 15)
    return (int(fields[12]) + int(fields[13])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (the appliance's delivery and reader
    processes), threads included."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return process_cpu(pid) + sum(process_cpu(int(child)) for child in children)


def named_processes_cpu(name: str, parent: int | None = None) -> float:
    """CPU seconds of every live process called `name` (children of `parent` only, if given)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = process_stat(int(entry))
            if fields and fields[0] == name and (parent is None or fields[2] == str(parent)):
                total += process_cpu(int(entry))
    return total


def wait_until_quiet(busiest: float = 0.15, longest: float = 5.0) -> float:
    """Wait until the machine is quiet (under `busiest` of its CPUs in use over a quarter of a
    second), at most `longest` seconds: what one measurement left running (processes ending,
    index writes) must not be counted against the next one. The seconds waited."""
    started = time.monotonic()

    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return sum(fields) - idle, sum(fields)

    while time.monotonic() - started < longest:
        busy_before, total_before = busy_and_total()
        time.sleep(0.25)
        busy_after, total_after = busy_and_total()
        if total_after > total_before and (busy_after - busy_before) / (total_after - total_before) < busiest:
            break
    return time.monotonic() - started
