"""`drkit train-task`: AU-intensity or valence/arousal regression on SI / SDR / MDR inputs
(paper Sec. 3.3, 4.4). Scoring a trained bundle is `drkit eval-task` (stages/eval_task.py).

Input is a DR store from gen-dr (it holds the images too). ``--input`` picks channels:
``si`` the still image, ``sdr`` the last DR only, ``mdr`` everything in the store (image + DRs).
Frames are used where the label file has at least one target; missing targets are masked out of
the loss and the metrics. Validation is on ``--val`` stores, or else on a person-disjoint share
of the training people (``--val-share``), never on frames of training people.

The best checkpoint is a complete bundle for `drkit predict`: the task network, channel
normalisation, the DR networks (weights included) and the preprocessing settings.

``--arch hg_hmr`` (HG-HMR, the paper's AU network [36]; drkit/hourglass.py) regresses one heatmap
per AU, trained against Gaussians drawn at the AU's facial landmarks (read from the DR store's
``landmarks``) with the intensity as amplitude; random mirroring flips the image and its target
heatmaps together. Validation, eval-task and predict use the intensities its forward decodes
from the heatmaps, as for the other architectures.

Mirroring (``--flip``, default) makes a mirrored sample as the DR networks would see a mirrored
face: image channels flipped, DR channels taken from the store's ``mdr_mirror`` (the DRs of the
mirrored crop). Flipping stored DR maps instead, as 0.1.0 did, gives inputs no DR network
produces (DR networks are not mirror-symmetric) and made MDR models generalise worse than SI
(held-out ICC 0.29 vs 0.45 where correct mirroring gives 0.73; CHANGELOG 0.2.0). DR stores without
``mdr_mirror`` train unmirrored, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed, log
from ..archs import ARCHS, ArchContext, model_spec
from ..batching import (
    batch_generator,
    batches,
    epoch_order,
    evenly_spread,
    flip_mask,
    n_batches,
    part,
)
from ..checkpoint import Checkpoint, load_checkpoint, sha256_16
from ..configs import TrainTaskConfig, check_choices, recorded_settings
from ..contracts import (
    TASK_MONITOR,
    DRNet,
    ModelSpec,
    Result,
    TaskConfig,
)
from ..errors import DrkitError
from ..fsutil import jsonable, write_json_atomic
from ..hourglass import (
    heatmap_loss,
    heatmap_side,
    target_heatmaps,
)
from ..labels import read_labels
from ..nets import create_model, pick_device
from ..pretrained import is_pretrained
from ..store import open_store
from ..tasks import (
    TASK_RANGE,
    Batcher,
    EvalTaskResult,
    channel_stats,
    evaluate_bundle,
    labelled_frames,
    masked_mse,
    n_image_channels,
    out_of_range,
    people_in,
    person_of,
    person_split,
    population_mean,
    predict_samples,
    require_landmarks,
    score,
    select_channels,
    value_range,
)
from ..train import LoopConfig, LoopState, fit, run_folder


def _same_layout(stores) -> None:
    """All DR stores of a run must have the same channels and map size (frames are stacked)."""
    first = stores[0].typed_params
    for st in stores[1:]:
        p = st.typed_params
        if p.channels != first.channels:
            raise DrkitError(f"{st.path}: channels {p.channels} differ from {stores[0].path}'s "
                             f"{first.channels}; make both with gen-dr and the same --dr checkpoints")
        if p.map_size != first.map_size:
            raise DrkitError(f"{st.path}: maps of {p.map_size} px, {stores[0].path} has {first.map_size} px; "
                             f"remake one with `drkit gen-dr --map-size {first.map_size}`")


def _model_spec(cfg: TrainTaskConfig, in_ch: int, targets: list[str], dr: DRNet | None = None,
                n_image: int = 0) -> ModelSpec:
    """The task network of ``cfg.arch`` (drkit.archs) for these inputs and targets; ``n_image``:
    how many of the input channels (the first) are the image."""
    return model_spec(cfg.arch, ArchContext(
        in_ch=in_ch, n_out=len(targets), width=cfg.width, dropout=cfg.dropout, task=cfg.task, targets=targets,
        stacks=cfg.stacks, heatmap_sigma=cfg.heatmap_sigma, dr_model_kwargs=dr.model.kwargs if dr else None,
        n_image=n_image))


OWN_SETTINGS = {k for a in ARCHS.values() for k in a.own_settings}   # fields only some archs use


def _bundled_dr_nets(store) -> list[DRNet]:
    """The DR networks a DR store was made with, weights included, for the predict bundle."""
    nets = []
    for ref in store.typed_params.checkpoints:
        p = Path(ref.path)
        if not p.is_file() and not is_pretrained(p):
            raise DrkitError(f"DR checkpoint {p} (used to make {store.path}) is missing; the model "
                             "bundle must include it: restore it at that path")
        ck = load_checkpoint(p, "dr")
        if sha256_16(ck.path) != ref.sha256_16:
            raise DrkitError(f"DR checkpoint {p} changed since {store.path} was made with it (SHA-256 "
                             f"{sha256_16(ck.path)}, the store records {ref.sha256_16}): the bundle would "
                             "not match its inputs; rerun gen-dr with it, or restore the original")
        nets.append(ck.dr_net())
    return nets


@dataclass
class TrainTaskResult(Result):
    """The loop's final state, the run folder, and the best checkpoint's validation metrics (the
    flat dict of OUT/val_metrics.json; None on torchrun ranks other than 0)."""
    state: LoopState
    out: Path
    val: dict[str, float] | None

    def __getitem__(self, key: str):   # 0.2.0 returned {**state, "val": ...}
        return self.val if key == "val" else self.state[key]


def run(cfg: TrainTaskConfig) -> TrainTaskResult | EvalTaskResult:
    """Train; returns the loop's final state plus ``"val"``: the best checkpoint's flat
    validation metrics (also written to ``OUT/val_metrics.json``)."""
    if cfg.eval_only:   # deprecated path, kept for one release
        log.warn("train-task --eval-only is deprecated; use `drkit eval-task RUN STORE... --labels CSV`")
        m = evaluate_bundle(load_checkpoint(cfg.eval_only, "task"), cfg.input, cfg.labels,
                            cfg.val_people, cfg.missing or None, pick_device(cfg.device))
        return EvalTaskResult(m.pop("frames"), m)
    check_choices(cfg)   # task, input, arch, dr_norm, precision
    distributed.context(cfg.device)   # under torchrun: join the run; ranks > 0 log nothing
    if not cfg.out:
        raise DrkitError("-o RUN is required")
    with run_folder(cfg.out, cfg.device):   # one run at a time writes into -o (val_metrics.json too)
        return _train(cfg)


def _train_val(cfg: TrainTaskConfig, stores, val_stores, labels):
    """The labelled frames to train and validate on: --val stores, else a person split (--val-people
    or --val-share of the people), --train-people kept, at most --val-frames validation frames."""
    if val_stores:
        train_s, val_s = labelled_frames(stores, labels), labelled_frames(val_stores, labels)
        shared = {person_of(labels, v) for v in train_s.stores} & {person_of(labels, v) for v in val_s.stores}
        if shared:
            log.warn(f"validation shares people with training: {sorted(shared)[:3]}")
    else:
        if cfg.val_people:
            va_p = set(cfg.val_people)
            tr_p = set(people_in(labels, stores)) - va_p
        else:
            tr_p, va_p = person_split(labels, stores, cfg.val_share, cfg.seed)
        if cfg.train_people:
            tr_p &= set(cfg.train_people)
        train_s, val_s = labelled_frames(stores, labels, tr_p), labelled_frames(stores, labels, va_p)
        log.info(f"person split: {len(tr_p)} people train, {len(va_p)} validation ({', '.join(sorted(va_p)[:5])}"
                 + (" ..." if len(va_p) > 5 else "") + ")")
    if cfg.val_frames and len(val_s) > cfg.val_frames:
        val_s = val_s.subset(evenly_spread(len(val_s), cfg.val_frames))
        log.info(f"--val-frames: validating on {len(val_s)} frames spread evenly over the validation people")
    return train_s, val_s


def _task_config(cfg: TrainTaskConfig, labels, ch, names, mean, std, dstore, train_s) -> TaskConfig:
    """What the bundle records: inputs, normalisation, the DR store's layout, the settings that
    made it (those a resume must match), its training data and label range."""
    k = n_image_channels(names)   # the store's image channels come first
    config = TaskConfig(
        task=cfg.task, input_kind=cfg.input_kind, targets=labels.targets, channels=ch,
        store_channels=names, norm_mean=mean.tolist(), norm_std=std.tolist(), map_size=dstore.map_size,
        image=dstore.image, preprocess=dstore.face_params, missing=list(cfg.missing),
        train=jsonable(recorded_settings(cfg, ("resume", "overwrite", "device", "eval_only", "epochs", "time_budget",
                                               "patience", *(OWN_SETTINGS - set(ARCHS[cfg.arch].own_settings))))),
        # a norm with no channel to act on is not recorded: the bundle then predicts frame by frame
        dr_norm=cfg.dr_norm if any(c >= k for c in ch) else "none",
        image_norm=cfg.image_norm if any(c < k for c in ch) else "none")
    config.train["data"] = training_data(train_s, labels)
    config.value_range = value_range(cfg.task, train_s.y)
    return config


def _can_flip(cfg: TrainTaskConfig, tb, train_s) -> bool:
    """--flip, where the stores hold the mirrored face's DRs (mirroring a DR map is not the DR of
    the mirrored face)."""
    if cfg.flip and not tb.can_flip:
        log.warn(f"{', '.join(sorted({str(st.path) for st in train_s.stores.values()}))}: no mirrored DRs "
                 "(mdr_mirror; made by an older or --no-mirror gen-dr), and mirroring the stored DR maps is "
                 "not the DR of the mirrored face: training without mirroring. Rerun gen-dr --overwrite to "
                 "mirror DR inputs")
    return cfg.flip and tb.can_flip


@dataclass
class _EpochBatches:
    """train-task's batches for drkit.train.fit: ``(epoch, start, rank, world)`` -> this rank's part
    of each global batch (the whole batch in one process) and its weight, its share of the batch's
    labelled entries (the losses are means over them, so the ranks' weighted losses add up to the
    one-process loss). The mirror mask and DR dropout are drawn for the whole global batch, so a
    frame is treated alike whatever the number of ranks. ``heatmaps`` (hg_hmr): centres, map size,
    heatmap side, sigma of the targets."""
    cfg: TrainTaskConfig
    samples: Any
    batcher: Any
    flip: bool
    dr_ch: list[int]
    heatmaps: tuple | None = None

    def __call__(self, epoch: int, start: int, rank: int = 0, world: int = 1):
        cfg, flip = self.cfg, self.flip
        order = epoch_order(len(self.samples), cfg.seed, epoch)
        for b, idx in batches(order, cfg.batch_size, start):
            # mirrored samples: image channels flipped, DR channels of the mirrored face
            f = flip_mask(len(idx), batch_generator(cfg.seed, epoch, b)).numpy() if flip else None
            sl, w = part(len(idx), rank, world)
            idx = np.sort(idx)
            if world > 1:   # the losses are means over labelled entries: weight by this rank's share of them
                lab = ~np.isnan(np.asarray(self.samples.y[idx], np.float64))
                w = float(lab[sl].sum() / lab.sum()) if lab.any() else w
            idx = idx[sl]
            f = f[sl] if flip else None
            if self.heatmaps is None:
                x, y = self.batcher.get(idx, f)
                if cfg.dr_dropout:   # whole DR channels of a sample set to their mean (0 after normalising)
                    g = batch_generator(cfg.seed + 7919, epoch, b)
                    drop = (torch.rand(len(order[b * cfg.batch_size:(b + 1) * cfg.batch_size]), generator=g)
                            < cfg.dr_dropout)[sl]
                    x[drop.nonzero()[:, 0][:, None], torch.tensor(self.dr_ch)[None, :]] = 0
                yield (x, y), w
                continue
            # hg_hmr: targets from the unflipped landmarks, mirrored with their samples
            x, y, lm = self.batcher.get(idx, f)
            centres, map_size, side, sigma = self.heatmaps
            t = target_heatmaps(lm, y, centres, map_size, side, sigma)
            if flip:
                t[torch.from_numpy(f)] = t[torch.from_numpy(f)].flip(-1)
            yield (x, y, t), w


def _train(cfg: TrainTaskConfig) -> TrainTaskResult:
    hg = cfg.arch == "hg_hmr"
    stores = [open_store(p, "dr") for p in cfg.input]
    names = list(stores[0].typed_params.channels)
    val_stores = [open_store(p, "dr") for p in cfg.val or []]
    _same_layout(stores + val_stores)
    ch = select_channels(names, cfg.input_kind)
    labels = read_labels(cfg.labels, cfg.targets, tuple(cfg.missing))
    if hg:   # fail before anything is read: no AU table for a target, or an affect task
        _model_spec(cfg, len(ch), labels.targets)
    train_s, val_s = _train_val(cfg, stores, val_stores, labels)
    _warn_range(cfg, labels.targets, np.concatenate([train_s.y, val_s.y]))
    mean, std = channel_stats(train_s, ch, seed=cfg.seed, dr_norm=cfg.dr_norm, image_norm=cfg.image_norm)
    if hg:
        require_landmarks(train_s)
    dr_nets = _bundled_dr_nets(stores[0])
    n_image = n_image_channels([names[c] for c in ch])   # select_channels keeps the store's order: image first
    spec = _model_spec(cfg, len(ch), labels.targets, dr_nets[0] if dr_nets else None, n_image)
    torch.manual_seed(cfg.seed)
    model = create_model(spec.name, **spec.kwargs)
    if cfg.arch == "dr_encoder":
        n = model.init_from(dr_nets[0].state_dict)
        log.info(f"--arch dr_encoder: {n} encoder tensors from DR network T={dr_nets[0].config.T} "
                 f"(S={dr_nets[0].config.stride})")
    if cfg.init:
        _load_init(model, cfg.init)
    dstore = stores[0].typed_params
    config = _task_config(cfg, labels, ch, names, mean, std, dstore, train_s)
    template = Checkpoint(kind="task", model=spec, config=config, state_dict={}, dr_nets=dr_nets)
    log.info(f"train-task: {len(train_s)} train / {len(val_s)} validation frames, input {cfg.input_kind} "
             f"({len(ch)} channels), targets {', '.join(labels.targets)}, {cfg.arch}")
    for flag, value, kept in (("--dr-norm", cfg.dr_norm, config.dr_norm), ("--image-norm", cfg.image_norm, config.image_norm)):
        if value != kept:
            log.warn(f"train-task: {flag} {value} has no effect: input {cfg.input_kind} has no "
                     f"{'DR' if flag == '--dr-norm' else 'image'} channels")
    tb = Batcher(train_s, ch, mean, std, landmarks=hg, dr_norm=cfg.dr_norm, image_norm=cfg.image_norm)
    vb = Batcher(val_s, ch, mean, std, dr_norm=cfg.dr_norm, image_norm=cfg.image_norm)
    if tb.video_mean:   # a per-video norm: what a still image (no video to average over) subtracts
        template.population_mean = torch.from_numpy(population_mean(tb))
    nb = n_batches(len(train_s), cfg.batch_size)
    dr_ch = [k for k, c in enumerate(ch) if c >= tb.n_image]   # positions of the DR channels in x
    if cfg.dr_dropout and not (0 < cfg.dr_dropout < 1 and dr_ch):
        raise DrkitError(f"--dr-dropout {cfg.dr_dropout}: needs a probability in (0, 1) and an input with DR "
                         "channels (--input mdr or sdr)")
    flip = config.train["flip"] = _can_flip(cfg, tb, train_s)

    hm = (spec.kwargs["centres"], dstore.map_size, heatmap_side(dstore.map_size), spec.kwargs["sigma"]) if hg else None
    epoch_batches = _EpochBatches(cfg, train_s, tb, flip, dr_ch, hm)

    def step(net, batch, device):
        # net: drkit.precision.Forward (under autocast with --precision, fp32 outputs): losses in fp32
        if hg:
            x, y, t = (v.to(device) for v in batch)
            return heatmap_loss(net(x, method="heatmaps"), t, y), {}
        x, y = (t.to(device) for t in batch)
        return masked_mse(net(x), y), {}

    def validate(model, device):
        return score(cfg.task, labels.targets, predict_samples(model, vb, device, config.value_range), val_s.y)

    loop = LoopConfig(out=cfg.out, epochs=cfg.epochs, time_budget=cfg.time_budget, lr=cfg.lr,
                      betas=(0.9, 0.999), weight_decay=cfg.weight_decay, seed=cfg.seed, device=cfg.device,
                      resume=cfg.resume, overwrite=cfg.overwrite, patience=cfg.patience,
                      precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile)
    state = fit(model, loop, template, epoch_batches, nb, step, validate, monitor=TASK_MONITOR[cfg.task],
             mode="max")
    if not distributed.context(cfg.device).main:   # under torchrun rank 0 scores the best checkpoint
        return TrainTaskResult(state, cfg.out, None)
    best = load_checkpoint(cfg.out / "best.pt", "task")
    device = pick_device(cfg.device)
    final = score(cfg.task, labels.targets, predict_samples(best.build_model().to(device), vb, device,
                                                          best.config.value_range), val_s.y)
    write_json_atomic(cfg.out / "val_metrics.json", final)
    return TrainTaskResult(state, cfg.out, final)


def training_data(s, labels) -> dict:
    """What a bundle was trained on, recorded in its config (``train.data``): videos, people,
    frames, the label file, and whether every video is synthetic (made by `drkit synth`, whose
    output folder holds synth.json), so predict can warn when such a model meets real faces."""
    sources = [Path(st.video_info(v).get("source") or "") for v, st in s.stores.items()]
    synth = [any((d / "synth.json").is_file() for d in list(p.parents)[:3]) for p in sources]
    return {"videos": len(sources), "people": len({person_of(labels, v) for v in s.stores}), "frames": len(s),
            "labels": labels.path.name if labels.path else None, "synthetic": bool(synth) and all(synth)}


def _load_init(model: torch.nn.Module, path: Path) -> None:
    """Pretrained weights (a state dict, or a drkit checkpoint): layers whose name and shape
    match are loaded, the rest (e.g. a first conv with more input channels) stay as initialised."""
    from ..checkpoint import load_file
    sd = load_file(path, "not a state dict or drkit checkpoint (--init)")
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    own = model.state_dict()
    ok = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(ok, strict=False)
    log.info(f"--init {path}: loaded {len(ok)} of {len(own)} tensors")


def _warn_range(cfg: TrainTaskConfig, targets: list[str], y: np.ndarray) -> None:
    """Warn (training goes on) when labels fall outside the task's range: a wrong --task or a
    scale the metrics do not expect."""
    bad = out_of_range(cfg.task, targets, y)
    if bad:
        lo, hi = TASK_RANGE[cfg.task]
        log.warn(f"{cfg.labels}: {sum(bad.values())} label value(s) outside the --task {cfg.task} range "
                 f"{lo:g}..{hi:g} ({', '.join(f'{t}: {n}' for t, n in bad.items())}); check --task and the "
                 "label scale")
