"""``dwcp-selector train``: fit every candidate, choose by validation regret, export, report.

Candidates (DESIGN section 5b), each with a light and a rich tier:

* ``cmil-mlp`` - the cost model in the loop: a network predicts, per strategy, the log2 compressed ratio
  and log2 encode and decode CPU seconds from the payload features alone (one row per measured payload);
  the exact cost formula prices them on the record's link and node;
* ``clf-mlp-ce`` / ``clf-mlp-cost`` - the roadmap's 64-32-16 classifier on payload and link features, with
  cross-entropy or the cost-sensitive loss (expected regret + the near-optimal set's likelihood);
* ``clf-lgbm`` - gradient-boosted trees on the same inputs (its TreeSHAP importances go in the report).

Hyper-parameters are searched with Optuna (TPE, seeded) on the validation loss of the light tier and
reused for the rich tier. Each candidate's decisions are then timed on this host, its policy (fast path
and rich-tier thresholds) and confidence temperature fitted on validation, and the candidate with the
least validation mean regret, decision time included, is exported. A 5-fold cross-validation grouped by
session on the training split measures how stable the chosen configuration is.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..costmodel import CostModel
from ..errors import ConfigError
from ..hostprofile import DEFAULT_PROFILE_EVERY_S, load_or_calibrate
from ..modeling.artifact import CLASSIFIER, CMIL, ModelArtifact, TierModel, save_artifact
from ..modeling.decide import Decider
from ..modeling.featurize import LIGHT, PAYLOAD_TYPES, RICH, FeatureSpec
from ..modeling.policy import CMIL_OUTPUTS, STRATEGIES, DecisionTimes, FastRule, PolicyParams
from ..modeling.runtime import TieredModel
from ..modeling.timing import measure_decision_times
from .data import Split, load_dataset
from .evaluation import evaluate_choices
from .gbm import GbmConfig, fit_gbm, shap_importance
from .hosts import DEFAULT_PROFILE_SD, DEFAULT_RATE_SD, DEFAULT_SPREAD, fleet_splits, reprice_for_hosts
from .mlp import MlpConfig, fit_mlp
from .policy_eval import (
    evaluate_artifact,
    fit_fast_rule,
    fit_policy,
    fit_temperature,
    model_outputs,
    policy_decisions,
)

__all__ = ["CANDIDATES", "TrainConfig", "calibrate", "train"]

CANDIDATES = ("cmil-mlp", "clf-mlp-ce", "clf-mlp-cost", "clf-lgbm")
TIERS = (LIGHT, RICH)
Progress = Callable[[str, float], None]


@dataclass
class TrainConfig:
    trials: int = 12
    folds: int = 5
    candidates: tuple[str, ...] = CANDIDATES
    max_epochs: int = 200
    seed: int = 0
    tensorboard: bool = True
    timing_calls: int = 200
    #: re-price train and validation records on drawn hosts and give the models the host inputs
    #: (``training.hosts``); off: the collecting host's speeds only, as models before host profiles
    host_draws: bool = True
    #: the error (log2-normal sd) of the host rates the models are shown beside each drawn host's true
    #: ones: what a node's profile misreads its host by (``training.hosts``)
    profile_sd: float = DEFAULT_PROFILE_SD
    #: sign the exported manifest with this key (``DWCP_MODEL_KEY``); loaders given it refuse others
    model_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.candidates) - set(CANDIDATES)
        if unknown:
            raise ConfigError(f"unknown candidates {sorted(unknown)}; expected some of {CANDIDATES}")
        if self.trials < 1 or self.folds < 0 or self.folds == 1:
            raise ConfigError("trials must be ≥ 1 and folds 0 (none) or ≥ 2")
        if not 0.0 <= self.profile_sd <= 2.0:
            raise ConfigError(f"profile_sd must be a log2 sd in [0, 2], not {self.profile_sd}")


@dataclass
class Candidate:
    name: str
    kind: str
    family: str
    tiers: dict[str, TierModel]
    hyper: dict[str, Any]
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    extra_model: Any = None
    artifact: ModelArtifact | None = None
    val_report: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0


# -- inputs -------------------------------------------------------------------------------------------
def _regret_matrix(split: Split) -> np.ndarray:
    costs = split.costs()
    oracle = costs[np.arange(split.n), split.labels()]
    return np.where(np.isfinite(costs), costs / oracle[:, None] - 1.0, 5.0)


#: Share of training payloads whose type is hidden (shown as ``other``), so the models learn what to do
#: with a payload type they have never seen from the other features, as a held-out family needs.
TYPE_DROPOUT = 0.15


def _hide_types(x: np.ndarray, spec: FeatureSpec, groups: np.ndarray, seed: int) -> np.ndarray:
    names = spec.names
    cols = [i for i, n in enumerate(names) if n.startswith("type=")]
    other = names.index("type=other")
    unique, inverse = np.unique(groups, return_inverse=True)
    hidden = np.random.default_rng(seed).random(len(unique)) < TYPE_DROPOUT
    rows = np.flatnonzero(hidden[inverse])
    x = x.copy()
    x[np.ix_(rows, np.asarray(cols, dtype=np.intp))] = 0.0
    x[rows, other] = 1.0
    return x


def seen_types(train: Split) -> list[str]:
    """The payload types the model is trained on, plus ``other`` for every type it has not seen.

    A type outside this list (a family held out, a new workload) is encoded as ``other``, the input
    the type dropout trained, never as a one-hot column whose weights no gradient ever reached.
    """
    present = set(np.asarray(train.cols["f_payload_type"], dtype=object).tolist())
    return [t for t in PAYLOAD_TYPES if t in present and t != "other"] + ["other"]


def _classifier_data(
    split: Split, tier: str, types: list[str], *, hide: int | None = None, with_host: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, FeatureSpec]:
    spec = FeatureSpec(tier, payload_types=types, with_link=True, with_host=with_host)
    x = spec.matrix(split.cols)
    if hide is not None:
        x = _hide_types(x, spec, split.cols["payload_group_id"], hide)
    return x, split.labels(), split.offered(), spec


def _cmil_data(
    split: Split, tier: str, types: list[str], *, hide: int | None = None, with_host: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, FeatureSpec]:
    spec = FeatureSpec(tier, payload_types=types, with_link=False, with_host=with_host)
    rows = split.payload_rows()
    y, mask = split.cmil_targets(rows)
    sub = split.take(rows)
    x = spec.matrix(sub.cols)
    if hide is not None:
        x = _hide_types(x, spec, sub.cols["payload_group_id"], hide)
    return x, y, mask, spec


# -- fitting ------------------------------------------------------------------------------------------
def _search_mlp(
    base: MlpConfig,
    data: tuple[np.ndarray, ...],
    trials: int,
    seed: int,
    regrets: tuple[np.ndarray | None, np.ndarray | None],
) -> MlpConfig:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    xt, yt, mt, xv, yv, mv = data

    def objective(trial: optuna.Trial) -> float:
        cfg = MlpConfig(
            lr=trial.suggest_float("lr", 3e-4, 1e-2, log=True),
            # a regressor whose outputs are priced exactly wants little dropout noise; a classifier more
            dropout=trial.suggest_float("dropout", 0.0, 0.1 if base.loss == "mse" else 0.3),
            batch_size=trial.suggest_categorical("batch_size", [256, 512, 1024]),
            max_epochs=base.max_epochs,
            patience=base.patience,
            loss=base.loss,
            seed=seed,
        )
        result = fit_mlp(xt, yt, mt, xv, yv, mv, cfg, regret_train=regrets[0], regret_val=regrets[1])
        return min(h["val"] for h in result.history)

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    p = study.best_params
    return MlpConfig(
        lr=p["lr"],
        dropout=p["dropout"],
        batch_size=p["batch_size"],
        max_epochs=base.max_epochs,
        patience=base.patience,
        loss=base.loss,
        seed=seed,
    )


def _search_gbm(data: tuple[np.ndarray, ...], names: list[str], trials: int, seed: int) -> GbmConfig:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    xt, yt, xv, yv = data

    def objective(trial: optuna.Trial) -> float:
        cfg = GbmConfig(
            num_leaves=trial.suggest_int("num_leaves", 15, 127, log=True),
            learning_rate=trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            min_child_samples=trial.suggest_int("min_child_samples", 5, 100, log=True),
            feature_fraction=trial.suggest_float("feature_fraction", 0.6, 1.0),
            lambda_l2=trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
            seed=seed,
        )
        result = fit_gbm(xt, yt, xv, yv, cfg, names=names, n_classes=len(STRATEGIES), export=False)
        return min(h["val"] for h in result.history)

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return GbmConfig(**study.best_params, seed=seed)


_LOSS = {"cmil-mlp": "mse", "clf-mlp-ce": "ce", "clf-mlp-cost": "cost", "clf-lgbm": "logloss"}


def _fit_candidate(
    name: str,
    train: Split,
    val: Split,
    config: TrainConfig,
    log_dir: Path | None,
    progress: Progress,
    *,
    hyper: dict[str, Any] | None = None,
) -> Candidate:
    """Fit both tiers of a candidate; its hyper-parameters are searched on the light tier unless given."""
    t0 = time.perf_counter()
    types = seen_types(train)
    kind = CMIL if name == "cmil-mlp" else CLASSIFIER
    family = "lgbm" if name == "clf-lgbm" else "mlp"
    loss = _LOSS[name]
    regrets = (_regret_matrix(train), _regret_matrix(val)) if loss == "cost" else (None, None)
    tiers: dict[str, TierModel] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    extra_model = None
    gcfg = GbmConfig(**hyper) if hyper is not None and family == "lgbm" else None
    mcfg = MlpConfig(**hyper) if hyper is not None and family == "mlp" else None
    for tier in TIERS:
        data = _cmil_data if kind == CMIL else _classifier_data
        xt, yt, mt, spec = data(train, tier, types, hide=config.seed, with_host=config.host_draws)
        xv, yv, mv, _ = data(val, tier, types, with_host=config.host_draws)
        outputs = list(CMIL_OUTPUTS if kind == CMIL else STRATEGIES)
        if family == "lgbm":
            if gcfg is None:
                progress(f"{name}: searching {config.trials} configurations", 0.0)
                gcfg = _search_gbm((xt, yt, xv, yv), spec.names, config.trials, config.seed)
            fitted = fit_gbm(xt, yt, xv, yv, gcfg, names=spec.names, n_classes=len(STRATEGIES))
            onnx, history = fitted.onnx, fitted.history
            if tier == LIGHT:
                extra_model = (fitted.model, xv, spec.names)
        else:
            if mcfg is None:
                progress(f"{name}: searching {config.trials} configurations", 0.0)
                base = MlpConfig(loss=loss, max_epochs=config.max_epochs, seed=config.seed)
                mcfg = _search_mlp(base, (xt, yt, mt, xv, yv, mv), config.trials, config.seed, regrets)
            net = fit_mlp(
                xt,
                yt,
                mt,
                xv,
                yv,
                mv,
                mcfg,
                regret_train=regrets[0],
                regret_val=regrets[1],
                log_dir=log_dir,
                name=f"{name}-{tier}",
            )
            onnx, history = net.onnx, net.history
        tiers[tier] = TierModel(tier, onnx, spec, outputs)
        curves[f"{name}/{tier}"] = history
    chosen = gcfg.to_dict() if gcfg is not None else mcfg.to_dict() if mcfg is not None else {}
    return Candidate(
        name, kind, family, tiers, chosen, curves, extra_model, fit_seconds=time.perf_counter() - t0
    )


def _calibrate(
    cand: Candidate, val: Split, cm: CostModel, fingerprint: str, config: TrainConfig, rule: FastRule
) -> tuple[ModelArtifact, dict[str, Any]]:
    """Time the candidate's decisions, fit its temperature and policy on validation, evaluate it there."""
    artifact = ModelArtifact(
        cand.kind, cand.family, cand.tiers, DecisionTimes(), PolicyParams(), 1.0, cm.params, fingerprint
    )
    artifact.fast_rule = rule
    model = TieredModel(artifact)
    artifact.times = measure_decision_times(Decider(model, cm), calls=config.timing_calls, seed=config.seed)
    outputs, predicted = model_outputs(model, val, cm, temperature=1.0)
    if cand.kind == CMIL:
        artifact.temperature = fit_temperature(predicted[LIGHT], val.labels())
        outputs, _ = model_outputs(model, val, cm)
    artifact.policy, _ = fit_policy(outputs, val, artifact.times, cm, rule)
    choice, decision, confidence, tiers = policy_decisions(
        outputs, val, artifact.times, artifact.policy, cm, rule
    )
    report = evaluate_choices(val, choice, decision, cost_model=cm, confidence=confidence, tiers=tiers)
    return artifact, report


