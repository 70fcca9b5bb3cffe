"""Running a model artifact with onnxruntime: batches for evaluation, one vector for a decision.

Sessions run single-threaded (a decision is one row; threads cost more than they save) with every graph
optimisation on. The single-row path keeps one input array and an I/O binding per thread, so a call is
one copy of the features and one ``run``: about 6 µs on a 2-core VM.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from ..errors import ArtifactError
from .artifact import ModelArtifact, TierModel

__all__ = ["OnnxTier", "TieredModel"]


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
        raise ArtifactError(f"onnxruntime cannot load the model: {exc}") from exc


class _Binding(threading.local):
    def __init__(self) -> None:
        self.buf: np.ndarray | None = None
        self.out: np.ndarray | None = None
        self.io: ort.IOBinding | None = None


class OnnxTier:
    """One tier's ONNX model."""

    def __init__(self, tm: TierModel) -> None:
        self.tier = tm.tier
        self.spec = tm.spec
        self.outputs = tm.outputs
        self.session = _session(tm.onnx)
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        # our networks name their output y; converted trees give (label, probabilities)
        self.output_name = next((n for n in ("y", "probabilities") if n in outputs), outputs[0])
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != len(tm.spec.names):
            raise ArtifactError(
                f"{tm.tier} model takes {width} inputs, its feature spec names {len(tm.spec.names)}"
            )
        self.width = len(tm.spec.names)
        self._local = _Binding()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch (N × inputs float32)."""
        out = self.session.run(
            [self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        )
        result: np.ndarray = np.asarray(out[0])
        return result

    def predict_one(self, vector: Sequence[float]) -> list[float]:
        """Outputs for one input vector."""
        local = self._local
        if local.buf is None or local.out is None or local.io is None:
            local.buf = np.zeros((1, self.width), dtype=np.float32)
            local.out = np.zeros((1, len(self.outputs)), dtype=np.float32)
            local.io = self.session.io_binding()
            local.io.bind_cpu_input(self.input_name, local.buf)
            # the output is written straight into our buffer: no copy, no allocation per call
            local.io.bind_ortvalue_output(self.output_name, ort.OrtValue.ortvalue_from_numpy(local.out))
        local.buf[0, :] = vector
        self.session.run_with_iobinding(local.io)
        result: list[float] = local.out[0].tolist()
        return result


class TieredModel:
    """Every tier of an artifact, ready to run."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self.artifact = artifact
        self.tiers = {name: OnnxTier(tm) for name, tm in artifact.tiers.items()}

    def __getitem__(self, tier: str) -> OnnxTier:
        try:
            return self.tiers[tier]
        except KeyError:
            raise ArtifactError(f"model has no {tier!r} tier (has {sorted(self.tiers)})") from None
