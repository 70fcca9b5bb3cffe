"""Models side by side on their native records and on the same records re-priced for a fleet of hosts.

    python bench/host_models.py --data data/dataset-100k --model models/selector --model OTHER_DIR …

For each model: the test and holdout splits as collected, and the same splits re-priced on drawn hosts
(``training.hosts.fleet_splits``, with the seeds the shipped model's report uses). Each model gets each
record's host profile when it takes one; a model without host inputs decides as it was trained, on the
collecting host's speeds. Prints a table and writes ``bench/results/host_models.json``.

The comparison in ``docs/decisions/0008-host-profiles-and-fleet-training.md``: the shipped model, the
same data trained with ``--no-host-draws --candidates clf-mlp-cost --folds 0``, and the model shipped
before host profiles (``git show`` its files into a directory).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import machine, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    args = ap.parse_args()
    from dwcp_selector.costmodel import CostModel
    from dwcp_selector.modeling.artifact import load_artifact
    from dwcp_selector.training.data import load_dataset
    from dwcp_selector.training.hosts import fleet_splits
    from dwcp_selector.training.policy_eval import evaluate_artifact

    splits, fingerprint, _ = load_dataset(args.data)
    cm = CostModel()
    sets = {name: splits[name] for name in ("test", "holdout") if name in splits}
    sets.update(fleet_splits(splits, cm, 0))  # the seeds the shipped model's report uses (its seed 0)
    rows: list[dict[str, Any]] = []
    for model_dir in args.model:
        artifact = load_artifact(model_dir)
        host = any(t.spec.with_host for t in artifact.tiers.values())
        for name, split in sets.items():
            r = evaluate_artifact(artifact, split, cm)
            rows.append(
                {
                    "model": model_dir.name,
                    "candidate": artifact.extra.get("candidate"),
                    "cost_model": artifact.cost_params.version,
                    "host_inputs": host,
                    "split": name,
                    "rows": r["rows"],
                    "near_optimal_rate": r["near_optimal_rate"],
                    "decisive_accuracy": r["decisive_accuracy"],
                    "regret_mean": r["regret_mean"],
                    "regret_p95": r["regret_p95"],
                    "by_link": {k: v["near_optimal_rate"] for k, v in r["by_link"].items()},
                }
            )
    path = write(
        "host_models",
        {"machine": machine(), "dataset_fingerprint": fingerprint, "rows": rows},
    )
    print(f"{'model':16} {'split':14} {'near-opt':>9} {'decisive':>9} {'regret mean':>12} {'p95':>7}")
    for r in rows:
        print(
            f"{r['model']:16} {r['split']:14} {100 * r['near_optimal_rate']:8.2f}% "
            f"{100 * r['decisive_accuracy']:8.2f}% {100 * r['regret_mean']:11.2f}% "
            f"{100 * r['regret_p95']:6.2f}%"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
