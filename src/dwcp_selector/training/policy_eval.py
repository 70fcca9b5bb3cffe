"""A model artifact's decisions on recorded transfers, exactly as the selector would take them.

Per record: the tier from the transmit time and the artifact's decision times and policy; the fast path
chooses by the artifact's fast rule (``none`` outside its cells); the light and rich tiers run their ONNX
model on the record's features; the decision costs the tier's measured time. Also fits the fast rule (on
training data), the policy (when to skip the model, when to pay for the rich features) and the cost
model's confidence temperature (on validation data).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import numpy as np

from ..costmodel import CostModel, Oracle
from ..modeling.artifact import CMIL, ModelArtifact
from ..modeling.policy import (
    ANY_TYPE,
    FAST,
    LIGHT,
    RICH,
    STRATEGIES,
    DecisionTimes,
    FastRule,
    PolicyParams,
    cmil_costs_array,
    softmax_confidence,
    tier_array,
)
from ..modeling.runtime import TieredModel
from .data import Split
from .evaluation import evaluate_choices

__all__ = [
    "ModelOutputs",
    "fit_fast_rule",
    "fit_policy",
    "fit_temperature",
    "model_outputs",
    "policy_decisions",
]

FAST_FACTORS = (0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
RICH_FACTORS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, float("inf"))


def transmit_array(split: Split, cost_model: CostModel) -> np.ndarray:
    """Seconds to push each record's unencoded payload through its AMST streams (no RTT)."""
    c = split.cols
    cap, util, rtt, loss = (
        c[k].astype(np.float64) for k in ("f_capacity_bps", "f_utilization", "f_rtt_s", "f_loss")
    )
    effective = cost_model.rates_array(cap, util, rtt, loss)[3]
    out: np.ndarray = 8.0 * c["f_payload_bytes"].astype(np.float64) / effective
    return out


#: A fast-rule cell needs this many training transfers, and its strategy must beat ``none``'s mean regret
#: by this much, or the cell keeps ``none`` (the rule must not chase noise in thin cells).
FAST_RULE_MIN_ROWS = 30
FAST_RULE_MARGIN = 0.002


def fit_fast_rule(split: Split, cost_model: CostModel) -> FastRule:
    """Per (link type, baseline, payload type, transmit octave) cell, the strategy of least mean regret.

    Fitted on every record of ``split`` (the training split), once per payload type and once with the
    types pooled (``ANY_TYPE``, for types the rule has not seen). Cells are octaves of transmit time, so
    the policy's fast-path limit decides which of them are ever used, and the rule need not be refitted
    when decision times (and with them the limit) change.
    """
    costs = split.costs()
    best = costs.min(axis=1)
    ratio = costs / best[:, None]  # inf where not offered
    near = costs <= best[:, None] * 1.01
    octave = np.frexp(transmit_array(split, cost_model))[1]
    link = split.cols["f_link_type"].astype(str).tolist()
    base = split.cols["f_has_baseline"].astype(bool).tolist()
    ptype = split.cols["f_payload_type"].astype(str).tolist()
    groups: dict[tuple[str, bool, str, int], list[int]] = defaultdict(list)
    for i, (lt, hb, pt, o) in enumerate(zip(link, base, ptype, octave.tolist(), strict=True)):
        groups[(lt, hb, pt, o)].append(i)
        groups[(lt, hb, ANY_TYPE, o)].append(i)
    cells: dict[tuple[str, bool, str, int], tuple[str, float]] = {}
    for cell, members in groups.items():
        if len(members) < FAST_RULE_MIN_ROWS:
            continue
        mean = ratio[members].mean(axis=0)
        j = int(np.argmin(mean))
        if j != 0 and mean[j] < mean[0] - FAST_RULE_MARGIN:
            cells[cell] = (STRATEGIES[j], float(near[members, j].mean()))
    return FastRule(cells, frozenset(ptype))


class ModelOutputs:
    """Every tier's choice and confidence for every record (computed once, reused by policy fitting)."""

    def __init__(self, choice: dict[str, np.ndarray], confidence: dict[str, np.ndarray]) -> None:
        self.choice = choice
        self.confidence = confidence


