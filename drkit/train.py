"""The one training loop, shared by train-dr and train-task (checkpoint files: drkit.checkpoint).

A run writes into its output folder:

    last.pt        weights + optimizer + progress, rewritten atomically every minute and per epoch
    best.pt        weights of the best validation epoch (or best training epoch without --val)
    metrics.jsonl  one JSON line per epoch: epoch, step, seconds, train and validation metrics,
                   samples/s and the share of time spent waiting for data
    config.json    the run's settings, readable without torch

Resuming (``resume=True``) restores weights, optimizer, epoch, position in the epoch, elapsed
time and RNG state, and the data order is a function of (seed, epoch) (drkit.batching), so a
resumed run continues exactly where the interrupted one stopped; the epoch's running sums are
kept in the progress too, so the metrics record of an epoch resumed midway covers all of it.

Extra training state beside the model (the pix2pix discriminator and its optimizer) is passed
as ``aux``, an object following the ``AuxState`` protocol below. Its state is saved in last.pt
under the key ``aux`` and restored on resume; best.pt and the model weights stay the model's alone.

The loop reads top to bottom in ``fit``: set up (``_setup``), resume or start (``_resume``,
``_start``), then per epoch ``_train_epoch`` (the steps, a save every minute) and ``_end_epoch``
(validation, best, early stopping, the metrics record, last.pt). Its progress is a ``LoopState``,
saved in every last.pt (``train_state``) and restored by ``--resume``.

A non-finite loss (or non-finite weights) stops the run with a DrkitError before anything more
is saved: last.pt and best.pt keep the last good state.

Precision and kernels (drkit.precision): ``precision`` fp32 (default: no autocast, the results of
drkit 0.1 bit for bit), bf16 (CPU and CUDA) or fp16 (CUDA, with a gradient scaler). The network
runs under autocast through drkit.precision.Forward, which returns fp32 outputs: the losses and
metrics (``step``'s, ``validate``'s) are computed in fp32 outside autocast. ``channels_last`` and
``compile`` (torch.compile) change how the network runs, never what is saved: checkpoints hold
the fp32 weights of the original module (plain keys, contiguous tensors). The three are recorded
(config.json, the checkpoint's config) but a run may be resumed with other values.

Data parallel under torchrun (drkit.distributed): ``batches(epoch, start, rank, world)`` yields
``(batch, weight)``: this rank's part of each global batch and its share of it (drkit.batching.part).
Each rank's loss is scaled by ``weight * world`` so DDP's gradient average is the gradient of
the global batch's mean loss: the step equals the one-process step on the same global batch up
to float summation order. Per-epoch training metrics are averaged over the ranks; validation
runs on rank 0 alone (the other ranks wait), which decides best / early stopping / the end and
broadcasts the loop state, so every rank stops together. Only rank 0 writes files and logs;
last.pt also keeps every rank's RNG state, and on --resume every rank loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from rich.progress import TextColumn

from . import __version__, distributed, log, precision
from .background import ReadAhead
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .errors import DrkitError
from .fsutil import run_lock, write_json_atomic
from .nets import pick_device


@dataclass
class LoopConfig:
    out: Path
    epochs: int = 10
    time_budget: float | None = None     # seconds of training in all (resumes included)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    save_every_s: float = 60.0
    patience: int | None = None          # stop after this many epochs without a better monitored value
    precision: str = "fp32"              # fp32 | bf16 | fp16 (drkit.precision)
    channels_last: bool = False
    compile: bool = False                # torch.compile the network


@dataclass
class LoopState:
    """Where a run stands, saved in last.pt as ``train_state`` (with ``rng_ranks`` and
    ``grad_scaler`` beside it) and restored on resume."""
    epoch: int = 0                  # epochs finished
    batch: int = 0                  # batches of the current epoch done
    global_step: int = 0
    elapsed: float = 0.0            # seconds of training, resumes included
    best: float | None = None       # best monitored value so far, and its epoch
    best_epoch: int | None = None
    finished: bool = False
    ep_sums: dict[str, float] = field(default_factory=dict)   # the current epoch's running sums,
    ep_seen: int = 0                                          # so a record of an epoch resumed
    ep_time: float = 0.0                                      # midway covers all of it
    ep_wait: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __getitem__(self, key: str):   # 0.2.0's loop returned a dict: st["epoch"] keeps working
        return getattr(self, key)


class AuxState(Protocol):
    """Training state beside the model that a run saves and resumes (drkit.objectives.Pix2Pix)."""
    distributed_ok: bool                # may be trained under torchrun: then fit calls
    loss_scale: float                   # distribute(wrap) once and sets loss_scale before each step

    def to(self, device: torch.device) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, d: dict) -> None: ...
    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None: ...


# settings that change how a run computes, not what it trains, and provenance records (``data``):
# recorded, but resuming with other values is allowed (and checkpoints from before they existed resume)
RUNTIME_SETTINGS = ("precision", "channels_last", "compile", "data")

Batches = Callable[[int, int, int, int], Iterator[tuple[Any, float]]]
Step = Callable[[torch.nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]
Validate = Callable[[torch.nn.Module, torch.device], dict[str, float]]


def whole_batches(batches: Callable[[int, int], Iterator[Any]]) -> Batches:
    """A one-process ``batches(epoch, start)`` as the loop's protocol: each batch whole, weight 1."""
    def sharded(epoch: int, start: int, rank: int = 0, world: int = 1):
        if world > 1:
            raise DrkitError("this training loop's batches cannot be split over ranks; run it in one process "
                             "(without torchrun)")
        return ((b, 1.0) for b in batches(epoch, start))
    return sharded


