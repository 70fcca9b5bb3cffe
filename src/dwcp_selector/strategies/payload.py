"""Whole payloads: split into 1 MiB chunks, each coded into a frame, kept in a container.

AMST sends a payload as chunks on parallel streams. Chunks are always *encoded* independently (in
parallel), but a strategy with context (zstd, HDE's region frames) codes each chunk with the payload
bytes before it as history, and such chunks *decode* in order: every frame names the context it needs.
:class:`PayloadCodec` is that chunking, shared by the transport, the ``measure`` command and the
``encode``/``decode`` commands. On disk (and in ``compressed_bytes``) an encoded payload is
a container::

    magic b"DWCS", version (1), strategy id, flags (0),
    payload length (varint), chunk size (varint), chunk count (varint), xxh3-64 of the payload (8 bytes),
    then the chunk frames in order (each self-delimiting, see ``frame.py``).

A payload that fits one chunk is stored as its bare frame, without the container header: the frame is
self-describing already, and small deltas are where 22 bytes of header show.

Decoding checks the chunk count, every chunk's length and the whole payload's checksum, so a container cut
at a frame boundary, frames reordered or a frame from another payload are all refused. Decoding a file
works chunk by chunk: memory stays at a few chunks plus the context history (at most
``MAX_CONTEXT_LENGTH``, 16 MiB) whatever the payload size.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import xxhash

from .._types import BytesLike
from ..costmodel import DEFAULT_CHUNK_SIZE
from ..errors import (
    ConfigError,
    CorruptFrameError,
    FrameLimitError,
    StrategyError,
    TruncatedFrameError,
    UnsupportedFrameError,
)
from .base import DEFAULT_MAX_OUTPUT, ChunkContext, Registry, as_view
from .baseline import Baseline, BaselineSource
from .frame import MAGIC as FRAME_MAGIC
from .frame import MAX_CONTEXT_LENGTH, FrameHeader, Reader, parse_frame, parse_header, varint

__all__ = [
    "CONTAINER_MAGIC",
    "MAX_CHUNK_SIZE",
    "ContainerHeader",
    "DecodeHistory",
    "EncodedPayload",
    "PayloadCodec",
]

CONTAINER_MAGIC = b"DWCS"
CONTAINER_VERSION = 1
#: Largest chunk a decoder accepts; bounds the memory of decoding one chunk.
MAX_CHUNK_SIZE = 64 << 20
_U64 = struct.Struct("<Q")
_MAX_CONTAINER_HEADER = 4 + 3 + 3 * 10 + 8


@dataclass(frozen=True, slots=True)
class ContainerHeader:
    strategy_id: int
    payload_length: int
    chunk_size: int
    chunk_count: int
    payload_checksum: int
    header_length: int

    def chunk_length(self, index: int) -> int:
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.payload_length - self.chunk_size * (self.chunk_count - 1)

    def to_bytes(self) -> bytes:
        return pack_container_header(
            self.strategy_id, self.payload_length, self.chunk_size, self.chunk_count, self.payload_checksum
        )


def pack_container_header(
    strategy_id: int, payload_length: int, chunk_size: int, chunk_count: int, payload_checksum: int
) -> bytes:
    return b"".join(
        (
            CONTAINER_MAGIC,
            bytes((CONTAINER_VERSION, strategy_id, 0)),
            varint(payload_length),
            varint(chunk_size),
            varint(chunk_count),
            _U64.pack(payload_checksum),
        )
    )


def parse_container_header(buf: BytesLike, *, max_output: int) -> ContainerHeader:
    r = Reader(buf, "container")
    if r.remaining < 4:
        raise TruncatedFrameError("input is too short to be a dwcp container")
    magic = bytes(r.take(4))
    if magic != CONTAINER_MAGIC:
        raise CorruptFrameError(f"not a dwcp container: magic {magic!r}, expected {CONTAINER_MAGIC!r}")
    version, strategy_id, flags = r.u8(), r.u8(), r.u8()
    if version != CONTAINER_VERSION or flags:
        raise UnsupportedFrameError(f"container version {version} flags {flags} not supported by this build")
    payload_length, chunk_size, chunk_count = r.varint(), r.varint(), r.varint()
    checksum = r.u64()
    if payload_length > max_output:
        raise FrameLimitError(f"container declares {payload_length} bytes, above the limit of {max_output}")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise FrameLimitError(f"container declares chunk size {chunk_size} (limit {MAX_CHUNK_SIZE})")
    expected_chunks = max(1, -(-payload_length // chunk_size))
    if chunk_count != expected_chunks:
        raise CorruptFrameError(
            f"container declares {chunk_count} chunks for {payload_length} bytes in {chunk_size}-byte chunks"
        )
    return ContainerHeader(strategy_id, payload_length, chunk_size, chunk_count, checksum, r.pos)


@dataclass
class EncodedPayload:
    """A payload encoded chunk by chunk with one strategy."""

    strategy: str
    strategy_id: int
    payload_length: int
    chunk_size: int
    payload_checksum: int
    frames: list[bytes] = field(default_factory=list)

    @property
    def header(self) -> bytes:
        """The container header; empty for a single-chunk payload, which is its bare frame."""
        if len(self.frames) == 1:
            return b""
        return pack_container_header(
            self.strategy_id, self.payload_length, self.chunk_size, len(self.frames), self.payload_checksum
        )

    @property
    def encoded_bytes(self) -> int:
        """Bytes on the wire or on disk: the container header and every frame."""
        return len(self.header) + sum(len(f) for f in self.frames)

    def to_bytes(self) -> bytes:
        return b"".join((self.header, *self.frames))


class DecodeHistory:
    """The last decoded bytes of a payload, enough for any frame's context, and no more.

    Chunks are kept as they were decoded (no copy) until the bytes after them exceed ``limit``.
    """

    __slots__ = ("_chunks", "_length", "limit")

    def __init__(self, limit: int = MAX_CONTEXT_LENGTH) -> None:
        self.limit = limit
        self._chunks: deque[bytearray] = deque()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, chunk: bytearray) -> None:
        self._chunks.append(chunk)
        self._length += len(chunk)
        while self._chunks and self._length - len(self._chunks[0]) >= self.limit:
            self._length -= len(self._chunks.popleft())

    def tail(self, n: int) -> BytesLike:
        """The last ``n`` bytes (fewer when fewer were decoded); a view when one chunk holds them."""
        if n <= 0 or not self._chunks:
            return b""
        last = self._chunks[-1]
        if n <= len(last):
            return memoryview(last)[len(last) - n :]
        parts: list[BytesLike] = []
        need = n
        for chunk in reversed(self._chunks):
            parts.append(chunk if len(chunk) <= need else memoryview(chunk)[len(chunk) - need :])
            need -= len(parts[-1])
            if need <= 0:
                break
        return b"".join(reversed(parts))


def _check_chunk(header: ContainerHeader, index: int, fh: FrameHeader) -> None:
    if fh.strategy_id != header.strategy_id:
        raise CorruptFrameError(
            f"chunk {index} has strategy id {fh.strategy_id}, the container says {header.strategy_id}"
        )
    if fh.original_length != header.chunk_length(index):
        raise CorruptFrameError(
            f"chunk {index} restores {fh.original_length} bytes, expected {header.chunk_length(index)}"
        )


class PayloadCodec:
    """Chunked encoding and decoding of whole payloads with any registered strategy."""

    def __init__(self, registry: Registry | None = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if registry is None:
            from . import default_registry

            registry = default_registry()
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk size must be in 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        self.registry = registry
        self.chunk_size = chunk_size

    def warm_up(self) -> None:
        """Run every strategy once on a small payload, so lazy imports and first allocations are paid
        before anything is timed (a long-running sender is always warm)."""
        if getattr(self, "_warm", False):
            return
        old = bytes(range(256)) * 64
        new = old[:4096] + bytes(4096) + old[8192:]
        base = Baseline("warm-up", old)
        for enc in self.registry:
            container = self.encode(new, enc.name, baseline=base if enc.needs_baseline else None).to_bytes()
            self.decode(container, baseline=base)
            if enc.needs_baseline:  # both HDE tiers
                shifted = b"x" + new
                self.decode(self.encode(shifted, enc.name, baseline=base).to_bytes(), baseline=base)
        self._warm = True

    def chunk_count(self, payload_length: int) -> int:
        return max(1, -(-payload_length // self.chunk_size))

    def iter_encode(
        self,
        payload: BytesLike,
        strategy: str,
        *,
        baseline: Baseline | None = None,
        payload_type: str | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(chunk index, frame)`` for every chunk, planning once for the whole payload."""
        encoder = self.registry.get(strategy)
        view = as_view(payload)
        if not encoder.offered(len(view), has_baseline=baseline is not None):
            raise StrategyError(f"strategy {strategy!r} is not offered for this payload (no baseline)")
        plan = encoder.plan(view, baseline)
        size = len(view)
        for index in range(self.chunk_count(size)):
            start = index * self.chunk_size
            chunk = view[start : start + self.chunk_size]
            context = ChunkContext(
                offset=start, payload_length=size, payload_type=payload_type, plan=plan, payload=view
            )
            yield index, encoder.encode(chunk, baseline=baseline, context=context)

    def encode(
        self,
        payload: BytesLike,
        strategy: str,
        *,
        baseline: Baseline | None = None,
        payload_type: str | None = None,
        chunk_times: list[float] | None = None,
    ) -> EncodedPayload:
        """Encode every chunk. ``chunk_times``, when given, receives the thread CPU seconds of each
        chunk's coding (the first includes the plan) and, last, of the payload checksum: a measurement
        keeps each piece's least over its runs (``measure.measure_strategy``)."""
        encoder = self.registry.get(strategy)
        view = as_view(payload)
        frames = self.iter_encode(view, strategy, baseline=baseline, payload_type=payload_type)
        if chunk_times is None:
            coded = [f for _, f in frames]
            checksum = xxhash.xxh3_64_intdigest(view)
        else:
            coded = []
            while True:
                t0 = time.thread_time()
                item = next(frames, None)
                if item is None:
                    break
                coded.append(item[1])
                chunk_times.append(time.thread_time() - t0)
            t0 = time.thread_time()
            checksum = xxhash.xxh3_64_intdigest(view)
            chunk_times.append(time.thread_time() - t0)
        return EncodedPayload(
            strategy=encoder.name,
            strategy_id=encoder.strategy_id,
            payload_length=len(view),
            chunk_size=self.chunk_size,
            payload_checksum=checksum,
            frames=coded,
        )

    def iter_decode(
        self,
        container: BytesLike | EncodedPayload,
        *,
        baseline: BaselineSource | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> Iterator[bytearray]:
        """Yield the decoded chunks of a container (or of an :class:`EncodedPayload`'s frames) in order,
        verifying everything on the way.

        The whole-payload checksum is checked after the last chunk: a consumer writing chunks out must
        treat the output as invalid if iteration raises. A chunk yielded is also the context of the
        chunks after it: do not modify it.
        """
        header, frames = self._open(container, max_output)
        if header is None:
            for _, fh, body in frames:
                yield self.registry.by_id(fh.strategy_id).decode_parsed(fh, body, baseline)
            return
        digest = xxhash.xxh3_64()
        history = DecodeHistory()
        for _, fh, body in frames:
            chunk = self.registry.by_id(fh.strategy_id).decode_parsed(
                fh, body, baseline, history.tail(fh.context_length)
            )
            digest.update(chunk)
            history.append(chunk)
            yield chunk
        if digest.intdigest() != header.payload_checksum:
            raise CorruptFrameError("payload checksum mismatch: chunks decode but do not form the original")

    def _open(
        self, container: BytesLike | EncodedPayload, max_output: int
    ) -> tuple[ContainerHeader | None, Iterator[tuple[int, FrameHeader, memoryview]]]:
        """The container header (``None`` for a bare frame) and an iterator over its frames, each checked
        against it (strategy, length, bounds; bytes after the last frame) as it is reached."""
        if isinstance(container, EncodedPayload):
            if len(container.frames) == 1:
                fh, body = parse_frame(container.frames[0], max_original_length=max_output)
                return None, iter([(0, fh, body)])
            if container.payload_length > max_output:
                raise FrameLimitError(
                    f"payload of {container.payload_length} bytes, above the limit of {max_output}"
                )
            if not 0 < container.chunk_size <= MAX_CHUNK_SIZE:
                raise FrameLimitError(f"chunk size {container.chunk_size} (limit {MAX_CHUNK_SIZE})")
            header = ContainerHeader(
                container.strategy_id,
                container.payload_length,
                container.chunk_size,
                len(container.frames),
                container.payload_checksum,
                0,
            )
            return header, self._iter_frames(header, container.frames)
        view = as_view(container)
        if bytes(view[: len(FRAME_MAGIC)]) == FRAME_MAGIC:
            fh, body = parse_frame(view, max_original_length=max_output)
            return None, iter([(0, fh, body)])
        header = parse_container_header(view, max_output=max_output)
        self.registry.by_id(header.strategy_id)  # refuses an unknown strategy before any chunk
        return header, self._iter_container(header, view)

    @staticmethod
    def _iter_frames(
        header: ContainerHeader, frames: list[bytes]
    ) -> Iterator[tuple[int, FrameHeader, memoryview]]:
        for index, frame in enumerate(frames):
            fh, body = parse_frame(frame, max_original_length=header.chunk_size)
            _check_chunk(header, index, fh)
            yield index, fh, body

    @staticmethod
    def _iter_container(
        header: ContainerHeader, view: memoryview
    ) -> Iterator[tuple[int, FrameHeader, memoryview]]:
        pos = header.header_length
        for index in range(header.chunk_count):
            if pos >= len(view):
                raise TruncatedFrameError(
                    f"container ends after {index} of {header.chunk_count} chunks ({len(view)} bytes)"
                )
            fh = parse_header(view, max_original_length=header.chunk_size, pos=pos)
            end = pos + fh.frame_length
            if end > len(view):
                raise TruncatedFrameError(
                    f"container is truncated inside chunk {index} of {header.chunk_count}: frame needs "
                    f"{fh.frame_length} bytes, {len(view) - pos} left"
                )
            _check_chunk(header, index, fh)
            yield index, fh, view[pos + fh.header_length : end]
            pos = end
        if pos != len(view):
            raise CorruptFrameError(f"container has {len(view) - pos} bytes after its last chunk")

    def decode(
        self,
        container: BytesLike | EncodedPayload,
        *,
        baseline: BaselineSource | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> bytearray:
        """The whole payload, verified, in one buffer of its length that every chunk is decoded into in
        place: memory is the payload plus one chunk's working set, never a second copy of the payload.

        The container's layout (every frame header, its length and strategy, nothing after the last
        frame) is checked before the payload's buffer is allocated.
        """
        header, frames = self._open(container, max_output)
        if header is None:
            ((_, fh, body),) = frames
            return self.registry.by_id(fh.strategy_id).decode_parsed(fh, body, baseline)
        for _ in frames:
            pass
        out = bytearray(header.payload_length)
        view = memoryview(out)
        digest = xxhash.xxh3_64()
        for index, fh, body in self._open(container, max_output)[1]:
            start = index * header.chunk_size
            place = view[start : start + fh.original_length]
            history = view[max(0, start - fh.context_length) : start]
            self.registry.by_id(fh.strategy_id).decode_parsed_into(fh, body, baseline, place, history)
            digest.update(place)
        if digest.intdigest() != header.payload_checksum:
            raise CorruptFrameError("payload checksum mismatch: chunks decode but do not form the original")
        return out

    def decode_to(
        self,
        container: BytesLike,
        out: BinaryIO,
        *,
        baseline: BaselineSource | None = None,
        max_output: int = 1 << 50,
    ) -> int:
        """Decode into a binary file chunk by chunk; returns the bytes written."""
        written = 0
        for chunk in self.iter_decode(container, baseline=baseline, max_output=max_output):
            out.write(chunk)
            written += len(chunk)
        return written
