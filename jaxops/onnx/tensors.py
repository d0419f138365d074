"""The tensors of an ONNX model that may come from anyone: read without touching files unless
the caller names a directory, and bounded in size before anything is allocated.

``onnx.numpy_helper.to_array`` and ``onnx.checker`` both follow a tensor's external-data
``location`` relative to the working directory (the checker even for a model held in memory),
so a model could read, or probe for, any file the caller can.  :func:`resolve_tensors` runs
before either sees the model: it finds every tensor however deeply it is nested (initializers,
node attributes, subgraphs of If/Loop/Scan, model-local functions, training information) and
either refuses external data or copies it in from inside ``external_data_dir``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

#: The default bound on one tensor, in bytes: a model of a few dozen bytes can ask for any
#: size (ConstantOfShape of [2^15, 2^15] is 4 GiB), so every tensor the importer makes is
#: checked against this before it is allocated.  Raise it with
#: ``import_model(model, max_tensor_bytes=...)``.
DEFAULT_MAX_TENSOR_BYTES = 2 * 1024**3

#: Element types a tensor may have: those JAX computes with.  Strings, complex numbers and
#: the sub-byte and 8-bit float formats have no jaxops op to feed.
SUPPORTED_TYPES = {
    t: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)) for t in (
        TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
        TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
        TensorProto.BOOL)
}

_PREFIX = "jaxops.onnx.import_model"


def element_type(elem_type: int, what: str) -> np.dtype:
    """The numpy dtype of an ONNX element type, or a clear refusal."""
    if elem_type in SUPPORTED_TYPES:
        return SUPPORTED_TYPES[elem_type]
    if elem_type not in TensorProto.DataType.values() or elem_type == TensorProto.UNDEFINED:
        raise ValueError(f"{_PREFIX}: {what} has no valid element type ({elem_type}). Fix the "
                         "model.")
    name = TensorProto.DataType.Name(elem_type)
    supported = ", ".join(TensorProto.DataType.Name(t) for t in SUPPORTED_TYPES)
    raise NotImplementedError(f"{_PREFIX}: {what} has element type {name}; the importer "
                              f"supports {supported}. Convert the model to one of these.")


#: Whatever ``max_tensor_bytes`` says, no shape may have an extent (see :func:`extent`) whose
#: bytes reach 2^63: XLA multiplies a shape's dimensions in int64 and aborts the process (it
#: does not raise) when the product overflows, even when another dimension is 0.
EXTENT_LIMIT_BYTES = 2**63 - 1


def extent(dims) -> int:
    """The product of ``dims`` counting each 0 as 1.  An empty tensor holds nothing, but its
    other dimensions still reach XLA, which multiplies them all in int64: a shape such as
    (2^32, 2^32, 0) overflows there and aborts the process.  Bounding this product, not the
    element count, keeps every shape the importer lets through safe to hand to XLA."""
    return math.prod(max(int(d), 1) for d in dims)


def check_size(what: str, shape, dtype, max_bytes: int) -> None:
    """Refuse a tensor of ``shape`` and ``dtype`` larger than ``max_bytes``, before it
    exists.  An empty tensor is measured as if its empty dimensions were 1 (:func:`extent`).
    ``what`` names the node or tensor."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ValueError(f"{_PREFIX}: {what} would have shape {tuple(dims)}, with a negative "
                         "dimension. Fix the model's shape values.")
    itemsize = np.dtype(dtype).itemsize
    nbytes = extent(dims) * itemsize
    if nbytes <= min(max_bytes, EXTENT_LIMIT_BYTES):
        return
    if 0 in dims:
        size = (f"an empty tensor of shape {tuple(dims)} and dtype {np.dtype(dtype).name}, "
                f"whose other dimensions amount to {nbytes:,} bytes")
    else:
        size = (f"a tensor of shape {tuple(dims)} and dtype {np.dtype(dtype).name}, "
                f"{nbytes:,} bytes")
    if nbytes > EXTENT_LIMIT_BYTES:
        raise ValueError(f"{_PREFIX}: {what} would make {size}, which overflows the 64-bit "
                         "size arithmetic of XLA (any bound). Fix the model's shape values.")
    raise ValueError(
        f"{_PREFIX}: {what} would make {size}, over the bound of {max_bytes:,} bytes per "
        "tensor (empty dimensions count as 1). If the model is trusted and the size intended, "
        "raise the bound: import_model(model, max_tensor_bytes=...).")


