"""Logins: the auth service and the directories it asks (AD, LDAP, PAM) or local hashes.

`from appliance.auth import AuthService, AuthResult, Outcome`. The names are loaded on first use:
the manifest's models import `appliance.auth.passwords`, and importing the service (which
imports the manifest) from here at once would make that a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.auth.service import AuthResult, AuthService, Outcome

__all__ = ["AuthResult", "AuthService", "Outcome"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from appliance.auth import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
