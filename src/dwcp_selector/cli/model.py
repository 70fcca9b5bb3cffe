"""``train``, ``evaluate`` and ``select``: the model, from a dataset to a decision."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from ..config import Settings
from ..link import SystemState, link_from_class
from ._app import cli, emit, stdout
from ._params import MAX_TRIALS, SEED, FiniteFloatRange
from .codec import _FILE, _baseline, _mapped, link_options

if TYPE_CHECKING:  # the training stack (torch, LightGBM) loads only when a command trains
    from ..modeling.runtime import TieredModel
    from ..training.pipeline import TrainConfig

__all__ = ["calibrate_cmd", "evaluate_cmd", "select_cmd", "train_cmd", "train_with_progress"]

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_MODEL_DIR = click.option(
    "--model", "model_dir", required=True, type=_EXISTING_DIR, help="A model directory."
)
_DATA_DIR = click.option("--data", "data_dir", required=True, type=_EXISTING_DIR, help="An exported dataset.")

_KEYS = (
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


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.2%}"


def train_with_progress(data_dir: Path, out_dir: Path, config: TrainConfig, *, show: bool) -> dict[str, Any]:
    """``training.pipeline.train`` with its stages on a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..training.pipeline import train

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), disable=not show
    ) as bar:
        task = bar.add_task("training", total=1.0)
        return train(
            data_dir,
            out_dir,
            config,
            progress=lambda msg, frac: bar.update(task, description=msg, completed=frac),
        )


@cli.command("train")
@_DATA_DIR
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--trials",
    type=click.IntRange(1, MAX_TRIALS),
    default=12,
    show_default=True,
    help="Optuna trials per candidate.",
)
@click.option(
    "--folds", type=click.IntRange(min=0), default=5, show_default=True, help="Grouped CV folds (0: none)."
)
@click.option("--candidates", help="Comma-separated subset of cmil-mlp, clf-mlp-ce, clf-mlp-cost, clf-lgbm.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--host-draws/--no-host-draws",
    default=True,
    show_default=True,
    help="Re-price records on drawn hosts and give the models this node's speed profile as input.",
)
@click.option(
    "--profile-sd",
    type=FiniteFloatRange(0.0, 2.0),
    help="Error (log2 sd) of the host rates the models see beside each drawn host's true ones "
    "[default: training.hosts.DEFAULT_PROFILE_SD, 0.4].",
)
@click.option("--json", "as_json", is_flag=True)
def train_cmd(
    data_dir: Path,
    out_dir: Path,
    trials: int,
    folds: int,
    candidates: str | None,
    seed: int,
    host_draws: bool,
    profile_sd: float | None,
    as_json: bool,
) -> None:
    """Train every candidate on an exported dataset, keep the best by validation regret, export ONNX."""
    from ..training.pipeline import CANDIDATES, TrainConfig

    chosen: tuple[str, ...] = CANDIDATES
    if candidates is not None:
        chosen = tuple(c.strip() for c in candidates.split(",") if c.strip())
        if not chosen:
            raise click.BadParameter("names no candidate", param_hint="'--candidates'")
    config = TrainConfig(
        trials=trials,
        folds=folds,
        candidates=chosen,
        seed=seed,
        host_draws=host_draws,
        model_key=Settings.from_env().model_key,
    )
    if profile_sd is not None:
        config = dataclasses.replace(config, profile_sd=profile_sd)
    summary = train_with_progress(data_dir, out_dir, config, show=not as_json and sys.stderr.isatty())

    def human() -> None:
        t = Table(title="candidates (validation)", title_justify="left")
        for col in ("candidate", "mean regret", "near-optimal", "accuracy", "light decision", "fit s"):
            t.add_column(col, justify="left" if col == "candidate" else "right")
        for c in summary["candidates"]:
            times = c["decision_times"] or {}
            t.add_row(
                f"[bold]{c['name']}[/]" if c["name"] == summary["chosen"] else c["name"],
                _pct(c["val_regret_mean"]),
                _pct(c["val_near_optimal_rate"]),
                _pct(c["val_accuracy"]),
                f"{times.get('light_s', 0) * 1e6:.1f} µs",
                str(c["fit_seconds"]),
            )
        stdout.print(t)
        test = summary["metrics"].get("test") or summary["metrics"]["val"]
        stdout.print(
            f"chosen [bold]{summary['chosen']}[/] → {summary['model_dir']} "
            f"({summary['size_bytes']:,} bytes); "
            f"test near-optimal {_pct(test['near_optimal_rate'])}, mean regret {_pct(test['regret_mean'])}, "
            f"gain vs heuristic {_pct(test['gain_vs_heuristic'])}; trained in {summary['seconds']:.0f} s"
        )

    emit(as_json, summary, human)


