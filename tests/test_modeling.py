"""The model as data: one feature definition for training and serving, ONNX graphs equal to their
networks, artifacts that refuse tampering, and the selector's fast path and cache."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_selector._sample import same_pages, sample_stats, set_clog
from dwcp_selector.costmodel import CostModel
from dwcp_selector.errors import ArtifactError
from dwcp_selector.features import PAGE, _page_offsets, basic_features, rich_features, sample_stats_numpy
from dwcp_selector.link import LinkState, SystemState, link_from_class
from dwcp_selector.modeling.artifact import CMIL, ModelArtifact, TierModel, load_artifact, save_artifact
from dwcp_selector.modeling.decide import Decider, decision_vector
from dwcp_selector.modeling.featurize import LIGHT, RICH, FeatureSpec
from dwcp_selector.modeling.onnx_graph import mlp_to_onnx
from dwcp_selector.modeling.policy import CMIL_OUTPUTS, DecisionTimes, FastRule, PolicyParams
from dwcp_selector.modeling.runtime import OnnxTier, TieredModel
from dwcp_selector.serving.selector import Selector
from dwcp_selector.workload.payloads import dirty_round, logs_json, vm_memory

CM = CostModel()


def _record_columns(payload: bytes, baseline: bytes | None, link: LinkState, system: SystemState) -> dict:
    b = basic_features(payload, baseline)
    r = rich_features(payload, baseline)
    return (
        {
            "f_payload_bytes": np.array([len(payload)]),
            "f_payload_type": np.array(["vm_memory_round"], dtype=object),
            "f_has_baseline": np.array([b.has_baseline]),
            "f_baseline_bytes": np.array([b.baseline_bytes]),
            "f_entropy": np.array([b.entropy]),
            "f_zero_fraction": np.array([b.zero_fraction]),
            "f_text_fraction": np.array([b.text_fraction]),
            "f_similarity_pages": np.array(
                [b.similarity_pages if b.similarity_pages is not None else np.nan]
            ),
            "f_prev_zstd_ratio": np.array([0.31]),
            "f_prev_lz4_ratio": np.array([np.nan]),
            "f_prev_hde_ratio": np.array([0.002]),
            "f_probe_lz4_ratio": np.array([r.probe_lz4_ratio]),
            "f_probe_zstd_ratio": np.array([r.probe_zstd_ratio]),
            "f_zero_page_fraction": np.array([r.zero_page_fraction]),
            "f_similarity_inplace": np.array([r.similarity_inplace]),
            "f_similarity_shifted": np.array([r.similarity_shifted]),
            "f_capacity_bps": np.array([link.capacity_bps]),
            "f_utilization": np.array([link.utilization]),
            "f_rtt_s": np.array([link.rtt_s]),
            "f_jitter_s": np.array([link.jitter_s]),
            "f_loss": np.array([link.loss]),
            "f_free_cores": np.array([system.free_cores]),
            "f_active_transfers": np.array([system.active_transfers]),
            "f_link_type": np.array([link.link_type], dtype=object),
        },
        b,
        r,
    )


@pytest.mark.parametrize("tier", [LIGHT, RICH])
def test_training_matrix_equals_serving_vector(tier: str) -> None:
    """No train/serve skew: the batch matrix of a record is the single-decision vector, float for float."""
    rng = np.random.default_rng(1)
    image = vm_memory(1 << 20, rng)
    payload = dirty_round(image, rng, dirty_fraction=0.1)
    link = LinkState(2e9, 0.004, 1e-5, 0.3, jitter_s=0.0003, link_type="metro")
    system = SystemState(free_cores=6, active_transfers=2)
    cols, b, r = _record_columns(payload, image, link, system)
    spec = FeatureSpec(tier, with_link=True)
    batch = spec.matrix(cols, CM)[0]
    # the vector the selector's decisions are made from (``Decider.decide`` builds it with this call)
    single = decision_vector(
        spec,
        len(payload),
        "vm_memory_round",
        b,
        r if tier == RICH else None,
        link,
        system,
        CM,
        {"zstd": 0.31, "lz4": None, "hde": 0.002},
    )
    assert len(single) == len(spec.names) == batch.shape[0]
    np.testing.assert_allclose(batch, np.asarray(single, dtype=np.float32), rtol=1e-6, atol=1e-6)


def test_features_are_sampled_and_cheap_to_define() -> None:
    rng = np.random.default_rng(2)
    logs = logs_json(3 << 20, rng)
    b = basic_features(logs)
    assert 3.5 < b.entropy < 6.5 and b.text_fraction > 0.95 and b.similarity_pages is None
    same = basic_features(logs, logs)
    assert same.similarity_pages == 1.0
    r = rich_features(logs, logs[100:] + b"tail")
    assert r.similarity_inplace is not None and r.similarity_inplace < 0.5  # shifted: no page lines up
    assert r.similarity_shifted is not None and r.similarity_shifted >= 0.75  # but the content is there
    assert 0 < r.probe_lz4_ratio < 0.6 and r.probe_zstd_ratio < r.probe_lz4_ratio
    empty = basic_features(b"")
    assert empty.entropy == 0.0 and empty.payload_bytes == 0


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=6000),
        st.builds(
            lambda n, k, seed: np.random.default_rng(seed).integers(0, k, n, dtype=np.uint8).tobytes(),
            st.integers(0, 40000),
            st.integers(1, 256),
            st.integers(0, 2**32 - 1),
        ),
    )
)
def test_compiled_sample_stats_equal_the_numpy_definition(data: bytes) -> None:
    # bit for bit: the staging collection and the live decision must see the very same values
    assert sample_stats(data) == sample_stats_numpy(data)
    assert sample_stats(memoryview(bytearray(data))) == sample_stats_numpy(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 2**32 - 1), st.integers(2, 12))
def test_compiled_page_comparison_follows_the_sampled_offsets(
    na: int, nb: int, seed: int, count: int
) -> None:
    rng = np.random.default_rng(seed)
    a = bytearray(rng.integers(0, 4, na * PAGE + int(rng.integers(0, PAGE)), dtype=np.uint8).tobytes())
    b = bytearray(a[: nb * PAGE]) + bytes(max(0, nb * PAGE - len(a)))
    for o in range(0, len(b), 3 * PAGE):  # edit every third page of the baseline
        b[o] ^= 1
    offsets = _page_offsets(min(len(a), len(b)) // PAGE, count)
    same = sum(a[o : o + PAGE] == b[o : o + PAGE] for o in offsets)
    assert same_pages(bytes(a), bytes(b), count) == (same, len(offsets))


def test_compiled_statistics_refuse_bad_arguments() -> None:
    with pytest.raises(TypeError):
        sample_stats("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        same_pages(b"a", b"b", 1)
    with pytest.raises(ValueError, match="4097"):
        set_clog(b"short")


def test_onnx_graph_equals_the_network() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 4)
    )
    mean = np.arange(7, dtype=np.float32)
    std = np.linspace(0.5, 2.0, 7).astype(np.float32)
    layers = [
        (m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net if isinstance(m, torch.nn.Linear)
    ]
    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32) * 3 + 2
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy((x - mean) / std)), dim=1).numpy()
    spec = FeatureSpec(LIGHT, with_link=False)
    tm = TierModel(LIGHT, mlp_to_onnx(layers, mean=mean, std=std, softmax=True, name="t"), spec, ["a"] * 4)
    tier = OnnxTier.__new__(OnnxTier)  # bypass the width check: this toy takes 7 inputs
    import onnxruntime as ort

    tier.session = ort.InferenceSession(tm.onnx, providers=["CPUExecutionProvider"])
    got = tier.session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _toy_artifact(tmp_path: Path) -> Path:
    """A real (untrained) cost-model artifact: random weights, right shapes."""
    rng = np.random.default_rng(0)
    tiers = {}
    for tier in (LIGHT, RICH):
        spec = FeatureSpec(tier, with_link=False)
        d = len(spec.names)
        layers = [
            (rng.normal(size=(64, d)).astype(np.float32) * 0.1, np.zeros(64, np.float32)),
            (rng.normal(size=(12, 64)).astype(np.float32) * 0.1, np.full(12, -10.0, np.float32)),
        ]
        onnx = mlp_to_onnx(
            layers, mean=np.zeros(d, np.float32), std=np.ones(d, np.float32), softmax=False, name=tier
        )
        tiers[tier] = TierModel(tier, onnx, spec, list(CMIL_OUTPUTS))
    art = ModelArtifact(
        CMIL, "mlp", tiers, DecisionTimes(1e-6, 20e-6, 400e-6), PolicyParams(10.0, 100.0), 5.0
    )
    return save_artifact(art, tmp_path / "model")


def test_artifact_round_trip_and_tampering(tmp_path: Path) -> None:
    path = _toy_artifact(tmp_path)
    art = load_artifact(path)
    assert art.kind == CMIL and set(art.tiers) == {LIGHT, RICH} and art.size_bytes() < 10 << 20
    bad = tmp_path / "tampered"
    shutil.copytree(path, bad)
    data = bytearray((bad / "light.onnx").read_bytes())
    data[-10] ^= 1
    (bad / "light.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(bad)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["policy"]["fast_factor"] = 1e9
    (bad / "light.onnx").write_bytes((path / "light.onnx").read_bytes())
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="modified"):
        load_artifact(bad)
    with pytest.raises(ArtifactError, match="no manifest"):
        load_artifact(tmp_path)
    from dwcp_selector.costmodel import CostParams

    with pytest.raises(ArtifactError, match="cost model"):
        load_artifact(path, cost_model=CostModel(CostParams(mss_bytes=9000)))


def test_decider_tiers_and_outputs(tmp_path: Path) -> None:
    art = load_artifact(_toy_artifact(tmp_path))
    decider = Decider(TieredModel(art))
    system = SystemState(4)
    small = b"x" * 2000
    assert decider.decide(small, link_from_class("dc"), system).tier == "fast"
    rng = np.random.default_rng(3)
    big = logs_json(8 << 20, rng)
    d = decider.decide(big, link_from_class("edge"), system)
    assert d.tier == "rich" and d.strategy in ("none", "lz4", "zstd") and "hde" not in d.predicted_costs
    d2 = decider.decide(big[: 256 << 10], link_from_class("metro"), system, baseline=big[: 256 << 10])
    assert d2.tier == "light" and set(d2.predicted_costs) == {"none", "lz4", "zstd", "hde"}
    assert abs(sum(d2.probabilities.values()) - 1) < 1e-9 and d2.latency_s > 0


def test_the_link_rate_is_remembered_for_one_link_only(tmp_path: Path) -> None:
    """Transmit times come from a one-entry cache of the last link's rate: every other link, even an
    equal one, is priced anew, and alternating links never get each other's rate."""
    decider = Decider(TieredModel(load_artifact(_toy_artifact(tmp_path))))
    fast_link = LinkState(10e9, 0.0002, 0.0, 0.0, link_type="dc")
    slow_link = LinkState(50e6, 0.03, 1e-4, 0.2, link_type="edge")
    size = 100 << 10
    for _ in range(3):
        for link in (fast_link, slow_link, LinkState(10e9, 0.0002, 0.0, 0.0, link_type="dc")):
            assert decider.transmit_s(size, link) == 8.0 * size / CM.effective_bps(link)
    assert decider.tier(size, fast_link) == "fast" and decider.tier(size, slow_link) != "fast"
    sel = Selector(_toy_artifact(tmp_path))
    system = SystemState(4)
    assert sel.select(b"x" * size, fast_link, system).tier == "fast"
    assert sel.select(b"x" * size, slow_link, system).tier != "fast"
    assert sel.select(b"x" * size, fast_link, system).tier == "fast"


