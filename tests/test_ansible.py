"""The Ansible roles and playbooks, applied for real to this machine, with no init system.

`playbooks/test-env.yml` runs with the shipped `inventories/test-env` (copied, plus a host_vars
file this module writes): a Samba AD DC on its own loopback address, and the appliance installed
under a scratch prefix (virtualenv, manifest, data, unit file), run in the background as its own
system user (`appliance_service_manager: background`). The tests check what only that mode does:
the second run leaves the background daemon alone, a manifest change is applied by SIGHUP with
the same PID, the files' owners and modes, and `--check --diff`.

The systemd path (the unit booted under a real systemd, `systemctl reload`, the sandbox, a broken
manifest stopping at `validate`, AD-linked logins over SMTP, POP3 and IMAP) is tested on a bare
Debian host in tests/test_ansible_systemd.py and tests/test_ansible_systemd_test_env.py.

Nothing is mocked: ansible-playbook, samba, the appliance and the mail clients are the real ones.
Runs as root (it adds a loopback address and a system user); ansible-lint needs no root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import imaplib
import json
import os
import pwd
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.appliance import free_port
from tests.fixtures.kerberos import SASLClient, write_krb5_conf
from tests.fixtures.samba import LoopbackAddress, claim_loopback_address, is_root, samba_installed
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLAYBOOK_TIMEOUT = 300.0
USER = "appliance-test"  # the system user the test environment's daemon runs as
MAIL_DOMAIN = "example.test"
# The shipped inventory's test users (inventories/test-env/group_vars/testenv.yml).
USERS = [
    {"name": "gt", "password": "Gt!Passw0rd1", "given_name": "Guy", "surname": "Test"},
    {"name": "anna", "password": "Anna!Passw0rd1", "given_name": "Anna", "surname": "Example"},
]
LISTENERS = ("smtp", "submission", "pop3", "imap")
RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _ansible_tool(name: str) -> str:
    """ansible-core and ansible-lint are test dependencies: missing ones fail, never skip."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the test virtualenv (pip install ansible-core ansible-lint)")
    return str(path)


@dataclasses.dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, int]:
        match = RECAP.search(self.output)
        assert match, f"no PLAY RECAP in the output:\n{self.output[-3000:]}"
        ok, changed, unreachable, failed = (int(group) for group in match.groups())
        return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for assertion messages)."""
        names, current = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                current = line.split("[", 1)[1].rsplit("]", 1)[0]
            elif line.startswith("changed:"):
                names.append(current)
        return names


@dataclasses.dataclass
class ProvisionedHost:
    prefix: Path
    inventory: Path
    ip: str
    ports: dict[str, int]
    first_run: Run | None = None

    @property
    def manifest(self) -> Path:
        return self.prefix / "etc/appliance/appliance.toml"

    @property
    def cli(self) -> Path:
        return self.prefix / "opt/appliance/venv/bin/appliance"

    @property
    def data_dir(self) -> Path:
        return self.prefix / "var/lib/appliance"

    @property
    def unit(self) -> Path:
        return self.prefix / "etc/systemd/system/appliance.service"

    @property
    def certificate(self) -> Path:
        return self.prefix / "etc/appliance/tls/cert.pem"

    def host_vars(self, users: list[dict[str, str]] = USERS, extra_accounts: str = "", **extra: str) -> None:
        """What this test changes in the inventory: paths, addresses, ports, users, accounts, and
        any other role variable (`extra`)."""
        values: dict[str, Any] = {
            "testenv_prefix": str(self.prefix),
            "testenv_listeners": {name: f"127.0.0.1:{port}" for name, port in self.ports.items()},
            "testenv_extra_accounts": extra_accounts,
            "samba_ad_dc_host_ip": self.ip,
            "samba_ad_dc_users": users,
            "appliance_user": USER,
            "appliance_group": USER,
            "appliance_source_dir": str(self.prefix / "source"),
            # Each protocol is checked by its own test below; a listener this version lacks
            # must not stop the environment from coming up for the others.
            "appliance_allow_listener_errors": False,
            **extra,
        }
        path = self.inventory / "host_vars" / "localhost.yml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(values, indent=2) + "\n")  # JSON is YAML

    def play(self, *arguments: str, packages: bool = True) -> Run:
        """Run playbooks/test-env.yml; `packages=False` leaves out the apt tasks (about 4 s each),
        for the runs that test something else than provisioning."""
        if not packages:
            arguments = (
                *arguments,
                "-e",
                '{"appliance_install_system_packages": false, "samba_ad_dc_install_packages": false}',
            )
        environment = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.prefix / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.prefix / "ansible-tmp"),
            "ANSIBLE_REMOTE_TMP": str(self.prefix / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "TMPDIR": str(self.prefix / "ansible-tmp"),
        }
        (self.prefix / "ansible-tmp").mkdir(exist_ok=True)
        started = time.monotonic()
        done = subprocess.run(
            [
                _ansible_tool("ansible-playbook"),
                "-i",
                str(self.inventory),
                "playbooks/test-env.yml",
                *arguments,
            ],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
        return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - started)

    def status(self) -> dict[str, Any]:
        done = subprocess.run(
            [str(self.cli), "status", "--format", "json", "--manifest", str(self.manifest)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"appliance status: {done.returncode} {done.stdout} {done.stderr}"
        status: dict[str, Any] = json.loads(done.stdout)
        return status

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certificate))

    def log(self) -> str:
        path = self.prefix / "var/log/appliance/appliance.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _copy_source(target: Path) -> None:
    """A frozen copy of what the role installs, so that edits in the work tree during the
    session do not make the second run install a new package."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(
        REPO / "appliance", target / "appliance", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )


