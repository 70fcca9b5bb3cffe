"""Option types and bounds the commands share.

click's ranges let NaN and infinity through (NaN compares false against every bound), and an unbounded
count takes any integer, so ``--workers 10**30`` reached the process pool and ``--repeats 10**30`` never
ended. Every number a command takes is finite and bounded here, and the bad ones are usage errors that
name the option.
"""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = ["MAX_SAMPLES", "MAX_TRIALS", "MAX_WORKERS", "SEED", "FiniteFloatRange"]

#: seeds go to numpy, torch and LightGBM; LightGBM's is a C int
SEED = click.IntRange(0, 2**31 - 1)
#: staging records a collection (or the demo) may be asked for
MAX_SAMPLES = 100_000_000
#: worker processes a collection (or the demo) may start
MAX_WORKERS = 256
#: Optuna trials per candidate
MAX_TRIALS = 10_000


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses NaN and ±infinity."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv
