"""The compiled light decision: the row builder equals the Python feature definition bit for bit, the
compiled network equals onnxruntime on the same ONNX graph, and anything else stays in onnxruntime."""

from __future__ import annotations

import logging
from array import array
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from dwcp_selector._dense import Dense
from dwcp_selector._sample import light_row
from dwcp_selector.costmodel import CostModel
from dwcp_selector.features import PAGE, basic_features
from dwcp_selector.link import LINK_CLASSES, LinkState, SystemState, link_from_class
from dwcp_selector.modeling import runtime
from dwcp_selector.modeling.artifact import CLASSIFIER, ModelArtifact, TierModel, load_artifact, save_artifact
from dwcp_selector.modeling.decide import Decider, decision_vector
from dwcp_selector.modeling.dense import dense_from_onnx
from dwcp_selector.modeling.featurize import LIGHT, RICH, FeatureSpec, LightRow
from dwcp_selector.modeling.onnx_graph import mlp_to_onnx
from dwcp_selector.modeling.policy import STRATEGIES, DecisionTimes, PolicyParams
from dwcp_selector.modeling.runtime import OnnxTier, TieredModel
from dwcp_selector.workload.payloads import logs_json, vm_memory

CM = CostModel()


def _layers(rng: np.random.Generator, widths: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (rng.normal(size=(o, i)).astype(np.float32) * 0.3, rng.normal(size=o).astype(np.float32) * 0.1)
        for i, o in zip(widths[:-1], widths[1:], strict=True)
    ]


def _onnx(rng: np.random.Generator, widths: list[int], softmax: bool) -> bytes:
    d = widths[0]
    mean = rng.normal(size=d).astype(np.float32)
    std = rng.uniform(0.5, 3.0, size=d).astype(np.float32)
    return mlp_to_onnx(_layers(rng, widths), mean=mean, std=std, softmax=softmax, name="t")


@pytest.mark.parametrize("softmax", [True, False])
def test_compiled_network_equals_onnxruntime(softmax: bool) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    graph = _onnx(rng, [45, 64, 32, 16, 4], softmax)
    dense = dense_from_onnx(graph)
    assert dense is not None and dense.inputs == 45 and dense.outputs == 4
    x = rng.normal(size=(500, 45)).astype(np.float32) * 4
    expected = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = np.array([dense.run(row.tolist()) for row in x])
    # float32 sums in another order: equal to float32 rounding of values up to ~30 (the logits)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)
    # a float64 row buffer (the decision path's) and a list give the same outputs
    row = x[0].astype(np.float64)
    assert dense.run(array("d", row.tolist())) == dense.run(row.tolist()) == dense.run(row)


def test_compiled_network_refuses_bad_layers_and_rows() -> None:
    w = np.ones((2, 3), np.float32)
    b = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="rows x cols"):
        Dense([(w.tobytes(), b.tobytes(), 3, 3)], True)
    with pytest.raises(ValueError, match="previous layer"):
        Dense([(w.tobytes(), b.tobytes(), 2, 3), (w.tobytes(), b.tobytes(), 2, 3)], True)
    with pytest.raises(ValueError, match="1 to 8 layers"):
        Dense([], True)
    with pytest.raises(TypeError, match="tuple"):
        Dense([[w.tobytes(), b.tobytes(), 2, 3]], True)
    dense = Dense([(w.tobytes(), b.tobytes(), 2, 3)], False)
    assert dense.run([1.0, 2.0, 3.0]) == [6.0, 6.0]
    with pytest.raises(ValueError, match="takes 3 inputs"):
        dense.run([1.0, 2.0])
    with pytest.raises(ValueError, match="3 float64"):
        dense.run(array("f", [1.0, 2.0, 3.0]))
    with pytest.raises(TypeError):
        dense.run([1.0, "x", 3.0])
    with pytest.raises(ValueError, match="not initialised"):
        Dense.__new__(Dense).run([1.0])


def _graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], n_in: int, n_out: int) -> bytes:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n_out])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    data: bytes = m.SerializeToString()
    return data


