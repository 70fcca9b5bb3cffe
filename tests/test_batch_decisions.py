"""Batched decisions (``GuardedSelector.select_features_batch``, ``Decider.decide_features_batch``) are the
decisions one call each gives: the same strategy, tier, fallback, confidence and probabilities, and the
same counts, over random transfers of every payload type (and one the model does not know), link class
and size, fast path, light tier and fallbacks mixed in one batch; and the HTTP batch answers as the
single endpoint does."""

from __future__ import annotations

import math
import random
from pathlib import Path

from dwcp_selector.features import BasicFeatures
from dwcp_selector.link import LINK_CLASSES, LinkState, SystemState
from dwcp_selector.modeling.featurize import PAYLOAD_TYPES
from dwcp_selector.serving import GuardedSelector
from dwcp_selector.serving.http import SelectIn, create_app

MODEL = Path(__file__).resolve().parent.parent / "models" / "selector"


def _transfers(n: int, seed: int) -> list[tuple[int, BasicFeatures, LinkState, SystemState, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        link = LinkState(
            capacity_bps=10 ** rng.uniform(4, 12),
            rtt_s=10 ** rng.uniform(-5, 0.5),
            loss=rng.choice([0.0, 1e-4, rng.random() * 0.2]),
            utilization=rng.random() * 0.95,
            link_type=rng.choice([None, *LINK_CLASSES]),
        )
        size = rng.choice([0, rng.randint(1, 1 << 16), rng.randint(1, 1 << 36)])
        has_baseline = rng.random() < 0.3
        similarity = rng.random() if has_baseline and rng.random() < 0.7 else None
        basic = BasicFeatures(
            size, has_baseline, 0, rng.uniform(0, 8), rng.random(), rng.random(), similarity, 0.0
        )
        system = SystemState(free_cores=rng.uniform(0.1, 64))
        out.append((size, basic, link, system, rng.choice([*PAYLOAD_TYPES, "martian"])))
    return out


def _counts(g: GuardedSelector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in g.metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_sum")  # the batch's latencies are its shares: not one call's each
        and not s.name.endswith("_bucket")
    }


def test_a_batch_decides_as_one_call_each() -> None:
    # no deadline: a decision slowed by a busy machine would start the cool-off in one and not the other
    one, many = GuardedSelector(MODEL, deadline_s=math.inf), GuardedSelector(MODEL, deadline_s=math.inf)
    transfers = _transfers(3000, seed=7)
    singles = [one.select_features(s, b, ln, sy, payload_type=t) for s, b, ln, sy, t in transfers]
    sizes, basics, links, systems, types = (list(c) for c in zip(*transfers, strict=True))
    batch = many.select_features_batch(sizes, basics, links, systems, types)
    assert len(batch) == len(singles)
    tiers = {d.tier for d in singles}
    assert {"fast", "light", "heuristic"} <= tiers, tiers  # every path is in the batch
    for a, b in zip(singles, batch, strict=True):
        assert (a.strategy, a.tier, a.fallback, a.confidence) == (
            b.strategy,
            b.tier,
            b.fallback,
            b.confidence,
        )
        assert dict(a.probabilities) == dict(b.probabilities)
    assert _counts(one) == _counts(many)


def test_a_batch_without_a_model_is_the_heuristic_for_each(tmp_path: Path) -> None:
    g = GuardedSelector(tmp_path / "nothing")
    transfers = _transfers(50, seed=3)
    batch = g.select_features_batch(*(list(c) for c in zip(*transfers, strict=True)))
    assert [d.fallback for d in batch] == ["model_unavailable"] * 50
    assert g.select_features_batch([], [], [], [], []) == []


def test_the_http_batch_answers_as_the_single_endpoint() -> None:
    app = create_app(model_dir=MODEL)
    rng = random.Random(11)
    bodies = []
    for i in range(400):
        body: dict[str, object] = {
            "payload_bytes": rng.choice([10, 4 << 10, 4 << 20, 1 << 34]),
            "payload_type": rng.choice(["logs_json", "vm_memory", "media", "martian"]),
            "link": {
                "capacity_bps": 10 ** rng.uniform(5, 11),
                "rtt_s": 10 ** rng.uniform(-4, 0),
                "loss": rng.choice([0.0, 1e-3]),
                "link_type": rng.choice([None, "wan", "dc"]),
            },
            "has_baseline": rng.random() < 0.3,
            "similarity": rng.random(),
            "free_cores": rng.choice([1.0, 4.0]),
        }
        if i % 7:  # a few with neither statistics nor a sample: the heuristic (no_sample)
            body["stats"] = {"entropy": rng.uniform(0, 8), "zero_fraction": rng.random()}
        bodies.append(body)
    requests = [SelectIn.model_validate(b) for b in bodies]
    service = app.service
    service.guard.deadline_s = math.inf  # as above: no timing in what is compared
    singles = [service.decide(r) for r in requests]
    batch = service.decide_batch(requests).decisions
    for a, b in zip(singles, batch, strict=True):
        assert (a.strategy, a.tier, a.fallback, a.confidence, a.model_version) == (
            b.strategy,
            b.tier,
            b.fallback,
            b.confidence,
            b.model_version,
        )
