"""ONNX export of drkit's networks, and an engine that runs the exported graphs with onnxruntime.

`drkit export BUNDLE|DR -o DIR` writes ``DIR/model.onnx`` and, beside it, ``DIR/model.json``:

- a task bundle (train-task's best.pt, its run folder, ``pretrained:NAME`` of kind task): one
  graph for all of ``Predictor.predict_crops``. Input ``crops`` (n, S, S, 3) uint8 RGB masked face
  crops (S: the bundle's crop size); outputs ``values`` (n, k) float32, clipped per target to the
  bundle's label ranges as `drkit predict` clips them (bundles without ranges: not clipped),
  ``raw_values`` (n, k) the task network's outputs (``--no-clip``), and ``mdr`` (n, C, M, M)
  float32, the image and DR channels (drkit.mdr.MDR: DR networks and their resizes). The task
  network's channel selection and per-channel normalisation are inside the graph. A bundle
  trained with per-video normalisation (``--dr-norm video`` / ``--image-norm video``) needs each
  video's mean MDR, which a graph of some crops cannot know: its model.onnx takes a second input,
  ``video_mean`` (C, M, M), subtracted from the normalised channels; beside it ``task.onnx``
  (``mdr``, ``video_mean`` -> values: the second pass over a video's kept MDRs, without running
  the DR networks again) and ``population_mean.npy`` (the training videos' mean: the
  ``video_mean`` of a still image). model.json's ``video_norm`` says which channels and how.
- a DR checkpoint (file, run folder, ``pretrained:T5``): the DR network. Input ``images``
  (n, 3, s, s) float32 in [0, 1] at its net_size s; output ``dr`` (n, 3 * heads, s, s).

The batch dimension n is dynamic, every other one fixed. The JSON describes the inputs and outputs
(names, shapes, dtypes, value ranges), the crop size, the bundle's targets and label ranges and
the source checkpoint's SHA-256, and records the check made before anything is written: the graph
run by onnxruntime against the torch networks on random crops, batch sizes 1 and 3 (the largest
absolute difference per output; more than 1e-3 of the outputs' scale is an error).

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``; the
newer exporter needs the ``onnx`` and ``onnxscript`` packages). It does not need the ``onnx``
package either: torch 2.13 imports it only to add onnxscript functions of custom operators, which
drkit's graphs have none of, so without ``onnx`` that step is skipped (:func:`_onnx_optional`).
Antialiased bilinear resizes have no ONNX operator there; they are exported as what they are,
one fixed linear map per axis, ``A @ x @ A^T`` with ``A`` (out, in) the weights torch's kernel
uses (:class:`Resize`; the same values to ~2e-7); so is adaptive average pooling to a size that
does not divide its input (:class:`AdaptivePool`, e.g. the small CNN's 4x4 pooling of a 7x7 map),
which that exporter refuses. Running an exported graph needs only onnxruntime.

:class:`OnnxEngine` runs a graph (file or bytes) with onnxruntime: CPU by default, CUDA when
onnxruntime-gpu is installed (``DRKIT_ORT_PROVIDERS`` overrides), ``threads`` intra-op threads
(default ``DRKIT_ORT_THREADS``, else every usable core). ``Predictor(engine="onnxruntime")``
(`drkit predict --engine onnxruntime`) and `drkit gen-dr --engine onnxruntime` export in memory
on the fly, no files, no `drkit export` first: gen-dr the MDR stack (:func:`mdr_onnx`), the
predictor that and the task part (:func:`task_onnx`: MDR -> values) as two graphs, so its
timings keep their DR / task split (at the cost of one more onnxruntime call per batch). Exports
are remembered per process (:func:`cached`). onnxruntime runs fp32 only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .contracts import Result
from .errors import DrkitError, UsageError
from .faces.onnx_models import default_providers, default_threads, session_options

OPSET = 17
FORMAT = "drkit.onnx"
FORMAT_VERSION = 1
ENGINES = ("auto", "torch", "onnxruntime")   # drkit.configs.Engine
TOLERANCE = 1e-3          # verification: largest difference allowed, times max(1, max |torch output|)


# ------------------------------------------------------------------ onnxruntime

def onnxruntime(what: str = "--engine onnxruntime"):
    """The onnxruntime module, or a one-line DrkitError saying how to get it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DrkitError(f"{what} needs onnxruntime, which is not installed: pip install onnxruntime "
                         "(or onnxruntime-gpu), or use --engine torch") from None
    return ort


