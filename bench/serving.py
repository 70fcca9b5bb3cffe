"""The HTTP service under load (wrk), with the in-process decision beside it.

Starts the service on a loopback port on the model ``models/selector`` and drives it with ``wrk`` for
``--seconds`` per case, ``--repeats`` times (the medians are reported): single decisions from precomputed
statistics (the model path: the light tier), single decisions on the fast path (a payload small enough
that the fast rule decides), single decisions from a 64 KiB sample, and batches of 100 (model path and
fast path). Debian's ``wrk`` is a closed loop: it measures what the service sustains with
``--connections`` (``--batch-connections`` for batches) requests in flight, not latencies at fixed
offered rates (that needs wrk2, which Debian does not package), so each case's latency is that of the
service at its own throughput. Percentiles p50/p90/p99/p99.9 come from wrk's own histogram (a Lua
``done`` hook), and the CPU seconds of the server and of wrk are read from /proc over each run, so the
load generator's share of the machine is stated.

The stacks (``--stack``, several allowed): ``cli`` is what ``dwcp-selector serve`` runs (uvicorn,
which takes uvloop and httptools when they are installed, one process); ``uvicorn-asyncio`` the same on
asyncio's loop and h11; ``granian`` the same app on granian's Rust HTTP server. ``--workers N`` runs N
worker processes (``cli``: ``serve --registry … --workers N`` on a throwaway registry holding the model).
With two or more cores, the server is pinned to the first ``--server-cores`` cores and wrk to the others
(``--pin``; ``--no-pin`` lets both float, as a multi-worker server needs). In-process figures beside
them: ``Decider.decide_features`` (what a single request runs), ``GuardedSelector.select_features_batch``
per decision (a batch of 100), and ``Selector.select`` on the payload itself, p50/p99/p99.9.

    python bench/serving.py [--seconds 10] [--repeats 3] [--connections 16] [--stack cli granian]

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine, write
from dwcp_selector.features import BasicFeatures, basic_features
from dwcp_selector.link import LinkState, SystemState, link_from_class
from dwcp_selector.serving import GuardedSelector, Selector
from dwcp_selector.workload import logs_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"
WAN = {"capacity_bps": 316e6, "rtt_s": 0.063, "loss": 2e-4, "utilization": 0.45, "link_type": "wan"}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
done = function(summary, latency, requests)
  for _, p in ipairs({{50, 90, 99, 99.9}}) do
    io.write(string.format("PCT %g %d\\n", p, latency:percentile(p)))
  end
end
"""
#: what each stack runs: a Python snippet given the model directory and the port
SERVERS = {
    "uvicorn-asyncio": (
        "import uvicorn; from dwcp_selector.serving.http import create_app; "
        "uvicorn.run(create_app(model_dir={model!r}), host='127.0.0.1', port={port}, log_level='warning', "
        "access_log=False, loop='asyncio', http='h11')"
    ),
    "granian": (
        "from granian import Granian; from granian.constants import Interfaces; "
        "Granian('dwcp_selector.serving.http:create_app_from_env', address='127.0.0.1', port={port}, "
        "interface=Interfaces.ASGI, workers={workers}, factory=True, log_enabled=False).serve()"
    ),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cores: list[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores))] if shutil.which("taskset") and cores else []


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their threads so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _tree(pid: int) -> list[int]:
    """``pid`` and every process under it (a multi-worker server's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo += [int(c) for c in children]
    return out


def _wrk(
    url: str, script: Path, args: argparse.Namespace, cores: list[int], server_pid: int, connections: int
) -> dict[str, Any]:
    cmd = [
        *_pin(cores),
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{connections}",
        f"-d{args.seconds}s",
        "-s",
        str(script),
        url,
    ]
    pids = _tree(server_pid)
    server0, t0 = _cpu_s(pids), time.monotonic()
    before = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
    after = os.times()
    wall = time.monotonic() - t0
    server_cpu = _cpu_s(pids) - server0
    wrk_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        f"p{p.replace('.', '')}_ms": int(us) / 1e3 for p, us in re.findall(r"^PCT ([\d.]+) (\d+)$", out, re.M)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": rps,
        **lat,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "server_cpu_share": server_cpu / wall,
        "wrk_cpu_share": wrk_cpu / wall,
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = "; ".join(sorted({str(r[key]) for r in runs if r[key]}))
    out["requests_per_s_all"] = [r["requests_per_s"] for r in runs]
    out["p99_ms_all"] = [r.get("p99_ms") for r in runs]
    return out


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.array(times) * 1e6
    return {
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
        "p999_us": float(np.percentile(a, 99.9)),
    }


def in_process(calls: int) -> dict[str, Any]:
    sel = Selector(MODEL, host_profile=None)
    guard = GuardedSelector(sel)
    payload = logs_json(4 << 20, np.random.default_rng(1))
    link, system = link_from_class("wan"), SystemState(free_cores=2)
    basic = dataclasses.replace(basic_features(payload[: 64 << 10]), payload_bytes=len(payload))
    wan = LinkState(**WAN)
    batch = (
        [4 << 20] * 100,
        [BasicFeatures(4 << 20, False, 0, 5.2, 0.0, 0.97, None, 0.0)] * 100,
        [wan] * 100,
        [SystemState(free_cores=1.0)] * 100,
        ["logs_json"] * 100,
    )
    out = {}
    cases: tuple[tuple[str, Callable[[], object], int], ...] = (
        (
            "decide_features (a single request's decision)",
            lambda: sel.decider.decide_features(len(payload), basic, link, system, payload_type="logs_json"),
            1,
        ),
        (
            "select_features_batch of 100, per decision",
            lambda: guard.select_features_batch(*batch),
            100,
        ),
        (
            "Selector.select on the payload",
            lambda: sel.select(payload, link, system, payload_type="logs_json"),
            1,
        ),
    )
    for name, fn, per in cases:
        for _ in range(200):
            fn()
        times = []
        for _ in range(max(calls // per, 200)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) / per)
        out[name] = _percentiles(times)
    return out


def _start(stack: str, port: int, args: argparse.Namespace, cores: list[int]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if stack == "cli" and args.workers > 1:
        # several workers need a registry (each follows its alias): a throwaway one holding the model
        from dwcp_selector.serving import ModelRegistry

        reg = ModelRegistry(Path(tempfile.mkdtemp(prefix="bench-reg-")), create=True)
        reg.register(MODEL, alias="champion", why="bench/serving.py")
        cmd = [sys.executable, "-m", "dwcp_selector", "serve", "--registry", str(reg.root)]
        cmd += ["--workers", str(args.workers), "--port", str(port)]
    elif stack == "cli":
        cmd = [sys.executable, "-m", "dwcp_selector", "serve", "--model", str(MODEL), "--port", str(port)]
    else:
        if stack == "granian":  # the factory takes no arguments: the model directory by the environment
            env["DWCP_SERVE_MODEL"] = str(MODEL)
        code = SERVERS[stack].format(model=str(MODEL), port=port, workers=args.workers)
        cmd = [sys.executable, "-c", code]
    return subprocess.Popen([*_pin(cores), *cmd], stderr=subprocess.DEVNULL, env=env)


def _ready(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the service did not become ready")
        time.sleep(0.2)


def run_stack(
    stack: str, args: argparse.Namespace, server_cores: list[int], wrk_cores: list[int]
) -> dict[str, Any]:
    port = _port()
    server = _start(stack, port, args, server_cores)
    url = f"http://127.0.0.1:{port}"
    sample = base64.b64encode(logs_json(64 << 10, np.random.default_rng(2))).decode()
    stats = {"entropy": 5.2, "zero_fraction": 0.0, "text_fraction": 0.97}
    single = {"payload_bytes": 4 << 20, "payload_type": "logs_json", "stats": stats, "link": WAN}
    fast = {**single, "payload_bytes": 4 << 10}  # 4 KiB over the WAN: the fast rule decides
    cases: dict[str, tuple[str, dict[str, Any], int]] = {
        "single, statistics (model)": (f"{url}/v1/select", single, 1),
        "single, fast path": (f"{url}/v1/select", fast, 1),
        "single, 64 KiB sample": (
            f"{url}/v1/select",
            {"payload_bytes": 4 << 20, "payload_type": "logs_json", "sample_b64": sample, "link": WAN},
            1,
        ),
        "batch of 100, statistics (model)": (f"{url}/v1/select:batch", {"requests": [single] * 100}, 100),
        "batch of 100, fast path": (f"{url}/v1/select:batch", {"requests": [fast] * 100}, 100),
    }
    rows = {}
    try:
        _ready(url)
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, (endpoint, body, per)) in enumerate(cases.items()):
                body_path = Path(tmp) / f"body-{i}.json"
                body_path.write_text(json.dumps(body))
                script = Path(tmp) / f"case-{i}.lua"
                script.write_text(LUA.format(body=body_path))
                conns = args.connections if per == 1 else args.batch_connections
                runs = [
                    _wrk(endpoint, script, args, wrk_cores, server.pid, conns) for _ in range(args.repeats)
                ]
                r = _median(runs)
                r["connections"] = conns
                r["decisions_per_s"] = r["requests_per_s"] * per
                rows[name] = r
    finally:
        server.terminate()
        server.wait(10)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16, help="wrk's connections for single requests")
    ap.add_argument(
        "--batch-connections",
        type=int,
        default=4,
        help="for batches (each is 100 decisions: 4 in flight keep the server busy)",
    )
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--stack", nargs="+", default=["cli"], choices=["cli", *SERVERS])
    ap.add_argument(
        "--workers", type=int, default=1, help="worker processes (cli: `serve --registry … --workers N`)"
    )
    ap.add_argument("--server-cores", type=int, default=1)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serving.py needs wrk (Debian: apt-get install wrk)")
    ncpu = os.cpu_count() or 1
    pin = args.pin and ncpu > args.server_cores
    server_cores = list(range(args.server_cores)) if pin else []
    wrk_cores = list(range(args.server_cores, ncpu)) if pin else []
    http = {stack: run_stack(stack, args, server_cores, wrk_cores) for stack in args.stack}
    inproc = in_process(args.calls)
    cpu = machine().get("cpu", "")
    print(f"\nCPU: {cpu}, {ncpu} cores; server cores {server_cores or 'any'}, wrk cores {wrk_cores or 'any'}")
    head = (
        f"{'stack':16} {'HTTP case':34} {'req/s':>8} {'decisions/s':>11} {'p50':>6} {'p99':>6} {'p99.9':>6}"
    )
    print(f"{head} {'srv CPU':>7} {'wrk CPU':>7} {'non-2xx':>7}")
    for stack, rows in http.items():
        for name, r in rows.items():
            print(
                f"{stack:16} {name:34} {r['requests_per_s']:8.0f} {r['decisions_per_s']:11.0f} "
                f"{r.get('p50_ms', float('nan')):6.2f} {r.get('p99_ms', float('nan')):6.2f} "
                f"{r.get('p999_ms', float('nan')):6.2f} {r['server_cpu_share']:7.2f} "
                f"{r['wrk_cpu_share']:7.2f} {r['non_2xx']:7d}"
            )
    print("(latencies in ms; CPU shares in cores; medians of the repeats)")
    print(f"\n{'in process':48} {'p50 µs':>7} {'p99 µs':>7} {'p99.9 µs':>9}")
    for name, p in inproc.items():
        print(f"{name:48} {p['p50_us']:7.1f} {p['p99_us']:7.1f} {p['p999_us']:9.1f}")
    doc = {
        "machine": machine(),
        "command": "python bench/serving.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
        "server_cores": server_cores,
        "wrk_cores": wrk_cores,
        "offered_rate": "closed loop (wrk): the most the service sustains at --connections in flight",
        "http": http,
        "in_process": inproc,
    }
    print(f"\nwrote {write('serving', doc)}")


if __name__ == "__main__":
    main()
