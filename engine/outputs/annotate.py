"""Annotators in the style of supervision: each draws one kind of mark for a list of `FaceResult`s.

`annotate(scene, faces)` returns a new image and never touches `scene` (it may be a frame another stage
still reads). `draw(canvas, faces)` draws in place and is for canvases the caller allocated itself, as
`annotate_frame` does with its one copy. Sizes scale with the frame, so 400x250 and 1080p both read well.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from emoengine.engine.run.records import FaceResult, FrameRecord

FONT = cv2.FONT_HERSHEY_SIMPLEX
AA = cv2.LINE_AA
# Saturated, mutually distinct colours (RGB); a face keeps its colour for as long as it keeps its id.
PALETTE = [(0, 196, 255), (255, 182, 51), (76, 251, 18), (255, 64, 160), (163, 81, 251),
           (255, 118, 51), (0, 214, 194), (209, 212, 53), (102, 117, 255), (255, 64, 64)]
UNTRACKED = (200, 200, 200)
# 68-point (iBUG 300-W) groups: jaw, brows, nose bridge, nostrils, eyes, outer and inner lips.
LANDMARK_GROUPS = [(range(0, 17), False), (range(17, 22), False), (range(22, 27), False),
                   (range(27, 31), False), (range(31, 36), False), (range(36, 42), True),
                   (range(42, 48), True), (range(48, 60), True), (range(60, 68), True)]


def face_color(face_id: int) -> tuple[int, int, int]:
    """Stable RGB colour of a face id (grey for -1, an untracked face)."""
    return UNTRACKED if face_id < 0 else PALETTE[face_id % len(PALETTE)]


def text_color_on(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `bg`."""
    r, g, b = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


class Style:
    """Line width and font size for one frame size (reference: 360 px on the short side)."""

    def __init__(self, width: int, height: int) -> None:
        s = min(width, height) / 360.0
        self.scale = s
        self.thickness = max(1, round(1.5 * s))
        self.font_scale = float(np.clip(0.42 * s, 0.36, 1.1))
        self.font_thickness = max(1, round(1.1 * s))
        self.pad = max(2, round(3 * s))


def _style_for(canvas: np.ndarray, style: Style | None) -> Style:
    return style or Style(canvas.shape[1], canvas.shape[0])


def draw_text_box(canvas: np.ndarray, text: str, x: int, y: int, bg: tuple[int, int, int], style: Style,
                  *, above: bool = True) -> tuple[int, int]:
    """A filled label whose bottom-left (above=True) or top-left corner is (x, y), kept inside the image.

    Returns the label's (width, height).
    """
    (tw, th), base = cv2.getTextSize(text, FONT, style.font_scale, style.font_thickness)
    w, h = tw + 2 * style.pad, th + base + 2 * style.pad
    H, W = canvas.shape[:2]
    x0 = int(np.clip(x, 0, max(0, W - w)))
    y0 = int(y - h if above else y)
    y0 = int(np.clip(y0, 0, max(0, H - h)))
    cv2.rectangle(canvas, (x0, y0), (x0 + w - 1, y0 + h - 1), bg, -1)
    cv2.putText(canvas, text, (x0 + style.pad, y0 + style.pad + th), FONT, style.font_scale,
                text_color_on(bg), style.font_thickness, AA)
    return w, h


class _Annotator:
    def annotate(self, scene: np.ndarray, faces: Sequence[FaceResult], style: Style | None = None) -> np.ndarray:
        """A copy of `scene` (H,W,3 uint8 RGB) with the marks drawn; `scene` is not modified."""
        canvas = np.array(scene, dtype=np.uint8, order="C", copy=True)
        self.draw(canvas, faces, style)
        return canvas

    def draw(self, canvas: np.ndarray, faces: Sequence[FaceResult], style: Style | None = None) -> None:
        raise NotImplementedError


class BoxAnnotator(_Annotator):
    """The face box in the face's colour."""

    def draw(self, canvas, faces, style=None) -> None:
        st = _style_for(canvas, style)
        for face in faces:
            x1, y1, x2, y2 = (int(round(v)) for v in np.asarray(face.box, np.float64)[:4])
            # axis-aligned: crisp 8-connected lines (anti-aliasing would only blur them)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), face_color(face.face_id), st.thickness, cv2.LINE_8)


