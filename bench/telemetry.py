"""The telemetry collector's cost on the transfer path, collector on against off in the same run.

For each store (SQLite, PostgreSQL), a caller records at ``--rate`` records/s for ``--seconds``, first
with the collector off, then on. Reported:

* the caller's latency of ``record()`` (p50, p99, max) with the collector off and on;
* the collector's whole CPU per record, writer thread included: process CPU on − off, over the records,
  the median of ``--repeats`` alternating off/on pairs;
* that CPU against the encode CPU of the median staging transfer (median over the staging payloads of
  zstd's encode CPU seconds; zstd is the baseline encoder) when ``--staging-store`` is given;
* with ``--pg-restart``: a third run into PostgreSQL, during which the server is stopped a third of the
  way in and started again at two thirds; afterwards every record sent is counted in the store. (The
  CPU and latency figures come from the uninterrupted run: spilling and replaying cost extra, by design.)

    python bench/telemetry.py [--rate 10000] [--seconds 30] [--repeats 3] [--pg-restart] [--staging-store URL]

Prints a table and writes ``bench/results/telemetry.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.telemetry.collector import TelemetryCollector
from dwcp_selector.telemetry.schema import COLUMNS, Kind
from dwcp_selector.telemetry.store import open_store

PG_DSN = os.environ.get("DWCP_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def template() -> dict[str, Any]:
    sample = {
        Kind.TEXT: "staging",
        Kind.INT: 123456,
        Kind.REAL: 0.123456789,
        Kind.BOOL: True,
        Kind.TIME: None,
    }
    rec = {c.name: sample[c.kind] for c in COLUMNS}
    rec.update(
        f_link_type="wan", oracle_label="zstd", session_id="bench-session", payload_group_id="bench/v0"
    )
    return rec


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def drive(
    collector: TelemetryCollector, rate: int, seconds: float, run: str, events: dict[float, Any]
) -> dict[str, Any]:
    """Call ``record`` ``rate`` times a second, in 1 ms ticks; returns latencies and CPU."""
    base = template()
    per_tick = max(1, rate // 1000)
    lat = np.empty(int(rate * seconds) + per_tick, dtype=np.float64)
    n = 0
    pending = sorted(events.items())
    start_cpu = cpu_s()
    t_start = time.perf_counter()
    tick = 0
    now = dt.datetime.now(dt.UTC)
    while True:
        elapsed = time.perf_counter() - t_start
        if elapsed >= seconds:
            break
        while pending and elapsed >= pending[0][0]:
            pending.pop(0)[1]()  # a scheduled action (stopping or starting the server)
        for _ in range(per_tick):
            rec = dict(base)
            rec["request_id"] = f"{run}-{n}"
            rec["ts"] = now
            t0 = time.perf_counter()
            collector.record(rec)
            lat[n] = time.perf_counter() - t0
            n += 1
        tick += 1
        delay = t_start + tick / 1000.0 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    loop_s = time.perf_counter() - t_start
    t0 = time.perf_counter()
    collector.close(timeout=300)
    close_s = time.perf_counter() - t0
    cpu = cpu_s() - start_cpu
    lat = lat[:n]
    return {
        "records": n,
        "loop_s": loop_s,
        "achieved_rate": n / loop_s,
        "close_s": close_s,
        "cpu_s": cpu,
        "latency_us": {
            "p50": float(np.percentile(lat, 50) * 1e6),
            "p99": float(np.percentile(lat, 99) * 1e6),
            "p999": float(np.percentile(lat, 99.9) * 1e6),
            "max": float(lat.max() * 1e6),
        },
    }


def pg_cluster_action(action: str) -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise SystemExit("--pg-restart needs pg_ctlcluster (Debian's PostgreSQL) on this machine")
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]
    if action == "stop":
        cmd += ["-m", "fast"]
    subprocess.run(cmd, check=True, capture_output=True)


def wait_pg(timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            psycopg.connect(PG_DSN, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise SystemExit("PostgreSQL did not come back")


def median_staging_encode(url: str) -> dict[str, float]:
    with open_store(url) as store:
        t = store.read_table(
            [
                "payload_group_id",
                "o_zstd_encode_s",
                "oracle_label",
                "o_none_encode_s",
                "o_lz4_encode_s",
                "o_hde_encode_s",
            ]
        )
    groups = np.asarray(t.column("payload_group_id").to_pylist(), dtype=object)
    _, first = np.unique(groups, return_index=True)
    zstd = np.asarray(t.column("o_zstd_encode_s").to_pylist(), dtype=float)[first]
    labels = t.column("oracle_label").to_pylist()
    chosen = [t.column(f"o_{lab}_encode_s")[i].as_py() for i, lab in enumerate(labels)]
    return {
        "median_zstd_encode_s": float(np.nanmedian(zstd)),
        "median_chosen_encode_s": float(np.nanmedian(np.asarray(chosen, dtype=float))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--pg-restart", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="off/on pairs per store; medians are reported")
    ap.add_argument("--staging-store", help="store of staging data, for the median transfer's encode CPU")
    args = ap.parse_args()
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "stores": {}}
    if args.staging_store:
        results["staging"] = median_staging_encode(args.staging_store)
    tmp = Path(tempfile.mkdtemp(prefix="dwcp-bench-"))
    for kind in args.stores.split(","):
        if kind == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            url = f"{PG_DSN}?schema=bench_{uuid.uuid4().hex[:8]}"
        open_store(url).close()  # migrations done before timing
        pairs = []
        for rep in range(args.repeats):  # off and on alternate, so drift of the machine hits both
            off = drive(
                TelemetryCollector(url, enabled=False), args.rate, args.seconds, f"off{rep}-{kind}", {}
            )
            collector = TelemetryCollector(url, enabled=True, spill_path=tmp / f"spill-{kind}.bin")
            on = drive(collector, args.rate, args.seconds, f"on{rep}-{kind}", {})
            pairs.append((off, on, (on["cpu_s"] - off["cpu_s"]) / on["records"] * 1e6, collector.stats()))
        with open_store(url) as store:
            stored = store.count()
        per_record = sorted(p[2] for p in pairs)
        per_record_us = statistics.median(per_record)
        off, on, _, stats = sorted(pairs, key=lambda p: p[2])[len(pairs) // 2]  # the median pair
        row = {
            "store": kind,
            "off": off,
            "on": on,
            "collector_cpu_per_record_us": per_record_us,
            "collector_cpu_per_record_us_runs": per_record,
            "p99_on_us_runs": sorted(p[1]["latency_us"]["p99"] for p in pairs),
            "records_sent": sum(p[1]["records"] for p in pairs),
            "records_in_store": stored,
            "collector": stats,
        }
        if kind == "postgres" and args.pg_restart:
            # stop and start in a thread of their own: pg_ctlcluster takes a second, the caller must not wait
            events = {
                args.seconds / 3: lambda: threading.Thread(target=pg_cluster_action, args=("stop",)).start(),
                2 * args.seconds / 3: lambda: threading.Thread(
                    target=pg_cluster_action, args=("start",)
                ).start(),
            }
            restart = TelemetryCollector(url, enabled=True, spill_path=tmp / "spill-restart.bin")
            r = drive(restart, args.rate, args.seconds, "restart-postgres", events)
            wait_pg()
            with open_store(url) as store:
                in_store = sum(
                    1
                    for i in store.read_table(["request_id"]).column("request_id").to_pylist()
                    if i.startswith("restart-postgres-")
                )
            row["restart"] = {
                "records_sent": r["records"],
                "records_in_store": in_store,
                "latency_us": r["latency_us"],
                "collector": restart.stats(),
            }
        if kind == "postgres":
            with open_store(url) as store:
                store.drop_all()  # type: ignore[attr-defined]
        if "staging" in results:
            row["cpu_share_of_median_zstd_encode"] = (
                per_record_us / 1e6 / results["staging"]["median_zstd_encode_s"]
            )
        results["stores"][kind] = row
        print(f"{kind}: done", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    head = (
        "store",
        "rate/s",
        "p50 off",
        "p99 off",
        "p50 on",
        "p99 on",
        "max on",
        "cpu/rec",
        "sent",
        "stored",
    )
    print("\n{:9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}".format(*head))
    for kind, r in results["stores"].items():
        off, on = r["off"]["latency_us"], r["on"]["latency_us"]
        cells = (kind, r["on"]["achieved_rate"], off["p50"], off["p99"], on["p50"], on["p99"], on["max"])
        print("{:9} {:8.0f} {:7.2f}µ {:7.2f}µ {:7.2f}µ {:7.2f}µ {:7.0f}µ".format(*cells), end=" ")
        print(f"{r['collector_cpu_per_record_us']:7.2f}µ {r['records_sent']:9d} {r['records_in_store']:9d}")
    for kind, r in results["stores"].items():
        if "restart" in r:
            x = r["restart"]
            print(
                f"\n{kind} stopped and restarted during a run: {x['records_sent']:,} sent, "
                f"{x['records_in_store']:,} in the store; spilled {x['collector']['spilled']:,}, "
                f"replayed {x['collector']['replayed']:,}, dropped {x['collector']['dropped']}; "
                f"caller p99 {x['latency_us']['p99']:.1f} µs"
            )
    if "staging" in results:
        s = results["staging"]
        print(
            f"\nmedian staging transfer: zstd encode {s['median_zstd_encode_s'] * 1e6:.0f} µs; "
            f"encode of the oracle's choice {s['median_chosen_encode_s'] * 1e6:.0f} µs"
        )
        for kind, r in results["stores"].items():
            print(f"  {kind}: collector CPU per record = {r['cpu_share_of_median_zstd_encode']:.2%} of it")
    path = write("telemetry", {"machine": machine(), **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
