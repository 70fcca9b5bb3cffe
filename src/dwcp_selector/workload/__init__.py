"""Staging workload: payload families, versions of resources, link and CPU draws (DESIGN section 3)."""

from __future__ import annotations

from .payloads import (
    compressed_media,
    demo_payloads,
    dirty_round,
    logs_json,
    random_bytes,
    text_words,
    vm_memory,
)

__all__ = [
    "compressed_media",
    "demo_payloads",
    "dirty_round",
    "logs_json",
    "random_bytes",
    "text_words",
    "vm_memory",
]
