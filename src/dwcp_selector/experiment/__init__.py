"""Experiments on the transfer path: hash assignment, the A/B analysis and its gate, replayed A/B tests
on logged records, and the rollout controller with its guardrails."""

from __future__ import annotations

from .assignment import ARMS, UNITS, Assignment

__all__ = ["ARMS", "UNITS", "Assignment"]
