"""An AMST receiver under abuse, in a process of its own so that its memory and threads are its own.

``run_abuse`` starts a PSK receiver as a child process (``python -m tests.abuse --serve``), throws
``abusive`` connections at it from a few attacker threads (floods that connect and close, garbage,
HELLOs with a forged tag declaring 1 GiB, authenticated HELLOs larger than the budget, and slow
handshakes that trickle a byte and hold the connection), and meanwhile sends one legitimate transfer of
``payload_mib`` MiB. It samples the child's RSS and thread count from ``/proc`` throughout and returns
the figures with the receiver's own refusal counts. Used by the test suite (a smaller run) and by
``bench/amst_abuse.py`` (1,000 abusive connections).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dwcp_selector.transport import AmstReceiver, AmstSender, PskAuth, PskKeys, ReceiverLimits
from dwcp_selector.transport.protocol import AUTH_PSK, Hello, Manifest, clock_ms
from dwcp_selector.transport.security import hello_tag
from dwcp_selector.workload import logs_json

MiB = 1 << 20
LEGIT = PskAuth("legit", b"L" * 32)
INSIDER = PskAuth("insider", b"I" * 32)  # holds a key, asks for too much
LIMITS = {"max_pending": 64, "max_connections": 64, "max_transfers": 16, "handshake_timeout_s": 2.0}


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def _hello(key: PskAuth, length: int, *, forge: bool) -> bytes:
    chunk = 4 * MiB
    manifest = Manifest(length, chunk, max(1, -(-length // chunk)), 0, 0)
    h = Hello(uuid.uuid4(), 0, 1, manifest, AUTH_PSK, clock_ms(), os.urandom(16), key.key_id)
    unsigned = h.pack_unsigned()
    return unsigned + (bytes(16) if forge else hello_tag(key.key, unsigned))


def _attack(
    address: tuple[str, int], kinds: list[str], held: list[socket.socket], lock: threading.Lock
) -> None:
    for kind in kinds:
        try:
            s = socket.create_connection(address, timeout=5)
        except OSError:
            continue
        try:
            if kind == "flood":
                s.close()
            elif kind == "garbage":
                s.sendall(os.urandom(200))
                s.close()
            elif kind == "forged":
                s.sendall(_hello(LEGIT, 1 << 30, forge=True))
                with contextlib.suppress(OSError):
                    s.recv(256)
                s.close()
            elif kind == "oversize":
                s.sendall(_hello(INSIDER, 1 << 30, forge=False))
                with contextlib.suppress(OSError):
                    s.recv(256)
                s.close()
            else:  # slowloris: one byte of a HELLO, then hold the connection
                s.sendall(b"A")
                with lock:
                    held.append(s)
        except OSError:
            with contextlib.suppress(OSError):
                s.close()


def _legit(address: tuple[str, int], payload: bytes) -> dict[str, Any]:
    """One legitimate transfer: whether it arrived whole, its error if not, and its time."""
    t0 = time.perf_counter()
    try:
        report = AmstSender(address, security=LEGIT, timeout_s=60).send(payload, "zstd", streams=4)
    except Exception as exc:  # reported, the caller asserts
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "s": time.perf_counter() - t0}
    return {"ok": report.payload_bytes == len(payload), "error": "", "s": time.perf_counter() - t0}


def run_abuse(abusive: int = 1000, payload_mib: int = 64, budget_mib: int = 256) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.abuse", "--serve", "--budget-mib", str(budget_mib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdout is not None and child.stdin is not None
    port = int(child.stdout.readline())
    address = ("127.0.0.1", port)
    start = _status(child.pid)
    samples: list[dict[str, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_status(child.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    payload = logs_json(payload_mib * MiB, np.random.default_rng(5))
    mix = ["flood", "garbage", "forged", "oversize", "slow"]
    kinds = [mix[i % len(mix)] for i in range(abusive)]
    held: list[socket.socket] = []
    lock = threading.Lock()
    attackers = [
        threading.Thread(target=_attack, args=(address, kinds[i::4], held, lock), daemon=True)
        for i in range(4)
    ]
    for t in attackers:
        t.start()
    time.sleep(0.2)  # the first legitimate transfer starts in the thick of it
    during = _legit(address, payload)
    for t in attackers:
        t.join(120)
    with lock:
        holding = len(held)
    # the second starts when every slow handshake the receiver still keeps is holding its slot
    after = _legit(address, payload)
    stop.set()
    sampler.join()
    end = _status(child.pid)
    for s in held:
        with contextlib.suppress(OSError):
            s.close()
    child.stdin.close()
    stats = json.loads(child.stdout.readline())
    child.stdout.close()
    child.wait(30)
    limits = ReceiverLimits(**LIMITS)  # type: ignore[arg-type]
    return {
        "abusive": abusive,
        "payload_mib": payload_mib,
        "budget_mib": budget_mib,
        "legit_ok": during["ok"] and after["ok"],
        "legit_during": during,
        "legit_after": after,
        "slow_connections_held": holding,
        "rss_start_mib": start["VmRSS"] / 1024,
        "rss_peak_mib": end.get("VmHWM", 0) / 1024,
        "rss_growth_mib": (end.get("VmHWM", 0) - start["VmRSS"]) / 1024,
        "max_threads": max(s.get("Threads", 0) for s in samples),
        # pending handshakes + accepted streams + two timers per transfer + the accept and main threads
        "thread_bound": limits.max_pending + limits.max_connections + 2 * limits.max_transfers + 4,
        "refused": stats["refused"],
        "receiver": stats,
    }


def _serve(budget_mib: int) -> None:
    limits = ReceiverLimits(memory_budget=budget_mib * MiB, **LIMITS)  # type: ignore[arg-type]
    keys = PskKeys({LEGIT.key_id: LEGIT.key, INSIDER.key_id: INSIDER.key})
    with AmstReceiver(
        ("127.0.0.1", 0), security=keys, limits=limits, max_payload=128 * MiB, timeout_s=10
    ) as rx:
        print(rx.address[1], flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        print(json.dumps(rx.stats()), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--budget-mib", type=int, default=256)
    args = ap.parse_args()
    if args.serve:
        _serve(args.budget_mib)
