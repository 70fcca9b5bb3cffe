"""This project's encoders against the reference codecs, on real files and real version pairs, in one run.

For every payload: our four strategies through the payload codec (1 MiB chunks, framed and checksummed, as
AMST sends them; every round trip verified) beside whole-file ``zstd -1`` and ``zstd -3`` (sizes from the
zstd command line, ``zstd -N -c FILE``; speeds from libzstd in process at the same level), lz4 (lz4.frame,
whole file) and, for version pairs, ``zstd -3 --patch-from=OLD NEW`` (size and speed from the command
line: wall time of the process, start-up and file I/O included) and the same parameters through libzstd
in process. Ratios are original / encoded bytes; speeds are MB/s of original bytes on one core, medians of
repeated runs (7 below 4 MiB, 3 below 64 MiB, 1 above).

Payloads: the real-data corpus of ``bench/corpus.py`` (installed ELF and text files, released package
versions from the package index, CPython standard libraries across releases, SQLite databases changed by
real SQL, the dpkg status database; built once and cached, see that file), any pair given with ``--pair
OLD NEW``, and four synthetic families: random bytes, JSON logs, a VM memory image and its next pre-copy
round with 5 % of pages dirtied by small edits.

Acceptance checks, printed and stored with the results:

* every real file: our ``zstd`` <= 1.05 x whole-file ``zstd -3`` (command line), or at most 1,024 bytes more;
* every real version pair: our ``hde`` <= ``zstd -3 --patch-from`` (command line), or at most 1,024 bytes
  more (hde's encode MB/s printed beside patch-from's);
* the VM pre-copy round with 5 % dirty pages: hde ratio >= 500 and hde encode >= 1,000 MB/s on one core.

    python bench/strategies.py [--sizes-only] [--quick] [--only SUBSTRING] [--corpus-dir DIR]
                               [--offline] [--pair OLD NEW ...] [--out FILE]

``--sizes-only`` runs every codec once (no timing repeats; the speeds shown are of that one run) and
prints the ratios and the checks: seconds, for iterating on an encoder, with ``--only`` to pick payloads.
A full run writes ``bench/results/strategies.json`` (which ``bench/report.py`` renders); a run with
``--sizes-only`` or ``--only`` writes ``strategies-partial.json`` in the corpus directory instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np

import corpus as corpus_mod
from _common import machine, median_time, write
from dwcp_selector.strategies import Baseline, PayloadCodec
from dwcp_selector.strategies import frame as frame_module
from dwcp_selector.strategies._zstd import (
    CompressionParameter,
    DecompressionParameter,
    ZstdCompressor,
    ZstdDecompressor,
    ZstdDict,
    zstd_version,
)
from dwcp_selector.workload import dirty_round, logs_json, random_bytes, vm_memory

MB = 1e6
MiB = 1 << 20
WINDOW_31: dict[int, int] = {DecompressionParameter.window_log_max: 31}
OURS = ("none", "lz4", "zstd", "hde")
PATCH_CLI = "zstd -3 --patch-from"
PATCH_LIB = "zstd -3 --patch-from (libzstd)"
#: The columns of the printed tables, in order.
COLUMNS = (*OURS, "zstd -1", "zstd -3", "lz4 (frame)", PATCH_CLI, PATCH_LIB)
FILE_SLACK, PAIR_SLACK, SLACK_BYTES = 1.05, 1.00, 1024
VM_FAMILY = "VM pre-copy round, 5 % dirty"
COMMANDS = {
    "zstd -1": "zstd -1 -q -c FILE (size); libzstd level 1 in process (speed)",
    "zstd -3": "zstd -3 -q -c FILE (size); libzstd level 3 in process (speed)",
    "lz4 (frame)": "lz4.frame.compress(data) in process, default settings",
    PATCH_CLI: "zstd -3 -q -c --patch-from=OLD NEW, zstd -d -q -c --patch-from=OLD PATCH (size, wall time)",
    PATCH_LIB: "libzstd level 3, OLD as a raw prefix, window covering both, long-distance matching",
}


@dataclass
class Payload:
    """One measured payload: a real corpus item, a pair given on the command line, or a synthetic family."""

    name: str
    kind: str  # "synthetic", "file" or "pair"
    load: Callable[[], tuple[bytes, bytes | None]]
    path: Path | None = None  # on disk, for the command line (synthetic payloads are written out)
    old_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def real(self) -> bool:
        return self.kind != "synthetic"


@dataclass(frozen=True)
class Mode:
    sizes_only: bool
    quick: bool

    def repeats(self, size: int) -> int:
        if self.sizes_only:
            return 1
        n = 7 if size < 4 * MiB else 3 if size < 64 * MiB else 1
        return min(n, 3 if size < 16 * MiB else 1) if self.quick else n


# ---------------------------------------------------------------------------------------------- measuring


def _row(family: str, kind: str, codec: str, size: int, encoded: int | None, **extra: Any) -> dict[str, Any]:
    enc_s, dec_s = extra.pop("enc_s", None), extra.pop("dec_s", None)
    return {
        "family": family,
        "kind": kind,
        "codec": codec,
        "bytes": size,
        "encoded_bytes": encoded,
        "ratio": (size / encoded if encoded else float("inf")) if encoded is not None else None,
        "encode_mb_s": size / enc_s / MB if enc_s else None,
        "decode_mb_s": size / dec_s / MB if dec_s else None,
        **extra,
    }


def _timing(reps: int, where: str) -> str:
    return f"{where}, {'1 run' if reps == 1 else f'median of {reps}'}"


def _libzstd(level: int, data: bytes, reps: int, prefix: bytes | None = None) -> tuple[int, float, float]:
    """Size, encode and decode seconds of libzstd in process (``prefix``: a raw-content prefix, window
    covering both, long-distance matching, as ``--patch-from`` does)."""
    options: dict[int, int] = {CompressionParameter.compression_level: level}
    zd = None
    if prefix is not None:
        options[CompressionParameter.window_log] = max(
            10, min(31, max(len(data), len(prefix)).bit_length() + 1)
        )
        options[CompressionParameter.enable_long_distance_matching] = 1
        zd = ZstdDict(prefix, is_raw=True).as_prefix
    enc_s, out = median_time(
        lambda: ZstdCompressor(options=options, zstd_dict=zd).compress(data, ZstdCompressor.FLUSH_FRAME), reps
    )
    dec_s, back = median_time(lambda: ZstdDecompressor(zstd_dict=zd, options=WINDOW_31).decompress(out), reps)
    if back != data:
        raise AssertionError("libzstd round trip differs")
    return len(out), enc_s, dec_s


def _run(cmd: list[str], stdout: Any) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - t0


def _cli_size(args: list[str], path: Path) -> int:
    """Bytes ``zstd ARGS -q -c FILE`` writes."""
    with tempfile.TemporaryFile() as out:
        _run(["zstd", *args, "-q", "-c", str(path)], out)
        return os.fstat(out.fileno()).st_size


def _patch_cli(old: Path, new: Path, data: bytes, reps: int) -> tuple[int, float, float]:
    """Size, encode and decode wall seconds of ``zstd -3 --patch-from`` on the command line."""
    with tempfile.TemporaryDirectory() as d:
        patch = Path(d, "patch.zst")
        with patch.open("wb") as out:
            enc = [_run(["zstd", "-3", "-q", "-c", f"--patch-from={old}", str(new)], out)]
        with tempfile.TemporaryFile() as back:
            dec = [_run(["zstd", "-d", "-q", "-c", f"--patch-from={old}", str(patch)], back)]
            back.seek(0)
            if back.read() != data:
                raise AssertionError("zstd --patch-from round trip differs")
        for _ in range(reps - 1):
            enc.append(_run(["zstd", "-3", "-q", "-c", f"--patch-from={old}", str(new)], subprocess.DEVNULL))
            dec.append(
                _run(["zstd", "-d", "-q", "-c", f"--patch-from={old}", str(patch)], subprocess.DEVNULL)
            )
        return patch.stat().st_size, sorted(enc)[len(enc) // 2], sorted(dec)[len(dec) // 2]


def measure(p: Payload, mode: Mode, has_cli: bool) -> list[dict[str, Any]]:
    data, old = p.load()
    n = len(data)
    reps = mode.repeats(n)
    rows: list[dict[str, Any]] = []

    def guarded(codec: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            rows.append(fn())
        except Exception as e:  # a codec mid-change must not stop the run; the row says what failed
            print(f"  {p.name}: {codec} failed: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append(_row(p.name, p.kind, codec, n, None, error=f"{type(e).__name__}: {e}"))

    codec = PayloadCodec()
    try:
        codec.warm_up()
    except Exception as e:  # a broken encoder fails its own row below
        print(f"  {p.name}: warm-up failed: {type(e).__name__}: {e}", file=sys.stderr)
    base = Baseline(f"{p.name[:200]}-old", old) if old is not None else None
    for name in OURS:
        if name == "hde" and base is None:
            continue

        def ours(name: str = name) -> dict[str, Any]:
            enc_s, encoded = median_time(lambda: codec.encode(data, name, baseline=base), reps)
            blob = encoded.to_bytes()
            if len(blob) != encoded.encoded_bytes:
                raise AssertionError(f"encoded_bytes {encoded.encoded_bytes} but to_bytes() has {len(blob)}")
            dec_s, back = median_time(lambda: codec.decode(blob, baseline=base), reps)
            if back != data:
                raise AssertionError("round trip differs")
            return _row(
                p.name,
                p.kind,
                name,
                n,
                len(blob),
                enc_s=enc_s,
                dec_s=dec_s,
                timing=_timing(reps, "in process"),
            )

        guarded(name, ours)

    for level in (1, 3):

        def whole(level: int = level) -> dict[str, Any]:
            extra: dict[str, Any] = {}
            size = _cli_size([f"-{level}"], p.path) if has_cli and p.path is not None else None
            if not mode.sizes_only or size is None:
                lib, enc_s, dec_s = _libzstd(level, data, reps)
                extra = {"enc_s": enc_s, "dec_s": dec_s, "libzstd_bytes": lib}
                extra["timing"] = _timing(reps, "libzstd in process")
                size = size if size is not None else lib
            extra["size_from"] = "zstd command line" if has_cli and p.path is not None else "libzstd"
            return _row(p.name, p.kind, f"zstd -{level}", n, size, **extra)

        guarded(f"zstd -{level}", whole)

    def lz4_frame() -> dict[str, Any]:
        enc_s, out = median_time(lambda: lz4.frame.compress(data), reps)
        dec_s, back = median_time(lambda: lz4.frame.decompress(out), reps)
        if back != data:
            raise AssertionError("lz4 frame round trip differs")
        return _row(
            p.name,
            p.kind,
            "lz4 (frame)",
            n,
            len(out),
            enc_s=enc_s,
            dec_s=dec_s,
            timing=_timing(reps, "in process"),
        )

    guarded("lz4 (frame)", lz4_frame)

    if old is not None:
        if has_cli and p.path is not None and p.old_path is not None:
            op, np_ = p.old_path, p.path

            def patch_cli() -> dict[str, Any]:
                size, enc_s, dec_s = _patch_cli(op, np_, data, reps)
                timing = _timing(reps, "zstd command line wall time, process start and file I/O included")
                return _row(p.name, p.kind, PATCH_CLI, n, size, enc_s=enc_s, dec_s=dec_s, timing=timing)

            guarded(PATCH_CLI, patch_cli)
        if not mode.sizes_only:

            def patch_lib() -> dict[str, Any]:
                size, enc_s, dec_s = _libzstd(3, data, reps, old)
                return _row(
                    p.name,
                    p.kind,
                    PATCH_LIB,
                    n,
                    size,
                    enc_s=enc_s,
                    dec_s=dec_s,
                    timing=_timing(reps, "libzstd"),
                )

            guarded(PATCH_LIB, patch_lib)
    return rows


# ------------------------------------------------------------------------------------------------- checks


def checks_for(p: Payload, rows: list[dict[str, Any]], mode: Mode) -> list[dict[str, Any]]:
    by = {r["codec"]: r for r in rows}
    out: list[dict[str, Any]] = []

    def size_check(check: str, ours: str, ref: str, slack: float, speeds: bool) -> None:
        o, r = by.get(ours), by.get(ref)
        if r is None or r["encoded_bytes"] is None:
            return
        limit = max(slack * r["encoded_bytes"], r["encoded_bytes"] + SLACK_BYTES)
        c: dict[str, Any] = {
            "family": p.name,
            "check": check,
            "ours_bytes": o["encoded_bytes"] if o else None,
            "reference_bytes": r["encoded_bytes"],
            "limit_bytes": int(limit),
        }
        ok_size = o is not None and o["encoded_bytes"] is not None
        c["value"] = o["encoded_bytes"] / r["encoded_bytes"] if o and ok_size else None
        c["ok"] = bool(ok_size and o is not None and o["encoded_bytes"] <= limit)
        if o is not None and "error" in o:
            c["error"] = o["error"]
        if speeds:
            c["ours_encode_mb_s"] = o["encode_mb_s"] if o else None
            c["reference_encode_mb_s"] = r["encode_mb_s"]
            lib = by.get(PATCH_LIB)
            c["libzstd_patch_encode_mb_s"] = lib["encode_mb_s"] if lib else None
        out.append(c)

    if p.real:
        file_check = f"zstd <= {FILE_SLACK:.2f} x zstd -3 CLI, or +{SLACK_BYTES} B"
        size_check(file_check, "zstd", "zstd -3", FILE_SLACK, False)
        if p.kind == "pair":
            pair_check = f"hde <= {PAIR_SLACK:.2f} x patch-from CLI, or +{SLACK_BYTES} B"
            size_check(pair_check, "hde", PATCH_CLI, PAIR_SLACK, True)
    if p.name == VM_FAMILY:
        h = by.get("hde")
        ratio = h["ratio"] if h else None
        speed = h["encode_mb_s"] if h else None
        out.append(
            {
                "family": p.name,
                "check": "hde ratio >= 500",
                "value": ratio,
                "ok": bool(ratio and ratio >= 500),
            }
        )
        out.append(
            {
                "family": p.name,
                "check": "hde encode MB/s >= 1000, one core" + (" (1 run)" if mode.sizes_only else ""),
                "value": speed,
                "ok": bool(speed and speed >= 1000),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ payloads


def synthetic(size: int, only: str | None, tmp: Path) -> list[Payload]:
    rng = np.random.default_rng(2026)
    image = vm_memory(size, rng)
    made: list[tuple[str, bytes, bytes | None]] = [
        ("random", random_bytes(size, rng), None),
        ("JSON logs", logs_json(size, rng), None),
        ("VM memory image", image, None),
        (VM_FAMILY, dirty_round(image, rng, dirty_fraction=0.05, max_edit=64), image),
    ]
    out = []
    for i, (name, data, old) in enumerate(made):
        if not corpus_mod.matches(only, name):
            continue
        path, old_path = tmp / f"synthetic-{i}", tmp / f"synthetic-{i}.old" if old is not None else None
        path.write_bytes(data)
        if old_path is not None and old is not None:
            old_path.write_bytes(old)

        def load(data: bytes = data, old: bytes | None = old) -> tuple[bytes, bytes | None]:
            return data, old

        kind = "synthetic"
        out.append(
            Payload(name, kind, load, path, old_path, {"name": name, "kind": kind, "bytes": len(data)})
        )
    return out


def real(items: list[corpus_mod.Item], pairs: list[tuple[str, str]], only: str | None) -> list[Payload]:
    out = []
    for item in sorted(items, key=lambda i: (i.is_pair, i.size)):

        def load(item: corpus_mod.Item = item) -> tuple[bytes, bytes | None]:
            return item.read(), item.read_old()

        name = item.name
        out.append(
            Payload(name, "pair" if item.is_pair else "file", load, item.path, item.old_path, item.summary())
        )
    for old, new in pairs:
        o, n = Path(old), Path(new)
        name = f"{o.name}→{n.name}"
        if not corpus_mod.matches(only, name):
            continue

        def load_pair(o: Path = o, n: Path = n) -> tuple[bytes, bytes | None]:
            return n.read_bytes(), o.read_bytes()

        summary = {"name": name, "kind": "pair", "bytes": n.stat().st_size, "old_bytes": o.stat().st_size}
        summary["source"] = "given on the command line (--pair)"
        out.append(Payload(name, "pair", load_pair, n, o, summary))
    return out


# ------------------------------------------------------------------------------------------------ printing


def _fmt(x: float | None, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}{fmt}}"


def print_table(rows: list[dict[str, Any]], key: str, title: str, fmt: str) -> None:
    families: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["family"], {})[r["codec"]] = r
    cols = [c for c in COLUMNS if any(c in by for by in families.values())]
    heads = {PATCH_CLI: "patch CLI", PATCH_LIB: "patch lib", "lz4 (frame)": "lz4 frame"}
    print(f"\n{title}")
    print(f"{'payload':48} {'MiB':>8} " + " ".join(f"{heads.get(c, c):>10}" for c in cols))
    for family, by in families.items():
        size = next(iter(by.values()))["bytes"] / MiB
        cells = []
        for c in cols:
            cell = by.get(c)
            cells.append(
                f"{'ERROR':>10}" if cell and "error" in cell else _fmt(cell[key] if cell else None, 10, fmt)
            )
        print(f"{family[:48]:48} {size:8.2f} " + " ".join(cells))


def print_checks(checks: list[dict[str, Any]]) -> None:
    print("\nacceptance checks")
    for c in checks:
        flag = "ok  " if c["ok"] else "MISS"
        if "reference_bytes" in c:
            ours = "-" if c["ours_bytes"] is None else f"{c['ours_bytes']:,}"
            value = "-" if c["value"] is None else f"{c['value']:.3f}"
            text = f"{ours} vs {c['reference_bytes']:,} B = {value}x (limit {c['limit_bytes']:,})"
            if "ours_encode_mb_s" in c:
                text += (
                    f"; encode MB/s hde {_fmt(c['ours_encode_mb_s'], 0, '.0f')}, patch-from CLI "
                    f"{_fmt(c['reference_encode_mb_s'], 0, '.0f')}"
                )
                if c.get("libzstd_patch_encode_mb_s"):
                    text += f", libzstd {c['libzstd_patch_encode_mb_s']:.0f}"
        else:
            text = "-" if c["value"] is None else f"{c['value']:,.1f}"
        if "error" in c:
            text += f" [{c['error'][:80]}]"
        print(f"  {flag} {c['family'][:46]:46} {c['check'][:42]:42} {text}")
    missed = sum(not c["ok"] for c in checks)
    print(f"  {len(checks) - missed} of {len(checks)} checks passed")


def _cli_version() -> str | None:
    if shutil.which("zstd") is None:
        return None
    out = subprocess.run(["zstd", "--version"], capture_output=True, text=True)
    return out.stdout.strip().strip("*").strip() or None


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes-only", action="store_true", help="one run per codec: sizes and checks, in seconds"
    )
    ap.add_argument("--quick", action="store_true", help="4 MiB synthetic payloads, at most 3 timing repeats")
    ap.add_argument("--only", metavar="SUBSTRING", help="only the payloads whose name contains it (any case)")
    ap.add_argument(
        "--corpus-dir",
        type=Path,
        default=None,
        help=f"default ${corpus_mod.ENV_VAR} or {corpus_mod.DEFAULT_DIR}",
    )
    ap.add_argument(
        "--offline", action="store_true", help="download nothing; corpus items not cached are skipped"
    )
    ap.add_argument("--no-corpus", action="store_true", help="synthetic payloads and --pair only")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("OLD", "NEW"))
    ap.add_argument("--out", type=Path, default=None, help="results file (default: see above)")
    args = ap.parse_args()
    mode = Mode(sizes_only=args.sizes_only, quick=args.quick)
    t_start = time.perf_counter()
    has_cli = shutil.which("zstd") is not None
    if not has_cli:
        print(
            "zstd command line not found: reference sizes from libzstd, no --patch-from rows", file=sys.stderr
        )

    if args.no_corpus:
        corpus = corpus_mod.Corpus(Path(), [], [], 0.0)
    else:
        corpus = corpus_mod.build(args.corpus_dir, only=args.only, offline=args.offline)
        print(f"corpus: {len(corpus.items)} items ready in {corpus.build_s:.1f} s", file=sys.stderr)
        for s in corpus.skipped:
            print(f"corpus: skipped {s['id']}: {s['reason']}", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        payloads = synthetic(4 * MiB if args.quick else 16 * MiB, args.only, Path(tmp))
        payloads += real(corpus.items, args.pair, args.only)
        for p in payloads:
            t = time.perf_counter()
            got = measure(p, mode, has_cli)
            rows += got
            checks += checks_for(p, got, mode)
            size = got[0]["bytes"] / MiB if got else 0
            print(f"measured {p.name} ({size:.2f} MiB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    print_table(rows, "ratio", "ratio (original / encoded bytes)", ".2f")
    if not mode.sizes_only:
        print_table(rows, "encode_mb_s", "encode MB/s (one core)", ".0f")
        print_table(rows, "decode_mb_s", "decode MB/s (one core)", ".0f")
    print_checks(checks)
    elapsed = time.perf_counter() - t_start

    doc = {
        "machine": machine(),
        "quick": args.quick,
        "sizes_only": args.sizes_only,
        "only": args.only,
        "elapsed_s": elapsed,
        "frame_format": getattr(frame_module, "FORMAT_VERSION", None),
        "tools": {
            "zstd_cli": _cli_version(),
            "libzstd": zstd_version,
            "lz4": lz4.library_version_string(),
        },
        "commands": COMMANDS,
        "corpus": {
            "items": [p.summary for p in payloads if p.real],
            "skipped": corpus.skipped,
            "build_s": corpus.build_s,
        },
        "rows": rows,
        "checks": checks,
    }
    path = args.out
    if path is None and (args.sizes_only or args.only is not None or args.no_corpus):
        path = (args.corpus_dir or corpus_mod.default_dir()).expanduser() / "strategies-partial.json"
    if path is None:
        path = write("strategies", doc)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
