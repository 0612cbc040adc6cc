"""Per-frame landmarks with tracking: detect once, then place the next frame's box from the
previous landmarks, and re-detect on the whole frame when the track is lost. Every
``redetect_every`` frames the landmarks are refitted from a fresh detection, which re-anchors the
box and stops a slow drift: with ``redetect_region`` (preprocess's default since 0.3.0) the
detector runs on the small verification region around the tracked face described below (~2 ms
with dlib against 7-13 ms for a whole frame on the shared clips), and on the whole frame only
when no face is there; such a frame keeps the track's ``score`` and is not marked ``detected``.

The box is predicted in the detector's own convention: at each detection we record where the
detector's box sits relative to the rigid landmarks (nose and eyes, points 27-47: offset and
size in units of their RMS radius) and reuse that relation while tracking, so tracked landmarks
match what detecting every frame would give (benchmarks/preprocess_speed.py measures the
agreement). Only the rigid points place the box: the mouth and jaw move with expressions (a
smile, a dropped jaw, pursed lips) while the head stays put, and a box placed from all 68 points
followed them, was fitted lower or larger than the detector would place it, gave landmarks
further off, and so drifted off the face over a few frames (benchmarks/landmarks_vs_openface.py:
0.9% of frames more than 15% of the inter-ocular distance from OpenFace's landmarks, 31% on an
expressive clip, against 0.2% and 5% now, the level of detecting every frame).

A shape predictor returns 68 points for any box, face or not, so tracked frames are checked:
a 32x32 grey patch of the inner face (brows to chin) is compared with the patch of the last
frame the detector confirmed. While the normalised cross-correlation (NCC) stays above
``min_ncc`` the landmarks are kept (~0.1 ms); below it, the detector runs on a small region
around the predicted box, rescaled so the face is ``verify_px`` pixels wide (~2 ms with dlib
against 10-60 ms for a whole frame). The landmarks are kept, and their patch becomes the
reference, only if that detection agrees with the box they were fitted from (IoU >=
``min_iou``); a face elsewhere in the region (the track has drifted), or none (lost), gives the
frame a full detection. (Before, any face overlapping the box a little confirmed the frame and
made a drifted patch the new reference, after which the check passed on the drifted track.)

Landmark reuse (``reuse_mad`` > 0; preprocess's default 3 grey levels, ``max_reuse`` 4): fitting 68
landmarks costs dlib ~2-3 ms, most of a tracked frame. Before fitting, the 32x32 grey patch of
the inner face at the current landmarks is compared with the patch at the same landmarks in the
frame they were fitted on; when the mean absolute difference is below ``reuse_mad`` the face has
neither moved nor changed expression there, and the landmarks are kept (``reused``), for at most
``max_reuse`` frames in a row. The comparison is always with the fitted frame, never chained,
which bounds the drift. On the 86 video files of ../shared/data/faces (24,498 frames), with
region re-detection, 42% of frames keep their landmarks at 3/4 and 99.05% of frames have the
same landmarks (within 5% of the IOD) as detecting every frame, against 98.89% fitting every
frame; on the expressive d6.mp4, 96.3% against 96.0%. Looser settings keep more (4/6: 50%, 98.95%
agreement on real video), but on the noise-free faces of `drkit synth` they kept 72% of frames
and the demo's MDR AU model fell from ICC 0.61 to 0.52 (one run of 2 seeds each), so the default
stays at 3/4; pretrained:au predicts with 4/6 (its manifest ``tracking``, measured on its held-out
people). dlib's refits jitter by as much as a kept frame differs: pretrained:au's AU outputs on
d6.mp4 move from detect-every-frame's by 0.064 on average at 4/6, 0.063 fitting every frame with
region re-detection and 0.056 with whole-frame re-detection.
Stores record the settings (``reuse_mad``, ``max_reuse``, ``redetect_region``; 0 and false in
older stores) and predict tracks a bundle's videos as its training store was tracked.

Each ``FaceResult`` has a ``confidence`` in [0, 1]: the estimated probability that its landmarks
lie within 8% of the inter-ocular distance (IOD, outer eye corners) of an independent
annotator's, OpenFace 2.2's, i.e. that they fit the face. It is a logistic model (``CONFIDENCE``,
one per backend) of cues available on every frame, tracked or detected (``FaceResult.cues``):

- ``score``: the detector score of the detection the track started from (dlib only: the HOG
  margin says how clearly frontal the face is; SCRFD's score says nothing about the landmarks);
- ``ncc_prev``: NCC of the inner-face patch with the previous frame's patch (each at its own
  landmarks): landmarks that follow the face keep the patch steady, drifting ones do not;
- ``yaw``: |log| of the ratio of the nose tip's distances to the two sides of the jaw (points
  2 and 14): turned heads are where 68-point models disagree most;
- ``motion``: on tracked frames, how far the rigid points moved since the previous frame, in
  IODs (the box came from the previous frame's landmarks: fast motion means a stale box, and
  blur); 0 on frames fitted from a detection.

The weights were fitted by logistic regression on the frames of the 97 real clips of
``../shared/data/faces`` against OpenFace (``python benchmarks/landmarks_vs_openface.py
--fit-confidence``); the ROC AUC for telling frames that fit from those that do not, from
leave-one-repository-out predictions, is 0.83 with dlib and 0.58 with insightface (whose cues say
little), and for telling frames off by more than 0.15 IOD 0.87 and 0.74. Most frames fit
(97-98%), so the confidence is mostly high: with dlib, the 0.4% of frames below 0.5 have a
median error of 0.09 IOD and 40% fit, against 0.027 and 98% for the others; the 5% least
confident frames 0.056 and 75%, against 0.027 and 99%. The first frame of a track has no
previous frame: its ``ncc_prev`` takes a typical value. ``score`` keeps its meaning (the
detection's score), and ``detected`` is True when the landmarks of this frame were fitted from a
detector's box on the whole frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..configs import MAX_REUSE
from .backends import Detection

RIGID = slice(27, 48)   # nose bridge and tip, both eyes: they do not move with expressions

# P(landmarks within 0.08 IOD of OpenFace's) = sigmoid(intercept + sum(w * cue)); see the module
# docstring. Backends without their own model use "default" (no score term).
CONFIDENCE: dict[str, tuple[float, dict[str, float]]] = {
    "dlib": (-3.63, {"score": 2.02, "ncc_prev": 5.57, "yaw": -1.15, "motion": -14.54}),
    "insightface": (2.61, {"ncc_prev": 2.02, "yaw": -1.06, "motion": -15.76}),
    "default": (2.61, {"ncc_prev": 2.02, "yaw": -1.06, "motion": -15.76}),
}
TYPICAL = {"ncc_prev": 0.985}   # for the first frame of a track


@dataclass
class FaceResult:
    landmarks: np.ndarray   # (68, 2) float32, source image coordinates
    score: float            # detector score of the detection this track started from
    detected: bool          # True when this frame's landmarks were fitted from a detector's box
    confidence: float = 1.0   # P(the landmarks fit the face), see the module docstring
    cues: dict = field(default_factory=dict)   # what the confidence is computed from
    reused: bool = False    # an earlier frame's landmarks, kept: the face there had not changed


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


def _normed(p: np.ndarray) -> np.ndarray | None:
    """A patch as a zero-mean unit vector (None if flat): the NCC of two patches is then the dot
    product of their vectors."""
    v = p.ravel() - p.mean()
    n = float(np.sqrt(v @ v))
    return v / n if n > 1e-3 else None


def _ncc(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """NCC of two ``_normed`` patches (-1 when either is missing or flat)."""
    return float(a @ b) if a is not None and b is not None else -1.0


def confidence(cues: dict[str, float], backend: str) -> float:
    """The logistic model of ``CONFIDENCE`` for ``backend`` on ``cues``."""
    b, w = CONFIDENCE.get(backend, CONFIDENCE["default"])
    z = b + sum(wk * cues.get(k, 0.0) for k, wk in w.items())
    return 1.0 / (1.0 + math.exp(-min(max(z, -30.0), 30.0)))


class FaceTracker:
    """Call once per frame, in order. ``naive=True`` detects on every frame (the baseline)."""

    def __init__(self, backend, redetect_every: int = 30, naive: bool = False,
                 max_scale_change: float = 1.25, max_shift: float = 0.5, verify_px: int = 90,
                 min_ncc: float = 0.7, min_iou: float = 0.7, reuse_mad: float = 0.0, max_reuse: int = MAX_REUSE,
                 redetect_region: bool = False):
        self.backend = backend
        self.redetect_region = redetect_region
        self.reuse_mad = reuse_mad
        self.max_reuse = max_reuse
        self.redetect_every = redetect_every
        self.naive = naive
        self.max_scale_change = max_scale_change
        self.max_shift = max_shift
        self.verify_px = verify_px
        self.min_ncc = min_ncc
        self.min_iou = min_iou
        self.reset()

    def reset(self) -> None:
        self.lm: np.ndarray | None = None
        self.rel: np.ndarray | None = None   # box relative to the rigid landmarks: dx, dy, w, h (/radius)
        self.score = 0.0
        self.since = 0
        self.template: np.ndarray | None = None   # _normed patch of the last detector-confirmed frame
        self.prev_patch: np.ndarray | None = None   # the previous frame's _normed patch and rigid
        self.prev_c: tuple[float, float] | None = None   # centre, for the confidence
        self.fit_patch: np.ndarray | None = None   # raw patch at self.lm in the frame they were fitted on
        self.fit_res: FaceResult | None = None     # that frame's result (cues and confidence)
        self.reused = 0                            # frames in a row that kept self.lm

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        """The backend's grey copy of the frame where it makes one anyway (dlib), else the frame."""
        return self.backend.gray(frame) if hasattr(self.backend, "gray") else frame

    def _box(self, lm: np.ndarray) -> np.ndarray:
        c, r = _centre_radius(lm[RIGID])
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

    def _result(self, lm: np.ndarray, patch: np.ndarray | None, detected: bool) -> FaceResult:
        """The frame's result with its confidence (the cues compare it with the previous frame's)."""
        (ex0, ey0), (ex1, ey1), (nx, ny), (lx, ly), (rx, ry) = lm[[36, 45, 30, 2, 14]].tolist()
        cx, cy = lm[RIGID].mean(0).tolist()
        iod = max(math.hypot(ex1 - ex0, ey1 - ey0), 1e-6)
        dl, dr = max(math.hypot(nx - lx, ny - ly), 1e-3), max(math.hypot(nx - rx, ny - ry), 1e-3)
        cues = {"score": float(self.score),
                "ncc_prev": _ncc(patch, self.prev_patch) if self.prev_c is not None else TYPICAL["ncc_prev"],
                "yaw": abs(math.log(dl / dr)),
                "motion": (math.hypot(cx - self.prev_c[0], cy - self.prev_c[1]) / iod
                           if self.prev_c is not None and not detected else 0.0)}
        self.prev_patch, self.prev_c = patch, (cx, cy)
        self.fit_res = FaceResult(lm, self.score, detected, confidence(cues, getattr(self.backend, "name", "")), cues)
        self.reused = 0
        return self.fit_res

    def _detect(self, frame: np.ndarray, det: Detection | None = None) -> FaceResult | None:
        """Landmarks fitted from a detection: ``det`` (a periodic re-detection near the track,
        which keeps the track's score) or the face picked from a detection on the whole frame."""
        whole = det is None
        if whole:
            det = self._pick(self.backend.detect(frame))
        if det is None:
            self.reset()
            return None
        lm = self.backend.landmarks(frame, det.box)
        c, r = _centre_radius(lm[RIGID])
        b = det.box
        self.rel = np.array([(b[0] + b[2]) / 2 - c[0], (b[1] + b[3]) / 2 - c[1],
                             b[2] - b[0], b[3] - b[1]]) / max(r, 1e-6)
        self.since = 0
        if whole:
            self.score = det.score
        self.fit_patch = _patch(self._gray(frame), lm)
        self.template = _normed(self.fit_patch)
        res = self._result(lm, self.template, whole)
        self.lm = lm
        return res

    def _face_in(self, frame: np.ndarray, box: np.ndarray) -> Detection | None:
        """The detector's face overlapping ``box`` most (IoU > 0.3) in a small region around it,
        in frame coordinates, or None."""
        w = box[2] - box[0]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = max(0, int(cx - w)), max(0, int(cy - w))
        x1, y1 = min(frame.shape[1], int(cx + w)), min(frame.shape[0], int(cy + w))
        if x1 - x0 < w / 2 or y1 - y0 < w / 2:
            return None
        f = self.verify_px / w
        gray = getattr(self.backend, "accepts_gray", False)   # a third of the pixels to resize
        roi = (self._gray(frame) if gray else frame)[y0:y1, x0:x1]   # dlib's grey frame: converted once
        if gray and roi.ndim == 3:
            roi = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)
        roi = cv2.resize(roi, (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                         interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        off = np.array([x0, y0, x0, y0])
        dets = [Detection(d.box / f + off, d.score) for d in self.backend.detect(roi, retry_upsampled=False)]
        best = max(dets, key=lambda d: _iou(d.box, box), default=None)
        return best if best is not None and _iou(best.box, box) > 0.3 else None

    def __call__(self, frame: np.ndarray) -> FaceResult | None:
        if self.naive or self.lm is None:
            return self._detect(frame)
        if self.since + 1 >= self.redetect_every:
            det = self._face_in(frame, self._box(self.lm)) if self.redetect_region else None
            return self._detect(frame, det)   # on the whole frame when no face is near the track
        if self.reuse_mad > 0 and self.reused < self.max_reuse and self.fit_patch is not None:
            p = _patch(frame, self.lm)   # grey of the face's region only
            if float(np.abs(p - self.fit_patch).mean()) < self.reuse_mad:
                return self._reuse(p)
        box = self._box(self.lm)
        lm = self.backend.landmarks(frame, box)
        (c0, r0), (c1, r1) = _centre_radius(self.lm), _centre_radius(lm)
        if (not np.isfinite(lm).all() or not 1 / self.max_scale_change < r1 / r0 < self.max_scale_change
                or np.linalg.norm(c1 - c0) > self.max_shift * r0):
            return self._detect(frame)   # track lost: fall back to a detection now
        raw = _patch(self._gray(frame), lm)
        patch = _normed(raw)
        if _ncc(patch, self.template) < self.min_ncc:
            det = self._face_in(frame, box)
            if det is None or _iou(det.box, box) < self.min_iou:
                return self._detect(frame)   # no face there (lost), or not where we fitted (drifted)
            self.template = patch
        res = self._result(lm, patch, False)
        self.lm, self.since, self.fit_patch = lm, self.since + 1, raw
        return res

    def _reuse(self, patch: np.ndarray) -> FaceResult:
        """The last fitted landmarks again, for a frame whose face region (``patch``, taken at
        those landmarks) differs from the one they were fitted on by less than ``reuse_mad`` grey
        levels; cues and confidence are the fitted frame's."""
        fit = self.fit_res
        self.prev_patch = _normed(patch)
        self.reused += 1
        self.since += 1
        return FaceResult(fit.landmarks.copy(), fit.score, False, fit.confidence, dict(fit.cues), reused=True)