def test_graphs_of_another_shape_stay_in_onnxruntime() -> None:
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1)
    # a ReLU after the last layer, an op the runtime does not know, no transB, a dangling output
    shapes = [
        [gemm, helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=1)],
        [gemm, helper.make_node("Sigmoid", ["h"], ["y"])],
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Identity", ["h"], ["y"])],
        [gemm, helper.make_node("Identity", ["x"], ["y"])],
    ]
    for nodes in shapes:
        assert dense_from_onnx(_graph(nodes, [w, b], 3, 2)) is None
    assert dense_from_onnx(_graph([gemm, helper.make_node("Identity", ["h"], ["y"])], [w, b], 3, 2))
    assert dense_from_onnx(b"not a graph") is None


def _classifier_artifact(tmp_path: Path, seed: int = 0) -> Path:
    """A real (untrained) classifier artifact of the shipped shape: 64-32-16 networks, softmax."""
    rng = np.random.default_rng(seed)
    tiers = {}
    for tier in (LIGHT, RICH):
        spec = FeatureSpec(tier, with_link=True)
        d = len(spec.names)
        onnx_bytes = mlp_to_onnx(
            _layers(rng, [d, 64, 32, 16, 4]),
            mean=np.zeros(d, np.float32),
            std=np.ones(d, np.float32),
            softmax=True,
            name=tier,
        )
        tiers[tier] = TierModel(tier, onnx_bytes, spec, list(STRATEGIES))
    art = ModelArtifact(
        CLASSIFIER, "mlp", tiers, DecisionTimes(1e-6, 5e-6, 400e-6), PolicyParams(10.0, 100.0), 1.0
    )
    return save_artifact(art, tmp_path / "model")


def test_light_decision_runs_compiled_and_equals_the_onnxruntime_path(tmp_path: Path) -> None:
    decider = Decider(TieredModel(load_artifact(_classifier_artifact(tmp_path))))
    light = decider.model[LIGHT]
    assert light.single_row_runtime == "compiled"
    rng = np.random.default_rng(4)
    image = vm_memory(1 << 20, rng)
    system = SystemState(free_cores=3, active_transfers=1)
    history = {"zstd": 0.4, "lz4": None, "hde": 0.01}
    strided = memoryview(image)[::2]  # a view the compiled call cannot read in place
    for payload, baseline, ptype, link in [
        (image, None, "vm_memory", link_from_class("metro")),
        (strided, strided, "vm_memory", link_from_class("dc")),
        (image, image, "vm_memory_round", link_from_class("wan")),
        (logs_json(300_000, rng), None, "unheard-of", LinkState(1e9, 0.003, 0.0, 0.2)),
    ]:
        d = decider.decide(
            payload, link, system, baseline=baseline, payload_type=ptype, history=history, tier=LIGHT
        )
        assert d.tier == LIGHT and d.basic is not None
        vec = decision_vector(light.spec, len(payload), ptype, d.basic, None, link, system, CM, history)
        reference = light.predict_one_onnxruntime(vec)
        offered = [s for s in STRATEGIES if s != "hde" or baseline is not None]
        assert list(d.probabilities) == offered
        probs = np.array([reference[STRATEGIES.index(s)] for s in offered])
        np.testing.assert_allclose(list(d.probabilities.values()), probs / probs.sum(), atol=1e-5)
        assert d.strategy == offered[int(np.argmax(probs))]
        b = basic_features(payload, baseline)
        assert (b.entropy, b.zero_fraction, b.similarity_pages) == (
            d.basic.entropy,
            d.basic.zero_fraction,
            d.basic.similarity_pages,
        )


def test_a_compiled_network_that_disagrees_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    art = load_artifact(_classifier_artifact(tmp_path))
    other = load_artifact(_classifier_artifact(tmp_path / "other", seed=1))
    # the reader handed the weights of another network: the load-time probe rows must catch it
    monkeypatch.setattr(runtime, "dense_from_onnx", lambda _: dense_from_onnx(other.tiers[LIGHT].onnx))
    with caplog.at_level(logging.WARNING, logger="dwcp_selector.modeling.runtime"):
        tier = OnnxTier(art.tiers[LIGHT])
    assert tier.single_row_runtime == "onnxruntime" and tier.dense is None
    assert "differs from onnxruntime" in caplog.text
    vec = [0.1] * tier.width
    assert tier.predict_one(vec) == tier.predict_one_onnxruntime(vec)
    # the decider then builds the light row in Python too, and still decides
    decider = Decider(TieredModel(art))
    assert decider.model[LIGHT].single_row_runtime == "onnxruntime"
    d = decider.decide(b"x" * 100_000, link_from_class("wan"), SystemState(), tier=LIGHT)
    assert d.tier == LIGHT and d.strategy in STRATEGIES


