"""fp16 ONNX from our fp32 export, with the few ops that fp16 cannot hold kept in fp32.

Why a converter of our own: it is ~150 lines over `onnx` (already a core dependency), it knows our graph's
fp32-only inputs (Resize's `scales`), and it places one Cast per tensor per precision change rather than one per
consumer. TensorRT builds the result as a strongly typed network: the precision of every layer is the one written
in the graph (TensorRT 11 has no FP16 builder flag), so what is kept in fp32 here stays fp32 on the GPU.

What to keep was found by measurement (`activation_ranges`, `fp16_parity`; see README "fp16"): the golden
weights' activations are of order 1..100 nearly everywhere, but the attention mask (the sum of the 68 landmark
heatmaps) and the masked features reach the thousands, and the emotion head's pooled sums lose accuracy.
`KEEP_FP32_OPS`/`keep_fp32_nodes` name those regions; everything else (the convolutions, 99% of the FLOPs) is fp16.
Graph input (uint8 image) and outputs (float32) keep their types, so every runner and the contract are unchanged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from emoengine.errors import RunFailure, UserInputError

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16 (no onnx import at module load)
FP16_MAX = 65504.0

# Inputs that ONNX types as float32 whatever the data's precision (index per op type).
FP32_ONLY_INPUTS = {"Resize": {2}, "Upsample": {1}}

# A node whose output reaches FP16_MAX / RANGE_HEADROOM on the calibration crops stays fp32: real faces and
# real weights may go a few times beyond what 4 crops show.
RANGE_HEADROOM = 8.0
# Kept fp32 whatever the measurement says: the attention mask (sum of the 68 heatmaps) and its product with the
# features. Cheap (no convolution) and the place where a trained model's ranges can grow (68 summed peaks).
PRECAUTION_FP32 = ("/net/ReduceSum", "/net/Mul")

# fp16 parity tolerances, worst |fp16 - fp32| / max|fp32| per output. Measured with emulate_fp16 on the golden
# 8-class weights and crops: expression 3.5e-3, valence 2.9e-3, arousal 3.2e-3 (4.9e-3 with the mask fp32),
# heatmap 3.7e-3, conv1_mean 1.1e-3, emo_conv1_mean 7.6e-3; the tolerances give 2-3x headroom.
# The same on the whole PyTorch model in half precision (torch 2.13 CPU half arithmetic, golden crops; what
# torch-cuda:fp16 computes): expression 3.6e-3, valence 5.4e-3, arousal 3.8e-3, heatmap 4.0e-3, conv1_mean
# 1.1e-3, emo_conv1_mean 6.7e-3: within the same tolerances.
FP16_TOLERANCE = {"expression": 1e-2, "valence": 1e-2, "arousal": 1.5e-2, "heatmap": 1e-2,
                  "conv1_mean": 5e-3, "emo_conv1_mean": 2e-2, "conv1": 5e-3, "emo_conv1": 2e-2}
# bfloat16 keeps 8 mantissa bits to fp16's 11, and it shows: torch 2.13 CPU bf16 on the golden crops gave
# expression 6.6e-2, valence 4.9e-2, arousal 1.2e-1, heatmap 5.1e-2, conv1_mean 8.2e-3, emo_conv1_mean 6.7e-2,
# 10-30x fp16's error (and up to 1.5e-1 on the first 2 crops alone: the relative error depends on the crops).
# Tolerances ~2x the 4-crop numbers; prefer fp16 (same tensor-core speed, no overflow in this network).
BF16_TOLERANCE = {"expression": 0.15, "valence": 0.1, "arousal": 0.25, "heatmap": 0.1,
                  "conv1_mean": 2e-2, "emo_conv1_mean": 0.15, "conv1": 2e-2, "emo_conv1": 0.15}


@dataclass
class Fp16Report:
    path: Path
    kept_fp32: list[str]                       # node names left in fp32
    max_abs: float                             # largest activation on the calibration crops (fp32 graph)
    worst_rel_diff: dict[str, float] = field(default_factory=dict)   # emulated fp16 storage vs fp32
    tolerance: dict[str, float] = field(default_factory=dict)
    convert_s: float = 0.0
    size_bytes: int = 0


def convert_to_fp16(model, keep_fp32: Callable[[object], bool] | Iterable[str] = ()):
    """A copy of `model` (onnx.ModelProto, fp32) computing in fp16 except nodes where `keep_fp32(node)` is true
    (or whose names are listed). Graph inputs/outputs keep their types; Casts go where precision changes."""
    import onnx
    from onnx import helper, numpy_helper

    if not callable(keep_fp32):
        names = set(keep_fp32)
        keep_fp32 = lambda node: node.name in names  # noqa: E731

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    elem_type = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        elem_type[vi.name] = vi.type.tensor_type.elem_type
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for name, t in inits.items():
        elem_type[name] = t.data_type

    new_inits: dict[str, object] = {}          # name -> TensorProto actually used
    dtype_now: dict[str, int] = {}             # float tensor -> FLOAT / FLOAT16 in the new graph
    casts: dict[tuple[str, int], str] = {}     # (tensor, to) -> name of its cast
    new_nodes = []
    kept = []

    def typed_initializer(name: str, to: int) -> str:
        t = inits[name]
        if t.data_type == to:
            new_inits[name] = t
            return name
        alias = f"{name}__fp16" if to == FLOAT16 else f"{name}__fp32"
        if alias not in new_inits:
            arr = numpy_helper.to_array(t).astype(np.float16 if to == FLOAT16 else np.float32)
            new_inits[alias] = numpy_helper.from_array(arr, alias)
        return alias

    def as_type(name: str, to: int) -> str:
        if name in inits:
            return typed_initializer(name, to)
        if dtype_now.get(name, FLOAT) == to:
            return name
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
            casts[key] = out
        return casts[key]

    # tensors read only where ONNX wants float32 (Resize scales): their Constant producers stay fp32, so the
    # scales remain plain constants (TensorRT's parser wants static Resize scales, not a Cast of them)
    slots: dict[str, set[bool]] = {}
    for node in graph.node:
        fixed = FP32_ONLY_INPUTS.get(node.op_type, set())
        for i, name in enumerate(node.input):
            slots.setdefault(name, set()).add(i in fixed)
    fp32_only = {name for name, kinds in slots.items() if kinds == {True}}

    for node in graph.node:
        scales_only = node.op_type == "Constant" and all(o in fp32_only for o in node.output)
        fp32 = scales_only or bool(keep_fp32(node))
        target = FLOAT if fp32 else FLOAT16
        if fp32 and not scales_only:
            kept.append(node.name)
        fixed = FP32_ONLY_INPUTS.get(node.op_type, set())
        for i, name in enumerate(node.input):
            if not name or elem_type.get(name) != FLOAT:
                continue
            node.input[i] = as_type(name, FLOAT if i in fixed else target)
        if node.op_type == "Cast":
            attr = next(a for a in node.attribute if a.name == "to")
            if attr.i == FLOAT:
                attr.i = target
        elif node.op_type in ("Constant", "ConstantOfShape") and target == FLOAT16:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    arr = numpy_helper.to_array(attr.t).astype(np.float16)
                    attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
        for out in node.output:
            if elem_type.get(out) == FLOAT:
                dtype_now[out] = target
        new_nodes.append(node)

    # graph outputs keep float32: the last producer writes `<name>__fp16`, a Cast restores the contract name
    for out in graph.output:
        if out.type.tensor_type.elem_type != FLOAT or dtype_now.get(out.name, FLOAT) == FLOAT:
            continue
        inner = f"{out.name}__fp16"
        for node in new_nodes:
            for i, n in enumerate(node.input):
                if n == out.name:
                    node.input[i] = inner
            for i, n in enumerate(node.output):
                if n == out.name:
                    node.output[i] = inner
        new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"cast_{out.name}_out"))

    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {n for node in new_nodes for n in node.input}
    del graph.initializer[:]
    graph.initializer.extend(t for name, t in new_inits.items() if name in used)
    del graph.value_info[:]
    props = {p.key: p.value for p in model.metadata_props}
    props["precision"] = "fp16"
    props["fp32_nodes"] = str(len(kept))
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model, kept


def activation_ranges(model, images: np.ndarray, chunk: int = 96) -> dict[str, tuple[str, str, float]]:
    """max |activation| of every float tensor of `model` (ModelProto) on `images`, under ORT CPU:
    {tensor: (producer node, op type, max abs)}. Intermediates are exposed `chunk` at a time to bound memory."""
    import onnx
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    float_vi = {vi.name: vi for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == FLOAT}
    producer = {o: (n.name, n.op_type) for n in model.graph.node for o in n.output}
    names = [o for n in model.graph.node for o in n.output if o in float_vi]
    ranges = {}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor as in the file
    so.log_severity_level = 3
    for start in range(0, len(names), chunk):
        part = names[start:start + chunk]
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        del probe.graph.output[:]
        probe.graph.output.extend(float_vi[n] for n in part)
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for name, value in zip(part, sess.run(part, {"image": images})):
            ranges[name] = (*producer[name], float(np.abs(value).max()))
    return ranges


def emulate_fp16(model, keep_fp32: Callable[[object], bool] | Iterable[str] = ()):
    """The fp32 graph with fp16 *storage* emulated: every tensor an fp16 node reads or writes goes through a
    Cast fp32->fp16->fp32 round trip (overflow to inf included) and its weights are rounded to fp16 values.

    Why: ONNX Runtime's CPU provider has no fp16 kernels for most ops and runs the converted model by inserting
    Casts to fp32 around them, then fuses those Casts with the graph's own, so most fp16 rounding silently
    disappears (measured: a Cast-fp16 / Relu / Cast-fp32 chain returns its input bit-exact). Explicit round trips
    between fp32 ops survive, so this graph shows on a CPU what fp16 storage with fp32 accumulation (cuDNN,
    TensorRT tensor-core kernels) does to the outputs, for the same `keep_fp32` plan as `convert_to_fp16`.
    """
    import onnx
    from onnx import helper, numpy_helper

    if not callable(keep_fp32):
        names = set(keep_fp32)
        keep_fp32 = lambda node: node.name in names  # noqa: E731
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    elem_type = {vi.name: vi.type.tensor_type.elem_type
                 for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    rounded: dict[str, str] = {}
    trips: dict[str, str] = {}
    nodes = []

    def round_trip(name: str) -> str:
        if name not in trips:
            h, back = f"{name}__emu16", f"{name}__emu32"
            nodes.append(helper.make_node("Cast", [name], [h], to=FLOAT16, name=f"emu_{h}"))
            nodes.append(helper.make_node("Cast", [h], [back], to=FLOAT, name=f"emu_{back}"))
            trips[name] = back
        return trips[name]

    for node in graph.node:
        low = not keep_fp32(node)
        if low:
            fixed = FP32_ONLY_INPUTS.get(node.op_type, set())
            for i, name in enumerate(node.input):
                if i in fixed or not name:
                    continue
                if name in inits and inits[name].data_type == FLOAT:
                    if name not in rounded:
                        arr = numpy_helper.to_array(inits[name]).astype(np.float16).astype(np.float32)
                        alias = f"{name}__rounded16"
                        graph.initializer.append(numpy_helper.from_array(arr, alias))
                        rounded[name] = alias
                    node.input[i] = rounded[name]
                elif elem_type.get(name) == FLOAT:
                    node.input[i] = round_trip(name)
        nodes.append(node)
        if low:
            for out in node.output:
                if elem_type.get(out) == FLOAT:
                    trip = round_trip(out)
                    trips[out] = trip  # later readers see the rounded value
    # readers of a rounded tensor, in kept nodes too, must read the round trip (as in the converted graph)
    for node in nodes:
        if node.name.startswith("emu_"):
            continue
        for i, name in enumerate(node.input):
            if name in trips and not name.endswith("__emu32"):
                node.input[i] = trips[name]
    del graph.node[:]
    graph.node.extend(nodes)
    for out in (o.name for o in graph.output):  # graph outputs: the rounded value under the contract name
        if out not in trips:
            continue
        raw = f"{out}__raw"
        for node in graph.node:
            node.input[:] = [raw if n == out else n for n in node.input]
            node.output[:] = [raw if n == out else n for n in node.output]
        graph.node.append(helper.make_node("Identity", [trips[out]], [out], name=f"emu_out_{out}"))
    return model


def fp32_plan(ranges: dict[str, tuple[str, str, float]]) -> list[str]:
    """Node names to keep fp32: those measured near fp16's range, plus the precautionary mask ops."""
    limit = FP16_MAX / RANGE_HEADROOM
    hot = {node for node, _, peak in ranges.values() if not peak <= limit}  # inf/nan count as hot
    return sorted(hot | set(PRECAUTION_FP32))


