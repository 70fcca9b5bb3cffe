"""HDE against ``zstd -3 --patch-from`` on edit patterns that real version pairs rarely show this cleanly.

The real pairs of ``bench/strategies.py`` change a little everywhere. Here the content is real (the
corpus's Debian changelogs and CPython standard library tarball, ``bench/corpus.py``) and the *edit* is
constructed, to show where a chunked delta stands against one whole-file ``--patch-from`` frame:

* append 4 MiB / prepend 3 MiB of other real content (a log that grew, a file that gained a header);
* insert 6 MiB of other content in the middle, delete 5 MiB, swap the two halves (blocks that moved far);
* installed shared libraries of the corpus with the staging workload's edit model (``edit_version``:
  ten replacements, insertions and deletions of up to 200 bytes, so every page after the first shifts):
  the version pairs of the ``executable`` payloads that staging collects, where HDE codes by regions.

Every round trip verified; hde's and lz4's encode MB/s are medians of 5 runs on one core (lz4 through
the payload codec, as the strategy ``lz4`` sends it), patch-from's from the command's wall time (start-up
and file I/O included). Prints a table and writes ``bench/results/hde_edits.json``.

    python bench/hde_edits.py [--corpus-dir DIR] [--offline]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import corpus as corpus_mod
from _common import machine, median_time, write
from dwcp_selector.strategies import Baseline, PayloadCodec
from dwcp_selector.workload.payloads import edit_version

MiB = 1 << 20


REPEATS = 5


def cases(changelogs: bytes, tar: bytes, libraries: dict[str, bytes]) -> dict[str, tuple[bytes, bytes]]:
    """(old, new) per edit pattern."""
    tar = tar[: 24 * MiB]
    edited = {
        f"{name}, edit model": (data, edit_version(data, np.random.default_rng(seed)))
        for seed, (name, data) in enumerate(libraries.items())
    }
    return edited | {
        "append 4 MiB": (changelogs[: 12 * MiB], changelogs[: 16 * MiB]),
        "prepend 3 MiB": (changelogs[3 * MiB : 15 * MiB], changelogs[: 15 * MiB]),
        "insert 6 MiB in the middle": (
            tar[: 18 * MiB],
            tar[: 6 * MiB] + changelogs[: 6 * MiB] + tar[6 * MiB : 18 * MiB],
        ),
        "delete 5 MiB": (tar, tar[: 4 * MiB] + tar[9 * MiB :]),
        "swap the halves": (tar, tar[12 * MiB :] + tar[: 12 * MiB]),
    }


def patch_from(old: bytes, new: bytes) -> tuple[int, float]:
    """Size of ``zstd -3 --patch-from`` and the median wall seconds of the command."""
    with tempfile.TemporaryDirectory() as d:
        o, n = Path(d, "old"), Path(d, "new")
        o.write_bytes(old)
        n.write_bytes(new)
        command = ["zstd", "-3", "-q", "-c", f"--patch-from={o}", str(n)]
        size = len(subprocess.run(command, capture_output=True, check=True).stdout)
        seconds, _ = median_time(lambda: subprocess.run(command, capture_output=True, check=True), REPEATS)
        return size, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-dir", type=Path, default=None)
    ap.add_argument("--offline", action="store_true")
    args = ap.parse_args()
    corpus = corpus_mod.build(args.corpus_dir, only=None, offline=args.offline)
    by_id = {item.id: item for item in corpus.items}
    try:
        changelogs = by_id["debian-changelogs"].read()
        tar = by_id["cpython-stdlib-tar"].read()
    except KeyError as exc:
        sys.exit(f"the corpus lacks {exc}: run bench/corpus.py on a machine that has it")
    # the corpus's shared libraries of 1-10 MiB: the sizes where staging's binaries are region coded
    libraries = {
        by_id[f"installed-{key}.so"].name: by_id[f"installed-{key}.so"].read()
        for key in ("libc", "libcrypto", "libpython", "numpy-multiarray")
        if f"installed-{key}.so" in by_id
    }
    codec = PayloadCodec()
    codec.warm_up()
    rows: list[dict[str, Any]] = []
    print(
        f"{'edit':38} {'MiB':>6} {'hde B':>10} {'patch-from B':>13} {'hde / pf':>9} {'hde MB/s':>9} "
        f"{'pf MB/s':>8} {'lz4 B':>10} {'lz4 MB/s':>9}"
    )
    for name, (old, new) in cases(changelogs, tar, libraries).items():
        base = Baseline("old", old)
        elapsed, encoded = median_time(lambda: codec.encode(new, "hde", baseline=base), REPEATS)  # noqa: B023
        if codec.decode(encoded.to_bytes(), baseline=base) != new:
            sys.exit(f"{name}: hde round trip failed")
        lz4_s, lz4 = median_time(lambda: codec.encode(new, "lz4"), REPEATS)  # noqa: B023
        pf, pf_s = patch_from(old, new)
        row = {
            "edit": name,
            "bytes": len(new),
            "hde_bytes": encoded.encoded_bytes,
            "patch_from_bytes": pf,
            "relative": encoded.encoded_bytes / pf,
            "hde_encode_mb_s": len(new) / elapsed / 1e6,
            "patch_from_mb_s": len(new) / pf_s / 1e6,
            "lz4_bytes": lz4.encoded_bytes,
            "lz4_encode_mb_s": len(new) / lz4_s / 1e6,
        }
        rows.append(row)
        print(
            f"{name:38} {len(new) / MiB:6.1f} {encoded.encoded_bytes:10,} {pf:13,} {row['relative']:9.3f} "
            f"{row['hde_encode_mb_s']:9.0f} {row['patch_from_mb_s']:8.0f} {lz4.encoded_bytes:10,} "
            f"{row['lz4_encode_mb_s']:9.0f}"
        )
    print(f"wrote {write('hde_edits', {'machine': machine(), 'rows': rows})}")


if __name__ == "__main__":
    main()
