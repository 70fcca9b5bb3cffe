"""Data quality of a telemetry table: what ``dwcp-selector validate`` reports and gates on.

The quality score is the mean of five shares, each in [0, 1] (``docs/data-quality.md``):

* **completeness** - 1 − missing cells / expected cells. A cell is *expected* where the schema and the
  record say it must exist: required columns always; HDE's outcome, cost and similarity columns only when
  the record has a baseline; outcomes and labels only for labelled rows (``staging`` and ``audit``: the
  transfer path's own rows have achieved outcomes instead); ``used_*`` only for production rows; moving
  averages never (the first version of a session has no history);
* **validity** - share of rows whose every value is in range (entropy in [0, 8], shares in [0, 1],
  sizes ≥ 0, times finite and ≥ 0, costs finite and > 0, link and node values physical, label among the
  offered strategies);
* **uniqueness** - 1 − duplicated request ids / rows;
* **consistency** - share of labelled rows whose cost vector, recomputed from the stored outcomes, link and
  node with this build's cost model, matches the stored one, and whose label is the oracle's choice on it;
* **plausibility** - 1 − share of rows with a timing outlier: an encode or decode speed more than 8
  robust standard deviations (MAD) from the median speed of its strategy, payload type (and HDE tier)
  and size decade, judged once per measured payload, in groups of at least 20 payloads (speeds differ
  by orders of magnitude between payload kinds, lz4 on random data for one, so they are not pooled).

Bars (DESIGN section 7): quality > 0.95, missing < 5 %, every strategy ≥ 5 % of labels, every link type
> 5 % of rows. The HDE:AMST balance (hde against the light path none + lz4) is reported with the 30–70 %
target beside it; labels are physics, so it warns instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..costmodel import CostModel, Oracle
from ..link import LINK_CLASSES
from ..telemetry.schema import COLUMNS, LABELLED_SOURCES, RELAXED_IN_4, STRATEGIES

__all__ = ["BARS", "QualityReport", "assess", "column_values"]

BARS = {"quality_score": 0.95, "missing_share": 0.05, "min_class_share": 0.05, "min_link_share": 0.05}
HDE_AMST_TARGET = (0.30, 0.70)
# Features a production decision may skip (the rich tier is only computed for large transfers) and
# columns newer than some stores: required of staging rows only.
RICH_OR_NEW = {
    "f_text_fraction",
    "f_zero_page_fraction",
    "f_probe_lz4_ratio",
    "f_probe_zstd_ratio",
    "f_probe_s",
}
_OUTLIER_Z = 8.0


@dataclass
class QualityReport:
    rows: int
    quality_score: float
    components: dict[str, float]
    missing_share: float
    missing_by_column: dict[str, float]
    invalid_by_check: dict[str, int]
    duplicate_ids: int
    inconsistent_rows: int
    outlier_rows: int
    class_shares: dict[str, float]
    link_shares: dict[str, float]
    class_shares_by_link: dict[str, dict[str, float]]
    type_shares: dict[str, float]
    hde_amst_balance: float | None
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "quality_score": round(self.quality_score, 6),
            "passed": self.passed,
            "components": {k: round(v, 6) for k, v in self.components.items()},
            "missing_share": round(self.missing_share, 6),
            "missing_by_column": {k: round(v, 6) for k, v in self.missing_by_column.items() if v > 0},
            "invalid_by_check": {k: v for k, v in self.invalid_by_check.items() if v},
            "duplicate_ids": self.duplicate_ids,
            "inconsistent_rows": self.inconsistent_rows,
            "outlier_rows": self.outlier_rows,
            "class_shares": _rounded(self.class_shares),
            "link_shares": _rounded(self.link_shares),
            "class_shares_by_link": {k: _rounded(v) for k, v in self.class_shares_by_link.items()},
            "type_shares": _rounded(self.type_shares),
            "hde_amst_balance": None if self.hde_amst_balance is None else round(self.hde_amst_balance, 4),
            "hde_amst_target": list(HDE_AMST_TARGET),
            "bars": BARS,
            "failures": self.failures,
            "warnings": self.warnings,
        }


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def column_values(table: pa.Table, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A telemetry column as a NumPy array, nulls filled: booleans False, strings "", numbers NaN."""
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        return np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(
        pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=dtype
    )


