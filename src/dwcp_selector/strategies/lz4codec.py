"""``lz4``: AMST's light codec, one lz4 block per chunk, stored raw when lz4 does not shrink it."""

from __future__ import annotations

import lz4.block

from ..errors import CorruptFrameError
from .base import Body, ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .frame import FrameHeader

__all__ = ["Lz4Encoder"]

_COMPRESSED = 0
_STORED = 1


class Lz4Encoder(Encoder):
    """lz4 block compression (default acceleration); incompressible chunks are stored as they are."""

    name = "lz4"
    strategy_id = 1

    def _encode_body(self, data: memoryview, baseline: Baseline | None, context: ChunkContext) -> Body:
        if len(data) == 0:
            return _STORED, b"", data, 0
        packed = lz4.block.compress(data, store_size=False)
        if len(packed) >= len(data):
            return _STORED, b"", data, 0
        return _COMPRESSED, b"", packed, 0

    def _decode_body(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytes:
        if header.variant == _STORED:
            return bytes(body)
        if header.variant != _COMPRESSED or header.original_length == 0:
            raise CorruptFrameError(f"lz4 frame has unknown variant {header.variant}")
        try:
            # uncompressed_size bounds the output buffer: a lying header cannot make lz4 allocate more.
            out = lz4.block.decompress(body, uncompressed_size=header.original_length)
        except lz4.block.LZ4BlockError as exc:
            raise CorruptFrameError(f"lz4 body does not decode: {exc}") from exc
        return bytes(out)
