"""One animated sequence for `drkit synth`: an identity's face moved by AU events and blinks
(`au_model`) through the piecewise-affine warp (`warp`), with the appearance of the AUs drawn on
top (`appearance`: wrinkles, folds, shading, teeth and mouth cavity); then slow head motion
(rotation, translation, scale), lighting drift and sensor noise.

A person's resting offsets (``IdentityParams.rest``, their morphology) are added to the labelled
intensities for the geometry and the appearance of every frame; the returned AU curves (the
labels) do not include them. With ``appearance=False`` the opened mouth is only shaded dark and
raised cheeks (AU06) lit up to +20 grey levels (drkit 0.1 synth).
"""

from __future__ import annotations

import cv2
import numpy as np

from .appearance import IdentityParams, apply_appearance
from .au_model import AUS, au_curves, displaced
from .identities import Identity
from .warp import anchor_points, pwa_warp, triangulate


class FaceRig:
    """An identity ready to animate: its triangulation, computed once."""

    def __init__(self, ident: Identity, params: IdentityParams | None = None, appearance: bool = True):
        self.ident, self.params, self.appearance = ident, params or IdentityParams(), appearance
        self.size = ident.image.shape[0]
        self.anchors = anchor_points(ident.landmarks, self.size)
        self.src = np.concatenate([ident.landmarks, self.anchors])
        self.tris = triangulate(self.src, self.size)

    def face(self, au: dict[str, float], blink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The face (BGR) and its landmarks with the labelled intensities ``au`` (0-5; the
        person's resting offsets are added here) and a blink (0-1), before head motion."""
        rest = self.params.rest
        # float64 scalars, as drkit 0.1 used: the --no-appearance frames stay bit for bit the same
        au = {a: np.float64(min(5.0, float(au.get(a, 0.0)) + rest.get(a, 0.0))) for a in AUS}
        lm0 = self.ident.landmarks
        lm = displaced(lm0, au, blink)
        img = pwa_warp(self.ident.image, self.src, np.concatenate([lm, self.anchors]), self.tris)
        if self.appearance:
            return apply_appearance(img, lm, au, self.params, lm0), lm
        size = self.size
        open_ = np.linalg.norm(lm[66] - lm[62]) - np.linalg.norm(lm0[66] - lm0[62])
        if open_ > 1:                                # shade the opened mouth
            mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(mask, [np.round(lm[60:68]).astype(np.int32)], 255)
            mask = cv2.GaussianBlur(mask, (5, 5), 0)[..., None] / 255.0
            alpha = min(0.85, open_ / 8)
            img = (img * (1 - alpha * mask) + np.array([25, 20, 35]) * alpha * mask).astype(np.uint8)
        if au["AU06"] > 0:                           # raised cheeks catch more light
            cheeks = np.zeros((size, size), np.float32)
            iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
            for e, j in ((slice(36, 42), 2), (slice(42, 48), 14)):
                c = (lm[e].mean(0) * 0.45 + lm[j] * 0.3 + lm[33] * 0.25)
                cv2.ellipse(cheeks, (int(c[0]), int(c[1])), (int(0.28 * iod), int(0.18 * iod)), 0, 0, 360, 1.0, -1)
            cheeks = cv2.GaussianBlur(cheeks, (0, 0), 0.12 * iod)[..., None]
            img = np.clip(img + cheeks * 4.0 * au["AU06"], 0, 255).astype(np.uint8)
        return img, lm


def render_sequence(ident: Identity, n: int, fps: float, rng: np.random.Generator,
                    params: IdentityParams | None = None, appearance: bool = True
                    ) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Frames (BGR), exact landmarks (n, 68, 2) and AU curves (the labels, without the resting
    offsets of ``params``) of one sequence. ``params`` and ``appearance`` use none of ``rng``."""
    rig = FaceRig(ident, params, appearance)
    size = rig.size
    au = au_curves(n, fps, rng)
    blink = np.zeros(n)
    t = rng.uniform(0.5, 3) * fps
    while t < n:                                     # blinks: ~0.25 s every 2-6 s
        d = rng.uniform(0.15, 0.3) * fps
        x = (np.arange(n) - t) / d
        blink = np.maximum(blink, np.clip(1 - np.abs(2 * x - 1), 0, 1))
        t += rng.uniform(2, 6) * fps
    tt = np.arange(n) / fps
    ph = rng.uniform(0, 2 * np.pi, 5)
    rot = 3.0 * np.sin(2 * np.pi * tt / rng.uniform(4, 9) + ph[0])
    tx = 0.02 * size * np.sin(2 * np.pi * tt / rng.uniform(3, 8) + ph[1])
    ty = 0.015 * size * np.sin(2 * np.pi * tt / rng.uniform(3, 8) + ph[2])
    sc = 1 + 0.03 * np.sin(2 * np.pi * tt / rng.uniform(5, 10) + ph[3])
    gain = 1 + 0.08 * np.sin(2 * np.pi * tt / rng.uniform(6, 12) + ph[4])
    grad = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-12, 12)
    frames, lms = [], []
    for i in range(n):
        img, lm = rig.face({a: au[a][i] for a in AUS}, blink[i])
        M = cv2.getRotationMatrix2D((size / 2, size / 2), rot[i], sc[i])
        M[:, 2] += [tx[i], ty[i]]
        img = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        lm = lm @ M[:, :2].T + M[:, 2]
        img = img.astype(np.float32) * gain[i] + grad + rng.normal(0, 2.0, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        lms.append(lm.astype(np.float32))
    au["blink"] = blink
    return frames, np.stack(lms), au
