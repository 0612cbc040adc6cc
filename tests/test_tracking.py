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


class _Counting:
    """A backend wrapper counting landmark fits."""

    def __init__(self, backend):
        self.b, self.fits = backend, 0
        self.name = backend.name

    def __getattr__(self, k):
        return getattr(self.b, k)

    def landmarks(self, frame, box):
        self.fits += 1
        return self.b.landmarks(frame, box)


def test_landmarks_are_kept_only_while_the_face_has_not_changed(dlib):
    """With reuse on, a frame identical to the one the landmarks were fitted on keeps them (no
    fit, ``reused``) for at most ``max_reuse`` frames in a row; a frame where the face moved is
    fitted again, and tracking with reuse stays where detecting every frame is."""
    still = face_frames(1, seed=4)[0]
    be = _Counting(dlib)
    tr = FaceTracker(be, reuse_mad=2.0, max_reuse=3)
    res = [tr(still) for _ in range(9)]
    assert [r.reused for r in res] == [False, True, True, True, False, True, True, True, False]
    assert be.fits == 1 + 2          # the detection's fit, then one refit after each 3 kept
    for r in res[1:4]:
        np.testing.assert_array_equal(r.landmarks, res[0].landmarks)
        assert r.confidence == res[0].confidence and not r.detected
    # a moving face: frames whose patch changes by more than the threshold are all fitted
    frames = _jump(face_frames(20, seed=1), at=10, dx=20)
    be.fits = 0
    tr = FaceTracker(be, reuse_mad=2.0, max_reuse=3)
    res = [tr(f) for f in frames]
    ref = [FaceTracker(dlib, naive=True)(f) for f in frames]
    assert max(_err(r, n) for r, n in zip(res, ref)) < 0.05
    assert res[10].detected and not res[10].reused
    off = [FaceTracker(dlib, reuse_mad=0.0)(f) for f in frames[:1]]
    assert not off[0].reused
    # each kept frame's face patch at the kept landmarks is within the bound of the fitted one
    from drkit.faces.tracker import _patch
    last_fit = None
    for f, r in zip(frames, res):
        if not r.reused:
            last_fit = (f, r.landmarks)
        else:
            d = np.abs(_patch(f, last_fit[1]) - _patch(last_fit[0], last_fit[1])).mean()
            assert d < 2.0


def test_reuse_is_off_without_a_threshold_and_for_old_stores(dlib, tmp_path):
    """reuse_mad 0 fits every frame; a face store's params record the setting, and a store (or a
    bundle) from before the setting reads as 0: predict keeps fitting every frame for it."""
    from drkit.contracts import FaceStoreParams
    still = face_frames(1, seed=4)[0]
    be = _Counting(dlib)
    tr = FaceTracker(be, reuse_mad=0.0)
    assert not any(tr(still).reused for _ in range(5)) and be.fits == 5
    old = FaceStoreParams.from_dict({"crop_size": 112, "align": True, "backend": "dlib",
                                     "redetect_every": 30, "naive": False, "image_fps": 25.0})
    assert (old.reuse_mad, old.max_reuse) == (0.0, 0) and "reuse_mad" not in old.extra
    from drkit.configs import MAX_REUSE, REUSE_MAD, PreprocessConfig
    p = PreprocessConfig(inputs=[tmp_path], out=tmp_path / "s.zarr").store_params()
    assert (p.reuse_mad, p.max_reuse) == (REUSE_MAD, MAX_REUSE) and REUSE_MAD > 0
    assert FaceStoreParams.from_dict(p.to_dict()) == p
    assert PreprocessConfig(inputs=[tmp_path], out=tmp_path / "s.zarr", naive=True).store_params().reuse_mad == 0


