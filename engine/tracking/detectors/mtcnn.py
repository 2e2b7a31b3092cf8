"""MTCNN face detector (P-Net -> R-Net -> O-Net cascade) on ONNX Runtime, with the `mtcnn` wheel's weights.

The cascade follows the wheel's own pipeline (mtcnn 1.0, TensorFlow port of Zhang et al. 2016) so that its
weights see the inputs they were trained on: RGB, (x - 127.5) / 128, untransposed images, P-Net cells of 12 px
at stride 2 in MATLAB's 1-based corner convention, patches for R/O-Net sampled like tf.image.crop_and_resize
(bilinear, corners aligned, 0 after normalisation outside the image), regression scaled by (w + 1), NMS 0.5 / 0.7
(union), 0.7 (union), 0.7 ("min"), and P/R-Net thresholds 0.6 / 0.7.

Ours on purpose: O-Net's threshold is 0.9, not the wheel's 0.8. Real faces score > 0.95 while the wheel's own false
positives sit at 0.80-0.86 (a knuckle in insightface's t1.jpg at 0.82); a row of emotions for a non-face does more
harm than a missed marginal face. thresholds=(0.6, 0.7, 0.8) gives the wheel's behaviour.

Also ours: frames are downscaled so the long side is at most `max_side` (default 1280: a 4K frame's pyramid costs
9x a 720p one, and the faces it alone would find are too small for EmoNet's 256 px crops anyway); frames of one
size are batched through P-Net per scale, and every frame's R/O-Net patches go through one batched run. Boxes are
clipped to the frame, as the wheel does by default; landmarks are not.

Speed on a 2-core CPU (one ORT thread, 1280x720): about 180 ms for a frame with six faces at min_face_size 20
(P-Net ~90 ms over 11 scales, R-Net ~70 ms on ~700 proposals), 75 ms for an empty frame; min_face_size 40 cuts
that to about 75 / 20 ms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from emoengine.engine.backends import OrtRunner
from emoengine.engine.tracking.detectors.base import Faces, checked_min_face
from emoengine.engine.tracking.detectors.nms import clip_boxes, ensure_rgb, nms, square_boxes
from emoengine.errors import UserInputError

NET_NAMES = ("pnet", "rnet", "onet")
PNET_STRIDE, PNET_CELL = 2, 12
WHEEL_MIN_FACE = 20.0   # the mtcnn wheel's default (run asks for its own, engine.tracking.detectors.DEFAULT_MIN_FACE)
PATCH_BATCH = 1024  # R/O-Net patches per run: bounds ORT's activations (R-Net: ~55 kB per patch) on busy frames


def pyramid_scales(height: int, width: int, min_face_size: float, scale_factor: float) -> list[float]:
    """Scales at which a face of min_face_size px becomes P-Net's 12 px cell, down to a 12 px image."""
    scale = PNET_CELL / min_face_size
    scales = []
    while min(height, width) * scale >= PNET_CELL:
        scales.append(scale)
        scale *= scale_factor
    return scales


