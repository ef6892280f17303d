"""Durable writes on the real filesystem (store/durable.py and the Maildir write sequence built on
it): a file's bytes are fsynced before its name appears, its directory after, and a write that is
interrupted leaves nothing visible. The system calls are watched, not replaced: `os.fsync`,
`os.link` and `os.rename` are wrapped to note what they were called on, then do their work."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.queue.spool import DeliveryState, Envelope, Spool
from appliance.store import delivery, durable
from appliance.store.delivery import MaildirWriter, write_message
from appliance.store.maildir import Maildir

DATA = b"Subject: hi\r\n\r\nbody\r\nline two\r\n"
STORED = DATA.replace(b"\r\n", b"\n")


class Interrupted(Exception):
    """Stands for a crash in the middle of a write (the process would stop here)."""


@pytest.fixture(params=["nameless", "rename"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of making a file whole before it has its name (O_TMPFILE, and tmp/ + rename)."""
    if request.param == "rename":
        monkeypatch.setattr(durable, "_nameless_files", False)
    else:
        assert durable._nameless_files, "O_TMPFILE should work on this machine's filesystem"
    return str(request.param)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync, link and rename from now on, in order: ("fsync-file", path), ("fsync-dir",
    path), ("name", new path). Each call still does its work."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_link, real_rename = os.fsync, os.link, os.rename

    def fsync(descriptor: int) -> None:
        kind = "fsync-dir" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync-file"
        real_fsync(descriptor)
        seen.append((kind, os.readlink(f"/proc/self/fd/{descriptor}")))

    def link(source: object, target: object, **kwargs: object) -> None:
        real_link(source, target, **kwargs)  # type: ignore[arg-type]
        seen.append(("name", str(target)))

    def rename(source: object, target: object) -> None:
        real_rename(source, target)  # type: ignore[arg-type]
        seen.append(("name", str(target)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "rename", rename)
    return seen


def visible(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# -- replace_file (queue spool, IMAP UID list, keywords, subscriptions) ----------------------------
def test_a_replaced_file_is_fsynced_before_its_name_and_its_directory_after(
    tmp_path: Path, calls: list[tuple[str, str]]
) -> None:
    target = tmp_path / "appliance-uidlist"
    durable.replace_file(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert visible(tmp_path) == ["appliance-uidlist"]
    kinds = [kind for kind, _ in calls]
    assert kinds == ["fsync-file", "name", "fsync-dir"]
    assert calls[1][1] == str(target)
    assert calls[2][1] == str(tmp_path)


def test_an_interrupted_replace_leaves_the_old_file_whole_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "subscriptions"
    target.write_bytes(b"INBOX\nSent\n")

    def crash(descriptor: int) -> None:
        raise Interrupted

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(Interrupted):
        durable.replace_file(target, b"INBOX\n")
    assert target.read_bytes() == b"INBOX\nSent\n"
    assert visible(tmp_path) == ["subscriptions"]


def test_a_queue_file_is_on_disk_with_its_directory_entry_before_write_returns(
    tmp_path: Path, calls: list[tuple[str, str]]
) -> None:
    spool = Spool(tmp_path / "queue")
    spool.ensure()
    envelope = Envelope("Q1", "a@b.example", ("c@d.example",), 1.0, "127.0.0.1")
    spool.write(envelope, b"Subject: x\r\n\r\nbody\r\n")
    assert spool.write_state("Q1", DeliveryState(attempts=1))
    assert [kind for kind, _ in calls] == ["fsync-file", "name", "fsync-dir"] * 2
    assert [path for kind, path in calls if kind != "fsync-file"] == [
        str(spool.directory / "Q1.msg"),
        str(spool.directory),
        str(spool.directory / "Q1.state"),
        str(spool.directory),
    ]
    assert visible(spool.tmp) == []
    assert spool.read_message("Q1") == b"Subject: x\r\n\r\nbody\r\n"


# -- create_file: a name that appears only for a whole file ---------------------------------------
def test_an_interrupted_new_file_leaves_nothing_under_any_name(tmp_path: Path, way: str) -> None:
    scratch, final = tmp_path / "tmp", tmp_path / "new"
    scratch.mkdir()
    final.mkdir()

    def chunks() -> Iterator[bytes]:
        yield b"first half\n"
        raise Interrupted

    class Chunks:
        def __iter__(self) -> Iterator[bytes]:
            return chunks()

    named: list[Path] = []

    def target() -> Path:
        named.append(final / "message")
        return named[-1]

    with pytest.raises(Interrupted):
        durable.create_file(scratch, "unique", Chunks(), target)
    assert named == []  # never asked for a name
    assert visible(scratch) == []
    assert visible(final) == []


def test_a_new_file_gets_its_name_only_once_written_and_fsynced(
    tmp_path: Path, way: str, calls: list[tuple[str, str]]
) -> None:
    scratch, final = tmp_path / "tmp", tmp_path / "new"
    scratch.mkdir()
    final.mkdir()
    target = final / "message"
    seen_while_writing: list[bool] = []

    class Chunks:
        def __iter__(self) -> Iterator[bytes]:
            for chunk in (b"one\n", b"two\n"):
                seen_while_writing.append(target.exists())
                yield chunk

    path = durable.create_file(scratch, "unique", Chunks(), lambda: target, mtime=1_000_000_000)
    assert path == target
    assert seen_while_writing == [False, False]
    assert target.read_bytes() == b"one\ntwo\n"
    assert target.stat().st_mtime == 1_000_000_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [kind for kind, _ in calls] == ["fsync-file", "name"]
    assert calls[1][1] == str(target)
    assert visible(scratch) == []


# -- the Maildir write sequence (delivery and IMAP APPEND) ----------------------------------------
def test_an_appended_message_is_stored_with_lf_its_flags_and_date_then_cur_is_fsynced(
    tmp_path: Path, way: str, calls: list[tuple[str, str]]
) -> None:
    root = tmp_path / "john"
    Maildir(root).ensure()
    calls.clear()
    name = write_message(root, "1700000000.M1P1Q1.host", DATA, sub="cur", letters="FS", mtime=1_600_000_000)
    assert name == f"1700000000.M1P1Q1.host,S={len(STORED)},W={len(DATA)}:2,FS"
    path = root / "cur" / name
    assert path.read_bytes() == STORED
    assert path.stat().st_mtime == 1_600_000_000
    assert [kind for kind, _ in calls] == ["fsync-file", "name", "fsync-dir"]
    assert calls[1][1] == str(path)
    assert calls[2][1] == str(root / "cur")
    assert visible(root / "tmp") == [] and visible(root / "new") == []


def test_a_streamed_message_with_a_crlf_split_between_chunks_is_stored_with_lf(
    tmp_path: Path, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "COPY_CHUNK", 5)  # "line\r" | "\nline" ...: CRs at chunk ends
    literal = tmp_path / "literal"
    literal.write_bytes(b"line\r\nline\r\nend\r")
    root = tmp_path / "john"
    name = write_message(root, "u1", literal, sub="cur", letters="")  # creates the Maildir
    assert (root / "cur" / name).read_bytes() == b"line\nline\nend\r"
    assert name == "u1,S=14,W=16:2,"


def test_a_message_whose_directory_sync_fails_is_removed_again(
    tmp_path: Path, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "john"
    Maildir(root).ensure()

    def failing_sync(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    with pytest.raises(OSError):
        write_message(root, "u1", DATA, sync=failing_sync)
    for sub in ("tmp", "new", "cur"):
        assert visible(root / sub) == []


def test_a_delivery_to_two_mailboxes_is_fsynced_in_both_before_it_returns(
    tmp_path: Path, way: str, calls: list[tuple[str, str]]
) -> None:
    roots = [tmp_path / "john", tmp_path / "mary"]
    for root in roots:
        Maildir(root).ensure()
    calls.clear()
    placed = MaildirWriter().deliver(STORED, roots)
    assert [kind for kind, _ in calls] == ["fsync-file", "name", "fsync-dir", "name", "fsync-dir"]
    assert [path for kind, path in calls if kind != "fsync-file"] == [
        str(placed[0]),
        str(roots[0] / "new"),
        str(placed[1]),
        str(roots[1] / "new"),
    ]


# -- group commit of directory syncs ----------------------------------------------------------------
def test_a_directory_sync_asked_for_during_another_waits_for_one_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    release = threading.Event()
    synced: list[str] = []
    real = durable.fsync_directory

    def slow_first(path: Path) -> None:
        synced.append("start")
        if len(synced) == 1:
            started.set()
            assert release.wait(10)
        real(path)
        synced.append("done")

    monkeypatch.setattr(durable, "fsync_directory", slow_first)
    syncs = durable.DirectorySyncs()
    returned: list[str] = []

    def caller(name: str) -> Callable[[], None]:
        def run() -> None:
            syncs.sync(tmp_path)
            returned.append(f"{name} after {synced.count('done')} done")

        return run

    first = threading.Thread(target=caller("first"))
    first.start()
    assert started.wait(10)
    late = [threading.Thread(target=caller(f"late{n}")) for n in range(3)]
    for thread in late:
        thread.start()
    waiting = bounded_wait(lambda: syncs._syncs[str(tmp_path)]._requested == 4)
    assert waiting, "the late callers never asked"
    assert returned == []  # nobody is told before the running fsync ends
    release.set()
    for thread in [first, *late]:
        thread.join(10)
    # One fsync for the first caller, one more shared by the three who came while it ran.
    assert synced == ["start", "done", "start", "done"]
    assert len(returned) == 4
    assert all(text.endswith("after 2 done") for text in returned if text.startswith("late"))


def bounded_wait(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()
