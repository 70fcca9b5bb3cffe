"""Encoders against the reference codecs, per payload family, measured in one run.

For each family: our four strategies through the payload codec (1 MiB chunks, framed and checksummed, as
AMST sends them) beside whole-payload zstd -1/-3/-19 and lz4, and for version pairs ``zstd -3
--patch-from`` (the zstd command line, sizes) and the same parameters through libzstd (speed). Ratios
are original / encoded bytes; speeds are MB/s of original bytes on one core, medians of repeated runs.

Families: random bytes, JSON logs, a VM memory image, its next pre-copy round with 5 % of pages dirtied
by small edits, and real version pairs: two Python standard libraries (as tarballs, as a file, as
the asyncio package) of the two newest interpreters given with ``--python`` or found on PATH or under
pyenv, the Debian package-status database and its previous version when present, and any pair given
with ``--pair OLD NEW``.

    python bench/strategies.py [--python EXE ...] [--pair OLD NEW ...] [--quick]

Prints a table and writes ``bench/results/strategies.json``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np

from _common import machine, median_time, write
from dwcp_selector.strategies import Baseline, PayloadCodec
from dwcp_selector.strategies._zstd import (
    CompressionParameter,
    DecompressionParameter,
    ZstdCompressor,
    ZstdDecompressor,
    ZstdDict,
)
from dwcp_selector.workload import dirty_round, logs_json, random_bytes, vm_memory

MB = 1e6
WINDOW_31: dict[int, int] = {DecompressionParameter.window_log_max: 31}
MiB = 1 << 20


def _zstd(level: int, data: bytes, prefix: bytes | None = None) -> tuple[bytes, float, float]:
    options: dict[int, int] = {CompressionParameter.compression_level: level}
    zd = None
    if prefix is not None:
        options[CompressionParameter.window_log] = max(
            10, min(31, max(len(data), len(prefix)).bit_length() + 1)
        )
        options[CompressionParameter.enable_long_distance_matching] = 1
        zd = ZstdDict(prefix, is_raw=True).as_prefix
    reps = 3 if len(data) < 16 * MiB or level < 10 else 1
    enc_s, out = median_time(
        lambda: ZstdCompressor(options=options, zstd_dict=zd).compress(data, ZstdCompressor.FLUSH_FRAME), reps
    )
    dec_s, back = median_time(lambda: ZstdDecompressor(zstd_dict=zd, options=WINDOW_31).decompress(out), reps)
    assert back == data
    return out, enc_s, dec_s


def _row(family: str, codec: str, size: int, encoded: int, enc_s: float, dec_s: float) -> dict[str, Any]:
    return {
        "family": family,
        "codec": codec,
        "bytes": size,
        "encoded_bytes": encoded,
        "ratio": size / encoded if encoded else float("inf"),
        "encode_mb_s": size / enc_s / MB if enc_s > 0 else None,
        "decode_mb_s": size / dec_s / MB if dec_s > 0 else None,
    }


def measure_family(
    family: str, data: bytes, baseline: bytes | None, *, reference: bool, z19_max: int
) -> list[dict[str, Any]]:
    codec = PayloadCodec()
    codec.warm_up()
    rows = []
    base = Baseline(f"{family}-old", baseline) if baseline is not None else None
    reps = 7 if len(data) < 4 * MiB else 3
    for name in ("none", "lz4", "zstd", "hde"):
        if name == "hde" and base is None:
            continue
        enc_s, encoded = median_time(lambda n=name: codec.encode(data, n, baseline=base), reps)
        blob = encoded.to_bytes()
        dec_s, back = median_time(lambda b=blob: codec.decode(b, baseline=base), reps)
        assert back == data, (family, name)
        rows.append(_row(family, name, len(data), len(blob), enc_s, dec_s))
    if not reference:
        return rows
    for level in (1, 3, 19):
        if level == 19 and len(data) > z19_max:
            continue
        out, e, d = _zstd(level, data)
        rows.append(_row(family, f"zstd -{level}", len(data), len(out), e, d))
    enc_s, out = median_time(lambda: lz4.frame.compress(data), reps)
    dec_s, _ = median_time(lambda: lz4.frame.decompress(out), reps)
    rows.append(_row(family, "lz4 (frame)", len(data), len(out), enc_s, dec_s))
    if baseline is not None:
        out, e, d = _zstd(3, data, baseline)
        rows.append(_row(family, "patch-from -3 (libzstd)", len(data), len(out), e, d))
        cli = patch_from_cli(baseline, data)
        if cli is not None:
            rows.append(_row(family, "zstd -3 --patch-from (CLI)", len(data), cli, 0, 0))
    return rows


def patch_from_cli(old: bytes, new: bytes) -> int | None:
    """Size of ``zstd -3 --patch-from=OLD NEW`` from the zstd command line, if it is installed."""
    if shutil.which("zstd") is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        o, n = Path(d, "old"), Path(d, "new")
        o.write_bytes(old)
        n.write_bytes(new)
        proc = subprocess.run(
            ["zstd", "-3", "-q", "-c", f"--patch-from={o}", str(n)], capture_output=True, check=True
        )
        return len(proc.stdout)


def _stdlib_of(python: str) -> Path | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = Path(out.stdout.strip())
    return path if out.returncode == 0 and path.is_dir() else None


def _tar(root: Path, exclude: set[str]) -> bytes:
    """A reproducible tarball of ``root``: sorted names, zero mtimes and owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part in exclude for part in rel.parts) or not path.is_file() or path.suffix == ".so":
                continue
            info = tarfile.TarInfo(str(rel))
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _interpreters(explicit: list[str]) -> list[tuple[str, Path]]:
    """(version, stdlib) of the Python interpreters given, else of those found on PATH or under pyenv."""
    candidates = list(explicit)
    if not candidates:
        candidates = [exe for minor in range(8, 16) if (exe := shutil.which(f"python3.{minor}"))]
        if shutil.which("pyenv"):
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
            candidates += sorted(str(p) for p in Path(root, "versions").glob("3.*/bin/python3"))
    found: dict[str, Path] = {}
    for exe in candidates:
        lib = _stdlib_of(exe)
        if lib is not None:
            found.setdefault(lib.name.removeprefix("python"), lib)
    return sorted(found.items(), key=lambda kv: tuple(int(x) for x in kv[0].split(".")))


