"""The measurements behind decision 0006: how much context a chunk should see, and where HDE looks.

On real files and version pairs of the corpus (``bench/corpus.py``):

* ``zstd`` with 0, 256 KiB, 1 MiB and 2 MiB of the payload before each chunk as prefix: size against one
  whole-file ``zstd -3`` call (command line) and encode MB/s;
* ``hde`` tier 3 with the baseline window mapped proportionally (+/-2 MiB, the first design) or located
  by anchors, and with 0, 64 KiB, 256 KiB and 1 MiB of payload context: size against ``zstd -3
  --patch-from`` (command line) and encode MB/s.

Sizes are exact; speeds are the least of three runs on one core (say which CPU: the JSON has it).
Prints tables and writes ``bench/results/context_sweep.json``.

    python bench/context_sweep.py [--corpus-dir DIR] [--offline]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import corpus as corpus_mod
from _common import machine, write
from dwcp_selector.strategies import (
    Baseline,
    HdeEncoder,
    Lz4Encoder,
    PayloadCodec,
    RawEncoder,
    Registry,
    ZstdEncoder,
)

KiB, MiB = 1 << 10, 1 << 20
FILES = ("VM", "installed-libicudata.so", "cpython-stdlib-tar", "debian-changelogs", "installed-libpython.so")
PAIRS = (
    "cpython-stdlib-tar",
    "pyarrow-libarrow.so",
    "llvmlite-libllvmlite.so",
    "django-sdist-tar",
    "sqlite-files",
    "cpython-ensurepip-tar",
)
ZSTD_CONTEXTS = (0, 256 * KiB, MiB, 2 * MiB)
HDE_CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("proportional, 1 MiB context", {"locate_by_anchors": False, "context_bytes": MiB}),
    ("anchors, 1 MiB context", {"context_bytes": MiB}),
    ("anchors, 256 KiB context", {"context_bytes": 256 * KiB}),
    ("anchors, 64 KiB context", {"context_bytes": 64 * KiB}),
    ("anchors, no context", {"context_bytes": 0}),
)


def _codec(zstd: dict[str, Any] | None = None, hde: dict[str, Any] | None = None) -> PayloadCodec:
    return PayloadCodec(
        Registry([RawEncoder(), Lz4Encoder(), ZstdEncoder(**(zstd or {})), HdeEncoder(**(hde or {}))])
    )


def _cli(args: list[str], data: bytes, old: bytes | None = None) -> int:
    with tempfile.TemporaryDirectory() as d:
        new_path = Path(d, "new")
        new_path.write_bytes(data)
        extra = []
        if old is not None:
            Path(d, "old").write_bytes(old)
            extra = [f"--patch-from={Path(d, 'old')}"]
        out = subprocess.run(
            ["zstd", *args, "-q", "-c", *extra, str(new_path)], capture_output=True, check=True
        )
        return len(out.stdout)


def _encode(codec: PayloadCodec, data: bytes, strategy: str, base: Baseline | None) -> tuple[int, float]:
    best = float("inf")
    size = 0
    for _ in range(3):
        t0 = time.perf_counter()
        encoded = codec.encode(data, strategy, baseline=base)
        best = min(best, time.perf_counter() - t0)
        size = encoded.encoded_bytes
    if codec.decode(encoded.to_bytes(), baseline=base) != data:
        raise SystemExit(f"{strategy} round trip failed")
    return size, len(data) / best / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-dir", type=Path, default=None)
    ap.add_argument("--offline", action="store_true")
    args = ap.parse_args()
    items = {i.id: i for i in corpus_mod.build(args.corpus_dir, offline=args.offline).items}
    rows: list[dict[str, Any]] = []
    print(f"zstd: size / whole-file zstd -3, MB/s, with context {[c // KiB for c in ZSTD_CONTEXTS]} KiB")
    for fid in FILES:
        if fid == "VM":
            import numpy as np

            from dwcp_selector.workload import vm_memory

            name, data = "VM memory image (synthetic)", vm_memory(16 * MiB, np.random.default_rng(2026))
        elif fid in items:
            name, data = items[fid].name, items[fid].read()
        else:
            continue
        ref = _cli(["-3"], data)
        cells = []
        for ctx in ZSTD_CONTEXTS:
            size, mbs = _encode(_codec(zstd={"context_bytes": ctx}), data, "zstd", None)
            rows.append(
                {"strategy": "zstd", "payload": name, "context": ctx, "bytes": size, "reference": ref}
            )
            rows[-1]["encode_mb_s"] = mbs
            cells.append(f"{size / ref:.3f} {mbs:4.0f}")
        print(f"  {name[:40]:40} " + " | ".join(cells))
    print("hde: size / zstd -3 --patch-from, MB/s, for " + "; ".join(n for n, _ in HDE_CONFIGS))
    for pid in PAIRS:
        if pid not in items or not items[pid].is_pair:
            continue
        item = items[pid]
        new, old = item.read(), item.read_old()
        assert old is not None
        ref = _cli(["-3"], new, old)
        base = Baseline("old", old)
        cells = []
        for label, cfg in HDE_CONFIGS:
            size, mbs = _encode(_codec(hde=cfg), new, "hde", base)
            rows.append(
                {"strategy": "hde", "payload": item.name, "config": label, "bytes": size, "reference": ref}
            )
            rows[-1]["encode_mb_s"] = mbs
            cells.append(f"{size / ref:.3f} {mbs:4.0f}")
        print(f"  {item.name[:40]:40} " + " | ".join(cells))
    print(f"wrote {write('context_sweep', {'machine': machine(), 'rows': rows})}")


if __name__ == "__main__":
    main()
