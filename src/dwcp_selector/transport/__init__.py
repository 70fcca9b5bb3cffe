"""AMST, the Adaptive Multi-Stream Transport: chunks of a payload over parallel TCP streams.

Every strategy's bytes travel over AMST; the stream count is sized from the link by the cost model.
"""

from __future__ import annotations

from .receiver import AmstReceiver, ReceivedTransfer
from .sender import AmstSender, SendReport

__all__ = ["AmstReceiver", "AmstSender", "ReceivedTransfer", "SendReport"]
