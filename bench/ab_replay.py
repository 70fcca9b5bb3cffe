"""A/A and A/B replays on the repository's evaluation records (issue 14, items 2 and 4).

1. **A/A**: ``--aa-experiments`` (default 2,000) experiments replayed on the 4,000 staging records of
   ``evaldata/amd-epyc-2026-12-02`` (the collection ``dwcp-selector evaluate`` is run on), both arms the
   rule heuristic, per unit kind (sessions, transfers), with log-normal transfer noise: the share the
   gate approves is the false-approval rate of the planned looks (alpha 0.01, four O'Brien-Fleming looks).
2. **A/B**: the shipped model (``models/selector``) against the heuristic on the same records, transfers
   as units, per link class: the gain with its CI and p from one replayed experiment's analysis (Welch on
   log speed relative to the raw-transfer estimate, the aggregate throughput with a bootstrap CI), the
   gain over every record (both arms are known in a replay), the approval rate over ``--ab-experiments``
   replays, and the minimum units per arm for a 5 % effect at the observed spread.

    python bench/ab_replay.py [--aa-experiments 2000] [--ab-experiments 200]

Prints tables and writes ``bench/results/ab_replay.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "evaldata" / "amd-epyc-2026-12-02"
MODEL = ROOT / "models" / "selector"
LINKS = ("dc", "metro", "wan", "edge")


def _pct(x: Any) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x * 100:+.2f} %"


def main(argv: list[str] | None = None) -> int:
    from dwcp_selector.experiment.analysis import Design, analyze, sample_size
    from dwcp_selector.experiment.replay import ReplayData, look_ends, replay, replay_observations
    from dwcp_selector.training.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--aa-experiments", type=int, default=2000)
    ap.add_argument("--ab-experiments", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.2, help="log-normal sd per transfer in the A/A runs")
    args = ap.parse_args(argv)

    splits, fingerprint, _ = load_dataset(EVAL)
    split = splits["test"]
    design = Design("bench")
    out: dict[str, Any] = {
        "machine": machine(),
        "data": {
            "path": str(EVAL.relative_to(ROOT)),
            "split": "test",
            "rows": split.n,
            "fingerprint": fingerprint,
        },
        "model": str(MODEL.relative_to(ROOT)),
        "design": design.to_dict(),
        "aa": {},
        "ab": {},
    }

    print(f"A/A: {args.aa_experiments:,} replays per unit kind, noise {args.noise}")
    print(
        f"{'unit':<10}{'units':>7}{'approve':>9}{'95 % CI':>18}"
        f"{'rollback':>10}{'hold':>7}{'blocked':>9}{'s':>7}"
    )
    for unit in ("session", "transfer"):
        data = ReplayData.from_split(split, unit=unit)
        r = replay(data, design, experiments=args.aa_experiments, aa=True, noise=args.noise, seed=11)
        doc = r.to_dict()
        doc["units"] = len(data.unit_ids)
        out["aa"][unit] = doc
        lo, hi = doc["false_approval_rate_ci95"]
        print(
            f"{unit:<10}{doc['units']:>7,}{doc['false_approval_rate']:>9.2%}{f'{lo:.2%} – {hi:.2%}':>18}"
            f"{doc['rollback_rate']:>10.2%}{doc['hold_rate']:>7.2%}{doc['blocked_rate']:>9.2%}{doc['seconds']:>7.1f}"
        )

    t0 = time.perf_counter()
    full = ReplayData.from_split(split, unit="transfer", model=MODEL)
    out["ab"]["model_choices_s"] = time.perf_counter() - t0
    print("\nA/B: the shipped model (treatment) against the rule heuristic (control), transfers as units")
    head = (
        f"{'link':<7}{'rows':>6}{'true geo':>10}{'true agg':>10}{'est gain':>10}{'95 % CI':>22}{'p':>9}"
        f"{'agg est':>10}{'agg 95 % CI':>22}{'verdict':>10}{'approve %':>10}{'n/arm 5 %':>11}"
        f"{'replays: agg median [2.5, 97.5 %]':>36}"
    )
    print(head)
    for link in ("all", *LINKS):
        data = full if link == "all" else full.subset(full.link == link)
        true = data.true_gain()
        one = analyze(
            replay_observations(data, 0, salt="bench-ab"),
            Design("bench-ab", planned_units_per_arm=max(2, data.n // 2)),
            look_ends=look_ends(data.n, design.looks),
            bootstrap_resamples=2000,
        )
        sp, th = one.speed, one.throughput
        r = replay(data, design, experiments=args.ab_experiments, salt="bench-ab")
        sd = one.power.get("sd_log")
        need = sample_size(float(sd), design) if sd is not None and np.isfinite(sd) else {}
        row = {
            "rows": data.n,
            "true_gain_geometric": true["geometric"],
            "true_gain_aggregate": true["aggregate"],
            "estimate": {
                "gain": sp.get("gain"),
                "ci95": sp.get("ci95"),
                "p_one_sided": sp.get("p_one_sided"),
                "aggregate_gain": th.get("gain"),
                "aggregate_ci95": th.get("ci95"),
                "verdict": one.verdict,
                "reasons": one.reasons,
                "yuen_gain": one.robust.get("gain"),
            },
            "replays": {k: v for k, v in r.to_dict().items() if k not in ("design",)},
            "sample_size_5pct": need,
        }
        out["ab"][link] = row
        ci, aci = sp.get("ci95") or [None, None], th.get("ci95") or [None, None]
        q = row["replays"].get("final_aggregate_range95") or [None, None, None]
        agg_range = f"{_pct(q[1])} [{_pct(q[0])}, {_pct(q[2])}]"
        print(
            f"{link:<7}{data.n:>6,}{_pct(true['geometric']):>10}{_pct(true['aggregate']):>10}{_pct(sp.get('gain')):>10}"
            f"{f'[{_pct(ci[0])}, {_pct(ci[1])}]':>22}{sp.get('p_one_sided', float('nan')):>9.2g}"
            f"{_pct(th.get('gain')):>10}{f'[{_pct(aci[0])}, {_pct(aci[1])}]':>22}{one.verdict:>10}"
            f"{r.rate('approve'):>10.1%}{str(need.get('units_per_arm_sequential', '–')):>11}"
            f"{agg_range:>36}"
        )
    path = write("ab_replay", out)
    print(f"\n{out['machine']['cpu']}, {out['machine']['cores']} cores; wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