_payloads = st.builds(
    lambda n, k, seed: np.random.default_rng(seed).integers(0, k, n, dtype=np.uint8).tobytes(),
    st.integers(0, 12 * PAGE + 100),
    st.sampled_from([1, 2, 4, 60, 256]),
    st.integers(0, 2**32 - 1),
)
_ratio = st.one_of(st.none(), st.floats(0.0, 2.0), st.just(1e-9))


@settings(max_examples=300, deadline=None)
@given(
    payload=_payloads,
    base_kind=st.sampled_from(["none", "same", "edited", "short", "empty"]),
    ptype=st.sampled_from(["vm_memory", "logs_json", "other", "never-seen"]),
    history=st.fixed_dictionaries({"zstd": _ratio, "lz4": _ratio, "hde": _ratio}),
    capacity=st.floats(1e6, 4e11),
    utilization=st.floats(0.0, 0.95),
    rtt=st.floats(2e-5, 0.5),
    jitter=st.floats(0.0, 0.01),
    loss=st.one_of(st.just(0.0), st.floats(1e-9, 0.2)),
    cores=st.floats(0.5, 64.0),
    active=st.integers(0, 50),
    link_type=st.sampled_from([*LINK_CLASSES, None]),
)
def test_compiled_light_row_is_the_python_row_bit_for_bit(
    payload: bytes,
    base_kind: str,
    ptype: str,
    history: dict[str, float | None],
    capacity: float,
    utilization: float,
    rtt: float,
    jitter: float,
    loss: float,
    cores: float,
    active: int,
    link_type: str | None,
) -> None:
    baseline: bytes | None = {
        "none": None,
        "same": payload,
        "edited": payload[:PAGE] + bytes(b ^ 1 for b in payload[PAGE : 2 * PAGE]) + payload[2 * PAGE :],
        "short": payload[: len(payload) // 3],
        "empty": b"",
    }[base_kind]
    link = LinkState(capacity, rtt, loss, utilization, jitter_s=jitter, link_type=link_type)
    system = SystemState(free_cores=cores, active_transfers=active)
    # a model that knows some types and links only: the others set no one-hot column (or "other")
    spec = FeatureSpec(
        LIGHT,
        payload_types=["vm_memory", "logs_json", "other"],
        link_types=[t for t in LINK_CLASSES if t != "edge"],
        with_link=True,
    )
    row, basic = LightRow(spec, CM).build(payload, baseline, ptype, history, link, system)
    b = basic_features(payload, baseline)
    assert (basic.payload_bytes, basic.has_baseline, basic.baseline_bytes) == (
        b.payload_bytes,
        b.has_baseline,
        b.baseline_bytes,
    )
    assert (basic.entropy, basic.zero_fraction, basic.text_fraction, basic.similarity_pages) == (
        b.entropy,
        b.zero_fraction,
        b.text_fraction,
        b.similarity_pages,
    )
    # the Python light path's own row (``Decider.decide`` builds it with this call when nothing is compiled)
    expected = decision_vector(spec, len(payload), ptype, b, None, link, system, CM, history)
    assert list(row) == expected  # bit for bit: the model must see what training saw


def test_compiled_light_row_refuses_bad_arguments() -> None:
    spec = FeatureSpec(LIGHT, with_link=True)
    width = len(spec.names)
    n_types, n_links = len(spec.payload_types), len(spec.link_types)
    good = [array("d", bytes(8 * width)), b"abc", None, 0, n_types, None, None, None, 1e9, 0.1, 0.01, 0.0]
    good += [0.0, 4.0, 0, 0, n_links, 4194304.0, 1448.0, 64, 1 << 20]
    assert light_row(*good)[3] is None
    for i, bad, error in [
        (0, array("d", bytes(8 * (width - 1))), ValueError),
        (0, b"\0" * (8 * width), BufferError),  # read-only
        (3, n_types, ValueError),
        (15, -2, ValueError),
        (10, 0.0, ValueError),  # no RTT
        (8, "fast", TypeError),
        (1, "text", TypeError),
    ]:
        args = list(good)
        args[i] = bad
        with pytest.raises(error):
            light_row(*args)
    with pytest.raises(TypeError, match="21 arguments"):
        light_row(*good[:-1])
    with pytest.raises(ValueError, match="light tier"):
        LightRow(FeatureSpec(RICH, with_link=True), CM)
