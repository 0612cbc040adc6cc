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

from dataclasses import asdict

import torch

from .. import distributed, log
from ..batching import batch_generator, batches, epoch_order, flip_mask, n_batches, part
from ..checkpoint import Checkpoint, sha256_16
from ..configs import TrainDRConfig
from ..contracts import DRConfig, ModelSpec, Objective, Param, Target, check_choice
from ..errors import DrkitError, UsageError
from ..fsutil import jsonable
from ..nets import create_model
from ..objectives import ADAM, ADAM_DEFAULT, build_objective
from ..ranking import evaluate_windows
from ..store import open_store
from ..train import LoopConfig, fit
from ..windows import FrameCache, collect_windows, no_window_reason, window_tensor


def augmenter(cfg: TrainDRConfig, epoch: int):
    """Same random flip and brightness/contrast change for every frame of a window, drawn from
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
        return x
    return aug


# the settings only one objective uses (recorded in the checkpoint for that objective only)
OWN_SETTINGS = {"rank": ("theta", "gamma", "eps"), "perceptual": ("perceptual_weights",),
                "pix2pix": ("l1_weight", "disc_base")}


def check_objective(cfg: TrainDRConfig) -> None:
    check_choice(cfg.objective, Objective, "--objective")
    if cfg.objective == "rank" and cfg.target:
        raise UsageError("--objective rank learns its own DR and takes no --target; --target is for "
                         "mse, perceptual and pix2pix")
    if cfg.objective != "rank":
        if not cfg.target:
            raise UsageError(f"--objective {cfg.objective} needs --target di or bdi (the dynamic image "
                             "of the window forward or backward in time)")
        check_choice(cfg.target, Target, "--target")
    if cfg.objective == "perceptual" and not cfg.perceptual_weights:
        raise UsageError("--objective perceptual needs --perceptual-weights PATH: a torchvision VGG-16 "
                         "state dict (ImageNet weights are not downloaded)")
    if cfg.perceptual_weights and cfg.objective != "perceptual":
        raise UsageError("--perceptual-weights is only used with --objective perceptual")
    if cfg.objective == "pix2pix" and cfg.size < 32:
        raise UsageError(f"--objective pix2pix needs --size >= 32 (the PatchGAN's 4 convolutions), not {cfg.size}")


def run(cfg: TrainDRConfig) -> dict:
    distributed.context(cfg.device)   # under torchrun: join the run; ranks > 0 log nothing
    if cfg.T < 1 or cfg.stride < 1:
        raise UsageError("--T and --stride must be >= 1")
    check_choice(cfg.param, Param, "--param")
    check_objective(cfg)
    if cfg.size % 2 ** cfg.depth:
        raise UsageError(f"--size {cfg.size} must be divisible by 2**depth = {2 ** cfg.depth}")
    stores = [open_store(p, "faces") for p in cfg.stores]
    ws = collect_windows(stores, cfg.T, cfg.stride)
    if len(ws) == 0:
        raise DrkitError(f"no full window in the training stores: {no_window_reason(stores, cfg.T, cfg.stride)}")
    val_stores = [open_store(p, "faces") for p in cfg.val or []]
    train_ids = set(ws.stores)
    clash = train_ids & {v for s in val_stores for v in s.videos}
    if clash:
        raise DrkitError(f"validation stores share videos with the training stores: {sorted(clash)[:3]}")
    log.info(f"train-dr: {len(ws)} windows (T={cfg.T}, S={cfg.stride}) from {len(train_ids)} videos")
    spec = ModelSpec("dr_unet", {"base": cfg.base, "depth": cfg.depth, "param": cfg.param,
                                 "zero_mean": cfg.zero_mean})
    lr, betas = ADAM.get(cfg.objective, ADAM_DEFAULT)
    lr = cfg.lr or lr
    torch.manual_seed(cfg.seed)
    model = create_model(spec.name, **spec.kwargs)
    objective, aux = build_objective(cfg, lr, betas)   # reads and checks --perceptual-weights
    others = {k for o, keys in OWN_SETTINGS.items() if o != cfg.objective for k in keys}
    train = {k: v for k, v in asdict(cfg).items()
             if k not in ("stores", "out", "val", "resume", "overwrite", "device", "cache_mb", "epochs",
                          "time_budget", "T", "stride", "size", "objective", "target", *others)}
    train["lr"] = lr
    if cfg.perceptual_weights:
        train["perceptual_weights_sha256_16"] = sha256_16(cfg.perceptual_weights)
    config = DRConfig(T=cfg.T, stride=cfg.stride, net_size=cfg.size, objective=cfg.objective,
                      target=cfg.target, train=jsonable({**train, "train_stores": [s.path for s in stores]}))
    cache = FrameCache(ws.stores, max_bytes=cfg.cache_mb << 20)

    def epoch_batches(epoch: int, start: int, rank: int = 0, world: int = 1):
        """This rank's part of each global batch (the whole batch in one process) and its weight."""
        order, aug = epoch_order(len(ws), cfg.seed, epoch), augmenter(cfg, epoch)
        for b, idx in batches(order, cfg.batch_size, start):
            sl, w = part(len(idx), rank, world)
            x = window_tensor([cache.get(ws.videos[i], ws.positions[i]) for i in idx[sl]], cfg.size)
            yield aug(x, b, len(idx), sl), w

    def step(model, V, device):
        V = V.to(device, non_blocking=True)
        return objective(model(V[:, cfg.T]), V)

    validate = None
    if val_stores:
        def validate(model, device):
            r = evaluate_windows(val_stores, cfg.T, cfg.stride, ["dr", "identity"], model,
                                 cfg.size, device, max_windows=cfg.val_windows)
            return {"acc": r["dr"]["accuracy"], "identity_acc": r["identity"]["accuracy"]}

    loop = LoopConfig(out=cfg.out, epochs=cfg.epochs, time_budget=cfg.time_budget, lr=lr, betas=betas,
                      seed=cfg.seed, device=cfg.device, resume=cfg.resume, overwrite=cfg.overwrite,
                      precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile)
    template = Checkpoint(kind="dr", model=spec, config=config, state_dict={})
    return fit(model, loop, template, epoch_batches, n_batches(len(ws), cfg.batch_size), step, validate,
               monitor="acc", mode="max", aux=aux)