def have_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str, device: torch.device | str = "cpu", precision: str = "fp32",
                   compile: bool = False) -> str:
    """The engine to run the networks with: ``torch`` or ``onnxruntime``. ``auto`` is onnxruntime
    when it is installed, ``device`` is the CPU, ``precision`` fp32 and no ``compile`` (where it
    was measured faster: benchmarks/engine_speed.py), else torch. An unknown name, or onnxruntime
    with another precision or with ``compile`` (torch's settings), is a UsageError; onnxruntime
    asked for and not installed a DrkitError."""
    from .contracts import check_choice
    check_choice(engine, ENGINES, "--engine")
    device = torch.device(device)
    if engine == "auto":
        usable = device.type == "cpu" and precision == "fp32" and not compile
        return "onnxruntime" if usable and have_onnxruntime() else "torch"
    if engine == "onnxruntime":
        if precision != "fp32":
            raise UsageError(f"--engine onnxruntime runs at fp32 only (not --precision {precision}); "
                             "use --engine torch for autocast")
        if compile:
            raise UsageError("--compile is torch's (torch.compile); drop it with --engine onnxruntime")
        ort = onnxruntime()
        if device.type != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
            from . import log
            log.warn(f"--engine onnxruntime: this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                     f"the networks run on the CPU, not on {device}")
    return engine


class OnnxEngine:
    """An ONNX graph (a ``.onnx`` file or its bytes) run by onnxruntime: ``engine(x)`` -> {output
    name: array}, ``x`` fed to the graph's one input. ``threads``: intra-op threads (default
    :func:`default_threads`); ``providers``: onnxruntime execution providers (default
    :func:`default_providers`: CUDA if present, else CPU). Idle threads do not spin, so the cores
    are free for decoding and face tracking between runs."""

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None):
        ort = onnxruntime()
        so = session_options(threads or default_threads())
        where = "exported graph" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                sess_options=so, providers=providers or default_providers())
        except Exception as e:   # onnxruntime raises its own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DrkitError(f"{where}: onnxruntime cannot load it ({first[:200]})") from e
        self.input = self.session.get_inputs()[0]
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]
        self.threads = so.intra_op_num_threads

    def __call__(self, x: np.ndarray, **more: np.ndarray) -> dict[str, np.ndarray]:
        """``x`` to the graph's first input, ``more`` to its other inputs by name (a per-video
        normalised bundle's ``video_mean``)."""
        return self.run({self.input.name: x, **more})

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{input name: array} -> {output name: array}; arrays cast to each input's type."""
        typed = {k: np.ascontiguousarray(v, np.uint8 if self.inputs[k].type == "tensor(uint8)" else np.float32)
                 for k, v in feed.items()}
        return dict(zip(self.outputs, self.session.run(None, typed)))


_GRAPHS: dict[str, bytes] = {}   # graph key -> ONNX bytes: this process's recent exports
_GRAPHS_KEEP, _GRAPHS_MAX_BYTES = 8, 64 << 20


def graph_key(modules: list[nn.Module], **settings) -> str:
    """What identifies an exported graph: the modules' structure and weights and ``settings``."""
    import hashlib
    h = hashlib.sha256(json.dumps([str(m) for m in modules] + [settings, OPSET, torch.__version__],
                                  sort_keys=True, default=str).encode())
    for m in modules:
        for k, v in m.state_dict().items():
            h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached(key: str, make: Callable[[], bytes]) -> bytes:
    """``make()``, remembered under ``key`` for this process (predict and gen-dr called again on
    the same networks, as the demo and the tests do, export once)."""
    g = _GRAPHS.get(key)
    if g is None:
        g = make()
        if len(g) <= _GRAPHS_MAX_BYTES:
            while len(_GRAPHS) >= _GRAPHS_KEEP:
                _GRAPHS.pop(next(iter(_GRAPHS)))
            _GRAPHS[key] = g
    return g