def _checked_model(model_dir: Path, data_dir: Path | None) -> TieredModel:
    """The model (and the dataset it was trained on), refused before the host is measured (seconds)."""
    from ..errors import ConfigError
    from ..modeling.artifact import load_artifact
    from ..modeling.runtime import TieredModel

    artifact = load_artifact(model_dir, key=Settings.from_env().model_key)
    model = TieredModel(artifact)  # onnxruntime refuses a damaged network here
    if data_dir is not None:
        from ..training.data import load_dataset

        # training.pipeline.calibrate reads it again; this read costs less than measuring the host in vain
        _, fingerprint, _ = load_dataset(data_dir)
        if fingerprint != artifact.data_fingerprint:
            raise ConfigError(
                f"{data_dir} is not the dataset {model_dir} was trained on (fingerprint {fingerprint}, "
                f"model's {artifact.data_fingerprint})"
            )
    return model


@cli.command("calibrate")
@click.option("--model", "model_dir", type=_EXISTING_DIR, help="A model directory: its decisions are timed.")
@click.option(
    "--data",
    "data_dir",
    type=_EXISTING_DIR,
    help="The model's dataset: also refit its fast-path and rich-tier policy on this host's times.",
)
@click.option("--calls", type=click.IntRange(20, 1_000_000), default=200, show_default=True)
@click.option(
    "--budget",
    type=FiniteFloatRange(min=0.5, max=600),
    default=10.0,
    show_default=True,
    help="Seconds the host profile may take.",
)
@click.option("--force", is_flag=True, help="Measure the host again even when a profile is cached.")
@click.option("--json", "as_json", is_flag=True)
def calibrate_cmd(
    model_dir: Path | None,
    data_dir: Path | None,
    calls: int,
    budget: float,
    force: bool,
    as_json: bool,
) -> None:
    """Measure this host's speed profile (cached per host), and re-time a model's decisions on it.

    Without --data nothing in the model directory changes: the host profile and the model's decision
    times on this host go to the profile cache. With --data the model's policy is refitted too.
    """
    from ..errors import ConfigError
    from ..hostprofile import load_or_calibrate, profile_dir

    if data_dir is not None and model_dir is None:
        raise ConfigError("--data needs --model: the dataset is the model's")
    model = _checked_model(model_dir, data_dir) if model_dir is not None else None
    profile = load_or_calibrate(force=force, budget_s=budget)
    assert profile is not None
    doc: dict[str, Any] = {
        "host_profile": {**profile.to_dict(), "profile_id": profile.profile_id},
        "profile_dir": str(profile_dir()),
    }
    summary: dict[str, Any] | None = None
    if model is not None and data_dir is None:
        from ..costmodel import CostModel
        from ..modeling.decide import Decider
        from ..modeling.timing import measure_decision_times

        artifact = model.artifact
        times = measure_decision_times(Decider(model, CostModel(artifact.cost_params), profile), calls=calls)
        doc["decision_times"] = {"model": artifact.times.to_dict(), "this_host": times.to_dict()}
    elif model_dir is not None and data_dir is not None:
        from ..training.pipeline import calibrate

        summary = calibrate(model_dir, data_dir, timing_calls=calls, key=Settings.from_env().model_key)
        doc.update({k: summary[k] for k in ("decision_times", "policy", "calibrated")})
        doc["test"] = {k: summary["metrics"].get("test", {}).get(k) for k in _KEYS}

    def human() -> None:
        p = profile
        combined = f", the fastest of {p.snapshots} calibrations of the last day" if p.snapshots > 1 else ""
        stdout.print(
            f"host {p.key.cpu_model}, {p.key.cores} cores ({p.profile_id}; the last calibration took "
            f"{p.calibration_s:.1f} s, measured {p.measured_at}{combined})"
        )
        for s in p.encode_bps:
            stdout.print(
                f"  {s:5} encode {p.encode_bps[s] / 1e6:8.1f} MB/s, decode {p.decode_bps[s] / 1e6:8.1f} MB/s"
                " per core"
            )
        stdout.print(f"  Python reference loop {p.python_ops_s / 1e6:.2f} M iterations/s")
        if "decision_times" in doc and summary is None:
            was, now = doc["decision_times"]["model"], doc["decision_times"]["this_host"]
            stdout.print(
                "decision times (model's → this host): "
                + ", ".join(f"{k} {was[k]:.3g} → {v:.3g}" for k, v in now.items())
            )
        if summary is not None:
            before = summary["calibrated"]["before"]
            for name, now in (("decision times", summary["decision_times"]), ("policy", summary["policy"])):
                was = before["times" if name == "decision times" else "policy"]
                stdout.print(f"{name}: " + ", ".join(f"{k} {was[k]:.3g} → {v:.3g}" for k, v in now.items()))
            test = doc["test"]
            stdout.print(
                f"test: near-optimal {_pct(test['near_optimal_rate'])}, "
                f"mean regret {_pct(test['regret_mean'])}"
            )

    emit(as_json, doc, human)


