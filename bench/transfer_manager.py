"""What the transfer manager adds to a transfer: on the decision (the light decision alone, through
GuardedSelector, through TransferManager.decide) and on the whole send over loopback (the bare AMST send
against TransferManager.send with its telemetry record queued to a SQLite collector).

    python bench/transfer_manager.py [--calls 3000] [--repeats 7] [--sends 60]

Prints a table and writes ``bench/results/transfer_manager.json``. Decision rows: median over repeats of
the median per call, the three measured in turn within each repeat, so their differences come from one
run. The payload is a 4 MiB JSON log on a WAN link: the shipped model decides it on the light tier.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.link import SystemState, link_from_class
from dwcp_selector.serving import DecisionCache, GuardedSelector, Selector, TransferManager
from dwcp_selector.telemetry import TelemetryCollector
from dwcp_selector.transport import AmstReceiver, AmstSender, Insecure
from dwcp_selector.workload import logs_json

ROOT = Path(__file__).resolve().parent.parent
LINK = link_from_class("wan")
SYSTEM = SystemState(free_cores=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def per_call(fn: Callable[[], Any], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sends", type=int, default=60)
    args = ap.parse_args()
    payload = logs_json(4 << 20, np.random.default_rng(4))
    sel = Selector(ROOT / "models" / "selector", host_profile=None)
    guarded = GuardedSelector(sel)
    assert sel.decider.tier_of(sel.decider.transmit_s(len(payload), LINK)) == "light"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bench measures on loopback without authentication
        rx_sec, tx_sec = Insecure(), Insecure()
    rx = AmstReceiver(security=rx_sec)
    rx.start()
    tx = AmstSender(rx.address, security=tx_sec)
    tmp = tempfile.TemporaryDirectory()
    collector = TelemetryCollector(f"sqlite:///{tmp.name}/bench.db", enabled=True)
    manager = TransferManager(tx, guarded, collector=collector, audit_rate=0.0, host_profile=None)
    manager.send(payload, LINK, SYSTEM, payload_type="logs_json", resource_id="log")  # history known

    decide: dict[str, list[float]] = {
        "Selector.select": [],
        "GuardedSelector.select": [],
        "TransferManager.decide": [],
    }
    calls = {
        "Selector.select": lambda: sel.select(payload, LINK, SYSTEM, payload_type="logs_json"),
        "GuardedSelector.select": lambda: guarded.select(payload, LINK, SYSTEM, payload_type="logs_json"),
        "TransferManager.decide": lambda: manager.decide(
            payload, LINK, SYSTEM, payload_type="logs_json", resource_id="log"
        ),
    }
    decide: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, fn in calls.items():
            decide[name].append(per_call(fn, args.calls))
    us = {k: statistics.median(v) * 1e6 for k, v in decide.items()}
    added = [
        (m - s) * 1e6
        for m, s in zip(decide["TransferManager.decide"], decide["Selector.select"], strict=True)
    ]

    bare: list[float] = []
    managed: list[float] = []
    strategies: set[str] = set()
    for _ in range(args.sends):
        t0 = time.perf_counter()
        res = manager.send(payload, LINK, SYSTEM, payload_type="logs_json", resource_id="log")
        managed.append(time.perf_counter() - t0)
        assert res.report is not None
        rx.wait(res.report.transfer_id)
        strategies.add(res.strategy)
        t0 = time.perf_counter()  # the same strategy, sent bare
        r = tx.send(payload, res.strategy, link=LINK, payload_type="logs_json")
        bare.append(time.perf_counter() - t0)
        rx.wait(r.transfer_id)
    # Redis down (a port nobody listens on, and one that accepts but never answers): the longest any
    # transfer waited for the cache, over transfers of resources the node has not seen
    waits: dict[str, float] = {}
    hung = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and never answers
    dead_port = _free_port()
    for name, url in (
        ("refused", f"redis://127.0.0.1:{dead_port}/0"),
        ("hung", f"redis://127.0.0.1:{hung.getsockname()[1]}/0"),
    ):
        cache = DecisionCache(url, namespace="bench")
        down = TransferManager(
            tx, guarded, collector=collector, audit_rate=0.0, host_profile=None, cache=cache
        )
        for i in range(args.sends // 4):
            res = down.send(payload, LINK, SYSTEM, payload_type="logs_json", resource_id=f"{name}-{i}")
            assert res.report is not None
            rx.wait(res.report.transfer_id)
        waits[name] = down.cache_wait_max_s
        cache.close()
    hung.close()
    collector.close()
    rx.close()
    tmp.cleanup()
    send_ms = {
        "AmstSender.send": statistics.median(bare) * 1e3,
        "TransferManager.send": statistics.median(managed) * 1e3,
    }
    chosen = "/".join(sorted(strategies))

    print(f"\n{'decision (4 MiB logs, wan, light tier)':40} {'µs (median)':>12}")
    for name, v in us.items():
        print(f"{name:40} {v:12.2f}")
    print(f"{'added by the manager (per repeat, median)':40} {statistics.median(added):12.2f}")
    print(f"\n{'whole send over loopback (' + chosen + ')':40} {'ms (median)':>12}")
    for name, v in send_ms.items():
        print(f"{name:40} {v:12.3f}")
    doc = {
        "machine": machine(),
        "args": vars(args),
        "decision_us_median": us,
        "decision_us_added_by_manager": {"median": statistics.median(added), "per_repeat": added},
        "send_ms_median": send_ms,
        "send_strategies": sorted(strategies),
        "redis_down_longest_wait_ms": {k: v * 1e3 for k, v in waits.items()},
        "payload": {"kind": "logs_json", "bytes": len(payload)},
    }
    path = write("transfer_manager", doc)
    for name, w in waits.items():
        print(f"Redis {name}: the longest wait of a transfer for the cache {w * 1e3:.2f} ms")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
