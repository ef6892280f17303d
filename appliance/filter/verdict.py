"""What rspamd's verdict means for a message: its action, the Authentication-Results field
(RFC 8601) built from the SPF, DKIM, DMARC and ARC symbols, and the header edits.

rspamd's symbols and their options (documented per module): R_SPF_*, R_DKIM_* (options
"domain:+" / "domain:-", the signing domain and whether it verified), DMARC_POLICY_* and ARC_*.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# rspamd's actions (its "actions" section), as /checkv2 names them.
REJECT = "reject"
SOFT_REJECT = "soft reject"
GREYLIST = "greylist"
ADD_HEADER = "add header"
REWRITE_SUBJECT = "rewrite subject"
NO_ACTION = "no action"
TEMPFAIL_ACTIONS = frozenset({SOFT_REJECT, GREYLIST})
SPAM_ACTIONS = frozenset({ADD_HEADER, REWRITE_SUBJECT})

# RFC 8601 §2.7.2 (SPF), §2.7.1 (DKIM), RFC 7489 §11.2 (DMARC), RFC 8617 §4.2 (ARC): the result
# each of rspamd's symbols stands for.
_SPF = {
    "R_SPF_ALLOW": "pass",
    "R_SPF_FAIL": "fail",
    "R_SPF_SOFTFAIL": "softfail",
    "R_SPF_NEUTRAL": "neutral",
    "R_SPF_DNSFAIL": "temperror",
    "R_SPF_PERMFAIL": "permerror",
    "R_SPF_NA": "none",
}
_DKIM = {
    "R_DKIM_ALLOW": "pass",
    "R_DKIM_REJECT": "fail",
    "R_DKIM_TEMPFAIL": "temperror",
    "R_DKIM_PERMFAIL": "permerror",
    "R_DKIM_NA": "none",
}
_DMARC = {
    "DMARC_POLICY_ALLOW": "pass",
    "DMARC_POLICY_ALLOW_WITH_FAILURES": "pass",
    "DMARC_POLICY_REJECT": "fail",
    "DMARC_POLICY_QUARANTINE": "fail",
    "DMARC_POLICY_SOFTFAIL": "fail",
    "DMARC_BAD_POLICY": "permerror",
    "DMARC_DNSFAIL": "temperror",
    "DMARC_NA": "none",
}
_ARC = {
    "ARC_ALLOW": "pass",
    "ARC_REJECT": "fail",
    "ARC_INVALID": "fail",
    "ARC_DNSFAIL": "temperror",
    "ARC_NA": "none",
}


@dataclass(frozen=True)
class Verdict:
    action: str
    score: float
    symbols: Mapping[str, tuple[str, ...]]  # symbol → its options
    message: str | None  # rspamd's SMTP message (a reject's reason), if it gave one
    subject: str | None  # the new Subject for "rewrite subject"

    @classmethod
    def from_json(cls, answer: Any) -> Verdict:
        """The verdict in rspamd's /checkv2 answer; ValueError when it is not one."""
        if not isinstance(answer, dict) or not isinstance(answer.get("action"), str):
            raise ValueError("rspamd's answer has no action")
        symbols: dict[str, tuple[str, ...]] = {}
        raw = answer.get("symbols")
        if isinstance(raw, dict):
            for name, symbol in raw.items():
                options = symbol.get("options") if isinstance(symbol, dict) else None
                symbols[str(name)] = tuple(str(o) for o in options) if isinstance(options, list) else ()
        messages = answer.get("messages")
        message = messages.get("smtp_message") if isinstance(messages, dict) else None
        subject = answer.get("subject")
        score = answer.get("score")
        return cls(
            action=answer["action"],
            score=float(score) if isinstance(score, (int, float)) else 0.0,
            symbols=symbols,
            message=message if isinstance(message, str) else None,
            subject=subject if isinstance(subject, str) else None,
        )


def _result(verdict: Verdict, table: Mapping[str, str]) -> tuple[str, tuple[str, ...]] | None:
    for symbol, result in table.items():
        if symbol in verdict.symbols:
            return result, verdict.symbols[symbol]
    return None


