"""AMST security: what authentication costs per GB, and a receiver under 1,000 abusive connections.

``cost``: the same payload sent over loopback with ``Insecure``, pre-shared keys (HMAC-SHA256 on every
message) and mutual TLS, sender and receiver in this process; the process CPU time per GB (both ends
together) is measured around each transfer, and the difference from ``Insecure`` halved is the price per
byte on one end, which is what ``CostParams.auth_s_per_byte`` charges on each side. The primitives alone
(HMAC-SHA256, which tags the HELLO; AES-GMAC, which tags every message under PSK; AES-GCM as TLS runs
it, through a memory BIO pair) are measured beside it. Medians of ``--repeats`` rounds in which the modes
take turns.

``abuse``: ``tests/abuse.py`` starts a PSK receiver (256 MiB memory budget) in a process of its own, throws
1,000 abusive connections at it (connect-and-close floods, garbage, forged HELLOs declaring 1 GiB,
authenticated HELLOs above the receiver's limit, slow handshakes held open) and sends a legitimate 64 MiB
transfer in the middle of the attack and another once every slow handshake is holding its slot; the
receiver's RSS and thread count are sampled throughout.

    python bench/amst_security.py [--gib 1] [--repeats 3] [--abusive 1000] [--only cost|abuse]

Prints tables and writes ``bench/results/amst_security.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import resource
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trustme

from _common import RESULTS, machine, write
from dwcp_selector.transport import (
    AmstReceiver,
    AmstSender,
    Insecure,
    PskAuth,
    PskKeys,
    TlsAuth,
    tls_client_context,
    tls_server_context,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.abuse import run_abuse  # noqa: E402  (the same abuse run the test suite makes, larger)

MiB = 1 << 20
GB = 1e9


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pki(d: Path) -> dict[str, Path]:
    ca = trustme.CA()
    files = {"ca": d / "ca.pem", "server": d / "server.pem", "node": d / "node.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, ident in (("server", "localhost"), ("node", "node-1.example")):
        ca.issue_cert(ident, common_name=ident).private_key_and_cert_chain_pem.write_to_path(str(files[name]))
    return files


def _modes(pki: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    psk = PskAuth("node-1", b"K" * 32)
    server = tls_server_context(pki["server"], pki["server"], cafile=pki["ca"])
    client = tls_client_context(pki["ca"], pki["node"])
    return {
        "insecure": (Insecure(), Insecure()),
        "psk": (PskKeys(psk), psk),
        "tls": (TlsAuth(server), TlsAuth(client, server_hostname="localhost")),
    }


def _transfer_cpu(
    modes: dict[str, tuple[Any, Any]], data: bytes, streams: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median process CPU seconds and wall seconds of one verified transfer of ``data`` per mode; the
    modes take turns in every round, so drift and warm-up hit them alike."""
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    with contextlib.ExitStack() as stack:
        pairs = {}
        for name, (rx_sec, tx_sec) in modes.items():
            rx = stack.enter_context(
                AmstReceiver(("127.0.0.1", 0), security=rx_sec, max_payload=len(data) + MiB, timeout_s=120)
            )
            sender = AmstSender(rx.address, security=tx_sec, timeout_s=120)
            sender.send(data[: 4 * MiB], "none", streams=streams)  # warm: handshakes, buffers, threads
            pairs[name] = (rx, sender)
        for _ in range(repeats):
            for name, (rx, sender) in pairs.items():
                c0, t0 = _cpu(), time.perf_counter()
                report = sender.send(data, "none", streams=streams)
                got = rx.wait(report.transfer_id, timeout=300)
                c1, t1 = _cpu(), time.perf_counter()
                assert got.data == data, "payload differs after reassembly"
                del got
                cpu[name].append(c1 - c0)
                wall[name].append(t1 - t0)
    return {m: {"cpu_s": statistics.median(cpu[m]), "wall_s": statistics.median(wall[m])} for m in modes}


