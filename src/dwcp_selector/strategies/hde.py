"""``hde``: Hierarchical Delta Encoding against a baseline (the previous version of the same resource).

Three tiers, cheapest first (DESIGN section 1):

* **tier 1** - pages (4 KiB) identical to the baseline's page at the same offset cost one bit each in a
  changed-page bitmap;
* **tier 2** - changed pages are XOR-ed with their old version, which leaves zeros wherever the page did not
  change, and the XOR pages are coded with zstd level 1 (the XBZRLE idea: zero runs collapse to nothing);
  a page rewritten rather than edited (more than half its bytes differ) is sent as its new content;
* **tier 3** - data whose changes shift offsets (source files, tarballs, edited documents), where no page
  lines up with its old self: zstd with the baseline as a raw-content prefix, its window grown to cover the
  prefix and long-distance matching on, as ``zstd --patch-from`` does (zstd's defaults would index only the
  last megabyte of the baseline and find no delta at all).

The tier is picked once per payload (:meth:`HdeEncoder.plan`) from 32 sampled pages compared in place,
which costs tens of microseconds whatever the size. Tiers 1-2 share one frame variant ("pages"); a chunk
planned as pages whose pages turn out mostly rewritten escalates to tier 3 on its own.

Chunks are coded independently (AMST sends them on parallel streams): a pages chunk references the
baseline bytes at its own offset; a tier-3 chunk uses as prefix the baseline window around the
proportionally mapped position, ±2 MiB, which covers whole small baselines and keeps large ones
chunk-parallel. Every frame names the baseline (id, xxh3, length) and the exact baseline range it used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .._types import BytesLike
from ..errors import BaselineMissingError, CorruptFrameError
from ._zstd import CompressionParameter, Strategy, ZstdCompressor, ZstdDict
from .base import ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .checksum import ChecksumAlgo
from .frame import FrameHeader, Reader, varint
from .zstdcodec import MAX_WINDOW_LOG, strip_magic, zstd_compress, zstd_decompress_bounded

__all__ = [
    "PAGE_SIZE",
    "TIER3_MARGIN",
    "HdeEncoder",
    "HdePlan",
    "Tier",
]

PAGE_SIZE = 4096
_WORDS = PAGE_SIZE // 8
#: Pages sampled per payload to pick the tier.
PLAN_SAMPLE_PAGES = 32
#: A sampled page counts as "in place" when at most this share of its bytes differ from the old page.
SPARSE_PAGE_MAX_DIFF = 0.25
#: The payload takes the pages tiers when at least this share of sampled pages is in place.
PAGES_MIN_IN_PLACE = 0.5
#: A changed page whose XOR differs in more than this share of bytes is sent as its new content.
LITERAL_PAGE_DIFF = 0.5
#: A pages chunk escalates to tier 3 when more than this share of its pages are rewritten.
ESCALATE_REWRITTEN = 0.5
#: Tier-3 prefix: the baseline window around the chunk's proportional position, this far on each side.
TIER3_MARGIN = 2 << 20
TIER3_LEVEL = 3
#: Whole payloads up to this size get tier 3's stronger parser (see ``_encode_shifted``).
SMALL_DELTA_MAX = 1 << 20
PAGES_LEVEL = 1
_U64 = struct.Struct("<Q")
_MIN_PREFIX = 8


class Tier:
    """Frame variants of HDE (the tier numbers of the design)."""

    PAGES = 1  # tiers 1 + 2: bitmap of changed pages, XOR of changed pages, zstd-1
    SHIFTED = 3  # tier 3: zstd with the baseline window as prefix


@dataclass(frozen=True, slots=True)
class HdePlan:
    """The per-payload tier choice and the evidence it was made on."""

    tier: int
    in_place_share: float
    sampled_pages: int


def _pages_view(buf: BytesLike, npages: int) -> np.ndarray:
    """``buf`` as an (npages, 512) uint64 array, zero-padded to whole pages (copies only when padding)."""
    n = len(buf)
    if n == npages * PAGE_SIZE:
        return np.frombuffer(buf, dtype=np.uint64).reshape(npages, _WORDS)
    arr = np.zeros((npages, _WORDS), dtype=np.uint64)
    if n:
        arr.view(np.uint8).reshape(-1)[:n] = np.frombuffer(buf, dtype=np.uint8)
    return arr


class HdeEncoder(Encoder):
    """Delta against a baseline, in three tiers picked per payload."""

    name = "hde"
    strategy_id = 3
    needs_baseline = True

    def __init__(
        self,
        *,
        checksum_algo: ChecksumAlgo = ChecksumAlgo.XXH3_64,
        tier3_margin: int = TIER3_MARGIN,
    ) -> None:
        super().__init__(checksum_algo=checksum_algo)
        self.tier3_margin = tier3_margin

    # -- planning ---------------------------------------------------------------------------------
    def plan(self, payload: BytesLike, baseline: Baseline | None) -> HdePlan:
        """Pick the tier for the whole payload from pages sampled at the same offsets in both versions."""
        return self._plan_at(memoryview(payload).cast("B"), baseline, 0)

    def _plan_at(self, data: memoryview, baseline: Baseline | None, offset: int) -> HdePlan:
        if baseline is None:
            return HdePlan(Tier.SHIFTED, 0.0, 0)
        common = max(0, min(len(data), len(baseline) - offset)) // PAGE_SIZE
        if common == 0:
            return HdePlan(Tier.SHIFTED, 0.0, 0)
        if common <= PLAN_SAMPLE_PAGES:
            idx = np.arange(common)
        else:  # evenly spread, strictly increasing because common > samples
            idx = np.linspace(0, common - 1, num=PLAN_SAMPLE_PAGES).astype(np.int64)
        new = np.frombuffer(data, dtype=np.uint8, count=common * PAGE_SIZE).reshape(common, PAGE_SIZE)[idx]
        old = np.frombuffer(baseline.data, dtype=np.uint8, count=common * PAGE_SIZE, offset=offset)
        old = old.reshape(common, PAGE_SIZE)[idx]
        differing = np.count_nonzero(new != old, axis=1)
        share = float(np.mean(differing <= SPARSE_PAGE_MAX_DIFF * PAGE_SIZE))
        tier = Tier.PAGES if share >= PAGES_MIN_IN_PLACE else Tier.SHIFTED
        return HdePlan(tier, share, int(idx.size))

    # -- encoding ---------------------------------------------------------------------------------
    def _encode_body(
        self, data: memoryview, baseline: Baseline | None, context: ChunkContext
    ) -> tuple[int, bytes, BytesLike]:
        assert baseline is not None  # Encoder.encode refuses hde without a baseline
        plan = (
            context.plan
            if isinstance(context.plan, HdePlan)
            else self._plan_at(data, baseline, context.offset)
        )
        if plan.tier == Tier.PAGES:
            pages = self._encode_pages(data, baseline, context.offset)
            if pages is not None:
                return pages
        return self._encode_shifted(data, baseline, context)

    def _ext(self, baseline: Baseline, ref_start: int, ref_end: int) -> bytes:
        bid = baseline.id.encode()
        return b"".join(
            (
                varint(len(bid)),
                bid,
                _U64.pack(baseline.checksum),
                varint(len(baseline)),
                varint(ref_start),
                varint(len(baseline) - ref_end),  # the tail left out: 0 (one byte) when it reaches the end
            )
        )

    def _encode_pages(
        self, data: memoryview, baseline: Baseline, offset: int
    ) -> tuple[int, bytes, BytesLike] | None:
        n = len(data)
        npages = -(-n // PAGE_SIZE)
        ref_start = min(offset, len(baseline))
        ref_end = min(offset + n, len(baseline))
        new = _pages_view(data, npages)
        old = _pages_view(memoryview(baseline.data)[ref_start:ref_end], npages)
        xor = np.bitwise_xor(new, old)
        changed = xor.any(axis=1)
        idx = np.flatnonzero(changed)
        # A page rewritten rather than edited XORs into noise: send its new content instead (XBZRLE's
        # overflow rule). Only changed pages are inspected, so an edited VM round pays almost nothing.
        differing = np.count_nonzero(xor[idx].view(np.uint8), axis=1)
        rewritten = differing > LITERAL_PAGE_DIFF * PAGE_SIZE
        if np.count_nonzero(rewritten) > ESCALATE_REWRITTEN * npages:
            return None  # mostly rewritten or shifted, not edited in place: tier 3 does better
        literal = np.zeros(npages, dtype=bool)
        literal[idx[rewritten]] = True
        pages = xor[idx]
        if rewritten.any():
            pages[rewritten] = new[idx[rewritten]]
        raw = b"".join((np.packbits(changed).tobytes(), np.packbits(literal).tobytes(), pages.tobytes()))
        body = zstd_compress(raw, PAGES_LEVEL)
        return Tier.PAGES, self._ext(baseline, ref_start, ref_end), body

    def _encode_shifted(
        self, data: memoryview, baseline: Baseline, context: ChunkContext
    ) -> tuple[int, bytes, BytesLike]:
        n = len(data)
        total = context.payload_length if context.payload_length is not None else n
        size = len(baseline)
        if total > 0 and size > 0:
            # Map the chunk proportionally into the baseline and widen by the margin on both sides.
            lo = max(0, context.offset * size // total - self.tier3_margin)
            hi = min(size, (context.offset + n) * size // total + self.tier3_margin)
        else:
            lo = hi = 0
        if hi - lo < _MIN_PREFIX:
            lo = hi = 0  # zstd refuses prefixes under 8 bytes; they could not help anyway
        options: dict[int, int] = {
            CompressionParameter.compression_level: TIER3_LEVEL,
            CompressionParameter.window_log: max(10, min(MAX_WINDOW_LOG, (hi - lo + n).bit_length())),
            CompressionParameter.enable_long_distance_matching: 1,
            CompressionParameter.content_size_flag: 0,
            CompressionParameter.checksum_flag: 0,
            CompressionParameter.dict_id_flag: 0,
        }
        if n == total and n <= SMALL_DELTA_MAX:
            # A whole small payload: the delta is tiny and the prefix load dominates the time, so the
            # lazy2 parser (zstd level 5-6 behaviour) buys 5-10 % smaller deltas for ~1 ms per MiB.
            options[CompressionParameter.strategy] = Strategy.lazy2
            options[CompressionParameter.search_log] = 2
        if hi > lo:
            prefix = ZstdDict(baseline.data[lo:hi], is_raw=True)
            comp = ZstdCompressor(options=options, zstd_dict=prefix.as_prefix)
            body = strip_magic(comp.compress(data, ZstdCompressor.FLUSH_FRAME))
        else:
            body = zstd_compress(data, TIER3_LEVEL)
        return Tier.SHIFTED, self._ext(baseline, lo, hi), body

    # -- decoding ---------------------------------------------------------------------------------
    def describe_reference(self, header: FrameHeader) -> tuple[str, int, int, int, int]:
        """(baseline id, xxh3, length, ref_start, ref_end) named by an HDE frame."""
        r = Reader(header.ext, "hde frame extension")
        bid = r.text(255)
        checksum = r.u64()
        length = r.varint()
        ref_start = r.varint()
        ref_end = length - r.varint()
        if r.remaining:
            raise CorruptFrameError("hde frame extension has trailing bytes")
        if not 0 <= ref_start <= ref_end <= length:
            raise CorruptFrameError(
                f"hde frame references baseline bytes {ref_start}..{ref_end} of a {length}-byte baseline"
            )
        return bid, checksum, length, ref_start, ref_end

    def _decode_body(self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None) -> bytes:
        bid, checksum, length, ref_start, ref_end = self.describe_reference(header)
        if baseline is None:
            raise BaselineMissingError(
                f"frame was encoded against baseline {bid!r} ({length} bytes, xxh3 {checksum:016x}); "
                "supply it to decode"
            )
        base = baseline.lookup(bid, checksum, length)
        if header.variant == Tier.PAGES:
            return self._decode_pages(header, body, base, ref_start, ref_end)
        if header.variant == Tier.SHIFTED:
            prefix = None
            if 0 < ref_end - ref_start < _MIN_PREFIX:
                raise CorruptFrameError("hde tier-3 frame references a prefix shorter than zstd allows")
            if ref_end > ref_start:
                prefix = ZstdDict(base.data[ref_start:ref_end], is_raw=True).as_prefix
            return zstd_decompress_bounded(body, header.original_length, zstd_dict=prefix, what="hde tier-3")
        raise CorruptFrameError(f"hde frame has unknown variant {header.variant}")

    def _decode_pages(
        self, header: FrameHeader, body: memoryview, base: Baseline, ref_start: int, ref_end: int
    ) -> bytes:
        n = header.original_length
        npages = -(-n // PAGE_SIZE)
        if ref_end - ref_start > n:
            raise CorruptFrameError("hde pages frame references more baseline bytes than it restores")
        bitmap_len = -(-npages // 8)
        raw = zstd_decompress_bounded(body, 2 * bitmap_len + npages * PAGE_SIZE, what="hde pages")
        if len(raw) < 2 * bitmap_len:
            raise CorruptFrameError("hde pages body is shorter than its page bitmaps")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8, count=2 * bitmap_len)).reshape(2, -1)
        if bits[:, npages:].any():
            raise CorruptFrameError("hde pages bitmap marks pages beyond the end of the chunk")
        changed = bits[0, :npages].astype(bool)
        literal = bits[1, :npages].astype(bool)
        if (literal & ~changed).any():
            raise CorruptFrameError("hde pages bitmap marks a literal page that is not changed")
        count = int(np.count_nonzero(changed))
        if len(raw) != 2 * bitmap_len + count * PAGE_SIZE:
            raise CorruptFrameError(
                f"hde pages body holds {len(raw) - 2 * bitmap_len} page bytes for {count} changed pages"
            )
        out = _pages_view(memoryview(base.data)[ref_start:ref_end], npages).copy()
        if count:
            pages = np.frombuffer(raw, dtype=np.uint8, offset=2 * bitmap_len).view(np.uint64)
            pages = pages.reshape(count, _WORDS)
            lit = literal[changed]
            xor_rows = np.flatnonzero(changed & ~literal)
            out[xor_rows] ^= pages[~lit]
            out[np.flatnonzero(literal)] = pages[lit]
        return out.view(np.uint8).reshape(-1)[:n].tobytes()
