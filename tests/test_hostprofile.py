"""Host speed profiles: measured on this host, bounded in time, cached by host key, never a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dwcp_selector.errors import ConfigError
from dwcp_selector.hostprofile import (
    HOST_FEATURE_STRATEGIES,
    HostProfile,
    calibrate_host,
    host_key,
    host_vector,
    load_or_calibrate,
)


@pytest.fixture(scope="module")
def profile() -> HostProfile:
    return calibrate_host(budget_s=4.0)


def test_calibration_measures_every_strategy_within_its_budget(profile: HostProfile) -> None:
    assert profile.key == host_key()
    assert profile.rounds >= 3
    assert profile.calibration_s <= 10.0
    for s in HOST_FEATURE_STRATEGIES:
        assert profile.encode_bps[s] > 1e6 and profile.decode_bps[s] > 1e6
    # what every host of this kind shows: lz4 encodes faster than zstd, and decoding beats encoding
    assert profile.encode_bps["lz4"] > profile.encode_bps["zstd"]
    assert profile.decode_bps["zstd"] > profile.encode_bps["zstd"]
    assert profile.python_ops_s > 1e5
    assert set(profile.features()) == {
        *(f"host_{s}_{d}_bps" for s in HOST_FEATURE_STRATEGIES for d in ("encode", "decode")),
        "host_python_ops_s",
    }


def test_the_python_workload_in_pieces_does_the_work_of_one_run() -> None:
    from dwcp_selector.hostprofile import _PY_OPS, _PY_PIECES, _PythonWorkload

    whole = _PythonWorkload().run(0, _PY_OPS)
    work = _PythonWorkload()
    step = _PY_OPS // _PY_PIECES
    pieces = [work.run(j * step, (j + 1) * step) for j in range(_PY_PIECES)]
    assert pieces[-1] == whole and step * _PY_PIECES == _PY_OPS
    assert len(set(pieces)) > 1  # each piece carries on from the last, none starts afresh


def test_time_factors_compare_two_hosts(profile: HostProfile) -> None:
    assert all(f == pytest.approx(1.0) for f in profile.time_factors(profile).values())
    d = profile.to_dict()
    d["encode_bps"] = {k: v / 2 for k, v in d["encode_bps"].items()}
    slower = HostProfile.from_dict(d)
    assert slower.time_factors(profile)["zstd_encode"] == pytest.approx(2.0)
    assert slower.time_factors(profile)["zstd_decode"] == pytest.approx(1.0)
    assert slower.profile_id != profile.profile_id
    assert slower.profile_id.split("-")[0] == profile.key.key_id


def test_profiles_round_trip_and_bad_ones_are_refused(profile: HostProfile, tmp_path: Path) -> None:
    path = profile.save(tmp_path / "p.json")
    assert HostProfile.load(path) == profile
    for bad in ("{", "[]", json.dumps({"version": 1}), json.dumps({**profile.to_dict(), "version": 99})):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            HostProfile.load(path)
    d = profile.to_dict()
    d["encode_bps"] = {**d["encode_bps"], "zstd": -1.0}
    with pytest.raises(ConfigError, match="positive"):
        HostProfile.from_dict(d)
    with pytest.raises(ConfigError):
        HostProfile.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="budget"):
        calibrate_host(budget_s=0)


def test_the_cache_measures_once_per_host_key(profile: HostProfile, tmp_path: Path) -> None:
    assert load_or_calibrate(tmp_path, measure=False) is None
    first = load_or_calibrate(tmp_path, budget_s=2.0)
    assert first is not None and first.key == host_key()
    t0 = time.perf_counter()
    again = load_or_calibrate(tmp_path)
    assert again == first and time.perf_counter() - t0 < 0.5  # read, not measured
    cached = tmp_path / f"{host_key().key_id}.json"
    cached.write_text("not json")
    with pytest.warns(RuntimeWarning, match="ignored"):
        remeasured = load_or_calibrate(tmp_path, budget_s=2.0)
    assert remeasured is not None and HostProfile.load(cached) == remeasured


def test_an_unwritable_cache_keeps_the_profile_in_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the cache directory would go")
    with pytest.warns(RuntimeWarning, match="not cached"):
        got = load_or_calibrate(blocked / "profiles", budget_s=2.0)
    assert got is not None and got.key == host_key()


def test_a_host_is_compared_with_the_models_training_hosts(profile: HostProfile) -> None:
    from dwcp_selector.hostprofile import compare_to_training_hosts

    same = [{"host_cpu": "x", "rates": profile.features()}]
    report = compare_to_training_hosts(profile, same)
    assert report["warnings"] == [] and all(r == pytest.approx(1.0) for r in report["ratios"].values())
    slow = [{"host_cpu": "fast", "rates": {k: 3 * v for k, v in profile.features().items()}}, *same]
    assert compare_to_training_hosts(profile, slow)["warnings"] == []  # the nearest host is the same
    far = compare_to_training_hosts(profile, slow[:1])
    assert len(far["warnings"]) == len(profile.features()) and "0.33x" in far["warnings"][0]
    assert "no training hosts" in compare_to_training_hosts(profile, [])["warnings"][0]
    assert "no host profile" in compare_to_training_hosts(None, same)["warnings"][0]


def test_the_selector_reports_its_host(profile: HostProfile) -> None:
    from dwcp_selector.serving import Selector

    root = Path(__file__).resolve().parent.parent
    sel = Selector(root / "models" / "selector", host_profile=profile)
    assert sel.host_profile is profile
    # the shipped model names the hosts its records came from; this one is compared with them
    report = sel.host_report
    assert report["profile_id"] == profile.profile_id and report["training_hosts"]
    assert set(report["ratios"]) == set(profile.features())
    assert all(r > 0 for r in report["ratios"].values())
    assert isinstance(report["warnings"], list)
    assert sel.decider.host == host_vector(profile.features())
    assert Selector(root / "models" / "selector", host_profile=None).host_report["profile_id"] is None


def test_decision_times_follow_the_nodes_python_speed(profile: HostProfile) -> None:
    from dwcp_selector.modeling.decide import host_times
    from dwcp_selector.modeling.policy import DecisionTimes

    t = DecisionTimes(1e-6, 10e-6, 500e-6)
    timed_on = {"rates": {"host_python_ops_s": 2 * profile.python_ops_s}}
    slower = host_times(t, timed_on, profile)  # this node runs Python at half the timing host's rate
    assert slower.light_s == pytest.approx(20e-6) and slower.rich_s == pytest.approx(1e-3)
    assert host_times(t, None, profile) == t and host_times(t, timed_on, None) == t
    assert host_times(t, {"rates": {}}, profile) == t


def test_an_old_profile_is_measured_again_and_a_selector_refreshes_its_own(
    profile: HostProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwcp_selector.serving import Selector

    d = profile.to_dict()
    d["measured_at"] = "2026-01-01T00:00:00+00:00"
    old = HostProfile.from_dict(d)
    assert old.age_s() > 86_400 and profile.age_s() < 3_600
    old.save(tmp_path / f"{host_key().key_id}.json")
    assert load_or_calibrate(tmp_path, measure=False) == old  # no age limit: the cache answers
    fresh = load_or_calibrate(tmp_path, max_age_s=3_600, budget_s=2.0)
    assert fresh is not None and fresh != old and fresh.age_s() < 60
    monkeypatch.setenv("DWCP_PROFILE_DIR", str(tmp_path))
    root = Path(__file__).resolve().parent.parent
    sel = Selector(root / "models" / "selector", host_profile=old)
    before = sel.decider
    got = sel.refresh_host_profile(budget_s=2.0)
    assert sel.host_profile is got and got.age_s() < 60 and sel.decider is not before
    assert sel.decider.host == host_vector(got.features())
    assert HostProfile.load(tmp_path / f"{host_key().key_id}.json") == got


def test_a_long_measurement_stamps_a_profile_no_older_than_its_interval(
    profile: HostProfile, tmp_path: Path
) -> None:
    from dwcp_selector.hostprofile import ProfileClock

    d = profile.to_dict()
    d["measured_at"] = "2026-01-01T00:00:00+00:00"
    old = HostProfile.from_dict(d)
    frozen = ProfileClock(old, None, directory=tmp_path)
    assert frozen.current() is old and frozen.measured == 0  # no interval: the given profile throughout
    clock = ProfileClock(old, 3_600, budget_s=2.0, directory=tmp_path)
    now = clock.current()
    assert now is not old and now.age_s() < 60 and clock.measured == 1
    assert clock.current() is now and clock.measured == 1  # young enough: not measured again
    assert HostProfile.load(tmp_path / f"{host_key().key_id}.json") == now
    with pytest.raises(ConfigError):
        ProfileClock(old, 0)


def test_a_selector_does_not_decide_with_a_profile_a_day_old(
    profile: HostProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwcp_selector.serving import Selector

    old = HostProfile.from_dict({**profile.to_dict(), "measured_at": "2026-01-01T00:00:00+00:00"})
    old.save(tmp_path / f"{host_key().key_id}.json")
    monkeypatch.setenv("DWCP_PROFILE_DIR", str(tmp_path))
    sel = Selector(Path(__file__).resolve().parent.parent / "models" / "selector")
    assert sel.host_profile is not None and sel.host_profile != old and sel.host_profile.age_s() < 60


def _scaled(profile: HostProfile, factor: float, measured_at: str | None = None) -> HostProfile:
    d = profile.to_dict()
    d["encode_bps"] = {k: v * factor for k, v in d["encode_bps"].items()}
    d["decode_bps"] = {k: v * factor for k, v in d["decode_bps"].items()}
    d["python_ops_s"] *= factor
    if measured_at is not None:
        d["measured_at"] = measured_at
    return HostProfile.from_dict(d)


def test_a_long_run_profile_keeps_each_rates_fastest_snapshot(profile: HostProfile) -> None:
    slow = _scaled(profile, 0.5, "2026-12-01T00:00:00+00:00")
    d = profile.to_dict()
    d["encode_bps"] = {**d["encode_bps"], "zstd": d["encode_bps"]["zstd"] / 4}  # one rate slower here
    mixed = HostProfile.from_dict(d)
    got = HostProfile.combine([slow, mixed])
    assert got.snapshots == 2 and got.measured_at == mixed.measured_at  # dated by the newest
    assert got.encode_bps["zstd"] == pytest.approx(max(slow.encode_bps["zstd"], mixed.encode_bps["zstd"]))
    assert got.encode_bps["lz4"] == mixed.encode_bps["lz4"] and got.python_ops_s == mixed.python_ops_s
    assert got.rounds == slow.rounds + mixed.rounds
    assert HostProfile.from_dict(got.to_dict()) == got and got.profile_id != mixed.profile_id
    assert HostProfile.combine([profile]) is profile and "snapshots" not in profile.to_dict()
    with pytest.raises(ConfigError, match="at least one"):
        HostProfile.combine([])
    other = HostProfile.from_dict({**profile.to_dict(), "key": {**profile.to_dict()["key"], "cores": 99}})
    with pytest.raises(ConfigError, match="different hosts"):
        HostProfile.combine([profile, other])
    with pytest.raises(ConfigError, match="at least one calibration"):
        HostProfile.from_dict({**profile.to_dict(), "snapshots": 0})


def test_every_measurement_joins_the_hosts_history_of_the_last_day(
    profile: HostProfile, tmp_path: Path
) -> None:
    from dwcp_selector.hostprofile import HISTORY_SNAPSHOTS, history_path, read_history

    hist = history_path(tmp_path)
    fast = _scaled(profile, 4.0, "2026-01-01T00:00:00+00:00")  # too old to count
    recent = [_scaled(profile, 0.25) for _ in range(HISTORY_SNAPSHOTS)]
    lines = [json.dumps(p.to_dict()) for p in [fast, *recent]]
    hist.write_text("\n".join([*lines[:3], "{damaged", *lines[3:]]) + "\n")
    with pytest.warns(RuntimeWarning, match="damaged"):
        got = load_or_calibrate(tmp_path, force=True, budget_s=2.0)
    assert got is not None and got.snapshots == HISTORY_SNAPSHOTS  # bounded: the oldest recent one left
    kept = read_history(hist)
    assert len(kept) == HISTORY_SNAPSHOTS and all(p.snapshots == 1 for p in kept)
    newest = kept[-1]
    assert newest.age_s() < 60 and got.measured_at == newest.measured_at
    # the old fast snapshot does not count; the long-run rates are each the fastest of the kept ones
    assert got == HostProfile.combine(kept) and got.python_ops_s < fast.python_ops_s
    assert all(got.encode_bps[s] >= newest.encode_bps[s] for s in HOST_FEATURE_STRATEGIES)
    assert HostProfile.load(tmp_path / f"{host_key().key_id}.json") == got
    assert read_history(tmp_path / "missing.jsonl") == []
