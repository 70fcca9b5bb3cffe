"""Where a chunk's content lies in the baseline: content-defined anchors matched between the versions.

HDE's tier 3 codes a chunk with a window of the baseline as zstd prefix, and the window must hold what
the chunk was made from. Mapping the chunk's offset proportionally into the baseline works while changes
are spread evenly, and misses content that moved further than the margin (a directory added early in a
tarball shifts everything after it). Anchors find it instead, at the cost of one pass over the baseline,
made once per baseline and cached with it:

* an **anchor** is a position whose 4 bytes hash (multiplicatively) to a value below 2^32 / 256, so about
  one position in 256 and the same positions in both versions wherever the content is the same;
* its **key** is the 8 bytes at the anchor; keys that occur more than once in the baseline (padding,
  zero runs, repeated headers) are dropped, so every kept key names one baseline position;
* a chunk's anchors are looked up in the baseline's sorted keys, and the densest span of the matched
  baseline positions (at most ``span`` bytes) is where the chunk came from.

This is the rsync / content-defined-chunking idea, sampled sparsely enough to cost about 2 ms for a
megabyte (the scan is compiled: ``_anchors.c``). Everything is exact integer arithmetic on the bytes: no
randomness, the same result on every host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._anchors import block_anchors

__all__ = ["AnchorIndex", "anchor_keys", "locate"]

_KEY_BYTES = 8
_BLOCK = 4 << 20

IntArray = npt.NDArray[np.int64]


def anchor_keys(data: bytes | memoryview) -> tuple[IntArray, npt.NDArray[np.uint64]]:
    """(positions, keys) of the content-defined anchors of ``data``, positions increasing.

    Found by the compiled loop one block at a time, so the memory it takes is a few times the block's
    anchors, whatever the size of ``data``.
    """
    found = [block_anchors(data, s, s + _BLOCK) for s in range(0, max(0, len(data) - _KEY_BYTES), _BLOCK)]
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    positions = np.frombuffer(b"".join(p for p, _ in found), dtype=np.int64)
    keys = np.frombuffer(b"".join(k for _, k in found), dtype=np.uint64)
    return positions, keys


@dataclass(frozen=True)
class AnchorIndex:
    """The baseline's unique anchor keys, sorted, with their positions."""

    keys: npt.NDArray[np.uint64]
    positions: IntArray

    @classmethod
    def build(cls, data: bytes) -> AnchorIndex:
        positions, keys = anchor_keys(data)
        order = np.argsort(keys, kind="stable")
        keys, positions = keys[order], positions[order]
        if keys.size:
            first = np.ones(keys.size, dtype=bool)
            first[1:] = keys[1:] != keys[:-1]
            last = np.ones(keys.size, dtype=bool)
            last[:-1] = keys[:-1] != keys[1:]
            unique = first & last
            keys, positions = keys[unique], positions[unique]
        return cls(keys, positions)

    def matches(self, chunk: bytes | memoryview) -> tuple[IntArray, IntArray]:
        """(chunk positions, baseline positions) of the chunk's anchors the baseline has exactly once,
        ordered by baseline position."""
        positions, keys = anchor_keys(chunk)
        empty = np.zeros(0, dtype=np.int64)
        if keys.size == 0 or self.keys.size == 0:
            return empty, empty
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        hit = self.keys[at] == keys
        base = self.positions[at[hit]]
        order = np.argsort(base, kind="stable")
        return positions[hit][order], base[order]


def locate(
    chunk_positions: IntArray, base_positions: IntArray, length: int, span: int, min_matches: int = 4
) -> tuple[int, int] | None:
    """The baseline stretch a ``length``-byte chunk was made from, or ``None`` with too few matches.

    The densest ``span``-byte stretch of matched baseline positions, extended to where the chunk's
    first and last byte fall under the median shift of the anchors in it (the anchors are sparse, and
    repeated content has none: the shift carries the mapping over the gaps).
    """
    if base_positions.size < min_matches:
        return None
    ends = np.searchsorted(base_positions, base_positions + span, side="right")
    best = int(np.argmax(ends - np.arange(base_positions.size)))
    last = int(ends[best])
    lo, hi = int(base_positions[best]), int(base_positions[last - 1]) + _KEY_BYTES
    shift = int(np.median(base_positions[best:last] - chunk_positions[best:last]))
    return min(lo, max(0, shift)), max(hi, shift + length)
