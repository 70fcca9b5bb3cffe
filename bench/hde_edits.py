"""HDE against ``zstd -3 --patch-from`` on edit patterns that real version pairs rarely show this cleanly.

The real pairs of ``bench/strategies.py`` change a little everywhere. Here the content is real (the
corpus's Debian changelogs and CPython standard library tarball, ``bench/corpus.py``) and the *edit* is
constructed, to show where a chunked delta stands against one whole-file ``--patch-from`` frame:

* append 4 MiB / prepend 3 MiB of other real content (a log that grew, a file that gained a header);
* insert 6 MiB of other content in the middle, delete 5 MiB, swap the two halves (blocks that moved far).

Sizes only (every round trip verified); hde's MB/s from one run. Prints a table and writes
``bench/results/hde_edits.json``.

    python bench/hde_edits.py [--corpus-dir DIR] [--offline]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import corpus as corpus_mod
from _common import machine, write
from dwcp_selector.strategies import Baseline, PayloadCodec

MiB = 1 << 20


def cases(changelogs: bytes, tar: bytes) -> dict[str, tuple[bytes, bytes]]:
    """(old, new) per edit pattern."""
    tar = tar[: 24 * MiB]
    return {
        "append 4 MiB": (changelogs[: 12 * MiB], changelogs[: 16 * MiB]),
        "prepend 3 MiB": (changelogs[3 * MiB : 15 * MiB], changelogs[: 15 * MiB]),
        "insert 6 MiB in the middle": (
            tar[: 18 * MiB],
            tar[: 6 * MiB] + changelogs[: 6 * MiB] + tar[6 * MiB : 18 * MiB],
        ),
        "delete 5 MiB": (tar, tar[: 4 * MiB] + tar[9 * MiB :]),
        "swap the halves": (tar, tar[12 * MiB :] + tar[: 12 * MiB]),
    }


def patch_from(old: bytes, new: bytes) -> int:
    with tempfile.TemporaryDirectory() as d:
        o, n = Path(d, "old"), Path(d, "new")
        o.write_bytes(old)
        n.write_bytes(new)
        out = subprocess.run(
            ["zstd", "-3", "-q", "-c", f"--patch-from={o}", str(n)], capture_output=True, check=True
        )
        return len(out.stdout)


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
    codec = PayloadCodec()
    codec.warm_up()
    rows: list[dict[str, Any]] = []
    print(f"{'edit':28} {'MiB':>6} {'hde B':>10} {'patch-from B':>13} {'hde / pf':>9} {'hde MB/s':>9}")
    for name, (old, new) in cases(changelogs, tar).items():
        base = Baseline("old", old)
        t0 = time.perf_counter()
        encoded = codec.encode(new, "hde", baseline=base)
        elapsed = time.perf_counter() - t0
        if codec.decode(encoded.to_bytes(), baseline=base) != new:
            sys.exit(f"{name}: hde round trip failed")
        pf = patch_from(old, new)
        row = {
            "edit": name,
            "bytes": len(new),
            "hde_bytes": encoded.encoded_bytes,
            "patch_from_bytes": pf,
            "relative": encoded.encoded_bytes / pf,
            "hde_encode_mb_s": len(new) / elapsed / 1e6,
        }
        rows.append(row)
        print(
            f"{name:28} {len(new) / MiB:6.1f} {encoded.encoded_bytes:10,} {pf:13,} {row['relative']:9.3f} "
            f"{row['hde_encode_mb_s']:9.0f}"
        )
    print(f"wrote {write('hde_edits', {'machine': machine(), 'rows': rows})}")


if __name__ == "__main__":
    main()
