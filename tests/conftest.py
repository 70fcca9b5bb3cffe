"""Shared fixtures: hypothesis profiles, real files of every kind, and payload helpers.

Hypothesis profiles (``--hypothesis-profile``): ``default`` for local runs and CI, ``fuzz`` for long
opt-in fuzzing of the codecs (``HYPOTHESIS_PROFILE=fuzz make test``).
"""

from __future__ import annotations

import gzip
import inspect
import io
import json
import os
import sqlite3
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from dwcp_selector.transport import Insecure, InsecureTransportWarning

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _elf_files() -> list[Path]:
    """Real ELF binaries every machine running the tests has: the interpreter and compiled extensions."""
    import lz4.block

    candidates = [Path(os.path.realpath(sys.executable)), Path(inspect.getfile(lz4.block._block))]
    candidates += sorted(Path(np.__file__).parent.glob("_core/_multiarray_umath*.so"))[:1]
    return [p for p in candidates if p.exists() and p.read_bytes()[:4] == b"\x7fELF"]


def _text_files() -> list[Path]:
    import asyncio
    import email
    import json as json_mod

    return [Path(inspect.getfile(m)) for m in (json_mod, email, asyncio)] + [
        Path(inspect.getfile(inspect)),
    ]


@pytest.fixture(scope="session")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files of every kind: text source, ELF binaries, a SQLite database, compressed data, random."""
    root = tmp_path_factory.mktemp("real")
    files: dict[str, Path] = {}
    for i, p in enumerate(_text_files()):
        files[f"text:{p.name}:{i}"] = p
    for i, p in enumerate(_elf_files()):
        files[f"elf:{p.name}:{i}"] = p
    db = root / "inventory.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table items (id integer primary key, name text, qty integer, price real, note text)")
    rng = np.random.default_rng(7)
    con.executemany(
        "insert into items (name, qty, price, note) values (?, ?, ?, ?)",
        [
            (f"item-{i}", int(rng.integers(0, 1000)), float(rng.random() * 100), f"batch {i // 100} ok")
            for i in range(20000)
        ],
    )
    con.commit()
    con.close()
    files["database:inventory.sqlite"] = db
    source = b"".join(p.read_bytes() for p in _text_files())
    gz = root / "sources.gz"
    gz.write_bytes(gzip.compress(source))
    files["compressed:sources.gz"] = gz
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i, p in enumerate(_text_files()):
            z.write(p, f"{i}-{p.name}")
    zp = root / "sources.zip"
    zp.write_bytes(buf.getvalue())
    files["compressed:sources.zip"] = zp
    rnd = root / "random.bin"
    rnd.write_bytes(np.random.default_rng(3).integers(0, 256, 3 * 1024 * 1024 + 17, dtype=np.uint8).tobytes())
    files["random:random.bin"] = rnd
    js = root / "logs.json"
    js.write_text(json.dumps([{"i": i, "msg": "ok" * (i % 7)} for i in range(30000)]))
    files["text:logs.json"] = js
    return files


def edited(data: bytes, seed: int = 0, edits: int = 20) -> bytes:
    """A new version of ``data``: small in-place edits, one insertion and one deletion (shifts)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for _ in range(edits):
        if not out:
            break
        at = int(rng.integers(0, len(out)))
        n = int(rng.integers(1, 32))
        out[at : at + n] = rng.integers(0, 256, size=len(out[at : at + n]), dtype=np.uint8).tobytes()
    if out:
        at = int(rng.integers(0, len(out)))
        out[at:at] = b"inserted line\n" * int(rng.integers(1, 20))
        at = int(rng.integers(0, len(out)))
        del out[at : at + int(rng.integers(1, 200))]
    return bytes(out)


# -- services ---------------------------------------------------------------------------------------
def _pg_dsn() -> str:
    return os.environ.get("DWCP_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _service_missing(name: str, exc: BaseException) -> None:
    """In CI a service that does not answer fails the test; elsewhere the test is skipped, saying why."""
    message = f"{name} is not reachable ({exc}); start it or set its URL"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL store URL in a schema of its own, dropped afterwards."""
    import uuid

    import psycopg

    dsn = _pg_dsn()
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        _service_missing("PostgreSQL", exc)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in dsn else "?"
    url = f"{dsn}{sep}schema={schema}"
    yield url
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def full_record(i: int, ts: Any, **changes: Any) -> dict[str, Any]:
    """A complete, valid telemetry record (the kind staging writes), with ``changes`` applied."""
    from dwcp_selector.telemetry.schema import COLUMNS, Kind

    sample = {Kind.TEXT: "x", Kind.INT: 7, Kind.REAL: 0.25, Kind.BOOL: True, Kind.TIME: ts}
    rec: dict[str, Any] = {c.name: sample[c.kind] for c in COLUMNS}
    rec.update(
        request_id=f"req-{i:08d}",
        source="staging",
        session_id=f"s-{i // 10}",
        payload_group_id=f"s-{i // 10}/v{i % 10}",
        f_link_type="wan",
        oracle_label="zstd",
        f_entropy=5.5,
        f_payload_bytes=4096 + i,
    )
    rec.update(changes)
    return rec


def insecure() -> Insecure:
    """The explicit no-authentication setting, for tests that speak the raw protocol; it must warn."""
    with pytest.warns(InsecureTransportWarning):
        return Insecure()