def model_outputs(
    model: TieredModel, split: Split, cost_model: CostModel, temperature: float | None = None
) -> tuple[ModelOutputs, dict[str, np.ndarray]]:
    """Choices of each tier's model on every record; also the cost model's predicted costs per tier."""
    artifact = model.artifact
    offered = split.offered()
    choice: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    predicted: dict[str, np.ndarray] = {}
    temp = artifact.temperature if temperature is None else temperature
    for tier, om in model.tiers.items():
        out = om.predict(om.spec.matrix(split.cols, cost_model))
        if artifact.kind == CMIL:
            costs = cmil_costs_array(out, split.cols["f_payload_bytes"], offered, split.cols, cost_model)
            predicted[tier] = costs
            choice[tier] = Oracle(cost_model).label_array(costs)
            confidence[tier] = softmax_confidence(costs, temp)
        else:
            probs = np.where(offered, out, 0.0)
            probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
            choice[tier] = probs.argmax(axis=1)
            confidence[tier] = probs
    return ModelOutputs(choice, confidence), predicted


def policy_decisions(
    outputs: ModelOutputs,
    split: Split,
    times: DecisionTimes,
    params: PolicyParams,
    cost_model: CostModel,
    rule: FastRule,
    transmit: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(choice, decision seconds, confidence, tier) of every record under the policy and fast rule."""
    t = transmit if transmit is not None else transmit_array(split, cost_model)
    tiers = tier_array(t, times, params)
    if RICH not in outputs.choice:
        tiers[tiers == RICH] = LIGHT
    n = split.n
    c = split.cols
    choice, rule_confidence = rule.choose_array(c["f_link_type"], c["f_has_baseline"], c["f_payload_type"], t)
    confidence = np.zeros((n, 4))
    confidence[np.arange(n), choice] = rule_confidence  # what the selector reports for a fast-path choice
    decision = np.full(n, times.fast_s)
    for tier, seconds in ((LIGHT, times.light_s), (RICH, times.rich_s)):
        rows = tiers == tier
        if rows.any():
            choice[rows] = outputs.choice[tier][rows]
            confidence[rows] = outputs.confidence[tier][rows]
            decision[rows] = seconds
    return choice, decision, confidence, tiers


def fit_policy(
    outputs: ModelOutputs, split: Split, times: DecisionTimes, cost_model: CostModel, rule: FastRule
) -> tuple[PolicyParams, float]:
    """The fast and rich factors with the least mean regret on ``split`` (decision time included)."""
    costs = split.costs()
    oracle = costs[np.arange(split.n), split.labels()]
    transmit = transmit_array(split, cost_model)
    best: tuple[float, PolicyParams] | None = None
    for fast, rich in itertools.product(FAST_FACTORS, RICH_FACTORS):
        params = PolicyParams(fast_factor=fast, rich_factor=rich)
        choice, decision, _, _ = policy_decisions(outputs, split, times, params, cost_model, rule, transmit)
        realized = costs[np.arange(split.n), choice] + decision
        regret = float(np.mean(realized / oracle - 1))
        if best is None or regret < best[0]:
            best = (regret, params)
    assert best is not None
    return best[1], best[0]


def fit_temperature(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The temperature τ for which p ∝ cost^−τ best predicts the oracle's labels (log-likelihood)."""
    best = (np.inf, 1.0)
    for tau in np.logspace(-1, 3, 41):
        p = softmax_confidence(predicted, float(tau))
        nll = float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12))))
        if nll < best[0]:
            best = (nll, float(tau))
    return best[1]


def evaluate_artifact(
    artifact: ModelArtifact, split: Split, cost_model: CostModel | None = None, *, with_arrays: bool = False
) -> dict[str, Any]:
    """Every metric of an artifact on a split, under its own policy and decision times."""
    cm = cost_model or CostModel(artifact.cost_params)
    model = TieredModel(artifact)
    outputs, _ = model_outputs(model, split, cm)
    choice, decision, confidence, tiers = policy_decisions(
        outputs, split, artifact.times, artifact.policy, cm, artifact.fast_rule
    )
    report = evaluate_choices(
        split, choice, decision, cost_model=cm, confidence=confidence, tiers=tiers, with_arrays=with_arrays
    )
    report["decision_times"] = artifact.times.to_dict()
    report["policy"] = artifact.policy.to_dict()
    report["model"] = {"kind": artifact.kind, "family": artifact.family, "size_bytes": artifact.size_bytes()}
    return report


__all__ += ["evaluate_artifact", "transmit_array", "FAST"]
