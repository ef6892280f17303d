"""AD logins through the AuthService against raw ldap3 rebinds, same Samba DC, same run.

A Samba AD DC is provisioned for the run (as the tests do: EC certificate, its own loopback
address). Then, for `--seconds` each (in `--rounds` alternating turns), `--clients` concurrent
clients log in as one AD user:

- reference: raw ldap3 simple binds on warm LDAPS connections (as many as the service's pool,
  TCP_NODELAY set), shared by client threads in arrival order (FairPool): the floor any ldap3
  code pays;
- service: `AuthService.authenticate()` from as many asyncio tasks on one event loop, with the
  service's log line written to a file, as in production.

Prints logins/s and p50/p99 latency of each side and their ratio. Targets: the service adds
under 1 ms at p50 over the raw rebind and sustains at least 80% of its throughput.

Rows: 1 client, as many clients as connections, then `--clients`. With more clients than
connections, logins wait for a connection, and by Little's law the mean latency of either side is
clients / (logins/s) whatever the order of service: a p50 well below the mean means some clients
waited far longer than the others. The last columns (fewest/most logins one client got through)
show how evenly each side served its clients: both hand out connections in arrival order.

    .venv/bin/python bench/auth.py [--seconds 10] [--clients 20] [--pool 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ldap3

from appliance.auth import AuthService, Outcome
from appliance.manifest import load_manifest
from appliance.snapshot import SnapshotHolder, build_snapshot
from bench._servers import DNS_DOMAIN, NETBIOS, SambaDomain, is_root, start_domain

USER = "benchuser"
PASSWORD = "Bench!Passw0rd1"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class FairPool:
    """Connections handed to waiting threads in arrival order, as a server serves its clients.

    A plain queue.Queue lets a thread that has just given a connection back take it again at
    once: a few threads keep the connections and the others starve, which lowers the p50 by
    raising the p99. Handing each returned connection to the oldest waiter measures the same
    rebinds at the latency every client gets.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: collections.deque[ldap3.Connection] = collections.deque()
        self._waiters: collections.deque[tuple[threading.Event, list[ldap3.Connection]]] = collections.deque()

    def get(self) -> ldap3.Connection:
        with self._lock:
            if self._idle:
                return self._idle.popleft()
            ready = threading.Event()
            slot: list[ldap3.Connection] = []
            self._waiters.append((ready, slot))
        ready.wait()
        return slot[0]

    def put(self, connection: ldap3.Connection) -> None:
        with self._lock:
            if self._waiters:
                ready, slot = self._waiters.popleft()
                slot.append(connection)
                ready.set()
            else:
                self._idle.append(connection)

    def drain(self) -> list[ldap3.Connection]:
        with self._lock:
            found = list(self._idle)
            self._idle.clear()
            return found


def raw_rebinds(
    domain: SambaDomain, clients: int, pool: int, seconds: float
) -> tuple[list[float], int, list[int]]:
    """Latencies (s) of raw ldap3 rebinds on `pool` warm connections shared by `clients` threads,
    failures, and logins per client."""
    dc = domain.dcs[0]
    context_tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(domain.ca_file))
    connections = FairPool()
    for _ in range(pool):
        server = ldap3.Server(dc.ip, port=636, use_ssl=True, tls=context_tls, get_info=ldap3.NONE)
        connection = ldap3.Connection(server, user=f"{USER}@{DNS_DOMAIN}", password=PASSWORD)
        connection.open(read_server_info=False)
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert connection.bind(read_server_info=False)
        connections.put(connection)
    latencies: list[float] = []
    failures = 0
    per_client: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal failures
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            connection = connections.get()
            try:
                connection.user = f"{USER}@{DNS_DOMAIN}"
                connection.password = PASSWORD
                ok = connection.bind(read_server_info=False)
            finally:
                connections.put(connection)
            mine.append(time.perf_counter() - started)
            bad += not ok
        with lock:
            latencies.extend(mine)
            failures += bad
            per_client.append(len(mine))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    for connection in connections.drain():
        connection.unbind()
    return latencies, failures, per_client


def service_logins(manifest: Path, clients: int, seconds: float) -> tuple[list[float], int, list[int]]:
    """Latencies (s) of AuthService.authenticate() from `clients` concurrent asyncio tasks,
    failures, and logins per client."""
    holder = SnapshotHolder(build_snapshot(load_manifest(manifest)))

    async def run() -> tuple[list[float], int, list[int]]:
        service = AuthService(holder, max_workers=8)
        latencies: list[float] = []
        failures = 0
        per_client: list[int] = []
        # Warm the pool as the raw side is warmed, outside the measured window.
        await asyncio.gather(
            *(
                service.authenticate("bench@example.test", PASSWORD, protocol="imap", client="warm")
                for _ in range(clients)
            )
        )
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal failures
            mine = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                result = await service.authenticate(
                    "bench@example.test", PASSWORD, protocol="imap", client="127.0.0.1"
                )
                latencies.append(time.perf_counter() - started)
                failures += result.outcome is not Outcome.ACCEPTED
                mine += 1
            per_client.append(mine)

        await asyncio.gather(*(client() for _ in range(clients)))
        await service.close()
        return latencies, failures, per_client

    return asyncio.run(run())


