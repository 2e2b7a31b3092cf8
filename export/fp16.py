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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from emoengine.compare import Comparison, compare_runners
from emoengine.contract import INPUT_NAME
from emoengine.errors import RunFailure, UserInputError

if TYPE_CHECKING:   # onnx itself is imported where a conversion runs
    from onnx import NodeProto, TensorProto

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

@dataclass
class Fp16Report:
    path: Path
    kept_fp32: list[str]                       # node names left in fp32
    max_abs: float                             # largest activation on the calibration crops (fp32 graph)
    worst_rel_diff: dict[str, float] = field(default_factory=dict)   # emulated fp16 storage vs fp32
    tolerance: dict[str, float | None] = field(default_factory=dict)   # None: an output not judged
    convert_s: float = 0.0
    size_bytes: int = 0


def _keep_predicate(keep_fp32: Callable[[NodeProto], bool] | Iterable[str]) -> Callable[[NodeProto], bool]:
    """`keep_fp32` as a predicate on nodes: a callable as it is, else the set of node names it lists."""
    if callable(keep_fp32):
        return keep_fp32
    names = set(keep_fp32)
    return lambda node: node.name in names


def _copy_and_types(model):
    """(a copy of `model`, {tensor name: element type} from shape inference over inputs, values and outputs)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    return model, types


def _rename_tensor(nodes, old: str, new: str) -> None:
    """Every node that reads or writes tensor `old` reads or writes `new` instead."""
    for node in nodes:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


class _Fp16Conversion:
    """One fp32 -> fp16 conversion (convert_to_fp16): the new nodes and initializers, and each float tensor's
    type in the new graph, so that one Cast per tensor per precision change is placed."""

    def __init__(self, model, keep: Callable[[NodeProto], bool]) -> None:
        self.model, self.elem_type = _copy_and_types(model)
        self.keep = keep
        self.graph = self.model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.elem_type.update({name: t.data_type for name, t in self.inits.items()})
        self.new_inits: dict[str, TensorProto] = {}          # name -> TensorProto actually used
        self.dtype_now: dict[str, int] = {}             # float tensor -> FLOAT / FLOAT16 in the new graph
        self.casts: dict[tuple[str, int], str] = {}     # (tensor, to) -> name of its cast
        self.new_nodes: list = []
        self.kept: list[str] = []

    def typed_initializer(self, name: str, to: int) -> str:
        from onnx import numpy_helper

        t = self.inits[name]
        if t.data_type == to:
            self.new_inits[name] = t
            return name
        alias = f"{name}__fp16" if to == FLOAT16 else f"{name}__fp32"
        if alias not in self.new_inits:
            arr = numpy_helper.to_array(t).astype(np.float16 if to == FLOAT16 else np.float32)
            self.new_inits[alias] = numpy_helper.from_array(arr, alias)
        return alias

    def as_type(self, name: str, to: int) -> str:
        from onnx import helper

        if name in self.inits:
            return self.typed_initializer(name, to)
        if self.dtype_now.get(name, FLOAT) == to:
            return name
        key = (name, to)
        if key not in self.casts:
            out = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            self.new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
            self.casts[key] = out
        return self.casts[key]

    def fp32_only_tensors(self) -> set[str]:
        """Tensors read only where ONNX wants float32 (Resize scales): their Constant producers stay fp32, so the
        scales remain plain constants (TensorRT's parser wants static Resize scales, not a Cast of them)."""
        slots: dict[str, set[bool]] = {}
        for node in self.graph.node:
            fixed = FP32_ONLY_INPUTS.get(node.op_type, set())
            for i, name in enumerate(node.input):
                slots.setdefault(name, set()).add(i in fixed)
        return {name for name, kinds in slots.items() if kinds == {True}}

    def convert(self, node, fp32_only: set[str]) -> None:
        scales_only = node.op_type == "Constant" and all(o in fp32_only for o in node.output)
        fp32 = scales_only or bool(self.keep(node))
        target = FLOAT if fp32 else FLOAT16
        if fp32 and not scales_only:
            self.kept.append(node.name)
        fixed = FP32_ONLY_INPUTS.get(node.op_type, set())
        for i, name in enumerate(node.input):
            if name and self.elem_type.get(name) == FLOAT:
                node.input[i] = self.as_type(name, FLOAT if i in fixed else target)
        _retype_constant(node, target)
        for out in node.output:
            if self.elem_type.get(out) == FLOAT:
                self.dtype_now[out] = target
        self.new_nodes.append(node)

    def restore_outputs(self) -> None:
        """Graph outputs keep float32: the last producer writes `<name>__fp16`, a Cast restores the contract name."""
        from onnx import helper

        for out in self.graph.output:
            if out.type.tensor_type.elem_type != FLOAT or self.dtype_now.get(out.name, FLOAT) == FLOAT:
                continue
            inner = f"{out.name}__fp16"
            _rename_tensor(self.new_nodes, out.name, inner)
            self.new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT,
                                                   name=f"cast_{out.name}_out"))

    def finish(self):
        import onnx

        graph, model = self.graph, self.model
        del graph.node[:]
        graph.node.extend(self.new_nodes)
        used = {n for node in self.new_nodes for n in node.input}
        del graph.initializer[:]
        graph.initializer.extend(t for name, t in self.new_inits.items() if name in used)
        del graph.value_info[:]
        props = {p.key: p.value for p in model.metadata_props}
        props.update(precision="fp16", fp32_nodes=str(len(self.kept)))
        del model.metadata_props[:]
        for k, v in props.items():
            model.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(model)
        return model


