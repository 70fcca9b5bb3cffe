"""Payload families (DESIGN section 3), each generated deterministically from a seed.

These are the bytes the strategies are measured on: VM memory images made of the page kinds a real guest
has, the next pre-copy round of such an image, disk images made of file extents and their incremental
snapshots, database page files and WAL segments, JSON log batches and growing log files, already
compressed media and encrypted data. Every generator takes a :class:`numpy.random.Generator`, so a seed
fixes the bytes.

Content comes from :class:`ContentPools`: a few MiB per kind (text, machine code, heap structures,
deflate streams, table pages, log lines, WAL records), generated once from a seed and copied into
payloads at random offsets. A payload of any size then costs little more than its copy, and the pools
are several times larger than an AMST chunk, so a chunk sees the same slice twice only by chance.
"""

from __future__ import annotations

import json
import threading
import zlib

import numpy as np

__all__ = [
    "PAGE_SIZE",
    "ContentPools",
    "compressed_media",
    "database_pages",
    "database_update",
    "default_pools",
    "demo_payloads",
    "dirty_round",
    "disk_snapshot",
    "edit_version",
    "logs_json",
    "random_bytes",
    "text_words",
    "vm_disk",
    "vm_memory",
    "wal_segment",
]

PAGE_SIZE = 4096
U8 = np.uint8
MiB = 1 << 20

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more out up into do "
    "any your what some can about them time only new other could very just over also like than then "
    "memory page disk block snapshot replica backup stream buffer server client request response error "
    "warning info debug latency throughput bytes packet socket kernel process thread module function "
    "return self import class def value config user account order invoice status region cluster node"
).split()

# Common x86-64 instruction encodings (prologue, moves, calls, jumps, nops) for synthetic code pages.
_CODE_FRAGMENTS = [
    bytes.fromhex(h)
    for h in (
        "55 4889e5 4883ec20 488b45f8 488945f0 8b45fc 89c7 e8 c9c3 0f1f4000 660f1f440000 4885c0 7405 0f84 "
        "4c89e7 31c0 488d3d ff15 c3 90"
    ).split()
]
_WITH_OPERAND = {b"\xe8", b"\x0f\x84", b"\x48\x8d\x3d", b"\xff\x15"}


def _make_text(size: int, rng: np.random.Generator) -> bytes:
    weights = 1.0 / np.arange(1, len(_WORDS) + 1)
    weights /= weights.sum()
    count = size // 5 + 16
    picks = rng.choice(len(_WORDS), size=count, p=weights)
    breaks = rng.random(count) < 0.08
    words = np.array([w + " " for w in _WORDS])
    lines = np.array([w + "\n" for w in _WORDS])
    return "".join(np.where(breaks, lines[picks], words[picks]).tolist()).encode()[:size]


def _make_code(size: int, rng: np.random.Generator) -> bytes:
    out = bytearray()
    frags = rng.integers(0, len(_CODE_FRAGMENTS), size=size)
    operands = rng.integers(-(1 << 20), 1 << 20, size=size)
    i = 0
    while len(out) < size:
        frag = _CODE_FRAGMENTS[frags[i]]
        out += frag
        if frag in _WITH_OPERAND:
            out += int(operands[i]).to_bytes(4, "little", signed=True)
        i += 1
    return bytes(out[:size])


