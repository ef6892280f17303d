"""Inbound mail hygiene through rspamd: the scanner client (rspamd.py) and what its verdict means
for the message — the Authentication-Results field, the header edits (verdict.py).

The SMTP intake (smtp/hygiene.py) asks the scanner after DATA and before the 250, so that a
refusal is a real SMTP reply rather than a bounce. rspamd does the checking (SPF, DKIM, DMARC,
ARC, DNSBLs, its rules); nothing here judges a message itself.
"""

from __future__ import annotations

from appliance.filter.rspamd import Envelope, ScanError, Scanner
from appliance.filter.verdict import Verdict, authentication_results, edit_header

__all__ = ["Envelope", "ScanError", "Scanner", "Verdict", "authentication_results", "edit_header"]
