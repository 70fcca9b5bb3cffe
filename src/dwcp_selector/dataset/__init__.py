"""The dataset stage: data quality checks and export of telemetry into train/val/test splits."""

from __future__ import annotations

from .export import ExportReport, export_dataset, split_sessions
from .quality import QualityReport, assess

__all__ = ["ExportReport", "QualityReport", "assess", "export_dataset", "split_sessions"]
