"""Every metric of DESIGN section 5, for a policy's decisions on recorded transfers, and its baselines.

A policy's *realized time* on a record is the cost of the strategy it chose plus the seconds it took to
decide. Against the oracle (cost of the label, no decision time) that gives the regret; against the
baselines the throughput gains:

* **heuristic** - the rule list of DESIGN section 6 on decision-time features, paying its feature time;
* **static** - the single strategy (or "hde when a baseline exists, else X") best on this data;
* **probe** - every offered strategy run on a 64 KiB sample, extrapolated, priced, cheapest taken; it pays
  the sample's encode and decode time;
* **oracle** - the label, free: the ceiling.

Gains are aggregate (Σ bytes / Σ time, so Σ time_baseline / Σ time − 1) and per transfer (mean of time
ratios − 1), as fractions (0.1 = +10 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..costmodel import CostModel, Oracle
from ..link import LINK_CLASSES
from ..modeling import baselines as H
from ..modeling.policy import STRATEGIES
from .data import Split

__all__ = ["BASELINES", "baseline_choices", "evaluate_choices"]

BASELINES = ("heuristic", "static", "probe", "oracle")
_NONE, _LZ4, _ZSTD, _HDE = range(4)


def _col(split: Split, name: str) -> np.ndarray:
    return split.cols[name].astype(np.float64)


def heuristic_choice(split: Split) -> np.ndarray:
    """DESIGN section 6, first match wins (the thresholds of ``modeling.baselines.heuristic_rule``)."""
    size = _col(split, "f_payload_bytes")
    entropy = _col(split, "f_entropy")
    rtt = _col(split, "f_rtt_s")
    avail = _col(split, "f_capacity_bps") * (1 - _col(split, "f_utilization"))
    has_base = split.cols["f_has_baseline"].astype(bool)
    similarity = np.nan_to_num(_col(split, "f_similarity_pages"), nan=0.0)
    out = np.full(split.n, _LZ4)
    rule5 = np.ones(split.n, dtype=bool)
    r1 = (size < H.HEURISTIC_MIN_BYTES) | (entropy > H.HEURISTIC_HIGH_ENTROPY)
    r2 = ~r1 & (rtt < H.HEURISTIC_LOW_RTT_S) & (avail > H.HEURISTIC_FAST_BANDWIDTH_BPS)
    r3 = ~r1 & ~r2 & has_base & (similarity > H.HEURISTIC_SIMILAR)
    r4 = ~r1 & ~r2 & ~r3 & (avail < H.HEURISTIC_LOW_BANDWIDTH_BPS)
    out[r1] = _NONE
    out[r2] = _LZ4
    out[r3] = _HDE
    out[r4] = np.where(has_base[r4], _HDE, _ZSTD)
    rule5 &= ~(r1 | r2 | r3 | r4)
    out[rule5] = _LZ4
    return out


def probe_choice(split: Split, cost_model: CostModel) -> tuple[np.ndarray, np.ndarray]:
    """The sampling probe's choice and the seconds it paid (encode + decode of every offered strategy)."""
    size = _col(split, "f_payload_bytes")
    sample = np.maximum(_col(split, "p_sample_bytes"), 1.0)
    scale = np.maximum(size, 1.0) / sample
    est = np.full((split.n, len(STRATEGIES)), np.inf)
    paid = np.zeros(split.n)
    for j, s in enumerate(STRATEGIES):
        b, e, d = _col(split, f"p_{s}_bytes"), _col(split, f"p_{s}_encode_s"), _col(split, f"p_{s}_decode_s")
        ok = ~(np.isnan(b) | np.isnan(e) | np.isnan(d))
        t = cost_model.transfer_time_array(
            size,
            np.nan_to_num(b) * scale,
            np.nan_to_num(e) * scale,
            np.nan_to_num(d) * scale,
            _col(split, "f_capacity_bps"),
            _col(split, "f_utilization"),
            _col(split, "f_rtt_s"),
            _col(split, "f_loss"),
            _col(split, "f_free_cores"),
            s,
        )
        est[:, j] = np.where(ok, t, np.inf)
        paid += np.where(ok, np.nan_to_num(e) + np.nan_to_num(d), 0.0)
    # a payload the probe could not price (no sample measured) falls back to none
    has_any = np.isfinite(est).any(axis=1)
    choice = np.full(split.n, _NONE)
    if has_any.any():
        choice[has_any] = Oracle(cost_model).label_array(est[has_any])
    return choice, paid


