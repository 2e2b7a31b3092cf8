"""`emoengine run`: parse options, call engine.run.driver.run_pipeline, print one summary line."""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import app
from emoengine.engine.backends import BACKENDS, DEFAULT_BACKEND
from emoengine.engine.tracking.detectors import DEFAULT_DETECT_EVERY, DEFAULT_MIN_FACE
from emoengine.errors import UserInputError


def resolve_backend(backend: str | None, model: str | None) -> str:
    """The backend asked for, else the one the artifact's suffix implies, else the default (ort)."""
    from emoengine.engine.backends import backend_for_artifact

    if backend is not None:
        return backend
    return backend_for_artifact(model) if model else DEFAULT_BACKEND


def open_model(backend: str | None, weights: str | None, model: str | None, classes: int | None,
               full_taps: bool, max_batch: int):
    from emoengine.engine.model.emonet_model import open_emonet

    backend = resolve_backend(backend, model)
    return open_emonet(backend, weights=weights, model=model, classes=classes, full_taps=full_taps,
                       max_batch=max_batch)


def summary_line(summary: dict, out_dir: Path) -> str:
    s = summary["stages"]
    return (f"emoengine: {summary['frames']} frames, {summary['faces']} faces in {summary['wall_s']:.1f} s "
            f"({summary['frames_per_s']:.1f} frames/s, {summary['faces_per_s']:.1f} faces/s; busy s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in s.items()) + f") on {summary['backend']} → {out_dir}")


@app.command("run")
def run_command(
    input: str = typer.Argument(..., help="Video file, image, folder of images, camera index or stream URL."),
    weights: str | None = typer.Option(None, help="EmoNet checkpoint (.pth) or 'random'."),
    model: str | None = typer.Option(None, help="Exported artifact (.onnx, .engine) instead of --weights."),
    backend: str | None = typer.Option(None, help=f"{' | '.join(BACKENDS)} (default: from --model's suffix, "
                                                     f"else {DEFAULT_BACKEND}); options as in "
                                                     "torch-cuda:fp16+compile (see `emoengine info`)."),
    classes: int | None = typer.Option(None, help="5 or 8; checked against the checkpoint."),
    detector: str = typer.Option("mtcnn", help="mtcnn | scrfd | none (whole image is the face)."),
    detector_model: str | None = typer.Option(None, help="SCRFD .onnx (default: insightface's model folder)."),
    crop: str | None = typer.Option(None, help="square (margin around the face) | upstream (plain box); "
                                                  "default square, upstream with --detector none."),
    out: Path = typer.Option(Path("emoengine-out"), help="Output folder."),
    max_batch: int | None = typer.Option(None, min=1, help="Faces per inference call (default: 1 on a CPU, "
                                                             "32 on a GPU)."),
    max_wait_ms: float = typer.Option(40.0, min=0, help="How long a partial batch waits for more faces."),
    max_faces: int | None = typer.Option(None, min=1, help="Keep the largest K faces per frame."),
    smooth: float = typer.Option(0.0, min=0.0, max=0.99, help="Temporal smoothing α per face (0 = off)."),
    face_id: int | None = typer.Option(None, help="Face the feature-map videos follow (default: largest)."),
    no_video: bool = typer.Option(False, "--no-video", help="Write only predictions.csv and summary.json."),
    taps: str | None = typer.Option(None, "--taps", help="EmoNet modules to show, comma-separated (`emoengine "
                                    "layers` lists them; default conv1,emo_net_2.0.conv1): a video and a mean "
                                    "map per map, a CSV per vector."),
    no_taps: bool = typer.Option(False, "--no-taps", help="No feature-map files."),
    tap_view: str = typer.Option("mean", "--tap-view", help="mean (channel mean) | grid (the first 64 channels "
                                 "as tiles)."),
    save_activations: bool = typer.Option(False, help="Per-face channel-mean maps of every tap to "
                                                      "activations.npz."),
    full_taps: bool = typer.Option(False, help="With --save-activations: the untouched activations."),
    no_report: bool = typer.Option(False, "--no-report", help="No report.html (see `emoengine report`)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary line."),
    resume: bool = typer.Option(False, "--resume", help="Skip when --out already holds the complete outputs "
                                                        "of this input with these settings."),
    detect_every: int = typer.Option(DEFAULT_DETECT_EVERY, min=1, help="Run the detector on every N-th frame "
                                     "and carry faces by optical flow between (1: every frame)."),
    min_face: float = typer.Option(DEFAULT_MIN_FACE, help="Smallest face to find, in frame pixels (mtcnn "
                                   "finds none under 12)."),
    workers: int | None = typer.Option(None, help="Threads that detect and track side by side, a segment of "
                                       "--detect-every frames each (default: the cores this process may use)."),
) -> None:
    """Detect faces, run EmoNet, write predictions, annotated video and feature-map videos."""
    cfg, model_args = run_config(**locals())   # first: locals() is exactly the options here
    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.engine.run.driver import run_pipeline

    summary = run_pipeline(cfg, lambda: open_emonet(**model_args))
    if not quiet and not summary.get("resumed"):
        typer.echo(summary_line(summary, out), err=True)


