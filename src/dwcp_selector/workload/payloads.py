"""Payload families (DESIGN section 3), each generated deterministically from a seed.

These are the bytes the strategies are measured on: VM memory images made of the page kinds a real guest
has, the next pre-copy round of such an image, JSON log batches, already-compressed media and random
(encrypted) data. Every generator takes a :class:`numpy.random.Generator`, so a seed fixes the bytes.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

__all__ = [
    "PAGE_SIZE",
    "compressed_media",
    "demo_payloads",
    "dirty_round",
    "logs_json",
    "random_bytes",
    "text_words",
    "vm_memory",
]

PAGE_SIZE = 4096

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more out up into do "
    "any your what some can about them time only new other could very just over also like than then "
    "memory page disk block snapshot replica backup stream buffer server client request response error "
    "warning info debug latency throughput bytes packet socket kernel process thread module function"
).split()

# Common x86-64 instruction encodings (prologue, moves, calls, jumps, nops) for synthetic code pages.
_CODE_FRAGMENTS = [
    bytes.fromhex(h)
    for h in (
        "55",
        "4889e5",
        "4883ec20",
        "488b45f8",
        "488945f0",
        "8b45fc",
        "89c7",
        "e8",
        "c9c3",
        "0f1f4000",
        "660f1f440000",
        "4885c0",
        "7405",
        "0f84",
        "4c89e7",
        "31c0",
        "488d3d",
        "ff15",
        "c3",
        "90",
    )
]


def random_bytes(size: int, rng: np.random.Generator) -> bytes:
    """Incompressible bytes: encrypted data."""
    return rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()


def text_words(size: int, rng: np.random.Generator) -> bytes:
    """English-like text from a small vocabulary with a Zipf-like frequency."""
    weights = 1.0 / np.arange(1, len(_WORDS) + 1)
    weights /= weights.sum()
    count = size // 4 + 16
    picks = rng.choice(len(_WORDS), size=count, p=weights)
    out = " ".join(_WORDS[i] for i in picks).encode()
    while len(out) < size:
        out += b" " + out
    return out[:size]


def logs_json(size: int, rng: np.random.Generator) -> bytes:
    """A batch of JSON log lines as a service would ship them."""
    lines: list[bytes] = []
    total = 0
    t = 1_764_000_000.0 + float(rng.integers(0, 10_000_000))
    services = ["api", "auth", "billing", "search", "storage", "gateway"]
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    paths = ["/v1/items", "/v1/users/{id}", "/v1/orders", "/healthz", "/v2/search", "/v1/blobs/{id}"]
    while total < size:
        t += float(rng.exponential(0.02))
        rec = {
            "ts": round(t, 6),
            "level": levels[int(rng.integers(0, len(levels)))],
            "service": services[int(rng.integers(0, len(services)))],
            "host": f"node-{int(rng.integers(1, 64)):02d}",
            "trace_id": f"{int(rng.integers(0, 2**63)):016x}",
            "method": "GET" if rng.random() < 0.7 else "POST",
            "path": paths[int(rng.integers(0, len(paths)))].replace("{id}", str(int(rng.integers(1, 10**6)))),
            "status": int(rng.choice([200, 200, 200, 201, 204, 304, 400, 404, 500])),
            "latency_ms": round(float(rng.lognormal(2.0, 1.0)), 3),
            "bytes": int(rng.integers(0, 1 << 20)),
        }
        line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def _code_page(rng: np.random.Generator) -> bytes:
    out = bytearray()
    while len(out) < PAGE_SIZE:
        frag = _CODE_FRAGMENTS[int(rng.integers(0, len(_CODE_FRAGMENTS)))]
        out += frag
        if frag in (b"\xe8", b"\x0f\x84", b"\x48\x8d\x3d", b"\xff\x15"):
            out += int(rng.integers(-(1 << 20), 1 << 20)).to_bytes(4, "little", signed=True)
    return bytes(out[:PAGE_SIZE])


def _heap_page(rng: np.random.Generator) -> bytes:
    # Structures of 8-byte fields: pointers into a few arenas, small integers, flags, zero padding.
    words = np.zeros(PAGE_SIZE // 8, dtype=np.uint64)
    kinds = rng.integers(0, 4, size=words.size)
    arena = np.uint64(0x00007F0000000000) + np.uint64(int(rng.integers(0, 1 << 12)) << 24)
    ptrs = arena + (rng.integers(0, 1 << 20, size=words.size).astype(np.uint64) << np.uint64(3))
    words[kinds == 0] = ptrs[kinds == 0]
    words[kinds == 1] = rng.integers(0, 1000, size=int((kinds == 1).sum())).astype(np.uint64)
    words[kinds == 2] = np.uint64(0x0000000100000001)
    return words.tobytes()


def vm_memory(size: int, rng: np.random.Generator, *, mix: dict[str, float] | None = None) -> bytes:
    """A guest memory image: zero, code, text, heap and random pages, in runs as a real guest has them."""
    mix = mix or {"zero": 0.30, "code": 0.15, "text": 0.15, "heap": 0.30, "random": 0.10}
    kinds = list(mix)
    probs = np.array([mix[k] for k in kinds], dtype=float)
    probs /= probs.sum()
    npages = -(-size // PAGE_SIZE)
    out = bytearray()
    text_pool = text_words(64 * PAGE_SIZE, rng)
    code_pool = b"".join(_code_page(rng) for _ in range(64))
    while len(out) < npages * PAGE_SIZE:
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        run = int(rng.geometric(0.15))  # pages of a kind come in runs (allocations, mapped files)
        for _ in range(run):
            if kind == "zero":
                out += bytes(PAGE_SIZE)
            elif kind == "code":
                start = int(rng.integers(0, len(code_pool) - PAGE_SIZE))
                out += code_pool[start : start + PAGE_SIZE]
            elif kind == "text":
                start = int(rng.integers(0, len(text_pool) - PAGE_SIZE))
                out += text_pool[start : start + PAGE_SIZE]
            elif kind == "heap":
                out += _heap_page(rng)
            else:
                out += random_bytes(PAGE_SIZE, rng)
    return bytes(out[:size])


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
        return bytes(out)
    count = max(1, round(dirty_fraction * npages))
    pages = rng.choice(npages, size=min(count, npages), replace=False)
    for p in pages:
        base = int(p) * PAGE_SIZE
        if rng.random() < rewrite_fraction:
            out[base : base + PAGE_SIZE] = random_bytes(PAGE_SIZE, rng)
            continue
        length = int(rng.integers(1, max_edit + 1))
        at = base + int(rng.integers(0, PAGE_SIZE - length + 1))
        out[at : at + length] = random_bytes(length, rng)
    return bytes(out)


def compressed_media(size: int, rng: np.random.Generator) -> bytes:
    """Already-compressed bytes (a deflate stream of text), as images, video and archives are."""
    out = bytearray()
    while len(out) < size:
        out += zlib.compress(text_words(256 * 1024, rng), 9)
    return bytes(out[:size])


def demo_payloads(seed: int = 0) -> list[tuple[str, bytes, bytes | None]]:
    """A few payloads of each family for the demo: (name, payload, baseline or None)."""
    rng = np.random.default_rng(seed)
    image = vm_memory(4 << 20, rng)
    round_ = dirty_round(image, rng, dirty_fraction=0.05)
    logs = logs_json(256 << 10, rng)
    logs_next = logs[: len(logs) // 2] + logs_json(len(logs) - len(logs) // 2, rng)
    return [
        ("vm_memory 4 MiB", image, None),
        ("vm_memory_round 4 MiB, 5 % dirty", round_, image),
        ("logs_json 256 KiB", logs, None),
        ("logs_json 256 KiB, half new", logs_next, logs),
        ("media 1 MiB", compressed_media(1 << 20, rng), None),
        ("encrypted 1 MiB", random_bytes(1 << 20, rng), None),
        ("logs_json 8 KiB", logs_json(8 << 10, rng), None),
    ]
