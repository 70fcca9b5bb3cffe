"""Fuzzing the decoders within CI's time; ``bench/fuzz_frames.py`` runs the long campaign.

Mutated frames and containers of every strategy (bytes set, cut, extended, spliced; varint and header
fields rewritten; container chunks removed, duplicated, swapped, replaced) and random bytes go through
``Registry.decode``, ``PayloadCodec.decode`` and ``PayloadCodec.iter_decode``, handed over as ``bytes``,
``bytearray`` or a ``memoryview`` into a larger buffer. Each must decode to exactly the original it came
from or raise a :class:`DwcpError`: never another exception (it propagates and fails the test), never
other bytes. The corpus is the fuzzer's, without its 2-5 MiB entries.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwcp_selector.errors import DwcpError
from dwcp_selector.strategies.frame import MAGIC
from dwcp_selector.strategies.payload import CONTAINER_MAGIC

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz_frames  # noqa: E402  (a bench module, not a package)

#: The decoders' limit here: declared lengths are rewritten up to it, so it is what one decode may allocate.
MAX_OUTPUT = 16 << 20
#: Examples per test: a few seconds in all (more under ``HYPOTHESIS_PROFILE=fuzz``).
EXAMPLES = max(500, settings().max_examples)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INDEX = st.integers(min_value=0, max_value=1 << 30)


@functools.cache
def _corpus() -> fuzz_frames.Corpus:
    return fuzz_frames.build_corpus(seed=3, large=False)


def _entry(index: int, *, kind: str | None = None) -> fuzz_frames.Entry:
    entries = [e for e in _corpus().entries if kind is None or e.kind == kind]
    return entries[index % len(entries)]


def _route(entry: fuzz_frames.Entry, pick: int, buffer: str) -> str:
    paths = sorted(set(fuzz_frames.routes(entry)))
    return f"{paths[pick % len(paths)]}@{buffer}"


def _original_or_refused(
    entry: fuzz_frames.Entry, blob: bytes, route: str, sources: list[fuzz_frames.Entry] | None = None
) -> None:
    """Decoding ``blob`` as ``entry`` gives one of the sources' originals exactly, or a typed refusal."""
    try:
        out = fuzz_frames.decode(_corpus(), entry, blob, route, MAX_OUTPUT)
    except DwcpError:
        return
    sources = sources if sources is not None else [entry]
    assert any(out == s.original for s in sources), (
        f"{entry.name} via {route}: {len(blob)} input bytes decoded to {len(out)} bytes that are not the "
        f"original (self-verifying: {fuzz_frames.self_verifies(blob, out)})"
    )


@FUZZ
@given(
    index=INDEX,
    edits=st.lists(st.tuples(INDEX, st.integers(0, 255)), min_size=1, max_size=6),
    near_header=st.booleans(),
    pick=INDEX,
    buffer=st.sampled_from(fuzz_frames.BUFFERS),
)
def test_byte_edits_decode_to_the_original_or_are_refused(
    index: int, edits: list[tuple[int, int]], near_header: bool, pick: int, buffer: str
) -> None:
    entry = _entry(index)
    buf = bytearray(entry.blob)
    for pos, value in edits:
        start, end = entry.chunks[pos % len(entry.chunks)]
        span = min(64, end - start) if near_header else len(buf)
        buf[(start + pos % span) if near_header else pos % span] = value
    _original_or_refused(entry, bytes(buf), _route(entry, pick, buffer))


@FUZZ
@given(
    a=INDEX,
    b=INDEX,
    cut_a=INDEX,
    cut_b=INDEX,
    tail=st.binary(max_size=32),
    same_strategy=st.booleans(),
    pick=INDEX,
    buffer=st.sampled_from(fuzz_frames.BUFFERS),
)
def test_cuts_extensions_and_splices_decode_to_a_source_or_are_refused(
    a: int, b: int, cut_a: int, cut_b: int, tail: bytes, same_strategy: bool, pick: int, buffer: str
) -> None:
    first = _entry(a)
    corpus = _corpus()
    if same_strategy:
        same = corpus.by_strategy[first.strategy]
        second = corpus.entries[same[b % len(same)]]
    else:
        second = _entry(b)
    blob = first.blob[: cut_a % (len(first.blob) + 1)] + second.blob[cut_b % (len(second.blob) + 1) :] + tail
    _original_or_refused(first, blob, _route(first, pick, buffer), [first, second])


