"""The transfer manager on real AMST transfers over loopback: decisions, achieved outcomes, shadow mode and
audit samples landing in SQLite and PostgreSQL; the model file, Redis and the telemetry store killed
mid-run, every transfer completing and every fallback counted by reason."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dwcp_selector.dataset.quality import assess
from dwcp_selector.hostprofile import HostProfile, load_or_calibrate
from dwcp_selector.link import LinkState, SystemState
from dwcp_selector.serving import GuardedSelector, Selector
from dwcp_selector.serving.cache import DecisionCache
from dwcp_selector.serving.registry import ModelRegistry, content_id
from dwcp_selector.serving.transfer import TransferManager, link_class, spread_sample
from dwcp_selector.strategies import Baseline
from dwcp_selector.strategies.baseline import BaselineStore
from dwcp_selector.telemetry import TelemetryCollector
from dwcp_selector.telemetry.schema import QualityFlag
from dwcp_selector.telemetry.store import open_store
from dwcp_selector.transport import AmstReceiver, AmstSender, Insecure

from .conftest import edited
from .test_cache import _free_port, _start_redis
from .test_collector import Relay

MODEL = Path(__file__).resolve().parents[1] / "models" / "selector"
FAST_LINK = LinkState(capacity_bps=10e9, rtt_s=1e-4, link_type="dc")
SLOW_LINK = LinkState(capacity_bps=50e6, rtt_s=40e-3, loss=1e-4, link_type="wan")
NODE = SystemState(free_cores=2.0)


@pytest.fixture
def insecure_pair() -> Iterator[tuple[AmstReceiver, AmstSender]]:
    with pytest.warns(Warning):
        rx_sec, tx_sec = Insecure(), Insecure()
    rx = AmstReceiver(security=rx_sec, baselines=BaselineStore())
    rx.start()
    try:
        yield rx, AmstSender(rx.address, security=tx_sec)
    finally:
        rx.close()


def _payloads(real_files: dict[str, Path]) -> list[tuple[str, bytes, str]]:
    """(resource, bytes, payload type): real files of several kinds and a page-structured memory image."""
    pick = {
        "text:logs.json": "logs_json",
        "database:inventory.sqlite": "database",
        "random:random.bin": "encrypted",
        "compressed:sources.gz": "archive",
    }
    out = [(name, real_files[name].read_bytes(), kind) for name, kind in pick.items()]
    elf = next(k for k in real_files if k.startswith("elf:"))
    out.append((elf, real_files[elf].read_bytes()[: 2 << 20], "other"))
    rng = np.random.default_rng(1)
    pages = rng.integers(0, 256, (512, 4096), dtype=np.uint8)
    pages[::3] = 0
    out.append(("vm-1", pages.tobytes(), "vm_memory"))
    return out


def _selector(model: Path = MODEL, profile: HostProfile | None = None) -> GuardedSelector:
    return GuardedSelector(Selector(model, host_profile=profile))


@pytest.fixture(scope="module")
def host() -> HostProfile:
    """This host's speed profile (cached; measured once, about 5 s, on a host without one)."""
    profile = load_or_calibrate()
    assert profile is not None
    return profile