def _stop(pidfile: Path) -> None:
    if pidfile.exists():
        subprocess.run(
            [
                "start-stop-daemon",
                "--stop",
                "--pidfile",
                str(pidfile),
                "--retry",
                "TERM/20/KILL/5",
                "--oknodo",
            ],
            capture_output=True,
            timeout=40,
            check=False,
        )


@pytest.fixture(scope="module")
def testenv() -> Iterator[ProvisionedHost]:
    if not is_root():
        pytest.skip("needs root: adds a loopback address and a system user, runs a domain controller")
    if not samba_installed():
        pytest.fail("samba is not installed (.ci/apt/ansible.txt lists the packages)")
    # pytest's own temporary directory is private (0700): the daemon's own user must reach its files.
    prefix = Path(tempfile.mkdtemp(prefix="appliance-ansible-", dir="/tmp"))
    prefix.chmod(0o755)
    _copy_source(prefix / "source")
    inventory = prefix / "inventory"
    shutil.copytree(REPO / "inventories" / "test-env", inventory)
    address: LoopbackAddress = claim_loopback_address()
    ports = {name: free_port() for name in LISTENERS}
    environment = ProvisionedHost(prefix, inventory, address.ip, ports)
    environment.host_vars()
    try:
        environment.first_run = environment.play()
        yield environment
    finally:
        _stop(prefix / "run/appliance.pid")
        _stop(prefix / "var/lib/samba-ad-dc/run/samba-ad-dc.pid")
        subprocess.run(["userdel", USER], capture_output=True, check=False)
        subprocess.run(["groupdel", USER], capture_output=True, check=False)
        address.release()
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def provisioned(testenv: ProvisionedHost) -> ProvisionedHost:
    run = testenv.first_run
    assert run is not None
    assert run.returncode == 0, run.output[-6000:]
    print(f"\nfull provisioning run from a bare prefix: {run.seconds:.1f} s, {run.recap}")
    return testenv


def _unique_subject() -> str:
    return f"ansible test {uuid.uuid4().hex[:12]}"


def _send(env: ProvisionedHost, login: str, password: str, recipient: str, subject: str) -> None:
    """Submission with STARTTLS and AUTH, as a mail client would."""
    with smtplib.SMTP("127.0.0.1", env.ports["submission"], timeout=30) as client:
        client.starttls(context=env.tls())
        client.login(login, password)
        message = (
            f"From: {login}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nsent through the test domain\r\n"
        )
        refused = client.sendmail(login, [recipient], message.encode())
        assert refused == {}


def _wait_for_file(directory: Path, needle: bytes, timeout: float = 10.0) -> Path:

    def found() -> Path | None:
        paths = directory.glob("*") if directory.is_dir() else []
        return next((path for path in paths if needle in path.read_bytes()), None)

    return wait_for(found, timeout, f"a message containing {needle!r} in {directory}")


# -- lint and unit ---------------------------------------------------------------------------


