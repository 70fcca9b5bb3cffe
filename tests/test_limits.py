"""Decompression bombs: a frame whose body inflates far beyond its declared length is refused, and the
decoder's memory stays bounded by the declared length, not by what the body would produce."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from dwcp_selector.errors import FrameError
    from dwcp_selector.strategies import default_registry
    from dwcp_selector.strategies._zstd import ZstdCompressor, CompressionParameter as CP
    from dwcp_selector.strategies.checksum import ChecksumAlgo, checksum
    from dwcp_selector.strategies.frame import pack_frame
    from dwcp_selector.strategies.zstdcodec import strip_magic

    kind = sys.argv[1]
    comp = ZstdCompressor(options={CP.compression_level: 1, CP.content_size_flag: 0, CP.window_log: 27})
    zeros = bytes(16 << 20)
    body = b"".join(comp.compress(zeros) for _ in range(64)) + comp.flush()   # 1 GiB of zeros
    body = strip_magic(body)
    declared = 1 << 20
    if kind == "zstd":
        csum = checksum(ChecksumAlgo.XXH3_64, bytes(declared))
        frame = pack_frame(2, 0, ChecksumAlgo.XXH3_64, declared, csum, b"", body)
    else:
        raise SystemExit("unknown kind")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        default_registry().decode(frame)
    except FrameError as exc:
        print("refused:", exc)
    else:
        raise SystemExit("bomb was decoded")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("growth_kib", after - before)
    """
)


@pytest.mark.parametrize("kind", ["zstd"])
def test_zstd_bomb_is_refused_with_bounded_memory(kind: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, kind], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "refused:" in out and "more than the declared" in out
    growth_kib = int(out.split("growth_kib")[1])
    assert growth_kib < 64 * 1024, f"decoder memory grew by {growth_kib} KiB for a 1 MiB frame"
