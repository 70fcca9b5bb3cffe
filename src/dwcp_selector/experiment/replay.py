"""A/B and A/A experiments replayed on logged staging records, and synthetic experiments.

A staging record knows the cost of every strategy under its link and node (``cost_<s>_s``), so it knows
what *either* arm would have achieved on that transfer: the control's choice (the rule heuristic, or a
given policy's choices) and the treatment's (the model's, under its own policy and decision times, as
``dwcp-selector evaluate`` takes them; or a precomputed choice array). A replayed experiment splits the
records' units (sessions, resources, payloads or transfers) with :class:`~.assignment.Assignment` under
its own salt, gives every transfer the outcome of its unit's arm (bytes over the chosen strategy's cost,
decision time included; optionally times a log-normal factor to mimic the variance of real transfers),
and runs the same gate as a live experiment (:func:`.analysis.gate`) at calendar looks: the planned
information fractions of the records in time order. An A/A replay gives both arms the control's choice:
every approval is a false one.

One replay is a few milliseconds (per-unit sums with ``numpy.bincount``; the boundaries are computed once
and cached), so 1,000 A/A experiments with four looks take seconds.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from .analysis import Design, Gate, Observations, _raw_estimate, gate
from .assignment import Assignment

__all__ = [
    "UNIT_COLUMNS",
    "ReplayData",
    "ReplayResult",
    "look_ends",
    "replay",
    "replay_observations",
    "srm_observations",
    "synthetic_observations",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: the replay's unit names and the record column that identifies each
UNIT_COLUMNS = {
    "session": "session_id",
    "resource": "resource_id",
    "payload": "payload_group_id",
    "transfer": "request_id",
}


def _strategy_index(choice: Any, n: int) -> IntArray:
    from ..modeling.policy import STRATEGIES

    arr = np.asarray(choice)
    if arr.shape != (n,):
        raise ConfigError(f"a choice array needs one entry per record ({n}), got shape {arr.shape}")
    if arr.dtype.kind in "OUS":
        index = {s: i for i, s in enumerate(STRATEGIES)}
        unknown = sorted({str(x) for x in arr.tolist()} - set(index))
        if unknown:
            raise ConfigError(f"unknown strategies in a choice array: {unknown}")
        return np.array([index[str(x)] for x in arr.tolist()], dtype=np.int64)
    out = arr.astype(np.int64)
    if len(out) and (out.min() < 0 or out.max() >= len(STRATEGIES)):
        raise ConfigError(f"strategy indices must be in 0..{len(STRATEGIES) - 1}")
    return out


def model_choices(
    model_dir: str | Path, split: Any, *, key: bytes | None = None
) -> tuple[IntArray, FloatArray]:
    """The model's choice and decision seconds on every record of ``split``, as the evaluation takes them
    (its tiers, policy, fast rule and measured decision times)."""
    from ..costmodel import CostModel
    from ..modeling.artifact import load_artifact
    from ..modeling.runtime import TieredModel
    from ..training.policy_eval import model_outputs, policy_decisions

    artifact = load_artifact(model_dir, key=key)
    cm = CostModel(artifact.cost_params)
    outputs, _ = model_outputs(TieredModel(artifact), split, cm)
    choice, decision, _, _ = policy_decisions(
        outputs, split, artifact.times, artifact.policy, cm, artifact.fast_rule
    )
    return np.asarray(choice, dtype=np.int64), np.asarray(decision, dtype=np.float64)


@dataclass
class ReplayData:
    """Logged records ready to replay: in time order, each with both arms' achieved seconds."""

    unit_ids: npt.NDArray[Any]  # the distinct units
    unit: IntArray  # each record's unit (index into unit_ids)
    payload_bytes: FloatArray
    seconds_control: FloatArray
    seconds_treatment: FloatArray
    scale_s: FloatArray | None
    link: npt.NDArray[Any]
    unit_kind: str = "session"

    @property
    def n(self) -> int:
        return len(self.unit)

    @classmethod
    def from_split(
        cls,
        split: Any,
        *,
        unit: str = "session",
        control: Any = None,
        treatment: Any = None,
        model: str | Path | None = None,
        model_key: bytes | None = None,
        normalize: bool = True,
    ) -> ReplayData:
        """``split``: a :class:`~dwcp_selector.training.data.Split` of staging records.

        ``control``: ``None`` (the rule heuristic, paying its feature time, as the evaluation prices it),
        a choice array (strategy names or indices), or a (choice, decision seconds) pair. ``treatment``:
        the same shapes, or ``model`` (a model directory: its choices on the split); with neither, the
        treatment is the control (an A/A replay)."""
        from ..training.evaluation import _realized, heuristic_choice

        if unit not in UNIT_COLUMNS:
            raise ConfigError(f"replay unit must be one of {list(UNIT_COLUMNS)}, got {unit!r}")
        n = split.n
        if n == 0:
            raise ConfigError("no records to replay")
        costs = split.costs()

        def policy(spec: Any) -> tuple[IntArray, FloatArray]:
            if isinstance(spec, tuple) and len(spec) == 2:
                return _strategy_index(spec[0], n), np.asarray(spec[1], dtype=np.float64)
            return _strategy_index(spec, n), np.zeros(n)

        if control is None:
            basic = np.nan_to_num(split.cols["f_basic_s"].astype(np.float64), nan=0.0) + 1e-6
            c_choice, c_time = heuristic_choice(split).astype(np.int64), basic
        else:
            c_choice, c_time = policy(control)
        if treatment is not None:
            t_choice, t_time = policy(treatment)
        elif model is not None:
            t_choice, t_time = model_choices(model, split, key=model_key)
        else:
            t_choice, t_time = c_choice, c_time
        sec_c = _realized(costs, c_choice, c_time)
        sec_t = _realized(costs, t_choice, t_time)
        ts = split.cols["ts"] if "ts" in split.cols else np.arange(n)
        order = np.argsort(np.asarray(ts), kind="stable")
        size = split.cols["f_payload_bytes"].astype(np.float64)[order]
        ids = np.asarray(split.cols[UNIT_COLUMNS[unit]])[order].astype(str)
        unit_ids, codes = np.unique(ids, return_inverse=True)
        scale = None
        if normalize:
            link_cols = [
                split.cols[c].astype(np.float64)[order]
                for c in ("f_capacity_bps", "f_utilization", "f_rtt_s", "f_loss")
            ]
            scale = _raw_estimate(size, *link_cols)
        bad = ~(np.isfinite(sec_c) & np.isfinite(sec_t) & (sec_c > 0) & (sec_t > 0))
        if bad[order].any():
            raise ConfigError(f"{int(bad.sum())} records have no finite cost for a chosen strategy")
        return cls(
            unit_ids,
            codes.astype(np.int64),
            size,
            sec_c[order],
            sec_t[order],
            scale,
            np.asarray(split.cols["f_link_type"])[order],
            unit,
        )

    @classmethod
    def load(cls, path: str | Path, *, split: str = "test", **kwargs: Any) -> ReplayData:
        """Records from an exported dataset directory (its ``split``) or one Parquet file."""
        from ..training.data import Split, _table_to_cols, load_dataset

        p = Path(path)
        if p.is_dir():
            splits, _, _ = load_dataset(p)
            if split not in splits:
                raise ConfigError(f"{p} has no {split!r} split (has {', '.join(splits)})")
            data = splits[split]
        elif p.is_file():
            try:
                data = Split(p.stem, _table_to_cols(p))
            except Exception as exc:  # pyarrow's errors are not DwcpErrors
                raise ConfigError(f"{p} is not a readable Parquet table: {exc}") from exc
            need = ["f_payload_bytes", "f_link_type", "f_basic_s", "cost_none_s", UNIT_COLUMNS["session"]]
            missing = [c for c in need if c not in data.cols]
            if missing:
                raise ConfigError(f"{p} lacks the columns {missing} of staging records")
        else:
            raise ConfigError(f"no dataset or Parquet file at {p}")
        return cls.from_split(data, **kwargs)

    def subset(self, rows: npt.NDArray[Any]) -> ReplayData:
        """The records ``rows`` (a mask or indices), units renumbered."""
        unit_ids, codes = np.unique(self.unit_ids[self.unit[rows]], return_inverse=True)
        return ReplayData(
            unit_ids,
            codes.astype(np.int64),
            self.payload_bytes[rows],
            self.seconds_control[rows],
            self.seconds_treatment[rows],
            None if self.scale_s is None else self.scale_s[rows],
            self.link[rows],
            self.unit_kind,
        )

    def true_gain(self) -> dict[str, float]:
        """The gains over every record (both arms known): aggregate and ratio of geometric means."""
        return {
            "aggregate": float(self.seconds_control.sum() / self.seconds_treatment.sum() - 1.0),
            "geometric": float(np.expm1(np.mean(np.log(self.seconds_control / self.seconds_treatment)))),
        }


