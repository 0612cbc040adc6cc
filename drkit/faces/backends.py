"""Face detection + 68-landmark backends. Each backend offers

    detect(bgr, retry_upsampled=True) -> list[Detection]   # every face, image coordinates
    landmarks(bgr, box) -> (68, 2) float32   # iBUG 68-point layout, full-image coordinates

plus ``name`` and ``version``. ``landmarks`` from a box is what makes tracking cheap: the box
of the next frame comes from the previous frame's landmarks instead of a new detection.
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
        self._last: np.ndarray | None = None
        self._gray: np.ndarray | None = None

    def _to_gray(self, bgr: np.ndarray) -> np.ndarray:
        # detect() and landmarks() on the same frame share one conversion
        if self._last is not bgr:
            self._gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
            self._last = bgr
        return self._gray

    def detect(self, bgr: np.ndarray, retry_upsampled: bool = True) -> list[Detection]:
        gray = self._to_gray(bgr)
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
        gray = self._to_gray(bgr)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(gray, self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


class InsightFaceBackend:
    """insightface model pack (e.g. buffalo_l): its detector and the 68-point 3D landmark model
    ``1k3d68.onnx`` (first two coordinates follow the iBUG 68-point layout). Never downloads:
    the pack must already be at ``<model_root>/models/<pack>/``."""

    name = "insightface"
    REQUIRED = ("det_*.onnx", "1k3d68.onnx")

    def __init__(self, model_root: str | None, pack: str = "buffalo_l", det_size: int = 640):
        if not model_root:
            raise DrkitError("insightface backend needs --model-root DIR, the folder holding "
                             f"models/{pack}/ (det_10g.onnx, 1k3d68.onnx); drkit never downloads "
                             "models. Or use the default --backend dlib.")
        d = Path(model_root).expanduser() / "models" / pack
        missing = [p for p in self.REQUIRED if not list(d.glob(p))]
        if missing:
            raise DrkitError(f"insightface backend: {d} lacks {', '.join(missing)}; unpack the "
                             f"'{pack}' model pack there (drkit never downloads models)")
        try:
            import insightface
            from insightface.app import FaceAnalysis
        except ImportError as e:
            raise DrkitError("insightface backend: package not installed; see README "
                             f"'Optional: insightface backend' ({e})") from e
        self.app = FaceAnalysis(name=pack, root=str(Path(model_root).expanduser()),
                                allowed_modules=["detection", "landmark_3d_68"],
                                providers=["CPUExecutionProvider"])
        self.app.prepare(ctx_id=-1, det_size=(det_size, det_size))
        self.lmk = self.app.models["landmark_3d_68"]
        self.version = f"insightface {insightface.__version__}; {pack}"

    def detect(self, bgr: np.ndarray, retry_upsampled: bool = True) -> list[Detection]:
        boxes, _ = self.app.det_model.detect(bgr, max_num=0, metric="default")
        return [Detection(b[:4].astype(np.float64), float(b[4])) for b in boxes]

    def landmarks(self, bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        from insightface.app.common import Face
        face = Face(bbox=np.asarray(box, np.float32), kps=None, det_score=1.0)
        self.lmk.get(bgr, face)
        return np.asarray(face["landmark_3d_68"][:, :2], np.float32)


BACKENDS = {"dlib": DlibBackend, "insightface": InsightFaceBackend}


def make_backend(name: str, model_root: str | None = None):
    if name not in BACKENDS:
        raise DrkitError(f"unknown face backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](model_root=model_root)
