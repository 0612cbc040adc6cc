"""Identities for `drkit synth`: the faces that get animated.

Photos / video frames (``load_identities``, one frame of each video), each framed around its
largest face with its neutral 68 landmarks (``identity_from_image``); or one photo turned into
distinct pseudo-identities (face proportions, skin tone, mirror, background;
``pseudo_identities``), so that person-disjoint splits exist on a fresh machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import log
from ..errors import DrkitError
from .warp import anchor_points, pwa_warp, triangulate


@dataclass
class Identity:
    image: np.ndarray        # (size, size, 3) BGR, face centred
    landmarks: np.ndarray    # (68, 2) neutral landmarks
    name: str


def _frame_face(img: np.ndarray, lm: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around the face (face ~45% of the side), resized to ``size``."""
    c = lm.mean(0)
    w = np.linalg.norm(lm[0] - lm[16])
    half = 1.1 * w
    M = cv2.getAffineTransform(np.float32([[c[0] - half, c[1] - half], [c[0] + half, c[1] - half],
                                           [c[0] - half, c[1] + half]]),
                               np.float32([[0, 0], [size, 0], [0, size]]))
    out = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    return out, (lm @ M[:, :2].T + M[:, 2])


def load_identities(faces: list[str], size: int, backend) -> list[Identity]:
    """Faces from image files, folders of images, or videos (one frame each, a third of the way
    in), named by their file stem (``stem_2``, ... where two files share one)."""
    from ..sources import IMAGE_EXT, VIDEO_EXT
    files = []
    for f in map(Path, faces):
        files += sorted(p for p in f.rglob("*") if p.suffix.lower() in IMAGE_EXT | VIDEO_EXT) if f.is_dir() else [f]
    ids, names = [], set()
    for f in files:
        img = _video_frame(f) if f.suffix.lower() in VIDEO_EXT else cv2.imread(str(f))
        if img is None:
            log.warn(f"--faces: cannot read {f}")
            continue
        name, k = f.stem, 1
        while name in names:                # same file name in two folders: still two people
            k += 1
            name = f"{f.stem}_{k}"
        if name != f.stem:
            log.warn(f"--faces: a face named {f.stem} is already in use; {f} is {name}")
        try:
            ids.append(identity_from_image(img, name, size, backend))
            names.add(name)
        except DrkitError:
            log.warn(f"--faces: no face found in {f}")
    return ids


def _video_frame(f: Path) -> np.ndarray | None:
    """The frame a third of the way into a video (its first frame where seeking fails)."""
    cap = cv2.VideoCapture(str(f))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n > 3:
            cap.set(cv2.CAP_PROP_POS_FRAMES, n // 3)
        ok, img = cap.read()
        if not ok and n > 3:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = cap.read()
        return img if ok else None
    finally:
        cap.release()


def pseudo_identities(base: Identity, n: int, rng: np.random.Generator) -> list[Identity]:
    """Distinct-looking variants of one face: face proportions (width, eye spacing, nose and
    jaw length), skin tone, mirroring and background."""
    out = [base]
    size = base.image.shape[0]
    for k in range(1, n):
        lm0 = base.landmarks.copy()
        c = lm0.mean(0)
        lm = c + (lm0 - c) * [rng.uniform(0.88, 1.12), rng.uniform(0.92, 1.08)]
        eyes = np.r_[36:48]
        ec = lm[eyes].mean(0)
        lm[eyes] = ec + (lm[eyes] - ec) * [rng.uniform(0.9, 1.1), 1]
        lm[27:36, 1] += rng.uniform(-0.04, 0.04) * size * 0.2
        lm[4:13, 1] += rng.uniform(-0.05, 0.08) * size * 0.2
        pts0 = np.concatenate([lm0, anchor_points(lm0, size)])
        pts1 = np.concatenate([lm, anchor_points(lm0, size)])
        img = pwa_warp(base.image, pts0, pts1, triangulate(pts0, size))
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
        hsv[..., 1] *= rng.uniform(0.7, 1.3)
        hsv[..., 2] *= rng.uniform(0.75, 1.15)
        img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
        if rng.random() < 0.5:
            img = img[:, ::-1].copy()
            lm[:, 0] = size - 1 - lm[:, 0]
            lm = lm[MIRROR]
        out.append(Identity(img, lm, f"{base.name}_v{k}"))
    return out


# iBUG 68 left/right correspondence, for mirrored identities
MIRROR = np.array([16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
                   26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31,
                   45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
                   54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


def identity_from_image(img: np.ndarray, name: str, size: int, backend) -> Identity:
    """The largest face of a BGR image, framed and with its neutral landmarks."""
    dets = backend.detect(img)
    if not dets:
        raise DrkitError(f"no face found in the {name} image")
    det = max(dets, key=lambda d: d.area)
    crop, lm = _frame_face(img, backend.landmarks(img, det.box), size)
    return Identity(crop, lm, name)