def test_selector_cache_is_keyed_and_invalidated(tmp_path: Path) -> None:
    # the toy policy: fast path when transmit < 10 × 20 µs = 200 µs
    sel = Selector(_toy_artifact(tmp_path), ttl_s=60)
    system = SystemState(4)
    link = LinkState(10e9, 0.0002, 0.0, 0.0, link_type="dc")
    rng = np.random.default_rng(4)
    data = logs_json(300 << 10, rng)  # 246 µs to transmit: the model decides
    first = sel.select(data, link, system, resource_id="db-1")
    assert first.tier == "light" and not first.cached
    small = data[: 100 << 10]  # 82 µs: fast path; same resource and link, within 4x of size: cached
    hit = sel.select(small, link, system, resource_id="db-1")
    assert hit.tier == "fast" and hit.cached and hit.strategy == first.strategy
    other = sel.select(small, link, system, resource_id="db-2")
    assert other.tier == "fast" and not other.cached and other.strategy == "none"
    far = sel.select(data[:2000], link, system, resource_id="db-1")  # 150x smaller: the entry is dropped
    assert not far.cached and far.strategy == "none"
    sel.select(data, link, system, resource_id="db-1")
    assert sel.invalidate("db-1") == 1 and sel.invalidate("db-1") == 0
    assert not sel.select(small, link, system, resource_id="db-1").cached


