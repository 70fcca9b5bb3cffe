"""One store test suite, run against SQLite and against the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from dwcp_selector.errors import ConfigError
from dwcp_selector.telemetry import postgres as postgres_store
from dwcp_selector.telemetry import sqlite as sqlite_store
from dwcp_selector.telemetry.schema import (
    COLUMN_NAMES,
    COLUMNS,
    LABELLED_SOURCES,
    RELAXED_IN_2,
    RELAXED_IN_4,
    SCHEMA_VERSION,
    TABLE,
)
from dwcp_selector.telemetry.store import StoreError, StoreUnavailableError, TelemetryStore, open_store

from .conftest import full_record

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/telemetry.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    with open_store(store_url) as s:
        yield s


def records(n: int, start: dt.datetime, step: dt.timedelta) -> list[dict[str, object]]:
    return [full_record(i, start + i * step) for i in range(n)]


def test_migrations_are_versioned_and_idempotent(store: TelemetryStore, store_url: str) -> None:
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    with open_store(store_url) as again:
        assert again.count() == 0


def test_a_version_1_store_migrates_and_keeps_its_rows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store created by schema version 1 gains the new columns, loses NOT NULL on the rich features."""
    module = sqlite_store if store_url.startswith("sqlite") else postgres_store
    with monkeypatch.context() as m:
        m.setattr(module, "MIGRATIONS", module.MIGRATIONS[:1])
        with open_store(store_url) as v1:
            assert v1.migrate() == 1
            if store_url.startswith("sqlite"):
                v1_cols = [c.name for c in COLUMNS if c.since == 1]
                rec = full_record(1, NOW.timestamp())
                rec["f_has_baseline"] = 1
                marks = ",".join("?" * len(v1_cols))
                db = sqlite3.connect(store_url[len("sqlite:///") :])
                with db:
                    db.execute(
                        f"INSERT INTO {TABLE} ({','.join(v1_cols)}) VALUES ({marks})",
                        [rec[c] for c in v1_cols],
                    )
                    with pytest.raises(sqlite3.IntegrityError):
                        rec2 = dict(rec, request_id="req-2", f_probe_s=None)
                        db.execute(
                            f"INSERT INTO {TABLE} ({','.join(v1_cols)}) VALUES ({marks})",
                            [rec2[c] for c in v1_cols],
                        )
                db.close()
    with open_store(store_url) as v2:
        assert v2.migrate() == SCHEMA_VERSION
        before = v2.count()
        light = full_record(3, NOW, **{name: None for name in RELAXED_IN_2}, p_sample_bytes=65536)
        assert v2.write_batch([light]) == 1
        assert v2.count() == before + 1
        table = v2.read_table(["request_id", "f_probe_s", "p_sample_bytes"]).to_pylist()
        got = {r["request_id"]: r for r in table}
        assert got["req-00000003"]["f_probe_s"] is None
        assert got["req-00000003"]["p_sample_bytes"] == 65536
        if store_url.startswith("sqlite"):
            assert before == 1 and got["req-00000001"]["f_probe_s"] == 0.25


def test_write_count_and_duplicates_ignored(store: TelemetryStore) -> None:
    batch = records(500, NOW - dt.timedelta(hours=5), dt.timedelta(seconds=30))
    assert store.write_batch(batch) == 500
    assert store.write_batch(batch[:100]) == 0  # a replayed batch adds nothing
    assert store.write_batch(batch[:100] + records(600, NOW, dt.timedelta(seconds=1))[500:]) == 100
    assert store.count() == 600


def test_read_back_every_column_exactly(store: TelemetryStore) -> None:
    ts = dt.datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=dt.UTC)
    rec = full_record(1, ts, f_has_baseline=False, f_similarity_pages=None, cost_hde_s=None, f_loss=1.5e-7)
    store.write_batch([rec])
    table = store.read_table()
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert set(row) == set(COLUMN_NAMES)
    for name in COLUMN_NAMES:
        assert row[name] == rec[name], name
    assert store.read_table(["request_id", "ts"]).column_names == ["request_id", "ts"]
    with pytest.raises(ConfigError):
        store.read_table(["nope"])


