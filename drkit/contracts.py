"""What stages hand each other, in one place: store array layouts, schema and format versions,
the choices every stage accepts, and typed records for the JSON-able parts of checkpoints and
stores (documented for users in docs/formats.md).

Three sizes, three names (never a bare ``size``):

- ``crop_size``: side of the face crops in a face store (`drkit preprocess --crop-size`);
- ``net_size``: side a DR network runs at (`drkit train-dr --net-size`);
- ``map_size``: side of the stacked maps in a DR store (`drkit gen-dr --map-size`).

On disk, store parameters keep the key ``size`` (schema version 1: crop side in a face store, map
side in a DR store). Checkpoints are format version 2, which names the sizes; version 1
checkpoints (drkit 0.1.0) are converted on load by :func:`migrate_checkpoint`.

This module imports neither torch nor zarr, so the CLI can read choices and defaults from it
quickly.
"""

from __future__ import annotations

from dataclasses import MISSING as _MISSING
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from .archs import ArchName
from .errors import DrkitError, UsageError

# ------------------------------------------------------------------ versions

STORE_SCHEMA_VERSION = 2             # 1: drkit 0.1-0.2 (sizes under the key 'size'; read as they are)
READABLE_STORE_VERSIONS = (1, 2)
CHECKPOINT_FORMAT = "drkit.checkpoint"
CHECKPOINT_FORMAT_VERSION = 2        # 1: drkit 0.1.0 (read and converted)
READABLE_CHECKPOINT_VERSIONS = (1, 2)
REF_FPS = 25.0                       # strides are given in frames at this rate

# ------------------------------------------------------------------ choices

Backend = Literal["dlib", "insightface"]
Param = Literal["residual", "direct"]
Baseline = Literal["identity", "ranksvm", "di"]
Objective = Literal["rank", "mse", "perceptual", "pix2pix"]
Target = Literal["di", "bdi"]
Task = Literal["au", "affect"]
Arch = ArchName   # the task architectures of train-task --arch (declared in drkit.archs)
InputKind = Literal["si", "sdr", "mdr"]
LabelLayout = Literal["fera2015", "avec2012"]
PrecisionName = Literal["fp32", "bf16", "fp16"]   # --precision (drkit.precision)
OutputFormat = Literal["drkit", "openface"]       # predict --format
DRNorm = Literal["none", "video"]                 # train-task --dr-norm
ImageNorm = Literal["none", "video"]              # train-task --image-norm
StoreKind = Literal["faces", "dr"]
CheckpointKind = Literal["dr", "task"]

TASK_METRICS = {"au": ("icc", "mse", "mae"), "affect": ("pcc", "ccc", "mse")}
# The range of each task's labels: AU intensity 0..5 (FACS A-E), valence / arousal -1..1. A bundle
# clips its predictions to it (TaskConfig.value_range) unless its training labels lay outside it.
TASK_RANGE = {"au": (0.0, 5.0), "affect": (-1.0, 1.0)}
TASK_MONITOR = {"au": "icc", "affect": "pcc"}


def check_choice(value: Any, choices, option: str) -> Any:
    """Raise a UsageError (exit 2) naming ``option`` and the allowed values unless ``value`` is
    one of ``choices`` (a Literal type or a sequence)."""
    allowed = get_args(choices) or tuple(choices)
    if value not in allowed:
        raise UsageError(f"{option} {value!r}: choose one of {', '.join(map(str, allowed))}")
    return value


# ------------------------------------------------------------------ store array layouts

@dataclass(frozen=True)
class ArraySpec:
    tail: tuple[int, ...]          # shape after the frame axis
    dtype: str
    dims: tuple[str, ...]          # dimension names, frame axis first
    chunk_frames: int = 1024


def chunk_frames(bytes_per_frame: int, target: int = 2 ** 21, lo: int = 8, hi: int = 64) -> int:
    """Frames per chunk of a per-frame image array, so one chunk is about ``target`` bytes (2 MB):
    a window of nearby frames costs few reads, and a chunk never holds fewer than ``lo`` or more
    than ``hi`` frames. The one rule for every image-like array of every store."""
    return int(min(hi, max(lo, round(target / max(1, bytes_per_frame)))))