def test_fast_path_follows_the_fast_rule_and_the_cache_comes_first(tmp_path: Path) -> None:
    path = _toy_artifact(tmp_path)
    link = LinkState(10e9, 0.0002, 0.0, 0.0, link_type="dc")
    octave = math.frexp(8.0 * (100 << 10) / CM.effective_bps(link))[1]  # 82 µs: the fast path
    cells = [["dc", True, "vm_memory_round", octave, "hde", 0.875], ["dc", False, "*", octave, "lz4", 0.5]]
    _rewrite(path, {"fast_rule": {"types": ["logs_json", "vm_memory_round"], "cells": cells}})
    art = load_artifact(path)
    assert art.fast_rule.cells[("dc", True, "vm_memory_round", octave)] == ("hde", 0.875)
    assert FastRule.from_dict(art.fast_rule.to_dict()) == art.fast_rule
    sel = Selector(path)
    system = SystemState(4)
    data = logs_json(300 << 10, np.random.default_rng(5))
    small = data[: 100 << 10]
    d = sel.select(small, link, system, baseline=small, payload_type="vm_memory_round")
    assert (d.tier, d.strategy, d.confidence, d.cached) == ("fast", "hde", 0.875, False)
    # another cell (no baseline, another type, another octave) keeps none
    assert sel.select(small, link, system, payload_type="vm_memory_round").strategy == "none"
    # a type the rule was not fitted on takes the pooled cell
    assert sel.select(small, link, system, payload_type="database").strategy == "lz4"
    assert sel.select(small, link, system, payload_type="logs_json").strategy == "none"
    assert sel.select(small, link, system, baseline=small, payload_type="logs_json").strategy == "none"
    assert (
        sel.select(small[:1000], link, system, baseline=small[:1000], payload_type="vm_memory_round").strategy
        == "none"
    )
    # a decision cached for the resource wins over the rule
    first = sel.select(data, link, system, baseline=data, payload_type="vm_memory_round", resource_id="vm")
    hit = sel.select(small, link, system, baseline=small, payload_type="vm_memory_round", resource_id="vm")
    assert hit.cached and hit.strategy == first.strategy


