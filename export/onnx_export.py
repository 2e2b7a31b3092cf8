"""Export a loaded EmoNet to one self-contained ONNX file with the contract's inputs, outputs and metadata.

We use the TorchScript ("legacy", `dynamo=False`) exporter: on torch 2.11-2.13 it exports EmoNet in about
1-2 s, honours the requested opset, names inputs/outputs exactly and gives a dynamic batch dimension. The dynamo
exporter took ~11 s here, cannot down-convert this graph to opset 17 (stays at 18, logging a traceback) and
writes weights to a side `.data` file by default. The file appears under its final name only after it was
checked and (by default) verified against PyTorch under ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import emoengine
from emoengine.compare import compare
from emoengine.contract import CROP_SIZE, INPUT_NAME, INPUT_SHAPE, REQUIRED_OUTPUTS
from emoengine.errors import RunFailure, UserInputError
from emoengine.export.artifacts import DEFAULT_OPSET
from emoengine.export.checkpoint import LoadedEmoNet
from emoengine.export.emonet import EmoNetGraph, synthetic_crops
from emoengine.paths import models_dir

INPUT_LAYOUT = f"NHWC uint8 RGB {CROP_SIZE}x{CROP_SIZE}"
SUPPORTED_OPSETS = range(13, 21)  # the TorchScript exporter stops at 20
JSON_FIELDS = ("class_names", "num_classes", "taps", "full_taps")


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how well ONNX Runtime agrees with PyTorch (None when not verified)."""

    path: Path
    size_bytes: int
    export_s: float
    metadata: dict[str, object]
    output_names: tuple[str, ...]
    worst_rel_diff: dict[str, float] | None = None
    output_shapes: dict[str, tuple] = field(default_factory=dict)
    verify_s: float = 0.0
    verify_batch: int = 0


def default_output(num_classes: int) -> Path:
    return models_dir() / f"emonet{num_classes}.onnx"


def export_onnx(loaded: LoadedEmoNet, output: Path | None = None, full_taps: bool = False, opset: int = DEFAULT_OPSET,
                verify: bool = True, verify_images: np.ndarray | None = None, taps=()) -> ExportReport:
    """Export `loaded` to `output` (default models/emonet{C}.onnx); verify under ORT CPU unless verify=False.

    `verify_images` (N,256,256,3) uint8 RGB crops replace the 3 synthetic crops used for verification.
    `taps`: module paths (export.taps) each added as one more output under its path, the full tensor.
    """
    if opset not in SUPPORTED_OPSETS:
        raise UserInputError(f"opset {opset} is not supported (use {SUPPORTED_OPSETS[0]}..{SUPPORTED_OPSETS[-1]})",
                             options=("opset",))
    graph = EmoNetGraph(loaded.model, full_taps, taps).eval()  # first: a bad tap name writes nothing
    output = Path(output) if output is not None else default_output(loaded.num_classes)
    if output.is_dir():
        output = output / default_output(loaded.num_classes).name
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"cannot create the output folder {output.parent}: {e.strerror}") from e

    metadata = _metadata(loaded, graph, opset)
    temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    report = ExportReport(output, 0, 0.0, decode_metadata(metadata), graph.output_names)
    try:
        started = time.perf_counter()
        _torch_export(graph, temp, opset)
        _finish(temp, metadata)
        report.export_s = time.perf_counter() - started
        if verify:
            _verify(graph, temp, verify_images, report)
        os.replace(temp, output)
    except OSError as e:
        raise UserInputError(f"cannot write {output}: {e.strerror or e}") from e
    finally:
        temp.unlink(missing_ok=True)
    report.size_bytes = output.stat().st_size
    return report


def _torch_export(graph: EmoNetGraph, path: Path, opset: int) -> None:
    """Trace at batch 2 (so nothing gets specialised to 1) with a dynamic batch dim on every tensor."""
    names = list(graph.output_names)
    example = torch.from_numpy(synthetic_crops(2, seed=0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(
                graph, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=names, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
                do_constant_folding=True, export_params=True,
            )
        except OSError:
            raise
        except Exception as e:  # exporter internals: not the user's fault
            raise RunFailure(f"torch.onnx.export failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e


def _metadata(loaded: LoadedEmoNet, graph: EmoNetGraph, opset: int) -> dict[str, str]:
    # every output but the required ones: the default taps' outputs, then each extra tap by its module path
    # (contract.tap_outputs picks the module taps out of this list, as it does out of output names)
    taps = [n for n in graph.output_names if n not in REQUIRED_OUTPUTS]
    return {
        "class_names": json.dumps(list(loaded.class_names)),
        "num_classes": json.dumps(loaded.num_classes),
        "taps": json.dumps(taps),
        "full_taps": json.dumps(graph.full_taps),
        "checkpoint_sha256": loaded.sha256,
        "checkpoint_source": "random" if loaded.is_random else Path(loaded.source).name,
        "emoengine_version": emoengine.__version__,
        "input_layout": INPUT_LAYOUT,
        "producer": f"emoengine {emoengine.__version__}, torch {torch.__version__} TorchScript exporter, "
                    f"opset {opset}",
    }


def _finish(path: Path, metadata: Mapping[str, str]) -> None:
    """Add metadata, check the model, and re-save it as one file with every weight embedded."""
    import onnx

    model = onnx.load(str(path))
    model.graph.name = "emonet"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)


def _verify(graph: EmoNetGraph, path: Path, images: np.ndarray | None, report: ExportReport) -> None:
    """Run the file once under ORT CPU against the PyTorch graph; fail if any output is off by > tolerance."""
    from emoengine.engine.backends import OrtRunner
    from emoengine.engine.backends.torch import TorchRunner

    started = time.perf_counter()
    images = synthetic_crops(3, seed=1) if images is None else np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != INPUT_SHAPE:
        raise UserInputError(f"verification crops must be (N, {', '.join(map(str, INPUT_SHAPE))}) uint8 RGB, "
                             f"not {images.shape}")
    with OrtRunner(path) as runner:
        if runner.output_names != list(graph.output_names):
            raise RunFailure(f"exported outputs {runner.output_names} != expected {list(graph.output_names)}")
        got = runner.infer(images)
    verdict = compare(got, TorchRunner(graph, {}).infer(images), "fp32")   # worst |ort - torch| / max |torch|
    report.worst_rel_diff = {name: verdict.outputs[name]["max_rel"] for name in graph.output_names}
    report.output_shapes = {name: ("N",) + tuple(got[name].shape[1:]) for name in graph.output_names}
    report.verify_s = time.perf_counter() - started
    report.verify_batch = len(images)
    if not verdict:
        raise RunFailure(f"exported model disagrees with PyTorch under ONNX Runtime: {verdict.worst()}; not written")


def decode_metadata(props: Mapping[str, str]) -> dict[str, object]:
    """Decode the JSON-valued fields of an exported model's metadata_props (e.g. `OrtRunner.metadata`)."""
    decoded: dict[str, object] = dict(props)
    for key in JSON_FIELDS:
        if key in props:
            with contextlib.suppress(TypeError, json.JSONDecodeError):  # not ours: leave the raw string
                decoded[key] = json.loads(props[key])
    return decoded


def read_metadata(path: str | Path) -> dict[str, object]:
    """An exported model's metadata_props, JSON fields decoded (parses the whole file, ~0.1 s)."""
    from emoengine.export.artifacts import load_onnx

    model = load_onnx(path)
    return decode_metadata({p.key: p.value for p in model.metadata_props})
