"""The A/B analysis of an experiment's transfers: sample-ratio check, gains with their intervals, planned
sequential looks and the gate (DESIGN section 6a).

Input is :class:`Observations` (one entry per completed transfer of the experiment: arm, payload bytes,
achieved seconds, the randomisation unit, the treatment share in force when it was logged) and a
:class:`Design` fixed before the experiment starts. The statistics come from scipy and statsmodels; what
is written here is which test is asked, on which numbers, and how the answers are put together.

**The analysis unit is the randomisation unit.** Transfers of one resource share its payloads and its
links, so they are not independent; every test and interval below is computed on one value per unit
(per stratum: a unit keeps its arm within a stratum, see below), so clustering cannot make them
overconfident. With ``transfer`` as the unit this is the per-transfer analysis.

**Strata.** The treatment share changes over a rollout (1 → 10 → 50 %), while the traffic drifts (time of
day, link mix). Pooling both arms across shares would credit treatment with the later, different traffic
it sees more of, so each estimate is made within a stratum (rows logged under the same designed share)
and strata are combined by inverse-variance weights (the fixed-effect estimate). With one stratum this is
exactly Welch's two-sample test. Strata at share 0 or 1 have only one arm and inform nothing.

What is reported:

* **Sample-ratio mismatch**: per stratum, a χ² test (``scipy.stats.chisquare``) of the units seen in each
  arm against the designed share; p < ``srm_alpha`` (0.001) in any stratum *blocks* every verdict: an
  assignment or logging fault makes the arms incomparable, whatever the effect looks like.
* **Aggregate throughput** (the ratio metric Σ bytes / Σ time per arm, weighted by the inverse of the
  designed propensity so shifting shares cannot tilt it), its gain treatment / control − 1, with a
  bootstrap interval (``scipy.stats.bootstrap``, BCa) resampling units independently within each arm and
  stratum, so a unit's transfers stay together.
* **Per-transfer speed** on the log scale. Speeds are heavy-tailed (a 1 KiB transfer over a WAN and a
  64 MiB one in a data centre are five orders of magnitude apart), so the metric is the log of the speed,
  divided by the raw-transfer estimate of the same transfer where the link is known (DESIGN section 6a:
  log(raw estimate / achieved time), which removes the size and link scale; the estimate is fixed before
  the transfer, so it changes the variance, not what is estimated). The difference of means Δ on that
  scale is a ratio of **geometric means**: the gain reported is exp(Δ) − 1, the typical transfer's
  speed-up, not the arithmetic mean of speeds. Welch's t-test (``scipy.stats.ttest_ind``,
  ``equal_var=False``) per stratum, combined across strata with Welch-Satterthwaite degrees of freedom;
  Yuen's 10 %-trimmed test (``trim=0.1``) beside it as the robustness line.
* **CUPED / ANCOVA** where a pre-period covariate exists (the unit's mean log speed before the
  experiment): ``statsmodels`` OLS of ``y ~ treat + x_centred`` per stratum with HC3 errors, combined the
  same way, reported beside the raw estimate with the variance reduction it achieved. The gate uses the
  raw estimate (the roadmap's test, planned before the covariate's quality is known).
* **Power**: units per arm for a ``min_gain`` (5 %) effect at one-sided ``alpha`` and ``power``
  (``statsmodels`` ``TTestIndPower`` on the log metric with the observed or assumed standard deviation),
  and the inflation factor of the sequential design (the maximum sample size relative to a fixed one).

**The gate** ("gain > 5 % with p < 0.01 approves") means here: H0 is *gain ≤ 0*, tested one-sided at
overall level ``alpha`` = 0.01 with group-sequential looks at the information fractions of the design
(0.25, 0.5, 0.75, 1), Lan-DeMets O'Brien-Fleming alpha spending; a look **approves** when its z statistic
(the Welch t turned into the normal quantile of the same one-sided p) reaches that look's boundary, *and*
the point estimate of the gain exceeds ``min_gain`` (5 %), *and* the aggregate throughput's point gain is
positive (the primary metric does not disagree). A look **rolls back** when the one-sided upper (1 −
alpha) confidence bound of the gain is below ``min_gain`` (the gain is shown not to reach 5 %), or when it
is the final look and did not approve. Otherwise it **holds**; too little data (fewer than
``min_units_per_arm`` units in an arm, or before the first look) holds. The first look that approves or
rolls back decides: an experiment stops there. Information fraction = observed information (1 / variance
of the estimate) / planned information (``planned_units_per_arm`` units per arm at the observed unit
variance); look k is the earliest prefix of the transfers, in time order, whose fraction reaches the
look's. Because approval needs the boundary, the chance of approving a treatment that is no better stays
at most ``alpha`` however many looks are taken (verified by A/A replays, ``replay.py``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..errors import ConfigError
from .assignment import ARMS

__all__ = [
    "DEFAULT_LOOKS",
    "MIN_UNITS_PER_ARM",
    "VERDICTS",
    "Analysis",
    "Design",
    "Gate",
    "Look",
    "Observations",
    "analyze",
    "gate",
    "obf_boundaries",
    "obf_spending",
    "render_html",
    "sample_size",
    "sequential_inflation",
    "write_html",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_LOOKS = (0.25, 0.5, 0.75, 1.0)
MIN_UNITS_PER_ARM = 30
VERDICTS = ("approve", "rollback", "hold", "blocked")
#: the aggregate throughput must not be below control by more than this for an approval (its point gain)
AGGREGATE_FLOOR = 0.0
_TRIM = 0.1
_BCA_MAX_UNITS = 4000


def _stats() -> Any:
    from scipy import stats  # type: ignore[import-untyped, unused-ignore]

    return stats


# -- the design ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """What is fixed before the experiment starts.

    ``planned_units_per_arm``: the units per arm at full information (the final look); ``None`` takes
    the power calculation's sequential sample size at the observed standard deviation (or
    ``assumed_sd``), which is sound only if that deviation was known in advance: give it when you can.
    """

    experiment: str
    planned_units_per_arm: int | None = None
    looks: tuple[float, ...] = DEFAULT_LOOKS
    alpha: float = 0.01
    min_gain: float = 0.05
    srm_alpha: float = 0.001
    power: float = 0.8
    min_units_per_arm: int = MIN_UNITS_PER_ARM
    assumed_sd: float | None = None

    def __post_init__(self) -> None:
        looks = tuple(float(t) for t in self.looks)
        object.__setattr__(self, "looks", looks)
        if not looks or any(not 0.0 < t <= 1.0 for t in looks) or list(looks) != sorted(set(looks)):
            raise ConfigError(f"looks must be increasing information fractions in (0, 1], got {looks}")
        if looks[-1] != 1.0:
            raise ConfigError(f"the last look must be at information fraction 1, got {looks[-1]}")
        for name in ("alpha", "srm_alpha", "power"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")
        if not math.isfinite(self.min_gain) or self.min_gain <= -1.0:
            raise ConfigError(f"min_gain must be a finite fraction above -1, got {self.min_gain}")
        if self.planned_units_per_arm is not None and self.planned_units_per_arm < 2:
            raise ConfigError(f"planned units per arm must be at least 2, got {self.planned_units_per_arm}")
        if self.min_units_per_arm < 2:
            raise ConfigError(f"min_units_per_arm must be at least 2, got {self.min_units_per_arm}")
        if self.assumed_sd is not None and not (math.isfinite(self.assumed_sd) and self.assumed_sd > 0):
            raise ConfigError(f"assumed_sd must be positive, got {self.assumed_sd}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["looks"] = list(self.looks)
        return d


# -- sequential boundaries and power ---------------------------------------------------------------------
def obf_spending(t: float | FloatArray, alpha: float) -> FloatArray:
    """Lan-DeMets O'Brien-Fleming spending, one-sided: α(t) = 2 − 2 Φ(z_{1−α/2} / √t)."""
    st = _stats()
    tt = np.asarray(t, dtype=np.float64)
    out: FloatArray = 2.0 * st.norm.sf(st.norm.isf(alpha / 2.0) / np.sqrt(tt))
    return out