def _manifest(path: Path) -> dict:
    return dict(json.loads((path / "manifest.json").read_text()))


def _renamed_input(tier: dict) -> dict:
    """A tier entry whose feature list is one made by an older feature definition."""
    names = list(tier["spec"]["names"])
    names[-1] = "log10_raw_s"
    return {**tier, "spec": {**tier["spec"], "names": names}}


def _rewrite(path: Path, change: dict) -> None:
    """Edit a manifest and re-seal it, as a deliberate (not accidental) change would be."""
    import hashlib

    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("checksum")
    manifest.update(change)
    body = json.dumps(manifest, indent=2, sort_keys=True)
    manifest["checksum"] = hashlib.sha256(body.encode()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_mismatched_artifacts_are_refused_with_a_reason(tmp_path: Path) -> None:
    good = _toy_artifact(tmp_path)
    cases = {
        "major": ({"library_version": "99.0.0"}, "major version"),
        "labels": ({"label_set": ["none", "lz4", "zstd", "hde", "brotli"]}, "label set"),
        "schema": ({"schema": "dwcp-model/0"}, "not a dwcp-model/1 manifest"),
        "fast rule": (
            {"fast_rule": {"types": [], "cells": [["dc", False, "logs", -12, "hde", 0.9]]}},
            "invalid fast rule",
        ),
        "fast rule label": (
            {"fast_rule": {"types": [], "cells": [["dc", True, "logs", -12, "brotli", 0.9]]}},
            "fast rule",
        ),
        "fast rule shape": ({"fast_rule": {"types": [], "cells": [["dc", True]]}}, "invalid fast rule"),
        "fast rule keys": ({"fast_rule": {"cells": []}}, "invalid fast rule"),
        "features": (
            {
                "tiers": {
                    **_manifest(good)["tiers"],
                    "light": _renamed_input(_manifest(good)["tiers"]["light"]),
                }
            },
            "other input features",
        ),
    }
    for name, (change, message) in cases.items():
        bad = tmp_path / name
        shutil.copytree(good, bad)
        _rewrite(bad, change)
        with pytest.raises(ArtifactError, match=message):
            load_artifact(bad)
    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "rich.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(missing)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(garbage)
    # a graph of the wrong width, sealed as if it were right: onnxruntime is never asked to guess
    swapped = tmp_path / "swapped"
    shutil.copytree(good, swapped)
    d = 5
    onnx = mlp_to_onnx(
        [(np.ones((12, d), np.float32), np.zeros(12, np.float32))],
        mean=np.zeros(d, np.float32),
        std=np.ones(d, np.float32),
        softmax=False,
        name="w",
    )
    (swapped / "light.onnx").write_bytes(onnx)
    import hashlib

    tiers = json.loads((swapped / "manifest.json").read_text())["tiers"]
    tiers["light"]["sha256"] = hashlib.sha256(onnx).hexdigest()
    _rewrite(swapped, {"tiers": tiers})
    with pytest.raises(ArtifactError, match="inputs"):
        TieredModel(load_artifact(swapped))
