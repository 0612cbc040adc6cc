"""Face detection + 68-landmark backends. Each backend offers

    detect(bgr, retry_upsampled=True) -> list[Detection]   # every face, image coordinates
    landmarks(bgr, box) -> (68, 2) float32   # iBUG 68-point layout, full-image coordinates

plus ``name``, ``version`` (a string: library and model files) and ``models`` (one record per
model file: role, file name, SHA-256, path). ``landmarks`` from a box is what makes tracking
cheap: the box of the next frame comes from the previous frame's landmarks instead of a new
detection.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DrkitError


@dataclass
class Detection:
    box: np.ndarray     # x0, y0, x1, y1 (float)
    score: float

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


class DlibBackend:
    """dlib HOG detector + the 68-point shape predictor of face-recognition-models (offline).

    Detection runs on a copy downscaled to at most ``det_max_side`` pixels (faces in such
    videos are large; the HOG detector finds faces of >= 80 px), upsampled once when nothing
    is found in a small image."""

    name = "dlib"
    accepts_gray = True

    def __init__(self, model_root: str | None = None, det_max_side: int = 640):
        import dlib
        if model_root:
            dat = Path(model_root) / "shape_predictor_68_face_landmarks.dat"
        else:
            spec = importlib.util.find_spec("face_recognition_models")
            if spec is None or spec.origin is None:
                raise DrkitError("dlib backend: package face-recognition-models is not installed "
                                 "(pip install face-recognition-models), or pass --model-root DIR "
                                 "holding shape_predictor_68_face_landmarks.dat")
            dat = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
        if not dat.is_file():
            raise DrkitError(f"dlib backend: missing landmark model {dat}")
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dat))
        self.det_max_side = det_max_side
        self.version = f"dlib {dlib.__version__}; {dat.name}"
        self._dat = dat
        self._models: list[dict] | None = None
        self._last: np.ndarray | None = None
        self._gray: np.ndarray | None = None

    @property
    def models(self) -> list[dict]:
        """The model file behind the landmarks (hashed on first use: ~100 MB)."""
        if self._models is None:
            from .onnx_models import sha256
            self._models = [{"role": "landmarks", "file": self._dat.name, "sha256": sha256(self._dat),
                             "path": str(self._dat.resolve()), "points": 68, "to_68": "direct"}]
        return self._models

    def gray(self, bgr: np.ndarray) -> np.ndarray:
        """The frame in grey; detect(), landmarks() and the tracker's check of the same frame
        share one conversion."""
        if self._last is not bgr:
            self._gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
            self._last = bgr
        return self._gray

    def detect(self, bgr: np.ndarray, retry_upsampled: bool = True) -> list[Detection]:
        gray = self.gray(bgr)
        h, w = gray.shape
        f = min(1.0, self.det_max_side / max(h, w))
        small = cv2.resize(gray, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) \
            if f < 1 else gray
        rects, scores, _ = self.detector.run(small, 0, 0.0)
        if not rects and retry_upsampled and max(small.shape) <= 400:
            rects, scores, _ = self.detector.run(small, 1, 0.0)
        return [Detection(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / f,
                          float(s)) for r, s in zip(rects, scores)]

    def landmarks(self, bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        gray = self.gray(bgr)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(gray, self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


class InsightFaceBackend:
    """insightface's ONNX models run with onnxruntime (the insightface package is not needed):
    an SCRFD detector (``det_*.onnx`` / ``scrfd_*.onnx``) and either ``1k3d68.onnx`` (68 points,
    iBUG layout, used directly) or ``2d106det.onnx`` (106 points, mapped to the iBUG 68 by
    ``drkit.faces.onnx_models.MAP_106_TO_68``). ``model_root`` is searched for a folder holding
    both (itself, ``models/*/``, ``*/``); drkit never downloads models.

    As with dlib, detection runs on a copy downscaled to at most ``det_max_side`` pixels (and on
    the tracker's small verification ROIs); tracking, crops and masks are the shared ones.
    onnxruntime uses CUDA when it has it, else the CPU with ``threads`` intra-op threads
    (default: ``DRKIT_ORT_THREADS``, else all cores in the main process and 1 in a
    ``--workers`` process). ``version`` names onnxruntime, the device and each model file with
    the first 16 hex digits of its SHA-256; ``models`` has the full records."""

    name = "insightface"
    accepts_gray = False

    def __init__(self, model_root: str | None, det_max_side: int = 640, threads: int | None = None,
                 providers: list[str] | None = None, det_thresh: float = 0.5):
        if not model_root:
            raise DrkitError("insightface backend needs --model-root DIR, a folder holding a "
                             "detector (det_*.onnx) and 1k3d68.onnx or 2d106det.onnx (e.g. an "
                             "unpacked buffalo_l pack); drkit never downloads models. Or use the "
                             "default --backend dlib.")
        from . import onnx_models as om
        files = om.find_models(model_root)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DrkitError("insightface backend: onnxruntime is not installed "
                             "(pip install 'drkit[insightface]'; see README "
                             f"'Optional: insightface backend') ({e})") from e
        self.threads = threads or om.default_threads()
        providers = providers or om.default_providers()
        self.detector = om.SCRFD(files.detector, self.threads, providers, thresh=det_thresh)
        self.landmarker = om.LandmarkModel(files.landmarks, self.threads, providers)
        self.det_max_side = det_max_side
        self.folder = files.folder
        self.provider = self.detector.session.get_providers()[0]
        self.models = [
            {"role": "detector", "file": files.detector.name, "sha256": om.sha256(files.detector),
             "path": str(files.detector.resolve())},
            {"role": "landmarks", "file": files.landmarks.name, "sha256": om.sha256(files.landmarks),
             "path": str(files.landmarks.resolve()), "points": self.landmarker.n_points,
             "to_68": "MAP_106_TO_68" if self.landmarker.n_points == 106 else "direct"},
        ]
        self.version = (f"onnxruntime {ort.__version__} ({self.provider}); "
                        + "; ".join(f"{m['file']} sha256:{m['sha256'][:16]}" for m in self.models)
                        + ("; 106->68 map" if self.landmarker.n_points == 106 else ""))

    def detect(self, bgr: np.ndarray, retry_upsampled: bool = True) -> list[Detection]:
        h, w = bgr.shape[:2]
        f = min(1.0, self.det_max_side / max(h, w))
        small = cv2.resize(bgr, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) \
            if f < 1 else bgr
        boxes, scores = self.detector(small)
        if not len(boxes) and retry_upsampled and max(small.shape[:2]) <= 320:
            big = cv2.resize(small, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
            boxes, scores = self.detector(big)
            boxes = boxes / 2
        return [Detection(b / f, float(s)) for b, s in zip(boxes, scores)]

    def landmarks(self, bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        from .onnx_models import to_68
        return np.ascontiguousarray(to_68(self.landmarker(bgr, np.asarray(box, np.float64))))


BACKENDS = {"dlib": DlibBackend, "insightface": InsightFaceBackend}


def make_backend(name: str, model_root: str | None = None, **kwargs):
    """``kwargs`` go to the backend (``det_max_side``; insightface: ``threads``, ``providers``)."""
    if name not in BACKENDS:
        raise DrkitError(f"unknown face backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](model_root=model_root, **kwargs)
