"""Numeric precision and memory layout of the networks, one place for every stage
(``--precision``, ``--channels-last``, ``--compile`` of train-dr, train-task, gen-dr, predict).

- ``fp32``: no autocast (the default; bit-for-bit the results of drkit 0.1).
- ``bf16``: ``torch.autocast`` with bfloat16, on CPU and on CUDA GPUs that support it.
- ``fp16``: ``torch.autocast`` with float16, CUDA only; training adds a gradient scaler.

Losses and metrics are computed in fp32: callers cast the network output with ``.float()``
before the rank loss, the task losses and every metric.
"""

from __future__ import annotations

import contextlib

import torch

from .contracts import PrecisionName, check_choice
from .errors import DrkitError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str, device: torch.device, warn: bool = True) -> str:
    """The precision, checked: a UsageError if it is not one of PrecisionName, a DrkitError if
    ``device`` cannot run it, and (``warn``) a warning if it runs slower than fp32 there."""
    p = check_choice(precision, PrecisionName, "--precision")
    if p == "fp16" and device.type != "cuda":
        raise DrkitError(f"--precision fp16 needs a CUDA device (this run is on {device.type}); "
                         "use --precision bf16 on a CPU")
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DrkitError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support "
                         "bfloat16; use --precision fp16")
    if warn:
        warn_if_slow(p, device)
    return p


def autocast(precision: str, device: torch.device):
    """A context manager running the networks at ``precision`` on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """Denormal (subnormal) floats flushed to zero in CPU arithmetic for the block, the default
    (off) restored after. Weights that weight decay or a dead unit drive towards zero pass through
    the denormal range (below 1.2e-38), where x86 CPUs compute many times slower: a third of a
    train-task network's weights were denormal by its 20th epoch, and its training steps ran 6x
    slower than with flush-to-zero (CHANGELOG 0.3.0). Values that small change no result. No-op
    on other devices and where the CPU cannot flush."""
    on = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (a pass-through scaler otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def prepare(model: torch.nn.Module, channels_last: bool = False, compile: bool = False):
    """The model in channels_last memory format and/or wrapped by ``torch.compile``. The returned
    object is what to call; keep the original module for state dicts and checkpoints."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


def to_float(out):
    """Floating-point tensors of a network's output (a tensor, or a list / tuple of them) as fp32;
    fp32 tensors are returned as they are (no copy)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(to_float(o) for o in out)
    return out


class Forward(torch.nn.Module):
    """What a training loop calls instead of the network: runs ``net.<method>(*args)`` (``forward``
    by default) under :func:`autocast` and returns fp32 outputs, so everything after the network
    (rank loss, task losses, metrics) runs in fp32, outside autocast. With ``channels_last``,
    4-d inputs are handed over in channels_last memory format.

    ``net`` may be the ``torch.compile`` wrapper of a module; the parameters are the module's.
    One module, so DistributedDataParallel can wrap it and any method (e.g. hg_hmr's
    ``heatmaps``) goes through DDP's forward. fp32 without channels_last calls ``net`` as it is:
    bit-for-bit the results of calling it directly."""

    def __init__(self, net: torch.nn.Module, precision: str = "fp32", device_type: str = "cpu",
                 channels_last: bool = False):
        super().__init__()
        self.net = net
        self.precision, self.device_type, self.channels_last = precision, device_type, channels_last

    def forward(self, *args, method: str = "forward", **kw):
        if self.channels_last:
            args = tuple(a.contiguous(memory_format=torch.channels_last)
                         if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
        fn = self.net if method == "forward" else getattr(self.net, method)
        if self.precision == "fp32":
            return fn(*args, **kw)
        with torch.autocast(self.device_type, dtype=DTYPES[self.precision]):
            out = fn(*args, **kw)
        return to_float(out)


def cpu_bf16_native() -> bool:
    """Whether this CPU runs bfloat16 matrix multiplies and convolutions natively (oneDNN with
    AVX512-BF16 or AMX). Without them (e.g. an AVX2-only CPU) bf16 is emulated and far slower
    than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_slow(precision: str, device: torch.device) -> None:
    """A warning when ``precision`` will run slower than fp32 on ``device`` (bf16 on a CPU
    without native bfloat16)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        from . import log
        log.warn(f"--precision bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native "
                 "bfloat16 instructions; bf16 is emulated and much slower than fp32 here")