def look_ends(n: int, looks: Sequence[float]) -> list[int]:
    """Calendar looks: the row count at each planned fraction of ``n`` rows in time order."""
    return [max(1, min(n, math.ceil(t * n))) for t in looks]


def _points(data: ReplayData, salt: str) -> FloatArray:
    a = Assignment(salt, 0.5, unit="transfer" if data.unit_kind == "transfer" else "resource", salt=salt)
    return np.array([a.point(str(u)) for u in data.unit_ids.tolist()], dtype=np.float64)


def replay_observations(
    data: ReplayData,
    experiment: int,
    *,
    aa: bool = False,
    share: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
    salt: str = "replay",
) -> Observations:
    """Replayed experiment number ``experiment``: its units split under salt ``{salt}-{experiment}``."""
    if not 0.0 < share < 1.0:
        raise ConfigError(f"a replay's treatment share must be in (0, 1), got {share}")
    name = f"{salt}-{experiment}"
    treat_unit = _points(data, name) < share
    treat = treat_unit[data.unit]
    seconds = np.where(treat & (not aa), data.seconds_treatment, data.seconds_control)
    if noise > 0:
        rng = np.random.default_rng([seed, experiment])
        seconds = seconds * np.exp(noise * rng.standard_normal(data.n))
    return Observations(
        treat,
        data.payload_bytes,
        seconds,
        data.unit,
        np.full(data.n, share),
        scale_s=data.scale_s,
        link=data.link,
        experiment=name,
    )


