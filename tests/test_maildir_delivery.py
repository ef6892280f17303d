"""Writing a message into a Maildir on the real filesystem: the nameless-file way (O_TMPFILE,
linked into new/) and the rename way it falls back to give the same result."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import stat
from pathlib import Path

import pytest

from appliance.store import durable
from appliance.store.mailstore import MailStore

DATA = b"Return-Path: <a@b.example>\nSubject: hi\n\nbody\n"
LINES = DATA.count(b"\n")


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path, concurrent.futures.ThreadPoolExecutor(max_workers=1))


@pytest.fixture(params=["nameless", "rename"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "rename":
        monkeypatch.setattr(durable, "_nameless_files", False)
    else:
        assert durable._nameless_files, "O_TMPFILE should work on this machine's filesystem"
    return str(request.param)


def test_a_delivery_lands_whole_in_new_with_no_trace_in_tmp(
    store: MailStore, tmp_path: Path, way: str
) -> None:
    roots = [tmp_path / "mail" / "example.test" / name for name in ("john", "mary")]
    placed = store.deliver_now(DATA, roots)  # creates the Maildirs on the way
    assert [path.parent for path in placed] == [root / "new" for root in roots]
    for path in placed:
        assert path.read_bytes() == DATA
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.name.endswith(f",S={len(DATA)},W={len(DATA) + LINES}")
    assert placed[0].stat().st_ino == placed[1].stat().st_ino  # the second mailbox: a hard link
    for root in roots:
        assert os.listdir(root / "tmp") == []


def test_a_filesystem_without_nameless_files_falls_back_to_rename_for_good(
    store: MailStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(scratch: Path) -> int:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(durable, "_open_nameless", unsupported)
    monkeypatch.setattr(durable, "_nameless_files", True)
    root = tmp_path / "mail" / "example.test" / "john"
    [path] = store.deliver_now(DATA, [root])
    assert path.read_bytes() == DATA
    assert durable._nameless_files is False
    assert os.listdir(root / "tmp") == []


def test_a_failure_after_the_write_leaves_nothing_behind(store: MailStore, tmp_path: Path, way: str) -> None:
    root = tmp_path / "mail" / "example.test" / "john"
    for sub in ("tmp", "cur"):
        (root / sub).mkdir(parents=True)
    (root / "new").write_text("a file where new/ should be")
    with pytest.raises(OSError) as raised:
        store.deliver_now(DATA, [root])
    assert raised.value.errno == errno.ENOTDIR
    assert os.listdir(root / "tmp") == []


@pytest.mark.parametrize("reader", ["reads it", "expunges it"])
def test_a_reader_of_the_first_mailbox_moving_the_file_does_not_fail_the_others(
    store: MailStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """The first mailbox's copy is the one the others are linked to; an IMAP client of that
    mailbox may move it (new/ to cur/) or expunge it in between: the others still get it."""
    roots = [tmp_path / "mail" / "example.test" / name for name in ("john", "mary", "ann")]
    sync = store.writer._syncs.sync
    moved: list[Path] = []

    def sync_then_read(directory: Path) -> None:
        sync(directory)
        if directory == roots[0] / "new" and not moved:
            [name] = os.listdir(directory)
            if reader == "reads it":
                (roots[0] / "cur").mkdir(exist_ok=True)
                os.rename(directory / name, roots[0] / "cur" / f"{name}:2,S")
            else:
                os.unlink(directory / name)
            moved.append(directory / name)

    monkeypatch.setattr(store.writer._syncs, "sync", sync_then_read)
    placed = store.deliver_now(DATA, roots)
    assert moved and [path.parent for path in placed] == [root / "new" for root in roots]
    for path in placed[1:]:
        assert path.read_bytes() == DATA
    for root in roots:
        assert os.listdir(root / "tmp") == []
