"""What the AD client reads of users with open sessions, as the read-only service account, from
the suite's real Samba DC: one search for many users; each change an admin makes shows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from appliance.auth import Outcome
from appliance.auth.active_directory import ActiveDirectoryClient
from appliance.auth.revocation import Revocations
from appliance.auth.user_states import UserState
from appliance.auth.verdict import Verdict
from appliance.manifest import load_manifest
from appliance.snapshot import build_snapshot
from tests.fixtures.auth_service import AuthServices
from tests.fixtures.samba import NETBIOS, SambaDomain, filetime
from tests.test_auth_active_directory import PASSWORD, new_user

SERVICE_PASSWORD = "Svc!Passw0rd1"


def client(samba: SambaDomain, tmp_path: Path) -> ActiveDirectoryClient:
    service = new_user(samba, "svc", SERVICE_PASSWORD)
    (tmp_path / "tls").mkdir(exist_ok=True)
    (tmp_path / "tls" / "ca.pem").write_bytes(samba.ca_file.read_bytes())
    (tmp_path / "service.secret").write_text(SERVICE_PASSWORD + "\n")
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n'
        '[directories."cloudtech.local"]\ntype = "active-directory"\n'
        f'servers = ["{samba.dcs[0].ldaps_url}"]\nnetbios_name = "{NETBIOS}"\nca_file = "tls/ca.pem"\n'
        f'bind_dn = "{service}@cloudtech.local"\nbind_password_file = "service.secret"\n'
    )
    snapshot = build_snapshot(load_manifest(manifest))
    model = snapshot.directory("cloudtech.local")
    assert model is not None
    return ActiveDirectoryClient("cloudtech.local", model, tmp_path)  # type: ignore[arg-type]


def change_users(samba: SambaDomain, users: dict[str, str]) -> None:
    """What admins do: disable, reset a password, delete, require a new password, lock out."""
    samba.samba_tool("user", "disable", users["dis"])
    samba.set_password(users["pwd"], "Changed!Passw0rd2")
    samba.samba_tool("user", "delete", users["gone"])
    samba.modify(samba.user_dn(users["mcp"]), {"pwdLastSet": 0})
    for _ in range(3):
        assert not samba.dcs[0].bind(users["lck"], "Wrong!Passw0rd9")


def reasons(
    states: dict[str, UserState], users: dict[str, str], logins: dict[str, Verdict]
) -> dict[str, str | None]:
    """Why each user's sessions would end ("deleted" when the directory no longer has it)."""
    return {
        name: states[user.casefold()].why_revoked(logins[name].password_set)
        if user.casefold() in states
        else "deleted"
        for name, user in users.items()
    }


def test_one_search_reads_the_state_of_many_users_and_each_admin_change_shows(
    samba: SambaDomain, tmp_path: Path
) -> None:
    ad = client(samba, tmp_path)
    try:
        users = {name: new_user(samba, name) for name in ("ok", "dis", "pwd", "gone", "exp", "mcp", "lck")}
        logins = {name: ad.authenticate(user, PASSWORD) for name, user in users.items()}
        assert all(v.outcome is Outcome.ACCEPTED and v.password_set for v in logins.values())
        before = ad.read_states([*users.values(), "nobody-at-all"])
        assert set(before) == {user.casefold() for user in users.values()}
        assert all(
            state.why_revoked(logins[name].password_set) is None
            for name, state in ((n, before[u.casefold()]) for n, u in users.items())
        )

        change_users(samba, users)
        samba.samba_tool("user", "setexpiry", users["exp"], "--days=0")
        time.sleep(1.1)  # accountExpires of "--days=0" is now; let it pass

        assert reasons(ad.read_states(list(users.values())), users, logins) == {
            "ok": None,
            "dis": "disabled_in_directory",
            "pwd": "password_changed",
            "gone": "deleted",
            "exp": "account_expired",
            "mcp": "password_expired",
            "lck": "locked_out",
        }
    finally:
        ad.close()


