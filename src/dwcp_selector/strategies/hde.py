"""``hde``: Hierarchical Delta Encoding against a baseline (the previous version of the same resource).

Every chunk is cut into 4 KiB pages and compared with the baseline's pages at the same offsets (one pass
at memory speed). Then, per chunk, the cheapest tier that finds the changed pages' content:

* **tier 1** - a page identical to the baseline's page at its offset costs one bit in the changed-page
  set and nothing else;
* **tier 2** ("pages" frames) - the changed pages' new content is coded with zstd using *the old versions
  of those same pages* as a raw prefix. An in-place edit (a counter in a VM page, a rewritten line of
  the same length in a text database) becomes a match of the old page plus the edited bytes as
  literals; a row that moved a few bytes inside its page (a SQLite page after an update) is a match at a
  shifted distance. The prefix is only as large as what changed, so a VM pre-copy round codes at memory
  speed. This does what XOR-ing with the old page (QEMU's XBZRLE) does for binary edits, and beats it on
  text, where XOR leaves noise and literals stay text;
* **tier 3** ("region" frames) - a chunk whose changed pages are mostly rewritten (content that moved in
  from elsewhere: source files and tarballs whose changes shift offsets, pages that were reordered) is
  coded with zstd using as prefix the baseline window around the chunk's proportionally mapped position
  (+/-2 MiB) *and* the payload's preceding ``context`` bytes, window grown to cover both and
  long-distance matching on, as ``zstd --patch-from`` does (the defaults would find no delta at all).

Pages frames depend only on the baseline, so they decode in any order; region frames depend on the
payload bytes before them and decode in order (the frame header says how many bytes). The per-payload
:meth:`HdeEncoder.plan` (32 sampled pages, tens of microseconds) predicts which tier dominates; it is a
decision-time feature, the encoding itself decides per chunk from the whole comparison.

Every frame names the baseline (id, xxh3, length), the offset its pages line up with and the window it
used.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

import lz4.block
import numpy as np
import numpy.typing as npt

from .._types import BytesLike
from ..errors import BaselineMissingError, ConfigError, CorruptFrameError
from ._zstd import CompressionParameter, Strategy
from .anchors import AnchorIndex, locate
from .base import Body, ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .checksum import ChecksumAlgo
from .frame import MAX_CONTEXT_LENGTH, FrameHeader, Reader, varint
from .zstdcodec import (
    MIN_PREFIX,
    raw_prefix,
    window_log_for,
    zstd_compress_with_prefix,
    zstd_decompress_bounded,
)

__all__ = [
    "DEFAULT_HDE_CONTEXT",
    "PAGE_SIZE",
    "TIER3_MARGIN",
    "HdeEncoder",
    "HdePlan",
    "Tier",
]

PAGE_SIZE = 4096
_WORDS = PAGE_SIZE // 8
#: Pages sampled per payload to predict the tier.
PLAN_SAMPLE_PAGES = 32
#: A sampled page counts as "in place" when at most this share of its bytes differ from the old page.
SPARSE_PAGE_MAX_DIFF = 0.25
#: The payload is predicted to take the pages tiers when at least this share of sampled pages is in place.
PAGES_MIN_IN_PLACE = 0.5
#: A changed page differing from its old page in more than this share of bytes counts as rewritten.
REWRITTEN_PAGE_DIFF = 0.5
#: A chunk becomes a region frame when more than this share of its changed pages are rewritten...
REGION_REWRITTEN_SHARE = 0.25
#: ...and they are at least this share of all its pages (a few reused VM pages stay in tier 2), unless the
#: chunk is a whole small payload, where the region's cost is small in absolute terms.
REGION_MIN_PAGES_SHARE = 1 / 32
#: Rewritten pages sampled, and the lz4 ratio above which they count as incompressible new content.
INCOMPRESSIBLE_SAMPLE_PAGES = 8
INCOMPRESSIBLE_RATIO = 0.95
#: Tier-3 prefix of a baseline up to this size: the whole baseline.
WHOLE_BASELINE_MAX = 4 << 20
#: Larger baselines: the densest stretch of at most this many bytes holding the chunk's anchors...
LOCATE_SPAN = 2 << 20
#: ...widened by this much on each side (content between anchors, and edits near the ends).
LOCATE_MARGIN = 128 << 10
#: Without anchors to go by: the baseline around the chunk's proportional position, this far each side.
TIER3_MARGIN = 2 << 20
TIER3_LEVEL = 3
PAGES_LEVEL = 3
#: Payload bytes before a chunk that a region frame sees: new content repeated across a chunk boundary.
#: Smaller than zstd's: the baseline window holds most of what a chunk refers to, and a longer prefix
#: crowds the match tables (docs/decisions/0006-context-across-chunks.md).
DEFAULT_HDE_CONTEXT = 256 << 10
#: Whole payloads up to this size get the stronger parser (see ``_zstd_options``).
SMALL_DELTA_MAX = 1 << 20
_U64 = struct.Struct("<Q")
_SET_BITMAP = 0
_SET_GAPS = 1
_SET_ALL = 2


class Tier:
    """Frame variants of HDE (the tier numbers of the design)."""

    PAGES = 1  # tiers 1 + 2: changed-page set, changed pages coded against their old pages
    SHIFTED = 3  # tier 3: changed pages coded against a baseline window and the payload before


class _Anchors:
    """The baseline's anchor index, built at most once per payload, by the first chunk that needs it."""

    __slots__ = ("_data", "_index", "_lock")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._index: AnchorIndex | None = None
        self._lock = threading.Lock()

    def get(self) -> AnchorIndex:
        with self._lock:
            if self._index is None:
                self._index = AnchorIndex.build(self._data)
            return self._index


