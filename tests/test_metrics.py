"""The OpenMetrics listener, scraped with prometheus-client's own parser while SMTP, POP3 and IMAP
clients work: the counters say what the clients did."""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import smtplib
import threading
import urllib.error
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.pam import PamUsers
from tests.support import smtp
from tests.support.lines import client_context
from tests.support.wait import wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
WORKERS, MESSAGES, GOOD_LOGINS, BAD_LOGINS = 3, 4, 2, 1
# One account per worker: POP3 locks the maildrop (RFC 1939 §8), a second login would be refused.
BODY = '[domains."example.test".accounts]\n' + "".join(
    f'worker{n} = {{ password_hash = "{smtp.HASH}" }}\n' for n in range(WORKERS)
)


def scrape(server: RunningAppliance) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by name, then by their labels, from one scrape in the OpenMetrics format."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.ports['metrics']}/metrics", headers={"Accept": OPENMETRICS}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for key, value in samples.get(name, {}).items() if wanted <= set(key))


def pop3_login(server: RunningAppliance, address: str, password: str) -> None:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    try:
        client.stls(client_context(server))
        client.user(address)
        client.pass_(password)
    finally:
        client.close()


def imap_login(server: RunningAppliance, address: str, password: str) -> None:
    with imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    ) as client:
        client.login(address, password)


def work(server: RunningAppliance, address: str, errors: list[BaseException]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
            for number in range(MESSAGES):
                client.sendmail("a@remote.example", [address], smtp.message(f"load {number}"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@remote.example", ["nobody@example.test"], smtp.message("refused"))
        for _ in range(GOOD_LOGINS):
            pop3_login(server, address, smtp.PASSWORD)
            imap_login(server, address, smtp.PASSWORD)
        for _ in range(BAD_LOGINS):
            with pytest.raises(poplib.error_proto):
                pop3_login(server, address, "Wrong!Passw0rd")
            with pytest.raises(imaplib.IMAP4.error):
                imap_login(server, address, "Wrong!Passw0rd")
    except BaseException as error:  # reported by the test's thread
        errors.append(error)


def test_counters_scraped_during_load_match_what_the_clients_did(appliance: ApplianceFactory) -> None:
    server = appliance.start(BODY, listeners=("smtp", "pop3", "imaps", "metrics"))
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=work, args=(server, f"worker{n}@example.test", errors))
        for n in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    seen_logins = 0.0
    scrapes = 0
    while any(t.is_alive() for t in threads) and scrapes < 500:  # scrapes while the clients work
        samples = scrape(server)
        logins = total(samples, "appliance_logins_total")
        assert logins >= seen_logins  # counters never go back
        seen_logins, scrapes = logins, scrapes + 1
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert scrapes > 1

    samples = scrape(server)
    assert total(samples, "appliance_messages_accepted_total", listener="smtp") == WORKERS * MESSAGES
    assert total(samples, "appliance_smtp_rejections_total", stage="rcpt") == WORKERS
    for protocol in ("pop3", "imap"):
        accepted = total(samples, "appliance_logins_total", protocol=protocol, result="accepted")
        rejected = total(samples, "appliance_logins_total", protocol=protocol, result="rejected")
        assert (accepted, rejected) == (WORKERS * GOOD_LOGINS, WORKERS * BAD_LOGINS), protocol
    assert total(samples, "appliance_logins_total", cause="bad_credentials") == 2 * WORKERS * BAD_LOGINS
    assert total(samples, "appliance_queue_messages") == 0
    revision = hashlib.sha256(server.manifest.read_bytes()).hexdigest()
    assert samples["appliance_revision"] == {(("revision", revision),): 1.0}

    # Sessions are a state: back to none once every client has gone.
    wait_for(lambda: total(scrape(server), "appliance_sessions") == 0, 10, "no open sessions")
    before = total(samples, "appliance_reloads_total", result="applied")
    server.write_manifest(BODY + "mary = {}\n")
    wait_for(
        lambda: total(scrape(server), "appliance_reloads_total", result="applied") == before + 1,
        10,
        "the reload counted",
    )
    assert total(scrape(server), "appliance_accounts") == WORKERS + 1


def test_the_metrics_listener_answers_only_at_metrics(appliance: ApplianceFactory) -> None:
    server = appliance.start(BODY, listeners=("metrics",))
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/", timeout=10)
    assert missing.value.code == 404
    # Without an OpenMetrics Accept header: Prometheus's classic text format.
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10
    ) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "# TYPE appliance_logins_total counter" in response.read().decode()


def test_directory_answers_are_timed_per_directory_and_server(
    appliance: ApplianceFactory, pam_users: PamUsers
) -> None:
    body = f"""
[directories.WORKGROUP]
type = "local-system"
pam_service = "{pam_users.service}"

[domains."example.test".accounts]
linked = {{ active_directory = {{ domain = "WORKGROUP", user = "{pam_users.good}" }} }}
"""
    server = appliance.start(body, listeners=("pop3", "metrics"))
    pop3_login(server, "linked@example.test", pam_users.password)
    with pytest.raises(poplib.error_proto):
        pop3_login(server, "linked@example.test", "Wrong!Passw0rd")
    samples = scrape(server)
    assert total(samples, "appliance_directory_request_seconds_count", directory="WORKGROUP") == 2
    assert total(samples, "appliance_directory_request_seconds_sum", directory="WORKGROUP") > 0
    buckets = samples["appliance_directory_request_seconds_bucket"]
    assert max(buckets.values()) == 2  # the +Inf bucket holds both
    assert total(samples, "appliance_logins_total", protocol="pop3", result="accepted") == 1
