"""A bounded soak: one `appliance serve` under mixed load — SMTP deliveries, POP3 and IMAP logins
(a quarter of them with a wrong password) and a manifest reload every few seconds — for
APPLIANCE_SOAK_SECONDS (default 60).

It asserts that every message that got a 250 is in its mailbox (and nothing else is), that no
client met an error it did not ask for, that the log shows no traceback, and that the server's
file descriptors and memory stay level once warmed up.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import random
import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context
from tests.support.wait import wait_for

SOAK_SECONDS = float(os.environ.get("APPLIANCE_SOAK_SECONDS", "60"))
WARM_UP_SECONDS = min(10.0, SOAK_SECONDS / 4)
RELOAD_EVERY = 3.0  # seconds between manifest rewrites
SAMPLE_EVERY = 0.5  # seconds between fd samples
MAX_FD_GROWTH = 20
MAX_RSS_GROWTH_MB = 50

PASSWORD = "Soak!Passw0rd"
HASH = hash_password(PASSWORD)  # argon2id, as `appliance hash-password` makes them
BOXES = ["box1", "box2", "box3", "box4"]  # mail goes to all; POP3 reads box1/box2, IMAP box3/box4
POP3_BOXES, IMAP_BOXES = BOXES[:2], BOXES[2:]
SMTP_THREADS = 3
# Wrong passwords come from 127.0.0.1 all the time: auto-ban stays on, with loopback allowed.
SECURITY = '\n[security.auto_ban]\nallow_networks = ["127.0.0.0/8"]\n'


def domains(extra: str | None) -> str:
    """The manifest body; `extra` is an account the reloads add and remove."""
    accounts = [*BOXES, *([extra] if extra else [])]
    lines = ['[domains."example.test"]', '[domains."example.test".accounts]']
    lines += [f'{name} = {{ password_hash = "{HASH}" }}' for name in accounts]
    return "\n".join(lines) + "\n" + SECURITY


@dataclass
class Tally:
    """What the client threads saw; every method is called under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: Counter[tuple[str, str]] = field(default_factory=Counter)  # (box, subject) → 1
    messages: int = 0
    logins: Counter[str] = field(default_factory=Counter)  # "pop3 ok", "imap refused", ...
    errors: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


class Load:
    """Tells the client threads, between sessions, whether to go on; can pause them."""

    def __init__(self, end: float) -> None:
        self.end = end  # time.monotonic() when the soak is over
        self.halted = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.parked = threading.Semaphore(0)

    def over(self) -> bool:
        if not self.running.is_set():
            self.parked.release()
            self.running.wait(120)
        return self.halted.is_set() or time.monotonic() > self.end

    def pause(self, threads: int) -> None:
        """Return once all `threads` wait between two sessions."""
        self.running.clear()
        for _ in range(threads):
            assert self.parked.acquire(timeout=60), "a client thread did not pause"

    def resume(self) -> None:
        self.running.set()


def smtp_sender(server: RunningAppliance, tally: Tally, number: int, load: Load) -> None:
    """Connections of one to five messages each, to one or two mailboxes."""
    rng = random.Random(number)
    sent = 0
    for _ in range(100_000):
        if load.over():
            return
        try:
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
                for _ in range(rng.randint(1, 5)):
                    sent += 1
                    subject = f"soak-{number}-{sent}"
                    boxes = rng.sample(BOXES, rng.randint(1, 2))
                    body = f"From: load@remote.example\r\nSubject: {subject}\r\n\r\n" + "text line\r\n" * 50
                    client.sendmail("load@remote.example", [f"{box}@example.test" for box in boxes], body)
                    with tally.lock:
                        tally.messages += 1
                        for box in boxes:
                            tally.acknowledged[(box, subject)] += 1
        except (OSError, smtplib.SMTPException) as error:
            tally.error(f"smtp sender {number}: {error!r}")


