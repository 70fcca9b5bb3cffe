"""``none``: the payload as it is, framed and checksummed; the choice for fast links and spent CPUs."""

from __future__ import annotations

from .._types import BytesLike
from .base import ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .frame import FrameHeader

__all__ = ["RawEncoder"]


class RawEncoder(Encoder):
    """Raw bytes in a frame: costs a checksum and a copy."""

    name = "none"
    strategy_id = 0

    def _encode_body(
        self, data: memoryview, baseline: Baseline | None, context: ChunkContext
    ) -> tuple[int, bytes, BytesLike]:
        return 0, b"", data

    def _decode_body(self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None) -> bytes:
        return bytes(body)
