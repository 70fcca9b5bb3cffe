"""The two decisions a model has to beat on a live payload: the rule heuristic and the sampling probe.

* :func:`heuristic_decide` - DESIGN section 6, first match wins, on the light tier's sampled features
  (the serving fallback and the A/B control);
* :func:`probe_decide` - every offered encoder run once on a 64 KiB sample (4 × 16 KiB spread over the
  payload, the baseline at the same offsets), extrapolated to the payload, priced by the cost model on the
  known link and node, cheapest taken.

The evaluation (``training.evaluation``) prices the same two policies on recorded transfers from the same
thresholds and the probe columns staging measured with the same sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .._types import BytesLike
from ..costmodel import CostModel, Oracle
from ..features import basic_features
from ..link import LinkState, SystemState
from ..measure import sampling_probe
from ..strategies import PayloadCodec

__all__ = [
    "HEURISTIC_HIGH_ENTROPY",
    "HEURISTIC_LOW_BANDWIDTH_BPS",
    "HEURISTIC_LOW_RTT_S",
    "HEURISTIC_MIN_BYTES",
    "HEURISTIC_SIMILAR",
    "HEURISTIC_FAST_BANDWIDTH_BPS",
    "BaselineDecision",
    "heuristic_decide",
    "heuristic_rule",
    "probe_decide",
]

HEURISTIC_MIN_BYTES = 1024
HEURISTIC_HIGH_ENTROPY = 7.5
HEURISTIC_LOW_RTT_S = 1e-3
HEURISTIC_FAST_BANDWIDTH_BPS = 500e6
HEURISTIC_SIMILAR = 0.8
HEURISTIC_LOW_BANDWIDTH_BPS = 100e6


@dataclass(frozen=True)
class BaselineDecision:
    strategy: str
    latency_s: float


def heuristic_rule(
    size: int, entropy: float, has_baseline: bool, similarity: float | None, link: LinkState
) -> str:
    """DESIGN section 6 on decision-time features (first match wins)."""
    if size < HEURISTIC_MIN_BYTES or entropy > HEURISTIC_HIGH_ENTROPY:
        return "none"
    available = link.available_bps
    if link.rtt_s < HEURISTIC_LOW_RTT_S and available > HEURISTIC_FAST_BANDWIDTH_BPS:
        return "lz4"
    if has_baseline and (similarity or 0.0) > HEURISTIC_SIMILAR:
        return "hde"
    if available < HEURISTIC_LOW_BANDWIDTH_BPS:
        return "hde" if has_baseline else "zstd"
    return "lz4"


def heuristic_decide(
    payload: BytesLike, link: LinkState, baseline: BytesLike | None = None
) -> BaselineDecision:
    """The rule heuristic on the light tier's sampled features, timed."""
    t0 = time.perf_counter()
    f = basic_features(payload, baseline)
    choice = heuristic_rule(len(payload), f.entropy, f.has_baseline, f.similarity_pages, link)
    return BaselineDecision(choice, time.perf_counter() - t0)


def probe_decide(
    payload: BytesLike,
    link: LinkState,
    system: SystemState,
    codec: PayloadCodec,
    cost_model: CostModel,
    baseline: BytesLike | None = None,
) -> BaselineDecision:
    """Try every offered encoder on the sample, extrapolate, price on this link, take the cheapest."""
    t0 = time.perf_counter()
    size = len(payload)
    sample_bytes, runs = sampling_probe(payload, baseline, codec)
    scale = max(size, 1) / max(sample_bytes, 1)
    estimates = {s: r.measurement.scaled(scale) for s, r in runs.items()}
    choice = Oracle(cost_model).decide(cost_model.costs(size, estimates, link, system)).label
    return BaselineDecision(choice, time.perf_counter() - t0)
