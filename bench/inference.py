"""Decision latency of a trained model, features and inference apart, beside the heuristic and the probe.

Every row times one piece of the single-decision path the selector runs (``modeling.decide``), on the
payloads the training timed its tiers with (VM memory rounds with their baselines and JSON logs of 64 KiB,
1 MiB and 8 MiB), one thread, in one run:

* fast path: the raw-transfer-time estimate and the fast rule (no cache), and a decision served from
  the cache;
* light and rich tiers: features alone, inference alone (one row: onnxruntime, and the compiled network
  the decision path runs when the graph is a dense network), the whole decision; for a light classifier
  also the compiled row builder (basic features and the whole input row in one call) the decision uses;
* batched inference: 1024 rows per ``run``, per batch and per row;
* the rule heuristic (its sampled features included) and the sampling probe (every offered encoder on a
  64 KiB sample, extrapolated and priced).

p50 and p99 of ``--calls`` calls per row; the whole measurement is repeated ``--repeats`` times and each
statistic is the median over the repeats.

    python bench/inference.py --model out/model [--calls 5000] [--repeats 3]

Prints a table and writes ``bench/results/inference.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import machine, write
from dwcp_selector.costmodel import CostModel
from dwcp_selector.features import basic_features, rich_features
from dwcp_selector.link import LinkState, SystemState
from dwcp_selector.modeling.artifact import load_artifact
from dwcp_selector.modeling.baselines import heuristic_decide, probe_decide
from dwcp_selector.modeling.decide import Decider, decision_vector
from dwcp_selector.modeling.policy import FAST, LIGHT, RICH
from dwcp_selector.modeling.runtime import OnnxTier, TieredModel
from dwcp_selector.modeling.timing import timing_payloads
from dwcp_selector.serving.selector import Selector
from dwcp_selector.strategies import PayloadCodec

LINK = LinkState(capacity_bps=10e9, rtt_s=0.002, loss=1e-6, utilization=0.3, link_type="metro")
SYSTEM = SystemState(free_cores=4)


def percentiles(fn: Callable[[int], Any], calls: int) -> tuple[float, float]:
    """p50 and p99 seconds of ``calls`` calls of ``fn(i)`` (after a tenth as many warm-up calls)."""
    for i in range(max(calls // 10, 1)):
        fn(i)
    samples = np.empty(calls)
    clock = time.perf_counter
    for i in range(calls):
        t0 = clock()
        fn(i)
        samples[i] = clock() - t0
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def vector(
    tier: str, spec: Any, payload: bytes, baseline: bytes | None, ptype: str, cm: CostModel
) -> list[float]:
    basic = basic_features(payload, baseline)
    rich = rich_features(payload, baseline) if tier == RICH else None
    return decision_vector(spec, len(payload), ptype, basic, rich, LINK, SYSTEM, cm, {})


def time_tier(
    tier: str,
    tm: OnnxTier,
    decider: Decider,
    payloads: list[tuple[bytes, bytes | None, str]],
    cm: CostModel,
    calls: int,
) -> dict[str, tuple[float, float]]:
    """Features, inference (single and batched) and the whole decision of one tier."""
    out: dict[str, tuple[float, float]] = {}
    k = len(payloads)
    vecs = [vector(tier, tm.spec, p, b, t, cm) for p, b, t in payloads]
    if tier == LIGHT:
        out["light: features"] = percentiles(
            lambda i: basic_features(payloads[i % k][0], payloads[i % k][1]), calls
        )
    else:
        out["rich: features"] = percentiles(
            lambda i: (
                basic_features(payloads[i % k][0], payloads[i % k][1]),
                rich_features(payloads[i % k][0], payloads[i % k][1]),
            ),
            max(calls // 5, 100),
        )
    if tier == LIGHT and decider.light_row is not None:
        row = decider.light_row
        out["light: features and row, compiled"] = percentiles(
            lambda i: row.build(payloads[i % k][0], payloads[i % k][1], payloads[i % k][2], {}, LINK, SYSTEM),
            calls,
        )
    out[f"{tier}: inference (onnxruntime)"] = percentiles(
        lambda i: tm.predict_one_onnxruntime(vecs[i % k]), calls
    )
    if tm.dense is not None:
        out[f"{tier}: inference (compiled)"] = percentiles(lambda i: tm.predict_one(vecs[i % k]), calls)
    out[f"{tier}: whole decision"] = percentiles(
        lambda i: decider.decide(
            payloads[i % k][0],
            LINK,
            SYSTEM,
            baseline=payloads[i % k][1],
            payload_type=payloads[i % k][2],
            tier=tier,
        ),
        calls if tier == LIGHT else max(calls // 5, 100),
    )
    batch = np.asarray([vecs[i % k] for i in range(1024)], dtype=np.float32)
    b50, b99 = percentiles(lambda i: tm.predict(batch), max(calls // 20, 50))
    out[f"{tier}: inference, batch of 1024"] = (b50, b99)
    out[f"{tier}: inference, batch of 1024, per row"] = (b50 / 1024, b99 / 1024)
    return out


def one_run(model_dir: Path, calls: int) -> dict[str, tuple[float, float]]:
    artifact = load_artifact(model_dir)
    cm = CostModel(artifact.cost_params)
    model = TieredModel(artifact)
    decider = Decider(model, cm)
    selector = Selector(model_dir)
    codec = PayloadCodec()
    codec.warm_up()
    payloads = timing_payloads(0)
    small = b"x" * 2048
    k = len(payloads)
    out: dict[str, tuple[float, float]] = {}

    out["fast path (estimate, fast rule)"] = percentiles(
        lambda i: selector.select(small, LINK, SYSTEM), calls
    )
    # A cached decision answers on the fast path: seed it with a model decision just above the fast-path
    # boundary, then ask for the same resource and link with a payload just below it.
    big = payloads[-1][0]
    edge = next(n for n in (1 << e for e in range(10, 24)) if selector.decider.tier(n, LINK) != FAST)
    selector.select(big[:edge], LINK, SYSTEM, resource_id="vm-1")
    below = big[: edge // 2]  # the power of two before the edge: on the fast path, within the cache's 4×
    assert selector.select(below, LINK, SYSTEM, resource_id="vm-1").cached
    out["fast path (cached decision)"] = percentiles(
        lambda i: selector.select(below, LINK, SYSTEM, resource_id="vm-1"), calls
    )
    for tier in (LIGHT, RICH):
        if tier in model.tiers:
            out.update(time_tier(tier, model[tier], decider, payloads, cm, calls))
    out["rule heuristic (features + rules)"] = percentiles(
        lambda i: heuristic_decide(payloads[i % k][0], LINK, payloads[i % k][1]), calls
    )
    out["sampling probe (64 KiB, every encoder)"] = percentiles(
        lambda i: probe_decide(payloads[i % k][0], LINK, SYSTEM, codec, cm, payloads[i % k][1]),
        max(calls // 25, 60),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("out/model"))
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.model / "manifest.json").exists():
        raise SystemExit(f"no model in {args.model}: train one first (dwcp-selector train --data … --out …)")
    runs = []
    for _ in range(args.repeats):
        runs.append(one_run(args.model, args.calls))
    rows = {
        name: {
            "p50_us": statistics.median(r[name][0] for r in runs) * 1e6,
            "p99_us": statistics.median(r[name][1] for r in runs) * 1e6,
        }
        for name in runs[0]
    }
    artifact = load_artifact(args.model)
    # how fast this host runs plain Python right now: decision latencies scale with it
    reference = min(timeit.repeat("sum(range(1000))", number=20000, repeat=5)) / 20000 * 1e6
    doc = {
        "machine": machine(),
        "python_reference_us": {"sum(range(1000))": reference},
        "model": {
            "kind": artifact.kind,
            "family": artifact.family,
            "size_bytes": artifact.size_bytes(),
            "candidate": artifact.extra.get("candidate"),
        },
        "calls": args.calls,
        "repeats": args.repeats,
        "rows": rows,
    }
    table = Table(
        title=f"decision latency, {artifact.extra.get('candidate')} ({artifact.size_bytes():,} bytes); "
        f"median of {args.repeats} runs",
        title_justify="left",
    )
    for col in ("what", "p50 µs", "p99 µs"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['p50_us']:,.2f}", f"{r['p99_us']:,.2f}")
    Console().print(table)
    print(f"host reference: sum(range(1000)) takes {reference:.1f} µs here")
    print(f"wrote {write('inference', doc)}")


if __name__ == "__main__":
    main()
