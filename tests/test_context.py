"""Chunks coded with context: zstd chunks see the payload bytes before them, HDE codes changed pages
against their old pages or a baseline window plus context. Round trips over every chunk layout,
decoding in order (and refusing out of order), and the receiver's in-order decoding of frames that
arrive in any order."""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dwcp_selector import AmstReceiver, AmstSender
from dwcp_selector.errors import ContextMissingError, CorruptFrameError, FrameLimitError
from dwcp_selector.strategies import (
    Baseline,
    BaselineStore,
    ChunkContext,
    HdeEncoder,
    Lz4Encoder,
    PayloadCodec,
    RawEncoder,
    Registry,
    ZstdEncoder,
    default_registry,
)
from dwcp_selector.strategies._zstd import CompressionParameter, ZstdCompressor, ZstdDict
from dwcp_selector.strategies.frame import MAX_CONTEXT_LENGTH, parse_header
from dwcp_selector.strategies.hde import Tier
from dwcp_selector.strategies.payload import DecodeHistory
from dwcp_selector.transport import PskAuth
from dwcp_selector.transport.protocol import CHUNK_HEADER, END, MSG_CHUNK, MSG_END, Hello, Manifest
from dwcp_selector.workload import dirty_round, logs_json, vm_memory

from .conftest import edited, insecure

MiB = 1 << 20
REGISTRY = default_registry()


def _registry(zstd_context: int, hde_context: int) -> Registry:
    return Registry(
        [
            RawEncoder(),
            Lz4Encoder(),
            ZstdEncoder(context_bytes=zstd_context),
            HdeEncoder(context_bytes=hde_context, tier3_margin=3000),
        ]
    )


def _headers(encoded_frames: list[bytes]) -> list[tuple[int, int]]:
    """(variant, context length) of every frame."""
    out = []
    for frame in encoded_frames:
        h = parse_header(frame, max_original_length=1 << 30)
        out.append((h.variant, h.context_length))
    return out


@given(
    data=st.binary(max_size=40000),
    chunk=st.sampled_from([512, 4096, 5000, 16384]),
    context=st.sampled_from([0, 8, 700, 4096, 9999, MiB]),
)
def test_zstd_round_trip_with_any_context_and_chunking(data: bytes, chunk: int, context: int) -> None:
    codec = PayloadCodec(_registry(context, 0), chunk_size=chunk)
    encoded = codec.encode(data, "zstd")
    assert codec.decode(encoded.to_bytes()) == data
    assert codec.decode(encoded) == data
    for index, (_, ctx) in enumerate(_headers(encoded.frames)):
        assert ctx <= min(context, index * chunk)


@given(
    old=st.binary(max_size=30000),
    new=st.binary(max_size=30000),
    chunk=st.sampled_from([4096, 8192, 12288]),
    context=st.sampled_from([0, 4096, 10000]),
)
def test_hde_round_trip_with_context_against_any_baseline(
    old: bytes, new: bytes, chunk: int, context: int
) -> None:
    codec = PayloadCodec(_registry(0, context), chunk_size=chunk)
    base = Baseline("r", old)
    assert codec.decode(codec.encode(new, "hde", baseline=base).to_bytes(), baseline=base) == new


@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 60000), shift=st.integers(1, 300))
def test_hde_round_trip_on_shifted_and_edited_versions(seed: int, size: int, shift: int) -> None:
    rng = np.random.default_rng(seed)
    old = logs_json(size, rng)
    new = rng.integers(0, 256, shift, dtype=np.uint8).tobytes() + edited(old, seed)
    codec = PayloadCodec(_registry(MiB, 6000), chunk_size=8192)
    base = Baseline("doc", old)
    encoded = codec.encode(new, "hde", baseline=base)
    assert codec.decode(encoded.to_bytes(), baseline=base) == new


def test_every_frame_names_the_context_it_needs() -> None:
    data = logs_json(3 * MiB + 5, np.random.default_rng(1))
    frames = PayloadCodec(REGISTRY).encode(data, "zstd").frames
    assert _headers(frames) == [(0, 0), (0, MiB), (0, MiB), (0, MiB)]
    assert all(ctx == 0 for _, ctx in _headers(PayloadCodec(REGISTRY).encode(data, "lz4").frames))


def test_zstd_context_keeps_the_ratio_of_one_whole_payload_call() -> None:
    # A payload whose second half repeats its first: only context across the chunk boundary finds it.
    rng = np.random.default_rng(4)
    half = rng.integers(0, 256, 600 << 10, dtype=np.uint8).tobytes()
    data = half + half
    ours = PayloadCodec(REGISTRY).encode(data, "zstd").encoded_bytes
    alone = PayloadCodec(_registry(0, 0)).encode(data, "zstd").encoded_bytes
    one_call = len(ZstdCompressor(level=3).compress(data, ZstdCompressor.FLUSH_FRAME))
    assert ours <= 1.01 * one_call + 64
    assert alone > 1.2 * ours


