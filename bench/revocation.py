"""What sessions that follow the directory cost: AD logins with the rechecks running vs without,
same Samba DC, same run (issue 22).

A Samba AD DC is provisioned for the run. The manifest declares `--accounts` AD-linked accounts;
`--sessions` of them belong to real AD users and are logged in (through the AuthService, so each
session has its pwdLastSet) and registered as open sessions. Then, in alternating turns of
`--seconds / --rounds`, `--clients` concurrent clients log in as another AD user:

Each client's login registers its session, which its next login replaces (a client that
reconnects).

- without checks: the directory has no service account, nothing is rechecked;
- with checks: the directory has `bind_dn` and `recheck_interval = --interval`; the registry's
  loop reads the state of every user with a session each interval.

Prints logins/s of each side and their ratio (target >= 0.95), the directory searches per
interval, and the wall time and this process's CPU time of the first recheck of all sessions (a
full read) and of one after it (only what changed since is read again).

    .venv/bin/python bench/revocation.py [--accounts 10000] [--sessions 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.auth import AuthService, Outcome
from appliance.manifest import load_manifest
from appliance.snapshot import SnapshotHolder, build_snapshot
from bench._servers import DNS_DOMAIN, NETBIOS, SambaDomain, is_root, start_domain

USER = "benchuser"
PASSWORD = "Bench!Passw0rd1"
SERVICE = "benchsvc"


def manifest_text(domain_url: str, accounts: int, sessions: int, checks: bool, interval: float) -> str:
    lines = [
        '[server]\nhostname = "mail.example.test"\n',
        f'[directories."{DNS_DOMAIN}"]\ntype = "active-directory"\nservers = ["{domain_url}"]',
        f'netbios_name = "{NETBIOS}"\nca_file = "ca.pem"\npool_size = 8',
    ]
    if checks:
        lines.append(
            f'bind_dn = "{SERVICE}@{DNS_DOMAIN}"\nbind_password_file = "service.secret"\n'
            f"recheck_interval = {interval}"
        )
    lines.append('\n[domains."example.test".accounts]')
    lines.append(f'bench = {{ active_directory = {{ domain = "{DNS_DOMAIN}", user = "{USER}" }} }}')
    for n in range(accounts):
        user = f"s{n}" if n < sessions else f"ghost{n}"
        lines.append(f'a{n} = {{ active_directory = {{ domain = "{DNS_DOMAIN}", user = "{user}" }} }}')
    return "\n".join(lines) + "\n"


async def side(manifest: Path, sessions: int, clients: int, seconds: float) -> dict[str, float]:
    holder = SnapshotHolder(build_snapshot(load_manifest(manifest)))
    service = AuthService(holder, max_workers=8)
    revocations = service.revocations
    semaphore = asyncio.Semaphore(clients)

    async def open_session(n: int) -> None:
        async with semaphore:
            result = await service.check(f"a{n}@example.test", PASSWORD, client="127.0.0.2")
            assert result.account is not None, result
            revocations.register(
                result.account, "imap", "127.0.0.2", lambda reason: None, result.password_set
            )

    await asyncio.gather(*(open_session(n) for n in range(sessions)))
    figures: dict[str, float] = {}
    if holder.current.directory(DNS_DOMAIN).bind_dn:  # type: ignore[union-attr]
        # The first recheck reads every user in full; the ones after it only what changed.
        for name in ("first", "next"):
            revocations.due_now()
            wall, cpu = time.perf_counter(), time.process_time()
            await revocations.check_due()
            figures[f"{name}_ms"] = (time.perf_counter() - wall) * 1000
            figures[f"{name}_cpu_ms"] = (time.process_time() - cpu) * 1000
    follower = service.follower(DNS_DOMAIN)
    full_before = follower.full_reads if follower else 0
    entries_before = follower.entries_read if follower else 0
    rechecks = asyncio.get_running_loop().create_task(revocations.run())
    queries_before, started = revocations.queries, time.monotonic()
    deadline = started + seconds
    logins = failures = 0

    async def client() -> None:
        """Log in again and again; each login's session replaces this client's previous one."""
        nonlocal logins, failures
        session = None
        while time.monotonic() < deadline:
            result = await service.check("bench@example.test", PASSWORD, client="127.0.0.1")
            logins += 1
            failures += result.outcome is not Outcome.ACCEPTED
            if session is not None:
                revocations.unregister(session)
            if result.account is not None:
                session = revocations.register(
                    result.account, "imap", "127.0.0.1", lambda reason: None, result.password_set
                )
        if session is not None:
            revocations.unregister(session)

    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    rechecks.cancel()
    figures.update(
        logins=logins, failures=failures, seconds=elapsed, queries=revocations.queries - queries_before
    )
    follower = service.follower(DNS_DOMAIN)
    if follower is not None:
        figures.update(
            full_reads=follower.full_reads - full_before, entries_read=follower.entries_read - entries_before
        )
    assert revocations.count() == sessions, "a session was revoked: the bench users must stay valid"
    await service.close()
    return figures


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def add_users(domain: SambaDomain, names: list[str], threads: int = 4) -> None:
    """Create the users over `threads` admin connections kept open (Samba hashes each password)."""

    def add(chunk: list[str]) -> None:
        admin = domain.dcs[0].admin()
        try:
            for name in chunk:
                admin.add(
                    domain.user_dn(name),
                    ["top", "person", "organizationalPerson", "user"],
                    {
                        "sAMAccountName": name,
                        "userPrincipalName": f"{name}@{DNS_DOMAIN}",
                        "unicodePwd": f'"{PASSWORD}"'.encode("utf-16-le"),
                        "userAccountControl": 512,
                    },
                )
        finally:
            admin.unbind()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(add, [names[n::threads] for n in range(threads)]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating turns per side")
    parser.add_argument("--interval", type=float, default=1.0, help="recheck_interval with checks")
    args = parser.parse_args()
    if not is_root():
        print("bench/revocation.py provisions a Samba AD DC: run it as root", file=sys.stderr)
        return 2
    logging.getLogger("appliance").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-revocation-") as work:
        base = Path(work)
        started = time.monotonic()
        domain = start_domain(base / "samba", dc_count=1)
        try:
            add_users(domain, [USER, SERVICE, *(f"s{n}" for n in range(args.sessions))])
            print(f"Samba AD DC with {args.sessions + 2} users ready in {time.monotonic() - started:.0f} s")
            (base / "ca.pem").write_bytes(domain.ca_file.read_bytes())
            (base / "service.secret").write_text(PASSWORD + "\n")
            url = domain.dcs[0].ldaps_url
            without, with_checks = base / "without.toml", base / "with.toml"
            without.write_text(manifest_text(url, args.accounts, args.sessions, False, args.interval))
            with_checks.write_text(manifest_text(url, args.accounts, args.sessions, True, args.interval))
            slice_seconds = args.seconds / args.rounds
            runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
            for _ in range(args.rounds):
                runs["without"].append(asyncio.run(side(without, args.sessions, args.clients, slice_seconds)))
                runs["with"].append(
                    asyncio.run(side(with_checks, args.sessions, args.clients, slice_seconds))
                )
            rate = {
                name: sum(r["logins"] for r in rs) / sum(r["seconds"] for r in rs)
                for name, rs in runs.items()
            }
            failures = {name: sum(int(r["failures"]) for r in rs) for name, rs in runs.items()}
            checked = runs["with"]
            intervals = sum(r["seconds"] for r in checked) / args.interval
            print(
                f"{args.accounts} AD-linked accounts, {args.sessions} open sessions, "
                f"{args.clients} clients logging in, recheck_interval {args.interval:g} s"
            )
            print(f"logins/s without checks {rate['without']:8.0f}  (failed {failures['without']})")
            print(f"logins/s with checks    {rate['with']:8.0f}  (failed {failures['with']})")
            print(f"ratio with / without    {rate['with'] / rate['without']:8.2f}  (target >= 0.95)")
            reads = sum(r["queries"] for r in checked) / intervals
            print(f"directory reads per interval    {reads:8.2f}  (a read: one bind, a search per 100 users)")
            for name, what in (("first", "the first recheck (a full read)"), ("next", "a recheck after it")):
                wall = median(r[f"{name}_ms"] for r in checked)
                cpu = median(r[f"{name}_cpu_ms"] for r in checked)
                print(
                    f"{what:34} of {args.sessions} sessions: wall {wall:6.0f} ms, CPU of this process {cpu:5.0f} ms"
                )
            full = sum(r["full_reads"] for r in checked)
            entries = sum(r["entries_read"] for r in checked) / intervals
            print(
                f"entries decoded per interval    {entries:8.1f}  (full reads during the measured time: {full:.0f})"
            )
        finally:
            domain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
