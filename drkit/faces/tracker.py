"""Per-frame landmarks with tracking: detect once, then place the next frame's box from the
previous landmarks, and re-detect on the whole frame only when the track is lost or every
``redetect_every`` frames.

A shape predictor returns 68 points for any box, face or not, so tracked frames are checked:
a 32x32 grey patch of the inner face (brows to chin) is compared with the patch of the last
frame the detector confirmed. While the normalised cross-correlation stays above
``min_ncc`` the landmarks are kept (~0.1 ms); below it, the detector runs on a small region
around the predicted box, rescaled so the face is ``verify_px`` pixels wide (~2 ms with dlib
against 10-60 ms for a whole frame). No face there means the track is lost, and the frame gets a
full detection.

The box is predicted in the detector's own convention: at each detection we record where the
detector's box sits relative to the landmarks (offset and size in units of the landmarks' RMS
radius) and reuse that relation while tracking, so tracked landmarks match what detecting every
frame would give (benchmarks/preprocess_speed.py measures the agreement).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
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


def _patch(frame: np.ndarray, lm: np.ndarray, n: int = 32) -> np.ndarray:
    """n x n grey patch of the inner face (landmarks 17-67: brows, eyes, nose, mouth), float32."""
    x0, y0 = np.floor(lm[17:].min(0)).astype(int)
    x1, y1 = np.ceil(lm[17:].max(0)).astype(int)
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return np.zeros((n, n), np.float32)
    roi = frame[y0:y1, x0:x1]
    if roi.ndim == 3:
        roi = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)
    return cv2.resize(roi, (n, n), interpolation=cv2.INTER_AREA).astype(np.float32)


def _ncc(a: np.ndarray, b: np.ndarray | None) -> float:
    if b is None:
        return -1.0
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-6 else -1.0


class FaceTracker:
    """Call once per frame, in order. ``naive=True`` detects on every frame (the baseline)."""

    def __init__(self, backend, redetect_every: int = 30, naive: bool = False,
                 max_scale_change: float = 1.25, max_shift: float = 0.5, verify_px: int = 90, min_ncc: float = 0.7):
        self.backend = backend
        self.redetect_every = redetect_every
        self.naive = naive
        self.max_scale_change = max_scale_change
        self.max_shift = max_shift
        self.verify_px = verify_px
        self.min_ncc = min_ncc
        self.reset()

    def reset(self) -> None:
        self.lm: np.ndarray | None = None
        self.rel: np.ndarray | None = None   # box relative to landmarks: dx, dy, w, h (/radius)
        self.score = 0.0
        self.since = 0
        self.template: np.ndarray | None = None   # patch of the last detector-confirmed frame

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        """The backend's grey copy of the frame where it makes one anyway (dlib), else the frame."""
        return self.backend.gray(frame) if hasattr(self.backend, "gray") else frame

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
        self.template = _patch(self._gray(frame), lm)
        return FaceResult(lm, det.score, True)

    def _face_in(self, frame: np.ndarray, box: np.ndarray) -> bool:
        """Does the detector find a face overlapping ``box`` in a small region around it?"""
        w = box[2] - box[0]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = max(0, int(cx - w)), max(0, int(cy - w))
        x1, y1 = min(frame.shape[1], int(cx + w)), min(frame.shape[0], int(cy + w))
        if x1 - x0 < w / 2 or y1 - y0 < w / 2:
            return False
        f = self.verify_px / w
        gray = getattr(self.backend, "accepts_gray", False)   # a third of the pixels to resize
        roi = (self._gray(frame) if gray else frame)[y0:y1, x0:x1]   # dlib's grey frame: converted once
        if gray and roi.ndim == 3:
            roi = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)
        roi = cv2.resize(roi, (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                         interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        off = np.array([x0, y0, x0, y0])
        return any(_iou(d.box / f + off, box) > 0.3
                   for d in self.backend.detect(roi, retry_upsampled=False))

    def __call__(self, frame: np.ndarray) -> FaceResult | None:
        if self.naive or self.lm is None or self.since + 1 >= self.redetect_every:
            return self._detect(frame)
        box = self._box(self.lm)
        lm = self.backend.landmarks(frame, box)
        patch = _patch(self._gray(frame), lm)
        if _ncc(patch, self.template) < self.min_ncc:
            if not self._face_in(frame, box):
                return self._detect(frame)
            self.template = patch
        (c0, r0), (c1, r1) = _centre_radius(self.lm), _centre_radius(lm)
        if (not np.isfinite(lm).all() or not 1 / self.max_scale_change < r1 / r0 < self.max_scale_change
                or np.linalg.norm(c1 - c0) > self.max_shift * r0):
            return self._detect(frame)   # track lost: fall back to a detection now
        self.lm, self.since = lm, self.since + 1
        return FaceResult(lm, self.score, False)