def to_array(t: TensorProto, what: str, max_bytes: int) -> np.ndarray:
    """A tensor's value, never read from a file, bounded before it is converted."""
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        # resolve_tensors loads or refuses every external tensor first; reaching here
        # would let onnx read a file relative to the working directory
        raise ValueError(f"{_PREFIX}: {what} uses external data, which is never read here.")
    dtype = element_type(t.data_type, what)
    check_size(what, t.dims, dtype, max_bytes)
    try:
        value = numpy_helper.to_array(t)
    except Exception as e:  # data of the wrong length, ...
        raise ValueError(f"{_PREFIX}: {what} is not a valid tensor ({type(e).__name__}: "
                         f"{e}). Fix or re-export the model.") from None
    return value


# ------------------------------------------------------------------ finding every tensor

def _graph_tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple]:
    """(tensor proto, description) for each tensor of a graph and of its nodes' attributes,
    subgraphs included.  Sparse tensors come as their ``values`` and ``indices``."""
    stack = [(graph, where)]
    while stack:  # a stack, not recursion: nesting depth is the model's choice
        g, at = stack.pop()
        for t in g.initializer:
            yield t, f"initializer {t.name!r}{at}"
        for s in g.sparse_initializer:
            yield s.values, f"sparse initializer {s.values.name!r}{at}"
            yield s.indices, f"indices of sparse initializer {s.values.name!r}{at}"
        for node in g.node:
            yield from _node_tensors(node, at, stack)


def _node_tensors(node, at, subgraphs):
    for a in node.attribute:
        yield from _attribute_tensors(a, f"attribute {a.name!r} of {node.op_type} node "
                                         f"{node.name!r}{at}")
        inner = f" (in a subgraph of {node.op_type} node {node.name!r}{at})"
        if a.HasField("g"):
            subgraphs.append((a.g, inner))
        subgraphs.extend((g, inner) for g in a.graphs)


def _attribute_tensors(a: AttributeProto, what: str) -> Iterator[tuple]:
    if a.ref_attr_name:
        # `value = @v` in a function body holds no tensor of its own: the inliner puts the
        # caller's (or the function's default) in its place, and those are walked where they
        # are written.  A field set on the reference anyway is walked below, to be bounded.
        tensors = [a.t] if a.HasField("t") else []
        sparse = [a.sparse_tensor] if a.HasField("sparse_tensor") else []
        tensors += list(a.tensors)
        sparse += list(a.sparse_tensors)
    else:
        tensors = ([a.t] if a.type == AttributeProto.TENSOR else
                   list(a.tensors) if a.type == AttributeProto.TENSORS else [])
        sparse = ([a.sparse_tensor] if a.type == AttributeProto.SPARSE_TENSOR else
                  list(a.sparse_tensors) if a.type == AttributeProto.SPARSE_TENSORS else [])
        # a sparse tensor or a subgraph can sit in a field that its type does not name;
        # onnx's helpers read the field, so the walk looks at every field
        if a.HasField("t") and a.type != AttributeProto.TENSOR:
            tensors.append(a.t)
        if a.HasField("sparse_tensor") and a.type != AttributeProto.SPARSE_TENSOR:
            sparse.append(a.sparse_tensor)
    for t in tensors:
        yield t, what
    for s in sparse:
        yield s.values, what
        yield s.indices, what


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple]:
    """Every tensor proto in the model, with where it is: the graph, model-local functions
    and training information."""
    yield from _graph_tensors(model.graph, "")
    for f in model.functions:
        at = f" (in function {f.domain}.{f.name})"
        for a in f.attribute_proto:  # defaults, which the inliner copies into the body
            yield from _attribute_tensors(a, f"default of attribute {a.name!r}{at}")
        subgraphs: list = []
        for node in f.node:
            yield from _node_tensors(node, at, subgraphs)
        for g, inner in subgraphs:
            yield from _graph_tensors(g, inner)
    for k, info in enumerate(model.training_info):
        yield from _graph_tensors(info.initialization, f" (in training_info[{k}])")
        yield from _graph_tensors(info.algorithm, f" (in training_info[{k}])")


