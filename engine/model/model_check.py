"""Check that an ONNX file is an emoengine EmoNet export (CONTRACT.md's tensors) before a session is built.

A foreign or hand-edited model would otherwise load fine and fail at the first batch, minutes into a run,
with an ONNX Runtime message about shapes; here it is refused up front with one line naming what differs.
Only the graph's declared inputs and outputs are read (no external data, nothing executed).
"""

from __future__ import annotations

import os
from pathlib import Path

from emoengine.contract import FULL_TAP_OUTPUTS, INPUT_NAME, INPUT_SHAPE, MEAN_TAP_OUTPUTS, REQUIRED_OUTPUTS
from emoengine.errors import UserInputError

# name -> per-face dims that must match where the file declares them (rank = 1 + their count)
CONTRACT_OUTPUTS = REQUIRED_OUTPUTS
OPTIONAL_OUTPUTS = {**MEAN_TAP_OUTPUTS, **FULL_TAP_OUTPUTS}


def _dims(value_info) -> list[int | None]:
    """Declared dims: an int where static, None where symbolic or unknown."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _fmt(dims: list[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def contract_problems(model) -> list[str]:
    """What in an `onnx.ModelProto` differs from the contract (empty when it is ours)."""
    from onnx import TensorProto

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    problems = []
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"inputs {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
    else:
        image = inputs[0]
        dtype = image.type.tensor_type.elem_type
        if dtype != TensorProto.UINT8:
            problems.append(f"input image is {TensorProto.DataType.Name(dtype).lower()}, expected uint8")
        dims = _dims(image)
        if len(dims) != 4 or any(d is not None and d != want for d, want in zip(dims[1:], INPUT_SHAPE, strict=True)):
            problems.append(f"input image is {_fmt(dims)}, expected {_fmt([None, *INPUT_SHAPE])}")
    outputs = {o.name: o for o in graph.output}
    missing = [name for name in CONTRACT_OUTPUTS if name not in outputs]
    if missing:
        problems.append(f"outputs {sorted(outputs)} lack {', '.join(missing)}")
    for name, tail in {**CONTRACT_OUTPUTS, **OPTIONAL_OUTPUTS}.items():
        rank = 1 + len(tail)
        if name not in outputs:
            continue
        o = outputs[name]
        dims = _dims(o)
        if o.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            problems.append(f"output {name} is not float")
        elif len(dims) != rank or any(d is not None and w is not None and d != w
                                      for d, w in zip(dims[1:], tail, strict=True)):
            problems.append(f"output {name} is {_fmt(dims)}")
    return problems


def check_onnx_contract(path: str | os.PathLike) -> None:
    """One UserInputError line when `path` is not an ONNX file with the contract's tensors."""
    from emoengine.export.artifacts import load_onnx

    path = Path(path)
    model = load_onnx(path)
    problems = contract_problems(model)
    if problems:
        raise UserInputError(f"not an emoengine EmoNet export: {path}: {'; '.join(problems)}; "
                             "make one with `emoengine export`")