@cli.command("evaluate")
@_MODEL_DIR
@_DATA_DIR
@click.option("--split", default="test", show_default=True, help="train, val, test or holdout.")
@click.option(
    "--html", "html", type=click.Path(dir_okay=False, path_type=Path), help="Write the HTML report here."
)
@click.option("--json", "as_json", is_flag=True)
def evaluate_cmd(model_dir: Path, data_dir: Path, split: str, html: Path | None, as_json: bool) -> None:
    """Every metric of the model on a dataset split, per link type and payload family."""
    from ..errors import ConfigError
    from ..modeling.artifact import load_artifact
    from ..training.data import load_dataset
    from ..training.policy_eval import evaluate_artifact

    artifact = load_artifact(model_dir, key=Settings.from_env().model_key)
    splits, _, _ = load_dataset(data_dir)
    if split not in splits:
        raise ConfigError(f"{data_dir} has no {split!r} split (has {', '.join(splits)})")
    if html is not None:
        html.parent.mkdir(
            parents=True, exist_ok=True
        )  # a report that cannot be written fails before the work
    report = evaluate_artifact(artifact, splits[split], with_arrays=html is not None)
    if html is not None:
        from ..training.report import write_report

        write_report(report, html, title=f"dwcp-selector model on {data_dir.name}/{split}")
    report.pop("_arrays", None)

    def human() -> None:
        t = Table(title=f"{split}: {report['rows']:,} transfers", title_justify="left")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k in _KEYS:
            t.add_row(k, _pct(report.get(k)))
        t.add_row("regret p99", _pct(report.get("regret_p99")))
        t.add_row("per-transfer gain vs probe", _pct(report.get("per_transfer_gain_vs_probe")))
        stdout.print(t)
        t2 = Table(title="by link type", title_justify="left")
        for col in ("link", "rows", "near-optimal", "mean regret", "p95 regret", "gain vs heuristic"):
            t2.add_column(col, justify="left" if col == "link" else "right")
        for link, m in report["by_link"].items():
            if m.get("rows"):
                t2.add_row(
                    link,
                    f"{m['rows']:,}",
                    _pct(m["near_optimal_rate"]),
                    _pct(m["regret_mean"]),
                    _pct(m["regret_p95"]),
                    _pct(m.get("gain_vs_heuristic")),
                )
        stdout.print(t2)
        if html is not None:
            stdout.print(f"report → {html}")

    emit(as_json, json.loads(json.dumps(report, default=float)), human)


@cli.command("select")
@click.argument("file", type=_FILE)
@click.option("--baseline", type=_FILE, help="Previous version of FILE (offers hde).")
@link_options
@_MODEL_DIR
@click.option("--payload-type", default="other", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def select_cmd(
    file: Path,
    baseline: Path | None,
    link_type: str,
    bandwidth_mbps: float | None,
    rtt_ms: float | None,
    loss: float | None,
    utilization: float | None,
    free_cores: float,
    model_dir: Path,
    payload_type: str,
    as_json: bool,
) -> None:
    """The model's choice for sending FILE over a link, its confidence, features and decision time."""
    from ..serving.selector import Selector

    link = link_from_class(
        link_type, bandwidth_mbps=bandwidth_mbps, rtt_ms=rtt_ms, loss=loss, utilization=utilization
    )
    system = SystemState(free_cores=free_cores)
    selector = Selector(model_dir, model_key=Settings.from_env().model_key)
    base = _baseline(baseline, None)
    with _mapped(file) as payload:
        data = bytes(payload)
    # the first decision of a process pays one-off costs (lazy imports, first allocations): warm up, then time
    selector.select(data, link, system, baseline=base.data if base else None, payload_type=payload_type)
    decision = selector.select(
        data, link, system, baseline=base.data if base else None, payload_type=payload_type
    )
    doc = {"file": str(file), **decision.to_dict(), "model": str(model_dir)}

    def human() -> None:
        stdout.print(
            f"{file.name}: [bold]{decision.strategy}[/] (confidence {decision.confidence:.0%}, "
            f"{decision.tier} tier, "
            f"decided in {decision.latency_s * 1e6:.1f} µs)"
        )
        if decision.predicted_costs:
            stdout.print(
                "  predicted transfer times: "
                + ", ".join(f"{s} {c * 1e3:.3f} ms" for s, c in decision.predicted_costs.items())
            )
        if decision.probabilities:
            stdout.print(
                "  probabilities: " + ", ".join(f"{s} {p:.1%}" for s, p in decision.probabilities.items())
            )

    emit(as_json, doc, human)
