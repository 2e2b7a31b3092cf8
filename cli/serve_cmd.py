"""`emoengine serve`: EmoNet behind HTTP on Ray Serve (engine.serve), parsing only."""

from __future__ import annotations

from pathlib import Path

import typer

from emoengine.cli.main import _stop_on_sigterm, app
from emoengine.engine.backends import BACKENDS


@app.command("serve")
def serve_command(
    weights: str | None = typer.Option(None, help="EmoNet checkpoint (.pth) or 'random'."),
    model: str | None = typer.Option(None, help="Exported artifact (.onnx, .engine) instead of --weights."),
    backend: str | None = typer.Option(None, help=f"{' | '.join(BACKENDS)} (default: from --model, else ort)."),
    detector: str = typer.Option("mtcnn", help="mtcnn | scrfd | none (whole image is the face)."),
    detector_model: str | None = typer.Option(None, help="SCRFD .onnx (default: insightface's model folder)."),
    taps: str | None = typer.Option(None, "--taps", help="EmoNet modules clients may ask for (?taps=...), "
                                                         "comma-separated (default: conv1,emo_net_2.0.conv1)."),
    max_faces: int | None = typer.Option(None, min=1, help="Keep the largest K faces per image."),
    min_face: float | None = typer.Option(None, help="Smallest face to find, in image pixels (as `run`)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; any but loopback needs --token-file."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    replicas: int = typer.Option(1, min=1, help="EmoNet replicas (each its own model and detector)."),
    max_batch: int = typer.Option(32, min=1, help="Crops per EmoNet call, from all concurrent requests."),
    batch_wait_ms: float = typer.Option(10.0, min=0, help="How long a partial batch waits for more crops."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster (default: a local Ray)."),
    token_file: Path | None = typer.Option(None, help="File holding the bearer token clients must send."),
    max_upload_mb: float = typer.Option(32.0, min=0.001, help="Largest image or crops body."),
    max_video_mb: float = typer.Option(512.0, min=0.001, help="Largest video upload."),
    max_pixels: int = typer.Option(40_000_000, min=1, help="Largest image, width × height."),
    max_crops: int = typer.Option(64, min=1, help="Crops per /v1/crops request."),
    max_video_s: float = typer.Option(7200.0, min=1, help="Longest video (seconds)."),
    max_video_frames: int = typer.Option(200_000, min=1, help="Most frames in a video."),
    max_jobs: int = typer.Option(4, min=1, help="Video jobs queued or running at once (more: 429)."),
    keep_hours: float = typer.Option(24.0, min=0, help="Hours a finished job's files are kept."),
    jobs_dir: Path | None = typer.Option(None, help="Where video jobs live (default: a temporary folder)."),
) -> None:
    """Serve EmoNet over HTTP (Ray Serve): /v1/faces, /v1/crops, /v1/videos, /healthz, /metrics, /docs."""
    import time

    from emoengine.engine.serve.limits import Limits, read_token
    from emoengine.engine.serve.server import ServeConfig, prepare_engine, start_server

    options = {k: v for k, v in dict(max_faces=max_faces, min_face=min_face, detector_model=detector_model).items()
               if v is not None}
    engine_args = dict(weights=weights, model=model, backend=backend, detector=detector, taps=taps, **options)
    prepare_engine(engine_args)
    limits = Limits(upload_mb=max_upload_mb, video_upload_mb=max_video_mb, image_pixels=max_pixels,
                    crops=max_crops, video_s=max_video_s, video_frames=max_video_frames)
    token = read_token(None if token_file is None else str(token_file))
    cfg = ServeConfig(engine_args, host=host, port=port, replicas=replicas, max_batch=max_batch,
                      batch_wait_ms=batch_wait_ms, ray_address=ray_address, token=token,
                      limits=limits, max_jobs=max_jobs, keep_hours=keep_hours,
                      jobs_dir=None if jobs_dir is None else str(jobs_dir))
    with start_server(cfg) as server:
        _stop_on_sigterm()   # again: ray.init installed its own SIGTERM handler, which would skip the drain
        typer.echo(f"emoengine: serving on {server.url} (API docs: {server.url}/docs; Ctrl-C stops)", err=True)
        try:
            while True:
                time.sleep(0.5)
        finally:
            typer.echo("emoengine: stopping: draining in-flight requests", err=True)
