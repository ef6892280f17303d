"""Fixtures live in tests/fixtures/, one module per real server the suite starts."""

pytest_plugins = [
    "tests.fixtures.appliance",
]
