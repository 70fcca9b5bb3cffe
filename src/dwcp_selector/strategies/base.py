"""The encoder interface every strategy implements, and the registry that names them.

An :class:`Encoder` turns bytes into one self-describing frame (``frame.py``) and back. Subclasses write
only the body: :meth:`Encoder._encode_body` and :meth:`Encoder._decode_into` (plus, optionally, a faster
:meth:`Encoder._decode_new`). Framing, checksums, the declared-length bound, the context a frame depends
on and the output checks live here once, so every strategy is held to the same contract by the
conformance suite (``tests/test_conformance.py``).

Decoding writes the declared number of bytes once, into one buffer: a fresh ``bytearray``
(:meth:`Encoder.decode_parsed`) or the caller's (:meth:`Encoder.decode_parsed_into`, where a payload or
a transfer is assembled), so a decoder's memory is the declared length plus a bounded working set (a
zstd window of at most ``window_log_limit``, a prefix of at most one HDE segment), never a second copy
of the output (``tests/test_limits.py`` measures it).

A strategy whose chunks see the payload's preceding bytes (``uses_context``) encodes chunks in parallel
(the whole payload is at hand) but decodes them in order: each frame names how many preceding bytes it
needs, and :meth:`Encoder.decode_parsed` refuses to decode it without them.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from .._types import BytesLike
from ..errors import ContextMissingError, CorruptFrameError, StrategyError, UnsupportedFrameError
from .baseline import Baseline, BaselineSource
from .checksum import ChecksumAlgo, checksum
from .frame import FrameHeader, pack_frame, parse_frame, parse_header

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "Body",
    "ChunkContext",
    "Encoder",
    "Registry",
]

#: Largest original size a decoder accepts from a single frame unless told otherwise (1 GiB).
DEFAULT_MAX_OUTPUT = 1 << 30


@dataclass(frozen=True, slots=True)
class ChunkContext:
    """Where the bytes being encoded sit in the whole payload, and what the encoder planned for it.

    ``plan`` is what :meth:`Encoder.plan` returned for the whole payload (HDE's tier choice); encoders
    that need no plan ignore it. ``payload`` is the whole payload, so that an encoder with context can
    use the bytes before ``offset``; without it a chunk is coded on its own. A context of ``None`` means
    "these bytes are the whole payload".
    """

    offset: int = 0
    payload_length: int | None = None
    payload_type: str | None = None
    plan: object | None = None
    payload: memoryview | None = None

    def history(self, limit: int) -> memoryview:
        """Up to ``limit`` payload bytes immediately before this chunk (empty without ``payload``)."""
        if self.payload is None or limit <= 0 or self.offset <= 0:
            return memoryview(b"")
        return self.payload[max(0, self.offset - limit) : self.offset]


#: What an encoder's body step returns: (variant, extension, body, context length used).
Body = tuple[int, bytes, BytesLike, int]


def as_view(data: BytesLike) -> memoryview:
    """A flat byte view of ``data`` without copying."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class Encoder(abc.ABC):
    """One strategy: ``name``, ``offered``, ``encode`` and ``decode``.

    Encoders are stateless apart from configuration and caches, and safe to share between threads.
    """

    name: ClassVar[str]
    strategy_id: ClassVar[int]
    needs_baseline: ClassVar[bool] = False
    #: Whether chunks may depend on the payload bytes before them (then they decode in order).
    uses_context: ClassVar[bool] = False

    def __init__(self, *, checksum_algo: ChecksumAlgo = ChecksumAlgo.XXH3_64) -> None:
        self.checksum_algo = checksum_algo

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def offered(self, payload_length: int, *, has_baseline: bool) -> bool:
        """Whether this strategy may be chosen for such a payload (HDE needs a baseline)."""
        return has_baseline or not self.needs_baseline

    def plan(self, payload: BytesLike, baseline: Baseline | None) -> object | None:
        """A per-payload choice made once before the chunks are encoded (HDE picks its tier here)."""
        return None

    def encode(
        self,
        data: BytesLike,
        *,
        baseline: Baseline | None = None,
        context: ChunkContext | None = None,
    ) -> bytes:
        """Encode ``data`` into one frame."""
        view = as_view(data)
        if self.needs_baseline and baseline is None:
            raise StrategyError(f"strategy {self.name!r} is not offered without a baseline")
        if context is None:
            context = ChunkContext(payload_length=len(view))
        csum = checksum(self.checksum_algo, view)
        variant, ext, body, context_length = self._encode_body(view, baseline, context)
        return pack_frame(
            self.strategy_id, variant, self.checksum_algo, len(view), csum, ext, body, context_length
        )

    def decode(
        self,
        frame: BytesLike,
        *,
        baseline: BaselineSource | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        history: BytesLike | None = None,
    ) -> bytearray:
        """Decode one frame of this strategy, verifying its length and checksum.

        ``history`` holds the payload bytes before this chunk (at least as many as the frame's context
        length; only the last ones are used).
        """
        header, body = parse_frame(frame, max_original_length=max_output)
        if header.strategy_id != self.strategy_id:
            raise UnsupportedFrameError(
                f"frame has strategy id {header.strategy_id}; the {self.name!r} decoder cannot read it"
            )
        return self.decode_parsed(header, body, baseline, history)

    def decode_parsed(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        history: BytesLike | None = None,
    ) -> bytearray:
        """Decode an already parsed frame (the registry and the transport parse once) into a new buffer."""
        context = self._context(header, history)
        out = self._decode_new(header, body, baseline, context)
        if len(out) != header.original_length:
            raise CorruptFrameError(
                f"{self.name} frame decoded to {len(out)} bytes, header declares {header.original_length}"
            )
        self._verify(header, out)
        return out

    def decode_parsed_into(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        out: memoryview | bytearray,
        history: BytesLike | None = None,
    ) -> None:
        """Decode an already parsed frame into ``out``, which holds exactly its declared length.

        ``out`` is where the bytes belong (a chunk's place in the payload being assembled), so nothing is
        copied after decoding; ``history`` may be a view of the bytes just before it. If this raises,
        ``out`` holds bytes that must not be used.
        """
        view = out if isinstance(out, memoryview) else memoryview(out)
        if view.readonly or view.format != "B" or view.ndim != 1:
            raise TypeError("decode_parsed_into needs a writable flat byte buffer")
        if len(view) != header.original_length:
            raise CorruptFrameError(
                f"{self.name} frame declares {header.original_length} bytes, its place holds {len(view)}"
            )
        context = self._context(header, history)
        self._decode_into(header, body, baseline, context, view)
        self._verify(header, view)

    def _context(self, header: FrameHeader, history: BytesLike | None) -> memoryview:
        """Exactly the frame's context length of payload bytes before the chunk, or the refusal."""
        need = header.context_length
        if need and not self.uses_context:
            raise CorruptFrameError(f"{self.name} frame claims a context, which {self.name} never uses")
        if not need:
            return memoryview(b"")
        have = 0 if history is None else len(history)
        if have < need:
            raise ContextMissingError(
                f"{self.name} frame depends on the {need} payload bytes before it, {have} were supplied: "
                "decode the chunks of a payload in order"
            )
        assert history is not None
        return as_view(history)[have - need :]

    def _verify(self, header: FrameHeader, out: BytesLike) -> None:
        if checksum(header.checksum_algo, out) != header.checksum:
            raise CorruptFrameError(
                f"{self.name} frame checksum mismatch: the decoded bytes are not the original"
            )

    @abc.abstractmethod
    def _encode_body(self, data: memoryview, baseline: Baseline | None, context: ChunkContext) -> Body:
        """Return (variant, extension, body, context length) for ``data``."""

    @abc.abstractmethod
    def _decode_into(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        context: memoryview,
        out: memoryview,
    ) -> None:
        """Write the original bytes into ``out`` (exactly ``header.original_length`` bytes, every one of
        them: ``out`` may hold anything before), or raise a typed error; ``context`` is exactly the frame's
        context length of preceding payload bytes. The caller checks the checksum."""

    def _decode_new(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytearray:
        """The original bytes in a new buffer that :meth:`_decode_into` fills; codecs whose library
        allocates the output itself, or that check a frame before allocating, override this."""
        out = bytearray(header.original_length)
        self._decode_into(header, body, baseline, context, memoryview(out))
        return out


class Registry:
    """Encoders by name and by strategy id, in the cost model's fixed order.

    >>> from dwcp_selector.strategies import default_registry
    >>> default_registry().names()
    ['none', 'lz4', 'zstd', 'hde']
    """

    def __init__(self, encoders: Iterable[Encoder]) -> None:
        self._by_name: dict[str, Encoder] = {}
        self._by_id: dict[int, Encoder] = {}
        for enc in encoders:
            if enc.name in self._by_name or enc.strategy_id in self._by_id:
                raise StrategyError(f"strategy {enc.name!r} (id {enc.strategy_id}) registered twice")
            self._by_name[enc.name] = enc
            self._by_id[enc.strategy_id] = enc

    def __iter__(self) -> Iterator[Encoder]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Encoder:
        try:
            return self._by_name[name]
        except KeyError:
            raise StrategyError(
                f"unknown strategy {name!r}; expected one of {', '.join(self._by_name)}"
            ) from None

    def by_id(self, strategy_id: int) -> Encoder:
        try:
            return self._by_id[strategy_id]
        except KeyError:
            raise UnsupportedFrameError(f"frame has unknown strategy id {strategy_id}") from None

    def offered(self, payload_length: int, *, has_baseline: bool) -> list[str]:
        """Names of the strategies offered for such a payload, in order."""
        return [e.name for e in self if e.offered(payload_length, has_baseline=has_baseline)]

    def decode(
        self,
        frame: BytesLike,
        *,
        baseline: BaselineSource | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        history: BytesLike | None = None,
    ) -> bytearray:
        """Decode a frame of any registered strategy."""
        header, body = parse_frame(frame, max_original_length=max_output)
        return self.by_id(header.strategy_id).decode_parsed(header, body, baseline, history)

    def parse(
        self, frame: BytesLike, *, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> tuple[FrameHeader, memoryview]:
        """Header and body view of a frame that fills ``frame`` exactly."""
        return parse_frame(frame, max_original_length=max_output)

    def peek(self, frame: BytesLike, *, max_output: int = DEFAULT_MAX_OUTPUT) -> FrameHeader:
        """The header of a frame, without decoding its body."""
        return parse_header(frame, max_original_length=max_output)
