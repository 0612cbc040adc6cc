"""Networks, created by name from one registry (``create_model``); checkpoints store the name
and kwargs, so ``create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])`` rebuilds them.

- ``dr_unet``: the DR network (paper Sec. 4.2): a UNet mapping a face crop (B, 3, H, W) in
  [0, 1] to a same-size 3-channel dynamic representation d_t.
- ``vgg16``: VGG-16 (configuration D) regression network, as used for affect in the paper.
- ``small_cnn``: a small CNN regressor that trains in minutes on a CPU.
- ``patchgan``: the 70x70 PatchGAN discriminator of pix2pix (`drkit train-dr --objective pix2pix`).
- ``dr_encoder``: a regressor on the DR UNet's encoder, initialised from a trained DR network
  (`drkit train-task --arch dr_encoder`): the self-supervised features as a starting point.
- ``small_drfeat``: the small CNN on the image, with the DR channels entering only as features (each
  averaged over a coarse grid) beside its own: DR features instead of maps.
- ``hg_hmr``: HG-HMR, an hourglass regressing one heatmap per AU (drkit.hourglass, the paper's
  [36]); it returns the AU intensities decoded from its heatmaps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hourglass import HourglassHMR


def _norm(ch: int) -> nn.Module:
    return nn.GroupNorm(min(8, ch), ch)   # batch-size independent: train and eval behave alike


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``. Without autograd it is computed as two strided maxima, which gives
    the same values bit for bit at a tenth of the time on the CPU (torch's pooling kernel was 7-11%
    of a DR network's inference); with autograd it is torch's own, so training is unchanged."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    x = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(x[..., 0::2], x[..., 1::2])


class MaxPool2(nn.Module):
    """``nn.MaxPool2d(2)`` through ``max_pool2`` (no parameters: checkpoints are unaffected)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2(x)


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Ronneberger et al. UNet: ``depth`` poolings, ``base`` channels doubling per level,
    bilinear upsampling, skip connections. Input side must be divisible by 2**depth."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, base: int = 16, depth: int = 3):
        super().__init__()
        chs = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_DoubleConv(in_ch, chs[0])] +
                                  [_DoubleConv(chs[i], chs[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([_DoubleConv(chs[i + 1] + chs[i], chs[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chs[0], out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else max_pool2(x))
            skips.append(x)
        skips.pop()
        for block in self.up:
            s = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=s.shape[-2:], mode="bilinear",
                                               align_corners=False), s], 1))
        return self.head(x)


class DRNet(nn.Module):
    """Image -> dynamic representation d_t (same size, 3 channels).

    ``param="residual"`` (default): d = (I - mean I) + UNet(I), i.e. the network starts from the
    identity baseline (a strong ranker on real faces) and learns a correction; the last layer is
    zero-initialised so training starts exactly at the baseline. ``param="direct"``: d = UNet(I),
    as in the paper. With ``zero_mean`` the mean of d over pixels and channels is removed, which
    makes the scores <d, V_a> blind to global brightness changes between frames."""

    def __init__(self, base: int = 16, depth: int = 3, param: str = "residual", zero_mean: bool = True,
                 heads: int = 1):
        super().__init__()
        if param not in ("residual", "direct"):
            raise ValueError(f"param must be 'residual' or 'direct', not {param!r}")
        if heads < 1:
            raise ValueError(f"heads must be >= 1, not {heads}")
        self.param, self.zero_mean, self.heads = param, zero_mean, heads
        self.unet = UNet(3, 3 * heads, base, depth)
        if param == "residual":
            nn.init.zeros_(self.unet.head.weight)
            nn.init.zeros_(self.unet.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3 * heads, H, W): one 3-channel DR per head, in head order (the
        multi-scale network of `train-dr --heads`: one shared UNet, a 1x1 output per window)."""
        d = self.unet((x - 0.5) / 0.5)
        if self.heads > 1:
            B, _, H, W = d.shape
            d = d.view(B, self.heads, 3, H, W)
            if self.param == "residual":
                d = d + (x - x.mean(dim=(1, 2, 3), keepdim=True))[:, None]
            if self.zero_mean:
                d = d - d.mean(dim=(2, 3, 4), keepdim=True)
            return d.reshape(B, 3 * self.heads, H, W)
        if self.param == "residual":
            d = d + (x - x.mean(dim=(1, 2, 3), keepdim=True))
        if self.zero_mean:
            d = d - d.mean(dim=(1, 2, 3), keepdim=True)
        return d


class VGG16(nn.Module):
    """VGG-16 (Simonyan & Zisserman, configuration D) with a regression head of ``n_out``.
    ``in_ch`` = 3 (image), 3 (DR) or 6 / 9 (MDR). Adaptive pooling accepts any input size."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, in_ch: int = 3, n_out: int = 1, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        layers, c = [], in_ch
        for v in self.CFG:
            if v == "M":
                layers.append(MaxPool2())
            else:
                w = max(8, int(v * width))
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
                c = w
        self.features = nn.Sequential(*layers)
        hid = max(64, int(4096 * width))
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 49, hid), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hid, hid), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hid, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def small_cnn_features(in_ch: int, width: int) -> tuple[nn.Sequential, int]:
    """The small CNN's four conv blocks (conv-norm-ReLU-pool; width, 2x, 4x, 4x channels) and
    their output channels: SmallCNN's and SmallDRFeatures' image path (parameter names
    ``features.*`` in both)."""
    layers, c = [], in_ch
    for i in range(4):
        w = width * 2 ** min(i, 2)
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), _norm(w), nn.ReLU(inplace=True), MaxPool2()]
        c = w
    return nn.Sequential(*layers), c


