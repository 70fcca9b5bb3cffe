"""Peak memory of ``dwcp-selector measure`` on a 64 MiB file, with and without a baseline.

Runs the command in a child process (as a user would) on a generated file (half JSON logs, half random,
in 4 MiB runs) and reads the child's peak resident set size from the kernel.

    python bench/measure_memory.py [--mib 64]

Prints a table and writes ``bench/results/measure_memory.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import machine, write
from dwcp_selector.workload import logs_json


def peak_rss_of(cmd: list[str]) -> tuple[int, float]:
    """Run ``cmd`` in a fresh child; return its peak RSS in bytes and its wall seconds."""
    script = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *cmd], capture_output=True, text=True, check=True
    ).stdout
    kib, seconds = out.split()
    return int(kib) * 1024, float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cli = [sys.executable, "-m", "dwcp_selector", "measure"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        new, old = Path(d, "new.bin"), Path(d, "old.bin")
        with new.open("wb") as f:
            for _ in range(args.mib // 8):
                f.write(logs_json(4 << 20, rng))
                f.write(rng.integers(0, 256, size=4 << 20, dtype=np.uint8).tobytes())
        data = bytearray(new.read_bytes())
        data[1000:1064] = os.urandom(64)
        old.write_bytes(bytes(data))
        del data
        size = new.stat().st_size
        for label, extra in (("no baseline", []), ("with baseline (hde offered)", ["--baseline", str(old)])):
            rss, seconds = peak_rss_of([*cli, str(new), *extra, "--json"])
            rows.append(
                {
                    "case": label,
                    "payload_bytes": size,
                    "peak_rss_bytes": rss,
                    "ratio": rss / size,
                    "seconds": seconds,
                }
            )
            print(f"{label:30} peak RSS {rss / 2**20:6.0f} MiB = {rss / size:.2f}× payload, {seconds:.1f} s")
    path = write("measure_memory", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
