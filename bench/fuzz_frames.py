"""Mutation fuzzing of every decoder: valid frames and containers, mutated, must never decode to wrong bytes.

A corpus of valid frames and containers of every strategy (none; lz4 single-block, stored and segmented;
zstd plain, with a chunk's context and with a trained dictionary; hde's pages and region tiers, segmented
and not, with a shorter baseline, an unchanged payload and a chunk's context; xxh3 and crc32c checksums)
is built from real bytes (this interpreter's standard-library sources as a tarball, a compiled extension)
and generated ones (logs, guest memory, database pages, compressed media, random, zeros), from empty to a
few MiB. Each of ``--count`` mutations of a corpus entry (bit flips, byte sets, truncation, extension,
insertions and deletions, splices between entries, varint and header field rewrites with declared
lengths up to ``--max-output``, chunks duplicated, removed, swapped or replaced in containers, several of
these at once, random bytes) is decoded with that limit through ``Registry.decode``,
``PayloadCodec.decode`` or ``PayloadCodec.iter_decode`` and classified:

* **identical**: decoded to the original of the entry (or splice partner) it came from: the mutation was
  a no-op, or hit a byte no decoder reads (an over-long varint, zstd's unused header bit);
* **typed**: refused with a ``DwcpError`` (what almost every mutation must get);
* **untyped**: any other exception: a bug;
* **wrong**: decoded to other bytes, which do not even verify against the mutated input's own checksum:
  a bug (a decoder returned bytes it did not check);
* **forged**: decoded to other bytes that verify against the input's own checksum(s): a checksum
  collision or a mutation that made another valid frame; reported, never expected.

Mutation ``i`` depends on the seed and ``i`` alone: ``--replay i`` (same ``--seed``, ``--max-output`` and
corpus) shows it again with its traceback. Every decode is timed (the slowest are listed; one slower than
0.1 s is timed again, and counts above ``--time-cap`` only if it is slow twice: a stalled machine is not
a slow decoder). Memory is measured twice over: every worker's peak RSS (``VmHWM`` across the run, above
its RSS once the corpus is built) against 1.1x ``--max-output`` plus a slack, and every decode's own peak
growth (the mark reset just before it) against 1.1x the length its input declares plus the slack, the
contract of ``tests/test_limits.py``. The difference between the two is memory the allocator keeps after
earlier decodes ("max start+" in the table). Warnings are errors in the workers, as in the tests.

    python bench/fuzz_frames.py [--count 250000] [--seed 1] [--max-output 64MiB] [--workers 2]

Prints a table and writes ``bench/results/fuzz_frames.json``.
"""

from __future__ import annotations

import argparse
import heapq
import inspect
import multiprocessing
import os
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from _common import machine, stdlib_tar, write
from dwcp_selector._types import BytesLike
from dwcp_selector.errors import DwcpError
from dwcp_selector.strategies import (
    Baseline,
    BaselineSource,
    BaselineStore,
    ChunkContext,
    DictionaryStore,
    PayloadCodec,
    Registry,
    default_registry,
    train_dictionary,
)
from dwcp_selector.strategies.checksum import checksum
from dwcp_selector.strategies.frame import MAGIC, MAX_CONTEXT_LENGTH, parse_header, varint
from dwcp_selector.strategies.payload import CONTAINER_MAGIC, MAX_CHUNK_SIZE, parse_container_header
from dwcp_selector.workload.payloads import (
    ContentPools,
    compressed_media,
    database_pages,
    database_update,
    dirty_round,
    edit_version,
    logs_json,
    random_bytes,
    vm_memory,
)

KiB = 1 << 10
MiB = 1 << 20
DEFAULT_COUNT = 250_000
DEFAULT_MAX_OUTPUT = 64 * MiB
#: A decode slower than this is counted (and the slowest are listed whatever their time).
DEFAULT_TIME_CAP = 1.0
#: What a worker may hold beyond 1.1x the limit, as in tests/test_limits.py (interpreter noise, a zstd
#: window's last pieces, a segment's prefix), plus the mutated input and a copy of the largest entry.
RSS_SLACK = 30_000_000
OUTCOMES = ("identical", "typed", "untyped", "wrong", "forged")
BUGS = ("untyped", "wrong")
_KEEP_EXAMPLES = 20
_KEEP_SLOWEST = 12


# -- the corpus -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Field:
    """One field of an entry, by name (``chunk.`` prefixed inside a container), as a byte range."""

    name: str
    start: int
    end: int
    is_varint: bool


@dataclass
class Entry:
    """One valid frame or container and what it decodes to (with the baseline and history it needs)."""

    name: str
    strategy: str
    kind: str  # "frame" or "container"
    blob: bytes
    original: bytes
    baseline: Baseline | None = None
    history: bytes | None = None
    weight: float = 1.0
    fields: list[Field] = field(default_factory=list)
    #: byte ranges of the frames (one for a bare frame), and where the container header ends (0: none)
    chunks: list[tuple[int, int]] = field(default_factory=list)
    header_end: int = 0


@dataclass
class Corpus:
    entries: list[Entry]
    registry: Registry
    codec: PayloadCodec
    store: BaselineStore
    cum_weights: list[float]
    by_strategy: dict[str, list[int]]
    #: preceding payload bytes handed to frames that need none (``+history`` routes)
    spare_history: bytes = b""
    build_seconds: float = 0.0

    @property
    def digest(self) -> str:
        """xxh3 of every entry: workers and replays must fuzz the same corpus."""
        h = xxhash.xxh3_64()
        for e in self.entries:
            h.update(e.name.encode())
            h.update(e.blob)
        return f"{h.intdigest():016x}"

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "strategy": e.strategy,
                "kind": e.kind,
                "encoded_bytes": len(e.blob),
                "original_bytes": len(e.original),
                "chunks": len(e.chunks),
                "context_bytes": len(e.history or b""),
                "baseline_bytes": len(e.baseline) if e.baseline is not None else None,
                "weight": e.weight,
            }
            for e in self.entries
        ]


