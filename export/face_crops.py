"""Varied 256x256 face crops from photos that ship in our dependencies, for int8 calibration and bench parity.

insightface's wheel carries `t1.jpg` (six people) and `Tom_Hanks_54745.png`. MTCNN finds the faces once; each
crop is then one face under a seeded random view: shifted, zoomed, slightly rotated, maybe mirrored, with
brightness, contrast and colour changes. Different seeds give disjoint draws, so int8 calibration (one seed)
and the agreement check (another) never see the same crop.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from emoengine.contract import CROP_SIZE

CALIBRATION_SEED = 1   # `export --precision int8` calibrates on these
EVALUATION_SEED = 2    # `bench` measures parity on these


@lru_cache(maxsize=1)
def _shipped_faces() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(photo, box) for every face MTCNN finds in the shipped photos (7: six in t1.jpg, one Tom Hanks)."""
    from emoengine.engine.run.demo import shipped_photo
    from emoengine.engine.tracking.detectors.mtcnn import MTCNNDetector

    photos = [shipped_photo("t1.jpg"), shipped_photo("Tom_Hanks_54745.png")]
    detector = MTCNNDetector()
    try:
        found = detector.detect(photos)
    finally:
        detector.close()
    return tuple((photo, box) for photo, faces in zip(photos, found, strict=True) for box in faces.boxes)


def face_crops(n: int, seed: int = EVALUATION_SEED) -> np.ndarray:
    """(n, 256, 256, 3) uint8 RGB crops, faces taken in turn, each under its own random view."""
    faces = _shipped_faces()
    rng = np.random.default_rng(seed)
    crops = np.empty((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i in range(n):
        photo, box = faces[i % len(faces)]
        crops[i] = _random_view(photo, box, rng)
    return crops


def _random_view(photo: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented square crop around `box` (affine warp: shift, zoom, rotation; black outside the photo)."""
    centre = (box[:2] + box[2:]) / 2
    side = float((box[2:] - box[:2]).max()) * rng.uniform(1.1, 1.6)          # tight to loose framing
    centre = centre + rng.uniform(-0.12, 0.12, 2) * side                     # off-centre faces
    angle = rng.uniform(-15, 15)
    scale = CROP_SIZE / side
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
    m[:, 2] += CROP_SIZE / 2 - centre
    crop = cv2.warpAffine(photo, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.6, 1.4) * rng.uniform(0.9, 1.1, 3)                   # brightness + colour cast
    contrast = rng.uniform(0.7, 1.3)
    out = (crop.astype(np.float32) - 128) * contrast + 128
    out = out * gain + rng.normal(0, rng.uniform(0, 6), out.shape)           # a little sensor noise
    return np.clip(out, 0, 255).astype(np.uint8)
