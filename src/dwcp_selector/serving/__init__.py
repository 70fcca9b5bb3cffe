"""Serving: the selector a sending service embeds (model, fast path, decision cache)."""

from __future__ import annotations

from .selector import Selector

__all__ = ["Selector"]
