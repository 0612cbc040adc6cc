"""`drkit train-dr`: learn a DR network with the rank loss (paper Sec. 3.2, 4.2), or one of the
fixed-target comparison methods of Sec. 4.3 (``--objective mse|perceptual|pix2pix --target
di|bdi``, drkit.objectives).

Every frame with a full window of 2T+1 frames (stride S at 25 fps, scaled by fps) is a training
sample; an epoch visits all of them once in a random order fixed by (seed, epoch). The network
sees only the centre frame; the rank loss ranks the window's frames with <d_t, V_a>, a
fixed-target objective compares d_t with the window's dynamic image. Every objective runs the
same UNet, windows, loop, checkpoints and metrics (training and validation ranking accuracy).
"""

from __future__ import annotations

import torch

from .. import distributed, log
from ..batching import batch_generator, batches, epoch_order, flip_mask, n_batches, part
from ..checkpoint import Checkpoint, load_checkpoint, sha256_16
from ..configs import TrainDRConfig, check_choices, recorded_settings
from ..contracts import DRConfig, ModelSpec
from ..errors import DrkitError, UsageError
from ..fsutil import jsonable
from ..nets import create_model
from ..objectives import ADAM, ADAM_DEFAULT, build_objective
from ..ranking import HeadOf, evaluate_windows
from ..store import open_store
from ..train import LoopConfig, LoopState, fit
from ..windows import (
    FrameCache,
    collect_multi_windows,
    collect_windows,
    no_window_reason,
    window_tensor,
)


def augmenter(cfg: TrainDRConfig, epoch: int):
    """Same random flip, brightness/contrast change and (``shift``) shift and zoom for every frame
    of a window, drawn from
    (seed, epoch, batch) so a resumed run sees the same augmentation. The numbers are drawn for
    the whole global batch of ``n`` windows and ``x`` gets those of its part ``sl`` (a rank's
    share under torchrun, drkit.batching.part): the same augmentation however the batch is split."""
    def aug(x: torch.Tensor, b: int, n: int | None = None, sl: slice = slice(None)) -> torch.Tensor:
        g = batch_generator(cfg.seed, epoch, b)
        B = x.shape[0] if n is None else n
        if cfg.flip:
            f = flip_mask(B, g)[sl]
            x[f] = x[f].flip(-1)
        if cfg.jitter:
            c = (1 + cfg.jitter * (2 * torch.rand(B, 1, 1, 1, 1, generator=g) - 1))[sl]
            o = (cfg.jitter / 2 * (2 * torch.rand(B, 1, 1, 1, 1, generator=g) - 1))[sl]
            x = ((x - 0.5) * c + 0.5 + o) * (x > 0)   # keep the zero background zero
        if cfg.shift:   # drawn after flip and jitter: runs without it see the numbers they always saw
            x = shift_zoom(x, cfg.shift * (2 * torch.rand(B, 3, generator=g) - 1)[sl])
        return x
    return aug


