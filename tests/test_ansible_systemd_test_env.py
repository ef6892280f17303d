"""`playbooks/test-env.yml` on a bare Debian 12 host under a real systemd (tests/fixtures/nspawn.py):
a Samba AD DC and the appliance as a systemd unit, from the shipped `inventories/test-env` with
only its connection changed, then logins of AD-linked accounts with their AD passwords.

Nothing is mocked: debootstrap, systemd, sshd, ansible-playbook, Samba, the appliance and the mail
clients are the real ones. Runs as root (an overlay mount, a network namespace, a container).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.nspawn import SAMBA_PACKAGES, NspawnHost, PlaybookRun, booted_host
from tests.support.namespaced_mail import NamespacedMail

# A whole playbook run from a bare root is in the first test's time; a loaded machine is slow.
pytestmark = [pytest.mark.needs_root, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
# The shipped inventory's test users and listeners (inventories/test-env/group_vars/testenv.yml).
GT, GT_PASSWORD = "gt@example.test", "Gt!Passw0rd1"
ANNA, ANNA_PASSWORD = "anna@example.test", "Anna!Passw0rd1"
PORTS = {"submission": 2587, "imap": 2143, "pop3": 2110}


@dataclass
class ProvisionedEnv:
    host: NspawnHost
    inventory: Path
    first_run: PlaybookRun

    def play(self) -> PlaybookRun:
        return self.host.playbook(self.inventory, "playbooks/test-env.yml")

    def mail(self) -> NamespacedMail:
        certificate = self.host.ssh("cat", "/etc/appliance/tls/cert.pem").stdout
        return NamespacedMail(self.host, certificate, **PORTS)


@pytest.fixture(scope="module")
def test_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProvisionedEnv]:
    inventory = tmp_path_factory.mktemp("inventory") / "test-env"
    shutil.copytree(REPO / "inventories/test-env", inventory)
    with booted_host(SAMBA_PACKAGES) as host:
        hosts = {"testenv": {"hosts": {"mail1": host.inventory_vars()}}}
        (inventory / "hosts.yml").write_text(json.dumps(hosts, indent=2) + "\n")  # JSON is YAML
        env = ProvisionedEnv(host, inventory, PlaybookRun(-1, "", 0.0))
        env.first_run = env.play()
        print(
            f"\ntest-env.yml from a bare root to serving: {env.first_run.seconds:.1f} s, {env.first_run.recap}"
        )
        yield env


@pytest.fixture
def provisioned(test_env: ProvisionedEnv) -> ProvisionedEnv:
    assert test_env.first_run.returncode == 0, test_env.first_run.output[-6000:]
    return test_env


def test_test_env_runs_the_appliance_as_a_systemd_unit_next_to_the_dc(provisioned: ProvisionedEnv) -> None:
    # The role picks systemd from the gathered facts: no variable of the shipped inventory says so.
    state = provisioned.host.ssh(
        "systemctl", "show", "appliance.service", "--property=ActiveState,SubState,NRestarts"
    ).stdout
    assert sorted(state.split()) == ["ActiveState=active", "NRestarts=0", "SubState=running"], state
    assert "TASK [appliance : Enable and start the appliance unit]" in provisioned.first_run.output
    assert "TASK [appliance : Start the appliance in the background]" not in provisioned.first_run.output
    # Debian's own file-server services would get in the DC's way: stopped and masked.
    services = ("smbd.service", "nmbd.service", "winbind.service")
    shown = provisioned.host.ssh(
        "systemctl", "show", "--property=UnitFileState,ActiveState", *services
    ).stdout
    assert shown.split().count("UnitFileState=masked") == 3, shown
    assert "ActiveState=active" not in shown.split(), shown


def test_ad_linked_accounts_log_in_with_their_ad_passwords_over_smtp_imap_and_pop3(
    provisioned: ProvisionedEnv,
) -> None:
    mail = provisioned.mail()
    subject = f"nspawn test-env {uuid.uuid4().hex[:12]}"
    mail.submit(GT, GT_PASSWORD, ANNA, subject)
    mail.wait_for_mail(ANNA, ANNA_PASSWORD, subject)
    assert any(subject.encode() in body for body in mail.pop3_messages(ANNA, ANNA_PASSWORD))
    assert mail.smtp_login_refused(GT, "Wrong!Passw0rd1")
    assert mail.imap_login_refused(ANNA, "Wrong!Passw0rd1")


def test_second_run_of_test_env_changes_nothing(provisioned: ProvisionedEnv) -> None:
    again = provisioned.play()
    assert again.returncode == 0, again.output[-6000:]
    assert again.recap["changed"] == 0, f"tasks that changed: {again.changed_tasks()}\n{again.output[-6000:]}"
