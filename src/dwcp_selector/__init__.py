"""dwcp-selector: per-transfer choice of how to encode data before the AMST transport sends it.

The data flow, one subpackage or module a stage, each importing only from stages above it:

    errors, config         one exception tree; settings read from the environment in one place
    link, costmodel        what we know of the path and nodes; the cost of a transfer and its oracle
    strategies             the encoders none, lz4, zstd, hde; frames, baselines, dictionaries, chunking
    features               decision-time payload features (sampled; shared by collection and selection)
    transport              AMST: chunks over parallel TCP streams
    measure                every strategy run for real on a payload, priced and labelled
    workload               staging sessions, payload families, link and node draws, corpora
    telemetry              the record, SQLite and PostgreSQL stores, the collector, staging collection
    dataset                data quality checks and export into splits
    cli                    the ``dwcp-selector`` command

>>> import dwcp_selector as dw
>>> codec = dw.PayloadCodec()
>>> frame = codec.encode(b"hello " * 1000, "zstd").to_bytes()
>>> codec.decode(frame) == b"hello " * 1000
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import Settings
from .costmodel import CostModel, CostParams, Oracle, OracleDecision, StrategyMeasurement
from .errors import (
    ArtifactError,
    BaselineError,
    BaselineMismatchError,
    BaselineMissingError,
    ConfigError,
    ContextMissingError,
    CorruptFrameError,
    DictionaryError,
    DwcpError,
    FrameError,
    FrameLimitError,
    ProtocolError,
    StoreError,
    StoreUnavailableError,
    StrategyError,
    StreamBrokenError,
    TransferTimeoutError,
    TransportError,
    TruncatedFrameError,
    UnsupportedFrameError,
)
from .features import PayloadFeatures, payload_features
from .link import LINK_CLASSES, LinkClass, LinkState, SystemState, link_from_class
from .measure import MeasureReport, StrategyRun, measure_payload
from .strategies import (
    Baseline,
    BaselineStore,
    ChecksumAlgo,
    DictionaryStore,
    EncodedPayload,
    Encoder,
    PayloadCodec,
    Registry,
    default_registry,
)
from .transport import AmstReceiver, AmstSender, ReceivedTransfer, SendReport

if TYPE_CHECKING:
    from .modeling.decide import Decision
    from .serving import Selector, TransferManager
    from .telemetry import TelemetryCollector, TelemetryStore, open_store

# Telemetry pulls in pyarrow and prometheus_client: imported on first use, so that encoding, measuring
# and the command line stay light (a `measure` process keeps its memory for the payload).
_LAZY = {
    "TelemetryCollector": ".telemetry",
    "TelemetryStore": ".telemetry",
    "open_store": ".telemetry",
    # the selector loads onnxruntime
    "Selector": ".serving",
    "TransferManager": ".serving",
    "Decision": ".modeling.decide",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "LINK_CLASSES",
    "ArtifactError",
    "Decision",
    "Selector",
    "TransferManager",
    "AmstReceiver",
    "AmstSender",
    "Baseline",
    "BaselineError",
    "BaselineMismatchError",
    "BaselineMissingError",
    "BaselineStore",
    "ChecksumAlgo",
    "ConfigError",
    "CorruptFrameError",
    "CostModel",
    "CostParams",
    "DictionaryError",
    "DictionaryStore",
    "DwcpError",
    "EncodedPayload",
    "Encoder",
    "FrameError",
    "ContextMissingError",
    "FrameLimitError",
    "LinkClass",
    "LinkState",
    "MeasureReport",
    "Oracle",
    "OracleDecision",
    "PayloadCodec",
    "PayloadFeatures",
    "ProtocolError",
    "ReceivedTransfer",
    "Registry",
    "SendReport",
    "Settings",
    "StoreError",
    "StoreUnavailableError",
    "StrategyError",
    "StrategyMeasurement",
    "StrategyRun",
    "StreamBrokenError",
    "SystemState",
    "TelemetryCollector",
    "TelemetryStore",
    "TransferTimeoutError",
    "TransportError",
    "TruncatedFrameError",
    "UnsupportedFrameError",
    "__version__",
    "default_registry",
    "link_from_class",
    "measure_payload",
    "open_store",
    "payload_features",
]
