"""Static int8 quantisation of an exported EmoNet: `emoengine export --precision int8 [--target trt]`, the
`ort-int8` backend and `trt:int8`.

Two QDQ flavours (INT8_FORMATS), one per runtime (engine.backends.EXPORT_TARGETS). `u8s8` for ONNX Runtime (its
CPU fast path on x86, fused into QLinearConv): uint8 activations with zero points, int8 weights, int32 bias
DequantizeLinear. `s8s8` for TensorRT (its explicit quantization refuses non-zero zero points): signed int8
activations and weights, symmetric (every zero point 0), biases left in float. Common to both: int8 weights
quantised per output channel, `reduce_range` off (VNNI does not overflow), only Conv and Gemm quantised
(quantising the pre-activation BatchNorms, adds and concats as well was both slower and less accurate here: every
float BatchNorm between two quantised tensors costs a DequantizeLinear/QuantizeLinear pair and a layout change),
activation ranges calibrated on varied face crops (export.face_crops) and cached as JSON next to the model so that
a re-export is repeatable (one cache serves both flavours). Layer groups that lose too much accuracy stay in float
(`keep_float`, or chosen by measurement: export.int8_search); benchmarks/int8_frontier.py measures the
speed/agreement trade-off per group.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from emoengine.contract import INPUT_NAME
from emoengine.errors import RunFailure, UserInputError
from emoengine.paths import model_file

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_CROPS = 64
DEFAULT_METHOD = "minmax"

# Layer groups, as EmoNet module paths. A node belongs to a group when its name is under the module's scope in
# the exported graph (`/net/m0/...`, `/net/emo_net_2/emo_net_2.0/conv1/Conv`) or one of its weights is the
# module's (`net.m0....`).
LAYER_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": ("conv1", "bn1", "conv2", "conv3", "conv4"),
    "hourglass0": ("m0", "top_m_0", "conv_last0", "bn_end0", "l0", "bl0", "al0"),
    "hourglass1": ("m1", "top_m_1", "conv_last1", "bn_end1", "l1"),
    "emotion": ("conv1x1_input_emo_2", "emo_net_2", "emo_fc_2"),
    "fc": ("emo_fc_2",),
}
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("emotion",)
# which op types get QDQ pairs: "conv" = Conv and Gemm only; "all" = every op onnxruntime can quantise
# (also BatchNormalization, Add, Concat, MaxPool, Resize, ...): fewer float round trips, more rounding
OP_SETS = {"conv": ["Conv", "Gemm"], "all": None}
DEFAULT_OPS = "conv"


@dataclass(frozen=True)
class Int8Format:
    """One QDQ flavour: onnxruntime.quantization's activation type and extra options, and how recipes name it."""

    describe: str
    activation: str                    # onnxruntime.quantization.QuantType member
    extra_options: tuple[tuple[str, bool], ...] = ()
    tag: str = ""                      # appended to the recipe's file-name tag


INT8_FORMATS: dict[str, Int8Format] = {
    "u8s8": Int8Format("QDQ U8S8 per-channel", "QUInt8"),
    "s8s8": Int8Format("QDQ S8S8 symmetric per-channel, zero points 0, float bias", "QInt8",
                       (("ActivationSymmetric", True), ("WeightSymmetric", True), ("QuantizeBias", False)), "-s8s8"),
}
DEFAULT_FORMAT = "u8s8"


@dataclass
class Int8Report:
    path: Path
    calibration_cache: Path
    calibration_crops: int
    method: str
    keep_float: tuple[str, ...]
    quantized_nodes: int
    float_nodes: int
    quantize_s: float
    metadata: dict[str, str] = field(default_factory=dict)
    flavour: str = DEFAULT_FORMAT


def recipe_tag(calibration_crops: int, method: str, keep_float: tuple[str, ...], ops: str = DEFAULT_OPS,
               flavour: str = DEFAULT_FORMAT) -> str:
    """Short file-name tag of a recipe: `int8conv-minmax64-float-fc` (`-float-none` when nothing stays float),
    `...-s8s8` for the symmetric flavour."""
    kept = "+".join(sorted(keep_float)) or "none"
    return f"int8{ops}-{method}{calibration_crops}-float-{kept}{INT8_FORMATS[flavour].tag}"


def check_recipe(calibration_crops: int, method: str, keep_float: tuple[str, ...], ops: str = DEFAULT_OPS,
                 flavour: str = DEFAULT_FORMAT) -> None:
    if flavour not in INT8_FORMATS:
        raise UserInputError(f"int8 flavour must be one of {', '.join(INT8_FORMATS)}, not {flavour!r}")
    if ops not in OP_SETS:
        raise UserInputError(f"quantised op set must be one of {', '.join(OP_SETS)}, not {ops!r}")
    if method not in CALIBRATION_METHODS:
        raise UserInputError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}")
    if calibration_crops < 1:
        raise UserInputError("calibration_crops must be a positive integer", options=("calibration_crops",))
    unknown = [g for g in keep_float if g not in LAYER_GROUPS]
    if unknown:
        raise UserInputError(f"unknown layer group(s) {', '.join(unknown)} (choose from {', '.join(LAYER_GROUPS)})")


def parse_keep_float(text: str | None) -> tuple[str, ...]:
    """`--keep-float fc,emotion` → ('emotion', 'fc'); 'none' or '' → ()."""
    if text is None:
        return DEFAULT_KEEP_FLOAT
    groups = tuple(sorted({g.strip() for g in text.split(",") if g.strip() and g.strip() != "none"}))
    check_recipe(1, DEFAULT_METHOD, groups)
    return groups


