"""SCRFD face detector (insightface's det_10g / det_2.5g / det_500m ONNX models) with our own pre/post-processing.

We use insightface's models and model folder, never its code: the letterbox, the anchor grid, distance decoding
and NMS are written here so that the runner can be any ORT provider (CPU or CUDA) and nothing else is imported.

The model: input (N, 3, H, W) float, RGB, (x - 127.5) / 128, the frame letterboxed to H x W (aspect kept, padded
at the bottom/right). Outputs per stride s (8, 16, 32; or 8..128 for 5-level models): face scores (A, 1),
box distances (A, 4) and optionally keypoint distances (A, 10), in units of s, from anchor centres that run over
the (H/s) x (W/s) grid row by row, each centre repeated for its anchors (2 per location for 3-level models).
Outputs may carry a batch dimension (N, A, C) or not (A, C); only the former are run on several frames at once.
Returned boxes are clipped to the frame (as MTCNN's are); keypoints are not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from emoengine.engine.backends import OrtRunner
from emoengine.engine.tracking.detectors.base import Faces, checked_min_face
from emoengine.engine.tracking.detectors.nms import clip_boxes, ensure_rgb, nms
from emoengine.errors import UserInputError

MODEL_PREFERENCE = ("det_10g.onnx", "det_2.5g.onnx", "det_500m.onnx")  # most accurate first
STRIDES = {3: (8, 16, 32), 5: (8, 16, 32, 64, 128)}


def insightface_models_dir() -> Path:
    """insightface's model folder: $INSIGHTFACE_HOME/models, else ~/.insightface/models."""
    return Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"


def find_scrfd_model(model_path: str | os.PathLike | None = None) -> Path:
    """The SCRFD model to use: `model_path` if given, else the best det_*.onnx in insightface's model folder."""
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise UserInputError(f"no such detector model: {path}")
        return path
    root = insightface_models_dir()
    found = sorted(root.glob("*/det_*.onnx"))
    if found:
        rank = {name: i for i, name in enumerate(MODEL_PREFERENCE)}
        return min(found, key=lambda p: (rank.get(p.name, len(rank)), p.parent.name != "buffalo_l", str(p)))
    raise UserInputError(
        f"no SCRFD model found in {root}: pass detector_model (a path), or put insightface's buffalo_l pack there "
        f"({root}/buffalo_l/det_10g.onnx): on a machine with internet run "
        "`python -c \"import insightface; insightface.app.FaceAnalysis()\"` and copy ~/.insightface over, "
        "or unzip buffalo_l.zip from insightface's GitHub releases (tag model-zoo)", options=("detector_model",)
    )


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping the aspect ratio into a black (W, H) = size canvas at the top-left.

    Returns the canvas and (sx, sy), the factors from frame to canvas pixels (equal up to integer rounding).
    """
    h, w = rgb.shape[:2]
    cw, ch = size
    if h / w > ch / cw:
        nh, nw = ch, max(1, int(ch * w / h))
    else:
        nw, nh = cw, max(1, int(cw * h / w))
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh))
    return canvas, np.array([nw / w, nh / h], np.float32)


def anchor_centres(height: int, width: int, stride: int, per_location: int) -> np.ndarray:
    """(height * width * per_location, 2) x, y centres in input pixels, row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, per_location, axis=0)


def split_outputs(outputs: list[np.ndarray]) -> tuple[list, list, list | None]:
    """Scores, box and keypoint outputs, each (N, A, C) and ordered by stride (most anchors first).

    Identified by their last dimension (1, 4, 10) - insightface relies on the order (3 scores, 3 boxes, 3 kps),
    which this reproduces for its models and keeps right for an export that lists them differently.
    """
    outputs = [o[None] if o.ndim == 2 else o for o in outputs]
    groups = {c: sorted((o for o in outputs if o.shape[-1] == c), key=lambda o: -o.shape[1]) for c in (1, 4, 10)}
    scores, boxes, kps = groups[1], groups[4], groups[10]
    if len(scores) not in STRIDES or len(boxes) != len(scores) or len(kps) not in (0, len(scores)):
        shapes = [tuple(o.shape) for o in outputs]
        raise UserInputError(f"not an SCRFD model: outputs {shapes} are not scores/boxes/keypoints per stride")
    return scores, boxes, kps or None