def merged(runs: list[tuple[list[float], int, list[int]]]) -> tuple[list[float], int, list[int]]:
    """Latencies, failures and logins per client (per round) of several rounds as one."""
    latencies = [latency for run in runs for latency in run[0]]
    return latencies, sum(run[1] for run in runs), [count for run in runs for count in run[2]]


def report(
    name: str, latencies: list[float], failures: int, per_client: list[int], seconds: float
) -> tuple[float, float, float, float]:
    rate = len(latencies) / seconds
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    mean = sum(latencies) / max(1, len(latencies)) * 1000
    fewest, most = min(per_client, default=0), max(per_client, default=0)
    print(
        f"{name:<34} {rate:>9.0f} {p50:>9.2f} {p99:>9.2f} {mean:>9.2f} {len(latencies):>8} {failures:>6}"
        f" {fewest:>7} {most:>7}"
    )
    return rate, p50, p99, mean


def compare(raw: tuple[float, float, float, float], service: tuple[float, float, float, float]) -> None:
    print(
        f"{'service / raw':<34} {service[0] / raw[0]:>8.2f}x {service[1] - raw[1]:>+9.2f} "
        f"{service[2] - raw[2]:>+9.2f} {service[3] - raw[3]:>+9.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per side and row")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns each side takes per row (--seconds split between them)"
    )
    parser.add_argument(
        "--pool", type=int, default=8, help="connections: the service's pool_size and the raw side's"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    if not is_root():
        print("bench/auth.py provisions a Samba AD DC: run it as root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as work:
        base = Path(work)
        started = time.monotonic()
        domain = start_domain(base / "samba", dc_count=1)
        try:
            domain.add_user(USER, PASSWORD)
            print(f"Samba AD DC on {domain.dcs[0].ip} ready in {time.monotonic() - started:.1f} s")
            (base / "ca.pem").write_bytes(domain.ca_file.read_bytes())
            manifest = base / "appliance.toml"
            manifest.write_text(
                f"""[server]
hostname = "mail.example.test"

[directories."{DNS_DOMAIN}"]
type = "active-directory"
servers = ["{domain.dcs[0].ldaps_url}"]
netbios_name = "{NETBIOS}"
ca_file = "ca.pem"
pool_size = {args.pool}

[domains."example.test".accounts]
bench = {{ active_directory = {{ domain = "{DNS_DOMAIN}", user = "{USER}" }} }}
"""
            )
            auth_log = logging.getLogger("appliance.auth")
            handler = logging.FileHandler(base / "auth.log")
            auth_log.addHandler(handler)
            auth_log.setLevel(logging.INFO)
            auth_log.propagate = False
            print(f"{args.pool} connections; {args.seconds:.0f} s per side per row")
            columns = ("logins/s", "p50 ms", "p99 ms", "mean ms", "logins", "failed", "fewest", "most")
            widths = (9, 9, 9, 9, 8, 6, 7, 7)
            print(f"{'':<34} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
            for clients in sorted({1, args.pool, args.clients}):
                print(f"-- {clients} concurrent client{'s' if clients > 1 else ''}")
                # The sides take turns in `--rounds` slices, so that a burst of load from
                # elsewhere on the machine falls on both rather than on one.
                slice_seconds = args.seconds / args.rounds
                raw_runs: list[tuple[list[float], int, list[int]]] = []
                service_runs: list[tuple[list[float], int, list[int]]] = []
                for _ in range(args.rounds):
                    raw_runs.append(raw_rebinds(domain, clients, args.pool, slice_seconds))
                    service_runs.append(service_logins(manifest, clients, slice_seconds))
                raw = report("raw ldap3 rebind (reference)", *merged(raw_runs), args.seconds)
                service = report("AuthService.authenticate", *merged(service_runs), args.seconds)
                compare(raw, service)
                if args.rounds > 1:
                    ratios = sorted(
                        len(mine[0]) / max(1, len(theirs[0]))
                        for theirs, mine in zip(raw_runs, service_runs, strict=True)
                    )
                    print(f"{'  throughput ratio per round':<34} " + " ".join(f"{x:.2f}" for x in ratios))
            handler.close()
            lines = (base / "auth.log").read_text().count("\n")
            print(f"({lines} auth log lines written by the service runs)")
            print("targets: p50 overhead < 1 ms, throughput >= 0.80x the raw rebind")
            print(
                f"fewest/most: logins one client got through in one round ({args.seconds / args.rounds:.1f} s);"
                " with more clients than connections compare the means"
            )
        finally:
            domain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