class SizedGraphs:
    """One OnnxEngine per crop size, each exported on first use by ``make(crop_size) -> bytes``:
    what Predictor and gen-dr run with ``engine="onnxruntime"`` (in memory, no files)."""

    def __init__(self, make: Callable[[int], bytes], threads: int | None = None):
        self.make, self.threads = make, threads
        self.engines: dict[int, OnnxEngine] = {}
        self.export_seconds = 0.0

    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """(n, S, S, 3) uint8 RGB crops through the graph for S."""
        if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or crops.shape[3] != 3:
            raise DrkitError(f"crops of shape {tuple(crops.shape)}: expected (n, S, S, 3) RGB")
        return self.engine(int(crops.shape[1]))(crops)

    def engine(self, crop_size: int) -> OnnxEngine:
        e = self.engines.get(crop_size)
        if e is None:
            t0 = time.perf_counter()
            e = self.engines[crop_size] = OnnxEngine(self.make(crop_size), self.threads)
            self.export_seconds += time.perf_counter() - t0
        return e


# ------------------------------------------------------------------ graph modules

def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): the weights of torch's antialiased bilinear resize (align_corners False)
    along one axis, taken from the kernel itself (deltas along the width of 1-row images)."""
    e = torch.eye(n_in).reshape(n_in, 1, 1, n_in)
    a = F.interpolate(e, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)
    return a[:, 0, 0, :].T.contiguous()


class Resize(nn.Module):
    """drkit.mdr.resize for square maps of a fixed side, as matrix products ``A @ x @ A^T``
    (antialiased bilinear resizing is separable and linear): exportable to ONNX."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        a = resize_matrix(n_in, n_out)
        self.register_buffer("a", a)
        self.register_buffer("at", a.T.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.a, x), self.at)


def _resize(n_in: int, n_out: int) -> nn.Module:
    return nn.Identity() if n_in == n_out else Resize(n_in, n_out)


class MDRGraph(nn.Module):
    """uint8 RGB crops (n, S, S, 3) -> the MDR stack (n, C, M, M) float32: drkit.mdr.MDR.forward
    after drkit.batching.images_to_tensor, with the resizes of a fixed crop size S as
    :class:`Resize`. Shares the networks of ``mdr`` (no copy)."""

    def __init__(self, mdr, crop_size: int):
        super().__init__()
        self.nets = mdr.nets
        self.image = mdr.image
        M = mdr.map_size
        self.sizes = list(mdr.net_sizes)
        self.to_net = nn.ModuleDict({str(s): _resize(crop_size, s) for s in sorted(set(self.sizes))})
        self.to_map = nn.ModuleList([_resize(s, M) for s in self.sizes])
        self.image_to_map = _resize(crop_size, M)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.permute(0, 3, 1, 2).float() / 255
        parts = [self.image_to_map(x)] if self.image else []
        sized = {s: self.to_net[str(s)](x) for s in sorted(set(self.sizes))}
        for net, s, up in zip(self.nets, self.sizes, self.to_map):
            parts.append(up(net(sized[s]).float()))
        return torch.cat(parts, 1)


class TaskGraph(nn.Module):
    """The MDR stack (n, C, M, M) -> (values clipped to ``ranges``, raw values): the task part of
    Predictor.predict_crops, channel selection and per-channel normalisation included. With
    ``norm_mask`` (C,) (a per-video normalised bundle, --dr-norm / --image-norm video) it takes
    a second input, ``video_mean`` (C, M, M), and subtracts ``norm_mask * video_mean`` first."""

    def __init__(self, net: nn.Module, n_channels: int, channels: list[int], mean: list[float],
                 std: list[float], ranges: list[list[float]], norm_mask: np.ndarray | None = None):
        super().__init__()
        self.net = net
        self.norm = norm_mask is not None
        mask = np.zeros(n_channels, np.float32) if norm_mask is None else np.asarray(norm_mask, np.float32).reshape(-1)
        self.register_buffer("norm_mask", torch.from_numpy(mask)[:, None, None])
        self.select = list(channels) != list(range(n_channels))
        self.register_buffer("channels", torch.tensor(channels, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None])
        r = torch.tensor(ranges, dtype=torch.float32).reshape(-1, 2)
        self.clip = bool(len(r))
        self.register_buffer("lo", r[:, 0])
        self.register_buffer("hi", r[:, 1])

    def forward(self, m: torch.Tensor, video_mean: torch.Tensor | None = None):
        if self.norm:
            m = m - (self.norm_mask * video_mean)[None]
        z = torch.index_select(m, 1, self.channels) if self.select else m
        y = self.net((z - self.mean) / self.std).float()
        v = torch.maximum(torch.minimum(y, self.hi), self.lo) if self.clip else y + 0   # + 0: its own output
        return v, y


