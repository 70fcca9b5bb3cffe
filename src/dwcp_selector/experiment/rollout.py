"""Gradual rollout of a challenger model: steps, holds, guardrails, the A/B gate, automatic rollback.

A rollout walks the treatment share through ``steps`` (1 → 10 → 50 → 100 % by default). Every
``interval_s`` the controller evaluates the experiment's rows in the telemetry store since the step
began (:class:`LiveMetrics`: the ``ab`` rows of each arm, and the ``audit`` rows for the near-optimal
rate) against the **guardrails** (the roadmap's four triggers):

* treatment near-optimal rate (audited transfers whose used strategy costs at most the oracle's
  within the 1 % tie band) below ``near_optimal_min`` (95 %), with confidence: the upper end of its
  one-sided Wilson interval (``near_optimal_alpha``, 5 %) is below the bar;
* treatment decision p99 above ``decision_p99_max_s`` (2 ms);
* treatment error rate (transfers that failed or needed a raw retry) above ``error_rate_max`` (0.1 %);
* treatment throughput more than ``throughput_drop_max`` (2 %) below control's, with confidence: the
  per-transfer speed relative to sending raw on the same link (log(raw-transfer estimate / seconds),
  so payloads of every size compare) has a one-sided Welch upper bound (``throughput_alpha``, 5 %)
  below −2 %; the aggregate Σ bytes / Σ seconds ratio is reported beside it.

A breach seen on ``failures_to_rollback`` consecutive evaluations (1 by default: at once) rolls back:
the share goes to 0, and if the challenger had already been promoted the registry's ``champion`` alias
moves back. The metric values that caused it are kept in the state. The same checks on the *control*
arm find a champion at fault; the control arm is then switched to the rule heuristic as well.

**No data holds, never passes**: a guardrail without enough transfers or audits to judge (``min_*``)
holds the step, as does a step whose hold time or per-arm sample count is not reached. Before the share
reaches ``gate_share`` (100 %), the A/B analysis (``experiment.analysis``: Welch on log speed with
planned group-sequential looks) must approve: its ``rollback`` verdict rolls back, ``hold`` holds.

The state lives in one JSON file written atomically (temporary file, fsync, rename) after every
change, so a controller restarted mid-rollout resumes where it was, and senders in other processes
follow the share through :class:`~dwcp_selector.experiment.arms.RolloutFollower`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..dataset.quality import column_values
from ..errors import ConfigError
from .assignment import UNITS

__all__ = [
    "ArmMetrics",
    "Guardrails",
    "LiveMetrics",
    "RolloutController",
    "RolloutPlan",
    "STATUSES",
]

STATUSES = ("running", "completed", "rolled_back", "aborted")
#: The oracle's tie band (``CostParams.tie_tolerance``): a strategy within it of the best is near-optimal.
NEAR_OPTIMAL_TOLERANCE = 0.01
_KEEP_EVALUATIONS = 200


@dataclass(frozen=True)
class Guardrails:
    near_optimal_min: float = 0.95
    decision_p99_max_s: float = 2e-3
    error_rate_max: float = 1e-3
    throughput_drop_max: float = 0.02
    min_transfers: int = 50  # per arm, for the error rate, decision p99 and throughput
    min_audits: int = 20  # audited transfers of the arm, for the near-optimal rate
    near_optimal_alpha: float = 0.05  # one-sided: breach when the rate is below the bar at this level
    throughput_alpha: float = 0.05  # one-sided: breach when the speed is below control's at this level

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RolloutPlan:
    experiment: str
    steps: tuple[float, ...] = (0.01, 0.10, 0.50, 1.0)
    min_hold_s: float = 600.0
    min_samples_per_arm: int = 200
    interval_s: float = 60.0
    failures_to_rollback: int = 1
    gate_share: float = 1.0  # the A/B gate must approve before the share reaches this
    planned_units_per_arm: int = 2000  # the analysis's planned sample (information fractions)
    unit: str = "resource"
    salt: str = ""
    challenger: str | None = None  # the registry version under test (promoted to champion at the end)
    #: what the control arm runs: the current champion model (guarded like the treatment: a champion at
    #: fault sends control to the heuristic) or the rule heuristic itself (the fallback: not guarded)
    control: str = "champion"
    guardrails: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ConfigError("a rollout needs an experiment name")
        steps = tuple(self.steps)
        if not steps or any(not 0.0 < s <= 1.0 for s in steps) or list(steps) != sorted(set(steps)):
            raise ConfigError(f"rollout steps must rise within (0, 1], got {list(steps)}")
        if self.unit not in UNITS:
            raise ConfigError(f"experiment unit must be one of {list(UNITS)}, got {self.unit!r}")
        if self.min_hold_s < 0 or self.min_samples_per_arm < 0 or self.interval_s <= 0:
            raise ConfigError("hold, samples and interval must be non-negative (interval positive)")
        if self.failures_to_rollback < 1:
            raise ConfigError("failures_to_rollback must be at least 1")
        if self.control not in ("champion", "heuristic"):
            raise ConfigError(f"control must be 'champion' or 'heuristic', got {self.control!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutPlan:
        d = dict(d)
        d["steps"] = tuple(float(x) for x in d.get("steps", cls.steps))
        d["guardrails"] = Guardrails(**d.get("guardrails", {}))
        return cls(**d)


@dataclass(frozen=True)
class ArmMetrics:
    transfers: int = 0
    errors: int = 0
    bytes: float = 0.0
    seconds: float = 0.0
    decision_p99_s: float | None = None
    audits: int = 0
    near_optimal: float | None = None
    #: per completed transfer, log(raw-transfer estimate / achieved seconds): the speed relative to
    #: sending the payload raw on its link, so payloads of every size are comparable
    speed_n: int = 0
    log_speed_mean: float | None = None
    log_speed_var: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.transfers if self.transfers else None

    @property
    def throughput_bps(self) -> float | None:
        return 8.0 * self.bytes / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(error_rate=self.error_rate, throughput_bps=self.throughput_bps)
        return d


@dataclass(frozen=True)
class LiveMetrics:
    control: ArmMetrics
    treatment: ArmMetrics

    def to_dict(self) -> dict[str, Any]:
        return {"control": self.control.to_dict(), "treatment": self.treatment.to_dict()}

    @classmethod
    def from_table(cls, table: pa.Table, experiment: str, since: dt.datetime | None = None) -> LiveMetrics:
        """The experiment's transfer (``ab``) and audit rows at or after ``since``, per arm."""
        if table.num_rows:
            keep = pc.equal(table.column("experiment"), experiment)
            if since is not None:
                keep = pc.and_(
                    keep,
                    pc.greater_equal(table.column("ts"), pa.scalar(since, table.schema.field("ts").type)),
                )
            table = table.filter(pc.fill_null(keep, False))
        return cls(_arm(table, "control"), _arm(table, "treatment"))


