"""zstd dictionaries: trained per payload type, versioned artifacts the decoder must hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dwcp_selector.errors import ConfigError, DictionaryError
from dwcp_selector.strategies import DictionaryStore, PayloadCodec, ZstdEncoder, default_registry
from dwcp_selector.workload import logs_json


def _samples(n: int = 200, size: int = 2048) -> list[bytes]:
    rng = np.random.default_rng(1)
    return [logs_json(size, rng) for _ in range(n)]


def test_dictionary_shrinks_small_payloads_and_round_trips(tmp_path: Path) -> None:
    store = DictionaryStore(tmp_path)
    d = store.train("logs_json", _samples())
    assert (tmp_path / f"{d.stem}.zdict").exists() and (tmp_path / f"{d.stem}.json").exists()
    enc = ZstdEncoder(dictionaries=store)
    small = logs_json(1500, np.random.default_rng(99))
    with_dict = enc.encode(small, context=None)  # no payload type: no dictionary
    from dwcp_selector.strategies.base import ChunkContext

    typed = enc.encode(small, context=ChunkContext(payload_length=len(small), payload_type="logs_json"))
    assert len(typed) < 0.8 * len(with_dict)
    assert enc.decode(typed) == small
    # a fresh store reading the same directory decodes it too
    assert ZstdEncoder(dictionaries=DictionaryStore(tmp_path)).decode(typed) == small


def test_payload_codec_uses_the_dictionary_for_its_type(tmp_path: Path) -> None:
    store = DictionaryStore(tmp_path)
    store.train("logs_json", _samples())
    codec = PayloadCodec(default_registry(dictionaries=store))
    small = logs_json(3000, np.random.default_rng(5))
    plain = codec.encode(small, "zstd").encoded_bytes
    typed = codec.encode(small, "zstd", payload_type="logs_json")
    assert typed.encoded_bytes < plain
    assert codec.decode(typed) == small
    big = logs_json(200_000, np.random.default_rng(5))  # above the small-payload bound: no dictionary
    assert codec.encode(big, "zstd", payload_type="logs_json").frames[0][6] >> 4 == 0


def test_missing_dictionary_is_a_typed_error(tmp_path: Path) -> None:
    store = DictionaryStore(tmp_path / "a")
    store.train("logs_json", _samples())
    enc = ZstdEncoder(dictionaries=store)
    from dwcp_selector.strategies.base import ChunkContext

    small = logs_json(1000, np.random.default_rng(3))
    frame = enc.encode(small, context=ChunkContext(payload_length=len(small), payload_type="logs_json"))
    with pytest.raises(DictionaryError, match="not in"):
        ZstdEncoder(dictionaries=DictionaryStore(tmp_path / "empty")).decode(frame)
    with pytest.raises(DictionaryError, match="no dictionary store"):
        ZstdEncoder().decode(frame)


def test_tampered_artifacts_are_refused(tmp_path: Path) -> None:
    d = DictionaryStore(tmp_path).train("db_page", _samples())
    content = tmp_path / f"{d.stem}.zdict"
    raw = bytearray(content.read_bytes())
    raw[100] ^= 0xFF
    content.write_bytes(bytes(raw))
    with pytest.raises(DictionaryError, match="sha256"):
        DictionaryStore(tmp_path)
    content.write_bytes(d.content)
    manifest = tmp_path / f"{d.stem}.json"
    doc = json.loads(manifest.read_text())
    doc["dict_id"] += 1
    manifest.write_text(json.dumps(doc))
    with pytest.raises(DictionaryError, match="manifest says"):
        DictionaryStore(tmp_path)
    manifest.write_text("{not json")
    with pytest.raises(DictionaryError, match="cannot read"):
        DictionaryStore(tmp_path)


def test_latest_version_wins_and_old_versions_still_decode(tmp_path: Path) -> None:
    store = DictionaryStore(tmp_path)
    d1 = store.train("logs_json", _samples(100, 1024), size=4096)
    from dwcp_selector.strategies.base import ChunkContext

    enc = ZstdEncoder(dictionaries=store)
    small = logs_json(900, np.random.default_rng(8))
    ctx = ChunkContext(payload_length=len(small), payload_type="logs_json")
    f1 = enc.encode(small, context=ctx)
    d2 = store.train("logs_json", _samples(300, 3000), size=8192)
    assert d1.dict_id != d2.dict_id and store.latest("logs_json") == d2
    reloaded = ZstdEncoder(dictionaries=DictionaryStore(tmp_path))
    assert reloaded.decode(f1) == small
    assert reloaded.dictionaries is not None and reloaded.dictionaries.latest("logs_json") == d2


def test_training_needs_samples() -> None:
    with pytest.raises(ConfigError):
        DictionaryStore().train("x", [b"a"] * 3)
    with pytest.raises(ConfigError):
        DictionaryStore().train("../evil", _samples())
