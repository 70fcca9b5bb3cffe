"""Decision-time payload features (DESIGN section 4): what can be known before a transfer starts.

Two tiers, by cost, so that a decision can afford what its transfer can pay for (DESIGN section 5a):

* **basic** (a few µs whatever the size): a 4 KiB sample made of four 1 KiB pieces spread over the
  payload gives the byte entropy, the zero-byte share and the printable-text share; with a baseline,
  8 pages sampled at the same offsets in both versions give the share of identical pages. The byte
  statistics and the page comparison run in a small compiled module (``_sample``), one pass without copies,
  because this tier is on the decision path of every transfer the model decides;
* **rich** (a few hundred µs, for large transfers only): a 64 KiB probe (four 16 KiB pieces) coded with
  lz4 and zstd-1 gives compressed/original ratios; 16 sampled pages give the zero-page share and, with a
  baseline, the share of pages edited in place (at most a quarter of their bytes differ); 8 snippets of
  32 bytes searched near their proportional position in the baseline give the share of content that
  moved but survived (the shifted similarity).

Every feature costs what it costs in the calling thread; the times are returned with the values so the
collection records them and the selector's decision time includes them. One implementation serves the
staging collection (which computes both tiers) and the selector at decision time. Nothing here looks at
the transfer's outcome: compressed sizes and times are labels, never features.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import lz4.block
import numpy as np

from ._sample import same_pages, sample_stats, set_clog
from ._types import BytesLike
from .strategies.zstdcodec import zstd_compress

__all__ = [
    "FEATURE_VERSION",
    "BasicFeatures",
    "PayloadFeatures",
    "RichFeatures",
    "basic_features",
    "payload_features",
    "rich_features",
]

FEATURE_VERSION = "features-v2"
PAGE = 4096
_PIECE = 1024
_PIECES = 4
_SIM_PAGES = 8
_RICH_PAGES = 16
_PROBE_PIECE = 16 * 1024
_PROBE_PIECES = 4
_SNIPPET = 32
_SNIPPETS = 8
_SNIPPET_WINDOW = 32 * 1024
# c·log2(c) for every count a 4 KiB sample can have: entropy without a log per call
_CLOG = np.zeros(_PIECE * _PIECES + 1)
_CLOG[1:] = np.arange(1, _PIECE * _PIECES + 1) * np.log2(np.arange(1, _PIECE * _PIECES + 1))
# printable ASCII, tab, LF and CR: the text share is one dot product with this mask
_TEXT = np.zeros(256)
_TEXT[32:127] = 1.0
_TEXT[[9, 10, 13]] = 1.0
# the compiled statistics use this very table: bit-identical to the numpy formulation
set_clog(_CLOG.tobytes())


def sample_stats_numpy(data: bytes) -> tuple[float, float, float]:
    """Entropy, zero and text shares of the spread sample, in numpy: the definition ``_sample`` follows.

    The decision path calls the compiled ``_sample.sample_stats`` (one pass, no copies: about 1 µs where
    these five numpy calls take 10); a property test holds the two equal bit for bit.
    """
    sample = _spread(data, _PIECE, _PIECES)
    if not sample:
        return 0.0, 0.0, 0.0
    counts = np.bincount(np.frombuffer(sample, dtype=np.uint8), minlength=256)
    k = len(sample)
    return (
        math.log2(k) - float(_CLOG.take(counts).sum()) / k,
        float(counts[0]) / k,
        float(counts @ _TEXT) / k,
    )


@dataclass(slots=True)  # not frozen: a frozen dataclass pays object.__setattr__ per field (µs here)
class BasicFeatures:
    payload_bytes: int
    has_baseline: bool
    baseline_bytes: int
    entropy: float
    zero_fraction: float
    text_fraction: float
    similarity_pages: float | None
    seconds: float


@dataclass(frozen=True, slots=True)
class RichFeatures:
    probe_lz4_ratio: float
    probe_zstd_ratio: float
    zero_page_fraction: float
    similarity_inplace: float | None
    similarity_shifted: float | None
    probe_s: float
    similarity_s: float


@dataclass(frozen=True, slots=True)
class PayloadFeatures:
    """Both tiers of one payload, as the staging collection records them."""

    basic: BasicFeatures
    rich: RichFeatures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.basic), **asdict(self.rich)}


def _bytes_of(data: BytesLike) -> bytes:
    """The payload as ``bytes`` without a copy when it already is one (slices then compare by memcmp)."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    obj = view.obj
    if isinstance(obj, bytes) and len(obj) == view.nbytes:
        return obj
    return view.tobytes()


