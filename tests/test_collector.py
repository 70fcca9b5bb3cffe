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
    assert registry.get_sample_value("dwcp_telemetry_flush_latency_seconds_count") >= 1
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
    # a batch cut mid-commit may be written twice; the store keeps each request id once
    assert c.written >= 3000 and c.dropped["spill_full"] == 0 and c.dropped["queue_full"] == 0
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
