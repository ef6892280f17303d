"""IMAP read paths: the appliance against Dovecot, over the same message files, in one run.

Writes one Maildir of `--messages` realistic messages once (a few KB each: plain text, some
multipart/alternative with an HTML part, some with a small base64 attachment; LF line ends,
`S=`/`W=` sizes and flags in the file names, internal dates spread over a year), then, for each
server, times these commands on that mailbox with one client and with `--clients` clients at once
(all logged in as the same user, on the same INBOX):

    EXAMINE INBOX                    open the folder (read-only: nothing changes between runs)
    FETCH 1:* (BODY.PEEK[])          every message, whole
    SEARCH SUBJECT "invoice"         a header search over every message
    SEARCH FROM "alice"              an address header search over every message
    SEARCH SINCE <date>              an internal-date search (the last quarter of the mailbox)
    UID FETCH 1:* (FLAGS)            the full flag resync a client does when it reconnects
    SORT (REVERSE DATE)              every message, newest sent first (RFC 5256), a webmail folder view
    THREAD REFERENCES                every message in conversations (RFC 5256)

Every answer is checked against what was written (message count, octets with CRLF, search hits,
\\Seen flags, every message once in SORT and THREAD); a wrong answer is printed and makes the exit
status 1. Clients are OS processes with a raw socket each (no imaplib: its parsing would cost more
than the servers; literals are skipped by count, and runs of lines without literals, such as the
10,000 lines of a flag resync, are counted in one go rather than line by line, which took the client
longer than either server took to send them). They log in, wait at a
barrier, and run each command together; a command's time is from the first client's start to the
last client's tagged OK. Logins are not timed (the appliance verifies argon2id, Dovecot a PLAIN
passwd-file).

The servers, both in clear text on 127.0.0.1 (no TLS on either):
- the appliance: `appliance serve` as a subprocess, with the `imap` listener and
  `allow_plaintext_auth = true`;
- Dovecot (`dovecot-imapd`), a self-contained instance as in
  measured for this machine: its own config, base_dir, state_dir and log,
  `listen = 127.0.0.1`, a passwd-file user with uid/gid `mail`, index and control files outside
  the Maildir, defaults otherwise (one login process and one imap process per connection) except
  `mail_max_userip_connections`, raised so that all the clients of one user may connect.
  /etc/dovecot is not used.

Both read the same files: Dovecot's Maildir is a tree of hard links to the appliance's, so the two
share the page cache but neither sees the other's bookkeeping. Each server gets one unmeasured
session first (Dovecot builds its index then, the appliance its UID list; that first EXAMINE is
printed apart); then runs alternate between the servers, and medians of `--runs` are printed with
every run, and the ratio Dovecot time / appliance time (≥ 1.0: the appliance is as fast or faster).
Nothing is asserted about time.

    .venv/bin/python bench/imap.py [--messages 10000] [--clients 20] [--runs 3] [--work DIR] [--keep]

Needs root (Dovecot drops to uid `mail`) and the packages in .ci/apt/imap.txt.
"""

from __future__ import annotations

import argparse
import calendar
import multiprocessing
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
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
)
from tests.fixtures.appliance import free_port

PASSWORD = "benchpass"
DOMAIN = "bench.test"
USER = "user01"
LOGIN = f"{USER}@{DOMAIN}"  # the same login name on both servers
START_TIMEOUT = 60.0
SOCKET_TIMEOUT = 300.0  # one recv; a stuck server fails the run instead of hanging it
CLIENT_TIMEOUT = 900.0  # one command on every client, or a barrier
MAX_LITERALS_PER_LINE = 1000
FIRST_DAY = calendar.timegm((2025, 11, 1, 0, 0, 0))  # internal dates span 365 days from here
DAYS = 365
SINCE_DAY = 274  # SEARCH SINCE the 274th day: about the last quarter of the mailbox
SUBJECT_WORD = "invoice"
FROM_WORD = "alice"


# -- the mailbox ------------------------------------------------------------------------------------