class BundleGraph(nn.Module):
    """uint8 RGB crops -> (values clipped to ``ranges``, raw values, MDR): Predictor.predict_crops
    in one module (MDRGraph, then TaskGraph)."""

    def __init__(self, mdr, net: nn.Module, channels: list[int], mean: list[float], std: list[float],
                 ranges: list[list[float]], crop_size: int, norm_mask: np.ndarray | None = None):
        super().__init__()
        self.mdr = MDRGraph(mdr, crop_size)
        self.task = TaskGraph(net, _n_channels(mdr), channels, mean, std, ranges, norm_mask)

    def forward(self, crops: torch.Tensor, video_mean: torch.Tensor | None = None):
        m = self.mdr(crops)
        v, y = self.task(m, video_mean)
        return v, y, m


def _n_channels(mdr) -> int:
    return (3 if mdr.image else 0) + sum(_dr_channels(n) for n in mdr.nets)


def _dr_channels(net: nn.Module) -> int:
    return 3 * int(getattr(net, "heads", 1))


def pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): adaptive average pooling along one axis, taken from torch's kernel."""
    e = torch.eye(n_in).reshape(n_in, 1, 1, n_in)
    return F.adaptive_avg_pool2d(e, (1, n_out))[:, 0, 0, :].T.contiguous()


class AdaptivePool(nn.Module):
    """nn.AdaptiveAvgPool2d for inputs of a fixed (H, W), as matrix products: the exporter
    handles adaptive pooling only when the output size divides the input size (a small CNN's
    4x4 pooling of a 7x7 map does not)."""

    def __init__(self, hw: tuple[int, int], out: tuple[int, int]):
        super().__init__()
        self.register_buffer("ph", pool_matrix(hw[0], out[0]))
        self.register_buffer("pwt", pool_matrix(hw[1], out[1]).T.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.ph, x), self.pwt)


@contextlib.contextmanager
def exportable_pools(net: nn.Module, example: torch.Tensor):
    """``net`` with each nn.AdaptiveAvgPool2d replaced by an :class:`AdaptivePool` for the input
    size it sees on ``example`` (restored on exit)."""
    pools = [(parent, name, child) for parent in net.modules() for name, child in parent.named_children()
             if isinstance(child, nn.AdaptiveAvgPool2d)]
    if not pools:
        yield net
        return
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [child.register_forward_pre_hook(lambda m, a: sizes.__setitem__(id(m), tuple(a[0].shape[-2:])))
             for _, _, child in pools]
    try:
        with torch.no_grad():
            net(example.to(next((q.device for q in net.parameters()), torch.device("cpu"))))
    finally:
        for h in hooks:
            h.remove()
    for parent, name, child in pools:
        hw = sizes.get(id(child))
        if hw is not None:
            o = child.output_size
            o = (o, o) if isinstance(o, int) else tuple(hw[i] if v is None else v for i, v in enumerate(o))
            setattr(parent, name, AdaptivePool(hw, o))
    try:
        yield net
    finally:
        for parent, name, child in pools:
            setattr(parent, name, child)


# ------------------------------------------------------------------ export

@contextlib.contextmanager
def _onnx_optional():
    """Let torch's TorchScript-based exporter run without the ``onnx`` package: its last step,
    ``onnx_proto_utils._add_onnxscript_fn``, loads the model with ``onnx`` only to add the
    onnxscript functions of custom operators; drkit's graphs use standard operators only, so the
    step is replaced by the identity while ``onnx`` is missing (and left alone when it is there)."""
    try:
        import onnx  # noqa: F401
        yield
        return
    except ImportError:
        pass
    try:
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils as U
        old = U._add_onnxscript_fn
    except (ImportError, AttributeError):   # another torch: let it say what it needs
        yield
        return

    def skip(model_bytes: bytes, custom_opsets) -> bytes:
        if custom_opsets:
            return old(model_bytes, custom_opsets)
        return model_bytes

    U._add_onnxscript_fn = skip
    try:
        yield
    finally:
        U._add_onnxscript_fn = old