def _settings(config) -> dict:
    """A checkpoint config as a dict without the RUNTIME_SETTINGS of its ``train`` record."""
    d = config.to_dict()
    if isinstance(d.get("train"), dict):
        d["train"] = {k: v for k, v in d["train"].items() if k not in RUNTIME_SETTINGS}
    return d


def _differences(saved, now, show: int = 4) -> str:
    """The settings that differ between the run's last.pt and this call, e.g. ``dr_norm: run none,
    now video`` (flattened ``train`` and ``model`` records)."""
    def flat(ck) -> dict:
        d = {k: v for k, v in _settings(ck.config).items() if k != "train"}
        d.update(_settings(ck.config).get("train") or {})
        d.update({f"model.{k}": v for k, v in ck.model.to_dict().items()})
        return d
    a, b = flat(saved), flat(now)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    derived = ("norm_mean", "norm_std", "value_range")   # follow from the data and the settings
    keys = [k for k in keys if k not in derived] or keys
    text = "; ".join(f"{k}: run {_short(a.get(k, 'not recorded'))}, now {_short(b.get(k, 'not recorded'))}"
                     for k in keys[:show])
    return text + (f"; {len(keys) - show} more" if len(keys) > show else "") if keys else "the model"


def _short(v, n: int = 40) -> str:
    t = str(v)
    return t if len(t) <= n else t[:n - 3] + "..."


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    import numpy as np
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


@contextlib.contextmanager
def run_folder(out: Path, device: str = "auto"):
    """The run folder's lock (drkit.fsutil.run_lock) held by rank 0 for the block; under torchrun
    every rank learns whether it was granted, so all stop together when another run holds it."""
    ctx = distributed.context(device)
    with contextlib.ExitStack() as stack:
        err = None
        if ctx.main:
            try:
                stack.enter_context(run_lock(out))
            except DrkitError as e:
                err = str(e)
        err = distributed.broadcast(ctx, err)
        if err:
            raise DrkitError(err)
        yield


# ---------------------------------------------------------------- the loop

