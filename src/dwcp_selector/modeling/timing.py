"""What a decision costs on this host: the single-decision path timed on representative payloads.

The light and rich tiers are timed on payloads of several families and sizes (with baselines, the costlier
case), medians of many calls, so the evaluation charges each decision what the selector really spends.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..link import LinkState, SystemState
from ..workload.payloads import ContentPools, dirty_round, logs_json, vm_memory
from .decide import Decider
from .policy import FAST, LIGHT, RICH, DecisionTimes

__all__ = ["measure_decision_times", "timing_payloads"]


def timing_payloads(seed: int = 0) -> list[tuple[bytes, bytes | None, str]]:
    """(payload, baseline, type) triples: the kinds and sizes the tiers meet."""
    rng = np.random.default_rng(seed)
    pools = ContentPools(seed, pool_bytes=1 << 20)
    out: list[tuple[bytes, bytes | None, str]] = []
    for size in (64 << 10, 1 << 20, 8 << 20):
        image = vm_memory(size, rng, pools)
        out.append((dirty_round(image, rng, dirty_fraction=0.05), image, "vm_memory_round"))
        logs = logs_json(size, rng, pools)
        out.append((logs, None, "logs_json"))
    return out


def measure_decision_times(decider: Decider, *, calls: int = 200, seed: int = 0) -> DecisionTimes:
    """Median seconds of a decision in each tier (fast path, light, rich) on ``timing_payloads``."""
    link = LinkState(capacity_bps=10e9, rtt_s=0.002, loss=1e-6, utilization=0.3, link_type="metro")
    system = SystemState(free_cores=4)
    payloads = timing_payloads(seed)
    result = {}
    for tier in (FAST, LIGHT, RICH):
        if tier != FAST and tier not in decider.model.tiers:
            result[tier] = float("inf")
            continue
        samples = []
        for i in range(calls):
            payload, baseline, ptype = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            decider.decide(payload, link, system, baseline=baseline, payload_type=ptype, tier=tier)
            samples.append(time.perf_counter() - t0)
        result[tier] = statistics.median(samples[calls // 10 :])  # the first calls warm caches up
    return DecisionTimes(fast_s=result[FAST], light_s=result[LIGHT], rich_s=result[RICH])