@dataclass(frozen=True, slots=True)
class HdePlan:
    """The per-payload tier prediction and the evidence it was made on; it also carries the baseline's
    anchor index for the payload's tier-3 chunks (built lazily: only a payload that needs it pays)."""

    tier: int
    in_place_share: float
    sampled_pages: int
    anchors: _Anchors | None = field(default=None, compare=False, repr=False)


def _pages_view(buf: BytesLike, npages: int) -> npt.NDArray[np.uint64]:
    """``buf`` as an (npages, 512) uint64 array, zero-padded to whole pages (copies only when padding)."""
    n = len(buf)
    if n == npages * PAGE_SIZE:
        return np.frombuffer(buf, dtype=np.uint64).reshape(npages, _WORDS)
    arr = np.zeros((npages, _WORDS), dtype=np.uint64)
    if n:
        arr.view(np.uint8).reshape(-1)[:n] = np.frombuffer(buf, dtype=np.uint8)
    return arr


def _incompressible(pages: npt.NDArray[np.uint64]) -> bool:
    """Whether rewritten pages look like random or already-compressed bytes (a sample through lz4).

    Such pages (a reused VM page filled with encrypted or compressed data) are new content that no
    baseline window holds, and coding them against one would only cost its indexing.
    """
    step = max(1, len(pages) // INCOMPRESSIBLE_SAMPLE_PAGES)
    sample = pages[::step][:INCOMPRESSIBLE_SAMPLE_PAGES].tobytes()
    return len(lz4.block.compress(sample, store_size=False)) > INCOMPRESSIBLE_RATIO * len(sample)


def _pack_page_set(changed: npt.NDArray[np.bool_]) -> bytes:
    """The changed-page set: every page, a varint list of gaps, or a packed bitmap, whichever is shortest."""
    if changed.all():
        return bytes((_SET_ALL,))
    bitmap = np.packbits(changed).tobytes()
    idx = np.flatnonzero(changed)
    if idx.size < len(bitmap):
        gaps = np.diff(idx, prepend=-1) - 1
        packed = b"".join((varint(int(idx.size)), *(varint(int(g)) for g in gaps.tolist())))
        if len(packed) < len(bitmap):
            return bytes((_SET_GAPS,)) + packed
    return bytes((_SET_BITMAP,)) + bitmap


def _read_page_set(r: Reader, npages: int) -> npt.NDArray[np.bool_]:
    form = r.u8()
    if form == _SET_ALL:
        return np.ones(npages, dtype=bool)
    if form == _SET_BITMAP:
        nbytes = -(-npages // 8)
        bits = np.unpackbits(np.frombuffer(bytes(r.take(nbytes)), dtype=np.uint8))
        if bits[npages:].any():
            raise CorruptFrameError("hde page set marks pages beyond the end of the chunk")
        return bits[:npages].astype(bool)
    if form != _SET_GAPS:
        raise CorruptFrameError(f"hde page set has unknown form {form}")
    count = r.varint()
    if count > npages:
        raise CorruptFrameError(f"hde page set lists {count} pages of a {npages}-page chunk")
    changed = np.zeros(npages, dtype=bool)
    page = -1
    for _ in range(count):
        page += r.varint() + 1
        if page >= npages:
            raise CorruptFrameError("hde page set lists a page beyond the end of the chunk")
        changed[page] = True
    return changed


class HdeEncoder(Encoder):
    """Delta against a baseline: tier 1 and 2 per page, tier 3 per chunk where content moved."""

    name = "hde"
    strategy_id = 3
    needs_baseline = True
    uses_context = True

    def __init__(
        self,
        *,
        checksum_algo: ChecksumAlgo = ChecksumAlgo.XXH3_64,
        tier3_margin: int = TIER3_MARGIN,
        context_bytes: int = DEFAULT_HDE_CONTEXT,
        locate_by_anchors: bool = True,
    ) -> None:
        super().__init__(checksum_algo=checksum_algo)
        if tier3_margin < 0 or not 0 <= context_bytes <= MAX_CONTEXT_LENGTH:
            raise ConfigError(
                f"hde margin must be >= 0 and its context in 0..{MAX_CONTEXT_LENGTH} bytes, "
                f"got {tier3_margin} and {context_bytes}"
            )
        self.tier3_margin = tier3_margin
        self.context_bytes = context_bytes
        #: False maps every tier-3 chunk proportionally (the first design; kept to measure against).
        self.locate_by_anchors = locate_by_anchors

    # -- planning ---------------------------------------------------------------------------------
    def plan(self, payload: BytesLike, baseline: Baseline | None) -> HdePlan:
        """Predict the dominant tier from pages sampled at the same offsets in both versions."""
        data = memoryview(payload).cast("B")
        if baseline is None:
            return HdePlan(Tier.SHIFTED, 0.0, 0)
        anchors = _Anchors(baseline.data) if len(baseline) > WHOLE_BASELINE_MAX else None
        common = max(0, min(len(data), len(baseline))) // PAGE_SIZE
        if common == 0:
            return HdePlan(Tier.SHIFTED, 0.0, 0, anchors)
        if common <= PLAN_SAMPLE_PAGES:
            idx = np.arange(common)
        else:  # evenly spread, strictly increasing because common > samples
            idx = np.linspace(0, common - 1, num=PLAN_SAMPLE_PAGES).astype(np.int64)
        new = np.frombuffer(data, dtype=np.uint8, count=common * PAGE_SIZE).reshape(common, PAGE_SIZE)[idx]
        old = np.frombuffer(baseline.data, dtype=np.uint8, count=common * PAGE_SIZE)
        old = old.reshape(common, PAGE_SIZE)[idx]
        differing = np.count_nonzero(new != old, axis=1)
        share = float(np.mean(differing <= SPARSE_PAGE_MAX_DIFF * PAGE_SIZE))
        tier = Tier.PAGES if share >= PAGES_MIN_IN_PLACE else Tier.SHIFTED
        return HdePlan(tier, share, int(idx.size), anchors)

    # -- encoding ---------------------------------------------------------------------------------
    def _encode_body(self, data: memoryview, baseline: Baseline | None, context: ChunkContext) -> Body:
        assert baseline is not None  # Encoder.encode refuses hde without a baseline
        n = len(data)
        total = context.payload_length if context.payload_length is not None else n
        offset = context.offset
        npages = -(-n // PAGE_SIZE)
        page_ref = min(offset, len(baseline))
        new = _pages_view(data, npages)
        old = _pages_view(memoryview(baseline.data)[page_ref : min(offset + n, len(baseline))], npages)
        changed = (new != old).any(axis=1)
        idx = np.flatnonzero(changed)
        page_set = _pack_page_set(changed)
        if idx.size == 0:
            return Tier.PAGES, self._ext(baseline, page_ref, 0, 0), page_set, 0
        new_pages, old_pages = new[idx], old[idx]
        differing = np.count_nonzero(new_pages.view(np.uint8) != old_pages.view(np.uint8), axis=1)
        is_rewritten = differing > REWRITTEN_PAGE_DIFF * PAGE_SIZE
        rewritten = int(np.count_nonzero(is_rewritten))
        small = n == total and n <= SMALL_DELTA_MAX
        region = (
            rewritten > REGION_REWRITTEN_SHARE * idx.size
            and (small or rewritten >= REGION_MIN_PAGES_SHARE * npages)
            # a few reused pages of random bytes among unchanged ones are new content; a chunk rewritten
            # throughout (shifted archives of compressed members) may well be in the baseline
            and not (2 * rewritten < npages and _incompressible(new_pages[is_rewritten]))
        )
        content = new_pages.tobytes()
        if not region:
            options = self._zstd_options(PAGES_LEVEL, 2 * len(content), small)
            body = zstd_compress_with_prefix(content, old_pages.tobytes(), options)
            return Tier.PAGES, self._ext(baseline, page_ref, 0, 0), page_set + body, 0
        anchors = context.plan.anchors if isinstance(context.plan, HdePlan) else None
        lo, hi = self._window(data, offset, total, baseline, anchors)
        history = context.history(self.context_bytes)
        prefix = b"".join((baseline.data[lo:hi], history))
        options = self._zstd_options(TIER3_LEVEL, len(prefix) + len(content), True)
        options[CompressionParameter.enable_long_distance_matching] = 1
        body = zstd_compress_with_prefix(content, prefix, options)
        used = len(history) if len(prefix) >= MIN_PREFIX else 0
        return Tier.SHIFTED, self._ext(baseline, page_ref, lo, hi), page_set + body, used

    @staticmethod
    def _zstd_options(level: int, span: int, strong: bool) -> dict[int, int]:
        options: dict[int, int] = {
            CompressionParameter.compression_level: level,
            CompressionParameter.window_log: window_log_for(span, floor=10),
        }
        if strong:
            # Deltas against a large prefix: loading the prefix dominates the time and the delta is small,
            # so the lazy2 parser with tables sized for the prefix (level 3's are overwritten before the
            # chunk starts) buys 7-15 % smaller deltas for ~30 % more time
            # (docs/decisions/0006-context-across-chunks.md).
            options[CompressionParameter.strategy] = Strategy.lazy2
            options[CompressionParameter.search_log] = 2
            # (no larger than the prefix needs: a smaller payload allocates, and faults in, less)
            hash_log = max(12, min(20, (max(span, 1) - 1).bit_length() - 2))
            options[CompressionParameter.hash_log] = hash_log
            options[CompressionParameter.chain_log] = hash_log - 1
        return options

    def _window(
        self, data: memoryview, offset: int, total: int, baseline: Baseline, anchors: _Anchors | None
    ) -> tuple[int, int]:
        """The baseline bytes a tier-3 chunk is coded against: all of a small baseline; of a large one,
        where the chunk's anchors say its content is, else around its proportionally mapped position."""
        size, n = len(baseline), len(data)
        if size < MIN_PREFIX or total <= 0:
            return 0, 0
        if size <= max(WHOLE_BASELINE_MAX, 2 * self.tier3_margin + n):
            return 0, size
        found = None
        if self.locate_by_anchors:
            index = (anchors or _Anchors(baseline.data)).get()
            found = locate(*index.matches(data), n, LOCATE_SPAN)
        if found is not None:
            return max(0, found[0] - LOCATE_MARGIN), min(size, found[1] + LOCATE_MARGIN)
        lo = max(0, offset * size // total - self.tier3_margin)
        hi = min(size, (offset + n) * size // total + self.tier3_margin)
        return (lo, hi) if hi - lo >= MIN_PREFIX else (0, 0)

    def _ext(self, baseline: Baseline, page_ref: int, lo: int, hi: int) -> bytes:
        bid = baseline.id.encode()
        return b"".join(
            (
                varint(len(bid)),
                bid,
                _U64.pack(baseline.checksum),
                varint(len(baseline)),
                varint(page_ref),
                varint(lo),
                varint(hi - lo),
            )
        )

    # -- decoding ---------------------------------------------------------------------------------
    def describe_reference(self, header: FrameHeader) -> tuple[str, int, int, int, int, int]:
        """(baseline id, xxh3, length, page offset, window start, window end) named by an HDE frame."""
        r = Reader(header.ext, "hde frame extension")
        bid = r.text(255)
        checksum = r.u64()
        length = r.varint()
        page_ref = r.varint()
        lo = r.varint()
        hi = lo + r.varint()
        if r.remaining:
            raise CorruptFrameError("hde frame extension has trailing bytes")
        if page_ref > length or hi > length:
            raise CorruptFrameError(
                f"hde frame references baseline offset {page_ref} and window {lo}..{hi} of a "
                f"{length}-byte baseline"
            )
        if 0 < hi - lo < MIN_PREFIX:
            raise CorruptFrameError("hde frame references a window shorter than zstd allows")
        return bid, checksum, length, page_ref, lo, hi

    def _decode_body(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytes:
        bid, checksum, length, page_ref, lo, hi = self.describe_reference(header)
        if header.variant not in (Tier.PAGES, Tier.SHIFTED):
            raise CorruptFrameError(f"hde frame has unknown variant {header.variant}")
        if header.variant == Tier.PAGES and (hi > lo or len(context)):
            raise CorruptFrameError("hde pages frame claims a window or a context")
        if baseline is None:
            raise BaselineMissingError(
                f"frame was encoded against baseline {bid!r} ({length} bytes, xxh3 {checksum:016x}); "
                "supply it to decode"
            )
        base = baseline.lookup(bid, checksum, length)
        n = header.original_length
        npages = -(-n // PAGE_SIZE)
        r = Reader(body, "hde body")
        changed = _read_page_set(r, npages)
        old = _pages_view(memoryview(base.data)[page_ref : min(page_ref + n, length)], npages)
        idx = np.flatnonzero(changed)
        if idx.size == 0:
            if r.remaining:
                raise CorruptFrameError("hde frame with no changed page has a body after its page set")
            return old.view(np.uint8).reshape(-1)[:n].tobytes()
        if header.variant == Tier.PAGES:
            prefix: object | None = raw_prefix(old[idx].tobytes())
        else:
            prefix = raw_prefix(b"".join((base.data[lo:hi], context)))
        raw = zstd_decompress_bounded(
            r.take(r.remaining), int(idx.size) * PAGE_SIZE, zstd_dict=prefix, what="hde pages"
        )
        if len(raw) != idx.size * PAGE_SIZE:
            raise CorruptFrameError(f"hde body holds {len(raw)} page bytes for {idx.size} changed pages")
        out = old.copy()
        out[idx] = np.frombuffer(raw, dtype=np.uint64).reshape(idx.size, _WORDS)
        return out.view(np.uint8).reshape(-1)[:n].tobytes()
