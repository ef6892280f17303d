"""How long `appliance validate` takes, and how much memory, for manifests of 1k, 10k, 100k accounts.

Each size runs in a fresh process (so peak RSS is that size's own), three times; the median is
printed. The reference, in the same invocation on the same file, is the floor any loader pays:
the standard library's TOML parser alone. Targets from the issue: 100k accounts validated in under
2 s and under 300 MB.

    .venv/bin/python bench/manifest_scale.py [--sizes 1000,10000,100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# A real argon2id hash (of "bench"), so hash checking costs what it costs in production.
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$Vn5yN6bEr5r1ZVvbwGp2Ew8V2q0gq6WmSm0BvJ0xk2Y"


def write_manifest(path: Path, accounts: int) -> None:
    """A realistic mix: 10 domains, 70% AD-linked accounts, 30% local hashes, 1 alias per 10."""
    domains = 10
    lines = [
        "[server]",
        'hostname = "mail.example.test"',
        "",
        '[directories."cloudtech.local"]',
        'type = "active-directory"',
        'servers = ["ldaps://dc1.cloudtech.local", "ldaps://dc2.cloudtech.local"]',
        'netbios_name = "CLOUDTECH"',
        "",
    ]
    per_domain = accounts // domains
    for d in range(domains):
        domain = f"d{d}.example.test"
        lines.append(f'[domains."{domain}".accounts]')
        for i in range(per_domain):
            if i % 10 < 7:
                lines.append(
                    f'u{i} = {{ active_directory = {{ domain = "cloudtech.local", user = "user{d}x{i}" }} }}'
                )
            else:
                lines.append(f'u{i} = {{ password_hash = "{HASH}", quota = "2 GB" }}')
        lines.append(f'[domains."{domain}".aliases]')
        for i in range(0, per_domain, 10):
            lines.append(f'team{i} = ["u{i}", "u{i + 1}@{domain}"]')
        lines.append("")
    path.write_text("\n".join(lines))


_CHILD = r"""
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "appliance":
    from appliance.manifest import load_manifest
    loaded = load_manifest(path)
    count = sum(len(d.accounts) for d in loaded.manifest.domains.values())
else:
    import tomllib
    with open(path, "rb") as f:
        data = tomllib.load(f)
    count = sum(len(d.get("accounts", {})) for d in data["domains"].values())
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "accounts": count}))
"""


def measure(mode: str, path: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'accounts':>9} {'file MB':>8} | {'appliance s':>11} {'peak MB':>8} | "
        f"{'tomllib s':>9} {'peak MB':>8} | ratio"
    )
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            path = Path(work) / f"appliance-{size}.toml"
            write_manifest(path, size)
            ours = [measure("appliance", path) for _ in range(args.runs)]
            reference = [measure("tomllib", path) for _ in range(args.runs)]
            assert all(r["accounts"] == size for r in ours), ours
            our_s = statistics.median(r["seconds"] for r in ours)
            our_mb = max(r["peak_mb"] for r in ours)
            ref_s = statistics.median(r["seconds"] for r in reference)
            ref_mb = max(r["peak_mb"] for r in reference)
            print(
                f"{size:>9} {path.stat().st_size / 1e6:>8.1f} | {our_s:>11.3f} {our_mb:>8.0f} | "
                f"{ref_s:>9.3f} {ref_mb:>8.0f} | {our_s / ref_s:.2f}x tomllib"
            )
    print("target: 100000 accounts in < 2 s and < 300 MB (median of runs; peak RSS of the worst run)")


if __name__ == "__main__":
    main()
