"""Telemetry: the record schema, the stores (SQLite, PostgreSQL), the collector and staging collection."""

from __future__ import annotations

from .collector import CollectorMetrics, TelemetryCollector
from .schema import COLUMN_NAMES, FEATURE_COLUMNS, SCHEMA_VERSION, TABLE, QualityFlag
from .staging import CollectionReport, collect
from .store import RetentionReport, StoreError, StoreUnavailableError, TelemetryStore, open_store

__all__ = [
    "COLUMN_NAMES",
    "FEATURE_COLUMNS",
    "SCHEMA_VERSION",
    "TABLE",
    "CollectionReport",
    "CollectorMetrics",
    "QualityFlag",
    "RetentionReport",
    "StoreError",
    "StoreUnavailableError",
    "TelemetryCollector",
    "TelemetryStore",
    "collect",
    "open_store",
]
