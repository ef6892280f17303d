"""SMTP intake with durable Maildir delivery: the appliance against Postfix, in one run.

Postfix's own load generator, `smtp-source`, sends `--messages` messages of `--size` bytes over
`--sessions` parallel sessions to each server, first with a new connection per message ("conn",
smtp-source's default), then with connections reused ("-d"). Each run sends all its mail to an
account of its own (user01 in the first run, user02 in the second, ...), on both servers.

The servers:
- the appliance: `appliance serve` as a subprocess on a generated manifest with only the `smtp`
  listener and accounts user01..user20. It answers 250 only once the message is in `new/` with
  the file and the directory fsynced, so its accept rate is its end-to-end rate.
- Postfix (Debian's `postfix`, installed with "No configuration"): a self-contained instance set
  up as measured for this machine: its own main.cf and master.cf under the work
  directory, smtpd bound only to 127.0.0.1, no relaying (every transport but virtual is
  `error:`), `virtual_mailbox_domains = bench.test` with user01..user20 → `bench.test/userNN/`
  (Maildir) under its own `virtual_mailbox_base`, uid/gid `mail`, no chroot, `maillog_file`
  inside the instance; Postfix's defaults otherwise. /etc/postfix is not used. Postfix answers 250
  once the message is in its queue (fsynced); virtual(8) writes the Maildir afterwards, so both
  its accept rate and its end-to-end rate (last file in new/) are printed.

Why a fresh account per run rather than one Maildir emptied between runs: on this machine's
filesystem (ext4 without a journal) creating a file right after many were deleted nearby costs
up to 0.7 ms of CPU instead of 0.02 ms, because ext4 then skips inodes freed in the last
minutes; emptying 20,000 files before a run charged that to whichever server ran next. Postfix
still pays it for its own queue files, which it deletes as it goes: that is its design.

With `--filter`, two more servers scan every message with one rspamd (tests/fixtures/rspamd.py's
configuration: no Redis, no hyperscan, the tests' loopback DNS server answering every lookup):
"filtered", the appliance with `[filter]` (rspamd's normal worker over HTTP), and "pf+milter",
Postfix with rspamd's proxy worker as its `smtpd_milters` (milter mode, scanning itself).

Runs alternate between the servers. Medians of
`--runs` are printed with every run, and the ratio appliance / Postfix. Nothing is asserted about
time. Needs root (Postfix starts as root and drops to its users) and the packages in
.ci/apt/smtp.txt.

With `--sieve` a second appliance runs beside the first, each account with a typical 20-rule
Sieve script (`TWENTY_RULES`, none of which matches, so all are evaluated): the cost of running
the script at delivery, as a ratio against the appliance without one. A second Postfix runs too,
delivering through Dovecot's LDA (dovecot-lda, a pipe(8) transport, one process per message)
with Pigeonhole running the same script: the reference for Sieve at delivery (packages in
.ci/apt/imap.txt and .ci/apt/sieve.txt).

    .venv/bin/python bench/smtp.py [--messages 20000] [--sessions 20] [--size 4096] [--runs 3] [--sieve]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._mail import process_tree_cpu
from tests.fixtures.appliance import free_port
from tests.fixtures.rspamd import Rspamd
from tests.support.dns_server import DNSServer

DOMAIN = "bench.test"
USERS = 20
MAIL_UID = MAIL_GID = 8  # Debian's "mail"
START_TIMEOUT = 60.0
RUN_TIMEOUT = 900.0
SMTP_SOURCE = "/usr/sbin/smtp-source"


@dataclass
class RunningServer:
    name: str
    port: int
    maildirs: Path  # the domain's directory: userNN/ is userNN's Maildir
    process: subprocess.Popen[bytes] | None
    stop_command: list[str] | None = None
    pid_file: Path | None = None
    accept: dict[str, list[float]] = field(default_factory=dict)
    end_to_end: dict[str, list[float]] = field(default_factory=dict)

    def stop(self) -> None:
        if self.stop_command is not None:
            subprocess.run(self.stop_command, capture_output=True, timeout=60, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def cpu_seconds(self) -> float | None:
        """User + system CPU so far of the appliance: its main process and the delivery process
        it starts (its child). None for Postfix."""
        if self.process is None:
            return None
        return process_tree_cpu(self.process.pid)


def wait_for_banner(port: int, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} not answering on port {port} within {START_TIMEOUT}s")


# A typical rule set of 20 rules (folders by sender, list, subject; flags; a size rule; a
# vacation-free out-of-hours tag): none matches smtp-source's mail, so every rule is evaluated and
# the message ends in INBOX by the implicit keep, where the run counts it.
TWENTY_RULES = (
    'require ["fileinto", "imap4flags", "envelope", "body", "relational", "comparator-i;ascii-numeric",'
    ' "variables", "subaddress", "date"];\n'
    + "".join(
        f'if header :contains "subject" "[project-{n}]" {{ fileinto "Projects.p{n}"; stop; }}\n'
        for n in range(6)
    )
    + "".join(
        f'if address :domain :is "from" "partner{n}.example" {{ fileinto "Partners"; stop; }}\n'
        for n in range(4)
    )
    + 'if exists "list-id" { fileinto "Lists"; stop; }\n'
    + 'if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" { fileinto "Junk"; stop; }\n'
    + 'if envelope :detail "to" "news" { fileinto "News"; stop; }\n'
    + 'if size :over 10M { addflag "$Big"; }\n'
    + 'if body :contains "unsubscribe here" { fileinto "Bulk"; stop; }\n'
    + 'if header :matches "subject" "Re: *invoice*" { fileinto "Invoices"; stop; }\n'
    + 'if anyof (header :contains "x-mailer" "MassMailer", header :is "precedence" "bulk") { discard; stop; }\n'
    + 'if address :localpart :is "to" "billing" { fileinto "Billing"; stop; }\n'
    + 'if date :value "lt" :originalzone "date" "year" "2000" { fileinto "Old"; stop; }\n'
    + 'if header :matches "from" "*@*.invalid" { set "who" "${1}"; fileinto "Invalid"; stop; }\n'
)


def start_appliance(
    work: Path, sessions: int, *, sieve: bool = False, name: str = "", rspamd: Rspamd | None = None
) -> RunningServer:
    name = name or ("appliance+sieve" if sieve else "appliance")
    directory = work / name
    directory.mkdir(parents=True)
    port = free_port()
    if sieve:
        (directory / "rules.sieve").write_text(TWENTY_RULES)
    entry = '{ sieve = "rules.sieve" }' if sieve else "{}"
    accounts = "\n".join(f"user{n:02d} = {entry}" for n in range(1, USERS + 1))
    manifest = directory / "appliance.toml"
    scanner = (
        f'[filter]\nrspamd = "{rspamd.address}"\ntimeout = "60s"\nresolver = "{rspamd.dns.address}"\n'
        if rspamd
        else ""
    )
    manifest.write_text(
        f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "var"\n'
        f'[server.listeners]\nsmtp = "127.0.0.1:{port}"\n'
        # smtp-source reconnects as soon as it has the 221: allow for closes not yet seen.
        f"[server.limits]\nmax_connections_per_client = {sessions * 10}\n"
        f"{scanner}"
        f'[domains."{DOMAIN}".accounts]\n{accounts}\n'
    )
    log = open(work / f"{name}-serve.log", "wb")  # noqa: SIM115 - kept open for the child's life
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    wait_for_banner(port, "appliance serve", process)
    return RunningServer(name, port, directory / "var" / "mail" / DOMAIN, process)


DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"


def _pigeonhole(root: Path, vmail: Path) -> list[str]:
    """Dovecot's LDA with Pigeonhole running TWENTY_RULES for every recipient: its configuration
    under `root`, and the master.cf line of the pipe(8) transport that runs it (one recipient per
    delivery, as user mail). No userdb lookup: the Maildir is given with -o."""
    sieve = root / "sieve"
    run = root / "dovecot-run"
    for directory in (sieve, run):
        directory.mkdir(parents=True)
        os.chown(directory, MAIL_UID, MAIL_GID)
    (sieve / "rules.sieve").write_text(TWENTY_RULES)
    log = root / "dovecot.log"
    log.touch()
    os.chown(log, MAIL_UID, MAIL_GID)
    conf = root / "dovecot.conf"
    conf.write_text(
        f"protocols =\nbase_dir = {run}\nlog_path = {log}\nssl = no\nstats_writer_socket_path =\n"
        f"mail_location = maildir:~\nfirst_valid_uid = {MAIL_UID}\nfirst_valid_gid = {MAIL_GID}\n"
        "protocol lda {\n  mail_plugins = sieve\n}\n"
        f"plugin {{\n  sieve = file:{sieve};active={sieve / 'rules.sieve'}\n}}\n"
    )
    conf.chmod(0o644)
    argv = f"{DOVECOT_LDA} -c {conf} -f ${{sender}} -o mail_location=maildir:{vmail}/${{nexthop}}/${{user}}"
    return [
        f"dovecot   unix  -       n       n       -       -       pipe flags=DRhu user=mail:mail argv={argv}"
    ]


def start_postfix(
    work: Path, *, pigeonhole: bool = False, name: str = "", rspamd: Rspamd | None = None
) -> RunningServer:
    name = name or ("postfix+pigeonhole" if pigeonhole else "postfix")
    root = work / name
    etc, spool, data, vmail = root / "etc", root / "spool", root / "data", root / "vmail"
    for directory in (etc, spool, data, vmail):
        directory.mkdir(parents=True)
    os.chown(data, *_postfix_ids())
    os.chown(vmail, MAIL_UID, MAIL_GID)
    port = free_port()
    (etc / "vmailbox").write_text(
        "".join(f"user{n:02d}@{DOMAIN} {DOMAIN}/user{n:02d}/\n" for n in range(1, USERS + 1))
    )
    (etc / "main.cf").write_text(
        f"""compatibility_level = 3.6
