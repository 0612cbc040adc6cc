"""Training objectives of `drkit train-dr --objective`: each is a loss of the DR d = net(I_t) and
the window V (B, 2T+1, 3, H, W) it belongs to, ``loss(d, V) -> (loss, stats)``, run by the one
training loop (drkit.train.fit); ``stats`` always hold ``acc``, the training ranking accuracy.

- ``rank`` (default): the rank loss of Eq. 3 (drkit.losses); the network designs its own DR.
- Fixed-target comparison methods of paper Sec. 4.3 / Fig. 4, which learn to reproduce the dynamic
  image of the window (``--target di``: forward in time, ``bdi``: backward):
  ``mse`` UNet(MSE), mean squared error to the target; ``perceptual`` UNet(P), the feature
  reconstruction loss of Johnson et al.; ``pix2pix``, the conditional GAN of Isola et al.

Target (``dynamic_image_target``): approximate rank pooling (drkit.ranking.di_dr, the ``di``
baseline of rank-eval) of the window's 2T+1 frames in time order (di) or reversed (bdi, the di of
the reversed window), then normalised per window: its mean over channels and pixels removed and
divided by its RMS. A raw DI's range grows with T (so do the weights alpha_t) and with how much
the face moves; normalised, every target has zero mean (like the DRNet's output, whose mean is
removed) and unit RMS, whatever T. Scaling does not change how a map ranks frames. The
centre frame is subtracted from the window before pooling (the weights sum to zero, so only
rounding changes), so a motionless window gets exactly a zero target; a nearly still one is scaled up
like any other (per-window normalisation gives every window the same weight in the loss).

Perceptual input: VGG-16 expects RGB images in [0, 1] normalised with the ImageNet mean and std.
The DR and the target are not images; both go through the same fixed map p = 0.5 + m / 6 (a
unit-RMS target's +-3 RMS onto [0, 1], not clipped), then the ImageNet normalisation. One fixed
map compares like with like and ties the prediction's scale to the target's; scaling each map
to [0, 1] on its own would leave the prediction's scale and offset free. The VGG-16 weights come
from a file (``--perceptual-weights``, a torchvision VGG-16 state dict; the results depend on
them: ImageNet weights reproduce the paper's setting).

pix2pix: the DR UNet is the generator; a 70x70 PatchGAN (drkit.nets.PatchGAN) sees the centre
image (as 2I - 1) stacked with the target (real) or the DR (fake). Each step first updates the
discriminator (binary cross-entropy, halved), then returns the generator loss
GAN + l1_weight * L1 (l1_weight 100); both use Adam lr 2e-4, betas (0.5, 0.999) (pix2pix). The
discriminator and its optimizer are the ``aux`` state fit keeps in last.pt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import DrkitError
from .losses import pair_deltas, rank_loss, scores
from .nets import VGG16, PatchGAN
from .ranking import di_dr

# Adam (lr, betas) per objective: the paper's for the UNet, pix2pix's for pix2pix
ADAM = {"pix2pix": (2e-4, (0.5, 0.999))}
ADAM_DEFAULT = (1e-3, (0.5, 0.9))


def dynamic_image_target(V: torch.Tensor, target: str) -> torch.Tensor:
    """The fixed target of a window (B, N, C, H, W): its dynamic image forward (``di``) or
    backward (``bdi``) in time, per window zero mean and unit RMS (module docstring)."""
    V = V - V[:, V.shape[1] // 2, None]  # the weights sum to 0: only rounding changes
    d = di_dr(V if target == "di" else V.flip(1))
    d = d - d.mean(dim=(1, 2, 3), keepdim=True)
    return d / d.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)


def mse_loss(d: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return F.mse_loss(d, y), {}


# ------------------------------------------------------------------ perceptual (Johnson et al.)

VGG_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}   # torchvision indices
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_vgg16_features(path: str | Path) -> torch.nn.Sequential:
    """drkit.nets.VGG16's ``features`` (torchvision's layer indices) up to relu4_3, frozen, with
    the weights of a torchvision VGG-16 state dict file (keys ``features.0.weight`` ...), checked
    key by key; ``classifier.*`` and the later feature layers of the file are not used."""
    with torch.device("meta"):            # layout only: no memory, no initialisation
        full = VGG16(in_ch=3).features
    known = {f"features.{k}": v.shape for k, v in full.state_dict().items()}
    keep = max(VGG_LAYERS.values()) + 1
    need = {k: s for k, s in known.items() if int(k.split(".")[1]) < keep}
    from .checkpoint import load_file
    if not Path(path).is_file():
        raise DrkitError(f"{path}: no such file (--perceptual-weights)")
    sd = load_file(path, "not a state dict; --perceptual-weights takes a torchvision VGG-16 state dict")
    if not isinstance(sd, dict):
        raise DrkitError(f"{path}: holds a {type(sd).__name__}, not a torchvision VGG-16 state dict")
    missing = [k for k in need if k not in sd]
    wrong = [f"{k} {tuple(getattr(sd[k], 'shape', ()))} (expected {tuple(s)})"
             for k, s in need.items() if k in sd and getattr(sd[k], "shape", None) != s]
    unknown = [k for k in sd if k.startswith("features.") and k not in known]
    if missing or wrong or unknown:
        problems = [f"{what}: {_some(keys)}" for what, keys in
                    (("missing", missing), ("wrong shape", wrong), ("unexpected", unknown)) if keys]
        raise DrkitError(f"{path}: not a torchvision VGG-16 state dict ({'; '.join(problems)})")
    feats = full[:keep].to_empty(device="cpu")
    feats.load_state_dict({k[len("features."):]: sd[k] for k in need})
    return feats.eval().requires_grad_(False)


class PerceptualLoss:
    """Sum over relu1_2, relu2_2, relu3_3, relu4_3 of the mean squared difference of VGG-16
    activations (Johnson et al.'s feature reconstruction loss, each layer / (C_j H_j W_j))."""

    def __init__(self, features: torch.nn.Sequential):
        self.features = features
        self.taps = set(VGG_LAYERS.values())

    def activations(self, m: torch.Tensor) -> list[torch.Tensor]:
        mean, std = (torch.tensor(v, device=m.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        x, out = ((0.5 + m / 6) - mean) / std, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def __call__(self, d: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.features.to(d.device)
        with torch.no_grad():
            fy = self.activations(y)
        return sum(F.mse_loss(a, b) for a, b in zip(self.activations(d), fy)), {}


# ------------------------------------------------------------------ pix2pix (Isola et al.)

class Pix2Pix:
    """The conditional-GAN loss of the generator, with the discriminator and its optimizer.
    Also the ``aux`` state of drkit.train.fit: ``to``, ``state_dict``, ``load_state_dict``.

    Under torchrun fit calls ``distribute(wrap)`` (the discriminator's update then goes through
    DistributedDataParallel: real and fake in one forward, gradients averaged over the ranks)
    and sets ``loss_scale`` before each step (the rank's share of the global batch times the
    number of ranks), so the discriminator's step is the one-process step on the global batch."""

    distributed_ok = True

    def __init__(self, l1_weight: float = 100.0, base: int = 64, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999)):
        self.l1_weight = l1_weight
        self.spec = {"name": "patchgan", "kwargs": {"in_ch": 6, "base": base}}
        self.D = PatchGAN(**self.spec["kwargs"])
        self.opt = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        self.D_sync: torch.nn.Module | None = None    # DDP(D) under torchrun
        self.loss_scale = 1.0

    def distribute(self, wrap) -> None:
        self.D_sync = wrap(self.D)

    def to(self, device) -> Pix2Pix:
        self.D.to(device)
        return self

    def state_dict(self) -> dict:
        return {"model": self.spec, "discriminator": {k: v.detach().cpu() for k, v in self.D.state_dict().items()},
                "optimizer": self.opt.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.D.load_state_dict(d["discriminator"])
        self.opt.load_state_dict(d["optimizer"])

    def __call__(self, d: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        def logits(out):
            return self.D(torch.cat([2 * x - 1, out], 1))

        def bce(z, real: bool):
            return F.binary_cross_entropy_with_logits(z, torch.full_like(z, float(real)))
        self.D.requires_grad_(True)            # 1. discriminator: real (x, y) vs fake (x, d)
        if self.D_sync is None:
            loss_d = 0.5 * (bce(logits(y), True) + bce(logits(d.detach()), False))
        else:   # one DDP forward for both (GroupNorm is per sample: the same logits)
            z = self.D_sync(torch.cat([torch.cat([2 * x - 1, y], 1), torch.cat([2 * x - 1, d.detach()], 1)]))
            loss_d = 0.5 * (bce(z[:len(x)], True) + bce(z[len(x):], False))
        self.opt.zero_grad(set_to_none=True)
        (loss_d * self.loss_scale if self.loss_scale != 1.0 else loss_d).backward()
        self.opt.step()
        self.D.requires_grad_(False)           # 2. generator loss (fit takes its step)
        gan, l1 = bce(logits(d), True), F.l1_loss(d, y)
        return gan + self.l1_weight * l1, {"d_loss": float(loss_d.detach()), "g_gan": float(gan.detach()),
                                              "l1": float(l1.detach())}


# ------------------------------------------------------------------ by name

FIXED = {"mse": lambda cfg, lr, betas: mse_loss,
         "perceptual": lambda cfg, lr, betas: PerceptualLoss(load_vgg16_features(cfg.perceptual_weights)),
         "pix2pix": lambda cfg, lr, betas: Pix2Pix(cfg.l1_weight, cfg.disc_base, lr, betas)}


def build_objective(cfg, lr: float, betas: tuple[float, float]) -> tuple[Callable, Pix2Pix | None]:
    """``cfg.objective`` (a TrainDRConfig) as ``loss(d, V) -> (loss, stats)``, and the extra
    training state fit saves and resumes (the pix2pix discriminator), else None."""
    if cfg.objective == "rank":
        def rank(d, V):
            loss, delta = rank_loss(d, V, cfg.theta, cfg.gamma, cfg.eps)
            return loss, {"acc": float((delta > 0).float().mean())}
        return rank, None
    fixed = FIXED[cfg.objective](cfg, lr, betas)

    def to_target(d, V):
        T = (V.shape[1] - 1) // 2
        loss, stats = fixed(d, dynamic_image_target(V, cfg.target), V[:, T])
        delta = pair_deltas(scores(d.detach(), V), T)
        return loss, {"acc": float((delta > 0).float().mean()), **stats}
    return to_target, fixed if isinstance(fixed, Pix2Pix) else None