SENDERS = [
    ("Alice Martin", "alice.martin@corp.example"),
    ("Bob Nguyen", "bob@supplier.example"),
    ("Carla Rossi", "c.rossi@partner.example"),
    ("Dmitri Ivanov", "dmitri@lists.example"),
    ("Erin O'Neil", "erin.oneil@corp.example"),
    ("Billing", "billing@shop.example"),
    ("GitLab", "notifications@git.example"),
    ("Hiroshi Tanaka", "tanaka@branch.example"),
]
TOPICS = [
    "Quarterly report draft",
    "Invoice {n} for October",
    "Meeting notes: planning",
    "Re: server migration",
    "Your order {n} has shipped",
    "Fwd: contract renewal",
    "[ops] disk usage warning",
    "Lunch on Friday?",
    "Re: Re: budget 2026",
    "Pipeline #{n} failed",
]
PROSE = """
the server mailbox migration budget quarter report team please review attached draft meeting schedule
customer invoice payment delivery update thanks regards project deadline question proposal agreement
network storage backup restore monitoring alert weekly summary numbers
"""
WORDS = PROSE.split()


@dataclass
class Expected:
    """What a correct server answers, counted while the mailbox was written."""

    messages: int = 0
    octets: int = 0  # the sum of RFC 822 sizes with CRLF: what FETCH 1:* BODY.PEEK[] sends
    on_disk: int = 0
    subject_hits: int = 0
    from_hits: int = 0
    since_hits: int = 0
    seen: int = 0
    since: str = ""


def _paragraphs(rng: random.Random, size: int) -> str:
    text: list[str] = []
    length = 0
    for _ in range(1000):
        if length >= size:
            break
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))
        paragraph = textwrap.fill(words.capitalize() + ".", 72)
        text.append(paragraph)
        length += len(paragraph) + 2
    return "\n\n".join(text) + "\n"


def compose(rng: random.Random, number: int, date: float) -> tuple[bytes, str, str]:
    """One message (LF line ends); returns it with its Subject and From header values."""
    name, address = rng.choice(SENDERS)
    subject = rng.choice(TOPICS).format(n=10_000 + number)
    sender = f'"{name}" <{address}>' if "'" in name else f"{name} <{address}>"
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(date))
    text = _paragraphs(rng, rng.randint(1_200, 5_000))
    headers = (
        f"Return-Path: <{address}>\n"
        f"Received: from mx.{address.split('@')[1]} (mx [192.0.2.{number % 250 + 1}])\n"
        f"\tby mail.{DOMAIN} with ESMTPS id {number:08X}; {stamp}\n"
        f"From: {sender}\nTo: Bench User <{LOGIN}>\nSubject: {subject}\nDate: {stamp}\n"
        f"Message-ID: <{number}.{int(date)}@{address.split('@')[1]}>\nMIME-Version: 1.0\n"
    )
    kind = rng.random()
    if kind < 0.7:
        body = 'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n\n' + text
    elif kind < 0.9:
        html = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n"))
        body = (
            f'Content-Type: multipart/alternative; boundary="alt-{number}"\n\n'
            f"--alt-{number}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
            f"--alt-{number}\nContent-Type: text/html; charset=utf-8\n\n<html><body>\n{html}</body></html>\n"
            f"--alt-{number}--\n"
        )
    else:
        attachment = rng.randbytes(rng.randint(1_000, 3_000)).hex()  # as if base64: 76-char lines
        encoded = "\n".join(attachment[i : i + 76] for i in range(0, len(attachment), 76))
        body = (
            f'Content-Type: multipart/mixed; boundary="mix-{number}"\n\n'
            f"--mix-{number}\nContent-Type: text/plain; charset=utf-8\n\n{text[:1500]}\n"
            f'--mix-{number}\nContent-Type: application/pdf; name="scan-{number}.pdf"\n'
            f'Content-Disposition: attachment; filename="scan-{number}.pdf"\n'
            f"Content-Transfer-Encoding: base64\n\n{encoded}\n--mix-{number}--\n"
        )
    return (headers + body).encode(), subject, sender