@dataclass
class ReplayResult:
    """Verdicts over many replayed experiments."""

    experiments: int
    aa: bool
    share: float
    noise: float
    unit: str
    design: Design
    verdicts: dict[str, int]
    seconds: float
    final_gains: FloatArray = field(repr=False)
    z: FloatArray = field(repr=False)  # experiments × looks
    decided_at: IntArray = field(repr=False)  # −1: never decided
    true_gain: dict[str, float] = field(default_factory=dict)
    final_aggregate: FloatArray | None = field(default=None, repr=False)  # aggregate gain, final look

    def rate(self, verdict: str) -> float:
        return self.verdicts.get(verdict, 0) / self.experiments if self.experiments else math.nan

    def approval_interval(self) -> tuple[float, float]:
        """Clopper-Pearson 95 % interval of the approval rate."""
        from scipy import stats  # type: ignore[import-untyped, unused-ignore]

        ci = stats.binomtest(self.verdicts.get("approve", 0), self.experiments).proportion_ci(0.95, "exact")
        return float(ci.low), float(ci.high)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.approval_interval()
        fin = self.final_gains[np.isfinite(self.final_gains)]
        key = "false_approval_rate" if self.aa else "approval_rate"
        return {
            "experiments": self.experiments,
            "aa": self.aa,
            "unit": self.unit,
            "share": self.share,
            "noise": self.noise,
            "design": self.design.to_dict(),
            "verdicts": dict(self.verdicts),
            key: self.rate("approve"),
            f"{key}_ci95": [lo, hi],
            "rollback_rate": self.rate("rollback"),
            "hold_rate": self.rate("hold"),
            "blocked_rate": self.rate("blocked"),
            "final_gain_mean": float(fin.mean()) if len(fin) else None,
            "final_gain_sd": float(fin.std(ddof=1)) if len(fin) > 1 else None,
            "final_gain_range95": _range95(self.final_gains),
            "final_aggregate_range95": None
            if self.final_aggregate is None
            else _range95(self.final_aggregate),
            "decided_at_look": {
                str(k + 1): int(np.sum(self.decided_at == k)) for k in range(len(self.design.looks))
            },
            "true_gain": dict(self.true_gain),
            "seconds": self.seconds,
        }


def _range95(x: FloatArray) -> list[float] | None:
    """Median and the central 95 % of the replays' estimates."""
    v = x[np.isfinite(x)]
    return [float(q) for q in np.percentile(v, [2.5, 50.0, 97.5])] if len(v) else None