def shift_zoom(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Move and scale every frame of window ``i`` of ``x`` (B, N, C, H, W) alike: by ``u[i, :2]``
    of the side (x, y) and zoom ``1 + u[i, 2]`` (> 1: the face larger), background zero."""
    B, N, C, H, W = x.shape
    z = 1 / (1 + u[:, 2])
    theta = torch.zeros(B, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = z
    theta[:, :, 2] = -2 * u[:, :2]
    theta = theta.to(x.device).repeat_interleave(N, 0)
    flat = x.reshape(B * N, C, H, W)
    grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
    return torch.nn.functional.grid_sample(flat, grid, padding_mode="zeros", align_corners=False).reshape(x.shape)


# the settings only one objective uses (recorded in the checkpoint for that objective only)
OWN_SETTINGS = {"rank": ("theta", "gamma", "eps"), "perceptual": ("perceptual_weights",),
                "pix2pix": ("l1_weight", "disc_base")}


def check_objective(cfg: TrainDRConfig) -> None:
    check_choices(cfg)   # objective, target, param, precision
    if cfg.objective == "rank" and cfg.target:
        raise UsageError("--objective rank learns its own DR and takes no --target; --target is for "
                         "mse, perceptual and pix2pix")
    if cfg.objective != "rank":
        if not cfg.target:
            raise UsageError(f"--objective {cfg.objective} needs --target di or bdi (the dynamic image "
                             "of the window forward or backward in time)")
    if cfg.objective == "perceptual" and not cfg.perceptual_weights:
        raise UsageError("--objective perceptual needs --perceptual-weights PATH: a torchvision VGG-16 "
                         "state dict (ImageNet weights are not downloaded)")
    if cfg.perceptual_weights and cfg.objective != "perceptual":
        raise UsageError("--perceptual-weights is only used with --objective perceptual")
    if cfg.objective == "pix2pix" and cfg.net_size < 32:
        raise UsageError(f"--objective pix2pix needs --net-size >= 32 (the PatchGAN's 4 convolutions), not {cfg.net_size}")


def heads_of(cfg: TrainDRConfig) -> list[tuple[int, int]]:
    """The (T, stride) of each DR the network learns: ``--heads``, else (--T, --stride)."""
    heads = [tuple(map(int, h)) for h in cfg.heads] if cfg.heads else [(cfg.T, cfg.stride)]
    if any(T < 1 or S < 1 for T, S in heads):
        raise UsageError("--T, --stride and every --heads window must be >= 1")
    if len(set(heads)) != len(heads):
        raise UsageError(f"--heads: a window is given twice ({heads})")
    if len(heads) > 1 and cfg.objective != "rank":
        raise UsageError("--heads (a multi-scale network) is trained with the rank loss only")
    return heads


def _dr_config(cfg: TrainDRConfig, heads: list[tuple[int, int]], lr: float, stores) -> DRConfig:
    """What the checkpoint records: the windows, net size, objective, and the settings that made
    it (those of other objectives left out; hashes of the files it read)."""
    others = {k for o, keys in OWN_SETTINGS.items() if o != cfg.objective for k in keys}
    train = recorded_settings(cfg, ("stores", "out", "val", "resume", "overwrite", "device", "cache_mb", "epochs",
                                    "time_budget", "T", "stride", "net_size", "objective", "target", "heads", *others))
    train["lr"] = lr
    if cfg.perceptual_weights:
        train["perceptual_weights_sha256_16"] = sha256_16(cfg.perceptual_weights)
    if cfg.init:
        train["init_sha256_16"] = sha256_16(load_checkpoint(cfg.init, "dr").path)
    return DRConfig(T=cfg.T, stride=cfg.stride, net_size=cfg.net_size, objective=cfg.objective,
                    target=cfg.target, train=jsonable({**train, "train_stores": [s.path for s in stores]}),
                    heads=[list(h) for h in heads] if len(heads) > 1 else [])


def run(cfg: TrainDRConfig) -> LoopState:
    distributed.context(cfg.device)   # under torchrun: join the run; ranks > 0 log nothing
    heads = heads_of(cfg)
    multi = len(heads) > 1
    cfg.T, cfg.stride = heads[0]
    check_objective(cfg)
    if not 0 <= cfg.shift < 0.5:
        raise UsageError(f"--shift {cfg.shift}: give a fraction of the side in [0, 0.5), e.g. 0.05")
    if cfg.net_size % 2 ** cfg.depth:
        raise UsageError(f"--net-size {cfg.net_size} must be divisible by 2**depth = {2 ** cfg.depth}")
    stores = [open_store(p, "faces") for p in cfg.stores]
    ws = collect_multi_windows(stores, heads) if multi else collect_windows(stores, cfg.T, cfg.stride)
    if len(ws) == 0:
        T, S = max(heads, key=lambda h: h[0] * h[1])
        raise DrkitError(f"no full window in the training stores: {no_window_reason(stores, T, S)}")
    val_stores = [open_store(p, "faces") for p in cfg.val or []]
    train_ids = set(ws.stores)
    clash = train_ids & {v for s in val_stores for v in s.videos}
    if clash:
        raise DrkitError(f"validation stores share videos with the training stores: {sorted(clash)[:3]}")
    what = ", ".join(f"T={T} S={S}" for T, S in heads)
    log.info(f"train-dr: {len(ws)} windows ({what}{', one network' if multi else ''}) from {len(train_ids)} videos")
    spec = ModelSpec("dr_unet", {"base": cfg.base, "depth": cfg.depth, "param": cfg.param,
                                 "zero_mean": cfg.zero_mean, **({"heads": len(heads)} if multi else {})})
    lr, betas = ADAM.get(cfg.objective, ADAM_DEFAULT)
    lr = cfg.lr or lr
    torch.manual_seed(cfg.seed)
    model = create_model(spec.name, **spec.kwargs)
    if cfg.init:
        _init_from(model, cfg.init)
    objective, aux = build_objective(cfg, lr, betas)   # reads and checks --perceptual-weights
    config = _dr_config(cfg, heads, lr, stores)
    cache = FrameCache(ws.stores, max_bytes=cfg.cache_mb << 20)
    positions = ws.positions if multi else [ws.positions]

    def epoch_batches(epoch: int, start: int, rank: int = 0, world: int = 1):
        """This rank's part of each global batch (the whole batch in one process) and its weight:
        one window tensor per head (the same augmentation for a sample's windows)."""
        order, aug = epoch_order(len(ws), cfg.seed, epoch), augmenter(cfg, epoch)
        for b, idx in batches(order, cfg.batch_size, start):
            sl, w = part(len(idx), rank, world)
            xs = [aug(window_tensor([cache.get(ws.videos[i], pos[i]) for i in idx[sl]], cfg.net_size), b, len(idx), sl)
                  for pos in positions]
            yield (xs if multi else xs[0]), w

    def step(model, V, device):
        if not multi:
            V = V.to(device, non_blocking=True)
            return objective(model(V[:, cfg.T]), V)
        Vs = [v.to(device, non_blocking=True) for v in V]
        d = model(Vs[0][:, heads[0][0]])            # every head's window has the same centre frame
        losses, stats = [], {}
        for k, ((T, S), v) in enumerate(zip(heads, Vs)):
            loss, st = objective(d[:, 3 * k:3 * k + 3], v)
            losses.append(loss)
            stats[f"acc_T{T}S{S}"] = st["acc"]
        stats["acc"] = sum(stats.values()) / len(heads)
        return sum(losses) / len(heads), stats

    validate = None
    if val_stores:
        def validate(model, device):
            out = {}
            for k, (T, S) in enumerate(heads):
                r = evaluate_windows(val_stores, T, S, ["dr", "identity"], HeadOf(model, k) if multi else model,
                                     cfg.net_size, device, max_windows=cfg.val_windows)
                sfx = f"_T{T}S{S}" if multi else ""
                out.update({f"acc{sfx}": r["dr"]["accuracy"], f"identity_acc{sfx}": r["identity"]["accuracy"]})
            if multi:
                out["acc"] = sum(out[f"acc_T{T}S{S}"] for T, S in heads) / len(heads)
            return out

    loop = LoopConfig(out=cfg.out, epochs=cfg.epochs, time_budget=cfg.time_budget, lr=lr, betas=betas,
                      seed=cfg.seed, device=cfg.device, resume=cfg.resume, overwrite=cfg.overwrite,
                      precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile)
    template = Checkpoint(kind="dr", model=spec, config=config, state_dict={})
    return fit(model, loop, template, epoch_batches, n_batches(len(ws), cfg.batch_size), step, validate,
               monitor="acc", mode="max", aux=aux)


def _init_from(model: torch.nn.Module, path) -> None:
    """Start from a trained DR network's weights (a curriculum over T: a T=9 network from a T=5
    one): every tensor whose name and shape match; an output layer of another number of heads
    is taken per head from the source's first head."""
    src = load_checkpoint(path, "dr").state_dict
    own = model.state_dict()
    take = {}
    for k, v in src.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            take[k] = v
        elif k.startswith("unet.head.") and own[k].shape[1:] == v.shape[1:] and v.shape[0] == 3:
            take[k] = v.repeat(own[k].shape[0] // 3, *[1] * (v.dim() - 1))
    model.load_state_dict(take, strict=False)
    log.info(f"--init {path}: {len(take)} of {len(own)} tensors")