def _make_heap(size: int, rng: np.random.Generator) -> bytes:
    """8-byte fields: pointers into a few arenas, small integers, flags, zero padding."""
    n = size // 8
    kinds = rng.integers(0, 4, size=n)
    arenas = np.uint64(0x00007F0000000000) + (
        rng.integers(0, 1 << 12, size=n // 512 + 1).astype(np.uint64) << 24
    )
    arena = np.repeat(arenas, 512)[:n]
    ptrs = arena + (rng.integers(0, 1 << 20, size=n).astype(np.uint64) << np.uint64(3))
    words = np.zeros(n, dtype=np.uint64)
    words = np.where(kinds == 0, ptrs, words)
    words = np.where(kinds == 1, rng.integers(0, 1000, size=n).astype(np.uint64), words)
    words = np.where(kinds == 2, np.uint64(0x0000000100000001), words)
    return words.tobytes()


def _make_logs(size: int, rng: np.random.Generator) -> bytes:
    services = ["api", "auth", "billing", "search", "storage", "gateway"]
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    paths = ["/v1/items", "/v1/users/{id}", "/v1/orders", "/healthz", "/v2/search", "/v1/blobs/{id}"]
    statuses = [200, 200, 200, 201, 204, 304, 400, 404, 500]
    n = size // 180 + 1
    ts = 1_764_000_000.0 + np.cumsum(rng.exponential(0.02, n))
    lv, sv = rng.integers(0, len(levels), n), rng.integers(0, len(services), n)
    host, trace = rng.integers(1, 64, n), rng.integers(0, 2**63, n, dtype=np.int64)
    post, path, ids = rng.random(n) < 0.3, rng.integers(0, len(paths), n), rng.integers(1, 10**6, n)
    st, lat, nbytes = (
        rng.integers(0, len(statuses), n),
        rng.lognormal(2.0, 1.0, n),
        rng.integers(0, 1 << 20, n),
    )
    lines = []
    for i in range(n):
        rec = {
            "ts": round(float(ts[i]), 6),
            "level": levels[lv[i]],
            "service": services[sv[i]],
            "host": f"node-{host[i]:02d}",
            "trace_id": f"{int(trace[i]):016x}",
            "method": "POST" if post[i] else "GET",
            "path": paths[path[i]].replace("{id}", str(int(ids[i]))),
            "status": statuses[st[i]],
            "latency_ms": round(float(lat[i]), 3),
            "bytes": int(nbytes[i]),
        }
        lines.append(json.dumps(rec, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def _make_media(size: int, rng: np.random.Generator, text: bytes) -> bytes:
    out = bytearray()
    frame = 0
    while len(out) < size:
        start = int(rng.integers(0, len(text) - 256 * 1024))
        body = zlib.compress(text[start : start + int(rng.integers(64, 256)) * 1024], 6)
        out += b"MOOF" + frame.to_bytes(4, "big") + len(body).to_bytes(4, "big") + bytes(4) + body
        frame += 1
    return bytes(out[:size])


def _make_db(size: int, rng: np.random.Generator, text: bytes, first_page: int = 0) -> bytes:
    """4 KiB pages: a header (page number, LSN, row count) and fixed-width 128-byte rows."""
    npages = max(1, -(-size // PAGE_SIZE))
    per_page = (PAGE_SIZE - _PAGE_HEADER) // _RECORD
    n = npages * per_page
    rows = np.zeros((n, _RECORD), dtype=U8)
    rows[:, 0:8] = (
        np.arange(first_page * per_page, first_page * per_page + n, dtype=np.int64).view(U8).reshape(n, 8)
    )
    stamp = (1_700_000_000 + np.cumsum(rng.integers(0, 30, n))).astype(np.int64)
    rows[:, 8:16] = stamp.view(U8).reshape(n, 8)
    rows[:, 16:24] = rng.integers(0, 10_000, n).astype(np.int64).view(U8).reshape(n, 8)
    rows[:, 24:32] = (rng.random(n) * 1000).astype(np.float64).view(U8).reshape(n, 8)
    starts = rng.integers(0, len(text) - 48, n)
    src = np.frombuffer(text, dtype=U8)
    rows[:, 32:80] = src[starts[:, None] + np.arange(48)]
    rows[:, 80:84] = rng.integers(0, 4, n).astype(np.int32).view(U8).reshape(n, 4)
    pages = np.zeros((npages, PAGE_SIZE), dtype=U8)
    pages[:, _PAGE_HEADER : _PAGE_HEADER + per_page * _RECORD] = rows.reshape(npages, -1)
    header = np.zeros((npages, 4), dtype=np.int64)
    header[:, 0] = np.arange(first_page, first_page + npages)
    header[:, 1] = rng.integers(1, 1 << 40, npages)
    header[:, 2] = per_page
    pages[:, :_PAGE_HEADER] = header.view(U8).reshape(npages, _PAGE_HEADER)
    return pages.reshape(-1)[:size].tobytes()


def _make_wal(size: int, rng: np.random.Generator) -> bytes:
    n = max(1, size // 64 + 1)
    recs = np.zeros((n, 64), dtype=U8)
    recs[:, 0:8] = (np.arange(n, dtype=np.int64) * 64 + int(rng.integers(0, 1 << 40))).view(U8).reshape(n, 8)
    recs[:, 8:12] = rng.integers(0, 8, n).astype(np.int32).view(U8).reshape(n, 4)
    recs[:, 12:20] = rng.integers(0, 1 << 24, n).astype(np.int64).view(U8).reshape(n, 8)
    images = rng.integers(0, 256, (n, 32), dtype=U8)
    images[rng.random(n) < 0.5] = 0  # half the records carry no row image
    recs[:, 20:52] = images
    recs[:, 52:56] = rng.integers(0, 1 << 31, n).astype(np.int32).view(U8).reshape(n, 4)
    return recs.reshape(-1)[:size].tobytes()


_RECORD = 128
_PAGE_HEADER = 32


class ContentPools:
    """Per-kind content pools generated once from a seed (about 40 MiB, a second or two to build)."""

    def __init__(self, seed: int = 0, *, pool_bytes: int = 8 * MiB) -> None:
        rng = np.random.default_rng([seed, 0xD0C])
        self.seed = seed
        self.text = _make_text(pool_bytes, rng)
        self.code = _make_code(pool_bytes // 4, rng)
        self.heap = _make_heap(pool_bytes // 4, rng)
        self.logs = _make_logs(pool_bytes, rng)
        self.media = _make_media(pool_bytes, rng, self.text)
        self.db = _make_db(pool_bytes // 2, rng, self.text)
        self.wal = _make_wal(pool_bytes // 2, rng)


_pools_lock = threading.Lock()
_pools: dict[int, ContentPools] = {}


def default_pools(seed: int = 0) -> ContentPools:
    """The pools for ``seed``, built once per process."""
    with _pools_lock:
        if seed not in _pools:
            _pools[seed] = ContentPools(seed)
        return _pools[seed]


def _fill(pool: bytes, size: int, rng: np.random.Generator, *, align: bytes | None = None) -> bytes:
    """``size`` bytes of pool slices taken at random offsets (optionally starting after ``align``)."""
    if size <= 0:
        return b""
    pieces = []
    total = 0
    span = min(len(pool) // 2, max(size, 64 * 1024))
    while total < size:
        start = int(rng.integers(0, len(pool) - span + 1))
        if align is not None:
            nl = pool.find(align, start, start + 4096)
            start = nl + 1 if nl >= 0 else start
        piece = pool[start : start + min(span, size - total)]
        pieces.append(piece)
        total += len(piece)
    return b"".join(pieces)


def _copy_pages(out: np.ndarray, pages: np.ndarray, pool: bytes, rng: np.random.Generator) -> None:
    """Fill the given rows of ``out`` (npages × 4096) with pool slices at random byte offsets."""
    if pages.size == 0:
        return
    src = np.frombuffer(pool, dtype=U8)
    starts = rng.integers(0, len(pool) - PAGE_SIZE + 1, size=pages.size)
    for p, s in zip(pages.tolist(), starts.tolist(), strict=True):
        out[p] = src[s : s + PAGE_SIZE]


def _page_kinds(npages: int, probs: np.ndarray, rng: np.random.Generator, run_p: float) -> np.ndarray:
    """A kind per page, in runs (allocations and mapped files come in contiguous pages)."""
    nruns = max(8, int(npages * run_p * 2) + 8)
    lengths = rng.geometric(run_p, size=nruns)
    while int(lengths.sum()) < npages:
        lengths = np.concatenate([lengths, rng.geometric(run_p, size=nruns)])
    kinds = rng.choice(len(probs), size=lengths.size, p=probs)
    return np.repeat(kinds, lengths)[:npages]


# -- families -----------------------------------------------------------------------------------------
def random_bytes(size: int, rng: np.random.Generator) -> bytes:
    """Incompressible bytes: encrypted data."""
    return rng.integers(0, 256, size=size, dtype=U8).tobytes()


def text_words(size: int, rng: np.random.Generator, pools: ContentPools | None = None) -> bytes:
    """English-like text with line breaks."""
    return _fill((pools or default_pools()).text, size, rng)


def logs_json(size: int, rng: np.random.Generator, pools: ContentPools | None = None) -> bytes:
    """A batch of JSON log lines as a service ships them (starting at a line boundary)."""
    return _fill((pools or default_pools()).logs, size, rng, align=b"\n")


def compressed_media(size: int, rng: np.random.Generator, pools: ContentPools | None = None) -> bytes:
    """Already-compressed bytes: deflate streams in a container with small frame headers."""
    return _fill((pools or default_pools()).media, size, rng)


def wal_segment(size: int, rng: np.random.Generator, pools: ContentPools | None = None) -> bytes:
    """A write-ahead log segment: record headers with LSNs and before/after images of row fields."""
    return _fill((pools or default_pools()).wal, size, rng)


def database_pages(size: int, rng: np.random.Generator, pools: ContentPools | None = None) -> bytes:
    """A table file of 4 KiB pages holding fixed-width rows."""
    p = pools or default_pools()
    npages = max(1, -(-size // PAGE_SIZE))
    out = np.zeros((npages, PAGE_SIZE), dtype=U8)
    pool = np.frombuffer(p.db, dtype=U8).reshape(-1, PAGE_SIZE)
    out[:] = pool[rng.integers(0, pool.shape[0], npages)]
    out[:, 0:8] = np.arange(npages, dtype=np.int64).view(U8).reshape(npages, 8)  # page numbers in order
    return out.reshape(-1)[:size].tobytes()


def vm_memory(
    size: int,
    rng: np.random.Generator,
    pools: ContentPools | None = None,
    *,
    mix: dict[str, float] | None = None,
) -> bytes:
    """A guest memory image: zero, code, text, heap and random pages, in runs as a real guest has them."""
    p = pools or default_pools()
    mix = mix or {"zero": 0.30, "code": 0.15, "text": 0.15, "heap": 0.30, "random": 0.10}
    names = list(mix)
    probs = np.array([mix[k] for k in names], dtype=float)
    probs /= probs.sum()
    npages = max(1, -(-size // PAGE_SIZE))
    kinds = _page_kinds(npages, probs, rng, run_p=0.15)
    out = np.zeros((npages, PAGE_SIZE), dtype=U8)
    sources = {"code": p.code, "text": p.text, "heap": p.heap}
    for k, name in enumerate(names):
        pages = np.flatnonzero(kinds == k)
        if name in sources:
            _copy_pages(out, pages, sources[name], rng)
        elif name == "random" and pages.size:
            out[pages] = rng.integers(0, 256, size=(pages.size, PAGE_SIZE), dtype=U8)
    return out.reshape(-1)[:size].tobytes()


_EXTENTS = ("text", "code", "media", "db", "zero")
_EXTENT_PROBS = np.array([0.25, 0.20, 0.20, 0.10, 0.25])


def vm_disk(size: int, rng: np.random.Generator, pools: ContentPools | None = None) -> bytes:
    """A disk image: file extents (text, binaries, compressed archives, database files) and free space."""
    p = pools or default_pools()
    nblocks = max(1, -(-size // PAGE_SIZE))
    kinds = _page_kinds(nblocks, _EXTENT_PROBS, rng, run_p=0.05)
    out = np.zeros((nblocks, PAGE_SIZE), dtype=U8)
    for k, name in enumerate(_EXTENTS):
        if name != "zero":
            _copy_pages(out, np.flatnonzero(kinds == k), getattr(p, name), rng)
    return out.reshape(-1)[:size].tobytes()


# -- versions ------------------------------------------------------------------------------------------
def dirty_round(
    image: bytes,
    rng: np.random.Generator,
    *,
    dirty_fraction: float = 0.05,
    max_edit: int = 64,
    rewrite_fraction: float = 0.0,
) -> bytes:
    """The next pre-copy round of ``image``: ``dirty_fraction`` of its pages written to since.

    Most dirtied pages get small edits (1..``max_edit`` bytes, a counter or pointer update);
    ``rewrite_fraction`` of them are rewritten completely (a freed and reused page).
    """
    npages = len(image) // PAGE_SIZE
    out = bytearray(image)
    if npages == 0:
        if out:
            at = int(rng.integers(0, len(out)))
            out[at] = (out[at] + 1) % 256
        return bytes(out)
    count = max(1, round(dirty_fraction * npages))
    pages = rng.choice(npages, size=min(count, npages), replace=False)
    rewrite = rng.random(pages.size) < rewrite_fraction
    lengths = rng.integers(1, max_edit + 1, size=pages.size)
    offsets = rng.integers(0, PAGE_SIZE, size=pages.size)
    noise = rng.integers(0, 256, size=int(lengths.sum()) + PAGE_SIZE * int(rewrite.sum()), dtype=U8).tobytes()
    pos = 0
    for p, rw, n, off in zip(
        pages.tolist(), rewrite.tolist(), lengths.tolist(), offsets.tolist(), strict=True
    ):
        base = p * PAGE_SIZE
        if rw:
            out[base : base + PAGE_SIZE] = noise[pos : pos + PAGE_SIZE]
            pos += PAGE_SIZE
            continue
        at = base + min(off, PAGE_SIZE - n)
        out[at : at + n] = noise[pos : pos + n]
        pos += n
    return bytes(out)


def disk_snapshot(
    image: bytes,
    rng: np.random.Generator,
    pools: ContentPools | None = None,
    *,
    change_fraction: float = 0.03,
) -> bytes:
    """The next incremental snapshot of a disk: blocks edited in place, files rewritten, new files."""
    p = pools or default_pools()
    out = bytearray(image)
    nblocks = len(image) // PAGE_SIZE
    if nblocks == 0:
        return edit_version(image, rng, p, edits=3)
    budget = max(1, round(change_fraction * nblocks))
    done = 0
    while done < budget:
        block = int(rng.integers(0, nblocks))
        action = rng.random()
        start = block * PAGE_SIZE
        if action < 0.6:  # an in-place edit of a block (metadata, a record, a counter)
            n = int(rng.integers(1, 256))
            at = start + int(rng.integers(0, PAGE_SIZE - n + 1))
            out[at : at + n] = rng.integers(0, 256, n, dtype=U8).tobytes()
            done += 1
        elif action < 0.85:  # a file rewritten: an extent whose content shifted after an insertion
            span = min(int(rng.geometric(0.1)), nblocks - block)
            extent = bytes(out[start : start + span * PAGE_SIZE])
            cut = int(rng.integers(0, max(1, len(extent))))
            inserted = _fill(p.text, int(rng.integers(16, 400)), rng)
            out[start : start + len(extent)] = (extent[:cut] + inserted + extent[cut:])[: len(extent)]
            done += span
        else:  # a new file written into free or reused blocks
            span = min(int(rng.geometric(0.1)), nblocks - block)
            out[start : start + span * PAGE_SIZE] = _fill(p.text, span * PAGE_SIZE, rng)
            done += span
    return bytes(out)


def database_update(
    table: bytes,
    rng: np.random.Generator,
    pools: ContentPools | None = None,
    *,
    update_fraction: float = 0.02,
    append: bool = True,
) -> bytes:
    """The table after a batch of transactions: rows updated in place (page LSNs bumped), rows appended
    (unless ``append`` is false: the table reuses space its vacuum freed)."""
    out = bytearray(table)
    npages = len(table) // PAGE_SIZE
    per_page = (PAGE_SIZE - _PAGE_HEADER) // _RECORD
    if npages == 0:
        return edit_version(table, rng, pools, edits=2)
    count = max(1, round(update_fraction * npages * per_page))
    pages = rng.integers(0, npages, count)
    slots = rng.integers(0, per_page, count)
    values = rng.integers(0, 256, (count, 16), dtype=U8)
    lsns = rng.integers(1, 1 << 40, count)
    for i, (pg, r) in enumerate(zip(pages.tolist(), slots.tolist(), strict=True)):
        row = pg * PAGE_SIZE + _PAGE_HEADER + r * _RECORD
        out[row + 16 : row + 32] = values[i].tobytes()
        out[pg * PAGE_SIZE + 8 : pg * PAGE_SIZE + 16] = int(lsns[i]).to_bytes(8, "little")
    appended = int(rng.integers(0, max(1, npages // 50) + 1)) if append else 0
    if appended:  # inserts fill new pages at the end of the file
        out += database_pages(appended * PAGE_SIZE, rng, pools)
    return bytes(out)


def edit_version(
    data: bytes, rng: np.random.Generator, pools: ContentPools | None = None, *, edits: int = 10
) -> bytes:
    """A new version of a file: in-place replacements, insertions and deletions (offsets shift)."""
    p = pools or default_pools()
    out = bytearray(data)
    text = data[:4096].count(b"\n") > 20
    for _ in range(edits):
        n = int(rng.integers(1, 200))
        new = _fill(p.text, n, rng) if text else random_bytes(n, rng)
        if not out:
            out += new
            continue
        at = int(rng.integers(0, len(out)))
        if text:  # line-aware: an edit starts at a line boundary
            nl = out.rfind(b"\n", 0, at)
            at = nl + 1 if nl >= 0 else 0
        kind = rng.random()
        if kind < 0.4:
            out[at : at + n] = new
        elif kind < 0.75:
            out[at:at] = new
        else:
            del out[at : at + n]
    return bytes(out)


def demo_payloads(seed: int = 0) -> list[tuple[str, bytes, bytes | None]]:
    """A few payloads of each family for the demo: (name, payload, baseline or None)."""
    rng = np.random.default_rng(seed)
    pools = default_pools(seed)
    image = vm_memory(4 << 20, rng, pools)
    round_ = dirty_round(image, rng, dirty_fraction=0.05)
    logs = logs_json(256 << 10, rng, pools)
    logs_next = logs[len(logs) // 2 :] + logs_json(len(logs) - len(logs) // 2, rng, pools)
    return [
        ("vm_memory 4 MiB", image, None),
        ("vm_memory_round 4 MiB, 5 % dirty", round_, image),
        ("logs_json 256 KiB", logs, None),
        ("logs_json 256 KiB, rotated + appended", logs_next, logs),
        ("media 1 MiB", compressed_media(1 << 20, rng, pools), None),
        ("encrypted 1 MiB", random_bytes(1 << 20, rng), None),
        ("logs_json 8 KiB", logs_json(8 << 10, rng, pools), None),
    ]
