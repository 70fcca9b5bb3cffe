"""Staging workload and collection: deterministic plans and bytes, leakage-free records, both stores."""

from __future__ import annotations

import datetime as dt
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from dwcp_selector.costmodel import CostModel, Oracle, StrategyMeasurement
from dwcp_selector.link import LINK_CLASSES, LinkState, SystemState
from dwcp_selector.strategies import PayloadCodec
from dwcp_selector.telemetry.schema import COLUMN_NAMES, FEATURE_COLUMNS
from dwcp_selector.telemetry.staging import collect, records_for_transfer
from dwcp_selector.telemetry.store import open_store
from dwcp_selector.workload.corpus import Corpus
from dwcp_selector.workload.links import draw_link, draw_system
from dwcp_selector.workload.payloads import default_pools
from dwcp_selector.workload.staging import ScenarioMix, plan_sessions, session_transfers

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SMALL = ScenarioMix(max_bytes=256 * 1024, draws_per_payload=4)


def test_plan_is_a_function_of_the_seed() -> None:
    a = plan_sessions(7, 200, SMALL, START)
    assert a == plan_sessions(7, 200, SMALL, START)
    assert a != plan_sessions(8, 200, SMALL, START)
    assert sum(s.versions for s in a) == 200
    assert {s.kind for s in a} == set(SMALL.sessions)
    assert all(SMALL.min_bytes <= s.size <= SMALL.max_bytes for s in a)


def test_two_seeds_never_share_a_session_name() -> None:
    # a fleet's store holds several hosts' collections; the split keeps a name's records together, so a
    # name must mean one session's payloads: the same seed and index, not just the same kind and index
    a, b = plan_sessions(7, 200, SMALL, START), plan_sessions(8, 200, SMALL, START)
    assert not {s.session_id for s in a} & {s.session_id for s in b}
    assert [s.session_id for s in a] == [s.session_id for s in plan_sessions(7, 200, SMALL, START)]
    pools = default_pools(0)
    groups = [t.payload_group_id for s in (a[0], b[0]) for t in session_transfers(s, s.seed, pools)]
    assert len(set(groups)) == len(groups)


def test_session_bytes_are_a_function_of_seed_and_index() -> None:
    pools = default_pools(0)
    for session in plan_sessions(3, 60, SMALL, START)[:12]:
        first = list(session_transfers(session, 3, pools))
        second = list(session_transfers(session, 3, pools))
        assert [t.payload for t in first] == [t.payload for t in second]
        for prev, t in zip(first, first[1:], strict=False):
            assert t.ts > prev.ts
            if t.baseline is not None and t.payload_type != "database_wal":
                assert t.baseline in (prev.payload, first[0].payload) or t.payload_type == "database"


def test_link_draws_stay_inside_their_class() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        link = draw_link(rng, {"dc": 1, "metro": 1, "wan": 1, "edge": 1})
        cls = LINK_CLASSES[link.link_type or ""]
        assert cls.capacity_bps[0] <= link.capacity_bps <= cls.capacity_bps[1]
        assert cls.rtt_s[0] <= link.rtt_s <= cls.rtt_s[1]
        assert cls.loss[0] <= link.loss <= cls.loss[1]
        system = draw_system(rng)
        assert 0.5 <= system.free_cores <= 32


def test_records_keep_features_apart_from_outcomes() -> None:
    pools = default_pools(0)
    session = next(s for s in plan_sessions(11, 100, SMALL, START) if s.kind == "vm" and s.versions > 1)
    codec = PayloadCodec()
    history: dict[str, float | None] = {}
    transfers = list(session_transfers(session, 11, pools))
    first = records_for_transfer(
        transfers[0],
        seed=11,
        payload_index=0,
        draws=4,
        mix=SMALL,
        codec=codec,
        cost_model=CostModel(),
        history=history,
    )
    second = records_for_transfer(
        transfers[1],
        seed=11,
        payload_index=1,
        draws=4,
        mix=SMALL,
        codec=codec,
        cost_model=CostModel(),
        history=history,
    )
    for rec in first + second:
        assert set(rec) == set(COLUMN_NAMES)
    # payload features are the same for every draw; link features vary
    payload_features = [
        c
        for c in FEATURE_COLUMNS
        if not c.startswith(("f_link", "f_cap", "f_util", "f_rtt", "f_jit", "f_loss", "f_free", "f_act"))
    ]
    for rec in first[1:]:
        assert all(rec[c] == first[0][c] for c in payload_features if not c.endswith("_s"))
    assert len({r["f_capacity_bps"] for r in first}) == 4
    # the first version has no history; the second sees the first one's outcomes
    assert first[0]["f_prev_zstd_ratio"] is None
    assert second[0]["f_prev_zstd_ratio"] == pytest.approx(
        first[0]["o_zstd_bytes"] / first[0]["f_payload_bytes"]
    )
    assert second[0]["f_has_baseline"] and second[0]["o_hde_bytes"] is not None
    # the label is the oracle's choice on the stored costs
    for rec in first + second:
        costs = {
            s: rec[f"cost_{s}_s"] for s in ("none", "lz4", "zstd", "hde") if rec[f"cost_{s}_s"] is not None
        }
        assert Oracle().decide(costs).label == rec["oracle_label"]
        link = LinkState(rec["f_capacity_bps"], rec["f_rtt_s"], rec["f_loss"], rec["f_utilization"])
        m = StrategyMeasurement(rec["o_zstd_bytes"], rec["o_zstd_encode_s"], rec["o_zstd_decode_s"])
        expected = CostModel().transfer_time(
            rec["f_payload_bytes"], m, link, SystemState(rec["f_free_cores"]), "zstd"
        )
        assert rec["cost_zstd_s"] == pytest.approx(expected, rel=1e-12)


