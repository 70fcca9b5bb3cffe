"""The namespace testbed (bench/testbed.py): a real AMST transfer over a veth pair shaped by tbf.

Skipped, saying why, where network namespaces cannot be made (no root, no CAP_NET_ADMIN, no veth or tbf);
where they can, it runs, in CI too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import testbed  # noqa: E402  (a bench module, not a package)
from _common import stdlib_tar  # noqa: E402

RATE = 50e6
SIZE = 1 << 20


@pytest.fixture(scope="module")
def netns() -> None:
    ok, why = testbed.netns_available()
    if not ok:
        pytest.skip(why)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_shaped_transfer_is_verified_and_takes_the_link_time(netns: None, tmp_path: Path) -> None:
    payload = tmp_path / "stdlib.tar"
    data = stdlib_tar(SIZE)
    assert len(data) == SIZE, "the standard library is smaller than the payload"
    payload.write_bytes(data)
    with testbed.Testbed(RATE, log_dir=tmp_path) as bed:
        names = (bed.sender_ns, bed.receiver_ns)
        assert bed.exists()
        assert bed.qdisc_stats()["kind"] == "tbf"
        bed.load("stdlib", payload)
        times = []
        for _ in range(3):
            r = bed.transfer("stdlib", "none", 1)
            assert r["rx_verified"], "the receiver's payload differs from the file"
            assert r["wire_bytes"] >= SIZE
            times.append(r["elapsed_s"])
    ideal = 8.0 * SIZE / RATE
    t = sorted(times)[1]
    assert 0.7 * ideal <= t <= 2.0 * ideal, f"{t * 1e3:.1f} ms for {ideal * 1e3:.1f} ms of link time"
    assert not bed.exists()
    present = set(testbed.list_namespaces())
    assert not present.intersection(names)


def test_burst_holds_a_tick_of_rate_and_a_gso_packet() -> None:
    assert testbed.tbf_burst_bytes(50e6) == 64 << 10
    assert testbed.tbf_burst_bytes(1e9) == 500_000
    args = testbed.tbf_args(200e6)
    assert args[:3] == ["tbf", "rate", "200000000bit"] and "latency" in args


def test_predict_reproduces_the_cost_model() -> None:
    from dwcp_selector.costmodel import CostModel, CostParams, StrategyMeasurement
    from dwcp_selector.link import LinkState, SystemState

    link = LinkState(capacity_bps=200e6, rtt_s=80e-6, loss=0.0)
    meas = StrategyMeasurement(3 << 20, 0.02, 0.01)
    row = {
        "payload_bytes": 10 << 20,
        "compressed_bytes": meas.compressed_bytes,
        "encode_s": meas.encode_s,
        "decode_s": meas.decode_s,
        "rtt_s": link.rtt_s,
        "effective_bps": CostModel().effective_bps(link),
        "free_cores": 1.0,
        "shaped": True,
        "burst_bytes": 64 << 10,
        "streams": 1,
    }
    official = CostModel().transfer_time(10 << 20, meas, link, SystemState(free_cores=1))
    assert testbed.predict(row, **testbed.model_kwargs()) == pytest.approx(official, rel=1e-12)
    bare = CostParams.from_dict({"version": "cost-v1"})  # the formula before the measured terms
    formula = CostModel(bare).transfer_time(10 << 20, meas, link, SystemState(free_cores=1))
    assert testbed.predict(row) == pytest.approx(formula, rel=1e-12)
    slower = testbed.predict(row, wire_efficiency=0.95, overhead_s=1e-3, rtt_factor=1.0)
    assert slower == pytest.approx(formula + 8.0 * (3 << 20) / 200e6 * (1 / 0.95 - 1) + 1e-3 + 80e-6)
