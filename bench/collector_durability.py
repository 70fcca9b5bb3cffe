"""The telemetry collector's durability: what ``record()`` costs in durable mode, and what a SIGKILL loses.

``cost``: ``record()`` wall time per record, default (queue in memory) against durable (each record
appended to the journal and fsynced before ``record()`` returns), on a SQLite store in a temporary
directory on this machine's disk; median of ``--repeats`` runs of ``--records`` records.

``kill``: a child process records at ``--rate`` records/s into a working SQLite store and is killed
with SIGKILL after ``--seconds``; a new collector on the same spill path is then closed, and the store is
counted: lost = accepted - stored. Medians over ``--repeats`` kills.

    python bench/collector_durability.py [--records 2000] [--repeats 5] [--rate 3000] [--seconds 2]

Prints a table and writes ``bench/results/collector_durability.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write
from dwcp_selector.telemetry.collector import TelemetryCollector
from dwcp_selector.telemetry.store import open_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import full_record  # noqa: E402  (the same complete record the tests use)

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)

CHILD = """
import sys, time
import datetime as dt
from tests.conftest import full_record
from dwcp_selector.telemetry.collector import TelemetryCollector
url, spill, durable, rate = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
c = TelemetryCollector(url, enabled=True, spill_path=spill, durable=durable)
print("ready", flush=True)
t0 = time.perf_counter()
i = 0
while True:
    if c.record(full_record(i, now + dt.timedelta(seconds=i))):
        i += 1
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
    pause = t0 + i / rate - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
"""


def cost(records: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    recs = [full_record(i, NOW + dt.timedelta(seconds=i)) for i in range(records)]
    for durable in (False, True):
        per: list[float] = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/t.db"
                with TelemetryCollector(
                    url, enabled=True, spill_path=f"{tmp}/spill.bin", durable=durable
                ) as c:
                    t0 = time.perf_counter()
                    for r in recs:
                        c.record(r)
                    per.append((time.perf_counter() - t0) / records)
                    c.flush()
                    assert c.written == records
        out["durable" if durable else "default"] = {
            "us_per_record_median": statistics.median(per) * 1e6,
            "records_per_s": 1 / statistics.median(per),
        }
    return out


def _kill_once(durable: bool, rate: float, seconds: float) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        url, spill = f"sqlite:///{tmp}/t.db", f"{tmp}/spill.bin"
        with open_store(url):
            pass
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, spill, "1" if durable else "0", str(rate)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        end = time.monotonic() + seconds
        accepted = 0
        for line in child.stdout:
            accepted = int(line)
            if time.monotonic() >= end:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # lines the child wrote before it died count too: each is a record() that returned True
        rest = child.stdout.read().split()
        accepted = int(rest[-1]) if rest else accepted
        child.stdout.close()
        with TelemetryCollector(url, enabled=True, spill_path=spill, durable=durable) as c:
            c.flush()
        with open_store(url) as s:
            stored = s.count()
    return {"accepted": accepted, "stored": stored, "lost": accepted - stored}


def kill(rate: float, seconds: float, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for durable in (False, True):
        runs = [_kill_once(durable, rate, seconds) for _ in range(repeats)]
        out["durable" if durable else "default"] = {
            "runs": runs,
            "lost_median": statistics.median(r["lost"] for r in runs),
            "lost_max": max(r["lost"] for r in runs),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rate", type=float, default=3000.0)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    m = machine()
    print(f"{m['cpu']} ({m['cores']} cores), Python {m['python']}, {m['date']}")
    c = cost(args.records, args.repeats)
    k = kill(args.rate, args.seconds, args.repeats)
    print(f"\n{'mode':8} {'record() µs':>12} {'records/s':>10} {'SIGKILL lost (median / max)':>28}")
    for mode in ("default", "durable"):
        print(
            f"{mode:8} {c[mode]['us_per_record_median']:12.1f} {c[mode]['records_per_s']:10.0f} "
            f"{k[mode]['lost_median']:>17} / {k[mode]['lost_max']}"
        )
    doc = {"machine": m, "args": vars(args), "cost": c, "kill": k}
    print(f"\nwrote {write('collector_durability', doc)}")


if __name__ == "__main__":
    main()
