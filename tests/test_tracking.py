"""Face tracking notices when it has lost or drifted off the face (drkit/faces/tracker.py), and
each result's confidence says how likely its landmarks fit.

Synthetic frames from conftest.face_frames: the face jumps sideways between two frames, so the
box placed from the previous landmarks overlaps the face only partly. The tracker used to accept
such a frame when the detector found any face overlapping that box a little, and kept the
landmarks fitted from the misplaced box (about half an inter-ocular distance off) for several
frames; it must now re-detect and give what detecting every frame gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import face_frames

from drkit.faces import FaceResult, FaceTracker, make_backend
from drkit.faces.tracker import CONFIDENCE, RIGID, confidence


@pytest.fixture(scope="module")
def dlib():
    return make_backend("dlib")


def _jump(frames: list[np.ndarray], at: int, dx: float) -> list[np.ndarray]:
    """The frames from ``at`` on shifted ``dx`` pixels to the right (edges replicated)."""
    M = np.float32([[1, 0, dx], [0, 1, 0]])
    return [f if t < at else cv2.warpAffine(f, M, (f.shape[1], f.shape[0]), borderMode=cv2.BORDER_REPLICATE)
            for t, f in enumerate(frames)]


def _err(a: FaceResult, b: FaceResult) -> float:
    """Mean landmark distance of ``a`` from ``b``, in inter-ocular distances of ``b``."""
    return float(np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean()
                 / np.linalg.norm(b.landmarks[36] - b.landmarks[45]))


@pytest.mark.parametrize("dx", [20, 30])
def test_tracking_recovers_when_the_face_jumps(dlib, dx):
    frames = _jump(face_frames(20, seed=1), at=10, dx=dx)
    ref = [FaceTracker(dlib, naive=True)(f) for f in frames]   # fresh detection on every frame
    tr = FaceTracker(dlib)
    res = [tr(f) for f in frames]
    assert all(r is not None for r in res) and all(r is not None for r in ref)
    errs = [_err(r, n) for r, n in zip(res, ref)]
    assert max(errs) < 0.05, np.round(errs, 3)   # the old tracker: 0.23 (dx 20), 0.52 (dx 30)
    assert res[10].detected, "the frame after the jump must be re-detected"
    assert not any(r.detected for r in res[11:]), "then tracking goes on"


def test_results_keep_their_fields_and_carry_a_confidence(dlib):
    frames = _jump(face_frames(20, seed=2), at=10, dx=30)
    for naive in (False, True):
        tr = FaceTracker(dlib, naive=naive)
        res = [tr(f) for f in frames]
        for r in res:
            assert r.landmarks.shape == (68, 2) and r.landmarks.dtype == np.float32
            assert isinstance(r.score, float) and isinstance(r.detected, bool)
            assert 0.0 <= r.confidence <= 1.0
            assert set(r.cues) == {"score", "ncc_prev", "yaw", "motion"}
        assert res[0].detected and res[0].confidence > 0.9
        if not naive:   # a steady, frontal, tracked face: confident
            steady = [r.confidence for i, r in enumerate(res) if i not in (0, 10)]
            assert min(steady) > 0.9, np.round(steady, 3)


def test_confidence_falls_with_the_cues_of_a_lost_track():
    good = {"score": 1.8, "ncc_prev": 0.99, "yaw": 0.1, "motion": 0.01}
    for backend in ("dlib", "insightface", "some_other"):
        c = confidence(good, backend)
        assert c > 0.9
        assert confidence({**good, "ncc_prev": 0.5}, backend) < c        # the patch changed
        assert confidence({**good, "motion": 0.3}, backend) < c          # the box is stale
        assert confidence({**good, "yaw": 1.0}, backend) < c             # head turned
        assert confidence({**good, "ncc_prev": 0.4, "motion": 0.4}, backend) < 0.5
        assert 0.0 <= confidence({"ncc_prev": -1e9, "motion": 1e9}, backend) <= 1.0
    assert confidence({**good, "score": 0.0}, "dlib") < confidence(good, "dlib")
    assert set(CONFIDENCE) >= {"dlib", "insightface", "default"}


def test_the_box_follows_the_head_not_the_mouth(dlib):
    """The tracked box comes from the rigid points (nose, eyes): an open mouth or a dropped jaw
    moves the landmarks' centre and spread, not the box (with all 68 points it moved, and the
    track slid down the face on expressive clips)."""
    f = face_frames(1, seed=3)[0]
    tr = FaceTracker(dlib)
    r = tr(f)
    box = tr._box(r.landmarks)
    lm = r.landmarks.copy()
    moving = np.r_[0:17, 48:68]   # jaw and mouth
    lm[moving, 1] += 0.3 * np.linalg.norm(lm[36] - lm[45])   # jaw drop
    assert not np.isin(np.arange(68)[RIGID], moving).any()
    np.testing.assert_allclose(tr._box(lm), box, atol=1e-4)
