"""Decision-time payload features (DESIGN section 4): what can be known before a transfer starts.

Only a sample of the payload is ever read, so extraction costs tens of microseconds whatever the size:

* **basic** (one 4 KiB sample made of four 1 KiB pieces spread over the payload, and 16 sampled pages):
  byte entropy, zero-byte fraction, zero-page fraction;
* **probe** (four 16 KiB pieces, 64 KiB in all): compressed/original ratio under lz4 and zstd-1, the
  "cheap compressibility probe" whose time counts as decision time;
* **similarity** (only with a baseline): the share of 32 sampled pages identical to, or edited in place
  from, the baseline page at the same offset (HDE's own tier test), and the share of 16 sampled 32-byte
  snippets found in the baseline near their proportional position (content that moved).

The same function serves the staging collection (which stores every feature and its cost) and, later,
the selector at decision time, so training and serving cannot drift apart. Nothing here looks at the
transfer's outcome: compressed sizes and times are labels, never features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import lz4.block
import numpy as np

from ._types import BytesLike
from .strategies.zstdcodec import zstd_compress

__all__ = [
    "FEATURE_VERSION",
    "PayloadFeatures",
    "payload_features",
]

FEATURE_VERSION = "features-v1"
_SAMPLE_PIECE = 1024
_SAMPLE_PIECES = 4
_ZERO_PAGES = 16
_PROBE_PIECE = 16 * 1024
_PROBE_PIECES = 4
_SNIPPET = 32
_SNIPPETS = 16
_SNIPPET_WINDOW = 64 * 1024


@dataclass(frozen=True, slots=True)
class PayloadFeatures:
    """Features of one payload (and its baseline), with the seconds each group cost to compute."""

    payload_bytes: int
    has_baseline: bool
    baseline_bytes: int
    entropy: float
    zero_fraction: float
    zero_page_fraction: float
    probe_lz4_ratio: float
    probe_zstd_ratio: float
    similarity_pages: float
    similarity_inplace: float
    similarity_shifted: float
    basic_s: float
    probe_s: float
    similarity_s: float

    def as_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def _spread(view: memoryview, piece: int, pieces: int) -> list[memoryview]:
    """``pieces`` slices of ``piece`` bytes spread evenly over ``view`` (the whole view when small)."""
    n = len(view)
    if n <= piece * pieces:
        return [view]
    step = (n - piece) // (pieces - 1)
    return [view[i * step : i * step + piece] for i in range(pieces)]


def _entropy(sample: np.ndarray) -> float:
    if sample.size == 0:
        return 0.0
    counts = np.bincount(sample, minlength=256)
    nz = counts[counts > 0]
    p = nz / sample.size
    return float(-(p * np.log2(p)).sum())


def payload_features(
    payload: BytesLike,
    baseline: BytesLike | None = None,
    *,
    probe: bool = True,
    similarity: bool = True,
) -> PayloadFeatures:
    """Sampled features of ``payload`` (and its relation to ``baseline``); see the module docstring."""
    view = memoryview(payload).cast("B")
    n = len(view)
    t0 = time.perf_counter()
    sample = np.frombuffer(b"".join(_spread(view, _SAMPLE_PIECE, _SAMPLE_PIECES)), dtype=np.uint8)
    entropy = _entropy(sample)
    zero_fraction = float(np.count_nonzero(sample == 0) / sample.size) if sample.size else 0.0
    npages = n // 4096
    if npages:
        idx = np.linspace(0, npages - 1, num=min(_ZERO_PAGES, npages)).astype(np.int64)
        pages = np.frombuffer(view, dtype=np.uint8, count=npages * 4096).reshape(npages, 4096)[idx]
        zero_pages = float(np.mean(~pages.any(axis=1)))
    else:
        zero_pages = 1.0 if n and not any(view) else 0.0
    t1 = time.perf_counter()

    lz4_ratio = zstd_ratio = 1.0
    if probe and n:
        probe_sample = b"".join(_spread(view, _PROBE_PIECE, _PROBE_PIECES))
        lz4_ratio = min(1.0, len(lz4.block.compress(probe_sample, store_size=False)) / len(probe_sample))
        zstd_ratio = min(1.0, len(zstd_compress(probe_sample, 1)) / len(probe_sample))
    t2 = time.perf_counter()

    sim_pages = sim_inplace = sim_shifted = 0.0
    base_len = 0
    if baseline is not None:
        base = memoryview(baseline).cast("B")
        base_len = len(base)
        if similarity and n and base_len:
            common = min(n, base_len) // 4096
            if common:
                k = min(32, common)
                idx = np.linspace(0, common - 1, num=k).astype(np.int64)
                new = np.frombuffer(view, dtype=np.uint8, count=common * 4096).reshape(common, 4096)[idx]
                old = np.frombuffer(base, dtype=np.uint8, count=common * 4096).reshape(common, 4096)[idx]
                differing = np.count_nonzero(new != old, axis=1)
                sim_pages = float(np.mean(differing == 0))
                sim_inplace = float(np.mean(differing <= 1024))
            sim_shifted = _shifted_similarity(view, base)
    t3 = time.perf_counter()
    return PayloadFeatures(
        payload_bytes=n,
        has_baseline=baseline is not None,
        baseline_bytes=base_len,
        entropy=entropy,
        zero_fraction=zero_fraction,
        zero_page_fraction=zero_pages,
        probe_lz4_ratio=lz4_ratio,
        probe_zstd_ratio=zstd_ratio,
        similarity_pages=sim_pages,
        similarity_inplace=sim_inplace,
        similarity_shifted=sim_shifted,
        basic_s=t1 - t0,
        probe_s=t2 - t1,
        similarity_s=t3 - t2 if baseline is not None and similarity else 0.0,
    )


def _shifted_similarity(view: memoryview, base: memoryview) -> float:
    """Share of sampled snippets of the payload found in the baseline near their proportional position."""
    n, m = len(view), len(base)
    if n < _SNIPPET or m < _SNIPPET:
        return 1.0 if bytes(view) == bytes(base) else 0.0
    # search the baseline where it lies (bytes and mmap both have find); copy only an odd buffer
    owner: Any = base.obj
    base_bytes: Any = owner if hasattr(owner, "find") and len(owner) == m else bytes(base)
    found = 0
    positions = np.linspace(0, n - _SNIPPET, num=_SNIPPETS).astype(np.int64)
    for pos in positions.tolist():
        snippet = bytes(view[pos : pos + _SNIPPET])
        center = pos * m // n
        lo = max(0, center - _SNIPPET_WINDOW)
        hi = min(m, center + _SNIPPET_WINDOW + _SNIPPET)
        if base_bytes.find(snippet, lo, hi) >= 0:
            found += 1
    return found / len(positions)
