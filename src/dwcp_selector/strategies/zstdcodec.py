"""``zstd``: the general-purpose baseline, level 3; small payloads of a known type use a trained dictionary.

Chunks keep the context across chunk boundaries that one whole-file ``zstd -3`` call has: chunk *i* is
coded with the ``context_bytes`` (1 MiB) of the payload before it as a raw prefix, as zstd's own
multi-threaded mode lets every job see the previous job's tail. Encoding stays chunk-parallel (the whole
payload is at hand); decoding goes in chunk order, which the cost model prices
(``CostParams.ordered_decode``; ``docs/decisions/0006-context-across-chunks.md``).

Also home of the bounded zstd helpers HDE shares: compressors cached per thread (a zstd context costs
tens of microseconds to set up, as much as compressing 4 KiB) and a decompressor that never produces more
than the frame declares, so a lying header cannot inflate memory.
"""

from __future__ import annotations

import struct
import threading

from .._types import BytesLike
from ..errors import ConfigError, CorruptFrameError, DictionaryError, TruncatedFrameError
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
    "ZstdEncoder",
    "zstd_compress",
    "zstd_decompress_bounded",
]

DEFAULT_ZSTD_LEVEL = 3
#: Payloads up to this size use the payload type's dictionary when the store has one.
DEFAULT_DICT_MAX_PAYLOAD = 64 * 1024
#: Largest window a decoder accepts (128 MiB): bounds decoder memory whatever a frame asks for.
MAX_WINDOW_LOG = 27
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
    zd = ZstdDict(bytes(prefix), is_raw=True).as_prefix if len(prefix) >= MIN_PREFIX else None
    comp = ZstdCompressor(options=opts, zstd_dict=zd)
    return strip_magic(comp.compress(data, ZstdCompressor.FLUSH_FRAME))


def raw_prefix(prefix: BytesLike) -> object | None:
    """The decoder-side raw prefix for ``prefix`` (``None`` when it is too short to have been used)."""
    return ZstdDict(bytes(prefix), is_raw=True).as_prefix if len(prefix) >= MIN_PREFIX else None


def zstd_decompress_bounded(
    body: BytesLike,
    max_length: int,
    *,
    zstd_dict: ZstdDict | object | None = None,
    window_log_max: int = MAX_WINDOW_LOG,
    what: str = "zstd",
) -> bytes:
    """Decode one magic-less zstd frame of at most ``max_length`` bytes, or raise a frame error.

    The decompressor is asked for at most ``max_length`` bytes (plus one to detect excess), so a frame
    that would inflate beyond what its header declares is refused without allocating the excess.
    """
    options = {DecompressionParameter.window_log_max: window_log_max}
    try:
        dec = ZstdDecompressor(zstd_dict=zstd_dict, options=options)  # type: ignore[arg-type]
        out = dec.decompress(ZSTD_MAGIC, max_length=0)
        out += dec.decompress(body, max_length=max_length + 1)
        if not dec.eof and len(out) <= max_length and not dec.needs_input:
            # Output buffer exactly full before the end-of-frame marker was consumed: one more step.
            out += dec.decompress(b"", max_length=1)
    except ZstdError as exc:
        raise CorruptFrameError(f"{what} body does not decode: {exc}") from exc
    if len(out) > max_length:
        raise CorruptFrameError(f"{what} body decodes to more than the declared {max_length} bytes")
    if not dec.eof:
        raise TruncatedFrameError(f"{what} body ends before the end of its zstd frame")
    if dec.unused_data:
        raise CorruptFrameError(f"{what} body has {len(dec.unused_data)} bytes after its zstd frame")
    return out


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
                CompressionParameter.window_log: window_log_for(len(history) + len(data)),
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

    def _decode_body(
        self, header: FrameHeader, body: memoryview, baseline: BaselineSource | None, context: memoryview
    ) -> bytes:
        zdict: ZstdDict | object | None = None
        if header.variant == _WITH_DICT and len(context):
            raise CorruptFrameError("zstd dictionary frame claims a context as well")
        if len(context):
            if len(context) < MIN_PREFIX:
                raise CorruptFrameError("zstd frame claims a context shorter than zstd allows")
            zdict = raw_prefix(context)
        elif header.variant == _WITH_DICT:
            if len(header.ext) != 4:
                raise CorruptFrameError("zstd dictionary frame lacks its 4-byte dictionary id")
            (dict_id,) = _U32.unpack(header.ext)
            if self.dictionaries is None:
                raise DictionaryError(
                    f"frame needs zstd dictionary {dict_id:08x}, but no dictionary store is configured"
                )
            zdict = self.dictionaries.get(dict_id).zstd_dict
        elif header.variant != _PLAIN:
            raise CorruptFrameError(f"zstd frame has unknown variant {header.variant}")
        return zstd_decompress_bounded(body, header.original_length, zstd_dict=zdict)
