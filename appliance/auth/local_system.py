"""This machine's own accounts (the WORKGROUP case), checked through PAM.

The daemon must run as root, or in group `shadow`, to check local passwords: otherwise pam_unix
cannot read /etc/shadow and answers PAM_AUTHINFO_UNAVAIL (9) for every user, which is logged as
UNAVAILABLE (cause pam_authinfo_unavailable), never as a wrong password. Give the service a file
in /etc/pam.d of its own (`pam_service`), e.g.

    auth     required pam_unix.so nodelay
    account  required pam_unix.so

`nodelay`: without it pam_unix (and Debian's `login` service with pam_faildelay) waits 2-3 s after
every failure, holding a worker thread of the auth service all that time.

python-pam objects are not thread-safe, so each check makes its own `pam.pam()`.
"""

from __future__ import annotations

import pam

from appliance.auth.verdict import Verdict, accepted, rejected, unavailable
from appliance.manifest.models import LocalSystem

# Linux-PAM return codes (security/_pam_types.h) that say something about the user.
_REJECTIONS = {
    6: "permission_denied",  # PAM_PERM_DENIED
    7: "bad_credentials",  # PAM_AUTH_ERR (also a locked account: usermod -L)
    8: "credentials_insufficient",  # PAM_CRED_INSUFFICIENT
    10: "unknown_user",  # PAM_USER_UNKNOWN
    11: "locked_out",  # PAM_MAXTRIES
    12: "must_change_password",  # PAM_NEW_AUTHTOK_REQD
    13: "account_expired",  # PAM_ACCT_EXPIRED
    16: "password_expired",  # PAM_CRED_EXPIRED
}
# Codes that say the system could not check (a broken stack, not root, out of memory...).
_UNAVAILABLE = {
    1: "pam_open_error",
    2: "pam_symbol_error",
    3: "pam_service_error",
    4: "pam_system_error",
    5: "pam_buffer_error",
    9: "pam_authinfo_unavailable",  # not root and not in group shadow
    26: "pam_abort",
}


class LocalSystemClient:
    def __init__(self, name: str, model: LocalSystem) -> None:
        self.model = model
        self._server = f"pam:{model.pam_service}"

    def authenticate(self, user: str, password: str) -> Verdict:
        handle = pam.pam()
        ok = handle.authenticate(user, password, service=self.model.pam_service, resetcreds=False)
        code = int(handle.code)
        if ok and code == 0:
            return accepted(self._server)
        if code in _UNAVAILABLE:
            return unavailable(_UNAVAILABLE[code], self._server, f"pam_code={code}")
        return rejected(_REJECTIONS.get(code, "pam_rejected"), self._server, f"pam_code={code}")

    def close(self) -> None:
        pass
