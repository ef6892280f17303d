"""The production playbook on a bare Debian 12 host under a real systemd (tests/fixtures/nspawn.py).

`playbooks/site.yml` runs over ssh against a fresh copy of a debootstrap root booted with
`systemd-nspawn --boot`, in a network namespace of its own. The tests then use what it made as a
mail server's users and admin would: the unit is active (the daemon said READY=1), an account of
the inventory submits over SMTP and reads over IMAP and POP3, a PAM-linked account logs in under
the unit's sandbox, a second run changes nothing, a manifest change is applied by `systemctl
reload` with the same MainPID, a broken manifest stops at `validate` while the old one keeps
serving, and after a power cycle of the host everything is back with the mail still there.

Nothing is mocked: debootstrap, systemd, sshd, ansible-playbook, the appliance and the mail
clients are the real ones. Runs as root (an overlay mount, a network namespace, a container).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from tests.fixtures.nspawn import NspawnHost, PlaybookRun, booted_host
from tests.support.namespaced_mail import NamespacedMail
from tests.support.wait import wait_for

# A whole playbook run from a bare root is in the first test's time; a loaded machine is slow.
pytestmark = [pytest.mark.needs_root, pytest.mark.timeout(900)]

HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
# Throw-away test passwords; the inventory holds only their argon2id hashes.
PASSWORDS = {"demo": "Demo!Passw0rd", "zoe": "Zoe!Passw0rd1"}
PAM_USER, PAM_PASSWORD = "mailadmin", "Mailadmin!Passw0rd1"
MANIFEST = """\
[server]
hostname = "{hostname}"
data_dir = "/var/lib/appliance"

[server.tls]
certificate = "/etc/appliance/tls/cert.pem"
key = "/etc/appliance/tls/key.pem"

[server.listeners]
smtp = "127.0.0.1:25"
submission = "127.0.0.1:587"
pop3 = "127.0.0.1:110"
imap = "127.0.0.1:143"

[directories.WORKGROUP]
type = "local-system"

[domains."{domain}".accounts]
postmaster = {{ active_directory = {{ domain = "WORKGROUP", user = "{pam_user}" }} }}
{accounts}
"""
HANDLER_RELOAD = "appliance : Reload the appliance unit"
DEPLOY_TASK = "appliance : Deploy the manifest once `appliance validate` accepts it"
VALIDATE_TASK = "appliance : Validate the staged manifest with its Sieve scripts"


@dataclass
class Site:
    """A host provisioned by site.yml, and the inventory the tests change."""

    host: NspawnHost
    inventory: Path
    first_run: PlaybookRun
    hashes: dict[str, str]

    def write_inventory(self, accounts: tuple[str, ...] = ("demo",), extra: str = "") -> None:
        lines = [f'"{name}" = {{ password_hash = "{self.hashes[name]}" }}' for name in accounts]
        manifest = MANIFEST.format(
            hostname=HOSTNAME, domain=DOMAIN, pam_user=PAM_USER, accounts="\n".join([*lines, extra])
        )
        hosts = {
            "mailservers": {
                "hosts": {"mail1": self.host.inventory_vars()},
                "vars": {
                    "appliance_manifest_content": manifest,
                    "appliance_service_manager": "systemd",
                    "appliance_tls_subject_alt_names": [f"DNS:{HOSTNAME}", "IP:127.0.0.1"],
                },
            }
        }
        (self.inventory / "hosts.yml").write_text(json.dumps(hosts, indent=2) + "\n")  # JSON is YAML

    def play(self, *arguments: str) -> PlaybookRun:
        return self.host.playbook(self.inventory, "playbooks/site.yml", *arguments)

    def unit(self) -> dict[str, str]:
        """The unit's state as systemd sees it."""
        properties = "ActiveState,SubState,Type,MainPID,NRestarts,Result,ExecMainStartTimestampMonotonic"
        done = self.host.ssh("systemctl", "show", "appliance.service", f"--property={properties}")
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    @functools.cached_property
    def mail(self) -> NamespacedMail:
        """Mail clients on the host's loopback that trust the certificate the role generated."""
        return NamespacedMail(self.host, self.host.ssh("cat", "/etc/appliance/tls/cert.pem").stdout)

    def manifest_text(self) -> str:
        return self.host.ssh("cat", "/etc/appliance/appliance.toml").stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    hashes = {name: hasher.hash(password) for name, password in PASSWORDS.items()}
    inventory = tmp_path_factory.mktemp("site-inventory")
    with booted_host() as host:
        # The machine's own user that the local-system directory's account is linked to.
        host.ssh("useradd", "--create-home", PAM_USER)
        host.ssh("chpasswd", stdin=f"{PAM_USER}:{PAM_PASSWORD}\n")
        site = Site(host, inventory, PlaybookRun(-1, "", 0.0), hashes)
        site.write_inventory()
        site.first_run = site.play()
        print(
            f"\nsite.yml from a bare root to serving: {site.first_run.seconds:.1f} s, {site.first_run.recap}"
        )
        yield site


