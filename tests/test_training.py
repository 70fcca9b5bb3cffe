"""Training end to end on a real (small) staging collection: every candidate fitted, the artifact exported
and reloaded, evaluated through the CLI, and the evaluation's own arithmetic checked on known policies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dwcp_selector.costmodel import CostModel
from dwcp_selector.dataset.export import export_dataset
from dwcp_selector.errors import ConfigError
from dwcp_selector.link import LinkState
from dwcp_selector.modeling.artifact import load_artifact
from dwcp_selector.modeling.baselines import heuristic_rule
from dwcp_selector.modeling.policy import STRATEGIES
from dwcp_selector.modeling.runtime import TieredModel
from dwcp_selector.telemetry.staging import collect
from dwcp_selector.telemetry.store import open_store
from dwcp_selector.training.data import load_dataset
from dwcp_selector.training.evaluation import evaluate_choices, heuristic_choice
from dwcp_selector.training.pipeline import CANDIDATES, TrainConfig, train
from dwcp_selector.training.policy_eval import model_outputs, policy_decisions
from dwcp_selector.workload.staging import ScenarioMix

CLI = [sys.executable, "-m", "dwcp_selector"]
KEYS = (
    "accuracy",
    "near_optimal_rate",
    "decisive_accuracy",
    "macro_f1",
    "regret_mean",
    "regret_p95",
    "gain_vs_heuristic",
    "gain_vs_static",
    "gain_vs_probe",
    "oracle_gap",
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("training")
    url = f"sqlite:///{d / 'telemetry.db'}"
    collect(url, 1200, 7, workers=2, mix=ScenarioMix(max_bytes=2 << 20))
    with open_store(url) as store:
        export_dataset(store.read_table(), d / "data", source="test", csv=False)
    return d / "data"


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("model") / "model"
    config = TrainConfig(trials=1, folds=2, max_epochs=8, timing_calls=30, tensorboard=True)
    return out, train(dataset, out, config)


def test_train_fits_every_candidate_and_exports_the_best(trained: tuple[Path, dict[str, Any]]) -> None:
    out, summary = trained
    names = [c["name"] for c in summary["candidates"]]
    assert names == list(CANDIDATES)
    best = min(summary["candidates"], key=lambda c: c["val_regret_mean"])
    assert summary["chosen"] == best["name"]
    for f in ("manifest.json", "light.onnx", "rich.onnx", "training.json", "MODEL_CARD.md", "report.html"):
        assert (out / f).is_file(), f
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    artifact = load_artifact(out)
    assert artifact.size_bytes() < 10 << 20
    assert artifact.extra["candidate"] == summary["chosen"]
    assert [f["fold"] for f in summary["cv"]] == [1, 2]
    assert summary["metrics"]["test"]["rows"] > 0
    assert abs(summary["metrics"]["train_val_gap_points"]) < 100
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "onfusion" in html
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Limitations" in card and summary["chosen"] in card


def test_hde_is_never_chosen_without_a_baseline(trained: tuple[Path, dict[str, Any]], dataset: Path) -> None:
    out, _ = trained
    artifact = load_artifact(out)
    splits, _, _ = load_dataset(dataset)
    split = splits["test"]
    cm = CostModel(artifact.cost_params)
    outputs, _ = model_outputs(TieredModel(artifact), split, cm)
    choice, decision_s, _, tiers = policy_decisions(
        outputs, split, artifact.times, artifact.policy, cm, artifact.fast_rule
    )
    no_base = ~split.cols["f_has_baseline"].astype(bool)
    assert no_base.any()
    assert not np.any(choice[no_base] == STRATEGIES.index("hde"))
    assert np.all(decision_s > 0) and set(np.unique(tiers)) <= {"fast", "light", "rich"}


def test_evaluate_cli_reports_every_metric(trained: tuple[Path, dict[str, Any]], dataset: Path) -> None:
    out, _ = trained
    html = out.parent / "eval.html"
    proc = subprocess.run(
        [*CLI, "evaluate", "--model", str(out), "--data", str(dataset), "--json", "--html", str(html)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for k in KEYS:
        assert k in report, k
        assert report[k] is None or -1.0 < report[k] < 10.0  # fractions, not percentages
    assert 0.0 <= report["near_optimal_rate"] <= 1.0 and report["regret_mean"] >= 0.0
    assert set(report["by_link"]) == {"dc", "metro", "wan", "edge"}
    assert report["by_type"] and all(
        "near_optimal_rate" in v for v in report["by_type"].values() if v["rows"]
    )
    assert set(report["per_class"]) == set(STRATEGIES)
    assert html.is_file() and "data:image/png;base64," in html.read_text()
    bad = subprocess.run(
        [*CLI, "evaluate", "--model", str(out), "--data", str(dataset), "--split", "holdout"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "no 'holdout' split" in bad.stderr and "Traceback" not in bad.stderr


def test_select_cli_gives_decision_confidence_features_and_latency(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = trained
    rng = np.random.default_rng(0)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"".join(b'{"level":"info","n":%d}\n' % i for i in range(200_000)))
    base = tmp_path / "random.bin"
    base.write_bytes(rng.bytes(1 << 20))
    proc = subprocess.run(
        [*CLI, "select", str(payload), "--link", "edge", "--model", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["strategy"] in ("none", "lz4", "zstd") and 0.0 <= d["confidence"] <= 1.0
    assert d["tier"] in ("light", "rich") and d["features"]["payload_bytes"] == payload.stat().st_size
    assert 0 < d["latency_s"] < 0.5
    wrong = subprocess.run(
        [*CLI, "select", str(payload), "--model", str(base.parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode != 0 and "manifest" in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_tampered_dataset_is_refused(dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    blob = bytearray((copy / "val.parquet").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "val.parquet").write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="sha256"):
        load_dataset(copy)


def test_the_oracle_scores_perfectly_and_baselines_are_priced(dataset: Path) -> None:
    splits, _, _ = load_dataset(dataset)
    split = splits["test"]
    zero = np.zeros(split.n)
    r = evaluate_choices(split, split.labels(), zero)
    assert r["accuracy"] == 1.0 and r["near_optimal_rate"] == 1.0
    assert r["regret_mean"] == 0.0 and r["oracle_gap"] == 0.0
    # the oracle breaks ties within 1 % towards the simpler encoder, so a baseline that happens to take the
    # strictly cheapest of two tied encoders may beat it by less than that, never by more
    for baseline in ("heuristic", "static", "probe"):
        assert r[f"gain_vs_{baseline}"] > -0.01
    # always "none" is one of the static policies: it cannot beat the best of them
    always_none = evaluate_choices(split, np.zeros(split.n, dtype=np.int64), zero)
    assert always_none["gain_vs_static"] <= 1e-12
    # paying a second per decision shows up in regret and gains, not in the near-optimal rate
    slow = evaluate_choices(split, split.labels(), np.ones(split.n))
    assert slow["near_optimal_rate"] == 1.0 and slow["regret_mean"] > 0.0 and slow["gain_vs_static"] < 0.0


def test_the_rule_heuristic_is_one_definition(dataset: Path) -> None:
    """The evaluation's vectorised heuristic is the serving-side rule list, row for row."""
    splits, _, _ = load_dataset(dataset)
    split = splits["train"]
    vector = heuristic_choice(split)
    c = split.cols
    for i in range(split.n):
        link = LinkState(
            float(c["f_capacity_bps"][i]),
            float(c["f_rtt_s"][i]),
            float(c["f_loss"][i]),
            float(c["f_utilization"][i]),
        )
        sim = c["f_similarity_pages"][i]
        rule = heuristic_rule(
            int(c["f_payload_bytes"][i]),
            float(c["f_entropy"][i]),
            bool(c["f_has_baseline"][i]),
            None if sim is None or np.isnan(sim) else float(sim),
            link,
        )
        assert STRATEGIES[vector[i]] == rule, i