def _cross_validate(
    cand: Candidate,
    train: Split,
    config: TrainConfig,
    cm: CostModel,
    artifact: ModelArtifact,
    progress: Progress,
) -> list[dict[str, Any]]:
    """K folds grouped by session: refit with the chosen hyper-parameters, evaluate each held-out fold."""
    from sklearn.model_selection import GroupKFold

    folds = []
    groups = train.cols["session_id"]
    splitter = GroupKFold(n_splits=config.folds)
    for k, (tr, te) in enumerate(splitter.split(np.zeros(train.n), groups=groups)):
        progress(f"cross-validation fold {k + 1}/{config.folds}", k / config.folds)
        a, b = train.take(tr), train.take(te)
        single = TrainConfig(
            trials=1,
            folds=0,
            candidates=(cand.name,),
            max_epochs=config.max_epochs,
            seed=config.seed,
            tensorboard=False,
            host_draws=config.host_draws,
        )
        fold = _fit_candidate(cand.name, a, b, single, None, lambda _m, _f: None, hyper=cand.hyper)
        fold_art = ModelArtifact(
            cand.kind,
            cand.family,
            fold.tiers,
            artifact.times,
            artifact.policy,
            artifact.temperature,
            cm.params,
        )
        outputs, _ = model_outputs(TieredModel(fold_art), b, cm)
        rule = fit_fast_rule(a, cm)  # the fold's own: the held-out fold stays unseen
        choice, decision, conf, tiers = policy_decisions(
            outputs, b, artifact.times, artifact.policy, cm, rule
        )
        r = evaluate_choices(b, choice, decision, cost_model=cm, confidence=conf, tiers=tiers)
        folds.append(
            {
                "fold": k + 1,
                "rows": b.n,
                "near_optimal_rate": r["near_optimal_rate"],
                "regret_mean": r["regret_mean"],
                "regret_p95": r["regret_p95"],
                "accuracy": r["accuracy"],
            }
        )
    return folds


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "rows",
        "accuracy",
        "near_optimal_rate",
        "near_optimal_rate_with_decision_time",
        "decisive_accuracy",
        "macro_f1",
        "regret_mean",
        "regret_p95",
        "regret_p99",
        "gain_vs_heuristic",
        "gain_vs_static",
        "gain_vs_probe",
        "per_transfer_gain_vs_heuristic",
        "per_transfer_gain_vs_static",
        "per_transfer_gain_vs_probe",
        "oracle_gap",
        "static_policy",
        "baseline_heuristic",
        "baseline_static",
        "baseline_probe",
    )
    out = {k: r.get(k) for k in keys}
    out["by_link"] = {
        k: {m: v.get(m) for m in ("rows", "near_optimal_rate", "regret_mean", "regret_p95")}
        for k, v in r.get("by_link", {}).items()
    }
    out["per_class"] = r.get("per_class")
    out["ece"] = r.get("calibration", {}).get("ece")
    return out


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train, choose, export; returns the training summary (also written to ``training.json``)."""
    config = config or TrainConfig()
    say: Progress = progress or (lambda _msg, _frac: None)
    t0 = time.perf_counter()
    out = Path(out_dir)
    splits, fingerprint, manifest = load_dataset(data_dir)
    if "train" not in splits or "val" not in splits:
        raise ConfigError(f"{data_dir} has no train/val split (exported with --all-test?)")
    sessions = len(np.unique(splits["train"].cols["session_id"]))
    if config.folds > sessions:
        raise ConfigError(
            f"{config.folds} cross-validation folds need as many training sessions; {data_dir} has {sessions}"
        )
    out.mkdir(parents=True, exist_ok=True)  # only once the dataset is known to be usable
    cm = CostModel()
    native_train = splits["train"]
    if config.host_draws:
        splits = with_host_draws(splits, cm, config.seed, profile_sd=config.profile_sd)
    train_split, val = splits["train"], splits["val"]
    log_dir = out / "tensorboard" if config.tensorboard else None
    rule = fit_fast_rule(train_split, cm)
    candidates: list[Candidate] = []
    for i, name in enumerate(config.candidates):
        say(f"fitting {name}", i / len(config.candidates))
        cand = _fit_candidate(name, train_split, val, config, log_dir, say)
        say(f"timing and calibrating {name}", (i + 0.8) / len(config.candidates))
        cand.artifact, cand.val_report = _calibrate(cand, val, cm, fingerprint, config, rule)
        candidates.append(cand)
    best = min(candidates, key=lambda c: c.val_report["regret_mean"])
    assert best.artifact is not None
    artifact = best.artifact
    cv: list[dict[str, Any]] = []
    if config.folds >= 2:
        cv = _cross_validate(best, train_split, config, cm, artifact, say)
    say("evaluating the chosen model", 0.95)
    reports, report_split = _evaluate_splits(artifact, splits, cm)
    shap: dict[str, float] = {}
    lgbm = next((c for c in candidates if c.family == "lgbm"), None)
    if lgbm is not None and lgbm.extra_model is not None:
        model, xv, names = lgbm.extra_model
        shap = shap_importance(model, xv, names)
    metrics = _metrics(reports)
    gap = metrics["train_val_gap_points"]
    artifact.metrics = metrics
    artifact.extra = {
        "candidate": best.name,
        "hyperparameters": best.hyper,
        "dataset": {
            "rows": manifest.get("rows"),
            "fingerprint": fingerprint,
            "source": manifest.get("source"),
        },
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_hosts": training_hosts(native_train),
        "timing_host": timing_host(),
        "host_draws": (
            {
                "seed": config.seed,
                "spread_log2": DEFAULT_SPREAD,
                "rate_sd_log2": DEFAULT_RATE_SD,
                "profile_sd_log2": config.profile_sd,
            }
            if config.host_draws
            else None
        ),
    }
    save_artifact(artifact, out, key=config.model_key)
    _write_test_vectors(out, config.model_key)
    summary = {
        "chosen": best.name,
        "model_dir": str(out),
        "size_bytes": artifact.size_bytes(),
        "decision_times": artifact.times.to_dict(),
        "policy": artifact.policy.to_dict(),
        "temperature": artifact.temperature,
        "candidates": [
            {
                "name": c.name,
                "val_regret_mean": c.val_report["regret_mean"],
                "val_near_optimal_rate": c.val_report["near_optimal_rate"],
                "val_accuracy": c.val_report["accuracy"],
                "decision_times": c.artifact.times.to_dict() if c.artifact else None,
                "hyperparameters": c.hyper,
                "fit_seconds": round(c.fit_seconds, 1),
            }
            for c in candidates
        ],
        "cv": cv,
        "metrics": metrics,
        "shap": shap,
        "seconds": round(time.perf_counter() - t0, 1),
        "library_version": __version__,
    }
    curves = {k: v for c in candidates for k, v in c.curves.items()}
    _write_outputs(
        out,
        artifact,
        summary,
        reports[report_split],
        report_split,
        {
            "learning_curves": curves,
            "shap": shap,
            "candidates": summary["candidates"],
            "cv": cv,
            "summary": {"chosen": best.name, "train-val gap (points)": round(gap, 2)},
        },
    )
    say("done", 1.0)
    return summary


def with_host_draws(
    splits: dict[str, Split], cm: CostModel, seed: int, *, profile_sd: float = DEFAULT_PROFILE_SD
) -> dict[str, Split]:
    """Train and validation re-priced on drawn hosts (``training.hosts``; the models see each host's rates
    through an error of ``profile_sd``), and the test split beside itself as ``test_fleet``: the same
    records priced on a fleet of hosts the model never saw, measured with the default profile error."""
    out = dict(splits)
    for k, name in enumerate(("train", "val")):
        out[name] = reprice_for_hosts(splits[name], cm, seed + k, profile_sd=profile_sd)
    out.update(fleet_splits(splits, cm, seed, names=("test",)))
    return out


def timing_host() -> dict[str, Any] | None:
    """The profile of the host that timed the decisions (this one): a node scales the artifact's
    decision times by its own Python rate against this one's (``modeling.decide.host_times``)."""
    profile = load_or_calibrate(max_age_s=DEFAULT_PROFILE_EVERY_S)  # the host as it is now, not last week
    if profile is None:  # pragma: no cover - load_or_calibrate measures when nothing is cached
        return None
    return {"profile_id": profile.profile_id, "cpu": profile.key.cpu_model, "rates": profile.features()}


