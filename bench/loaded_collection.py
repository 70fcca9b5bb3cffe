"""The same staging collection quiet and beside a competitor on its core (issue 11, item 4).

A fresh collection on another machine of the same CPU model may not be another host at all: the codecs
run at the same speeds. To make the host really differ, this bench collects the same records (same seed,
sample count and start, so the same payloads, link and node draws and request ids) twice, with the
collector pinned to one core (``taskset``):

1. **quiet**: nothing else on that core;
2. **loaded**: a competitor pinned to the *same* core, so the collector gets about half of it and its
   caches are evicted. ``--competitor cpu`` runs a pure-Python loop (what a busy control plane does),
   ``memory`` copies a 48 MiB buffer (what a neighbour streaming through memory does).

Each run measures its own host profile at its start (a private profile directory), under the same
conditions as its records. With ``--history K`` the two runs share one profile directory instead, as one
node does over time: K calibrations on the quiet core start its history, one more is taken once the
competitor runs, and each run's records carry the history's long-run profile (decision 0008).

The bench reports by how much the host moved: records per second (wall
time), the profile's rates, and, paired on the same records, the CPU-time rates the labels price
(median of loaded / quiet per strategy and direction over payloads ≥ 64 KiB), and how often the two
collections' labels agree. With ``--model`` it evaluates that model on both collections; with ``--out``
both are exported (all records as the test split) for ``dwcp-selector evaluate``.

    python bench/loaded_collection.py --samples 4000 --seed 5151 --start 2026-11-26 --competitor cpu \\
        --model models/selector --out data/loaded [--history 3]

Prints a table and writes ``bench/results/loaded_collection_<competitor>[_history].json``. Needs
``taskset`` and two cores (the second core stays free for the machine's other work).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import headline_figures, machine, write

COMPETITORS = {
    "cpu": r"""
import time
end = time.monotonic() + {seconds}
x = 0
while time.monotonic() < end:
    for i in range(10000):
        x = (x * 31 + i) % 1000003
""",
    "memory": r"""
