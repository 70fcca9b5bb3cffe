"""The telemetry collector on the transfer path: the caller never waits and never sees an exception.

:meth:`TelemetryCollector.record` samples, then puts the record on a bounded queue and returns (a few
microseconds); a background thread takes batches off the queue and writes them to the store. While the
store is down, batches go to a local spill file (zstd-compressed JSON lines, within a byte budget) and
are replayed, oldest first, once a write succeeds again, so no record is lost within the budget.
Failures go to a separate error channel (``errors``, ``last_error``, an optional callback), never into
the caller; records that cannot be kept are counted by reason (:data:`DROP_REASONS`).

What survives what
------------------
*Default mode.* A record lives in memory until the writer stores or spills it: a process killed with
SIGKILL loses what is still queued (at most ``queue_size`` records) plus the batch being written (at
most ``batch_size``). Spilled batches are fsync'd and survive; the next collector on the same spill path
replays them.

*Durable mode* (``durable=True``). ``record()`` appends the record to a write-ahead journal next to the
spill path and fsyncs it before returning ``True``, so nothing that ``record()`` accepted is lost to a
SIGKILL (or to a power cut, as far as the disk honours fdatasync). The design:

* **Segments.** ``<spill>.journal.<seq>`` files of frames ``<u32 length><u32 crc32><JSON row>``. Appends
  go to the newest segment under a lock (so the journal's order is the queue's order); a segment past
  :data:`JOURNAL_SEGMENT_BYTES` is closed and a new one started. A collector never appends to a segment
  an earlier process left behind: it starts a new one, so a torn tail stays a tail.
* **Committed offset.** ``<spill>.journal.commit`` holds the position (segment, offset) up to which every
  record is in the store (or was counted as dropped: invalid, torn). It has two 32-byte slots written in
  turn, each ``<u64 counter><u64 seq><u64 offset><u32 crc32>``, pwrite'n and fdatasync'd after every
  batch the store confirmed; a reader takes the valid slot with the higher counter, so a write torn by a
  crash leaves the previous commit. Segments wholly below the commit are deleted.
* **Writing.** The writer takes records from the in-memory queue as in default mode and commits their
  journal end once the store confirmed them. When the store fails, or the queue was full (the record is
  still journaled and accepted, but not queued), the writer is *behind*: it stops using the in-memory
  copies and reads the journal from the committed offset instead, batch by batch, committing each, until
  it reaches the journal's end; then it goes back to the queue. The journal is the spill: durable mode
  never writes the default spill file (one left by a default-mode run is still replayed).
* **Start.** A new collector on the same spill path takes an exclusive ``flock`` on the commit file (a
  second live collector on it is a :class:`ConfigError`), reads the commit and replays every segment
  from there before anything else. A torn or damaged frame (a process killed inside ``record()``, whose
  caller therefore never got ``True``) ends its segment's replay and is counted (``journal_torn``).
* **No duplicates.** Records below the commit are never sent again. Those above it that the killed
  process had already stored (at most the one batch whose commit it did not reach) are sent again and
  ignored by the store's ``request_id`` key; ``written`` counts only rows the store reports as new, and
  ``duplicates`` counts the others.
* **Budget.** ``spill_budget_bytes`` bounds the journal's uncommitted bytes: beyond it ``record()``
  returns ``False`` (``spill_full``). A journal that cannot be written returns ``False``
  (``journal_error``). A clean :meth:`~TelemetryCollector.close` with everything committed removes the
  journal's files.
* **Cost.** One ``fdatasync`` per ``record()`` (callers on several threads take turns), plus row
  encoding: see ``docs/telemetry.md`` for measured figures.

Prometheus metrics (``dwcp_telemetry_*``): records written, dropped (by reason), errors, spilled and
replayed records, queue depth, spill bytes (journal bytes not yet committed in durable mode) and flush
latency.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import fcntl
import json
import os
import random
import struct
import threading
import time
import zlib
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

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "DROP_REASONS",
    "JOURNAL_SEGMENT_BYTES",
    "CollectorMetrics",
    "TelemetryCollector",
]

DEFAULT_QUEUE_SIZE = 100_000
DEFAULT_BATCH_SIZE = 2_000
DEFAULT_FLUSH_INTERVAL_S = 0.25
DEFAULT_SPILL_BUDGET = 512 << 20
#: Durable mode starts a new journal segment once the current one holds this many bytes.
JOURNAL_SEGMENT_BYTES = 4 << 20
#: Why a record was not kept (the keys of ``dropped`` and the ``reason`` label of the metric).
DROP_REASONS = (
    "queue_full",  # the in-memory queue was full (default mode): record() returned False
    "sampled_out",  # not drawn by sample_rate (not counted in the Prometheus metric)
    "invalid",  # the record broke the schema (judged on the writer thread, or by record() when durable)
    "no_spill",  # the store refused or failed a batch and no spill file is configured
    "spill_full",  # the store failed and the spill file (the journal, when durable) is at its budget
    "spill_error",  # the store failed and the spill file could not be written
    "journal_error",  # durable: the journal could not be written or opened; record() returned False
    "spill_torn_batches",  # batches (not records) cut short at a spill file's end
    "journal_torn",  # torn or damaged journal frames (each ends its segment's replay)
    "closed",  # record() after close(), or still queued when close()'s timeout ran out with no spill
)
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0
_FRAME = struct.Struct("<I")
_JFRAME = struct.Struct("<II")
_COMMIT = struct.Struct("<QQQ")
_CRC = struct.Struct("<I")
_COMMIT_SLOT = 32
_CATCH_UP_BATCHES = 8
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


_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class _Journal:
    """Durable mode's write-ahead journal: segments of frames and a committed offset (module docstring).

    Positions are logical byte offsets, continuous across segments; ``segs`` maps them to files. The
    caller holds ``lock`` around :meth:`append` (with its queue append); the writer thread alone calls
    :meth:`read` and :meth:`commit`.
    """

    def __init__(self, spill_path: Path, segment_bytes: int) -> None:
        self.dir = spill_path.parent
        self.prefix = f"{spill_path.name}.journal."
        self.commit_path = self.dir / f"{self.prefix}commit"
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        self.broken = False
        self.segs: list[tuple[int, int]] = []  # (seq, logical base), oldest first
        self.committed = 0  # logical: everything before it is stored (or counted as dropped)
        self.end = 0  # logical: the end of the last whole, fsync'd frame
        self.seg_size = 0
        self._fd = -1
        self._counter = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cfd = os.open(self.commit_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise ConfigError(
                f"telemetry journal {self.commit_path} is held by another live collector"
            ) from None
        try:
            self._counter, cseq, coff = self._read_commit()
            seqs = sorted(self._segment_seqs())
            for seq in seqs:
                if seq < cseq:  # wholly committed; its deletion was lost to a crash
                    self._path(seq).unlink(missing_ok=True)
            base = 0
            for seq in (s for s in seqs if s >= cseq):
                size = self._path(seq).stat().st_size
                if seq == cseq:
                    self.committed = base + min(coff, size)
                self.segs.append((seq, base))
                base += size
            self.end = base
            self._open_segment(max([cseq, *seqs]) + 1)  # never append after another process's tail
        except BaseException:
            self.close()
            raise

    # -- files -------------------------------------------------------------------------------------
    def _path(self, seq: int) -> Path:
        return self.dir / f"{self.prefix}{seq:010d}"

    def _segment_seqs(self) -> list[int]:
        n = len(self.prefix)
        return [int(p.name[n:]) for p in self.dir.glob(f"{self.prefix}[0-9]*") if p.name[n:].isdigit()]

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_segment(self, seq: int) -> None:
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            self._fsync_dir()  # the new file's name is durable before any record relies on it
        except OSError:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.seg_size = 0
        self.segs.append((seq, self.end))

    def _read_commit(self) -> tuple[int, int, int]:
        data = os.pread(self._cfd, 2 * _COMMIT_SLOT, 0)
        best = (0, 0, 0)
        for slot in range(2):
            chunk = data[slot * _COMMIT_SLOT : slot * _COMMIT_SLOT + _COMMIT.size + _CRC.size]
            if len(chunk) < _COMMIT.size + _CRC.size:
                continue
            body = chunk[: _COMMIT.size]
            if _CRC.unpack_from(chunk, _COMMIT.size)[0] != zlib.crc32(body):
                continue
            counter, seq, off = _COMMIT.unpack(body)
            if counter > best[0]:
                best = (counter, seq, off)
        return best

    # -- the caller's side (under lock) --------------------------------------------------------------
    def append(self, frame: bytes) -> int:
        """Append one frame and fdatasync it; returns its logical end. On OSError nothing is appended."""
        if self.seg_size >= self.segment_bytes:
            self._open_segment(self.segs[-1][0] + 1)
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(self._fd, view) :]
            _datasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self.seg_size)  # no half frame may stay before the next one
            except OSError:
                self.broken = True
            raise
        self.seg_size += len(frame)
        self.end += len(frame)
        return self.end

    # -- the writer's side -------------------------------------------------------------------------
    def _locate(self, pos: int) -> tuple[int, int, int]:
        """The segment holding logical ``pos``: (seq, base, end)."""
        with self.lock:
            segs = list(self.segs)
            end = self.end
        i = max(k for k, (_, base) in enumerate(segs) if base <= pos)  # the last: skips empty segments
        seg_end = segs[i + 1][1] if i + 1 < len(segs) else end
        return segs[i][0], segs[i][1], seg_end

    def read(self, pos: int, target: int, limit: int) -> tuple[list[Mapping[str, Any]], int, int]:
        """Up to ``limit`` records from ``pos`` (not past ``target``): (records, next position, torn).

        A torn or damaged frame, or a segment that cannot be read, ends that segment: the rest of it
        is skipped and counted once."""
        seq, base, seg_end = self._locate(pos)
        stop = min(target, seg_end)
        if pos >= stop:
            return [], pos, 0
        try:
            with self._path(seq).open("rb") as f:
                f.seek(pos - base)
                data = f.read(stop - pos)
        except OSError:
            return [], stop, 1
        records: list[Mapping[str, Any]] = []
        at = 0
        while at < len(data) and len(records) < limit:
            if at + _JFRAME.size > len(data):
                return records, stop, 1
            n, crc = _JFRAME.unpack_from(data, at)
            payload = data[at + _JFRAME.size : at + _JFRAME.size + n]
            if len(payload) < n or zlib.crc32(payload) != crc:
                return records, stop, 1
            try:
                row = json.loads(payload, object_hook=_json_hook)
                records.append(dict(zip(COLUMN_NAMES, row, strict=True)))
            except (ValueError, TypeError):
                return records, stop, 1
            at += _JFRAME.size + n
        if at >= len(data) and len(data) < stop - pos:
            return records, stop, 1  # the file is shorter than it was: count it as torn
        return records, pos + at, 0

    def commit(self, pos: int) -> None:
        """Record that everything before logical ``pos`` is stored; delete the segments below it."""
        self.committed = pos  # in memory even if the disk refuses: those records are in the store
        seq, base, _ = self._locate(pos)
        self._counter += 1
        body = _COMMIT.pack(self._counter, seq, pos - base)
        os.pwrite(self._cfd, body + _CRC.pack(zlib.crc32(body)), (self._counter % 2) * _COMMIT_SLOT)
        _datasync(self._cfd)
        with self.lock:
            while len(self.segs) > 1 and self.segs[1][1] <= pos:
                old, _ = self.segs.pop(0)
                with contextlib.suppress(OSError):
                    self._path(old).unlink()

    def close(self, remove: bool = False) -> None:
        """Close the files; ``remove`` (everything committed) deletes them too."""
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if remove:
                with contextlib.suppress(OSError):
                    for seq in self._segment_seqs():
                        self._path(seq).unlink()
                    self._fsync_dir()  # segments go before the commit that says they were done
                    self.commit_path.unlink()
            if self._cfd >= 0:
                os.close(self._cfd)  # releases the flock
                self._cfd = -1


class TelemetryCollector:
    """Non-blocking telemetry for the transfer path.

    ``enabled`` defaults to ``DWCP_TELEMETRY_ENABLED`` (off). ``sample_rate`` keeps that share of
    records. ``store`` is a :class:`TelemetryStore` or a store URL; it is opened lazily on the writer
    thread, so an unreachable store never blocks or fails the constructor.

    ``durable=True`` (needs ``spill_path``) journals and fsyncs every record in :meth:`record` before
    it returns, so a process killed at any moment loses nothing ``record()`` accepted; the journal is
    replayed by the next collector on the same ``spill_path`` (see the module docstring for the design).
    A journal held by another live collector is a :class:`ConfigError`; one that cannot be opened is
    reported on the error channel and every record is refused (``journal_error``).

    Counters: ``written`` counts rows the store confirmed as new, ``duplicates`` rows it already had
    (sent again after a lost acknowledgement or a crash), ``dropped`` records lost by reason
    (:data:`DROP_REASONS`).
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
        durable: bool = False,
        journal_segment_bytes: int = JOURNAL_SEGMENT_BYTES,
        on_error: Callable[[BaseException], None] | None = None,
        metrics: CollectorMetrics | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"sample rate must be in [0, 1], got {sample_rate}")
        if queue_size < 1 or batch_size < 1:
            raise ConfigError("queue size and batch size must be positive")
        if durable and spill_path is None:
            raise ConfigError("durable collector needs a spill_path for its journal")
        self.enabled = Settings.from_env().telemetry_enabled if enabled is None else enabled
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spill_path = Path(spill_path) if spill_path is not None else None
        self.spill_budget_bytes = spill_budget_bytes
        self.durable = durable
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
        self.written = 0
        self.duplicates = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.writer_errors = 0
        self.errors = 0
        self.last_error: str | None = None
        self.spilled = 0
        self.replayed = 0
        self._spill_bytes = (
            self.spill_path.stat().st_size if self.spill_path and self.spill_path.is_file() else 0
        )
        self._replay_pos = 0  # bytes of the spill file already replayed (a failed replay resumes there)
        self._closed = False
        self._close_deadline: float | None = None
        self._next_retry = 0.0
        self._retry_s = _RETRY_MIN_S
        # durable mode: the journal, and each queued record's (start, end) in it, in queue order
        self._journal: _Journal | None = None
        self._jpos: collections.deque[tuple[int, int]] = collections.deque()
        self._journal_failed = False
        self._behind = False  # the writer reads the journal, not the queue, until it reaches its end
        self._overflow = False  # a record was journaled but not queued (the queue was full)
        if self.enabled and durable:
            assert self.spill_path is not None
            try:
                self._journal = _Journal(self.spill_path, journal_segment_bytes)
            except OSError as exc:
                self._journal_failed = True
                self.errors += 1
                self._error(exc)
            else:
                self._behind = self._journal.committed < self._journal.end
                self.metrics.spill_bytes.set(self._journal.end - self._journal.committed)
        self._thread = threading.Thread(target=self._run, name="dwcp-telemetry-writer", daemon=True)
        if self.enabled:
            self._thread.start()

    # -- the transfer path -------------------------------------------------------------------------
    def record(self, record: Mapping[str, Any]) -> bool:
        """Queue one record; returns whether it was kept. Never blocks on the store, never raises.

        In durable mode ``True`` means the record is in the journal and fsync'd (this call then costs
        one fdatasync); a full queue does not refuse it there (the writer reads it back from the
        journal)."""
        if not self.enabled:
            return False
        if self._closed:
            self._drop("closed", 1)
            return False
        if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            self.dropped["sampled_out"] += 1
            return False
        if self.durable:
            return self._record_durable(record)
        if len(self._queue) >= self._capacity:  # racing callers may overshoot by a record or two
            self._drop("queue_full", 1)
            return False
        self._queue.append(record)
        return True

    def _record_durable(self, record: Mapping[str, Any]) -> bool:
        try:
            payload = json.dumps(row_tuple(record), default=_json_default, separators=(",", ":")).encode()
        except Exception as exc:  # noqa: BLE001 - unknown fields, a bad ts, a value JSON cannot hold
            self._drop("invalid", 1)
            self._error(exc)
            return False
        frame = _JFRAME.pack(len(payload), zlib.crc32(payload)) + payload
        j = self._journal
        if j is None:  # the journal could not be opened (reported at construction), or it is closed
            self._drop("closed" if self._closed else "journal_error", 1)
            return False
        with j.lock:
            if self._closed:
                reason = "closed"
            elif j.broken:
                reason = "journal_error"
            elif j.end - j.committed + len(frame) > self.spill_budget_bytes:
                reason = "spill_full"
            else:
                try:
                    end = j.append(frame)
                except OSError as exc:
                    self.errors += 1
                    self.metrics.errors.inc()
                    self._error(exc)
                    reason = "journal_error"
                else:
                    if len(self._queue) < self._capacity:
                        self._jpos.append((end - len(frame), end))  # before the record: see _take
                        self._queue.append(record)
                    else:
                        self._overflow = True  # the writer reads it back from the journal
                    return True
        self._drop(reason, 1)
        return False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- control -----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written or spilled (or, when durable, the writer has
        handed it over to the store or is reading it from the journal); False on timeout."""
        if not self.enabled or not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write everything out, stop the writer and close the store (idempotent).

        Closing is a last, immediate attempt on the store, whatever the retry back-off: the spill file
        (or the journal) is replayed first, then the queued records are written. ``timeout`` (seconds;
        ``None`` waits as long as it takes) bounds the whole of it: no new store attempt starts once it
        has run out, and what is still queued then goes to the spill file (default mode; dropped and
        counted as ``closed`` when there is none) or simply stays in the journal (durable mode), for
        the next collector on the same spill path. If the store stops answering, its first failure
        ends the attempts in the same way. ``close`` returns after at most ``timeout``: ``True`` when
        the writer had finished, ``False`` when it was still inside a store call (a hung server, a
        SQLite lock wait); it then finishes that call, saves the rest as above and closes the store in
        the background.
        """
        if self._closed:
            return not self._thread.is_alive()
        self._close_deadline = None if timeout is None else time.monotonic() + timeout
        if self._journal is not None:
            with self._journal.lock:
                self._closed = True  # no record() appends to the journal after this
        else:
            self._closed = True
        if not (self.enabled and self._thread.is_alive()):
            self._finish()
            return True
        self._queue.append(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> TelemetryCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        j = self._journal
        return {
            "enabled": self.enabled,
            "durable": self.durable,
            "written": self.written,
            "duplicates": self.duplicates,
            "dropped": dict(self.dropped),
            "errors": self.errors,
            "writer_errors": self.writer_errors,
            "last_error": self.last_error,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "queue_depth": len(self._queue),
            "spill_bytes": self._spill_bytes,
            "journal_bytes": j.end - j.committed if j is not None else 0,
        }

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch, ends, waiters, stop = self._take()
                self.metrics.queue_depth.set(len(self._queue))
                try:
                    if self.durable:
                        self._durable_step(batch, ends, force=False)
                    elif batch or (self._spill_bytes and time.monotonic() >= self._next_retry):
                        self._write(batch)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive every failure it meets
                    self._writer_error(exc)
                for w in waiters:
                    w.set()
            try:
                self._drain_on_stop()
            except Exception as exc:  # noqa: BLE001
                self._writer_error(exc)
        finally:
            self._finish()

    def _writer_error(self, exc: BaseException) -> None:
        self.writer_errors += 1
        self.errors += 1
        self.metrics.errors.inc()
        self._error(exc)

    def _take(self) -> tuple[list[Mapping[str, Any]], list[tuple[int, int]], list[threading.Event], bool]:
        """The next batch off the queue (with its journal positions when durable), waiters, and stop."""
        batch: list[Mapping[str, Any]] = []
        ends: list[tuple[int, int]] = []
        waiters: list[threading.Event] = []
        deadline = time.monotonic() + self.flush_interval_s
        popleft = self._queue.popleft
        jpop = self._jpos.popleft if self.durable else None
        while len(batch) < self.batch_size:
            try:
                item = popleft()
            except IndexError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or waiters or (self._behind and time.monotonic() >= self._next_retry):
                    break
                self._wake.wait(min(remaining, 0.01))  # idle: poll every 10 ms, or woken by a control
                self._wake.clear()
                continue
            if item is _STOP:
                return batch, ends, waiters, True
            if item.__class__ is threading.Event:
                waiters.append(item)
                break
            batch.append(item)
            if jpop is not None:
                ends.append(jpop())  # appended before its record, so always there
        return batch, ends, waiters, False

    def _drain_on_stop(self) -> None:
        rest: list[Mapping[str, Any]] = []
        ends: list[tuple[int, int]] = []
        while self._queue:
            item = self._queue.popleft()
            if item.__class__ is threading.Event:
                item.set()
            elif item is not _STOP:
                rest.append(item)
                if self.durable:
                    ends.append(self._jpos.popleft())
        step = self.batch_size
        chunks = [(rest[i : i + step], ends[i : i + step]) for i in range(0, len(rest), step)] or [([], [])]
        force = True  # close() tries the store now, back-off or not, until its first failure
        for chunk, chunk_ends in chunks:
            if self._timed_out():
                if not self.durable:  # durable: they are in the journal already
                    self._keep_after_timeout(chunk)
                continue
            errors = self.errors
            if self.durable:
                self._durable_step(chunk, chunk_ends, force=force)
            elif chunk or self._spill_bytes:
                self._write(chunk, force=force)
            force = force and self.errors == errors
        j = self._journal
        while j is not None and self._behind and force and not self._timed_out():
            errors, committed = self.errors, j.committed
            self._catch_up()
            force = self.errors == errors and j.committed > committed

    def _timed_out(self) -> bool:
        return self._close_deadline is not None and time.monotonic() >= self._close_deadline

    def _keep_after_timeout(self, batch: list[Mapping[str, Any]]) -> None:
        """close()'s time is up: spill what is left without trying the store, or count it lost."""
        if not batch:
            return
        good, bad = self._split_valid(batch)
        self._count_invalid(bad)
        if self.spill_path is None:
            self._drop("closed", len(good))
        else:
            self._spill(good)

    def _finish(self) -> None:
        """The writer's last act: close the store it opened and the journal (removed if all is stored)."""
        j = self._journal
        if j is not None:
            done = not self._behind and j.committed == j.end and not j.broken
            self._journal = None if done else j  # stats() keeps showing what is left
            j.close(remove=done)
        if self._store is not None and not isinstance(self._store_arg, TelemetryStore):
            with contextlib.suppress(Exception):
                self._store.close()

    def _store_or_open(self) -> TelemetryStore:
        if self._store is None:
            assert isinstance(self._store_arg, str)
            self._store = open_store(self._store_arg)
        return self._store

    def _split_valid(self, batch: list[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[DwcpError]]:
        """The records that pass validation, and the errors of those that do not (not yet counted)."""
        good: list[Mapping[str, Any]] = []
        bad: list[DwcpError] = []
        for rec in batch:
            try:
                validate(rec)
            except DwcpError as exc:
                bad.append(exc)
                continue
            good.append(rec)
        return good, bad

    def _count_invalid(self, bad: list[DwcpError]) -> None:
        if bad:
            self._drop("invalid", len(bad))
            for exc in bad:
                self._error(exc)

    def _store_failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.metrics.errors.inc()
        self._error(exc)
        self._next_retry = time.monotonic() + self._retry_s
        self._retry_s = min(_RETRY_MAX_S, self._retry_s * 2)

    def _store_write(
        self, batch: list[Mapping[str, Any]]
    ) -> tuple[list[Mapping[str, Any]], list[DwcpError]] | None:
        """Replay the spill file, then write ``batch``. ``None`` once the store confirmed it all (invalid
        records dropped and counted); on failure, with back-off set, the batch split into the valid
        records and the invalid ones' errors, which the caller counts once it gives them up."""
        bad: list[DwcpError] = []
        validated = False
        try:
            store = self._store_or_open()
            if self._spill_bytes:
                self._replay(store)
            if batch:
                t0 = time.perf_counter()
                try:
                    new = store.write_batch(batch)  # validates every record before writing any
                except ConfigError:
                    batch, bad = self._split_valid(batch)  # rare: find the bad records, write the rest
                    validated = True
                    new = store.write_batch(batch) if batch else 0
                self.metrics.flush_latency.observe(time.perf_counter() - t0)
                self._count_written(len(batch), new)
                self._count_invalid(bad)
            self._retry_s = _RETRY_MIN_S
            return None
        except Exception as exc:  # the store is down or refusing: report and back off
            self._store_failed(exc)
            if not validated:
                batch, bad = self._split_valid(batch)
            return batch, bad

    def _count_written(self, sent: int, new: int) -> None:
        new = max(0, min(new, sent))  # a store's answer, taken at its word within the batch
        self.written += new
        self.duplicates += sent - new
        self.metrics.records.inc(new)

    def _write(self, batch: list[Mapping[str, Any]], force: bool = False) -> None:
        """Default mode: store the batch, or spill it when the store fails or is in back-off."""
        if not force and self._spill_bytes and time.monotonic() < self._next_retry:
            failed: tuple[list[Mapping[str, Any]], list[DwcpError]] | None = self._split_valid(batch)
        else:
            failed = self._store_write(batch)
        if failed is not None:  # the store was down a moment ago: keep order, do not hammer it
            good, bad = failed
            self._count_invalid(bad)
            self._spill(good)

    def _error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(exc)

    # -- durable mode ------------------------------------------------------------------------------
    def _durable_step(self, batch: list[Mapping[str, Any]], ends: list[tuple[int, int]], force: bool) -> None:
        j = self._journal
        ready = force or time.monotonic() >= self._next_retry
        if j is None:  # no journal: record() refused everything; a default-mode spill may be left
            if self._spill_bytes and ready:
                self._store_write([])
            return
        if self._overflow:
            self._overflow = False
            self._behind = True
        k = 0
        while k < len(ends) and ends[k][1] <= j.committed:
            k += 1  # already stored by a catch-up from the journal
        batch, ends = batch[k:], ends[k:]
        if batch and not self._behind:
            contiguous = ends[0][0] == j.committed and all(
                ends[i][0] == ends[i - 1][1] for i in range(1, len(ends))
            )
            if not contiguous:
                self._behind = True  # a record was journaled but not queued: read the journal
            elif self._store_write(batch) is None:
                self._commit(ends[-1][1])
                return
            else:
                # the store failed: the batch stays in the journal, which is read once the back-off
                # is over (its invalid records are counted when that copy is resolved)
                self._behind = True
                return
        if self._behind:
            if ready:
                self._catch_up()
        elif self._spill_bytes and ready:
            self._store_write([])  # a spill file left by a default-mode run

    def _catch_up(self) -> None:
        """Store journal records from the committed offset, a few batches at a time, committing each."""
        j = self._journal
        assert j is not None
        target = j.end
        for _ in range(_CATCH_UP_BATCHES):
            if j.committed >= target:
                break
            records, nxt, torn = j.read(j.committed, target, self.batch_size)
            if nxt <= j.committed and not records:  # cannot happen; if it did, back off, never spin
                self._store_failed(DwcpError(f"telemetry journal made no progress at byte {nxt}"))
                return
            if torn:
                self._drop("journal_torn", torn)
                self._error(
                    DwcpError(f"telemetry journal torn or damaged before byte {nxt}: skipped to there")
                )
            if records:
                if self._store_write(records) is not None:
                    return  # still behind; retried after the back-off
                self.replayed += len(records)
                self.metrics.replayed.inc(len(records))
            self._commit(nxt)
            if self._timed_out():
                return
        self._behind = j.committed < target  # caught up: records queued since come from memory

    def _commit(self, pos: int) -> None:
        j = self._journal
        assert j is not None
        try:
            j.commit(pos)
        except OSError as exc:  # the records are stored; only a crash would send them again
            self.errors += 1
            self.metrics.errors.inc()
            self._error(exc)
        self.metrics.spill_bytes.set(j.end - j.committed)

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
                try:
                    f.write(_FRAME.pack(len(blob)) + blob)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        f.truncate(self._spill_bytes)  # no half batch before the next one
                    raise
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
        """Write every spilled batch, oldest first; the file goes only once all of it is stored.

        A failure leaves the file and the position reached: the next replay resumes there, so no batch
        is sent twice by this collector (a later collector starts again from the file's beginning)."""
        assert self.spill_path is not None
        data = self.spill_path.read_bytes()
        pos = self._replay_pos if self._replay_pos <= len(data) else 0
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
                self._replay_pos = 0
                self.metrics.spill_bytes.set(0)
                raise DwcpError(f"spill file damaged at byte {pos} ({exc}); moved to {aside}") from exc
            new = store.write_batch(records)  # duplicates of an earlier, cut replay are ignored
            self._count_written(len(records), new)
            self.replayed += len(records)
            self.metrics.replayed.inc(len(records))
            pos += _FRAME.size + n
            self._replay_pos = pos
        self.spill_path.unlink()
        self._spill_bytes = 0
        self._replay_pos = 0
        self.metrics.spill_bytes.set(0)
