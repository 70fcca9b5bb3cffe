"""The guarded selector: every way a model decision can fail ends in the heuristic's decision, with the
reason in the decision and in the Prometheus counter, never in an exception."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dwcp_selector.link import SystemState, link_from_class
from dwcp_selector.modeling.baselines import heuristic_decide
from dwcp_selector.serving import GuardedSelector, Selector
from dwcp_selector.serving.guarded import FALLBACK_REASONS
from dwcp_selector.workload import logs_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
LINK = link_from_class("wan")
SYSTEM = SystemState(free_cores=2)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return logs_json(4 << 20, np.random.default_rng(3))  # large enough for a model decision on a WAN


@pytest.fixture(scope="module")
def selector() -> Selector:
    return Selector(MODEL, host_profile=None)


def _fallbacks(g: GuardedSelector, reason: str) -> float:
    value = g.metrics.registry.get_sample_value("dwcp_selector_fallbacks_total", {"reason": reason})
    return 0.0 if value is None else value


def test_the_model_decides_when_it_can(selector: Selector, payload: bytes) -> None:
    g = GuardedSelector(selector)
    d = g.select(payload, LINK, SYSTEM, payload_type="logs_json")
    assert d.fallback is None and d.tier != "heuristic"
    assert all(_fallbacks(g, r) == 0 for r in FALLBACK_REASONS)  # every reason exported, at 0


@pytest.mark.parametrize("damage", ["missing", "tampered", "not_a_model"])
def test_a_missing_or_damaged_model_falls_back(tmp_path: Path, payload: bytes, damage: str) -> None:
    model = tmp_path / "model"
    if damage != "missing":
        shutil.copytree(MODEL, model)
    if damage == "tampered":
        onnx = model / "light.onnx"
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 1
        onnx.write_bytes(bytes(data))
    if damage == "not_a_model":
        (model / "manifest.json").write_text("{}")
    g = GuardedSelector(model)
    d = g.select(payload, LINK, SYSTEM, payload_type="logs_json")
    assert d.fallback == "model_unavailable" and g.load_error
    assert d.strategy == heuristic_decide(payload, LINK).strategy
    assert _fallbacks(g, "model_unavailable") == 1


def test_unknown_type_low_confidence_and_bad_input(selector: Selector, payload: bytes) -> None:
    g = GuardedSelector(selector, min_confidence=1.01)
    assert g.select(payload, LINK, SYSTEM, payload_type="martian").fallback == "unknown_payload_type"
    assert g.select(payload, LINK, SYSTEM, payload_type="logs_json").fallback == "low_confidence"
    bad = g.select(range(8 << 20), LINK, SYSTEM, payload_type="logs_json")  # type: ignore[arg-type]
    assert bad.fallback is not None and bad.fallback.split("+")[0] in ("feature_error", "inference_error")
    assert bad.strategy == "none"
    assert _fallbacks(g, "unknown_payload_type") == 1 and _fallbacks(g, "low_confidence") == 1


def test_a_decision_over_its_deadline_sends_the_next_ones_to_the_heuristic(
    selector: Selector, payload: bytes
) -> None:
    g = GuardedSelector(selector, deadline_s=0.0, cooldown_s=30.0)
    first = g.select(payload, LINK, SYSTEM, payload_type="logs_json")
    assert first.fallback is None  # paid for: it stands
    later = [g.select(payload, LINK, SYSTEM, payload_type="logs_json") for _ in range(3)]
    assert all(d.fallback == "deadline" for d in later) and _fallbacks(g, "deadline") == 3
