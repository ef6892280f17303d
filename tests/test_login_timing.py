"""No account enumeration by timing (issue 21 item 9): a refused login takes as long for an
unknown address as for an AD-linked account (a real Samba AD DC) or a local-hash account.

Before, the refusal came a fixed pause after the check, so the check's own cost showed: median
1,143 ms for an unknown address (a dummy argon2), 752 ms for an AD bind, 1,002 ms for a local
hash. Each account here is fresh (one wrong password each), so the guard of
appliance/auth/guard.py, which may pace an account under attack, is not involved.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import time

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.support.lines import client_context
from tests.support.smtp import HASH

ROUNDS = 10  # refused logins per kind
WRONG = "Wrong!Passw0rd1"
_numbers = itertools.count(1)


def _refusal_seconds(server: RunningAppliance, login: str) -> float:
    """Seconds from sending IMAP LOGIN (a wrong password) to its tagged answer, over TLS."""
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=15)
    with client_context(server).wrap_socket(raw) as sock, sock.makefile("rb") as reader:
        assert reader.readline(4096).startswith(b"* OK")
        started = time.perf_counter()
        sock.sendall(f'a LOGIN "{login}" "{WRONG}"\r\n'.encode())
        answer = reader.readline(4096)
        elapsed = time.perf_counter() - started
    assert answer.startswith(b"a NO [AUTHENTICATIONFAILED]"), answer
    return elapsed


def test_refused_logins_take_the_same_time_for_unknown_ad_linked_and_local_hash_addresses(
    appliance: ApplianceFactory, samba: SambaDomain
) -> None:
    stamp = int(time.time()) % 100000
    ad_users = [f"tim{next(_numbers)}t{stamp}" for _ in range(ROUNDS)]
    for user in ad_users:
        samba.add_user(user, "Right!Passw0rd1")
    directory = appliance.base / "appliance"
    (directory / "tls").mkdir(parents=True, exist_ok=True)
    (directory / "tls" / "cloudtech-ca.pem").write_bytes(samba.ca_file.read_bytes())
    accounts = [
        f'ad{i} = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }} }}'
        for i, user in enumerate(ad_users)
    ] + [f'local{i} = {{ password_hash = "{HASH}" }}' for i in range(ROUNDS)]
    body = (
        f"""
[security.auto_ban]
max_failures = 1000

[directories."cloudtech.local"]
type = "active-directory"
servers = ["{samba.dcs[0].ldaps_url}"]
netbios_name = "{NETBIOS}"
ca_file = "tls/cloudtech-ca.pem"

[domains."example.test".accounts]
"""
        + "\n".join(accounts)
        + "\n"
    )
    server = appliance.start(body, listeners=("imaps",))
    _refusal_seconds(server, "warm-up@example.test")  # the dummy hash is made on first use

    times: dict[str, list[float]] = {"unknown": [], "active-directory": [], "local-hash": []}
    for i in range(ROUNDS):  # interleaved, so that a change of load hits every kind alike
        times["unknown"].append(_refusal_seconds(server, f"nobody{i}@example.test"))
        times["active-directory"].append(_refusal_seconds(server, f"ad{i}@example.test"))
        times["local-hash"].append(_refusal_seconds(server, f"local{i}@example.test"))
    medians = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    print("median refusal ms: " + " ".join(f"{kind}={ms:.0f}" for kind, ms in medians.items()))
    server.wait_for_log(r"auth result=rejected login=ad0@example\.test .*cause=bad_credentials ad_code=52e")
    server.wait_for_log(r"auth result=rejected login=local0@example\.test .*cause=bad_credentials")
    assert max(medians.values()) < min(medians.values()) * 1.10, medians