def test_rechecks_follow_the_change_numbers_and_read_again_only_what_changed(
    samba: SambaDomain, tmp_path: Path
) -> None:
    """follow_states: one full read, then only the users whose entries changed are read again;
    the same answers as reading everything (each kind of change, a rename, a deletion), and an
    expiry that passes without any change to the entry still counts."""
    ad = client(samba, tmp_path)
    try:
        names = ("ok", "dis", "pwd", "gone", "mcp", "lck", "ren", "soon")
        users = {name: new_user(samba, name) for name in names}
        logins = {name: ad.authenticate(user, PASSWORD) for name, user in users.items()}
        samba.modify(samba.user_dn(users["soon"]), {"accountExpires": filetime(4)})
        expiry_set = time.monotonic()
        follower = ad.follower
        first = ad.follow_states(list(users.values()))
        assert set(first) == {user.casefold() for user in users.values()}
        assert follower.full_reads == 1 and follower.entries_read >= len(users)

        read = follower.entries_read
        assert ad.follow_states(list(users.values())) == first
        assert follower.full_reads == 1
        assert follower.entries_read - read <= len(users), "no user read again in full"

        change_users(samba, users)
        samba.samba_tool("user", "rename", users["ren"], f"--samaccountname={users['ren']}x")
        time.sleep(max(0.0, 4.5 - (time.monotonic() - expiry_set)))

        why = reasons(ad.follow_states(list(users.values())), users, logins)
        assert follower.full_reads == 1, "only the changed users were read again"
        assert why == {
            "ok": None,
            "dis": "disabled_in_directory",
            "pwd": "password_changed",
            "gone": "deleted",
            "mcp": "password_expired",
            "lck": "locked_out",
            "ren": "deleted",  # no user has that name any more
            "soon": "account_expired",  # its entry did not change: the time passed
        }
        assert why == reasons(ad.read_states(list(users.values())), users, logins), "as a full read says"
    finally:
        ad.close()


def test_the_registry_ends_sessions_the_directory_or_the_manifest_no_longer_allows(
    samba: SambaDomain, auth_services: AuthServices
) -> None:
    service = new_user(samba, "svc", SERVICE_PASSWORD)
    users = [new_user(samba, "rv") for _ in range(3)]
    directory = (
        '[directories."cloudtech.local"]\ntype = "active-directory"\n'
        f'servers = ["{samba.dcs[0].ldaps_url}"]\nnetbios_name = "{NETBIOS}"\nca_file = "tls/ca.pem"\n'
        f'bind_dn = "{service}@cloudtech.local"\nbind_password_file = "service.secret"\nrecheck_interval = 0\n'
    )

    def accounts(disabled: str = "") -> str:
        return '[domains."example.test".accounts]\n' + "".join(
            f'a{n} = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }}'
            + (", enabled = false" if disabled == f"a{n}" else "")
            + " }\n"
            for n, user in enumerate(users)
        )

    login = auth_services.start(
        directory + accounts(),
        files={"tls/ca.pem": samba.ca_file.read_bytes(), "service.secret": SERVICE_PASSWORD},
    )
    revocations = Revocations(login.service, login.holder)
    ended: dict[str, str] = {}

    async def scenario() -> None:
        sessions = []
        for n in range(3):
            result = await login.service.authenticate(
                f"a{n}@example.test", PASSWORD, protocol="imap", client="t"
            )
            assert result.account is not None
            session = revocations.register(
                result.account,
                "imap",
                "t",
                lambda reason, n=n: ended.setdefault(f"a{n}", reason),
                result.password_set,
            )
            sessions.append(session)
        await revocations.check_due()
        assert ended == {} and revocations.queries == 1  # one search for the three of them
        samba.samba_tool("user", "disable", users[0])
        await revocations.check_due()
        assert ended == {"a0": "disabled_in_directory"}
        samba.set_password(users[1], "Changed!Passw0rd2")
        assert [await revocations.check_now(s) for s in sessions[1:]] == ["password_changed", None]
        login.reload(directory + accounts(disabled="a2"))
        revocations.reloaded(login.holder.current)
        assert ended == {
            "a0": "disabled_in_directory",
            "a1": "password_changed",
            "a2": "disabled_in_manifest",
        }
        assert revocations.count() == 0

    asyncio.run(scenario())