def real_pairs(extra: list[tuple[str, str]], pythons: list[str]) -> list[tuple[str, bytes, bytes]]:
    pairs: list[tuple[str, bytes, bytes]] = []
    found = _interpreters(pythons)
    if len(found) >= 2:
        (va, a), (vb, b) = found[-2], found[-1]
        skip = {"__pycache__", "site-packages", "test", "tests", "idlelib", "lib2to3"}
        if (a / "typing.py").exists() and (b / "typing.py").exists():
            pairs.append(
                (f"typing.py {va}→{vb}", (a / "typing.py").read_bytes(), (b / "typing.py").read_bytes())
            )
        pairs.append((f"asyncio/ tar {va}→{vb}", _tar(a / "asyncio", skip), _tar(b / "asyncio", skip)))
        pairs.append((f"stdlib tar {va}→{vb}", _tar(a, skip), _tar(b, skip)))
    status, previous = Path("/var/lib/dpkg/status"), Path("/var/lib/dpkg/status-old")
    if status.exists() and previous.exists() and status.read_bytes() != previous.read_bytes():
        pairs.append(("dpkg status db", previous.read_bytes(), status.read_bytes()))
    for old, new in extra:
        pairs.append((f"{Path(old).name}→{Path(new).name}", Path(old).read_bytes(), Path(new).read_bytes()))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("OLD", "NEW"))
    ap.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="EXE",
        help="interpreters whose standard libraries form the source-tree pairs (default: found)",
    )
    ap.add_argument("--quick", action="store_true", help="smaller synthetic payloads, no zstd -19")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    size = 4 * MiB if args.quick else 16 * MiB
    image = vm_memory(size, rng)
    families: list[tuple[str, bytes, bytes | None]] = [
        ("random", random_bytes(size, rng), None),
        ("JSON logs", logs_json(size, rng), None),
        ("VM memory image", image, None),
        ("VM pre-copy round, 5 % dirty", dirty_round(image, rng, dirty_fraction=0.05, max_edit=64), image),
    ]
    for name, old, new in real_pairs(args.pair, args.python):
        families.append((name, new, old))
    rows: list[dict[str, Any]] = []
    for family, data, base in families:
        print(f"measuring {family} ({len(data) / MiB:.1f} MiB)...", file=sys.stderr)
        rows += measure_family(family, data, base, reference=True, z19_max=0 if args.quick else 16 * MiB)

    print(f"\n{'family':34} {'codec':28} {'ratio':>9} {'enc MB/s':>9} {'dec MB/s':>9}")
    for r in rows:
        enc = f"{r['encode_mb_s']:9.0f}" if r["encode_mb_s"] else f"{'-':>9}"
        dec = f"{r['decode_mb_s']:9.0f}" if r["decode_mb_s"] else f"{'-':>9}"
        print(f"{r['family']:34} {r['codec']:28} {r['ratio']:9.2f} {enc} {dec}")

    checks = []
    for family in {r["family"] for r in rows}:
        by = {r["codec"]: r for r in rows if r["family"] == family}
        if "hde" in by and "zstd -3 --patch-from (CLI)" in by:
            rel = by["hde"]["encoded_bytes"] / by["zstd -3 --patch-from (CLI)"]["encoded_bytes"]
            checks.append(
                {"family": family, "check": "hde size / patch-from size", "value": rel, "ok": rel <= 1.10}
            )
        if family.startswith("VM pre-copy"):
            h = by["hde"]
            checks.append(
                {"family": family, "check": "hde ratio", "value": h["ratio"], "ok": h["ratio"] >= 500}
            )
            checks.append(
                {
                    "family": family,
                    "check": "hde encode MB/s",
                    "value": h["encode_mb_s"],
                    "ok": h["encode_mb_s"] >= 1000,
                }
            )
    print("\nacceptance checks")
    for c in checks:
        print(f"  {'ok ' if c['ok'] else 'MISS'} {c['family']}: {c['check']} = {c['value']:.3f}")
    path = write("strategies", {"machine": machine(), "quick": args.quick, "rows": rows, "checks": checks})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