def fit(model: torch.nn.Module, cfg: LoopConfig, template: Checkpoint, batches: Batches, n_batches: int,
        step: Step, validate: Validate | None, monitor: str, mode: str = "max",
        aux: AuxState | None = None) -> LoopState:
    """Train ``model`` in ``cfg.out`` (holding its run lock).

    ``batches(epoch, start, rank, world)`` yields ``(batch, weight)`` for the epoch's global
    batches from index ``start`` on (deterministically): this rank's part of each and its share
    of the global batch (drkit.batching.part; ``(whole batch, 1.0)`` in a one-process run;
    ``whole_batches`` adapts a one-process ``batches(epoch, start)``). ``step(net, batch,
    device)`` returns the loss and per-batch metrics; ``net`` is the network wrapped by
    drkit.precision.Forward (and DDP): call it like the model, or ``net(x, method="name")`` for
    another method; its outputs are fp32. ``validate(net, device)`` returns metrics including
    ``monitor`` (without it, the training metric of that name is used). ``template`` (kind,
    model spec, config, DR networks of a bundle) is what every checkpoint holds besides the
    weights and the progress. ``aux``: extra training state saved in last.pt and restored on
    resume (``AuxState``)."""
    out = Path(cfg.out)
    with run_folder(out, cfg.device):
        if (out / "last.pt").exists() and not (cfg.resume or cfg.overwrite):
            raise DrkitError(f"{out}: holds a run already; pass --resume to continue it or "
                             "--overwrite to start again")
        run = _setup(model, cfg, template, aux)
        state = _resume(run) if cfg.resume and run.last.exists() else _start(run)
        if state.finished:
            log.info(f"{out}: run already finished (epoch {state.epoch}); nothing to do")
            return state
        if run.ctx.main:
            _write_config(run)
        where = f"{run.ctx.world} processes ({run.ctx.backend}), " if run.ctx.distributed else ""
        log.info(f"training on {where}{run.device} at {run.prec} for {cfg.epochs} epoch(s) of {n_batches} batches"
                 + (f", at most {cfg.time_budget:.0f} s" if cfg.time_budget else "") + f" -> {out}")
        better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        run.t_start = time.perf_counter() - state.elapsed
        run.last_save = time.perf_counter()
        prog = log.progress(TextColumn("{task.fields[info]}"))
        with prog, precision.flush_denormals(run.device):
            bar = prog.add_task("train", total=cfg.epochs * n_batches,
                                completed=state.epoch * n_batches + state.batch, info="")
            while state.epoch < cfg.epochs and not state.finished:
                _train_epoch(run, state, batches, step, lambda info: prog.update(bar, advance=1, info=info))
                state = _end_epoch(run, state, n_batches, validate, monitor, better)
        if run.ctx.main and not (out / "best.pt").exists():   # the monitored metric was never defined
            _save(run, state, out / "best.pt", False)
        distributed.barrier(run.ctx)   # every rank returns once rank 0's files are written
        return state


@dataclass
class _Run:
    """What one training run holds besides its LoopState."""
    cfg: LoopConfig
    template: Checkpoint
    model: torch.nn.Module
    aux: AuxState | None
    ctx: distributed.Context
    device: torch.device
    prec: str
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    fwd: torch.nn.Module             # the network under autocast (validation calls it: no DDP)
    train_net: torch.nn.Module       # what step() calls (fwd, in DDP under torchrun)
    t_start: float = 0.0
    last_save: float = 0.0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def last(self) -> Path:
        return self.out / "last.pt"


def _setup(model: torch.nn.Module, cfg: LoopConfig, template: Checkpoint, aux: AuxState | None) -> _Run:
    """Device, precision, optimizer, loss scaler, and the network as steps and validation call it."""
    ctx = distributed.context(cfg.device)
    device = distributed.device_of(ctx, pick_device(cfg.device))
    prec = precision.check(cfg.precision, device, warn=ctx.main)
    if ctx.main:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if aux is not None:
        if ctx.distributed and not getattr(aux, "distributed_ok", False):
            raise DrkitError(f"{type(aux).__name__} training state cannot be trained under torchrun yet; "
                             "run it in one process")
        aux.to(device)
        if ctx.distributed:
            aux.distribute(lambda m: distributed.wrap(ctx, m, device))
    net = precision.prepare(model, cfg.channels_last, cfg.compile)   # model's parameters, changed in place
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scaler = precision.grad_scaler(prec, device)
    fwd = precision.Forward(net, prec, device.type, cfg.channels_last)
    return _Run(cfg, template, model, aux, ctx, device, prec, opt, scaler, fwd, None)


def _start(run: _Run) -> LoopState:
    """A new run: each rank's own dropout stream (rank 0 draws as a one-process run does), and with
    --overwrite the old run's files removed."""
    if run.ctx.rank > 0:
        torch.manual_seed(_rank_seed(run.cfg.seed, run.ctx.rank))
    if run.cfg.overwrite and run.ctx.main:
        for f in ("last.pt", "best.pt", "metrics.jsonl"):
            (run.out / f).unlink(missing_ok=True)
    run.train_net = distributed.wrap(run.ctx, run.fwd, run.device)
    return LoopState()


def _resume(run: _Run) -> LoopState:
    """Weights, optimizer, aux state, loss scaler, progress and every rank's RNG from last.pt."""
    ck = load_checkpoint(run.last)
    if ck.model != run.template.model or _settings(ck.config) != _settings(run.template.config):
        raise DrkitError(f"{run.last}: was trained with other settings ({_differences(ck, run.template)}); "
                         "resume with the same options or use --overwrite")
    run.model.load_state_dict(ck.state_dict)
    run.opt.load_state_dict(ck.optimizer)
    if run.aux is not None:
        if ck.aux is None:
            raise DrkitError(f"{run.last}: has no 'aux' training state to resume from; use --overwrite")
        run.aux.load_state_dict(ck.aux)
    saved = dict(ck.train_state)
    rngs = saved.pop("rng_ranks", None)
    scaler_state = saved.pop("grad_scaler", None)
    if scaler_state and run.scaler.is_enabled():
        run.scaler.load_state_dict(scaler_state)
    state = LoopState.from_dict(saved)
    ctx = run.ctx
    if rngs is not None and len(rngs) == ctx.world:
        torch.set_rng_state(rngs[ctx.rank])
    elif ctx.rank == 0:
        torch.set_rng_state(ck.rng)
    else:   # another number of ranks than the interrupted run: a fresh stream per rank
        torch.manual_seed(_rank_seed(run.cfg.seed, ctx.rank, state.global_step))
    run.train_net = distributed.wrap(ctx, run.fwd, run.device)
    if not state.finished:
        log.info(f"resuming {run.out} at epoch {state.epoch + 1}, batch {state.batch}")
    return state


def _write_config(run: _Run) -> None:
    t = run.template
    write_json_atomic(run.out / "config.json", {
        "kind": t.kind, "model": t.model.to_dict(), "config": t.config.to_dict(),
        "dr_nets": [{"model": n.model.to_dict(), "config": n.config.to_dict()} for n in t.dr_nets],
        "loop": dataclasses.asdict(run.cfg), "world_size": run.ctx.world, "drkit_version": __version__}, indent=2)


def _train_epoch(run: _Run, state: LoopState, batches: Batches, step: Step, show: Callable[[str], None]) -> None:
    """The steps of the current epoch from ``state.batch`` on (or until the time budget ends it),
    saving last.pt every ``save_every_s`` seconds; the epoch's running sums stay in ``state``."""
    cfg, ctx = run.cfg, run.ctx
    run.train_net.train()
    sums = state.ep_sums
    time0, wait0 = state.ep_time, state.ep_wait
    t_ep = time.perf_counter()
    budget = cfg.time_budget or math.inf
    data = ReadAhead(batches(state.epoch, state.batch, ctx.rank, ctx.world), depth=3)
    try:
        for batch, weight in data:
            if ctx.distributed and run.aux is not None:
                run.aux.loss_scale = weight * ctx.world   # its own losses, e.g. pix2pix's discriminator
            loss, stats = step(run.train_net, batch, run.device)
            lv = float(loss.detach())
            bad = not math.isfinite(lv)
            if bad and not ctx.distributed:
                _stop_on_bad_loss(run, state, lv)
            run.opt.zero_grad(set_to_none=True)
            if ctx.distributed:   # DDP averages over the ranks: scale to the global mean
                loss = loss * (weight * ctx.world)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.opt)
            run.scaler.update()
            elapsed = time.perf_counter() - run.t_start
            out_of_time = elapsed >= budget
            save_due = time.perf_counter() - run.last_save > cfg.save_every_s
            if ctx.distributed:   # one decision for every rank: rank 0's clock, any rank's NaN
                flags = distributed.all_reduce(
                    ctx, [float(bad), float(out_of_time and ctx.main), float(save_due and ctx.main)], "max")
                bad, out_of_time, save_due = (f > 0 for f in flags)
                if bad:
                    _stop_on_bad_loss(run, state, None)
            state.ep_seen += 1
            scale = weight * ctx.world
            for k, v in {"loss": lv, **stats}.items():
                sums[k] = sums.get(k, 0.0) + (v * scale if ctx.distributed else v)
            state.batch += 1
            state.global_step += 1
            state.elapsed = elapsed
            show(" ".join(f"{k} {v / state.ep_seen:.4g}" for k, v in sums.items()))
            if out_of_time:
                state.finished = True
                break
            if save_due:
                state.ep_time = time0 + time.perf_counter() - t_ep
                state.ep_wait = wait0 + data.wait
                _sync_sums(ctx, sums)
                _save(run, state, run.last, True)
                run.last_save = time.perf_counter()
    finally:
        data.close()
    state.ep_time = time0 + time.perf_counter() - t_ep
    state.ep_wait = wait0 + data.wait