config_directory = {etc}
queue_directory = {spool}
data_directory = {data}
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost =
default_transport = error:no remote delivery in this benchmark
relay_transport = error:no relaying in this benchmark
local_transport = error:no local delivery in this benchmark
smtpd_relay_restrictions = reject_unauth_destination
alias_maps =
alias_database =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = texthash:{etc}/vmailbox
virtual_mailbox_base = {vmail}
virtual_uid_maps = static:{MAIL_UID}
virtual_gid_maps = static:{MAIL_GID}
virtual_minimum_uid = {MAIL_UID}
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
"""
        + ("virtual_transport = dovecot\ndovecot_destination_recipient_limit = 1\n" if pigeonhole else "")
        + (
            # rspamd's proxy worker as a milter (rspamd's documented Postfix set-up).
            f"smtpd_milters = inet:127.0.0.1:{rspamd.milter_port}\n"
            "milter_default_action = tempfail\nmilter_protocol = 6\n"
            if rspamd
            else ""
        )
    )
    master = [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "pickup    unix  n       -       n       60      1       pickup",
        "cleanup   unix  n       -       n       -       0       cleanup",
        "qmgr      unix  n       -       n       300     1       qmgr",
        "tlsmgr    unix  -       -       n       1000?   1       tlsmgr",
        "rewrite   unix  -       -       n       -       -       trivial-rewrite",
        "bounce    unix  -       -       n       -       0       bounce",
        "defer     unix  -       -       n       -       0       bounce",
        "trace     unix  -       -       n       -       0       bounce",
        "verify    unix  -       -       n       -       1       verify",
        "flush     unix  n       -       n       1000?   0       flush",
        "proxymap  unix  -       -       n       -       -       proxymap",
        "proxywrite unix -       -       n       -       1       proxymap",
        "smtp      unix  -       -       n       -       -       smtp",
        "relay     unix  -       -       n       -       -       smtp",
        "showq     unix  n       -       n       -       -       showq",
        "error     unix  -       -       n       -       -       error",
        "retry     unix  -       -       n       -       -       error",
        "discard   unix  -       -       n       -       -       discard",
        "local     unix  -       n       n       -       -       local",
        "virtual   unix  -       n       n       -       -       virtual",
        "lmtp      unix  -       -       n       -       -       lmtp",
        "anvil     unix  -       -       n       -       1       anvil",
        "scache    unix  -       -       n       -       1       scache",
        "postlog   unix-dgram n  -       n       -       1       postlogd",
    ]
    if pigeonhole:
        master += _pigeonhole(root, vmail)
    (etc / "master.cf").write_text("\n".join(master) + "\n")
    for command in (["postfix", "-c", str(etc), "check"], ["postfix", "-c", str(etc), "start"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")
    wait_for_banner(port, "postfix")
    return RunningServer(name, port, vmail / DOMAIN, None, stop_command=["postfix", "-c", str(etc), "stop"])


def _postfix_ids() -> tuple[int, int]:
    import grp
    import pwd

    return pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid


def empty_maildir(maildir: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        directory = maildir / sub
        if directory.is_dir():
            for name in os.listdir(directory):
                os.unlink(directory / name)


def count_new(maildir: Path) -> int:
    try:
        return len(os.listdir(maildir / "new"))
    except FileNotFoundError:
        return 0


def run_once(
    server: RunningServer, mode: str, user: str, args: argparse.Namespace
) -> tuple[float, float, str]:
    """(accept msgs/s, end-to-end msgs/s, note) for one smtp-source run, all mail to `user`."""
    maildir = server.maildirs / user
    empty_maildir(maildir)  # empty unless there are more runs than accounts
    command = [SMTP_SOURCE, "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size)]
    command += ["-f", f"bench@{DOMAIN}", "-t", f"{user}@{DOMAIN}", "-M", "bench.client"]
    if mode == "-d":
        command.append("-d")
    command.append(f"127.0.0.1:{server.port}")
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    accepted_at = time.monotonic()
    if result.returncode != 0:
        raise SystemExit(f"smtp-source failed against {server.name}: {result.stdout}{result.stderr}")
    deadline = accepted_at + RUN_TIMEOUT
    count = count_new(maildir)
    while count < args.messages and time.monotonic() < deadline:
        time.sleep(0.01)
        count = count_new(maildir)
    finished = time.monotonic()
    if count < args.messages:
        raise SystemExit(f"{server.name}: only {count} of {args.messages} messages arrived in new/")
    note = f"drain {1000 * (finished - accepted_at):.0f} ms"
    cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        note += f", server cpu/wall {(cpu_after - cpu_before) / (accepted_at - started):.2f}"
    return args.messages / (accepted_at - started), args.messages / (finished - started), note


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096, help="payload bytes per message (headers extra)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="conn,-d", help='"conn", "-d" or both, comma-separated')
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--filter",
        action="store_true",
        help="also the appliance with [filter] and Postfix with rspamd's milter, one rspamd for both",
    )
    parser.add_argument(
        "--sieve",
        action="store_true",
        help="also run the appliance with a 20-rule Sieve script per account (ratio against no script)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: Postfix starts as root and drops to its own users")
    if not Path(SMTP_SOURCE).exists():
        raise SystemExit(f"{SMTP_SOURCE} is missing: install the packages in .ci/apt/smtp.txt")
    work = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    work.chmod(0o755)  # Postfix's daemons (user postfix) and virtual (uid mail) must get through
    servers: list[RunningServer] = []
    dns: DNSServer | None = None
    rspamd: Rspamd | None = None
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    try:
        servers.append(start_appliance(work, args.sessions))
        if args.sieve:
            servers.append(start_appliance(work, args.sessions, sieve=True))
        servers.append(start_postfix(work))
        if args.sieve and Path(DOVECOT_LDA).exists():
            servers.append(start_postfix(work, pigeonhole=True))
        if args.filter:
            dns = DNSServer()
            rspamd = Rspamd(work / "rspamd", dns, milter=True)
            rspamd.start()
            servers.append(start_appliance(work, args.sessions, name="filtered", rspamd=rspamd))
            servers.append(start_postfix(work, name="pf+milter", rspamd=rspamd))
        print(
            f"{args.messages:,} messages of {args.size:,} bytes, {args.sessions} sessions, "
            f"{args.runs} runs per server and mode; work directory {work}"
        )
        runs = 0
        for mode in modes:
            for run in range(1, args.runs + 1):
                user = f"user{runs % USERS + 1:02d}"
                runs += 1
                for server in servers:
                    accept, end_to_end, note = run_once(server, mode, user, args)
                    server.accept.setdefault(mode, []).append(accept)
                    server.end_to_end.setdefault(mode, []).append(end_to_end)
                    print(
                        f"  {mode:>4} run {run} {server.name:>9}: accept {accept:>7,.0f} msgs/s, "
                        f"end-to-end {end_to_end:>7,.0f} msgs/s ({note})"
                    )
        print()
        print(
            f"{'mode':>4} | {'server':>9} | {'accept (median)':>15} | {'runs':>26} | {'end-to-end (median)':>19}"
        )
        for mode in modes:
            medians = {}
            for server in servers:
                accept = statistics.median(server.accept[mode])
                end_to_end = statistics.median(server.end_to_end[mode])
                medians[server.name] = end_to_end
                listed = " · ".join(f"{rate:,.0f}" for rate in server.accept[mode])
                print(
                    f"{mode:>4} | {server.name:>9} | {accept:>15,.0f} | {listed:>26} | {end_to_end:>19,.0f}"
                )
            pairs = [("appliance", "postfix"), ("filtered", "appliance"), ("filtered", "pf+milter")]
            for a, b in pairs:
                if a in medians and b in medians:
                    ratio = medians[a] / medians[b]
                    print(f"{mode:>4} | {'ratio':>9} | {ratio:>15.2f} | {a} / {b}, end-to-end medians")
            if "appliance+sieve" in medians:
                ratio = medians["appliance+sieve"] / medians["appliance"]
                print(
                    f"{mode:>4} | {'ratio':>9} | {ratio:>15.2f} | 20-rule Sieve / no script, end-to-end medians"
                )
            if "postfix+pigeonhole" in medians:
                ratio = medians["appliance+sieve"] / medians["postfix+pigeonhole"]
                print(
                    f"{mode:>4} | {'ratio':>9} | {ratio:>15.2f} | "
                    "appliance+sieve / Postfix+Dovecot LDA+Pigeonhole, end-to-end medians"
                )
        return 0
    finally:
        for server in servers:
            server.stop()
        if rspamd is not None:
            rspamd.stop()
        if dns is not None:
            dns.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
