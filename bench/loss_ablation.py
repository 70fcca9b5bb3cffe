"""The cost-sensitive classifier's loss terms, compared: what each one buys on the model tier.

Trains the light classifier of a model directory again with its own hyper-parameters, on its own dataset's
training split (the same inputs, type dropout and seed as ``dwcp-selector train``), once per loss:

* ``ce``: cross-entropy on the oracle's label;
* ``regret + 0.1 CE``: the expected regret plus a little cross-entropy (the cost-sensitive loss before the
  near-optimal set term);
* ``regret + near set``: expected regret plus the negative log-likelihood of the near-optimal set;
* ``regret + near set + 0.1 CE``: the shipped loss; and the same with 0.3 CE.

Every transfer is decided by the network (no fast path, no decision time: the loss is what is compared,
the policy is not). Prints a table and writes ``bench/results/loss_ablation.json``.

    python bench/loss_ablation.py --model models/selector --data data/dataset-100k
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from _common import machine, write
from dwcp_selector.training.data import Split, load_dataset
from dwcp_selector.training.mlp import MlpConfig, fit_mlp
from dwcp_selector.training.pipeline import _classifier_data, _regret_matrix, seen_types

#: (name, loss, near-optimal set weight, cross-entropy weight)
VARIANTS = [
    ("ce", "ce", 0.0, 1.0),
    ("regret + 0.1 CE", "cost", 0.0, 0.1),
    ("regret + near set", "cost", 1.0, 0.0),
    ("regret + near set + 0.1 CE (shipped)", "cost", 1.0, 0.1),
    ("regret + near set + 0.3 CE", "cost", 1.0, 0.3),
]


def scores(onnx: bytes, x: np.ndarray, split: Split) -> dict[str, float]:
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": x.astype(np.float32)})[0]
    choice = np.where(split.offered(), out, -1.0).argmax(axis=1)
    costs = split.costs()
    rows = np.arange(split.n)
    oracle = costs[rows, split.labels()]
    chosen = costs[rows, choice]
    ordered = np.sort(costs, axis=1)
    decisive = ordered[:, 1] >= ordered[:, 0] * 1.05
    correct = choice == split.labels()
    return {
        "near_optimal_rate": float((chosen <= oracle * 1.01).mean()),
        "decisive_accuracy": float(correct[decisive].mean()),
        "accuracy": float(correct.mean()),
        "regret_mean": float(np.mean(chosen / oracle - 1.0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="its hyper-parameters are reused")
    ap.add_argument("--data", type=Path, required=True)
    args = ap.parse_args()
    manifest = json.loads((args.model / "manifest.json").read_text())
    hyper = dict(manifest["extra"]["hyperparameters"])
    splits, _, _ = load_dataset(args.data)
    train, val, test = splits["train"], splits["val"], splits["test"]
    types = seen_types(train)
    seed = int(hyper.get("seed", 0))
    xt, yt, mt, _ = _classifier_data(train, "light", types, hide=seed)
    xv, yv, mv, _ = _classifier_data(val, "light", types)
    xe, _, _, _ = _classifier_data(test, "light", types)
    regrets = (_regret_matrix(train), _regret_matrix(val))
    results: dict[str, Any] = {}
    for name, loss, near, ce in VARIANTS:
        cfg = MlpConfig(**(hyper | {"loss": loss, "near_weight": near, "ce_weight": ce}))
        kw = {"regret_train": regrets[0], "regret_val": regrets[1]} if loss == "cost" else {}
        net = fit_mlp(xt, yt, mt, xv, yv, mv, cfg, **kw)  # type: ignore[arg-type]
        results[name] = {
            "val": scores(net.onnx, xv, val),
            "test": scores(net.onnx, xe, test),
            "best_epoch": net.best_epoch,
        }
        print(f"{name}: test near-optimal {results[name]['test']['near_optimal_rate']:.2%}", flush=True)
    doc = {"machine": machine(), "model": str(args.model), "hyperparameters": hyper, "variants": results}
    table = Table(
        title="light classifier, model tier (every transfer, no decision time)", title_justify="left"
    )
    for col in ("loss", "val near-opt", "test near-opt", "test decisive", "test accuracy", "test regret"):
        table.add_column(col, justify="left" if col == "loss" else "right")
    for name, r in results.items():
        t = r["test"]
        table.add_row(
            name,
            f"{r['val']['near_optimal_rate']:.2%}",
            f"{t['near_optimal_rate']:.2%}",
            f"{t['decisive_accuracy']:.2%}",
            f"{t['accuracy']:.2%}",
            f"{t['regret_mean']:.2%}",
        )
    Console(width=120).print(table)
    print(f"wrote {write('loss_ablation', doc)}")


if __name__ == "__main__":
    main()
