"""The ``dwcp-selector`` command line: a thin layer over the library; every command has ``--json``."""

from __future__ import annotations

from . import ab, codec, data, demo, model, registry, rollout  # noqa: F401  (the modules register their commands on the group)
from ._app import cli, main

__all__ = ["cli", "main"]