class LabelAnnotator(_Annotator):
    """`#id expression 87%` above the box and, with `show_va`, `V +0.31  A -0.12` below it."""

    def __init__(self, class_names: Sequence[str] | None = None, show_va: bool = True) -> None:
        self.class_names = list(class_names) if class_names else None
        self.show_va = show_va

    def _probability(self, face: FaceResult) -> float:
        probs = np.asarray(face.probs, np.float64)
        if self.class_names and face.expression in self.class_names and len(probs) == len(self.class_names):
            return float(probs[self.class_names.index(face.expression)])
        return float(probs.max()) if probs.size else float("nan")

    def draw(self, canvas, faces, style=None) -> None:
        st = _style_for(canvas, style)
        for face in faces:
            x1, y1, x2, y2 = (int(round(v)) for v in np.asarray(face.box, np.float64)[:4])
            color = face_color(face.face_id)
            ident = f"#{face.face_id} " if face.face_id >= 0 else ""
            draw_text_box(canvas, f"{ident}{face.expression} {self._probability(face):.0%}", x1 - st.thickness // 2,
                          y1 - st.thickness // 2, color, st, above=True)
            if self.show_va:
                draw_text_box(canvas, f"V {face.valence:+.2f}  A {face.arousal:+.2f}", x1 - st.thickness // 2,
                              y2 + (st.thickness + 1) // 2, color, st, above=False)


class LandmarkAnnotator(_Annotator):
    """The 68 landmarks as small dots in the face's colour (NaN points skipped).

    `connect=True` also joins them along the face contours: pretty for good landmarks, but it turns poor ones
    (an untrained model, a profile face) into a tangle that hides the face, hence off by default.
    """

    def __init__(self, connect: bool = False) -> None:
        self.connect = connect

    def draw(self, canvas, faces, style=None) -> None:
        st = _style_for(canvas, style)
        radius = max(1, round(1.2 * st.scale))
        for face in faces:
            pts = np.asarray(face.landmarks68, np.float64)
            if pts.shape != (68, 2):
                continue
            color = face_color(face.face_id)
            ok = np.asarray(np.isfinite(pts).all(axis=1))   # (68,) bool (numpy's stubs: bool or array)
            ipts = np.round(np.where(ok[:, None], pts, 0)).astype(np.int32)
            if self.connect:
                for group, closed in LANDMARK_GROUPS:
                    idx = [i for i in group if ok[i]]
                    if len(idx) >= 2:
                        cv2.polylines(canvas, [ipts[idx]], closed and len(idx) == len(group), color,
                                      max(1, st.thickness // 2), AA)
            dot_color = (255, 255, 255) if self.connect else color
            for (x, y), good in zip(ipts, ok, strict=True):
                if good:
                    cv2.circle(canvas, (int(x), int(y)), radius, dot_color, -1, AA)


class CircumplexAnnotator(_Annotator):
    """A valence (x) / arousal (y) panel in a corner with one dot per face in the face's colour.

    Values are clipped to [-1, 1] for display only; a clipped value shows as a ring instead of a dot.
    """

    QUADRANTS = (("excited", 1, -1), ("tense", -1, -1), ("sad", -1, 1), ("calm", 1, 1))  # (text, sx, sy)

    def __init__(self, corner: str = "bottom-right", size_fraction: float = 0.34, opacity: float = 0.7) -> None:
        if corner not in ("top-left", "top-right", "bottom-left", "bottom-right"):
            raise ValueError(f"corner must be top-/bottom-left/right, got {corner!r}")
        self.corner = corner
        self.size_fraction = size_fraction
        self.opacity = opacity

    def _text_metrics(self, height: int) -> tuple[float, int, int, int]:
        """(font scale, text height, valence label width, padding) for a panel `height` pixels tall."""
        fs = float(np.clip(height / 300.0, 0.3, 0.5))
        (tw, th), _ = cv2.getTextSize("valence", FONT, fs, 1)
        return fs, th, tw, max(3, height // 30)

    def panel_rect(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) of the panel for a frame of this size: the circle's square plus room for "valence"."""
        side = int(np.clip(self.size_fraction * min(width, height), min(96, width, height), 300))
        _, _, tw, pad = self._text_metrics(side)
        w = min(width, side + tw + pad)
        margin = max(4, round(0.015 * min(width, height)))
        x0 = margin if "left" in self.corner else width - w - margin
        y0 = margin if "top" in self.corner else height - side - margin
        return max(0, x0), max(0, y0), w, side

    def draw(self, canvas, faces, style=None) -> None:
        H, W = canvas.shape[:2]
        x0, y0, pw, ph = self.panel_rect(W, H)
        if min(pw, ph) < 48:
            return
        roi = canvas[y0:y0 + ph, x0:x0 + pw]
        # darken towards grey 20 in one SIMD pass (measured at 720p: 1.1 ms as float32 numpy, 0.1 ms so)
        cv2.convertScaleAbs(roi, dst=roi, alpha=1.0 - self.opacity, beta=20.0 * self.opacity)

        fs, th, vw, pad = self._text_metrics(ph)
        r = ph // 2 - th - 2 * pad
        if r < 8:  # a frame too small for a readable panel (thumbnails, strips): leave it out
            return
        cx, cy = x0 + pad + r + pad, y0 + ph // 2 + th // 2
        axis, rim, hint, label = (120, 120, 120), (175, 175, 175), (135, 135, 135), (235, 235, 235)
        cv2.circle(canvas, (cx, cy), r, rim, 1, AA)
        tip = min(0.3, 6.0 / r)  # arrow heads of ~6 px mark the positive directions
        cv2.arrowedLine(canvas, (cx - r, cy), (cx + r + pad, cy), axis, 1, AA, tipLength=tip)
        cv2.arrowedLine(canvas, (cx, cy + r), (cx, cy - r - pad // 2), axis, 1, AA, tipLength=tip)
        aw = cv2.getTextSize("arousal", FONT, fs, 1)[0][0]
        cv2.putText(canvas, "arousal", (cx - aw // 2, cy - r - pad - pad // 2), FONT, fs, label, 1, AA)
        cv2.putText(canvas, "valence", (cx + r + 2 * pad, cy + th // 2), FONT, fs, label, 1, AA)
        hs = fs * 0.85
        for text, sx, sy in self.QUADRANTS:
            (tw, qh), _ = cv2.getTextSize(text, FONT, hs, 1)
            qx = cx + sx * int(0.5 * r) - tw // 2
            qy = cy + sy * int(0.5 * r) + qh // 2
            cv2.putText(canvas, text, (qx, qy), FONT, hs, hint, 1, AA)

        dot = max(3, ph // 28)
        for face in faces:
            v, a = float(face.valence), float(face.arousal)
            if not (np.isfinite(v) and np.isfinite(a)):
                continue
            vc, ac = float(np.clip(v, -1, 1)), float(np.clip(a, -1, 1))
            px, py = int(round(cx + vc * r)), int(round(cy - ac * r))
            color = face_color(face.face_id)
            if (vc, ac) != (v, a):
                cv2.circle(canvas, (px, py), dot, color, max(1, dot // 3), AA)
            else:
                cv2.circle(canvas, (px, py), dot + 1, (0, 0, 0), -1, AA)
                cv2.circle(canvas, (px, py), dot, color, -1, AA)
            if len(faces) > 1 and face.face_id >= 0:
                cv2.putText(canvas, str(face.face_id), (px + dot + 2, py - dot), FONT, hs, color, 1, AA)


def annotate_frame(frame: FrameRecord, class_names: Sequence[str] | None = None, *,
                   landmarks: bool = True, connect_landmarks: bool = False, circumplex: bool = True,
                   show_va: bool = True) -> np.ndarray:
    """The annotated picture of one frame: a new array; `frame.rgb` is left as it was."""
    canvas = np.array(frame.rgb, dtype=np.uint8, order="C", copy=True)
    style = Style(canvas.shape[1], canvas.shape[0])
    if landmarks:
        LandmarkAnnotator(connect_landmarks).draw(canvas, frame.faces, style)
    BoxAnnotator().draw(canvas, frame.faces, style)
    LabelAnnotator(class_names, show_va=show_va).draw(canvas, frame.faces, style)
    if circumplex:
        CircumplexAnnotator().draw(canvas, frame.faces, style)
    return canvas
