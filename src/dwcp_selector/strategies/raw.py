"""``none``: the payload as it is, framed and checksummed; the choice for fast links and spent CPUs."""

from __future__ import annotations

from ..errors import CorruptFrameError
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

    @staticmethod
    def _check(header: FrameHeader, body: memoryview) -> None:
        if header.variant != 0:
            raise CorruptFrameError(f"none frame has unknown variant {header.variant}")
        if len(body) != header.original_length:
            raise CorruptFrameError(
                f"none frame holds {len(body)} bytes, header declares {header.original_length}"
            )

    def _decode_into(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        context: memoryview,
        out: memoryview,
    ) -> None:
        self._check(header, body)
        out[:] = body

    def _decode_new(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytearray:
        self._check(header, body)
        return bytearray(body)
