"""Training and evaluation: candidates in both shapes of DESIGN section 5b, policy fitting, metrics."""

from __future__ import annotations

from .pipeline import CANDIDATES, TrainConfig, train

__all__ = ["CANDIDATES", "TrainConfig", "train"]
