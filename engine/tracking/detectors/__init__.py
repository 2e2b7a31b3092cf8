"""`emoengine.engine.tracking.detectors`: face detectors behind one contract (`FaceDetector`, `Faces` in base.py),
picked by name.

`mtcnn` (default) needs nothing but the `mtcnn` wheel's weights; `scrfd` needs an insightface det_*.onnx;
`none` treats each frame as one face (inputs that are already face crops).
"""

from __future__ import annotations

from emoengine.engine.tracking.detectors.base import FaceDetector, Faces
from emoengine.errors import UserInputError

DETECTOR_NAMES = ("mtcnn", "scrfd", "none")
DEFAULT_DETECTOR = "mtcnn"
# chosen by measurement (README, "Detection"): the detector on every N-th frame, optical flow between
DEFAULT_DETECT_EVERY = 8
DEFAULT_MIN_FACE = 40.0       # run's smallest face, frame pixels: a smaller one makes a poor 256² crop (README)


def make_detector(name: str = DEFAULT_DETECTOR, model_path: str | None = None,
                  providers: list[str] | None = None, min_face: float | None = None, **options) -> FaceDetector:
    """Open a detector by name.

    model_path: scrfd - the .onnx (default: insightface's model folder); mtcnn - a folder with
    pnet/rnet/onet.lz4 (default: the mtcnn wheel's). providers: ONNX Runtime providers, e.g.
    ["CUDAExecutionProvider", "CPUExecutionProvider"]. min_face: the smallest face to find, in frame pixels
    (None: the detector's default; below the detector's own minimum: UserInputError). options go to the
    detector (threads, thresholds, score_threshold, input_size...).
    """
    key = (name or DEFAULT_DETECTOR).strip().lower()
    if min_face is not None:
        options["min_face_size"] = float(min_face)
    if key == "mtcnn":
        from emoengine.engine.tracking.detectors.mtcnn import MTCNNDetector

        return MTCNNDetector(weights_dir=model_path, providers=providers, **options)
    if key == "scrfd":
        from emoengine.engine.tracking.detectors.scrfd import SCRFDDetector

        return SCRFDDetector(model_path=model_path, providers=providers, **options)
    if key == "none":
        if model_path:
            raise UserInputError("detector none takes no detector_model", options=("detector", "detector_model"))
        # the whole frame is the face: there is no smallest face to choose
        from emoengine.engine.tracking.detectors.whole_image import WholeImageDetector

        return WholeImageDetector()
    raise UserInputError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTOR_NAMES)}")


__all__ = ["DETECTOR_NAMES", "DEFAULT_DETECTOR", "DEFAULT_DETECT_EVERY", "DEFAULT_MIN_FACE", "FaceDetector", "Faces",
           "make_detector"]
