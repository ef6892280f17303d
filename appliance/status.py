"""The status file, `<data_dir>/state/status.json`: what the running server serves.

`serve` rewrites it whole (a temporary file renamed over the old one, so a reader never sees half
of it) when it starts, at each reload and every two seconds for the live counters.
`appliance status` prints it, and `appliance queue flush` finds the server's pid in it.

Next to it, `serving.toml` is a copy of the manifest revision the server serves, byte for byte:
`appliance plan NEW` compares a new manifest with it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def status_path(data_dir: Path) -> Path:
    return data_dir / "state" / "status.json"


def write_status(data_dir: Path, status: Mapping[str, Any]) -> None:
    target = status_path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".status.json.{os.getpid()}"
    temporary.write_text(json.dumps(status, indent=2) + "\n")
    os.replace(temporary, target)


def serving_copy_path(data_dir: Path) -> Path:
    return data_dir / "state" / "serving.toml"


def write_serving_copy(data_dir: Path, raw: bytes) -> None:
    """Keep `raw` (the manifest now serving) as serving.toml, readable by its owner only: it
    holds password hashes like the manifest itself."""
    target = serving_copy_path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".serving.toml.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(raw)
    os.replace(temporary, target)


def read_status(data_dir: Path) -> Any:
    """The status as written; OSError when there is none, ValueError when it is not JSON."""
    return json.loads(status_path(data_dir).read_text())


def serving_pid(status: Mapping[str, Any]) -> int | None:
    """The pid of the server that wrote `status`, if it says it serves and that process runs."""
    if status.get("state") != "serving":
        return None
    try:
        pid = int(status["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError):
        return None
    return pid


def process_figures() -> dict[str, float]:
    """Open file descriptors, asyncio tasks and memory: what a leak would show in."""
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = 0
    rss_mb = peak = 0.0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_mb = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"fds": fds, "tasks": tasks, "rss_mb": round(rss_mb, 1), "peak_rss_mb": round(peak, 1)}
