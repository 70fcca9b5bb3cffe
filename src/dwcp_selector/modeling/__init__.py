"""The model as data: input vectors, the decision policy, the artifact format, the ONNX runtime and the
single-decision path. Shared by training (which writes artifacts) and serving (which runs them)."""

from __future__ import annotations

from .artifact import ModelArtifact, load_artifact, save_artifact
from .decide import Decider, Decision
from .featurize import FeatureSpec
from .policy import DecisionTimes, FastRule, PolicyParams
from .runtime import TieredModel

__all__ = [
    "Decider",
    "Decision",
    "DecisionTimes",
    "FastRule",
    "FeatureSpec",
    "ModelArtifact",
    "PolicyParams",
    "TieredModel",
    "load_artifact",
    "save_artifact",
]
