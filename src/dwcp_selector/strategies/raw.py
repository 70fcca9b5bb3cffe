"""``none``: the payload as it is, framed and checksummed; the choice for fast links and spent CPUs."""

from __future__ import annotations

from .base import Body, ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .frame import FrameHeader

__all__ = ["RawEncoder"]


class RawEncoder(Encoder):
    """Raw bytes in a frame: costs a checksum and a copy."""

    name = "none"
    strategy_id = 0

    def _encode_body(self, data: memoryview, baseline: Baseline | None, context: ChunkContext) -> Body:
        return 0, b"", data, 0

    def _decode_body(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytes:
        return bytes(body)