def _declared_bytes(t: TensorProto, what: str) -> int:
    if any(d < 0 for d in t.dims):
        raise ValueError(f"{_PREFIX}: {what} declares shape {tuple(t.dims)}, with a negative "
                         "dimension. Fix the model.")
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    if t.data_type not in TensorProto.DataType.values() or t.data_type == 0:
        raise ValueError(f"{_PREFIX}: {what} has no valid element type ({t.data_type}). Fix "
                         "the model.")
    bits = {TensorProto.UINT4: 4, TensorProto.INT4: 4, TensorProto.FLOAT4E2M1: 4,
            TensorProto.UINT2: 2, TensorProto.INT2: 2, TensorProto.FLOAT6E2M3: 6,
            TensorProto.FLOAT6E3M2: 6}.get(t.data_type)
    n = extent(t.dims)  # as check_size: an empty tensor's other dims must be safe for XLA
    if bits is not None:
        return (n * bits + 7) // 8
    return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def resolve_tensors(model: onnx.ModelProto, external_data_dir: str | os.PathLike | None,
                    max_bytes: int) -> onnx.ModelProto:
    """A copy of ``model`` in which no tensor refers to a file, every tensor's declared size
    within ``max_bytes``.  External data is refused unless ``external_data_dir`` is given;
    then it is read from files inside that directory only."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t, what in all_tensors(copy):
        nbytes = _declared_bytes(t, what)
        if nbytes > max_bytes:
            raise ValueError(
                f"{_PREFIX}: {what} declares shape {tuple(t.dims)}, {nbytes:,} bytes, over the "
                f"bound of {max_bytes:,} bytes per tensor (empty dimensions count as 1). If the "
                "model is trusted, raise the bound: import_model(model, max_tensor_bytes=...).")
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            if external_data_dir is None:
                raise ValueError(
                    f"{_PREFIX}: {what} uses external data (a file named by the model); files "
                    "are never read unless you name the directory that holds them: "
                    "import_model(model, external_data_dir=...). Only files inside it are read.")
            _load_external(t, what, external_data_dir, nbytes)
    return copy


def _load_external(t: TensorProto, what: str, base, nbytes: int) -> None:
    info = {e.key: e.value for e in t.external_data}

    def refuse(why):
        raise ValueError(f"{_PREFIX}: {what}: external data {why}; only files inside "
                         f"external_data_dir ({os.fspath(base)!r}) are read. Fix the model's "
                         "external_data entries.")

    location = info.get("location", "")
    if t.data_location != TensorProto.EXTERNAL:
        refuse("entries on a tensor whose data_location is not EXTERNAL")
    if t.data_type == TensorProto.STRING:
        refuse("of a string tensor (ONNX stores only fixed-size types externally)")
    # everything is checked before the first OS call, whose own errors ("embedded null
    # byte", "cannot fit 'int' into an offset-sized integer") would not name the tensor
    if any(ord(c) < 32 or ord(c) == 127 for c in location):
        refuse(f"at {location!r}: the location has a control character (a NUL, a newline, "
               "...), which no file name written by an exporter has")
    if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
        refuse(f"at {location!r}: not a relative path without '..'")
    offset = _byte_count(info.get("offset", "0"), "offset", refuse)
    length = _byte_count(info.get("length", str(nbytes)), "length", refuse)
    if length != nbytes:
        refuse(f"length {length}: the length must be the tensor's size, {nbytes} bytes")
    try:
        root = os.path.realpath(base)
        path = os.path.realpath(os.path.join(root, location))  # follows symlinks
        if os.path.commonpath([root, path]) != root:
            refuse(f"at {location!r} resolves outside the directory")
        if not os.path.isfile(path):
            refuse(f"at {location!r} is not a regular file")
        size = os.path.getsize(path)
        if offset + nbytes > size:
            refuse(f"at {location!r} has {max(size - offset, 0)} bytes from offset {offset}, "
                   f"not {nbytes}")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(nbytes)  # bounded by the declared size, checked against max_bytes
    except (OSError, ValueError) as e:
        if str(e).startswith(_PREFIX):
            raise
        refuse(f"at {location!r} cannot be read ({type(e).__name__}: {e})")
    if len(data) != nbytes:  # the file shrank since it was measured
        refuse(f"at {location!r} has {len(data)} bytes from offset {offset}, not {nbytes}")
    t.raw_data = data
    t.data_location = TensorProto.DEFAULT
    del t.external_data[:]


def _byte_count(text: str, key: str, refuse) -> int:
    """An external_data ``offset`` or ``length``: decimal digits naming a byte position that
    a file can have (below 2^63, the OS's limit for a file offset)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= 2**63:
        refuse(f"{key} {text!r} is not a byte count (decimal digits, below 2^63)")
    return int(text)