def face_arrays(crop_size: int) -> dict[str, ArraySpec]:
    """The arrays of one video of a face store (`drkit preprocess`)."""
    s = crop_size
    return {
        "frames": ArraySpec((s, s, 3), "uint8", ("frame", "y", "x", "channel"), chunk_frames(s * s * 3)),
        "landmarks": ArraySpec((68, 2), "float32", ("frame", "point", "xy")),
        "frame_index": ArraySpec((), "int64", ("frame",)),
        "confidence": ArraySpec((), "float32", ("frame",)),
        "detected": ArraySpec((), "bool", ("frame",)),
        "transform": ArraySpec((2, 3), "float32", ("frame", "row", "col")),
    }


def dr_arrays(n_channels: int, map_size: int, n_mirror: int = 0) -> dict[str, ArraySpec]:
    """The arrays of one video of a DR store (`drkit gen-dr`). ``landmarks`` (the face store's
    68 landmarks in map pixels, for `train-task --arch hg_hmr`) is written by gen-dr (optional: older stores lack it).
    ``mdr_mirror`` (``n_mirror`` > 0: the number of DR channels) holds the DR channels of the
    *mirrored* face crop, in the mirrored crop's coordinates: a DR network is not mirror-symmetric
    (the DR of a mirrored face is not the mirrored DR), so `train-task` builds a mirrored training
    sample from the flipped image channels and these, never by flipping DR maps. DR
    stores without these arrays still read (DR_OPTIONAL_ARRAYS)."""
    s = map_size
    out = {
        "mdr": ArraySpec((n_channels, s, s), "float16", ("frame", "channel", "y", "x"),
                         chunk_frames(2 * n_channels * s * s)),
        "frame_index": ArraySpec((), "int64", ("frame",)),
        "landmarks": ArraySpec((68, 2), "float32", ("frame", "point", "xy")),
    }
    if n_mirror:
        out["mdr_mirror"] = ArraySpec((n_mirror, s, s), "float16", ("frame", "channel", "y", "x"),
                                      chunk_frames(2 * n_mirror * s * s))
    return out


DR_OPTIONAL_ARRAYS = ("landmarks", "mdr_mirror")   # arrays of dr_arrays an older DR store may lack


STORE_ARRAYS = {"faces": face_arrays, "dr": dr_arrays}


def video_marker(store_kind: str) -> dict[str, Any]:
    """The ``drkit`` attribute of one video group (``faces-video`` or ``dr-video``)."""
    return {"drkit": {"kind": f"{store_kind}-video", "schema_version": STORE_SCHEMA_VERSION}}


# ------------------------------------------------------------------ typed records

