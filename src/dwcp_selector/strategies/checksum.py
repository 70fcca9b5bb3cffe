"""Checksums of the original bytes, carried in every frame: xxh3-64 (default) or crc32c."""

from __future__ import annotations

import enum

import crc32c as _crc32c
import xxhash

from .._types import BytesLike
from ..errors import ConfigError

__all__ = ["ChecksumAlgo", "checksum", "xxh3"]


class ChecksumAlgo(enum.IntEnum):
    """Checksum algorithms a frame can declare; the value is stored in the frame's flags."""

    XXH3_64 = 0
    CRC32C = 1

    @property
    def size(self) -> int:
        """Bytes the checksum takes in a frame header."""
        return 8 if self is ChecksumAlgo.XXH3_64 else 4

    @classmethod
    def parse(cls, name: str) -> ChecksumAlgo:
        names = {"xxh3": cls.XXH3_64, "xxh3_64": cls.XXH3_64, "crc32c": cls.CRC32C}
        try:
            return names[name.lower()]
        except KeyError:
            raise ConfigError(f"unknown checksum {name!r}; expected xxh3 or crc32c") from None


def xxh3(data: BytesLike) -> int:
    """xxh3-64 of ``data`` as an unsigned integer (also the baseline identity checksum)."""
    return int(xxhash.xxh3_64_intdigest(data))


def checksum(algo: ChecksumAlgo, data: BytesLike) -> int:
    """The checksum of ``data`` under ``algo``."""
    if algo is ChecksumAlgo.XXH3_64:
        return int(xxhash.xxh3_64_intdigest(data))
    return int(_crc32c.crc32c(data))