def _end_epoch(run: _Run, state: LoopState, n_batches: int, validate: Validate | None, monitor: str,
               better) -> LoopState:
    """After the steps of an epoch (or of its part a time budget allowed): the training metrics
    summed over the ranks, validation, best.pt, early stopping and the metrics record (rank 0
    decides, every rank learns), then last.pt."""
    cfg, ctx = run.cfg, run.ctx
    _check_weights(run, state)
    _sync_sums(ctx, state.ep_sums)
    n_seen, ep_time = state.ep_seen, state.ep_time
    rec = {"epoch": state.epoch + 1, "step": state.global_step, "seconds": round(state.elapsed, 1),
           **{f"train_{k}": v / max(n_seen, 1) for k, v in state.ep_sums.items()},
           "batches_per_s": round(n_seen / ep_time, 3) if ep_time else None,
           "data_wait_share": round(state.ep_wait / ep_time, 4) if ep_time else None}
    state.ep_sums, state.ep_seen, state.ep_time, state.ep_wait = {}, 0, 0.0, 0.0   # the record is written below
    if ctx.main:
        if validate is not None:
            run.fwd.eval()
            with torch.no_grad():
                rec.update({f"val_{k}": float(v) for k, v in validate(run.fwd, run.device).items()})
        key = f"val_{monitor}" if validate is not None else f"train_{monitor}"
        value = rec.get(key)
        if state.batch >= n_batches or state.finished:
            state.epoch += 1
            state.batch = 0
        if state.epoch >= cfg.epochs:
            state.finished = True
        if value is not None and value == value and (state.best is None or better(value, state.best)):
            state.best, state.best_epoch = value, rec["epoch"]
            _save(run, state, run.out / "best.pt", False)
        rec["best"] = state.best
        if (cfg.patience and state.best_epoch is not None and not state.finished
                and rec["epoch"] - state.best_epoch >= cfg.patience):
            state.finished = True
            log.info(f"no better {key} for {cfg.patience} epochs (best {state.best:.4g}, epoch "
                     f"{state.best_epoch}): stopping")
        with open(run.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
    if ctx.distributed:
        state = LoopState.from_dict(distributed.broadcast(ctx, state.to_dict()))
    _save(run, state, run.last, True)
    run.last_save = time.perf_counter()
    log.info("epoch {epoch}: ".format(**rec) + ", ".join(
        f"{k} {v:.4g}" for k, v in rec.items()
        if isinstance(v, float) and k != "seconds" and "/" not in k))   # no per-target detail
    return state


def _sync_sums(ctx: distributed.Context, sums: dict[str, float]) -> None:
    """Each rank's running sums replaced by their mean over the ranks (the global sums)."""
    if ctx.distributed:
        keys = sorted(sums)
        vals = distributed.all_reduce(ctx, [sums[k] for k in keys])
        sums.update({k: v / ctx.world for k, v in zip(keys, vals)})


def _kept(run: _Run) -> str:
    have = [f for f in ("last.pt", "best.pt") if (run.out / f).exists()]
    return f"kept the last good checkpoint ({', '.join(have)})" if have else "no checkpoint was saved yet"


def _stop_on_bad_loss(run: _Run, state: LoopState, value: float | None) -> None:
    raise DrkitError(
        f"{run.out}: the training loss became {value if value is not None else 'non-finite on another rank'} "
        f"at epoch {state.epoch + 1}, batch {state.batch + 1}; stopped and {_kept(run)}; "
        "check the labels for extreme values or lower --lr")


def _check_weights(run: _Run, state: LoopState) -> None:
    """Stop before non-finite weights are saved or scored (a finite loss can still have given
    non-finite gradients)."""
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise DrkitError(f"{run.out}: the weights became non-finite (NaN/inf) by epoch {state.epoch + 1}, "
                         f"batch {state.batch}; stopped and {_kept(run)}; check the labels for extreme "
                         "values or lower --lr")


def _save(run: _Run, state: LoopState, path: Path, with_opt: bool) -> None:
    """Save a checkpoint (rank 0 writes), never one with non-finite weights. With the optimizer
    (last.pt) every rank must call it: the ranks' RNG states are gathered."""
    _check_weights(run, state)
    extra: dict[str, Any] = {}
    if with_opt and run.ctx.distributed:
        extra["rng_ranks"] = distributed.gather(run.ctx, torch.get_rng_state())
    if with_opt and run.scaler.is_enabled():
        extra["grad_scaler"] = run.scaler.state_dict()
    if not run.ctx.main:
        return
    ck = dataclasses.replace(
        run.template, state_dict={k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()},
        train_state={**state.to_dict(), **extra}, optimizer=run.opt.state_dict() if with_opt else None,
        rng=torch.get_rng_state() if with_opt else None,
        aux=run.aux.state_dict() if with_opt and run.aux is not None else None, drkit_version=__version__)
    save_checkpoint(ck, path)