def test_a_chunk_decoded_without_its_context_is_refused() -> None:
    data = logs_json(2 * MiB, np.random.default_rng(2))
    enc = ZstdEncoder()
    view = memoryview(data)
    ctx = ChunkContext(offset=MiB, payload_length=len(data), payload=view)
    frame = enc.encode(view[MiB:], context=ctx)
    with pytest.raises(ContextMissingError, match="in order"):
        enc.decode(frame)
    with pytest.raises(ContextMissingError):
        enc.decode(frame, history=data[MiB - 100 : MiB])
    assert enc.decode(frame, history=data[:MiB]) == data[MiB:]
    # the wrong context is caught by the checksum, never returned
    with pytest.raises(CorruptFrameError):
        enc.decode(frame, history=bytes(MiB))


def test_context_claims_are_checked() -> None:
    frame = bytearray(Lz4Encoder().encode(b"abc" * 1000))
    header = parse_header(bytes(frame), max_original_length=1 << 30)
    # the context varint follows original length and body length: 7 + len(varints)
    pos = 7 + len(_varint(header.original_length)) + len(_varint(header.body_length))
    assert frame[pos] == 0
    forged = bytes(frame[:pos]) + _varint(100) + bytes(frame[pos + 1 :])
    with pytest.raises(CorruptFrameError, match="never uses"):
        REGISTRY.decode(forged, history=bytes(100))
    huge = bytes(frame[:pos]) + _varint(MAX_CONTEXT_LENGTH + 1) + bytes(frame[pos + 1 :])
    with pytest.raises(FrameLimitError, match="context"):
        REGISTRY.decode(huge)


def _varint(v: int) -> bytes:
    from dwcp_selector.strategies.frame import varint

    return varint(v)


def test_decode_history_keeps_only_what_a_frame_may_need() -> None:
    h = DecodeHistory(limit=10)
    for part in (b"abcd", b"efgh", b"ijkl", b"mnop"):
        h.append(part)
    assert bytes(h.tail(3)) == b"nop"
    assert bytes(h.tail(10)) == b"ghijklmnop"
    assert len(h) <= 10 + 4
    assert bytes(h.tail(100)) == b"efghijklmnop"  # fewer than asked: what is kept


def test_vm_rounds_stay_in_the_pages_tier_and_decode_independently() -> None:
    rng = np.random.default_rng(5)
    old = vm_memory(4 * MiB, rng)
    new = dirty_round(old, rng, dirty_fraction=0.05, max_edit=64)
    encoded = PayloadCodec(REGISTRY).encode(new, "hde", baseline=Baseline("vm", old))
    assert _headers(encoded.frames) == [(Tier.PAGES, 0)] * 4
    assert len(new) / encoded.encoded_bytes > 500


def test_hde_codes_pages_that_moved_against_the_baseline_window() -> None:
    # every row shifts by a 40-byte insertion near the start: no page lines up with its old self
    rng = np.random.default_rng(6)
    old = logs_json(3 * MiB, rng)
    new = old[:1000] + b"x" * 40 + old[1000:]
    codec = PayloadCodec(REGISTRY)
    encoded = codec.encode(new, "hde", baseline=Baseline("log", old))
    variants = [v for v, _ in _headers(encoded.frames)]
    assert variants[:3] == [Tier.SHIFTED] * 3  # the 40-byte last chunk lies past the baseline's end
    assert encoded.encoded_bytes < 4096
    assert codec.decode(encoded.to_bytes(), baseline=Baseline("log", old)) == new


def test_hde_is_at_most_patch_from_on_a_database_changed_by_sql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import sqlite3

    old_db, new_db = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    con = sqlite3.connect(old_db)
    con.execute("create table t (id integer primary key, name text, qty integer, note text)")
    rng = np.random.default_rng(8)
    con.executemany(
        "insert into t (name, qty, note) values (?, ?, ?)",
        [(f"item-{i}", int(rng.integers(0, 999)), f"batch {i // 50} shelf {i % 13}") for i in range(6000)],
    )
    con.commit()
    con.close()
    shutil.copy(old_db, new_db)
    con = sqlite3.connect(new_db)
    ids = rng.permutation(6000) + 1
    con.executemany("update t set note = note || ' moved' where id = ?", [(int(i),) for i in ids[:180]])
    con.executemany("delete from t where id = ?", [(int(i),) for i in ids[180:240]])
    con.executemany("insert into t (name, qty, note) values ('new', 1, 'fresh row')", [()] * 120)
    con.commit()
    con.close()
    old, new = old_db.read_bytes(), new_db.read_bytes()
    ours = PayloadCodec(REGISTRY).encode(new, "hde", baseline=Baseline("db", old)).encoded_bytes
    options = {
        CompressionParameter.compression_level: 3,
        CompressionParameter.window_log: 22,
        CompressionParameter.enable_long_distance_matching: 1,
    }
    patch_from = ZstdCompressor(options=options, zstd_dict=ZstdDict(old, is_raw=True).as_prefix).compress(
        new, ZstdCompressor.FLUSH_FRAME
    )
    assert ours <= max(len(patch_from), len(patch_from) + 1024) and ours <= len(patch_from) * 1.0 + 1024


