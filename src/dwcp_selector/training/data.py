"""Datasets written by ``dwcp-selector export``, as numpy columns, and the training targets.

Targets come in the two shapes of DESIGN section 5b: the oracle label of each record (classifier), and,
per measured payload, the log2 compressed ratio and log2 encode and decode CPU seconds of every strategy
(cost model in the loop). The latter are the same for the eight link draws of a payload, so they are
fitted on one row per payload.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..dataset.export import DATASET_SCHEMA
from ..errors import ConfigError
from ..modeling.policy import STRATEGIES

__all__ = ["Split", "load_dataset"]


@dataclass
class Split:
    name: str
    cols: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.cols["request_id"])

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.name, {k: v[idx] for k, v in self.cols.items()})

    def costs(self) -> np.ndarray:
        """Records × strategies transfer times; ``inf`` where a strategy was not offered."""
        c = np.column_stack([self.cols[f"cost_{s}_s"].astype(np.float64) for s in STRATEGIES])
        out: np.ndarray = np.where(np.isnan(c), np.inf, c)
        return out

    def labels(self) -> np.ndarray:
        index = {s: i for i, s in enumerate(STRATEGIES)}
        return np.array([index[x] for x in self.cols["oracle_label"]], dtype=np.int64)

    def offered(self) -> np.ndarray:
        out: np.ndarray = np.isfinite(self.costs())
        return out

    def payload_rows(self) -> np.ndarray:
        """Index of one record per measured payload (its first)."""
        _, first = np.unique(self.cols["payload_group_id"], return_index=True)
        return np.sort(first)

    def cmil_targets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(targets, mask) for the given rows: per strategy log2 ratio, log2 encode s, log2 decode s."""
        size = np.maximum(self.cols["f_payload_bytes"][rows].astype(np.float64), 1.0)
        ys, ms = [], []
        for s in STRATEGIES:
            b = self.cols[f"o_{s}_bytes"][rows].astype(np.float64)
            e = self.cols[f"o_{s}_encode_s"][rows].astype(np.float64)
            d = self.cols[f"o_{s}_decode_s"][rows].astype(np.float64)
            ok = ~(np.isnan(b) | np.isnan(e) | np.isnan(d))
            with np.errstate(divide="ignore", invalid="ignore"):
                ys += [np.log2(b / size), np.log2(np.maximum(e, 1e-7)), np.log2(np.maximum(d, 1e-7))]
            ms += [ok, ok, ok]
        y = np.nan_to_num(np.column_stack(ys), nan=0.0, posinf=0.0, neginf=0.0)
        return y.astype(np.float32), np.column_stack(ms)


def _table_to_cols(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    cols: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        t = col.type
        if str(t).startswith(("string", "large_string")):
            cols[name] = np.asarray(col.to_pylist(), dtype=object)
        elif str(t) == "bool":
            cols[name] = np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        elif str(t).startswith("timestamp"):
            cols[name] = col.cast("int64").to_numpy(zero_copy_only=False)
        else:
            cols[name] = col.cast("double").fill_null(np.nan).to_numpy(zero_copy_only=False)
    return cols


def load_dataset(data_dir: str | Path) -> tuple[dict[str, Split], str, dict[str, object]]:
    """The splits of an exported dataset, its fingerprint and its manifest."""
    path = Path(data_dir)
    where = path / "manifest.json"
    try:
        manifest = json.loads(where.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} is not an exported dataset (no manifest.json); run dwcp-selector export"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not JSON (truncated or damaged): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != DATASET_SCHEMA:
        raise ConfigError(f"{where} is not a {DATASET_SCHEMA} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()
    ):
        raise ConfigError(f"{where} lists no files with their sha256 (damaged manifest)")
    # the columns every split needs: the ones the manifest describes, and those the splits are grouped by
    named: list[object] = ["request_id", "session_id", "payload_group_id", manifest.get("label_column")]
    for key in ("feature_columns", "cost_columns"):
        listed = manifest.get(key)
        named += listed if isinstance(listed, list) else []
    required = [c for c in dict.fromkeys(named) if isinstance(c, str)]
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test", "holdout"):
        file = path / f"{name}.parquet"
        if file.exists():
            if file.name not in files:
                raise ConfigError(f"{file} is not in the dataset manifest")
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            if digest != files[file.name]["sha256"]:
                raise ConfigError(f"{file} does not match the dataset manifest (sha256)")
            try:
                splits[name] = Split(name, _table_to_cols(file))
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise ConfigError(f"{file} is not a readable Parquet table: {exc}") from exc
            missing = [c for c in required if c not in splits[name].cols]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise ConfigError(
                    f"{file} lacks the columns {', '.join(missing[:3])}{more} of an exported dataset"
                )
    if not splits:
        raise ConfigError(f"{path} holds none of the splits its manifest describes")
    fingerprint = hashlib.sha256(
        json.dumps({k: v["sha256"] for k, v in sorted(files.items())}, sort_keys=True).encode()
    ).hexdigest()[:16]
    return splits, fingerprint, manifest
