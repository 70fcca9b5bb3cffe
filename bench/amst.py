"""AMST over loopback: 1 GiB through 8 parallel streams, reassembled and verified by the receiver.

Measures wall time and throughput per strategy (medians of repeats), the wire bytes, and checks that a
stream killed mid-transfer ends in a clear error on both sides. Loopback has no real bandwidth limit, so
this measures the transport's own cost (framing, checksums, encoding on the stream threads), not a link.

    python bench/amst.py [--gib 1] [--streams 8] [--repeats 3]

Prints a table and writes ``bench/results/amst.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.errors import StreamBrokenError
from dwcp_selector.transport import AmstReceiver, AmstSender, Insecure
from dwcp_selector.workload import logs_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_transport import KillingProxy  # noqa: E402  (the same cutting relay the tests use)

MiB = 1 << 20


def payload(gib: float, kind: str) -> bytes:
    rng = np.random.default_rng(7)
    size = int(gib * (1 << 30))
    if kind == "random":
        return rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    block = logs_json(64 * MiB, rng)
    return (block * (size // len(block) + 1))[:size]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with AmstReceiver(
        ("127.0.0.1", 0), security=Insecure(), max_payload=int((args.gib + 1) * (1 << 30)), timeout_s=120
    ) as rx:
        sender = AmstSender(rx.address, timeout_s=120, security=Insecure())
        for kind, strategies in (("random", ("none", "lz4")), ("logs", ("none", "lz4", "zstd"))):
            data = payload(args.gib, kind)
            for strategy in strategies:
                times = []
                wire = 0
                for _ in range(args.repeats):
                    report = sender.send(data, strategy, streams=args.streams)
                    got = rx.wait(report.transfer_id, timeout=300)
                    assert got.data == data, "payload differs after reassembly"
                    del got
                    times.append(report.elapsed_s)
                    wire = report.wire_bytes
                t = statistics.median(times)
                rows.append(
                    {
                        "payload": kind,
                        "bytes": len(data),
                        "strategy": strategy,
                        "streams": args.streams,
                        "seconds_median": t,
                        "throughput_mb_s": len(data) / t / 1e6,
                        "wire_bytes": wire,
                        "verified": True,
                    }
                )
                mb_s = len(data) / t / 1e6
                print(
                    f"{kind} {strategy}: {len(data) / MiB:.0f} MiB in {t:.2f} s, {mb_s:.0f} MB/s",
                    file=sys.stderr,
                )
            del data
        # one stream cut halfway through its share of the transfer
        data = payload(args.gib, "random")
        cut = len(data) // args.streams // 2
        proxy = KillingProxy(rx.address, victim=3, after_bytes=cut)
        tid = uuid.uuid4()
        kill: dict[str, Any] = {"payload_bytes": len(data), "cut_after_bytes": cut}
        try:
            AmstSender(proxy.address, timeout_s=60, security=Insecure()).send(
                data, "none", streams=args.streams, transfer_id=tid
            )
            kill["sender"] = "no error (defect)"
        except StreamBrokenError as exc:
            kill["sender"] = f"{type(exc).__name__}: {exc}"
        try:
            rx.wait(tid, timeout=60)
            kill["receiver"] = "no error (defect)"
        except StreamBrokenError as exc:
            kill["receiver"] = f"{type(exc).__name__}: {exc}"
        proxy.close()
    head = ("payload", "strategy", "MiB", "streams", "s (median)", "MB/s", "wire MiB")
    print("\n{:8} {:8} {:>7} {:>7} {:>10} {:>7} {:>9}".format(*head))
    for r in rows:
        cells = (r["payload"], r["strategy"], r["bytes"] / MiB, r["streams"], r["seconds_median"])
        print("{:8} {:8} {:7.0f} {:7d} {:10.2f}".format(*cells), end=" ")
        print(f"{r['throughput_mb_s']:7.0f} {r['wire_bytes'] / MiB:9.1f}")
    print("\nkilled stream:")
    print("  sender:  ", kill["sender"])
    print("  receiver:", kill["receiver"])
    path = write("amst", {"machine": machine(), "rows": rows, "killed_stream": kill})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