def _log_speed(table: pa.Table, rows: np.ndarray, ok: np.ndarray) -> tuple[int, float | None, float | None]:
    from .analysis import raw_transfer_s

    seconds = column_values(table, "used_time_s")[rows][ok]
    est = raw_transfer_s(
        column_values(table, "f_payload_bytes")[rows][ok],
        column_values(table, "f_capacity_bps")[rows][ok],
        column_values(table, "f_utilization")[rows][ok],
        column_values(table, "f_rtt_s")[rows][ok],
        column_values(table, "f_loss")[rows][ok],
    )
    if est is None or len(seconds) < 2:
        return len(seconds), None, None
    v = np.log(est) - np.log(seconds)
    return len(v), float(np.mean(v)), float(np.var(v, ddof=1))


def _arm(table: pa.Table, arm: str) -> ArmMetrics:
    if table.num_rows == 0:
        return ArmMetrics()
    arms = column_values(table, "arm")
    source = column_values(table, "source")
    rows = (arms == arm) & (source == "ab")
    errors_col = column_values(table, "used_error")[rows]
    seconds = column_values(table, "used_time_s")[rows]
    size = column_values(table, "f_payload_bytes")[rows]
    decision = column_values(table, "decision_s")[rows]
    failed = (errors_col != "") | np.isnan(seconds)
    ok = ~failed
    p99 = float(np.quantile(decision[~np.isnan(decision)], 0.99)) if np.any(~np.isnan(decision)) else None
    audits = (arms == arm) & (source == "audit")
    near: float | None = None
    n_audits = int(np.count_nonzero(audits))
    if n_audits:
        used = column_values(table, "used_strategy")[audits]
        best = column_values(table, "oracle_cost_s")[audits]
        cost = np.full(n_audits, np.nan)
        for s in np.unique(used):
            if s and f"cost_{s}_s" in table.column_names:
                pick = used == s
                cost[pick] = column_values(table, f"cost_{s}_s")[audits][pick]
        good = cost <= best * (1.0 + NEAR_OPTIMAL_TOLERANCE)
        near = float(np.count_nonzero(good)) / n_audits
    speed_n, speed_mean, speed_var = _log_speed(table, rows, ok)
    return ArmMetrics(
        speed_n=speed_n,
        log_speed_mean=speed_mean,
        log_speed_var=speed_var,
        transfers=int(np.count_nonzero(rows)),
        errors=int(np.count_nonzero(failed)),
        bytes=float(np.sum(size[ok])),
        seconds=float(np.sum(seconds[ok])),
        decision_p99_s=p99,
        audits=n_audits,
        near_optimal=near,
    )


