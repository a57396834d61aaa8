"""In-memory edits of ONNX graphs that keep a model's scores and make it cheaper to run.

- :func:`nchw_input`: a TensorFlow export takes NHWC and transposes to NCHW first; our batches are
  NCHW, so the transpose is dropped and the input declared NCHW (no permuted copy per batch).
- :func:`inline_constant_ifs`: a Keras export keeps, for every batch norm, an ``If`` on the
  constant ``keras_learning_phase`` whose other branch computes training statistics; each is
  replaced by the branch the constant selects, and the nodes only the other branch used are
  dropped.
- :func:`add_output`: expose an inner tensor (the pooled features) as a second graph output.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def nchw_input(model: onnx.ModelProto) -> bool:
    """Drop a first ``Transpose`` NHWC→NCHW of the graph input and declare the input NCHW;
    False (and nothing changed) when the graph does not start so."""
    graph = model.graph
    first, source = graph.node[0], graph.input[0]
    perm = [list(a.ints) for a in first.attribute if a.name == "perm"]
    if not (first.op_type == "Transpose" and first.input[0] == source.name
            and perm == [[0, 3, 1, 2]]):
        return False
    for node in graph.node[1:]:
        node.input[:] = [source.name if i == first.output[0] else i for i in node.input]
    graph.node.remove(first)
    dims = source.type.tensor_type.shape.dim
    h, w, c = (dims[k].dim_value for k in (1, 2, 3))
    for k, v in zip((1, 2, 3), (c, h, w), strict=True):
        dims[k].dim_value = v
    return True


def inline_constant_ifs(model: onnx.ModelProto) -> int:
    """Replace every ``If`` whose condition is a graph initializer by the nodes of the branch
    it selects, then drop the nodes and initializers no output needs; the number replaced."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, inlined = [], 0
    for node in graph.node:
        cond = node.input[0] if node.op_type == "If" else None
        branch = None
        if cond in inits:
            chosen = "then_branch" if bool(numpy_helper.to_array(inits[cond])) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == chosen)
        if branch is None or len(branch.initializer):
            nodes.append(node)
            continue
        names = {o.name: out for o, out in zip(branch.output, node.output, strict=True)}
        for inner in branch.node:
            inner.input[:] = [names.get(i, i) for i in inner.input]
            inner.output[:] = [names.get(o, o) for o in inner.output]
            nodes.append(inner)
        inlined += 1
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    return inlined


def add_output(model: onnx.ModelProto, name: str, width: int) -> None:
    """Expose the tensor ``name`` (N×``width`` floats) as an extra graph output."""
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", width]))