def _shares(values: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    n = len(values)
    return {k: (float(np.count_nonzero(values == k)) / n if n else 0.0) for k in names}


def expected_mask(table: pa.Table) -> dict[str, np.ndarray]:
    """Per column, the rows where a value must be present."""
    n = table.num_rows
    has_base = column_values(table, "f_has_baseline")
    source = column_values(table, "source")
    production = source != "staging"
    labelled = np.isin(source, LABELLED_SOURCES)
    out: dict[str, np.ndarray] = {}
    for c in COLUMNS:
        if not c.nullable:
            out[c.name] = np.ones(n, dtype=bool)
        elif c.name in RELAXED_IN_4:
            out[c.name] = labelled
        elif c.name.startswith(("o_hde_", "cost_hde")):
            out[c.name] = has_base & labelled
        elif c.group in ("outcome", "label"):
            out[c.name] = labelled
        elif c.name == "f_similarity_pages":
            out[c.name] = has_base
        elif c.name.startswith(("f_similarity_", "p_hde_")):
            out[c.name] = has_base & ~production  # rich tier and probe baseline: staging measures them
        elif c.group == "probe" or c.name in RICH_OR_NEW:
            out[c.name] = ~production
        elif c.name.startswith("f_prev_") or c.name in ("model_version", "decision_s"):
            out[c.name] = np.zeros(n, dtype=bool)
        elif c.since >= 4:  # the transfer path's own columns: present where the path knew them
            out[c.name] = np.zeros(n, dtype=bool)
        elif c.name.startswith("used_"):
            out[c.name] = production
        else:
            out[c.name] = np.ones(n, dtype=bool)
    return out


def assess(table: pa.Table, *, cost_model: CostModel | None = None, min_rows: int = 1) -> QualityReport:
    """Every check of the module docstring on an Arrow table of telemetry records."""
    cost_model = cost_model or CostModel()
    n = table.num_rows
    # completeness
    expected = expected_mask(table)
    missing_by_column: dict[str, float] = {}
    missing_cells = expected_cells = 0
    for c in COLUMNS:
        exp = expected[c.name]
        null = np.asarray(table.column(c.name).is_null().to_numpy(zero_copy_only=False), dtype=bool)
        miss = int(np.count_nonzero(exp & null))
        cells = int(np.count_nonzero(exp))
        missing_cells += miss
        expected_cells += cells
        missing_by_column[c.name] = miss / cells if cells else 0.0
    missing_share = missing_cells / expected_cells if expected_cells else 0.0

    # validity
    checks: dict[str, np.ndarray] = {}

    def check(name: str, ok: np.ndarray) -> None:
        checks[name] = ~ok

    def within(name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
        v = column_values(table, name)
        present = ~np.isnan(v)
        ok = np.ones(n, dtype=bool)
        ok &= ~present | ((v > lo) if lo_open else (v >= lo))
        ok &= ~present | ((v < hi) if hi_open else (v <= hi))
        check(f"{name} in range", ok)

    within("f_entropy", 0, 8)
    for name in (
        "f_zero_fraction",
        "f_text_fraction",
        "f_zero_page_fraction",
        "f_similarity_pages",
        "f_similarity_inplace",
        "f_similarity_shifted",
        "f_utilization",
    ):
        within(name, 0, 1, hi_open=name == "f_utilization")
    for name in ("f_probe_lz4_ratio", "f_probe_zstd_ratio"):
        within(name, 0, 1, lo_open=True)
    within("f_loss", 0, 1, hi_open=True)
    for name in (
        "f_payload_bytes",
        "f_baseline_bytes",
        "f_basic_s",
        "f_probe_s",
        "f_similarity_s",
        "f_jitter_s",
        "f_active_transfers",
        "version",
        "draw",
    ):
        within(name, 0, np.inf)
    for name in ("f_capacity_bps", "f_rtt_s", "f_free_cores", "oracle_cost_s"):
        within(name, 0, np.inf, lo_open=True, hi_open=True)
    for s in STRATEGIES:
        within(f"o_{s}_bytes", 0, np.inf)
        within(f"o_{s}_encode_s", 0, 60)
        within(f"o_{s}_decode_s", 0, 60)
        within(f"cost_{s}_s", 0, np.inf, lo_open=True, hi_open=True)
        within(f"p_{s}_bytes", 0, np.inf)
        within(f"p_{s}_encode_s", 0, 60)
        within(f"p_{s}_decode_s", 0, 60)
    link_type = column_values(table, "f_link_type")
    check("f_link_type known", np.isin(link_type, list(LINK_CLASSES)))
    label = column_values(table, "oracle_label")
    offered = np.zeros(n, dtype=bool)
    for s in STRATEGIES:
        offered |= (label == s) & ~np.isnan(column_values(table, f"cost_{s}_s"))
    check("oracle_label offered", offered | ~np.isin(column_values(table, "source"), LABELLED_SOURCES))
    invalid_rows = np.zeros(n, dtype=bool)
    for bad in checks.values():
        invalid_rows |= bad
    validity = 1.0 - float(np.count_nonzero(invalid_rows)) / n if n else 0.0

    # uniqueness
    ids = table.column("request_id")
    duplicates = n - len(pc.unique(ids)) if n else 0
    uniqueness = 1.0 - duplicates / n if n else 0.0

    # consistency: recompute the cost vector and the label from outcomes, link and node
    size = column_values(table, "f_payload_bytes")
    recomputed = np.full((n, len(STRATEGIES)), np.inf)
    stored = np.full((n, len(STRATEGIES)), np.inf)
    for j, s in enumerate(STRATEGIES):
        cost = column_values(table, f"cost_{s}_s")
        have = ~np.isnan(cost)
        stored[have, j] = cost[have]
        t = cost_model.transfer_time_array(
            size,
            column_values(table, f"o_{s}_bytes"),
            column_values(table, f"o_{s}_encode_s"),
            column_values(table, f"o_{s}_decode_s"),
            column_values(table, "f_capacity_bps"),
            column_values(table, "f_utilization"),
            column_values(table, "f_rtt_s"),
            column_values(table, "f_loss"),
            column_values(table, "f_free_cores"),
            s,
        )
        recomputed[have, j] = t[have]
    with np.errstate(invalid="ignore"):
        close = np.asarray(
            np.isclose(recomputed, stored, rtol=1e-9, atol=0) | (np.isinf(stored) & np.isinf(recomputed)),
            dtype=bool,
        )
    consistent = close.all(axis=1)
    if n:
        finite: np.ndarray = np.asarray(np.isfinite(stored).any(axis=1), dtype=bool)
        labels = np.full(n, "", dtype=object)
        idx = Oracle(cost_model).label_array(np.where(finite[:, None], stored, 1.0))
        labels[finite] = np.array(STRATEGIES, dtype=object)[idx[finite]]
        consistent &= finite & (labels == label)
        consistent &= column_values(table, "cost_params") == cost_model.params.fingerprint
        consistent |= ~np.isin(column_values(table, "source"), LABELLED_SOURCES)  # no label to recompute
    inconsistent = int(n - np.count_nonzero(consistent))
    consistency = 1.0 - inconsistent / n if n else 0.0

    # plausibility: timing outliers, judged once per measured payload (its draws share the timings)
    outlier = np.zeros(n, dtype=bool)
    groups_id = np.asarray(table.column("payload_group_id").to_numpy(zero_copy_only=False), dtype=object)
    _, first_row, payload_of_row = np.unique(groups_id, return_index=True, return_inverse=True)
    p_size = size[first_row]
    decade = np.floor(np.log10(np.maximum(p_size, 1)))
    type_idx = np.unique(column_values(table, "f_payload_type")[first_row], return_inverse=True)[1]
    tier = np.nan_to_num(column_values(table, "o_hde_tier")[first_row], nan=0)
    keys = np.stack([decade, type_idx, tier], axis=1)
    bad_payload = np.zeros(len(first_row), dtype=bool)
    for key in np.unique(keys, axis=0):
        in_group = (keys == key).all(axis=1)
        for s in STRATEGIES:
            for kind in ("encode", "decode"):
                secs = column_values(table, f"o_{s}_{kind}_s")[first_row]
                with np.errstate(divide="ignore", invalid="ignore"):
                    speed = np.log(p_size / secs)
                sel = in_group & np.isfinite(speed)
                if np.count_nonzero(sel) < 20:
                    continue
                v = speed[sel]
                med = np.median(v)
                mad = np.median(np.abs(v - med)) * 1.4826
                if mad > 0:
                    bad_payload[np.flatnonzero(sel)[np.abs(v - med) / mad > _OUTLIER_Z]] = True
    outlier = bad_payload[payload_of_row] if n else outlier
    outliers = int(np.count_nonzero(outlier))
    plausibility = 1.0 - outliers / n if n else 0.0

    components = {
        "completeness": 1.0 - missing_share,
        "validity": validity,
        "uniqueness": uniqueness,
        "consistency": consistency,
        "plausibility": plausibility,
    }
    score = float(np.mean(list(components.values()))) if n else 0.0
    class_shares = _shares(label, STRATEGIES)
    link_shares = _shares(link_type, list(LINK_CLASSES))
    by_link = {k: _shares(label[link_type == k], STRATEGIES) for k in LINK_CLASSES}
    ptype = column_values(table, "f_payload_type")
    type_shares = _shares(ptype, sorted({str(x) for x in ptype}))
    light = class_shares["none"] + class_shares["lz4"]
    balance = class_shares["hde"] / (class_shares["hde"] + light) if class_shares["hde"] + light > 0 else None

    report = QualityReport(
        rows=n,
        quality_score=score,
        components=components,
        missing_share=missing_share,
        missing_by_column=missing_by_column,
        invalid_by_check={k: int(np.count_nonzero(v)) for k, v in checks.items()},
        duplicate_ids=duplicates,
        inconsistent_rows=inconsistent,
        outlier_rows=outliers,
        class_shares=class_shares,
        link_shares=link_shares,
        class_shares_by_link=by_link,
        type_shares=type_shares,
        hde_amst_balance=balance,
    )
    if n < min_rows:
        report.failures.append(f"{n} rows, fewer than the {min_rows} asked for")
    if score <= BARS["quality_score"]:
        report.failures.append(f"quality score {score:.4f} is not above {BARS['quality_score']}")
    if missing_share >= BARS["missing_share"]:
        report.failures.append(f"missing share {missing_share:.2%} is not below {BARS['missing_share']:.0%}")
    for s, share in class_shares.items():
        if share < BARS["min_class_share"]:
            report.failures.append(
                f"strategy {s} labels {share:.2%} of rows, under {BARS['min_class_share']:.0%}"
            )
    for k, share in link_shares.items():
        if share <= BARS["min_link_share"]:
            report.failures.append(
                f"link type {k} is {share:.2%} of rows, not above {BARS['min_link_share']:.0%}"
            )
    if balance is not None and not HDE_AMST_TARGET[0] <= balance <= HDE_AMST_TARGET[1]:
        report.warnings.append(
            f"HDE:AMST balance {balance:.1%} is outside the roadmap's {HDE_AMST_TARGET[0]:.0%}-"
            f"{HDE_AMST_TARGET[1]:.0%}; labels are what the cost model gives, "
            "tune the scenario mix to move it"
        )
    return report
