"""How repeatable are the oracle's labels? Re-measure a sample of a staging store's sessions and compare.

    python bench/label_repeatability.py --store sqlite:///data/staging-100k.db --samples 100000 \\
        --seed 2026 --start 2026-11-15 --fraction 0.1

A staging collection is deterministic but for its timings: the same seed, sample count and start give the
same payloads, baselines, link and node draws and request ids; only the measured encode and decode times
(and with them some labels) differ. This script copies the store, deletes a random ``--fraction`` of its
sessions from the copy and lets ``collect`` resume, which measures exactly those sessions again on this
host. It checks that the re-measured records are the same transfers (request ids, sizes and features equal)
and reports, for the original label taken as a decision and judged by the re-measured costs:

* exact agreement of the two labels (also on decisive records, runner-up ≥ 5 % behind in the re-measure);
* the **near-optimal rate** (cost within 1 % of the re-measured oracle's) and the regret: the ceiling of
  any selector trained on such labels, since even the oracle of one measurement meets it only this often
  on the next;
* per class, precision and recall of the first label against the second: the per-class ceiling;

overall and per link class. Writes ``bench/results/label_repeatability.json``; ``bench/model_report.py``
puts it beside the model's figures in ``docs/model-results.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.telemetry.schema import STRATEGIES, TABLE
from dwcp_selector.telemetry.staging import collect
from dwcp_selector.telemetry.store import open_store

COLUMNS = [
    "request_id",
    "session_id",
    "f_link_type",
    "f_payload_bytes",
    "f_entropy",
    "oracle_label",
    "runner_up_gap",
] + [f"cost_{s}_s" for s in STRATEGIES]


def _read(url: str) -> dict[str, np.ndarray]:
    store = open_store(url)
    try:
        table = store.read_table(COLUMNS)
    finally:
        store.close()
    return {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in COLUMNS}


def _costs(cols: dict[str, np.ndarray]) -> np.ndarray:
    c = np.column_stack([np.array(cols[f"cost_{s}_s"], dtype=np.float64) for s in STRATEGIES])
    out: np.ndarray = np.where(np.isnan(c), np.inf, c)
    return out


def compare(first: dict[str, np.ndarray], again: dict[str, np.ndarray]) -> dict[str, Any]:
    """Labels of ``first`` judged by the costs of ``again`` (rows in the same order)."""
    index = {s: i for i, s in enumerate(STRATEGIES)}
    label1 = np.array([index[x] for x in first["oracle_label"]])
    label2 = np.array([index[x] for x in again["oracle_label"]])
    costs2 = _costs(again)
    rows = np.arange(len(label1))
    oracle2 = costs2[rows, label2]
    taken = costs2[rows, label1]
    gap2 = np.array([np.inf if g is None else g for g in again["runner_up_gap"]], dtype=np.float64)
    decisive = gap2 >= 0.05

    def figures(mask: np.ndarray) -> dict[str, Any]:
        regret = taken[mask] / oracle2[mask] - 1
        return {
            "rows": int(mask.sum()),
            "label_agreement": float(np.mean(label1[mask] == label2[mask])),
            "decisive_agreement": float(np.mean(label1[mask & decisive] == label2[mask & decisive]))
            if (mask & decisive).any()
            else None,
            "near_optimal_rate": float(np.mean(taken[mask] <= oracle2[mask] * 1.01)),
            "regret_mean": float(np.mean(regret)),
            "regret_p95": float(np.percentile(regret, 95)),
        }

    out = figures(np.ones(len(label1), dtype=bool))
    # per class, the second measurement's label as the truth: how often the first one names it (recall) and
    # how often a class the first one names is the truth (precision): the per-class ceiling of a classifier
    out["per_class"] = {
        s: {
            "support": int(np.sum(label2 == i)),
            "precision": float(np.mean(label2[label1 == i] == i)) if np.any(label1 == i) else None,
            "recall": float(np.mean(label1[label2 == i] == i)) if np.any(label2 == i) else None,
        }
        for i, s in enumerate(STRATEGIES)
    }
    links = np.asarray(first["f_link_type"], dtype=str)
    out["by_link"] = {str(lt): figures(links == lt) for lt in sorted(set(links.tolist()))}
    # by size: payloads of a chunk or more keep each chunk's least of 2 or 3 interleaved rounds
    # (measure.default_repeats), smaller ones the least of 5 or 25 runs
    size = np.asarray(first["f_payload_bytes"], dtype=np.float64)
    out["by_size"] = {
        label: figures((size >= lo) & (size < hi))
        for lo, hi, label in (
            (0, 64 << 10, "< 64 KiB"),
            (64 << 10, 1 << 20, "64 KiB–1 MiB"),
            (1 << 20, np.inf, "≥ 1 MiB"),
        )
        if ((size >= lo) & (size < hi)).any()
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="an SQLite staging store (sqlite:///PATH)")
    ap.add_argument("--samples", type=int, default=100_000, help="as the store was collected")
    ap.add_argument("--seed", type=int, default=2026, help="as the store was collected")
    ap.add_argument("--start", default="2026-11-15", help="as the store was collected (ISO date)")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of sessions measured again")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pick-seed", type=int, default=0, help="seed of the choice of sessions")
    ap.add_argument(
        "--out",
        default="label_repeatability",
        help="result name under bench/results/ (model_report.py reads the default one)",
    )
    args = ap.parse_args()
    if not args.store.startswith("sqlite:///"):
        raise SystemExit("--store must be an SQLite store (sqlite:///PATH): the copy is a file copy")
    if not 0 < args.fraction <= 1:
        raise SystemExit("--fraction must be in (0, 1]")
    source = Path(args.store.removeprefix("sqlite:///"))
    if not source.exists():
        raise SystemExit(f"no store at {source}")
    original = _read(args.store)
    sessions = sorted(set(original["session_id"].tolist()))
    rng = np.random.default_rng(args.pick_seed)
    picked = sorted(rng.choice(sessions, size=max(1, round(len(sessions) * args.fraction)), replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "again.db"
        with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)  # consistent even while another process writes the store
        with sqlite3.connect(copy) as db:
            db.executemany(f"DELETE FROM {TABLE} WHERE session_id = ?", [(s,) for s in picked])
        start = dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.UTC)
        t0 = time.perf_counter()
        report = collect(f"sqlite:///{copy}", args.samples, args.seed, workers=args.workers, start=start)
        seconds = time.perf_counter() - t0
        again = _read(f"sqlite:///{copy}")
    chosen = set(picked)
    mine = np.array([s in chosen for s in original["session_id"]])
    first = {k: v[mine] for k, v in original.items()}
    by_id = {rid: i for i, rid in enumerate(again["request_id"].tolist())}
    missing = [rid for rid in first["request_id"] if rid not in by_id]
    if missing or report.inserted != len(first["request_id"]):
        raise SystemExit(
            f"re-measured {report.inserted} records for {len(first['request_id'])} deleted ones "
            f"({len(missing)} request ids not found): --samples, --seed and --start must be the store's"
        )
    order = np.array([by_id[rid] for rid in first["request_id"]])
    second = {k: v[order] for k, v in again.items()}
    for col in ("f_payload_bytes", "f_entropy", "f_link_type"):
        if not np.array_equal(first[col], second[col]):
            raise SystemExit(f"re-measured records differ in {col}: not the same transfers")
    result = compare(first, second)
    doc = {
        "machine": machine(),
        "store_rows": len(original["request_id"]),
        "sessions": len(picked),
        "of_sessions": len(sessions),
        "seconds": round(seconds, 1),
        "command": f"python bench/label_repeatability.py --store {args.store} --samples {args.samples} "
        f"--seed {args.seed} --start {args.start} --fraction {args.fraction} --workers {args.workers}"
        + ("" if args.out == "label_repeatability" else f" --out {args.out}"),
        **result,
    }
    print(f"re-measured {result['rows']:,} records of {len(picked)} sessions in {seconds:.0f} s")
    print(f"{'link':8} {'rows':>7} {'agree':>7} {'decisive':>9} {'near-opt':>9} {'regret':>7} {'p95':>7}")
    for name, r in [("all", result), *result["by_link"].items(), *result["by_size"].items()]:
        dec = "–" if r["decisive_agreement"] is None else f"{r['decisive_agreement'] * 100:.2f}"
        print(
            f"{name:8} {r['rows']:7,} {r['label_agreement'] * 100:7.2f} {dec:>9} "
            f"{r['near_optimal_rate'] * 100:9.2f} {r['regret_mean'] * 100:7.2f} {r['regret_p95'] * 100:7.2f}"
        )
    print(
        "per class (second label as truth): "
        + ", ".join(
            f"{c} P {v['precision'] * 100:.1f} / R {v['recall'] * 100:.1f}"
            for c, v in result["per_class"].items()
            if v["precision"] is not None and v["recall"] is not None
        )
    )
    print(f"wrote {write(args.out, doc)}")


if __name__ == "__main__":
    main()
