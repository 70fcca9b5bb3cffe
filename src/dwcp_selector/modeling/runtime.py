"""Running a model artifact: batches in onnxruntime, one vector for a decision.

Sessions run single-threaded (a decision is one row; threads cost more than they save) with every graph
optimisation on. A dense network's single row runs in the compiled runtime (``dense``: the weights read
out of the same ONNX graph, well under a microsecond) once it has given onnxruntime's outputs on probe rows
at load; any other graph, or a disagreement, keeps onnxruntime for single rows too: one input array and an
I/O binding per thread, so a call is one copy of the features and one ``run`` (4-6 µs on a 2-core VM).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from ..errors import ArtifactError
from .artifact import ModelArtifact, TierModel
from .dense import Dense, dense_from_onnx

__all__ = ["OnnxTier", "TieredModel"]

log = logging.getLogger(__name__)

#: Probe rows the compiled runtime must answer as onnxruntime does before it serves a tier, and how close.
AGREEMENT_ROWS = 64
AGREEMENT_TOLERANCE = 1e-4


def _session(onnx_bytes: bytes, tier: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
        raise ArtifactError(f"onnxruntime cannot load the {tier} model: {exc}") from exc


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
        self.session = _session(tm.onnx, tm.tier)
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
        self.dense = self._checked_dense(tm)

    @property
    def single_row_runtime(self) -> str:
        """Which runtime answers ``predict_one``: "compiled" or "onnxruntime"."""
        return "compiled" if self.dense is not None else "onnxruntime"

    def _checked_dense(self, tm: TierModel) -> Dense | None:
        dense = dense_from_onnx(tm.onnx)
        if dense is None:
            return None
        if dense.inputs != self.width or dense.outputs != len(self.outputs):
            return None
        # rows around the inputs' working range (standardisation is inside the graph, so raw features of
        # any scale are fine): uniform in [-4, 4] with a few in [-100, 100]
        rng = np.random.default_rng(0)
        x = rng.uniform(-4.0, 4.0, size=(AGREEMENT_ROWS, self.width)).astype(np.float32)
        x[: AGREEMENT_ROWS // 8] *= 25.0
        reference = self.predict(x)
        compiled = np.array([dense.run(row.tolist()) for row in x], dtype=np.float64)
        if not np.allclose(compiled, reference, rtol=AGREEMENT_TOLERANCE, atol=AGREEMENT_TOLERANCE):
            worst = float(np.max(np.abs(compiled - reference)))
            log.warning(
                "%s tier: the compiled network differs from onnxruntime by up to %.3g; single rows run "
                "in onnxruntime",
                tm.tier,
                worst,
            )
            return None
        return dense

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch (N × inputs float32)."""
        out = self.session.run(
            [self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        )
        result: np.ndarray = np.asarray(out[0])
        return result

    def predict_one(self, vector: Sequence[float]) -> list[float]:
        """Outputs for one input vector."""
        if self.dense is not None:
            return self.dense.run(vector)
        return self.predict_one_onnxruntime(vector)

    def predict_one_onnxruntime(self, vector: Sequence[float]) -> list[float]:
        """Outputs for one input vector, from onnxruntime whatever the graph."""
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
