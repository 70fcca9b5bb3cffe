"""``ab``: the A/B analysis of an experiment's logged transfers and its gate; replayed experiments."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..config import Settings
from ..errors import ConfigError
from ._app import cli, emit, stdout
from ._params import SEED, FiniteFloatRange

__all__ = ["ab_group"]

#: the experiment unit and the telemetry column naming it
_UNIT_COLUMNS = {"resource": "resource_id", "session": "session_id", "transfer": "request_id"}
_READ = (
    "ts",
    "source",
    "experiment",
    "arm",
    "propensity",
    "f_payload_bytes",
    "used_time_s",
    "used_error",
    "f_link_type",
    "f_capacity_bps",
    "f_utilization",
    "f_rtt_s",
    "f_loss",
)
_MAX_UNITS = 10**12
_MAX_EXPERIMENTS = 1_000_000


def _pct(x: Any) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    return f"{x * 100:+.2f} %"


def _ci(pair: Any) -> str:
    if not isinstance(pair, list) or len(pair) != 2:
        return "–"
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]"


@cli.group("ab")
def ab_group() -> None:
    """A/B experiments: the analysis and gate of an experiment's transfers, replays on staging records."""


@ab_group.command("analyze")
@click.option(
    "--store", "store_url", required=True, help="Telemetry store URL (sqlite:///… or postgresql://…)."
)
@click.option("--experiment", required=True, help="The experiment id its A/B rows carry.")
@click.option(
    "--planned-units",
    type=click.IntRange(2, _MAX_UNITS),
    help="Units per arm at full information (default: the power calculation's sequential size).",
)
@click.option(
    "--unit",
    type=click.Choice(sorted(_UNIT_COLUMNS)),
    default="resource",
    show_default=True,
    help="The experiment's randomisation unit.",
)
@click.option(
    "--alpha", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01, show_default=True
)
@click.option("--min-gain", type=FiniteFloatRange(-0.99, 10.0), default=0.05, show_default=True)
@click.option(
    "--html", "html", type=click.Path(dir_okay=False, path_type=Path), help="Write the HTML report here."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def analyze_cmd(
    store_url: str,
    experiment: str,
    planned_units: int | None,
    unit: str,
    alpha: float,
    min_gain: float,
    html: Path | None,
    as_json: bool,
) -> None:
    """The gate's verdict (approve, rollback, hold, blocked) on an experiment's transfers, and every
    estimate behind it."""
    from ..experiment.analysis import Design, Observations, analyze, write_html
    from ..telemetry.store import open_store

    design = Design(experiment, planned_units_per_arm=planned_units, alpha=alpha, min_gain=min_gain)
    if html is not None:
        html.parent.mkdir(
            parents=True, exist_ok=True
        )  # a report that cannot be written fails before the work
    with open_store(store_url, must_exist=True) as store:
        table = store.read_table([*_READ, _UNIT_COLUMNS[unit]])
    obs = Observations.from_table(table, experiment, unit_column=_UNIT_COLUMNS[unit])
    if obs.n == 0:
        failed = sum(obs.errors.values())
        raise ConfigError(
            f"experiment {experiment!r} has no completed transfers ({failed} failed or unlabelled)"
        )
    analysis = analyze(obs, design)
    if html is not None:
        write_html(analysis, html)
    doc = analysis.to_dict()

    def human() -> None:
        stdout.print(
            f"[bold]{experiment}[/bold]: {analysis.verdict.upper()}  ({'; '.join(analysis.reasons)})"
        )
        t = Table(title_justify="left")
        for col in ("metric", "gain", "95 % CI", "p (one-sided)"):
            t.add_column(col, justify="left" if col == "metric" else "right")
        th, sp, rb = doc["throughput"], doc["speed"], doc["robust"]
        t.add_row("aggregate throughput", _pct(th.get("gain")), _ci(th.get("ci95")), "–")
        t.add_row(
            "per-transfer speed (Welch, geometric)",
            _pct(sp.get("gain")),
            _ci(sp.get("ci95")),
            f"{sp.get('p_one_sided', 0):.3g}",
        )
        t.add_row(
            "Yuen 10 % trimmed",
            _pct(rb.get("gain")),
            _ci(rb.get("ci95")),
            f"{rb.get('p_one_sided') or 0:.3g}",
        )
        if doc["cuped"]:
            cu = doc["cuped"]
            t.add_row("CUPED", _pct(cu.get("gain")), _ci(cu.get("ci95")), f"{cu.get('p_one_sided') or 0:.3g}")
        stdout.print(t)
        looks = Table("look", "t", "units T/C", "z", "boundary", "gain", "decision", title_justify="left")
        for lk in doc["gate"]["looks"]:
            looks.add_row(
                str(lk["index"] + 1),
                f"{lk['planned_fraction']:g}",
                f"{lk['units_treatment']}/{lk['units_control']}",
                f"{lk['z']:.2f}" if lk["z"] is not None else "–",
                f"{lk['boundary']:.2f}",
                _pct(lk["gain"]),
                lk["decision"],
            )
        stdout.print(looks)
        pw = doc["power"]
        stdout.print(
            f"units per arm for {min_gain:.0%} at alpha {alpha}: {pw.get('units_per_arm_fixed')} fixed, "
            f"{pw.get('units_per_arm_sequential')} sequential (planned {pw.get('planned_units_per_arm')})"
        )
        if html is not None:
            stdout.print(f"report → {html}")

    emit(as_json, doc, human)


@ab_group.command("replay")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="An exported dataset directory or a Parquet file of staging records.",
)
@click.option(
    "--model", "model_dir", type=click.Path(path_type=Path), help="The treatment: a model directory."
)
@click.option("--experiments", type=click.IntRange(1, _MAX_EXPERIMENTS), default=1000, show_default=True)
@click.option(
    "--aa", is_flag=True, help="A/A: both arms take the control's choices (every approval is false)."
)
@click.option(
    "--unit",
    type=click.Choice(["payload", "resource", "session", "transfer"]),
    default="session",
    show_default=True,
)
@click.option(
    "--share", type=FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.5, show_default=True
)
@click.option(
    "--noise",
    type=FiniteFloatRange(0.0, 5.0),
    default=0.0,
    show_default=True,
    help="Log-normal sd per transfer.",
)
@click.option("--split", default="test", show_default=True, help="The dataset split to replay.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def replay_cmd(
    data_path: Path,
    model_dir: Path | None,
    experiments: int,
    aa: bool,
    unit: str,
    share: float,
    noise: float,
    split: str,
    seed: int,
    as_json: bool,
) -> None:
    """Replay EXPERIMENTS A/B (or A/A) experiments on logged records through the gate: verdict rates."""
    from ..experiment.analysis import Design
    from ..experiment.replay import ReplayData, replay

    if not aa and model_dir is None:
        raise ConfigError(
            "an A/B replay needs --model (the treatment); --aa replays the control against itself"
        )
    if model_dir is not None and not model_dir.is_dir():
        raise ConfigError(f"no model directory at {model_dir}")
    data = ReplayData.load(
        data_path,
        split=split,
        unit=unit,
        model=None if aa else model_dir,
        model_key=Settings.from_env().model_key,
    )
    result = replay(
        data, Design("replay"), experiments=experiments, aa=aa, share=share, noise=noise, seed=seed
    )
    doc = json.loads(json.dumps(result.to_dict(), default=float))

    def human() -> None:
        kind = "A/A" if aa else "A/B"
        key = "false_approval_rate" if aa else "approval_rate"
        stdout.print(
            f"{kind}: {experiments:,} replays of {data.n:,} records, {len(data.unit_ids):,} {unit} units, "
            f"{doc['seconds']:.1f} s"
        )
        t = Table("verdict", "experiments", "share", title_justify="left")
        for v in ("approve", "rollback", "hold", "blocked"):
            n = doc["verdicts"].get(v, 0)
            t.add_row(v, f"{n:,}", f"{n / experiments:.2%}")
        stdout.print(t)
        lo, hi = doc[f"{key}_ci95"]
        stdout.print(f"{key.replace('_', ' ')}: {doc[key]:.2%} (95 % CI {lo:.2%} – {hi:.2%})")
        if not aa:
            tg = doc["true_gain"]
            stdout.print(
                f"gain over every record: aggregate {_pct(tg['aggregate'])}, "
                f"geometric {_pct(tg['geometric'])}; "
                f"mean final-look estimate {_pct(doc['final_gain_mean'])}"
            )

    emit(as_json, doc, human)