@pytest.fixture
def provisioned(site: Site) -> Site:
    assert site.first_run.returncode == 0, site.first_run.output[-6000:]
    return site


def _subject() -> str:
    return f"nspawn test {uuid.uuid4().hex[:12]}"


# -- from a bare root to serving ----------------------------------------------------------------


def test_site_playbook_on_a_bare_debian_host_leaves_the_unit_active_after_ready(provisioned: Site) -> None:
    assert provisioned.first_run.recap["changed"] > 0
    unit = provisioned.unit()
    # Type=notify: systemd reports "active (running)" only after the daemon's READY=1.
    assert unit["Type"] in ("notify", "notify-reload"), unit
    assert (unit["ActiveState"], unit["SubState"]) == ("active", "running"), unit
    assert unit["NRestarts"] == "0", unit
    assert provisioned.host.ssh("systemctl", "is-enabled", "appliance.service").stdout.strip() == "enabled"
    # The daemon runs as its own user, not root, and nothing it did was refused by the sandbox.
    pid = unit["MainPID"]
    owner = provisioned.host.ssh("stat", "-c", "%U", f"/proc/{pid}").stdout.strip()
    assert owner == "appliance"
    journal = provisioned.host.ssh(
        "journalctl", "--unit=appliance.service", "--no-pager", "--output=cat"
    ).stdout
    assert "Traceback" not in journal, journal
    # Started once: the handlers do not restart or reload a daemon this play has just started.
    assert journal.count("Started appliance.service") == 1 and "Stopping appliance" not in journal, journal
    assert "Reloading appliance" not in journal, journal


def test_inventory_account_submits_over_smtp_and_reads_over_imap_and_pop3(provisioned: Site) -> None:
    mail, login = provisioned.mail, f"demo@{DOMAIN}"
    subject = _subject()
    mail.submit(login, PASSWORDS["demo"], login, subject)
    mail.wait_for_mail(login, PASSWORDS["demo"], subject)
    assert mail.imap_login_refused(login, "Wrong!Passw0rd")
    assert any(subject.encode() in body for body in mail.pop3_messages(login, PASSWORDS["demo"]))


def test_account_linked_to_a_local_user_logs_in_through_pam_under_the_sandbox(provisioned: Site) -> None:
    """The unit's sandbox leaves PAM able to read /etc/shadow (group shadow, no setuid helper)."""
    mail, login = provisioned.mail, f"postmaster@{DOMAIN}"
    subject = _subject()
    mail.submit(login, PAM_PASSWORD, login, subject)
    mail.wait_for_mail(login, PAM_PASSWORD, subject)
    assert mail.imap_login_refused(login, "Wrong!Passw0rd1")


def test_second_run_of_site_yml_changes_nothing(provisioned: Site) -> None:
    pid = provisioned.unit()["MainPID"]
    again = provisioned.play()
    assert again.returncode == 0, again.output[-6000:]
    assert again.recap["changed"] == 0, f"tasks that changed: {again.changed_tasks()}\n{again.output[-6000:]}"
    assert provisioned.unit()["MainPID"] == pid


