"""Encoders (none, lz4, zstd, hde), their frames, baselines, dictionaries and whole-payload chunking.

The first stage of the data flow: everything later (transport, telemetry, training, serving) moves bytes
through these encoders and nothing here imports a later stage.
"""

from __future__ import annotations

from .base import DEFAULT_MAX_OUTPUT, ChunkContext, Encoder, Registry
from .baseline import Baseline, BaselineSource, BaselineStore
from .checksum import ChecksumAlgo
from .dictionaries import DictionaryStore, ZstdDictionary, train_dictionary
from .frame import FrameHeader
from .hde import HdeEncoder, HdePlan
from .lz4codec import Lz4Encoder
from .payload import EncodedPayload, PayloadCodec
from .raw import RawEncoder
from .zstdcodec import ZstdEncoder

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "Baseline",
    "BaselineSource",
    "BaselineStore",
    "ChecksumAlgo",
    "ChunkContext",
    "DictionaryStore",
    "EncodedPayload",
    "Encoder",
    "FrameHeader",
    "HdeEncoder",
    "HdePlan",
    "Lz4Encoder",
    "PayloadCodec",
    "RawEncoder",
    "Registry",
    "ZstdDictionary",
    "ZstdEncoder",
    "default_registry",
    "train_dictionary",
]


def default_registry(
    *,
    dictionaries: DictionaryStore | None = None,
    checksum: ChecksumAlgo | str = ChecksumAlgo.XXH3_64,
    zstd_level: int = 3,
) -> Registry:
    """The four strategies of DESIGN section 1, in the cost model's order (none, lz4, zstd, hde)."""
    algo = checksum if isinstance(checksum, ChecksumAlgo) else ChecksumAlgo.parse(checksum)
    return Registry(
        [
            RawEncoder(checksum_algo=algo),
            Lz4Encoder(checksum_algo=algo),
            ZstdEncoder(level=zstd_level, dictionaries=dictionaries, checksum_algo=algo),
            HdeEncoder(checksum_algo=algo),
        ]
    )
