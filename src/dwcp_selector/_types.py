"""Type aliases shared across the package."""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["BytesLike"]

#: Anything the codecs read without copying: the payload, a baseline, an encoded frame.
BytesLike: TypeAlias = bytes | bytearray | memoryview