def pop3_reader(server: RunningAppliance, tally: Tally, box: str, load: Load) -> None:
    """Log in (every fourth time with a wrong password), STAT, LIST, RETR the newest, QUIT."""
    for attempt in range(100_000):
        if load.over():
            return
        wrong = attempt % 4 == 3
        try:
            client = poplib.POP3_SSL(
                "127.0.0.1", server.ports["pop3s"], context=client_context(server), timeout=30
            )
            try:
                client.user(f"{box}@example.test")
                try:
                    client.pass_("Wrong!" + PASSWORD if wrong else PASSWORD)
                except poplib.error_proto as error:
                    if wrong and str(error).startswith("b'-ERR [AUTH]"):
                        with tally.lock:
                            tally.logins["pop3 refused"] += 1
                        continue
                    raise
                if wrong:
                    tally.error(f"pop3 {box}: a wrong password was accepted")
                count, _ = client.stat()
                assert len(client.list()[1]) == count
                if count:
                    client.retr(count)
                client.quit()
                with tally.lock:
                    tally.logins["pop3 ok"] += 1
            finally:
                client.close()
        except (OSError, poplib.error_proto, AssertionError) as error:
            tally.error(f"pop3 {box}: {error!r}")


def imap_reader(server: RunningAppliance, tally: Tally, box: str, load: Load) -> None:
    """Log in (every fourth time with a wrong password), SELECT INBOX, FETCH the flags, LOGOUT."""
    for attempt in range(100_000):
        if load.over():
            return
        wrong = attempt % 4 == 3
        try:
            client = imaplib.IMAP4_SSL(
                "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
            )
            try:
                try:
                    client.login(f"{box}@example.test", "Wrong!" + PASSWORD if wrong else PASSWORD)
                except imaplib.IMAP4.error as error:
                    if wrong and "AUTHENTICATIONFAILED" in str(error):
                        with tally.lock:
                            tally.logins["imap refused"] += 1
                        continue
                    raise
                if wrong:
                    tally.error(f"imap {box}: a wrong password was accepted")
                status, data = client.select("INBOX")
                assert status == "OK", data
                count = int(data[0] or 0)
                if count:
                    status, data = client.fetch(f"1:{count}", "(FLAGS)")
                    assert status == "OK", data
                client.logout()
                with tally.lock:
                    tally.logins["imap ok"] += 1
            finally:
                if client.state != "LOGOUT":
                    client.shutdown()
        except (OSError, imaplib.IMAP4.error, AssertionError) as error:
            tally.error(f"imap {box}: {error!r}")


def process_figures(pid: int) -> tuple[int, float, float]:
    """The server's open file descriptors, resident memory and peak resident memory (MB)."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE))
    return fds, int(kilobytes["VmRSS"]) / 1024, int(kilobytes["VmHWM"]) / 1024


def reloads_applied(server: RunningAppliance) -> int:

    def applied() -> tuple[int] | None:
        try:
            reloads = server.status()["reloads"]
        except (OSError, ValueError, KeyError):
            return None  # the status file is being replaced
        assert isinstance(reloads, dict)
        return (int(reloads["applied"]),)  # a tuple: true even when none is applied yet

    return wait_for(applied, 5, "a readable status.json")[0]


def quiescent(pid: int) -> tuple[int, float]:
    """fds and RSS (MB) once the clients are idle and the server has closed their sessions (the
    count stops falling), so that two such moments compare without the noise of work in flight."""
    fds, rss, _ = process_figures(pid)
    for _ in range(50):
        time.sleep(0.2)
        again, rss, _ = process_figures(pid)
        if again == fds:
            break
        fds = again
    return fds, rss


def reload_with(server: RunningAppliance, body: str) -> None:
    """Rewrite the manifest (as a deployment does: a new file renamed over it) and wait until the
    server has applied it."""
    before = reloads_applied(server)
    server.write_manifest(body)
    wait_for(lambda: reloads_applied(server) > before, 15, "the reload applied")


def stored(server: RunningAppliance) -> Counter[tuple[str, str]]:
    """(box, subject) of every message in the boxes' INBOX (new/ and cur/)."""
    found: Counter[tuple[str, str]] = Counter()
    for box in BOXES:
        for sub in ("new", "cur"):
            folder = server.data_dir / "mail" / "example.test" / box / sub
            for path in folder.iterdir() if folder.is_dir() else ():
                with open(path, "rb") as handle:
                    match = re.search(rb"^Subject: (\S+)", handle.read(4096), re.MULTILINE)
                found[(box, match.group(1).decode() if match else "?")] += 1
    return found


