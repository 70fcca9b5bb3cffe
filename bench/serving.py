"""The HTTP service under load (wrk), with the in-process decision beside it.

Starts ``dwcp-selector serve --model models/selector`` (one uvicorn worker) on a loopback port and drives it
with ``wrk`` (Debian's package; it measures the most the service sustains, not fixed offered rates, which
would need wrk2) for ``--seconds`` per case: single decisions from precomputed statistics, single
decisions from a 64 KiB sample, and batches of 100. The load generator shares the machine's cores with
the service (``--wrk-threads``, pinned with taskset to the last core when there are two or more; the
service to the others). In-process figures beside them: ``Decider.decide_features`` (what the service
runs per decision) and ``Selector.select`` on the payload itself, p50/p99 over ``--calls`` calls.

    python bench/serving.py [--seconds 10] [--connections 32] [--calls 20000]

Prints a table and writes ``bench/results/serving.json``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.features import basic_features
from dwcp_selector.link import SystemState, link_from_class
from dwcp_selector.serving import Selector
from dwcp_selector.workload import logs_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
WAN = {"capacity_bps": 316e6, "rtt_s": 0.063, "loss": 2e-4, "utilization": 0.45, "link_type": "wan"}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cores: list[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores))] if shutil.which("taskset") and cores else []


def _wrk(
    url: str, body: dict[str, Any], args: argparse.Namespace, cores: list[int], tmp: Path
) -> dict[str, Any]:
    body_path = tmp / f"body-{len(os.listdir(tmp))}.json"
    body_path.write_text(json.dumps(body))
    script = tmp / f"{body_path.stem}.lua"
    script.write_text(LUA.format(body=body_path))
    cmd = [
        *_pin(cores),
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{args.seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[f"p{pct}_ms"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": rps,
        **lat,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.array(times) * 1e6
    return {
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
        "p999_us": float(np.percentile(a, 99.9)),
    }


def in_process(calls: int) -> dict[str, Any]:
    sel = Selector(MODEL, host_profile=None)
    payload = logs_json(4 << 20, np.random.default_rng(1))
    link, system = link_from_class("wan"), SystemState(free_cores=2)
    basic = dataclasses.replace(basic_features(payload[: 64 << 10]), payload_bytes=len(payload))
    out = {}
    cases: tuple[tuple[str, Callable[[], object]], ...] = (
        (
            "decide_features (the service's decision)",
            lambda: sel.decider.decide_features(len(payload), basic, link, system, payload_type="logs_json"),
        ),
        (
            "Selector.select on the payload",
            lambda: sel.select(payload, link, system, payload_type="logs_json"),
        ),
    )
    for name, fn in cases:
        for _ in range(200):
            fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = _percentiles(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serving.py needs wrk (Debian: apt-get install wrk)")
    ncpu = os.cpu_count() or 1
    wrk_cores = [ncpu - 1] if ncpu >= 2 else []
    server_cores = list(range(ncpu - 1)) if ncpu >= 2 else []
    port = _port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    server = subprocess.Popen(
        [
            *_pin(server_cores),
            sys.executable,
            "-m",
            "dwcp_selector",
            "serve",
            "--model",
            str(MODEL),
            "--port",
            str(port),
        ],
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the service did not become ready")
            time.sleep(0.2)
        sample = base64.b64encode(logs_json(64 << 10, np.random.default_rng(2))).decode()
        stats = {"entropy": 5.2, "zero_fraction": 0.0, "text_fraction": 0.97}
        single = {"payload_bytes": 4 << 20, "payload_type": "logs_json", "stats": stats, "link": WAN}
        cases: dict[str, tuple[str, dict[str, Any], int]] = {
            "single, statistics": (f"{url}/v1/select", single, 1),
            "single, 64 KiB sample": (
                f"{url}/v1/select",
                {"payload_bytes": 4 << 20, "payload_type": "logs_json", "sample_b64": sample, "link": WAN},
                1,
            ),
            "batch of 100, statistics": (f"{url}/v1/select:batch", {"requests": [single] * 100}, 100),
        }
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, (endpoint, body, per) in cases.items():
                r = _wrk(endpoint, body, args, wrk_cores, Path(tmp))
                r["decisions_per_s"] = r["requests_per_s"] * per
                rows[name] = r
    finally:
        server.terminate()
        server.wait(10)
    inproc = in_process(args.calls)
    print(f"\n{'HTTP case':28} {'req/s':>9} {'decisions/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8}")
    for name, r in rows.items():
        print(
            f"{name:28} {r['requests_per_s']:9.0f} {r['decisions_per_s']:12.0f} "
            f"{r.get('p50_ms', float('nan')):7.2f} {r.get('p99_ms', float('nan')):7.2f} {r['non_2xx']:8d}"
        )
    print(f"\n{'in process':44} {'p50 µs':>7} {'p99 µs':>7} {'p99.9 µs':>9}")
    for name, p in inproc.items():
        print(f"{name:44} {p['p50_us']:7.1f} {p['p99_us']:7.1f} {p['p999_us']:9.1f}")
    doc = {
        "machine": machine(),
        "args": vars(args),
        "server_cores": server_cores,
        "wrk_cores": wrk_cores,
        "http": rows,
        "in_process": inproc,
    }
    print(f"\nwrote {write('serving', doc)}")


if __name__ == "__main__":
    main()
