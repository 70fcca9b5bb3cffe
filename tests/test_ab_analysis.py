"""The A/B analysis and its gate (experiment.analysis), replays on staging records (experiment.replay),
and ``dwcp-selector ab analyze|replay`` on real stores."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from dwcp_selector.cli import main
from dwcp_selector.errors import ConfigError
from dwcp_selector.experiment.analysis import (
    Design,
    Observations,
    _raw_estimate,
    analyze,
    gate,
    obf_boundaries,
    obf_spending,
    sequential_inflation,
)
from dwcp_selector.experiment.assignment import Assignment
from dwcp_selector.experiment.replay import (
    ReplayData,
    replay,
    srm_observations,
    synthetic_observations,
)
from dwcp_selector.telemetry.store import open_store

from .conftest import full_record

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "evaldata" / "amd-epyc-2026-12-02"
MODEL = ROOT / "models" / "selector"


# -- boundaries ------------------------------------------------------------------------------------------
def test_obrien_fleming_boundaries_match_the_published_values() -> None:
    """Lan-DeMets O'Brien-Fleming spending, 4 equally spaced looks, one-sided 0.025 (two-sided 0.05):
    4.333, 2.963, 2.359, 2.014 (Jennison & Turnbull 2000, table 7.6; gsDesign's sfLDOF)."""
    b = obf_boundaries((0.25, 0.5, 0.75, 1.0), 0.025)
    assert b == pytest.approx((4.3326, 2.9631, 2.3590, 2.0141), abs=0.02)
    assert float(obf_spending(1.0, 0.025)) == pytest.approx(0.025)
    # one look is the fixed design
    assert obf_boundaries((1.0,), 0.01)[0] == pytest.approx(stats.norm.isf(0.01))
    # the price of looking: a few per cent more units at most for O'Brien-Fleming
    assert 1.0 < sequential_inflation((0.25, 0.5, 0.75, 1.0), 0.025, 0.8) < 1.05


def test_the_welch_estimate_is_scipys_on_one_stratum() -> None:
    obs = synthetic_observations(600, gain=0.08, seed=3)
    a = analyze(obs, Design("w", planned_units_per_arm=300), bootstrap_resamples=200)
    y = obs.metric()
    ref = stats.ttest_ind(y[obs.treatment], y[~obs.treatment], equal_var=False, alternative="greater")
    assert a.speed["t"] == pytest.approx(float(ref.statistic), rel=1e-9)
    assert a.speed["df"] == pytest.approx(float(ref.df), rel=1e-9)
    assert a.speed["p_one_sided"] == pytest.approx(float(ref.pvalue), rel=1e-6)
    json.dumps(a.to_dict(), allow_nan=False)  # JSON-able, no NaN


# -- A/A and SRM -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def staging() -> Any:
    from dwcp_selector.training.data import load_dataset

    splits, _, _ = load_dataset(EVAL)
    return splits["test"]


def test_aa_replays_approve_at_most_one_percent(staging: Any) -> None:
    """1,000 A/A experiments replayed on the 4,000 logged staging records (sessions as units, transfer
    noise on top), four planned looks each: false approvals stay within the gate's alpha."""
    data = ReplayData.from_split(staging, unit="session")
    t0 = time.perf_counter()
    r = replay(data, Design("aa"), experiments=1000, aa=True, noise=0.2, seed=1)
    elapsed = time.perf_counter() - t0
    assert r.experiments == 1000 and sum(r.verdicts.values()) == 1000
    assert r.rate("approve") <= 0.01, r.to_dict()
    # neutral rolls back: almost every A/A ends in a rollback, some before the final look
    assert r.rate("rollback") > 0.95
    assert np.sum((r.decided_at >= 0) & (r.decided_at < 3)) > 0
    assert np.all(np.isfinite(r.z[:, -1]))  # every replay reached its final look
    assert elapsed < 60
    # and on transfers as units (2,000 per arm)
    r2 = replay(
        ReplayData.from_split(staging, unit="transfer"), Design("aa"), experiments=1000, aa=True, seed=2
    )
    assert r2.rate("approve") <= 0.01, r2.to_dict()


@pytest.mark.parametrize("salt", ["s0", "s1", "s2", "s3", "s4"])
def test_a_52_48_split_on_a_50_50_design_always_blocks(salt: str) -> None:
    obs = srm_observations(20_000, design_share=0.5, actual_share=0.52, salt=salt)
    assert 0.51 < obs.treatment.mean() < 0.53
    g = gate(obs, Design("srm", planned_units_per_arm=10_000))
    assert g.verdict == "blocked", g.reasons
    if salt == "s0":
        a = analyze(obs, Design("srm", planned_units_per_arm=10_000), bootstrap_resamples=100)
        assert a.verdict == "blocked"
        assert a.srm[0]["mismatch"] and a.srm[0]["p"] < 0.001
    # the same units split as designed do not block
    fair = srm_observations(20_000, design_share=0.5, actual_share=0.5, salt=salt)
    assert gate(fair, Design("srm", planned_units_per_arm=10_000)).verdict != "blocked"


def test_srm_is_checked_per_stratum() -> None:
    """10 % then 50 %: pooled counts would look wildly off, per stratum they are what was designed."""
    obs = synthetic_observations(20_000, phases=[(0.1, 0.5, 0.0), (0.5, 0.5, 0.0)], seed=4)
    a = analyze(obs, Design("strata", planned_units_per_arm=5000), bootstrap_resamples=100)
    assert [round(s["share"], 2) for s in a.srm] == [0.1, 0.5]
    assert not any(s["mismatch"] for s in a.srm)
    assert a.verdict != "blocked"


# -- the gate on known effects ---------------------------------------------------------------------------
def test_a_true_ten_percent_gain_is_approved() -> None:
    for seed in range(3):
        obs = synthetic_observations(6000, gain=0.10, transfers_per_unit=3, seed=seed, salt=f"g{seed}")
        a = analyze(obs, Design("plus10", planned_units_per_arm=3000), bootstrap_resamples=200)
        assert a.verdict == "approve", a.reasons
        assert a.speed["ci95"][0] < 0.10 < a.speed["ci95"][1]
        lk = a.gate.looks[a.gate.decided_at or 0]
        assert lk.z >= lk.boundary and lk.gain > 0.05


def test_a_five_percent_loss_rolls_back() -> None:
    obs = synthetic_observations(6000, gain=-0.05, transfers_per_unit=3, seed=5)
    a = analyze(obs, Design("minus5", planned_units_per_arm=3000), bootstrap_resamples=200)
    assert a.verdict == "rollback", a.reasons
    assert a.gate.looks[a.gate.decided_at or 0].upper_bound < 0.05


def test_a_tiny_sample_holds() -> None:
    obs = synthetic_observations(40, gain=0.10, seed=6)
    a = analyze(obs, Design("tiny", planned_units_per_arm=3000), bootstrap_resamples=100)
    assert a.verdict == "hold"
    # even planned that small, fewer than 30 units per arm is too little data
    g = gate(obs, Design("tiny", planned_units_per_arm=20))
    assert g.verdict == "hold" and "too little data" in g.reasons[-1]
    assert gate(obs.take(np.zeros(obs.n, dtype=bool)), Design("none")).verdict == "hold"


def test_the_stratified_estimate_is_unbiased_when_shares_change_while_traffic_drifts() -> None:
    """Rollout 10 % → 50 % while the base speed rises e^0.7 ≈ 2x: treatment sees more of the fast period.
    Pooling the arms credits it with the drift; the stratified estimate does not."""
    est, naive = [], []
    for seed in range(8):
        obs = synthetic_observations(
            8000, gain=0.05, phases=[(0.1, 0.5, 0.0), (0.5, 0.5, 0.7)], seed=seed, salt=f"drift{seed}"
        )
        a = analyze(obs, Design("drift", planned_units_per_arm=3000), bootstrap_resamples=100)
        est.append(a.speed["gain"])
        y = obs.metric()
        naive.append(math.expm1(y[obs.treatment].mean() - y[~obs.treatment].mean()))
        assert a.speed["strata_used"] == 2
    assert np.mean(est) == pytest.approx(0.05, abs=0.015)
    assert np.mean(naive) > 0.2  # the pooled difference is mostly the drift


def test_cuped_reduces_the_variance_with_an_informative_covariate() -> None:
    obs = synthetic_observations(4000, gain=0.05, sd_unit=0.8, sd_transfer=0.3, covariate_sd=0.2, seed=7)
    a = analyze(obs, Design("cuped", planned_units_per_arm=2000), bootstrap_resamples=100)
    assert a.cuped is not None
    assert a.cuped["variance_reduction"] > 0.5
    assert a.cuped["se_log"] < a.speed["se_log"]
    assert abs(a.cuped["gain"] - 0.05) < 3 * a.cuped["se_log"]
    noise = synthetic_observations(4000, gain=0.05, covariate_sd=100.0, seed=7)
    b = analyze(noise, Design("cuped", planned_units_per_arm=2000), bootstrap_resamples=100)
    assert b.cuped is not None and b.cuped["variance_reduction"] < 0.05


def test_a_replay_with_the_oracle_as_treatment_is_approved(staging: Any) -> None:
    """The oracle against the heuristic on transfers as units: a large true gain, found at the looks."""
    data = ReplayData.from_split(staging, unit="transfer", treatment=staging.labels())
    assert data.true_gain()["geometric"] > 0.1
    r = replay(data, Design("oracle"), experiments=20)
    assert r.rate("approve") >= 0.7, r.verdicts
    # what is not approved was not shown to be no better: it reached the final look underpowered
    assert np.all(r.decided_at[np.isfinite(r.final_gains)] >= 0)
    assert r.verdicts.get("hold", 0) == 0 and r.verdicts.get("blocked", 0) == 0


def test_design_and_observations_refuse_bad_values() -> None:
    with pytest.raises(ConfigError):
        Design("x", looks=(0.5, 0.25, 1.0))
    with pytest.raises(ConfigError):
        Design("x", looks=(0.5, 0.9))
    with pytest.raises(ConfigError):
        Design("x", alpha=0.0)
    with pytest.raises(ConfigError):
        Observations(np.array([True]), np.array([1.0]), np.array([0.0]), np.array(["u"]), np.array([0.5]))


# -- the store and the command line ----------------------------------------------------------------------
_START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _ab_rows(experiment: str, resources: int, gain: float, seed: int = 0) -> list[dict[str, Any]]:
    """``ab`` rows as the transfer manager writes them: resources split by Assignment, three transfers
    each on a real-looking link, plus a production row per resource before the experiment (CUPED's
    pre-period) and a few failed transfers."""
    rng = np.random.default_rng(seed)
    split = Assignment(experiment, share=0.5)
    rows: list[dict[str, Any]] = []
    i = seed * 1_000_000  # request ids unique across calls
    link = {
        "f_capacity_bps": 1e9,
        "f_utilization": 0.2,
        "f_rtt_s": 0.01,
        "f_loss": 1e-5,
        "f_link_type": "wan",
    }

    def raw(size: int) -> float:  # the raw-transfer estimate of the link: speeds scale with it
        est = _raw_estimate(
            np.array([float(size)]),
            *(np.array([link[c]]) for c in ("f_capacity_bps", "f_utilization", "f_rtt_s", "f_loss")),
        )
        assert est is not None
        return float(est[0]) * 1.5

    for r in range(resources):
        rid = f"{experiment}-vm-{r}"
        base = rng.normal(0.0, 0.3)
        size = int(np.exp(rng.uniform(12, 20)))
        rows.append(
            full_record(
                i,
                _START - dt.timedelta(hours=1, seconds=r),
                source="production",
                resource_id=rid,
                f_payload_bytes=size,
                used_time_s=raw(size) * np.exp(-(base + rng.normal(0, 0.2))),
                used_error=None,
                oracle_label=None,
                oracle_cost_s=None,
                experiment=None,
                arm=None,
                propensity=None,
                **link,
            )
        )
        i += 1
        arm, propensity = split.arm(rid)
        for k in range(3):
            y = base + rng.normal(0, 0.3) + (math.log1p(gain) if arm == "treatment" else 0.0)
            size = int(np.exp(rng.uniform(12, 20)))
            rows.append(
                full_record(
                    i,
                    _START + dt.timedelta(seconds=3 * r + k),
                    source="ab",
                    experiment=experiment,
                    arm=arm,
                    propensity=propensity,
                    resource_id=rid,
                    session_id=rid,
                    f_payload_bytes=size,
                    used_time_s=raw(size) * np.exp(-y),
                    used_error="refused" if (r * 3 + k) % 97 == 0 else None,
                    oracle_label=None,
                    oracle_cost_s=None,
                    **link,
                )
            )
            i += 1
    return rows


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _fill(url: str) -> None:
    with open_store(url) as store:
        store.write_batch(_ab_rows("exp-good", 600, 0.10, seed=1))
        store.write_batch(_ab_rows("exp-flat", 300, 0.0, seed=2))
        store.write_batch([full_record(10**7 + i, _START, source="staging") for i in range(5)])


def _check_cli(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "report" / "ab.html"
    rc, out, err = _run(
        [
            "ab",
            "analyze",
            "--store",
            url,
            "--experiment",
            "exp-good",
            "--planned-units",
            "250",
            "--json",
            "--html",
            str(html),
        ],
        capsys,
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["experiment"] == "exp-good"
    assert doc["verdict"] == "approve", doc["reasons"]
    assert doc["counts"]["errors"]["treatment"] + doc["counts"]["errors"]["control"] > 0
    assert doc["counts"]["units_treatment"] + doc["counts"]["units_control"] == 600
    assert doc["speed"]["metric"].startswith("log(raw-transfer estimate")
    assert doc["cuped"] is not None and doc["cuped"]["variance_reduction"] > 0.3
    assert doc["throughput"]["ci95"][0] is not None
    assert len(doc["gate"]["looks"]) == 4 or doc["gate"]["decided_at"] is not None
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("data:image/png;base64,") >= 3
    assert "APPROVE" in text
    rc, out, err = _run(["ab", "analyze", "--store", url, "--experiment", "exp-flat"], capsys)
    assert rc == 0, err
    assert "exp-flat" in out


def test_ab_analyze_on_a_sqlite_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    _fill(url)
    _check_cli(url, tmp_path, capsys)


def test_ab_analyze_on_postgresql(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(pg_url)
    _check_cli(pg_url, tmp_path, capsys)


def test_ab_bad_input_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    _fill(url)
    only_staging = f"sqlite:///{tmp_path / 'staging.db'}"
    with open_store(only_staging) as store:
        store.write_batch([full_record(i, _START, source="staging") for i in range(3)])
    failed = f"sqlite:///{tmp_path / 'failed.db'}"
    with open_store(failed) as store:
        store.write_batch(
            [r | {"used_error": "boom"} for r in _ab_rows("exp-dead", 5, 0.0, seed=3) if r["source"] == "ab"]
        )
    cases = [
        (
            ["ab", "analyze", "--store", f"sqlite:///{tmp_path / 'missing.db'}", "--experiment", "x"],
            "no sqlite",
        ),
        (["ab", "analyze", "--store", url, "--experiment", "nope"], "unknown experiment"),
        (["ab", "analyze", "--store", only_staging, "--experiment", "x"], "no a/b"),
        (["ab", "analyze", "--store", failed, "--experiment", "exp-dead"], "no completed transfers"),
        (["ab", "analyze", "--store", "mysql://x", "--experiment", "x"], "unsupported"),
        (
            ["ab", "analyze", "--store", url, "--experiment", "exp-good", "--planned-units", "0"],
            "planned-units",
        ),
        (["ab", "analyze", "--store", url, "--experiment", "exp-good", "--alpha", "nan"], "alpha"),
        (["ab", "analyze", "--store", url], "experiment"),
        (["ab", "replay", "--data", str(tmp_path / "nothing"), "--aa"], "no dataset"),
        (["ab", "replay", "--data", str(EVAL)], "--model"),
        (["ab", "replay", "--data", str(EVAL), "--model", str(tmp_path)], ""),
        (["ab", "replay", "--data", str(EVAL), "--aa", "--experiments", "0"], "experiments"),
        (["ab", "replay", "--data", str(tmp_path / "telemetry.db"), "--aa"], "parquet"),
    ]
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        assert rc == 2, (argv, rc, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert needle.lower() in lines[0].lower(), (argv, err)
        assert "Traceback" not in err and out == "", (argv, out)
    # the real entry point in a process of its own: the same line, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "dwcp_selector", "ab", "analyze", "--store", url, "--experiment", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown experiment"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_ab_replay_cli(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(
        ["ab", "replay", "--data", str(EVAL), "--aa", "--experiments", "50", "--json"], capsys
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["experiments"] == 50 and doc["aa"] and "false_approval_rate" in doc
    rc, out, err = _run(
        [
            "ab",
            "replay",
            "--data",
            str(EVAL / "test.parquet"),
            "--model",
            str(MODEL),
            "--experiments",
            "20",
            "--unit",
            "transfer",
            "--json",
        ],
        capsys,
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["true_gain"]["geometric"] > 0.05  # the shipped model beats the heuristic on these records
    assert sum(doc["verdicts"].values()) == 20