def onnx_bytes(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], input_name: str | list[str],
               output_names: list[str]) -> bytes:
    """``module`` (eval mode) as an ONNX graph (opset :data:`OPSET`) with a dynamic batch
    dimension, in memory. Traced once on ``example`` (its batch size does not matter), on the
    device of the module's parameters. Several inputs: a tuple of examples and a list of names;
    only the first has a batch dimension (the others, e.g. ``video_mean``, are fixed)."""
    f = io.BytesIO()
    dev = next((q.device for q in module.parameters()), torch.device("cpu"))
    examples = tuple(e.to(dev) for e in (example if isinstance(example, tuple) else (example,)))
    names = [input_name] if isinstance(input_name, str) else list(input_name)
    module = module.to(dev)
    axes = {n: {0: "n"} for n in [names[0], *output_names]}
    log_to = getattr(torch._C, "_jit_set_onnx_log_output_stream", None)
    try:
        if log_to:   # its graph dump on failure: to stderr, which the CLI shows only with -v
            log_to("stderr")
        with _onnx_optional(), warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")   # the exporter's deprecation notice and tracer warnings
            torch.onnx.export(module.eval(), examples, f, dynamo=False, opset_version=OPSET,
                              input_names=names, output_names=output_names, dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = (" (this torch's exporter needs the onnx package: pip install onnx)"
                if "onnx" in first and "not installed" in first else "")
        raise DrkitError(f"ONNX export failed: {type(e).__name__}: {first[:200]}{hint}") from e
    finally:
        if log_to:
            log_to("stdout")
    return f.getvalue()


def mdr_onnx(mdr, crop_size: int) -> bytes:
    """The MDR stack (drkit.mdr.MDR) for crops of ``crop_size``: crops -> ``mdr``."""
    ex = torch.zeros(2, crop_size, crop_size, 3, dtype=torch.uint8)
    key = graph_key(list(mdr.nets), kind="mdr", sizes=list(mdr.net_sizes), map_size=mdr.map_size,
                    image=mdr.image, crop_size=crop_size)
    return cached(key, lambda: onnx_bytes(MDRGraph(mdr, crop_size), ex, "crops", ["mdr"]))


def _with_mean(example: torch.Tensor, name: str, norm_mask: np.ndarray | None, C: int, M: int):
    """The graph's example inputs and names: ``name`` (batched), plus ``video_mean`` (C, M, M) for
    a per-video normalised bundle (``norm_mask``); and the mask as a graph-key setting."""
    if norm_mask is None:
        return example, name, None
    return (example, torch.zeros(C, M, M)), [name, "video_mean"], np.asarray(norm_mask).reshape(-1).tolist()


def bundle_onnx(mdr, net: nn.Module, config, crop_size: int | None = None,
                norm_mask: np.ndarray | None = None) -> bytes:
    """A task bundle's MDR stack (``mdr``) and task network ``net`` (TaskConfig ``config``) as one
    graph: crops -> ``values``, ``raw_values``, ``mdr``. With ``norm_mask`` (a per-video
    normalised bundle's channels, Predictor.norm_mask) a second input ``video_mean`` (C, M, M)."""
    S = crop_size or config.preprocess.crop_size
    C, M = _n_channels(mdr), config.map_size
    z = torch.zeros(1, len(config.channels), M, M)
    ex, names, norm = _with_mean(torch.zeros(2, S, S, 3, dtype=torch.uint8), "crops", norm_mask, C, M)

    def make() -> bytes:
        with exportable_pools(net.eval(), z):
            g = BundleGraph(mdr, net, config.channels, config.norm_mean, config.norm_std, config.value_range, S,
                            norm_mask)
            return onnx_bytes(g, ex, names, ["values", "raw_values", "mdr"])

    key = graph_key([*mdr.nets, net], kind="bundle", sizes=list(mdr.net_sizes), map_size=mdr.map_size,
                    image=mdr.image, crop_size=S, channels=list(config.channels), mean=list(config.norm_mean),
                    std=list(config.norm_std), ranges=list(config.value_range), norm=norm)
    return cached(key, make)


def task_onnx(mdr, net: nn.Module, config, norm_mask: np.ndarray | None = None) -> bytes:
    """A task bundle's network (``config``: its TaskConfig) on the MDR stack of ``mdr``: ``mdr``
    (n, C, M, M) float32 -> ``values``, ``raw_values``; with ``norm_mask`` a second input
    ``video_mean`` (C, M, M) as in bundle_onnx."""
    C, M = _n_channels(mdr), config.map_size
    z = torch.zeros(1, len(config.channels), M, M)
    ex, names, norm = _with_mean(torch.zeros(2, C, M, M), "mdr", norm_mask, C, M)

    def make() -> bytes:
        with exportable_pools(net.eval(), z):
            g = TaskGraph(net, C, config.channels, config.norm_mean, config.norm_std, config.value_range, norm_mask)
            return onnx_bytes(g, ex, names, ["values", "raw_values"])

    key = graph_key([net], kind="task", n_channels=C, map_size=M, channels=list(config.channels),
                    mean=list(config.norm_mean), std=list(config.norm_std), ranges=list(config.value_range),
                    norm=norm)
    return cached(key, make)


def dr_onnx(net: nn.Module, net_size: int) -> bytes:
    """A DR network: images (n, 3, s, s) in [0, 1] -> ``dr``."""
    return onnx_bytes(net, torch.zeros(2, 3, net_size, net_size), "images", ["dr"])


# ------------------------------------------------------------------ drkit export

@dataclass
class ExportResult(Result):
    onnx: Path
    json: Path
    kind: str                                      # "task" or "dr"
    max_abs_diff: dict[str, float] = field(default_factory=dict)   # per output; {} if not verified
    seconds: float = 0.0


def _spec(name: str, shape: list, dtype: str, value_range, meaning: str, **extra) -> dict:
    return {"name": name, "shape": shape, "dtype": dtype, "range": value_range, "meaning": meaning, **extra}


def _diffs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.abs(got[k] - want[k]).max()) if want[k].size else 0.0 for k in want}


