"""The fleet cache's costs beside the decision they would save: local LRU hit, Redis hit (loopback), a
lookup while Redis is down (breaker open), and the shipped model's light decision.

    python bench/cache.py [--calls 5000] [--repeats 5]

Needs the Redis at ``DWCP_REDIS_URL`` (default 127.0.0.1:6379). Prints a table and writes
``bench/results/cache.json``; medians over repeats of the median per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.config import Settings
from dwcp_selector.link import SystemState, link_from_class
from dwcp_selector.serving import DecisionCache, Selector
from dwcp_selector.workload import logs_json

LINK = link_from_class("wan")
ROOT = Path(__file__).resolve().parent.parent


def per_call(fn: Callable[[], Any], calls: int, repeats: int) -> float:
    medians = []
    for _ in range(repeats):
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times))
    return statistics.median(medians)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    cache = DecisionCache(Settings.from_env().redis_url, namespace=ns)
    decision = {"strategy": "zstd", "confidence": 0.99, "tier": "rich"}
    cache.put_decision("r", LINK, 4 << 20, decision)
    assert cache.get_decision("r", LINK, 4 << 20) == decision
    rows: dict[str, float] = {}
    rows["local LRU hit"] = per_call(lambda: cache.get_decision("r", LINK, 4 << 20), args.calls, args.repeats)

    misses = 0

    def redis_hit() -> None:
        nonlocal misses
        cache._local.clear()
        if cache.get_decision("r", LINK, 4 << 20) is None:
            misses += 1  # over the budget: the breaker opened and the lookup was not made

    rows["Redis hit (loopback)"] = per_call(redis_hit, args.calls, args.repeats)
    redis_errors = cache.redis_errors
    down = DecisionCache("redis://127.0.0.1:1/0", namespace=ns, retry_s=3600)
    for _ in range(down.failures_to_open):  # refused connections open the breaker
        down.get_decision("r", LINK, 4 << 20)
    rows["Redis down (breaker open)"] = per_call(
        lambda: down.get_decision("r", LINK, 4 << 20), args.calls, args.repeats
    )
    sel = Selector(ROOT / "models" / "selector", host_profile=None)
    payload = logs_json(4 << 20, np.random.default_rng(4))
    system = SystemState(free_cores=2)
    rows["light decision (shipped model)"] = per_call(
        lambda: sel.select(payload, LINK, system, payload_type="logs_json"), args.calls // 5, args.repeats
    )
    cache.close()
    down.close()
    print(f"\n{'operation':34} {'µs (median)':>12}")
    for name, s in rows.items():
        print(f"{name:34} {s * 1e6:12.1f}")
    print(f"Redis lookups over the {cache.budget_s * 1e3:.0f} ms budget: {redis_errors}; not made: {misses}")
    doc = {
        "machine": machine(),
        "args": vars(args),
        "us_median": {k: v * 1e6 for k, v in rows.items()},
        "redis_over_budget": redis_errors,
        "redis_lookups_not_made": misses,
        "budget_s": cache.budget_s,
    }
    path = write("cache", doc)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
