"""Decoder memory: a frame is decoded into one buffer of its declared length, and everything else a
decoder holds (a zstd window, one HDE segment's prefix, one lz4 block) is bounded, so peak memory stays
within 1.1x the declared length plus a small constant, for crafted frames (bombs, lying lengths,
decoded in full and refused at the checksum) and for valid ones alike.

Each case runs in a child process that builds its frame, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), decodes, and reports ``VmHWM`` minus the RSS before decoding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MiB = 1 << 20
#: The declared length of the large cases.
DECLARED = 512 * MiB
#: What a decoder may hold beyond 1.1x the declared length: interpreter noise, a zstd window's last
#: pieces, one segment's prefix and scratch.
SLACK = 30_000_000

CHILD = textwrap.dedent(
    r"""
    import json, struct, sys
    import numpy as np
    from dwcp_selector.errors import DwcpError
    from dwcp_selector.strategies import Baseline, PayloadCodec, default_registry
    from dwcp_selector.strategies._zstd import CompressionParameter as CP, ZstdCompressor
    from dwcp_selector.strategies.checksum import ChecksumAlgo, checksum
    from dwcp_selector.strategies.frame import pack_frame, varint
    from dwcp_selector.strategies.zstdcodec import strip_magic
    import lz4.block

    MiB = 1 << 20
    kind, declared = sys.argv[1], int(sys.argv[2])
    REG = default_registry()
    XXH = ChecksumAlgo.XXH3_64

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def zstd_zeros(n, window_log=21):
        comp = ZstdCompressor(options={CP.compression_level: 1, CP.content_size_flag: 0,
                                       CP.window_log: window_log})
        piece = bytes(min(n, 16 * MiB))
        parts = [comp.compress(piece[: min(len(piece), n - i)]) for i in range(0, n, max(1, len(piece)))]
        return strip_magic(b"".join(parts) + comp.flush())

    def hde_ext(base, page_ref=0, lo=0, hi=0):
        bid = base.id.encode()
        return b"".join((varint(len(bid)), bid, struct.pack("<Q", base.checksum), varint(len(base)),
                         varint(page_ref), varint(lo), varint(hi - lo)))

    def wrong(n):  # any checksum: the bombs decode in full and are refused at the checksum
        return 0x1234567890ABCDEF

    baseline = None
    history = None
    expect_ok = False
    if kind == "hde-51-byte":  # the review's frame: every page changed, a body of a few bytes
        baseline = Baseline("vm", bytes(64 << 10))
        body = bytes((2,)) + zstd_zeros(0)
        frame = pack_frame(3, 1, XXH, declared, wrong(declared), hde_ext(baseline), body)
    elif kind == "hde-pages-bomb":  # segmented pages frame that decodes in full: 1 MiB of zeros a segment
        baseline = Baseline("vm", bytes(64 << 10))
        z = zstd_zeros(MiB)
        body = bytes((2,)) + (varint(len(z)) + z) * (declared // MiB)
        frame = pack_frame(3, 2, XXH, declared, wrong(declared), hde_ext(baseline), body)
    elif kind == "hde-region-bomb":  # segmented region frame: every segment against a 4 MiB window
        baseline = Baseline("vm", np.random.default_rng(1).bytes(4 * MiB))
        z = zstd_zeros(MiB)
        record = varint(0) + varint(len(baseline)) + varint(0) + varint(len(z)) + z
        body = bytes((2,)) + record * (declared // MiB)
        frame = pack_frame(3, 4, XXH, declared, wrong(declared), hde_ext(baseline), body)
    elif kind == "zstd-bomb":  # 32 KB of zstd restoring 1 GiB, in the largest window allowed for 512 MiB
        frame = pack_frame(2, 0, XXH, declared, wrong(declared), b"", zstd_zeros(2 * declared, 25))
    elif kind == "zstd-window-bomb":  # asks for a 128 MiB window
        frame = pack_frame(2, 0, XXH, declared, wrong(declared), b"", zstd_zeros(2 * declared, 27))
    elif kind == "lz4-bomb":  # segmented lz4 that decodes in full
        block = lz4.block.compress(bytes(MiB), store_size=False)
        body = (varint(len(block) << 1) + block) * (declared // MiB)
        frame = pack_frame(1, 2, XXH, declared, wrong(declared), b"", body)
    elif kind == "lz4-one-block":  # a single block declaring 512 MiB
        block = lz4.block.compress(bytes(MiB), store_size=False)
        frame = pack_frame(1, 0, XXH, declared, wrong(declared), b"", block)
    elif kind == "none-lying":  # a raw frame of the declared length with a wrong checksum
        frame = pack_frame(0, 0, XXH, declared, wrong(declared), b"", bytes(declared))
    elif kind.startswith("valid-"):
        expect_ok = True
        name = kind.split("-")[1]
        rng = np.random.default_rng(7)
        unit = rng.integers(0, 16, 4 * MiB, dtype=np.uint8)  # compressible, not trivially
        data = np.tile(unit, declared // len(unit))
        if name == "hde":  # a pre-copy round: one edit in every 8th page
            base_arr = data.copy()
            data[::8 * 4096] ^= 0xFF
            baseline = Baseline("vm", base_arr.tobytes())
            del base_arr
        elif name == "hde_region":  # content shifted by one byte: every page rewritten
            baseline = Baseline("doc", data.tobytes())
            data = np.concatenate((np.zeros(1, np.uint8), data[:-1]))
        data = data.tobytes()
        enc = REG.get("hde" if name.startswith("hde") else name)
        if name == "zstd":  # a chunk after the first: 1 MiB of context before it
            history = data[:MiB]
            from dwcp_selector.strategies import ChunkContext
            whole = history + data
            frame = enc.encode(data, context=ChunkContext(offset=MiB, payload_length=len(whole),
                                                          payload=memoryview(whole)))
            del whole
        else:
            frame = enc.encode(data, baseline=baseline)
        del data
    else:
        raise SystemExit(f"unknown kind {kind}")

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    outcome = "decoded"
    try:
        out = REG.decode(frame, baseline=baseline, history=history)
        assert len(out) == declared
        del out
    except DwcpError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    peak = status("VmHWM")
    print(json.dumps({"kind": kind, "growth": peak - before, "outcome": outcome,
                      "frame_bytes": len(frame), "expect_ok": expect_ok}))
    """
)


def _run(kind: str, declared: int) -> dict[str, object]:
    if not Path("/proc/self/clear_refs").exists():  # pragma: no cover - Linux without procfs
        pytest.skip("needs /proc/self/clear_refs to reset the peak-RSS mark")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(declared)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _bound(declared: int) -> float:
    return 1.1 * declared + SLACK


# kind -> what the refusal says (a substring), for crafted frames
CRAFTED = {
    "hde-51-byte": "FrameLimitError",  # 131,072 changed pages in one zstd frame
    "hde-pages-bomb": "checksum mismatch",
    "hde-region-bomb": "checksum mismatch",
    "zstd-bomb": "more than the declared",
    "zstd-window-bomb": "window",
    "lz4-bomb": "checksum mismatch",
    "lz4-one-block": "FrameLimitError",
    "none-lying": "checksum mismatch",
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_frames_are_refused_within_the_declared_bound(kind: str) -> None:
    r = _run(kind, DECLARED)
    assert CRAFTED[kind] in str(r["outcome"]), r
    growth = int(str(r["growth"]))
    assert growth <= _bound(DECLARED), f"{kind}: decoding grew memory by {growth / MiB:.0f} MiB: {r}"


@pytest.mark.parametrize(
    ("kind", "declared"),
    [
        ("valid-none", DECLARED),
        ("valid-lz4", DECLARED),
        ("valid-zstd", DECLARED),
        ("valid-hde", DECLARED),
        # region coding is slow: a smaller payload, the same bound; still half a minute on 2 cores, so it
        # runs with the slow tests (make test-slow)
        pytest.param("valid-hde_region", 64 * MiB, marks=pytest.mark.slow),
    ],
)
def test_valid_frames_decode_within_the_declared_bound(kind: str, declared: int) -> None:
    r = _run(kind, declared)
    assert r["outcome"] == "decoded", r
    growth = int(str(r["growth"]))
    assert growth <= _bound(declared), f"{kind}: decoding grew memory by {growth / MiB:.0f} MiB: {r}"


def test_small_bombs_are_refused_before_any_allocation() -> None:
    """Bodies far too short for what they declare are refused without touching the declared length."""
    for kind in ("hde-51-byte", "zstd-window-bomb", "lz4-one-block"):
        r = _run(kind, DECLARED)
        assert int(str(r["growth"])) < 16 * MiB, r