class SmallCNN(nn.Module):
    """Four conv blocks (conv-norm-ReLU-pool) and an MLP head on a 4x4 map, which keeps where on
    the face a pattern is (brows vs mouth): trains in minutes on a CPU."""

    def __init__(self, in_ch: int = 3, n_out: int = 1, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.features, c = small_cnn_features(in_ch, width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(c * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallDRFeatures(nn.Module):
    """The small CNN on the first ``n_image`` channels (the image); the other channels (DRs) are
    each averaged over a ``grid`` x ``grid`` grid of the face and enter the MLP head as features
    (through one linear layer) beside the CNN's 4x4 map: the DRs say where on the face and how
    much the face is moving, not the fine detail that also identifies the person."""

    def __init__(self, in_ch: int = 12, n_out: int = 1, width: int = 16, dropout: float = 0.2,
                 n_image: int = 3, grid: int = 4, dr_features: int = 64):
        super().__init__()
        if not 0 < n_image < in_ch:
            raise ValueError(f"small_drfeat needs image and DR channels: n_image {n_image} of {in_ch}")
        self.n_image = n_image
        self.features, c = small_cnn_features(n_image, width)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.dr = nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
                                nn.Linear((in_ch - n_image) * grid * grid, dr_features), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c * 16 + dr_features, 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.features(x[:, :self.n_image]))
        return self.head(torch.cat([f, self.dr(x[:, self.n_image:])], 1))


class DREncoderRegressor(nn.Module):
    """The encoder of a DR network's UNet (same blocks, same parameter names ``down.*`` as
    ``unet.down.*`` in a DR checkpoint) and the small CNN's head (4x4 map, MLP). ``init_from`` a
    DR state dict copies the encoder; with ``in_ch`` > 3 (image + DR channels) the first
    convolution's extra input channels start at zero, so training starts from the image-only
    network."""

    def __init__(self, in_ch: int = 3, n_out: int = 1, base: int = 16, depth: int = 3, dropout: float = 0.2):
        super().__init__()
        chs = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_DoubleConv(in_ch, chs[0])] +
                                  [_DoubleConv(chs[i], chs[i + 1]) for i in range(depth)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(chs[-1] * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else max_pool2(x))
        return self.head(x)

    def init_from(self, dr_state: dict[str, torch.Tensor]) -> int:
        """Copy the encoder of a DR network (``unet.down.*``); returns the tensors copied."""
        own, n = self.state_dict(), 0
        with torch.no_grad():
            for k, v in dr_state.items():
                if not k.startswith("unet.down."):
                    continue
                name = k[len("unet."):]
                if name not in own:
                    continue
                t = own[name]
                if t.shape == v.shape:
                    t.copy_(v)
                elif t.dim() == 4 and t.shape[0] == v.shape[0] and t.shape[2:] == v.shape[2:] and t.shape[1] > v.shape[1]:
                    t.zero_()
                    t[:, :v.shape[1]] = v          # image channels from the DR net, the rest from zero
                else:
                    continue
                n += 1
        return n


class PatchGAN(nn.Module):
    """The 70x70 PatchGAN discriminator of pix2pix (Isola et al.): C64-C128-C256-C512 (4x4
    convolutions, strides 2, 2, 2, 1, LeakyReLU 0.2, no norm on the first) and a 4x4 convolution
    to one logit per 70x70 patch. ``in_ch``: the conditioning image and the real or generated
    output, stacked. GroupNorm like the other drkit nets (pix2pix: BatchNorm at batch size 1)."""

    def __init__(self, in_ch: int = 6, base: int = 64, n_layers: int = 3):
        super().__init__()
        layers, c = [nn.Conv2d(in_ch, base, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)], base
        for i in range(1, n_layers + 1):
            w = base * 2 ** min(i, 3)
            layers += [nn.Conv2d(c, w, 4, 2 if i < n_layers else 1, 1, bias=False), _norm(w),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = w
        self.net = nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


REGISTRY = {"dr_unet": DRNet, "vgg16": VGG16, "small_cnn": SmallCNN, "patchgan": PatchGAN,
            "hg_hmr": HourglassHMR, "dr_encoder": DREncoderRegressor, "small_drfeat": SmallDRFeatures}


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name](**kwargs)


def pick_device(want: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu."""
    if want != "auto":
        return torch.device(want)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
