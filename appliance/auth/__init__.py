"""Logins: the auth service and the directories it asks (AD, LDAP, PAM) or local hashes.

`from appliance.auth import AuthService, AuthResult, Outcome`.
"""

from __future__ import annotations

from appliance.auth.service import AuthResult, AuthService, Outcome

__all__ = ["AuthResult", "AuthService", "Outcome"]
