"""Fixtures live in tests/fixtures/, one module per real server the suite starts."""

pytest_plugins = [
    "tests.fixtures.appliance",
    "tests.fixtures.samba",
    "tests.fixtures.slapd",
    "tests.fixtures.pam",
    "tests.fixtures.auth_service",
    "tests.fixtures.rspamd",
    "tests.fixtures.mariadb",
    "tests.fixtures.postgresql",
    "tests.fixtures.dovecot",
    "tests.fixtures.kerberos",
]
