"""``rollout``: start, evaluate, watch and abort the gradual rollout of a challenger model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..errors import ConfigError
from ..experiment.rollout import Guardrails, RolloutController, RolloutPlan
from ..serving.registry import ModelRegistry
from ._app import cli, emit, stdout

__all__ = ["rollout_group"]

_STATE = click.option(
    "--state",
    "state_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The rollout's state file (senders follow it).",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _steps(value: str) -> tuple[float, ...]:
    try:
        pct = [float(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"steps are percentages separated by commas, got {value!r}") from exc
    if not pct or any(not 0 < p <= 100 for p in pct) or pct != sorted(set(pct)):
        raise click.BadParameter(f"steps must be percentages rising within (0, 100], got {value!r}")
    return tuple(p / 100.0 for p in pct)


def _controller(state_path: Path, store: str | None, registry_dir: Path | None) -> RolloutController:
    registry = None
    if registry_dir is not None:
        registry = ModelRegistry(registry_dir, model_key=Settings.from_env().model_key)
    controller = RolloutController(state_path, registry=registry)
    if store is not None:
        from ..telemetry.store import open_store

        experiment = controller.plan.experiment

        def read_rows() -> Any:
            # the experiment's rows only, filtered in the store: what the guardrails and the gate judge
            with open_store(store, must_exist=True) as s:
                return s.read_table(experiment=experiment)

        controller.read_rows = read_rows
    return controller


def _print(summary: dict[str, Any]) -> None:
    stdout.print(
        f"[bold]{summary['experiment']}[/]: {summary['status']}, treatment at {summary['share'] * 100:g} % "
        f"(step {summary['step'] + 1} of {len(summary['steps'])}: "
        f"{' → '.join(f'{s * 100:g}' for s in summary['steps'])} %); control: {summary['control_policy']}"
    )
    last = summary.get("last_evaluation")
    if last:
        reason = f" ({last['reason']})" if last.get("reason") else ""
        stdout.print(f"last evaluation: {last.get('action')}{reason}")
    if summary.get("breach"):
        stdout.print(f"[red]rolled back[/]: {summary['breach']['why']}")


@cli.group("rollout")
def rollout_group() -> None:
    """Gradual rollout of a challenger: steps, guardrails, the A/B gate, automatic rollback."""


@rollout_group.command("start")
@_STATE
@click.option("--experiment", required=True, help="The experiment name (the A/B rows' `experiment`).")
@click.option("--steps", default="1,10,50,100", show_default=True, help="Treatment percentages, rising.")
@click.option(
    "--min-hold", "min_hold_s", type=float, default=600.0, show_default=True, help="Seconds per step."
)
@click.option("--min-samples", type=int, default=200, show_default=True, help="Transfers per arm per step.")
@click.option(
    "--interval", "interval_s", type=float, default=60.0, show_default=True, help="Seconds between checks."
)
@click.option(
    "--unit", type=click.Choice(["transfer", "resource", "node"]), default="resource", show_default=True
)
@click.option("--salt", default="", help="Assignment salt (default: the experiment name).")
@click.option(
    "--planned-units", type=int, default=2000, show_default=True, help="Units per arm the A/B plans."
)
@click.option("--challenger", help="The registry version under test (promoted to champion at the end).")
@click.option("--near-optimal-min", type=float, default=0.95, show_default=True)
@click.option("--decision-p99-max", "decision_p99_max_s", type=float, default=2e-3, show_default=True)
@click.option("--error-rate-max", type=float, default=1e-3, show_default=True)
@click.option("--throughput-drop-max", type=float, default=0.02, show_default=True)
@_JSON
def start_cmd(
    state_path: Path,
    experiment: str,
    steps: str,
    min_hold_s: float,
    min_samples: int,
    interval_s: float,
    unit: str,
    salt: str,
    planned_units: int,
    challenger: str | None,
    near_optimal_min: float,
    decision_p99_max_s: float,
    error_rate_max: float,
    throughput_drop_max: float,
    as_json: bool,
) -> None:
    """Begin a rollout at its first step (refused while another runs in the same state file)."""
    plan = RolloutPlan(
        experiment=experiment,
        steps=_steps(steps),
        min_hold_s=min_hold_s,
        min_samples_per_arm=min_samples,
        interval_s=interval_s,
        unit=unit,
        salt=salt,
        planned_units_per_arm=planned_units,
        challenger=challenger,
        guardrails=Guardrails(
            near_optimal_min=near_optimal_min,
            decision_p99_max_s=decision_p99_max_s,
            error_rate_max=error_rate_max,
            throughput_drop_max=throughput_drop_max,
        ),
    )
    c = RolloutController.start(state_path, plan)
    summary = c.summary()
    emit(as_json, summary, lambda: _print(summary))


@rollout_group.command("status")
@_STATE
@_JSON
def status_cmd(state_path: Path, as_json: bool) -> None:
    """Where the rollout is, its last evaluation and any breach."""
    summary = RolloutController(state_path).summary()
    emit(as_json, summary, lambda: _print(summary))


@rollout_group.command("tick")
@_STATE
@click.option("--store", required=True, help="Telemetry store URL holding the experiment's rows.")
@click.option("--registry", "registry_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--iterations", type=int, default=1, show_default=True, help="Evaluations, `interval` apart.")
@_JSON
def tick_cmd(state_path: Path, store: str, registry_dir: Path | None, iterations: int, as_json: bool) -> None:
    """Evaluate the guardrails and the gate: advance, hold or roll back (a cron job or a loop)."""
    if iterations < 1:
        raise ConfigError("--iterations must be at least 1")
    c = _controller(state_path, store, registry_dir)
    evaluations = c.run(iterations=iterations) if iterations > 1 else [c.tick()]
    summary = c.summary()
    emit(as_json, {**summary, "evaluations": evaluations}, lambda: _print(summary))


@rollout_group.command("abort")
@_STATE
@click.option("--why", required=True, help="Why (kept in the state's events).")
@_JSON
def abort_cmd(state_path: Path, why: str, as_json: bool) -> None:
    """Stop the rollout now: treatment to 0 %."""
    c = RolloutController(state_path)
    c.abort(why)
    summary = c.summary()
    emit(as_json, summary, lambda: _print(summary))
