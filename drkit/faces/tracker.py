"""Per-frame landmarks with tracking: detect once, then place the next frame's box from the
previous landmarks, and re-detect only when the track is lost or every ``redetect_every`` frames.

The box is predicted in the detector's own convention: at each detection we record where the
detector's box sits relative to the landmarks (offset and size in units of the landmarks' RMS
radius) and reuse that relation while tracking, so tracked landmarks match what detecting every
frame would give (benchmarks/preprocess_speed.py measures the agreement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends import Detection


@dataclass
class FaceResult:
    landmarks: np.ndarray   # (68, 2) float32, source image coordinates
    score: float            # detector score of the detection this track started from
    detected: bool          # True when this frame ran the detector


def _centre_radius(lm: np.ndarray) -> tuple[np.ndarray, float]:
    c = lm.mean(0)
    return c, float(np.sqrt(((lm - c) ** 2).sum(1).mean()))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Call once per frame, in order. ``naive=True`` detects on every frame (the baseline)."""

    def __init__(self, backend, redetect_every: int = 30, naive: bool = False,
                 max_scale_change: float = 1.25, max_shift: float = 0.5):
        self.backend = backend
        self.redetect_every = redetect_every
        self.naive = naive
        self.max_scale_change = max_scale_change
        self.max_shift = max_shift
        self.reset()

    def reset(self) -> None:
        self.lm: np.ndarray | None = None
        self.rel: np.ndarray | None = None   # box relative to landmarks: dx, dy, w, h (/radius)
        self.score = 0.0
        self.since = 0

    def _box(self, lm: np.ndarray) -> np.ndarray:
        c, r = _centre_radius(lm)
        dx, dy, w, h = self.rel * r
        cx, cy = c[0] + dx, c[1] + dy
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def _pick(self, dets: list[Detection]) -> Detection | None:
        if not dets:
            return None
        if self.lm is not None:  # stay on the tracked person when several faces are visible
            prev = self._box(self.lm)
            best = max(dets, key=lambda d: _iou(d.box, prev))
            if _iou(best.box, prev) > 0.3:
                return best
        return max(dets, key=lambda d: d.area)

    def _detect(self, frame: np.ndarray) -> FaceResult | None:
        det = self._pick(self.backend.detect(frame))
        if det is None:
            self.reset()
            return None
        lm = self.backend.landmarks(frame, det.box)
        c, r = _centre_radius(lm)
        b = det.box
        self.rel = np.array([(b[0] + b[2]) / 2 - c[0], (b[1] + b[3]) / 2 - c[1],
                             b[2] - b[0], b[3] - b[1]]) / max(r, 1e-6)
        self.lm, self.score, self.since = lm, det.score, 0
        return FaceResult(lm, det.score, True)

    def __call__(self, frame: np.ndarray) -> FaceResult | None:
        if self.naive or self.lm is None or self.since + 1 >= self.redetect_every:
            return self._detect(frame)
        lm = self.backend.landmarks(frame, self._box(self.lm))
        (c0, r0), (c1, r1) = _centre_radius(self.lm), _centre_radius(lm)
        if (not np.isfinite(lm).all() or not 1 / self.max_scale_change < r1 / r0 < self.max_scale_change
                or np.linalg.norm(c1 - c0) > self.max_shift * r0):
            return self._detect(frame)   # track lost: fall back to a detection now
        self.lm, self.since = lm, self.since + 1
        return FaceResult(lm, self.score, False)
