"""insightface's ONNX face models run with onnxruntime alone (no insightface package): the SCRFD
detector, the 106-point (``2d106det.onnx``) and 68-point (``1k3d68.onnx``) landmark models, the
search for them in a model folder, and the 106 -> iBUG 68 index map.

Pre- and post-processing follow insightface 0.7 / 2.x (``model_zoo/scrfd.py``,
``model_zoo/landmark.py``, ``utils/face_align.py``), so the models see the input they were trained
on. What differs, on purpose: the detector runs on the frame as it is (downscaled by the backend
to at most ``det_max_side`` pixels and zero-padded to a multiple of the largest stride) instead of
a letterboxed 640 x 640 square, so small frames and ROIs cost little.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DrkitError

DETECTOR_GLOBS = ("det_*.onnx", "scrfd_*.onnx")
LANDMARK_FILES = ("1k3d68.onnx", "2d106det.onnx")   # in order of preference

# --- 106 -> 68 -----------------------------------------------------------------------------
# insightface's 2d106det markup (deepinsight/insightface, alignment/coordinate_reg, image
# 2d106markup.jpg) to the iBUG 300-W 68-point layout (dlib's). Each of the 68 points is the mean
# of a pair of 106 points (the same point twice where one point is the match).
#
# Source: the single-index map of https://stackoverflow.com/a/67174339 ("map106to68", reused by
# several face-swap tools), with three families of points moved to the midpoint of two
# neighbouring 106 points, because the two markups space those points differently:
#  - eyelids (37, 38, 40, 41, 43, 44, 46, 47): the 106 model has a point at the middle of each
#    lid, iBUG two at its thirds; the pairs are those of the lmrks_106_to_68_mean_pairs table of
#    iperov's DeepFaceLive InsightFace2D106 wrapper.
#  - lower outer lip (55, 56, 58, 59) and inner lips (61, 63, 65, 67): same pattern.
#  - jaw: the 106 contour has 17 points per side, temple to chin (left: 1, 9-16, 2-8, 0; right:
#    17, 25-32, 18-24, 0). The Stack Overflow map takes every other one from the top; dlib's jaw
#    starts one point lower and is denser near the chin: positions 1, 3, 5, 7, 8.5, 10.5, 12.5,
#    14.5, 16 on each side (x.5 = mean of two neighbours).
# The lid, lip and jaw pairs were chosen among neighbouring points by the smallest mean distance
# to dlib's landmarks on 32 real face frames (16 clips of ../shared/data/faces): mean error 4.6%
# of the inter-ocular distance with the plain Stack Overflow map, 3.0% with this one.
# tests/test_insightface.py checks it against dlib on 4 other clips (380 frames: median 2.7%,
# every frame within 8%); benchmarks/preprocess_speed.py over all 45 clips: median 3.0%.
MAP_106_TO_68 = np.array([
    # jaw 0-16, image left (subject's right) temple -> chin -> other temple
    (9, 9), (11, 11), (13, 13), (15, 15), (16, 2), (3, 4), (5, 6), (7, 8), (0, 0),
    (23, 24), (21, 22), (19, 20), (32, 18), (31, 31), (29, 29), (27, 27), (25, 25),
    # brows 17-21, 22-26
    (43, 43), (48, 48), (49, 49), (51, 51), (50, 50),
    (102, 102), (103, 103), (104, 104), (105, 105), (101, 101),
    # nose bridge 27-30, lower nose 31-35
    (72, 72), (73, 73), (74, 74), (86, 86),
    (78, 78), (79, 79), (80, 80), (85, 85), (84, 84),
    # eyes 36-41, 42-47
    (35, 35), (41, 40), (40, 42), (39, 39), (37, 33), (33, 36),
    (89, 89), (95, 94), (94, 96), (93, 93), (91, 87), (87, 90),
    # outer lips 48-59
    (52, 52), (64, 64), (63, 63), (71, 71), (67, 67), (68, 68), (61, 61),
    (58, 59), (59, 53), (53, 53), (53, 56), (56, 55),
    # inner lips 60-67
    (65, 65), (66, 62), (62, 62), (62, 70), (69, 69), (57, 60), (60, 60), (60, 54),
], dtype=np.int64)


def to_68(pts: np.ndarray) -> np.ndarray:
    """(106, 2) 2d106det points -> (68, 2) iBUG layout (float32); (68, 2) passes through."""
    if len(pts) == 68:
        return np.asarray(pts, np.float32)
    if len(pts) != 106:
        raise ValueError(f"expected 68 or 106 landmarks, got {len(pts)}")
    return np.asarray(pts, np.float64)[MAP_106_TO_68].mean(1).astype(np.float32)


# --- model files -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    detector: Path
    landmarks: Path


def find_models(root: str | os.PathLike) -> ModelFiles:
    """The model folder under ``root``: ``root`` itself, else ``root/models/*/``, else
    ``root/*/``; it must hold a detector (``det_*.onnx`` / ``scrfd_*.onnx``, the first by name)
    and a landmark model (``1k3d68.onnx``, else ``2d106det.onnx``). Several such folders below
    ``root`` are an error that names them (pass the one you want)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DrkitError(f"insightface backend: --model-root {root} is not a folder")
    subs = sorted(p for p in root.glob("models/*") if p.is_dir())
    subs += sorted(p for p in root.glob("*") if p.is_dir() and p.name != "models")
    usable = []
    for d in [root] + subs:
        dets = sorted({f for g in DETECTOR_GLOBS for f in d.glob(g) if f.is_file()})
        lmks = [d / n for n in LANDMARK_FILES if (d / n).is_file()]
        if dets and lmks:
            usable.append(ModelFiles(d, dets[0], lmks[0]))
            if d == root:
                break
    if not usable:
        raise DrkitError(
            f"insightface backend: no model folder in {root} (searched it, models/*/ and */): a "
            f"folder needs a detector ({' or '.join(DETECTOR_GLOBS)}) and a landmark model "
            f"({' or '.join(LANDMARK_FILES)}), e.g. an unpacked buffalo_l pack; drkit never "
            "downloads models (README 'Optional: insightface backend')")
    if len(usable) > 1:
        raise DrkitError("insightface backend: several model folders in "
                         f"{root}: {', '.join(str(u.folder) for u in usable)}; "
                         "pass the one to use as --model-root")
    return usable[0]




