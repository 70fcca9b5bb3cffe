"""The cost model and the oracle, against the formulas of DESIGN section 2 worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp_selector.costmodel import CostModel, CostParams, Oracle, StrategyMeasurement
from dwcp_selector.errors import ConfigError
from dwcp_selector.link import LINK_CLASSES, LinkState, SystemState, link_from_class

MiB = 1 << 20
#: The formula of DESIGN section 2 alone, without the terms measured on real transfers (cost-v2, v3).
BARE = CostParams(
    wire_efficiency=1.0,
    setup_rtts=0.0,
    rtt_in_pipeline=True,
    transfer_overhead_s=0.0,
    stream_overhead_s=0.0,
    send_stack_s_per_byte=0.0,
    recv_stack_s_per_byte=0.0,
    verify_s_per_byte=0.0,
)
CM = CostModel(BARE)


def test_per_stream_rate_window_limited_without_loss() -> None:
    link = LinkState(capacity_bps=10e9, rtt_s=0.01, loss=0.0)
    assert CM.per_stream_bps(link) == pytest.approx(8 * 4 * MiB / 0.01)


def test_per_stream_rate_mathis_with_loss() -> None:
    link = LinkState(capacity_bps=1e9, rtt_s=0.1, loss=1e-3)
    mathis = 8 * 1448 * 1.22 / (0.1 * math.sqrt(1e-3))
    assert CM.per_stream_bps(link) == pytest.approx(mathis)
    # 1 Gbit/s available over streams of ~4.47 Mbit/s each: 224 wanted, clamped to 64
    assert CM.streams(link) == 64
    assert CM.effective_bps(link) == pytest.approx(64 * mathis)


def test_streams_cover_available_bandwidth() -> None:
    link = LinkState(capacity_bps=10e9, rtt_s=0.02, loss=0.0, utilization=0.5)
    r = 8 * 4 * MiB / 0.02
    assert CM.streams(link) == math.ceil(5e9 / r) == 3
    assert CM.effective_bps(link) == pytest.approx(5e9)


def test_transfer_time_pipelined_formula() -> None:
    link = LinkState(capacity_bps=1e9, rtt_s=0.01, loss=0.0)
    m = StrategyMeasurement(compressed_bytes=2 * MiB, encode_s=0.04, decode_s=0.02)
    payload = 8 * MiB  # 8 chunks
    system = SystemState(free_cores=2)
    e, d = 0.04 / 2, 0.02 / 2
    x = 0.01 + 8 * 2 * MiB / 1e9
    assert CM.transfer_time(payload, m, link, system) == pytest.approx(max(e, x, d) + (e + d) / 8)


def test_fractional_cores_slow_the_cpu_stages() -> None:
    link = LinkState(capacity_bps=100e9, rtt_s=0.0001)
    m = StrategyMeasurement(compressed_bytes=1000, encode_s=0.01, decode_s=0.0)
    t = CM.transfer_time(4 * MiB, m, link, SystemState(free_cores=0.5))
    assert t == pytest.approx(0.02 + 0.02 / 4)


def test_empty_payload_counts_as_one_chunk() -> None:
    link = LinkState(capacity_bps=1e9, rtt_s=0.001)
    t = CM.transfer_time(0, StrategyMeasurement(20, 1e-6, 1e-6), link, SystemState(1))
    assert t == pytest.approx(0.001 + 160 / 1e9 + 2e-6)


def test_oracle_ties_go_to_the_earlier_strategy() -> None:
    oracle = Oracle()
    d = oracle.decide({"hde": 1.000, "zstd": 1.009, "lz4": 1.5, "none": 2.0})
    assert d.label == "zstd"
    d = oracle.decide({"hde": 1.000, "zstd": 1.011, "none": 1.0099})
    assert d.label == "none"
    d = oracle.decide({"hde": 1.0, "zstd": 1.2})
    assert d.label == "hde" and d.runner_up_gap == pytest.approx(0.2)


def test_oracle_refuses_unknown_strategies_and_empty_input() -> None:
    with pytest.raises(ConfigError):
        Oracle().decide({"brotli": 1.0})
    with pytest.raises(ConfigError):
        Oracle().decide({})


def test_label_array_matches_decide() -> None:
    rng = np.random.default_rng(0)
    costs = rng.random((500, 4)) + 1
    costs[::7, 3] = np.inf  # hde not offered
    labels = Oracle().label_array(costs)
    names = ["none", "lz4", "zstd", "hde"]
    for row, lab in zip(costs, labels, strict=True):
        offered = {n: float(c) for n, c in zip(names, row, strict=True) if np.isfinite(c)}
        assert names[lab] == Oracle().decide(offered).label


@given(
    payload=st.integers(0, 64 * MiB),
    ratio=st.floats(0.001, 1.2),
    enc=st.floats(0, 1),
    dec=st.floats(0, 1),
    link=st.sampled_from(list(LINK_CLASSES)),
    cores=st.floats(0.5, 32),
    u=st.floats(0, 0.9),
    loss=st.floats(0, 0.03),
    strategy=st.sampled_from([None, "none", "lz4", "zstd", "hde"]),
)
def test_array_path_equals_scalar_path(
    payload: int,
    ratio: float,
    enc: float,
    dec: float,
    link: str,
    cores: float,
    u: float,
    loss: float,
    strategy: str | None,
) -> None:
    ls = link_from_class(link, utilization=u, loss=loss)
    comp = int(payload * ratio)
    f = lambda v: np.array([v], dtype=float)  # noqa: E731
    for cm in (CM, CostModel()):
        scalar = cm.transfer_time(
            payload, StrategyMeasurement(comp, enc, dec), ls, SystemState(cores), strategy
        )
        arr = cm.transfer_time_array(
            f(payload),
            f(comp),
            f(enc),
            f(dec),
            f(ls.capacity_bps),
            f(ls.utilization),
            f(ls.rtt_s),
            f(ls.loss),
            f(cores),
            strategy,
        )
        assert arr[0] == pytest.approx(scalar, rel=1e-12)


def test_link_validation() -> None:
    for bad in (
        dict(capacity_bps=0, rtt_s=0.01),
        dict(capacity_bps=1e9, rtt_s=0),
        dict(capacity_bps=1e9, rtt_s=0.01, loss=1.0),
        dict(capacity_bps=1e9, rtt_s=0.01, utilization=1.0),
        dict(capacity_bps=float("nan"), rtt_s=0.01),
        dict(capacity_bps=1e9, rtt_s=0.01, link_type="moon"),
    ):
        with pytest.raises(ConfigError):
            LinkState(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SystemState(free_cores=0)
    with pytest.raises(ConfigError):
        link_from_class("lan")


def test_typical_links_lie_inside_their_class() -> None:
    for cls in LINK_CLASSES.values():
        t = cls.typical
        assert cls.capacity_bps[0] <= t.capacity_bps <= cls.capacity_bps[1]
        assert cls.rtt_s[0] <= t.rtt_s <= cls.rtt_s[1]
        assert cls.loss[0] <= t.loss <= cls.loss[1]
        assert t.link_type == cls.name
    assert link_from_class("wan", bandwidth_mbps=100).capacity_bps == 100e6


def test_params_fingerprint_changes_with_any_parameter() -> None:
    base = CostParams()
    assert CostParams().fingerprint == base.fingerprint
    assert CostParams(mss_bytes=9000).fingerprint != base.fingerprint
    assert CostParams(tie_tolerance=0.02).fingerprint != base.fingerprint
    assert CostParams(transfer_overhead_s=1e-3).fingerprint != base.fingerprint
    with pytest.raises(ConfigError):
        CostParams(wire_efficiency=1.5)
    with pytest.raises(ConfigError):
        CostParams(verify_s_per_byte=-1.0)
    with pytest.raises(ConfigError):
        CostParams(max_streams=0)


def test_strategies_with_context_decode_on_one_core() -> None:
    link = LinkState(capacity_bps=10e9, rtt_s=0.0002)
    m = StrategyMeasurement(compressed_bytes=MiB, encode_s=0.08, decode_s=0.04)
    payload, system = 8 * MiB, SystemState(free_cores=4)
    x = 0.0002 + 8 * MiB / 10e9
    e = 0.08 / 4
    assert CM.transfer_time(payload, m, link, system, "lz4") == pytest.approx(
        max(e, x, 0.01) + (e + 0.01) / 8
    )
    assert CM.transfer_time(payload, m, link, system, "zstd") == pytest.approx(
        max(e, x, 0.04) + (e + 0.04) / 8
    )
    assert CM.decodes_in_order("hde") and not CM.decodes_in_order("none")
    # half a core is still half a core
    half = SystemState(free_cores=0.5)
    assert CM.transfer_time(payload, m, link, half, "zstd") == pytest.approx(
        max(0.16, x, 0.08) + (0.16 + 0.08) / 8
    )
    costs = CM.costs(payload, {"lz4": m, "zstd": m}, link, system)
    assert costs["zstd"] > costs["lz4"]


def test_the_ordered_strategies_are_the_ones_whose_frames_carry_context() -> None:
    from dwcp_selector.strategies import default_registry

    assert {e.name for e in default_registry() if e.uses_context} == set(CostParams().ordered_decode)


def test_parameters_of_an_older_version_keep_their_fingerprint() -> None:
    # what cost-v1 wrote, before ordered decode existed (the shipped model's manifest holds it)
    v1 = {
        "chunk_size": MiB,
        "max_streams": 64,
        "mss_bytes": 1448,
        "strategy_order": ["none", "lz4", "zstd", "hde"],
        "tie_tolerance": 0.01,
        "version": "cost-v1",
        "window_cap_bytes": 4 * MiB,
    }
    old = CostParams.from_dict(v1)
    assert old.ordered_decode == ()
    assert old.fingerprint == "fb321107037ed603"
    assert CostModel(old).transfer_time(
        8 * MiB, StrategyMeasurement(MiB, 0.0, 0.08), LinkState(1e9, 0.01), SystemState(4), "zstd"
    ) == pytest.approx(max(0.01 + 8 * MiB / 1e9, 0.08 / 4) + 0.02 / 8)  # decoded on 4 cores
    assert CostParams.from_dict(CostParams().to_dict()) == CostParams()
    with pytest.raises(ConfigError, match="unknown"):
        CostParams.from_dict({**v1, "bogus": 1})
    with pytest.raises(ConfigError, match="ordered"):
        CostParams(ordered_decode=("brotli",))


def test_the_terms_measured_on_real_transfers() -> None:
    p = CostParams()
    cm = CostModel(p)
    link = LinkState(capacity_bps=1e9, rtt_s=0.01)
    m = StrategyMeasurement(compressed_bytes=2 * MiB, encode_s=0.04, decode_s=0.02)
    payload, system = 8 * MiB, SystemState(free_cores=2)
    e = (0.04 + p.send_stack_s_per_byte * 2 * MiB) / 2
    d = (0.02 + p.recv_stack_s_per_byte * 2 * MiB) / 2
    x = 8 * 2 * MiB / (p.wire_efficiency * 1e9)
    streams = min(cm.streams(link), 8)
    expected = (
        max(e, x, d)
        + (e + d) / 8
        + (1 + p.setup_rtts) * 0.01
        + p.transfer_overhead_s
        + p.stream_overhead_s * (streams - 1)
        + p.verify_s_per_byte * payload
    )
    assert cm.transfer_time(payload, m, link, system, "lz4") == pytest.approx(expected)
    # the per-transfer terms are the same for every strategy: they never decide the label alone
    none = StrategyMeasurement(payload, 0.0, 0.0)
    costs = cm.costs(payload, {"none": none, "lz4": m}, link, system)
    bare = CM.costs(payload, {"none": none, "lz4": m}, link, system)
    assert costs["none"] > bare["none"] and costs["lz4"] > bare["lz4"]


def test_a_cost_v2_artifact_keeps_its_fingerprint_and_prices_without_the_receiving_stack() -> None:
    v2 = {
        "mss_bytes": 1448,
        "window_cap_bytes": 4194304,
        "chunk_size": 1048576,
        "max_streams": 64,
        "tie_tolerance": 0.01,
        "strategy_order": ["none", "lz4", "zstd", "hde"],
        "ordered_decode": ["zstd", "hde"],
        "wire_efficiency": 0.9564,
        "setup_rtts": 1.0,
        "rtt_in_pipeline": False,
        "transfer_overhead_s": 0.000757,
        "stream_overhead_s": 0.000161,
        "send_stack_s_per_byte": 8 / 22.66e9,
        "verify_s_per_byte": 8 / 235.3e9,
        "version": "cost-v2",
    }
    old = CostParams.from_dict(v2)
    assert old.recv_stack_s_per_byte == 0.0
    assert old.fingerprint == "9f619ce57811d383"
    new = CostParams.from_dict({**v2, "recv_stack_s_per_byte": 8 / 20e9, "version": "cost-v3"})
    assert new.fingerprint != old.fingerprint
    link, system = LinkState(capacity_bps=25e9, rtt_s=1e-4), SystemState(free_cores=1)
    m = StrategyMeasurement(compressed_bytes=8 * MiB, encode_s=0.002, decode_s=0.004)
    t_old = CostModel(old).transfer_time(8 * MiB, m, link, system, "none")
    t_new = CostModel(new).transfer_time(8 * MiB, m, link, system, "none")
    # on a fast link the receiver's core is the slowest stage: its stack's copy of every byte counts
    assert t_new > t_old
    arr = CostModel(new).transfer_time_array(
        *(np.array([v], dtype=np.float64) for v in (8 * MiB, 8 * MiB, 0.002, 0.004, 25e9, 0.0, 1e-4, 0.0, 1)),
        strategy="none",
    )
    assert arr[0] == pytest.approx(t_new)


def test_authentication_is_priced_on_both_ends_per_byte_sent() -> None:
    from dwcp_selector.costmodel import AUTH_S_PER_BYTE

    plain = CostParams(recv_stack_s_per_byte=0.0, send_stack_s_per_byte=0.0)
    assert plain.with_auth("insecure").fingerprint == plain.fingerprint  # the default prices no MAC
    psk = plain.with_auth("psk")
    assert psk.fingerprint != plain.fingerprint and psk.auth_s_per_byte == AUTH_S_PER_BYTE["psk"] > 0
    # one core and a slow encoder: the CPU stages dominate, and the MAC is paid on every byte sent
    link, one = LinkState(capacity_bps=100e9, rtt_s=1e-4, loss=0.0), SystemState(free_cores=1.0)
    raw = StrategyMeasurement(compressed_bytes=MiB, encode_s=1.0, decode_s=0.0)
    small = StrategyMeasurement(compressed_bytes=MiB // 4, encode_s=1.0, decode_s=0.0)
    extra = [
        CostModel(psk).transfer_time(MiB, m, link, one) - CostModel(plain).transfer_time(MiB, m, link, one)
        for m in (raw, small)
    ]
    # max(E, X, D) + (E + D)/m with m = 1: E and D each grow by α·S_s, so 3·α·S_s in all
    assert extra[0] == pytest.approx(3 * psk.auth_s_per_byte * MiB)
    assert extra[1] == pytest.approx(extra[0] / 4)
    with pytest.raises(ConfigError, match="unknown AMST security mode"):
        plain.with_auth("rot13")
