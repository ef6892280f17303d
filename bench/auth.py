"""AD logins through the AuthService against raw ldap3 rebinds, same Samba DC, same run.

A Samba AD DC is provisioned for the run (as the tests do: EC certificate, its own loopback
address). Then, for `--seconds` each, `--clients` concurrent clients log in as one AD user:

- reference: raw ldap3 simple binds on warm LDAPS connections (as many as the service's pool,
  TCP_NODELAY set), shared by client threads through a queue: the floor any ldap3 code pays;
- service: `AuthService.authenticate()` from as many asyncio tasks on one event loop, with the
  service's log line written to a file, as in production.

Prints logins/s and p50/p99 latency of each side and their ratio. Targets: the service adds
under 1 ms at p50 over the raw rebind and sustains at least 80% of its throughput.

    .venv/bin/python bench/auth.py [--seconds 10] [--clients 20] [--pool 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
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


def raw_rebinds(domain: SambaDomain, clients: int, pool: int, seconds: float) -> tuple[list[float], int]:
    """Latencies (s) of raw ldap3 rebinds on `pool` warm connections shared by `clients` threads."""
    dc = domain.dcs[0]
    context_tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(domain.ca_file))
    connections: queue.Queue[ldap3.Connection] = queue.Queue()
    for _ in range(pool):
        server = ldap3.Server(dc.ip, port=636, use_ssl=True, tls=context_tls, get_info=ldap3.NONE)
        connection = ldap3.Connection(server, user=f"{USER}@{DNS_DOMAIN}", password=PASSWORD)
        connection.open(read_server_info=False)
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert connection.bind(read_server_info=False)
        connections.put(connection)
    latencies: list[float] = []
    failures = 0
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

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    while not connections.empty():
        connections.get().unbind()
    return latencies, failures


def service_logins(manifest: Path, clients: int, seconds: float) -> tuple[list[float], int]:
    """Latencies (s) of AuthService.authenticate() from `clients` concurrent asyncio tasks."""
    holder = SnapshotHolder(build_snapshot(load_manifest(manifest)))

    async def run() -> tuple[list[float], int]:
        service = AuthService(holder, max_workers=8)
        latencies: list[float] = []
        failures = 0
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
            while time.monotonic() < deadline:
                started = time.perf_counter()
                result = await service.authenticate(
                    "bench@example.test", PASSWORD, protocol="imap", client="127.0.0.1"
                )
                latencies.append(time.perf_counter() - started)
                failures += result.outcome is not Outcome.ACCEPTED

        await asyncio.gather(*(client() for _ in range(clients)))
        await service.close()
        return latencies, failures

    return asyncio.run(run())


def report(
    name: str, latencies: list[float], failures: int, seconds: float
) -> tuple[float, float, float, float]:
    rate = len(latencies) / seconds
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    mean = sum(latencies) / max(1, len(latencies)) * 1000
    print(f"{name:<34} {rate:>9.0f} {p50:>9.2f} {p99:>9.2f} {mean:>9.2f} {len(latencies):>8} {failures:>6}")
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
        "--pool", type=int, default=8, help="connections: the service's pool_size and the raw side's"
    )
    args = parser.parse_args()
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
            columns = ("logins/s", "p50 ms", "p99 ms", "mean ms", "logins", "failed")
            print(f"{'':<34} " + " ".join(f"{c:>9}" if i < 4 else f"{c:>8}" for i, c in enumerate(columns)))
            for clients in (1, args.clients):
                print(f"-- {clients} concurrent client{'s' if clients > 1 else ''}")
                raw = report(
                    "raw ldap3 rebind (reference)",
                    *raw_rebinds(domain, clients, args.pool, args.seconds),
                    args.seconds,
                )
                service = report(
                    "AuthService.authenticate", *service_logins(manifest, clients, args.seconds), args.seconds
                )
                compare(raw, service)
            handler.close()
            lines = (base / "auth.log").read_text().count("\n")
            print(f"({lines} auth log lines written by the service runs)")
            print("targets: p50 overhead < 1 ms, throughput >= 0.80x the raw rebind")
        finally:
            domain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