@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_a_soak_of_mixed_load_and_reloads_loses_nothing_and_keeps_fds_and_memory_level(
    appliance: ApplianceFactory,
) -> None:
    server = appliance.start(domains(None), listeners=("smtp", "pop3s", "imaps"))
    pid = server.process.pid
    tally = Tally()
    started = time.monotonic()
    load = Load(started + SOAK_SECONDS)
    threads = [
        threading.Thread(target=smtp_sender, args=(server, tally, n, load)) for n in range(SMTP_THREADS)
    ]
    threads += [threading.Thread(target=pop3_reader, args=(server, tally, box, load)) for box in POP3_BOXES]
    threads += [threading.Thread(target=imap_reader, args=(server, tally, box, load)) for box in IMAP_BOXES]
    for thread in threads:
        thread.start()
    fds_max, reloads = 0, 0
    warm: tuple[int, float] | None = None  # fds and RSS after the warm-up, with no session open
    try:
        next_reload = started + RELOAD_EVERY
        for _ in range(int(SOAK_SECONDS / SAMPLE_EVERY) + 10):
            if load.over():
                break
            fds_max = max(fds_max, process_figures(pid)[0])
            if warm is None and time.monotonic() - started >= WARM_UP_SECONDS:
                load.pause(len(threads))
                warm = quiescent(pid)
                load.resume()
            if time.monotonic() >= next_reload:
                # Add or remove an account nobody uses; the change applies while the load goes on.
                extra = f"extra{reloads}" if reloads % 2 == 0 else None
                reload_with(server, domains(extra))
                with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
                    client.ehlo("soak.example")
                    client.mail("load@remote.example")
                    code, _ = client.rcpt(f"extra{reloads - reloads % 2}@example.test")
                assert code == (250 if extra else 550), f"after reload {reloads} (extra={extra}): RCPT {code}"
                reloads += 1
                next_reload = time.monotonic() + RELOAD_EVERY
            time.sleep(SAMPLE_EVERY)
    finally:
        load.halted.set()
        load.resume()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    duration = time.monotonic() - started
    assert warm is not None
    fds_end, rss_end = quiescent(pid)
    peak = process_figures(pid)[2]
    found = stored(server)
    log = server.log()
    print(
        f"\nsoak: {duration:.0f}s, {tally.messages} messages got 250 ({sum(tally.acknowledged.values())} "
        f"deliveries), {sum(found.values())} found, {len(tally.errors)} unexpected errors; "
        f"pop3 logins {tally.logins['pop3 ok']} ok / {tally.logins['pop3 refused']} refused; "
        f"imap logins {tally.logins['imap ok']} ok / {tally.logins['imap refused']} refused; "
        f"{reloads} reloads; fds {warm[0]} after warm-up, {fds_end} at the end, {fds_max} at most; "
        f"RSS {warm[1]:.0f} MB after warm-up, {rss_end:.0f} MB at the end, peak {peak:.0f} MB"
    )
    assert tally.errors == [], tally.errors[:10]
    missing = tally.acknowledged - found
    unexpected = found - tally.acknowledged
    assert not missing, f"{sum(missing.values())} acknowledged deliveries not stored: {list(missing)[:10]}"
    assert not unexpected, f"stored but never acknowledged, or twice: {list(unexpected)[:10]}"
    # Enough of everything happened for the figures to mean something.
    assert tally.messages >= SOAK_SECONDS and reloads >= SOAK_SECONDS // (2 * RELOAD_EVERY)
    for kind in ("pop3 ok", "pop3 refused", "imap ok", "imap refused"):
        assert tally.logins[kind] >= SOAK_SECONDS // 10, (kind, tally.logins)
    for bad in ("Traceback", "internal error", "reload rejected", "auto-ban banned"):
        assert bad not in log, f"{bad!r} in the server log"
    assert fds_end <= warm[0] + MAX_FD_GROWTH
    assert rss_end - warm[1] < MAX_RSS_GROWTH_MB