@dataclass(frozen=True)
class Check:
    name: str
    arm: str
    value: float | None
    limit: float
    ok: bool | None  # None: not enough data to judge
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _wilson_upper(rate: float, n: int, alpha: float) -> float:
    from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped, unused-ignore]

    _, hi = proportion_confint(round(rate * n), n, alpha=2 * alpha, method="wilson")
    return float(hi)


def _speed_gain_upper(t: ArmMetrics, c: ArmMetrics, alpha: float) -> float | None:
    """The one-sided upper confidence bound (Welch) of treatment's speed relative to control's, as a
    gain (0.0: the same): the throughput guardrail breaches only when even that is below −2 %."""
    from scipy import stats  # type: ignore[import-untyped, unused-ignore]

    if None in (t.log_speed_mean, t.log_speed_var, c.log_speed_mean, c.log_speed_var):
        return None
    if t.speed_n < 2 or c.speed_n < 2:
        return None
    assert t.log_speed_mean is not None and c.log_speed_mean is not None
    assert t.log_speed_var is not None and c.log_speed_var is not None
    vt, vc = t.log_speed_var / t.speed_n, c.log_speed_var / c.speed_n
    se = math.sqrt(vt + vc)
    if se == 0:
        return math.exp(t.log_speed_mean - c.log_speed_mean) - 1.0
    df = (vt + vc) ** 2 / (vt**2 / (t.speed_n - 1) + vc**2 / (c.speed_n - 1))
    upper = t.log_speed_mean - c.log_speed_mean + float(stats.t.ppf(1 - alpha, df)) * se
    return math.exp(upper) - 1.0


def guardrail_checks(
    m: LiveMetrics, g: Guardrails, share: float, *, guard_control: bool = True
) -> list[Check]:
    """The four triggers on the treatment arm (and, to find a champion at fault, on control)."""
    out: list[Check] = []
    for arm_name, arm in (("treatment", m.treatment), ("control", m.control)):
        if arm_name == "control" and (share >= 1.0 or not guard_control):
            continue  # no control traffic at 100 %; the heuristic as control is the fallback itself
        enough = arm.transfers >= g.min_transfers
        near = arm.near_optimal if arm.audits >= g.min_audits else None
        # a rate from a few dozen audits is noisy (one miss in 20 is 95 %): breach only when even the
        # upper end of its Wilson interval (confidence 1 - near_optimal_alpha) is below the bar
        upper = None if near is None else _wilson_upper(near, arm.audits, g.near_optimal_alpha)
        out.append(
            Check(
                "near_optimal",
                arm_name,
                near,
                g.near_optimal_min,
                None if upper is None else upper >= g.near_optimal_min,
            )
        )
        p99 = arm.decision_p99_s if enough else None
        out.append(
            Check(
                "decision_p99_s",
                arm_name,
                p99,
                g.decision_p99_max_s,
                None if p99 is None else p99 <= g.decision_p99_max_s,
            )
        )
        err = arm.error_rate if enough else None
        out.append(
            Check(
                "error_rate",
                arm_name,
                err,
                g.error_rate_max,
                None if err is None else err <= g.error_rate_max,
            )
        )
    if share < 1.0:
        t, c = m.treatment.throughput_bps, m.control.throughput_bps
        judged = m.treatment.transfers >= g.min_transfers and m.control.transfers >= g.min_transfers
        upper = _speed_gain_upper(m.treatment, m.control, g.throughput_alpha) if judged else None
        gain = None
        if (
            upper is not None
            and m.treatment.log_speed_mean is not None
            and m.control.log_speed_mean is not None
        ):
            gain = math.exp(m.treatment.log_speed_mean - m.control.log_speed_mean) - 1.0
        out.append(
            Check(
                "throughput_vs_control",
                "treatment",
                gain,
                -g.throughput_drop_max,
                None if upper is None else upper >= -g.throughput_drop_max,
            )
        )
        out[-1].extra["aggregate_ratio"] = t / c - 1.0 if judged and t is not None and c else None
        out[-1].extra["upper"] = upper
    return out


Gate = Callable[[pa.Table, RolloutPlan], tuple[str, dict[str, Any]]]


