"""The artifacts a backend runs, made once from a checkpoint and reused: the cached ONNX export, its fp16
conversion, its int8 QDQ model. Backends ask for them through their row's `prepare()` (engine.backends);
TensorRT engines are made by export.trt_engine.

Each function takes the request that names the model (anything with `weights`, `classes`, `full_taps`, e.g.
engine.backends.ModelRequest), so that a new property of a model is one new field of the request.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from emoengine.errors import UserInputError, warn_random_weights

log = logging.getLogger(__name__)
from emoengine.paths import models_dir, sha256_file


def load_onnx(path: str | os.PathLike, external_data: bool = False):
    """onnx.ModelProto of `path`, or one UserInputError line when it is not an ONNX model."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as e:  # protobuf DecodeError, a missing file and friends
        raise UserInputError(f"not an ONNX model: {path} ({type(e).__name__})") from e


def onnx_precision(onnx_path: str | os.PathLike) -> str:
    """fp32 / fp16 / int8, read off the graph: QuantizeLinear nodes = QDQ int8, fp16 initializers = fp16."""
    import onnx

    model = load_onnx(onnx_path)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def cached_onnx_for(request) -> Path:
    """Export the request's weights to ONNX once and reuse it:
    models/emonet<C>-<sha12>[-fulltaps][-taps<n>-<hash>].onnx (one artifact per tap set, in any order)."""
    if (found := _current_export(request)) is not None:
        return found
    try:
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.onnx_export import export_onnx
    except ImportError as e:
        raise UserInputError("exporting weights to ONNX needs PyTorch: pip install torch, or pass model "
                             "(an exported .onnx)", options=("model",)) from e
    loaded = load_emonet(request.weights, request.classes)
    path = _export_path(request, loaded.num_classes, "random" if loaded.is_random else loaded.sha256[:12])
    from emoengine import __version__

    stale = path.is_file() and _exporter_version(path) != __version__
    if stale or not path.is_file():   # a different exporter may have made a different graph
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(loaded, path, full_taps=request.full_taps, verify=False, taps=sorted(set(request.taps)))
    return path


def _export_path(request, num_classes: int, tag: str) -> Path:
    from emoengine.export.taps import taps_tag

    full = "-fulltaps" if request.full_taps else ""
    return models_dir() / f"emonet{num_classes}-{tag}{full}{taps_tag(request.taps)}.onnx"


def _current_export(request) -> Path | None:
    """The export cached_onnx_for made earlier, found without PyTorch, whose import alone keeps ~200 MB resident
    for the whole run: `random` names its file by class count, a checkpoint by its sha256 (the one file of that
    hash; the class count is checked when the model opens). None: not made yet, or by another emoengine."""
    from emoengine import __version__

    weights = str(request.weights)
    if weights == "random":
        paths = [_export_path(request, request.classes or 8, "random")]
    elif Path(weights).is_file():
        tag = sha256_file(weights)[:12]
        paths = [_export_path(request, c, tag) for c in ((request.classes,) if request.classes else (5, 8))]
    else:
        return None
    found = [path for path in paths if path.is_file()]
    if len(found) != 1 or _exporter_version(found[0]) != __version__:
        return None
    if weights == "random":
        warn_random_weights()
    return found[0]


def _exporter_version(path: Path) -> str | None:
    """The emoengine version an export's metadata records (None: unreadable, so it is exported again)."""
    try:
        props = load_onnx(path).metadata_props
    except UserInputError:
        return None
    return next((p.value for p in props if p.key == "emoengine_version"), None)


def cached_int8_onnx_for(request, calibration_crops: int | None = None, method: str | None = None,
                         keep_float: tuple[str, ...] | None = None, ops: str | None = None,
                         flavour: str | None = None) -> Path:
    """The int8 model of the request's weights for a recipe (the default recipe unless given) in a QDQ flavour
    (export.quantize.INT8_FORMATS; default ONNX Runtime's), made once: models/emonet<C>-<sha12>-<recipe>.onnx,
    the flavour part of the recipe's name so that each flavour is cached apart."""
    from emoengine.export import quantize
    from emoengine.export.onnx_export import read_metadata

    calibration_crops = calibration_crops or quantize.DEFAULT_CALIBRATION_CROPS
    method = method or quantize.DEFAULT_METHOD
    keep_float = tuple(sorted(quantize.DEFAULT_KEEP_FLOAT if keep_float is None else keep_float))
    ops = ops or quantize.DEFAULT_OPS
    flavour = flavour or quantize.DEFAULT_FORMAT
    fp32 = cached_onnx_for(request)   # the int8 name and ranges follow its tap tag
    tag = quantize.recipe_tag(calibration_crops, method, keep_float, ops, flavour)
    path = fp32.with_name(f"{fp32.stem}-{tag}.onnx")
    if path.is_file() and path.stat().st_mtime >= fp32.stat().st_mtime and \
            read_metadata(path).get("precision") == "int8":
        return path
    # ranges depend on the fp32 model, the method and the crops, not on which layers stay float nor on the
    # flavour: shared
    cache = fp32.with_name(f"{fp32.stem}.calib-{ops}-{method}{calibration_crops}.json")
    quantize.quantize_int8(fp32, path, calibration_crops, method, keep_float, calibration_cache=cache, ops=ops,
                           flavour=flavour)
    return path


def cached_fp16_onnx(fp32_path: Path, announce=None) -> Path:
    """<stem>.fp16.onnx beside the fp32 model, converted once (and again when the fp32 model changes)."""
    from emoengine.engine.outputs.writers import write_bytes_atomic
    from emoengine.export.fp16 import export_fp16

    out = fp32_path.with_name(f"{fp32_path.stem}.fp16.onnx")
    stamp = out.with_name(out.name + ".source-sha256")
    sha = sha256_file(fp32_path)
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == sha:
        return out
    (announce or log.info)(f"converting {fp32_path.name} to fp16 (fp32 kept where measured necessary)...")
    export_fp16(fp32_path, out)
    try:
        write_bytes_atomic(stamp, sha.encode())
    except OSError as e:
        raise UserInputError(f"cannot write {stamp}: {e.strerror or e}") from e
    return out