def test_reads_filter_by_experiment_and_start_in_the_store(store: TelemetryStore) -> None:
    start = NOW - dt.timedelta(hours=3)
    names = ("exp-a", "exp-b", None)
    batch = [full_record(i, start + i * dt.timedelta(minutes=1), experiment=names[i % 3]) for i in range(180)]
    assert store.write_batch(batch) == 180
    a = store.read_table(["request_id", "experiment"], experiment="exp-a")
    assert a.num_rows == 60 and set(a.column("experiment").to_pylist()) == {"exp-a"}
    cut = start + dt.timedelta(minutes=90, seconds=30)
    later = store.read_table(["request_id"], experiment="exp-a", since=cut)
    expected = [r["request_id"] for r in batch if r["experiment"] == "exp-a" and r["ts"] >= cut]
    assert later.column("request_id").to_pylist() == expected and len(expected) == 29  # in ts order
    east = dt.timezone(dt.timedelta(hours=5))  # the same instant written in another zone
    assert store.read_table(["request_id"], since=cut.astimezone(east)).num_rows == 89
    assert store.read_table(["request_id"], since=batch[0]["ts"]).num_rows == 180  # at or after
    assert store.read_table(["request_id"], experiment="none-such").num_rows == 0
    with pytest.raises(ConfigError, match="timezone"):
        store.read_table(since=dt.datetime(2026, 11, 29, 12, 0))


def test_archived_and_foreign_records_import_back(store: TelemetryStore, tmp_path: Path) -> None:
    import pyarrow as pa

    from dwcp_selector.telemetry.store import IMPORT_BATCH, import_records

    old = records(12, NOW - dt.timedelta(days=100), dt.timedelta(hours=6))
    keep = [full_record(500 + i, NOW - dt.timedelta(minutes=i)) for i in range(5)]
    store.write_batch(old + keep)
    before = store.read_table().to_pylist()
    report = store.apply_retention(tmp_path / "archive", now=NOW, keep_days=90)
    assert store.count() == 5
    seen: list[tuple[int, int]] = []
    for _, _, path in report.archived:
        import_records(store, path, on_progress=lambda n, total: seen.append((n, total)))
    assert store.read_table().to_pylist() == before  # every column back exactly, in ts order
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(import_records(store, p)[1] == 0 for _, _, p in report.archived)  # nothing twice
    # another store's rows, written as Parquet, without a column a later schema version added
    n = IMPORT_BATCH + 7
    other = [full_record(10_000 + i, NOW + dt.timedelta(days=1, seconds=i)) for i in range(n)]
    table = pa.Table.from_pylist(other).drop(["experiment"])
    pq.write_table(table, tmp_path / "other.parquet")
    assert import_records(store, tmp_path / "other.parquet") == (n, n)
    back = store.read_table(["request_id", "experiment"], since=NOW + dt.timedelta(days=1))
    assert back.num_rows == n and set(back.column("experiment").to_pylist()) == {None}
    # files that are not records are refused before anything is written
    count = store.count()
    (tmp_path / "notes.txt").write_text("hello")
    pq.write_table(table.append_column("surprise", pa.array([1] * table.num_rows)), tmp_path / "u.parquet")
    pq.write_table(table.drop(["request_id"]), tmp_path / "r.parquet")
    for name, needle in (
        ("notes.txt", "not a Parquet file"),
        ("u.parquet", "does not know: surprise"),
        ("r.parquet", "lacks required columns: request_id"),
        ("nothing.parquet", "no records file"),
    ):
        with pytest.raises(ConfigError, match=needle):
            import_records(store, tmp_path / name)
    assert store.count() == count


def test_bad_records_are_refused(store: TelemetryStore) -> None:
    missing = full_record(1, NOW)
    del missing["oracle_label"]
    with pytest.raises(ConfigError, match="oracle_label"):
        store.write_batch([missing])
    with pytest.raises(ConfigError, match="unknown"):
        store.write_batch([full_record(2, NOW, surprise=1)])
    with pytest.raises(ConfigError, match="timezone"):
        store.write_batch([full_record(3, dt.datetime(2026, 1, 1))])
    assert store.count() == 0


def test_days(store: TelemetryStore) -> None:
    store.write_batch(records(48, NOW - dt.timedelta(days=2), dt.timedelta(hours=1)))
    days = store.days()
    assert sum(days.values()) == 48
    assert set(days) == {(NOW - dt.timedelta(days=d)).date() for d in (2, 1, 0)}


def test_retention_archives_then_drops_expired_days(store: TelemetryStore, tmp_path: Path) -> None:
    old = records(30, NOW - dt.timedelta(days=100), dt.timedelta(hours=4))  # days 100..96 ago
    recent = [full_record(1000 + i, NOW - dt.timedelta(days=3, minutes=i)) for i in range(20)]
    store.write_batch(old + recent)
    report = store.apply_retention(tmp_path / "archive", now=NOW, keep_days=90)
    assert report.rows == 30
    assert store.count() == 20
    archived = []
    for day, rows, path in report.archived:
        if rows:
            table = pq.read_table(path)
            assert table.num_rows == rows
            assert all(r["ts"].date() == day for r in table.to_pylist())
            archived += table.to_pylist()
    by_id = {r["request_id"]: r for r in old}
    assert sorted(r["request_id"] for r in archived) == sorted(by_id)
    for r in archived:
        assert r == by_id[r["request_id"]]
    # a second pass finds nothing more to expire
    assert store.apply_retention(tmp_path / "archive", now=NOW, keep_days=90).rows == 0
    # the clock moves on: the recent rows expire too
    later = store.apply_retention(tmp_path / "archive", now=NOW + dt.timedelta(days=100), keep_days=90)
    assert later.rows == 20 and store.count() == 0