class SCRFDDetector:
    """insightface SCRFD on any ONNX Runtime provider; letterbox in, boxes and 5 keypoints in frame pixels out."""

    name = "scrfd"

    MIN_FACE_PX = 8.0   # half its finest anchor (16 px at stride 8); not measured (no SCRFD model on our machine)

    def __init__(self, model_path: str | os.PathLike | None = None, providers: list[str] | None = None,
                 threads: int | None = None, input_size: tuple[int, int] = (640, 640),
                 score_threshold: float = 0.5, nms_threshold: float = 0.4, min_face_size: float = MIN_FACE_PX) -> None:
        """input_size is (W, H), used when the model's input size is dynamic; a fixed model size wins.
        min_face_size (frame pixels): smaller detections are dropped."""
        self.min_face = checked_min_face(min_face_size, self.MIN_FACE_PX, "scrfd")
        self.model_path = find_scrfd_model(model_path)
        self.runner = OrtRunner(self.model_path, providers=providers, threads=threads)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        session = self.runner.session
        assert session is not None   # just opened
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        n, _, h, w = (list(inp.shape) + [None] * 4)[:4]
        self.input_size = (w, h) if isinstance(w, int) and isinstance(h, int) else (input_size[0], input_size[1])
        out_ranks = {len(o.shape) for o in session.get_outputs()}
        self._batchable = out_ranks == {3} and not isinstance(n, int)

    def detect(self, frames: Sequence[np.ndarray]) -> list[Faces]:
        rgbs = [ensure_rgb(f) for f in frames]
        if not rgbs:
            return []
        boxed = [letterbox(rgb, self.input_size) for rgb in rgbs]
        blobs = np.stack([canvas for canvas, _ in boxed]).astype(np.float32)
        blobs = ((blobs - 127.5) / 128.0).transpose(0, 3, 1, 2)
        if self._batchable:
            outputs = self._run(blobs)
        else:
            per_frame = [self._run(blobs[i:i + 1]) for i in range(len(blobs))]
            outputs = [np.concatenate(level) for level in zip(*per_frame, strict=True)]
        scores, boxes, kps = split_outputs(outputs)
        return [self._decode(i, scores, boxes, kps, factor, rgb.shape[:2])
                for i, ((_, factor), rgb) in enumerate(zip(boxed, rgbs, strict=True))]

    def close(self) -> None:
        self.runner.close()

    def _run(self, blob: np.ndarray) -> list[np.ndarray]:
        out = self.runner.infer({self.input_name: blob})
        return [o[None] if o.ndim == 2 else o for o in (out[name] for name in self.runner.output_names)]

    def _decode(self, i: int, scores, boxes, kps, factor: np.ndarray, frame_hw) -> Faces:
        """Frame i's candidates above threshold -> NMS -> frame pixels."""
        w_in, h_in = self.input_size
        all_boxes, all_scores, all_kps = [], [], []
        for level, stride in enumerate(STRIDES[len(scores)]):
            gh, gw = h_in // stride, w_in // stride
            s = scores[level][i, :, 0]
            per_location = len(s) // (gh * gw)
            keep = np.nonzero(s >= self.score_threshold)[0]
            centres = anchor_centres(gh, gw, stride, per_location)[keep]
            d = boxes[level][i, keep] * stride
            all_boxes.append(np.concatenate([centres - d[:, :2], centres + d[:, 2:]], axis=1))
            all_scores.append(s[keep])
            if kps is not None:
                all_kps.append(centres[:, None, :] + kps[level][i, keep].reshape(-1, 5, 2) * stride)
        b, sc = np.concatenate(all_boxes), np.concatenate(all_scores)
        if len(b) == 0:
            return Faces.empty()
        lm = np.concatenate(all_kps) if kps is not None else np.full((len(b), 5, 2), np.nan, np.float32)
        k = nms(b, sc, self.nms_threshold)
        k = k[np.maximum(b[k, 2] - b[k, 0], b[k, 3] - b[k, 1]) / factor.min() >= self.min_face]
        h, w = frame_hw
        full = (b[k] / np.tile(factor, 2)).astype(np.float32)
        return Faces(clip_boxes(full, w, h), sc[k].astype(np.float32), (lm[k] / factor).astype(np.float32),
                     crop_boxes=full)