def test_calibrate_retimes_and_refits_on_this_host(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    import shutil

    from dwcp_selector.training.pipeline import calibrate

    copy = tmp_path / "model"
    shutil.copytree(trained[0], copy)
    summary = calibrate(copy, dataset, timing_calls=30)
    artifact = load_artifact(copy)
    assert artifact.times.to_dict() == summary["decision_times"]
    assert artifact.times.fast_s < artifact.times.light_s < artifact.times.rich_s
    assert "before" in summary["calibrated"] and summary["metrics"]["test"]["rows"] > 0
    other = tmp_path / "other-data"
    shutil.copytree(dataset, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "test.parquet").unlink()
    del manifest["files"]["test.parquet"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not the dataset"):
        calibrate(copy, other)


def test_cost_loss_counts_every_near_optimal_strategy_as_right() -> None:
    import torch

    from dwcp_selector.training.mlp import _loss_fn

    # the oracle's label is none; lz4 is within the 1 % tie tolerance, zstd 50 % worse, hde not offered
    regret = torch.tensor([[0.0, 0.005, 0.5, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    label = torch.tensor([0])
    sure_of = {
        s: torch.tensor([[10.0 if i == k else -10.0 for i in range(4)]]) for k, s in enumerate(STRATEGIES)
    }
    near_only = _loss_fn("cost", near_weight=1.0, ce_weight=0.0)
    # choosing the tied lz4 costs what it costs (0.5 % regret), not a wrong label's penalty
    assert float(near_only(sure_of["lz4"], label, mask, regret)) < 0.01
    assert float(near_only(sure_of["zstd"], label, mask, regret)) > 10
    # the cross-entropy term still leans ties to the oracle's order
    shipped = _loss_fn("cost")
    assert float(shipped(sure_of["none"], label, mask, regret)) < float(
        shipped(sure_of["lz4"], label, mask, regret)
    )
    former = _loss_fn("cost", near_weight=0.0, ce_weight=0.1)
    assert float(former(sure_of["lz4"], label, mask, regret)) > 1  # the former loss: a tie is a wrong label


def test_records_are_repriced_on_drawn_hosts(dataset: Path) -> None:
    from dwcp_selector.costmodel import Oracle
    from dwcp_selector.training.hosts import DEFAULT_PROFILE_SD, reprice_for_hosts

    splits, _, _ = load_dataset(dataset)
    val = splits["val"]
    cm = CostModel()
    a = reprice_for_hosts(val, cm, 5)
    assert a.n == val.n and np.array_equal(a.cols["request_id"], val.cols["request_id"])
    b = reprice_for_hosts(val, cm, 5)
    assert np.array_equal(a.costs(), b.costs())  # deterministic in the seed
    assert not np.array_equal(a.costs(), reprice_for_hosts(val, cm, 6).costs())
    # the same bytes, other seconds; each rate moved inversely to its time
    assert np.array_equal(a.cols["o_zstd_bytes"], val.cols["o_zstd_bytes"], equal_nan=True)
    t_ratio = a.cols["o_zstd_encode_s"] / val.cols["o_zstd_encode_s"]
    exact = reprice_for_hosts(val, cm, 5, profile_sd=0.0)
    assert np.array_equal(exact.costs(), a.costs())  # the profile's error never reaches the costs
    r_ratio = val.cols["f_host_zstd_encode_bps"] / exact.cols["f_host_zstd_encode_bps"]
    ok = np.isfinite(t_ratio)
    assert ok.any() and np.allclose(t_ratio[ok], r_ratio[ok])
    assert 2.0**-2 < np.nanmin(t_ratio) and np.nanmax(t_ratio) < 2.0**2
    # the model sees the rate as a node measures it: off the exact one by the profile's error
    err = np.log2(a.cols["f_host_zstd_encode_bps"] / exact.cols["f_host_zstd_encode_bps"])
    assert 0.75 * DEFAULT_PROFILE_SD < float(np.std(err)) < 1.25 * DEFAULT_PROFILE_SD
    # labels are the oracle's on the new costs, and an offered strategy stays offered
    assert np.array_equal(a.labels(), Oracle(cm).label_array(a.costs()))
    assert np.array_equal(a.offered(), val.offered())
    # with no spread nothing moves but the recomputation itself
    same = reprice_for_hosts(val, cm, 5, spread=0.0, rate_sd=0.0, profile_sd=0.0)
    assert np.allclose(same.costs()[val.offered()], val.costs()[val.offered()], rtol=1e-9)


def test_the_profile_error_training_shows_the_models_is_a_setting(dataset: Path) -> None:
    from dwcp_selector.training.hosts import DEFAULT_PROFILE_SD
    from dwcp_selector.training.pipeline import TrainConfig, with_host_draws

    assert TrainConfig().profile_sd == DEFAULT_PROFILE_SD
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(ConfigError, match="profile_sd"):
            TrainConfig(profile_sd=bad)
    splits, _, _ = load_dataset(dataset)
    cm = CostModel()
    exact = with_host_draws(splits, cm, 5, profile_sd=0.0)
    small = with_host_draws(splits, cm, 5, profile_sd=0.1)
    for name in ("train", "val"):
        assert np.array_equal(exact[name].costs(), small[name].costs())  # the same hosts, the same costs
        err = np.log2(small[name].cols["f_host_lz4_decode_bps"] / exact[name].cols["f_host_lz4_decode_bps"])
        assert 0.07 < float(np.std(err)) < 0.13
    # the fleet evaluation keeps the default error whatever training was shown
    default = with_host_draws(splits, cm, 5)
    assert np.array_equal(
        small["test_fleet"].cols["f_host_lz4_decode_bps"], default["test_fleet"].cols["f_host_lz4_decode_bps"]
    )


def test_a_host_aware_model_decides_with_the_nodes_profile(trained: tuple[Path, dict[str, Any]]) -> None:
    from dwcp_selector.hostprofile import REFERENCE_RATES, HostProfile, host_key
    from dwcp_selector.link import SystemState
    from dwcp_selector.modeling.decide import Decider, decision_vector
    from dwcp_selector.modeling.policy import LIGHT
    from dwcp_selector.training.hosts import DEFAULT_PROFILE_SD

    out, _ = trained
    artifact = load_artifact(out)
    assert artifact.extra["host_draws"]["spread_log2"] > 0
    assert artifact.extra["host_draws"]["profile_sd_log2"] == DEFAULT_PROFILE_SD
    assert artifact.extra["training_hosts"] and artifact.extra["training_hosts"][0]["records"] > 0
    spec = artifact.tiers[LIGHT].spec
    assert spec.with_host and spec.names[-1] == "host:host_python_ops_s"

    def profile(scale: float) -> HostProfile:
        r = {k: v * scale for k, v in REFERENCE_RATES.items()}
        enc = {s: r[f"host_{s}_encode_bps"] for s in ("lz4", "zstd", "hde")}
        dec = {s: r[f"host_{s}_decode_bps"] for s in ("lz4", "zstd", "hde")}
        return HostProfile(host_key(), "2026-12-02T00:00:00+00:00", enc, dec, r["host_python_ops_s"], 1.0, 3)

    model = TieredModel(artifact)
    data = bytes(range(256)) * 4096
    link, system = LinkState(1e9, 0.01, link_type="metro"), SystemState(2)
    slow, fast = Decider(model, host_profile=profile(0.25)), Decider(model, host_profile=profile(4.0))
    assert slow.host == [-2.0] * 7 and fast.host == [2.0] * 7
    for d in (slow, fast, Decider(model)):
        got = d.decide(data, link, system, tier=LIGHT)
        assert got.strategy in STRATEGIES
        # the compiled light row and the Python definition agree, host inputs included
        if d.light_row is not None:
            row, basic = d.light_row.build(data, None, "other", {}, link, system)
            ref = decision_vector(
                spec, len(data), "other", basic, None, link, system, d.cost_model, {}, d.host
            )
            assert list(row) == pytest.approx(ref, abs=1e-12)
