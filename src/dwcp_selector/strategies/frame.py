"""The self-describing frame every encoder emits (DESIGN section 1).

One frame carries one independently coded piece of a payload (an AMST chunk, or a whole small payload)::

    offset  size  field
    0       4     magic b"DWCF"
    4       1     format version (2)
    5       1     strategy id (0 none, 1 lz4, 2 zstd, 3 hde)
    6       1     flags: bit 0 checksum algorithm (0 xxh3-64, 1 crc32c), bits 4-7 strategy variant,
                  bits 1-3 reserved (must be 0)
    7       var   original length (unsigned LEB128 varint)
            var   body length (varint)
            var   context length (varint): how many payload bytes immediately before this chunk the
                  decoder must supply (0: the chunk decodes on its own)
            8|4   checksum of the original bytes (little endian)
            var   extension length (varint), then the strategy's extension: the zstd dictionary id,
                  HDE's baseline id, checksum, size and reference range
            ...   body

A chunk coded with context (zstd and HDE's region frames see the payload's preceding bytes, as zstd's
multi-threaded mode lets each job see the previous job's tail) says so in its header, so a receiver can
tell which chunks it must decode in order without knowing any strategy.

Parsing checks every field against the buffer and the caller's limit before any memory is committed;
decoding (in the encoders) checks the output length and checksum. Varints keep the header at 16–40 bytes,
which matters when an HDE delta of a 700 KB file is 800 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._types import BytesLike
from ..errors import CorruptFrameError, FrameLimitError, TruncatedFrameError, UnsupportedFrameError
from .checksum import ChecksumAlgo

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CONTEXT_LENGTH",
    "FrameHeader",
    "Reader",
    "pack_frame",
    "parse_frame",
    "varint",
]

MAGIC = b"DWCF"
FORMAT_VERSION = 2
#: Largest context a frame may depend on (16 MiB): bounds the history a decoder keeps.
MAX_CONTEXT_LENGTH = 16 << 20
_MAX_VARINT_BYTES = 10
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_RESERVED_FLAG_BITS = 0b0000_1110


def varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value``."""
    if value < 0:
        raise ValueError("varint takes a non-negative integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Reader:
    """Bounds-checked reading of header fields; every overrun is a :class:`TruncatedFrameError`."""

    __slots__ = ("_buf", "_pos", "_what")

    def __init__(self, buf: BytesLike, what: str = "frame", pos: int = 0) -> None:
        self._buf = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
        self._pos = pos
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._buf):
            raise TruncatedFrameError(
                f"{self._what} is truncated: needs {n} more bytes at offset {self._pos}, "
                f"has {len(self._buf) - self._pos}"
            )
        view = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def varint(self) -> int:
        result = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.u8()
            result |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return result
        raise CorruptFrameError(f"{self._what} has a varint longer than {_MAX_VARINT_BYTES} bytes")

    def text(self, max_len: int = 1024) -> str:
        n = self.varint()
        if n > max_len:
            raise CorruptFrameError(f"{self._what} has a {n}-byte string field (limit {max_len})")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptFrameError(f"{self._what} has a string field that is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The parsed header of one frame."""

    strategy_id: int
    variant: int
    checksum_algo: ChecksumAlgo
    original_length: int
    checksum: int
    ext: bytes
    header_length: int
    body_length: int
    context_length: int = 0

    @property
    def frame_length(self) -> int:
        return self.header_length + self.body_length


def pack_frame(
    strategy_id: int,
    variant: int,
    algo: ChecksumAlgo,
    original_length: int,
    checksum: int,
    ext: bytes,
    body: BytesLike,
    context_length: int = 0,
) -> bytes:
    """Assemble a frame; ``body`` is copied once into the result."""
    if not 0 <= variant <= 15:
        raise ValueError("variant must fit in 4 bits")
    if not 0 <= context_length <= MAX_CONTEXT_LENGTH:
        raise ValueError(f"context length must be in 0..{MAX_CONTEXT_LENGTH}")
    flags = (variant << 4) | int(algo)
    csum = _U64.pack(checksum) if algo is ChecksumAlgo.XXH3_64 else _U32.pack(checksum)
    header = b"".join(
        (
            MAGIC,
            bytes((FORMAT_VERSION, strategy_id, flags)),
            varint(original_length),
            varint(len(body)),
            varint(context_length),
            csum,
            varint(len(ext)),
            ext,
        )
    )
    return b"".join((header, body))


def parse_frame(buf: BytesLike, *, max_original_length: int) -> tuple[FrameHeader, memoryview]:
    """Parse one frame that fills ``buf`` exactly; return its header and a view of its body.

    Raises :class:`TruncatedFrameError` when ``buf`` is shorter than the frame, :class:`CorruptFrameError`
    on bad magic, bad fields or trailing bytes, :class:`UnsupportedFrameError` on an unknown version and
    :class:`FrameLimitError` when the declared original length exceeds ``max_original_length``.
    """
    header = parse_header(buf, max_original_length=max_original_length)
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    if len(view) < header.frame_length:
        raise TruncatedFrameError(
            f"frame is truncated: header declares {header.frame_length} bytes, got {len(view)}"
        )
    if len(view) > header.frame_length:
        raise CorruptFrameError(
            f"frame has {len(view) - header.frame_length} trailing bytes after its declared end"
        )
    return header, view[header.header_length : header.frame_length]


def parse_header(buf: BytesLike, *, max_original_length: int, pos: int = 0) -> FrameHeader:
    """Parse the header of the frame starting at ``pos`` in ``buf`` (the body may follow or not)."""
    r = Reader(buf, "frame", pos)
    if r.remaining < len(MAGIC):
        raise TruncatedFrameError(f"frame is truncated: {r.remaining} bytes, too short for a header")
    magic = bytes(r.take(len(MAGIC)))
    if magic != MAGIC:
        raise CorruptFrameError(f"not a dwcp frame: magic {magic!r}, expected {MAGIC!r}")
    version = r.u8()
    if version != FORMAT_VERSION:
        raise UnsupportedFrameError(
            f"frame format version {version} is not supported by this build (supports {FORMAT_VERSION})"
        )
    strategy_id = r.u8()
    flags = r.u8()
    if flags & _RESERVED_FLAG_BITS:
        raise UnsupportedFrameError(f"frame uses reserved flag bits {flags & _RESERVED_FLAG_BITS:#04x}")
    algo = ChecksumAlgo(flags & 1)
    original_length = r.varint()
    if original_length > max_original_length:
        raise FrameLimitError(
            f"frame declares {original_length} original bytes, above the decoder's limit of "
            f"{max_original_length}"
        )
    body_length = r.varint()
    context_length = r.varint()
    if context_length > MAX_CONTEXT_LENGTH:
        raise FrameLimitError(
            f"frame depends on {context_length} bytes of context, above the limit of {MAX_CONTEXT_LENGTH}"
        )
    csum = r.u64() if algo is ChecksumAlgo.XXH3_64 else r.u32()
    ext_len = r.varint()
    if ext_len > 4096:
        raise CorruptFrameError(f"frame declares a {ext_len}-byte extension (limit 4096)")
    ext = bytes(r.take(ext_len))
    return FrameHeader(
        strategy_id=strategy_id,
        variant=flags >> 4,
        checksum_algo=algo,
        original_length=original_length,
        checksum=csum,
        ext=ext,
        header_length=r.pos - pos,
        body_length=body_length,
        context_length=context_length,
    )
