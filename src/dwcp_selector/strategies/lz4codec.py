"""``lz4``: AMST's light codec, one lz4 block per chunk, stored raw when lz4 does not shrink it.

A chunk above 1 MiB is coded as independent blocks of 1 MiB (lz4 matches reach back 64 KiB, so this
costs next to nothing): python-lz4 decodes a block into a buffer of its own and copies it into the
result, so a block is decoded with twice its length in memory, and segments keep that to 1 MiB above the
output whatever the chunk size. Single blocks are accepted up to ``SINGLE_BLOCK_MAX``.
"""

from __future__ import annotations

import lz4.block

from ..errors import CorruptFrameError, FrameLimitError
from .base import Body, ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .frame import FrameHeader, Reader, varint

__all__ = ["SEGMENT_BYTES", "SINGLE_BLOCK_MAX", "Lz4Encoder"]

_COMPRESSED = 0
_STORED = 1
_SEGMENTED = 2
#: Chunks above this size are coded as blocks of this size (variant 2): (varint length << 1 | stored,
#: block) for each.
SEGMENT_BYTES = 1 << 20
#: Largest single-block frame (variant 0) a decoder accepts: its decoding costs twice its length.
SINGLE_BLOCK_MAX = 8 << 20
#: An lz4 sequence restores at most 255 bytes per byte of input (match lengths grow by 255 a byte), so a
#: body restoring more than this many bytes per byte, plus slack, cannot be valid.
_MAX_RATIO = 256


def _decompress(block: memoryview, size: int) -> bytearray:
    try:
        # uncompressed_size bounds the output buffer: a lying header cannot make lz4 allocate more
        out = lz4.block.decompress(block, uncompressed_size=size, return_bytearray=True)
    except lz4.block.LZ4BlockError as exc:
        raise CorruptFrameError(f"lz4 body does not decode: {exc}") from exc
    if len(out) != size:
        raise CorruptFrameError(f"lz4 block decodes to {len(out)} bytes, {size} expected")
    assert isinstance(out, bytearray)
    return out


class Lz4Encoder(Encoder):
    """lz4 block compression (default acceleration); incompressible chunks are stored as they are."""

    name = "lz4"
    strategy_id = 1

    def _encode_body(self, data: memoryview, baseline: Baseline | None, context: ChunkContext) -> Body:
        n = len(data)
        if n == 0:
            return _STORED, b"", data, 0
        if n <= SEGMENT_BYTES:
            packed = lz4.block.compress(data, store_size=False)
            if len(packed) >= n:
                return _STORED, b"", data, 0
            return _COMPRESSED, b"", packed, 0
        parts: list[bytes | memoryview] = []
        for start in range(0, n, SEGMENT_BYTES):
            segment = data[start : start + SEGMENT_BYTES]
            packed = lz4.block.compress(segment, store_size=False)
            if len(packed) >= len(segment):
                parts += [varint(len(segment) << 1 | 1), segment]
            else:
                parts += [varint(len(packed) << 1), packed]
        body = b"".join(parts)
        if len(body) >= n:
            return _STORED, b"", data, 0
        return _SEGMENTED, b"", body, 0

    @staticmethod
    def _check(header: FrameHeader, body: memoryview) -> None:
        n = header.original_length
        if header.variant == _STORED:
            if len(body) != n:
                raise CorruptFrameError(f"lz4 stored frame holds {len(body)} bytes, header declares {n}")
            return
        if header.variant not in (_COMPRESSED, _SEGMENTED) or n == 0:
            raise CorruptFrameError(f"lz4 frame has unknown variant {header.variant}")
        if header.variant == _COMPRESSED and n > SINGLE_BLOCK_MAX:
            raise FrameLimitError(
                f"lz4 frame codes {n} bytes in one block (limit {SINGLE_BLOCK_MAX}: larger chunks are "
                "coded in segments)"
            )
        if n > _MAX_RATIO * (len(body) + 1):
            raise CorruptFrameError(f"lz4 body of {len(body)} bytes cannot hold the {n} bytes it restores")

    def _decode_new(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytearray:
        self._check(header, body)  # before anything is allocated
        if header.variant == _STORED:
            return bytearray(body)
        if header.variant == _COMPRESSED:
            return _decompress(body, header.original_length)
        out = bytearray(header.original_length)
        self._segments(body, memoryview(out))
        return out

    def _decode_into(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        context: memoryview,
        out: memoryview,
    ) -> None:
        self._check(header, body)
        if header.variant == _STORED:
            out[:] = body
        elif header.variant == _COMPRESSED:
            out[:] = _decompress(body, len(out))
        else:
            self._segments(body, out)

    @staticmethod
    def _segments(body: memoryview, out: memoryview) -> None:
        r = Reader(body, "lz4 body")
        for start in range(0, len(out), SEGMENT_BYTES):
            place = out[start : start + SEGMENT_BYTES]
            field = r.varint()
            block = r.take(field >> 1)
            if field & 1:
                if len(block) != len(place):
                    raise CorruptFrameError(
                        f"lz4 stored segment at byte {start} holds {len(block)} bytes, {len(place)} expected"
                    )
                place[:] = block
            else:
                place[:] = _decompress(block, len(place))
        if r.remaining:
            raise CorruptFrameError(f"lz4 body has {r.remaining} bytes after its last segment")