def crop_patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 bilinear samples of `boxes` (x1,y1,x2,y2) from an RGB uint8 image.

    Sample positions follow tf.image.crop_and_resize on boxes normalised by the image size, as the wheel does
    (corners aligned); outside the image the value is 128, i.e. ~0 once normalised, as there. One cv2.remap
    over all boxes (in chunks: OpenCV caps a map at 32767 rows).
    """
    h, w = image.shape[:2]
    n = len(boxes)
    t = np.arange(size, dtype=np.float32) / (size - 1)
    ys = ((boxes[:, 1:2] + t * (boxes[:, 3:4] - boxes[:, 1:2])) * ((h - 1) / h)).astype(np.float32)
    xs = ((boxes[:, 0:1] + t * (boxes[:, 2:3] - boxes[:, 0:1])) * ((w - 1) / w)).astype(np.float32)
    map_y = np.broadcast_to(ys[:, :, None], (n, size, size)).reshape(n * size, size)
    map_x = np.broadcast_to(xs[:, None, :], (n, size, size)).reshape(n * size, size)
    out = np.empty((n * size, size, 3), np.uint8)
    step = (32767 // size) * size
    for r in range(0, n * size, step):
        out[r:r + step] = cv2.remap(image, map_x[r:r + step], map_y[r:r + step], cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    return out.reshape(n, size, size, 3)


def _pyramid(image: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Area-resampled pyramid. Levels come from the first level, not the frame: 2-3x cheaper for a 720p
    frame, and unlike a level-by-level chain it does not add blur that changes what P-Net finds."""
    levels = []
    for size in sizes:
        src = levels[0] if levels else image
        levels.append(cv2.resize(src, size, interpolation=cv2.INTER_AREA))
    return levels


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R/O-Net box offsets, scaled by the 1-based box size (w + 1) as the nets were trained."""
    wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
    return boxes + reg * np.concatenate([wh, wh], axis=1)


class MTCNNDetector:
    """MTCNN on ONNX Runtime. `detect(frames)` batches P-Net per size and R/O-Net across all frames."""

    name = "mtcnn"

    MIN_FACE_PX = PNET_CELL        # P-Net's cell: nothing smaller can be found without upscaling the frame

    def __init__(self, weights_dir: str | None = None, providers: list[str] | None = None,
                 threads: int | None = None, min_face_size: float = WHEEL_MIN_FACE, scale_factor: float = 0.709,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.9), max_side: int = 1280,
                 max_batch: int = 8, device: str | None = None, nets: Mapping[str, bytes] | None = None) -> None:
        """weights_dir: a folder with pnet/rnet/onet.lz4 (default: the mtcnn wheel's). min_face_size is in frame
        pixels. The working image is the frame downscaled to long side <= max_side; there a face shrinks with the
        frame, and none under 12 px can be found (in a 4K frame at max_side 1280: none under 38 frame pixels).
        device: None runs the nets on ONNX Runtime (`providers`, `threads`); "cpu" / "cuda" in PyTorch there
        (engine.tracking.detectors.mtcnn_torch: the same weights and numbers, for the torch backends). nets: the
        serialized ONNX nets already built from those weights (`prebuilt`: a detect worker process gets its
        parent's and skips importing onnx, a second of its start-up)."""
        min_face_size = checked_min_face(min_face_size, PNET_CELL, "mtcnn", " (P-Net's cell)")
        if not 0 < scale_factor < 1 or max_side < PNET_CELL or len(thresholds) != 3:
            raise UserInputError("mtcnn needs 0 < scale_factor < 1, max_side >= 12 and three thresholds (P-, R-, "
                                 "O-Net)")
        self.min_face_size, self.scale_factor = min_face_size, float(scale_factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_side, self.max_batch = int(max_side), int(max_batch)
        self.device = device
        if device is not None:
            from emoengine.engine.tracking.detectors.mtcnn_torch import torch_nets

            self._nets = torch_nets(str(weights_dir) if weights_dir else None, device)
        else:
            if nets is None:
                from emoengine.engine.tracking.detectors.mtcnn_graphs import mtcnn_models

                nets = mtcnn_models(str(weights_dir) if weights_dir else None)
            self.prebuilt = {"nets": dict(nets)}   # what a copy of this detector in another process is given
            self._nets = {n: OrtRunner(nets[n], providers=providers, threads=threads) for n in NET_NAMES}

    # -- public -------------------------------------------------------------------------------------------
    def detect(self, frames: Sequence[np.ndarray]) -> list[Faces]:
        images, factors = [], []
        for frame in frames:
            image, factor = self._working_image(ensure_rgb(frame))
            images.append(image)
            factors.append(factor)
        boxes = self._pnet_stage(images, factors)
        boxes = self._rnet_stage(images, boxes)
        results = self._onet_stage(images, boxes)
        out = []
        for frame, factor, (b, s, lm) in zip(frames, factors, results, strict=True):
            if len(b) == 0:
                out.append(Faces.empty())
                continue
            h, w = np.asarray(frame).shape[:2]
            full = (b * np.tile(factor, 2)).astype(np.float32)
            out.append(Faces(clip_boxes(full, w, h), s.astype(np.float32), (lm * factor).astype(np.float32),
                             crop_boxes=full))
        return out

    def close(self) -> None:
        for net in self._nets.values():
            net.close()

    # -- stages -------------------------------------------------------------------------------------------
    @property
    def min_face(self) -> float:
        """The smallest face this detector looks for, in frame pixels."""
        return self.min_face_size

    def _working_image(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Downscale so the long side is <= max_side; returns the image and (fx, fy) back to frame pixels."""
        h, w = rgb.shape[:2]
        if max(h, w) <= self.max_side:
            return rgb, np.ones(2, np.float32)
        s = self.max_side / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        return small, np.array([w / nw, h / nh], np.float32)

    def _pnet_stage(self, images: list[np.ndarray], factors: list[np.ndarray]) -> list[np.ndarray]:
        """Proposals per image: (n, 5) squared boxes + score, after per-scale and cross-scale NMS."""
        per_image: list[list[np.ndarray]] = [[] for _ in images]
        groups: dict[tuple[int, int, float], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((*im.shape[:2], float(factors[i][0])), []).append(i)
        for (h, w, factor), indices in groups.items():
            scales = pyramid_scales(h, w, max(PNET_CELL, self.min_face_size / factor), self.scale_factor)
            sizes = [(math.ceil(w * s), math.ceil(h * s)) for s in scales]
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                pyramids = [_pyramid(images[i], sizes) for i in chunk]
                for level, (sw, sh) in enumerate(sizes):
                    back = np.array([w / sw, h / sh, w / sw, h / sh], np.float32)
                    out = self._nets["pnet"].infer({"image": np.stack([p[level] for p in pyramids])})
                    for j, i in enumerate(chunk):
                        cand = self._pnet_candidates(out["prob"][j], out["reg"][j], back)
                        per_image[i].append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        result = []
        for cands in per_image:
            c = np.concatenate(cands) if cands else np.zeros((0, 5), np.float32)
            c = c[nms(c[:, :4], c[:, 4], 0.7)]
            result.append(np.concatenate([square_boxes(c[:, :4]), c[:, 4:5]], axis=1))
        return result

    def _pnet_candidates(self, prob: np.ndarray, reg: np.ndarray, back: np.ndarray) -> np.ndarray:
        """Cells above threshold -> (n, 5) regressed boxes in working-image pixels + score."""
        ys, xs = np.nonzero(prob > self.thresholds[0])
        corner = np.stack([xs, ys], axis=1).astype(np.float32) * PNET_STRIDE
        cell = np.concatenate([corner + 1, corner + PNET_CELL], axis=1)  # 1-based corners, as trained
        boxes = (cell + reg[ys, xs] * (PNET_CELL - 1)) * back
        return np.concatenate([boxes, prob[ys, xs, None]], axis=1).astype(np.float32)

    def _run_patches(self, net: str, images, boxes, size: int) -> list[dict[str, np.ndarray]]:
        """One batched run of R- or O-Net over every image's boxes; outputs split back per image."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [{} for _ in boxes]
        patches = np.concatenate([crop_patches(im, b[:, :4], size)
                                  for im, b in zip(images, boxes, strict=True) if len(b)])
        runs = [self._nets[net].infer({"image": patches[i:i + PATCH_BATCH]})
                for i in range(0, len(patches), PATCH_BATCH)]
        out = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
        splits = np.cumsum(counts)[:-1]
        per = {k: np.split(v, splits) for k, v in out.items()}
        return [{k: per[k][i] for k in per} for i in range(len(boxes))]

    def _rnet_stage(self, images, proposals: list[np.ndarray]) -> list[np.ndarray]:
        outs = self._run_patches("rnet", images, proposals, 24)
        result = []
        for props, out in zip(proposals, outs, strict=True):
            if not len(props):
                result.append(props)
                continue
            keep = out["prob"] > self.thresholds[1]
            boxes = _regress(props[keep, :4], out["reg"][keep])
            scores = out["prob"][keep]
            k = nms(boxes, scores, 0.7)
            result.append(np.concatenate([square_boxes(boxes[k]), scores[k, None]], axis=1))
        return result

    def _onet_stage(self, images, proposals: list[np.ndarray]):
        outs = self._run_patches("onet", images, proposals, 48)
        result = []
        for props, out in zip(proposals, outs, strict=True):
            if not len(props):
                result.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))))
                continue
            keep = out["prob"] > self.thresholds[2]
            boxes, scores = props[keep, :4], out["prob"][keep]
            wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
            lm = out["landmarks"][keep].reshape(-1, 2, 5).transpose(0, 2, 1)  # (x1..x5, y1..y5) -> (5, 2)
            lm = lm * wh[:, None, :] + boxes[:, None, 0:2] - 1
            boxes = _regress(boxes, out["reg"][keep])
            k = nms(boxes, scores, 0.7, mode="min")
            result.append((boxes[k], scores[k], lm[k]))
        return result
