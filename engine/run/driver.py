"""`emoengine run` as a function: open input, detector, model and writers, drive the pipeline, summarise."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoengine.contract import DEFAULT_TAPS
from emoengine.engine.backends import BACKENDS
from emoengine.engine.model.crops import regions_to_frame
from emoengine.engine.model.emonet_model import EmoNetModel
from emoengine.engine.model.tapset import face_channels, face_full_taps, face_taps, model_taps, tap_specs_for_run
from emoengine.engine.outputs.report import REPORT_NAME, build_report
from emoengine.engine.outputs.run_outputs import RunOutputs
from emoengine.engine.run.pipeline import Pipeline, PipelineOptions, PipelineStats
from emoengine.engine.run.records import FaceResult, FrameRecord, queue_frames
from emoengine.engine.run.resume import completed_summary, run_fingerprint
from emoengine.engine.run.segments import default_workers
from emoengine.engine.sources.opener import open_source
from emoengine.engine.tracking.detectors import make_detector
from emoengine.engine.tracking.tracker import TemporalSmoother
from emoengine.errors import UserInputError
from emoengine.memory import peak_rss_mb
from emoengine.settings import RunSettings

log = logging.getLogger(__name__)

CPU_MAX_BATCH = 1        # see default_max_batch
GPU_MAX_BATCH = 32
GPU_DETECT_BATCH = 8     # frames per detector call on a GPU when every frame is detected


@dataclass(frozen=True)
class RunConfig:
    """One run: `settings` (emoengine.RunSettings) on `input` into `out_dir`, with the defaults that depend on
    other options resolved once (RunSettings.resolve makes it). Every other option reads through to the
    settings as given (`cfg.smooth` is `cfg.settings.smooth`), so a new RunSettings field needs no edit here."""

    settings: RunSettings
    input: str
    out_dir: Path
    backend: str                      # decides where the detector runs (GPU when EmoNet does)
    max_batch: int                    # by the backend's device unless given (default_max_batch)
    crop_mode: str                    # "upstream" (plain resize) for detector none, else "square", unless given
    tap_names: tuple[str, ...] = DEFAULT_TAPS   # module paths (run --taps a,b), in order
    taps: bool = True                 # False: no_taps
    write_video: bool = True          # False: no_video
    report: bool = True               # report.html (False: no_report)
    warn_random: bool = True          # False where loading the checkpoint already said it
    model_id: str | None = None       # what weights/model named (part of the --resume fingerprint)
    weights: str | None = None        # what weights/model named, as given (summary.json's `weights`)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "settings":   # copy and pickle look for these before settings exists
            raise AttributeError(name)
        return getattr(self.settings, name)

    @property
    def writes_report(self) -> bool:
        """no_video promises predictions.csv and summary.json only (`emoengine report` can add the page)."""
        return self.report and self.write_video

    @property
    def model_args(self) -> dict:
        """open_emonet's keyword arguments for this run. From weights the export is made with the taps; an
        artifact (model) has them, or the run says how to make one that does."""
        s = self.settings
        args: dict[str, Any] = dict(backend=self.backend, weights=s.weights, model=s.model, classes=s.classes,
                                    full_taps=s.full_taps, max_batch=self.max_batch)
        if s.no_implicit_export:
            args["no_implicit_export"] = True
        if s.weights is not None and self.taps:
            # activations.npz's per-channel means need the defaults in full: the export gets them as taps
            args["taps"] = model_taps(self.tap_names, s.tap_view, s.full_taps, full=s.save_activations)
        # ONNX Runtime's idle threads spin by default: in a pipeline that steals the cores the other stages need
        # (measured: the stand-in model at batch 1 cost 3.1 ms of CPU a call spinning, 0.4 ms not; EmoNet alone
        # runs within 3 % either way, benchmarks/results/ort-tuning-*)
        if backend_device(self.backend) == "cpu":
            args["spinning"] = False
        return args


class FrameAssembler:
    """The render stage's first half: per-id smoothing and `FaceResult`s in frame pixels, added to the record
    (ids come from the detect/track stage). `taps`: the run's engine.model.tapset.TapSpecs, each face's share kept in
    FaceResult.taps; `keep_full`: their untouched tensors too, in record.full_maps (--full-taps, grid view,
    activations); `channels`: their per-channel spatial means in FaceResult.channels (activations)."""

    def __init__(self, class_names, smooth: float, taps=(), keep_full: bool = False,
                 independent_frames: bool = False, channels: bool = False) -> None:
        self.class_names = tuple(class_names)
        # a folder of unrelated images: no smoothing across images (ids count faces per image)
        self.smoother = TemporalSmoother(0.0 if independent_frames else smooth)
        self.taps = tuple(taps)
        self.keep_full = keep_full
        self.channels = channels

    def __call__(self, record: FrameRecord) -> FrameRecord:
        self.smoother.forget(record.dropped_ids)
        faces, p, ids, regions = record.detections, record.predictions, record.ids, record.regions
        if p is None or (faces is not None and not len(faces)):
            return record
        if faces is None or ids is None or regions is None:
            raise RuntimeError(f"frame {record.index} has predictions without detections, ids and crop regions")
        lm68 = regions_to_frame(p.landmarks, regions)
        for k in range(len(faces)):
            fid = int(ids[k])
            probs, val, aro = self.smoother.update(fid, p.probs[k], float(p.valence[k]), float(p.arousal[k]))
            record.faces.append(FaceResult(
                box=faces.boxes[k], det_score=float(faces.scores[k]), landmarks5=faces.landmarks[k],
                logits=p.logits[k], probs=probs, expression=self.class_names[int(np.argmax(probs))],
                valence=val, arousal=aro, landmarks68=lm68[k], face_id=fid, taps=face_taps(p, k, self.taps),
                channels=face_channels(p, k, self.taps) if self.channels else {},
            ))
            if self.keep_full:
                record.full_maps[fid] = face_full_taps(p, k, self.taps)
        record.predictions = None   # everything the writers need is in record.faces now
        return record


# what run_pipeline's `progress` is: called with the input's frame count (None: unknown), returns
# (on_frame(stats) or None, close()); the CLI's progress bar is one (cli/progress.py)
Progress = Callable[[int | None], tuple[Callable[[PipelineStats], None] | None, Callable[[], None]]]


def no_progress(total: int | None):
    return None, lambda: None


def open_run_detector(cfg: RunConfig):
    """The detector `cfg` asks for, on the GPU when EmoNet runs there. On the CPU it gets one thread: it runs
    beside EmoNet, whose ONNX Runtime already uses every core, and two pools fighting for them cost both.
    With a torch backend MTCNN's nets run in PyTorch on EmoNet's device (a lent GPU has PyTorch with CUDA but
    no onnxruntime-gpu), the keyframes that wait on the workers batched into one call."""
    device = torch_detector_device(cfg.backend) if cfg.detector == "mtcnn" else None
    if device is not None:
        from emoengine.engine.tracking.detectors.batching import BatchedDetector

        return BatchedDetector(make_detector(cfg.detector, model_path=cfg.detector_model, min_face=cfg.min_face,
                                             device=device), max_frames=GPU_DETECT_BATCH * 4)
    recipe = cpu_detector_recipe(cfg)
    if recipe is not None:
        detector = recipe()
        # how the detect workers' processes make it again (pipeline_options), with what it has already built
        detector.recipe = functools.partial(recipe, **getattr(detector, "prebuilt", {}))
        return detector
    return make_detector(cfg.detector, model_path=cfg.detector_model, providers=detector_providers(cfg.backend),
                         min_face=cfg.min_face)


def cpu_detector_recipe(cfg: RunConfig) -> Callable | None:
    """How to make the run's detector on the CPU (one ONNX Runtime thread), picklable so that the detect workers'
    processes make the same one; None where it runs elsewhere (a GPU) and stays in this process."""
    if torch_detector_device(cfg.backend) is not None or detector_providers(cfg.backend):
        return None
    return functools.partial(make_detector, cfg.detector, model_path=cfg.detector_model, providers=None,
                             min_face=cfg.min_face, threads=1)


def torch_detector_device(backend: str) -> str | None:
    """"cpu" / "cuda" where the backend is PyTorch's (torch, torch-cuda): MTCNN runs in PyTorch there too."""
    spec = BACKENDS.get(backend.partition(":")[0].strip())
    return spec.device if spec is not None and spec.module == "torch" else None


