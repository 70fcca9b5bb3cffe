"""AMST, the Adaptive Multi-Stream Transport: chunks of a payload over parallel TCP streams.

Every strategy's bytes travel over AMST; the stream count is sized from the link by the cost model.
Senders and receivers authenticate each other with a pre-shared key or mutual TLS (:mod:`.security`);
running without is possible only when asked for by name (:class:`Insecure`).
"""

from __future__ import annotations

from .receiver import AmstReceiver, ReceivedTransfer, ReceiverLimits, baseline_key
from .security import (
    Insecure,
    InsecureTransportWarning,
    PskAuth,
    PskKeys,
    TlsAuth,
    tls_client_context,
    tls_server_context,
)
from .sender import AmstSender, SendReport

__all__ = [
    "AmstReceiver",
    "AmstSender",
    "Insecure",
    "InsecureTransportWarning",
    "PskAuth",
    "PskKeys",
    "ReceivedTransfer",
    "ReceiverLimits",
    "SendReport",
    "TlsAuth",
    "baseline_key",
    "tls_client_context",
    "tls_server_context",
]