def sha256(path: Path) -> str:
    from ..fsutil import sha256_file
    return sha256_file(path)


# --- a few protobuf fields of an .onnx file (no onnx package) ---------------------------------

def _varint(buf, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field)."""
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = None, pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = (pos, pos + n), pos + n
        elif wire == 5:
            val, pos = None, pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield field, wire, val


def first_node_names(path: Path, n: int = 8) -> list[str]:
    """Names of the first ``n`` nodes of an ONNX graph (ModelProto.graph = 7, GraphProto.node = 1,
    NodeProto.name = 3), read from the file without the onnx package."""
    names: list[str] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for field, wire, val in _fields(buf, 0, len(buf)):
            if field != 7 or wire != 2:
                continue
            for gf, gw, gval in _fields(buf, *val):
                if gf != 1 or gw != 2:
                    continue
                name = ""
                for nf, nw, nval in _fields(buf, *gval):
                    if nf == 3 and nw == 2:
                        name = bytes(buf[nval[0]:nval[1]]).decode("utf-8", "replace")
                names.append(name)
                if len(names) >= n:
                    return names
            break
    return names


def landmark_normalisation(path: Path) -> tuple[float, float]:
    """(mean, std) of a landmark model's input, by insightface's rule: models converted from
    mxnet that subtract and scale inside the graph (a Sub/_minus and a Mul/_mul node among the
    first 8, or a leading ``bn_data``) take raw pixels, the others (x - 127.5) / 128."""
    try:
        names = first_node_names(path)
    except (ValueError, IndexError, OSError):
        names = []
    sub = any(s.startswith(("Sub", "_minus")) for s in names)
    mul = any(s.startswith(("Mul", "_mul")) for s in names)
    if any(s == "bn_data" for s in names[:3]):
        sub = mul = True
    return (0.0, 1.0) if sub and mul else (127.5, 128.0)


# --- onnxruntime sessions --------------------------------------------------------------------

def default_threads() -> int:
    """``DRKIT_ORT_THREADS``, else every usable core in the main process and 1 in a worker
    process (``preprocess --workers N`` runs N of them side by side)."""
    env = os.environ.get("DRKIT_ORT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise DrkitError(f"DRKIT_ORT_THREADS={env!r}: expected a number of threads") from None
    import multiprocessing as mp
    if mp.parent_process() is not None:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def default_providers() -> list[str]:
    """``DRKIT_ORT_PROVIDERS`` (comma-separated), else CUDA when this onnxruntime has it, then CPU."""
    import onnxruntime as ort
    env = os.environ.get("DRKIT_ORT_PROVIDERS")
    if env:
        return [p.strip() for p in env.split(",") if p.strip()]
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have] \
        or ["CPUExecutionProvider"]


def session_options(threads: int):
    """drkit's onnxruntime session options (face models and exported networks alike): ``threads``
    intra-op threads, one inter-op, sequential, every graph optimisation, quiet logs."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # idle intra-op threads would otherwise spin between the many small runs, taking the cores
    # that video decoding, cropping and other --workers need
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(path: Path, threads: int, providers: list[str]):
    import onnxruntime as ort
    so = session_options(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:   # onnxruntime raises its own exception types
        raise DrkitError(f"insightface backend: onnxruntime cannot load {path}: {e}") from e


def _fixed(shape) -> tuple[int, int] | None:
    h, w = shape[2], shape[3]
    return (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS as insightface does it (areas with the +1 pixel convention)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= thresh]
    return np.array(keep, np.int64)


class SCRFD:
    """insightface's SCRFD face detector (any of its exports: 6, 9, 10 or 15 outputs: scores,
    boxes and optionally 5 keypoints per stride, in that order)."""

    def __init__(self, path: Path, threads: int, providers: list[str],
                 thresh: float = 0.5, nms_thresh: float = 0.4):
        self.session = make_session(path, threads, providers)
        inp = self.session.get_inputs()[0]
        outs = self.session.get_outputs()
        if len(outs) not in (6, 9, 10, 15):
            raise DrkitError(f"insightface backend: {path.name} is not an SCRFD detector "
                             f"({len(outs)} outputs; expected 6, 9, 10 or 15)")
        self.input_name = inp.name
        self.fixed = _fixed(inp.shape)      # (h, w) of a fixed-size export, else None
        self.fmc = 3 if len(outs) in (6, 9) else 5
        self.strides = [8, 16, 32] if self.fmc == 3 else [8, 16, 32, 64, 128]
        self.thresh, self.nms_thresh = thresh, nms_thresh
        self._centres: dict[tuple, np.ndarray] = {}

    def _anchor_centres(self, hh: int, ww: int, stride: int, na: int) -> np.ndarray:
        key = (hh, ww, stride, na)
        if key not in self._centres:
            c = np.stack(np.mgrid[:hh, :ww][::-1], axis=-1).astype(np.float32).reshape(-1, 2) * stride
            self._centres[key] = np.repeat(c, na, axis=0) if na > 1 else c
        return self._centres[key]

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (n, 4) x0 y0 x1 y1 and scores (n,) in ``bgr``'s pixels, best first."""
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        h, w = bgr.shape[:2]
        if self.fixed:   # letterbox into the export's size, as insightface does
            H, W = self.fixed
            scale = min(H / h, W / w)
            nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
            img = cv2.resize(bgr, (nw, nh))
        else:            # the frame as it is, padded to a multiple of the largest stride
            m = self.strides[-1]
            H, W = -(-h // m) * m, -(-w // m) * m
            scale, img = 1.0, bgr
        canvas = np.zeros((H, W, 3), np.float32)
        canvas[:img.shape[0], :img.shape[1]] = img[..., ::-1]   # RGB
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.session.run(None, {self.input_name: blob})
        boxes, scores = [], []
        for i, s in enumerate(self.strides):
            sc = outs[i].reshape(-1)
            hh, ww = H // s, W // s
            na = max(1, sc.size // (hh * ww))
            keep = np.nonzero(sc >= self.thresh)[0]
            if not keep.size:
                continue
            d = outs[i + self.fmc].reshape(-1, 4)[keep] * s
            c = self._anchor_centres(hh, ww, s, na)[keep]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(sc[keep])
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        b = np.concatenate(boxes).astype(np.float64) / scale
        sc = np.concatenate(scores).astype(np.float64)
        k = nms(b, sc, self.nms_thresh)
        return b[k], sc[k]


class LandmarkModel:
    """insightface's box-to-landmarks regressors: ``2d106det`` (212 outputs: 106 x, y) and
    ``1k3d68`` (3309 outputs: x, y, z of 1103 points whose last 68 are the iBUG ones). The face is
    cut around the box centre at 1.5 x its longer side and resized to the input (192 px)."""

    def __init__(self, path: Path, threads: int, providers: list[str]):
        self.session = make_session(path, threads, providers)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        self.size = (_fixed(inp.shape) or (192, 192))[0]
        dim = out.shape[-1] if isinstance(out.shape[-1], int) else None
        if dim == 3309:
            self.dim, self.n_points = 3, 68
        elif dim and dim % 2 == 0 and dim < 3000:
            self.dim, self.n_points = 2, dim // 2
        else:
            raise DrkitError(f"insightface backend: {path.name}: unknown landmark output {out.shape}")
        if self.n_points not in (68, 106):
            raise DrkitError(f"insightface backend: {path.name} gives {self.n_points} points; "
                             "drkit maps 68 (1k3d68) or 106 (2d106det)")
        self.mean, self.std = landmark_normalisation(path)

    def crop(self, bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network input (1, 3, S, S) float32 and the 2 x 3 source -> input affine."""
        x0, y0, x1, y1 = (float(v) for v in box)
        s = self.size / (max(x1 - x0, y1 - y0) * 1.5)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        M = np.array([[s, 0, self.size / 2 - cx * s], [0, s, self.size / 2 - cy * s]], np.float64)
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        face = cv2.warpAffine(bgr, M, (self.size, self.size), borderValue=0.0)
        blob = ((face[..., ::-1].astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob), M

    def decode(self, pred: np.ndarray, M: np.ndarray) -> np.ndarray:
        """Network output -> (n_points, 2) float32 in source pixels."""
        pts = pred.reshape(-1, self.dim)[-self.n_points:, :2].astype(np.float64)
        pts = (pts + 1) * (self.size // 2)
        return ((pts - M[:, 2]) / M[0, 0]).astype(np.float32)

    def __call__(self, bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        blob, M = self.crop(bgr, box)
        pred = self.session.run(None, {self.input_name: blob})[0][0]
        return self.decode(pred, M)
