"""What a failed LDAP bind means, in words for the log.

Active Directory (and Samba) answer a failed simple bind with result 49 and a message such as
`80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1`; the
`data` code says why. AD answers 52e both for a wrong password and for an unknown user, and counts
every failed bind toward its lockout threshold.
"""

from __future__ import annotations

import re

from appliance.auth.verdict import Reason, Verdict, rejected, unavailable

# [MS-ADTS] / Win32 error codes carried in the bind result's diagnostic message.
AD_CODES = {
    "525": "user_not_found",
    "52e": "bad_credentials",
    "530": "logon_hours_denied",
    "531": "workstation_denied",
    "532": "password_expired",
    "533": "account_disabled",
    "568": "too_many_groups",
    "701": "account_expired",
    "773": "must_change_password",
    "775": "locked_out",
}
# Codes AD answers only when the password was right (a wrong one gets 52e whatever the account's
# state; checked on Samba 4.17: 532, 773 and 701 with a wrong password all give 52e): the client
# may be told these (RFC 5530 EXPIRED). 533 (disabled) and 775 (locked out) are not told: the
# issue's rule keeps them indistinguishable from a wrong password, and 775 comes either way.
RIGHT_PASSWORD_REASONS = {
    "532": Reason.PASSWORD_EXPIRED,
    "773": Reason.MUST_CHANGE_PASSWORD,
    "701": Reason.ACCOUNT_EXPIRED,
}
_DATA_CODE = re.compile(r"\bdata ([0-9a-fA-F]{1,8})\b")

# Bind results that mean "these credentials are not accepted" (everything else: the directory
# could not decide, e.g. 8 strongerAuthRequired when TLS is missing, 51 busy, 52 unavailable).
REJECTING_RESULTS = {
    32: "unknown_user",  # noSuchObject: a bind DN from a template that names nobody
    34: "invalid_user_name",  # invalidDNSyntax
    48: "inappropriate_authentication",
    49: "bad_credentials",
    50: "access_denied",
    53: "unwilling_to_perform",
}


def bind_failure(result: dict[str, object], server: str) -> Verdict:
    """A failed bind result as a verdict, with AD's data code when the message carries one."""
    raw = result.get("result")
    code = raw if isinstance(raw, int) else 80
    message = str(result.get("message") or "")
    data = _DATA_CODE.search(message)
    if code == 49 and data:
        ad_code = data.group(1).lower()
        return rejected(
            AD_CODES.get(ad_code, "bad_credentials"),
            server,
            f"ad_code={ad_code}",
            RIGHT_PASSWORD_REASONS.get(ad_code),
        )
    if code in REJECTING_RESULTS:
        return rejected(REJECTING_RESULTS[code], server, f"ldap_result={code}")
    return unavailable("directory_error", server, f"ldap_result={code}")
