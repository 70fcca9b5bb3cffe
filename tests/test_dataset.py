"""Validation and export of telemetry: the quality score, its bars, and splits that keep sessions whole."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dwcp_selector.dataset import assess, export_dataset
from dwcp_selector.telemetry.staging import collect
from dwcp_selector.telemetry.store import open_store
from dwcp_selector.workload.staging import ScenarioMix

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pa.Table]:
    d = tmp_path_factory.mktemp("staging")
    url = f"sqlite:///{d}/staging.db"
    collect(url, 1200, 21, mix=ScenarioMix(max_bytes=512 * 1024, draws_per_payload=6), start=START, workers=2)
    with open_store(url) as store:
        return url, store.read_table()


def test_clean_staging_data_passes(staging: tuple[str, pa.Table]) -> None:
    _, table = staging
    report = assess(table)
    assert report.rows == 1200
    assert report.quality_score > 0.95 and report.passed, report.failures
    assert report.components["consistency"] == 1.0 and report.components["completeness"] == 1.0
    assert sum(report.class_shares.values()) == pytest.approx(1.0)
    assert set(report.link_shares) == {"dc", "metro", "wan", "edge"}
    assert report.hde_amst_balance is not None


def _with(table: pa.Table, name: str, values: list[object]) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(name), pa.array(values, type=table.schema.field(name).type))


def test_each_defect_is_caught(staging: tuple[str, pa.Table]) -> None:
    _, table = staging
    n = table.num_rows
    labels = table.column("oracle_label").to_pylist()
    wrong = [("hde" if lab == "none" else "none") if i % 10 == 0 else lab for i, lab in enumerate(labels)]
    report = assess(_with(table, "oracle_label", wrong))
    assert report.inconsistent_rows >= n // 10 - 5

    entropy = table.column("f_entropy").to_pylist()
    report = assess(_with(table, "f_entropy", [9.5 if i < 50 else e for i, e in enumerate(entropy)]))
    assert report.invalid_by_check["f_entropy in range"] == 50

    costs = table.column("cost_zstd_s").to_pylist()
    report = assess(_with(table, "cost_zstd_s", [None if i % 4 == 0 else c for i, c in enumerate(costs)]))
    assert report.missing_by_column["cost_zstd_s"] == pytest.approx(0.25, abs=0.01)

    dup = pa.concat_tables([table, table.slice(0, 30)])
    assert assess(dup).duplicate_ids == 30

    only_dc = table.filter(pa.compute.equal(table.column("f_link_type"), "dc"))
    failing = assess(only_dc)
    assert not failing.passed and any("link type" in f for f in failing.failures)


def test_export_splits_sessions_by_time(staging: tuple[str, pa.Table], tmp_path: Path) -> None:
    _, table = staging
    report = export_dataset(table, tmp_path / "ds")
    rows = report.rows
    assert rows["train"] + rows["val"] + rows["test"] == table.num_rows and rows["holdout"] == 0
    assert 0.6 < rows["train"] / table.num_rows < 0.8
    parts = {k: pq.read_table(tmp_path / "ds" / f"{k}.parquet") for k in ("train", "val", "test")}
    sessions = {k: set(t.column("session_id").to_pylist()) for k, t in parts.items()}
    assert not sessions["train"] & sessions["val"] and not sessions["val"] & sessions["test"]
    assert not sessions["train"] & sessions["test"]

    def first_ts(t: pa.Table) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, ts in zip(t.column("session_id").to_pylist(), t.column("ts").to_pylist(), strict=True):
            out[s] = min(out.get(s, ts), ts)
        return out

    starts = {k: first_ts(t) for k, t in parts.items()}
    assert max(starts["train"].values()) <= min(starts["val"].values())
    assert max(starts["val"].values()) <= min(starts["test"].values())
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "ds" / name).read_bytes()).hexdigest() == meta["sha256"]
    assert (tmp_path / "ds" / "train.csv").exists() and (tmp_path / "ds" / "stats.md").exists()
    assert manifest["label_column"] == "oracle_label" and "f_entropy" in manifest["feature_columns"]


def test_export_all_test_and_holdout(staging: tuple[str, pa.Table], tmp_path: Path) -> None:
    _, table = staging
    everything = export_dataset(table, tmp_path / "a", all_test=True, csv=False)
    assert everything.rows["test"] == table.num_rows
    held = export_dataset(table, tmp_path / "h", holdout_types=["media"], csv=False)
    holdout = pq.read_table(tmp_path / "h" / "holdout.parquet")
    assert held.rows["holdout"] == holdout.num_rows > 0
    train = pq.read_table(tmp_path / "h" / "train.parquet")
    assert "media" not in set(train.column("f_payload_type").to_pylist())
    assert set(holdout.column("f_payload_type").to_pylist()) >= {"media"}


def test_cli_validate_json_and_exit_codes(staging: tuple[str, pa.Table], tmp_path: Path) -> None:
    url, table = staging
    cli = [sys.executable, "-m", "dwcp_selector"]
    proc = subprocess.run(
        [*cli, "validate", "--store", url, "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"rows", "quality_score", "class_shares", "link_shares"} <= set(doc)
    bad_url = f"sqlite:///{tmp_path}/bad.db"
    with open_store(bad_url) as store:
        rows = table.filter(pa.compute.equal(table.column("f_link_type"), "edge")).to_pylist()
        store.write_batch(rows)
    proc = subprocess.run([*cli, "validate", "--store", bad_url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "below the bar" in proc.stdout
    proc = subprocess.run(
        [*cli, "export", "--store", url, "--out", str(tmp_path / "x"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"]["train"] > 0
    proc = subprocess.run(
        [*cli, "validate", "--store", "mysql://nope"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert np.isfinite(doc["quality_score"])
