"""Logins of accounts linked to a generic LDAP directory, against a real OpenLDAP slapd."""

from __future__ import annotations

import itertools

import pytest

from appliance.auth import Outcome
from tests.fixtures.auth_service import AuthServices, Logins
from tests.fixtures.slapd import GROUPS_DN, PEOPLE_DN, SERVICE_DN, SERVICE_PASSWORD, Slapd

PASSWORD = "Ldap!Passw0rd1"
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def people(slapd: Slapd) -> dict[str, str]:
    """Users of this module: lisa and bob (lisa in group mailusers), two entries named "twin"."""
    tag = next(_numbers)
    names = {"lisa": f"lisa{tag}", "bob": f"bob{tag}", "twin": f"twin{tag}"}
    slapd.add_person(names["lisa"], PASSWORD)
    slapd.add_person(names["bob"], PASSWORD)
    slapd.add_person(f"{names['twin']}a", PASSWORD, cn=names["twin"])
    slapd.add_person(f"{names['twin']}b", PASSWORD, cn=names["twin"])
    names["group"] = slapd.add(
        f"cn=mailusers{tag},{GROUPS_DN}",
        ["groupOfNames"],
        {"cn": f"mailusers{tag}", "member": [f"uid={names['lisa']},{PEOPLE_DN}"]},
    )
    return names


def start(
    auth_services: AuthServices,
    slapd: Slapd,
    accounts: dict[str, str],
    *,
    url: str | None = None,
    options: str = "",
    files: dict[str, str | bytes] | None = None,
) -> Logins:
    body = f"""
[directories.people]
type = "ldap"
servers = ["{url or slapd.ldaps_url}"]
ca_file = "ldap-ca.pem"
{options}

[domains."example.test".accounts]
"""
    for local, user in accounts.items():
        escaped = user.replace("\\", "\\\\").replace('"', '\\"')
        body += f'{local} = {{ active_directory = {{ domain = "people", user = "{escaped}" }} }}\n'
    return auth_services.start(body, files={"ldap-ca.pem": slapd.ca_file.read_bytes(), **(files or {})})


SEARCH = f"""
base_dn = "{PEOPLE_DN}"
user_filter = "(&(objectClass=inetOrgPerson)(uid={{user}}))"
bind_dn = "{SERVICE_DN}"
bind_password_file = "secrets/ldap-service"
"""
SECRET = {"secrets/ldap-service": SERVICE_PASSWORD + "\n"}


def test_search_then_bind_accepts_the_users_password_and_rejects_a_wrong_one(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices
) -> None:
    login = start(auth_services, slapd, {"lisa": people["lisa"]}, options=SEARCH, files=SECRET)
    result = login("lisa@example.test", PASSWORD)
    assert result.outcome is Outcome.ACCEPTED, result
    assert login("lisa@example.test", "Wrong!Passw0rd1").cause == "bad_credentials"


def test_search_then_bind_over_starttls_with_the_service_password_from_the_environment(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LDAP_SERVICE_PASSWORD", SERVICE_PASSWORD)
    options = SEARCH.replace(
        'bind_password_file = "secrets/ldap-service"', 'bind_password_env = "TEST_LDAP_SERVICE_PASSWORD"'
    )
    login = start(auth_services, slapd, {"lisa": people["lisa"]}, url=slapd.ldap_url, options=options)
    assert login("lisa@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    monkeypatch.setenv("TEST_LDAP_SERVICE_PASSWORD", "not the service password")
    result = login("lisa@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.UNAVAILABLE, "service_bind_failed")


@pytest.mark.parametrize("user", ["*)(uid=*", "LISA)(uid=*", "*"])
def test_filter_metacharacters_in_the_user_name_match_nobody(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices, user: str
) -> None:
    # Unescaped, "*)(uid=*" would match every person (rejected as ambiguous) and
    # "lisa)(uid=*" exactly lisa (accepted with her password): escaped, they match nobody.
    user = user.replace("LISA", people["lisa"])
    login = start(auth_services, slapd, {"x": user}, options=SEARCH, files=SECRET)
    result = login("x@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, "unknown_user")


def test_a_filter_that_finds_two_entries_rejects(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices
) -> None:
    options = SEARCH.replace("(uid={user})", "(cn={user})")
    login = start(auth_services, slapd, {"twin": people["twin"]}, options=options, files=SECRET)
    result = login("twin@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, "ambiguous_user")


def test_bind_dn_template_binds_as_the_user(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices
) -> None:
    options = f'bind_dn_template = "uid={{user}},{PEOPLE_DN}"'
    login = start(auth_services, slapd, {"lisa": people["lisa"]}, options=options)
    assert login("lisa@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    assert login("lisa@example.test", "Wrong!Passw0rd1").cause == "bad_credentials"


def test_bind_dn_template_escapes_the_user_name_as_an_rdn_value(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices
) -> None:
    # Unescaped, "lisa,ou=people" in "uid={user},dc=example,dc=test" would be lisa's own DN.
    options = 'bind_dn_template = "uid={user},dc=example,dc=test"'
    login = start(auth_services, slapd, {"trick": f"{people['lisa']},ou=people"}, options=options)
    result = login("trick@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, "bad_credentials")


@pytest.mark.parametrize("group_option", ["dn", "name"])
def test_require_group_admits_members_of_the_group_only(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices, group_option: str
) -> None:
    group = people["group"] if group_option == "dn" else people["group"].split(",")[0].removeprefix("cn=")
    options = SEARCH + f'require_group = "{group}"\n'
    login = start(
        auth_services, slapd, {"lisa": people["lisa"], "bob": people["bob"]}, options=options, files=SECRET
    )
    assert login("lisa@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    result = login("bob@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, "not_in_group")


def test_unreadable_service_password_file_makes_logins_unavailable(
    slapd: Slapd, people: dict[str, str], auth_services: AuthServices
) -> None:
    login = start(auth_services, slapd, {"lisa": people["lisa"]}, options=SEARCH)  # no secrets/ file
    result = login("lisa@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.UNAVAILABLE, "service_password_unreadable")
