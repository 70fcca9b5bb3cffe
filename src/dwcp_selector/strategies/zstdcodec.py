"""``zstd``: the general-purpose baseline, level 3; small payloads of a known type use a trained dictionary.

Chunks keep the context across chunk boundaries that one whole-file ``zstd -3`` call has: chunk *i* is
coded with the ``context_bytes`` (1 MiB) of the payload before it as a raw prefix, as zstd's own
multi-threaded mode lets every job see the previous job's tail. Encoding stays chunk-parallel (the whole
payload is at hand); decoding goes in chunk order, which the cost model prices
(``CostParams.ordered_decode``; ``docs/decisions/0006-context-across-chunks.md``).

Also home of the bounded zstd helpers HDE shares: compressors cached per thread (a zstd context costs
tens of microseconds to set up, as much as compressing 4 KiB) and a decompressor that streams into the
caller's output buffer and never produces more than the frame declares, with a window bounded by the
declared length (``window_log_limit``), so a lying header cannot inflate memory: decoding costs the
declared length plus at most 1/16 of it (or 8 MiB) plus one 128 KiB piece.
"""

from __future__ import annotations

import struct
import threading
from typing import TypeAlias

from .._types import BytesLike
from ..errors import ConfigError, CorruptFrameError, DictionaryError, FrameLimitError, TruncatedFrameError
from ._zstd import (
    CompressionParameter,
    DecompressionParameter,
    ZstdCompressor,
    ZstdDecompressor,
    ZstdDict,
    ZstdError,
)
from .base import Body, ChunkContext, Encoder
from .baseline import Baseline, BaselineSource
from .checksum import ChecksumAlgo
from .dictionaries import DictionaryStore
from .frame import MAX_CONTEXT_LENGTH, FrameHeader

__all__ = [
    "DEFAULT_DICT_MAX_PAYLOAD",
    "DEFAULT_ZSTD_CONTEXT",
    "DEFAULT_ZSTD_LEVEL",
    "MAX_WINDOW_LOG",
    "ZSTD_BLOCK_MAX",
    "WINDOW_LOG_FLOOR",
    "ZstdEncoder",
    "window_log_limit",
    "zstd_compress",
    "zstd_decompress_bounded",
    "zstd_decompress_into",
]

DEFAULT_ZSTD_LEVEL = 3
#: Payloads up to this size use the payload type's dictionary when the store has one.
DEFAULT_DICT_MAX_PAYLOAD = 64 * 1024
#: Largest window a decoder accepts (128 MiB): bounds decoder memory whatever a frame asks for.
MAX_WINDOW_LOG = 27
#: Window every frame may use whatever its length (8 MiB; see ``window_log_limit``).
WINDOW_LOG_FLOOR = 23
#: Payload bytes before a chunk that its coding sees (one whole-file zstd -3 call sees 2 MiB back).
DEFAULT_ZSTD_CONTEXT = 1 << 20
#: zstd refuses raw prefixes shorter than this; they could not help anyway.
MIN_PREFIX = 8
#: Level 3's own window (2 MiB) for payloads past 256 KiB; a prefix grows it to cover prefix + chunk.
_LEVEL_WINDOW_LOG = 21

_PLAIN = 0
_WITH_DICT = 1
_U32 = struct.Struct("<I")
#: Every zstd frame starts with these 4 bytes; our frames drop them and the decoder puts them back.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: What a decoder takes as a dictionary: a trained one, or a raw prefix (``ZstdDict.as_prefix``).
DictArg: TypeAlias = ZstdDict | tuple[ZstdDict, int]
#: Largest output of one zstd block (RFC 8878 3.1.1.2.4).
ZSTD_BLOCK_MAX = 128 << 10
#: Output asked of the streaming decoder per call: one block (measured no slower than one call per chunk).
_STEP = 128 << 10
#: Input handed to the streaming decoder per call.
_IN_STEP = 256 << 10


class _Compressors(threading.local):
    def __init__(self) -> None:
        self.cache: dict[tuple[int, int], ZstdCompressor] = {}


_compressors = _Compressors()


