"""Run every offered strategy on a payload for real and price the results (DESIGN section 2).

This is where labels come from: each strategy encodes the payload chunk by chunk (as AMST would send it),
the frames are decoded and compared with the original, and the encode and decode CPU seconds are taken
from the thread's CPU clock. Every payload is measured more than once and the least time kept, so a
scheduler hiccup does not flip a label; payloads of a chunk or more are measured in rounds that
interleave the strategies (``measure_strategies``) and keep each chunk's least time, so a host whose
speed flips between two modes within milliseconds (seen on a shared 2-core EPYC: lz4 600 against 900
MB/s, pure Python 11.5 against 20 M ops/s) slows a chunk's every run only if it stays slow for them all.
The cost model then prices the measurements on a link and a node.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._types import BytesLike
from .costmodel import CostModel, Oracle, OracleDecision, StrategyMeasurement
from .errors import DwcpError
from .link import LinkState, SystemState
from .strategies import Baseline, EncodedPayload, PayloadCodec
from .strategies.base import as_view

__all__ = [
    "DEFAULT_SMALL_PAYLOAD",
    "DEFAULT_SMALL_REPEATS",
    "DEFAULT_TINY_PAYLOAD",
    "DEFAULT_TINY_REPEATS",
    "DEFAULT_LARGE_PAYLOAD",
    "DEFAULT_LARGE_REPEATS",
    "DEFAULT_MEDIUM_REPEATS",
    "MeasureReport",
    "StrategyRun",
    "measure_payload",
    "measure_strategies",
    "measure_strategy",
    "probe_sample",
    "sampling_probe",
    "spread_offsets",
]

#: Payloads below this size are measured ``DEFAULT_SMALL_REPEATS`` times and the least time is kept.
DEFAULT_SMALL_PAYLOAD = 1 << 20
DEFAULT_SMALL_REPEATS = 5
#: Below this size a coding takes tens of microseconds, where scheduler and cache jitter of the same order
#: would decide the label: these payloads get a warm-up run and ``DEFAULT_TINY_REPEATS`` timed ones.
DEFAULT_TINY_PAYLOAD = 64 << 10
DEFAULT_TINY_REPEATS = 25
#: From a chunk up to this size, payloads are measured in ``DEFAULT_MEDIUM_REPEATS`` interleaved rounds;
#: above it (where the measurement's CPU time is most of a collection's) in ``DEFAULT_LARGE_REPEATS``.
DEFAULT_LARGE_PAYLOAD = 8 << 20
DEFAULT_MEDIUM_REPEATS = 3
DEFAULT_LARGE_REPEATS = 2


@dataclass(frozen=True, slots=True)
class StrategyRun:
    """One strategy measured on one payload."""

    strategy: str
    compressed_bytes: int
    encode_s: float
    decode_s: float
    roundtrip: bool
    repeats: int
    error: str | None = None
    #: Each piece's least CPU seconds over the runs (every chunk's coding, then the payload checksum):
    #: what ``measure_strategies`` combines across rounds.
    encode_pieces: tuple[float, ...] = field(default=(), repr=False)
    decode_pieces: tuple[float, ...] = field(default=(), repr=False)

    @property
    def measurement(self) -> StrategyMeasurement:
        return StrategyMeasurement(self.compressed_bytes, self.encode_s, self.decode_s)


def default_repeats(payload_length: int) -> int:
    """Timed runs per strategy: 25 under 64 KiB, 5 under 1 MiB, 3 under 8 MiB, 2 above."""
    if payload_length < DEFAULT_TINY_PAYLOAD:
        return DEFAULT_TINY_REPEATS
    if payload_length < DEFAULT_SMALL_PAYLOAD:
        return DEFAULT_SMALL_REPEATS
    return DEFAULT_MEDIUM_REPEATS if payload_length < DEFAULT_LARGE_PAYLOAD else DEFAULT_LARGE_REPEATS


def measure_strategies(
    codec: PayloadCodec,
    payload: BytesLike,
    strategies: Sequence[str],
    *,
    baseline: Baseline | None = None,
    payload_type: str | None = None,
    repeats: int | None = None,
) -> dict[str, StrategyRun]:
    """Every strategy of ``strategies`` measured on ``payload``: per chunk, the least CPU seconds of
    ``repeats`` runs.

    Below a chunk each strategy's runs follow one another (:func:`measure_strategy`: a warm-up, then the
    runs); from a chunk on, the runs are rounds that take every strategy in turn, with no warm-up (first
    call costs are nothing beside a megabyte's coding), so the runs of one strategy lie a whole round
    apart. A strategy that fails in any round is reported by its failing run.
    """
    view = as_view(payload)
    reps = repeats if repeats is not None else default_repeats(len(view))
    if len(view) < DEFAULT_SMALL_PAYLOAD or reps <= 1:
        return {
            s: measure_strategy(codec, view, s, baseline=baseline, payload_type=payload_type, repeats=reps)
            for s in strategies
        }
    best: dict[str, StrategyRun] = {}
    for _ in range(reps):
        for s in strategies:
            prev = best.get(s)
            if prev is not None and not prev.roundtrip:
                continue
            run = measure_strategy(codec, view, s, baseline=baseline, payload_type=payload_type, repeats=1)
            if prev is None or not run.roundtrip:
                best[s] = run
            else:
                enc = _least([prev.encode_pieces, run.encode_pieces])
                dec = _least([prev.decode_pieces, run.decode_pieces])
                best[s] = StrategyRun(
                    s, run.compressed_bytes, sum(enc), sum(dec), True, prev.repeats + 1, None, enc, dec
                )
    return best


def measure_strategy(
    codec: PayloadCodec,
    payload: BytesLike,
    strategy: str,
    *,
    baseline: Baseline | None = None,
    payload_type: str | None = None,
    repeats: int | None = None,
) -> StrategyRun:
    """Encode and decode ``payload`` with ``strategy``, ``repeats`` times; per piece (each chunk's coding,
    the payload checksum) the least CPU seconds of the runs, summed.

    Timing noise on a shared host is additive (preemption, cache misses, allocator, a neighbour on the
    core's sibling): the least of several runs is the stable estimate of what the codec costs (a median
    of 25 runs of a 1.5 KiB coding still moved by 2× between calls here; the least moved by 3 %). The
    host's slow phases last milliseconds, shorter than a large payload's coding, so the least is
    taken per 1 MiB chunk rather than per run: a chunk is fast in some run far more often than a whole
    payload is.

    The decoded chunks are compared with the original one at a time (outside the timed region), so memory
    stays at the payload, its encoded form and one chunk.
    """
    view = as_view(payload)
    reps = repeats if repeats is not None else default_repeats(len(view))
    enc_runs: list[list[float]] = []
    dec_runs: list[list[float]] = []
    encoded: EncodedPayload | None = None
    size = 0
    try:
        if reps > 1 and len(view) < DEFAULT_SMALL_PAYLOAD:
            # one untimed round trip: first-call costs (allocations, caches) are not the codec's
            for _chunk in codec.iter_decode(
                codec.encode(view, strategy, baseline=baseline, payload_type=payload_type), baseline=baseline
            ):
                pass
        for _ in range(reps):
            encoded = None  # drop the previous encoding before making the next
            pieces: list[float] = []
            encoded = codec.encode(
                view, strategy, baseline=baseline, payload_type=payload_type, chunk_times=pieces
            )
            enc_runs.append(pieces)
        assert encoded is not None
        size = encoded.encoded_bytes
        for rep in range(reps):
            pieces = []
            pos = 0
            ok = True
            # Decoding the frames where they lie: no joined copy of the encoding is ever made.
            chunks = codec.iter_decode(encoded, baseline=baseline)
            while True:
                t0 = time.thread_time()
                chunk = next(chunks, None)
                pieces.append(time.thread_time() - t0)  # the last: the payload checksum's check
                if chunk is None:
                    break
                if rep == 0 and chunk != view[pos : pos + len(chunk)]:
                    ok = False
                pos += len(chunk)
            dec_runs.append(pieces)
            if rep == 0 and (not ok or pos != len(view)):
                return StrategyRun(
                    strategy,
                    size,
                    sum(_least(enc_runs)),
                    sum(pieces),
                    False,
                    reps,
                    "decoded bytes differ from the original",
                )
    except DwcpError as exc:
        return StrategyRun(strategy, size, 0.0, 0.0, False, reps, f"{type(exc).__name__}: {exc}")
    enc, dec = _least(enc_runs), _least(dec_runs)
    return StrategyRun(strategy, size, sum(enc), sum(dec), True, reps, encode_pieces=enc, decode_pieces=dec)


def _least(runs: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """Each piece's least time over the runs (every run times the same pieces)."""
    return tuple(min(col) for col in zip(*runs, strict=True))


@dataclass(frozen=True)
class MeasureReport:
    """Every offered strategy measured on one payload, priced on one link and node."""

    payload_bytes: int
    streams: int
    runs: dict[str, StrategyRun]
    costs: dict[str, float]
    decision: OracleDecision
    link: LinkState
    system: SystemState
    cost_params_fingerprint: str

    @property
    def oracle(self) -> str:
        return self.decision.label

    def to_dict(self) -> dict[str, object]:
        """The ``measure --json`` document."""
        return {
            "payload_bytes": self.payload_bytes,
            "streams": self.streams,
            "strategies": {
                name: {
                    "compressed_bytes": run.compressed_bytes,
                    "encode_s": run.encode_s,
                    "decode_s": run.decode_s,
                    "cost_s": self.costs.get(name),
                    "roundtrip": run.roundtrip,
                    **({"error": run.error} if run.error else {}),
                }
                for name, run in self.runs.items()
            },
            "oracle": self.oracle,
            "link": {
                "type": self.link.link_type,
                "capacity_bps": self.link.capacity_bps,
                "available_bps": self.link.available_bps,
                "rtt_s": self.link.rtt_s,
                "loss": self.link.loss,
                "utilization": self.link.utilization,
            },
            "free_cores": self.system.free_cores,
            "cost_model": self.cost_params_fingerprint,
        }


def measure_payload(
    payload: BytesLike,
    link: LinkState,
    system: SystemState,
    *,
    baseline: Baseline | None = None,
    payload_type: str | None = None,
    codec: PayloadCodec | None = None,
    cost_model: CostModel | None = None,
    strategies: Sequence[str] | None = None,
    repeats: int | None = None,
) -> MeasureReport:
    """Measure every offered strategy (or those named) and label the transfer with the oracle."""
    codec = codec or PayloadCodec()
    codec.warm_up()
    cost_model = cost_model or CostModel()
    view = as_view(payload)
    offered = codec.registry.offered(len(view), has_baseline=baseline is not None)
    names = [s for s in offered if strategies is None or s in strategies]
    runs = measure_strategies(
        codec, view, names, baseline=baseline, payload_type=payload_type, repeats=repeats
    )
    good = {s: r.measurement for s, r in runs.items() if r.roundtrip}
    costs = cost_model.costs(len(view), good, link, system)
    decision = Oracle(cost_model).decide(costs)
    return MeasureReport(
        payload_bytes=len(view),
        streams=cost_model.streams(link),
        runs=runs,
        costs=costs,
        decision=decision,
        link=link,
        system=system,
        cost_params_fingerprint=cost_model.params.fingerprint,
    )


#: The sampling probe's sample: four 16 KiB pieces spread over the payload (DESIGN section 5: "try each
#: encoder on a 64 KiB sample").
PROBE_PIECE = 16 * 1024
PROBE_PIECES = 4


def spread_offsets(n: int, piece: int, pieces: int) -> list[int]:
    """Where ``pieces`` pieces of ``piece`` bytes start, spread evenly over ``n`` bytes (first at 0, last
    ending at the end); ``n`` is at least ``piece * pieces``."""
    step = (n - piece) // (pieces - 1)
    return [i * step for i in range(pieces)]


def probe_sample(payload: BytesLike, baseline: BytesLike | None) -> tuple[bytes, bytes | None]:
    """The probe's sample of ``payload`` and the baseline bytes at the same offsets (for HDE)."""
    view = as_view(payload)
    n = len(view)
    if n <= PROBE_PIECE * PROBE_PIECES:
        offsets = [0]
        piece = n
    else:
        offsets = spread_offsets(n, PROBE_PIECE, PROBE_PIECES)
        piece = PROBE_PIECE
    sample = b"".join(bytes(view[o : o + piece]) for o in offsets)
    base_sample = None
    if baseline is not None:
        base = as_view(baseline)
        base_sample = b"".join(bytes(base[o : o + piece]) for o in offsets)
    return sample, base_sample


def sampling_probe(
    payload: BytesLike,
    baseline: BytesLike | None,
    codec: PayloadCodec,
) -> tuple[int, dict[str, StrategyRun]]:
    """Every offered strategy run once on the probe's sample: (sample bytes, runs by strategy)."""
    sample, base_sample = probe_sample(payload, baseline)
    base = Baseline("probe", base_sample) if base_sample is not None else None
    offered = codec.registry.offered(len(sample), has_baseline=base is not None)
    return len(sample), {s: measure_strategy(codec, sample, s, baseline=base, repeats=1) for s in offered}