@dataclass
class _Graph:
    """One graph to write: its file name, bytes, torch reference ({input: array} -> {output:
    array}) and the inputs it is checked on."""
    file: str
    graph: bytes
    reference: Callable[[dict], dict]
    feeds: list[dict[str, np.ndarray]]
    what: str = "uniform random"   # how the check inputs were made (model.json "verified")
    record: dict | None = None     # the model.json entry of its "verified" and "sha256"; None: the top level

    def entry(self, meta: dict) -> dict:
        """Where in model.json (``meta``) this graph's "verified" and "sha256" go."""
        return meta if self.record is None else self.record


def _verify(graph: bytes, feeds: list[dict[str, np.ndarray]], reference: Callable[[dict], dict],
            threads: int | None) -> dict[str, float]:
    """Largest |onnxruntime - torch| per output over ``feeds``; a DrkitError beyond TOLERANCE."""
    eng = OnnxEngine(graph, threads, ["CPUExecutionProvider"])
    worst: dict[str, float] = {}
    scale: dict[str, float] = {}
    for feed in feeds:
        want = reference(feed)
        got = eng.run(feed)
        for k, d in _diffs(got, want).items():
            worst[k] = max(worst.get(k, 0.0), d)
            scale[k] = max(scale.get(k, 1.0), float(np.abs(want[k]).max()) if want[k].size else 0.0)
    bad = [k for k in worst if not worst[k] <= TOLERANCE * scale[k]]   # NaN counts as bad
    if bad:
        raise DrkitError("the exported graph does not match the torch networks (max abs difference "
                         + ", ".join(f"{k} {worst[k]:.3g}" for k in bad) + "); nothing written")
    return worst