def training_hosts(split: Split) -> list[dict[str, Any]]:
    """The hosts whose records a split holds: profile id, CPU, record count and speed rates (the
    ``f_host_*`` columns). Datasets exported before telemetry schema 3 name none."""
    ids = split.cols.get("host_profile_id")
    if ids is None:
        return []
    rate_cols = [c for c in split.cols if c.startswith("f_host_")]
    hosts: list[dict[str, Any]] = []
    for pid in sorted({str(x) for x in ids if x is not None}):
        rows = np.flatnonzero(np.asarray([x == pid for x in ids]))
        first = int(rows[0])
        cpu = split.cols.get("host_cpu")
        hosts.append(
            {
                "host_profile_id": pid,
                "host_cpu": None if cpu is None else cpu[first],
                "records": int(rows.size),
                "rates": {c[len("f_") :]: float(split.cols[c][first]) for c in sorted(rate_cols)},
            }
        )
    return hosts


def _evaluate_splits(
    artifact: ModelArtifact, splits: dict[str, Split], cm: CostModel
) -> tuple[dict[str, dict[str, Any]], str]:
    """Every split's evaluation, the one the HTML report shows (test, else validation) with its arrays."""
    report_split = "test" if "test" in splits else "val"
    reports = {
        name: evaluate_artifact(artifact, split, cm, with_arrays=name == report_split)
        for name, split in splits.items()
    }
    return reports, report_split


