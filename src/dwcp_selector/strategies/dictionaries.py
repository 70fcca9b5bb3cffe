"""Trained zstd dictionaries per payload type: versioned artifacts both ends must hold.

Small payloads (a log batch, a database page, a JSON document) compress poorly on their own: there is not
enough history for zstd to find matches. A dictionary trained with zstd's own trainer on samples of the
same type gives it that history. A dictionary is identified by the 32-bit id zstd's trainer writes into
it; a zstd frame coded with a dictionary names that id, and the decoder must hold the same dictionary.

On disk a store is a directory of pairs ``<type>-<id>.zdict`` (the dictionary bytes) and
``<type>-<id>.json`` (its manifest: type, id, size, sha256, sample count, zstd and library version).
Loading verifies the sha256 and the id inside the bytes; a damaged or mismatched artifact is refused.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._types import BytesLike
from .._version import __version__
from ..errors import ConfigError, DictionaryError
from ._zstd import ZstdDict, ZstdError, train_dict, zstd_version

__all__ = [
    "DEFAULT_DICT_SIZE",
    "DictionaryStore",
    "ZstdDictionary",
    "train_dictionary",
]

DEFAULT_DICT_SIZE = 16 * 1024
MANIFEST_SCHEMA = "dwcp-zstd-dictionary/1"
_ZDICT_MAGIC = 0xEC30A437


@dataclass(frozen=True)
class ZstdDictionary:
    """One trained dictionary for one payload type."""

    payload_type: str
    dict_id: int
    content: bytes
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)
    zstd_dict: ZstdDict = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zstd_dict", ZstdDict(self.content))

    @property
    def stem(self) -> str:
        return f"{self.payload_type}-{self.dict_id:08x}"


def _dict_id_of(content: bytes) -> int:
    if len(content) < 8:
        raise DictionaryError("dictionary is shorter than a zstd dictionary header")
    magic, dict_id = struct.unpack_from("<II", content)
    if magic != _ZDICT_MAGIC:
        raise DictionaryError("bytes are not a zstd dictionary (bad magic)")
    return int(dict_id)


def train_dictionary(
    payload_type: str, samples: Iterable[BytesLike], size: int = DEFAULT_DICT_SIZE
) -> ZstdDictionary:
    """Train a dictionary for ``payload_type`` from sample payloads with zstd's trainer."""
    if not payload_type or "/" in payload_type or payload_type.startswith("."):
        raise ConfigError(f"payload type must be a plain name, got {payload_type!r}")
    sample_list = [bytes(s) for s in samples if len(s)]
    if len(sample_list) < 8:
        raise ConfigError(f"dictionary training needs at least 8 non-empty samples, got {len(sample_list)}")
    try:
        trained = train_dict(sample_list, size)
    except ZstdError as exc:
        raise DictionaryError(f"zstd could not train a dictionary for {payload_type!r}: {exc}") from exc
    content = bytes(trained.dict_content)
    dict_id = _dict_id_of(content)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "payload_type": payload_type,
        "dict_id": dict_id,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "samples": len(sample_list),
        "sample_bytes": sum(len(s) for s in sample_list),
        "trained_at": time.time(),
        "zstd_version": zstd_version,
        "library_version": __version__,
    }
    return ZstdDictionary(payload_type, dict_id, content, manifest)


class DictionaryStore:
    """Dictionaries by id and by payload type; backed by a directory when one is given.

    Thread-safe. The encoder asks :meth:`latest` for a payload type; the decoder asks :meth:`get` for the
    id a frame names.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._by_id: dict[int, ZstdDictionary] = {}
        self._latest: dict[str, ZstdDictionary] = {}
        if self.directory is not None and self.directory.exists():
            self.reload()

    def __len__(self) -> int:
        return len(self._by_id)

    def types(self) -> list[str]:
        return sorted(self._latest)

    def reload(self) -> None:
        """(Re)read every artifact of the directory, verifying each."""
        if self.directory is None:
            return
        if not self.directory.is_dir():
            raise DictionaryError(f"dictionary directory {self.directory} does not exist")
        loaded = [self._load(p) for p in sorted(self.directory.glob("*.json"))]
        loaded.sort(key=lambda d: float(d.manifest.get("trained_at", 0.0)))
        with self._lock:
            self._by_id.clear()
            self._latest.clear()
            for d in loaded:
                self._index(d)

    def _load(self, manifest_path: Path) -> ZstdDictionary:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DictionaryError(f"cannot read dictionary manifest {manifest_path.name}: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
            raise DictionaryError(f"{manifest_path.name} is not a {MANIFEST_SCHEMA} manifest")
        content_path = manifest_path.with_suffix(".zdict")
        try:
            content = content_path.read_bytes()
        except OSError as exc:
            raise DictionaryError(f"dictionary file {content_path.name} is missing: {exc}") from exc
        if hashlib.sha256(content).hexdigest() != manifest.get("sha256"):
            raise DictionaryError(f"dictionary {content_path.name} does not match its manifest's sha256")
        dict_id = _dict_id_of(content)
        if dict_id != manifest.get("dict_id"):
            raise DictionaryError(
                f"dictionary {content_path.name} has id {dict_id}, "
                f"its manifest says {manifest.get('dict_id')}"
            )
        return ZstdDictionary(str(manifest["payload_type"]), dict_id, content, manifest)

    def _index(self, d: ZstdDictionary) -> None:
        other = self._by_id.get(d.dict_id)
        if other is not None and other.content != d.content:
            raise DictionaryError(
                f"two different dictionaries share id {d.dict_id:08x} "
                f"({other.payload_type}, {d.payload_type})"
            )
        self._by_id[d.dict_id] = d
        self._latest[d.payload_type] = d

    def add(self, d: ZstdDictionary) -> ZstdDictionary:
        """Register ``d`` as the latest dictionary of its type, saving it when the store has a directory."""
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / f"{d.stem}.zdict").write_bytes(d.content)
            (self.directory / f"{d.stem}.json").write_text(json.dumps(d.manifest, indent=2, sort_keys=True))
        with self._lock:
            self._index(d)
        return d

    def train(
        self, payload_type: str, samples: Sequence[BytesLike], size: int = DEFAULT_DICT_SIZE
    ) -> ZstdDictionary:
        """Train, register and (with a directory) save a new dictionary version for ``payload_type``."""
        return self.add(train_dictionary(payload_type, samples, size))

    def latest(self, payload_type: str) -> ZstdDictionary | None:
        with self._lock:
            return self._latest.get(payload_type)

    def get(self, dict_id: int) -> ZstdDictionary:
        with self._lock:
            d = self._by_id.get(dict_id)
        if d is None:
            where = f"in {self.directory}" if self.directory is not None else "in the store"
            raise DictionaryError(
                f"frame needs zstd dictionary {dict_id:08x}, which is not {where}; copy the dictionary "
                "artifact the sender used"
            )
        return d