def test_collect_into_sqlite_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/staging.db"
    mix = ScenarioMix(max_bytes=128 * 1024, draws_per_payload=4)
    report = collect(url, 203, 5, mix=mix, start=START)
    assert report.records == 203 and report.inserted == 203
    again = collect(url, 203, 5, mix=mix, start=START)
    assert again.records == 203 and again.inserted == 0  # same ids: nothing new
    with open_store(url) as store:
        table = store.read_table()
    assert table.num_rows == 203
    ids = table.column("request_id").to_pylist()
    assert len(set(ids)) == 203
    # every record names the host that measured it (workers=1 here, 2 in the PostgreSQL test)
    from dwcp_selector.hostprofile import load_or_calibrate

    here = load_or_calibrate()
    assert here is not None and report.host_profile is not None
    assert set(table.column("host_profile_id").to_pylist()) == {here.profile_id}
    assert table.column("f_host_zstd_encode_bps").to_pylist()[0] == here.encode_bps["zstd"]
    assert here.key.cpu_model in table.column("host_cpu").to_pylist()[0]
    other = tmp_path / "other.db"
    collect(f"sqlite:///{other}", 203, 5, mix=mix, start=START)
    with open_store(f"sqlite:///{other}") as store:
        other_table = store.read_table(["request_id", "f_payload_bytes", "f_entropy", "f_capacity_bps"])
    mine = table.select(["request_id", "f_payload_bytes", "f_entropy", "f_capacity_bps"]).sort_by(
        "request_id"
    )
    assert other_table.sort_by("request_id").equals(mine)  # everything but timings is the seed's


def test_collect_into_postgres_uses_the_same_path(pg_url: str) -> None:
    mix = ScenarioMix(max_bytes=64 * 1024, draws_per_payload=3)
    report = collect(pg_url, 90, 9, mix=mix, start=START, workers=2)
    assert report.records == 90
    with open_store(pg_url) as store:
        assert store.count() == 90
        hosts = store.read_table(["host_profile_id", "f_host_lz4_decode_bps"])
        assert hosts.column("host_profile_id").null_count == 0  # the spawned workers carry it too
        assert min(hosts.column("f_host_lz4_decode_bps").to_pylist()) > 0
        days = store.days()
        assert sum(days.values()) == 90
        assert set(days) <= set(store.partitions())  # one partition per day of data


def test_corpus_sessions_use_real_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("json/decoder.py", "json/encoder.py", "typing.py", "argparse.py"):
        shutil.copy(stdlib / name, corpus / name.replace("/", "_"))
    c = Corpus(corpus)
    assert len(c) == 4
    url = f"sqlite:///{tmp_path}/c.db"
    collect(url, 160, 2, corpus=corpus, mix=ScenarioMix(max_bytes=200_000, corpus_share=0.6), start=START)
    with open_store(url) as store:
        types = set(store.read_table(["f_payload_type"]).column("f_payload_type").to_pylist())
    assert "corpus" in types


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    from dwcp_selector.errors import ConfigError

    with pytest.raises(ConfigError, match="no readable file"):
        collect(f"sqlite:///{tmp_path}/x.db", 10, 1, corpus=tmp_path)


def test_collect_stamps_each_record_with_a_profile_younger_than_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwcp_selector.hostprofile import HostProfile, load_or_calibrate

    monkeypatch.setenv("DWCP_PROFILE_DIR", str(tmp_path / "profiles"))
    here = load_or_calibrate(budget_s=2.0)
    assert here is not None
    stale = HostProfile.from_dict({**here.to_dict(), "measured_at": "2026-01-01T00:00:00+00:00"})
    mix = ScenarioMix(max_bytes=32 * 1024, draws_per_payload=2)
    kept = collect(
        f"sqlite:///{tmp_path / 'a.db'}",
        20,
        3,
        mix=mix,
        start=START,
        host_profile=stale,
        profile_every_s=None,
    )
    assert kept.to_dict()["host_profiles"] == 1 and kept.host_profiles == {stale.profile_id}
    fresh = collect(
        f"sqlite:///{tmp_path / 'b.db'}",
        20,
        3,
        mix=mix,
        start=START,
        host_profile=stale,
        profile_every_s=3_600,
    )
    # the stale profile was measured again before the first session: no record carries it
    assert len(fresh.host_profiles) == 1 and stale.profile_id not in fresh.host_profiles
    with open_store(f"sqlite:///{tmp_path / 'b.db'}") as store:
        ids = set(store.read_table(["host_profile_id"]).column("host_profile_id").to_pylist())
    assert ids == fresh.host_profiles


def test_payloads_of_a_chunk_or_more_are_measured_in_interleaved_rounds() -> None:
    from dwcp_selector.measure import default_repeats, measure_strategies, measure_strategy

    codec = PayloadCodec()
    payload = b"".join(b"record %08d: status=ok latency_ms=%d\n" % (i, i % 97) for i in range(60_000))
    assert len(payload) > 1 << 20 and default_repeats(len(payload)) == 3
    assert default_repeats(64 << 20) == 2 and default_repeats(512 << 10) == 5
    runs = measure_strategies(codec, payload, ["none", "lz4", "zstd"])
    assert set(runs) == {"none", "lz4", "zstd"}
    assert all(r.roundtrip and r.repeats == 3 and r.encode_s > 0 for r in runs.values())
    assert (
        runs["zstd"].compressed_bytes == measure_strategy(codec, payload, "zstd", repeats=1).compressed_bytes
    )