class Result:
    """Mixin of the typed results stages return (``run(cfg) -> XResult``): fields by attribute,
    ``to_dict()`` for JSON, and ``r["field"]`` still working for code written against drkit 0.2,
    whose stages returned dicts."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str):
        if key in {f.name for f in fields(self)}:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def _from(cls, d: Any, where: str, renames: dict[str, str] | None = None):
    """Build dataclass ``cls`` from dict ``d`` (keys renamed by ``renames``: disk -> field), with
    a DrkitError naming ``where`` and the missing keys; unknown keys are kept in ``extra`` if the
    class has such a field, else ignored."""
    if not isinstance(d, dict):
        raise DrkitError(f"{where}: expected a mapping, found {type(d).__name__}")
    d = {(renames or {}).get(k, k): v for k, v in d.items()}
    names = {f.name for f in fields(cls)}
    required = [f.name for f in fields(cls) if f.default is f.default_factory is _MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise DrkitError(f"{where}: missing {', '.join(missing)}; the file is damaged or was not "
                         "written by drkit")
    kw = {k: v for k, v in d.items() if k in names}
    if "extra" in names:
        kw["extra"] = {**d.get("extra", {}), **{k: v for k, v in d.items() if k not in names}}
    return cls(**kw)



@dataclass
class ModelSpec:
    """A registry name of drkit.nets and its kwargs: ``create_model(name, **kwargs)`` rebuilds it."""
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> "ModelSpec":
        return _from(cls, d, where)


@dataclass
class DRConfig:
    """What a DR checkpoint's network means: trained on windows of 2T+1 frames at ``stride``
    (frames at ``ref_fps``), running at ``net_size``. ``train`` keeps every other training
    setting (loss weights, augmentation, seed, ...) for provenance; ``objective`` and ``target``
    name the training objective (``rank`` for the paper's rank loss)."""
    T: int
    stride: int
    net_size: int
    ref_fps: float = REF_FPS
    objective: str = "rank"
    target: str | None = None
    score: str = "<d, V> / (C*H*W)"
    input: str = "rgb in [0, 1], masked face crop"
    train: dict[str, Any] = field(default_factory=dict)
    # a multi-scale network (`train-dr --heads`): one 3-channel DR per [T, stride],
    # in output order; T and stride above are the first head's. Empty: one DR at (T, stride).
    heads: list[list[int]] = field(default_factory=list)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """(T, stride) of each DR the network outputs, in channel order."""
        return [(int(t), int(s)) for t, s in self.heads] if self.heads else [(self.T, self.stride)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "DRConfig":
        c = _from(cls, d, where)
        if c.T < 1 or c.stride < 1 or c.net_size < 1:
            raise DrkitError(f"{where}: T, stride and net_size must be >= 1 (found {c.T}, {c.stride}, "
                             f"{c.net_size})")
        return c


@dataclass
class FaceStoreParams:
    """Creation parameters of a face store (root ``drkit.params``); a later run adding videos
    must use the same ``crop_size`` and ``align``."""
    crop_size: int
    align: bool = True
    backend: str = "dlib"
    redetect_every: int = 30
    naive: bool = False
    image_fps: float = 25.0
    reuse_mad: float = 0.0    # landmark reuse of the tracker (drkit.faces.tracker); 0 in older stores
    max_reuse: int = 0
    redetect_region: bool = False   # periodic re-detections near the track (0.3.0); False in older stores
    extra: dict[str, Any] = field(default_factory=dict)

    MUST_MATCH = ("crop_size", "align")

    def to_dict(self) -> dict:
        return {"crop_size": self.crop_size, "align": self.align, "backend": self.backend,
                "redetect_every": self.redetect_every, "naive": self.naive,
                "image_fps": self.image_fps, "reuse_mad": self.reuse_mad, "max_reuse": self.max_reuse,
                "redetect_region": self.redetect_region, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, where: str = "face store params") -> "FaceStoreParams":
        return _from(cls, d, where, {"size": "crop_size"})


@dataclass
class DRNetRef:
    """One DR network a DR store was made with (``drkit.params.checkpoints[k]``)."""
    path: str
    sha256_16: str
    T: int
    stride: int
    net_size: int
    model: dict[str, Any]

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256_16": self.sha256_16, "T": self.T, "stride": self.stride,
                "net_size": self.net_size, "model": self.model}

    @classmethod
    def from_dict(cls, d: Any, where: str = "checkpoint reference") -> "DRNetRef":
        return _from(cls, d, where, {"size": "net_size"})


@dataclass
class DRStoreParams:
    """Creation parameters of a DR store (root ``drkit.params``)."""
    map_size: int
    channels: list[str]
    image: bool
    source_store: str
    source_params: dict[str, Any]
    checkpoints: list[DRNetRef] = field(default_factory=list)
    precision: str = "fp32"          # autocast of the DR networks (stores made before 0.2.0: fp32)
    engine: str = "torch"            # what ran them: torch | onnxruntime (stores made before 0.3.0: torch)

    MUST_MATCH = ("map_size", "channels")

    def to_dict(self) -> dict:
        return {"map_size": self.map_size, "channels": list(self.channels), "image": self.image,
                "source_store": self.source_store, "source_params": self.source_params,
                "checkpoints": [c.to_dict() for c in self.checkpoints], "precision": self.precision,
                "engine": self.engine}

    @classmethod
    def from_dict(cls, d: Any, where: str = "DR store params") -> "DRStoreParams":
        p = _from(cls, d, where, {"size": "map_size"})
        p.checkpoints = [c if isinstance(c, DRNetRef) else DRNetRef.from_dict(c, f"{where}: checkpoints[{k}]")
                         for k, c in enumerate(p.checkpoints)]
        return p

    @property
    def face_params(self) -> FaceStoreParams:
        return FaceStoreParams.from_dict(self.source_params, "source_params")


@dataclass
class TaskConfig:
    """What a task bundle's network expects and predicts. Inputs are channels ``channels``
    (indices into ``store_channels``, the DR store's channel names) of maps at ``map_size``,
    normalised per channel by ``norm_mean`` / ``norm_std``; ``preprocess`` are the face-store
    parameters the crops were made with (crop size, alignment, backend)."""
    task: str
    input_kind: str
    targets: list[str]
    channels: list[int]
    store_channels: list[str]
    norm_mean: list[float]
    norm_std: list[float]
    map_size: int
    image: bool
    preprocess: FaceStoreParams
    missing: list[float] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    # per target [lo, hi] its predictions are clipped to: the task's label range (TASK_RANGE) when
    # every training label lies in it, else the training labels' own min and max (empty in
    # bundles that record none: not clipped)
    value_range: list[list[float]] = field(default_factory=list)
    # "video": each DR channel minus its mean over the video (the DR's deviation from that
    # person's own average: train-task --dr-norm video); "none": as stored
    dr_norm: str = "none"
    # "video": each image channel minus its mean over the video (train-task --image-norm video,
    # the person-specific normalisation OpenFace applies to its appearance features); "none": as stored
    image_norm: str = "none"

    @property
    def video_norm(self) -> bool:
        """Whether the network's input depends on the whole video (its mean), not on the frame alone."""
        return self.dr_norm == "video" or self.image_norm == "video"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "TaskConfig":
        c = _from(cls, d, where)
        if not isinstance(c.preprocess, FaceStoreParams):
            c.preprocess = FaceStoreParams.from_dict(c.preprocess, f"{where}.preprocess")
        if not (len(c.channels) == len(c.norm_mean) == len(c.norm_std)):
            raise DrkitError(f"{where}: channels, norm_mean and norm_std differ in length")
        check_choice(c.task, Task, f"{where}: task")
        check_choice(c.dr_norm, DRNorm, f"{where}: dr_norm")
        check_choice(c.image_norm, ImageNorm, f"{where}: image_norm")
        return c


@dataclass
class DRNet:
    """A DR network inside a task bundle (weights included), so predict needs no other file."""
    model: ModelSpec
    state_dict: dict[str, Any]
    config: DRConfig

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "state_dict": self.state_dict, "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "dr_nets") -> "DRNet":
        n = _from(cls, d, where)
        return cls(ModelSpec.from_dict(n.model, f"{where}.model"), n.state_dict,
                   DRConfig.from_dict(n.config, f"{where}.config"))


# ------------------------------------------------------------------ checkpoint migration

_V1_DR_KEEP = {"T", "stride", "ref_fps", "score", "input"}


def migrate_checkpoint(ck: dict) -> dict:
    """A version-1 checkpoint dict (drkit 0.1.0) as version 2: sizes named, training settings
    under ``train``, DR networks of a bundle with a ``config``. Other versions pass unchanged."""
    if ck.get("format_version") != 1:
        return ck
    ck = dict(ck)
    c = dict(ck.get("config") or {})
    if ck.get("kind") == "dr":
        ck["config"] = {**{k: c[k] for k in _V1_DR_KEEP if k in c}, "net_size": c.get("size"),
                        "objective": "rank", "target": None,
                        "train": {k: v for k, v in c.items() if k not in _V1_DR_KEEP | {"size"}}}
    elif ck.get("kind") == "task":
        pre = dict(c.get("preprocess") or {})
        ck["config"] = {**{k: v for k, v in c.items() if k not in ("size", "preprocess")},
                        "map_size": c.get("size"), "preprocess": pre}
        ck["dr_nets"] = [{"model": n["model"], "state_dict": n["state_dict"],
                          "config": {"T": n["T"], "stride": n["stride"], "net_size": n["size"]}}
                         for n in ck.get("dr_nets", [])]
    ck["format_version"] = 2
    ck["migrated_from"] = 1
    return ck