def _corr(looks: Sequence[float]) -> FloatArray:
    t = np.asarray(looks, dtype=np.float64)
    out: FloatArray = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    return out


def _mvn_cdf(upper: FloatArray, cov: FloatArray, mean: FloatArray | None = None) -> float:
    """P(Z ≤ upper) for Z ~ N(mean, cov) (scipy's Genz integration, fixed seed: reproducible)."""
    st = _stats()
    d = len(upper)
    m = np.zeros(d) if mean is None else mean
    if d == 1:
        return float(st.norm.cdf(upper[0] - m[0]))
    mvn = st.multivariate_normal(mean=m, cov=cov, maxpts=20000 * d, abseps=1e-7, releps=1e-6, seed=0)
    return float(mvn.cdf(upper))


@functools.lru_cache(maxsize=64)
def obf_boundaries(looks: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """One-sided z boundaries at the information fractions ``looks`` spending ``alpha`` by Lan-DeMets
    O'Brien-Fleming: look k's boundary b_k solves P(Z_1 < b_1, …, Z_k < b_k) = 1 − α(t_k) under H0, with
    the z statistics jointly normal, corr(Z_i, Z_j) = √(t_i / t_j) (i ≤ j).

    >>> [round(b, 2) for b in obf_boundaries((0.25, 0.5, 0.75, 1.0), 0.025)]
    [4.33, 2.96, 2.36, 2.01]
    """
    from scipy import optimize  # type: ignore[import-untyped, unused-ignore]

    st = _stats()
    spent = obf_spending(np.asarray(looks), alpha)
    cov = _corr(looks)
    bounds = [float(st.norm.isf(spent[0]))]
    for k in range(1, len(looks)):
        target = 1.0 - float(spent[k])
        sub = cov[: k + 1, : k + 1]
        prev = list(bounds)

        def gap(b: float, prev: list[float] = prev, sub: FloatArray = sub, target: float = target) -> float:
            return _mvn_cdf(np.array([*prev, b]), sub) - target

        bounds.append(float(optimize.brentq(gap, -2.0, 12.0, xtol=1e-5)))
    return tuple(bounds)


@functools.lru_cache(maxsize=64)
def sequential_inflation(looks: tuple[float, ...], alpha: float, power: float) -> float:
    """Maximum sample size of the sequential design relative to the fixed one with the same power."""
    from scipy import optimize  # type: ignore[import-untyped, unused-ignore]

    st = _stats()
    b = np.asarray(obf_boundaries(looks, alpha))
    t = np.asarray(looks)
    cov = _corr(looks)

    def miss(theta: float) -> float:  # P(no boundary crossed) − (1 − power) under drift θ
        return _mvn_cdf(b, cov, mean=theta * np.sqrt(t)) - (1.0 - power)

    fixed = float(st.norm.isf(alpha) + st.norm.isf(1.0 - power))
    theta = float(optimize.brentq(miss, 0.5 * fixed, 2.0 * fixed, xtol=1e-5))
    return (theta / fixed) ** 2


def sample_size(sd: float, design: Design) -> dict[str, Any]:
    """Units per arm to detect ``min_gain`` on the log metric at one-sided ``alpha`` and ``power``."""
    from statsmodels.stats.power import TTestIndPower  # type: ignore[import-untyped, unused-ignore]

    effect = math.log1p(design.min_gain) / sd if sd > 0 else math.inf
    if not math.isfinite(effect) or effect <= 0:
        fixed = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fixed = float(
                TTestIndPower().solve_power(
                    effect_size=effect,
                    alpha=design.alpha,
                    power=design.power,
                    ratio=1.0,
                    alternative="larger",
                )
            )
    inflation = sequential_inflation(design.looks, design.alpha, design.power)
    seq = math.ceil(fixed * inflation) if math.isfinite(fixed) else None
    return {
        "sd_log": sd,
        "effect": design.min_gain,
        "alpha": design.alpha,
        "power": design.power,
        "units_per_arm_fixed": math.ceil(fixed) if math.isfinite(fixed) else None,
        "inflation": inflation,
        "units_per_arm_sequential": seq,
    }


# -- observations ----------------------------------------------------------------------------------------
@dataclass
class Observations:
    """The completed transfers of one experiment, in time order, as numpy arrays.

    ``stratum`` is the designed treatment share in force when the row was logged (a treatment row's
    propensity, one minus a control row's). ``covariate`` is a pre-period value of the row's unit (its
    mean log metric before the experiment; NaN where unknown). ``scale_s`` is the raw-transfer estimate of
    the row (seconds the unencoded payload takes on its link): the metric becomes log(scale / seconds).
    ``errors`` counts the rows left out (failed transfers per arm, rows without an arm).
    """

    treatment: BoolArray
    payload_bytes: FloatArray
    seconds: FloatArray
    unit: npt.NDArray[Any]
    stratum: FloatArray
    covariate: FloatArray | None = None
    scale_s: FloatArray | None = None
    link: npt.NDArray[Any] | None = None
    errors: dict[str, int] = field(default_factory=dict)
    experiment: str = ""

    def __post_init__(self) -> None:
        self.treatment = np.asarray(self.treatment, dtype=bool)
        self.payload_bytes = np.asarray(self.payload_bytes, dtype=np.float64)
        self.seconds = np.asarray(self.seconds, dtype=np.float64)
        self.unit = np.asarray(self.unit)
        self.stratum = np.asarray(self.stratum, dtype=np.float64)
        n = len(self.treatment)
        arrays: dict[str, Any] = {
            "payload_bytes": self.payload_bytes,
            "seconds": self.seconds,
            "unit": self.unit,
            "stratum": self.stratum,
        }
        if self.covariate is not None:
            self.covariate = np.asarray(self.covariate, dtype=np.float64)
            arrays["covariate"] = self.covariate
        if self.scale_s is not None:
            self.scale_s = np.asarray(self.scale_s, dtype=np.float64)
            arrays["scale_s"] = self.scale_s
        if self.link is not None:
            self.link = np.asarray(self.link)
            arrays["link"] = self.link
        for name, a in arrays.items():
            if a.shape != (n,):
                raise ConfigError(f"observations: {name} has shape {a.shape}, expected ({n},)")
        if n and not (np.all(np.isfinite(self.seconds)) and np.all(self.seconds > 0)):
            raise ConfigError("observations: seconds must be finite and positive (errors are left out)")
        if n and not (np.all(np.isfinite(self.payload_bytes)) and np.all(self.payload_bytes > 0)):
            raise ConfigError("observations: payload bytes must be positive")
        if n and not np.all((self.stratum >= 0) & (self.stratum <= 1)):
            raise ConfigError("observations: stratum (the designed treatment share) must be in [0, 1]")
        if self.scale_s is not None and n and not np.all(np.isfinite(self.scale_s) & (self.scale_s > 0)):
            raise ConfigError("observations: scale_s must be finite and positive")
        self.errors = {str(k): int(v) for k, v in self.errors.items()}

    @property
    def n(self) -> int:
        return len(self.treatment)

    def metric(self) -> FloatArray:
        """Per-transfer log speed: log(bytes / s), or log(raw estimate / s) when ``scale_s`` is known."""
        top = self.scale_s if self.scale_s is not None else self.payload_bytes
        out: FloatArray = np.log(top) - np.log(self.seconds)
        return out

    def take(self, rows: npt.NDArray[Any]) -> Observations:
        """The observations of ``rows`` (a boolean mask or indices), error counts kept."""
        return Observations(
            self.treatment[rows],
            self.payload_bytes[rows],
            self.seconds[rows],
            self.unit[rows],
            self.stratum[rows],
            None if self.covariate is None else self.covariate[rows],
            None if self.scale_s is None else self.scale_s[rows],
            None if self.link is None else self.link[rows],
            dict(self.errors),
            self.experiment,
        )

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        experiment: str | None = None,
        *,
        unit_column: str = "resource_id",
        normalize: bool = True,
    ) -> Observations:
        """The experiment's ``ab`` rows of a telemetry table (``TelemetryStore.read_table``).

        Rows with ``used_error`` set or no ``used_time_s`` (or a non-positive one) are failed transfers:
        counted per arm in ``errors`` and left out of the speed metrics. ``experiment`` may be omitted
        when the table holds exactly one. ``normalize`` divides by the raw-transfer estimate when every
        row has its link (capacity, utilisation, RTT, loss). The covariate is each unit's mean log metric
        over its ``production``/``shadow`` rows logged before the experiment's first row, when the table
        has any.
        """
        names = set(table.column_names)
        needed = ["source", "experiment", "arm", "propensity", "f_payload_bytes", "used_time_s", unit_column]
        missing = [c for c in needed if c not in names]
        if missing:
            raise ConfigError(f"telemetry table lacks the columns {missing} an A/B analysis needs")

        def col(name: str) -> npt.NDArray[Any]:
            c = table.column(name)
            if pa.types.is_string(c.type) or pa.types.is_large_string(c.type):
                return np.asarray(c.to_pylist(), dtype=object)
            if pa.types.is_timestamp(c.type):
                return np.asarray(c.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
            return np.asarray(c.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))

        source = col("source")
        exp = col("experiment")
        is_ab = source == "ab"
        known = sorted({str(e) for e in exp[is_ab] if e is not None})
        if not known:
            raise ConfigError("the store holds no A/B ('ab') rows")
        if experiment is None:
            if len(known) > 1:
                raise ConfigError(f"the store holds several experiments ({', '.join(known)}): name one")
            experiment = known[0]
        if experiment not in known:
            raise ConfigError(f"unknown experiment {experiment!r}: the store has {', '.join(known)}")
        ts = col("ts") if "ts" in names else np.arange(table.num_rows)
        rows = np.flatnonzero(is_ab & (exp == experiment))
        rows = rows[np.argsort(ts[rows], kind="stable")]
        arm = col("arm")[rows]
        prop = col("propensity")[rows]
        size = col("f_payload_bytes")[rows]
        secs = col("used_time_s")[rows]
        err = col("used_error")[rows] if "used_error" in names else np.full(len(rows), None, dtype=object)
        labelled = np.isin(arm, np.array(ARMS, dtype=object)) & np.isfinite(prop) & (prop > 0) & (prop <= 1)
        failed = (
            np.array([e is not None for e in err], dtype=bool)
            | ~np.isfinite(secs)
            | ~(secs > 0)
            | ~(size > 0)
        )
        errors = {a: int(np.sum(labelled & failed & (arm == a))) for a in ARMS}
        errors["unlabelled"] = int(np.sum(~labelled))
        ok = labelled & ~failed
        rows, arm, prop, size, secs = rows[ok], arm[ok], prop[ok], size[ok], secs[ok]
        treat = arm == "treatment"
        stratum = np.round(np.where(treat, prop, 1.0 - prop), 6)
        units = col(unit_column)
        unit = units[rows]
        link = col("f_link_type")[rows] if "f_link_type" in names else None

        def scale_of(r: IntArray, sz: FloatArray) -> FloatArray | None:
            cols = ("f_capacity_bps", "f_utilization", "f_rtt_s", "f_loss")
            if not normalize or not all(c in names for c in cols):
                return None
            return _raw_estimate(sz, *(col(c)[r] for c in cols))

        scale = scale_of(rows, size)
        covariate = None
        if len(rows) and "ts" in names:
            start = ts[rows].min()
            pre = np.flatnonzero(
                np.isin(source, np.array(["production", "shadow"], dtype=object))
                & (ts < start)
                & (col("used_time_s") > 0)
                & (col("f_payload_bytes") > 0)
            )
            pre = pre[np.isin(units[pre], unit)]
            if len(pre):
                pre_scale = scale_of(pre, col("f_payload_bytes")[pre]) if scale is not None else None
                top = pre_scale if pre_scale is not None else col("f_payload_bytes")[pre]
                y = np.log(top) - np.log(col("used_time_s")[pre])
                keys, inv = np.unique(units[pre].astype(str), return_inverse=True)
                means = np.bincount(inv, weights=y) / np.bincount(inv)
                lookup = dict(zip(keys.tolist(), means.tolist(), strict=True))
                covariate = np.array([lookup.get(str(u), np.nan) for u in unit], dtype=np.float64)
        return cls(treat, size, secs, unit, stratum, covariate, scale, link, errors, experiment)