def _frame_options(level: int) -> dict[int, int]:
    # Our frame header already carries length, checksum and dictionary id: zstd need not repeat them.
    return {
        CompressionParameter.compression_level: level,
        CompressionParameter.content_size_flag: 0,
        CompressionParameter.checksum_flag: 0,
        CompressionParameter.dict_id_flag: 0,
    }


def strip_magic(zstd_frame: bytes) -> bytes:
    """A zstd frame without its constant 4-byte magic (the frame header says it is zstd already)."""
    if not zstd_frame.startswith(ZSTD_MAGIC):  # pragma: no cover - libzstd always writes it
        raise CorruptFrameError("zstd produced a frame without its magic number")
    return zstd_frame[len(ZSTD_MAGIC) :]


def zstd_compress(data: BytesLike, level: int, zstd_dict: ZstdDict | None = None, dict_key: int = 0) -> bytes:
    """One zstd frame of ``data``, magic dropped, from this thread's cached compressor."""
    key = (level, dict_key if zstd_dict is not None else -1)
    comp = _compressors.cache.get(key)
    if comp is None:
        comp = ZstdCompressor(options=_frame_options(level), zstd_dict=zstd_dict)
        _compressors.cache[key] = comp
    try:
        return strip_magic(comp.compress(data, ZstdCompressor.FLUSH_FRAME))
    except BaseException:
        _compressors.cache.pop(key, None)  # a failed context is not reused
        raise


def window_log_for(span: int, floor: int = _LEVEL_WINDOW_LOG) -> int:
    """The window log that lets matches reach back over ``span`` bytes (prefix + chunk), within bounds."""
    return max(10, min(MAX_WINDOW_LOG, max(floor, (max(span, 1) - 1).bit_length())))


def zstd_compress_with_prefix(
    data: BytesLike, prefix: BytesLike, options: dict[int, int], *, what: str = "zstd"
) -> bytes:
    """One zstd frame of ``data`` (magic dropped) coded with ``prefix`` as raw-content history.

    A prefix holds for one frame only, so every call builds its compressor (tens of microseconds).
    """
    opts = {
        CompressionParameter.content_size_flag: 0,
        CompressionParameter.checksum_flag: 0,
        CompressionParameter.dict_id_flag: 0,
        **options,
    }
    comp = ZstdCompressor(options=opts, zstd_dict=raw_prefix(prefix))
    return strip_magic(comp.compress(data, ZstdCompressor.FLUSH_FRAME))


def raw_prefix(prefix: BytesLike) -> DictArg | None:
    """``prefix`` as a zstd raw prefix, for either side (``None`` when too short to have been used).

    ``prefix`` may be any buffer (a view of a baseline, of the output being decoded): the dictionary keeps
    its own copy, so the caller may overwrite or drop it afterwards.
    """
    return ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= MIN_PREFIX else None


