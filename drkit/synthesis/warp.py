"""Piecewise-affine warp for `drkit synth`: the image follows the landmarks by an affine map per
triangle of a Delaunay triangulation of the landmarks plus fixed points (``anchor_points``)
around the face and on the image border.
"""

from __future__ import annotations

import cv2
import numpy as np


def anchor_points(lm: np.ndarray, size: int) -> np.ndarray:
    """Fixed points: a ring around the face (1.5x its radius) and the image border."""
    c = lm.mean(0)
    r = 1.5 * np.sqrt(((lm - c) ** 2).sum(1)).max()
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    ring = c + r * np.stack([np.cos(ang), np.sin(ang)], 1)
    e = size - 1
    border = np.array([[0, 0], [e / 2, 0], [e, 0], [e, e / 2], [e, e], [e / 2, e], [0, e], [0, e / 2]])
    return np.concatenate([np.clip(ring, 1, e - 1), border])


def triangulate(pts: np.ndarray, size: int) -> np.ndarray:
    sub = cv2.Subdiv2D((-1, -1, size + 2, size + 2))
    for p in pts:
        sub.insert((float(p[0]), float(p[1])))
    tris = []
    for t in sub.getTriangleList().reshape(-1, 3, 2):
        idx = [int(np.argmin(((pts - v) ** 2).sum(1))) for v in t]
        if len(set(idx)) == 3:
            tris.append(idx)
    return np.array(tris)


def pwa_warp(img: np.ndarray, src: np.ndarray, dst: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp moving points ``src`` to ``dst`` (one backward remap)."""
    H, W = img.shape[:2]
    tid = np.full((H, W), -1, np.int32)
    A = np.zeros((len(tris) + 1, 2, 3), np.float32)
    A[-1] = [[1, 0, 0], [0, 1, 0]]                  # pixels in no triangle stay where they are
    for k, t in enumerate(tris):
        cv2.fillConvexPoly(tid, np.round(dst[t] * 4).astype(np.int32), k, shift=2)
        A[k] = cv2.getAffineTransform(dst[t].astype(np.float32), src[t].astype(np.float32))
    ys, xs = np.mgrid[:H, :W].astype(np.float32)
    Ak = A[tid]
    mx = Ak[..., 0, 0] * xs + Ak[..., 0, 1] * ys + Ak[..., 0, 2]
    my = Ak[..., 1, 0] * xs + Ak[..., 1, 1] * ys + Ak[..., 1, 2]
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
