"""How fast `appliance import hmailserver` copies mail: messages/s and MB/s next to `cp -r`.

An hMailServer data directory of ACCOUNTS accounts × MESSAGES messages (CRLF .eml files of
1-16 KiB, in hMailServer's `<domain>/<local>/<2 chars>/{GUID}.eml` layout) and its tables as
the export script's JSON are made once; then, in the same invocation and on the same files:
- the reference: `cp -r` of the data directory (no fsync), and `cp -r` followed by `sync`;
- the import (`--json`, a fresh output directory): every message converted to LF line ends,
  named, dated, given its UID, made durable.
The target from the issue is at least 50 % of the copy's rate. Nothing is asserted.

    .venv/bin/python bench/import.py [--accounts 100] [--messages 1000] [--runs 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_installation(base: Path, accounts: int, messages: int) -> tuple[Path, Path, int]:
    """The data directory, the JSON export, and the bytes of all messages."""
    data = base / "hmail-data"
    generator = random.Random(27)
    filler = b"".join(b"%05d the quick brown fox jumps over the lazy dog again\r\n" % n for n in range(400))
    rows: dict[str, list[dict[str, object]]] = {
        "hm_domains": [{"domainid": 1, "domainname": "example.test", "domainactive": 1}],
        "hm_accounts": [],
        "hm_imapfolders": [],
        "hm_messages": [],
    }
    total = 0
    message_id = 0
    start = datetime.datetime(2024, 1, 1)
    for account in range(1, accounts + 1):
        local = f"user{account:03d}"
        rows["hm_accounts"].append(
            {"accountid": account, "accountdomainid": 1, "accountaddress": f"{local}@example.test"}
        )
        rows["hm_imapfolders"].append(
            {"folderid": account, "folderaccountid": account, "folderparentid": -1, "foldername": "INBOX"}
        )
        for uid in range(1, messages + 1):
            message_id += 1
            name = "{" + str(uuid.UUID(int=generator.getrandbits(128))).upper() + "}.eml"
            directory = data / "example.test" / local / name[1:3]
            directory.mkdir(parents=True, exist_ok=True)
            body = filler[: generator.randint(1024, 16384)]
            text = (
                b"From: a@remote.test\r\nTo: %s@example.test\r\nSubject: %d\r\n\r\n" % (local.encode(), uid)
                + body
            )
            (directory / name).write_bytes(text)
            total += len(text)
            rows["hm_messages"].append(
                {
                    "messageid": message_id,
                    "messageaccountid": account,
                    "messagefolderid": account,
                    "messagefilename": name,
                    "messageflags": 1,
                    "messagecreatetime": (start + datetime.timedelta(minutes=message_id)).isoformat(),
                    "messageuid": uid,
                }
            )
    export = base / "export.json"
    export.write_text(json.dumps({"format": "hmailserver-tables", "version": 1, "tables": rows}))
    return data, export, total


def timed(command: list[str]) -> float:
    os.sync()  # every run starts with nothing dirty to write
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    count = args.accounts * args.messages
    with tempfile.TemporaryDirectory(prefix="bench-import-") as scratch:
        base = Path(scratch)
        print(f"making {args.accounts} accounts x {args.messages} messages ...", flush=True)
        data, export, total = make_installation(base, args.accounts, args.messages)
        results: dict[str, list[float]] = {"cp -r": [], "cp -r; sync": [], "appliance import": []}
        for run in range(args.runs):
            for name, command in (
                ("cp -r", ["cp", "-r", str(data), str(base / f"cp{run}")]),
                ("cp -r; sync", ["sh", "-c", f'cp -r "{data}" "{base / f"cps{run}"}" && sync']),
                (
                    "appliance import",
                    [
                        sys.executable,
                        "-m",
                        "appliance",
                        "import",
                        "hmailserver",
                        "--json",
                        str(export),
                        "--data-dir",
                        str(data),
                        "--out",
                        str(base / f"out{run}"),
                        "--format",
                        "json",
                    ],
                ),
            ):
                results[name].append(timed(command))
            for leftover in (f"cp{run}", f"cps{run}", f"out{run}"):
                shutil.rmtree(base / leftover, ignore_errors=True)
        print(f"{count} messages, {total / 1e6:.1f} MB; median of {args.runs} run(s)")
        reference = statistics.median(results["cp -r"])
        print(f"{'':18} {'seconds':>8} {'messages/s':>11} {'MB/s':>7} {'vs cp -r':>9}")
        for name, times in results.items():
            seconds = statistics.median(times)
            print(
                f"{name:18} {seconds:8.2f} {count / seconds:11.0f} {total / 1e6 / seconds:7.1f} "
                f"{reference / seconds:8.0%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