# -- changing the manifest through the inventory -------------------------------------------------


def test_new_account_is_applied_by_systemctl_reload_with_the_same_main_pid(provisioned: Site) -> None:
    before = provisioned.unit()
    provisioned.write_inventory(accounts=("demo", "zoe"))
    run = provisioned.play()
    assert run.returncode == 0, run.output[-6000:]
    changed = run.changed_tasks()
    assert DEPLOY_TASK in changed and HANDLER_RELOAD in changed, changed
    assert not any("Restart" in name for name in changed), changed
    after = provisioned.unit()
    assert (after["MainPID"], after["NRestarts"], after["ActiveState"]) == (before["MainPID"], "0", "active")
    journal = provisioned.host.ssh("journalctl", "--unit=appliance.service", "--no-pager").stdout
    assert re.search(r"Reload(ing|ed) appliance", journal), journal[-3000:]
    subject = _subject()
    provisioned.mail.submit(f"zoe@{DOMAIN}", PASSWORDS["zoe"], f"zoe@{DOMAIN}", subject)
    provisioned.mail.wait_for_mail(f"zoe@{DOMAIN}", PASSWORDS["zoe"], subject)


def test_broken_manifest_stops_the_play_at_validate_and_the_old_one_keeps_serving(provisioned: Site) -> None:
    before_text, before_unit = provisioned.manifest_text(), provisioned.unit()
    broken = '"broken" = { active_directory = { domain = "nowhere.example", user = "x" } }'
    provisioned.write_inventory(accounts=("demo", "zoe"), extra=broken)
    try:
        run = provisioned.play()
    finally:
        provisioned.write_inventory(accounts=("demo", "zoe"))
    assert run.returncode != 0
    assert run.recap["failed"] == 1, run.output[-6000:]
    assert run.failed_task() == VALIDATE_TASK
    assert "nowhere.example" in run.output  # the problem is reported, with its key path
    assert provisioned.manifest_text() == before_text
    after = provisioned.unit()
    assert (after["MainPID"], after["ActiveState"]) == (before_unit["MainPID"], "active")
    subject = _subject()
    provisioned.mail.submit(f"demo@{DOMAIN}", PASSWORDS["demo"], f"demo@{DOMAIN}", subject)
    provisioned.mail.wait_for_mail(f"demo@{DOMAIN}", PASSWORDS["demo"], subject)


# -- the host powered off and on -----------------------------------------------------------------


def test_after_a_power_cycle_the_unit_comes_back_by_itself_with_the_mail(provisioned: Site) -> None:
    subject = _subject()
    provisioned.mail.submit(f"demo@{DOMAIN}", PASSWORDS["demo"], f"demo@{DOMAIN}", subject)
    provisioned.mail.wait_for_mail(f"demo@{DOMAIN}", PASSWORDS["demo"], subject)
    provisioned.host.stop()
    provisioned.host.start()
    state: dict[str, Any] = {}

    def active() -> bool:
        state.update(provisioned.unit())
        return state.get("ActiveState") == "active"

    wait_for(active, 60, lambda: f"appliance.service active after boot: {state}", every=0.5)
    assert provisioned.host.boots == 2 and state["NRestarts"] == "0", state
    provisioned.mail.wait_for_mail(f"demo@{DOMAIN}", PASSWORDS["demo"], subject)


# -- the sandbox ---------------------------------------------------------------------------------


def test_systemd_analyze_security_rates_the_unit_ok_or_better(provisioned: Site) -> None:
    done = provisioned.host.ssh("systemd-analyze", "security", "--no-pager", "appliance.service")
    match = re.search(r"Overall exposure level for appliance\.service: ([\d.]+) (\w+)", done.stdout)
    assert match, done.stdout[-3000:]
    exposure, rating = float(match.group(1)), match.group(2)
    print(f"\nsystemd-analyze security appliance.service: {exposure} {rating}")
    assert rating in ("OK", "SAFE") and exposure < 5.0, done.stdout