def run_pipeline(cfg: RunConfig, model: EmoNetModel | Callable[[], EmoNetModel],
                 detector: object | Callable[[], object] | None = None,
                 observe: Callable[[FrameRecord], None] | None = None, progress: Progress = no_progress,
                 tap_specs=None) -> dict:
    """Run on `cfg.input` and write the contract's files under `cfg.out_dir`; returns the summary.

    `model` and `detector` are either lent (an opened EmoNetModel or detector: used, never closed here; the
    Engine and batch workers reuse theirs) or a function that opens one (opened here, after the input, so bad
    input fails fast, before any export; closed here). `detector` defaults to `open_run_detector(cfg)`.
    A video with frames that would not decode is processed without them, its outputs are written, and
    then a UserInputError (exit 2) says how many were lost (summary.json lists them too).
    With `cfg.resume`, a complete earlier run of the same input and settings is returned as is.
    `observe(record)` (the Python API) sees every assembled record (faces filled), in frame order, before the
    writers, in the render stage's thread; what it raises ends the run like a failing stage.
    `progress(frame_count)` (the CLI's bar) is told of every frame. `tap_specs`: the run's taps (contract.TapSpec)
    as probed on `model` once by its owner (the Engine); default: tap_specs_for_run(cfg, model).
    """
    source = open_source(cfg.input)
    fingerprint = run_fingerprint(cfg, source)
    if cfg.resume and (done := completed_summary(cfg.out_dir, fingerprint)) is not None:
        source.close()
        return resumed(cfg, done)
    opened: list = [source]   # what this function opened, and so closes
    outputs = None
    try:
        if detector is None or callable(detector):
            detector = (detector or (lambda: open_run_detector(cfg)))()
            opened.append(detector)
        if callable(model):
            model = model()
            opened.append(model)
        if model.is_stand_in:
            log.warning("WARNING: a stand-in model, not EmoNet (benchmarks/standin_model.py) — predictions "
                        "are meaningless")
        elif model.is_random and cfg.warn_random:
            log.warning("WARNING: random EmoNet weights — predictions are meaningless")
        outputs = open_outputs(cfg, source, model, tap_specs)
        options = pipeline_options(cfg, source, detector)
        stats = _drive(cfg, source, detector, model, outputs, options, observe, progress)
        summary = make_summary(cfg, source, model, detector, stats, options, outputs.encoder_clocks())
        summary["fingerprint"] = fingerprint
        outputs.commit(summary)
    except BaseException:
        if outputs is not None:
            outputs.abort()
        raise
    finally:
        for part in reversed(opened):
            with contextlib.suppress(Exception):
                part.close()
    if summary.get("bad_frames"):
        raise UserInputError(damaged_input_message(summary, cfg.out_dir))
    return summary


