"""A reusable predictor: a task bundle (train-task's best.pt) applied to face crops, still
images or video frames. `drkit predict` is a loop over inputs around it; Python users load it
once and call it as often as they like::

    from drkit.predictor import Predictor
    p = Predictor.from_bundle("runs/au_mdr")           # or .../best.pt
    result = p.predict_image(cv2.imread("face.jpg"))   # None if no face
    print(dict(zip(p.targets, result.values)))

The bundle carries the preprocessing settings (crop size, alignment, face backend), the DR
networks and the task network, so the prediction sees exactly the input it was trained on:
face detection + 68 landmarks -> masked crop -> [image, DRs] (drkit.mdr) -> regressor.

``Predictor.from_bundle(run, precision="bf16", channels_last=True, compile=False)`` runs the
networks under autocast (drkit.precision; fp16 needs CUDA); results come back as float32.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .batching import images_to_tensor
from .checkpoint import Checkpoint, load_checkpoint
from .contracts import TaskConfig
from .mdr import MDR


@dataclass
class Prediction:
    values: np.ndarray          # (k,) one value per target
    crop: np.ndarray            # (S, S, 3) uint8 RGB masked face crop
    mdr: np.ndarray             # (C, M, M) the network's input before normalisation
    landmarks: np.ndarray       # (68, 2) in source-image pixels


class Predictor:
    """Crops (n, S, S, 3) uint8 RGB -> (n, k) predictions; or images / frames with face finding."""

    def __init__(self, bundle: Checkpoint, device: torch.device | str = "cpu",
                 backend: str | None = None, model_root: str | None = None,
                 precision: str = "fp32", channels_last: bool = True, compile: bool = False):
        from . import precision as P
        c: TaskConfig = bundle.config
        self.bundle, self.config, self.device = bundle, c, torch.device(device)
        self.precision = P.check(precision, self.device)   # fp16 off CUDA: a DrkitError here
        self.mdr = MDR.from_dr_nets(bundle.dr_nets, c.map_size, c.image).to(self.device).eval()
        self.mdr.prepare(channels_last, compile)
        self.net = bundle.build_model().to(self.device)
        self._net = P.prepare(self.net, channels_last, compile)   # what runs; self.net: the weights
        self.channels_last = channels_last
        self.channels = c.channels
        self.mean = torch.tensor(c.norm_mean, device=self.device)[None, :, None, None]
        self.std = torch.tensor(c.norm_std, device=self.device)[None, :, None, None]
        self.targets = list(c.targets)
        self.crop_size, self.align = c.preprocess.crop_size, c.preprocess.align
        self.backend_name, self.model_root = backend or c.preprocess.backend, model_root
        self._backend = None
        self.timings = {"dr": 0.0, "task": 0.0, "crops": 0}   # predict_crops adds to these

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str = "auto", backend: str | None = None,
                    model_root: str | None = None, precision: str = "fp32", channels_last: bool = True,
                    compile: bool = False) -> "Predictor":
        """``precision`` fp32 (default), bf16 or fp16 (CUDA only): autocast around the networks,
        outputs returned as float32; ``channels_last`` (default: 1.3-1.6x faster on a CPU, outputs
        within ~1e-6 of the standard layout) / ``compile``: drkit.precision.prepare."""
        from .nets import pick_device
        return cls(load_checkpoint(path, "task"), pick_device(device), backend, model_root,
                   precision, channels_last, compile)

    @property
    def backend(self):
        """The face backend (loaded on first use: predicting on crops needs none)."""
        if self._backend is None:
            from .faces import make_backend
            self._backend = make_backend(self.backend_name, str(self.model_root) if self.model_root else None)
        return self._backend

    @torch.inference_mode()
    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) uint8 RGB masked crops -> predictions (n, k) and MDR inputs (n, C, M, M).
        Adds the seconds spent to ``self.timings`` (``dr``: the MDR stack, DR networks and their
        resizes; ``task``: the task network; on CUDA the split is of asynchronous launches)."""
        from .precision import autocast
        t0 = time.perf_counter()
        x = images_to_tensor(crops).to(self.device)
        with autocast(self.precision, self.device):
            m = self.mdr(x)                      # float32 (MDR casts each DR back)
            t1 = time.perf_counter()
            z = (m[:, self.channels] - self.mean) / self.std
            if self.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            y = self._net(z).float()
        out = y.cpu().numpy(), m.cpu().numpy()
        self.timings["dr"] += t1 - t0
        self.timings["task"] += time.perf_counter() - t1
        self.timings["crops"] += len(crops)
        return out

    __call__ = predict_crops

    def crop(self, bgr: np.ndarray, tracker=None):
        """The masked crop (RGB) and landmarks of the largest face in a BGR image, or None.
        Give a FaceTracker to follow a face through video frames."""
        from .faces import FaceTracker, crop_face
        res = (tracker or FaceTracker(self.backend, naive=True))(bgr)
        if res is None:
            return None
        return crop_face(bgr, res.landmarks, self.crop_size, self.align)[0], res.landmarks

    def tracker(self, redetect_every: int | None = None):
        """A FaceTracker for the frames of one video, with the bundle's tracking settings."""
        from .faces import FaceTracker
        return FaceTracker(self.backend, redetect_every=redetect_every or self.config.preprocess.redetect_every)

    def predict_image(self, bgr: np.ndarray) -> Prediction | None:
        """Predict on the largest face of one BGR image (OpenCV's order); None without a face."""
        found = self.crop(bgr)
        if found is None:
            return None
        crop, lm = found
        y, m = self.predict_crops(crop[None])
        return Prediction(y[0], crop, m[0], lm)
