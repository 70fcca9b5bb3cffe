"""The telemetry collector on the transfer path: the caller never waits and never sees an exception.

:meth:`TelemetryCollector.record` samples, then puts the record on a bounded queue and returns (a few
microseconds); a background thread takes batches off the queue and writes them to the store. While the
store is down, batches go to a local spill file (zstd-compressed JSON lines, within a byte budget) and
are replayed, oldest first, once a write succeeds again, so no record is lost within the budget.
Failures go to a separate error channel (``errors``, ``last_error``, an optional callback), never into
the caller; records that cannot be kept (queue full, spill full, invalid) are counted by reason.

Prometheus metrics (``dwcp_telemetry_*``): records written, dropped (by reason), errors, spilled and
replayed records, queue depth, spill bytes and flush latency.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..config import Settings
from ..errors import ConfigError, DwcpError
from ..strategies._zstd import ZstdDecompressor, ZstdError
from ..strategies.zstdcodec import ZSTD_MAGIC, zstd_compress
from .schema import COLUMN_NAMES, row_tuple, validate
from .store import TelemetryStore, open_store

__all__ = ["DEFAULT_QUEUE_SIZE", "CollectorMetrics", "TelemetryCollector"]

DEFAULT_QUEUE_SIZE = 100_000
DEFAULT_BATCH_SIZE = 2_000
DEFAULT_FLUSH_INTERVAL_S = 0.25
DEFAULT_SPILL_BUDGET = 512 << 20
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0
_FRAME = struct.Struct("<I")
_STOP = object()


class CollectorMetrics:
    """The collector's Prometheus metrics, in a registry of their own or the caller's."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter("dwcp_telemetry_records", "Records written to the telemetry store", registry=r)
        self.dropped = Counter(
            "dwcp_telemetry_dropped", "Records dropped before reaching the store", ["reason"], registry=r
        )
        self.errors = Counter("dwcp_telemetry_errors", "Store writes that failed", registry=r)
        self.spilled = Counter("dwcp_telemetry_spilled", "Records written to the spill file", registry=r)
        self.replayed = Counter("dwcp_telemetry_replayed", "Records replayed from the spill file", registry=r)
        self.queue_depth = Gauge("dwcp_telemetry_queue_depth", "Records waiting in the queue", registry=r)
        self.spill_bytes = Gauge("dwcp_telemetry_spill_bytes", "Bytes in the spill file", registry=r)
        self.flush_latency = Histogram(
            "dwcp_telemetry_flush_latency_seconds",
            "Time to write one batch to the store",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$ts": value.timestamp()}
    raise TypeError(f"cannot spill a {type(value).__name__}")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$ts" in obj:
        return dt.datetime.fromtimestamp(obj["$ts"], dt.UTC)
    return obj


class TelemetryCollector:
    """Non-blocking telemetry for the transfer path.

    ``enabled`` defaults to ``DWCP_TELEMETRY_ENABLED`` (off). ``sample_rate`` keeps that share of
    records. ``store`` is a :class:`TelemetryStore` or a store URL; it is opened lazily on the writer
    thread, so an unreachable store never blocks or fails the constructor.
    """

    def __init__(
        self,
        store: TelemetryStore | str,
        *,
        enabled: bool | None = None,
        sample_rate: float = 1.0,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        spill_path: str | Path | None = None,
        spill_budget_bytes: int = DEFAULT_SPILL_BUDGET,
        on_error: Callable[[BaseException], None] | None = None,
        metrics: CollectorMetrics | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"sample rate must be in [0, 1], got {sample_rate}")
        if queue_size < 1 or batch_size < 1:
            raise ConfigError("queue size and batch size must be positive")
        self.enabled = Settings.from_env().telemetry_enabled if enabled is None else enabled
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spill_path = Path(spill_path) if spill_path is not None else None
        self.spill_budget_bytes = spill_budget_bytes
        self.on_error = on_error
        self.metrics = metrics or CollectorMetrics()
        self._store_arg = store
        self._store: TelemetryStore | None = store if isinstance(store, TelemetryStore) else None
        # A deque: append and popleft are atomic in CPython and cost ~50 ns, with no lock on the
        # transfer path. Control messages (flush, stop) also set _wake so the writer reacts at once.
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._capacity = queue_size
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._flush_requests: list[threading.Event] = []
        self.written = 0
        self.dropped: dict[str, int] = {
            "queue_full": 0,
            "spill_full": 0,
            "invalid": 0,
            "sampled_out": 0,
            "spill_error": 0,  # the spill file could not be written (disk full, read-only, a directory)
            "spill_torn_batches": 0,  # batches (not records) cut short at a spill file's end
            "no_spill": 0,  # the store refused a batch and no spill file is configured
        }
        self.writer_errors = 0
        self.errors = 0
        self.last_error: str | None = None
        self.spilled = 0
        self.replayed = 0
        self._spill_bytes = (
            self.spill_path.stat().st_size if self.spill_path and self.spill_path.exists() else 0
        )
        self._closed = False
        self._next_retry = 0.0
        self._retry_s = _RETRY_MIN_S
        self._thread = threading.Thread(target=self._run, name="dwcp-telemetry-writer", daemon=True)
        if self.enabled:
            self._thread.start()

    # -- the transfer path -------------------------------------------------------------------------
    def record(self, record: Mapping[str, Any]) -> bool:
        """Queue one record; returns whether it was kept. Never blocks, never raises."""
        if not self.enabled or self._closed:
            return False
        if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            self.dropped["sampled_out"] += 1
            return False
        if len(self._queue) >= self._capacity:  # racing callers may overshoot by a record or two
            self._drop("queue_full", 1)
            return False
        self._queue.append(record)
        return True

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- control -----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written or spilled; False on timeout."""
        if not self.enabled or not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the writer and close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._thread.is_alive():
            self._queue.append(_STOP)
            self._wake.set()
            self._thread.join(timeout)
        if self._store is not None and not isinstance(self._store_arg, TelemetryStore):
            with contextlib.suppress(DwcpError):
                self._store.close()

    def __enter__(self) -> TelemetryCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "written": self.written,
            "dropped": dict(self.dropped),
            "errors": self.errors,
            "writer_errors": self.writer_errors,
            "last_error": self.last_error,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "queue_depth": len(self._queue),
            "spill_bytes": self._spill_bytes,
        }

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[Mapping[str, Any]] = []
            waiters: list[threading.Event] = []
            deadline = time.monotonic() + self.flush_interval_s
            popleft = self._queue.popleft
            while len(batch) < self.batch_size:
                try:
                    item = popleft()
                except IndexError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or waiters:
                        break
                    self._wake.wait(min(remaining, 0.01))  # idle: poll every 10 ms, or woken by a control
                    self._wake.clear()
                    continue
                if item is _STOP:
                    stop = True
                    break
                if item.__class__ is threading.Event:
                    waiters.append(item)
                    break
                batch.append(item)
            self.metrics.queue_depth.set(len(self._queue))
            try:
                if batch or (self._spill_bytes and time.monotonic() >= self._next_retry):
                    self._write(batch)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive every failure it meets
                self.writer_errors += 1
                self.errors += 1
                self.metrics.errors.inc()
                self._error(exc)
            for w in waiters:
                w.set()
        try:
            self._drain_on_stop()
        except Exception as exc:  # noqa: BLE001
            self.writer_errors += 1
            self._error(exc)

    def _drain_on_stop(self) -> None:
        rest: list[Mapping[str, Any]] = []
        while self._queue:
            item = self._queue.popleft()
            if item.__class__ is threading.Event:
                item.set()
            elif item is not _STOP:
                rest.append(item)
        for i in range(0, len(rest), self.batch_size):
            self._write(rest[i : i + self.batch_size])
        if self._spill_bytes:
            self._write([])  # a last chance to replay the spill before exit

    def _store_or_open(self) -> TelemetryStore:
        if self._store is None:
            assert isinstance(self._store_arg, str)
            self._store = open_store(self._store_arg)
        return self._store

    def _valid(self, batch: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        good = []
        for rec in batch:
            try:
                validate(rec)
            except DwcpError as exc:
                self.dropped["invalid"] += 1
                self.metrics.dropped.labels("invalid").inc()
                self._error(exc)
                continue
            good.append(rec)
        return good

    def _write(self, batch: list[Mapping[str, Any]]) -> None:
        if self._spill_bytes and time.monotonic() < self._next_retry:
            self._spill(self._valid(batch))  # the store was down a moment ago: keep order, do not hammer it
            return
        try:
            store = self._store_or_open()
            if self._spill_bytes:
                self._replay(store)
            if batch:
                t0 = time.perf_counter()
                try:
                    store.write_batch(batch)  # validates every record before writing any
                except ConfigError:
                    batch = self._valid(batch)  # rare: find the bad records, write the rest
                    store.write_batch(batch)
                self.metrics.flush_latency.observe(time.perf_counter() - t0)
                self.written += len(batch)
                self.metrics.records.inc(len(batch))
            self._retry_s = _RETRY_MIN_S
        except Exception as exc:  # the store is down or refusing: spill, report, retry later
            self.errors += 1
            self.metrics.errors.inc()
            self._error(exc)
            self._next_retry = time.monotonic() + self._retry_s
            self._retry_s = min(_RETRY_MAX_S, self._retry_s * 2)
            self._spill(self._valid(batch))

    def _error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(exc)

    # -- spill file --------------------------------------------------------------------------------
    def _spill(self, batch: list[Mapping[str, Any]]) -> None:
        if not batch:
            return
        if self.spill_path is None:
            self._drop("no_spill", len(batch))  # no spill file configured: nowhere to keep them
            return
        rows = [list(row_tuple(r)) for r in batch]
        blob = zstd_compress(json.dumps(rows, default=_json_default).encode(), 1)
        if self._spill_bytes + len(blob) + _FRAME.size > self.spill_budget_bytes:
            self._drop("spill_full", len(batch))
            return
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spill_path.open("ab") as f:
                f.write(_FRAME.pack(len(blob)) + blob)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            # disk full, read-only, a directory in the way: these records are lost, and counted; the
            # writer goes on, and the next batch tries the store again
            self._drop("spill_error", len(batch))
            self.errors += 1
            self.metrics.errors.inc()
            self._error(exc)
            self._next_retry = 0.0
            return
        self._spill_bytes += len(blob) + _FRAME.size
        self.spilled += len(batch)
        self.metrics.spilled.inc(len(batch))
        self.metrics.spill_bytes.set(self._spill_bytes)

    def _drop(self, reason: str, n: int) -> None:
        with self._lock:
            self.dropped[reason] += n
        self.metrics.dropped.labels(reason).inc(n)

    def _replay(self, store: TelemetryStore) -> None:
        """Write every spilled batch, oldest first; the file goes only once all of it is stored."""
        assert self.spill_path is not None
        data = self.spill_path.read_bytes()
        pos = 0
        while pos < len(data):
            whole = pos + _FRAME.size <= len(data)
            if not whole or pos + _FRAME.size + _FRAME.unpack_from(data, pos)[0] > len(data):
                # a torn tail: the process died while appending its last batch. Everything before it is
                # whole and goes to the store; the torn batch cannot be read (its size is unknown: it is
                # counted as one batch)
                self._drop("spill_torn_batches", 1)
                self._error(
                    DwcpError(f"spill file torn at byte {pos} of {len(data)}: its last batch is lost")
                )
                break
            (n,) = _FRAME.unpack_from(data, pos)
            blob = data[pos + _FRAME.size : pos + _FRAME.size + n]
            try:
                raw = ZstdDecompressor().decompress(ZSTD_MAGIC + blob)
                rows = json.loads(raw, object_hook=_json_hook)
                records = [dict(zip(COLUMN_NAMES, row, strict=True)) for row in rows]
            except (ValueError, TypeError, ZstdError) as exc:
                # A damaged spill file is set aside (for a person to look at), never retried forever.
                aside = self.spill_path.with_name(f"{self.spill_path.name}.damaged-{int(time.time())}")
                self.spill_path.rename(aside)
                self._spill_bytes = 0
                self.metrics.spill_bytes.set(0)
                raise DwcpError(f"spill file damaged at byte {pos} ({exc}); moved to {aside}") from exc
            store.write_batch(records)  # duplicates of a half-finished replay are ignored by the store
            self.replayed += len(records)
            self.written += len(records)
            self.metrics.replayed.inc(len(records))
            self.metrics.records.inc(len(records))
            pos += _FRAME.size + n
        self.spill_path.unlink()
        self._spill_bytes = 0
        self.metrics.spill_bytes.set(0)