def _raw_estimate(
    size: FloatArray, capacity: FloatArray, utilization: FloatArray, rtt: FloatArray, loss: FloatArray
) -> FloatArray | None:
    """Seconds the unencoded payload takes over its link (one RTT + bytes at AMST's effective rate), or
    ``None`` if some row's link does not give a finite positive estimate."""
    from ..costmodel import CostModel

    with np.errstate(all="ignore"):
        rate = CostModel().rates_array(capacity, utilization, rtt, loss)[3]
        est: FloatArray = rtt + 8.0 * size / rate
    if len(est) == 0 or not np.all(np.isfinite(est) & (est > 0)):
        return None
    return est


#: The raw-transfer estimate, for other judges of the same rows (the rollout's throughput guardrail).
raw_transfer_s = _raw_estimate


# -- the estimates ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Prepared:
    """Per-row codes computed once per analysis."""

    y: FloatArray
    strata: FloatArray  # the distinct designed shares, ascending
    h: IntArray  # row's stratum index
    cell: IntArray  # row's (stratum, unit, arm) code
    treat: BoolArray
    weight_bytes: FloatArray  # bytes / propensity of the row's arm
    weight_time: FloatArray
    x: FloatArray | None
    u_count: int  # distinct units: cell = (h * u_count + unit) * 2 + treat


