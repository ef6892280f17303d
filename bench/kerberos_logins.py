"""GSSAPI IMAP logins per second next to AD simple-bind logins, same server, same run.

A Samba AD DC is provisioned for the run (as the tests do) and is the KDC: a service account
with imap/mail.example.test, its keytab, a user linked to an account (tests/fixtures/kerberos.py
does the set-up). `appliance serve` runs with an imaps listener. Then `--clients` threads, for
`--seconds` each in `--rounds` alternating turns, each log in over a fresh TLS connection and
LOGOUT, again and again:

- reference: AUTHENTICATE PLAIN with the AD password (an LDAP simple bind on the server's warm
  pool of DC connections);
- gssapi: AUTHENTICATE GSSAPI with a service ticket (kinit once, the ticket cache read by every
  login; a new GSS context, so a new authenticator, each time);
- dovecot (with --dovecot, when dovecot-gssapi is installed): Dovecot 2.3 with the same keytab,
  GSSAPI over imaps.

Prints logins/s, p50/p99 latency and the ratio to the reference. Asserts nothing about time.

    .venv/bin/python bench/kerberos_logins.py [--seconds 10] [--clients 20] [--rounds 3] [--dovecot]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gssapi

from bench._servers import NETBIOS, is_root, start_domain
from tests.fixtures.kerberos import HOSTNAME, SASLClient, set_up

USER = "gssbench"
PASSWORD = "Bench!Passw0rd1"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Session:
    """A raw IMAP client over a fresh TLS connection: just enough to log in and out."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw)
        self.file = self.sock.makefile("rb")
        self.line()  # greeting

    def line(self) -> bytes:
        line = self.file.readline(1 << 20)
        if not line:
            raise ConnectionError("closed")
        return line.rstrip(b"\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def authenticate(self, mechanism: str, initial: bytes, respond: Callable[[bytes], bytes]) -> bool:
        self.send(f"a AUTHENTICATE {mechanism} {base64.b64encode(initial).decode() or '='}")
        for _ in range(10):
            line = self.line()
            if line.startswith(b"+"):
                self.send(base64.b64encode(respond(base64.b64decode(line[2:]))).decode())
            elif line.startswith(b"a "):
                return line.startswith(b"a OK")
        return False

    def close(self) -> None:
        try:
            self.send("z LOGOUT")
            for _ in range(5):
                if self.line().startswith(b"z "):
                    break
        finally:
            self.file.close()
            self.sock.close()


def plain_login(port: int, context: ssl.SSLContext, login: str) -> bool:
    session = Session(port, context)
    try:
        return session.authenticate("PLAIN", f"\0{login}\0{PASSWORD}".encode(), lambda _: b"")
    finally:
        session.close()


def gssapi_login(port: int, context: ssl.SSLContext, ccache: str) -> bool:
    session = Session(port, context)
    try:
        client = SASLClient(ccache, "imap")
        return session.authenticate("GSSAPI", client.first_token(), client.respond)
    finally:
        session.close()


def run(login: Callable[[], bool], clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal failures
        for _ in range(1_000_000):
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            try:
                ok = login()
            except (OSError, gssapi.exceptions.GSSError):
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return latencies, failures


def start_appliance(
    directory: Path, ldaps_url: str, ca: Path, keytab: Path, clients: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.read_bytes())
    manifest = directory / "appliance.toml"
    manifest.write_text(
        f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "var"\n'
        f'[server.listeners]\nimaps = "127.0.0.1:{port}"\n'
        f"[server.limits]\nmax_connections_per_client = {clients + 10}\n"
        f"[security.auto_ban]\nenabled = false\n"
        f'[directories."cloudtech.local"]\ntype = "active-directory"\nservers = ["{ldaps_url}"]\n'
        f'netbios_name = "{NETBIOS}"\nca_file = "ca.pem"\nkerberos_keytab = "{keytab}"\n'
        f'[domains."example.test".accounts]\n'
        f'john = {{ active_directory = {{ domain = "cloudtech.local", user = "{USER}" }} }}\n'
    )
    log = open(directory / "serve.log", "wb")  # noqa: SIM115 (the child's output)
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while not (directory / "var" / "tls" / "cert.pem").exists() or not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                f"appliance serve did not start: {(directory / 'serve.log').read_text()[-2000:]}"
            )
        time.sleep(0.05)
    return process, port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_dovecot(
    directory: Path, keytab: Path, krb5_conf: Path, cert: Path, key: Path
) -> tuple[subprocess.Popen[bytes], list[str], int]:
    """Dovecot 2.3 with GSSAPI only, the same keytab, over imaps with the appliance's certificate."""
    from bench._mail import run_dovecot

    port = free_port()
    for sub in ("run", "state"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    # The Kerberos user is the login (its local name, realm stripped); a static userdb serves it.
    config = directory / "dovecot.conf"
    config.write_text(
        f"""
protocols = imap
listen = 127.0.0.1
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
import_environment = KRB5_CONFIG={krb5_conf}
auth_mechanisms = gssapi
auth_krb5_keytab = {keytab}
auth_gssapi_hostname = {HOSTNAME}
auth_username_format = %Ln
first_valid_uid = 8
first_valid_gid = 8
# GSSAPI is the only mechanism; the passdb only looks the proven user up.
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=8 gid=8 home={directory}/home/%u
}}
mail_location = maildir:~/Maildir
# The keytab is the appliance's (root, 0600): Dovecot's auth process reads it as root here.
service auth {{
  user = root
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
  }}
}}
"""
    )
    process, stop = run_dovecot(config, "dovecot-gssapi")
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"dovecot did not start: {(directory / 'stderr.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return process, stop, port


def report(
    name: str, latencies: list[float], failures: int, seconds: float, reference: float | None
) -> float:
    rate = len(latencies) / seconds
    ratio = f"{rate / reference:6.2f}x" if reference else "   1.00x"
    print(
        f"{name:<34} {rate:9.1f} logins/s  p50 {percentile(latencies, 0.5) * 1000:7.1f} ms  "
        f"p99 {percentile(latencies, 0.99) * 1000:7.1f} ms  failures {failures:4d}  {ratio}"
    )
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dovecot", action="store_true", help="also Dovecot with GSSAPI (dovecot-gssapi)")
    args = parser.parse_args()
    if not is_root():
        raise SystemExit("needs root (Samba AD DC, ip addr add)")
    work = Path(tempfile.mkdtemp(prefix="bench-gssapi-"))
    domain = start_domain(work / "samba", dc_count=1)
    processes: list[tuple[subprocess.Popen[bytes], list[str] | None]] = []
    try:
        realm = set_up(domain, work / "kerberos")
        os.environ["KRB5_CONFIG"] = str(realm.krb5_conf)
        domain.add_user(USER, PASSWORD)
        ccache = realm.kinit(USER, PASSWORD)
        appliance, port = start_appliance(
            work / "appliance", domain.dcs[0].ldaps_url, domain.ca_file, realm.keytab, args.clients
        )
        processes.append((appliance, None))
        context = ssl.create_default_context(cafile=str(work / "appliance" / "var" / "tls" / "cert.pem"))
        context.check_hostname = False
        sides: dict[str, Callable[[], bool]] = {
            "appliance AD simple bind (PLAIN)": lambda: plain_login(port, context, "john@example.test"),
            "appliance GSSAPI": lambda: gssapi_login(port, context, ccache),
        }
        if args.dovecot:
            if (
                shutil.which("dovecot") is None
                or not Path("/usr/lib/dovecot/modules/auth/libmech_gssapi.so").exists()
            ):
                print("dovecot-gssapi is not installed: Dovecot left out (apt-get install dovecot-gssapi)")
            else:
                dovecot, stop, dovecot_port = start_dovecot(
                    work / "dovecot", realm.keytab, realm.krb5_conf,
                    work / "appliance" / "var" / "tls" / "cert.pem", work / "appliance" / "var" / "tls" / "key.pem",
                )  # fmt: skip
                processes.append((dovecot, stop))
                sides["dovecot GSSAPI"] = lambda: gssapi_login(dovecot_port, context, ccache)
        for name, login in sides.items():  # warm up, and prove each side logs in at all
            if not login():
                raise SystemExit(f"{name}: the first login failed")
        results: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in sides}
        for _ in range(args.rounds):
            for name, login in sides.items():
                latencies, failures = run(login, args.clients, args.seconds)
                kept, failed = results[name]
                results[name] = (kept + latencies, failed + failures)
        total = args.seconds * args.rounds
        print(
            f"{args.clients} clients, fresh TLS connection per login, {args.rounds} x {args.seconds:.0f} s per side"
        )
        reference = None
        for name, (latencies, failures) in results.items():
            rate = report(name, latencies, failures, total, reference)
            reference = reference or rate
    finally:
        from bench._mail import stop_server

        for process, stop in processes:
            stop_server(process, stop)
        domain.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
