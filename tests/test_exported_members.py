"""The public API is exactly what ``dwcp_selector.__all__`` names, and every name resolves."""

from __future__ import annotations

import dwcp_selector

EXPECTED = {
    "LINK_CLASSES",
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
    "ProtocolError",
    "ReceivedTransfer",
    "Registry",
    "SendReport",
    "TransferManager",
    "Settings",
    "StrategyError",
    "StrategyMeasurement",
    "StrategyRun",
    "StreamBrokenError",
    "SystemState",
    "TransferTimeoutError",
    "TransportError",
    "TruncatedFrameError",
    "UnsupportedFrameError",
    "__version__",
    "default_registry",
    "link_from_class",
    "measure_payload",
    "PayloadFeatures",
    "StoreError",
    "StoreUnavailableError",
    "TelemetryCollector",
    "TelemetryStore",
    "open_store",
    "payload_features",
    "ArtifactError",
    "Decision",
    "Selector",
}


def test_exported_members() -> None:
    assert set(dwcp_selector.__all__) == EXPECTED
    for name in dwcp_selector.__all__:
        assert getattr(dwcp_selector, name) is not None


def test_exceptions_share_one_root_and_carry_http_status() -> None:
    errors = [getattr(dwcp_selector, n) for n in dwcp_selector.__all__ if n.endswith("Error")]
    for exc in errors:
        assert issubclass(exc, dwcp_selector.DwcpError)
        assert 400 <= exc.http_status <= 599