def _ptype_value(text: str) -> str:
    """An RFC 8601 pvalue: a domain or address as is, anything else quoted."""
    if re.fullmatch(r"[A-Za-z0-9._%+@!#$&'*/=?^`{|}~-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(
    hostname: str,
    verdict: Verdict,
    mail_from: str,
    header_from: str | None,
    iprev: tuple[str, str, str | None] | None = None,
) -> str:
    """The Authentication-Results field's value (RFC 8601 §2.2): our authserv-id, then iprev
    (ours: result, client address, confirmed name) and one resinfo per method rspamd reported;
    "none" when there is none."""
    results: list[str] = []
    if iprev is not None:
        result, ip, name = iprev
        # RFC 8601 §2.7.3: policy.iprev is the address; the name goes in a comment.
        results.append(f"iprev={result} policy.iprev={ip}" + (f" ({name})" if name else ""))
    spf = _result(verdict, _SPF)
    if spf is not None:
        # RFC 8601 §2.7.2: smtp.mailfrom is the envelope sender (postmaster@HELO when null).
        results.append(f"spf={spf[0]} smtp.mailfrom={_ptype_value(mail_from or '<>')}")
    dkim_results: list[str] = []
    for symbol, result in _DKIM.items():
        for option in verdict.symbols.get(symbol, ()):
            domain = option.split(":", 1)[0].strip()
            if domain:
                dkim_results.append(f"dkim={result} header.d={_ptype_value(domain)}")
        if symbol in verdict.symbols and not verdict.symbols[symbol]:
            dkim_results.append(f"dkim={result}")
    results += dict.fromkeys(dkim_results)
    dmarc = _result(verdict, _DMARC)
    if dmarc is not None:
        domain = header_from.rpartition("@")[2] if header_from else ""
        results.append(f"dmarc={dmarc[0]}" + (f" header.from={_ptype_value(domain)}" if domain else ""))
    arc = _result(verdict, _ARC)
    if arc is not None:
        results.append(f"arc={arc[0]}")
    if not results:
        return f"{hostname}; none"
    return f"{hostname};\r\n\t" + ";\r\n\t".join(results)


_COMMENT = re.compile(r"\([^()]*\)")


def _authserv_id(value: bytes) -> str:
    words = _COMMENT.sub(" ", value.decode("utf-8", "replace")).split(";", 1)[0].split()
    return words[0].lower() if words else ""


def edit_header(
    message: bytes,
    hostname: str,
    prepend: list[tuple[str, str]],
    subject: str | None = None,
    drop: frozenset[str] = frozenset(),
) -> bytes:
    """`message` (CRLF) with `prepend` fields added at the top, any Authentication-Results field
    that claims `hostname` as its authserv-id removed (RFC 8601 §5: a forgery otherwise), the
    fields named in `drop` (lower-case) removed, and the Subject replaced when `subject` is given."""
    end = message.find(b"\r\n\r\n")
    head, rest = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    ours = hostname.lower()
    kept: list[bytes] = []
    subject_done = False
    for item in fields:
        name, colon, value = item.partition(b":")
        key = name.strip().lower().decode("ascii", "replace") if colon else ""
        if key == "authentication-results" and _authserv_id(value) == ours:
            continue
        if key in drop:
            continue
        if key == "subject" and subject is not None:
            if subject_done:
                continue
            item, subject_done = b"Subject: " + _field_text(subject), True
        kept.append(item)
    if subject is not None and not subject_done:
        kept.append(b"Subject: " + _field_text(subject))
    added = [f"{name}: {value}".encode("utf-8", "replace") for name, value in prepend]
    new_head = b"".join(item + b"\r\n" for item in (*added, *kept))
    return new_head + (rest if end >= 0 else b"")


def _field_text(value: str) -> bytes:
    return "".join(c if c >= " " or c == "\t" else " " for c in value).encode("utf-8", "replace")