def run_cpu(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of `model` (ModelProto) on `images` under ORT CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": images})))


def fp16_parity(model, keep: Iterable[str], images: np.ndarray) -> dict[str, float]:
    """Worst relative difference per output of emulated fp16 storage (`emulate_fp16`) vs the fp32 graph."""
    from emoengine.export.onnx_export import relative_diff

    reference = run_cpu(model, images)
    got = run_cpu(emulate_fp16(model, list(keep)), images)
    return {name: relative_diff(got[name], reference[name]) for name in reference}


def export_fp16(fp32_path: str | os.PathLike, output: str | os.PathLike, images: np.ndarray | None = None,
                check: bool = True) -> Fp16Report:
    """fp16 ONNX from an fp32 export: measure ranges on `images` (default: 4 synthetic face crops), keep the
    fp32 plan, convert, check emulated parity against FP16_TOLERANCE, write atomically."""
    import onnx

    from emoengine.export.emonet import synthetic_crops

    started = time.perf_counter()
    fp32_path, output = Path(fp32_path), Path(output)
    try:
        model = onnx.load(str(fp32_path))
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError, missing file
        raise UserInputError(f"not an ONNX model: {fp32_path} ({type(e).__name__})") from e
    if any(p.key == "precision" and p.value != "fp32" for p in model.metadata_props):
        raise UserInputError(f"{fp32_path} is not an fp32 model; convert the fp32 export")
    images = synthetic_crops(4, seed=3) if images is None else np.ascontiguousarray(images, dtype=np.uint8)
    ranges = activation_ranges(model, images)
    keep = fp32_plan(ranges)
    converted, kept = convert_to_fp16(model, keep)
    report = Fp16Report(output, kept, max(r[2] for r in ranges.values()))
    if check:
        report.worst_rel_diff = fp16_parity(model, keep, images)
        report.tolerance = {k: FP16_TOLERANCE.get(k, 1e-2) for k in report.worst_rel_diff}
        bad = {k: v for k, v in report.worst_rel_diff.items() if not v <= report.tolerance[k]}
        if bad:
            worst = max(bad, key=bad.get)
            raise RunFailure(f"fp16 model disagrees with fp32: {worst} off by {bad[worst]:.2e} of its magnitude "
                             f"(tolerance {report.tolerance[worst]:g}); not written")
    from emoengine.engine.writers import write_bytes_atomic

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(output, converted.SerializeToString())
    except OSError as e:
        raise UserInputError(f"cannot write {output}: {e.strerror or e}") from e
    report.size_bytes = output.stat().st_size
    report.convert_s = time.perf_counter() - started
    return report
