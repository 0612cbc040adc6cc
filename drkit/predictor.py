"""A reusable predictor: a task bundle (train-task's best.pt, or a shipped one such as
``pretrained:au``) applied to face crops, still images or video frames. `drkit predict` is a loop
over inputs around it; Python users load it once and call it as often as they like::

    from drkit.predictor import Predictor
    p = Predictor.from_bundle("pretrained:au")         # or a train-task run folder / its best.pt
    result = p.predict_image(cv2.imread("face.jpg"))   # None if no face
    print(dict(zip(p.targets, result.values)))

The bundle carries the preprocessing settings (crop size, alignment, face backend), the DR
networks and the task network, so the prediction sees exactly the input it was trained on:
face detection + 68 landmarks -> masked crop -> [image, DRs] (drkit.mdr) -> regressor. Outputs
are clipped to the bundle's label range (TaskConfig.value_range: AU intensity 0-5, valence /
arousal -1..1, unless its training labels had another scale; ``clip=False`` keeps the raw network
outputs; bundles made before 0.3.0 record no range and are not clipped).

``Predictor.from_bundle(run, precision="bf16", channels_last=True, compile=False)`` runs the
networks under autocast (drkit.precision; fp16 needs CUDA); results come back as float32.
``engine="onnxruntime"`` runs them with onnxruntime instead (drkit.export: the MDR stack and the
task part as two ONNX graphs, exported in memory when the predictor is made; fp32 only, outputs
within ~1e-6 of torch's; ``"auto"``: onnxruntime when it is installed, on a CPU, at fp32, else
torch); ``engine_threads``: onnxruntime's intra-op threads.

A bundle trained with ``train-task --dr-norm video`` or ``--image-norm video``
(``Predictor.video_norm``) saw each DR (or image) channel minus its mean over the video;
``predict_crops(crops, video_mean=...)`` subtracts the mean you give (``video_mean`` of the
video's MDRs, from ``mdr_of``), or else the mean over ``crops`` as if they were the whole video.
`drkit predict` holds each input's MDRs until the input ends, then answers with its own mean, as
train-task and eval-task do. A still image has no video: ``predict_image`` and predict subtract
``still_mean``, the training videos' mean the bundle carries (``population_mean``, bundles from
0.3.0; older ones: the image's own, which leaves its DRs at 0).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .batching import images_to_tensor
from .checkpoint import Checkpoint, load_checkpoint
from .contracts import TASK_RANGE, TaskConfig
from . import pretrained
from .errors import DrkitError
from .mdr import MDR


@dataclass
class Face:
    """The face found in one image or frame."""
    crop: np.ndarray            # (S, S, 3) uint8 RGB masked face crop
    landmarks: np.ndarray       # (68, 2) in source-image pixels
    confidence: float           # 0..1, how likely the landmarks sit on the face (drkit.faces.tracker)
    detected: bool              # the detector ran on this frame (else: tracked)


@dataclass
class Prediction:
    values: np.ndarray          # (k,) one value per target
    crop: np.ndarray            # (S, S, 3) uint8 RGB masked face crop
    mdr: np.ndarray             # (C, M, M) the network's input before normalisation
    landmarks: np.ndarray       # (68, 2) in source-image pixels
    confidence: float = 1.0


def load_bundle(path: str | os.PathLike) -> Checkpoint:
    """A task bundle, with a message naming the next step when ``path`` is a DR model."""
    from .checkpoint import resolve
    try:
        return load_checkpoint(path, "task")
    except DrkitError as e:
        if "a 'dr' checkpoint" not in str(e):
            raise
        raise DrkitError(f"{path}: this is a DR model (it turns a face into dynamics maps, not into AU "
                         "values); predict needs a task bundle such as pretrained:au (`drkit models` "
                         "lists them), or train one: `drkit gen-dr FACES -o MDR --dr "
                         f"{path}` then `drkit train-task MDR --labels LABELS.csv -o RUN` "
                         f"(file: {resolve(path)})") from None


class Predictor:
    """Crops (n, S, S, 3) uint8 RGB -> (n, k) predictions; or images / frames with face finding."""

    def __init__(self, bundle: Checkpoint, device: torch.device | str = "cpu",
                 backend: str | None = None, model_root: str | None = None,
                 precision: str = "fp32", channels_last: bool = True, compile: bool = False,
                 clip: bool = True, engine: str = "torch", engine_threads: int | None = None):
        from . import precision as P
        from .export import resolve_engine
        c: TaskConfig = bundle.config
        from .tasks import n_image_channels, video_norm_mask
        self.video_norm = c.video_norm   # DR and/or image channels minus their mean over the video
        self.n_image = n_image_channels(c.store_channels)   # MDR channels before the DRs
        # 1 on the MDR channels a video_norm bundle subtracts the video's mean from, else 0
        self.norm_mask = video_norm_mask(c.store_channels, c.dr_norm, c.image_norm).astype(np.float32)[:, None, None]
        self.bundle, self.config, self.device = bundle, c, torch.device(device)
        # what a still image's channels are taken relative to (no video to average over): the
        # training videos' mean (bundles from 0.3.0); None: the image's own (its DRs become 0)
        self.still_mean = (None if bundle.population_mean is None or not self.video_norm
                           else bundle.population_mean.float().numpy())
        self.bundle_name = str(bundle.path or "bundle")   # for titles and messages
        self.precision = P.check(precision, self.device, warn=False)   # fp16 off CUDA: a DrkitError here
        self.engine = resolve_engine(engine, self.device, self.precision, compile)   # torch | onnxruntime
        P.warn_if_slow(self.precision, self.device)
        self.mdr = MDR.from_dr_nets(bundle.dr_nets, c.map_size, c.image).to(self.device).eval()
        self.mdr.prepare(channels_last, compile)
        self.net = bundle.build_model().to(self.device)
        self._net = P.prepare(self.net, channels_last, compile)   # what runs; self.net: the weights
        self.channels_last = channels_last
        self.channels = c.channels
        self.mean = torch.tensor(c.norm_mean, device=self.device)[None, :, None, None]
        self.std = torch.tensor(c.norm_std, device=self.device)[None, :, None, None]
        self.targets = list(c.targets)
        self.ranges = [list(map(float, r)) for r in c.value_range]   # per target; [] in bundles before 0.3.0
        self.value_range: tuple[float, float] = (
            (min(r[0] for r in self.ranges), max(r[1] for r in self.ranges)) if self.ranges else TASK_RANGE[c.task])
        self.clip = clip and bool(self.ranges)
        self.crop_size, self.align = c.preprocess.crop_size, c.preprocess.align
        self.backend_name, self.model_root = backend or c.preprocess.backend, model_root
        self._backend = None
        self.reuse_mad: float | None = None   # the tracker's landmark reuse; None: the bundle's (tracker())
        self.redetect_region: bool | None = None   # periodic re-detections near the face; None: the bundle's
        self.default_tracking: dict = {}   # a shipped bundle's own (MANIFEST.json "tracking"), else the store's
        self.timings = {"dr": 0.0, "task": 0.0, "crops": 0}   # predict_crops adds to these
        self._graphs = self._task_graph = None
        if self.engine == "onnxruntime":   # export now (the MDR stack, the task part): a failure shows before any work
            from .export import OnnxEngine, SizedGraphs, mdr_onnx, task_onnx
            self._graphs = SizedGraphs(lambda S: mdr_onnx(self.mdr, S), engine_threads)
            self._graphs.engine(self.crop_size)
            self._task_graph = OnnxEngine(task_onnx(self.mdr, self.net, c), engine_threads)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str = "auto", backend: str | None = None,
                    model_root: str | None = None, precision: str = "fp32", channels_last: bool = True,
                    compile: bool = False, clip: bool = True, engine: str = "torch",
                    engine_threads: int | None = None) -> "Predictor":
        """``path``: a train-task run folder, its best.pt, or a shipped bundle (``pretrained:au``).
        ``precision`` fp32 (default), bf16 or fp16 (CUDA only): autocast around the networks,
        outputs returned as float32; ``channels_last`` (default: 1.3-1.6x faster on a CPU, outputs
        within ~1e-6 of the standard layout) / ``compile``: drkit.precision.prepare; ``clip``:
        clip outputs to the task's label range (default); ``engine``: torch (default),
        onnxruntime or auto (drkit.export.resolve_engine)."""
        from .nets import pick_device
        p = cls(load_bundle(path), pick_device(device), backend, model_root, precision, channels_last,
                compile, clip, engine, engine_threads)
        p.bundle_name = str(path)
        p.default_tracking = pretrained.tracking_of(path)   # a shipped bundle's, measured in its manifest
        return p

    @property
    def synthetic(self) -> bool:
        """Whether the bundle was trained on synthetic faces only (`drkit synth`)."""
        return bool((self.config.train.get("data") or {}).get("synthetic"))

    @property
    def backend(self):
        """The face backend (loaded on first use: predicting on crops needs none)."""
        if self._backend is None:
            from .faces import make_backend
            self._backend = make_backend(self.backend_name, str(self.model_root) if self.model_root else None)
        return self._backend

    @torch.inference_mode()
    def predict_crops(self, crops: np.ndarray, video_mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) uint8 RGB masked crops -> predictions (n, k) and MDR inputs (n, C, M, M).
        Adds the seconds spent to ``self.timings`` (``dr``: the MDR stack, DR networks and their
        resizes; ``task``: the task network; on CUDA the split is of asynchronous launches).
        ``video_mean``: only for a ``video_norm`` bundle, the video's mean MDR (``video_mean``);
        None: the mean over ``crops``. For still images pass ``self.still_mean`` (the training
        videos' mean; predict_image does)."""
        m = self._stack(crops)
        return self._values(m, video_mean), (m if isinstance(m, np.ndarray) else m.cpu().numpy())

    __call__ = predict_crops

    @torch.inference_mode()
    def mdr_of(self, crops: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 RGB masked crops -> the MDR stack (n, C, M, M) float32: the task
        network's input before normalisation (``values_of`` takes it from there)."""
        m = self._stack(crops)
        return m if isinstance(m, np.ndarray) else m.cpu().numpy()

    @torch.inference_mode()
    def values_of(self, mdr: np.ndarray, video_mean: np.ndarray | None = None) -> np.ndarray:
        """MDR stacks (n, C, M, M) from ``mdr_of`` -> predictions (n, k); ``video_mean`` as in
        predict_crops."""
        m = mdr if self._graphs is not None else torch.from_numpy(np.ascontiguousarray(mdr, np.float32)).to(self.device)
        return self._values(m, video_mean)

    def video_mean(self, mdr: np.ndarray) -> np.ndarray:
        """The mean over a video's frames of its MDR stacks (n, C, M, M): (C, M, M) float32, of
        which a ``video_norm`` bundle subtracts the DR channels (--dr-norm video) and / or the
        image channels (--image-norm video), as drkit.tasks.video_mean on a DR store."""
        return np.asarray(mdr, np.float32).mean(0, dtype=np.float64).astype(np.float32)

    def _stack(self, crops: np.ndarray):
        """The MDR stack of ``crops``: a float32 tensor on the device, or an array (onnxruntime)."""
        from .precision import autocast
        t0 = time.perf_counter()
        if self._graphs is not None:   # onnxruntime: the two graphs of drkit.export
            m = self._graphs(crops)["mdr"]
        else:
            x = images_to_tensor(crops).to(self.device)
            with autocast(self.precision, self.device):
                m = self.mdr(x)                      # float32 (MDR casts each DR back)
        self.timings["dr"] += time.perf_counter() - t0
        return m

    def _values(self, m, video_mean: np.ndarray | None) -> np.ndarray:
        """Predictions (n, k) from the MDR stack ``m`` of _stack."""
        from .precision import autocast
        t1 = time.perf_counter()
        if self.video_norm and len(m):   # as train-task saw them: channels minus the video's mean
            mean = self.video_mean(m if isinstance(m, np.ndarray) else m.cpu().numpy()) if video_mean is None \
                else np.asarray(video_mean, np.float32)
            if mean.shape != tuple(m.shape[1:]):
                raise DrkitError(f"video_mean has shape {mean.shape}; expected {tuple(m.shape[1:])} "
                                 "(Predictor.video_mean of the video's MDRs)")
            mean = mean * self.norm_mask   # only the channels the bundle normalises
            if isinstance(m, np.ndarray):
                m = m - mean
            else:
                m = m - torch.from_numpy(mean).to(m.device)
        if self._graphs is not None:
            y = self._task_graph(np.ascontiguousarray(m, np.float32))["values" if self.clip else "raw_values"]
        else:
            with autocast(self.precision, self.device):
                z = (m[:, self.channels] - self.mean) / self.std
                if self.channels_last:
                    z = z.contiguous(memory_format=torch.channels_last)
                y = self._net(z).float()
            if self.clip:
                from .tasks import clip_values
                y = clip_values(y, self.ranges)
            y = y.cpu().numpy()
        self.timings["task"] += time.perf_counter() - t1
        self.timings["crops"] += len(m)
        return y

    def find_face(self, bgr: np.ndarray, tracker=None) -> Face | None:
        """The largest face of a BGR image (OpenCV's order), or None: its masked crop, landmarks
        and confidence. Give a FaceTracker (``self.tracker()``) to follow a face through video
        frames."""
        from .faces import FaceTracker, crop_face
        res = (tracker or FaceTracker(self.backend, naive=True))(bgr)
        if res is None:
            return None
        return Face(crop_face(bgr, res.landmarks, self.crop_size, self.align)[0], res.landmarks,
                    float(getattr(res, "confidence", 1.0)), bool(res.detected))

    def tracker(self, redetect_every: int | None = None):
        """A FaceTracker for the frames of one video, with the bundle's tracking settings: landmark
        reuse and region re-detection as ``self.reuse_mad`` and ``self.redetect_region`` say when
        they are set, else a shipped bundle's ``default_tracking``, else as its training store was
        tracked."""
        from .faces import FaceTracker
        from .configs import MAX_REUSE
        pp, d = self.config.preprocess, self.default_tracking
        mad = self.reuse_mad if self.reuse_mad is not None else d.get("reuse_mad", pp.reuse_mad)
        region = (self.redetect_region if self.redetect_region is not None
                  else d.get("redetect_region", pp.redetect_region))
        return FaceTracker(self.backend, redetect_every=redetect_every or pp.redetect_every,
                           reuse_mad=mad, max_reuse=d.get("max_reuse", pp.max_reuse or MAX_REUSE),
                           redetect_region=region)

    def predict_image(self, bgr: np.ndarray) -> Prediction | None:
        """Predict on the largest face of one BGR image (OpenCV's order); None without a face."""
        face = self.find_face(bgr)
        if face is None:
            return None
        y, m = self.predict_crops(face.crop[None], video_mean=self.still_mean)
        return Prediction(y[0], face.crop, m[0], face.landmarks, face.confidence)
