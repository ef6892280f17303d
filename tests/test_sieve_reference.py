"""appliance's Sieve interpreter against the reference, Dovecot Pigeonhole's `sieve-test`.

Every script of tests/sieve/scripts/ runs on its message (a `# message:` line; plain.eml
otherwise) in both, with the same envelope (`# sender:`, `# recipient:`), and both must decide
the same: the folders and their flags, redirects, reject, whether a vacation reply goes out
(RFC 3834 checks), a runtime error, or a script that does not compile. Included scripts come
from tests/sieve/global/ (`include :global`) and tests/sieve/personal/.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.sieve import Envelope, Script, SieveError, compile_script, run
from appliance.sieve.grammar import EXTENSIONS
from appliance.sieve.vacation import refusal
from tests.support.pigeonhole import Pigeonhole, normalize

CORPUS = Path(__file__).parent / "sieve"
SCRIPTS = sorted((CORPUS / "scripts").glob("*.sieve"))
SENDER = "alice@remote.test"
RECIPIENT = "john@example.test"
# Debian 12's Pigeonhole (0.5.19) does not offer "ereject": it is compared nowhere here.
NOT_IN_REFERENCE = {"ereject", "encoded-character"}


def _parameters(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("# ") or ":" not in line:
            break
        key, _, value = line[2:].partition(":")
        out[key.strip()] = "" if value.strip() == "<>" else value.strip()
    return out


def _resolver(where: str, name: str, including: Script) -> Script | None:
    path = CORPUS / ("global" if where == ":global" else "personal") / f"{name}.sieve"
    return compile_script(path.read_text()) if path.is_file() else None


def _ours(text: str, message: bytes, sender: str, recipient: str) -> list[str]:
    try:
        script = compile_script(text)
    except SieveError:
        return ["compile error"]
    envelope = Envelope(sender, recipient, recipient)
    outcome = run([script], message, envelope, resolver=_resolver)
    sent = outcome.vacation is not None and refusal(outcome.vacation, message, envelope) is None
    return normalize(outcome, sent)


@pytest.fixture(scope="module")
def pigeonhole() -> Iterator[Pigeonhole]:
    # Not under pytest's tmp_path: its parents are private to root, and sieve-test runs as nobody.
    directory = Path(tempfile.mkdtemp(prefix="pigeonhole-"))
    reference = Pigeonhole(directory)
    for where in ("global", "personal"):
        for path in (CORPUS / where).glob("*.sieve"):
            reference.add_script(where, path.stem, path.read_text())
    yield reference
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_interpreter_decides_what_pigeonhole_decides(pigeonhole: Pigeonhole, script: Path) -> None:
    text = script.read_text()
    parameters = _parameters(text)
    message = (CORPUS / "messages" / parameters.get("message", "plain.eml")).read_bytes()
    sender = parameters.get("sender", SENDER)
    recipient = parameters.get("recipient", RECIPIENT)
    expected = pigeonhole.outcome(text, message, sender, recipient)
    assert _ours(text, message, sender, recipient) == expected


def test_corpus_covers_every_extension_in_forty_cases_or_more() -> None:
    assert len(SCRIPTS) >= 40
    required: set[str] = set()
    for path in [*SCRIPTS, *(CORPUS / "global").glob("*.sieve"), *(CORPUS / "personal").glob("*.sieve")]:
        try:
            required |= compile_script(path.read_text()).requires
        except SieveError:
            continue
    assert EXTENSIONS - NOT_IN_REFERENCE - {"comparator-i;octet", "comparator-i;ascii-casemap"} <= required


def test_corpus_decisions_are_not_all_alike() -> None:
    """The comparison means something only if the corpus makes the interpreters disagree-able."""
    seen = set()
    for script in SCRIPTS:
        text = script.read_text()
        parameters = _parameters(text)
        message = (CORPUS / "messages" / parameters.get("message", "plain.eml")).read_bytes()
        seen.add(
            tuple(
                _ours(text, message, parameters.get("sender", SENDER), parameters.get("recipient", RECIPIENT))
            )
        )
    assert len(seen) >= 25


def test_sieve_test_is_installed() -> None:
    assert shutil.which("sieve-test"), "dovecot-sieve (.ci/apt/sieve.txt) provides sieve-test"