def test_a_store_made_with_max_reuse_0_records_no_reuse(tmp_path):
    """--max-reuse 0 keeps landmarks for no frame: the params say reuse_mad 0, so a bundle of that
    store is not tracked with reuse by predict (which fills in a default max_reuse)."""
    from drkit.configs import PreprocessConfig
    p = PreprocessConfig(inputs=[tmp_path], out=tmp_path / "s.zarr", reuse_mad=3.0, max_reuse=0).store_params()
    assert p.reuse_mad == 0.0


class _DetectLog(_Counting):
    """A backend wrapper recording the image size of every detector call."""

    def __init__(self, backend):
        super().__init__(backend)
        self.sizes: list[tuple[int, int]] = []

    def detect(self, frame, **kw):
        self.sizes.append(frame.shape[:2])
        return self.b.detect(frame, **kw)


def _in_canvas(frames: list[np.ndarray], at: tuple[int, int] = (40, 60)) -> list[np.ndarray]:
    """The frames pasted into a 480x640 grey canvas: the face is a small part of the frame."""
    out = []
    for f in frames:
        c = np.full((480, 640, 3), 90, np.uint8)
        c[at[0]:at[0] + f.shape[0], at[1]:at[1] + f.shape[1]] = f
        out.append(c)
    return out


def test_periodic_redetections_run_near_the_face(dlib):
    """With redetect_region, the periodic re-detections run the detector on a small region around
    the tracked face, not the whole frame; the landmarks refitted from that detection stay where
    detecting every frame is, keep the track's score and are not marked ``detected`` (a detection
    on the whole frame). Without a face near the track the whole frame is searched."""
    frames = _in_canvas(face_frames(31, seed=3))
    ref = [FaceTracker(dlib, naive=True)(f) for f in frames]
    for region in (False, True):
        be = _DetectLog(dlib)
        tr = FaceTracker(be, redetect_every=10, redetect_region=region)
        res = [tr(f) for f in frames]
        assert max(_err(r, n) for r, n in zip(res, ref)) < 0.05
        whole = [s == (480, 640) for s in be.sizes]
        if not region:
            assert whole == [True] * 4 and [t for t, r in enumerate(res) if r.detected] == [0, 10, 20, 30]
        else:
            assert whole[0] and not any(whole[1:]) and len(whole) >= 4
            assert max(max(s) for s in be.sizes[1:]) < 250      # a region around a ~100 px face
            assert [t for t, r in enumerate(res) if r.detected] == [0]
            assert all(r.score == res[0].score for r in res)
    # the face moved far away at a re-detection: nothing near the track, so the whole frame
    moved = frames[:10] + _in_canvas(face_frames(31, seed=3), at=(260, 420))[10:12]
    be = _DetectLog(dlib)
    tr = FaceTracker(be, redetect_every=10, redetect_region=True)
    res = [tr(f) for f in moved]
    assert res[10].detected and be.sizes[-1] == (480, 640)
    assert _err(res[10], FaceTracker(dlib, naive=True)(moved[10])) < 0.05


def test_region_redetection_is_off_for_old_stores(tmp_path):
    """Stores (and bundles) from before the setting re-detect on the whole frame; new stores
    record region re-detection, except naive ones (they detect every frame)."""
    from drkit.configs import PreprocessConfig
    from drkit.contracts import FaceStoreParams
    old = FaceStoreParams.from_dict({"crop_size": 112, "align": True, "backend": "dlib",
                                     "redetect_every": 30, "naive": False, "image_fps": 25.0})
    assert old.redetect_region is False and "redetect_region" not in old.extra
    p = PreprocessConfig(inputs=[tmp_path], out=tmp_path / "s.zarr").store_params()
    assert p.redetect_region is True and FaceStoreParams.from_dict(p.to_dict()) == p
    assert not PreprocessConfig(inputs=[tmp_path], out=tmp_path / "s.zarr", naive=True).store_params().redetect_region
    assert not PreprocessConfig(inputs=[tmp_path], out=tmp_path / "s.zarr",
                                redetect_region=False).store_params().redetect_region
