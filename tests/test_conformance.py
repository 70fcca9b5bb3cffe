"""One conformance suite, run against every encoder of the registry (the python-zstandard way).

Each encoder must round-trip any bytes (empty, one byte, page-aligned or not, across chunk boundaries),
refuse corrupt, truncated and foreign input with a typed error and never return wrong bytes, refuse a
declared length beyond its limit before allocating, and be safe to share between threads. HDE must also
tell a missing baseline from a wrong one.
"""

from __future__ import annotations

import concurrent.futures
import os
import random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dwcp_selector.errors import (
    BaselineError,
    BaselineMismatchError,
    BaselineMissingError,
    ContextMissingError,
    CorruptFrameError,
    DwcpError,
    FrameError,
    FrameLimitError,
    StrategyError,
    TruncatedFrameError,
    UnsupportedFrameError,
)
from dwcp_selector.strategies import Baseline, BaselineStore, PayloadCodec, default_registry
from dwcp_selector.strategies.frame import varint

from .conftest import edited

REGISTRY = default_registry()
NAMES = REGISTRY.names()
SIZES = [0, 1, 7, 4095, 4096, 4097, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17]


def _payload(size: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    text = b"".join(b"row %d value %d status ok\n" % (i, rnd.randrange(1000)) for i in range(size // 20 + 2))
    noise = os.urandom(max(0, size // 8))
    return (text[: size - len(noise)] + noise)[:size] if size else b""


def _baseline_for(name: str, payload: bytes) -> Baseline | None:
    if not REGISTRY.get(name).needs_baseline:
        return None
    return Baseline("resource-1", edited(payload, seed=len(payload)) if payload else b"old version")


@pytest.mark.parametrize("name", NAMES)
@given(data=st.binary(max_size=20000))
@example(data=b"")
@example(data=b"\x00")
@example(data=bytes(4096))
@example(data=bytes(8193))
def test_frame_round_trip_any_bytes(name: str, data: bytes) -> None:
    enc = REGISTRY.get(name)
    baseline = _baseline_for(name, data)
    frame = enc.encode(data, baseline=baseline)
    assert enc.decode(frame, baseline=baseline) == data
    assert REGISTRY.decode(frame, baseline=baseline) == data


@given(old=st.binary(max_size=30000), new=st.binary(max_size=30000))
def test_hde_round_trip_against_any_baseline(old: bytes, new: bytes) -> None:
    base = Baseline("vm-9", old)
    codec = PayloadCodec(REGISTRY, chunk_size=8192)  # small chunks: many chunks, both tiers
    assert codec.decode(codec.encode(new, "hde", baseline=base), baseline=base) == new


@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 50000))
def test_hde_round_trip_on_edited_versions(seed: int, size: int) -> None:
    old = _payload(size, seed)
    new = edited(old, seed)
    base = Baseline("doc", old)
    codec = PayloadCodec(REGISTRY, chunk_size=16384)
    assert codec.decode(codec.encode(new, "hde", baseline=base), baseline=base) == new


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES)
def test_payload_round_trip_across_chunk_boundaries(name: str, size: int) -> None:
    codec = PayloadCodec(REGISTRY)
    data = _payload(size)
    baseline = _baseline_for(name, data)
    encoded = codec.encode(data, name, baseline=baseline)
    assert len(encoded.frames) == codec.chunk_count(size)
    container = encoded.to_bytes()
    assert len(container) == encoded.encoded_bytes
    assert codec.decode(container, baseline=baseline) == data


def _frames(name: str) -> tuple[bytes, bytes, Baseline | None]:
    data = _payload(50000, seed=5)
    baseline = _baseline_for(name, data)
    return data, REGISTRY.get(name).encode(data, baseline=baseline), baseline


@pytest.mark.parametrize("name", NAMES)
@given(position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_corrupt_frames_raise_typed_errors_never_wrong_bytes(name: str, position: int, flip: int) -> None:
    data, frame, baseline = _frames(name)
    bad = bytearray(frame)
    bad[position % len(bad)] ^= flip
    try:
        out = REGISTRY.decode(bytes(bad), baseline=baseline)
    except (FrameError, BaselineError):
        return
    assert out == data  # a flip that decodes at all must decode to the original (checksum verified)


@pytest.mark.parametrize("name", NAMES)
@given(cut=st.integers(min_value=0))
def test_truncated_frames_raise(name: str, cut: int) -> None:
    _, frame, baseline = _frames(name)
    with pytest.raises(FrameError):
        REGISTRY.decode(frame[: cut % len(frame)], baseline=baseline)


@pytest.mark.parametrize("name", NAMES)
def test_trailing_bytes_are_refused(name: str) -> None:
    _, frame, baseline = _frames(name)
    with pytest.raises(CorruptFrameError, match="trailing"):
        REGISTRY.decode(frame + b"\x00", baseline=baseline)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"DWC",
        b"PK\x03\x04zipfile",
        b"\x28\xb5\x2f\xfd" + bytes(20),
        os.urandom(300),
        b"DWCF" + bytes(40),
    ],
)
def test_foreign_input_is_refused(blob: bytes) -> None:
    with pytest.raises(FrameError):
        REGISTRY.decode(blob)
    with pytest.raises(FrameError):
        PayloadCodec(REGISTRY).decode(blob)


def test_unknown_version_and_strategy() -> None:
    frame = bytearray(REGISTRY.get("none").encode(b"hello"))
    frame[4] = 9
    with pytest.raises(UnsupportedFrameError, match="version 9"):
        REGISTRY.decode(bytes(frame))
    frame[4] = 2
    frame[5] = 42
    with pytest.raises(UnsupportedFrameError, match="strategy id 42"):
        REGISTRY.decode(bytes(frame))
    with pytest.raises(StrategyError):
        REGISTRY.get("brotli")


@pytest.mark.parametrize("name", NAMES)
def test_decoder_refuses_a_frame_of_another_strategy(name: str) -> None:
    other = "none" if name != "none" else "lz4"
    frame = REGISTRY.get(other).encode(b"abc" * 100)
    with pytest.raises(UnsupportedFrameError):
        REGISTRY.get(name).decode(frame)


def _relabel_length(frame: bytes, new_length: int) -> bytes:
    """The same frame with its declared original length replaced (a lying header)."""
    header = REGISTRY.peek(frame)
    pos = 7
    old_varint_len = len(varint(header.original_length))
    return frame[:pos] + varint(new_length) + frame[pos + old_varint_len :]


@pytest.mark.parametrize("name", NAMES)
def test_declared_length_beyond_limit_is_refused_before_allocation(name: str) -> None:
    data, frame, baseline = _frames(name)
    lying = _relabel_length(frame, 1 << 60)
    with pytest.raises(FrameLimitError):
        REGISTRY.decode(lying, baseline=baseline)
    with pytest.raises(FrameLimitError):
        REGISTRY.decode(frame, baseline=baseline, max_output=len(data) - 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("delta", [-1000, -1, 1, 1000])
def test_declared_length_that_lies_is_caught(name: str, delta: int) -> None:
    data, frame, baseline = _frames(name)
    with pytest.raises((FrameError, BaselineError)):
        REGISTRY.decode(_relabel_length(frame, len(data) + delta), baseline=baseline)


def test_hde_missing_and_wrong_baseline() -> None:
    old = _payload(200000, 3)
    new = edited(old, 3)
    codec = PayloadCodec(REGISTRY)
    container = codec.encode(new, "hde", baseline=Baseline("db-1", old)).to_bytes()
    with pytest.raises(BaselineMissingError, match="db-1"):
        codec.decode(container)
    with pytest.raises(BaselineMismatchError, match="db-1"):
        codec.decode(container, baseline=Baseline("db-1", old + b"!"))
    store = BaselineStore()
    with pytest.raises(BaselineMissingError, match="not in the store"):
        codec.decode(container, baseline=store)
    store.put("db-1", old)
    assert codec.decode(container, baseline=store) == new
    # identical content under another name is the right baseline
    assert codec.decode(container, baseline=Baseline("renamed", old)) == new


def test_hde_is_not_offered_without_baseline() -> None:
    assert REGISTRY.offered(100, has_baseline=False) == ["none", "lz4", "zstd"]
    assert REGISTRY.offered(100, has_baseline=True) == ["none", "lz4", "zstd", "hde"]
    with pytest.raises(StrategyError):
        REGISTRY.get("hde").encode(b"data")
    with pytest.raises(StrategyError):
        PayloadCodec(REGISTRY).encode(b"data", "hde")


def test_container_truncated_at_a_frame_boundary_or_reordered() -> None:
    codec = PayloadCodec(REGISTRY, chunk_size=4096)
    data = _payload(5 * 4096 + 100)
    enc = codec.encode(data, "zstd")
    header, frames = enc.header, enc.frames
    with pytest.raises(TruncatedFrameError, match="after 3 of 6 chunks"):
        codec.decode(header + b"".join(frames[:3]))
    swapped = [frames[1], frames[0], *frames[2:]]
    with pytest.raises(ContextMissingError):  # chunk 1 needs chunk 0's bytes as its context
        codec.decode(header + b"".join(swapped))
    light = codec.encode(data, "lz4")
    with pytest.raises(CorruptFrameError):  # independent chunks: caught by the payload checksum
        codec.decode(light.header + b"".join([light.frames[1], light.frames[0], *light.frames[2:]]))
    with pytest.raises(CorruptFrameError, match="after its last chunk"):
        codec.decode(enc.to_bytes() + b"x")
    other = codec.encode(_payload(5 * 4096 + 100, seed=9), "zstd")
    with pytest.raises(CorruptFrameError, match="checksum"):
        codec.decode(header + b"".join([other.frames[0], *frames[1:]]))


@pytest.mark.parametrize("name", NAMES)
def test_concurrent_use_of_one_registry(name: str) -> None:
    codec = PayloadCodec(REGISTRY, chunk_size=65536)
    payloads = [_payload(150000 + 997 * i, seed=i) for i in range(16)]
    baselines = [_baseline_for(name, p) for p in payloads]

    def job(i: int) -> bool:
        c = codec.encode(payloads[i], name, baseline=baselines[i]).to_bytes()
        return codec.decode(c, baseline=baselines[i]) == payloads[i]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(16)))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_64_mib_payload_round_trip(name: str) -> None:
    codec = PayloadCodec(REGISTRY)
    data = _payload(64 << 20, seed=11)
    baseline = Baseline("big", edited(data, 11)) if REGISTRY.get(name).needs_baseline else None
    container = codec.encode(data, name, baseline=baseline).to_bytes()
    assert codec.decode(container, baseline=baseline) == data


def test_every_error_is_a_dwcp_error() -> None:
    for exc in (FrameLimitError, BaselineMismatchError, StrategyError, UnsupportedFrameError):
        assert issubclass(exc, DwcpError)
