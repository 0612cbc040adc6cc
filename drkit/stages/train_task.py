"""`drkit train-task`: AU-intensity or valence/arousal regression on SI / SDR / MDR inputs
(paper Sec. 3.3, 4.4), and ``--eval-only`` scoring of a trained model on a store.

Input is a DR store from gen-dr (it holds the images too). ``--input`` picks channels:
``si`` the still image, ``sdr`` the last DR only, ``mdr`` everything in the store (image + DRs).
Frames are used where the label file has at least one target; missing targets are masked out of
the loss and the metrics. Validation is on ``--val`` stores, or else on a person-disjoint share
of the training people (``--val-share``), never on frames of training people.

The best checkpoint is a complete bundle for `drkit predict`: the task network, channel
normalisation, the DR networks (weights included) and the preprocessing settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import log, metrics
from ..errors import DrkitError
from ..labels import Labels, read_labels
from ..nets import create_model, pick_device
from ..store import Store, open_store
from ..train import LoopConfig, fit, load_checkpoint, model_from_checkpoint
from ..windows import FrameCache

TASK_METRICS = {"au": ("icc", "mse", "mae"), "affect": ("pcc", "ccc", "mse")}
MONITOR = {"au": "icc", "affect": "pcc"}


@dataclass
class TrainTaskConfig:
    input: list[str]
    out: str | None
    labels: str
    task: str = "au"                      # au | affect
    input_kind: str = "mdr"               # si | sdr | mdr
    arch: str = "small"                   # small | vgg16
    targets: list[str] | None = None
    missing: list[float] = field(default_factory=list)   # sentinel values, e.g. [9]
    val: list[str] | None = None
    val_share: float = 0.2
    train_people: list[str] | None = None   # use only these people for training
    val_people: list[str] | None = None     # hold out exactly these (with --eval-only: score only these)
    epochs: int = 20
    time_budget: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16                       # small CNN width; vgg16 uses its own
    init: str | None = None               # pretrained weights for the network (state dict .pt)
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    eval_only: str | None = None          # model path: only score it on `input`


def select_channels(names: list[str], kind: str) -> list[int]:
    img = [i for i, n in enumerate(names) if n.startswith("image_")]
    drs = sorted({n.split("_")[0] for n in names if n.startswith("dr")})
    if kind == "si":
        sel = img
    elif kind == "sdr":
        sel = [i for i, n in enumerate(names) if drs and n.startswith(drs[-1] + "_")]
    elif kind == "mdr":
        sel = list(range(len(names)))
    else:
        raise DrkitError(f"--input {kind!r}: choose si, sdr or mdr")
    if not sel:
        raise DrkitError(f"--input {kind}: the store has no such channels ({', '.join(names)}); "
                         "make it with gen-dr (without --no-image for si, with --dr for sdr)")
    return sel


@dataclass
class Samples:
    """Labelled frames: video id, row position in the store, targets (n, k) with NaN."""
    videos: list[str]
    positions: np.ndarray
    y: np.ndarray
    stores: dict[str, Store]

    def __len__(self) -> int:
        return len(self.videos)


def labelled_frames(stores: list[Store], labels: Labels, people: set[str] | None = None) -> Samples:
    vids, pos, ys, owner = [], [], [], {}
    for st in stores:
        for v in st.videos:
            if v not in labels.frames or (people is not None and labels.person.get(v, v) not in people):
                continue
            y = labels.lookup(v, st.video(v)["frame_index"][:])
            keep = np.flatnonzero(~np.isnan(y).all(1))
            vids += [v] * len(keep)
            pos.append(keep)
            ys.append(y[keep])
            owner[v] = st
    if not vids:
        raise DrkitError("no labelled frame in the input: check that the label file's video ids "
                         "and frame numbers match the store (`drkit inspect STORE`)")
    return Samples(vids, np.concatenate(pos), np.concatenate(ys), owner)


class Batcher:
    """Batches (x normalised (B, C, H, W), y (B, k)) from a DR store's ``mdr`` array."""

    def __init__(self, s: Samples, channels: list[int], mean: np.ndarray, std: np.ndarray):
        self.s, self.ch = s, channels
        self.cache = FrameCache(s.stores, array="mdr", max_bytes=2 << 30)
        self.mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]

    def get(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack([self.cache.get(self.s.videos[i], self.s.positions[i:i + 1])[0][self.ch] for i in idx])
        x = (torch.from_numpy(x.astype(np.float32)) - self.mean) / self.std
        return x, torch.from_numpy(self.s.y[idx])


def channel_stats(s: Samples, channels: list[int], n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over a random sample of ``n`` frames."""
    idx = np.random.default_rng(seed).choice(len(s), min(n, len(s)), replace=False)
    raw = Batcher(s, channels, np.zeros(len(channels)), np.ones(len(channels)))
    x = raw.get(np.sort(idx))[0].double()
    return (x.mean((0, 2, 3)).numpy().astype(np.float32),
            (x.std((0, 2, 3), unbiased=False) + 1e-6).numpy().astype(np.float32))


def masked_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m = ~torch.isnan(y)
    return F.mse_loss(pred[m], y[m]) if m.any() else pred.sum() * 0


def score(task: str, targets: list[str], pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per-target and mean metrics over labelled entries (missing targets skipped per column)."""
    out: dict[str, float] = {}
    for name in TASK_METRICS[task]:
        fn = getattr(metrics, {"icc": "icc31"}.get(name, name))
        vals = []
        for j, t in enumerate(targets):
            m = ~np.isnan(y[:, j])
            v = float(fn(pred[m, j], y[m, j])[0]) if m.sum() > 2 else float("nan")
            out[f"{name}/{t}"] = v
            vals.append(v)
        out[name] = float(np.nanmean(vals)) if not np.isnan(vals).all() else float("nan")
    return out


def predict_samples(model, batcher: Batcher, device, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(batcher.s), batch_size):
            x, _ = batcher.get(np.arange(i, min(i + batch_size, len(batcher.s))))
            out.append(model(x.to(device)).cpu().numpy())
    return np.concatenate(out)


def _person_split(labels: Labels, stores: list[Store], share: float, seed: int) -> tuple[set, set]:
    people = sorted({labels.person.get(v, v) for st in stores for v in st.videos if v in labels.frames})
    if len(people) < 2:
        raise DrkitError("need labelled videos of at least two people to hold some out for "
                         "validation; or pass --val STORE")
    rng = np.random.default_rng(seed)
    val = set(rng.permutation(people)[:max(1, round(share * len(people)))].tolist())
    return set(people) - val, val


def evaluate(cfg: TrainTaskConfig) -> dict[str, float]:
    """--eval-only: score a trained model on the input stores."""
    ck = load_checkpoint(cfg.eval_only, "task")
    c = ck["config"]
    device = pick_device(cfg.device)
    model = model_from_checkpoint(ck).to(device)
    stores = [open_store(p, "dr") for p in cfg.input]
    for st in stores:
        if st.params["channels"] != c["store_channels"]:
            raise DrkitError(f"{st.path}: channels {st.params['channels']} differ from the model's "
                             f"{c['store_channels']}; run gen-dr with the same checkpoints")
    labels = read_labels(cfg.labels, c["targets"], tuple(cfg.missing or c["missing"]))
    s = labelled_frames(stores, labels, set(cfg.val_people) if cfg.val_people else None)
    b = Batcher(s, c["channels"], np.array(c["norm_mean"]), np.array(c["norm_std"]))
    pred = predict_samples(model, b, device)
    return {"frames": len(s), **score(c["task"], c["targets"], pred, s.y)}


def run(cfg: TrainTaskConfig) -> dict:
    if cfg.eval_only:
        return evaluate(cfg)
    if cfg.task not in TASK_METRICS:
        raise DrkitError(f"--task {cfg.task!r}: choose au or affect")
    if not cfg.out:
        raise DrkitError("-o MODEL is required (unless --eval-only)")
    stores = [open_store(p, "dr") for p in cfg.input]
    names = stores[0].params["channels"]
    for st in stores[1:]:
        if st.params["channels"] != names:
            raise DrkitError(f"{st.path}: channels differ from {stores[0].path}")
    ch = select_channels(names, cfg.input_kind)
    labels = read_labels(cfg.labels, cfg.targets, tuple(cfg.missing))
    if cfg.val:
        val_stores = [open_store(p, "dr") for p in cfg.val]
        train_s, val_s = labelled_frames(stores, labels), labelled_frames(val_stores, labels)
        shared = {labels.person.get(v, v) for v in train_s.stores} & {labels.person.get(v, v) for v in val_s.stores}
        if shared:
            log.warn(f"validation shares people with training: {sorted(shared)[:3]}")
    else:
        if cfg.val_people:
            va_p = set(cfg.val_people)
            tr_p = {labels.person.get(v, v) for st in stores for v in st.videos if v in labels.frames} - va_p
        else:
            tr_p, va_p = _person_split(labels, stores, cfg.val_share, cfg.seed)
        if cfg.train_people:
            tr_p &= set(cfg.train_people)
        train_s, val_s = labelled_frames(stores, labels, tr_p), labelled_frames(stores, labels, va_p)
        log.info(f"person split: {len(tr_p)} people train, {len(va_p)} validation ({', '.join(sorted(va_p)[:5])}"
                 + (" ..." if len(va_p) > 5 else "") + ")")
    mean, std = channel_stats(train_s, ch, seed=cfg.seed)
    k = len(labels.targets)
    if cfg.arch == "small":
        spec = {"name": "small_cnn", "kwargs": {"in_ch": len(ch), "n_out": k, "width": cfg.width}}
    elif cfg.arch == "vgg16":
        spec = {"name": "vgg16", "kwargs": {"in_ch": len(ch), "n_out": k}}
    else:
        raise DrkitError(f"--arch {cfg.arch!r}: choose small or vgg16")
    torch.manual_seed(cfg.seed)
    model = create_model(spec["name"], **spec["kwargs"])
    if cfg.init:
        _load_init(model, cfg.init)
    # everything predict needs: preprocessing, the DR networks, channels, normalisation
    dr_nets = []
    for info in stores[0].params["checkpoints"]:
        p = Path(info["path"])
        if not p.is_file():
            raise DrkitError(f"DR checkpoint {p} (used to make {stores[0].path}) is missing; the model "
                             "bundle must include it: restore it at that path")
        dck = load_checkpoint(p, "dr")
        dr_nets.append({"model": dck["model"], "state_dict": dck["state_dict"], "size": dck["config"]["size"],
                        "T": dck["config"]["T"], "stride": dck["config"]["stride"]})
    config = {"task": cfg.task, "input_kind": cfg.input_kind, "targets": labels.targets,
              "channels": ch, "store_channels": names, "norm_mean": mean.tolist(),
              "norm_std": std.tolist(), "size": stores[0].params["size"],
              "image": stores[0].params["image"], "missing": list(cfg.missing),
              "preprocess": stores[0].params["source_params"],
              "train": {k2: v for k2, v in asdict(cfg).items()
                        if k2 not in ("resume", "overwrite", "device", "eval_only", "epochs", "time_budget")}}
    meta = {"kind": "task", "model": spec, "config": config, "dr_nets": dr_nets}
    log.info(f"train-task: {len(train_s)} train / {len(val_s)} validation frames, input {cfg.input_kind} "
             f"({len(ch)} channels), targets {', '.join(labels.targets)}, {cfg.arch}")
    tb, vb = Batcher(train_s, ch, mean, std), Batcher(val_s, ch, mean, std)
    n_batches = (len(train_s) + cfg.batch_size - 1) // cfg.batch_size

    def batches(epoch: int, start: int):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_s))
        g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
        flips = torch.rand(len(order), generator=g) < 0.5
        for b in range(start, n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = tb.get(np.sort(idx))
            if cfg.flip:
                f = flips[b * cfg.batch_size:b * cfg.batch_size + len(idx)]
                x[f] = x[f].flip(-1)
            yield x, y

    def step(model, batch, device):
        x, y = (t.to(device) for t in batch)
        return masked_mse(model(x), y), {}

    def validate(model, device):
        return score(cfg.task, labels.targets, predict_samples(model, vb, device), val_s.y)

    loop = LoopConfig(out=cfg.out, epochs=cfg.epochs, time_budget=cfg.time_budget, lr=cfg.lr,
                      betas=(0.9, 0.999), weight_decay=cfg.weight_decay, seed=cfg.seed, device=cfg.device,
                      resume=cfg.resume, overwrite=cfg.overwrite)
    st = fit(model, loop, meta, batches, n_batches, step, validate, monitor=MONITOR[cfg.task], mode="max")
    best = load_checkpoint(Path(cfg.out) / "best.pt", "task")
    device = pick_device(cfg.device)
    final = score(cfg.task, labels.targets, predict_samples(model_from_checkpoint(best).to(device), vb, device),
                  val_s.y)
    (Path(cfg.out) / "val_metrics.json").write_text(json.dumps(final, indent=1))
    return {**st, "val": final}


def _load_init(model: torch.nn.Module, path: str) -> None:
    """Pretrained weights (a state dict, or a drkit checkpoint): layers whose name and shape
    match are loaded, the rest (e.g. a first conv with more input channels) stay as initialised."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    own = model.state_dict()
    ok = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(ok, strict=False)
    log.info(f"--init {path}: loaded {len(ok)} of {len(own)} tensors")
