"""The one exception tree of dwcp-selector.

Every error the library raises on purpose derives from :class:`DwcpError`, so a caller can catch the
whole family with one ``except``. Third-party errors (zstd, lz4, sockets) are re-raised as one of these
``from`` the original, so the cause stays visible. Each class carries the HTTP status the serving layer
answers with, so library, CLI and HTTP share one mapping::

    DwcpError                         500
    ├── ConfigError                   400  bad settings, bad arguments, bad link/system values
    ├── StrategyError                 400  unknown strategy, strategy not offered for this payload
    ├── FrameError                    422  an encoded frame or container that cannot be decoded
    │   ├── TruncatedFrameError             ends before its declared size
    │   ├── CorruptFrameError               bad magic, bad field, undecodable body, checksum mismatch
    │   ├── UnsupportedFrameError           a format version or strategy id this build does not know
    │   ├── FrameLimitError                 a declared size beyond the decoder's limits (no bombs)
    │   └── ContextMissingError             a chunk that needs the payload bytes before it, decoded alone
    ├── BaselineError                 409  HDE reference problems
    │   ├── BaselineMissingError            the frame's baseline is not available
    │   └── BaselineMismatchError           a baseline is available but it is not the one encoded against
    ├── DictionaryError               409  a zstd dictionary that is missing or not what it claims
    ├── TransportError                502  AMST transfer failures
    │   ├── ProtocolError                   the peer sent something that is not AMST
    │   ├── StreamBrokenError               a stream closed or failed before its chunks were delivered
    │   ├── TransferTimeoutError            the peer stopped answering
    │   ├── AuthenticationError       403  the peer did not prove its key or certificate
    │   └── CapacityError             503  the receiver is at a connection, transfer or memory limit
    ├── StoreError                    500  a telemetry store refused an operation
    │   └── StoreUnavailableError     503  the store's server cannot be reached (collectors spill)
    └── ArtifactError                 409  a model directory that is missing, tampered or mismatched
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "AuthenticationError",
    "BaselineError",
    "BaselineMismatchError",
    "BaselineMissingError",
    "CapacityError",
    "ConfigError",
    "ContextMissingError",
    "CorruptFrameError",
    "DictionaryError",
    "DwcpError",
    "FrameError",
    "FrameLimitError",
    "ProtocolError",
    "StrategyError",
    "StoreError",
    "StoreUnavailableError",
    "StreamBrokenError",
    "TransferTimeoutError",
    "TransportError",
    "TruncatedFrameError",
    "UnsupportedFrameError",
]


class DwcpError(Exception):
    """Root of every error raised on purpose by dwcp-selector."""

    http_status: int = 500


class ConfigError(DwcpError, ValueError):
    """A setting or argument is invalid (unknown link class, negative bandwidth, ...)."""

    http_status = 400


class StrategyError(DwcpError, ValueError):
    """A strategy name is unknown, or the strategy is not offered for this payload."""

    http_status = 400


class FrameError(DwcpError):
    """Encoded bytes that cannot be turned back into the original payload."""

    http_status = 422


class TruncatedFrameError(FrameError):
    """The frame or container ends before the size its header declares."""


class CorruptFrameError(FrameError):
    """Bad magic, inconsistent fields, an undecodable body or a checksum mismatch."""


class UnsupportedFrameError(FrameError):
    """A frame format version or strategy id that this build does not understand."""


class FrameLimitError(FrameError):
    """A declared size beyond the decoder's limits: refused before any memory is committed."""


class ContextMissingError(FrameError):
    """A chunk coded with the payload's preceding bytes as context was given no (or too little) context:
    decode the chunks of a payload in order (``PayloadCodec`` and the AMST receiver do)."""


class BaselineError(DwcpError):
    """Problems with the reference version an HDE frame was encoded against."""

    http_status = 409


class BaselineMissingError(BaselineError):
    """The frame names a baseline that was not supplied or is no longer in the store."""


class BaselineMismatchError(BaselineError):
    """A baseline was supplied, but its id, checksum or size is not the one the frame was encoded against."""


class DictionaryError(DwcpError):
    """A zstd dictionary the frame needs is missing, or a dictionary artifact is damaged."""

    http_status = 409


class TransportError(DwcpError):
    """An AMST transfer failed; nothing was silently lost, the message says what is missing."""

    http_status = 502


class ProtocolError(TransportError):
    """The peer sent bytes that are not the AMST protocol (or not this version of it)."""


class StreamBrokenError(TransportError):
    """A stream closed or failed before delivering all of its chunks."""


class TransferTimeoutError(TransportError):
    """The peer stopped sending or answering within the configured timeout."""


class AuthenticationError(TransportError):
    """The peer did not prove the pre-shared key or certificate the other side requires, or a message
    failed its MAC: nothing it sent reached a decoder or a baseline store."""

    http_status = 403


class CapacityError(TransportError):
    """The receiver refused work beyond its configured limits (connections, transfers, memory budget)."""

    http_status = 503


class StoreError(DwcpError):
    """A telemetry store refused an operation (bad URL, failed migration, failed archive)."""

    http_status = 500


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached; collectors spill and retry."""

    http_status = 503


class ArtifactError(DwcpError):
    """A model artifact is missing, damaged, tampered with, or made for another cost model or version."""

    http_status = 409