# -- the receiver decodes frames with context in order, whatever order they arrive in -------------------
def _send_raw(
    address: tuple[str, int], manifest: Manifest, frames: dict[int, bytes], order: list[int]
) -> None:
    tid = uuid.uuid4()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(Hello(tid, 0, 1, manifest).pack())
        for index in order:
            sock.sendall(CHUNK_HEADER.pack(MSG_CHUNK, index, len(frames[index])) + frames[index])
        sock.sendall(END.pack(MSG_END, len(order)))
        status = sock.recv(1)
        assert status == b"\x04"
        assert sock.recv(1) == b"\x00", "receiver refused the transfer"


@pytest.mark.parametrize("strategy", ["zstd", "hde"])
def test_receiver_decodes_chunks_that_arrive_before_their_context(strategy: str) -> None:
    rng = np.random.default_rng(9)
    old = logs_json(4 * MiB, rng)
    payload = b"shift" + old[: 4 * MiB - 5] if strategy == "hde" else old
    baseline = Baseline("r", old) if strategy == "hde" else None
    codec = PayloadCodec(REGISTRY)
    encoded = codec.encode(payload, strategy, baseline=baseline)
    assert all(ctx for _, ctx in _headers(encoded.frames)[1:])
    store = BaselineStore()
    if baseline is not None:
        store.put("r", old)
    with AmstReceiver(("127.0.0.1", 0), security=insecure(), baselines=store, timeout_s=10) as rx:
        manifest = Manifest(
            payload_length=len(payload),
            chunk_size=MiB,
            chunk_count=4,
            strategy_id=REGISTRY.get(strategy).strategy_id,
            payload_checksum=encoded.payload_checksum,
            baseline_id=baseline.id if baseline else "",
            baseline_checksum=baseline.checksum if baseline else 0,
            baseline_length=len(baseline) if baseline else 0,
        )
        _send_raw(rx.address, manifest, dict(enumerate(encoded.frames)), [3, 1, 2, 0])


@pytest.mark.parametrize("strategy", ["zstd", "hde"])
def test_parallel_streams_carry_ordered_chunks(strategy: str) -> None:
    rng = np.random.default_rng(10)
    old = logs_json(9 * MiB, rng)
    payload = edited(b"head" + old, 3) if strategy == "hde" else old
    psk = PskAuth("node-a", bytes(range(16)))
    with AmstReceiver(("127.0.0.1", 0), security=psk, baselines=BaselineStore(), timeout_s=20) as rx:
        sender = AmstSender(rx.address, security=psk)
        baseline = None
        if strategy == "hde":
            first = sender.send(old, "lz4", streams=2, resource_id="r")
            rx.wait(first.transfer_id, 30)
            baseline = Baseline("r", old)
        report = sender.send(payload, strategy, streams=6, baseline=baseline, resource_id="r")
        assert bytes(rx.wait(report.transfer_id, 30).data) == payload


def test_anchors_find_content_that_moved_far_from_its_proportional_place() -> None:
    from dwcp_selector.strategies.anchors import AnchorIndex, locate

    rng = np.random.default_rng(11)
    old = logs_json(12 * MiB, rng)
    inserted = rng.integers(0, 256, 5 * MiB, dtype=np.uint8).tobytes()
    new = old[:MiB] + inserted + old[MiB:]  # everything after the first MiB moved 5 MiB on
    index = AnchorIndex.build(old)
    chunk = new[9 * MiB : 10 * MiB]  # made from old[4 MiB:5 MiB]
    found = locate(*index.matches(chunk), MiB, 2 * MiB)
    assert found is not None and found[0] <= 4 * MiB and found[1] >= 5 * MiB
    assert found[1] - found[0] <= 3 * MiB
    assert locate(*index.matches(inserted[:MiB]), MiB, 2 * MiB) is None  # new content: nothing to find
    codec = PayloadCodec(REGISTRY)
    base = Baseline("log", old)
    encoded = codec.encode(new, "hde", baseline=base)
    assert encoded.encoded_bytes < 5 * MiB + 64 * 1024
    assert codec.decode(encoded.to_bytes(), baseline=base) == new
