"""A minimal reader of TensorFlow-1 frozen graphs (``GraphDef`` ``.pb`` files), without TensorFlow.

A frozen graph is a protobuf message; this module decodes its wire format directly (varints and
length-delimited fields) and keeps only what a port to torch needs: each node's name, op, inputs and
the attributes that hold numbers, strings, lists of ints and constant tensors. The field numbers are
those of tensorflow/core/framework ``graph.proto`` (GraphDef.node = 1), ``node_def.proto`` (name 1,
op 2, input 3, attr 5), ``attr_value.proto`` (list 1, s 2, i 3, f 4, b 5, type 6, tensor 8),
``tensor.proto`` (dtype 1, shape 2, tensor_content 4, float_val 5, int_val 7) and
``tensor_shape.proto`` (dim 2, dim.size 1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explain.errors import ModelError

# TensorFlow DataType enum values → numpy dtypes (the ones frozen classifiers hold)
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_}


@dataclass
class Node:
    """One node of the graph: ``attrs`` maps an attribute name to its decoded value (a str, int,
    float, bool, list of ints or numpy array)."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def fields(data: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: an int for varints, a memoryview for
    length-delimited and fixed-width fields."""
    i, end = 0, len(data)
    while i < end:
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > end:
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def _packed_ints(wire: int, value: object) -> list[int]:
    if wire == 0:
        return [int(value)]  # type: ignore[arg-type]
    out, i, data = [], 0, value
    while i < len(data):  # type: ignore[arg-type]
        v, i = _varint(data, i)  # type: ignore[arg-type]
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def _shape(data: memoryview) -> list[int]:
    """A TensorShapeProto's dimension sizes."""
    dims = []
    for number, _, dim in fields(data):
        if number == 2:
            sizes = [v for n, _, v in fields(dim) if n == 1]  # type: ignore[arg-type]
            dims.append(int(sizes[0]) if sizes else 0)  # type: ignore[arg-type]
    return dims


def _tensor(data: memoryview) -> np.ndarray:
    dtype, shape, content, floats, ints = 1, [], None, [], []
    for number, wire, value in fields(data):
        if number == 1:
            dtype = int(value)  # type: ignore[arg-type]
        elif number == 2:
            shape = _shape(value)  # type: ignore[arg-type]
        elif number == 4:
            content = bytes(value)  # type: ignore[arg-type]
        elif number == 5:
            b = bytes(value)  # type: ignore[arg-type]
            floats += list(struct.unpack(f"<{len(b) // 4}f", b)) if wire == 2 else \
                [struct.unpack("<f", b)[0]]
        elif number == 7:
            ints += _packed_ints(wire, value)
    if dtype not in DTYPES:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    np_dtype = DTYPES[dtype]
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=np.dtype(np_dtype).newbyteorder("<")).astype(np_dtype)
    else:
        values = floats if np_dtype in (np.float32, np.float64) else ints
        arr = np.array(values, dtype=np_dtype)
        if arr.size == 1 and count > 1:  # one value stands for a filled tensor
            arr = np.full(count, arr[0], dtype=np_dtype)
    return arr.reshape(shape)


def _attr(data: memoryview) -> object:
    for number, _, value in fields(data):
        if number == 2:
            return bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
        if number in (3, 6):
            return int(value)  # type: ignore[arg-type]
        if number == 4:
            return struct.unpack("<f", bytes(value))[0]  # type: ignore[arg-type]
        if number == 5:
            return bool(value)
        if number == 8:
            return _tensor(value)  # type: ignore[arg-type]
        if number == 1:
            return [i for n, w, v in fields(value) if n == 3  # type: ignore[arg-type]
                    for i in _packed_ints(w, v)]
    return None


def _node(data: memoryview) -> Node:
    node = Node(name="", op="")
    for number, _, value in fields(data):
        if number == 1:
            node.name = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 2:
            node.op = bytes(value).decode()  # type: ignore[arg-type]
        elif number == 3:
            node.inputs.append(bytes(value).decode())  # type: ignore[arg-type]
        elif number == 5:
            entry = {n: v for n, _, v in fields(value)}  # type: ignore[arg-type]
            node.attrs[bytes(entry[1]).decode()] = _attr(entry.get(2, memoryview(b"")))
    return node


def read_graph(path: str | Path) -> dict[str, Node]:
    """The nodes of the frozen graph at ``path``, by name, in file order."""
    try:
        data = memoryview(Path(path).read_bytes())
        return {n.name: n for n in (_node(v) for k, _, v in fields(data) if k == 1)}  # type: ignore[arg-type]
    except (OSError, ValueError, IndexError, KeyError, struct.error) as exc:
        raise ModelError(f"cannot read the TensorFlow graph {path}: {exc}") from exc


def constant(graph: dict[str, Node], name: str) -> np.ndarray:
    """The value of the constant ``name`` reaches, following ``Identity`` nodes (a variable's
    ``…/read``) and dropping a ``:0`` output suffix."""
    node = graph[name.split(":")[0]]
    while node.op == "Identity":
        node = graph[node.inputs[0].split(":")[0]]
    if node.op != "Const":
        raise ModelError(f"graph node {name} is a {node.op}, not a constant")
    return node.attrs["value"]  # type: ignore[return-value]
