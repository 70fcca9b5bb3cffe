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
  Two passes: a copy pass with level 3's own small tables, which long-distance matching makes enough
  for content copied from the window (a library or a database whose rows shifted) at a quarter of a
  full index's time; where its delta stays over 1/64 of the content (new files in a tarball), a second
  pass with tables sized for the whole prefix, and the smaller frame is kept.

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
from ..errors import BaselineMissingError, ConfigError, CorruptFrameError, FrameLimitError
from ._zstd import CompressionParameter, Strategy
from .anchors import AnchorIndex, locate
from .base import Body, ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .checksum import ChecksumAlgo
from .frame import MAX_CONTEXT_LENGTH, FrameHeader, Reader, varint
from .zstdcodec import (
    MIN_PREFIX,
    ZSTD_BLOCK_MAX,
    DictArg,
    raw_prefix,
    window_log_for,
    window_log_limit,
    zstd_compress_with_prefix,
    zstd_decompress_into,
)

__all__ = [
    "DEFAULT_HDE_CONTEXT",
    "MAX_REGION_WINDOW",
    "PAGE_SIZE",
    "SEGMENT_PAGES",
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
#: Region coding's copy pass (``TIER3_LEVEL`` with its own tables, long-distance matching) is kept when its
#: delta is at most 1/``REGION_COPY_RATIO`` of the content; a larger delta is coded again with tables
#: sized for the prefix, and the smaller frame kept.
REGION_COPY_RATIO = 64
PAGES_LEVEL = 3
#: Payload bytes before a chunk that a region frame sees: new content repeated across a chunk boundary.
#: Smaller than zstd's: the baseline window holds most of what a chunk refers to, and a longer prefix
#: crowds the match tables (docs/decisions/0006-context-across-chunks.md).
DEFAULT_HDE_CONTEXT = 256 << 10
#: Whole payloads up to this size get the stronger parser (see ``_zstd_options``).
SMALL_DELTA_MAX = 1 << 20
#: Pages per segment: a pages frame codes at most this many changed pages in one zstd frame, a region
#: frame of a chunk above this many pages codes every segment on its own. A decoder's prefix and zstd
#: window then stay within one segment (1 MiB) plus one baseline window, whatever the chunk size.
SEGMENT_PAGES = 256
SEGMENT_BYTES = SEGMENT_PAGES * PAGE_SIZE
#: Largest baseline window a region frame (or segment) may reference; decoders refuse larger ones.
MAX_REGION_WINDOW = 8 << 20
_U64 = struct.Struct("<Q")
_SET_BITMAP = 0
_SET_GAPS = 1
_SET_ALL = 2


class Tier:
    """Frame variants of HDE (1 and 3 are the tier numbers of the design; 2 and 4 the same tiers coded
    in segments of ``SEGMENT_PAGES`` pages, for chunks above 1 MiB)."""

    PAGES = 1  # tiers 1 + 2: changed-page set, changed pages coded against their old pages
    PAGES_SEGMENTED = 2  # the same, one zstd frame per segment holding changed pages
    SHIFTED = 3  # tier 3: changed pages coded against a baseline window and the payload before
    SHIFTED_SEGMENTED = 4  # the same, every segment with its own window and history


_VARIANTS = (Tier.PAGES, Tier.PAGES_SEGMENTED, Tier.SHIFTED, Tier.SHIFTED_SEGMENTED)


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
        limit = window_log_limit(n)
        ext = self._ext(baseline, page_ref, 0, 0)
        if not region:
            if idx.size <= SEGMENT_PAGES:
                content = new_pages.tobytes()
                options = self._zstd_options(PAGES_LEVEL, 2 * len(content), small, limit, lazy=small)
                body = zstd_compress_with_prefix(content, old_pages.tobytes(), options)
                return Tier.PAGES, ext, page_set + body, 0
            parts = [page_set]
            for sel in _segments(idx):
                content = new_pages[sel].tobytes()
                options = self._zstd_options(PAGES_LEVEL, 2 * len(content), False, limit)
                zframe = zstd_compress_with_prefix(content, old_pages[sel].tobytes(), options)
                parts += [varint(len(zframe)), zframe]
            return Tier.PAGES_SEGMENTED, ext, b"".join(parts), 0
        anchors = context.plan.anchors if isinstance(context.plan, HdePlan) else None
        if npages <= SEGMENT_PAGES:
            lo, hi = self._window(data, offset, total, baseline, anchors)
            history = context.history(self.context_bytes)
            zframe, used = self._region(new_pages.tobytes(), baseline, lo, hi, history, limit, small)
            return Tier.SHIFTED, self._ext(baseline, page_ref, lo, hi), page_set + zframe, used
        # A large chunk: every segment of SEGMENT_PAGES pages is coded as a chunk of that size would be
        # (its own window, the payload bytes before it as history), so decoding keeps one segment's
        # prefix, never the whole chunk's.
        parts, context_used = [page_set], 0
        for sel in _segments(idx):
            start = int(idx[sel.start]) // SEGMENT_PAGES * SEGMENT_BYTES
            segment = data[start : start + SEGMENT_BYTES]
            lo, hi = self._window(segment, offset + start, total, baseline, anchors)
            before = context.history(self.context_bytes - start)
            inside = data[max(0, start - self.context_bytes) : start]
            seg_history = b"".join((before, inside))
            zframe, used = self._region(new_pages[sel].tobytes(), baseline, lo, hi, seg_history, limit)
            if used:
                context_used = max(context_used, len(before))
            parts += [varint(lo), varint(hi - lo), varint(used), varint(len(zframe)), zframe]
        return Tier.SHIFTED_SEGMENTED, ext, b"".join(parts), context_used

    def _region(
        self,
        content: bytes,
        baseline: Baseline,
        lo: int,
        hi: int,
        history: BytesLike,
        limit: int,
        small: bool = False,
    ) -> tuple[bytes, int]:
        """A region frame's zstd frame of ``content`` against the baseline window and ``history``; and
        how many history bytes it used (none when the prefix is too short for zstd)."""
        prefix = b"".join((memoryview(baseline.data)[lo:hi], history))
        span = len(prefix) + len(content)
        # First the copy pass: content mostly copied from the window (a library or a database with
        # shifted rows) is found whole by long-distance matching, and indexing the prefix with level 3's
        # own small tables costs a quarter of a full index. Only a delta that stays large (a tarball with
        # new files), where short matches anywhere in the window count, pays for the second pass with
        # tables sized for the whole prefix, and the smaller of the two is kept.
        options = self._zstd_options(TIER3_LEVEL, span, False, limit)
        options[CompressionParameter.enable_long_distance_matching] = 1
        zframe = zstd_compress_with_prefix(content, prefix, options)
        if len(zframe) * REGION_COPY_RATIO > len(content):
            options = self._zstd_options(TIER3_LEVEL, span, True, limit, lazy=small)
            options[CompressionParameter.enable_long_distance_matching] = 1
            indexed = zstd_compress_with_prefix(content, prefix, options)
            if len(indexed) < len(zframe):
                zframe = indexed
        return zframe, len(history) if len(prefix) >= MIN_PREFIX else 0

    @staticmethod
    def _zstd_options(level: int, span: int, strong: bool, limit: int, lazy: bool = False) -> dict[int, int]:
        options: dict[int, int] = {
            CompressionParameter.compression_level: level,
            # (a window below the prefix loses nothing: zstd keeps the whole prefix reachable over the
            # first window of content, and a segment is far shorter than the smallest limit)
            CompressionParameter.window_log: min(window_log_for(span, floor=10), limit),
        }
        if strong:
            # Deltas against a large prefix where short matches anywhere in it count: tables sized for
            # the prefix (level 3's own are overwritten before the chunk starts). For whole small
            # payloads the lazy2 parser buys 7-15 % smaller deltas for ~30 % more time; for region
            # chunks the double-hash parser keeps most of that at half lazy2's time
            # (docs/decisions/0006-context-across-chunks.md).
            # (no larger than the prefix needs: a smaller payload allocates, and faults in, less)
            hash_log = max(12, min(20, (max(span, 1) - 1).bit_length() - 2))
            options[CompressionParameter.hash_log] = hash_log
            options[CompressionParameter.chain_log] = hash_log - 1
            if lazy:
                options[CompressionParameter.strategy] = Strategy.lazy2
                options[CompressionParameter.search_log] = 2
        return options

    def _window(
        self, data: memoryview, offset: int, total: int, baseline: Baseline, anchors: _Anchors | None
    ) -> tuple[int, int]:
        """The baseline bytes a tier-3 chunk is coded against: all of a small baseline; of a large one,
        where the chunk's anchors say its content is, else around its proportionally mapped position;
        never more than ``MAX_REGION_WINDOW`` bytes (around that position), which decoders refuse."""
        lo, hi = self._find_window(data, offset, total, baseline, anchors)
        if hi - lo <= MAX_REGION_WINDOW:
            return lo, hi
        size = len(baseline)
        centre = (offset + len(data) // 2) * size // max(total, 1)
        lo = max(0, min(size - MAX_REGION_WINDOW, centre - MAX_REGION_WINDOW // 2))
        return lo, lo + MAX_REGION_WINDOW

    def _find_window(
        self, data: memoryview, offset: int, total: int, baseline: Baseline, anchors: _Anchors | None
    ) -> tuple[int, int]:
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

    def _check_reference(
        self, header: FrameHeader, context: memoryview, baseline: BaselineSource | None
    ) -> tuple[Baseline, int, int, int]:
        """The frame's baseline (looked up), page offset and window, after every check that needs neither
        the body nor any output."""
        bid, checksum, length, page_ref, lo, hi = self.describe_reference(header)
        variant = header.variant
        if variant not in _VARIANTS:
            raise CorruptFrameError(f"hde frame has unknown variant {variant}")
        if variant in (Tier.PAGES, Tier.PAGES_SEGMENTED) and (hi > lo or len(context)):
            raise CorruptFrameError("hde pages frame claims a window or a context")
        if variant == Tier.SHIFTED_SEGMENTED and hi > lo:
            raise CorruptFrameError("hde segmented region frame names a window for the whole chunk")
        if hi - lo > MAX_REGION_WINDOW:
            raise FrameLimitError(
                f"hde frame references a {hi - lo}-byte baseline window (limit {MAX_REGION_WINDOW})"
            )
        if baseline is None:
            raise BaselineMissingError(
                f"frame was encoded against baseline {bid!r} ({length} bytes, xxh3 {checksum:016x}); "
                "supply it to decode"
            )
        return baseline.lookup(bid, checksum, length), page_ref, lo, hi

    def _plan_decode(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> tuple[Baseline, int, int, int, npt.NDArray[np.intp], Reader]:
        base, page_ref, lo, hi = self._check_reference(header, context, baseline)
        npages = -(-header.original_length // PAGE_SIZE)
        r = Reader(body, "hde body")
        idx = np.flatnonzero(_read_page_set(r, npages))
        if idx.size == 0:
            if r.remaining:
                raise CorruptFrameError("hde frame with no changed page has a body after its page set")
        elif idx.size > SEGMENT_PAGES and header.variant in (Tier.PAGES, Tier.SHIFTED):
            raise FrameLimitError(
                f"hde frame codes {idx.size} changed pages in one zstd frame (limit {SEGMENT_PAGES}: "
                "larger chunks are coded in segments)"
            )
        elif idx.size * PAGE_SIZE > (r.remaining // 3) * ZSTD_BLOCK_MAX:
            # (zstd restores at most 128 KiB per 3-byte block header: refused before any prefix is built)
            raise CorruptFrameError(
                f"hde body of {r.remaining} bytes cannot hold the {idx.size} changed pages it lists"
            )
        return base, page_ref, lo, hi, idx, r

    def _decode_new(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytearray:
        plan = self._plan_decode(header, body, baseline, context)  # every check before the allocation
        out = bytearray(header.original_length)
        self._fill(header, context, memoryview(out), *plan, fresh=True)
        return out

    def _decode_into(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        context: memoryview,
        out: memoryview,
    ) -> None:
        plan = self._plan_decode(header, body, baseline, context)
        self._fill(header, context, out, *plan, fresh=False)

    def _fill(
        self,
        header: FrameHeader,
        context: memoryview,
        out: memoryview,
        base: Baseline,
        page_ref: int,
        lo: int,
        hi: int,
        idx: npt.NDArray[np.intp],
        r: Reader,
        *,
        fresh: bool,
    ) -> None:
        """Write the chunk into ``out``: the baseline's pages at the page offset (zeros past its end), then
        every changed page's new content, decoded straight into its place one segment at a time."""
        n = header.original_length
        have = max(0, min(n, len(base) - page_ref))
        out[:have] = memoryview(base.data)[page_ref : page_ref + have]
        if have < n and not fresh:
            np.frombuffer(out, dtype=np.uint8)[have:] = 0
        if idx.size == 0:
            return
        limit = window_log_limit(n)
        variant = header.variant
        segmented = variant in (Tier.PAGES_SEGMENTED, Tier.SHIFTED_SEGMENTED)
        segments = _segments(idx) if segmented else [slice(0, int(idx.size))]
        # every segment's fields are read (and checked) before the first is decoded
        records = [_segment_record(r, variant, len(base), idx, sel, len(context)) for sel in segments]
        scratch = memoryview(bytearray(min(int(idx.size), SEGMENT_PAGES) * PAGE_SIZE))
        for sel, (seg_lo, seg_hi, used, zframe) in zip(segments, records, strict=True):
            pages = idx[sel]
            prefix: BytesLike
            if variant in (Tier.PAGES, Tier.PAGES_SEGMENTED):
                prefix = _gather(out, pages, n)
            elif variant == Tier.SHIFTED:
                prefix = b"".join((memoryview(base.data)[lo:hi], context))
            else:
                start = int(pages[0]) // SEGMENT_PAGES * SEGMENT_BYTES
                inside = min(used, start)
                before = context[len(context) - (used - inside) :] if used > inside else b""
                prefix = b"".join((memoryview(base.data)[seg_lo:seg_hi], before, out[start - inside : start]))
            _decode_pages(zframe, raw_prefix(prefix), out, pages, n, limit, scratch)
            del prefix
        if r.remaining:
            raise CorruptFrameError(f"hde body has {r.remaining} bytes after its last segment")


def _segment_record(
    r: Reader, variant: int, base_length: int, idx: npt.NDArray[np.intp], sel: slice, context: int
) -> tuple[int, int, int, memoryview]:
    """A segment's fields (a region segment's window and history length) and its zstd frame; an
    unsegmented frame's zstd frame is the rest of the body."""
    if variant in (Tier.PAGES, Tier.SHIFTED):
        return 0, 0, 0, r.take(r.remaining)
    lo = hi = used = 0
    if variant == Tier.SHIFTED_SEGMENTED:
        lo = r.varint()
        width = r.varint()
        used = r.varint()
        hi = lo + width
        if hi > base_length:
            raise CorruptFrameError(
                f"hde segment window {lo}..{hi} is outside the {base_length}-byte baseline"
            )
        if width > MAX_REGION_WINDOW:
            raise FrameLimitError(
                f"hde segment references a {width}-byte baseline window (limit {MAX_REGION_WINDOW})"
            )
        if 0 < width < MIN_PREFIX:
            raise CorruptFrameError("hde segment references a window shorter than zstd allows")
        start = int(idx[sel.start]) // SEGMENT_PAGES * SEGMENT_BYTES
        if used > MAX_CONTEXT_LENGTH:
            raise FrameLimitError(f"hde segment uses {used} bytes of history (limit {MAX_CONTEXT_LENGTH})")
        if used > start + context:
            raise CorruptFrameError(
                f"hde segment at byte {start} uses {used} bytes of history, more than the frame has"
            )
    return lo, hi, used, r.take(r.varint())


def _segments(idx: npt.NDArray[np.intp]) -> list[slice]:
    """Runs of ``idx`` (sorted changed pages) that fall in the same segment of ``SEGMENT_PAGES`` pages."""
    seg = idx // SEGMENT_PAGES
    cuts = (np.flatnonzero(np.diff(seg)) + 1).tolist()
    return [slice(a, b) for a, b in zip([0, *cuts], [*cuts, int(idx.size)], strict=True)]


def _gather(out: memoryview, pages: npt.NDArray[np.intp], n: int) -> bytearray:
    """The old versions of ``pages`` (in ``out`` before their new content replaces them), concatenated,
    zero-padded to whole pages: the prefix of a pages frame's segment."""
    whole = n // PAGE_SIZE
    buf = bytearray(len(pages) * PAGE_SIZE)
    dst = np.frombuffer(buf, dtype=np.uint8).reshape(len(pages), PAGE_SIZE)
    full = int(np.count_nonzero(pages < whole))  # pages are sorted: only the last may be partial
    if full:
        src = np.frombuffer(out, dtype=np.uint8, count=whole * PAGE_SIZE).reshape(whole, PAGE_SIZE)
        dst[:full] = src[pages[:full]]
    if full < len(pages):
        dst[full, : n - whole * PAGE_SIZE] = np.frombuffer(out, dtype=np.uint8)[whole * PAGE_SIZE : n]
    return buf


def _decode_pages(
    zframe: memoryview,
    prefix: DictArg | None,
    out: memoryview,
    pages: npt.NDArray[np.intp],
    n: int,
    limit: int,
    scratch: memoryview,
) -> None:
    """Decode one zstd frame of ``len(pages)`` whole pages of new content (at most one segment, into
    ``scratch``) and put every page in its place in ``out`` (the last one cut at ``n``)."""
    size = len(pages) * PAGE_SIZE
    view = scratch[:size]
    got = zstd_decompress_into(zframe, view, zstd_dict=prefix, window_log_max=limit, what="hde pages")
    if got != size:
        raise CorruptFrameError(f"hde body holds {got} page bytes for {len(pages)} changed pages")
    whole = n // PAGE_SIZE
    src = np.frombuffer(view, dtype=np.uint8).reshape(len(pages), PAGE_SIZE)
    full = int(np.count_nonzero(pages < whole))
    if full:
        dst = np.frombuffer(out, dtype=np.uint8, count=whole * PAGE_SIZE).reshape(whole, PAGE_SIZE)
        dst[pages[:full]] = src[:full]
    if full < len(pages):
        out[whole * PAGE_SIZE : n] = view[full * PAGE_SIZE : full * PAGE_SIZE + n - whole * PAGE_SIZE]