@FUZZ
@given(
    index=INDEX,
    which=INDEX,
    value=st.one_of(
        st.integers(0, MAX_OUTPUT + 1),
        st.integers(0, 1 << 70),
        st.sampled_from([0, 1, 7, 8, 4095, 4096, 4097, 1 << 20, (16 << 20) + 1, 64 << 20]),
    ),
    width=st.integers(0, 11),
    raw=st.binary(min_size=1, max_size=16),
    pick=INDEX,
    buffer=st.sampled_from(fuzz_frames.BUFFERS),
)
def test_field_rewrites_decode_to_the_original_or_are_refused(
    index: int, which: int, value: int, width: int, raw: bytes, pick: int, buffer: str
) -> None:
    """Any field (header, extension, page set, segment records, zstd headers) set to edge values: varints
    to lengths and offsets around every limit, minimal or over-long; fixed fields to arbitrary bytes."""
    entry = _entry(index)
    fld = entry.fields[which % len(entry.fields)]
    if fld.is_varint:
        new = fuzz_frames.varint_bytes(value, width)
    else:
        new = (raw * (1 + (fld.end - fld.start) // len(raw)))[: fld.end - fld.start]
    blob = entry.blob[: fld.start] + new + entry.blob[fld.end :]
    _original_or_refused(entry, blob, _route(entry, pick, buffer))


@FUZZ
@given(
    index=INDEX,
    op=st.sampled_from(["remove", "duplicate", "swap", "replace"]),
    i=INDEX,
    j=INDEX,
    donor=INDEX,
    fix=st.booleans(),
    pick=INDEX,
    buffer=st.sampled_from(fuzz_frames.BUFFERS),
)
def test_container_chunk_edits_decode_to_the_original_or_are_refused(
    index: int, op: str, i: int, j: int, donor: int, fix: bool, pick: int, buffer: str
) -> None:
    """Chunks removed, duplicated, swapped or replaced by another payload's (the header's chunk count and
    length optionally made to agree): the payload checksum and the per-chunk checks refuse them all."""
    entry = _entry(index, kind="container")
    other = _entry(donor, kind="container")
    start, end = other.chunks[donor % len(other.chunks)]
    blob = fuzz_frames.edit_chunks(entry.blob, entry, op, i, j, other.blob[start:end], fix)
    _original_or_refused(entry, blob, _route(entry, pick, buffer), [entry, other])


@FUZZ
@given(
    prefix=st.sampled_from(
        [
            b"",
            MAGIC,
            MAGIC + b"\x02",
            MAGIC + b"\x02\x00\x00",
            MAGIC + b"\x02\x03\x01",
            CONTAINER_MAGIC + b"\x01\x02\x00",
        ]
    ),
    data=st.binary(max_size=600),
    buffer=st.sampled_from(fuzz_frames.BUFFERS),
)
def test_random_bytes_are_refused(prefix: bytes, data: bytes, buffer: str) -> None:
    """Random input through every decoder: a typed refusal, or (by chance, e.g. an empty crc32c frame)
    bytes that verify against the input's own checksum."""
    corpus = _corpus()
    blob = prefix + data
    view = fuzz_frames.as_buffer(blob, buffer)
    decoders: list[Callable[[], bytearray]] = [
        lambda: corpus.registry.decode(view, max_output=MAX_OUTPUT),
        lambda: corpus.codec.decode(view, max_output=MAX_OUTPUT),
        lambda: bytearray(b"".join(corpus.codec.iter_decode(view, max_output=MAX_OUTPUT))),
    ]
    for decoder in decoders:
        try:
            out = decoder()
        except DwcpError:
            continue
        assert fuzz_frames.self_verifies(blob, out), f"random input decoded to {len(out)} unverified bytes"


def test_every_corpus_entry_decodes_along_every_route() -> None:
    """The unmutated corpus is valid: what the fuzzing compares with is right."""
    corpus = _corpus()
    strategies = {e.strategy for e in corpus.entries}
    assert strategies == {"none", "lz4", "zstd", "hde"}
    for entry in corpus.entries:
        for route in fuzz_frames.routes(entry):
            for buffer in fuzz_frames.BUFFERS:
                out = fuzz_frames.decode(corpus, entry, entry.blob, f"{route}@{buffer}", MAX_OUTPUT)
                assert out == entry.original, (entry.name, route, buffer)


def test_fuzzer_core_finds_no_wrong_output_and_no_untyped_error() -> None:
    """The bench's own loop, for 2,000 mutations in this process."""
    doc = fuzz_frames.fuzz(2000, seed=11, max_output=MAX_OUTPUT, workers=0, large=False, corpus=_corpus())
    totals = doc["totals"]
    assert doc["decodes"] == 2000
    assert totals["untyped"] == 0, doc["examples"]["untyped"][:3]
    assert totals["wrong"] == 0, doc["examples"]["wrong"][:3]
    assert totals["forged"] == 0, doc["examples"]["forged"][:3]
    assert totals["typed"] > 1500  # almost every mutation is refused...
    assert doc["by"]["op"]["noop"]["identical"] == sum(doc["by"]["op"]["noop"].values())  # ...none wrongly
    assert set(doc["by"]["strategy"]) == {"none", "lz4", "zstd", "hde"}