def resumed(cfg: RunConfig, done: dict) -> dict:
    """`--resume` found this run's complete outputs: the summary as it was (a report added if it has none)."""
    if cfg.writes_report and not (Path(cfg.out_dir) / REPORT_NAME).is_file():   # made before reports existed
        build_report(cfg.out_dir)
    if done.get("bad_frames"):   # the same damaged input: the same answer
        raise UserInputError(damaged_input_message(done, cfg.out_dir))
    if not cfg.quiet:
        log.info(f"{cfg.out_dir} already holds the complete outputs of this run (resume); skipped",
                 extra={"options": ("resume",)})
    return {**done, "resumed": True}


def open_outputs(cfg: RunConfig, source, model: EmoNetModel, tap_specs=None) -> RunOutputs:
    still = source.kind in ("image", "images")
    specs = tap_specs_for_run(cfg, model) if tap_specs is None else tuple(tap_specs) if cfg.taps else ()
    return RunOutputs(cfg.out_dir, model.class_names, fps=source.fps, still=still, write_video=cfg.write_video,
                      taps=specs, tap_view=cfg.tap_view, has_full=model.taps,
                      save_activations=cfg.save_activations, full_taps=cfg.full_taps, face_id=cfg.face_id,
                      report=cfg.writes_report, video_size=None if still or not source.size else tuple(source.size),
                      frame_files=[p.name for p in source.paths] if source.kind == "images" else None)


def pipeline_options(cfg: RunConfig, source, detector=None) -> PipelineOptions:
    """What the pipeline needs of `cfg`, with the defaults that depend on the input."""
    on_gpu = backend_device(cfg.backend) == "cuda"
    return PipelineOptions(max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, max_faces=cfg.max_faces,
                           crop_mode=cfg.crop_mode,
                           queue_size=queue_frames(source.size),
                           # the whole frame as the face: nothing to carry between keyframes
                           detect_every=1 if cfg.detector == "none" else cfg.detect_every,
                           detect_batch=GPU_DETECT_BATCH if on_gpu else 1,
                           independent_frames=source.kind in ("image", "images"),
                           workers=run_workers(cfg.workers), frame_size=source.size,
                           # a detector opened from cfg can be made again in a worker process; a lent one cannot
                           detector_recipe=getattr(detector, "recipe", None))


def _drive(cfg: RunConfig, source, detector, model: EmoNetModel, outputs: RunOutputs,
           options: PipelineOptions, observe: Callable[[FrameRecord], None] | None = None,
           progress: Progress = no_progress) -> PipelineStats:
    """The pipeline from the first frame to the last encoded one; a record is assembled and written in the
    render stage."""
    assemble = FrameAssembler(model.class_names, cfg.smooth, taps=outputs.specs, keep_full=outputs.needs_full,
                              independent_frames=options.independent_frames, channels=outputs.needs_channels)
    on_frame, close_progress = progress(source.frame_count)

    def sink(record: FrameRecord) -> None:
        record = assemble(record)
        if observe is not None:
            observe(record)
        outputs.write(record)

    try:
        stats = Pipeline(source, detector, model, sink, options,
                         on_frame=on_frame, live=source.kind == "stream").run()
        t0, cpu0 = time.perf_counter(), time.process_time()
        outputs.finish_videos()   # the encoders' last queued frames belong to the run's time
        stats.wall_s += time.perf_counter() - t0
        child_cpu_s, child_peak_mb = outputs.child_usage()   # the encoder process's
        stats.process_cpu_s += time.process_time() - cpu0 + child_cpu_s
        stats.child_peak_rss_mb += child_peak_mb
    finally:
        close_progress()
    if cfg.face_id is not None and not outputs.main.fixed_seen:
        log.warning(f"warning: no face got id {cfg.face_id}; the feature-map outputs are black "
                    "(ids are in predictions.csv)")
    return stats