def run_config(input: str, out: Path, weights, model, backend, classes, detector, detector_model, crop, max_batch,
               max_wait_ms, max_faces, smooth, face_id, no_video, taps, save_activations, full_taps, quiet,
               resume=False, no_report=False, detect_every=DEFAULT_DETECT_EVERY, min_face=DEFAULT_MIN_FACE,
               no_taps=False, tap_view="mean", workers=None):
    """`run`'s options checked and mapped onto (RunConfig, open_emonet keyword arguments); `batch` shares it.
    `taps`: --taps' text (None: the default taps; a bool, as the older --taps/--no-taps flag, is taken too)."""
    from emoengine.engine.model.tapset import model_taps, run_tap_names
    from emoengine.engine.run.driver import RunConfig, backend_device, default_max_batch

    if detect_every < 1:
        raise UserInputError(f"--detect-every must be 1 or more (1: the detector on every frame), not {detect_every}")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers must be 1 or more (threads that detect and track), not {workers}")
    if crop not in (None, "square", "upstream"):
        raise UserInputError(f"--crop must be square or upstream, not {crop}")
    if full_taps and not save_activations:
        raise UserInputError("--full-taps only makes sense with --save-activations")
    tap_names = run_tap_names(taps, tap_view, check=weights is not None)   # --model: checked on the artifact
    max_batch = max_batch or default_max_batch(resolve_backend(backend, model))
    cfg = RunConfig(input=input, out_dir=out, detector=detector, detector_model=detector_model, crop_mode=crop,
                    max_batch=max_batch, max_wait_ms=max_wait_ms, max_faces=max_faces, smooth=smooth,
                    face_id=face_id, write_video=not no_video, taps=taps is not False and not no_taps,
                    tap_names=tap_names, tap_view=tap_view, save_activations=save_activations,
                    full_taps=full_taps, quiet=quiet, warn_random=model is not None,
                    backend=resolve_backend(backend, model), model_id=model_identity(weights, model, classes),
                    resume=resume, report=not no_report, weights=weights or model, detect_every=detect_every,
                    min_face=min_face, workers=workers)
    if weights is None and model is None:
        raise UserInputError("give --weights (an EmoNet .pth, or 'random') or --model (an exported artifact)")
    # from --weights the export is made with the taps; an artifact (--model) has them or the run says how to
    extra = dict(taps=model_taps(tap_names, tap_view, full_taps)) if weights is not None and cfg.taps else {}
    # ONNX Runtime's idle threads spin by default: in a pipeline that steals the cores the other stages need
    # (measured: the stand-in model at batch 1 cost 3.1 ms of CPU a call spinning, 0.4 ms not; EmoNet alone
    # runs within 3 % either way, benchmarks/results/ort-tuning-*)
    if backend_device(cfg.backend) == "cpu":
        extra["spinning"] = False
    return cfg, dict(backend=cfg.backend, weights=weights, model=model, classes=classes, full_taps=full_taps,
                     max_batch=max_batch, **extra)


def model_identity(weights: str | None, model: str | None, classes: int | None) -> str:
    """What names the model for --resume: the file (path, size, mtime) or 'random'."""
    import os

    name = weights or model or ""
    try:
        st = os.stat(name)
        return f"{os.path.abspath(name)}:{st.st_size}:{st.st_mtime_ns}:{classes}"
    except OSError:
        return f"{name}:{classes}"
