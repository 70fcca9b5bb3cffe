"""Telemetry stores behind one interface, chosen by URL.

* ``sqlite:///path/to/file.db`` - the embedded default (WAL mode), no server needed;
* ``postgresql://user@host:port/db`` - production: batched ``COPY``, a table partitioned by day on the
  timestamp, partitions created ahead, and retention that archives expired partitions to Parquet before
  dropping them.

Both keep versioned migrations in ``schema_migrations``, ignore a record whose ``request_id`` is already
stored (so replaying a spill file or re-running a collection never duplicates), and read back as an
Arrow table for validation and export.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, StoreError, StoreUnavailableError
from .schema import COLUMN_NAMES, COLUMNS, TABLE, Column, Kind

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "RetentionReport",
    "StoreError",
    "StoreUnavailableError",
    "TelemetryStore",
    "arrow_schema",
    "import_records",
    "open_store",
]

DEFAULT_RETENTION_DAYS = 90


_ARROW = {
    Kind.TEXT: pa.string(),
    Kind.INT: pa.int64(),
    Kind.REAL: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.TIME: pa.timestamp("us", tz="UTC"),
}


def arrow_schema(columns: Sequence[str] | None = None) -> pa.Schema:
    """The Arrow (and Parquet) schema of the record, or of some of its columns."""
    wanted = set(columns) if columns is not None else None
    return pa.schema(
        [
            pa.field(c.name, _ARROW[c.kind], nullable=c.nullable)
            for c in COLUMNS
            if wanted is None or c.name in wanted
        ]
    )


@dataclass
class RetentionReport:
    """What a retention pass did: the days archived (with their row counts and files) and dropped."""

    cutoff: dt.datetime
    archived: list[tuple[dt.date, int, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(n for _, n, _ in self.archived)


class TelemetryStore(abc.ABC):
    """Where telemetry records live; thread-safe."""

    url: str

    @abc.abstractmethod
    def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in place."""

    @abc.abstractmethod
    def write_batch(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Store records (mappings of column name to value); returns how many were new."""

    @abc.abstractmethod
    def count(self) -> int: ...

    def read_table(
        self,
        columns: Sequence[str] | None = None,
        *,
        experiment: str | None = None,
        since: dt.datetime | None = None,
    ) -> pa.Table:
        """Every record (or some columns of each) as an Arrow table in timestamp order; with
        ``experiment``, only that A/B experiment's records, and with ``since`` (timezone-aware), only
        those that started then or later. The filters run in the store, so a reader that follows one
        experiment (the rollout controller) reads its rows, not the table."""
        conditions: list[Condition] = []
        if experiment is not None:
            conditions.append(("experiment", "=", experiment))
        if since is not None:
            conditions.append(("ts", ">=", since_utc(since)))
        return self._read(columns_or_all(columns), conditions)

    @abc.abstractmethod
    def _read(self, columns: list[str], conditions: Sequence[Condition]) -> pa.Table:
        """``read_table``'s rows: those meeting every (column, operator, value) condition, in SQL."""

    @abc.abstractmethod
    def days(self) -> dict[dt.date, int]:
        """Rows per UTC day (partitions for PostgreSQL)."""

    @abc.abstractmethod
    def apply_retention(
        self,
        archive_dir: str | Path,
        *,
        now: dt.datetime | None = None,
        keep_days: int = DEFAULT_RETENTION_DAYS,
    ) -> RetentionReport:
        """Archive every day older than ``keep_days`` before ``now`` to Parquet, then delete it."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> TelemetryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: One filter of a read, rendered in SQL by each store: (column, comparison operator, value).
Condition = tuple[str, str, Any]


def since_utc(since: dt.datetime) -> dt.datetime:
    """A ``read_table(since=)`` bound in UTC; a naive one could mean any zone, so it is refused."""
    if since.tzinfo is None:
        raise ConfigError(f"since must be timezone-aware, got {since.isoformat()}")
    return since.astimezone(dt.UTC)


def cutoff_for(now: dt.datetime | None, keep_days: int) -> dt.datetime:
    """Midnight UTC ``keep_days`` before ``now``: whole days older than this are expired."""
    if keep_days < 1:
        raise ConfigError(f"retention must keep at least one day, got {keep_days}")
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ConfigError("retention's clock must be timezone-aware")
    try:
        day = (now.astimezone(dt.UTC) - dt.timedelta(days=keep_days)).date()
    except OverflowError as exc:
        raise ConfigError(f"retention cannot keep {keep_days} days: that reaches before year 1") from exc
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def write_archive(table: pa.Table, archive_dir: str | Path, day: dt.date) -> str:
    """Write one day's rows to ``<dir>/compression_telemetry_pYYYYMMDD[-n].parquet`` and verify it."""
    directory = Path(archive_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{TABLE}_p{day:%Y%m%d}"
    path = directory / f"{stem}.parquet"
    n = 1
    while path.exists():  # never overwrite an earlier archive of the same day
        path = directory / f"{stem}-{n}.parquet"
        n += 1
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    written = pq.read_metadata(tmp).num_rows
    if written != table.num_rows:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"archive of {day} holds {written} rows, expected {table.num_rows}; nothing dropped")
    tmp.rename(path)
    return str(path)


#: Rows written per batch by :func:`import_records` (bounded memory, whatever the file's size).
IMPORT_BATCH = 5_000


def import_records(
    store: TelemetryStore,
    path: str | Path,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Write the records of a Parquet file of telemetry rows into ``store``; returns (rows read, rows new).

    The file is what ``retention`` archives (``write_archive``), or any table of this schema's columns
    (a store's ``read_table`` written as Parquet): another day's or another host's records. Columns a
    later schema version added may be absent (they are stored as NULL, as a migration does); unknown
    columns, a file that is not Parquet, or rows the store refuses are a :class:`ConfigError` naming the
    file. Rows already stored (by request id) are skipped, so an import can be repeated or resumed.
    """
    source = Path(path)
    pf, missing = open_records(source)
    total = pf.metadata.num_rows
    read = new = 0
    for batch in pf.iter_batches(batch_size=IMPORT_BATCH):
        rows = batch.to_pylist()
        for row in rows:
            for c in missing:
                row[c.name] = None
        try:
            new += store.write_batch(rows)
        except ConfigError as exc:
            raise ConfigError(f"{source}, rows {read + 1}-{read + len(rows)}: {exc}") from exc
        read += len(rows)
        if on_progress is not None:
            on_progress(read, total)
    return read, new


def open_records(path: str | Path) -> tuple[pq.ParquetFile, list[Column]]:
    """A Parquet file of telemetry records, checked against this schema before anything is written
    (:func:`import_records`), and the nullable columns it lacks."""
    source = Path(path)
    try:
        pf = pq.ParquetFile(source)
    except FileNotFoundError as exc:
        raise ConfigError(f"no records file at {source}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{source} is a directory, not a Parquet file of records") from exc
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{source} is not a Parquet file of telemetry records: {exc}") from exc
    names = pf.schema_arrow.names
    unknown = sorted(set(names) - set(COLUMN_NAMES))
    if unknown:
        raise ConfigError(f"{source} has columns this schema does not know: {', '.join(unknown[:5])}")
    missing = [c for c in COLUMNS if c.name not in names]
    required = [c.name for c in missing if not c.nullable]
    if required:
        raise ConfigError(f"{source} lacks required columns: {', '.join(required[:5])}")
    return pf, missing


def columns_or_all(columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(COLUMN_NAMES)
    unknown = set(columns).difference(COLUMN_NAMES)
    if unknown:
        raise ConfigError(f"unknown telemetry columns: {sorted(unknown)}")
    return [c for c in COLUMN_NAMES if c in set(columns)]


def open_store(url: str, *, must_exist: bool = False) -> TelemetryStore:
    """The store a URL names: ``sqlite:///file.db`` or ``postgresql://…``.

    ``must_exist`` (readers: validate, export, retention) refuses an SQLite path with no store there
    instead of creating an empty one."""
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

        return SqliteStore(url, must_exist=must_exist)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - psycopg is an optional extra
            raise ConfigError(
                "PostgreSQL telemetry needs psycopg: pip install 'dwcp-selector[postgres]'"
            ) from exc
        return PostgresStore(url)
    raise ConfigError(f"unsupported telemetry store URL {url!r}: use sqlite:///path or postgresql://…")
