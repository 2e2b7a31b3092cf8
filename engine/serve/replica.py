"""One EmoNet replica of `emoengine serve` (a Ray Serve deployment): an `emoengine.Engine`, opened once, and the
batcher in front of its model.

Crops (`/v1/crops`) go straight to the batcher. An image (`/v1/faces`) runs `run`'s own pipeline on its one
frame (engine.run.pipeline: detect, crop, infer, then the driver's FrameAssembler), with EmoNet reached through
the batcher, so its crops share EmoNet calls with every other request on the replica and its answers are the
ones `run` and `Engine` give for that image.
"""

from __future__ import annotations

import asyncio
import logging
import os

import numpy as np

from emoengine.engine.serve.batcher import CropBatcher

log = logging.getLogger("emoengine.serve.replica")
PIPELINE_TIMEOUT_S = 120.0   # one image through detection and EmoNet; past it the request fails, the replica lives


class _BatchedModel:
    """The Engine's model as the pipeline sees it, its `predict` routed through the replica's batcher (the
    pipeline calls it from its own thread; the batcher lives on the replica's event loop)."""

    def __init__(self, model, batcher: CropBatcher, loop: asyncio.AbstractEventLoop, infos: list) -> None:
        self._model, self._batcher, self._loop, self._infos = model, batcher, loop, infos

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, crops, heatmap: bool = False):
        future = asyncio.run_coroutine_threadsafe(self._batcher.submit(crops), self._loop)
        batch, info = future.result(PIPELINE_TIMEOUT_S)
        self._infos.append(info)
        return batch

    def close(self) -> None:
        pass


def crop_outputs(batch, names) -> dict[str, np.ndarray]:
    """Engine.predict's outputs of an EmoNetBatch (without the heatmap), and the taps asked for."""
    out = {"expression": batch.logits, "probabilities": batch.probs, "valence": batch.valence,
           "arousal": batch.arousal, "landmarks": batch.landmarks}
    from emoengine.engine.model.tapset import module_tensor

    out.update({name: module_tensor(batch, name) for name in names})
    return out


class EmoNetReplica:
    """Deployment body: `engine_args` are `emoengine.Engine`'s (weights or model, backend, detector, taps and
    run options such as max_faces, min_face, crop); `max_batch` / `batch_wait_ms` the batcher's."""

    def __init__(self, engine_args: dict, max_batch: int = 32, batch_wait_ms: float = 10.0) -> None:
        from emoengine.api import Engine

        self.engine = Engine(**engine_args)
        self._model, self._detector = self.engine.parts()   # the Engine's own, lent; it closes them
        self.name = f"pid{os.getpid()}"
        self._specs = self.engine.tap_specs   # probed once, by the Engine
        self.batcher = CropBatcher(lambda crops: self._model.predict(crops), max_batch, batch_wait_ms, self.name)
        log.info("replica %s ready: %r", self.name, self.engine)

    def info(self) -> dict:
        """What the gateway tells clients and /healthz: classes, taps, backend, this replica's process id."""
        return {"classes": list(self.engine.class_names), "taps": list(self.engine.taps),
                "full_taps": list(self._model.taps), "backend": self.engine.backend, "pid": os.getpid()}

    async def crops(self, crops: np.ndarray, taps: tuple[str, ...] = ()) -> dict:
        batch, info = await self.batcher.submit(crops)
        return {"outputs": crop_outputs(batch, taps), "batches": [info.__dict__]}

    async def faces(self, image: bytes, taps: tuple[str, ...] = ()) -> dict:
        loop = asyncio.get_running_loop()
        infos: list = []
        faces, size = await asyncio.to_thread(self._faces_blocking, image, taps, loop, infos)
        return {"faces": faces, "width": size[0], "height": size[1], "batches": [i.__dict__ for i in infos]}

    def _faces_blocking(self, image: bytes, taps, loop, infos: list):
        from emoengine.engine.sources.images import decode_image

        rgb = decode_image(np.frombuffer(image, np.uint8), "the uploaded image")
        model = _BatchedModel(self._model, self.batcher, loop, infos)
        faces = image_faces(rgb, model, self._detector, self.engine.template, self._specs, self.batcher.max_batch)
        return [face_fields(f, taps) for f in faces], (rgb.shape[1], rgb.shape[0])

    def check_health(self) -> None:
        """Ray Serve's health check: a closed Engine is a replica to replace."""
        if self.engine._model is None:
            raise RuntimeError("the Engine is closed")

    def __del__(self) -> None:
        try:
            self.batcher.close()
            self.engine.close()
        except Exception:  # noqa: BLE001  at process exit
            pass


def image_faces(rgb: np.ndarray, model, detector, cfg, specs, max_batch: int) -> list:
    """Every face of one RGB image as FaceResults: `run`'s pipeline on a one-frame source, with an Engine's
    model (or the batcher in front of it) and detector (`Engine.parts()`) and its RunConfig `cfg`."""
    from emoengine.engine.run.driver import FrameAssembler
    from emoengine.engine.run.pipeline import Pipeline, PipelineOptions
    from emoengine.engine.sources.frame_source import Frame

    assemble = FrameAssembler(model.class_names, 0.0, taps=specs, independent_frames=True)
    records = []
    options = PipelineOptions(max_batch=max_batch, max_wait_ms=0.0, max_faces=cfg.max_faces,
                              crop_mode=cfg.crop_mode or ("upstream" if cfg.detector == "none" else "square"),
                              queue_size=2, detect_every=1, independent_frames=True)
    Pipeline([Frame(0, 0.0, rgb)], detector, model, lambda r: records.append(assemble(r)), options).run()
    return [f for r in records for f in r.faces]


def face_fields(face, taps) -> dict:
    """One FaceResult as plain values (numpy arrays kept; the gateway encodes them)."""
    from emoengine.api_results import face_taps

    return {"box": face.box, "score": face.det_score, "id": face.face_id, "expression": face.expression,
            "probabilities": face.probs, "valence": face.valence, "arousal": face.arousal,
            "landmarks": face.landmarks68, "taps": face_taps(face, taps)}