def replay(
    data: ReplayData,
    design: Design,
    *,
    experiments: int = 1000,
    aa: bool = False,
    share: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
    salt: str = "replay",
) -> ReplayResult:
    """``experiments`` replays, each through :func:`.analysis.gate` at calendar looks.

    Without ``planned_units_per_arm`` in the design, the plan is the units the replay will have at its
    end (every unit, split at ``share``): the final look is the end of the records."""
    if experiments < 1:
        raise ConfigError(f"a replay needs at least one experiment, got {experiments}")
    planned = design.planned_units_per_arm or max(2, int(len(data.unit_ids) * min(share, 1 - share)))
    d = Design(**{**design.to_dict(), "looks": design.looks, "planned_units_per_arm": planned})
    ends = look_ends(data.n, d.looks)
    verdicts: Counter[str] = Counter()
    k = len(d.looks)
    z = np.full((experiments, k), np.nan)
    final = np.full(experiments, np.nan)
    final_agg = np.full(experiments, np.nan)
    decided = np.full(experiments, -1, dtype=np.int64)
    t0 = time.perf_counter()
    for e in range(experiments):
        obs = replay_observations(data, e, aa=aa, share=share, noise=noise, seed=seed, salt=salt)
        g: Gate = gate(obs, d, look_ends=ends)
        verdicts[g.verdict] += 1
        for lk in g.looks:
            z[e, lk.index] = lk.z
        if g.looks:
            final[e] = g.looks[-1].gain
            final_agg[e] = g.looks[-1].aggregate_gain
        if g.decided_at is not None:
            decided[e] = g.decided_at
    elapsed = time.perf_counter() - t0
    true = data.true_gain() if not aa else {"aggregate": 0.0, "geometric": 0.0}
    return ReplayResult(
        experiments,
        aa,
        share,
        noise,
        data.unit_kind,
        d,
        dict(verdicts),
        elapsed,
        final,
        z,
        decided,
        true,
        final_agg,
    )


# -- synthetic experiments -------------------------------------------------------------------------------
def synthetic_observations(
    units: int,
    *,
    gain: float = 0.0,
    share: float = 0.5,
    logged_share: float | None = None,
    transfers_per_unit: int = 1,
    sd_unit: float = 0.5,
    sd_transfer: float = 0.8,
    phases: Sequence[tuple[float, float, float]] | None = None,
    covariate_sd: float | None = None,
    salt: str = "synthetic",
    seed: int = 0,
) -> Observations:
    """A synthetic experiment with a known effect: log speed = unit effect + transfer noise (+ log(1 +
    ``gain``) in treatment), units split by :class:`Assignment` under ``salt`` at ``share``.

    ``logged_share``: the share written into the rows when it differs from the one actually applied
    (a sample-ratio mismatch). ``phases``: (share, fraction of the units, shift of the base log speed)
    per rollout step, in time order: the share changes while the traffic drifts. ``covariate_sd``: give
    each unit a pre-period value, its effect plus noise of that deviation.
    """
    rng = np.random.default_rng(seed)
    steps = list(phases) if phases else [(share, 1.0, 0.0)]
    total = sum(f for _, f, _ in steps)
    counts = [int(round(units * f / total)) for _, f, _ in steps]
    a = Assignment(salt, 0.5, unit="resource", salt=salt)
    ids = np.array([f"u{i}" for i in range(sum(counts))], dtype=object)
    points = np.array([a.point(u) for u in ids.tolist()])
    shares = np.concatenate([np.full(c, s) for (s, _, _), c in zip(steps, counts, strict=True)])
    shifts = np.concatenate([np.full(c, d) for (_, _, d), c in zip(steps, counts, strict=True)])
    treat_u = points < shares
    logged_u = shares if logged_share is None else np.full(len(ids), logged_share)
    effect = rng.normal(0.0, sd_unit, len(ids))
    m = transfers_per_unit
    unit = np.repeat(np.arange(len(ids)), m)
    treat = np.repeat(treat_u, m)
    y = 15.0 + np.repeat(effect + shifts, m) + rng.normal(0.0, sd_transfer, len(unit))
    y = y + np.where(treat, math.log1p(gain), 0.0)
    size = np.exp(rng.uniform(10.0, 22.0, len(unit)))
    seconds = size / np.exp(y)
    cov = None
    if covariate_sd is not None:
        cov = np.repeat(15.0 + effect + shifts + rng.normal(0.0, covariate_sd, len(ids)), m)
    return Observations(
        treat, size, seconds, ids[unit], np.repeat(logged_u, m), covariate=cov, experiment=salt
    )


def srm_observations(
    units: int = 20_000,
    *,
    design_share: float = 0.5,
    actual_share: float = 0.52,
    salt: str = "srm",
    seed: int = 0,
) -> Observations:
    """An experiment whose rows claim ``design_share`` while ``actual_share`` of the units were treated
    (52/48 on a 50/50 design): what a biased assignment or a lossy arm's logging looks like."""
    return synthetic_observations(units, share=actual_share, logged_share=design_share, salt=salt, seed=seed)
