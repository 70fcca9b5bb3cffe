"""The collector on the transfer path: never blocks or raises, drops are counted, nothing is lost while
the store is down (spill and replay), against SQLite and the real PostgreSQL behind a relay we cut."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dwcp_selector.errors import ConfigError
from dwcp_selector.telemetry.collector import CollectorMetrics, TelemetryCollector
from dwcp_selector.telemetry.sqlite import SqliteStore
from dwcp_selector.telemetry.store import open_store

from .conftest import full_record

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def recs(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [full_record(offset + i, NOW + dt.timedelta(seconds=offset + i)) for i in range(n)]


def test_disabled_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DWCP_TELEMETRY_ENABLED", raising=False)
    url = f"sqlite:///{tmp_path}/t.db"
    with TelemetryCollector(url) as c:
        assert not c.enabled
        assert c.record(recs(1)[0]) is False
    monkeypatch.setenv("DWCP_TELEMETRY_ENABLED", "1")
    with TelemetryCollector(url) as c:
        assert c.enabled and c.record(recs(1)[0])
    with open_store(url) as s:
        assert s.count() == 1


def test_records_reach_the_store_and_metrics_count_them(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    url = f"sqlite:///{tmp_path}/t.db"
    with TelemetryCollector(url, enabled=True, metrics=CollectorMetrics(registry)) as c:
        for r in recs(5000):
            assert c.record(r)
        assert c.flush(30)
        assert c.written == 5000 and c.queue_depth == 0
    assert registry.get_sample_value("dwcp_telemetry_records_total") == 5000
    assert (registry.get_sample_value("dwcp_telemetry_flush_latency_seconds_count") or 0) >= 1
    with open_store(url) as s:
        assert s.count() == 5000


def test_sampling(tmp_path: Path) -> None:
    with TelemetryCollector(f"sqlite:///{tmp_path}/t.db", enabled=True, sample_rate=0.25, seed=1) as c:
        kept = sum(c.record(r) for r in recs(4000))
        c.flush()
        assert 850 < kept < 1150 and c.written == kept
        assert c.dropped["sampled_out"] == 4000 - kept


class GatedStore(SqliteStore):
    """A real SQLite store whose writes wait on a gate the test holds (a stalled disk)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()

    def write_batch(self, records: Any) -> int:
        self.gate.wait(30)
        return super().write_batch(records)


def test_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    store = GatedStore(f"sqlite:///{tmp_path}/t.db")
    c = TelemetryCollector(store, enabled=True, queue_size=100, batch_size=10)
    batch = recs(1000)
    t0 = time.perf_counter()
    kept = sum(c.record(r) for r in batch)
    assert time.perf_counter() - t0 < 5.0  # the store is stalled for 30 s: the caller never waited on it
    assert kept < 1000 and c.dropped["queue_full"] == 1000 - kept
    store.gate.set()
    c.close()
    assert store.count() == kept
    store.close()


def test_invalid_records_go_to_the_error_channel(tmp_path: Path) -> None:
    seen: list[BaseException] = []
    with TelemetryCollector(f"sqlite:///{tmp_path}/t.db", enabled=True, on_error=seen.append) as c:
        bad = recs(1)[0]
        del bad["ts"]
        assert c.record(bad)  # accepted on the hot path; judged on the writer thread
        assert c.record({"nonsense": 1})
        for r in recs(10, offset=5):
            c.record(r)
        c.flush()
        assert c.dropped["invalid"] == 2 and c.written == 10
        assert len(seen) == 2 and all(isinstance(e, ConfigError) for e in seen)