def test_retention_keeps_data_when_the_archive_fails(store: TelemetryStore, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "archive"
        blocker.write_text("a file where the archive directory should be")
    else:  # pragma: no cover - root ignores directory permissions
        blocker = tmp_path / "ro"
        blocker.mkdir()
        blocker.chmod(stat.S_IRUSR | stat.S_IXUSR)
    store.write_batch(records(10, NOW - dt.timedelta(days=120), dt.timedelta(hours=1)))
    with pytest.raises((OSError, StoreError)):
        store.apply_retention(blocker, now=NOW)
    assert store.count() == 10


def test_bad_urls() -> None:
    with pytest.raises(ConfigError, match="unsupported"):
        open_store("mysql://x")
    with pytest.raises(ConfigError, match="sqlite:///"):
        open_store("sqlite://relative.db")


# -- PostgreSQL specifics -----------------------------------------------------------------------------
def test_postgres_table_is_partitioned_by_day_with_partitions_ahead(pg_url: str) -> None:
    from dwcp_selector.telemetry.postgres import PostgresStore

    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        today = dt.datetime.now(dt.UTC).date()
        ahead = store.partitions()
        assert {today + dt.timedelta(days=i) for i in range(8)} <= set(ahead)
        store.write_batch(records(5, NOW - dt.timedelta(days=40), dt.timedelta(days=3)))
        assert {(NOW - dt.timedelta(days=40 - 3 * i)).date() for i in range(5)} <= set(store.partitions())
        dsn = pg_url.split("?")[0]
        with psycopg.connect(dsn) as conn:
            kind = conn.execute(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s AND n.nspname = %s",
                (TABLE, store.schema),
            ).fetchone()
            assert kind == ("p",)  # a declaratively partitioned table
            strategy = conn.execute(
                "SELECT p.partstrat, a.attname FROM pg_partitioned_table p "
                "JOIN pg_class c ON c.oid = p.partrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0] "
                "WHERE c.relname = %s AND n.nspname = %s",
                (TABLE, store.schema),
            ).fetchone()
            assert strategy == ("r", "ts")


def test_postgres_unreachable_is_a_typed_error() -> None:
    with pytest.raises(StoreUnavailableError, match="not reachable"):
        open_store("postgresql://postgres@127.0.0.1:1/test")


def test_a_version_3_store_migrates_to_unlabelled_transfer_rows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 4: a store of labelled staging rows keeps them, then also takes the transfer path's rows
    (achieved outcomes, no label); a staging or audit row without its label is still refused."""
    module = sqlite_store if store_url.startswith("sqlite") else postgres_store
    with monkeypatch.context() as m:
        m.setattr(module, "MIGRATIONS", module.MIGRATIONS[:3])
        m.setattr(module, "SCHEMA_VERSION", 3)
        with open_store(store_url) as v3:
            assert v3.migrate() == 3
            v3_cols = [c.name for c in COLUMNS if c.since <= 3]
            if store_url.startswith("sqlite"):
                rec = full_record(1, NOW.timestamp())
                db = sqlite3.connect(store_url[len("sqlite:///") :])
                with db:
                    db.execute(
                        f"INSERT INTO {TABLE} ({','.join(v3_cols)}) VALUES ({','.join('?' * len(v3_cols))})",
                        [rec[c] for c in v3_cols],
                    )
                db.close()
    with open_store(store_url) as v4:
        assert v4.migrate() == SCHEMA_VERSION
        before = v4.count()
        unlabelled = {name: None for name in RELAXED_IN_4}
        prod = full_record(
            5, NOW, source="production", used_wire_bytes=1234, fallback_reason="deadline", **unlabelled
        )
        assert v4.write_batch([prod]) == 1
        for source in LABELLED_SOURCES:
            with pytest.raises(ConfigError, match="must carry its label"):
                v4.write_batch([full_record(6, NOW, source=source, **unlabelled)])
        got = {r["request_id"]: r for r in v4.read_table().to_pylist()}
        assert got["req-00000005"]["oracle_label"] is None
        assert got["req-00000005"]["used_wire_bytes"] == 1234
        assert got["req-00000005"]["fallback_reason"] == "deadline"
        assert v4.count() == before + 1
        if store_url.startswith("sqlite"):
            assert before == 1 and got["req-00000001"]["oracle_label"] == "zstd"