def window_log_limit(original_length: int) -> int:
    """The largest zstd window a frame restoring ``original_length`` bytes may use (log2).

    libzstd's streaming decoder keeps a window-sized buffer beside the output, so the window is what a
    decoder spends on top of the declared length: 8 MiB, or 1/16 of the declared length when that is
    larger, and never more than ``MAX_WINDOW_LOG``. The encoders use no larger window for such a chunk
    (a raw prefix stays reachable in full over the first window of content, so a chunk up to 8 MiB loses
    nothing), and the decoders refuse a frame that asks for more.
    """
    return max(WINDOW_LOG_FLOOR, min(MAX_WINDOW_LOG, (max(original_length, 1) // 16).bit_length() - 1))


def zstd_window_size(body: BytesLike) -> int | None:
    """The window size a magic-less zstd frame declares (``None`` when ``body`` is too short to say).

    RFC 8878 3.1.1.1: a single-segment frame's window is its content size, else the window descriptor
    byte after the frame header descriptor gives it.
    """
    view = memoryview(body)
    if len(view) < 1:
        return None
    fhd = view[0]
    if fhd & 0x20:  # single segment: window = frame content size
        fcs_size = (1, 2, 4, 8)[fhd >> 6]
        did_size = (0, 1, 2, 4)[fhd & 3]
        start = 1 + did_size
        raw = bytes(view[start : start + fcs_size])
        if len(raw) < fcs_size:
            return None
        size = int.from_bytes(raw, "little")
        return size + 256 if fcs_size == 2 else size
    if len(view) < 2:
        return None
    descriptor = view[1]
    base = 1 << (10 + (descriptor >> 3))
    return base + (base >> 3) * (descriptor & 7)


def zstd_precheck(body: BytesLike, length: int, window_log_max: int, *, what: str = "zstd") -> None:
    """Refuse, before anything is allocated, a zstd body that asks for a window above ``window_log_max``
    or is too short to restore ``length`` bytes (every zstd block restores at most 128 KiB and takes at
    least its 3-byte header: a 51-byte body cannot be a valid 1 GiB frame)."""
    window = zstd_window_size(body)
    if window is not None and window > 1 << window_log_max:
        raise FrameLimitError(
            f"{what} body asks for a {window}-byte zstd window, above the {1 << window_log_max} bytes "
            "allowed for its declared length"
        )
    if length > (len(body) // 3) * ZSTD_BLOCK_MAX:
        raise CorruptFrameError(
            f"{what} body of {len(body)} bytes cannot hold the {length} bytes it must restore"
        )


def zstd_decompress_into(
    body: BytesLike,
    out: memoryview,
    *,
    zstd_dict: DictArg | None = None,
    window_log_max: int = MAX_WINDOW_LOG,
    what: str = "zstd",
    exact: bool = True,
) -> int:
    """Decode one magic-less zstd frame into ``out``; return the bytes written (at most ``len(out)``).

    The output streams into ``out`` in 128 KiB pieces: memory beyond ``out`` is one piece and libzstd's
    window (``window_log_max`` bounds it; a frame asking for more is a :class:`FrameLimitError`). A frame
    that would produce more than ``len(out)`` bytes is refused at the first byte too many; one too short
    to possibly produce ``len(out)`` bytes is refused before anything is decoded (the caller compares the
    count returned with what it expected). ``exact=False`` makes ``len(out)`` only an upper bound.
    """
    capacity = len(out)
    zstd_precheck(body, capacity if exact else 0, window_log_max, what=what)
    src = memoryview(body)
    # The input goes in pieces too: the binding keeps a copy of whatever input it has not consumed when
    # its output limit is reached, which would otherwise be the whole body.
    data: BytesLike = b"".join((ZSTD_MAGIC, src[:_IN_STEP]))
    fed = min(len(src), _IN_STEP)
    pos = 0
    try:
        options: dict[int, int] = {DecompressionParameter.window_log_max: window_log_max}
        dec = ZstdDecompressor(zstd_dict=zstd_dict, options=options)
        while True:
            # one byte beyond the declared end, to tell "exactly full" from "would overflow"
            piece = dec.decompress(data, max_length=min(_STEP, capacity - pos + 1))
            got = len(piece)
            if got > capacity - pos:
                raise CorruptFrameError(f"{what} body decodes to more than the declared {capacity} bytes")
            out[pos : pos + got] = piece
            pos += got
            if dec.eof:
                break
            if dec.needs_input:
                if fed == len(src):
                    raise TruncatedFrameError(f"{what} body ends before the end of its zstd frame")
                data = src[fed : fed + _IN_STEP]
                fed += len(data)
            elif got:
                data = b""
            else:  # pragma: no cover - libzstd always makes progress when it has room
                raise CorruptFrameError(f"{what} body makes no progress")
    except ZstdError as exc:
        raise CorruptFrameError(f"{what} body does not decode: {exc}") from exc
    except MemoryError as exc:  # a window or table libzstd could not allocate
        raise FrameLimitError(f"{what} body needs more memory than is available: {exc}") from exc
    trailing = len(dec.unused_data) + len(src) - fed
    if trailing:
        raise CorruptFrameError(f"{what} body has {trailing} bytes after its zstd frame")
    return pos


def zstd_decompress_bounded(
    body: BytesLike,
    max_length: int,
    *,
    zstd_dict: DictArg | None = None,
    window_log_max: int = MAX_WINDOW_LOG,
    what: str = "zstd",
) -> bytes:
    """Decode one magic-less zstd frame of at most ``max_length`` bytes, or raise a frame error.

    A convenience over :func:`zstd_decompress_into` for small outputs (the decoders write into their
    output buffer directly); the result is a copy of the bytes written.
    """
    buf = bytearray(max_length)
    n = zstd_decompress_into(
        body, memoryview(buf), zstd_dict=zstd_dict, window_log_max=window_log_max, what=what, exact=False
    )
    return bytes(memoryview(buf)[:n])


class ZstdEncoder(Encoder):
    """zstd at ``level``; payloads up to ``dict_max_payload`` of a type with a dictionary use it; chunks
    after the first see ``context_bytes`` of the payload before them (0: every chunk on its own)."""

    name = "zstd"
    strategy_id = 2
    uses_context = True

    def __init__(
        self,
        *,
        level: int = DEFAULT_ZSTD_LEVEL,
        dictionaries: DictionaryStore | None = None,
        dict_max_payload: int = DEFAULT_DICT_MAX_PAYLOAD,
        context_bytes: int = DEFAULT_ZSTD_CONTEXT,
        checksum_algo: ChecksumAlgo = ChecksumAlgo.XXH3_64,
    ) -> None:
        super().__init__(checksum_algo=checksum_algo)
        if not 1 <= level <= 22:
            raise ConfigError(f"zstd level must be in 1..22, got {level}")
        if not 0 <= context_bytes <= MAX_CONTEXT_LENGTH:
            raise ConfigError(f"zstd context must be in 0..{MAX_CONTEXT_LENGTH} bytes, got {context_bytes}")
        self.level = level
        self.dictionaries = dictionaries
        self.dict_max_payload = dict_max_payload
        self.context_bytes = context_bytes

    def _encode_body(self, data: memoryview, baseline: Baseline | None, context: ChunkContext) -> Body:
        history = context.history(self.context_bytes)
        if len(history) >= MIN_PREFIX:
            options: dict[int, int] = {
                CompressionParameter.compression_level: self.level,
                CompressionParameter.window_log: min(
                    window_log_for(len(history) + len(data)), window_log_limit(len(data))
                ),
            }
            return _PLAIN, b"", zstd_compress_with_prefix(data, history, options), len(history)
        payload_length = context.payload_length if context.payload_length is not None else len(data)
        if (
            self.dictionaries is not None
            and context.payload_type is not None
            and payload_length <= self.dict_max_payload
        ):
            d = self.dictionaries.latest(context.payload_type)
            if d is not None:
                body = zstd_compress(data, self.level, d.zstd_dict, d.dict_id)
                return _WITH_DICT, _U32.pack(d.dict_id), body, 0
        return _PLAIN, b"", zstd_compress(data, self.level), 0

    def _dict_for(self, header: FrameHeader, context: memoryview) -> DictArg | None:
        """The dictionary a frame was coded with: its context as a raw prefix, a trained one, or none."""
        if header.variant == _WITH_DICT and len(context):
            raise CorruptFrameError("zstd dictionary frame claims a context as well")
        if len(context):
            if len(context) < MIN_PREFIX:
                raise CorruptFrameError("zstd frame claims a context shorter than zstd allows")
            return raw_prefix(context)
        if header.variant == _WITH_DICT:
            if len(header.ext) != 4:
                raise CorruptFrameError("zstd dictionary frame lacks its 4-byte dictionary id")
            (dict_id,) = _U32.unpack(header.ext)
            if self.dictionaries is None:
                raise DictionaryError(
                    f"frame needs zstd dictionary {dict_id:08x}, but no dictionary store is configured"
                )
            return self.dictionaries.get(dict_id).zstd_dict
        if header.variant != _PLAIN:
            raise CorruptFrameError(f"zstd frame has unknown variant {header.variant}")
        return None

    def _decode_into(
        self,
        header: FrameHeader,
        body: memoryview,
        baseline: BaselineSource | None,
        context: memoryview,
        out: memoryview,
    ) -> None:
        n = header.original_length
        zdict = self._dict_for(header, context)
        got = zstd_decompress_into(body, out, zstd_dict=zdict, window_log_max=window_log_limit(n))
        if got != n:
            raise CorruptFrameError(f"zstd body decodes to {got} bytes, header declares {n}")

    def _decode_new(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytearray:
        # the checks that need no output run before the output is allocated
        zstd_precheck(body, header.original_length, window_log_limit(header.original_length))
        return super()._decode_new(header, body, baseline, context)
