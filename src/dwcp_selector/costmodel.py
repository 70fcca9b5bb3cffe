"""The cost model and the oracle (DESIGN section 2): the one place where the cost of a transfer is defined.

Every label, every regret figure and every cost-in-the-loop decision is computed here, from three kinds of
input: what the encoder did to the payload (:class:`StrategyMeasurement`: compressed bytes, encode and
decode CPU seconds), the path (:class:`~dwcp_selector.link.LinkState`) and the nodes
(:class:`~dwcp_selector.link.SystemState`). The parameters live in :class:`CostParams`, whose
``fingerprint`` is recorded with every dataset and model.

For payload bytes S and strategy s::

    r = min(8·W/R, 8·MSS·1.22/(R·√p))        per-stream rate (Mathis), r = 8·W/R when p = 0
    n = clamp(ceil(B / r), 1, 64)             AMST streams, the same for every encoder
    m = ceil(S / chunk)                       chunks, encoded on k_e = min(c, m) cores
    k_d = min(c, m), or min(c, 1) for a strategy whose chunks decode in order (zstd, hde: each chunk
                                              is coded with the payload bytes before it as context)
    E = (e_s + (σ+α)·S_s) / k_e               encode, the sending stack's CPU per byte sent (σ) and
                                              authentication's (α: 0 for Insecure, ``with_auth``)
    X = 8·S_s / (η·min(B, n·r))               η: payload bits per bit on the link (TCP/IP/Ethernet headers)
    D = (d_s + (ρ+α)·S_s) / k_d               decode, the receiving stack's CPU per byte received (ρ)
                                              and authentication's (α)
    T_s = max(E, X, D) + (E + D) / m          pipelined
          + (1 + h)·R                         the data's RTT and h RTTs of connection set-up, whatever
                                              stage is the slowest
          + o + o_s·(min(n, m) − 1) + v·S     per transfer (threads, HELLO, RESULT), per extra stream,
                                              and the receiver's checksum of the whole payload

η, h, o, o_s, σ, ρ and v were measured on real AMST transfers between two network namespaces over tbf-shaped
links (``bench/cost_model_transfers.py``, ``docs/decisions/0007-cost-model-against-real-transfers.md``);
o, σ, ρ and v are this implementation's CPU costs on the host that measured them, not constants of nature.

Parameters that later versions added keep, in artifacts written before them, the value that reproduces
the older formula (``LEGACY_VALUES``), and are left out of the fingerprint at that value: a model priced
under ``cost-v1`` still loads with its own parameters and its own fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError
from .link import LinkState, SystemState

__all__ = [
    "AUTH_S_PER_BYTE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_STRATEGY_ORDER",
    "CostModel",
    "CostParams",
    "Oracle",
    "OracleDecision",
    "StrategyMeasurement",
]

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_MSS = 1448
DEFAULT_WINDOW_CAP = 4 << 20
DEFAULT_MAX_STREAMS = 64
DEFAULT_TIE_TOLERANCE = 0.01
DEFAULT_STRATEGY_ORDER: tuple[str, ...] = ("none", "lz4", "zstd", "hde")
#: Strategies whose chunks decode in order (their frames carry context; docs/decisions/0006).
DEFAULT_ORDERED_DECODE: tuple[str, ...] = ("zstd", "hde")
MATHIS_C = 1.22
#: Measured on real transfers (docs/decisions/0007): 1448 payload bytes per 1514 counted on the link.
DEFAULT_WIRE_EFFICIENCY = 0.9564
#: RTTs before data flows: the TCP handshake of the streams (opened in parallel).
DEFAULT_SETUP_RTTS = 1.0
#: Per transfer (stream threads, HELLO, the receiver's set-up, the RESULT), per extra stream, the sending
#: stack's CPU per byte and the receiver's final checksum per byte; Intel Xeon, 2 cores, 2026-12-02.
DEFAULT_TRANSFER_OVERHEAD_S = 0.757e-3
DEFAULT_STREAM_OVERHEAD_S = 0.161e-3
DEFAULT_SEND_STACK_S_PER_BYTE = 8 / 22.66e9
#: The receiving stack's CPU per byte (the kernel's copy into the receiver's buffers and the softirq work
#: of receiving), priced at the rate one core moves bytes through the stack: one pinned plain-TCP stream's
#: goodput, as the sending side's; Intel Xeon, 2 cores, 2026-12-02 (docs/decisions/0007).
DEFAULT_RECV_STACK_S_PER_BYTE = 8 / 22.66e9
DEFAULT_VERIFY_S_PER_BYTE = 8 / 235.3e9
#: Values of later parameters that reproduce the older formula; omitted from the fingerprint.
LEGACY_VALUES: dict[str, object] = {
    "ordered_decode": (),
    "wire_efficiency": 1.0,
    "setup_rtts": 0.0,
    "rtt_in_pipeline": True,
    "transfer_overhead_s": 0.0,
    "stream_overhead_s": 0.0,
    "send_stack_s_per_byte": 0.0,
    "recv_stack_s_per_byte": 0.0,
    "verify_s_per_byte": 0.0,
    "auth_s_per_byte": 0.0,
}
#: CPU seconds per byte on the wire that authenticating AMST costs on each end (``auth_s_per_byte``), by
#: security mode: AES-GMAC over every message (psk) or TLS records (AES-GCM). Half the extra process CPU
#: of a verified 1 GiB loopback transfer (both ends in one process) over Insecure, median of 5 rounds;
#: AMD EPYC, 2 cores, 2026-12-03 (``bench/amst_security.py``, docs/decisions/0009). Staging measures the
#: encoders without the transport, so labels are priced with the mode the deployment runs
#: (``CostParams.with_auth``); the default prices none.
AUTH_S_PER_BYTE: dict[str, float] = {"insecure": 0.0, "psk": 1.5e-10, "tls": 3.5e-10}

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CostParams:
    """Parameters of the cost model; their fingerprint identifies the model in datasets and artifacts."""

    mss_bytes: int = DEFAULT_MSS
    window_cap_bytes: int = DEFAULT_WINDOW_CAP
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_streams: int = DEFAULT_MAX_STREAMS
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    strategy_order: tuple[str, ...] = DEFAULT_STRATEGY_ORDER
    ordered_decode: tuple[str, ...] = DEFAULT_ORDERED_DECODE
    wire_efficiency: float = DEFAULT_WIRE_EFFICIENCY
    setup_rtts: float = DEFAULT_SETUP_RTTS
    #: cost-v1 priced the RTT inside the transmit stage (lost whenever encode or decode was slower).
    rtt_in_pipeline: bool = False
    transfer_overhead_s: float = DEFAULT_TRANSFER_OVERHEAD_S
    stream_overhead_s: float = DEFAULT_STREAM_OVERHEAD_S
    send_stack_s_per_byte: float = DEFAULT_SEND_STACK_S_PER_BYTE
    recv_stack_s_per_byte: float = DEFAULT_RECV_STACK_S_PER_BYTE
    verify_s_per_byte: float = DEFAULT_VERIFY_S_PER_BYTE
    #: CPU per byte sent that authentication costs on each end (0: Insecure; ``with_auth``).
    auth_s_per_byte: float = 0.0
    version: str = "cost-v3"

    def __post_init__(self) -> None:
        if self.mss_bytes <= 0 or self.window_cap_bytes <= 0 or self.chunk_size <= 0:
            raise ConfigError("MSS, window cap and chunk size must be positive")
        if not 1 <= self.max_streams <= 1024:
            raise ConfigError(f"max streams must be in 1..1024, got {self.max_streams}")
        if not 0 <= self.tie_tolerance < 1:
            raise ConfigError(f"tie tolerance must be in [0, 1), got {self.tie_tolerance}")
        if len(set(self.strategy_order)) != len(self.strategy_order) or not self.strategy_order:
            raise ConfigError(f"strategy order must list distinct names, got {self.strategy_order}")
        if not 0 < self.wire_efficiency <= 1:
            raise ConfigError(f"wire efficiency must be in (0, 1], got {self.wire_efficiency}")
        extras = (
            self.setup_rtts,
            self.transfer_overhead_s,
            self.stream_overhead_s,
            self.send_stack_s_per_byte,
            self.recv_stack_s_per_byte,
            self.verify_s_per_byte,
            self.auth_s_per_byte,
        )
        if not all(math.isfinite(x) and x >= 0 for x in extras):
            raise ConfigError("set-up RTTs, overheads and per-byte costs must be finite and >= 0")
        if not set(self.ordered_decode) <= set(self.strategy_order):
            raise ConfigError(
                f"ordered-decode strategies {list(self.ordered_decode)} are not all in the label set"
            )

    def with_auth(self, mode: str) -> CostParams:
        """These parameters with the measured price of AMST security ``mode`` (insecure, psk or tls).

        >>> CostParams().with_auth("insecure") == CostParams()
        True
        """
        if mode not in AUTH_S_PER_BYTE:
            raise ConfigError(f"unknown AMST security mode {mode!r}: one of {sorted(AUTH_S_PER_BYTE)}")
        return replace(self, auth_s_per_byte=AUTH_S_PER_BYTE[mode])

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["strategy_order"] = list(self.strategy_order)
        d["ordered_decode"] = list(self.ordered_decode)
        for key, legacy in LEGACY_VALUES.items():
            if d.get(key) == (list(legacy) if isinstance(legacy, tuple) else legacy):
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> CostParams:
        """Parameters as :meth:`to_dict` wrote them; a key an older version did not write takes the value
        that reproduces that version's formula."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d).difference(known)
        if unknown:
            raise ConfigError(f"unknown cost-model parameters {sorted(unknown)}")
        values: dict[str, Any] = {**LEGACY_VALUES, **d}
        for key in ("strategy_order", "ordered_decode"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def fingerprint(self) -> str:
        """A short stable hash of every parameter: equal fingerprints price transfers identically."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StrategyMeasurement:
    """What one encoder did to one payload, measured for real on this host."""

    compressed_bytes: int
    encode_s: float
    decode_s: float

    def scaled(self, factor: float) -> StrategyMeasurement:
        """This measurement of a sample extrapolated to a payload ``factor`` times its size."""
        return StrategyMeasurement(
            max(1, round(self.compressed_bytes * factor)), self.encode_s * factor, self.decode_s * factor
        )


@dataclass(frozen=True, slots=True)
class OracleDecision:
    """The oracle's label for one transfer, its cost and the whole cost vector it chose from."""

    label: str
    cost_s: float
    costs: Mapping[str, float] = field(default_factory=dict)

    @property
    def runner_up_gap(self) -> float:
        """How far behind the best other strategy is (0.02 = 2 % slower); inf when there is only one."""
        others = [c for s, c in self.costs.items() if s != self.label]
        if not others:
            return math.inf
        return min(others) / self.cost_s - 1.0 if self.cost_s > 0 else math.inf


class CostModel:
    """Prices a transfer: the pipelined time of encode, AMST send and decode (DESIGN section 2).

    >>> from dwcp_selector.link import LinkState, SystemState
    >>> cm = CostModel()
    >>> link = LinkState(capacity_bps=1e9, rtt_s=0.02, loss=0.0)
    >>> cm.streams(link)
    1
    >>> round(cm.transfer_time(1 << 20, StrategyMeasurement(1 << 20, 0.0, 0.0), link, SystemState()), 4)
    0.0503
    """

    def __init__(self, params: CostParams | None = None) -> None:
        self.params = params or CostParams()

    # -- scalar path: used per decision, kept free of numpy so it costs about a microsecond ----------
    def per_stream_bps(self, link: LinkState) -> float:
        """Mathis rate of one TCP stream, capped by the per-stream window."""
        p = self.params
        window_rate = 8.0 * p.window_cap_bytes / link.rtt_s
        if link.loss <= 0:
            return window_rate
        return min(window_rate, 8.0 * p.mss_bytes * MATHIS_C / (link.rtt_s * math.sqrt(link.loss)))

    def streams(self, link: LinkState) -> int:
        """AMST stream count: enough streams for their aggregate rate to cover the available bandwidth."""
        n = math.ceil(link.available_bps / self.per_stream_bps(link))
        return max(1, min(self.params.max_streams, n))

    def effective_bps(self, link: LinkState) -> float:
        """Rate the transfer actually gets: min(available bandwidth, streams × per-stream rate).

        Written out flat (it is the first step of every decision, fast path included): the same
        arithmetic as :meth:`per_stream_bps` and :meth:`streams`, in about half a microsecond.
        """
        p = self.params
        rtt = link.rtt_s
        r = 8.0 * p.window_cap_bytes / rtt
        if link.loss > 0:
            mathis = 8.0 * p.mss_bytes * MATHIS_C / (rtt * math.sqrt(link.loss))
            if mathis < r:
                r = mathis
        available = link.capacity_bps * (1.0 - link.utilization)
        n = math.ceil(available / r)
        n = 1 if n < 1 else (p.max_streams if n > p.max_streams else n)
        rate = n * r
        return available if available < rate else rate

    def chunks(self, payload_bytes: int) -> int:
        return max(1, -(-payload_bytes // self.params.chunk_size))

    def decodes_in_order(self, strategy: str | None) -> bool:
        """Whether ``strategy``'s chunks decode one after another (one core), not in parallel."""
        return strategy is not None and strategy in self.params.ordered_decode

    def transfer_time(
        self,
        payload_bytes: int,
        measurement: StrategyMeasurement,
        link: LinkState,
        system: SystemState,
        strategy: str | None = None,
    ) -> float:
        """T_s: seconds from the first byte encoded to the last byte decoded.

        ``strategy`` names the encoder, whose decode parallelism the parameters state; without it every
        chunk is taken to decode in parallel.
        """
        p = self.params
        m = self.chunks(payload_bytes)
        k = min(system.free_cores, m)
        sent = measurement.compressed_bytes
        enc = (measurement.encode_s + (p.send_stack_s_per_byte + p.auth_s_per_byte) * sent) / k
        dec = (measurement.decode_s + (p.recv_stack_s_per_byte + p.auth_s_per_byte) * sent) / (
            min(system.free_cores, 1) if self.decodes_in_order(strategy) else k
        )
        rtt = link.rtt_s
        xmit = 8.0 * sent / (p.wire_efficiency * self.effective_bps(link))
        if p.rtt_in_pipeline:
            xmit += rtt
        t = max(enc, xmit, dec) + (enc + dec) / m
        t += (p.setup_rtts if p.rtt_in_pipeline else 1.0 + p.setup_rtts) * rtt
        streams = min(self.streams(link), m)
        return (
            t
            + p.transfer_overhead_s
            + p.stream_overhead_s * (streams - 1)
            + p.verify_s_per_byte * payload_bytes
        )

    def raw_transfer_time(self, payload_bytes: int, link: LinkState) -> float:
        """Time to send the payload unencoded, RTT and wire only: the first estimate of the decision
        budget (DESIGN 5a). It leaves out the per-transfer overheads, which every strategy pays alike."""
        return link.rtt_s + 8.0 * payload_bytes / self.effective_bps(link)

    def costs(
        self,
        payload_bytes: int,
        measurements: Mapping[str, StrategyMeasurement],
        link: LinkState,
        system: SystemState,
    ) -> dict[str, float]:
        """The cost vector: T_s for every measured strategy, in the fixed strategy order."""
        ordered = self.ordered(measurements)
        return {s: self.transfer_time(payload_bytes, measurements[s], link, system, s) for s in ordered}

    def ordered(self, names: Iterable[str]) -> list[str]:
        """Names in the fixed tie-break order; names outside the configured label set are refused."""
        names = set(names)
        unknown = names.difference(self.params.strategy_order)
        if unknown:
            raise ConfigError(
                f"strategies {sorted(unknown)} are not in the cost model's label set "
                f"{list(self.params.strategy_order)}"
            )
        return [s for s in self.params.strategy_order if s in names]

    # -- array path: re-pricing one measured payload under many link/CPU draws -------------------
    def rates_array(
        self, capacity_bps: FloatArray, utilization: FloatArray, rtt_s: FloatArray, loss: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Available bandwidth, per-stream rate, AMST streams and effective rate, element-wise."""
        p = self.params
        window_rate = 8.0 * p.window_cap_bytes / rtt_s
        with np.errstate(divide="ignore"):
            mathis = np.where(loss > 0, 8.0 * p.mss_bytes * MATHIS_C / (rtt_s * np.sqrt(loss)), np.inf)
        per_stream = np.minimum(window_rate, mathis)
        available = capacity_bps * (1.0 - utilization)
        streams = np.clip(np.ceil(available / per_stream), 1, p.max_streams)
        return available, per_stream, streams, np.minimum(available, streams * per_stream)

    def transfer_time_array(
        self,
        payload_bytes: FloatArray,
        compressed_bytes: FloatArray,
        encode_s: FloatArray,
        decode_s: FloatArray,
        capacity_bps: FloatArray,
        utilization: FloatArray,
        rtt_s: FloatArray,
        loss: FloatArray,
        free_cores: FloatArray,
        strategy: str | None = None,
    ) -> FloatArray:
        """The same formula as :meth:`transfer_time`, element-wise over numpy arrays."""
        p = self.params
        _, _, streams, rate = self.rates_array(capacity_bps, utilization, rtt_s, loss)
        m = np.maximum(1.0, np.ceil(payload_bytes / p.chunk_size))
        k = np.minimum(free_cores, m)
        enc = (encode_s + (p.send_stack_s_per_byte + p.auth_s_per_byte) * compressed_bytes) / k
        dec = (decode_s + (p.recv_stack_s_per_byte + p.auth_s_per_byte) * compressed_bytes) / (
            np.minimum(free_cores, 1.0) if self.decodes_in_order(strategy) else k
        )
        xmit = 8.0 * compressed_bytes / (p.wire_efficiency * rate)
        if p.rtt_in_pipeline:
            xmit = xmit + rtt_s
        t = np.maximum(np.maximum(enc, xmit), dec) + (enc + dec) / m
        t = t + (p.setup_rtts if p.rtt_in_pipeline else 1.0 + p.setup_rtts) * rtt_s
        result: FloatArray = (
            t
            + p.transfer_overhead_s
            + p.stream_overhead_s * (np.minimum(streams, m) - 1.0)
            + p.verify_s_per_byte * payload_bytes
        )
        return result


class Oracle:
    """Labels a transfer with the strategy of least cost; near-ties go to the earliest in the fixed order.

    Strategies whose cost is within ``tie_tolerance`` (1 %) of the best are tied, and the tie goes to the
    first of none, lz4, zstd, hde: the cheaper, simpler encoder wins when the measurement cannot tell.
    """

    def __init__(self, cost_model: CostModel | None = None) -> None:
        self.cost_model = cost_model or CostModel()

    def decide(self, costs: Mapping[str, float]) -> OracleDecision:
        """The label among the strategies in ``costs`` (those offered for this payload)."""
        if not costs:
            raise ConfigError("the oracle needs the cost of at least one offered strategy")
        ordered = self.cost_model.ordered(costs)
        best = min(costs[s] for s in ordered)
        bound = best * (1.0 + self.cost_model.params.tie_tolerance)
        label = next(s for s in ordered if costs[s] <= bound)
        return OracleDecision(label=label, cost_s=costs[label], costs={s: costs[s] for s in ordered})

    def label(
        self,
        payload_bytes: int,
        measurements: Mapping[str, StrategyMeasurement],
        link: LinkState,
        system: SystemState,
    ) -> OracleDecision:
        """Price every measured strategy and decide."""
        return self.decide(self.cost_model.costs(payload_bytes, measurements, link, system))

    def label_array(self, costs: FloatArray) -> npt.NDArray[np.int64]:
        """Oracle label indices for a (records × strategies) cost matrix in the fixed order.

        A strategy that was not offered has cost ``inf``; every row must offer at least one.
        """
        best = costs.min(axis=1, keepdims=True)
        if not np.all(np.isfinite(best)):
            raise ConfigError("every record needs at least one offered strategy with a finite cost")
        tied = costs <= best * (1.0 + self.cost_model.params.tie_tolerance)
        labels: npt.NDArray[np.int64] = np.argmax(tied, axis=1).astype(np.int64)
        return labels
