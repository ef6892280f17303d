"""`appliance queue`: list, flush and delete what waits in the queue, from its files.

The listing reads the spool directly, so it works whether the server runs or not. `flush` leaves a
request file the running queue picks up within a second, and sends it SIGUSR1 to act at once.
`delete` removes the files; the server forgets the message when it next comes due.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from appliance.manifest import ManifestError, load_manifest
from appliance.queue.spool import Spool
from appliance.status import read_status, serving_pid


def queue_command(args: argparse.Namespace) -> int:
    try:
        loaded = load_manifest(args.manifest)
    except ManifestError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        return 1
    data_dir = (loaded.base_dir / loaded.manifest.server.data_dir).resolve()
    spool = Spool(data_dir / "queue")
    if args.action == "flush":
        return _flush(spool, data_dir)
    if args.action == "delete":
        return _delete(spool, args.ids)
    return _list(spool, args.format)


def _list(spool: Spool, output: str) -> int:
    rows = []
    for envelope, state in spool.load():
        pending = list(envelope.recipients)
        attempts, next_try, last_error = 0, envelope.arrived, ""
        if state is not None:
            pending = [r for r, s in state.recipients.items() if s.result == "pending"]
            attempts, next_try, last_error = state.attempts, state.next_try, state.last_error
        rows.append(
            {
                "id": envelope.id,
                "sender": envelope.sender,
                "recipients": pending,
                "size": envelope.size,
                "arrived": envelope.arrived,
                "attempts": attempts,
                "next_try": next_try,
                "last_error": last_error,
                "received_from": envelope.received_from,
            }
        )
    if output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("The queue is empty.")
        return 0
    for row in rows:
        arrived = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(row["arrived"])))  # type: ignore[arg-type]
        due = float(row["next_try"]) - time.time()  # type: ignore[arg-type]
        when = "now" if due <= 0 else f"in {due:.0f}s"
        print(f"{row['id']}  {row['size']:>9} bytes  arrived {arrived}  from <{row['sender']}>")
        print(f"    to: {', '.join(row['recipients'])}")  # type: ignore[arg-type]
        print(f"    attempts: {row['attempts']}, next try {when}")
        if row["last_error"]:
            print(f"    last error: {row['last_error']}")
    print(f"{len(rows)} message{'s' if len(rows) != 1 else ''} waiting.")
    return 0


def _flush(spool: Spool, data_dir: Path) -> int:
    if not spool.directory.is_dir():
        print("The queue is empty.")
        return 0
    spool.request_flush()
    try:
        pid = serving_pid(read_status(data_dir))
    except (OSError, ValueError):
        pid = None
    if pid is None:
        print("Flush requested; no running server found, so it applies when `appliance serve` starts.")
        return 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as error:
        print(f"Flush requested; could not signal pid {pid} ({error.strerror}): it applies within a second.")
        return 0
    print(f"Flush requested: the server (pid {pid}) retries every waiting message now.")
    return 0


def _delete(spool: Spool, ids: list[str]) -> int:
    if not ids:
        print("name the queue ids to delete (see `appliance queue`)", file=sys.stderr)
        return 2
    missing = 0
    for queue_id in ids:
        if "/" in queue_id or queue_id.startswith(".") or not spool.remove(queue_id):
            print(f"{queue_id}: not in the queue", file=sys.stderr)
            missing += 1
        else:
            print(f"{queue_id}: deleted")
    return 1 if missing else 0
