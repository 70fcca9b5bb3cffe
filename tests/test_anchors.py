"""HDE's content-defined anchors: the compiled scan against the rule written out in numpy, and region
coding's two passes (the copy parser kept where it finds the delta, the strong parser where it does not)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp_selector._anchors import block_anchors
from dwcp_selector.strategies import Baseline, HdeEncoder, PayloadCodec, RawEncoder, Registry
from dwcp_selector.strategies.anchors import AnchorIndex, anchor_keys
from dwcp_selector.workload import logs_json
from dwcp_selector.workload.payloads import edit_version

MiB = 1 << 20


def reference_anchors(data: bytes) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
    """The anchor rule in numpy: the little-endian word at every position, non-zero and hashing (times
    0x9E3779B1, modulo 2^32) below 2^24; its key the 8 bytes there, which must lie inside ``data``."""
    n = len(data) - 8
    if n <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    buf = np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    words = buf[:n] | buf[1 : n + 1] << 8 | buf[2 : n + 2] << 16 | buf[3 : n + 3] << 24
    with np.errstate(over="ignore"):
        hashed = words * np.uint32(0x9E3779B1)
    positions = np.flatnonzero((hashed < np.uint32(1 << 24)) & (words != 0)).astype(np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)[positions[:, None] + np.arange(8)]
    return positions, np.ascontiguousarray(raw).view(np.uint64).reshape(-1)


@given(st.binary(max_size=3000), st.integers(0, 3000), st.integers(0, 3000))
def test_compiled_scan_is_the_rule(data: bytes, start: int, end: int) -> None:
    positions, keys = reference_anchors(data)
    inside = (positions >= start) & (positions < end)
    got_pos, got_keys = block_anchors(data, start, end)
    assert np.array_equal(np.frombuffer(got_pos, dtype=np.int64), positions[inside])
    assert np.array_equal(np.frombuffer(got_keys, dtype=np.uint64), keys[inside])


def test_whole_payload_anchors_match_the_rule_across_blocks() -> None:
    rng = np.random.default_rng(5)
    # a block boundary (4 MiB) inside, and content with many anchors (a repeated word that hashes low)
    data = rng.integers(0, 256, 9 * MiB + 123, dtype=np.uint8).tobytes()
    word = next(w for w in range(1, 1 << 16) if (w * 0x9E3779B1) % (1 << 32) < 1 << 24).to_bytes(4, "little")
    data = data[: 5 * MiB] + word * 4096 + data[5 * MiB :]
    positions, keys = anchor_keys(data)
    ref_pos, ref_keys = reference_anchors(data)
    assert np.array_equal(positions, ref_pos) and np.array_equal(keys, ref_keys)
    assert AnchorIndex.build(data).keys.size > 0


def test_anchor_scan_refuses_what_is_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        block_anchors("text", 0, 4)  # type: ignore[arg-type]


def _codec() -> PayloadCodec:
    return PayloadCodec(Registry([HdeEncoder(), RawEncoder()]))


def test_a_library_edited_in_a_few_places_codes_with_the_copy_parser() -> None:
    """A binary with a few inserted and deleted bytes (every page after the first edit shifted): the
    region frames find it whole, as small as the strong parser's, and far faster than it was."""
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes()
    new = edit_version(old, rng, edits=6)
    base = Baseline("lib", old)
    codec = _codec()
    encoded = codec.encode(new, "hde", baseline=base)
    assert encoded.encoded_bytes < 8 * 1024  # six edits of at most 200 bytes, and frame overhead
    assert codec.decode(encoded.to_bytes(), baseline=base) == new


def test_a_large_delta_is_coded_again_and_the_smaller_kept() -> None:
    """Half new content: every chunk's copy-pass delta is over 1/64 of it, so the second pass (tables
    for the whole prefix) runs on every chunk, as if forced, and the result is never larger than the
    copy pass alone."""
    rng = np.random.default_rng(4)
    old = logs_json(2 * MiB, rng)
    fresh = logs_json(2 * MiB, np.random.default_rng(40))
    new = b"".join(old[i : i + 65536] + fresh[i : i + 65536] for i in range(0, 2 * MiB, 131072))
    base = Baseline("logs", old)
    strong = _codec().encode(new, "hde", baseline=base)
    import dwcp_selector.strategies.hde as hde

    ratio = hde.REGION_COPY_RATIO
    try:
        hde.REGION_COPY_RATIO = 1 << 30  # every copy pass "too large": the strong pass always runs
        both = _codec().encode(new, "hde", baseline=base)
        hde.REGION_COPY_RATIO = 0  # the copy pass always kept
        copy_only = _codec().encode(new, "hde", baseline=base)
    finally:
        hde.REGION_COPY_RATIO = ratio
    assert copy_only.encoded_bytes * hde.REGION_COPY_RATIO > 2 * MiB  # the second pass was due
    assert both.encoded_bytes == strong.encoded_bytes <= copy_only.encoded_bytes
    assert _codec().decode(strong.to_bytes(), baseline=base) == new
