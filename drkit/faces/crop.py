"""Face crop from 68 landmarks: a similarity transform (optionally rotation-aligned by the eyes)
to a square ``size`` crop, and every pixel outside the landmarks' convex hull set to zero
(paper Sec. 4.2)."""

from __future__ import annotations

import cv2
import numpy as np

# RMS distance of the 68 landmarks to their centroid, as a fraction of the crop side. At 0.27 the
# jaw-to-brow hull of a frontal face fills ~80% of the crop with a margin for head turns.
FACE_RADIUS = 0.27
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)


def crop_transform(lm: np.ndarray, size: int, align: bool = True) -> np.ndarray:
    """2x3 affine mapping source pixels to crop pixels for landmarks ``lm`` (68, 2)."""
    lm = np.asarray(lm, np.float64)
    c = lm.mean(0)
    r = np.sqrt(((lm - c) ** 2).sum(1).mean())
    k = FACE_RADIUS * size / max(r, 1e-6)
    if align:
        d = lm[RIGHT_EYE].mean(0) - lm[LEFT_EYE].mean(0)
        a = np.arctan2(d[1], d[0])
    else:
        a = 0.0
    cos, sin = np.cos(a) * k, np.sin(a) * k
    R = np.array([[cos, sin], [-sin, cos]])       # rotate by -a, scale by k
    # centre the crop on the middle of the rotated landmarks' bounding box
    q = (lm - c) @ R.T
    mid = (q.min(0) + q.max(0)) / 2
    t = size / 2 - mid - R @ c
    return np.hstack([R, t[:, None]])


def apply_transform(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64)
    return (pts @ M[:, :2].T + M[:, 2]).astype(np.float32)


def hull_mask(lm_crop: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size) mask, 1 inside the convex hull of the landmarks."""
    mask = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(np.round(lm_crop * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    return mask


def crop_face(bgr: np.ndarray, lm: np.ndarray, size: int, align: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked RGB crop (size, size, 3) uint8, landmarks in crop coordinates, and the 2x3 transform."""
    M = crop_transform(lm, size, align)
    crop = cv2.warpAffine(bgr, M, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    lm_c = apply_transform(M, lm)
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    rgb = cv2.bitwise_and(rgb, rgb, mask=hull_mask(lm_c, size))   # half the time of a multiply
    return rgb, lm_c, M.astype(np.float32)