def _rows(url: str) -> list[dict[str, object]]:
    with open_store(url) as store:
        return store.read_table().to_pylist()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_transfers_land_with_achieved_outcomes(
    backend: str,
    insecure_pair: tuple[AmstReceiver, AmstSender],
    real_files: dict[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    host: HostProfile,
) -> None:
    rx, tx = insecure_pair
    url = f"sqlite:///{tmp_path / 't.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    collector = TelemetryCollector(url, enabled=True, flush_interval_s=0.05)
    manager = TransferManager(
        tx, _selector(profile=host), collector=collector, audit_rate=0.0, host_profile=host
    )
    results = {}
    payloads = _payloads(real_files)
    for i, (resource, data, kind) in enumerate(payloads):
        link = FAST_LINK if i % 2 else SLOW_LINK
        r = manager.send(data, link, NODE, payload_type=kind, resource_id=resource)
        assert r.report is not None and bytes(rx.wait(r.report.transfer_id).data) == data
        results[r.request_id] = (r, data, link)
    # a new version of the memory image, against the one the receiver now holds
    old = payloads[-1][1]
    new = edited(old, seed=5)
    r = manager.send(
        new,
        SLOW_LINK,
        NODE,
        baseline=Baseline("vm-1", old),
        payload_type="vm_memory",
        resource_id="vm-1",
        version=1,
    )
    assert r.report is not None and bytes(rx.wait(r.report.transfer_id).data) == new
    results[r.request_id] = (r, new, SLOW_LINK)
    assert collector.close()
    rows = {row["request_id"]: row for row in _rows(url)}
    assert set(rows) == set(results)
    version = content_id(MODEL)
    for rid, (res, data, link) in results.items():
        row = rows[rid]
        assert res.report is not None
        assert row["source"] == "production" and row["oracle_label"] is None
        assert row["used_strategy"] == res.strategy == res.report.strategy
        assert row["used_wire_bytes"] == res.report.wire_bytes > 0
        assert 0 < row["used_send_s"] <= row["used_time_s"] == pytest.approx(res.time_s)
        assert row["used_decode_s"] is not None and 0 < row["used_decode_s"] < row["used_send_s"]
        assert row["used_encode_s"] is not None and row["used_encode_s"] >= 0
        assert row["used_error"] is None and row["f_payload_bytes"] == len(data)
        assert row["decision_s"] == pytest.approx(res.decision.latency_s)
        assert row["used_tier"] == res.decision.tier
        assert row["f_link_type"] == link.link_type and row["o_streams"] == res.report.streams
        if res.decision.fallback is None:
            assert row["model_version"] == version and row["fallback_reason"] is None
    second = rows[r.request_id]
    assert second["f_has_baseline"] and second["version"] == 1
    # the first version's achieved ratio is the second's moving-average feature, when it was compressed
    first = next(v for v in results.values() if v[1] is old)
    if first[0].strategy in ("zstd", "lz4", "hde"):
        assert second[f"f_prev_{first[0].strategy}_ratio"] is not None
    # the data checks read the transfer path's rows without counting their absent labels as missing
    with open_store(url) as store:
        report = assess(store.read_table())
    assert report.components["consistency"] == 1.0
    assert report.missing_share < 0.05


def test_shadow_mode_acts_on_the_heuristic_and_logs_the_candidate(
    insecure_pair: tuple[AmstReceiver, AmstSender], real_files: dict[str, Path], tmp_path: Path
) -> None:
    rx, tx = insecure_pair
    url = f"sqlite:///{tmp_path / 's.db'}"
    collector = TelemetryCollector(url, enabled=True, flush_interval_s=0.05)
    candidate = _selector()
    manager = TransferManager(
        tx, None, collector=collector, shadow=candidate, audit_rate=0.0, host_profile=None
    )
    results = [
        manager.send(data, SLOW_LINK, NODE, payload_type=kind, resource_id=res)
        for res, data, kind in _payloads(real_files)
    ]
    assert collector.close()
    rows = {row["request_id"]: row for row in _rows(url)}
    for r in results:
        row = rows[r.request_id]
        assert r.shadow is not None
        assert row["source"] == "shadow" and row["used_tier"] == "heuristic"
        assert row["fallback_reason"] is None and row["model_version"] is None  # the heuristic acted
        assert row["used_strategy"] == r.strategy and row["shadow_strategy"] == r.shadow.strategy
        assert r.shadow.fallback is None and row["shadow_model_version"] == content_id(MODEL)
    # the candidate disagrees with the heuristic somewhere on these payloads (else shadow shows nothing)
    assert any(rows[r.request_id]["shadow_strategy"] != r.strategy for r in results)


def test_audit_samples_record_the_oracle_label(
    insecure_pair: tuple[AmstReceiver, AmstSender], real_files: dict[str, Path], tmp_path: Path
) -> None:
    rx, tx = insecure_pair
    url = f"sqlite:///{tmp_path / 'a.db'}"
    collector = TelemetryCollector(url, enabled=True, flush_interval_s=0.05)
    manager = TransferManager(
        tx, _selector(), collector=collector, audit_rate=1.0, audit_max_bytes=512 << 10, host_profile=None
    )
    results = [
        manager.send(data, SLOW_LINK, NODE, payload_type=kind, resource_id=res)
        for res, data, kind in _payloads(real_files)
    ]
    assert all(r.audited for r in results)
    manager.close()
    assert manager.audits.done == len(results) and manager.audits.failed == 0
    assert collector.close()
    rows = _rows(url)
    audits = {row["parent_request_id"]: row for row in rows if row["source"] == "audit"}
    assert set(audits) == {r.request_id for r in results}
    for r in results:
        a = audits[r.request_id]
        size = a["f_payload_bytes"]
        assert a["oracle_label"] in ("none", "lz4", "zstd", "hde") and a["oracle_cost_s"] > 0
        assert a["used_strategy"] == r.strategy  # the audit prices what the transfer did beside the best
        # the oracle takes the simpler strategy within its 1 % tie band, so the best may be 1 % below it
        assert a[f"cost_{r.strategy}_s"] >= a["oracle_cost_s"] * 0.99
        assert bool(a["quality_flags"] & QualityFlag.SAMPLED) == (size > 512 << 10)
        assert a["o_none_bytes"] >= size  # the raw frame of the (scaled) sample
    with open_store(url) as store:
        report = assess(store.read_table())
    assert report.components["consistency"] == 1.0


def test_audit_rate_is_a_reproducible_share_and_the_queue_is_bounded(
    insecure_pair: tuple[AmstReceiver, AmstSender], tmp_path: Path
) -> None:
    _, tx = insecure_pair
    m = TransferManager(tx, None, audit_rate=0.01, host_profile=None)
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(20000)]
    share = sum(m._audit_this(i) for i in ids) / len(ids)
    assert 0.008 < share < 0.012 and m._audit_this(ids[5]) == m._audit_this(ids[5])
    collector = TelemetryCollector(f"sqlite:///{tmp_path / 'q.db'}", enabled=True)
    m = TransferManager(
        tx,
        None,
        collector=collector,
        audit_rate=1.0,
        audit_max_bytes=1 << 20,
        audit_queue_bytes=1 << 20,
        host_profile=None,
    )
    data = os.urandom(3 << 20)
    record = {"request_id": "r"}
    # one audit fills the queue's byte budget: the next ones, made while it is measured, are dropped
    kept = [m._queue_audit(dict(record), data, None, FAST_LINK, NODE, "other") for _ in range(6)]
    assert kept[0] and not any(kept[1:])
    assert m.audits.dropped_full == 5 and m.audits.queued == 1
    m.close()
    assert m.audits.done == 1 and m.audits.failed == 0
    collector.close()