def _task_export(ck, rng):
    """A task bundle's graphs (model.onnx: crops -> values, raw values, MDR; a per-video
    normalised bundle also task.onnx: MDR -> values), their torch references and check inputs,
    the arrays to write beside them, and the model.json fields."""
    from .predictor import Predictor
    from .tasks import clip_values
    ref = Predictor(ck, "cpu", channels_last=False, clip=False)   # the torch path, standard layout
    c = ref.config
    S, M, k = c.preprocess.crop_size, c.map_size, len(c.targets)
    C = len(c.store_channels)
    mask = ref.norm_mask.reshape(-1) if ref.video_norm else None
    ranges = ref.ranges
    crops = [rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8) for n in (1, 3)]
    vr = [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None
    values_spec = _spec("values", ["n", k], "float32", vr, "one value per target (targets), each clipped to "
                        "its value_range [lo, hi] as drkit predict does" if ranges else
                        "one value per target (targets); this bundle records no label range: not clipped")
    raw_spec = _spec("raw_values", ["n", k], "float32", None, "the task network's outputs, not clipped "
                     "(drkit predict --no-clip)")
    mean_spec = _spec("video_mean", [C, M, M], "float32", None,
                      "the mean over one video's frames of the mdr output (float64 sum, then float32), as "
                      "drkit predict takes it; for a still image, population_mean.npy. The graph subtracts "
                      "it from the channels in video_norm.channels only")
    def reference(feed):   # video_mean: only a per-video normalised bundle's feeds have one
        y, m = ref.predict_crops(feed["crops"], video_mean=feed.get("video_mean"))
        return {"values": clip_values(y, ranges), "raw_values": y, "mdr": m}

    feeds = [{"crops": x} for x in crops]
    if mask is not None:
        def task_reference(feed):
            y = ref.values_of(feed["mdr"], feed["video_mean"])
            return {"values": clip_values(y, ranges), "raw_values": y}
        # video means of the scale of real ones: the mean MDR of other random crops
        means = [ref.mdr_of(rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8)).mean(0) for _ in crops]
        feeds = [{"crops": x, "video_mean": vm} for x, vm in zip(crops, means)]
        task_feeds = [{"mdr": ref.mdr_of(x), "video_mean": vm} for x, vm in zip(crops, means)]
    what = "uniform random crops" + ("; video_mean: the mean mdr of 4 other such crops" if mask is not None else "")
    graphs = [_Graph("model.onnx", bundle_onnx(ref.mdr, ref.net, c, S, mask), reference, feeds, what)]
    arrays: dict[str, tuple[np.ndarray, dict]] = {}   # file -> (array, its model.json entry)
    meta = {
        "task": c.task, "input_kind": c.input_kind, "targets": list(c.targets), "value_range": ranges,
        "crop_size": S, "map_size": M, "preprocess": c.preprocess.to_dict(),
        "inputs": [_spec("crops", ["n", S, S, 3], "uint8", [0, 255],
                         "RGB masked face crops as drkit preprocess makes them (the bundle's crop size, "
                         "alignment and face backend: see preprocess)")] + ([mean_spec] if mask is not None else []),
        "outputs": [
            values_spec, raw_spec,
            _spec("mdr", ["n", C, M, M], "float32", None,
                  "the image and DR channels the task network's input is taken from (before its "
                  "channel selection and normalisation, which are in the graph)",
                  channels=list(c.store_channels))],
        "dr_nets": [{"T": n.config.T, "stride": n.config.stride, "windows": n.config.windows,
                     "net_size": n.config.net_size, "model": n.model.to_dict()} for n in ck.dr_nets],
        "video_norm": None,
    }
    if mask is not None:
        meta["video_norm"] = {
            "dr": c.dr_norm, "image": c.image_norm, "channels": [int(i) for i in np.flatnonzero(mask)],
            "how": "per video: run model.onnx on every frame with video_mean = population_mean (or zeros), keep "
                   "mdr, average it over the video, then run task.onnx on the kept mdr with that mean (the "
                   "values of the first pass are not the video's); a still image: model.onnx with "
                   "video_mean = population_mean",
            "task_graph": {"file": "task.onnx",
                           "inputs": [_spec("mdr", ["n", C, M, M], "float32", None, "model.onnx's mdr output"),
                                      mean_spec],
                           "outputs": [values_spec, raw_spec]},
            "population_mean": None}
        graphs.append(_Graph("task.onnx", task_onnx(ref.mdr, ref.net, c, mask), task_reference, task_feeds,
                             "mdr: the stack of " + what, meta["video_norm"]["task_graph"]))
        if ref.still_mean is not None:
            meta["video_norm"]["population_mean"] = {
                "file": "population_mean.npy", "shape": [C, M, M], "dtype": "float32",
                "meaning": "the mean over the training videos of each video's mean mdr: the video_mean "
                           "for still images (numpy.load)"}
            arrays["population_mean.npy"] = (np.asarray(ref.still_mean, np.float32), meta["video_norm"]["population_mean"])
    return graphs, arrays, meta