def nodes_of_groups(model, groups: tuple[str, ...]) -> list[str]:
    """Names of the graph's nodes that belong to the layer groups (see LAYER_GROUPS)."""
    modules = [m for g in groups for m in LAYER_GROUPS[g]]
    if not modules:
        return []
    scopes = tuple(f"/net/{m}/" for m in modules) + tuple(f"/net/{m}." for m in modules)
    weights = tuple(f"net.{m}." for m in modules)
    initializers = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.name.startswith(scopes) or any(i in initializers and i.startswith(weights) for i in n.input)]


class _CropReader:
    """onnxruntime.quantization CalibrationDataReader over uint8 crops, 8 at a time."""

    def __init__(self, crops: np.ndarray, batch: int = 8) -> None:
        self._batches = iter([{INPUT_NAME: crops[i:i + batch]} for i in range(0, len(crops), batch)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # the Entropy/Percentile calibrators may ask
        raise NotImplementedError


def quantize_int8(fp32_path: str | os.PathLike, output: str | os.PathLike,
                  calibration_crops: int = DEFAULT_CALIBRATION_CROPS, method: str = DEFAULT_METHOD,
                  keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT,
                  calibration_cache: str | os.PathLike | None = None, ops: str = DEFAULT_OPS,
                  flavour: str = DEFAULT_FORMAT) -> Int8Report:
    """Quantise an exported fp32 EmoNet to a QDQ int8 model of `flavour` (INT8_FORMATS) at `output` (written
    under a temporary name first).

    `calibration_cache` (default: `<output stem>.calib-<ops>-<method><crops>.json`) holds the activation ranges: when
    it exists it is reused, so the same recipe gives the same model without recalibrating.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    keep_float = tuple(sorted(keep_float))
    check_recipe(calibration_crops, method, keep_float, ops, flavour)
    fp32_path, output = Path(fp32_path), Path(output)
    model_file(fp32_path)
    cache = Path(calibration_cache) if calibration_cache else \
        output.with_name(f"{output.stem}.calib-{ops}-{method}{calibration_crops}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    pre = output.with_name(f".{output.stem}.{os.getpid()}.pre.onnx")
    started = time.perf_counter()
    try:
        # shape inference + basic fusions first, as onnxruntime recommends for static quantisation
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        metadata = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
        excluded = nodes_of_groups(model, keep_float)
        _quantize_static(pre, temp, fp32_path, cache, calibration_crops, method, ops, excluded,
                         INT8_FORMATS[flavour])
        recipe = {"format": INT8_FORMATS[flavour].describe, "flavour": flavour, "method": method,
                  "calibration_crops": calibration_crops, "keep_float": list(keep_float), "quantized_ops": ops}
        metadata.update(precision="int8", int8_recipe=json.dumps(recipe))
        _set_metadata(temp, metadata)
        os.replace(temp, output)
    except UserInputError:
        raise
    except OSError as e:
        raise UserInputError(f"cannot write {output}: {e.strerror or e}") from e
    except Exception as e:  # onnxruntime.quantization internals: not the user's fault
        raise RunFailure(f"int8 quantisation failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
    finally:
        temp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    kept = sum(1 for n in excluded if n in set(weighted))
    return Int8Report(output, cache, calibration_crops, method, keep_float, len(weighted) - kept, kept,
                      time.perf_counter() - started, metadata, flavour)


def _quantize_static(pre: Path, temp: Path, fp32_path: Path, cache: Path, calibration_crops: int, method: str,
                     ops: str, excluded: list[str], fmt: Int8Format) -> None:
    """onnxruntime's static QDQ quantisation of `pre` into `temp` in flavour `fmt`, calibrated on face crops
    unless the ranges are cached (and newer than the fp32 model). The ranges are min/max per tensor whatever the
    flavour (symmetry is applied when quantising), so both flavours share one cache."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from emoengine.export.face_crops import CALIBRATION_SEED, face_crops

    kwargs = {}
    method_enum = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}[method]
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:  # onnxruntime >= 1.2x
        kwargs["calibration_cache_path"] = str(cache)
        if cache.is_file() and cache.stat().st_mtime < fp32_path.stat().st_mtime:
            cache.unlink()  # ranges of an older export: recalibrate
    reader = None if cache.is_file() and kwargs else _CropReader(face_crops(calibration_crops,
                                                                            seed=CALIBRATION_SEED))
    # a CalibrationDataReader by its __subclasshook__ (get_next), which a type checker cannot see
    reader = cast("CalibrationDataReader | None", reader)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger once per BatchNorm
    try:
        quantize_static(
            str(pre), str(temp), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_SETS[ops],
            per_channel=True, reduce_range=False, activation_type=getattr(QuantType, fmt.activation),
            weight_type=QuantType.QInt8, nodes_to_exclude=excluded, calibrate_method=method_enum,
            extra_options=dict(fmt.extra_options), **kwargs)
    finally:
        root.setLevel(level)


def record_search(report: Int8Report, search: dict, output: Path) -> Int8Report:
    """A searched recipe's model (export.int8_search made it in a scratch folder), its recipe metadata noting the
    search, moved to `output` (under a temporary name first: the final name appears only when complete)."""
    import dataclasses
    import shutil

    recipe = {**json.loads(report.metadata["int8_recipe"]), "search": search}
    metadata = {**report.metadata, "int8_recipe": json.dumps(recipe)}
    _set_metadata(report.path, metadata)
    output = Path(output)
    temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        shutil.move(report.path, temp)
        os.replace(temp, output)
    except OSError as e:
        raise UserInputError(f"cannot write {output}: {e.strerror or e}") from e
    finally:
        temp.unlink(missing_ok=True)
    return dataclasses.replace(report, path=output, metadata=metadata)


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the metadata_props of the model at `path` (re-saved as one file)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path), save_as_external_data=False)
