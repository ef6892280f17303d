"""Live reload at scale: from the manifest write until a newly added account is accepted at RCPT.

For manifests of 1k, 10k and 100k accounts, `appliance serve` runs on the manifest; the bench
then adds one account (an atomic rename, as Git or Ansible would) and polls RCPT TO for it. The
reference, measured in the same run on the same manifest, is a cold restart: starting a new
`appliance serve` until the same RCPT is accepted. Peak memory is the server process's own
high-water mark (VmHWM). Targets: <= 0.5 s at 10k, <= 2 s at 100k, <= 400 MB at 100k.

    .venv/bin/python bench/reload.py [--sizes 1000,10000,100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.manifest_scale import write_manifest
from tests.fixtures.appliance import free_port


def rcpt_accepted(port: int, address: str) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.ehlo("bench.example")
            client.mail("bench@remote.example")
            code, _ = client.rcpt(address)
            return code == 250
    except (OSError, smtplib.SMTPException):
        return False


def wait_for(port: int, address: str, limit: float = 120.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if rcpt_accepted(port, address):
            return time.monotonic() - start
        time.sleep(0.005)
    raise RuntimeError(f"{address} never accepted within {limit}s")


def manifest_text(base: Path, port: int, extra_accounts: int) -> str:
    text = base.read_text()
    text = text.replace(
        '[server]\nhostname = "mail.example.test"\n',
        f'[server]\nhostname = "mail.example.test"\ndata_dir = "var"\n\n[server.listeners]\nsmtp = "127.0.0.1:{port}"\n',
    )
    extra = "".join(f"new{i} = {{}}\n" for i in range(extra_accounts))
    return text.replace(
        '[domains."d0.example.test".accounts]\n', f'[domains."d0.example.test".accounts]\n{extra}'
    )


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(".appliance.toml.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start(manifest: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
        cwd=manifest.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def bench_size(size: int, runs: int, work: Path) -> tuple[list[float], list[float], float]:
    base = work / f"base-{size}.toml"
    write_manifest(base, size)
    directory = work / f"srv-{size}"
    directory.mkdir()
    manifest = directory / "appliance.toml"
    port = free_port()
    manifest.write_text(manifest_text(base, port, 0))
    restarts: list[float] = []
    for run in range(runs):
        started = time.monotonic()
        process = start(manifest)
        try:
            wait_for(port, "u0@d0.example.test")
            restarts.append(time.monotonic() - started)
        finally:
            stop(process)
        del run
    process = start(manifest)
    reloads: list[float] = []
    try:
        wait_for(port, "u0@d0.example.test")
        for run in range(runs):
            write_start = time.monotonic()
            write_atomically(manifest, manifest_text(base, port, run + 1))
            wait_for(port, f"new{run}@d0.example.test")
            reloads.append(time.monotonic() - write_start)
        peak = peak_rss_mb(process.pid)
    finally:
        stop(process)
    return reloads, restarts, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'accounts':>9} | {'reload s (median)':>17} {'runs':>22} | {'restart s':>9} | {'peak MB':>7} | ratio"
    )
    with tempfile.TemporaryDirectory() as work:
        for size in (int(s) for s in args.sizes.split(",")):
            reloads, restarts, peak = bench_size(size, args.runs, Path(work))
            reload_s, restart_s = statistics.median(reloads), statistics.median(restarts)
            runs = " ".join(f"{r:.3f}" for r in reloads)
            print(
                f"{size:>9} | {reload_s:>17.3f} {runs:>22} | {restart_s:>9.3f} | {peak:>7.0f} | "
                f"reload takes {reload_s / restart_s:.2f}x a restart"
            )
    print("targets: reload <= 0.5 s at 10k, <= 2 s at 100k; peak <= 400 MB at 100k")


if __name__ == "__main__":
    main()
