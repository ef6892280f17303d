"""POP3 download rate: the appliance against Dovecot, over the same Maildirs, in one run.

Fills `--users` Maildirs with `--messages` messages of about 4.4 KB (headers plus a 4,096-byte
body, LF line ends, `S=`/`W=` in the file names), then times RETR of every message with one
client (user01) and with one client per mailbox, all at once. Clients are OS processes running
poplib (USER/PASS, STAT, RETR 1..n, QUIT): they log in together, wait at a barrier until all have,
then RETR; the rate is all messages over the wall time from that barrier to the last RETR reply
(login times are printed apart: the appliance verifies argon2id, Dovecot a PLAIN passwd-file).

The servers:
- the appliance: `appliance serve` as a subprocess, on a manifest with the pop3 listener and
  `allow_plaintext_auth = true` (Dovecot below runs with `ssl = no`, so both speak in clear);
- Dovecot (`dovecot-pop3d`), a self-contained instance set up as
  measured for this machine: its own config, base_dir, state_dir and log,
  `listen = 127.0.0.1`, passwd-file users with uid/gid `mail`, defaults otherwise (one login
  process and one pop3 process per connection). /etc/dovecot is not used.

Both read the very same files. The messages are written into cur/ with ":2,S" (the state after a
first download), and Dovecot keeps its index and control files outside the Maildirs, so neither
server changes anything and every run sees the same mailboxes. Each server gets one unmeasured
pass first (Dovecot builds its index then); runs alternate between the servers, which one goes
first alternating too (so neither always follows the other's heavy run), and each starts once the
machine is quiet; medians of `--runs` are printed with every run. Nothing is asserted about time.

    .venv/bin/python bench/pop3.py [--users 20] [--messages 10000] [--runs 5] [--keep]

Needs root (Dovecot drops to uid `mail`) and the packages in .ci/apt/pop3.txt.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import poplib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.auth.passwords import hash_password
from bench._mail import (
    MAIL_GID,
    MAIL_UID,
    dovecot_config,
    named_processes_cpu,
    process_tree_cpu,
    run_dovecot,
    stop_server,
    wait_until_quiet,
)
from tests.fixtures.appliance import free_port

PASSWORD = "benchpass"
DOMAIN = "bench.test"
START_TIMEOUT = 60.0
CLIENT_TIMEOUT = 600.0


def user_name(n: int) -> str:
    return f"user{n:02d}"


# -- the mailboxes -----------------------------------------------------------------------------


def fill(root: Path, users: int, messages: int) -> tuple[int, int]:
    """Write the Maildirs; returns (files, bytes on disk)."""
    body = ("x" * 63 + "\n") * 64  # 4,096 bytes
    total_files = total_bytes = 0
    for u in range(1, users + 1):
        maildir = root / user_name(u)
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        cur = maildir / "cur"
        for m in range(1, messages + 1):
            data = (
                f"Return-Path: <sender@remote.example>\nFrom: sender@remote.example\n"
                f"To: {user_name(u)}@{DOMAIN}\nSubject: message {m} of {messages}\n"
                f"Message-ID: <{u}.{m}@remote.example>\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n\n{body}"
            ).encode()
            wire_size = len(data) + data.count(b"\n")
            name = f"{1_700_000_000 + m}.M{m:06d}P{u}Q{m}.bench,S={len(data)},W={wire_size}:2,S"
            descriptor = os.open(cur / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(descriptor, data)
            os.close(descriptor)
            total_files += 1
            total_bytes += len(data)
    return total_files, total_bytes


# -- the servers --------------------------------------------------------------------------------


@dataclass
class RunningServer:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    stop_command: list[str] | None = None
    login_domain: str | None = None  # the appliance logs in with the address, Dovecot the user

    def login(self, number: int) -> str:
        return f"{user_name(number)}@{self.login_domain}" if self.login_domain else user_name(number)

    def cpu_seconds(self) -> float:
        """CPU (user + system) of the processes serving POP3 sessions, threads included.

        The appliance: its process and the reader and delivery processes it starts. Dovecot: every
        live `pop3` process (one per session; the login and auth processes have done their part
        before RETR starts).
        """
        if self.name == "appliance":
            return process_tree_cpu(self.process.pid)
        return named_processes_cpu("pop3")

    def stop(self) -> None:
        stop_server(self.process, self.stop_command)


def wait_for_banner(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            client = poplib.POP3("127.0.0.1", port, timeout=5)
            client.quit()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} not answering on port {port} within {START_TIMEOUT}s")


def start_appliance(work: Path, users: int) -> RunningServer:
    directory = work / "appliance"
    port = free_port()
    hashed = hash_password(PASSWORD)
    accounts = "\n".join(f'{user_name(u)} = {{ password_hash = "{hashed}" }}' for u in range(1, users + 1))
    manifest = directory / "appliance.toml"
    manifest.write_text(
        f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "var"\nallow_plaintext_auth = true\n'
        f'[server.listeners]\npop3 = "127.0.0.1:{port}"\n'
        f"[server.limits]\nmax_connections_per_client = {users + 10}\n"  # all clients are 127.0.0.1
        f'[domains."{DOMAIN}".accounts]\n{accounts}\n'
    )
    log = open(work / "appliance-serve.log", "wb")  # noqa: SIM115 - kept open for the child's life
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    wait_for_banner(port, process, "appliance serve")
    return RunningServer("appliance", port, process, login_domain=DOMAIN)


def start_dovecot(work: Path, maildirs: Path, users: int) -> RunningServer:
    directory = work / "dovecot"
    shutil.rmtree(directory, ignore_errors=True)  # a fresh instance, index included
    for sub in ("run", "state", "index", "control"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("index", "control"):
        os.chown(directory / sub, MAIL_UID, MAIL_GID)
    port = free_port()
    with open(directory / "users", "w") as passwd:
        for u in range(1, users + 1):
            home = maildirs / user_name(u)
            passwd.write(f"{user_name(u)}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_GID}::{home}::\n")
    process, stop_command = run_dovecot(dovecot_config(directory, "pop3", port), "dovecot-pop3d")
    wait_for_banner(port, process, "dovecot")
    return RunningServer("dovecot", port, process, stop_command)


# -- the clients ----------------------------------------------------------------------------------


def client(
    port: int, user: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue
) -> None:
    barrier.wait(CLIENT_TIMEOUT)
    try:
        started = time.perf_counter()
        pop = poplib.POP3("127.0.0.1", port, timeout=60)
        pop.user(user)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        logged_in = time.perf_counter()
        barrier.wait(CLIENT_TIMEOUT)  # every client logged in: RETR starts together
        retr_started = time.perf_counter()
        octets = 0
        for number in range(1, count + 1):
            _, _, size = pop.retr(number)
            octets += size
        finished = time.perf_counter()
        results.put((user, count, octets, started, logged_in, retr_started, finished))
        barrier.wait(CLIENT_TIMEOUT)  # QUIT only once the server's CPU time has been read
        pop.quit()
    except (OSError, poplib.error_proto, threading.BrokenBarrierError) as error:
        barrier.abort()  # the others stop waiting for this one
        results.put((user, f"{type(error).__name__}: {error}"))


@dataclass
class Run:
    messages: int
    octets: int
    wall: float  # from the barrier after every client logged in to the last RETR reply
    login_median: float
    server_cpu: float  # seconds of CPU the server's processes used during the RETR phase

    @property
    def rate(self) -> float:
        return self.messages / self.wall


def run_clients(server: RunningServer, numbers: range) -> Run:
    port, users = server.port, [server.login(n) for n in numbers]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(users) + 1)
    results: multiprocessing.Queue = context.Queue()
    processes = [context.Process(target=client, args=(port, user, barrier, results)) for user in users]
    for process in processes:
        process.start()
    cpu_before = cpu_after = 0.0
    try:
        barrier.wait(CLIENT_TIMEOUT)  # connect and log in
        barrier.wait(CLIENT_TIMEOUT)  # RETR
        released, cpu_before = time.perf_counter(), server.cpu_seconds()
        rows = [results.get(timeout=CLIENT_TIMEOUT) for _ in users]
        cpu_after = server.cpu_seconds()
        barrier.wait(CLIENT_TIMEOUT)  # QUIT
    except threading.BrokenBarrierError:
        released = time.perf_counter()
        rows = [results.get(timeout=CLIENT_TIMEOUT) for _ in users]  # a client failed: its row says why
    for process in processes:
        process.join(30)
    failed = [row for row in rows if len(row) == 2]
    if failed:
        raise SystemExit(f"clients failed: {failed[:3]}")
    return Run(
        messages=sum(r[1] for r in rows),
        octets=sum(r[2] for r in rows),
        wall=max(r[6] for r in rows) - released,
        login_median=statistics.median(r[4] - r[3] for r in rows),
        server_cpu=cpu_after - cpu_before,
    )


# -- the report -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--work", type=Path, help="work directory, kept and reused by later runs (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: Dovecot drops to uid mail, and reads what the appliance's files hold")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pop3-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # Dovecot's auth process (uid dovecot) reads its passwd-file through it
    maildirs = work / "appliance" / "var" / "mail" / DOMAIN
    servers: list[RunningServer] = []
    try:
        marker = work / f"filled-{args.users}x{args.messages}"
        if marker.exists():  # --work with mailboxes filled by an earlier run: reuse them
            print(f"reusing the {args.users} x {args.messages} messages in {work}")
        else:
            started = time.monotonic()
            files, size = fill(maildirs, args.users, args.messages)
            marker.touch()
            print(
                f"filled {files:,} messages ({size / 1e6:,.0f} MB) in {args.users} Maildirs "
                f"in {time.monotonic() - started:.1f} s ({work})"
            )
        servers = [start_appliance(work, args.users), start_dovecot(work, maildirs, args.users)]
        for server in servers:  # unmeasured: Dovecot indexes, both warm the page cache
            warm = run_clients(server, range(1, args.users + 1))
            print(f"warm-up {server.name}: {warm.rate:,.0f} msgs/s")
        results: dict[tuple[str, int], list[Run]] = {}
        for number in range(args.runs):
            for clients in (1, args.users):
                for server in servers if number % 2 == 0 else servers[::-1]:
                    wait_until_quiet()
                    results.setdefault((server.name, clients), []).append(
                        run_clients(server, range(1, clients + 1))
                    )
        print()
        print(
            f"{'clients':>7} | {'server':>9} | {'msgs/s (median)':>15} | {'runs':>42} | {'MB/s':>5} | "
            f"{'server CPU µs/msg':>17} | {'login ms':>8}"
        )
        for clients in (1, args.users):
            medians = {}
            for server in servers:
                runs = results[(server.name, clients)]
                rate = statistics.median(r.rate for r in runs)
                medians[server.name] = rate
                mb = statistics.median(r.octets / r.wall / 1e6 for r in runs)
                cpu = statistics.median(r.server_cpu / r.messages for r in runs) * 1e6
                login = statistics.median(r.login_median for r in runs) * 1000
                listed = " · ".join(f"{r.rate:,.0f}" for r in runs)
                print(
                    f"{clients:>7} | {server.name:>9} | {rate:>15,.0f} | {listed:>42} | {mb:>5.0f} | "
                    f"{cpu:>17.0f} | {login:>8.1f}"
                )
            ratio = medians["appliance"] / medians["dovecot"]
            print(f"{'':>7} | {'ratio':>9} | {ratio:>15.2f} | appliance / dovecot")
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} ({os.cpu_count()} CPUs)")
        return 0
    finally:
        for server in servers:
            server.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