def static_choice(split: Split, costs: np.ndarray) -> tuple[str, np.ndarray]:
    """The best single static policy on this data (by total time)."""
    offered_hde = np.isfinite(costs[:, _HDE])
    candidates = {
        "none": np.full(split.n, _NONE),
        "lz4": np.full(split.n, _LZ4),
        "zstd": np.full(split.n, _ZSTD),
        "hde, else none": np.where(offered_hde, _HDE, _NONE),
        "hde, else lz4": np.where(offered_hde, _HDE, _LZ4),
        "hde, else zstd": np.where(offered_hde, _HDE, _ZSTD),
    }
    totals = {k: costs[np.arange(split.n), v].sum() for k, v in candidates.items()}
    best = min(totals, key=lambda k: totals[k])
    return best, candidates[best]


def baseline_choices(
    split: Split, cost_model: CostModel
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """(choice, decision seconds) of each baseline policy, and which static policy was best."""
    costs = split.costs()
    n = split.n
    heuristic_time = np.nan_to_num(_col(split, "f_basic_s"), nan=0.0) + 1e-6
    probe, probe_time = probe_choice(split, cost_model)
    name, static = static_choice(split, costs)
    out = {
        "heuristic": (heuristic_choice(split), heuristic_time),
        "static": (static, np.zeros(n)),
        "probe": (probe, probe_time),
        "oracle": (split.labels(), np.zeros(n)),
    }
    return out, name


def _realized(costs: np.ndarray, choice: np.ndarray, decision_s: np.ndarray) -> np.ndarray:
    chosen = costs[np.arange(len(choice)), choice]
    # a policy choosing a strategy that was not offered would not run: count it as the worst offered one
    worst = np.where(np.isfinite(costs), costs, -np.inf).max(axis=1)
    out: np.ndarray = np.where(np.isfinite(chosen), chosen, worst) + decision_s
    return out


def _f1(labels: np.ndarray, choice: np.ndarray) -> tuple[float, dict[str, dict[str, float]], np.ndarray]:
    k = len(STRATEGIES)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, choice), 1)
    per = {}
    f1s = []
    for i, s in enumerate(STRATEGIES):
        tp = confusion[i, i]
        predicted = confusion[:, i].sum()
        actual = confusion[i, :].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        per[s] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(actual)}
        if actual:
            f1s.append(f)
    return float(np.mean(f1s)) if f1s else 0.0, per, confusion