def _elf(size: int, offset: int = 0) -> bytes:
    """``size`` bytes of a compiled extension (real machine code and tables), from ``offset``."""
    import lz4.block

    candidates = sorted(Path(np.__file__).parent.glob("_core/_multiarray_umath*.so"))
    candidates.append(Path(inspect.getfile(lz4.block._block)))
    data = b""
    for path in candidates:
        data = path.read_bytes()
        if len(data) >= offset + size:
            return data[offset : offset + size]
    data = data or bytes(range(256))
    return (data * (1 + (offset + size) // len(data)))[offset : offset + size]


def _weight(blob: bytes, original: bytes) -> float:
    """How often an entry is drawn: large entries cost a full decode of MiBs, so they are drawn less."""
    n = max(len(blob), len(original))
    if n >= 4 * MiB:
        return 0.5
    if n >= MiB:
        return 0.8
    return 1.0


def build_corpus(seed: int = 1, *, large: bool = True) -> Corpus:
    """Valid frames and containers of every strategy; ``large`` adds entries of 1-4 MiB (seconds to build).

    Deterministic for a seed on one machine (the real files are this interpreter's).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0xF022])
    pools = ContentPools(seed, pool_bytes=(4 if large else 1) * MiB)
    dictionaries = DictionaryStore()
    dictionaries.add(train_dictionary("logs", [logs_json(2 * KiB, rng, pools) for _ in range(64)], 4 * KiB))
    xxh = default_registry(dictionaries=dictionaries)
    crc = default_registry(dictionaries=dictionaries, checksum="crc32c")
    store = BaselineStore()
    entries: list[Entry] = []
    serial = iter(range(1 << 30))

    def base(data: bytes) -> Baseline:
        return store.put(f"resource-{next(serial)}", data)

    def frame(
        name: str,
        strategy: str,
        data: bytes,
        *,
        reg: Registry = xxh,
        baseline: Baseline | None = None,
        offset: int = 0,
        payload_type: str | None = None,
    ) -> None:
        """A frame of ``data[offset:]``, coded as a chunk at ``offset`` of ``data`` (with its context)."""
        enc = reg.get(strategy)
        view = memoryview(data)
        ctx = ChunkContext(
            offset=offset,
            payload_length=len(data),
            payload_type=payload_type,
            plan=enc.plan(view, baseline),
            payload=view,
        )
        blob = enc.encode(view[offset:], baseline=baseline, context=ctx)
        history = data[:offset] if offset else None
        original = data[offset:]
        entries.append(
            Entry(name, strategy, "frame", blob, original, baseline, history, _weight(blob, original))
        )

    def container(
        name: str, strategy: str, data: bytes, chunk: int, *, reg: Registry = xxh, **kw: Any
    ) -> None:
        blob = PayloadCodec(reg, chunk_size=chunk).encode(data, strategy, **kw).to_bytes()
        entries.append(
            Entry(name, strategy, "container", blob, data, kw.get("baseline"), None, _weight(blob, data))
        )

    tar = stdlib_tar(4 * MiB)
    small = {
        "empty": b"",
        "one-byte": b"\x00",
        "text-4KiB": tar[:4096],
        "text-4097": tar[8192 : 8192 + 4097],
        "stdlib-tar-40KiB": tar[: 40 * KiB],
        "elf-64KiB": _elf(64 * KiB, 256 * KiB),
        "logs-16KiB": logs_json(16 * KiB, rng, pools),
        "random-8KiB": random_bytes(8 * KiB, rng),
        "zeros-12KiB": bytes(12 * KiB),
        "media-32KiB": compressed_media(32 * KiB, rng, pools),
        "db-64KiB": database_pages(64 * KiB, rng, pools),
    }
    for strategy in ("none", "lz4", "zstd"):
        for label, data in small.items():
            frame(f"{strategy}/{label}", strategy, data)
        for label in ("text-4097", "logs-16KiB", "empty"):
            frame(f"{strategy}/{label}/crc32c", strategy, small[label], reg=crc)
    frame("zstd/dict/logs-2KiB", "zstd", logs_json(2 * KiB, rng, pools), payload_type="logs")
    frame("zstd/dict/logs-2KiB/crc32c", "zstd", logs_json(2 * KiB, rng, pools), reg=crc, payload_type="logs")
    logs96 = logs_json(96 * KiB, rng, pools)
    frame("zstd/context-64KiB/logs-32KiB", "zstd", logs96, offset=64 * KiB)

    vm = vm_memory(256 * KiB, rng, pools)
    frame("hde/pages/vm-256KiB", "hde", dirty_round(vm, rng), baseline=base(vm))
    frame("hde/pages/vm-256KiB/crc32c", "hde", dirty_round(vm, rng), reg=crc, baseline=base(vm))
    db = database_pages(128 * KiB, rng, pools)
    frame("hde/pages/db-128KiB", "hde", database_update(db, rng, pools), baseline=base(db))
    text64 = tar[: 64 * KiB]
    frame("hde/region/text-64KiB", "hde", edit_version(text64, rng, pools), baseline=base(text64))
    frame("hde/unchanged/text-32KiB", "hde", text64[: 32 * KiB], baseline=base(text64[: 32 * KiB]))
    frame("hde/short-baseline/text-40KiB", "hde", tar[: 40 * KiB], baseline=base(tar[: 10 * KiB]))
    frame("hde/empty", "hde", b"", baseline=base(b"old version"))
    frame("hde/tiny-baseline/elf-20KiB", "hde", _elf(20 * KiB), baseline=base(b"x" * 7))
    text192 = tar[: 192 * KiB]
    shifted = edit_version(text192, rng, pools, edits=12)
    frame("hde/region+context-128KiB/text", "hde", shifted, baseline=base(text192), offset=128 * KiB)

    logs80 = logs_json(80 * KiB, rng, pools)
    vm80 = vm_memory(80 * KiB, rng, pools)
    text80 = tar[64 * KiB : 144 * KiB]
    for strategy, label, data in (
        ("none", "text", text80),
        ("lz4", "logs", logs80),
        ("zstd", "text", text80),
        ("zstd", "logs", logs80),
    ):
        container(f"{strategy}/container-16KiB/{label}-80KiB", strategy, data, 16 * KiB)
    container("zstd/container-16KiB/crc32c", "zstd", logs80, 16 * KiB, reg=crc)
    container("hde/container-16KiB/pages", "hde", dirty_round(vm80, rng), 16 * KiB, baseline=base(vm80))
    container(
        "hde/container-16KiB/region", "hde", edit_version(text80, rng, pools), 16 * KiB, baseline=base(text80)
    )
    container("lz4/container-16KiB/tail-1", "lz4", logs80[: 64 * KiB + 1], 16 * KiB)

    # chunks above 1 MiB (256 pages) code their changed pages in segments: one of each tier
    vm_seg = vm_memory(MiB + 256 * KiB, rng, pools)
    frame(
        "hde/pages-segmented/vm-1.25MiB",
        "hde",
        dirty_round(vm_seg, rng, dirty_fraction=0.95),
        baseline=base(vm_seg),
    )
    text_seg = tar[: MiB + 40 * KiB]
    frame(
        "hde/region-segmented/text-1MiB", "hde", edit_version(text_seg, rng, pools), baseline=base(text_seg)
    )

    if large:
        big_text = tar[: 3 * MiB + 17]
        big_logs = logs_json(5 * MiB // 2, rng, pools)
        frame("none/elf-2MiB", "none", _elf(2 * MiB))
        frame("lz4/single-block/text-1MiB", "lz4", tar[: 1 * MiB])
        frame("lz4/segmented/logs-2.5MiB", "lz4", big_logs)
        frame("zstd/text-3MiB", "zstd", big_text)
        frame("zstd/context-1MiB/logs-1.5MiB", "zstd", big_logs, offset=1 * MiB)
        vm2 = vm_memory(2 * MiB, rng, pools)
        frame(
            "hde/pages-segmented/vm-2MiB",
            "hde",
            dirty_round(vm2, rng, dirty_fraction=0.6),
            baseline=base(vm2),
        )
        text2 = tar[MiB : 3 * MiB]
        frame("hde/region-segmented/text-2MiB", "hde", edit_version(text2, rng, pools), baseline=base(text2))
        for strategy, data in (("none", big_text), ("lz4", big_logs), ("zstd", big_text)):
            container(f"{strategy}/container-1MiB/{len(data) / MiB:.1f}MiB", strategy, data, MiB)
        container("zstd/container-256KiB/logs-1MiB", "zstd", big_logs[:MiB], 256 * KiB)
        vm3 = vm_memory(3 * MiB, rng, pools)
        container("hde/container-1MiB/pages-3MiB", "hde", dirty_round(vm3, rng), MiB, baseline=base(vm3))
        container(
            "hde/container-1MiB/region-3MiB",
            "hde",
            edit_version(big_text, rng, pools, edits=30),
            MiB,
            baseline=base(big_text),
        )
        # 2 MiB chunks: segmented frames (lz4, both hde tiers) inside a container, with context between them
        logs5 = logs_json(5 * MiB, rng, pools)
        container("lz4/container-2MiB/logs-5MiB", "lz4", logs5, 2 * MiB)
        container("zstd/container-2MiB/logs-5MiB/crc32c", "zstd", logs5, 2 * MiB, reg=crc)
        vm5 = vm_memory(5 * MiB, rng, pools)
        vm5_new = dirty_round(vm5, rng, dirty_fraction=0.5)
        container("hde/container-2MiB/pages-5MiB", "hde", vm5_new, 2 * MiB, baseline=base(vm5))
        text4 = tar[: 4 * MiB]
        text4_new = edit_version(text4, rng, pools, edits=40)
        container("hde/container-2MiB/region-4MiB", "hde", text4_new, 2 * MiB, baseline=base(text4))
        big_base = tar[: 4 * MiB] + _elf(2 * MiB)  # above 4 MiB: tier 3 locates its window by anchors
        container(
            "hde/container-1MiB/anchored-2MiB",
            "hde",
            edit_version(big_base[2 * MiB : 4 * MiB], rng, pools),
            MiB,
            baseline=base(big_base),
        )

    registry = default_registry(dictionaries=dictionaries)  # the decoders: any checksum, every dictionary
    for e in entries:
        e.fields, e.chunks, e.header_end = layout(e.blob)
    cum: list[float] = []
    total = 0.0
    by_strategy: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        total += e.weight
        cum.append(total)
        by_strategy.setdefault(e.strategy, []).append(i)
    spare = tar[-256 * KiB :]
    codec = PayloadCodec(registry)
    return Corpus(entries, registry, codec, store, cum, by_strategy, spare, time.perf_counter() - t0)


# -- the layout of a valid frame or container ------------------------------------------------------------
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


class _Layout:
    """Collects the fields of a valid frame (at most ``_PER_NAME`` of one name) while walking it."""

    _PER_NAME = 32

    def __init__(self, buf: bytes, pos: int, prefix: str) -> None:
        self.buf, self.pos, self.prefix = buf, pos, prefix
        self.fields: list[Field] = []
        self._seen: Counter[str] = Counter()

    def _add(self, name: str, start: int, end: int, is_varint: bool) -> None:
        self._seen[name] += 1
        if self._seen[name] <= self._PER_NAME:
            self.fields.append(Field(self.prefix + name, start, end, is_varint))

    def fixed(self, name: str, n: int) -> int:
        start = self.pos
        self.pos += n
        self._add(name, start, self.pos, False)
        return start

    def var(self, name: str) -> int:
        start = self.pos
        value, self.pos = _read_varint(self.buf, start)
        self._add(name, start, self.pos, True)
        return value

    def zstd(self, end: int) -> None:
        """The header fields of the magic-less zstd frame at ``pos`` (RFC 8878 3.1.1.1) and its first
        block header."""
        if self.pos >= end:
            return
        fhd = self.buf[self.pos]
        self.fixed("zstd.descriptor", 1)
        single = bool(fhd & 0x20)
        if not single:
            self.fixed("zstd.window", 1)
        did = (0, 1, 2, 4)[fhd & 3]
        if did:
            self.fixed("zstd.dict_id", did)
        fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
        if fcs:
            self.fixed("zstd.content_size", fcs)
        if self.pos + 3 <= end:
            self.fixed("zstd.block_header", 3)


def _frame_layout(buf: bytes, pos: int, prefix: str) -> tuple[list[Field], int]:
    """The fields of the valid frame at ``pos`` (header, extension and the strategy's body fields), and
    where it ends."""
    lay = _Layout(buf, pos, prefix)
    lay.fixed("magic", 4)
    lay.fixed("version", 1)
    strategy = buf[lay.pos]
    lay.fixed("strategy", 1)
    flags = buf[lay.pos]
    lay.fixed("flags", 1)
    variant = flags >> 4
    n = lay.var("original_length")
    body_length = lay.var("body_length")
    lay.var("context_length")
    lay.fixed("checksum", 4 if flags & 1 else 8)
    ext_length = lay.var("ext_length")
    ext_start = lay.pos
    if strategy == 3 and ext_length:
        id_length = lay.var("hde.id_length")
        lay.fixed("hde.id", id_length)
        lay.fixed("hde.baseline_checksum", 8)
        for name in ("hde.baseline_length", "hde.page_ref", "hde.window_lo", "hde.window_width"):
            lay.var(name)
    elif ext_length:
        lay.fixed("ext", ext_length)
    lay.pos = ext_start + ext_length
    body_start = lay.pos
    end = body_start + body_length
    lay._add("body", body_start, end, False)
    if strategy == 1 and variant == 2:  # lz4 segments: (length << 1 | stored) varint, block
        while lay.pos < end:
            field_value = lay.var("lz4.segment")
            lay.pos += field_value >> 1
    elif strategy == 2:
        lay.zstd(end)
    elif strategy == 3 and body_length:
        npages = -(-n // 4096)
        form = buf[lay.pos]
        lay.fixed("hde.page_set_form", 1)
        if form == 0:
            start = lay.fixed("hde.page_bitmap", -(-npages // 8))
            bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8, count=-(-npages // 8), offset=start))
            pages = np.flatnonzero(bits[:npages]).tolist()
        elif form == 1:
            count = lay.var("hde.page_count")
            pages, page = [], -1
            for _ in range(count):
                page += lay.var("hde.page_gap") + 1
                pages.append(page)
        else:
            pages = list(range(npages))
        if pages and variant in (1, 3):
            lay.zstd(end)
        elif pages:
            for _segment in sorted({p // 256 for p in pages}):
                if variant == 4:
                    for name in ("hde.segment_lo", "hde.segment_width", "hde.segment_used"):
                        lay.var(name)
                zlen = lay.var("hde.segment_length")
                zend = lay.pos + zlen
                lay.zstd(zend)
                lay.pos = zend
    return lay.fields, end


def layout(blob: bytes) -> tuple[list[Field], list[tuple[int, int]], int]:
    """(fields, frame ranges, container header end) of a valid frame or container."""
    if blob[:4] == MAGIC:
        fields, end = _frame_layout(blob, 0, "")
        return fields, [(0, end)], 0
    lay = _Layout(blob, 0, "container.")
    lay.fixed("magic", 4)
    lay.fixed("version", 1)
    lay.fixed("strategy", 1)
    lay.fixed("flags", 1)
    lay.var("payload_length")
    lay.var("chunk_size")
    count = lay.var("chunk_count")
    lay.fixed("checksum", 8)
    fields, chunks, pos = lay.fields, [], lay.pos
    for _ in range(count):
        chunk_fields, end = _frame_layout(blob, pos, "chunk.")
        fields += chunk_fields
        chunks.append((pos, end))
        pos = end
    return fields, chunks, lay.pos


# -- mutations ---------------------------------------------------------------------------------------------
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x04, 0x0F, 0x10, 0x20, 0x7F, 0x80, 0x81, 0xC0, 0xFE, 0xFF)


@dataclass
class Mutation:
    index: int
    entry: Entry
    op: str
    detail: str
    blob: bytes
    sources: list[Entry]
    route: str


def varint_bytes(value: int, width: int = 0) -> bytes:
    """``value`` as LEB128 in at least ``width`` bytes (over-long encodings pad with continuation bytes)."""
    minimal = varint(value)
    if width <= len(minimal):
        return minimal
    groups = [(value >> (7 * i)) & 0x7F for i in range(width)]
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


def interesting_value(rng: random.Random, old: int, max_output: int) -> int:
    """A value for a length or offset field: edges of every limit the decoders check, and near ``old``."""
    pick = rng.randrange(16)
    if pick == 0:
        return 0
    if pick == 1:
        return rng.choice((1, 2, 7, 8, 9))
    if pick <= 4:
        return max(0, old + rng.choice((-4096, -2, -1, 1, 2, 4096, old, -(old // 2))))
    if pick == 5:
        return max_output + rng.choice((-1, 0, 1))
    if pick == 6:
        return rng.randrange(max_output + 1)
    if pick == 7:
        return max(0, (1 << rng.randrange(64)) + rng.choice((-1, 0, 1)))
    if pick == 8:
        return (1 << rng.randrange(1, 71)) - 1
    if pick == 9:
        return MAX_CONTEXT_LENGTH + rng.choice((-1, 0, 1))
    if pick == 10:
        return MAX_CHUNK_SIZE + rng.choice((0, 1))
    if pick == 11:
        return rng.choice((255, 256, 4096, 4097, 128 * KiB, 1 << 20, (1 << 20) + 1, 8 << 20, (8 << 20) + 1))
    return rng.randrange(max(1, 2 * old + 2))


def _pick_field(rng: random.Random, entry: Entry, want: Callable[[Field], bool]) -> Field | None:
    """A field by name first (so the many gap varints of a page set do not crowd the headers out)."""
    fields = [f for f in entry.fields if want(f)]
    if not fields:
        return None
    name = rng.choice(sorted({f.name for f in fields}))
    return rng.choice([f for f in fields if f.name == name])


def _position(rng: random.Random, entry: Entry, n: int) -> int:
    """A byte position, half the time in the first 64 bytes of a frame (where headers are)."""
    if n == 0:
        return 0
    if rng.random() < 0.5 and entry.chunks:
        start, end = rng.choice(entry.chunks)
        return min(n - 1, start + rng.randrange(max(1, min(64, end - start))))
    return rng.randrange(n)


def _boundary(rng: random.Random, entry: Entry, n: int) -> int:
    """A position at a field's edge (plus or minus a byte), or anywhere."""
    if entry.fields and rng.random() < 0.6:
        f = rng.choice(entry.fields)
        return max(0, min(n, rng.choice((f.start, f.end)) + rng.choice((-1, 0, 0, 1))))
    return rng.randrange(n + 1)


def op_bitflip(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    buf = bytearray(m.blob)
    if not buf:
        return bytes([1 << rng.randrange(8)])
    flips = 1 + int(rng.expovariate(0.7))
    at = []
    for _ in range(flips):
        pos = _position(rng, m.entry, len(buf))
        buf[pos] ^= 1 << rng.randrange(8)
        at.append(pos)
    m.detail = f"flip {flips} bits at {at[:8]}"
    return bytes(buf)


def op_byteset(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    buf = bytearray(m.blob)
    if not buf:
        return bytes([rng.choice(INTERESTING_BYTES)])
    count = 1 + int(rng.expovariate(0.6))
    at = []
    for _ in range(count):
        pos = _position(rng, m.entry, len(buf))
        buf[pos] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
        at.append(pos)
    m.detail = f"set {count} bytes at {at[:8]}"
    return bytes(buf)


def op_truncate(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    n = len(m.blob)
    cut = _boundary(rng, m.entry, n) if rng.random() < 0.5 else rng.randrange(n + 1)
    if rng.random() < 0.2:
        cut = max(0, n - 1 - int(rng.expovariate(0.2)))  # near the end: a short read
    m.detail = f"truncate {n} -> {min(cut, n)}"
    return m.blob[:cut]


def op_extend(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    pick = rng.randrange(5)
    if pick == 0:
        tail = rng.randbytes(1 + rng.randrange(16))
    elif pick == 1:
        tail = bytes(1 + rng.randrange(4096))
    elif pick == 2:
        tail = m.blob[-(1 + rng.randrange(max(1, len(m.blob)))) :]
    elif pick == 3:
        other = corpus.entries[rng.randrange(len(corpus.entries))]
        tail = other.blob[other.chunks[0][0] : other.chunks[0][1]] if other.chunks else other.blob
        m.sources.append(other)
    else:
        tail = m.blob
    m.detail = f"append {len(tail)} bytes (kind {pick})"
    return m.blob + tail


def op_insdel(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    n = len(m.blob)
    at = _boundary(rng, m.entry, n)
    if rng.random() < 0.5 and at < n:
        length = 1 + int(rng.expovariate(0.3))
        m.detail = f"delete {length} bytes at {at}"
        return m.blob[:at] + m.blob[at + length :]
    new = rng.randbytes(1 + int(rng.expovariate(0.3))) if rng.random() < 0.7 else bytes([0x80]) * 3
    m.detail = f"insert {len(new)} bytes at {at}"
    return m.blob[:at] + new + m.blob[at:]


def op_splice(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    same = corpus.by_strategy[m.entry.strategy]
    other = corpus.entries[rng.choice(same) if rng.random() < 0.5 else rng.randrange(len(corpus.entries))]
    m.sources.append(other)
    a, b = m.blob, other.blob
    names = sorted({f.name for f in m.entry.fields} & {f.name for f in other.fields})
    if names and rng.random() < 0.6:  # at the same field of both: one's header, the other's body
        name = rng.choice(names)
        fa = rng.choice([f for f in m.entry.fields if f.name == name])
        fb = rng.choice([f for f in other.fields if f.name == name])
        edge = rng.random() < 0.5
        i, j = (fa.start, fb.start) if edge else (fa.end, fb.end)
        m.detail = f"splice {m.entry.name}[:{i}] + {other.name}[{j}:] at {name}"
    else:
        i, j = rng.randrange(len(a) + 1), rng.randrange(len(b) + 1)
        m.detail = f"splice {m.entry.name}[:{i}] + {other.name}[{j}:]"
    return a[:i] + b[j:]


def _rewrite(blob: bytes, f: Field, new: bytes) -> bytes:
    return blob[: f.start] + new + blob[f.end :]


def _encode_value(rng: random.Random, value: int, old_width: int) -> tuple[bytes, str]:
    pick = rng.random()
    if pick < 0.8:
        return varint(value), "minimal"
    if pick < 0.95:
        width = rng.randint(len(varint(value)) + 1, 11)
        return varint_bytes(value, width), f"over-long {width}"
    return b"\xff" * rng.randint(old_width, 12), "unterminated"


def op_varint(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    f = _pick_field(rng, m.entry, lambda f: f.is_varint)
    if f is None:
        return op_byteset(rng, m, corpus, max_output)
    old, _ = _read_varint(m.blob, f.start)
    value = interesting_value(rng, old, max_output)
    new, how = _encode_value(rng, value, f.end - f.start)
    m.detail = f"varint {f.name} {old} -> {value} ({how})"
    return _rewrite(m.blob, f, new)


def op_declared(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    """A declared length (a frame's original length, a container's payload length) up to the limit."""
    names = ("original_length", "chunk.original_length", "container.payload_length")
    f = _pick_field(rng, m.entry, lambda f: f.name in names)
    if f is None:  # pragma: no cover - every entry has one
        return op_varint(rng, m, corpus, max_output)
    old, _ = _read_varint(m.blob, f.start)
    pick = rng.randrange(10)
    if pick < 4:
        value = rng.randrange(max_output + 1)
    elif pick < 6:
        value = max_output - rng.choice((0, 0, 1, 4095))
    elif pick == 6:
        value = max_output + 1
    elif pick == 7:
        value = 1 << rng.randrange(max_output.bit_length())
    else:
        value = max(0, old + rng.choice((-4097, -4096, -1, 1, 4095, 4096, 65536)))
    m.detail = f"declared {f.name} {old} -> {value}"
    return _rewrite(m.blob, f, varint(value))


def op_field(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    """A fixed-size field (magic, version, strategy, flags, checksums, ids, zstd headers, page sets)."""
    f = _pick_field(rng, m.entry, lambda f: not f.is_varint and f.name not in ("body", "chunk.body"))
    if f is None:
        return op_byteset(rng, m, corpus, max_output)
    width = f.end - f.start
    old = m.blob[f.start : f.end]
    short = f.name.rsplit(".", 1)[-1] if f.name.startswith(("chunk.", "container.")) else f.name
    pick = rng.random()
    if short == "strategy":
        new = bytes([rng.choice((0, 1, 2, 3, 4, 255))])
    elif short == "flags":
        new = (
            bytes([rng.randrange(16) << 4 | rng.randrange(2)]) if pick < 0.7 else bytes([rng.randrange(256)])
        )
    elif width == 1 and pick < 0.5:
        new = bytes([old[0] ^ (1 << rng.randrange(8))])
    elif width == 1:
        new = bytes([rng.choice(INTERESTING_BYTES) if pick < 0.8 else rng.randrange(256)])
    elif pick < 0.4:
        new = rng.randbytes(width)
    elif pick < 0.6:
        new = bytes(width) if rng.random() < 0.5 else b"\xff" * width
    else:
        buf = bytearray(old)
        buf[rng.randrange(width)] ^= 1 << rng.randrange(8)
        new = bytes(buf)
    m.detail = f"field {f.name} {old[:8].hex()} -> {new[:8].hex()}"
    return _rewrite(m.blob, f, new)


def edit_chunks(blob: bytes, entry: Entry, op: str, i: int, j: int, donor: bytes | None, fix: bool) -> bytes:
    """A container with its frames edited: ``remove`` frame ``i``, ``duplicate`` it at ``j``, ``swap`` it
    with ``j``, ``replace`` it with ``donor``; ``fix`` rewrites the header's chunk count and payload length
    to agree with the frames (the payload checksum stays)."""
    frames = [blob[s:e] for s, e in entry.chunks]
    i %= len(frames)
    j %= len(frames)
    if op == "remove":
        del frames[i]
    elif op == "duplicate":
        frames.insert(j, frames[i])
    elif op == "swap":
        frames[i], frames[j] = frames[j], frames[i]
    elif op == "replace" and donor is not None:
        frames[i] = donor
    header = blob[: entry.header_end]
    if fix and frames:
        lengths = []
        for fr in frames:
            try:
                lengths.append(parse_header(fr, max_original_length=1 << 62).original_length)
            except DwcpError:
                lengths.append(0)
        lay = _Layout(header, 0, "")
        lay.pos = 7
        lay.var("payload_length")
        lay.var("chunk_size")
        lay.var("chunk_count")
        fields = {f.name: f for f in lay.fields}
        chunk_size, _ = _read_varint(header, fields["chunk_size"].start)
        payload = chunk_size * (len(frames) - 1) + lengths[-1]
        header = b"".join(
            (
                header[:7],
                varint(payload),
                varint(chunk_size),
                varint(len(frames)),
                header[fields["chunk_count"].end :],
            )
        )
    return header + b"".join(frames)


def op_chunks(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    if m.entry.kind != "container":
        return op_splice(rng, m, corpus, max_output)
    op = rng.choice(("remove", "duplicate", "swap", "replace", "replace"))
    donor = None
    if op == "replace":
        other = corpus.entries[rng.choice(corpus.by_strategy[m.entry.strategy])]
        s, e = rng.choice(other.chunks)
        donor = other.blob[s:e]
        m.sources.append(other)
    i, j, fix = rng.randrange(1 << 16), rng.randrange(1 << 16), rng.random() < 0.5
    m.detail = f"chunks {op} {i % len(m.entry.chunks)} {j % len(m.entry.chunks)} fix={fix}"
    return edit_chunks(m.blob, m.entry, op, i, j, donor, fix)


def op_random(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    m.sources.clear()
    prefixes = (
        b"",
        MAGIC,
        MAGIC + b"\x02",
        MAGIC + bytes((2, rng.randrange(5), rng.randrange(16) << 4 | rng.randrange(2))),
        CONTAINER_MAGIC + bytes((1, rng.randrange(5), 0)),
    )
    prefix = rng.choice(prefixes)
    size = rng.randrange(64) if rng.random() < 0.5 else rng.randrange(4096)
    m.detail = f"random {size} bytes after {prefix.hex()}"
    return prefix + rng.randbytes(size)


def op_noop(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    m.detail = "unchanged"
    return m.blob


Op = Callable[[random.Random, Mutation, Corpus, int], bytes]
_LAYOUT_FREE: tuple[Op, ...] = (op_bitflip, op_byteset, op_truncate, op_extend, op_insdel)


def op_havoc(rng: random.Random, m: Mutation, corpus: Corpus, max_output: int) -> bytes:
    first = rng.choice((op_varint, op_declared, op_field, op_splice, op_chunks, op_bitflip))
    steps = [first.__name__[3:]]
    m.blob = first(rng, m, corpus, max_output)
    details = [m.detail]
    for _ in range(rng.randint(1, 3)):
        step = rng.choice(_LAYOUT_FREE)
        m.blob = step(rng, m, corpus, max_output)
        steps.append(step.__name__[3:])
        details.append(m.detail)
    m.detail = "; ".join(details)
    return m.blob


OPS: dict[str, tuple[Op, float]] = {
    "bitflip": (op_bitflip, 14),
    "byteset": (op_byteset, 10),
    "truncate": (op_truncate, 7),
    "extend": (op_extend, 5),
    "insdel": (op_insdel, 6),
    "splice": (op_splice, 8),
    "varint": (op_varint, 12),
    "declared": (op_declared, 8),
    "field": (op_field, 10),
    "chunks": (op_chunks, 6),
    "havoc": (op_havoc, 9),
    "random": (op_random, 3),
    "noop": (op_noop, 0.5),
}
_OP_NAMES = list(OPS)
_OP_CUM = list(np.cumsum([w for _, w in OPS.values()]).tolist())


def routes(entry: Entry) -> list[str]:
    """The decode paths an entry can take: a frame through the registry, its strategy's own decoder or
    (without context) the payload codec, which takes a bare frame; a container through the codec, whole
    or chunk by chunk. ``+history`` hands a frame that needs no context 256 KiB of preceding bytes anyway
    (so a mutation claiming a context gets one); ``+store`` resolves HDE's baseline through a store."""
    if entry.kind == "container":
        paths = ["codec", "codec", "codec-iter"]
    elif entry.history:
        paths = ["registry", "registry", "encoder"]
    else:
        paths = ["registry", "registry", "registry+history", "encoder", "codec"]
    if entry.baseline is not None:
        paths.append(paths[0] + "+store")
    return paths


#: How the input is handed over: the decoders take any flat byte buffer (``BytesLike``).
BUFFERS = ("bytes", "bytes", "bytearray", "memoryview")


def mutation(corpus: Corpus, seed: int, index: int, max_output: int) -> Mutation:
    """Mutation ``index`` of ``seed``: the same whatever the worker or the order."""
    rng = random.Random(f"{seed}:{index}")
    entry = corpus.entries[rng.choices(range(len(corpus.entries)), cum_weights=corpus.cum_weights)[0]]
    op = rng.choices(_OP_NAMES, cum_weights=_OP_CUM)[0]
    route = f"{rng.choice(routes(entry))}@{rng.choice(BUFFERS)}"
    m = Mutation(index, entry, op, "", entry.blob, [entry], route)
    m.blob = OPS[op][0](rng, m, corpus, max_output)
    return m


def as_buffer(blob: bytes, kind: str) -> bytes | bytearray | memoryview:
    """``blob`` as ``bytes``, a ``bytearray``, or a ``memoryview`` into the middle of a larger buffer."""
    if kind == "bytearray":
        return bytearray(blob)
    if kind == "memoryview":
        return memoryview(b"\xa5" * 3 + blob + b"\x5a")[3 : 3 + len(blob)]
    return blob


# -- decoding and classifying --------------------------------------------------------------------------------
def decode(
    corpus: Corpus, entry: Entry, blob: bytes, route: str, max_output: int, data: BytesLike | None = None
) -> bytearray:
    """Decode ``blob`` as ``entry`` would be (its baseline, its history) along ``route``:
    ``path[+store][@buffer]`` (see :func:`routes` and :data:`BUFFERS`); ``data`` is ``blob`` already
    handed over as that buffer."""
    route, _, buffer = route.partition("@")
    if data is None:
        data = as_buffer(blob, buffer or "bytes")
    path, *extras = route.split("+")
    baseline: BaselineSource | None = entry.baseline
    if "store" in extras and baseline is not None:
        baseline = corpus.store
    history = corpus.spare_history if "history" in extras else entry.history
    if path == "registry":
        return corpus.registry.decode(data, baseline=baseline, max_output=max_output, history=history)
    if path == "encoder":
        enc = corpus.registry.get(entry.strategy)
        return enc.decode(data, baseline=baseline, max_output=max_output, history=history)
    if path == "codec":
        return corpus.codec.decode(data, baseline=baseline, max_output=max_output)
    if path == "codec-iter":
        out = bytearray()
        for chunk in corpus.codec.iter_decode(data, baseline=baseline, max_output=max_output):
            out += chunk
        return out
    raise ValueError(f"unknown route {route!r}")


def self_verifies(blob: bytes, out: bytes | bytearray) -> bool:
    """Whether ``out`` matches the checksum ``blob`` itself declares (a frame's, or a container's
    whole-payload xxh3): what a decoder that returned ``out`` must have checked."""
    try:
        if blob[:4] == MAGIC:
            header = parse_header(blob, max_original_length=1 << 62)
            return (
                checksum(header.checksum_algo, out) == header.checksum and len(out) == header.original_length
            )
        container = parse_container_header(blob, max_output=1 << 62)
        return xxhash.xxh3_64_intdigest(out) == container.payload_checksum
    except DwcpError:
        return False


def classify(m: Mutation, out: bytes | bytearray) -> str:
    if any(out == s.original for s in m.sources):
        return "identical"
    return "forged" if self_verifies(m.blob, out) else "wrong"


@dataclass(frozen=True, slots=True)
class Caught:
    """What a decode raised, as text: holding the exception itself would keep its traceback's frames, and
    with them the decoder's output buffer, alive until the cyclic collector runs."""

    typed: bool
    name: str
    message: str
    traceback: list[str]

    @classmethod
    def of(cls, exc: BaseException) -> Caught:
        tb = [] if isinstance(exc, DwcpError) else traceback.format_exception(exc)[-4:]
        return cls(isinstance(exc, DwcpError), type(exc).__name__, str(exc), tb)

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


def _example(m: Mutation, outcome: str, exc: Caught | None = None) -> dict[str, Any]:
    ex: dict[str, Any] = {
        "index": m.index,
        "entry": m.entry.name,
        "op": m.op,
        "detail": m.detail[:300],
        "route": m.route,
        "input_bytes": len(m.blob),
        "outcome": outcome,
    }
    if exc is not None:
        ex["error"] = str(exc)[:500]
        if exc.traceback:
            ex["traceback"] = exc.traceback
    return ex


def _declared(blob: bytes) -> int | None:
    try:
        if blob[:4] == MAGIC:
            return parse_header(blob, max_original_length=1 << 62).original_length
        return parse_container_header(blob, max_output=1 << 62).payload_length
    except DwcpError:
        return None


# -- workers -------------------------------------------------------------------------------------------------
def _status(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class _State:
    corpus: Corpus
    seed: int
    max_output: int
    time_cap: float
    start_rss: int = 0
    peak_reset: bool = False
    #: the worker's peak RSS (VmHWM across every mark), and the highest RSS a decode started from
    peak_rss: int = 0
    top_rss_before: int = 0


_STATE: _State | None = None


def init_worker(
    seed: int, max_output: int, large: bool, time_cap: float, corpus: Corpus | None = None
) -> None:
    """Build the corpus (or take the one given, in-process), then reset the peak-RSS mark."""
    global _STATE
    corpus = corpus if corpus is not None else build_corpus(seed, large=large)
    state = _State(corpus, seed, max_output, time_cap)
    for entry in corpus.entries:  # every lazy import and first allocation of every path, before the mark
        for route in routes(entry):
            decode(corpus, entry, entry.blob, route, max_output)
    state.peak_reset = _reset_peak()
    state.start_rss = _status("VmRSS")
    _STATE = state


def _init_spawned(seed: int, max_output: int, large: bool, time_cap: float) -> None:
    """A worker process: warnings are errors (as under pytest), then :func:`init_worker`."""
    warnings.simplefilter("error")
    init_worker(seed, max_output, large, time_cap)


def _timed_decode(state: _State, m: Mutation) -> tuple[bytearray | None, Caught | None, float, int]:
    """Decode a mutation: (output, what it raised, seconds, peak RSS growth of this decode alone)."""
    data = as_buffer(m.blob, m.route.partition("@")[2] or "bytes")  # the input, before the mark
    before = 0
    if state.peak_reset:  # the worker's peak since the last mark, then a new mark for this decode
        state.peak_rss = max(state.peak_rss, _status("VmHWM"))
        _reset_peak()
        before = _status("VmRSS")
        state.top_rss_before = max(state.top_rss_before, before - state.start_rss)
    out: bytearray | None = None
    caught: Caught | None = None
    t0 = time.perf_counter()
    try:
        out = decode(state.corpus, m.entry, m.blob, m.route, state.max_output, data)
    except Exception as exc:  # a DwcpError is expected; anything else is what the fuzzer looks for
        seconds = time.perf_counter() - t0
        caught = Caught.of(exc)
    else:
        seconds = time.perf_counter() - t0
    del data
    growth = 0
    if state.peak_reset:
        peak = _status("VmHWM")
        state.peak_rss = max(state.peak_rss, peak)
        growth = peak - before
    return out, caught, seconds, growth


def decode_bound(declared: int | None) -> float:
    """What one decode may add to the RSS it starts from: 1.1x the length the input declares, plus the
    slack (tests/test_limits.py's contract)."""
    return 1.1 * (declared or 0) + RSS_SLACK


def run_batch(bounds: tuple[int, int]) -> dict[str, Any]:
    """Mutate, decode and classify mutations ``start..stop``; the counts, examples, timings and memory.

    Every decode's own peak RSS growth is measured (the mark reset just before it) and checked against
    :func:`decode_bound`; a decode slower than 0.1 s is timed again, and counts above the time cap only
    if the second run is too (a stalled machine is not a slow decoder)."""
    state = _STATE
    assert state is not None, "init_worker first"
    corpus, max_output = state.corpus, state.max_output
    counts: Counter[tuple[str, str, str, str]] = Counter()
    errors: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("untyped", "wrong", "forged", "identical", "over_memory")
    }
    slowest: list[tuple[float, int, dict[str, Any]]] = []
    over_cap = over_cap_first = over_memory = 0
    busy = 0.0
    input_bytes = 0
    top_growth: dict[str, Any] = {"growth": -1}
    t_batch = time.perf_counter()
    for index in range(*bounds):
        m = mutation(corpus, state.seed, index, max_output)
        out, exc, seconds, growth = _timed_decode(state, m)
        if out is not None:
            outcome = classify(m, out)
            del out
        elif exc is not None and exc.typed:
            outcome = "typed"
            errors[exc.name] += 1
        else:
            outcome = "untyped"
            errors[f"untyped {exc.name if exc else '?'}"] += 1
        counts[(m.entry.strategy, m.op, m.route, outcome)] += 1
        keep = _KEEP_EXAMPLES if outcome != "identical" else (2 if m.op != "noop" else 0)
        if outcome in examples and len(examples[outcome]) < keep:
            examples[outcome].append(_example(m, outcome, exc))
        input_bytes += len(m.blob)
        busy += seconds
        declared = None
        if state.peak_reset:
            declared = _declared(m.blob)
            if growth > decode_bound(declared):
                over_memory += 1
                if len(examples["over_memory"]) < _KEEP_EXAMPLES:
                    ex = _example(m, outcome, exc)
                    ex.update(growth=growth, declared=declared, bound=decode_bound(declared))
                    examples["over_memory"].append(ex)
            if growth > top_growth["growth"]:
                top_growth = _example(m, outcome)
                top_growth.update(growth=growth, declared=declared, bound=decode_bound(declared))
        retimed = None
        if seconds > min(0.1, state.time_cap):
            _, _, retimed, _ = _timed_decode(state, m)
        if seconds > state.time_cap:
            over_cap_first += 1
            if retimed is not None and retimed > state.time_cap:
                over_cap += 1
        if len(slowest) < _KEEP_SLOWEST or seconds > slowest[0][0]:
            info = _example(m, outcome)
            info.update(seconds=seconds, retimed_seconds=retimed, declared=declared or _declared(m.blob))
            if exc is not None:
                info["error"] = str(exc)[:200]
            item = (seconds, index, info)
            if len(slowest) < _KEEP_SLOWEST:
                heapq.heappush(slowest, item)
            else:
                heapq.heapreplace(slowest, item)
    return {
        "bounds": list(bounds),
        "counts": [[*k, v] for k, v in counts.items()],
        "errors": dict(errors),
        "examples": examples,
        "slowest": [info for _, _, info in sorted(slowest, reverse=True)],
        "over_cap": over_cap,
        "over_cap_first": over_cap_first,
        "over_memory": over_memory,
        "top_growth": top_growth,
        "top_rss_before": state.top_rss_before,
        "decode_seconds": busy,
        "batch_seconds": time.perf_counter() - t_batch,
        "input_bytes": input_bytes,
        "pid": os.getpid(),
        "start_rss": state.start_rss,
        "peak_rss": max(state.peak_rss, _status("VmHWM")),
        "rss": _status("VmRSS"),
        "peak_reset": state.peak_reset,
        "corpus_digest": corpus.digest,
    }


# -- the run -------------------------------------------------------------------------------------------------
def _batches(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(count, start + size)


def _merge(
    results: list[dict[str, Any]], corpus: Corpus, args: dict[str, Any], wall: float
) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    by: dict[str, dict[str, Counter[str]]] = {"strategy": {}, "op": {}, "route": {}, "buffer": {}}
    errors: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("untyped", "wrong", "forged", "identical", "over_memory")
    }
    slowest: list[dict[str, Any]] = []
    top_growth: dict[str, Any] = {"growth": -1}
    workers: dict[int, dict[str, Any]] = {}
    for r in results:
        for strategy, op, route, outcome, n in r["counts"]:
            totals[outcome] += n
            path, _, buffer = route.partition("@")
            for axis, key in (("strategy", strategy), ("op", op), ("route", path), ("buffer", buffer)):
                by[axis].setdefault(key, Counter())[outcome] += n
        errors.update(r["errors"])
        for k, v in r["examples"].items():
            examples[k].extend(v)
        slowest.extend(r["slowest"])
        w = workers.setdefault(
            r["pid"],
            {
                "pid": r["pid"],
                "start_rss": r["start_rss"],
                "peak_rss": 0,
                "decodes": 0,
                "decode_seconds": 0.0,
                "max_decode_growth": 0,
                "max_rss_before_decode": 0,
            },
        )
        w["peak_rss"] = max(w["peak_rss"], r["peak_rss"])
        w["max_decode_growth"] = max(w["max_decode_growth"], r["top_growth"].get("growth", 0))
        w["max_rss_before_decode"] = max(w["max_rss_before_decode"], r["top_rss_before"])
        if r["top_growth"].get("growth", -1) > top_growth["growth"]:
            top_growth = r["top_growth"]
        w["final_rss"] = r["rss"]
        w["peak_reset"] = r["peak_reset"]
        w["decodes"] += r["bounds"][1] - r["bounds"][0]
        w["decode_seconds"] += r["decode_seconds"]
        w["corpus_digest"] = r["corpus_digest"]
    largest = max(len(e.blob) for e in corpus.entries)
    bound = 1.1 * args["max_output"] + RSS_SLACK + 2 * largest
    for w in workers.values():
        w["growth"] = w["peak_rss"] - w["start_rss"]
        w["within_bound"] = w["growth"] <= bound
    over_memory = sum(r["over_memory"] for r in results)
    decodes = sum(totals.values())
    busy = sum(w["decode_seconds"] for w in workers.values())
    slowest.sort(key=lambda s: -float(s["seconds"]))
    return {
        "machine": machine(),
        "args": args,
        "corpus": {
            "entries": len(corpus.entries),
            "digest": corpus.digest,
            "build_seconds": round(corpus.build_seconds, 2),
            "by_strategy": dict(Counter(e.strategy for e in corpus.entries)),
            "items": corpus.describe(),
        },
        "decodes": decodes,
        "totals": {k: totals[k] for k in OUTCOMES},
        "bugs": sum(totals[k] for k in BUGS),
        "typed_errors": dict(errors.most_common()),
        "by": {
            axis: {k: {o: c[o] for o in OUTCOMES} for k, c in sorted(v.items())} for axis, v in by.items()
        },
        "examples": examples,
        "time_cap_seconds": args["time_cap"],
        "over_time_cap": sum(r["over_cap"] for r in results),
        "over_time_cap_first_run": sum(r["over_cap_first"] for r in results),
        "slowest": slowest[:_KEEP_SLOWEST],
        "rss": {
            "bound_bytes": bound,
            "bound": f"1.1 x max_output + {RSS_SLACK} + 2 x largest entry ({largest} bytes), above the "
            "worker's RSS once its corpus is built",
            "within_bound": all(w["within_bound"] for w in workers.values()),
            "workers": sorted(workers.values(), key=lambda w: int(w["pid"])),
            "per_decode": {
                "bound": f"1.1 x the input's declared length + {RSS_SLACK}, above the RSS the decode starts "
                "from",
                "measured": all(w["peak_reset"] for w in workers.values()),
                "over_bound": over_memory,
                "max_growth": top_growth["growth"],
                "max_growth_decode": top_growth,
            },
        },
        "corpus_digests_agree": len({w["corpus_digest"] for w in workers.values()} | {corpus.digest}) == 1,
        "wall_seconds": round(wall, 2),
        "decode_seconds": round(busy, 2),
        "decodes_per_second": round(decodes / wall, 1) if wall else None,
        "decodes_per_core_second": round(decodes / busy, 1) if busy else None,
        "input_mib": round(sum(r["input_bytes"] for r in results) / MiB, 1),
    }


def fuzz(
    count: int = DEFAULT_COUNT,
    *,
    seed: int = 1,
    max_output: int = DEFAULT_MAX_OUTPUT,
    workers: int = 2,
    large: bool = True,
    time_cap: float = DEFAULT_TIME_CAP,
    batch: int = 500,
    corpus: Corpus | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The fuzzer's core: ``count`` mutations in ``workers`` processes (0: in this process, with
    ``corpus`` if given); returns the merged results (what ``bench/results/fuzz_frames.json`` holds)."""
    args = {
        "count": count,
        "seed": seed,
        "max_output": max_output,
        "workers": workers,
        "large": large,
        "time_cap": time_cap,
        "batch": batch,
    }
    if corpus is None:
        corpus = build_corpus(seed, large=large)
    results: list[dict[str, Any]] = []
    bars = _Bars(count, enabled=progress)
    t0 = time.perf_counter()
    if workers <= 0:
        init_worker(seed, max_output, large, time_cap, corpus)
        t0 = time.perf_counter()
        with bars:
            for bounds in _batches(count, batch):
                results.append(run_batch(bounds))
                bars.advance(results[-1])
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(
            workers, initializer=_init_spawned, initargs=(seed, max_output, large, time_cap)
        ) as pool:
            # the workers build their corpus first: time the fuzzing from the first batch back
            with bars:
                first = True
                for r in pool.imap_unordered(run_batch, _batches(count, batch)):
                    if first:
                        t0 = time.perf_counter() - r["batch_seconds"]
                        first = False
                    results.append(r)
                    bars.advance(r)
    wall = time.perf_counter() - t0
    return _merge(results, corpus, args, wall)


class _Bars:
    """A rich progress bar (or nothing) that shows the bug count as it goes."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total
        self.bugs = 0
        self.typed = 0
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]fuzz[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("bugs 0", total=total)

    def __enter__(self) -> _Bars:
        if self.enabled:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.__exit__(None, None, None)

    def advance(self, r: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for *_, outcome, n in r["counts"]:
            if outcome in BUGS:
                self.bugs += n
        done = r["bounds"][1] - r["bounds"][0]
        self._progress.update(self._task, advance=done, description=f"bugs {self.bugs}")


# -- reporting -----------------------------------------------------------------------------------------------
def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    m = doc["machine"]
    console.print(
        f"{doc['decodes']:,} decodes of mutated frames and containers, seed {doc['args']['seed']}, "
        f"max_output {doc['args']['max_output'] / MiB:.0f} MiB, {doc['corpus']['entries']} corpus entries; "
        f"{m['cpu']} ({m['cores']} cores), {m['date']}"
    )
    table = Table(title="outcomes by strategy")
    table.add_column("strategy")
    for o in OUTCOMES:
        table.add_column(o, justify="right")
    for key, row in doc["by"]["strategy"].items():
        table.add_row(key, *(f"{row[o]:,}" for o in OUTCOMES))
    table.add_row("[bold]all", *(f"[bold]{doc['totals'][o]:,}" for o in OUTCOMES))
    console.print(table)
    table = Table(title="outcomes by mutation")
    table.add_column("mutation")
    for o in OUTCOMES:
        table.add_column(o, justify="right")
    for key, row in doc["by"]["op"].items():
        table.add_row(key, *(f"{row[o]:,}" for o in OUTCOMES))
    console.print(table)
    table = Table(title="refusals (typed errors)")
    table.add_column("error")
    table.add_column("count", justify="right")
    for name, n in doc["typed_errors"].items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    table = Table(
        title=f"slowest decodes (cap {doc['time_cap_seconds']} s: {doc['over_time_cap_first_run']} above, "
        f"{doc['over_time_cap']} of them again when timed a second time)"
    )
    for col in ("seconds", "again", "#", "entry", "mutation", "route", "declared", "outcome"):
        table.add_column(col)
    for s in doc["slowest"][:8]:
        declared = "?" if s["declared"] is None else f"{s['declared']:,}"
        again = "" if s["retimed_seconds"] is None else f"{s['retimed_seconds']:.3f}"
        row = (str(s["index"]), s["entry"], s["op"], s["route"], declared, s["outcome"])
        table.add_row(f"{s['seconds']:.3f}", again, *row)
    console.print(table)
    rss = doc["rss"]
    table = Table(title=f"worker peak RSS (bound {rss['bound_bytes'] / MiB:.0f} MiB above the start)")
    cols = (
        "pid",
        "decodes",
        "start MiB",
        "peak MiB",
        "growth MiB",
        "within",
        "max start+ MiB",
        "max decode MiB",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for w in rss["workers"]:
        table.add_row(
            str(w["pid"]),
            f"{w['decodes']:,}",
            f"{w['start_rss'] / MiB:.0f}",
            f"{w['peak_rss'] / MiB:.0f}",
            f"{w['growth'] / MiB:.0f}",
            "yes" if w["within_bound"] else "[red]NO",
            f"{w['max_rss_before_decode'] / MiB:.0f}",
            f"{w['max_decode_growth'] / MiB:.1f}",
        )
    console.print(table)
    per = rss["per_decode"]
    if per["measured"]:
        top = per["max_growth_decode"]
        console.print(
            f"per decode: the largest growth was {per['max_growth'] / MiB:.1f} MiB (#{top['index']}, "
            f"{top['entry']}, declared {top['declared']}); {per['over_bound']} decodes above "
            f"{per['bound']}. 'max start+': the highest RSS a decode started from, above the worker's start "
            "(memory the allocator kept after earlier decodes)"
        )
    console.print(
        f"{doc['decodes_per_second']:,} decodes/s wall ({doc['decodes_per_core_second']:,}/s per busy core), "
        f"{doc['wall_seconds']} s; bugs (untyped + wrong): {doc['bugs']}, forged: {doc['totals']['forged']}"
    )
    for kind in ("untyped", "wrong", "forged", "over_memory"):
        for ex in doc["examples"][kind][:5]:
            console.print(f"[red]{kind}[/] #{ex['index']} {ex['entry']} {ex['op']}: {ex['detail']}")
            if "error" in ex:
                console.print(f"    {ex['error']}")


def replay(index: int, seed: int, max_output: int, large: bool) -> None:
    """Show mutation ``index`` and what decoding it does, with the traceback."""
    corpus = build_corpus(seed, large=large)
    m = mutation(corpus, seed, index, max_output)
    print(f"corpus {corpus.digest}; #{index}: {m.entry.name} ({m.entry.kind}), {m.op}: {m.detail}")
    print(f"route {m.route}, {len(m.blob)} bytes (original {len(m.entry.blob)}); head {m.blob[:48].hex()}")
    t0 = time.perf_counter()
    try:
        out = decode(corpus, m.entry, m.blob, m.route, max_output)
    except DwcpError as exc:
        print(f"typed after {time.perf_counter() - t0:.3f} s: {type(exc).__name__}: {exc}")
        return
    except Exception:
        traceback.print_exc()
        return
    print(f"decoded {len(out)} bytes after {time.perf_counter() - t0:.3f} s: {classify(m, out)}")


def _size(text: str) -> int:
    units = {"kib": KiB, "mib": MiB, "gib": 1 << 30, "k": KiB, "m": MiB, "g": 1 << 30}
    low = text.strip().lower()
    for suffix, mult in sorted(units.items(), key=lambda u: -len(u[0])):
        if low.endswith(suffix):
            return int(float(low[: -len(suffix)]) * mult)
    return int(low)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT, help="mutations to decode")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-output", type=_size, default=DEFAULT_MAX_OUTPUT, help="decoders' limit (64MiB)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="0: in this process")
    ap.add_argument("--time-cap", type=float, default=DEFAULT_TIME_CAP, help="seconds a decode may take")
    ap.add_argument("--batch", type=int, default=500, help="mutations per task")
    ap.add_argument("--small", action="store_true", help="leave out the 1-4 MiB corpus entries")
    ap.add_argument("--replay", type=int, metavar="I", help="show mutation I and its decode, then exit")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if args.replay is not None:
        replay(args.replay, args.seed, args.max_output, not args.small)
        return 0
    doc = fuzz(
        args.count,
        seed=args.seed,
        max_output=args.max_output,
        workers=args.workers,
        large=not args.small,
        time_cap=args.time_cap,
        batch=args.batch,
        progress=True,
    )
    print_report(doc)
    if not args.no_write:
        print(f"wrote {write('fuzz_frames', doc)}")
    return 1 if doc["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