def test_sqlite_unavailable_then_available_spills_and_replays(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("not a directory")  # the store's directory cannot be created yet
    url = f"sqlite:///{blocker}/t.db"
    with TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin") as c:
        for r in recs(300):
            c.record(r)
        c.flush()
        assert c.written == 0 and c.spilled == 300 and c.errors >= 1
        blocker.unlink()  # the disk is back
        c._next_retry = 0.0  # do not wait for the back-off in a test
        for r in recs(50, offset=300):
            c.record(r)
        c.flush()
        deadline = time.monotonic() + 10
        while c.written < 350 and time.monotonic() < deadline:
            c.flush()
            time.sleep(0.05)
    assert c.replayed == 300 and c.written == 350
    assert not (tmp_path / "spill.bin").exists()
    with open_store(url) as s:
        assert s.count() == 350


def test_spill_budget_bounds_the_file_and_counts_drops(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens there
    with TelemetryCollector(
        url, enabled=True, spill_path=tmp_path / "spill.bin", spill_budget_bytes=8000, batch_size=100
    ) as c:
        for r in recs(3000):
            c.record(r)
        c.flush()
        assert c.spilled > 0 and c.dropped["spill_full"] > 0
        assert c.spilled + c.dropped["spill_full"] == 3000
        assert (tmp_path / "spill.bin").stat().st_size <= 8000


def test_damaged_spill_file_is_set_aside(tmp_path: Path) -> None:
    spill = tmp_path / "spill.bin"
    spill.write_bytes(b"\x10\x00\x00\x00garbage-garbage!")
    with TelemetryCollector(f"sqlite:///{tmp_path}/t.db", enabled=True, spill_path=spill) as c:
        c.record(recs(1)[0])
        c.flush()
        deadline = time.monotonic() + 5
        while c.written < 1 and time.monotonic() < deadline:
            c._next_retry = 0.0
            c.record(recs(1, offset=len(str(time.monotonic())))[0])
            c.flush()
    assert not spill.exists() and list(tmp_path.glob("spill.bin.damaged-*"))
    assert "damaged" in (c.last_error or "") or c.errors >= 1


class Relay:
    """A TCP relay in front of PostgreSQL that the test can cut and restore (the server going away)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.create_server(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread, which frees the port
        self.listener.close()
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_postgres_down_and_back_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    relay = Relay(("127.0.0.1", 5432))
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    with open_store(pg_url):
        pass  # migrate first, straight to the server
    c = TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", batch_size=200)
    try:
        for r in recs(1000):
            c.record(r)
        c.flush()
        relay.down()
        for r in recs(2000, offset=1000):
            c.record(r)
        c.flush()
        assert c.spilled > 0 and c.errors >= 1
        relay.up()
        deadline = time.monotonic() + 20
        while c.written < 3000 and time.monotonic() < deadline:
            c.flush()
            time.sleep(0.1)
    finally:
        c.close()
        relay.down()
    # a batch cut mid-commit may be sent twice; the store keeps each request id once and `written`
    # counts only what it confirmed as new
    assert c.written == 3000 and c.dropped["spill_full"] == 0 and c.dropped["queue_full"] == 0
    with open_store(pg_url) as s:
        assert s.count() == 3000


def test_grafana_dashboard_plots_metrics_the_collector_exports() -> None:
    import json
    import re

    path = Path(__file__).parent.parent / "deploy" / "grafana" / "telemetry-collection.json"
    dashboard = json.loads(path.read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"dwcp_telemetry_[a-z_]+", target["expr"]))
    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry)
    metrics.dropped.labels("queue_full").inc()
    metrics.flush_latency.observe(0.01)
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    assert used and used <= exported, used - exported


def test_an_unwritable_spill_loses_only_what_it_must_and_the_writer_lives_on(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("not a directory")  # the store is down
    spill_blocker = tmp_path / "spill"
    spill_blocker.write_text("not a directory")  # and the spill file cannot be written either
    url = f"sqlite:///{blocker}/t.db"
    with TelemetryCollector(url, enabled=True, spill_path=spill_blocker / "spill.bin") as c:
        for r in recs(200):
            assert c.record(r)
        c.flush()
        assert c.written == 0 and c.dropped["spill_error"] == 200 and c.errors >= 2
        assert c._thread.is_alive()  # the writer survived the OSError
        blocker.unlink()  # the store is back: new records reach it though the spill is still broken
        for r in recs(100, offset=200):
            c.record(r)
        deadline = time.monotonic() + 10
        while c.written < 100 and time.monotonic() < deadline:
            c._next_retry = 0.0
            c.flush()
            time.sleep(0.05)
    assert c.written == 100 and c.dropped["spill_error"] == 200
    assert c.stats()["dropped"]["spill_error"] == 200
    with open_store(url) as s:
        assert s.count() == 100


def test_a_torn_spill_tail_is_cut_and_the_whole_batches_replayed(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker}/t.db"
    spill = tmp_path / "spill.bin"
    with TelemetryCollector(url, enabled=True, spill_path=spill, batch_size=100) as c:
        for r in recs(300):
            c.record(r)
        c.flush()
        assert c.spilled == 300
    size = spill.stat().st_size
    with spill.open("r+b") as f:
        f.truncate(size - 7)  # the last batch torn, as a kill mid-append leaves it
    blocker.unlink()
    with TelemetryCollector(url, enabled=True, spill_path=spill, batch_size=100) as c:
        c.record(recs(1, offset=1000)[0])
        deadline = time.monotonic() + 10
        while not c.written and time.monotonic() < deadline:
            c.flush()
            time.sleep(0.05)
    assert c.dropped["spill_torn_batches"] == 1 and c.replayed in (200, 299)
    assert not spill.exists() and not list(tmp_path.glob("spill.bin.damaged-*"))
    with open_store(url) as s:
        assert s.count() == c.replayed + 1


def test_close_right_after_the_store_returns_replays_the_spill(pg_url: str, tmp_path: Path) -> None:
    """close() flushes: the store came back while the retry back-off still runs, and close writes the
    spill anyway (0 lost)."""
    relay = Relay(("127.0.0.1", 5432))
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    with open_store(pg_url):
        pass
    relay.down()
    c = TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", batch_size=200)
    try:
        for r in recs(1500):
            c.record(r)
        c.flush()
        assert c.spilled == 1500 and c.written == 0
        c._retry_s = 60.0  # a long back-off: the writer would not try the store again for a minute
        c._next_retry = time.monotonic() + 60.0
        relay.up()
        for r in recs(500, offset=1500):
            c.record(r)
        t0 = time.monotonic()
        c.close(timeout=30)
        assert time.monotonic() - t0 < 30
    finally:
        relay.down()
    assert c.written == 2000 and not (tmp_path / "spill.bin").exists()
    with open_store(pg_url) as s:
        assert s.count() == 2000


KILLED = """
import sys, time
from tests.conftest import full_record
import datetime as dt
from dwcp_selector.telemetry.collector import TelemetryCollector
url, spill, durable, n = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
c = TelemetryCollector(url, enabled=True, spill_path=spill, durable=durable)
accepted = sum(c.record(full_record(i, now + dt.timedelta(seconds=i))) for i in range(n))
print(accepted, flush=True)
time.sleep(60)  # killed here, the writer still waiting for the locked store
"""


@pytest.mark.parametrize("durable", [True, False])
def test_sigkill_loses_the_queue_unless_durable(tmp_path: Path, durable: bool) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    with open_store(url):
        pass  # migrated
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the store is busy: the child's writer waits, records pile up
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, url, str(tmp_path / "spill.bin"), "1" if durable else "0", "1500"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        assert child.stdout is not None
        accepted = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        lock.execute("ROLLBACK")
        lock.close()
    assert accepted == 1500
    with TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", durable=durable) as c:
        c.flush()
    with open_store(url) as s:
        stored = s.count()
    if durable:
        assert stored == accepted and c.written == accepted  # nothing accepted is lost, nothing twice
        assert not list(tmp_path.glob("spill.bin.journal.*"))  # finished segments are gone
    else:
        assert accepted - stored <= 1500  # at most the queue: here all of it, the writer was blocked
        assert stored == 0


def test_durable_collector_writes_and_leaves_no_journal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with TelemetryCollector(
        url, enabled=True, spill_path=tmp_path / "spill.bin", durable=True, journal_segment_bytes=4096
    ) as c:
        for r in recs(400):
            assert c.record(r)
        c.flush()
        assert c.written == 400
    assert not list(tmp_path.glob("spill.bin.journal.*"))
    with pytest.raises(ConfigError, match="durable collector needs a spill_path"):
        TelemetryCollector(url, enabled=True, durable=True)


def test_a_locked_store_is_spilled_not_counted_as_a_full_spill(tmp_path: Path) -> None:
    """A batch refused after SQLite's busy timeout goes to the spill (reason: the store), and with no
    spill file it is dropped as no_spill: never spill_full."""
    import sqlite3

    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    with open_store(url):
        pass
    store = SqliteStore(url)
    store._db.execute("PRAGMA busy_timeout=200")  # a short busy timeout, for the test
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with TelemetryCollector(store, enabled=True) as c:
            for r in recs(100):
                c.record(r)
            c.flush()
            assert c.dropped["no_spill"] == 100 and c.dropped["spill_full"] == 0, c.dropped
        with TelemetryCollector(store, enabled=True, spill_path=tmp_path / "spill.bin") as c:
            for r in recs(100, offset=100):
                c.record(r)
            c.flush()
            assert c.spilled == 100 and c.dropped["spill_full"] == 0, c.dropped
            lock.execute("ROLLBACK")
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
        store.close()
    assert c.written == 100


FULL_SPEED = """
import sys, time
import datetime as dt
from tests.conftest import full_record
from dwcp_selector.telemetry.collector import TelemetryCollector
url, spill, durable = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
n, queue = int(sys.argv[4]), int(sys.argv[5])
now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
c = TelemetryCollector(
    url, enabled=True, spill_path=spill, durable=durable, queue_size=queue, batch_size=500
)
accepted = 0
for i in range(n):
    accepted += c.record(full_record(i, now + dt.timedelta(seconds=i)))
    if durable and accepted % 100 == 0:
        print(accepted, flush=True)  # durable: every record() up to here returned True
print("done", accepted, flush=True)
time.sleep(60)  # killed here
"""


def _full_speed_child(url: str, spill: Path, durable: bool, n: int, queue: int) -> Any:
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", FULL_SPEED, url, str(spill), "1" if durable else "0", str(n), str(queue)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _stored_ids(url: str) -> list[str]:
    with open_store(url) as s:
        return [str(v) for v in s.read_table(["request_id"]).column("request_id").to_pylist()]


def test_durable_sigkill_mid_burst_with_a_working_store_loses_nothing_and_resends_little(
    tmp_path: Path,
) -> None:
    """Killed while recording at full speed and writing: the next collector replays the journal from the
    committed offset, so every accepted record is stored once and at most one batch is sent again."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    with open_store(url):
        pass
    child = _full_speed_child(url, tmp_path / "spill.bin", True, 10_000_000, 100_000)
    assert child.stdout is not None
    try:
        printed = 0
        for line in child.stdout:
            printed = int(line)
            if printed >= 4000:
                break
        child.kill()  # SIGKILL, in the middle of the burst
        child.wait(10)
        for line in child.stdout.read().split():
            if line.isdigit():
                printed = int(line)  # lines written before it died: each record() had returned True
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    before = len(_stored_ids(url))  # what the child's writer had stored
    with TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", durable=True) as c:
        assert c.flush(30)
    ids = _stored_ids(url)
    m = len(ids)
    assert printed <= m <= printed + 100  # the accepted records are a prefix: all there, once each
    assert sorted(ids) == [f"req-{i:08d}" for i in range(m)]
    assert c.written == m - before and c.duplicates <= 500  # at most the batch whose commit was cut
    assert c.dropped["journal_torn"] <= 1  # a record() the kill cut short (it never returned True)
    assert not list(tmp_path.glob("spill.bin.journal.*"))


def test_default_sigkill_at_full_speed_loses_at_most_the_queue_and_a_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with open_store(url):
        pass
    queue = 2000
    child = _full_speed_child(url, tmp_path / "spill.bin", False, 30_000, queue)
    assert child.stdout is not None
    try:
        word, accepted = child.stdout.readline().split()
        child.kill()  # right after the burst: the queue is as full as it gets
        child.wait(10)
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    assert word == "done"
    lost = int(accepted) - len(_stored_ids(url))
    assert 0 <= lost <= queue + 500  # what was queued, plus the batch being written
    assert lost > 0  # the default mode does lose the queue to a SIGKILL: that is what durable is for


def test_durable_accepts_past_a_full_queue_and_writes_it_all(tmp_path: Path) -> None:
    store = GatedStore(f"sqlite:///{tmp_path / 't.db'}")
    c = TelemetryCollector(
        store, enabled=True, spill_path=tmp_path / "spill.bin", durable=True, queue_size=10, batch_size=25
    )
    try:
        assert all(c.record(r) for r in recs(300))  # the writer is stalled; the journal holds them
        assert c.dropped["queue_full"] == 0
        store.gate.set()
        assert c.close(30)
    finally:
        store.gate.set()
    assert store.count() == 300 and c.written == 300 and c.duplicates == 0
    assert c.replayed > 0  # those past the queue came back from the journal
    assert not list(tmp_path.glob("spill.bin.journal.*"))
    store.close()


def test_one_journal_one_collector(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", durable=True):
        with pytest.raises(ConfigError, match="held by another live collector"):
            TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", durable=True)
    with TelemetryCollector(url, enabled=True, spill_path=tmp_path / "spill.bin", durable=True) as c:
        assert c.record(recs(1)[0])  # released by close()


def _locked(db: Path) -> Any:
    import sqlite3

    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    return lock


def test_a_torn_journal_tail_is_counted_and_the_rest_replayed(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    store = SqliteStore(url)
    store._db.execute("PRAGMA busy_timeout=100")
    lock = _locked(db)
    spill = tmp_path / "spill.bin"
    try:
        c = TelemetryCollector(store, enabled=True, spill_path=spill, durable=True)
        assert all(c.record(r) for r in recs(200))
        c.close(timeout=5)  # the store stays locked: the records stay in the journal
        assert c.written == 0 and c.stats()["journal_bytes"] > 0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    segments = sorted(tmp_path.glob("spill.bin.journal.0*"))
    with segments[-1].open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # a frame cut short, as a kill inside record() leaves it
    c = TelemetryCollector(store, enabled=True, spill_path=spill, durable=True)
    assert c.flush(30) and c.close(30)
    assert c.written == 200 and c.replayed == 200 and c.dropped["journal_torn"] == 1
    assert store.count() == 200
    assert not list(tmp_path.glob("spill.bin.journal.*"))
    store.close()


class FlakyStore(SqliteStore):
    """A real SQLite store that fails the writes whose numbers are in ``fail`` (a server going away)."""

    def __init__(self, url: str, fail: set[int]) -> None:
        super().__init__(url)
        self.fail = fail
        self.calls = 0

    def write_batch(self, records: Any) -> int:
        self.calls += 1
        if self.calls in self.fail:
            from dwcp_selector.errors import StoreUnavailableError

            raise StoreUnavailableError(f"write {self.calls} refused")
        return super().write_batch(records)


def test_a_replay_cut_midway_resumes_and_counts_each_row_once(tmp_path: Path) -> None:
    """The store fails during the replay: the next attempt resumes after the batches already stored,
    so ``replayed`` and ``written`` count each record once and match the store."""
    store = FlakyStore(f"sqlite:///{tmp_path / 't.db'}", fail={1, 2, 3, 4, 5, 8})
    with TelemetryCollector(
        store, enabled=True, spill_path=tmp_path / "spill.bin", batch_size=100, flush_interval_s=0.01
    ) as c:
        for k in range(5):
            for r in recs(100, offset=100 * k):
                c.record(r)
            assert c.flush()
            c._next_retry = 0.0  # try the store for every batch: writes 1 to 5 fail, 5 batches spilled
        assert c.spilled == 500 and c.written == 0
        c._next_retry = 0.0
        for r in recs(100, offset=500):
            c.record(r)  # replay: batches 1 and 2 stored (writes 6, 7), write 8 fails: these spilled
        assert c.flush()
        assert c.replayed == 200 and c.written == 200 and c.spilled == 600
    # close replays batches 3 to 6 (writes 9 to 12), not 1 and 2 again
    assert c.replayed == 600 and c.written == 600 and c.duplicates == 0 and store.calls == 12
    assert store.count() == 600 and not (tmp_path / "spill.bin").exists()
    store.close()


def test_close_timeout_bounds_a_store_that_stays_locked(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    store = SqliteStore(url)
    store._db.execute("PRAGMA busy_timeout=2000")
    lock = _locked(db)
    try:
        c = TelemetryCollector(store, enabled=True, spill_path=tmp_path / "spill.bin", batch_size=100)
        for r in recs(300):
            c.record(r)
        t0 = time.monotonic()
        assert c.close(timeout=0.5) is False  # the writer is inside a 2 s lock wait
        assert time.monotonic() - t0 < 1.5
        assert c.record(recs(1, offset=999)[0]) is False and c.dropped["closed"] == 1
        c._thread.join(30)  # it finishes in the background: spills instead of trying the store again
        assert not c._thread.is_alive()
        assert c.written == 0 and c.spilled == 300
        assert c.dropped["spill_full"] == 0 and c.dropped["no_spill"] == 0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    with TelemetryCollector(store, enabled=True, spill_path=tmp_path / "spill.bin") as c2:
        pass  # close() replays the spill at once
    assert c2.written == 300 and store.count() == 300
    store.close()
