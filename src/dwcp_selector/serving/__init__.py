"""Serving: the selector a sending service embeds (model, fast path, decision cache) and the model
registry it follows (immutable versions, aliases, every move logged)."""

from __future__ import annotations

from .cache import DecisionCache
from .guarded import GuardedSelector, SelectorMetrics
from .registry import ModelRegistry
from .selector import Selector

__all__ = ["DecisionCache", "GuardedSelector", "ModelRegistry", "Selector", "SelectorMetrics"]
