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


#: Rounds of timing per tier: the result is the least of the rounds' medians.
ROUNDS = 5


def measure_decision_times(decider: Decider, *, calls: int = 200, seed: int = 0) -> DecisionTimes:
    """Seconds of a decision in each tier (fast path, light, rich) on ``timing_payloads``.

    ``calls`` decisions per tier in ``ROUNDS`` rounds; each round's median, and the least of those. On a
    shared host the speed drifts from one second to the next (consecutive medians of 600 calls here
    differed by 70 %); the least round is the host's own speed, the same convention as the codec timings
    the labels are priced with (``measure.measure_strategy`` keeps the least of its runs).
    """
    link = LinkState(capacity_bps=10e9, rtt_s=0.002, loss=1e-6, utilization=0.3, link_type="metro")
    system = SystemState(free_cores=4)
    payloads = timing_payloads(seed)
    result = {}
    for tier in (FAST, LIGHT, RICH):
        if tier != FAST and tier not in decider.model.tiers:
            result[tier] = float("inf")
            continue
        for i in range(len(payloads)):  # warm caches and lazy initialisation up
            payload, baseline, ptype = payloads[i]
            decider.decide(payload, link, system, baseline=baseline, payload_type=ptype, tier=tier)
        per_round = max(calls // ROUNDS, len(payloads))
        medians = []
        for _ in range(ROUNDS):
            samples = []
            for i in range(per_round):
                payload, baseline, ptype = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                decider.decide(payload, link, system, baseline=baseline, payload_type=ptype, tier=tier)
                samples.append(time.perf_counter() - t0)
            medians.append(statistics.median(samples))
        result[tier] = min(medians)
    return DecisionTimes(fast_s=result[FAST], light_s=result[LIGHT], rich_s=result[RICH])
