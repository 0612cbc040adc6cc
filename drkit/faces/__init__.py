"""Face detection, 68-point landmarks, tracking, and masked face crops."""

from .backends import BACKENDS, Detection, make_backend
from .crop import apply_transform, crop_face, crop_transform, hull_mask
from .tracker import FaceResult, FaceTracker

__all__ = ["BACKENDS", "Detection", "make_backend", "apply_transform", "crop_face",
           "crop_transform", "hull_mask", "FaceResult", "FaceTracker"]
