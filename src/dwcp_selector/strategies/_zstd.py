"""The zstd binding: ``compression.zstd`` from the standard library (3.14+) or its backport.

Both expose the same API, including raw-content dictionaries used as a prefix (``ZstdDict.as_prefix``),
which HDE's tier 3 needs and which ``zstd --patch-from`` uses.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 14):  # pragma: no cover - exercised on 3.14 only
    from compression.zstd import (
        CompressionParameter,
        DecompressionParameter,
        Strategy,
        ZstdCompressor,
        ZstdDecompressor,
        ZstdDict,
        ZstdError,
        train_dict,
        zstd_version,
    )
else:
    from backports.zstd import (
        CompressionParameter,
        DecompressionParameter,
        Strategy,
        ZstdCompressor,
        ZstdDecompressor,
        ZstdDict,
        ZstdError,
        train_dict,
        zstd_version,
    )

__all__ = [
    "CompressionParameter",
    "DecompressionParameter",
    "Strategy",
    "ZstdCompressor",
    "ZstdDecompressor",
    "ZstdDict",
    "ZstdError",
    "train_dict",
    "zstd_version",
]