def fill(maildir: Path, messages: int) -> Expected:
    """Write the Maildir: every message in cur/ with its flags, its mtime the internal date."""
    rng = random.Random(20261125)
    expected = Expected(since=time.strftime("%d-%b-%Y", time.gmtime(FIRST_DAY + SINCE_DAY * 86_400)))
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    cur = maildir / "cur"
    for number in range(1, messages + 1):
        day = (number - 1) * DAYS // messages
        noon = FIRST_DAY + day * 86_400 + 43_200  # internal date: noon UTC, one date in any time zone
        data, subject, sender = compose(rng, number, noon + rng.randint(-3_600, 3_600))
        flags = "".join(
            letter for letter, chance in (("F", 0.04), ("R", 0.1), ("S", 0.85)) if rng.random() < chance
        )
        wire = len(data) + data.count(b"\n")
        name = f"{noon}.M{number:06d}P4242Q{number}.bench,S={len(data)},W={wire}:2,{flags}"
        descriptor = os.open(cur / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(descriptor, data)
        os.close(descriptor)
        os.utime(cur / name, (noon, noon))
        expected.messages += 1
        expected.octets += wire
        expected.on_disk += len(data)
        expected.subject_hits += SUBJECT_WORD in subject.lower()
        expected.from_hits += FROM_WORD in sender.lower()
        expected.since_hits += day >= SINCE_DAY
        expected.seen += "S" in flags
    return expected


def prepare(source: Path, messages: int) -> Expected:
    """The mailbox in `source`/maildir, written once and reused by later runs on the same --work."""
    recorded = source / "expected"
    if recorded.exists():
        values = recorded.read_text().split("\n")
        print(f"reusing the {messages:,} messages in {source}")
        return Expected(*map(int, values[:7]), since=values[7])
    shutil.rmtree(source, ignore_errors=True)  # what an interrupted fill left
    started = time.monotonic()
    expected = fill(source / "maildir", messages)
    numbers = (expected.messages, expected.octets, expected.on_disk, expected.subject_hits)
    numbers += (expected.from_hits, expected.since_hits, expected.seen)
    recorded.write_text("\n".join(map(str, numbers)) + f"\n{expected.since}")
    print(
        f"wrote {expected.messages:,} messages ({expected.on_disk / 1e6:,.1f} MB, "
        f"{expected.on_disk / expected.messages / 1e3:.1f} KB each) in "
        f"{time.monotonic() - started:.1f} s ({source})"
    )
    return expected


def link_copy(source: Path, target: Path, owner: int | None = None) -> None:
    """`target` gets the same cur/ new/ tmp/ with hard links to the same files."""
    for sub in ("cur", "new", "tmp"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(source / sub):
            os.link(source / sub / name, target / sub / name)
    for directory in (target, target / "cur", target / "new", target / "tmp"):
        if owner is not None:
            os.chown(directory, owner, owner)


# -- the servers --------------------------------------------------------------------------------


@dataclass
class RunningServer:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    stop_command: list[str] | None = None

    def cpu_seconds(self) -> float:
        """CPU (user + system) used so far by the processes that serve IMAP sessions.

        The appliance: its process and the reader and delivery processes it starts. Dovecot: the `imap` processes its master
        started (one per session; login and auth are done before any timed command).
        """
        if self.name == "appliance":
            return process_tree_cpu(self.process.pid)
        return named_processes_cpu("imap", parent=self.process.pid)

    def stop(self) -> None:
        stop_server(self.process, self.stop_command)


def wait_for_greeting(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(4096).startswith(b"* OK"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} not answering on port {port} within {START_TIMEOUT}s")


def start_appliance(directory: Path, clients: int) -> RunningServer:
    port = free_port()
    manifest = directory / "appliance.toml"
    manifest.write_text(
        f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "var"\nallow_plaintext_auth = true\n'
        f'[server.listeners]\nimap = "127.0.0.1:{port}"\n'
        f"[server.limits]\nmax_connections_per_client = {clients + 10}\n"
        f'[domains."{DOMAIN}".accounts]\n{USER} = {{ password_hash = "{hash_password(PASSWORD)}" }}\n'
    )
    log = directory.parent / "appliance-serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
            cwd=directory,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    wait_for_greeting(port, process, "appliance serve")
    return RunningServer("appliance", port, process, log)


def start_dovecot(directory: Path, maildir: Path, clients: int) -> RunningServer:
    shutil.rmtree(directory / "run", ignore_errors=True)
    for sub in ("run", "state", "index", "control"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("index", "control"):
        os.chown(directory / sub, MAIL_UID, MAIL_GID)
    port = free_port()
    (directory / "users").write_text(f"{LOGIN}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_GID}::{maildir}::\n")
    # All the clients are one user on one address: Dovecot's default limit of 10 would refuse some.
    extra = f"protocol imap {{\n  mail_max_userip_connections = {clients + 10}\n}}\n"
    process, stop_command = run_dovecot(dovecot_config(directory, "imap", port, extra), "dovecot-imapd")
    wait_for_greeting(port, process, "dovecot")
    return RunningServer("dovecot", port, process, directory / "dovecot.log", stop_command)


# -- the clients ----------------------------------------------------------------------------------


@dataclass
class Answer:
    """What one command's response held, counted as it streamed by."""

    tagged: bytes = b""
    fetches: int = 0
    octets: int = 0  # literal octets
    exists: int = -1
    hits: int = -1  # numbers in * SEARCH, * SORT or * THREAD
    seen: int = 0  # \Seen in FETCH lines


class Wire:
    """One IMAP connection; reads responses with literals skipped by count, not parsed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.buffer = bytearray()
        self.position = 0
        self.tag = 0
        greeting, _ = self.line()
        if not greeting.startswith(b"* OK"):
            raise ConnectionError(f"greeting: {greeting[:200]!r}")

    def _fill(self) -> None:
        if self.position > 1 << 20:
            del self.buffer[: self.position]
            self.position = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def line(self) -> tuple[bytes, int]:
        """The next response line without its literals, and the literals' octets."""
        text = b""
        octets = 0
        for _ in range(MAX_LITERALS_PER_LINE):
            end = self.buffer.find(b"\r\n", self.position)
            while end < 0:
                self._fill()
                end = self.buffer.find(b"\r\n", self.position)
            segment = bytes(self.buffer[self.position : end])
            self.position = end + 2
            text += segment
            if not segment.endswith(b"}") or b"{" not in segment:
                return text, octets
            size = int(segment[segment.rindex(b"{") + 1 : -1])
            while len(self.buffer) - self.position < size:
                self._fill()
            self.position += size
            octets += size
        raise ValueError("too many literals in one response line")

    def command(self, text: str) -> Answer:
        self.tag += 1
        tag = b"b%d" % self.tag
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        answer = Answer()
        while True:  # bounded by SOCKET_TIMEOUT on every read
            if self._lines_without_literals(tag, answer):
                break
            line, octets = self.line()  # a line with literals, or the first bytes of one
            answer.octets += octets
            if self._count(line, tag, answer):
                break
        if not answer.tagged.startswith(tag + b" OK"):
            raise ValueError(f"{text!r} failed: {answer.tagged[:300]!r}")
        return answer

    def _lines_without_literals(self, tag: bytes, answer: Answer) -> bool:
        """Count the whole lines at the front of the buffer that carry no literal, all at once;
        True when the tagged line was among them. A flag resync is 10,000 such lines: counted one
        by one in Python, the client took longer than either server took to send them."""
        start = self.position
        end = self.buffer.rfind(b"\r\n", start)
        literal = self.buffer.find(b"}\r\n", start, end + 2) if end >= 0 else -1
        if literal >= 0:
            end = self.buffer.rfind(b"\r\n", start, literal)  # up to the line with the literal
        if end < 0:
            return False
        block = bytes(self.buffer[start : end + 2])
        tagged = (b"\r\n" + block).find(b"\r\n" + tag + b" ")  # where its line starts in block
        untagged = block if tagged < 0 else block[:tagged]
        if any(word in untagged for word in (b"* SEARCH", b"* SORT", b"* THREAD", b" EXISTS\r\n")):
            # rare lines: one by one
            for line in untagged[:-2].split(b"\r\n"):
                self._count(line, tag, answer)
        else:
            answer.fetches += untagged.count(b" FETCH (")  # "* n FETCH (...)": once a line, as below
            answer.seen += untagged.count(b"\\Seen")
        if tagged < 0:
            self.position = start + len(block)
            return False
        line_end = block.index(b"\r\n", tagged)
        self.position = start + line_end + 2  # nothing after the tagged line is ours
        return self._count(block[tagged:line_end], tag, answer)

    @staticmethod
    def _count(line: bytes, tag: bytes, answer: Answer) -> bool:
        """Count one response line into `answer`; True for the tagged line."""
        if line.startswith(tag + b" "):
            answer.tagged = line
            return True
        if line.startswith(b"* ") and b" FETCH " in line:
            answer.fetches += 1
            answer.seen += b"\\Seen" in line
        elif line.startswith((b"* SEARCH", b"* SORT")):
            answer.hits = len(line.split()) - 2
        elif line.startswith(b"* THREAD"):  # "(1 (2)(3 4))(5)": every number is a message
            answer.hits = len(line[8:].replace(b"(", b" ").replace(b")", b" ").split())
        elif line.startswith(b"* ") and line.endswith(b" EXISTS"):
            answer.exists = int(line.split()[1])
        return False


@dataclass(frozen=True)
class Operation:
    label: str
    command: str


def operations(expected: Expected) -> list[Operation]:
    return [
        Operation("EXAMINE INBOX", "EXAMINE INBOX"),
        Operation("FETCH 1:* (BODY.PEEK[])", "FETCH 1:* (BODY.PEEK[])"),
        Operation(f'SEARCH SUBJECT "{SUBJECT_WORD}"', f'SEARCH SUBJECT "{SUBJECT_WORD}"'),
        Operation(f'SEARCH FROM "{FROM_WORD}"', f'SEARCH FROM "{FROM_WORD}"'),
        Operation(f"SEARCH SINCE {expected.since}", f"SEARCH SINCE {expected.since}"),
        Operation("UID FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)"),
        Operation("SORT (REVERSE DATE)", "SORT (REVERSE DATE) UTF-8 ALL"),
        Operation("THREAD REFERENCES", "THREAD REFERENCES UTF-8 ALL"),
    ]


def wrong(operation: Operation, answer: Answer, expected: Expected) -> str | None:
    """Why `answer` is not what a correct server sends, or None."""
    label = operation.label
    got: tuple[int, ...]
    if label.startswith("EXAMINE"):
        got, want = (answer.exists,), (expected.messages,)
    elif label.startswith("FETCH"):
        got, want = (answer.fetches, answer.octets), (expected.messages, expected.octets)
    elif label.startswith("SEARCH SUBJECT"):
        got, want = (answer.hits,), (expected.subject_hits,)
    elif label.startswith("SEARCH FROM"):
        got, want = (answer.hits,), (expected.from_hits,)
    elif label.startswith("SEARCH SINCE"):
        got, want = (answer.hits,), (expected.since_hits,)
    elif label.startswith(("SORT", "THREAD")):
        got, want = (answer.hits,), (expected.messages,)
    else:
        got, want = (answer.fetches, answer.seen), (expected.messages, expected.seen)
    return None if got == want else f"{label}: got {got}, expected {want}"


def client(
    port: int,
    commands: list[Operation],
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue,
) -> None:
    wire = None
    try:
        wire = Wire(port)
        wire.command(f'LOGIN "{LOGIN}" "{PASSWORD}"')
        barrier.wait(CLIENT_TIMEOUT)  # everyone logged in
        for operation in commands:
            barrier.wait(CLIENT_TIMEOUT)  # the command starts on every client at once
            started = time.perf_counter()
            answer = wire.command(operation.command)
            results.put((operation.label, started, time.perf_counter(), answer))
        barrier.wait(CLIENT_TIMEOUT)
        wire.command("LOGOUT")
    except (OSError, ValueError, threading.BrokenBarrierError) as error:
        barrier.abort()  # the others stop waiting for this one
        results.put(("error", 0.0, 0.0, f"{type(error).__name__}: {error}"))
    finally:
        if wire is not None:
            wire.sock.close()


@dataclass
class Timing:
    wall: float  # the first client's start to the last client's tagged OK
    server_cpu: float  # seconds of CPU the server used meanwhile (read just before and after)
    problems: list[str] = field(default_factory=list)


def run_clients(server: RunningServer, clients: int, commands: list[Operation], expected: Expected) -> dict:
    """One session per client, every command in turn; returns label → Timing."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(clients + 1)
    results: multiprocessing.Queue = context.Queue()
    processes = [
        context.Process(target=client, args=(server.port, commands, barrier, results)) for _ in range(clients)
    ]
    for process in processes:
        process.start()
    timings: dict[str, Timing] = {}
    try:
        barrier.wait(CLIENT_TIMEOUT)
        for operation in commands:
            cpu_before = server.cpu_seconds()
            barrier.wait(CLIENT_TIMEOUT)
            rows = [results.get(timeout=CLIENT_TIMEOUT) for _ in range(clients)]
            cpu = server.cpu_seconds() - cpu_before
            failed = [row[3] for row in rows if row[0] == "error"]
            if failed:
                raise SystemExit(f"{server.name}: {operation.label}: clients failed: {failed[:3]}")
            timing = Timing(max(row[2] for row in rows) - min(row[1] for row in rows), cpu)
            for row in rows:
                problem = wrong(operation, row[3], expected)
                if problem and problem not in timing.problems:
                    timing.problems.append(problem)
            timings[operation.label] = timing
        barrier.wait(CLIENT_TIMEOUT)
    except threading.BrokenBarrierError:  # a client failed: its row says why
        failed = []
        for _ in range(clients * (len(commands) + 1)):
            try:
                row = results.get(timeout=5)
            except queue.Empty:
                break
            if row[0] == "error":
                failed.append(row[3])
        raise SystemExit(f"{server.name}: clients failed: {failed[:3]}") from None
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
    return timings


# -- the report -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--work", type=Path, help="work directory, kept and reused by later runs (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: Dovecot drops to uid mail")
    if not 1 <= args.messages <= 999_999 or args.clients < 1 or args.runs < 1:
        raise SystemExit("--messages 1..999999, --clients and --runs at least 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-imap-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # Dovecot's processes (uid mail) reach their Maildir and index through it
    # A fresh appliance data directory and Dovecot index each time: first access is part of the report.
    shutil.rmtree(work / "appliance", ignore_errors=True)
    shutil.rmtree(work / "dovecot", ignore_errors=True)
    (work / "appliance").mkdir()
    (work / "dovecot").mkdir()
    source = work / f"maildir-{args.messages}"
    ours = work / "appliance" / "var" / "mail" / DOMAIN / USER
    theirs = work / "dovecot" / "mail" / USER
    servers: list[RunningServer] = []
    try:
        expected = prepare(source, args.messages)
        link_copy(source / "maildir", ours)
        link_copy(source / "maildir", theirs, MAIL_UID)  # Dovecot renames in its own directories
        print(
            f"expected: SUBJECT {expected.subject_hits}, FROM {expected.from_hits}, SINCE "
            f"{expected.since} {expected.since_hits}, \\Seen {expected.seen}, {expected.octets:,} octets"
        )
        servers = [
            start_appliance(work / "appliance", args.clients),
            start_dovecot(work / "dovecot", theirs, args.clients),
        ]
        commands = operations(expected)
        problems: list[str] = []
        for server in servers:  # unmeasured but for the first EXAMINE: indexes built, page cache warm
            first = run_clients(server, 1, commands, expected)
            print(
                f"first access {server.name}: EXAMINE {first['EXAMINE INBOX'].wall * 1000:,.0f} ms, "
                f"FETCH all {first['FETCH 1:* (BODY.PEEK[])'].wall * 1000:,.0f} ms"
            )
            problems += [
                f"{server.name}, 1 client, first access: {p}" for t in first.values() for p in t.problems
            ]
        results: dict[tuple[str, int], list[dict[str, Timing]]] = {}
        counts = sorted({1, args.clients})
        for _ in range(args.runs):
            for clients in counts:
                for server in servers:
                    timings = run_clients(server, clients, commands, expected)
                    results.setdefault((server.name, clients), []).append(timings)
                    for timing in timings.values():
                        problems += [f"{server.name}, {clients} clients: {p}" for p in timing.problems]
        report(results, commands, counts, expected.messages)
        for server in servers:
            errors = [line for line in server.log.read_text(errors="replace").splitlines() if "rror" in line]
            if errors:
                print(f"{server.name} logged {len(errors)} error lines, first: {errors[0][:200]}")
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} ({os.cpu_count()} CPUs)")
        for problem in dict.fromkeys(problems):
            print(f"WRONG ANSWER: {problem}")
        return 1 if problems else 0
    finally:
        for server in servers:
            server.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(
    results: dict[tuple[str, int], list[dict[str, Timing]]],
    commands: list[Operation],
    counts: list[int],
    messages: int,
) -> None:
    server_columns = f"{'ms':>9} {'msgs/s':>10} {'CPU µs/msg':>10} {'runs (ms)':>26}"
    print()
    print(f"{'':<28} {'':>7} | {'appliance':^58} | {'dovecot':^58} |")
    print(f"{'command':<28} {'clients':>7} | {server_columns} | {server_columns} | {'ratio':>5}")
    for operation in commands:
        for clients in counts:
            cells = []
            medians = {}
            for name in ("appliance", "dovecot"):
                runs = [run[operation.label] for run in results[(name, clients)]]
                median = statistics.median(run.wall for run in runs)
                medians[name] = median
                cpu = statistics.median(run.server_cpu for run in runs) / (messages * clients) * 1e6
                listed = " · ".join(f"{run.wall * 1000:,.0f}" for run in runs)
                cells.append(
                    f"{median * 1000:>9,.1f} {messages * clients / median:>10,.0f} {cpu:>10.1f} {listed:>26}"
                )
            ratio = medians["dovecot"] / medians["appliance"]
            print(f"{operation.label:<28} {clients:>7} | {cells[0]} | {cells[1]} | {ratio:>5.2f}")
    print(
        "ms: median wall time of the command on all clients; msgs/s: messages in the mailbox × clients / ms;"
    )
    print(
        "CPU µs/msg: the server's CPU time per message served; ratio: Dovecot ms / appliance ms (target ≥ 1.0)"
    )


if __name__ == "__main__":
    sys.exit(main())
