"""Stable face ids across video frames by greedy IoU matching.

Face detectors work per frame; per-subject crops and masks need to know which box in frame t is the same person
as in frame t-1. Faces in consecutive frames of a talking-head or movie clip move little, so the box overlap
is enough (no appearance model): pairs are matched greedily by decreasing IoU above `iou_threshold`. A track
survives `max_missed` frames without a match (detector misses, brief occlusion); ids are never reused, so a
face that disappears and comes back later gets a new id rather than someone else's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from affectclip.data.faces import _iou_matrix


@dataclass
class _Track:
    face_id: int
    box: np.ndarray
    missed: int = 0


class IoUTracker:
    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5) -> None:
        if not 0.0 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        self.iou_threshold, self.max_missed = iou_threshold, max_missed
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(self, boxes: Sequence[Sequence[float]]) -> list[int]:
        """Assign a face id to each box (x0, y0, x1, y1) of the next frame; returns ids in the order of `boxes`."""
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = [-1] * len(arr)
        if self._tracks and len(arr):
            iou = _iou_matrix(np.stack([t.box for t in self._tracks]), arr)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                ti, bi = divmod(int(flat), len(arr))
                if iou[ti, bi] < self.iou_threshold:
                    break
                track = self._tracks[ti]
                if ids[bi] != -1 or track.missed < 0:  # box or track already matched in this frame
                    continue
                ids[bi] = track.face_id
                track.box, track.missed = arr[bi], -1
        for track in self._tracks:
            track.missed += 1  # matched tracks go from -1 back to 0
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        for bi, face_id in enumerate(ids):
            if face_id == -1:
                ids[bi] = self._next_id
                self._tracks.append(_Track(self._next_id, arr[bi]))
                self._next_id += 1
        return ids
