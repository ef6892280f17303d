"""The outbound queue: throughput from acceptance to delivered, and restart time with mail waiting.

One run, three measurements, each with its reference beside it:

1. Reference: the sink peer's raw acceptance rate — Postfix's `smtp-source` sends `--messages`
   messages of `--size` bytes over `--sessions` parallel sessions straight to the sink (an aiosmtpd
   server in its own process that counts and discards, on 127.0.0.2).
2. Through the appliance: the same `smtp-source` load goes to `appliance serve`'s smtp listener
   (a trusted network, so it relays); every recipient is remote (bench@sink.test), so each message
   is written and fsynced into the queue before the 250, then delivered to the sink found through
   a DNS server on loopback (MX sink.test → 127.0.0.2). Printed: the acceptance rate, and the
   end-to-end rate (first message sent → last message counted at the sink).
3. Restart with `--messages` waiting: the sink is stopped, the same load is queued (each message
   tried once and deferred, retry in 1 h), the appliance is stopped and started again. Printed:
   the queue's own load time (its "queue started ... ms=" log line) and the time from process start
   to serving, against the same start with an empty queue; then a flush with the sink back, and
   the rate at which the waiting mail drains from disk.

Nothing is asserted about time. Needs /usr/sbin/smtp-source (Debian's postfix package).

    .venv/bin/python bench/outbound_queue.py [--messages 10000] [--sessions 20] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.sharedctypes
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.appliance import free_port
from tests.support.dns_server import DNSServer

SMTP_SOURCE = "/usr/sbin/smtp-source"
SINK_HOST = "127.0.0.2"
TIMEOUT = 900.0


def _sink_main(port: int, counter: Any, ready: Any) -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with counter.get_lock():
                counter.value += 1
            return "250 2.0.0 OK"

    controller = Controller(Handler(), hostname=SINK_HOST, port=port, ready_timeout=10)
    controller.start()
    ready.set()
    signal.sigwait({signal.SIGTERM})
    controller.stop()
    del asyncio


class Sink:
    def __init__(self, port: int) -> None:
        self.port = port
        self.counter = multiprocessing.Value("l", 0)
        ready = multiprocessing.Event()
        self.process = multiprocessing.Process(
            target=_sink_main, args=(port, self.counter, ready), daemon=True
        )
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        self.process.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if not ready.wait(20):
            raise SystemExit("the sink did not start")

    @property
    def count(self) -> int:
        return int(self.counter.value)

    def wait_for(self, count: int, deadline: float) -> float:
        while self.count < count and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.count < count:
            raise SystemExit(f"the sink counted {self.count} of {count}")
        return time.monotonic()

    def stop(self) -> None:
        if self.process.pid is not None:
            self.process.terminate()
        self.process.join(10)


def smtp_source(host: str, port: int, args: argparse.Namespace) -> float:
    """Seconds smtp-source took to have every message accepted (connections reused: -d)."""
    command = [SMTP_SOURCE, "-d", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size)]
    command += ["-f", "sender@bench.test", "-t", "bench@sink.test", "-M", "bench.client", f"{host}:{port}"]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"smtp-source failed: {result.stdout}{result.stderr}")
    return time.monotonic() - started


class Appliance:
    def __init__(self, directory: Path, dns: DNSServer, sink_port: int, retry: str) -> None:
        self.directory = directory
        self.dns = dns
        self.sink_port = sink_port
        self.retry = retry
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "serve.log"

    def start(self) -> float:
        """Start `appliance serve`; seconds until its status says serving."""
        self.port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "appliance.toml").write_text(
            f"""
[server]
hostname = "mail.bench.test"
data_dir = "var"
trusted_networks = ["127.0.0.1/32"]
[server.listeners]
smtp = "127.0.0.1:{self.port}"
[server.limits]
max_connections_per_client = 200

[outbound]
resolver = "{self.dns.address}"
smtp_port = {self.sink_port}
retry_intervals = ["{self.retry}"]
delay_warning_after = "30 days"
connections_per_destination = 20