def test_roles_and_playbooks_pass_ansible_lint_production_profile_offline() -> None:
    done = subprocess.run(
        [
            _ansible_tool("ansible-lint"),
            "--offline",
            "--profile",
            "production",
            "--nocolor",
            "roles",
            "playbooks",
            "inventories",
        ],
        cwd=REPO,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


@pytest.mark.needs_root
def test_installed_systemd_unit_is_sandboxed_and_passes_systemd_analyze_verify(
    provisioned: ProvisionedHost,
) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (apt package systemd)"
    unit = provisioned.unit.read_text()
    for line in (
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        # The test environment's manifest leaves the limits at their defaults: SMTP, POP3 and
        # IMAP listeners of 1,000 connections each, 100 outbound deliveries.
        f"LimitNOFILE={1024 + 2 * 1000 * 3 + 2 * 100}",
        "ProtectSystem=strict",
        f"ReadWritePaths={provisioned.data_dir}",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        f"User={USER}",
    ):
        assert line in unit.splitlines(), f"{line!r} missing from the unit:\n{unit}"
    assert re.search(r"^Type=notify(-reload)?$", unit, re.M)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(provisioned.unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "appliance.service" not in done.stderr, done.stderr


# -- provisioning ------------------------------------------------------------------------------


@pytest.mark.needs_root
def test_second_run_of_the_test_environment_changes_nothing(provisioned: ProvisionedHost) -> None:
    assert provisioned.first_run is not None
    assert provisioned.first_run.recap["changed"] > 0
    pid = provisioned.status()["pid"]
    again = provisioned.play()
    assert again.returncode == 0, again.output[-6000:]
    assert again.recap["changed"] == 0, f"changed: {again.changed_tasks()}\n{again.output[-6000:]}"
    assert provisioned.status()["pid"] == pid


@pytest.mark.needs_root
def test_daemon_runs_as_its_system_user_with_private_files(provisioned: ProvisionedHost) -> None:
    status = provisioned.status()
    owner = Path(f"/proc/{status['pid']}").stat().st_uid
    assert subprocess.run(
        ["id", "-u", USER], capture_output=True, text=True, check=True
    ).stdout.strip() == str(owner)
    assert provisioned.manifest.stat().st_mode & 0o777 == 0o640
    assert (provisioned.prefix / "etc/appliance/tls/key.pem").stat().st_mode & 0o777 == 0o640
    assert provisioned.data_dir.stat().st_mode & 0o777 == 0o750
    assert provisioned.data_dir.stat().st_uid == owner
    # LimitNOFILE of the unit, also in background mode: the default limits need more than 1,024.
    limits = Path(f"/proc/{status['pid']}/limits").read_text()
    assert re.search(rf"^Max open files\s+{1024 + 2 * 1000 * 3 + 2 * 100}\s", limits, re.M), limits
    groups = subprocess.run(["id", "-Gn", USER], capture_output=True, text=True, check=True).stdout.split()
    assert "shadow" not in groups  # no local-system directory in the test manifest


@pytest.mark.needs_root
def test_the_cli_is_linked_into_path_and_finds_the_manifest_by_itself(provisioned: ProvisionedHost) -> None:
    link = provisioned.prefix / "usr/local/bin/appliance"  # /usr/local/bin/appliance on a real host
    assert link.is_symlink() and link.resolve() == provisioned.cli.resolve()
    result = subprocess.run(
        [str(link), "status", "--format", "json"],
        env={**os.environ, "APPLIANCE_MANIFEST": str(provisioned.manifest)},
        cwd=provisioned.prefix,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["running"] is True


# -- changing the manifest through the inventory -------------------------------------------------


def test_the_roles_make_the_spns_and_keytab_and_a_gssapi_imap_login_works(
    provisioned: ProvisionedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    keytab = provisioned.prefix / "etc/appliance/mail.keytab"
    status = keytab.stat()
    assert (status.st_mode & 0o777, status.st_uid) == (0o600, pwd.getpwnam(USER).pw_uid)
    krb5_conf = provisioned.prefix / "krb5.conf"
    write_krb5_conf(krb5_conf, provisioned.ip)
    monkeypatch.setenv("KRB5_CONFIG", str(krb5_conf))
    ccache = f"FILE:{provisioned.prefix}/gt.ccache"
    user = USERS[0]
    done = subprocess.run(
        ["kinit", f"{user['name']}@CLOUDTECH.LOCAL"],
        input=user["password"] + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KRB5CCNAME": ccache},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with imaplib.IMAP4("127.0.0.1", provisioned.ports["imap"], timeout=30) as client:
        client.starttls(ssl_context=provisioned.tls())
        try:
            client.authenticate("GSSAPI", SASLClient(ccache, "imap").respond)
        except imaplib.IMAP4.error as error:
            raise AssertionError(f"{error}; the daemon's log:\n{provisioned.log()[-3000:]}") from None
        assert client.select("INBOX")[0] == "OK"
    accepted = re.compile(r"auth result=accepted login=gt@CLOUDTECH\.LOCAL protocol=imap .*mechanism=GSSAPI")
    wait_for(
        lambda: accepted.search(provisioned.log()),
        10,
        lambda: f"the login's log line:\n{provisioned.log()[-3000:]}",
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.needs_root
def test_check_diff_shows_the_manifest_change_and_changes_nothing(provisioned: ProvisionedHost) -> None:
    before = _sha256(provisioned.manifest)
    revision = provisioned.status()["revision"]
    provisioned.host_vars(extra_accounts='"checkonly" = { display_name = "only in --check" }')
    try:
        run = provisioned.play("--check", "--diff", packages=False)
    finally:
        provisioned.host_vars()
    assert run.returncode == 0, run.output[-6000:]
    assert f"+++ after: {provisioned.manifest}" in run.output
    assert '+"checkonly" = { display_name = "only in --check" }' in run.output
    assert _sha256(provisioned.manifest) == before
    assert provisioned.status()["revision"] == revision


@pytest.mark.needs_root
def test_new_account_in_the_inventory_is_applied_by_a_reload_without_restart(
    provisioned: ProvisionedHost,
) -> None:
    status = provisioned.status()
    pid, applied = status["pid"], status["reloads"]["applied"]
    users = [*USERS, {"name": "zoe", "password": "Zoe!Passw0rd1", "given_name": "Zoe", "surname": "New"}]
    provisioned.host_vars(users=users)
    run = provisioned.play(packages=False)
    assert run.returncode == 0, run.output[-6000:]
    changed = run.changed_tasks()
    assert "samba_ad_dc : Create the users that are missing (passwords are set only here)" in changed
    assert "appliance : Deploy the manifest once `appliance validate` accepts it" in changed
    assert "appliance : Reload the running appliance and wait until it serves the new manifest" in changed
    assert not any("Start the appliance" in name or "Stop the" in name for name in changed), changed
    status = provisioned.status()
    assert status["pid"] == pid
    assert status["revision"] == _sha256(provisioned.manifest)
    assert status["reloads"]["applied"] > applied
    subject = _unique_subject()
    _send(provisioned, "zoe@example.test", "Zoe!Passw0rd1", "zoe@example.test", subject)
    _wait_for_file(provisioned.data_dir / "mail/example.test/zoe/new", subject.encode())


SIEVE_FILING = """require ["fileinto", "mailbox"];
if header :contains "subject" "report" {
    fileinto :create "Reports";
}
"""
SIEVE_BROKEN = """require ["fileinto"];
if header :contains "subject" "report" {
    fileinto :bogus "Elsewhere";
}
"""


def _deliver(env: ProvisionedHost, recipient: str, subject: str) -> None:
    """Inbound mail over plain SMTP, as another server would send it."""
    with smtplib.SMTP("127.0.0.1", env.ports["smtp"], timeout=30) as client:
        message = f"From: alice@remote.test\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nfor a rule\r\n"
        assert client.sendmail("alice@remote.test", [recipient], message.encode()) == {}


@pytest.mark.needs_root
def test_sieve_scripts_in_git_are_deployed_beside_the_manifest_and_a_broken_one_stops_at_validate(
    provisioned: ProvisionedHost,
) -> None:
    scripts = provisioned.prefix / "git-sieve"
    scripts.mkdir()
    (scripts / "john.sieve").write_text(SIEVE_FILING)
    account = '"john" = { sieve = "sieve/john.sieve" }'
    provisioned.host_vars(extra_accounts=account, appliance_sieve_src=str(scripts))
    run = provisioned.play(packages=False)
    assert run.returncode == 0, run.output[-6000:]
    changed = run.changed_tasks()
    assert "appliance : Deploy the Sieve scripts beside the manifest" in changed, changed
    deployed = provisioned.manifest.parent / "sieve" / "john.sieve"
    assert deployed.read_text() == SIEVE_FILING
    assert oct(deployed.stat().st_mode & 0o777) == "0o640"
    status = provisioned.status()
    assert status["revision"] == _sha256(provisioned.manifest)
    subject = f"monthly report {uuid.uuid4().hex[:12]}"
    _deliver(provisioned, "john@example.test", subject)
    john = provisioned.data_dir / "mail/example.test/john"
    _wait_for_file(john / ".Reports/new", subject.encode())

    # A broken script in Git: the play stops at validate, showing where; nothing on the host changes.
    revision, manifest = status["revision"], provisioned.manifest.read_bytes()
    (scripts / "john.sieve").write_text(SIEVE_BROKEN)
    provisioned.host_vars(
        extra_accounts=account + '\n"broken" = { display_name = "never deployed" }',
        appliance_sieve_src=str(scripts),
    )
    try:
        run = provisioned.play(packages=False)
    finally:
        provisioned.host_vars()
    assert run.returncode != 0, run.output[-6000:]
    failed = run.output.split("fatal:", 1)[0].rsplit("TASK [", 1)[1]
    assert failed.startswith("appliance : Validate the staged manifest with its Sieve scripts]"), failed
    assert "sieve/john.sieve:3:" in run.output, run.output[-6000:]
    assert deployed.read_text() == SIEVE_FILING
    assert provisioned.manifest.read_bytes() == manifest
    assert provisioned.status()["revision"] == revision
    subject = f"weekly report {uuid.uuid4().hex[:12]}"
    _deliver(provisioned, "john@example.test", subject)
    _wait_for_file(john / ".Reports/new", subject.encode())
