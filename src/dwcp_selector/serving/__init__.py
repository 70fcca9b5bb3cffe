"""Serving: the selector a sending service embeds (model, fast path, decision cache), the model
registry it follows (immutable versions, aliases, every move logged), and the transfer manager that joins
the decision to the AMST send and to telemetry."""

from __future__ import annotations

from .cache import DecisionCache
from .guarded import GuardedSelector, SelectorMetrics
from .registry import ModelRegistry
from .selector import Selector
from .transfer import TransferManager, TransferResult

__all__ = [
    "DecisionCache",
    "GuardedSelector",
    "ModelRegistry",
    "Selector",
    "SelectorMetrics",
    "TransferManager",
    "TransferResult",
]
