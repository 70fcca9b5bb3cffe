"""Export a telemetry table as a dataset: Parquet and CSV splits with a manifest and statistics.

The split is by **session** (every version of a resource, and every link draw of a payload, stay in one
split) and by **time**: sessions ordered by their first record fill train up to 70 % of the rows, then
validation to 85 %, then test, so later sessions are evaluated on models trained on earlier ones.
``holdout_types`` moves every session that ships one of those payload types to a ``holdout`` split
(families or a corpus kept out of training entirely, to measure generalisation); ``all_test`` puts
everything in test (evaluating a trained model on new staging data).

``manifest.json`` records the schema and feature versions, the cost-model fingerprint, row counts,
label shares per split and a sha256 of every file; ``stats.json`` and ``stats.md`` are the statistics
report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .._version import __version__
from ..errors import ConfigError
from ..link import LINK_CLASSES
from ..telemetry.schema import FEATURE_COLUMNS, SCHEMA_VERSION, STRATEGIES

__all__ = ["DATASET_SCHEMA", "SPLITS", "ExportReport", "export_dataset", "split_sessions"]

DATASET_SCHEMA = "dwcp-dataset/1"
SPLITS = ("train", "val", "test", "holdout")
FRACTIONS = (0.70, 0.15, 0.15)


@dataclass
class ExportReport:
    out_dir: Path
    rows: dict[str, int]
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out_dir), "rows": self.rows, "manifest": str(self.out_dir / "manifest.json")}


def split_sessions(
    table: pa.Table, *, all_test: bool = False, holdout_types: Sequence[str] = ()
) -> np.ndarray:
    """The split name of every row: whole sessions, in order of their first timestamp."""
    n = table.num_rows
    out = np.full(n, "test" if all_test else "", dtype=object)
    if all_test or n == 0:
        return out
    session = np.asarray(table.column("session_id").to_numpy(zero_copy_only=False), dtype=object)
    ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
    ptype = np.asarray(table.column("f_payload_type").to_numpy(zero_copy_only=False), dtype=object)
    sessions, inverse = np.unique(session, return_inverse=True)
    first = np.full(len(sessions), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, ts)
    counts = np.bincount(inverse, minlength=len(sessions))
    held = np.zeros(len(sessions), dtype=bool)
    if holdout_types:
        held_rows = np.isin(ptype, list(holdout_types))
        held[np.unique(inverse[held_rows])] = True
    order = np.lexsort((sessions.astype(str), first))
    order = order[~held[order]]
    total = counts[order].sum()
    cum = np.cumsum(counts[order])
    names = np.empty(len(sessions), dtype=object)
    names[held] = "holdout"
    bounds = (FRACTIONS[0] * total, (FRACTIONS[0] + FRACTIONS[1]) * total)
    # a session goes to the split in which its first row falls
    starts = cum - counts[order]
    names[order] = np.where(starts < bounds[0], "train", np.where(starts < bounds[1], "val", "test"))
    return names[inverse]


def _shares(table: pa.Table, column: str, names: Sequence[str]) -> dict[str, float]:
    n = table.num_rows
    values = np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=object)
    return {k: round(float(np.count_nonzero(values == k)) / n, 4) if n else 0.0 for k in names}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_dataset(
    table: pa.Table,
    out_dir: str | Path,
    *,
    all_test: bool = False,
    holdout_types: Sequence[str] = (),
    source: str = "",
    csv: bool = True,
) -> ExportReport:
    """Write the splits of ``table`` to ``out_dir``; see the module docstring."""
    unlabelled = 0
    if table.num_rows:
        # training data is staging's: every offered strategy measured and priced. The transfer path's
        # rows (production, shadow, ab: achieved outcomes, no label) and its audit re-measurements (a
        # sample of production, light-tier features only) are not mixed into it.
        staging = pc.equal(table.column("source"), "staging")
        unlabelled = table.num_rows - int(pc.sum(staging).as_py() or 0)
        table = table.filter(staging)
    if table.num_rows == 0:
        raise ConfigError(
            "nothing to export: the store holds no staging records"
            + (f" ({unlabelled} transfer-path records, which carry no label)" if unlabelled else "")
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_sessions(table, all_test=all_test, holdout_types=holdout_types)
    fingerprints = set(table.column("cost_params").to_pylist())
    files: dict[str, dict[str, Any]] = {}
    rows: dict[str, int] = {}
    stats: dict[str, Any] = {}
    for name in SPLITS:
        part = table.filter(pa.array(splits == name))
        rows[name] = part.num_rows
        if part.num_rows == 0:
            continue
        pq_path = out / f"{name}.parquet"
        pq.write_table(part, pq_path, compression="zstd")
        files[pq_path.name] = {"rows": part.num_rows, "sha256": _sha256(pq_path)}
        if csv:
            csv_path = out / f"{name}.csv"
            pacsv.write_csv(part, csv_path)
            files[csv_path.name] = {"rows": part.num_rows, "sha256": _sha256(csv_path)}
        stats[name] = split_stats(part)
    manifest = {
        "schema": DATASET_SCHEMA,
        "telemetry_schema_version": SCHEMA_VERSION,
        "feature_version": sorted(set(table.column("feature_version").to_pylist())),
        "cost_params": sorted(fingerprints),
        "library_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source,
        "split": "all_test" if all_test else "sessions by first timestamp, 70/15/15",
        "holdout_types": list(holdout_types),
        "rows": rows,
        "skipped_non_staging_rows": unlabelled,
        "feature_columns": list(FEATURE_COLUMNS),
        "label_column": "oracle_label",
        "cost_columns": [f"cost_{s}_s" for s in STRATEGIES],
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "stats.md").write_text(stats_markdown(stats))
    return ExportReport(out_dir=out, rows=rows, manifest=manifest)


def split_stats(part: pa.Table) -> dict[str, Any]:
    """Label, link and payload-type shares, sessions and payload sizes of one split."""
    size = part.column("f_payload_bytes").to_numpy()
    types = sorted(set(part.column("f_payload_type").to_pylist()))
    links = np.asarray(part.column("f_link_type").to_numpy(zero_copy_only=False), dtype=object)
    labels = np.asarray(part.column("oracle_label").to_numpy(zero_copy_only=False), dtype=object)
    by_link = {}
    for k in LINK_CLASSES:
        sel = links == k
        by_link[k] = {
            s: round(float(np.count_nonzero(labels[sel] == s)) / max(1, int(sel.sum())), 4)
            for s in STRATEGIES
        }
    gap = part.column("runner_up_gap").to_numpy(zero_copy_only=False)
    return {
        "rows": part.num_rows,
        "sessions": len(pc.unique(part.column("session_id"))),
        "payloads": len(pc.unique(part.column("payload_group_id"))),
        "class_shares": _shares(part, "oracle_label", STRATEGIES),
        "link_shares": _shares(part, "f_link_type", list(LINK_CLASSES)),
        "class_shares_by_link": by_link,
        "type_shares": _shares(part, "f_payload_type", types),
        "with_baseline": round(
            float(np.mean(part.column("f_has_baseline").to_numpy(zero_copy_only=False))), 4
        ),
        "payload_bytes_quantiles": {
            q: int(np.quantile(size, float(q))) for q in ("0.01", "0.25", "0.5", "0.75", "0.99")
        },
        "near_ties_within_1pct": round(
            float(np.mean(np.nan_to_num(gap.astype(float), nan=np.inf) < 0.01)), 4
        ),
    }


def stats_markdown(stats: dict[str, Any]) -> str:
    lines = ["# Dataset statistics", ""]
    for name, s in stats.items():
        lines += [
            f"## {name}: {s['rows']:,} rows, {s['sessions']:,} sessions, {s['payloads']:,} payloads",
            "",
        ]
        lines += ["| label | " + " | ".join(STRATEGIES) + " |", "|---|" + "---:|" * len(STRATEGIES)]
        lines.append("| all | " + " | ".join(f"{s['class_shares'][k]:.1%}" for k in STRATEGIES) + " |")
        for link, shares in s["class_shares_by_link"].items():
            lines.append(
                f"| {link} ({s['link_shares'][link]:.0%} of rows) | "
                + " | ".join(f"{shares[k]:.1%}" for k in STRATEGIES)
                + " |"
            )
        lines += ["", "Payload types: " + ", ".join(f"{k} {v:.1%}" for k, v in s["type_shares"].items()), ""]
        q = s["payload_bytes_quantiles"]
        lines += [
            f"Payload bytes: median {q['0.5']:,}, 1 % {q['0.01']:,}, 99 % {q['0.99']:,}; "
            f"with a baseline {s['with_baseline']:.0%}; "
            f"runner-up within 1 % in {s['near_ties_within_1pct']:.0%}.",
            "",
        ]
    return "\n".join(lines)