def _median_rate(fn: Callable[[], int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def _mac_rates(total: int, repeats: int) -> dict[str, float]:
    """Bytes per second of each MAC over 1 MiB messages (``total`` bytes, median of ``repeats``)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, msg, gmac = b"K" * 32, memoryview(bytes(MiB)), AESGCM(b"K" * 32)
    macs: dict[str, Callable[[int], object]] = {
        "hmac_sha256": lambda i: hmac.new(key, msg, hashlib.sha256).digest(),
        "keyed_blake2b": lambda i: hashlib.blake2b(msg, key=key, digest_size=16).digest(),
        "aes_gmac": lambda i: gmac.encrypt(i.to_bytes(12, "little"), b"", msg),  # a fresh nonce each
    }

    def rate(mac: Callable[[int], object], n: int) -> float:
        def run() -> int:
            for i in range(n // MiB):
                mac(i)
            return n

        return _median_rate(run, repeats)

    # GMAC is 15x faster: give it more bytes, so that its run is as long as the others'
    return {name: rate(mac, total * (4 if name == "aes_gmac" else 1)) for name, mac in macs.items()}


def _tls_rate(pki: dict[str, Path], total: int, repeats: int) -> float:
    """AES-GCM as TLS runs it, without sockets: one side's writes through a memory BIO pair, both ends."""
    server_ctx = tls_server_context(pki["server"], pki["server"], cafile=pki["ca"])
    client_ctx = tls_client_context(pki["ca"], pki["node"])
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # handshake
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    piece = bytes(256 << 10)

    def run() -> int:
        for _ in range(total // len(piece)):
            client.write(piece)
            s_in.write(c_out.read())
            got = 0
            while got < len(piece):
                got += len(server.read(len(piece)))
        return total

    return _median_rate(run, repeats)


def cost(gib: float, streams: int, repeats: int) -> dict[str, Any]:
    data = np.random.default_rng(3).integers(0, 256, int(gib * (1 << 30)), dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        pki = _pki(Path(tmp))
        modes = _modes(pki)
        runs = _transfer_cpu(modes, data, streams, repeats)
        macs = _mac_rates(512 * MiB, repeats)
        tls_bps = _tls_rate(pki, 512 * MiB, repeats)
    base = runs["insecure"]["cpu_s"]
    rows = []
    for name, r in runs.items():
        extra = r["cpu_s"] - base
        rows.append(
            {
                "mode": name,
                "bytes": len(data),
                "cpu_s_median": r["cpu_s"],
                "wall_s_median": r["wall_s"],
                "cpu_s_per_gb": r["cpu_s"] / (len(data) / GB),
                "extra_cpu_s_per_gb": extra / (len(data) / GB),
                # both ends ran in this process: one end's price per byte is half the difference
                "auth_s_per_byte_one_end": max(0.0, extra / 2 / len(data)),
            }
        )
    return {
        "streams": streams,
        "repeats": repeats,
        "rows": rows,
        "primitives": {
            **{f"{name}_bytes_per_s": bps for name, bps in macs.items()},
            "tls_encrypt_and_decrypt_bytes_per_s": tls_bps,
        },
    }


def abuse(abusive: int, repeats: int) -> dict[str, Any]:
    runs = [run_abuse(abusive=abusive, payload_mib=64, budget_mib=256) for _ in range(repeats)]
    return {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--abusive", type=int, default=1000)
    ap.add_argument("--only", choices=("cost", "abuse"))
    args = ap.parse_args()
    previous = RESULTS / "amst_security.json"
    # with --only, the other part's results stay as they were measured (each keeps its own machine)
    doc: dict[str, Any] = json.loads(previous.read_text()) if args.only and previous.exists() else {}
    if args.only in (None, "cost"):
        doc["cost"] = c = cost(args.gib, args.streams, args.repeats)
        c["machine"] = machine()
        print(f"\n{'mode':9} {'CPU s/GB':>9} {'extra s/GB':>11} {'s/byte one end':>15} {'wall s':>7}")
        for r in c["rows"]:
            print(
                f"{r['mode']:9} {r['cpu_s_per_gb']:9.3f} {r['extra_cpu_s_per_gb']:11.3f} "
                f"{r['auth_s_per_byte_one_end']:15.3e} {r['wall_s_median']:7.2f}"
            )
        p = c["primitives"]
        print(
            f"HMAC-SHA256 {p['hmac_sha256_bytes_per_s'] / GB:.2f} GB/s, "
            f"keyed BLAKE2b {p['keyed_blake2b_bytes_per_s'] / GB:.2f} GB/s, "
            f"AES-GMAC {p['aes_gmac_bytes_per_s'] / GB:.2f} GB/s, "
            f"TLS AES-GCM encrypt+decrypt {p['tls_encrypt_and_decrypt_bytes_per_s'] / GB:.2f} GB/s one core"
        )
    if args.only in (None, "abuse"):
        doc["abuse"] = a = abuse(args.abusive, args.repeats)
        a["machine"] = machine()
        print(
            f"\n{'run':>3} {'legit ok':>8} {'during s':>8} {'after s':>7} {'RSS +MiB':>8} "
            f"{'threads':>7}  refused"
        )
        for i, r in enumerate(a["runs"]):
            print(
                f"{i:3d} {r['legit_ok']!s:>8} {r['legit_during']['s']:8.2f} {r['legit_after']['s']:7.2f} "
                f"{r['rss_growth_mib']:8.0f} {r['max_threads']:4d}/{r['thread_bound']}  {r['refused']}"
            )
    path = write("amst_security", doc)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
