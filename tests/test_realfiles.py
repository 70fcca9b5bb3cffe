"""Every encoder round-trips real files of every kind: text, ELF binaries, a database, compressed, random;
and HDE round-trips real version pairs of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwcp_selector.strategies import Baseline, PayloadCodec, default_registry

from .conftest import edited

CODEC = PayloadCodec(default_registry())


def test_every_kind_is_present(real_files: dict[str, Path]) -> None:
    kinds = {k.split(":")[0] for k in real_files}
    assert kinds == {"text", "elf", "database", "compressed", "random"}


@pytest.mark.parametrize("strategy", ["none", "lz4", "zstd"])
def test_real_files_round_trip(real_files: dict[str, Path], strategy: str) -> None:
    for name, path in real_files.items():
        data = path.read_bytes()
        assert CODEC.decode(CODEC.encode(data, strategy)) == data, name


def test_real_files_round_trip_with_hde(real_files: dict[str, Path]) -> None:
    for name, path in real_files.items():
        data = path.read_bytes()
        new = edited(data, seed=len(data) % 1000)
        for old in (data, b"", data[: len(data) // 2]):
            base = Baseline(name, old) if old else Baseline(name, b"\x00")
            encoded = CODEC.encode(new, "hde", baseline=base)
            assert CODEC.decode(encoded, baseline=base) == new, name


def test_hde_delta_of_a_real_edit_is_small(real_files: dict[str, Path]) -> None:
    path = max((p for k, p in real_files.items() if k.startswith("elf:")), key=lambda p: p.stat().st_size)
    old = path.read_bytes()
    new = edited(old, seed=1, edits=5)
    base = Baseline("binary", old)
    delta = CODEC.encode(new, "hde", baseline=base).encoded_bytes
    full = CODEC.encode(new, "zstd").encoded_bytes
    assert delta * 20 < full, (delta, full)
