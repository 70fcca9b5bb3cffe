"""Dense networks written straight into ONNX from their weights.

A trained MLP is a handful of matrices; writing them as ``Gemm``/``Relu`` nodes needs no exporter, gives
the same graph on every torch version, and lets the input standardisation be folded into the first layer
(x − mean) / std, so the deployed model takes raw features and the transfer agent (Go, Rust, Python)
needs onnxruntime alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "mlp_to_onnx"]

OPSET = 17


def mlp_to_onnx(
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    mean: np.ndarray,
    std: np.ndarray,
    softmax: bool,
    name: str,
    doc: str = "",
) -> bytes:
    """An ONNX model computing the MLP ``layers`` (weight (out, in), bias (out,)) with ReLU between them.

    Input ``x`` (N × inputs, float32, raw features); output ``y`` (N × outputs): probabilities when
    ``softmax``, else the last layer's values.
    """
    if not layers:
        raise ValueError("an MLP needs at least one layer")
    w0, b0 = layers[0]
    inv = 1.0 / np.where(std > 0, std, 1.0)
    # W (x − μ)/σ + b  =  (W diag(1/σ)) x + (b − W diag(1/σ) μ)
    w0f = (w0 * inv[None, :]).astype(np.float32)
    b0f = (b0 - w0f @ mean).astype(np.float32)
    weights = [(w0f, b0f)] + [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers[1:]]
    nodes = []
    inits = []
    current = "x"
    for i, (w, b) in enumerate(weights):
        wn, bn, out = f"w{i}", f"b{i}", f"h{i}"
        inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        nodes.append(helper.make_node("Gemm", [current, wn, bn], [out], transB=1, name=f"dense{i}"))
        current = out
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    if softmax:
        nodes.append(helper.make_node("Softmax", [current], ["y"], axis=1, name="softmax"))
    else:
        nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    n_in = weights[0][0].shape[1]
    n_out = weights[-1][0].shape[0]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n_out])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dwcp-selector"
    )
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