def _dr_export(ck, rng):
    """A DR checkpoint's graph (images -> DR maps), its torch reference, check inputs and
    model.json fields."""
    net = ck.build_model()
    s = ck.config.net_size
    graph = dr_onnx(net, s)
    C = _dr_channels(net)

    @torch.inference_mode()
    def reference(feed):
        return {"dr": net(torch.from_numpy(feed["images"])).float().numpy()}

    feeds = [{"images": rng.random((n, 3, s, s), dtype=np.float32)} for n in (1, 3)]
    meta = {
        "T": ck.config.T, "stride": ck.config.stride, "windows": ck.config.windows, "net_size": s,
        "model": ck.model.to_dict(),
        "inputs": [_spec("images", ["n", 3, s, s], "float32", [0.0, 1.0],
                         "RGB masked face crops resized to net_size (antialiased bilinear), in [0, 1]")],
        "outputs": [_spec("dr", ["n", C, s, s], "float32", None,
                          "one 3-channel dynamic representation per window (windows), in that order")],
    }
    return [_Graph("model.onnx", graph, reference, feeds)], {}, meta


def run(cfg) -> ExportResult:
    """`drkit export` (ExportConfig): the checkpoint ``cfg.model`` -> ``cfg.out``/model.onnx +
    model.json, checked first against torch on random crops (seed ``cfg.seed``) when onnxruntime
    is installed (without it the files are written unchecked, with a warning)."""
    from . import __version__, log
    from .checkpoint import load_checkpoint, resolve
    from .fsutil import atomic_path, sha256_file, write_json_atomic
    t0 = time.perf_counter()
    if cfg.out.is_file():
        raise DrkitError(f"{cfg.out}: is a file; -o takes the folder to write model.onnx and model.json into")
    ck = load_checkpoint(cfg.model)
    src = resolve(cfg.model)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    meta: dict = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": ck.kind,
                  "drkit_version": __version__, "torch_version": torch.__version__, "opset": OPSET,
                  "source": {"checkpoint": str(cfg.model), "file": str(src.resolve()), "sha256": sha256_file(src)}}
    graphs, arrays, extra = (_task_export if ck.kind == "task" else _dr_export)(ck, rng)
    meta.update(extra)
    checked = have_onnxruntime()
    for g in graphs:   # every graph checked before any file is written
        rec = g.entry(meta)
        rec["verified"] = None
        if checked:
            d = _verify(g.graph, g.feeds, g.reference, cfg.threads)
            sizes = [len(next(iter(f.values()))) for f in g.feeds]   # the batch of each check
            rec["verified"] = {"crops": sum(sizes), "batch_sizes": sizes, "input": g.what, "seed": cfg.seed,
                               "max_abs_diff": d, "onnxruntime_version": onnxruntime().__version__}
            log.info(f"export: {g.file}: onnxruntime vs torch on random inputs, max abs difference: "
                     + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))
    if not checked:
        log.warn("export: onnxruntime is not installed, so the graph was not checked against torch "
                 "(pip install onnxruntime, then rerun)")
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta["file"] = graphs[0].file
    for name, (a, rec) in arrays.items():   # side files first: model.json, written last, names what is complete
        with atomic_path(cfg.out / name) as tmp, open(tmp, "wb") as f:
            np.save(f, a)
        rec["sha256"] = sha256_file(cfg.out / name)
    for g in graphs[::-1]:                  # model.onnx (graphs[0]) last of the graphs
        with atomic_path(cfg.out / g.file) as tmp:
            tmp.write_bytes(g.graph)
        g.entry(meta)["sha256"] = sha256_file(cfg.out / g.file)
    json_path = cfg.out / "model.json"
    write_json_atomic(json_path, meta)
    diffs = meta["verified"]["max_abs_diff"] if meta["verified"] else {}
    return ExportResult(cfg.out / graphs[0].file, json_path, ck.kind, diffs, time.perf_counter() - t0)