def _metrics(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's metrics: each split's summary and the train-validation gap in points."""
    metrics: dict[str, Any] = {name: _summary(r) for name, r in reports.items()}
    metrics["train_val_gap_points"] = (
        reports["train"]["near_optimal_rate"] - reports["val"]["near_optimal_rate"]
    ) * 100
    return metrics


def _write_test_vectors(out: Path, key: bytes | None) -> None:
    """The exported model's ``test_vectors.json`` (``serving.vectors``: request bodies with the heuristic's
    and the HTTP service's answers, for clients in other languages), when the serving packages are here."""
    try:
        from ..serving.vectors import write_test_vectors
    except ImportError:  # pragma: no cover - the HTTP service's packages come with the serving extra
        return
    write_test_vectors(out, key=key)


def _write_outputs(
    out: Path,
    artifact: ModelArtifact,
    summary: dict[str, Any],
    report: dict[str, Any],
    report_split: str,
    extra: dict[str, Any],
) -> None:
    """``training.json``, the model card and the HTML report of ``report`` (evaluated with arrays)."""
    (out / "training.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(summary, artifact))
    try:
        from .report import write_report
    except ImportError:  # pragma: no cover - matplotlib comes with the train extra
        return
    write_report(
        report,
        out / "report.html",
        title=f"dwcp-selector model ({artifact.extra.get('candidate')}) on the {report_split} split",
        extra=extra,
    )


def calibrate(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    timing_calls: int = 200,
    seed: int = 0,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Re-time a trained model's decisions on this host and refit its policy on the validation split.

    Decision times are a property of the host (DESIGN section 5a): a model moved to other hardware, or
    run by a faster decision path, gets its fast-path and rich-tier thresholds refitted here without
    retraining. The manifest, ``training.json``, the model card and the report are rewritten.
    """
    from ..modeling.artifact import load_artifact

    out = Path(model_dir)
    artifact = load_artifact(out, key=key)
    splits, fingerprint, _ = load_dataset(data_dir)
    if fingerprint != artifact.data_fingerprint:
        raise ConfigError(
            f"{data_dir} is not the dataset {out} was trained on (fingerprint {fingerprint}, "
            f"model's {artifact.data_fingerprint})"
        )
    cm = CostModel(artifact.cost_params)
    draws = artifact.extra.get("host_draws")
    if draws:
        sd = float(draws.get("profile_sd_log2", DEFAULT_PROFILE_SD))
        splits = with_host_draws(splits, cm, int(draws["seed"]), profile_sd=sd)
    model = TieredModel(artifact)
    before = {"times": artifact.times.to_dict(), "policy": artifact.policy.to_dict()}
    artifact.fast_rule = fit_fast_rule(splits["train"], cm)  # deterministic: the same rule, or a first one
    artifact.times = measure_decision_times(Decider(model, cm), calls=timing_calls, seed=seed)
    artifact.extra["timing_host"] = timing_host()
    outputs, _ = model_outputs(model, splits["val"], cm)
    artifact.policy, _ = fit_policy(outputs, splits["val"], artifact.times, cm, artifact.fast_rule)
    reports, report_split = _evaluate_splits(artifact, splits, cm)
    metrics = _metrics(reports)
    artifact.metrics = metrics
    save_artifact(artifact, out, key=key)
    _write_test_vectors(out, key)
    summary_path = out / "training.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(
        decision_times=artifact.times.to_dict(),
        policy=artifact.policy.to_dict(),
        metrics=metrics,
        calibrated={"before": before, "library_version": __version__},
    )
    summary.setdefault("chosen", artifact.extra.get("candidate"))
    summary.setdefault("candidates", [])
    extra = {k: summary.get(k) or [] for k in ("candidates", "cv")} | {"shap": summary.get("shap", {})}
    _write_outputs(out, artifact, summary, reports[report_split], report_split, extra)
    return summary


def _training_hosts_line(hosts: list[dict[str, Any]]) -> str:
    """The training hosts by CPU model: records, and how many profiles (history snapshots) they carried."""
    by_cpu: dict[str, list[int]] = {}
    for h in hosts:
        by_cpu.setdefault(str(h.get("host_cpu")), []).append(int(h.get("records") or 0))
    return ", ".join(
        f"{cpu} ({sum(n):,} records" + (f" under {len(n)} profiles)" if len(n) > 1 else ")")
        for cpu, n in by_cpu.items()
    )


def model_card(summary: dict[str, Any], artifact: ModelArtifact) -> str:
    m = summary["metrics"]
    test = m.get("test") or m.get("val")
    lines = [
        "# Model card: dwcp-selector encoder selection",
        "",
        f"Trained {artifact.extra.get('trained_at')} by dwcp-selector {__version__}.",
        "",
        "## What it does",
        "",
        "Chooses, per transfer, how to encode the bytes before AMST sends them: `none`, `lz4`, `zstd`",
        "or `hde` (delta against a baseline; only when one exists). A decision first estimates the transmit",
        "time of the unencoded payload; short transfers skip the model (the decision cached for the",
        "resource, else the fast rule's table: `none` outside it), others compute sampled",
        "features (the rich tier adds a compressibility probe and baseline similarity) and run the model.",
        "",
        "## Architecture",
        "",
        f"- chosen candidate: **{summary['chosen']}** ({artifact.kind}, {artifact.family}), chosen by",
        "  validation mean regret among: " + ", ".join(c["name"] for c in summary["candidates"]),
        f"- hyper-parameters: `{json.dumps(artifact.extra.get('hyperparameters'))}`",
        "- tiers: " + ", ".join(f"{t} ({len(tm.spec.names)} inputs)" for t, tm in artifact.tiers.items()),
        f"- size: {artifact.size_bytes():,} bytes of ONNX; decision times on the training host: "
        + ", ".join(f"{k} {v * 1e6:.1f} µs" for k, v in artifact.times.to_dict().items()),
        f"- policy: fast path when transmit time < {artifact.policy.fast_factor:g} × light decision time; "
        f"rich tier when ≥ {artifact.policy.rich_factor:g} × rich decision time",
        "",
        "## Data",
        "",
        f"- dataset fingerprint `{artifact.data_fingerprint}`; rows {artifact.extra['dataset']['rows']}",
        "- labels: the oracle of DESIGN section 2 (least pipelined transfer time, near-ties to the simpler",
        "  strategy), from every strategy run for real on staging payloads",
        f"- cost model `{artifact.cost_params.fingerprint}`",
        "",
        "## Metrics",
        "",
    ]
    if test:
        lines += [
            "| metric | value |",
            "|---|---:|",
            *(
                f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in test.items()
                if not isinstance(v, dict)  # per link, per class and baselines have tables of their own
            ),
            f"| train-val gap (points of near-optimal rate) | {m['train_val_gap_points']:.2f} |",
            "",
        ]
    hold = m.get("holdout")
    if hold:
        lines += [
            f"On the payload families held out of training ({hold['rows']:,} records): near-optimal rate "
            f"{hold['near_optimal_rate']:.4f}, mean regret {hold['regret_mean']:.4f}, p95 regret "
            f"{hold['regret_p95']:.4f}.",
            "",
        ]
    lines += [
        "## Limitations",
        "",
        "- Trained on staging payload families, the collecting machine's own real files and link draws",
        "  (docs/staging-data.md); other data needs a collection of its own (`collect --corpus`).",
        *(
            [
                "- Takes the node's host speed profile as input and was trained on records re-priced for",
                "  hosts 0.42–2.4× as fast as the collecting one, each codec with its own factor",
                "  (docs/training.md); re-pricing overshoots payloads under 1 MiB on a cache-contended host",
                "  (`bench/host_reprice.py`). Training hosts: "
                + (_training_hosts_line(artifact.extra.get("training_hosts") or []) or "not recorded")
                + ".",
                "- On a host whose speed drifts, labels move with it: refresh the node's profile",
                "  (`Selector.refresh_host_profile`).",
            ]
            if artifact.extra.get("host_draws")
            else [
                "- Encode and decode times are those of the host that measured them; a very different CPU",
                "  shifts the cost boundaries. Re-collect and retrain on the fleet's hardware.",
            ]
        ),
        "- The decision times above are the timing host's; a node scales them by its Python speed, and",
        "  the policy thresholds move with them.",
        "- Label repeatability caps exact accuracy: where two strategies cost nearly the same, the label is",
        "  decided by measurement noise (`bench/label_repeatability.py` re-measures a sample of the staging",
        "  store; near-optimal rate and regret are the headline metrics).",
        "- Short transfers take the fast path (the fast rule's table, `none` outside it) by design; the",
        "  near-optimal rate counts those where the oracle, which ignores decision time, would do better.",
        "",
    ]
    return "\n".join(lines)