import numpy as np, time
a = np.ones(48 << 20, dtype=np.uint8); b = np.empty_like(a)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    np.copyto(b, a); a, b = b, a
""",
}
STRATEGIES = ("lz4", "zstd", "hde")


def _collect(core: int, store: Path, args: argparse.Namespace, profiles: Path) -> dict[str, Any]:
    env = {**os.environ, "DWCP_PROFILE_DIR": str(profiles)}
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "dwcp_selector", "collect"]
    cmd += ["--store", f"sqlite:///{store}", "--samples", str(args.samples), "--seed", str(args.seed)]
    cmd += ["--start", args.start, "--workers", "1", "--json"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def _calibrate(core: int, profiles: Path) -> None:
    """One calibration on ``core`` that joins the history in ``profiles``."""
    env = {**os.environ, "DWCP_PROFILE_DIR": str(profiles)}
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "dwcp_selector", "calibrate", "--force"]
    cmd += ["--json"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)


def _read(store: Path) -> dict[str, np.ndarray]:
    from dwcp_selector.telemetry.store import open_store

    cols = ["request_id", "f_payload_bytes", "oracle_label"]
    cols += [f"o_{s}_{d}_s" for s in STRATEGIES for d in ("encode", "decode")]
    with open_store(f"sqlite:///{store}") as st:
        table = st.read_table(cols).sort_by("request_id")
    return {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in cols}


def _export(store: Path, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "dwcp_selector", "export", "--store", f"sqlite:///{store}", "--out", str(out)]
        + ["--all-test", "--no-csv", "--json"],
        check=True,
        capture_output=True,
    )


def _evaluate(model: Path, data: Path) -> dict[str, Any]:
    from dwcp_selector.modeling.artifact import load_artifact
    from dwcp_selector.training.data import load_dataset
    from dwcp_selector.training.policy_eval import evaluate_artifact

    return headline_figures(evaluate_artifact(load_artifact(model), load_dataset(data)[0]["test"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=5151)
    ap.add_argument("--start", default="2026-11-26")
    ap.add_argument("--competitor", choices=sorted(COMPETITORS), default="cpu")
    ap.add_argument("--model", type=Path, help="evaluate this model on both collections")
    ap.add_argument("--out", type=Path, help="export both collections under this directory")
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        help="share one profile history between the runs, started by this many quiet calibrations",
    )
    args = ap.parse_args()
    if not 0 <= args.history <= 12:
        raise SystemExit("error: --history must be in 0..12")
    core = sorted(os.sched_getaffinity(0))[0]
    with tempfile.TemporaryDirectory(prefix="dwcp-loaded-") as tmp:
        root = Path(tmp)
        runs: dict[str, dict[str, Any]] = {}
        shared = root / "profiles" if args.history else None
        if shared is not None:  # the node's history, started on the quiet core
            for _ in range(args.history):
                _calibrate(core, shared)
        quiet = _collect(core, root / "quiet.db", args, shared or root / "profiles-quiet")
        runs["quiet"] = quiet
        script = COMPETITORS[args.competitor].format(seconds=3600)
        competitor = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", script])
        try:
            time.sleep(1.0)
            if shared is not None:  # a snapshot under load joins the node's history
                _calibrate(core, shared)
            runs["loaded"] = _collect(core, root / "loaded.db", args, shared or root / "profiles-loaded")
        finally:
            competitor.terminate()
            competitor.wait(timeout=10)
        a, b = _read(root / "quiet.db"), _read(root / "loaded.db")
        if not np.array_equal(a["request_id"], b["request_id"]):
            raise SystemExit("the two collections hold different records: not the same seed and start?")
        size = a["f_payload_bytes"].astype(float)
        cpu_ratio: dict[str, float] = {}
        for s in STRATEGIES:
            for d in ("encode", "decode"):
                qa, lb = a[f"o_{s}_{d}_s"], b[f"o_{s}_{d}_s"]
                pairs = zip(qa, lb, strict=True)
                ok = np.asarray([x is not None and y is not None and x > 0 and y > 0 for x, y in pairs])
                ok &= size >= 64 << 10
                # rate loaded / quiet = quiet seconds / loaded seconds
                cpu_ratio[f"{s}_{d}"] = float(np.median(qa[ok].astype(float) / lb[ok].astype(float)))
        qp, lp = quiet["host_profile"], runs["loaded"]["host_profile"]
        profile_ratio = {
            f"{s}_{d}": lp[f"{d}_bps"][s] / qp[f"{d}_bps"][s]
            for s in STRATEGIES
            for d in ("encode", "decode")
        }
        profile_ratio["python"] = lp["python_ops_s"] / qp["python_ops_s"]
        doc: dict[str, Any] = {
            "machine": machine(),
            "command": "python bench/loaded_collection.py " + " ".join(sys.argv[1:]),
            "competitor": args.competitor,
            "history": args.history,
            "profile_snapshots": {k: v["host_profile"].get("snapshots", 1) for k, v in runs.items()},
            "records": int(a["request_id"].size),
            "records_per_s": {k: v["records_per_s"] for k, v in runs.items()},
            "wall_slowdown": quiet["records_per_s"] / runs["loaded"]["records_per_s"],
            "cpu_rate_loaded_over_quiet": cpu_ratio,
            "profile_rate_loaded_over_quiet": profile_ratio,
            "label_agreement": float(np.mean(a["oracle_label"] == b["oracle_label"])),
            "profiles": {k: v["host_profile"]["profile_id"] for k, v in runs.items()},
        }
        if args.out is not None or args.model is not None:
            out = args.out or root / "export"
            for name in runs:
                _export(root / f"{name}.db", out / name)
            if args.model is not None:
                doc["model"] = str(args.model)
                doc["evaluation"] = {name: _evaluate(args.model, out / name) for name in runs}
    print(f"{doc['records']:,} records, competitor {args.competitor!r} on core {core}")
    print(
        f"records/s quiet {doc['records_per_s']['quiet']:.1f}, loaded {doc['records_per_s']['loaded']:.1f} "
        f"(wall time ×{doc['wall_slowdown']:.2f}); labels agree on {doc['label_agreement']:.2%}"
    )
    print(f"{'rate, loaded / quiet':<22}" + "".join(f"{k:>13}" for k in cpu_ratio))
    print(f"{'records (CPU time)':<22}" + "".join(f"{v:>13.2f}" for v in cpu_ratio.values()))
    print(f"{'profile':<22}" + "".join(f"{profile_ratio[k]:>13.2f}" for k in cpu_ratio))
    for name, r in doc.get("evaluation", {}).items():
        print(
            f"{name}: near-optimal {r['near_optimal_rate']:.2%}, decisive {r['decisive_accuracy']:.2%}, "
            f"regret mean {r['regret_mean']:.2%} p95 {r['regret_p95']:.2%}"
        )
    name = f"loaded_collection_{args.competitor}" + ("_history" if args.history else "")
    print(f"wrote {write(name, doc)}")


if __name__ == "__main__":
    main()
