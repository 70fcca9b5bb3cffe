"""``demo``: the main job on the embedded default (SQLite; no server needed).

1. every strategy measured for real on a few generated payloads of each family, priced on the typical
   link of each class: which encoder wins where, and by how much;
2. a small staging collection into SQLite (``out/demo/telemetry.db``), labelled by the oracle;
3. its validation: quality score, label shares per link type, HDE:AMST balance;
4. its export (sessions split 70/15/15 by time), a model trained on it (every candidate, a short search),
   evaluated on the test split against the rule heuristic, the best static strategy, the sampling probe
   and the oracle, with the HTML report in ``out/demo/report.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.progress import Progress
from rich.table import Table

from ..costmodel import CostModel, Oracle
from ..link import LINK_CLASSES, SystemState
from ..measure import measure_strategy
from ..strategies import Baseline, PayloadCodec
from ..workload import demo_payloads
from ._app import cli, emit, stdout
from ._params import MAX_SAMPLES, MAX_TRIALS, MAX_WORKERS, SEED, FiniteFloatRange

__all__ = ["demo_cmd"]

#: The demo's staging payloads stop at 16 MiB so that the whole demo stays around a minute.
DEMO_MAX_BYTES = 16 << 20


@cli.command("demo")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--free-cores", type=FiniteFloatRange(min=0, min_open=True), default=4.0, show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(0, MAX_SAMPLES),
    default=3000,
    show_default=True,
    help="Staging records to collect (0 skips collection and training).",
)
@click.option(
    "--trials",
    type=click.IntRange(1, MAX_TRIALS),
    default=3,
    show_default=True,
    help="Optuna trials per candidate when training the demo model.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/demo"),
    show_default=True,
)
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def demo_cmd(
    seed: int, free_cores: float, samples: int, trials: int, out_dir: Path, workers: int, as_json: bool
) -> None:
    """Measure every strategy; collect, validate and export a staging set; train and evaluate a model."""
    if samples:
        out_dir.mkdir(parents=True, exist_ok=True)  # an --out that cannot be made fails before the work
    codec = PayloadCodec()
    codec.warm_up()
    cost_model = CostModel()
    oracle = Oracle(cost_model)
    system = SystemState(free_cores=free_cores)
    payloads = demo_payloads(seed)
    rows: list[dict[str, Any]] = []
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task("measuring strategies", total=len(payloads))
        for name, data, base_bytes in payloads:
            baseline = Baseline("demo-resource", base_bytes) if base_bytes is not None else None
            offered = codec.registry.offered(len(data), has_baseline=baseline is not None)
            runs = {s: measure_strategy(codec, data, s, baseline=baseline) for s in offered}
            per_link = {}
            for link_name, cls in LINK_CLASSES.items():
                link = cls.typical
                costs = cost_model.costs(len(data), {s: r.measurement for s, r in runs.items()}, link, system)
                decision = oracle.decide(costs)
                per_link[link_name] = {
                    "oracle": decision.label,
                    "cost_s": decision.cost_s,
                    "none_cost_s": costs["none"],
                    "costs": costs,
                }
            rows.append(
                {
                    "payload": name,
                    "bytes": len(data),
                    "strategies": {
                        s: {
                            "compressed_bytes": r.compressed_bytes,
                            "encode_s": r.encode_s,
                            "decode_s": r.decode_s,
                            "roundtrip": r.roundtrip,
                        }
                        for s, r in runs.items()
                    },
                    "links": per_link,
                }
            )
            progress.advance(task)

    def human() -> None:
        t1 = Table(
            title="Strategies measured for real (ratio, encode MB/s, decode MB/s)", title_justify="left"
        )
        t1.add_column("payload")
        for s in codec.registry.names():
            t1.add_column(s, justify="right")
        for row in rows:
            cells = []
            for s in codec.registry.names():
                r = row["strategies"].get(s)
                if r is None:
                    cells.append("-")
                    continue
                ratio = row["bytes"] / r["compressed_bytes"]
                enc = row["bytes"] / r["encode_s"] / 1e6 if r["encode_s"] > 0 else float("inf")
                dec = row["bytes"] / r["decode_s"] / 1e6 if r["decode_s"] > 0 else float("inf")
                cells.append(f"{ratio:.1f}× {enc:,.0f} {dec:,.0f}")
            t1.add_row(row["payload"], *cells)
        stdout.print(t1)
        t2 = Table(
            title=f"Oracle per link class (typical link, {free_cores:g} free cores): choice, time vs none",
            title_justify="left",
        )
        t2.add_column("payload")
        for link_name, cls in LINK_CLASSES.items():
            link = cls.typical
            t2.add_column(
                f"{link_name} ({link.capacity_bps / 1e6:,.0f} Mbit/s, {link.rtt_s * 1e3:.2g} ms)",
                justify="right",
            )
        for row in rows:
            cells = []
            for link_name in LINK_CLASSES:
                d = row["links"][link_name]
                speedup = d["none_cost_s"] / d["cost_s"]
                cells.append(f"{d['oracle']} {d['cost_s'] * 1e3:,.2f} ms ({speedup:.1f}× none)")
            t2.add_row(row["payload"], *cells)
        stdout.print(t2)

    if not as_json:
        human()
    staging = _staging(samples, seed, workers, out_dir, as_json) if samples else None
    model = _model(out_dir, seed, trials, as_json) if samples else None
    if as_json:
        emit(
            True,
            {
                "seed": seed,
                "free_cores": free_cores,
                "cost_model": cost_model.params.fingerprint,
                "payloads": rows,
                "staging": staging,
                "model": model,
            },
            human,
        )


def _staging(samples: int, seed: int, workers: int, out_dir: Path, as_json: bool) -> dict[str, Any]:
    """Collect a small staging set into SQLite, validate it, print the summary; return both as JSON."""
    from ..dataset.quality import assess  # the telemetry and dataset stages load pyarrow: only when used
    from ..telemetry.staging import collect
    from ..telemetry.store import open_store
    from ..workload.staging import ScenarioMix

    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "telemetry.db"
    for leftover in out_dir.glob("telemetry.db*"):
        leftover.unlink()
    url = f"sqlite:///{db}"
    with Progress(disable=as_json) as progress:
        task = progress.add_task("collecting staging records", total=samples)
        collected = collect(
            url,
            samples,
            seed,
            workers=workers,
            mix=ScenarioMix(max_bytes=DEMO_MAX_BYTES),
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    with open_store(url) as store:
        quality = assess(store.read_table())
    if not as_json:
        stdout.print(
            f"\nstaging: {collected.records:,} records from {collected.payloads:,} payloads "
            f"(up to {DEMO_MAX_BYTES >> 20} MiB) in {collected.seconds:.0f} s → {db}"
        )
        stdout.print(
            f"validation: quality score [bold]{quality.quality_score:.4f}[/], "
            f"missing {quality.missing_share:.2%}, HDE:AMST balance {quality.hde_amst_balance or 0:.1%}"
        )
        names = ("none", "lz4", "zstd", "hde")
        t = Table(title="oracle labels by link type", title_justify="left")
        t.add_column("link")
        for name in names:
            t.add_column(name, justify="right")
        t.add_row("all", *(f"{quality.class_shares[k]:.1%}" for k in names))
        for link, shares in quality.class_shares_by_link.items():
            t.add_row(link, *(f"{shares[k]:.1%}" for k in names))
        stdout.print(t)
        for f in quality.failures:
            stdout.print(f"[red]below the bar:[/] {f}")
        for w in quality.warnings:
            stdout.print(f"[yellow]warning:[/] {w}")
    return {**collected.to_dict(), "validation": quality.to_dict()}


def _model(out_dir: Path, seed: int, trials: int, as_json: bool) -> dict[str, Any]:
    """Export the demo store, train on it, evaluate on its test split, print the standings."""
    import shutil

    from ..dataset.export import export_dataset
    from ..telemetry.store import open_store
    from ..training.pipeline import TrainConfig
    from .model import train_with_progress

    data_dir = out_dir / "dataset"
    model_dir = out_dir / "model"
    with open_store(f"sqlite:///{out_dir / 'telemetry.db'}") as store:
        exported = export_dataset(store.read_table(), data_dir, source="demo staging", csv=False)
    config = TrainConfig(trials=trials, folds=0, max_epochs=80, seed=seed, timing_calls=100)
    summary = train_with_progress(data_dir, model_dir, config, show=not as_json)
    # training evaluated the test split and drew its report: show those, do not evaluate again
    report = summary["metrics"]["test"]
    html = out_dir / "report.html"
    shutil.copyfile(model_dir / "report.html", html)
    standings = [
        {
            "policy": f"model ({summary['chosen']})",
            "near_optimal_rate": report["near_optimal_rate"],
            "regret_mean": report["regret_mean"],
            "regret_p95": report["regret_p95"],
            "model_gain": 0.0,
        }
    ]
    for name in ("heuristic", "static", "probe", "oracle"):
        if name == "oracle":
            standings.append(
                {
                    "policy": "oracle (ceiling)",
                    "near_optimal_rate": 1.0,
                    "regret_mean": 0.0,
                    "regret_p95": 0.0,
                    "model_gain": -report["oracle_gap"] / (1 + report["oracle_gap"]),
                }
            )
            continue
        b = report[f"baseline_{name}"]
        label = f"static ({report['static_policy']})" if name == "static" else name
        standings.append(
            {
                "policy": label,
                "near_optimal_rate": b["near_optimal_rate"],
                "regret_mean": b["regret_mean"],
                "regret_p95": b["regret_p95"],
                "model_gain": report[f"gain_vs_{name}"],
            }
        )
    if not as_json:
        stdout.print(
            f"\nexported {sum(exported.rows.values()):,} records → {data_dir} "
            f"({', '.join(f'{k} {v:,}' for k, v in exported.rows.items() if v)}); "
            f"trained {len(summary['candidates'])} candidates in {summary['seconds']:.0f} s, "
            f"chose [bold]{summary['chosen']}[/] → {model_dir}"
        )
        t = Table(
            title=f"test split, {report['rows']:,} transfers: decision time included", title_justify="left"
        )
        for col in ("policy", "near-optimal", "mean regret", "p95 regret", "model's aggregate gain over it"):
            t.add_column(col, justify="left" if col == "policy" else "right")
        for row in standings:
            t.add_row(
                row["policy"],
                f"{row['near_optimal_rate']:.1%}",
                f"{row['regret_mean']:.2%}",
                f"{row['regret_p95']:.2%}",
                f"{row['model_gain']:+.1%}",
            )
        stdout.print(t)
        stdout.print(
            "A demo model learns from a few thousand records: `dwcp-selector collect --samples 100000` "
            "and `train` make the real one (docs/training.md)."
        )
        stdout.print(f"HTML report (confusion matrix, reliability, gain and regret) → {html}")
    return {
        "dataset": {"dir": str(data_dir), "rows": exported.rows},
        "chosen": summary["chosen"],
        "model_dir": str(model_dir),
        "train_seconds": summary["seconds"],
        "standings": standings,
        "report": str(html),
        "test": {k: report.get(k) for k in ("accuracy", "near_optimal_rate", "regret_mean", "gain_vs_probe")},
    }