def _prepare(obs: Observations) -> _Prepared:
    y = obs.metric()
    strata, h = np.unique(obs.stratum, return_inverse=True)
    _, u = np.unique(obs.unit.astype(str) if obs.unit.dtype == object else obs.unit, return_inverse=True)
    u_count = int(u.max(initial=0)) + 1
    cell = (h.astype(np.int64) * u_count + u) * 2 + obs.treatment.astype(np.int64)
    prop = np.where(obs.treatment, obs.stratum, 1.0 - obs.stratum)
    with np.errstate(divide="ignore"):
        w = np.where(prop > 0, 1.0 / prop, 0.0)
    x = obs.covariate
    return _Prepared(
        y, strata, h.astype(np.int64), cell, obs.treatment, obs.payload_bytes * w, obs.seconds * w, x, u_count
    )


@dataclass(frozen=True)
class _Cells:
    """One entry per (stratum, unit, arm): the unit's mean metric, its rows, its weighted sums."""

    h: IntArray
    treat: BoolArray
    y: FloatArray
    rows: FloatArray
    x: FloatArray | None
    wb: FloatArray
    wt: FloatArray


def _cells(p: _Prepared, end: int) -> _Cells:
    codes, inv = np.unique(p.cell[:end], return_inverse=True)
    rows = np.bincount(inv).astype(np.float64)
    y = np.bincount(inv, weights=p.y[:end]) / rows
    x = None
    if p.x is not None:
        xv = p.x[:end]
        has = np.isfinite(xv)
        cnt = np.bincount(inv, weights=has.astype(np.float64), minlength=len(codes))
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.bincount(inv, weights=np.where(has, xv, 0.0), minlength=len(codes)) / cnt
    h = (codes // 2) // p.u_count
    return _Cells(
        h.astype(np.int64),
        (codes % 2).astype(bool),
        y,
        rows,
        x,
        np.asarray(np.bincount(inv, weights=p.weight_bytes[:end]), dtype=np.float64),
        np.asarray(np.bincount(inv, weights=p.weight_time[:end]), dtype=np.float64),
    )


@dataclass(frozen=True)
class _ArmStats:
    """Per stratum and arm: units, mean and variance of the unit means."""

    n1: FloatArray
    m1: FloatArray
    v1: FloatArray
    n0: FloatArray
    m0: FloatArray
    v0: FloatArray


def _arm_stats(c: _Cells, n_strata: int, values: FloatArray | None = None) -> _ArmStats:
    y = c.y if values is None else values
    g = c.h * 2 + c.treat.astype(np.int64)
    k = 2 * n_strata
    n = np.bincount(g, minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.bincount(g, weights=y, minlength=k) / n
        ss = np.bincount(g, weights=(y - m[g]) ** 2, minlength=k)
        v = ss / (n - 1)
    return _ArmStats(n[1::2], m[1::2], v[1::2], n[0::2], m[0::2], v[0::2])


@dataclass(frozen=True)
class _Estimate:
    """The stratified difference of mean log metric (treatment − control) and its test."""

    diff: float
    se: float
    df: float
    t: float
    p: float  # one-sided, H0: diff ≤ 0
    z: float  # the normal quantile of the same one-sided p
    strata_used: int

    def gain(self) -> float:
        return math.expm1(self.diff)

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided ``level`` interval of the gain."""
        q = float(_stats().t.isf((1 - level) / 2, self.df))
        return math.expm1(self.diff - q * self.se), math.expm1(self.diff + q * self.se)

    def upper(self, alpha: float) -> float:
        """One-sided upper (1 − alpha) confidence bound of the gain."""
        return math.expm1(self.diff + float(_stats().t.isf(alpha, self.df)) * self.se)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval(0.95) if math.isfinite(self.se) else (math.nan, math.nan)
        return {
            "gain": self.gain(),
            "ci95": [lo, hi],
            "diff_log": self.diff,
            "se_log": self.se,
            "df": self.df,
            "t": self.t,
            "p_one_sided": self.p,
            "z": self.z,
            "strata_used": self.strata_used,
        }


_NO_ESTIMATE = _Estimate(math.nan, math.inf, math.nan, math.nan, math.nan, math.nan, 0)


def _combine(diff: FloatArray, var: FloatArray, df_terms: FloatArray, valid: BoolArray) -> _Estimate:
    """Fixed-effect (inverse-variance) combination of per-stratum differences; ``df_terms`` are each
    stratum's Σ (s²/n)² / (n − 1) of the Welch-Satterthwaite formula."""
    st = _stats()
    ok = valid & np.isfinite(diff) & np.isfinite(var) & (var > 0)
    if not ok.any():
        return _NO_ESTIMATE
    w = 1.0 / var[ok]
    total = float(w.sum())
    d = float((w * diff[ok]).sum() / total)
    v = 1.0 / total
    a = w / total
    df = float(v**2 / np.sum(a**4 * df_terms[ok]))
    se = math.sqrt(v)
    t = d / se
    p = float(st.t.sf(t, df))
    z = float(st.norm.isf(p))
    return _Estimate(d, se, df, t, p, z, int(ok.sum()))


def _welch(s: _ArmStats) -> _Estimate:
    """Welch's test per stratum, combined; with one stratum exactly ``ttest_ind(equal_var=False)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        a1, a0 = s.v1 / s.n1, s.v0 / s.n0
        terms = a1**2 / (s.n1 - 1) + a0**2 / (s.n0 - 1)
        valid = (s.n1 >= 2) & (s.n0 >= 2)
        return _combine(s.m1 - s.m0, a1 + a0, terms, valid)


def _aggregate(c: _Cells) -> float:
    """Propensity-weighted Σ bytes / Σ time, treatment over control, − 1."""
    t, k = c.treat, ~c.treat
    if not t.any() or not k.any():
        return math.nan
    rt = c.wb[t].sum() / c.wt[t].sum()
    rc = c.wb[k].sum() / c.wt[k].sum()
    return float(rt / rc - 1.0) if rc > 0 else math.nan


def _srm(c: _Cells, strata: FloatArray, design: Design) -> list[dict[str, Any]]:
    st = _stats()
    out = []
    for h, share in enumerate(strata.tolist()):
        in_h = c.h == h
        n1 = int(np.sum(in_h & c.treat))
        n0 = int(np.sum(in_h & ~c.treat))
        n = n1 + n0
        entry: dict[str, Any] = {"share": share, "treatment": n1, "control": n0}
        if n == 0:
            continue
        if share <= 0.0 or share >= 1.0:
            wrong = n1 if share <= 0.0 else n0
            entry.update(expected_treatment=share * n, chi2=None, p=0.0 if wrong else 1.0)
        else:
            res = st.chisquare([n1, n0], f_exp=[share * n, (1 - share) * n])
            entry.update(expected_treatment=share * n, chi2=float(res.statistic), p=float(res.pvalue))
        entry["mismatch"] = bool(entry["p"] < design.srm_alpha)
        out.append(entry)
    return out


# -- looks and the gate ----------------------------------------------------------------------------------
@dataclass
class Look:
    """The gate at one planned look."""

    index: int
    planned_fraction: float
    information_fraction: float
    rows: int
    units_treatment: int
    units_control: int
    z: float
    boundary: float
    gain: float
    gain_low: float  # repeated confidence interval at the look's boundary
    gain_high: float
    upper_bound: float  # one-sided upper (1 − alpha) bound of the gain
    p_one_sided: float
    aggregate_gain: float
    srm_p: float
    decision: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _clean(asdict(self))
        return out


@dataclass
class Gate:
    """The sequential gate's verdict and every planned look it took."""

    verdict: str
    reasons: list[str]
    looks: list[Look]
    decided_at: int | None  # index of the deciding look
    planned_units_per_arm: int | None
    information_fraction: float
    boundaries: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "decided_at": self.decided_at,
            "planned_units_per_arm": self.planned_units_per_arm,
            "information_fraction": _num(self.information_fraction),
            "boundaries": list(self.boundaries),
            "looks": [lk.to_dict() for lk in self.looks],
        }


class _Sequential:
    """Estimates at prefixes of the observations (the looks), sharing the per-row codes."""

    def __init__(self, obs: Observations, design: Design) -> None:
        self.obs = obs
        self.design = design
        self.p = _prepare(obs)
        self.n_strata = len(self.p.strata)

    def at(self, end: int) -> tuple[_Cells, _ArmStats, _Estimate]:
        c = _cells(self.p, end)
        s = _arm_stats(c, self.n_strata)
        return c, s, _welch(s)

    def unit_var(self, s: _ArmStats) -> tuple[float, float]:
        """Pooled within-stratum variance of the unit means, per arm (over strata with both arms)."""
        valid = (s.n1 >= 2) & (s.n0 >= 2) & np.isfinite(s.v1) & np.isfinite(s.v0)
        if not valid.any():
            return math.nan, math.nan
        d1, d0 = s.n1[valid] - 1, s.n0[valid] - 1
        return float((d1 * s.v1[valid]).sum() / d1.sum()), float((d0 * s.v0[valid]).sum() / d0.sum())

    def fraction(self, s: _ArmStats, e: _Estimate, planned: int) -> float:
        v1, v0 = self.unit_var(s)
        if not (math.isfinite(v1) and math.isfinite(e.se)) or e.se <= 0:
            return 0.0
        return ((v1 + v0) / planned) / e.se**2


def _planned_units(seq: _Sequential, design: Design) -> tuple[int | None, dict[str, Any]]:
    _, s, _ = seq.at(seq.obs.n)
    v1, v0 = seq.unit_var(s)
    sd = design.assumed_sd if design.assumed_sd is not None else math.sqrt((v1 + v0) / 2)
    power = sample_size(sd, design) if math.isfinite(sd) else sample_size(math.nan, design)
    planned = design.planned_units_per_arm or power["units_per_arm_sequential"]
    return (int(planned) if planned else None), power


def _decide(look: Look, design: Design, final: bool, enough: bool) -> tuple[str, str]:
    if look.srm_p < design.srm_alpha:
        return "blocked", f"sample-ratio mismatch (χ² p = {look.srm_p:.2g} < {design.srm_alpha})"
    if not enough:
        return "hold", f"too little data (fewer than {design.min_units_per_arm} units in an arm)"
    if (
        look.z >= look.boundary
        and look.gain > design.min_gain
        and (not math.isfinite(look.aggregate_gain) or look.aggregate_gain > AGGREGATE_FLOOR)
    ):
        return "approve", (
            f"z {look.z:.2f} ≥ boundary {look.boundary:.2f} and gain {look.gain:+.2%} > {design.min_gain:.0%}"
        )
    if look.z >= look.boundary and look.gain > design.min_gain:
        return "hold", f"aggregate throughput {look.aggregate_gain:+.2%} disagrees with the per-transfer gain"
    if look.upper_bound < design.min_gain:
        return "rollback", (
            f"upper {1 - design.alpha:.0%} bound of the gain {look.upper_bound:+.2%} < {design.min_gain:.0%}"
        )
    if final:
        return "rollback", f"final look: z {look.z:.2f} < boundary {look.boundary:.2f} (not approved)"
    return "hold", f"z {look.z:.2f} < boundary {look.boundary:.2f}, gain not yet bounded below"


def _run_gate(
    seq: _Sequential, design: Design, planned: int | None, look_ends: Sequence[int] | None
) -> tuple[Gate, float]:
    n = seq.obs.n
    bounds = obf_boundaries(design.looks, design.alpha)
    reasons: list[str] = []
    now = 0.0
    if n and planned:
        _, s_all, e_all = seq.at(n)
        now = seq.fraction(s_all, e_all, planned)
    ends: list[int] = []
    if look_ends is not None:
        if len(look_ends) != len(design.looks):
            raise ConfigError(f"{len(look_ends)} look ends for {len(design.looks)} planned looks")
        ends = [min(int(e), n) for e in look_ends]
    elif planned and n:
        for target in design.looks:
            if now < target:
                break
            lo, hi = max(ends[-1] if ends else 1, 1), n
            while lo < hi:  # the earliest prefix whose information fraction reaches the target
                mid = (lo + hi) // 2
                _, s, e = seq.at(mid)
                if seq.fraction(s, e, planned) >= target:
                    hi = mid
                else:
                    lo = mid + 1
            ends.append(lo)
    looks: list[Look] = []
    verdict, decided = "hold", None
    for k, end in enumerate(ends):
        c, s, e = seq.at(end)
        srm = _srm(c, seq.p.strata, design)
        srm_p = min((x["p"] for x in srm), default=1.0)
        frac = seq.fraction(s, e, planned) if planned else math.nan
        nt, nc = int(c.treat.sum()), int((~c.treat).sum())
        valid = (s.n1 >= 2) & (s.n0 >= 2)
        enough = bool(valid.any()) and min(s.n1[valid].sum(), s.n0[valid].sum()) >= design.min_units_per_arm
        b = bounds[k]
        has = math.isfinite(e.se)
        look = Look(
            index=k,
            planned_fraction=design.looks[k],
            information_fraction=frac,
            rows=end,
            units_treatment=nt,
            units_control=nc,
            z=e.z if has else math.nan,
            boundary=b,
            gain=e.gain() if has else math.nan,
            gain_low=math.expm1(e.diff - b * e.se) if has else math.nan,
            gain_high=math.expm1(e.diff + b * e.se) if has else math.nan,
            upper_bound=e.upper(design.alpha) if has else math.nan,
            p_one_sided=e.p,
            aggregate_gain=_aggregate(c),
            srm_p=srm_p,
            decision="hold",
            reason="",
        )
        final = k == len(design.looks) - 1
        look.decision, look.reason = _decide(look, design, final, enough and has)
        if decided is not None:
            look.reason = f"after the decision at look {decided + 1}: " + look.reason
        elif look.decision != "hold":
            verdict, decided = look.decision, k
            reasons.append(f"look {k + 1} (t = {design.looks[k]:g}): {look.reason}")
        looks.append(look)
    if decided is None:
        if not n:
            reasons.append("no completed transfers")
        elif not planned:
            reasons.append("no planned sample size (the standard deviation is not known yet)")
        elif not ends:
            reasons.append(f"information fraction {now:.3f} is before the first look at {design.looks[0]:g}")
        else:
            reasons.append(f"look {len(ends)}: {looks[-1].reason}")
    return Gate(verdict, reasons, looks, decided, planned, now, bounds), now


def gate(obs: Observations, design: Design, *, look_ends: Sequence[int] | None = None) -> Gate:
    """The sequential gate alone (SRM, looks, verdict): what :func:`analyze` decides by, without the
    report's extra estimates. ``look_ends``: the row count at each planned look (calendar looks, as
    replays take them); by default the earliest prefix reaching each look's information fraction."""
    seq = _Sequential(obs, design)
    planned, _ = (
        _planned_units(seq, design)
        if design.planned_units_per_arm is None
        else (
            design.planned_units_per_arm,
            None,
        )
    )
    g, _ = _run_gate(seq, design, planned, look_ends)
    if obs.n:
        c = _cells(seq.p, obs.n)
        if any(x["mismatch"] for x in _srm(c, seq.p.strata, design)) and g.verdict != "blocked":
            g.verdict = "blocked"
            g.reasons.insert(0, "sample-ratio mismatch in the data so far: no verdict")
    return g


# -- the full analysis -----------------------------------------------------------------------------------
@dataclass
class Analysis:
    """Everything :func:`analyze` found; ``to_dict()`` is JSON-able."""

    experiment: str
    design: Design
    verdict: str
    reasons: list[str]
    counts: dict[str, Any]
    srm: list[dict[str, Any]]
    throughput: dict[str, Any]
    speed: dict[str, Any]
    robust: dict[str, Any]
    cuped: dict[str, Any] | None
    power: dict[str, Any]
    gate: Gate
    by_stratum: list[dict[str, Any]]
    arrays: dict[str, FloatArray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _clean(
            {
                "experiment": self.experiment,
                "verdict": self.verdict,
                "reasons": self.reasons,
                "design": self.design.to_dict(),
                "counts": self.counts,
                "srm": self.srm,
                "throughput": self.throughput,
                "speed": self.speed,
                "robust": self.robust,
                "cuped": self.cuped,
                "power": self.power,
                "gate": self.gate.to_dict(),
                "by_stratum": self.by_stratum,
            }
        )
        return out


def _num(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _clean(x: Any) -> Any:
    """JSON-able: numpy scalars to Python, NaN and infinities to ``None``."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return _num(x)


def _bootstrap_throughput(c: _Cells, n_strata: int, resamples: int, seed: int) -> dict[str, Any]:
    st = _stats()
    point = _aggregate(c)
    out: dict[str, Any] = {"gain": point, "ci95": [math.nan, math.nan], "method": "bootstrap BCa"}
    t = c.treat
    out["treatment_bps"] = float(8 * c.wb[t].sum() / c.wt[t].sum()) if t.any() else math.nan
    out["control_bps"] = float(8 * c.wb[~t].sum() / c.wt[~t].sum()) if (~t).any() else math.nan
    groups = [np.flatnonzero((c.h == h) & (c.treat == arm)) for h in range(n_strata) for arm in (True, False)]
    groups = [g for g in groups if len(g)]
    is_t = [bool(c.treat[g[0]]) for g in groups]
    if not math.isfinite(point) or any(len(g) < 2 for g in groups):
        return out
    wb, wt = c.wb, c.wt

    def stat(*samples: npt.NDArray[Any], axis: int = -1) -> FloatArray:
        num = {True: 0.0, False: 0.0}
        den = {True: 0.0, False: 0.0}
        acc_n: dict[bool, Any] = dict(num)
        acc_d: dict[bool, Any] = dict(den)
        for arm, idx in zip(is_t, samples, strict=True):
            ii = idx.astype(np.int64)
            acc_n[arm] = acc_n[arm] + wb[ii].sum(axis=axis)
            acc_d[arm] = acc_d[arm] + wt[ii].sum(axis=axis)
        out_: FloatArray = (acc_n[True] / acc_d[True]) / (acc_n[False] / acc_d[False]) - 1.0
        return out_

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        # BCa's jackknife costs units² operations: beyond a few thousand units the percentile interval
        # (as good there) is used
        method = "BCa" if sum(len(g) for g in groups) <= _BCA_MAX_UNITS else "percentile"
        res = st.bootstrap(
            tuple(groups),
            stat,
            n_resamples=resamples,
            vectorized=True,
            paired=False,
            method=method,
            confidence_level=0.95,
            rng=np.random.default_rng(seed),
        )
    out["ci95"] = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    out["method"] = f"bootstrap {method}, {resamples} resamples of units within arm and stratum"
    return out


def _per_stratum_tests(c: _Cells, strata: FloatArray, alpha: float) -> tuple[list[dict[str, Any]], _Estimate]:
    """scipy's Welch and Yuen tests in each stratum; Yuen combined across strata."""
    st = _stats()
    rows = []
    diffs, vars_, terms, valid = [], [], [], []
    for h, share in enumerate(strata.tolist()):
        a = c.y[(c.h == h) & c.treat]
        b = c.y[(c.h == h) & ~c.treat]
        entry: dict[str, Any] = {"share": share, "units_treatment": len(a), "units_control": len(b)}
        if len(a) >= 2 and len(b) >= 2:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                w = st.ttest_ind(a, b, equal_var=False, alternative="greater")
                w2 = st.ttest_ind(a, b, equal_var=False)
                ci = w2.confidence_interval(0.95)
                y = st.ttest_ind(a, b, equal_var=False, trim=_TRIM, alternative="greater")
                dy = float(st.trim_mean(a, _TRIM) - st.trim_mean(b, _TRIM))
            entry["welch"] = {
                "gain": math.expm1(float(np.mean(a) - np.mean(b))),
                "t": float(w.statistic),
                "df": float(w.df),
                "p_one_sided": float(w.pvalue),
                "ci95": [math.expm1(float(ci.low)), math.expm1(float(ci.high))],
            }
            entry["yuen"] = {
                "gain": math.expm1(dy),
                "t": float(y.statistic),
                "df": float(y.df),
                "p_one_sided": float(y.pvalue),
            }
            stat_y = float(y.statistic)
            se = dy / stat_y if stat_y != 0 and math.isfinite(stat_y) else math.nan
            diffs.append(dy)
            vars_.append(se**2)
            # Yuen's df per stratum stands in for the Satterthwaite term: (se²)² / df
            terms.append(se**4 / float(y.df) if math.isfinite(se) else math.nan)
            valid.append(math.isfinite(se) and se > 0)
        rows.append(entry)
    if not valid:
        return rows, _NO_ESTIMATE
    yuen = _combine(np.array(diffs), np.array(vars_), np.array(terms), np.array(valid, dtype=bool))
    return rows, yuen


def _cuped(c: _Cells, strata: FloatArray, raw: _Estimate) -> dict[str, Any] | None:
    """ANCOVA per stratum (OLS ``y ~ treat + x_centred``, HC3), combined by inverse variance."""
    if c.x is None or not np.isfinite(c.x).any():
        return None
    import statsmodels.api as sm  # type: ignore[import-untyped, unused-ignore]

    diffs, vars_, terms, valid, thetas = [], [], [], [], []
    covered = float(np.isfinite(c.x).mean())
    for h in range(len(strata)):
        m = c.h == h
        yh, th, xh = c.y[m], c.treat[m].astype(np.float64), c.x[m]
        has = np.isfinite(xh)
        if th.sum() < 2 or (1 - th).sum() < 2 or has.sum() < 4:
            continue
        xc = np.where(has, xh - xh[has].mean(), 0.0)
        cols = [np.ones_like(yh), th, xc]
        if not has.all():
            cols.append((~has).astype(np.float64))  # units with no pre-period: their own intercept
        x_mat = np.column_stack(cols)
        if np.linalg.matrix_rank(x_mat) < x_mat.shape[1]:
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fit = sm.OLS(yh, x_mat).fit(cov_type="HC3")
        se = float(fit.bse[1])
        diffs.append(float(fit.params[1]))
        vars_.append(se**2)
        terms.append(se**4 / float(fit.df_resid))
        valid.append(math.isfinite(se) and se > 0)
        thetas.append(float(fit.params[2]))
    if not valid:
        return None
    est = _combine(np.array(diffs), np.array(vars_), np.array(terms), np.array(valid, dtype=bool))
    reduction = 1.0 - est.se**2 / raw.se**2 if math.isfinite(raw.se) and raw.se > 0 else math.nan
    d = est.to_dict()
    d.update(
        method="OLS y ~ treat + x_centred per stratum, HC3 errors, inverse-variance combined",
        theta=float(np.mean(thetas)),
        variance_reduction=reduction,
        covered_units=covered,
    )
    return d


def analyze(
    obs: Observations,
    design: Design,
    *,
    look_ends: Sequence[int] | None = None,
    bootstrap_resamples: int = 2000,
    seed: int = 0,
) -> Analysis:
    """The whole A/B analysis and the gate's verdict (see the module's documentation)."""
    seq = _Sequential(obs, design)
    planned, power = _planned_units(seq, design)
    g, now = _run_gate(seq, design, planned, look_ends)
    n = obs.n
    c, s, raw = seq.at(n) if n else (None, None, _NO_ESTIMATE)
    srm = _srm(c, seq.p.strata, design) if c is not None else []
    verdict, reasons = g.verdict, list(g.reasons)
    if any(x["mismatch"] for x in srm):
        if verdict != "blocked":
            reasons.insert(0, "sample-ratio mismatch in the data so far: no verdict")
        verdict = "blocked"
    g.verdict, g.reasons = verdict, reasons
    counts: dict[str, Any] = {
        "rows": n,
        "rows_treatment": int(obs.treatment.sum()),
        "rows_control": int((~obs.treatment).sum()),
        "errors": dict(obs.errors),
        "strata": len(seq.p.strata),
    }
    for arm in ARMS:
        total = counts[f"rows_{arm}"] + obs.errors.get(arm, 0)
        counts[f"error_rate_{arm}"] = obs.errors.get(arm, 0) / total if total else math.nan
    throughput: dict[str, Any] = {}
    speed: dict[str, Any] = {}
    robust: dict[str, Any] = {}
    cuped = None
    by_stratum: list[dict[str, Any]] = []
    arrays: dict[str, FloatArray] = {}
    if c is not None:
        counts["units_treatment"] = int(c.treat.sum())
        counts["units_control"] = int((~c.treat).sum())
        throughput = _bootstrap_throughput(c, len(seq.p.strata), bootstrap_resamples, seed)
        speed = raw.to_dict()
        speed["metric"] = (
            "log(raw-transfer estimate / achieved s)" if obs.scale_s is not None else "log(bytes / s)"
        )
        speed["gain_is"] = "ratio of geometric means of per-unit speed, exp(Δ) − 1"
        if math.isfinite(raw.se):
            speed["upper_bound"] = raw.upper(design.alpha)
        by_stratum, yuen = _per_stratum_tests(c, seq.p.strata, design.alpha)
        robust = {"test": f"Yuen, {_TRIM:.0%} trimmed", **yuen.to_dict()}
        cuped = _cuped(c, seq.p.strata, raw)
        arrays = {
            "speed_treatment": obs.payload_bytes[obs.treatment] / obs.seconds[obs.treatment],
            "speed_control": obs.payload_bytes[~obs.treatment] / obs.seconds[~obs.treatment],
        }
    power["observed_units_per_arm"] = [counts.get("units_treatment", 0), counts.get("units_control", 0)]
    power["planned_units_per_arm"] = planned
    return Analysis(
        obs.experiment or design.experiment,
        design,
        verdict,
        reasons,
        counts,
        srm,
        throughput,
        speed,
        robust,
        cuped,
        power,
        g,
        by_stratum,
        arrays,
    )


# -- HTML ------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """pyplot on the headless backend (the report is rendered by the CLI and tests, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_speeds(a: Analysis) -> str | None:
    from ..training.report import _fig_uri

    plt = _pyplot()

    st, sc = a.arrays.get("speed_treatment"), a.arrays.get("speed_control")
    if st is None or sc is None or not len(st) or not len(sc):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    lo = float(np.log10(min(st.min(), sc.min())))
    hi = float(np.log10(max(st.max(), sc.max())))
    bins = np.logspace(lo, hi + 1e-9, 50)
    for arr, name, colour in ((sc, "control", "#9467bd"), (st, "treatment", "#ff7f0e")):
        ax.hist(
            arr * 8,
            bins=(bins * 8).tolist(),
            alpha=0.5,
            label=f"{name} ({len(arr):,})",
            color=colour,
            density=True,
        )
    ax.set_xscale("log")
    ax.set_xlabel("achieved speed per transfer (bit/s, log scale)")
    ax.set_ylabel("density")
    ax.set_title("Per-transfer speed by arm")
    ax.legend(fontsize=8)
    return _fig_uri(fig)


def _plot_looks(a: Analysis) -> str | None:
    from ..training.report import _fig_uri

    plt = _pyplot()

    looks = [lk for lk in a.gate.looks if math.isfinite(lk.gain)]
    if not looks:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = [lk.planned_fraction for lk in looks]
    g = np.array([lk.gain for lk in looks])
    lo = np.array([lk.gain_low for lk in looks])
    hi = np.array([min(lk.gain_high, 10.0) for lk in looks])
    ax1.errorbar(x, g * 100, yerr=[(g - lo) * 100, (hi - g) * 100], fmt="o", capsize=4, label="gain")
    ax1.axhline(
        a.design.min_gain * 100, color="#2ca02c", ls="--", lw=1, label=f"min gain {a.design.min_gain:.0%}"
    )
    ax1.axhline(0, color="#888", lw=0.8)
    ax1.set_xlabel("look (planned information fraction)")
    ax1.set_ylabel("gain, %")
    ax1.set_title("Gain per look, interval at its boundary")
    ax1.legend(fontsize=8)
    tt = np.linspace(min(a.design.looks[0], 0.05), 1.0, 200)
    st = _stats()
    ax2.plot(
        tt,
        st.norm.isf(obf_spending(tt, a.design.alpha)),
        color="#bbb",
        lw=1,
        label="z of the alpha spent by t",
    )
    ax2.plot(a.design.looks, a.gate.boundaries, "s--", color="#d62728", label="boundary")
    ax2.plot([lk.planned_fraction for lk in looks], [lk.z for lk in looks], "o-", color="#1f77b4", label="z")
    ax2.set_ylim(min(-3.0, min(lk.z for lk in looks) - 0.5), max(a.gate.boundaries[0] + 0.5, 3.0))
    ax2.set_xlabel("information fraction")
    ax2.set_ylabel("z")
    ax2.set_title("z against the O'Brien-Fleming boundaries")
    ax2.legend(fontsize=8)
    return _fig_uri(fig)


def _plot_srm(a: Analysis) -> str | None:
    from ..training.report import _fig_uri

    plt = _pyplot()

    if not a.srm:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    idx = np.arange(len(a.srm))
    n = np.array([r["treatment"] + r["control"] for r in a.srm], dtype=np.float64)
    ax.bar(idx - 0.2, [r["treatment"] for r in a.srm], 0.4, label="treatment seen", color="#ff7f0e")
    ax.bar(idx + 0.2, [r["control"] for r in a.srm], 0.4, label="control seen", color="#9467bd")
    share = np.array([r["share"] for r in a.srm])
    ax.plot(idx - 0.2, share * n, "k_", ms=18, mew=2, label="expected")
    ax.plot(idx + 0.2, (1 - share) * n, "k_", ms=18, mew=2)
    ax.set_xticks(idx, [f"share {r['share']:.0%}\np = {r['p']:.2g}" for r in a.srm])
    ax.set_ylabel("units")
    ax.set_title("Sample ratio per stratum")
    ax.legend(fontsize=8)
    return _fig_uri(fig)


def render_html(a: Analysis) -> str:
    """The analysis as one self-contained HTML page (plots embedded)."""
    from ..training.report import _CSS, _e, _hint, _kv_table, _pct, _plain, _plot, _table

    def pct(x: Any, signed: bool = True) -> str:
        return _pct(x, signed=signed)

    def ci(pair: Any) -> str:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            return "–"
        return f"[{pct(pair[0])}, {pct(pair[1])}]"

    d = a.design
    sections: list[tuple[str, str]] = []
    head = _kv_table(
        [
            ("verdict", a.verdict.upper()),
            ("why", "; ".join(a.reasons)),
            ("transfers", f"{a.counts.get('rows', 0):,} ({a.counts.get('rows_treatment', 0):,} treatment)"),
            (
                "units",
                f"{a.counts.get('units_treatment', 0):,} treatment, "
                f"{a.counts.get('units_control', 0):,} control",
            ),
            ("failed transfers", _plain(a.counts.get("errors"))),
            (
                "design",
                f"alpha {d.alpha}, min gain {d.min_gain:.0%}, looks {list(d.looks)}, SRM alpha {d.srm_alpha}",
            ),
        ],
        ("", ""),
    )
    sections.append(
        (
            "Verdict",
            _hint(
                "Approve: at a planned look the one-sided z of the per-transfer log-speed gain reaches the "
                "O'Brien-Fleming boundary (H0: gain ≤ 0, overall one-sided alpha), the gain's point "
                "estimate exceeds the minimum gain and the aggregate throughput gain is positive. Roll back: "
                "the upper bound of the gain is below the minimum gain, or the final look did not approve. A "
                "sample-ratio mismatch blocks any verdict."
            )
            + head,
        )
    )
    sp, th, rb = a.speed, a.throughput, a.robust
    rows = [
        [
            "aggregate throughput Σbytes/Σtime",
            pct(th.get("gain")),
            ci(th.get("ci95")),
            "–",
            th.get("method", ""),
        ],
        [
            "per-transfer speed (Welch, log scale)",
            pct(sp.get("gain")),
            ci(sp.get("ci95")),
            _plain(sp.get("p_one_sided")),
            "ratio of geometric means",
        ],
        [
            "Yuen 10 % trimmed (robustness)",
            pct(rb.get("gain")),
            ci(rb.get("ci95")),
            _plain(rb.get("p_one_sided")),
            "",
        ],
    ]
    if a.cuped:
        rows.append(
            [
                "CUPED / ANCOVA (pre-period covariate)",
                pct(a.cuped.get("gain")),
                ci(a.cuped.get("ci95")),
                _plain(a.cuped.get("p_one_sided")),
                f"variance reduction {_pct(a.cuped.get('variance_reduction'))}",
            ]
        )
    sections.append(
        (
            "Estimates",
            _hint(
                "Gains are treatment / control − 1. The per-transfer metric is the log of each transfer's "
                "speed (relative to its raw-transfer estimate where the link is known): heavy tails become "
                "symmetric, and exp(Δ) − 1 is the ratio of geometric means. p-values are one-sided, "
                "nominal (fixed-sample); the gate's decision uses the sequential boundaries below."
            )
            + _table(["metric", "gain", "95 % CI", "p (one-sided)", "note"], rows)
            + _plot(_plot_speeds, a, "per-arm speed distributions"),
        )
    )
    look_rows = [
        [
            str(lk.index + 1),
            f"{lk.planned_fraction:g}",
            _plain(lk.information_fraction),
            f"{lk.units_treatment:,} / {lk.units_control:,}",
            _plain(lk.z),
            _plain(lk.boundary),
            pct(lk.gain),
            f"[{pct(lk.gain_low)}, {pct(lk.gain_high)}]",
            pct(lk.upper_bound),
            pct(lk.aggregate_gain),
            lk.decision,
        ]
        for lk in a.gate.looks
    ]
    sections.append(
        (
            "Sequential looks",
            _hint(
                f"Lan-DeMets O'Brien-Fleming spending at one-sided alpha {d.alpha}; planned units per arm "
                f"{a.gate.planned_units_per_arm}; information fraction now {a.gate.information_fraction:.3f}."
            )
            + (
                _table(
                    [
                        "look",
                        "planned t",
                        "observed t",
                        "units T / C",
                        "z",
                        "boundary",
                        "gain",
                        "repeated CI",
                        "upper bound",
                        "aggregate",
                        "decision",
                    ],
                    look_rows,
                )
                if look_rows
                else '<p class="missing">No planned look reached yet.</p>'
            )
            + _plot(_plot_looks, a, "gain per look and z against the boundaries"),
        )
    )
    srm_rows = [
        [
            f"{r['share']:.2%}",
            f"{r['treatment']:,}",
            f"{r['control']:,}",
            _plain(r.get("expected_treatment")),
            _plain(r.get("chi2")),
            _plain(r.get("p")),
            "MISMATCH" if r.get("mismatch") else "ok",
        ]
        for r in a.srm
    ]
    sections.append(
        (
            "Sample ratio",
            _table(
                ["designed share", "treatment units", "control units", "expected treatment", "χ²", "p", ""],
                srm_rows,
            )
            + _plot(_plot_srm, a, "sample ratio per stratum"),
        )
    )
    strat_rows = []
    for r in a.by_stratum:
        w = r.get("welch") or {}
        y = r.get("yuen") or {}
        strat_rows.append(
            [
                f"{r['share']:.2%}",
                f"{r['units_treatment']:,}",
                f"{r['units_control']:,}",
                pct(w.get("gain")),
                ci(w.get("ci95")),
                _plain(w.get("p_one_sided")),
                pct(y.get("gain")),
                _plain(y.get("p_one_sided")),
            ]
        )
    sections.append(
        (
            "By stratum",
            _table(
                ["share", "units T", "units C", "Welch gain", "95 % CI", "p", "Yuen gain", "Yuen p"],
                strat_rows,
            ),
        )
    )
    pw = a.power
    sections.append(
        (
            "Power",
            _kv_table(
                [
                    ("sd of the unit log metric", _plain(pw.get("sd_log"))),
                    ("units per arm, fixed design", _plain(pw.get("units_per_arm_fixed"))),
                    ("inflation of the sequential design", _plain(pw.get("inflation"))),
                    ("units per arm, sequential", _plain(pw.get("units_per_arm_sequential"))),
                    ("planned units per arm", _plain(pw.get("planned_units_per_arm"))),
                    ("observed units (treatment, control)", _plain(pw.get("observed_units_per_arm"))),
                ]
            )
            + _hint(f"To detect a {d.min_gain:.0%} gain at one-sided alpha {d.alpha} with power {d.power}."),
        )
    )
    title = f"A/B analysis: {a.experiment}"
    body = "".join(f"<section><h2>{_e(h)}</h2>{b}</section>" for h, b in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def write_html(analysis: Analysis, path: str | Path) -> Path:
    """Write :func:`render_html` to ``path`` (parent directories created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(analysis), encoding="utf-8")
    return out
