"""The single-row runtime of the exported dense networks, read out of the artifact's own ONNX graph.

A light decision runs its network on one row. onnxruntime's fixed cost per run (about 4-6 µs here: I/O
binding, graph walk, kernel dispatch) is most of that decision, and the decision's time is charged to the
transfer (DESIGN section 5a); the network itself is a few thousand multiply-adds. So for a graph of the
exact shape ``onnx_graph.mlp_to_onnx`` writes (``Gemm``/``Relu`` layers ending in ``Softmax`` or
``Identity``), the weights are read out of the graph and one row runs in the compiled ``_dense`` module.

The ONNX graph stays the model: batches and every other graph (the converted trees) run in onnxruntime,
and ``runtime.OnnxTier`` checks on load that both runtimes give the same outputs on probe rows, falling
back to onnxruntime if they do not.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .._dense import Dense

__all__ = ["Dense", "dense_from_onnx"]


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def dense_from_onnx(onnx_bytes: bytes) -> Dense | None:
    """The compiled network of a dense ReLU graph, or None for any other graph (trees, unknown ops)."""
    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception:  # not a graph we can read: onnxruntime reports the real problem when it loads it
        return None
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        return None
    inits = {t.name: t for t in graph.initializer}
    layers: list[tuple[bytes, bytes, int, int]] = []
    relu_after: list[bool] = []
    current = graph.input[0].name
    softmax: bool | None = None
    for node in graph.node:
        if softmax is not None or not node.input or node.input[0] != current or len(node.output) != 1:
            return None  # anything after the output node, or a node off the single chain
        if node.op_type == "Gemm":
            if (
                len(node.input) != 3
                or (relu_after and not relu_after[-1])  # two Gemms without a Relu between them
                or _attr(node, "transA", 0) != 0
                or _attr(node, "transB", 0) != 1
                or any(a.name in ("alpha", "beta") and a.f != 1.0 for a in node.attribute)
                or node.input[1] not in inits
                or node.input[2] not in inits
            ):
                return None
            w = numpy_helper.to_array(inits[node.input[1]])
            b = numpy_helper.to_array(inits[node.input[2]])
            if w.ndim != 2 or b.shape != (w.shape[0],) or w.dtype != np.float32 or b.dtype != np.float32:
                return None
            layers.append((np.ascontiguousarray(w).tobytes(), b.tobytes(), int(w.shape[0]), int(w.shape[1])))
            relu_after.append(False)
        elif node.op_type == "Relu":
            if not relu_after or relu_after[-1]:
                return None
            relu_after[-1] = True
        elif node.op_type in ("Softmax", "Identity"):
            if node.op_type == "Softmax" and _attr(node, "axis", -1) not in (1, -1):
                return None
            softmax = node.op_type == "Softmax"
        else:
            return None
        current = node.output[0]
    # the compiled network puts a ReLU after every layer but the last
    if not layers or relu_after != [True] * (len(layers) - 1) + [False]:
        return None
    if softmax is None or current != graph.output[0].name:
        return None
    try:
        return Dense(layers, softmax)
    except (ValueError, TypeError):
        return None
