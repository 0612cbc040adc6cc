"""The settings of every stage, one dataclass each: the single source of the defaults that the
CLI shows (drkit.cli reads them from here) and that Python users get. Light to import (no torch).

Paths may be given as ``str`` or ``Path``; each config turns them into ``Path`` once, here.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import InitVar, asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from .contracts import (
    Arch,
    Backend,
    Baseline,
    DRNorm,
    ImageNorm,
    FaceStoreParams,
    InputKind,
    Objective,
    OutputFormat,
    Param,
    PrecisionName,
    Target,
    Task,
    check_choice,
)
from .fsutil import as_path, as_paths

DEFAULT_BASELINES = ("identity",)
# the tracker's landmark reuse (drkit.faces.tracker, FaceTracker.reuse_mad / max_reuse): what
# preprocess records in the store, and predict then uses for that store's bundles
REUSE_MAD = 3.0
MAX_REUSE = 4


_OPTION = {"input_kind": "--input"}   # fields whose CLI option is not --<field-name>


@lru_cache(maxsize=None)
def _choice_fields(cls) -> tuple[tuple[str, object, bool], ...]:
    """(field, Literal type, is a list) for each field of ``cls`` typed with a Literal."""
    out = []
    for name, t in get_type_hints(cls).items():
        is_list = get_origin(t) is list
        if is_list:
            t = get_args(t)[0]
        if get_origin(t) in (Union, types.UnionType):
            t = next((a for a in get_args(t) if get_origin(a) is Literal), None)
        if t is not None and get_origin(t) is Literal:
            out.append((name, t, is_list))
    return tuple(out)


def check_choices(cfg) -> None:
    """The one check of a config's choice fields (those typed with the Literals of
    drkit.contracts): a value outside the choices is a UsageError (exit 2) naming the option and
    the allowed values. Every config runs it when it is made."""
    for name, lit, is_list in _choice_fields(type(cfg)):
        v = getattr(cfg, name)
        for x in (v or []) if is_list else ([] if v is None else [v]):
            check_choice(x, lit, _OPTION.get(name, "--" + name.replace("_", "-")))


def _renamed(cfg, name: str, size) -> None:
    """A side given by its drkit 0.2 name ``size``: set as field ``name`` (with a
    DeprecationWarning) unless ``name`` was set too (it differs from the field's default). Each
    level names its side once: crop_size, net_size, map_size, frame_size."""
    if size is None:
        return
    cls = type(cfg)
    warnings.warn(f"{cls.__name__}(size=...) is deprecated: use {name}=", DeprecationWarning, stacklevel=4)
    if getattr(cfg, name) == cls.__dataclass_fields__[name].default:
        setattr(cfg, name, size)
# what runs the networks of gen-dr and predict (drkit.export): auto = onnxruntime when it is
# installed, the device is the CPU, at fp32 without --compile (there it ran 1.1-1.7x torch's
# crops/s on one core, several times torch's on two busy cores: benchmarks/engine_speed.py), else torch
Engine = Literal["auto", "torch", "onnxruntime"]


def recorded_settings(cfg, skip) -> dict:
    """The settings of a training config that its checkpoint or bundle records: every field except
    those in ``skip`` and those of ``cfg.RECORDED_WHEN_USED`` left at their off value. A run that
    does not use a later-added setting so keeps the record it always had (and resumes across
    versions)."""
    off = getattr(cfg, "RECORDED_WHEN_USED", {})
    return {k: v for k, v in asdict(cfg).items() if k not in skip and not (k in off and v == off[k])}


@dataclass
class PreprocessConfig:
    inputs: list[Path]
    out: Path
    crop_size: int = 224         # crop side (the store's crop_size)
    backend: Backend = "dlib"
    model_root: Path | None = None
    align: bool = True
    fps: float = 25.0            # frame rate of image-folder sequences
    workers: int = 1
    shard: str | None = None     # "I/N"
    redetect_every: int = 30     # frames between periodic re-detections while tracking
    naive: bool = False          # detect on every frame (slow; for comparison)
    reuse_mad: float = REUSE_MAD   # keep a frame's landmarks for the next when its face patch moved < this (grey levels; 0: refit every frame)
    max_reuse: int = MAX_REUSE     # at most this many frames in a row
    redetect_region: bool = True   # periodic re-detections on a small region around the track (False: the whole frame)
    overwrite: bool = False      # redo videos already complete in the store
    size: InitVar[int | None] = None   # drkit 0.2 name of crop_size (deprecated)

    def __post_init__(self, size):
        check_choices(self)
        self.inputs, self.out, self.model_root = as_paths(self.inputs), as_path(self.out), as_path(self.model_root)
        _renamed(self, "crop_size", size)

    def store_params(self) -> FaceStoreParams:
        return FaceStoreParams(crop_size=self.crop_size, align=self.align, backend=self.backend,
                               redetect_every=self.redetect_every, naive=self.naive, image_fps=self.fps,
                               reuse_mad=0.0 if self.naive or self.max_reuse <= 0 else self.reuse_mad,
                               max_reuse=self.max_reuse, redetect_region=self.redetect_region and not self.naive)


@dataclass
class TrainDRConfig:
    stores: list[Path]
    out: Path
    T: int = 5
    stride: int = 2
    heads: list[tuple[int, int]] | None = None   # a multi-scale network: one DR per (T, stride), trained at once
    init: Path | None = None         # start from this DR checkpoint's weights (a curriculum over T)
    objective: Objective = "rank"          # rank (Eq. 3), or fixed-target: mse, perceptual, pix2pix (drkit.objectives)
    target: Target | None = None        # fixed-target objectives: di | bdi (dynamic image forward / backward)
    perceptual_weights: Path | None = None   # perceptual: torchvision VGG-16 state dict file
    l1_weight: float = 100.0         # pix2pix: weight of the L1 term
    disc_base: int = 64              # pix2pix: PatchGAN width
    val: list[Path] | None = None
    net_size: int = 64               # the side the network trains at (frames resized on the fly)
    base: int = 8                    # UNet width (channels at full resolution)
    depth: int = 3                   # UNet poolings
    param: Param = "residual"          # d = (I - mean I) + UNet(I), or "direct": d = UNet(I)
    zero_mean: bool = True
    theta: float = 1e-3
    gamma: float = 1e-4
    eps: float = 0.0
    flip: bool = True                # mirror whole windows at random
    jitter: float = 0.1              # brightness/contrast jitter per window (0 = off)
    shift: float = 0.0               # random shift and zoom per window, up to this fraction of the side (0 = off)
    epochs: int = 10
    time_budget: float | None = None
    batch_size: int = 16
    lr: float | None = None          # Adam; default 1e-3 (betas 0.5, 0.9), pix2pix 2e-4 (betas 0.5, 0.999)
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    val_windows: int = 2000          # validation windows per epoch (evenly spread)
    cache_mb: int = 2048
    precision: PrecisionName = "fp32"          # fp32 | bf16 | fp16 (drkit.precision); losses and metrics stay fp32
    channels_last: bool = True       # the network in channels_last memory format (1.13x a training step on CPU, benchmarks/dr_speed.py)
    compile: bool = False            # torch.compile the network
    size: InitVar[int | None] = None   # drkit 0.2 name of net_size (deprecated)
    # settings added after checkpoints existed: recorded only when not at this value (recorded_settings)
    RECORDED_WHEN_USED: ClassVar[dict] = {"init": None, "shift": 0.0}

    def __post_init__(self, size):
        check_choices(self)
        self.stores, self.out, self.val = as_paths(self.stores), as_path(self.out), as_paths(self.val)
        _renamed(self, "net_size", size)
        self.perceptual_weights = as_path(self.perceptual_weights)
        self.init = None if self.init is None else (self.init if str(self.init).startswith("pretrained:") else Path(self.init))


@dataclass
class RankEvalConfig:
    ckpt: Path | list[Path] | None      # DR checkpoint(s) or run folder(s); a list after init
    stores: list[Path]
    T: list[int] | None = None          # default: the (first) checkpoint's
    stride: list[int] | None = None     # default: the (first) checkpoint's
    baselines: list[Baseline] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    json: Path | None = None
    plot: Path | None = None
    net_size: int | None = None         # side to evaluate at; default: each DR at its net_size
    batch_size: int = 32
    every: int = 1                      # use every n-th centre frame
    max_windows: int | None = None      # at most this many windows per (T, stride)
    device: str = "auto"
    size: InitVar[int | None] = None    # drkit 0.2 name of net_size (deprecated)

    def __post_init__(self, size):
        check_choices(self)
        _renamed(self, "net_size", size)
        ck = self.ckpt
        self.ckpt = as_paths([] if ck is None else [ck] if isinstance(ck, (str, Path)) else ck)
        self.stores = as_paths(self.stores)
        self.json, self.plot = as_path(self.json), as_path(self.plot)


@dataclass
class GenDRConfig:
    store: Path
    out: Path
    dr: list[Path]
    no_image: bool = False
    map_size: int | None = None      # side of the stored maps; default: the first checkpoint's net_size
    mirror: bool = True              # also store the DRs of the mirrored crop (mdr_mirror)
    batch_size: int = 32
    device: str = "auto"
    overwrite: bool = False
    precision: PrecisionName = "fp32"          # fp32 | bf16 | fp16 (CUDA): autocast of the DR networks (drkit.precision)
    channels_last: bool = True       # DR networks in channels_last layout (1.3-1.6x on CPU; maps differ by ~1e-6)
    compile: bool = False            # torch.compile the DR networks
    shard: str | None = None         # "I/N": only the I-th of N deterministic parts of the videos
    engine: Engine = "auto"             # auto | torch | onnxruntime (Engine; fp32 only)
    size: InitVar[int | None] = None   # drkit 0.2 name of map_size (deprecated)

    def __post_init__(self, size):
        check_choices(self)
        self.store, self.out, self.dr = as_path(self.store), as_path(self.out), as_paths(self.dr) or []
        _renamed(self, "map_size", size)



@dataclass
class TrainTaskConfig:
    input: list[Path]
    out: Path | None
    labels: Path
    task: Task = "au"                      # au | affect
    input_kind: InputKind = "mdr"               # si | sdr | mdr
    arch: Arch = "small"                   # small | vgg16 | hg_hmr
    targets: list[str] | None = None
    missing: list[float] = field(default_factory=list)   # sentinel values, e.g. [9]
    val: list[Path] | None = None
    val_share: float = 0.2
    train_people: list[str] | None = None   # use only these people for training
    val_people: list[str] | None = None     # hold out exactly these
    epochs: int = 20
    time_budget: float | None = None
    patience: int | None = None          # stop after N epochs without a better validation score
    val_frames: int | None = None        # validate on this many frames spread evenly over the validation people
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int | None = None              # network width; None: the arch's (drkit.archs); vgg16 uses its own
    dropout: float | None = None          # head dropout of small / dr_encoder / vgg16; None: the arch's default
    stacks: int = 1                       # hg_hmr: stacked hourglasses
    heatmap_sigma: float = 0.06           # hg_hmr: target Gaussian std, a fraction of the heatmap side
    init: Path | None = None              # pretrained weights for the network (state dict .pt)
    dr_norm: DRNorm = "none"                 # "video": each DR channel minus its mean over the video
    image_norm: ImageNorm = "none"           # "video": each image channel minus its mean over the video
    dr_dropout: float = 0.0               # probability of dropping a sample's DR channels (set to their mean)
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    precision: PrecisionName = "fp32"               # fp32 | bf16 | fp16 (drkit.precision); losses and metrics stay fp32
    channels_last: bool = False           # run the network in channels_last memory format
    compile: bool = False                 # torch.compile the network
    eval_only: Path | None = None         # deprecated (0.2): use `drkit eval-task`
    # settings added after bundles existed: recorded only when not at this value (recorded_settings)
    RECORDED_WHEN_USED: ClassVar[dict] = {"dropout": None, "dr_norm": "none", "image_norm": "none", "dr_dropout": 0.0}

    def __post_init__(self):
        check_choices(self)
        self.input, self.val = as_paths(self.input), as_paths(self.val)
        self.out, self.labels = as_path(self.out), as_path(self.labels)
        self.init, self.eval_only = as_path(self.init), as_path(self.eval_only)
        if self.width is None:
            from .archs import default_width
            self.width = default_width(self.arch)


@dataclass
class EvalTaskConfig:
    model: Path
    stores: list[Path]
    labels: Path
    people: list[str] | None = None      # score only these people
    missing: list[float] | None = None   # default: the sentinels the model was trained with
    json: Path | None = None
    device: str = "auto"

    def __post_init__(self):
        check_choices(self)
        self.model, self.stores = as_path(self.model), as_paths(self.stores)
        self.labels, self.json = as_path(self.labels), as_path(self.json)


@dataclass
class PredictConfig:
    model: Path
    inputs: list[Path]
    out: Path
    save_dr: Path | None = None
    backend: Backend | None = None        # default: the bundle's
    model_root: Path | None = None
    batch_size: int = 32
    device: str = "auto"
    precision: PrecisionName = "fp32"           # fp32 | bf16 | fp16 (CUDA): autocast of the DR and task networks
    channels_last: bool = True        # networks in channels_last layout (1.3-1.6x on CPU; outputs differ by ~1e-6)
    compile: bool = False
    per_video: bool = False           # -o is a folder: one CSV per input file, resumable
    shard: str | None = None          # "I/N" (with per_video): only the I-th of N parts of the inputs
    overwrite: bool = False           # per_video: redo inputs whose CSV is already there
    format: OutputFormat = "drkit"             # drkit | openface (OpenFace 2.2's CSV layout)
    plot: Path | None = None          # folder: one PNG per video, each target over time
    video_out: Path | None = None     # folder: one annotated MP4 per video
    dr_frames: str | None = None      # --save-dr only these source frames ("0,100,200-210")
    clip: bool = True                 # clip outputs to the task's label range
    engine: Engine = "auto"              # auto | torch | onnxruntime (Engine; fp32 only)
    reuse_mad: float | None = None    # the tracker's landmark reuse (grey levels); None: as the bundle's training store
    redetect_region: bool | None = None   # periodic re-detections near the face; None: as the bundle's training store

    def __post_init__(self):
        check_choices(self)
        self.model, self.inputs, self.out = as_path(self.model), as_paths(self.inputs), as_path(self.out)
        self.save_dr, self.model_root = as_path(self.save_dr), as_path(self.model_root)
        self.plot, self.video_out = as_path(self.plot), as_path(self.video_out)


@dataclass
class ExportConfig:
    model: Path                       # task bundle or DR checkpoint: file, run folder, pretrained:NAME
    out: Path                         # folder: model.onnx + model.json (drkit.export)
    seed: int = 0                     # of the random crops the export is checked on
    threads: int | None = None        # onnxruntime threads of the check (default: every core)

    def __post_init__(self):
        check_choices(self)
        self.model, self.out = as_path(self.model), as_path(self.out)


@dataclass
class SynthConfig:
    out: Path
    n: int = 12
    seconds: float = 8.0
    fps: float = 25.0
    faces: list[Path] = field(default_factory=list)
    identities: int = 6            # pseudo-identities made from one photo when --faces is empty
    frame_size: int = 256          # side of the square frames
    seed: int = 0
    appearance: bool = True        # AU wrinkles, folds, shading, teeth drawn on the warped face
    morphology: float = 0.0        # largest resting AU offset of a person (0-5; 0: none)
    size: InitVar[int | None] = None   # drkit 0.2 name of frame_size (deprecated)

    def __post_init__(self, size):
        check_choices(self)
        self.out, self.faces = as_path(self.out), as_paths(self.faces) or []
        _renamed(self, "frame_size", size)


@dataclass
class DemoConfig:
    out: Path = Path("drkit-demo")
    quick: bool = True            # the synthetic part's quick setting (--full: the longer one)
    train_dr: bool = False        # train the DR here instead of using the shipped pretrained:T5
    seed: int = 0

    def __post_init__(self):
        check_choices(self)
        self.out = as_path(self.out)