def test_sampling_and_link_class() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    sample, base, sampled = spread_sample(data, data, 64 << 10)
    assert sampled and len(sample) == 64 << 10 and base == sample
    whole, none, sampled = spread_sample(data, None, 2 << 20)
    assert not sampled and whole == data and none is None
    assert link_class(LinkState(capacity_bps=40e9, rtt_s=2e-4)) == "dc"
    assert link_class(LinkState(capacity_bps=20e6, rtt_s=50e-3)) == "edge"


def test_model_redis_and_store_killed_mid_run_every_transfer_completes(
    insecure_pair: tuple[AmstReceiver, AmstSender], tmp_path: Path, pg_url: str
) -> None:
    """The model file destroyed, our own Redis killed and the PostgreSQL store cut, each mid-run: every
    transfer arrives verified, the heuristic decides where the model cannot, fallbacks are counted by
    reason, no transfer waits on Redis beyond its budget, and the records reach the store once it is back."""
    rx, tx = insecure_pair
    registry = ModelRegistry(tmp_path / "registry", create=True)
    registry.register(MODEL, alias="champion", why="test")
    model_dir = registry.path("champion")
    port = _free_port()
    redis = [_start_redis(port, tmp_path)]
    relay = Relay(("127.0.0.1", 5432))
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    open_store(url).close()  # the schema exists before the cut
    collector = TelemetryCollector(url, enabled=True, flush_interval_s=0.05, spill_path=tmp_path / "spill")
    budget = 0.005
    cache = DecisionCache(f"redis://127.0.0.1:{port}/0", namespace="t", budget_s=budget, retry_s=0.2)
    guarded = GuardedSelector(Selector(model_dir, host_profile=None), cache=cache)
    manager = TransferManager(
        tx, guarded, collector=collector, audit_rate=0.0, host_profile=None, cache=cache
    )
    rng = np.random.default_rng(3)
    text = b"".join(b"line %d of a log %s\n" % (i, b"x" * (i % 40)) for i in range(60000))
    done: list[str] = []
    decisions = []

    def transfers(n: int, sel: GuardedSelector | None = None) -> None:
        m = (
            manager
            if sel is None
            else TransferManager(tx, sel, collector=collector, host_profile=None, cache=cache)
        )
        for _ in range(n):
            data = text[int(rng.integers(0, 1000)) :]
            r = m.send(data, SLOW_LINK, NODE, payload_type="logs_json", resource_id=f"log-{len(done)}")
            assert r.report is not None and bytes(rx.wait(r.report.transfer_id).data) == data
            done.append(r.request_id)
            decisions.append(r.decision)

    try:
        transfers(4)
        # 1. Redis dies: lookups give up within the budget, the outage is counted, transfers go on
        redis[0].kill()
        redis[0].wait(10)
        manager.cache_wait_max_s = 0.0
        transfers(4)
        assert cache.redis_errors >= 1 and cache.stats()["redis_down"]
        # each Redis call gives up within its budget (plus scheduling slack on a loaded 2-core host)
        assert manager.cache_wait_max_s < 3 * budget + 0.02, manager.cache_wait_max_s
        # 2. the telemetry store goes away: transfers never wait for it, records wait in the spill
        relay.down()
        transfers(4)
        # 3. the model file is destroyed: the running selector keeps its verified model in memory and
        #    refuses to reload; a node started now decides on the heuristic, counting why
        onnx = next(model_dir.glob("*.onnx"))
        onnx.write_bytes(b"\0" * 64)
        with pytest.raises(Exception):  # noqa: B017 - any typed load error: the point is it is refused
            guarded.selector.reload(model_dir)  # type: ignore[union-attr]
        transfers(2)
        restarted = GuardedSelector(None, registry=registry, cache=cache)
        assert restarted.selector is None and restarted.load_error
        transfers(3, restarted)
        assert all(d.fallback == "model_unavailable" for d in decisions[-3:])
        count = restarted.metrics.registry.get_sample_value(
            "dwcp_selector_fallbacks_total", {"reason": "model_unavailable"}
        )
        assert count == 3
        shutil.rmtree(model_dir)
        gone = GuardedSelector(None, registry=registry)
        transfers(1, gone)
        assert decisions[-1].fallback == "model_unavailable"
        # Redis and the store come back
        redis.append(_start_redis(port, tmp_path))
        relay.up()
        assert collector.close(timeout=60)
    finally:
        relay.down()
        for p in redis:
            with_kill(p)
    assert len(done) == 18
    relay.up()
    try:
        rows = {row["request_id"]: row for row in _rows(url)}
    finally:
        relay.down()
    assert set(done) <= set(rows)
    assert [rows[i]["fallback_reason"] for i in done[-4:]] == ["model_unavailable"] * 4


def with_kill(p: subprocess.Popen[bytes]) -> None:
    try:
        os.kill(p.pid, signal.SIGCONT)
    except OSError:
        pass
    p.kill()
    p.wait(10)


def test_audits_of_versions_with_a_longer_or_shorter_baseline_finish(
    insecure_pair: tuple[AmstReceiver, AmstSender], tmp_path: Path
) -> None:
    """The queue's byte budget is returned whole however payload and baseline sizes differ (a resource
    that grew or shrank between versions), so waiting for audits ends."""
    _, tx = insecure_pair
    collector = TelemetryCollector(f"sqlite:///{tmp_path / 'b.db'}", enabled=True)
    m = TransferManager(
        tx, None, collector=collector, audit_rate=1.0, audit_max_bytes=256 << 10, host_profile=None
    )
    old = os.urandom(600 << 10)
    for new in (old[: 100 << 10], old + os.urandom(300 << 10), old[:1000]):
        base = Baseline("r", old)
        r = m.send(new, FAST_LINK, NODE, baseline=base, resource_id="r")
        assert r.audited
        old = new
    assert m.wait_audits(60) and m._audit_bytes == 0
    m.close()
    assert m.audits.done == 3 and m.audits.failed == 0
    collector.close()