def _spread(data: bytes, piece: int, pieces: int) -> bytes:
    """``pieces`` slices of ``piece`` bytes spread evenly over ``data`` (all of it when small)."""
    n = len(data)
    if n <= piece * pieces:
        return data
    step = (n - piece) // (pieces - 1)
    return b"".join([data[i * step : i * step + piece] for i in range(pieces)])


def _page_offsets(pages: int, count: int) -> list[int]:
    if pages <= count:
        return [i * PAGE for i in range(pages)]
    return [(i * (pages - 1) // (count - 1)) * PAGE for i in range(count)]


def basic_features(payload: BytesLike, baseline: BytesLike | None = None) -> BasicFeatures:
    """The cheap tier: sampled entropy, zero and text shares, identical sampled pages."""
    t0 = time.perf_counter()
    data = _bytes_of(payload)
    n = len(data)
    entropy, zero, text = sample_stats(data)
    similarity: float | None = None
    base_len = 0
    if baseline is not None:
        base = _bytes_of(baseline)
        base_len = len(base)
        same, compared = same_pages(data, base, _SIM_PAGES)
        if compared:
            similarity = same / compared
        else:
            similarity = 1.0 if data == base else 0.0
    return BasicFeatures(
        n, baseline is not None, base_len, entropy, zero, text, similarity, time.perf_counter() - t0
    )


def rich_features(payload: BytesLike, baseline: BytesLike | None = None) -> RichFeatures:
    """The costly tier: compressibility probe, zero pages, in-place and shifted similarity."""
    t0 = time.perf_counter()
    data = _bytes_of(payload)
    n = len(data)
    lz4_ratio = zstd_ratio = 1.0
    if n:
        sample = _spread(data, _PROBE_PIECE, _PROBE_PIECES)
        lz4_ratio = min(1.0, len(lz4.block.compress(sample, store_size=False)) / len(sample))
        zstd_ratio = min(1.0, len(zstd_compress(sample, 1)) / len(sample))
    offsets = _page_offsets(n // PAGE, _RICH_PAGES)
    zero_pages = (
        sum(not any(data[o : o + PAGE]) for o in offsets) / len(offsets)
        if offsets
        else float(n > 0 and not any(data))
    )
    t1 = time.perf_counter()
    inplace = shifted = None
    if baseline is not None:
        base = _bytes_of(baseline)
        common = min(n, len(base)) // PAGE
        rows = _page_offsets(common, _RICH_PAGES)
        if rows:
            new = np.frombuffer(b"".join([data[o : o + PAGE] for o in rows]), dtype=np.uint8).reshape(
                -1, PAGE
            )
            old = np.frombuffer(b"".join([base[o : o + PAGE] for o in rows]), dtype=np.uint8).reshape(
                -1, PAGE
            )
            inplace = float(np.mean(np.count_nonzero(new != old, axis=1) <= PAGE // 4))
        else:
            inplace = 1.0 if data == base else 0.0
        shifted = _shifted_similarity(data, base)
    t2 = time.perf_counter()
    return RichFeatures(
        lz4_ratio, zstd_ratio, zero_pages, inplace, shifted, t1 - t0, t2 - t1 if baseline is not None else 0.0
    )


def payload_features(payload: BytesLike, baseline: BytesLike | None = None) -> PayloadFeatures:
    """Both tiers (what the staging collection records)."""
    return PayloadFeatures(basic_features(payload, baseline), rich_features(payload, baseline))


def _shifted_similarity(data: bytes, base: bytes) -> float:
    """Share of sampled snippets of the payload found in the baseline near their proportional position."""
    n, m = len(data), len(base)
    if n < _SNIPPET or m < _SNIPPET:
        return 1.0 if data == base else 0.0
    found = 0
    count = min(_SNIPPETS, n // _SNIPPET)
    for i in range(count):
        pos = i * (n - _SNIPPET) // max(1, count - 1)
        center = pos * m // n
        lo = max(0, center - _SNIPPET_WINDOW)
        hi = min(m, center + _SNIPPET_WINDOW + _SNIPPET)
        if base.find(data[pos : pos + _SNIPPET], lo, hi) >= 0:
            found += 1
    return found / count