def analysis_gate(table: pa.Table, plan: RolloutPlan) -> tuple[str, dict[str, Any]]:
    """The A/B analysis's verdict on the experiment's rows (approve, rollback, hold or blocked)."""
    from . import analysis  # scipy and statsmodels: imported only by a controller that gates

    rows = table.filter(pc.fill_null(pc.equal(table.column("experiment"), plan.experiment), False))
    # analysed by the unit that was randomised (the records carry no node id: a node's host profile is)
    unit_column = {"transfer": "request_id", "resource": "resource_id", "node": "host_profile_id"}[plan.unit]
    obs = analysis.Observations.from_table(rows, unit_column=unit_column)
    result = analysis.analyze(obs, analysis.Design(plan.experiment, plan.planned_units_per_arm))
    return str(result.verdict), result.to_dict()


class RolloutController:
    """Walks one rollout; ``tick`` evaluates once. See the module docstring.

    ``read_rows()`` returns the telemetry rows to judge (e.g. ``lambda: store.read_table()``);
    ``registry`` (a :class:`~dwcp_selector.serving.ModelRegistry`) is moved at completion and rollback;
    ``clock`` is seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        state_path: str | Path,
        *,
        read_rows: Callable[[], pa.Table] | None = None,
        registry: Any | None = None,
        gate: Gate | None = analysis_gate,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state_path)
        self.read_rows = read_rows
        self.registry = registry
        self.gate = gate
        self.clock = clock
        try:
            self.state: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"no rollout state at {self.path}: start one first") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the rollout state {self.path}: {exc}") from exc
        try:
            self.plan = RolloutPlan.from_dict(self.state["plan"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path} is not a rollout state: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls, state_path: str | Path, plan: RolloutPlan, *, clock: Callable[[], float] = time.time, **kw: Any
    ) -> RolloutController:
        """Begin ``plan`` at its first step; refuses to replace a rollout that is still running."""
        path = Path(state_path)
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("status") == "running":
                name = old.get("plan", {}).get("experiment")
                raise ConfigError(f"rollout {name!r} is still running in {path}: abort it first")
        now = clock()
        state = {
            "plan": plan.to_dict(),
            "status": "running",
            "step": 0,
            "share": plan.steps[0],
            "step_started_at": now,
            "started_at": now,
            "consecutive_failures": 0,
            "control_policy": "champion",
            "breach": None,
            "events": [{"at": now, "event": "started", "share": plan.steps[0]}],
            "evaluations": [],
            "updated_at": now,
        }
        _write_atomic(path, state)
        return cls(path, clock=clock, **kw)

    @property
    def status(self) -> str:
        return str(self.state["status"])

    @property
    def share(self) -> float:
        return float(self.state["share"])

    def abort(self, why: str) -> None:
        """Stop the rollout: treatment to 0 %."""
        if self.status != "running":
            raise ConfigError(f"rollout is {self.status}, not running")
        now = self.clock()
        self.state.update(status="aborted", share=0.0)
        self._event(now, "aborted", why=why)
        self._save(now)

    # -- one evaluation --------------------------------------------------------------------------------
    def tick(self, metrics: LiveMetrics | None = None) -> dict[str, Any]:
        """Evaluate once: roll back on a breach, advance when the step has earned it, else hold."""
        if self.status != "running":
            return {"status": self.status, "action": "none"}
        now = self.clock()
        plan, share = self.plan, self.share
        since = dt.datetime.fromtimestamp(float(self.state["step_started_at"]), dt.UTC)
        table: pa.Table | None = None
        if metrics is None:
            if self.read_rows is None:
                raise ConfigError("tick() needs metrics or a read_rows source")
            table = self.read_rows()
            metrics = LiveMetrics.from_table(table, plan.experiment, since)
        checks = guardrail_checks(metrics, plan.guardrails, share, guard_control=plan.control == "champion")
        failed = [c for c in checks if c.ok is False]
        evaluation: dict[str, Any] = {
            "at": now,
            "share": share,
            "metrics": metrics.to_dict(),
            "checks": [c.to_dict() for c in checks],
        }
        if failed:
            self.state["consecutive_failures"] = int(self.state["consecutive_failures"]) + 1
            if self.state["consecutive_failures"] >= plan.failures_to_rollback:
                champion_at_fault = any(c.arm == "control" for c in failed)
                self._rollback(now, failed, metrics, champion_at_fault)
                evaluation["action"] = "rollback"
            else:
                evaluation["action"] = "hold"
                evaluation["reason"] = "guardrail breached, within the consecutive-failure limit"
        else:
            self.state["consecutive_failures"] = 0
            evaluation.update(self._maybe_advance(now, metrics, checks, table))
        self._remember(evaluation)
        self._save(now)
        return evaluation

    def _maybe_advance(
        self, now: float, m: LiveMetrics, checks: Sequence[Check], table: pa.Table | None
    ) -> dict[str, Any]:
        plan, step = self.plan, int(self.state["step"])
        unknown = [f"{c.arm} {c.name}" for c in checks if c.ok is None]
        if unknown:
            return {"action": "hold", "reason": f"no data to judge: {', '.join(unknown)}"}
        held = now - float(self.state["step_started_at"])
        if held < plan.min_hold_s:
            return {"action": "hold", "reason": f"held {held:.0f} s of {plan.min_hold_s:.0f} s"}
        share = self.share
        n_c, n_t = m.control.transfers, m.treatment.transfers
        if n_t < plan.min_samples_per_arm or (share < 1.0 and n_c < plan.min_samples_per_arm):
            return {"action": "hold", "reason": f"samples per arm {n_t}/{n_c} < {plan.min_samples_per_arm}"}
        out: dict[str, Any] = {}
        nxt = plan.steps[step + 1] if step + 1 < len(plan.steps) else None
        if nxt is not None and nxt >= plan.gate_share and self.gate is not None:
            rows = table if table is not None else (self.read_rows() if self.read_rows is not None else None)
            if rows is None:
                return {"action": "hold", "reason": "the A/B gate has no rows to judge"}
            verdict, detail = self.gate(rows, plan)
            out["gate"] = {"verdict": verdict, "analysis": detail}
            if verdict == "rollback":
                self._rollback(now, [], m, False, why=f"the A/B gate: {verdict}")
                out["action"] = "rollback"
                return out
            if verdict != "approve":
                out.update(action="hold", reason=f"the A/B gate says {verdict}")
                return out
        if nxt is None:
            self.state["status"] = "completed"
            self._event(now, "completed", share=share)
            if self.registry is not None and plan.challenger:
                self.registry.promote(
                    plan.challenger, alias="champion", why=f"rollout {plan.experiment} completed"
                )
                self._event(now, "promoted", version=plan.challenger)
            out["action"] = "complete"
            return out
        self.state.update(step=step + 1, share=nxt, step_started_at=now)
        self._event(now, "advanced", share=nxt)
        out["action"] = "advance"
        return out

    def _rollback(
        self, now: float, failed: Sequence[Check], m: LiveMetrics, champion_at_fault: bool, why: str = ""
    ) -> None:
        breach = {
            "at": now,
            "share": self.share,
            "why": why
            or "; ".join(
                f"{c.arm} {c.name} = {c.value:.6g} (limit {c.limit:g})" for c in failed if c.value is not None
            ),
            "checks": [c.to_dict() for c in failed],
            "metrics": m.to_dict(),
        }
        self.state.update(status="rolled_back", share=0.0, breach=breach)
        if champion_at_fault:
            self.state["control_policy"] = "heuristic"
        self._event(now, "rolled_back", why=breach["why"], champion_at_fault=champion_at_fault)
        reg = self.registry
        if reg is not None and self.plan.challenger:
            try:
                if reg.aliases().get("champion") == reg.resolve(self.plan.challenger):
                    reg.rollback(alias="champion", why=f"rollout {self.plan.experiment}: {breach['why']}")
                    self._event(now, "registry_rolled_back")
            except Exception as exc:  # noqa: BLE001 - the share is already 0: record, do not undo that
                self._event(now, "registry_rollback_failed", error=f"{type(exc).__name__}: {exc}")

    # -- state -----------------------------------------------------------------------------------------
    def _event(self, now: float, event: str, **detail: Any) -> None:
        self.state["events"].append({"at": now, "event": event, **detail})

    def _remember(self, evaluation: dict[str, Any]) -> None:
        evs = self.state["evaluations"]
        evs.append(_jsonable(evaluation))
        del evs[:-_KEEP_EVALUATIONS]

    def _save(self, now: float) -> None:
        self.state["updated_at"] = now
        _write_atomic(self.path, self.state)

    def run(self, *, iterations: int, sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
        """``tick`` every ``interval_s`` until the rollout ends or ``iterations`` are done."""
        out = []
        for _ in range(iterations):
            out.append(self.tick())
            if self.status != "running":
                break
            sleep(self.plan.interval_s)
        return out

    def summary(self) -> dict[str, Any]:
        s = self.state
        return {
            "experiment": self.plan.experiment,
            "status": s["status"],
            "share": s["share"],
            "step": s["step"],
            "steps": list(self.plan.steps),
            "control_policy": s["control_policy"],
            "breach": s["breach"],
            "events": s["events"],
            "last_evaluation": s["evaluations"][-1] if s["evaluations"] else None,
        }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def _write_atomic(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(state), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