[domains."bench.test".accounts]
sender = {{ }}
"""
        )
        status = self.directory / "var" / "state" / "status.json"
        status.unlink(missing_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "appliance", "serve", "--manifest", "appliance.toml"],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + 120
        while time.monotonic() < deadline:
            try:
                if json.loads(status.read_text()).get("state") == "serving":
                    return time.monotonic() - started
            except (OSError, ValueError):
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"appliance serve exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.005)
        raise SystemExit("appliance serve did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def waiting(self) -> int:
        return len(list((self.directory / "var" / "queue").glob("*.msg")))

    def queue_load_ms(self) -> float:
        matches = re.findall(r"queue started messages=(\d+) ms=(\d+)", self.log_path.read_text())
        return float(matches[-1][1]) if matches else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    if not Path(SMTP_SOURCE).exists():
        print(f"{SMTP_SOURCE} is missing (apt-get install postfix)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    dns = DNSServer()
    dns.add("sink.test", "MX", "10 mx.sink.test.")
    dns.add("mx.sink.test", "A", SINK_HOST)
    sink_port = free_port(SINK_HOST)
    sink = Sink(sink_port)
    n = args.messages
    print(f"{n} messages of {args.size} bytes, {args.sessions} sessions (smtp-source -d)")
    try:
        # 1. the reference
        seconds = smtp_source(SINK_HOST, sink_port, args)
        sink.wait_for(n, time.monotonic() + TIMEOUT)
        reference = n / seconds
        print(f"reference  sink accepts directly:            {reference:8.0f} msgs/s ({seconds:.2f} s)")

        # 2. through the appliance's queue
        appliance = Appliance(work / "appliance", dns, sink_port, "1s")
        appliance.start()
        before = sink.count
        started = time.monotonic()
        seconds = smtp_source("127.0.0.1", appliance.port, args)
        accepted = time.monotonic()
        finished = sink.wait_for(before + n, accepted + TIMEOUT)
        print(
            f"appliance  accepts into the queue (fsynced):  {n / seconds:8.0f} msgs/s "
            f"({n / seconds / reference:.2f}x the reference)"
        )
        print(
            f"appliance  accepted → delivered (end to end): {n / (finished - started):8.0f} msgs/s "
            f"({(finished - started):.2f} s; last delivery {1000 * (finished - accepted):.0f} ms "
            f"after the last 250; {n / (finished - started) / reference:.2f}x the reference)"
        )
        appliance.stop()

        # 3. restart with the queue full
        empty_start = appliance.start()
        empty_load = appliance.queue_load_ms()
        sink.stop()
        appliance.retry = "1h"
        appliance.stop()
        appliance.start()
        smtp_source("127.0.0.1", appliance.port, args)
        deadline = time.monotonic() + TIMEOUT
        states = appliance.directory / "var" / "queue"
        while time.monotonic() < deadline:
            # every message tried once (the sink is down) and deferred for an hour
            if len(list(states.glob("*.state"))) >= n:
                break
            time.sleep(0.2)
        appliance.stop()
        waiting = appliance.waiting()
        full_start = appliance.start()
        full_load = appliance.queue_load_ms()
        print(
            f"restart    empty queue:                       {empty_start * 1000:8.0f} ms to serving "
            f"(queue load {empty_load:.0f} ms)"
        )
        print(
            f"restart    {waiting} messages waiting:            {full_start * 1000:8.0f} ms to serving "
            f"(queue load {full_load:.0f} ms; +{(full_start - empty_start) * 1000:.0f} ms)"
        )
        sink = Sink(sink_port)
        flushed = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "appliance", "queue", "flush", "--manifest", "appliance.toml"],
            cwd=appliance.directory,
            capture_output=True,
            timeout=60,
            check=True,
        )
        done = sink.wait_for(waiting, flushed + TIMEOUT)
        print(
            f"flush      {waiting} waiting messages drained:    {waiting / (done - flushed):8.0f} msgs/s "
            f"({done - flushed:.2f} s; {waiting / (done - flushed) / reference:.2f}x the reference)"
        )
        appliance.stop()
    finally:
        sink.stop()
        dns.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