def _retype_constant(node, target: int) -> None:
    """A Cast to float32 casts to `target` instead; an fp16 Constant's float32 value becomes fp16."""
    from onnx import numpy_helper

    if node.op_type == "Cast":
        attr = next(a for a in node.attribute if a.name == "to")
        if attr.i == FLOAT:
            attr.i = target
    elif node.op_type in ("Constant", "ConstantOfShape") and target == FLOAT16:
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == FLOAT:
                arr = numpy_helper.to_array(attr.t).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))


def convert_to_fp16(model, keep_fp32: Callable[[NodeProto], bool] | Iterable[str] = ()):
    """A copy of `model` (onnx.ModelProto, fp32) computing in fp16 except nodes where `keep_fp32(node)` is true
    (or whose names are listed). Graph inputs/outputs keep their types; Casts go where precision changes.
    Returns (model, names of the nodes kept fp32)."""
    conversion = _Fp16Conversion(model, _keep_predicate(keep_fp32))
    fp32_only = conversion.fp32_only_tensors()
    for node in conversion.graph.node:
        conversion.convert(node, fp32_only)
    conversion.restore_outputs()
    return conversion.finish(), conversion.kept


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
        values = cast("list[np.ndarray]", sess.run(part, {INPUT_NAME: images}))   # tensors (stubs: or maps)
        for name, value in zip(part, values, strict=True):
            ranges[name] = (*producer[name], float(np.abs(value).max()))
    return ranges


class _Fp16Emulation:
    """One emulate_fp16 rewrite: the round trips placed so far and the fp16-rounded copies of weights."""

    def __init__(self, model, keep: Callable[[NodeProto], bool]) -> None:
        self.model, self.elem_type = _copy_and_types(model)
        self.keep = keep
        self.graph = self.model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.rounded: dict[str, str] = {}
        self.trips: dict[str, str] = {}
        self.nodes: list = []

    def round_trip(self, name: str) -> str:
        from onnx import helper

        if name not in self.trips:
            h, back = f"{name}__emu16", f"{name}__emu32"
            self.nodes.append(helper.make_node("Cast", [name], [h], to=FLOAT16, name=f"emu_{h}"))
            self.nodes.append(helper.make_node("Cast", [h], [back], to=FLOAT, name=f"emu_{back}"))
            self.trips[name] = back
        return self.trips[name]

    def rounded_weight(self, name: str) -> str:
        from onnx import numpy_helper

        if name not in self.rounded:
            arr = numpy_helper.to_array(self.inits[name]).astype(np.float16).astype(np.float32)
            alias = f"{name}__rounded16"
            self.graph.initializer.append(numpy_helper.from_array(arr, alias))
            self.rounded[name] = alias
        return self.rounded[name]

    def visit(self, node) -> None:
        low = not self.keep(node)
        if low:
            fixed = FP32_ONLY_INPUTS.get(node.op_type, set())
            for i, name in enumerate(node.input):
                if i in fixed or not name:
                    continue
                if name in self.inits and self.inits[name].data_type == FLOAT:
                    node.input[i] = self.rounded_weight(name)
                elif self.elem_type.get(name) == FLOAT:
                    node.input[i] = self.round_trip(name)
        self.nodes.append(node)
        if low:
            for out in node.output:
                if self.elem_type.get(out) == FLOAT:
                    self.trips[out] = self.round_trip(out)  # later readers see the rounded value

    def finish(self):
        """Readers of a rounded tensor, in kept nodes too, read the round trip (as in the converted graph); graph
        outputs carry the rounded value under the contract name."""
        from onnx import helper

        for node in self.nodes:
            if node.name.startswith("emu_"):
                continue
            for i, name in enumerate(node.input):
                if name in self.trips and not name.endswith("__emu32"):
                    node.input[i] = self.trips[name]
        graph = self.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        for out in (o.name for o in graph.output):
            if out in self.trips:
                _rename_tensor(graph.node, out, f"{out}__raw")
                graph.node.append(helper.make_node("Identity", [self.trips[out]], [out], name=f"emu_out_{out}"))
        return self.model