def damaged_input_message(summary: dict, out_dir: Path) -> str:
    """A video with frames that would not decode: the good ones were processed and written (exit 2)."""
    first = summary["decode_errors"][0] if summary.get("decode_errors") else {}
    where = f" (first after frame {first['after_frame']}: {first['error']})" if first else ""
    return (f"damaged video: {summary['input']}: {summary['bad_frames']} frame(s) could not be decoded{where}; "
            f"the outputs in {out_dir} hold the {summary['frames']} frames that could (see summary.json)")


def run_workers(workers: int | None) -> int:
    """--workers checked (1 or more), or the cores this process may use when not given."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserInputError(f"workers must be 1 or more (threads that detect and track), not {workers}")
    return workers


def backend_device(backend: str) -> str:
    """Where EmoNet runs for this backend spec: "cpu" or "cuda" (an unknown name: "cpu"; open_emonet says no)."""
    spec = BACKENDS.get(backend.partition(":")[0].strip())   # `torch-cuda:fp16` -> torch-cuda's row
    return "cpu" if spec is None else spec.device


def default_max_batch(backend: str) -> int:
    """Faces per EmoNet call when --max-batch is not given: a GPU wants big batches; on a CPU a batch is no
    faster per face than one face (measured: benchmarks/results/), and its activations cost memory."""
    return GPU_MAX_BATCH if backend_device(backend) == "cuda" else CPU_MAX_BATCH


def detector_providers(backend: str) -> list[str] | None:
    """Detect on the GPU when EmoNet runs there and ONNX Runtime here has CUDA; CPU otherwise."""
    if backend_device(backend) != "cuda":
        return None
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return None


def make_summary(cfg: RunConfig, source, model: EmoNetModel, detector, stats: PipelineStats,
                 options: PipelineOptions, encoders: dict | None = None) -> dict:
    """`encoders`: the writers' own threads' clocks (engine.outputs.run_outputs), reported beside the
        pipeline's stages."""
    wall = max(stats.wall_s, 1e-9)
    clocks = {**stats.stages, **(encoders or {})}
    return {
        "input": str(cfg.input),
        "input_kind": source.kind,
        "fps": source.fps,
        "frames": stats.frames,
        "frames_with_face": stats.frames_with_face,
        "faces": stats.faces,
        "backend": model.backend,
        "detector": detector.name,
        "classes": list(model.class_names),
        "random_weights": model.is_random,
        "weights": cfg.weights,
        "weights_sha256": model.runner.metadata.get("checkpoint_sha256"),   # of the .pth (exports keep it)
        "ended_by_user": stats.ended_by_user,
        "skipped_inputs": list(getattr(source, "skipped", [])),
        "bad_frames": int(getattr(source, "bad_frames", 0)),           # damaged frames skipped (video files)
        "decode_errors": list(getattr(source, "decode_errors", [])),   # the first few of them
        "wall_s": round(stats.wall_s, 4),
        # every thread of the process over wall_s (ONNX Runtime's pools, x264's threads): the stages' own CPU
        # seconds (stages_cpu_s) leave those out
        "process_cpu_s": round(stats.process_cpu_s, 4),
        "stages": {name: round(c.busy_s, 4) for name, c in clocks.items()},
        "stages_cpu_s": {name: round(c.cpu_s, 4) for name, c in clocks.items()},
        "queue_wait_s": {name: {"in": round(c.wait_in_s, 4), "out": round(c.wait_out_s, 4)}
                         for name, c in clocks.items()},
        "faces_per_s": round(stats.faces / wall, 3),
        "frames_per_s": round(stats.frames / wall, 3),
        "detect_frames": stats.detect_frames,
        "tracked_frames": stats.tracked_frames,
        "peak_rss_mb": round(peak_rss_mb() + stats.child_peak_rss_mb, 1),   # both processes: an upper bound
        "options": {"max_batch": options.max_batch, "max_wait_ms": cfg.max_wait_ms, "max_faces": cfg.max_faces,
                    "smooth": cfg.smooth, "crop": options.crop_mode, "face_id": cfg.face_id,
                    "detect_every": options.detect_every, "min_face": getattr(detector, "min_face", None),
                    "workers": options.workers},
    }
