"""The decision policy: how much deciding a transfer may cost, and how model outputs become a choice.

A decision pays for itself (DESIGN section 5a). Compression can at best save the payload's transmit
time (8·S over the AMST rate), so the policy first estimates it (about a microsecond) and picks a tier:

* **fast** - transmit time under ``fast_factor`` × the light decision's cost: no model runs; the
  decision cached for the same resource and link (see ``serving``), else the **fast rule**: a table of
  the strategy with the least mean regret in each cell of (link type, baseline present, payload type,
  transmit-time octave) on the training split, ``none`` in cells it does not know (one dict lookup);
* **light** - basic features (a few µs) and the light model;
* **rich** - the transmit time is at least ``rich_factor`` × the rich decision's cost: the probe and
  similarity features (hundreds of µs) and the rich model.

Model outputs become a strategy in one of two ways (DESIGN section 5b): a **classifier** gives a
probability per strategy (``hde`` masked out without a baseline) and the most probable wins; the **cost
model in the loop** predicts, per strategy, the compressed size and the encode and decode CPU seconds
from the payload features alone, prices them with the exact cost formula on the known link and node,
and takes the cheapest, with the oracle's tie rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..costmodel import DEFAULT_STRATEGY_ORDER, CostModel, StrategyMeasurement
from ..link import LinkState, SystemState

__all__ = [
    "ANY_TYPE",
    "CMIL_OUTPUTS",
    "FAST",
    "LIGHT",
    "RICH",
    "DecisionTimes",
    "FastRule",
    "PolicyParams",
    "cmil_costs_array",
    "cmil_costs_scalar",
    "tier_array",
]

FAST, LIGHT, RICH = "fast", "light", "rich"
STRATEGIES: tuple[str, ...] = DEFAULT_STRATEGY_ORDER
#: Per strategy, the cost model in the loop predicts log2(bytes / payload bytes), log2 encode and decode s.
CMIL_OUTPUTS: tuple[str, ...] = tuple(
    f"{s}:{q}" for s in STRATEGIES for q in ("log2_ratio", "log2_encode_s", "log2_decode_s")
)


@dataclass(frozen=True)
class DecisionTimes:
    """Seconds a decision costs on the host that measured them, per tier (stored in the manifest)."""

    fast_s: float = 1e-6
    light_s: float = 30e-6
    rich_s: float = 600e-6

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PolicyParams:
    """When to skip the model, and when to afford the rich features (tuned on validation data)."""

    fast_factor: float = 10.0
    rich_factor: float = 100.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def limits(self, times: DecisionTimes) -> tuple[float, float]:
        """Transmit seconds below which a transfer takes the fast path, and from which the rich tier."""
        return self.fast_factor * times.light_s, self.rich_factor * times.rich_s


FastCell = tuple[str, bool, str, int]


#: The payload type of the pooled cells: every type together, for types the rule was not fitted on.
ANY_TYPE = "*"


@dataclass(frozen=True)
class FastRule:
    """What the fast path sends when no model runs and nothing is cached.

    ``cells`` maps (link type, baseline present, payload type, transmit octave) to a strategy and the share
    of training transfers in that cell for which it was near-optimal; the octave of a transmit time t is
    ``math.frexp(t)[1]``, the ``e`` with ``2**(e-1) <= t < 2**e``. A payload type the rule was not
    fitted on (not in ``types``: a new family, or ``other``) is looked up in the pooled cells of type
    ``ANY_TYPE``; a transfer in no cell gets ``none``.
    """

    cells: Mapping[FastCell, tuple[str, float]] = field(default_factory=dict)
    types: frozenset[str] = frozenset()

    def choose(
        self, link_type: str | None, has_baseline: bool, payload_type: str, transmit_s: float
    ) -> tuple[str, float]:
        """(strategy, confidence) of one fast-path transfer: one dict lookup (two for a new type)."""
        octave = math.frexp(transmit_s)[1]
        if payload_type not in self.types:
            payload_type = ANY_TYPE
        return self.cells.get((link_type or "", has_baseline, payload_type, octave), _NONE)

    def choose_array(
        self, link_type: np.ndarray, has_baseline: np.ndarray, payload_type: np.ndarray, transmit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(strategy index, confidence) of many transfers (``choose`` for each)."""
        index = {s: i for i, s in enumerate(STRATEGIES)}
        chosen = [
            self.choose(str(lt), bool(hb), str(pt), float(t))
            for lt, hb, pt, t in zip(link_type, has_baseline, payload_type, transmit, strict=True)
        ]
        return (
            np.array([index[s] for s, _ in chosen], dtype=np.int64),
            np.array([c for _, c in chosen], dtype=np.float64),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "types": sorted(self.types),
            "cells": [[*cell, s, round(c, 4)] for cell, (s, c) in sorted(self.cells.items())],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FastRule:
        cells: dict[FastCell, tuple[str, float]] = {}
        for lt, hb, pt, octave, strategy, conf in d["cells"]:
            if strategy not in STRATEGIES or (strategy == "hde" and not hb):
                raise ValueError(f"fast rule cell {lt, hb, pt, octave} chooses {strategy!r}")
            cells[(str(lt), bool(hb), str(pt), int(octave))] = (str(strategy), float(conf))
        return cls(cells, frozenset(str(t) for t in d["types"]))


_NONE = ("none", 1.0)


def tier_array(transmit: np.ndarray, times: DecisionTimes, params: PolicyParams) -> np.ndarray:
    """The tier of every transfer from its transmit seconds (``Decider.tier`` decides one the same way)."""
    fast, rich = params.limits(times)
    out = np.full(transmit.shape, LIGHT, dtype=object)
    out[transmit < fast] = FAST
    out[transmit >= rich] = RICH
    return out


def cmil_costs_array(
    pred: np.ndarray,
    size: np.ndarray,
    offered: np.ndarray,
    link_cols: Mapping[str, np.ndarray],
    cost_model: CostModel,
) -> np.ndarray:
    """Predicted transfer time of every strategy (records × strategies); ``inf`` where not offered."""
    costs = np.full((len(size), len(STRATEGIES)), np.inf)
    sz = size.astype(np.float64)
    for j in range(len(STRATEGIES)):
        ratio, enc, dec = pred[:, 3 * j], pred[:, 3 * j + 1], pred[:, 3 * j + 2]
        t = cost_model.transfer_time_array(
            sz,
            np.maximum(sz, 1.0) * np.exp2(ratio),
            np.exp2(enc),
            np.exp2(dec),
            link_cols["f_capacity_bps"],
            link_cols["f_utilization"],
            link_cols["f_rtt_s"],
            link_cols["f_loss"],
            link_cols["f_free_cores"],
            STRATEGIES[j],
        )
        costs[:, j] = np.where(offered[:, j], t, np.inf)
    return costs


def cmil_costs_scalar(
    pred: Sequence[float],
    size: int,
    has_baseline: bool,
    link: LinkState,
    system: SystemState,
    cost_model: CostModel,
) -> dict[str, float]:
    """The same for one decision (pure Python)."""
    out = {}
    for j, s in enumerate(STRATEGIES):
        if s == "hde" and not has_baseline:
            continue
        m = StrategyMeasurement(
            int(max(size, 1) * 2.0 ** pred[3 * j]), 2.0 ** pred[3 * j + 1], 2.0 ** pred[3 * j + 2]
        )
        out[s] = cost_model.transfer_time(size, m, link, system, s)
    return out


def softmax_confidence(costs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ∝ cost^(−temperature) (0 where not offered): the cost model's confidence."""
    logc = np.log(np.where(np.isfinite(costs), costs, np.nan))
    z = -temperature * logc
    z = np.where(np.isnan(z), -np.inf, z)
    z = z - np.max(z, axis=1, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probs


def confidence_scalar(costs: Mapping[str, float], temperature: float) -> dict[str, float]:
    lo = min(costs.values())
    w = {s: math.exp(-temperature * (math.log(c) - math.log(lo))) for s, c in costs.items()}
    total = sum(w.values())
    return {s: v / total for s, v in w.items()}
