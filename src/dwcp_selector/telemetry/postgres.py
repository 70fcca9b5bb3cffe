"""The production telemetry store: PostgreSQL, partitioned by day, written with ``COPY``.

* ``compression_telemetry`` is declaratively partitioned by range on ``ts``, one partition a UTC day,
  named ``compression_telemetry_pYYYYMMDD``; the partitions of the next days are created ahead, and those
  a batch needs on the way.
* A batch is copied (binary ``COPY``) into a temporary staging table and inserted with ``ON CONFLICT DO
  NOTHING``, so a replayed spill never duplicates a record.
* Retention locks an expired partition, archives its rows to Parquet, checks the archive's row count and
  only then drops the partition, in one transaction: a failure anywhere keeps the data.
* An extra URL parameter ``schema=NAME`` puts the tables in that schema (created if missing), so several
  deployments or test runs can share a database.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from ..errors import ConfigError
from .schema import (
    COLUMN_NAMES,
    COLUMNS,
    LABEL_CHECK,
    RELAXED_IN_2,
    RELAXED_IN_4,
    SCHEMA_VERSION,
    TABLE,
    Column,
    Kind,
    row_tuple,
    validate,
)
from .store import (
    DEFAULT_RETENTION_DAYS,
    Condition,
    RetentionReport,
    StoreError,
    StoreUnavailableError,
    TelemetryStore,
    arrow_schema,
    cutoff_for,
    write_archive,
)

__all__ = ["PostgresStore"]

_PG_TYPE = {
    Kind.TEXT: "text",
    Kind.INT: "bigint",
    Kind.REAL: "double precision",
    Kind.BOOL: "boolean",
    Kind.TIME: "timestamptz",
}
_COPY_TYPE = {
    Kind.TEXT: "text",
    Kind.INT: "int8",
    Kind.REAL: "float8",
    Kind.BOOL: "bool",
    Kind.TIME: "timestamptz",
}
_PARTITION = re.compile(rf"^{TABLE}_p(\d{{8}})$")
PARTITIONS_AHEAD = 7


def _ddl() -> str:
    """The table as schema version 1 declared it; migration 2 adds and relaxes columns."""

    def null(c: Column) -> str:
        return "" if c.nullable and c.name not in RELAXED_IN_2 + RELAXED_IN_4 else " NOT NULL"

    cols = ",\n  ".join(f"{c.name} {_PG_TYPE[c.kind]}{null(c)}" for c in COLUMNS if c.since == 1)
    return (
        f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  {cols},\n  PRIMARY KEY (request_id, ts)\n) "
        "PARTITION BY RANGE (ts)"
    )


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "compression_telemetry partitioned by day on ts, session index",
        [_ddl(), f"CREATE INDEX IF NOT EXISTS {TABLE}_session ON {TABLE} (session_id)"],
    ),
    (
        2,
        "text share feature, sampling-probe baseline columns, nullable rich-tier features",
        [
            *(
                f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {c.name} {_PG_TYPE[c.kind]}"
                for c in COLUMNS
                if c.since == 2
            ),
            *(f"ALTER TABLE {TABLE} ALTER COLUMN {name} DROP NOT NULL" for name in RELAXED_IN_2),
        ],
    ),
    (
        3,
        "the measuring host's speed profile",
        [
            f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {c.name} {_PG_TYPE[c.kind]}"
            for c in COLUMNS
            if c.since == 3
        ],
    ),
    (
        4,
        "the transfer path's rows: achieved outcomes, shadow, A/B and audit columns; labels nullable",
        [
            *(
                f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {c.name} {_PG_TYPE[c.kind]}"
                for c in COLUMNS
                if c.since == 4
            ),
            *(f"ALTER TABLE {TABLE} ALTER COLUMN {name} DROP NOT NULL" for name in RELAXED_IN_4),
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_labelled CHECK ({LABEL_CHECK})",
        ],
    ),
]


def _split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without our own ``schema`` parameter, and that schema."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # validates it: urlsplit alone accepts any digits
    except ValueError as exc:
        raise ConfigError(f"not a PostgreSQL URL ({exc})") from exc
    if port is not None and not 0 < port < 65536:  # pragma: no cover - urlsplit refuses these already
        raise ConfigError(f"PostgreSQL port {port} is out of range")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise ConfigError(f"schema name {schema!r} is not a plain SQL identifier")
    return urllib.parse.urlunsplit(parts._replace(query=rest)), schema


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


class PostgresStore(TelemetryStore):
    """Telemetry in PostgreSQL; reconnects after the server comes back."""

    def __init__(
        self, url: str, *, connect_timeout_s: int = 5, partitions_ahead: int = PARTITIONS_AHEAD
    ) -> None:
        self.url = url
        self._dsn, self.schema = _split_url(url)
        self._timeout = connect_timeout_s
        self.partitions_ahead = partitions_ahead
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._partitions: set[dt.date] = set()
        self.migrate()

    # -- connection --------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:
            conn = psycopg.connect(self._dsn, connect_timeout=self._timeout, autocommit=False)
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())  # libpq's message spans lines
            raise StoreUnavailableError(
                f"PostgreSQL at {self._redacted()} is not reachable: {reason}"
            ) from exc
        except psycopg.Error as exc:
            raise ConfigError(f"PostgreSQL URL {self._redacted()} is not usable: {exc}") from exc
        if self.schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            conn.commit()
        self._conn = conn
        self._partitions = set()
        return conn

    def _redacted(self) -> str:
        parts = urllib.parse.urlsplit(self._dsn)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}{parts.path}"

    def _run(self, fn: Any) -> Any:
        """Run ``fn(conn)`` in a transaction; connection failures become StoreUnavailableError."""
        with self._lock:
            conn = self._connection()
            try:
                result = fn(conn)
                conn.commit()
                return result
            except psycopg.OperationalError as exc:
                self._discard()  # also forgets which partitions exist: they are looked up again
                raise StoreUnavailableError(f"PostgreSQL at {self._redacted()} failed: {exc}") from exc
            except psycopg.Error as exc:
                self._partitions = set()  # a rolled-back transaction may have created some
                if not conn.closed:
                    conn.rollback()
                raise StoreError(f"PostgreSQL refused the operation: {exc}") from exc
            except BaseException:
                self._partitions = set()
                if not conn.closed and not conn.broken:
                    conn.rollback()
                raise

    def _discard(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    # -- schema ------------------------------------------------------------------------------------
    def migrate(self) -> int:
        def apply(conn: psycopg.Connection[Any]) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('dwcp_selector.migrations'))")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), "
                "description text NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            if done and max(done) > SCHEMA_VERSION:
                raise StoreError(
                    f"store has schema version {max(done)}, newer than this build's {SCHEMA_VERSION}"
                )
            for version, description, statements in MIGRATIONS:
                if version not in done:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                        (version, description),
                    )
            today = dt.datetime.now(dt.UTC).date()
            self._ensure_partitions(
                conn, {today + dt.timedelta(days=i) for i in range(self.partitions_ahead + 1)}
            )
            return max(v for v, _, _ in MIGRATIONS)

        result: int = self._run(apply)
        return result

    def _ensure_partitions(self, conn: psycopg.Connection[Any], days: set[dt.date]) -> None:
        for day in sorted(days - self._partitions):
            start = _day_start(day)
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(f"{TABLE}_p{day:%Y%m%d}"),
                    sql.Identifier(TABLE),
                    sql.Literal(start),
                    sql.Literal(start + dt.timedelta(days=1)),
                )
            )
            self._partitions.add(day)

    def partitions(self) -> list[dt.date]:
        """Days that have a partition (created ahead or holding rows)."""

        def q(conn: psycopg.Connection[Any]) -> list[dt.date]:
            rows = conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
                "WHERE p.relname = %s AND n.nspname = current_schema()",
                (TABLE,),
            ).fetchall()
            days = []
            for (name,) in rows:
                m = _PARTITION.match(name)
                if m:
                    days.append(dt.datetime.strptime(m.group(1), "%Y%m%d").date())
            return sorted(days)

        result: list[dt.date] = self._run(q)
        return result

    # -- data --------------------------------------------------------------------------------------
    def write_batch(self, records: Sequence[Mapping[str, Any]]) -> int:
        rows = [row_tuple(r) for r in records]
        if not rows:
            return 0
        ts_index = COLUMN_NAMES.index("ts")
        days = {r[ts_index].astimezone(dt.UTC).date() for r in rows}
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in COLUMN_NAMES)

        def write(conn: psycopg.Connection[Any]) -> int:
            self._ensure_partitions(conn, days)
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (LIKE {} INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS"
                ).format(sql.Identifier(TABLE))
            )
            with conn.cursor() as cur:
                with cur.copy(
                    sql.SQL("COPY telemetry_stage ({}) FROM STDIN (FORMAT BINARY)").format(cols)
                ) as copy:
                    copy.set_types([_COPY_TYPE[c.kind] for c in COLUMNS])
                    for row in rows:
                        copy.write_row(row)
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} ({}) SELECT {} FROM telemetry_stage ON CONFLICT DO NOTHING"
                    ).format(sql.Identifier(TABLE), cols, cols)
                )
                return cur.rowcount

        try:
            inserted: int = self._run(write)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.IntegrityError):
                for record in records:
                    validate(record)  # names the record that broke a NOT NULL constraint
            raise
        return inserted

    def count(self) -> int:
        n: int = self._run(
            lambda c: c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE))).fetchone()[
                0
            ]
        )
        return n

    def _select(
        self,
        conn: psycopg.Connection[Any],
        columns: list[str],
        relation: str,
        conditions: Sequence[Condition] = (),
    ) -> pa.Table:
        # a bound on ts is one on the partition key: only the partitions it reaches are read
        terms = [sql.SQL("{} {} %s").format(sql.Identifier(c), sql.SQL(op)) for c, op, _ in conditions]
        params = [v for _, _, v in conditions]
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(terms) if terms else sql.SQL("")
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY ts, request_id").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(relation), where
        )
        rows = conn.execute(query, params).fetchall()
        schema = arrow_schema(columns)
        values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
        arrays = [pa.array(list(v), type=schema.field(c).type) for c, v in zip(columns, values, strict=True)]
        return pa.Table.from_arrays(arrays, schema=schema)

    def _read(self, columns: list[str], conditions: Sequence[Condition]) -> pa.Table:
        table: pa.Table = self._run(lambda conn: self._select(conn, columns, TABLE, conditions))
        return table

    def days(self) -> dict[dt.date, int]:
        def q(conn: psycopg.Connection[Any]) -> dict[dt.date, int]:
            rows = conn.execute(
                sql.SQL(
                    "SELECT (ts AT TIME ZONE 'UTC')::date AS d, count(*) FROM {} GROUP BY d ORDER BY d"
                ).format(sql.Identifier(TABLE))
            ).fetchall()
            return {d: int(n) for d, n in rows}

        result: dict[dt.date, int] = self._run(q)
        return result

    def apply_retention(
        self,
        archive_dir: str | Path,
        *,
        now: dt.datetime | None = None,
        keep_days: int = DEFAULT_RETENTION_DAYS,
    ) -> RetentionReport:
        cutoff = cutoff_for(now, keep_days)
        report = RetentionReport(cutoff=cutoff)
        for day in self.partitions():
            if _day_start(day) + dt.timedelta(days=1) > cutoff:
                continue
            name = f"{TABLE}_p{day:%Y%m%d}"

            def expire(
                conn: psycopg.Connection[Any], day: dt.date = day, name: str = name
            ) -> tuple[int, str]:
                # The lock keeps late records out between the archive and the drop.
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(name)))
                table = self._select(conn, list(COLUMN_NAMES), name)
                path = write_archive(table, archive_dir, day) if table.num_rows else ""
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                return table.num_rows, path

            rows, path = self._run(expire)
            self._partitions.discard(day)
            report.archived.append((day, rows, path))
        return report

    def drop_all(self) -> None:
        """Drop the table, its partitions and the migrations record (tests and teardown)."""

        def drop(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(TABLE)))
            conn.execute("DROP TABLE IF EXISTS schema_migrations")
            if self.schema:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

        self._run(drop)
        self._partitions = set()

    def close(self) -> None:
        with self._lock:
            self._discard()
