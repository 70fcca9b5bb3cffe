"""How repeatable is a host profile? Calibrate this host again and again, and read each snapshot two ways.

    python bench/profile_repeatability.py [--snapshots 12] [--budget 10] [--pause 5]

A model takes a node's host profile as input (decision 0008), so a profile that reads the same host 1.5×
faster from one calibration to the next feeds the model a different host. Every snapshot here is one
``calibrate_host`` call; from the same raw CPU seconds (``record=``) it computes each rate two ways:

* **whole round**: the best round's total, as calibrations did before 2026-12-07;
* **per piece**: each piece's best round, summed (each 1 MiB reference payload, each half-millisecond
  piece of the Python workload): what ``calibrate_host`` returns now;
* **long run**: per rate the fastest per-piece reading of the last ``--window`` snapshots, as
  ``HostProfile.combine`` reads a node's history (which keeps up to ``HISTORY_SNAPSHOTS``).

Both readings come from the same rounds of the same run, so their difference is the method's alone. It
reports, per rate and per reading, the snapshots' median, their max / min ratio and the standard deviation
of log2 (the unit of ``DEFAULT_PROFILE_SD``, the profile error training assumes), and writes
``bench/results/profile_repeatability.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

from _common import machine, write
from dwcp_selector.hostprofile import HostProfile, calibrate_host


def readings(raw: dict[str, list[list[float]]], profile: HostProfile) -> dict[str, dict[str, float]]:
    """Each rate of one snapshot read two ways: as the profile reads it (the sum of each piece's best
    round) and as the best whole round, over the same work (bytes or operations) the profile's rate is."""
    out: dict[str, dict[str, float]] = {"whole_round": {}, "per_piece": {}}
    for name, pieces in raw.items():
        if name == "python":
            per_piece = profile.python_ops_s
        else:
            strategy, direction = name.rsplit("_", 1)
            per_piece = (profile.encode_bps if direction == "encode" else profile.decode_bps)[strategy]
        amount = per_piece * sum(min(xs) for xs in pieces)
        out["per_piece"][name] = per_piece
        out["whole_round"][name] = amount / min(sum(xs) for xs in zip(*pieces, strict=True))
    return out


def summary(values: list[float]) -> dict[str, float]:
    logs = [math.log2(v) for v in values]
    return {
        "median": statistics.median(values),
        "max_over_min": max(values) / min(values),
        "sd_log2": statistics.stdev(logs) if len(logs) > 1 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshots", type=int, default=12)
    ap.add_argument("--budget", type=float, default=10.0, help="each calibration's budget, seconds")
    ap.add_argument("--pause", type=float, default=5.0, help="seconds between snapshots")
    ap.add_argument("--window", type=int, default=4, help="snapshots a long-run reading combines")
    args = ap.parse_args()
    if not 2 <= args.snapshots <= 200:
        raise SystemExit("error: --snapshots must be in 2..200")
    if not 1 <= args.window < args.snapshots:
        raise SystemExit("error: --window must be at least 1 and less than --snapshots")
    snaps: list[dict[str, dict[str, float]]] = []
    rounds: list[int] = []
    t0 = time.monotonic()
    for i in range(args.snapshots):
        if i:
            time.sleep(args.pause)
        raw: dict[str, list[list[float]]] = {}
        profile = calibrate_host(budget_s=args.budget, record=raw)
        snaps.append(readings(raw, profile))
        rounds.append(profile.rounds)
    names = list(snaps[0]["per_piece"])
    for i, snap in enumerate(snaps):
        if i + 1 >= args.window:
            last = snaps[i + 1 - args.window : i + 1]
            snap["long_run"] = {n: max(s["per_piece"][n] for s in last) for n in names}
    ways = ("whole_round", "per_piece", "long_run")
    table: dict[str, dict[str, dict[str, float]]] = {
        way: {n: summary([s[way][n] for s in snaps if way in s]) for n in names} for way in ways
    }
    print(f"{args.snapshots} calibrations, {statistics.median(rounds):.0f} rounds each (median)")
    print("per rate: the snapshots' median (M/s), max / min and sd of log2, for each reading")
    print(f"{'rate':12}" + "".join(f"{w.replace('_', ' '):>30}" for w in ways))
    for n in names:
        cells = []
        for way in ways:
            t = table[way][n]
            cells.append(f"{t['median'] / 1e6:10.1f} {t['max_over_min']:8.2f} {t['sd_log2']:8.3f}")
        print(f"{n:12}" + "".join(f"{c:>30}" for c in cells))
    doc: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/profile_repeatability.py "
        f"--snapshots {args.snapshots} --budget {args.budget:g} --pause {args.pause:g} "
        f"--window {args.window}",
        "elapsed_s": time.monotonic() - t0,
        "rounds": rounds,
        "units": "bytes per CPU second (codecs), operations per CPU second (python)",
        "summary": table,
        "snapshots": snaps,
    }
    print(f"\nwrote {write('profile_repeatability', doc)}")


if __name__ == "__main__":
    main()