def emulate_fp16(model, keep_fp32: Callable[[NodeProto], bool] | Iterable[str] = ()):
    """The fp32 graph with fp16 *storage* emulated: every tensor an fp16 node reads or writes goes through a
    Cast fp32->fp16->fp32 round trip (overflow to inf included) and its weights are rounded to fp16 values.

    Why: ONNX Runtime's CPU provider has no fp16 kernels for most ops and runs the converted model by inserting
    Casts to fp32 around them, then fuses those Casts with the graph's own, so most fp16 rounding silently
    disappears (measured: a Cast-fp16 / Relu / Cast-fp32 chain returns its input bit-exact). Explicit round trips
    between fp32 ops survive, so this graph shows on a CPU what fp16 storage with fp32 accumulation (cuDNN,
    TensorRT tensor-core kernels) does to the outputs, for the same `keep_fp32` plan as `convert_to_fp16`.
    """
    emulation = _Fp16Emulation(model, _keep_predicate(keep_fp32))
    for node in emulation.graph.node:
        emulation.visit(node)
    return emulation.finish()


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
    outs = cast("list[np.ndarray]", sess.run(names, {INPUT_NAME: images}))   # tensors (stubs: or sequences, maps)
    return dict(zip(names, outs, strict=True))


def fp16_parity(model, keep: Iterable[str], images: np.ndarray) -> Comparison:
    """Emulated fp16 storage (`emulate_fp16`) vs the fp32 graph on `images`, judged as fp16 (emoengine.compare)."""
    emulated = emulate_fp16(model, list(keep))
    return compare_runners(lambda x: run_cpu(emulated, x), lambda x: run_cpu(model, x), images, "fp16")


def export_fp16(fp32_path: str | os.PathLike, output: str | os.PathLike, images: np.ndarray | None = None,
                check: bool = True) -> Fp16Report:
    """fp16 ONNX from an fp32 export: measure ranges on `images` (default: 4 synthetic face crops), keep the
    fp32 plan, convert, check emulated parity against emoengine.compare's fp16 tolerances, write atomically."""
    from emoengine.export.artifacts import load_onnx
    from emoengine.export.emonet import synthetic_crops

    started = time.perf_counter()
    fp32_path, output = Path(fp32_path), Path(output)
    model = load_onnx(fp32_path, external_data=True)
    if any(p.key == "precision" and p.value != "fp32" for p in model.metadata_props):
        raise UserInputError(f"{fp32_path} is not an fp32 model; convert the fp32 export")
    images = synthetic_crops(4, seed=3) if images is None else np.ascontiguousarray(images, dtype=np.uint8)
    ranges = activation_ranges(model, images)
    keep = fp32_plan(ranges)
    converted, kept = convert_to_fp16(model, keep)
    report = Fp16Report(output, kept, max(r[2] for r in ranges.values()))
    if check:
        verdict = fp16_parity(model, keep, images)
        report.worst_rel_diff = {k: v["max_rel"] for k, v in verdict.outputs.items()}
        report.tolerance = {k: v["tolerance"] for k, v in verdict.outputs.items()}
        if not verdict:
            raise RunFailure(f"fp16 model disagrees with fp32: {verdict.worst()}; not written")
    from emoengine.engine.outputs.writers import write_bytes_atomic

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(output, converted.SerializeToString())
    except OSError as e:
        raise UserInputError(f"cannot write {output}: {e.strerror or e}") from e
    report.size_bytes = output.stat().st_size
    report.convert_s = time.perf_counter() - started
    return report
