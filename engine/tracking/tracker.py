"""Face ids over time (greedy IoU matching) and per-id temporal smoothing of the predictions.

Faces in a video move little between frames, so the box of the previous frame overlaps the new one far
more than any other face's box; greedy matching by highest IoU is enough and has no solver dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emoengine.engine.tracking.detectors.nms import finite_boxes


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N,4) with every box in `b` (M,4), x1 y1 x2 y2 -> (N, M); 0 for empty boxes."""
    a, b = finite_boxes(a), finite_boxes(b)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class IouTracker:
    """Stable integer ids (0, 1, 2, ...) for boxes across frames.

    Each `update` matches the new boxes to the live tracks greedily by highest IoU (>= `iou_threshold`);
    unmatched boxes start new tracks; a track unseen for more than `max_missed` frames is dropped and its
    id never reused. `dropped` lists the ids dropped by the last update (to `forget` in a smoother).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, centre_gate: float = 0.5) -> None:
        self.iou_threshold = float(iou_threshold)
        self.centre_gate = float(centre_gate)
        self.max_missed = int(max_missed)
        self._ids = np.zeros((0,), np.int64)
        self._boxes = np.zeros((0, 4), np.float64)
        self._missed = np.zeros((0,), np.int64)
        self._next_id = 0
        self.dropped: list[int] = []

    @property
    def active_ids(self) -> list[int]:
        return self._ids.tolist()

    def dropped_ids(self) -> list[int]:
        """Ids dropped by the last `update` (same as `dropped`)."""
        return list(self.dropped)

    def update(self, boxes: np.ndarray) -> np.ndarray:
        """Ids (K,) int64 for this frame's boxes (K,4), in their order."""
        boxes = finite_boxes(boxes)
        k, t = len(boxes), len(self._ids)
        ids = np.full(k, -1, np.int64)
        matched_track = np.zeros(t, bool)
        if k and t:
            iou = iou_matrix(boxes, self._boxes)
            order = np.argsort(-iou, axis=None, kind="stable")  # best pairs first, ties by position
            det_used = np.zeros(k, bool)
            for flat in order:
                d, tr = divmod(int(flat), t)
                if iou[d, tr] < self.iou_threshold or iou[d, tr] <= 0:
                    break
                if det_used[d] or matched_track[tr]:
                    continue
                det_used[d] = matched_track[tr] = True
                ids[d] = self._ids[tr]
                self._boxes[tr] = boxes[d]
            self._match_by_centre(boxes, ids, det_used, matched_track)
        self._age(matched_track)
        new = np.flatnonzero(ids < 0)
        if len(new):
            ids[new] = np.arange(self._next_id, self._next_id + len(new))
            self._next_id += len(new)
            self._ids = np.concatenate([self._ids, ids[new]])
            self._boxes = np.concatenate([self._boxes, boxes[new]])
            self._missed = np.concatenate([self._missed, np.zeros(len(new), np.int64)])
        return ids

    def carry(self, ids: np.ndarray, boxes: np.ndarray) -> list[int]:
        """Tracks `ids` moved to `boxes` without matching (a frame whose faces were carried, not detected);
        the other tracks age by a frame as in `update`. Returns the ids dropped (also in `dropped`)."""
        boxes = finite_boxes(boxes)
        where = {int(i): n for n, i in enumerate(self._ids.tolist())}
        matched = np.zeros(len(self._ids), bool)
        for i, b in zip(np.asarray(ids).tolist(), boxes, strict=True):
            if (n := where.get(int(i))) is not None:
                self._boxes[n] = b
                matched[n] = True
        self._age(matched)
        return self.dropped_ids()

    def _age(self, matched_track: np.ndarray) -> None:
        """Seen tracks restart their count of missed frames; the others miss one more; too many: dropped."""
        self._missed[matched_track] = 0
        self._missed[~matched_track] += 1
        keep = self._missed <= self.max_missed
        self.dropped = self._ids[~keep].tolist()
        self._ids, self._boxes, self._missed = self._ids[keep], self._boxes[keep], self._missed[keep]

    def _match_by_centre(self, boxes: np.ndarray, ids: np.ndarray, det_used: np.ndarray,
                         matched_track: np.ndarray) -> None:
        """Second chance for what IoU left unmatched: a fast-moving face (IoU just under the threshold)
        keeps its id when its centre moved less than `centre_gate` of its size and its size changed < 1.5×."""
        dets, tracks = np.flatnonzero(~det_used), np.flatnonzero(~matched_track)
        if not len(dets) or not len(tracks):
            return
        b, tb = boxes[dets], self._boxes[tracks]
        side_b = np.sqrt(np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9))
        side_t = np.sqrt(np.maximum((tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1]), 1e-9))
        centre_b = (b[:, :2] + b[:, 2:]) / 2
        centre_t = (tb[:, :2] + tb[:, 2:]) / 2
        dist = np.linalg.norm(centre_b[:, None] - centre_t[None], axis=-1) / side_t[None]
        ratio = side_b[:, None] / side_t[None]
        dist[(ratio > 1.5) | (ratio < 1 / 1.5)] = np.inf
        for flat in np.argsort(dist, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(tracks))
            if dist[i, j] > self.centre_gate:
                break
            d, tr = dets[i], tracks[j]
            if det_used[d] or matched_track[tr]:
                continue
            det_used[d] = matched_track[tr] = True
            ids[d] = self._ids[tr]
            self._boxes[tr] = boxes[d]

    def reset(self) -> None:
        self.__init__(self.iou_threshold, self.max_missed, self.centre_gate)


@dataclass
class _State:
    probs: np.ndarray
    valence: float
    arousal: float


class TemporalSmoother:
    """Exponential smoothing per track id: smoothed = alpha * previous + (1 - alpha) * new.

    `alpha` is the weight of the past (0 = off). The first observation of an id passes through unchanged.
    A convex mix of probability vectors still sums to 1, so no renormalisation is needed.
    """

    def __init__(self, alpha: float = 0.0) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self._state: dict[int, _State] = {}

    def update(self, face_id: int, probs: np.ndarray, valence: float, arousal: float
               ) -> tuple[np.ndarray, float, float]:
        """The smoothed (probs, valence, arousal) for this id after seeing the new values (probs keep their dtype)."""
        dtype = np.asarray(probs).dtype if np.issubdtype(np.asarray(probs).dtype, np.floating) else np.float64
        probs = np.asarray(probs, np.float64)
        prev = self._state.get(int(face_id))
        if prev is None or self.alpha == 0.0:
            state = _State(probs.copy(), float(valence), float(arousal))
        else:
            a, b = self.alpha, 1.0 - self.alpha
            state = _State(a * prev.probs + b * probs, a * prev.valence + b * float(valence),
                           a * prev.arousal + b * float(arousal))
        if self.alpha:
            self._state[int(face_id)] = state
        return state.probs.astype(dtype), state.valence, state.arousal

    def forget(self, ids) -> None:
        """Drop the history of ids the tracker dropped (a later face must not inherit it)."""
        for i in ids:
            self._state.pop(int(i), None)

    def __len__(self) -> int:
        return len(self._state)