def _calibration(confidence: np.ndarray | None, choice: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    if confidence is None:
        return {"ece": None, "bins": []}
    conf = confidence[np.arange(len(choice)), choice]
    edges = np.linspace(0, 1, 11)
    bins = []
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if not sel.any():
            continue
        acc = float(correct[sel].mean())
        mean_conf = float(conf[sel].mean())
        bins.append(
            {"lo": float(lo), "hi": float(hi), "n": int(sel.sum()), "confidence": mean_conf, "accuracy": acc}
        )
        ece += sel.mean() * abs(acc - mean_conf)
    return {"ece": float(ece), "bins": bins}


def _group_metrics(
    mask: np.ndarray,
    realized: np.ndarray,
    oracle: np.ndarray,
    near: np.ndarray,
    correct: np.ndarray,
    base_realized: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    if not mask.any():
        return {"rows": 0}
    regret = realized[mask] / oracle[mask] - 1
    out: dict[str, Any] = {
        "rows": int(mask.sum()),
        "accuracy": float(correct[mask].mean()),
        "near_optimal_rate": float(near[mask].mean()),
        "regret_mean": float(regret.mean()),
        "regret_p95": float(np.percentile(regret, 95)),
    }
    for name, t in base_realized.items():
        if name != "oracle":
            out[f"gain_vs_{name}"] = float(t[mask].sum() / realized[mask].sum() - 1)
    out["oracle_gap"] = float(realized[mask].sum() / oracle[mask].sum() - 1)
    return out


def evaluate_choices(
    split: Split,
    choice: np.ndarray,
    decision_s: np.ndarray,
    *,
    cost_model: CostModel | None = None,
    confidence: np.ndarray | None = None,
    tiers: np.ndarray | None = None,
    with_arrays: bool = False,
) -> dict[str, Any]:
    """The metrics of a policy (its choices and decision seconds) on ``split``."""
    cm = cost_model or CostModel()
    costs = split.costs()
    labels = split.labels()
    oracle = costs[np.arange(split.n), labels]
    realized = _realized(costs, choice, decision_s)
    transfer_only = _realized(costs, choice, np.zeros(split.n))
    near = transfer_only <= oracle * 1.01
    near_with_decision = realized <= oracle * 1.01
    correct = choice == labels
    gap = np.nan_to_num(split.cols["runner_up_gap"].astype(np.float64), nan=np.inf)
    decisive = gap >= 0.05
    regret = realized / oracle - 1
    macro_f1, per_class, confusion = _f1(labels, choice)

    baselines, static_name = baseline_choices(split, cm)
    base_realized = {k: _realized(costs, c, t) for k, (c, t) in baselines.items()}
    report: dict[str, Any] = {
        "rows": split.n,
        "accuracy": float(correct.mean()),
        "near_optimal_rate": float(near.mean()),
        "near_optimal_rate_with_decision_time": float(near_with_decision.mean()),
        "decisive_accuracy": float(correct[decisive].mean()) if decisive.any() else None,
        "decisive_rows": int(decisive.sum()),
        "macro_f1": macro_f1,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "regret_mean": float(regret.mean()),
        "regret_p95": float(np.percentile(regret, 95)),
        "regret_p99": float(np.percentile(regret, 99)),
        "oracle_gap": float(realized.sum() / oracle.sum() - 1),
        "static_policy": static_name,
        "decision_s_mean": float(decision_s.mean()),
        "calibration": _calibration(confidence, choice, correct),
    }
    for name, t in base_realized.items():
        if name == "oracle":
            continue
        report[f"gain_vs_{name}"] = float(t.sum() / realized.sum() - 1)
        report[f"per_transfer_gain_vs_{name}"] = float(np.mean(t / realized) - 1)
        b_regret = t / oracle - 1
        report[f"baseline_{name}"] = {
            "near_optimal_rate": float(
                (_realized(costs, baselines[name][0], np.zeros(split.n)) <= oracle * 1.01).mean()
            ),
            "regret_mean": float(b_regret.mean()),
            "regret_p95": float(np.percentile(b_regret, 95)),
            "accuracy": float((baselines[name][0] == labels).mean()),
        }
    if tiers is not None:
        report["tier_shares"] = {t: float(np.mean(tiers == t)) for t in ("fast", "light", "rich")}
    links = np.asarray(split.cols["f_link_type"], dtype=object)
    report["by_link"] = {
        k: _group_metrics(links == k, realized, oracle, near, correct, base_realized) for k in LINK_CLASSES
    }
    types = np.asarray(split.cols["f_payload_type"], dtype=object)
    report["by_type"] = {
        str(k): _group_metrics(types == k, realized, oracle, near, correct, base_realized)
        for k in sorted(set(types.tolist()))
    }
    if with_arrays:
        report["_arrays"] = {
            "regret": regret,
            "realized": realized,
            "oracle": oracle,
            "links": links,
            "baselines": base_realized,
            "confidence": confidence,
            "choice": choice,
            "labels": labels,
        }
    return report
