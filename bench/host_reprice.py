"""How far re-pricing a record for another host is from measuring it there (issue 11, item 2).

Training re-prices every record as if a host with other speeds had measured it: the encode and decode
CPU seconds are scaled by the ratio of the two hosts' profile rates (``training/hosts.py``). Scaling
cannot know what does not scale with those rates: caches (a payload that fits in cache on one host and
not on the other), and small payloads whose time is mostly fixed per-call overhead.

This bench measures that gap on one machine by making it a different host. It runs in two phases:

1. **Quiet.** This process is pinned to one core. It measures the host profile P0, then every strategy
   on every payload: M0.
2. **Loaded.** A competitor process is pinned to the same core. It copies a 48 MiB buffer in a loop, so
   it halves this process's share of the core and keeps evicting the caches. The process measures the
   profile P1 and the payloads again: M1.

M0 re-priced by P0/P1 is then compared with M1, the real measurement. Three things are reported for
encode and decode by size bucket: the median and p90 of |re-priced − measured| / measured, the same for
M0 taken unscaled, and the wall-clock slowdown the competitor caused (the CPU-time figures above are
what labels use). Each payload is also priced under 16 link draws, and the bench reports how often the
re-priced label equals the re-measured one and the regret of the re-priced choice.

Payloads are generated families (16 KiB–8 MiB, with baselines) and this machine's real files (the
system corpus, first versions and successors).

    python bench/host_reprice.py [--payloads 48] [--seed 0]

It prints a table and writes ``bench/results/host_reprice.json``. It needs two cores: the competitor
and this process share one, so the other core stays free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from _common import machine, write

COMPETITOR = r"""
import numpy as np, time
a = np.ones(48 << 20, dtype=np.uint8); b = np.empty_like(a)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    np.copyto(b, a); a, b = b, a
"""

BUCKETS = ((0, 64 << 10, "< 64 KiB"), (64 << 10, 1 << 20, "64 KiB–1 MiB"), (1 << 20, 1 << 62, "≥ 1 MiB"))


def payload_set(n: int, seed: int) -> list[tuple[str, str, bytes, bytes | None]]:
    """(name, type, payload, baseline): generated families and real files, sizes spread log-uniform."""
    from dwcp_selector.workload.payloads import (
        ContentPools,
        database_update,
        dirty_round,
        logs_json,
        text_words,
        vm_memory,
    )
    from dwcp_selector.workload.system_corpus import SOURCE_TYPES, SystemCorpus

    rng = np.random.default_rng(seed)
    pools = ContentPools(seed, pool_bytes=4 << 20)
    out: list[tuple[str, str, bytes, bytes | None]] = []
    sizes = np.exp(rng.uniform(np.log(16 << 10), np.log(8 << 20), n)).astype(int)
    corpus = SystemCorpus()
    for i, size in enumerate(sizes.tolist()):
        k = i % 6
        if k == 0:
            image = vm_memory(size, rng, pools)
            out.append((f"vm-round-{i}", "vm_memory_round", dirty_round(image, rng), image))
        elif k == 1:
            out.append((f"logs-{i}", "logs_json", logs_json(size, rng, pools), None))
        elif k == 2:
            table = pools.db[: min(size, len(pools.db))]
            out.append((f"db-{i}", "database", database_update(table, rng, pools), table))
        elif k == 3:
            out.append((f"text-{i}", "document", text_words(size, rng, pools), None))
        else:
            src = corpus.sources[(i // 6 + k) % len(corpus.sources)]
            versions = corpus.versions(src, rng, size)
            _, first, _ = next(versions)
            _, second, real = next(versions)
            base = first if real and second else None
            out.append((f"{src}-{i}", SOURCE_TYPES[src], second if base is not None else first, base))
    return out


def measure_all(
    payloads: list[tuple[str, str, bytes, bytes | None]],
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    """Every offered strategy on every payload (``measure_strategy``), and the wall time it all took
    per strategy (for the competitor's effect on wall clock)."""
    from dwcp_selector.measure import measure_strategy
    from dwcp_selector.strategies import Baseline, PayloadCodec

    codec = PayloadCodec()
    codec.warm_up()
    out: dict[str, dict[str, dict[str, float]]] = {}
    wall: dict[str, float] = {}
    for name, ptype, data, base in payloads:
        baseline = Baseline(f"b-{name}", base) if base is not None else None
        offered = codec.registry.offered(len(data), has_baseline=baseline is not None)
        out[name] = {}
        for s in offered:
            t0 = time.perf_counter()
            run = measure_strategy(codec, data, s, baseline=baseline, payload_type=ptype)
            wall[s] = wall.get(s, 0.0) + time.perf_counter() - t0
            if run.roundtrip:
                out[name][s] = {"bytes": run.compressed_bytes, "e": run.encode_s, "d": run.decode_s}
    return out, wall


def labels(
    sizes: dict[str, int],
    m: dict[str, dict[str, dict[str, float]]],
    draws: int,
    seed: int,
) -> dict[str, list[tuple[str, dict[str, float]]]]:
    from dwcp_selector.costmodel import CostModel, Oracle, StrategyMeasurement
    from dwcp_selector.workload.links import draw_link, draw_system
    from dwcp_selector.workload.staging import DEFAULT_LINK_MIX

    cm = CostModel()
    oracle = Oracle(cm)
    out: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for name, runs in m.items():
        rng = np.random.default_rng([seed, len(name)])
        meas = {s: StrategyMeasurement(int(r["bytes"]), r["e"], r["d"]) for s, r in runs.items()}
        out[name] = []
        for _ in range(draws):
            costs = cm.costs(sizes[name], meas, draw_link(rng, DEFAULT_LINK_MIX), draw_system(rng))
            out[name].append((oracle.decide(costs).label, costs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--payloads", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=16)
    args = ap.parse_args()
    from dwcp_selector.hostprofile import calibrate_host

    core = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {core})
    payloads = payload_set(args.payloads, args.seed)
    sizes = {name: len(data) for name, _, data, _ in payloads}
    print(
        f"{len(payloads)} payloads, {sum(sizes.values()) / 2**20:.1f} MiB, pinned to core {core}",
        file=sys.stderr,
    )
    p0 = calibrate_host(budget_s=8)
    m0, wall0 = measure_all(payloads)
    competitor = subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, "-c", COMPETITOR.format(seconds=1800)],
    )
    try:
        time.sleep(1.0)
        p1 = calibrate_host(budget_s=8)
        m1, wall1 = measure_all(payloads)
    finally:
        competitor.terminate()
        competitor.wait(timeout=10)
    f0, f1 = p0.features(), p1.features()

    def factor(s: str, d: str) -> float:
        key = f"host_{s}_{'encode' if d == 'e' else 'decode'}_bps"
        return f0[key] / f1[key] if key in f0 else 1.0

    rows: list[dict[str, Any]] = []
    for name, runs in m0.items():
        for s, r in runs.items():
            if s not in m1[name]:
                continue
            for d in ("e", "d"):
                real = m1[name][s][d]
                if real <= 0:
                    continue
                rows.append(
                    {
                        "payload": name,
                        "size": sizes[name],
                        "strategy": s,
                        "direction": "encode" if d == "e" else "decode",
                        "repriced_err": abs(r[d] * factor(s, d) - real) / real,
                        "unscaled_err": abs(r[d] - real) / real,
                    }
                )
    table: dict[str, Any] = {}
    for lo, hi, label in BUCKETS:
        for direction in ("encode", "decode"):
            sel = [
                x
                for x in rows
                if lo <= x["size"] < hi and x["direction"] == direction and x["strategy"] != "none"
            ]
            if not sel:
                continue
            rep = [x["repriced_err"] for x in sel]
            un = [x["unscaled_err"] for x in sel]
            table[f"{label} {direction}"] = {
                "n": len(sel),
                "repriced_median": statistics.median(rep),
                "repriced_p90": float(np.quantile(rep, 0.9)),
                "unscaled_median": statistics.median(un),
                "unscaled_p90": float(np.quantile(un, 0.9)),
            }
    # labels: re-priced M0 against re-measured M1 under the same link draws
    scaled = {
        n: {
            s: {"bytes": r["bytes"], "e": r["e"] * factor(s, "e"), "d": r["d"] * factor(s, "d")}
            for s, r in runs.items()
        }
        for n, runs in m0.items()
    }
    common = {n: {s: v for s, v in scaled[n].items() if s in m1[n]} for n in scaled}
    lab_rep = labels(sizes, common, args.draws, args.seed)
    lab_real = labels(sizes, {n: {s: m1[n][s] for s in common[n]} for n in common}, args.draws, args.seed)
    lab_un = labels(sizes, {n: {s: m0[n][s] for s in common[n]} for n in common}, args.draws, args.seed)
    agree = agree_un = total = 0
    regrets: list[float] = []
    for n in common:
        for (lr, _), (lm, costs), (lu, _) in zip(lab_rep[n], lab_real[n], lab_un[n], strict=True):
            total += 1
            agree += lr == lm
            agree_un += lu == lm
            regrets.append(costs[lr] / costs[lm] - 1.0)
    factors = {k: f0[k] / f1[k] for k in f0}
    doc = {
        "machine": machine(),
        "command": "python bench/host_reprice.py " + " ".join(sys.argv[1:]),
        "payloads": len(payloads),
        "profile_quiet": p0.to_dict(),
        "profile_loaded": p1.to_dict(),
        "slowdown_cpu_time": factors,
        "slowdown_wall": {s: wall1[s] / wall0[s] for s in wall0 if s in wall1},
        "errors": table,
        "labels": {
            "records": total,
            "repriced_agree": agree / total,
            "unscaled_agree": agree_un / total,
            "repriced_regret_mean": float(np.mean(regrets)),
            "repriced_regret_p95": float(np.quantile(regrets, 0.95)),
        },
        "rows": rows,
    }
    path = write("host_reprice", doc)
    print("\nprofile rates, loaded / quiet (the competitor on the same core):")
    for k, v in factors.items():
        print(f"  {k:24} {1 / v:5.2f}x")
    print(
        "wall-clock slowdown of measuring: "
        + ", ".join(f"{s} {v:.2f}x" for s, v in doc["slowdown_wall"].items())
    )
    print(f"\n{'bucket':28} {'n':>4} {'re-priced med/p90':>20} {'unscaled med/p90':>20}")
    for k, v in table.items():
        print(
            f"{k:28} {v['n']:4d} {100 * v['repriced_median']:8.1f}/{100 * v['repriced_p90']:5.1f} %"
            f" {100 * v['unscaled_median']:9.1f}/{100 * v['unscaled_p90']:5.1f} %"
        )
    lab = doc["labels"]
    print(
        f"\nlabels ({lab['records']} priced draws): re-priced = re-measured on "
        f"{100 * lab['repriced_agree']:.1f} %"
        f" (unscaled {100 * lab['unscaled_agree']:.1f} %); regret of the re-priced label mean "
        f"{100 * lab['repriced_regret_mean']:.2f} %, p95 {100 * lab['repriced_regret_p95']:.2f} %"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
