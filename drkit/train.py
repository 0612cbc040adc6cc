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
as ``aux``: an object with ``to(device)``, ``state_dict()`` and ``load_state_dict(d)``; under
torchrun also ``distributed_ok = True``, ``distribute(wrap)`` (wrap its modules in DDP) and a
``loss_scale`` attribute fit sets before each step (drkit.objectives.Pix2Pix). Its
state is saved in last.pt under the key ``aux`` and restored on resume; best.pt and the model
weights stay the model's alone.

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
import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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


# settings that change how a run computes, not what it trains, and provenance records (``data``):
# recorded, but resuming with other values is allowed (and checkpoints from before they existed resume)
RUNTIME_SETTINGS = ("precision", "channels_last", "compile", "data")


def _settings(config) -> dict:
    """A checkpoint config as a dict without the RUNTIME_SETTINGS of its ``train`` record."""
    d = config.to_dict()
    if isinstance(d.get("train"), dict):
        d["train"] = {k: v for k, v in d["train"].items() if k not in RUNTIME_SETTINGS}
    return d

# ---------------------------------------------------------------- the loop

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


def fit(*args, **kwargs) -> dict[str, Any]:
    """Train in ``cfg.out`` while holding its run lock (``run_folder``); see ``_fit``."""
    cfg = args[1] if len(args) > 1 else kwargs["cfg"]
    with run_folder(Path(cfg.out), cfg.device):
        return _fit(*args, **kwargs)


def _fit(model: torch.nn.Module, cfg: LoopConfig, template: Checkpoint,
        batches: Callable[..., Iterator], n_batches: int,
        step: Callable[[torch.nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]],
        validate: Callable[[torch.nn.Module, torch.device], dict[str, float]] | None,
        monitor: str, mode: str = "max", aux: Any = None) -> dict[str, Any]:
    """Train ``model``. ``batches(epoch, start, rank, world)`` yields ``(batch, weight)`` for the
    epoch's global batches from index ``start`` on (deterministically): this rank's part of each
    and its share of the global batch (drkit.batching.part; ``(whole batch, 1.0)`` in a one-process
    run). A ``batches(epoch, start)`` without ``rank`` and ``world`` parameters yields the batches
    themselves and runs in one process only. ``step(net, batch, device)`` returns the loss and per-batch metrics; ``net`` is the
    network wrapped by drkit.precision.Forward (and DDP): call it like the model, or
    ``net(x, method="name")`` for another method; its outputs are fp32. ``validate(net, device)``
    returns metrics including ``monitor`` (without it, the training metric of that name is used).
    ``template`` (kind, model spec, config, DR networks of a bundle) is what every checkpoint
    holds besides the weights and the progress. ``aux``: extra training state saved in last.pt
    and restored on resume (module docstring)."""
    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not (cfg.resume or cfg.overwrite):
        raise DrkitError(f"{out}: holds a run already; pass --resume to continue it or "
                         "--overwrite to start again")
    ctx = distributed.context(cfg.device)
    sharded = {"rank", "world"} <= set(inspect.signature(batches).parameters)
    if ctx.distributed and not sharded:
        raise DrkitError("this training loop's batches(epoch, start) cannot be split over ranks; "
                         "run it in one process (without torchrun)")
    device = distributed.device_of(ctx, pick_device(cfg.device))
    prec = precision.check(cfg.precision, device, warn=ctx.main)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
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
    # ep_*: the current epoch's running sums so far (a mid-epoch resume writes a whole record)
    st = {"epoch": 0, "batch": 0, "global_step": 0, "elapsed": 0.0, "best": None,
          "best_epoch": None, "finished": False,
          "ep_sums": {}, "ep_seen": 0, "ep_time": 0.0, "ep_wait": 0.0}
    if cfg.resume and last.exists():
        ck = load_checkpoint(last)
        if ck.model != template.model or _settings(ck.config) != _settings(template.config):
            raise DrkitError(f"{last}: was trained with other settings; resume with the same "
                             "options or use --overwrite")
        model.load_state_dict(ck.state_dict)
        opt.load_state_dict(ck.optimizer)
        if aux is not None:
            if ck.aux is None:
                raise DrkitError(f"{last}: has no 'aux' training state to resume from; use --overwrite")
            aux.load_state_dict(ck.aux)
        saved = dict(ck.train_state)
        rngs = saved.pop("rng_ranks", None)
        if saved.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(saved["grad_scaler"])
        saved.pop("grad_scaler", None)
        st.update(saved)
        if rngs is not None and len(rngs) == ctx.world:
            torch.set_rng_state(rngs[ctx.rank])
        elif ctx.rank == 0:
            torch.set_rng_state(ck.rng)
        else:   # another number of ranks than the interrupted run: a fresh stream per rank
            torch.manual_seed(_rank_seed(cfg.seed, ctx.rank, st["global_step"]))
        if st["finished"]:
            log.info(f"{out}: run already finished (epoch {st['epoch']}); nothing to do")
            return st
        log.info(f"resuming {out} at epoch {st['epoch'] + 1}, batch {st['batch']}")
    else:
        if ctx.rank > 0:   # own dropout masks per rank; rank 0 draws as a one-process run does
            torch.manual_seed(_rank_seed(cfg.seed, ctx.rank))
        if cfg.overwrite and ctx.main:
            for f in ("last.pt", "best.pt", "metrics.jsonl"):
                (out / f).unlink(missing_ok=True)
    if ctx.main:
        write_json_atomic(out / "config.json", {
            "kind": template.kind, "model": template.model.to_dict(), "config": template.config.to_dict(),
            "dr_nets": [{"model": n.model.to_dict(), "config": n.config.to_dict()} for n in template.dr_nets],
            "loop": dataclasses.asdict(cfg), "world_size": ctx.world, "drkit_version": __version__}, indent=2)
    fwd = precision.Forward(net, prec, device.type, cfg.channels_last)   # validation: no DDP
    train_net = distributed.wrap(ctx, fwd, device)                       # what step() calls

    def ckpt(with_opt: bool, extra: dict) -> Checkpoint:
        return dataclasses.replace(
            template, state_dict={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            train_state={**st, **extra}, optimizer=opt.state_dict() if with_opt else None,
            rng=torch.get_rng_state() if with_opt else None,
            aux=aux.state_dict() if with_opt and aux is not None else None, drkit_version=__version__)

    def kept() -> str:
        have = [f for f in ("last.pt", "best.pt") if (out / f).exists()]
        return f"kept the last good checkpoint ({', '.join(have)})" if have else "no checkpoint was saved yet"

    def check_weights() -> None:
        """Stop before non-finite weights are saved or scored (a finite loss can still have given
        non-finite gradients)."""
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise DrkitError(f"{out}: the weights became non-finite (NaN/inf) by epoch {st['epoch'] + 1}, "
                             f"batch {st['batch']}; stopped and {kept()}; check the labels for extreme "
                             "values or lower --lr")

    def save(path: Path, with_opt: bool) -> None:
        """Save a checkpoint (rank 0 writes), never one with non-finite weights. With the optimizer
        (last.pt) every rank must call it: the ranks' RNG states are gathered."""
        check_weights()
        extra: dict[str, Any] = {}
        if with_opt and ctx.distributed:
            extra["rng_ranks"] = distributed.gather(ctx, torch.get_rng_state())
        if with_opt and scaler.is_enabled():
            extra["grad_scaler"] = scaler.state_dict()
        if ctx.main:
            save_checkpoint(ckpt(with_opt, extra), path)

    def sync_sums(sums: dict[str, float]) -> None:
        """Each rank's running sums replaced by their mean over the ranks (the global sums)."""
        if ctx.distributed:
            keys = sorted(sums)
            vals = distributed.all_reduce(ctx, [sums[k] for k in keys])
            sums.update({k: v / ctx.world for k, v in zip(keys, vals)})

    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    budget = cfg.time_budget or math.inf
    where = f"{ctx.world} processes ({ctx.backend}), " if ctx.distributed else ""
    log.info(f"training on {where}{device} at {prec} for {cfg.epochs} epoch(s) of {n_batches} batches"
             + (f", at most {budget:.0f} s" if cfg.time_budget else "") + f" -> {out}")
    t_start = time.perf_counter() - st["elapsed"]
    last_save = time.perf_counter()
    prog = log.progress(TextColumn("{task.fields[info]}"))
    with prog:
        task = prog.add_task("train", total=cfg.epochs * n_batches,
                             completed=st["epoch"] * n_batches + st["batch"], info="")
        while st["epoch"] < cfg.epochs and not st["finished"]:
            train_net.train()
            sums: dict[str, float] = dict(st["ep_sums"])
            st["ep_sums"] = sums
            time0, wait0 = st["ep_time"], st["ep_wait"]
            t_ep = time.perf_counter()
            data = ReadAhead(batches(st["epoch"], st["batch"], ctx.rank, ctx.world) if sharded
                             else ((b, 1.0) for b in batches(st["epoch"], st["batch"])), depth=3)
            try:
                for batch, weight in data:
                    if ctx.distributed and aux is not None:
                        aux.loss_scale = weight * ctx.world   # its own losses, e.g. pix2pix's discriminator
                    loss, stats = step(train_net, batch, device)
                    lv = float(loss.detach())
                    bad = not math.isfinite(lv)

                    def stop_bad():
                        raise DrkitError(
                            f"{out}: the training loss became {lv if bad else 'non-finite on another rank'} "
                            f"at epoch {st['epoch'] + 1}, batch {st['batch'] + 1}; stopped and {kept()}; "
                            "check the labels for extreme values or lower --lr")
                    if bad and not ctx.distributed:
                        stop_bad()
                    opt.zero_grad(set_to_none=True)
                    if ctx.distributed:   # DDP averages over the ranks: scale to the global mean
                        loss = loss * (weight * ctx.world)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    elapsed = time.perf_counter() - t_start
                    out_of_time = elapsed >= budget
                    save_due = time.perf_counter() - last_save > cfg.save_every_s
                    if ctx.distributed:   # one decision for every rank: rank 0's clock, any rank's NaN
                        flags = distributed.all_reduce(
                            ctx, [float(bad), float(out_of_time and ctx.main), float(save_due and ctx.main)], "max")
                        bad, out_of_time, save_due = (f > 0 for f in flags)
                        if bad:
                            stop_bad()
                    st["ep_seen"] += 1
                    scale = weight * ctx.world
                    for k, v in {"loss": lv, **stats}.items():
                        sums[k] = sums.get(k, 0.0) + (v * scale if ctx.distributed else v)
                    st["batch"] += 1
                    st["global_step"] += 1
                    st["elapsed"] = elapsed
                    prog.update(task, advance=1, info=" ".join(
                        f"{k} {v / st['ep_seen']:.4g}" for k, v in sums.items()))
                    if out_of_time:
                        st["finished"] = True
                        break
                    if save_due:
                        st["ep_time"] = time0 + time.perf_counter() - t_ep
                        st["ep_wait"] = wait0 + data.wait
                        sync_sums(sums)
                        save(last, True)
                        last_save = time.perf_counter()
            finally:
                data.close()
            check_weights()
            sync_sums(sums)
            ep_time = time0 + time.perf_counter() - t_ep
            wait, n_seen = wait0 + data.wait, st["ep_seen"]
            rec = {"epoch": st["epoch"] + 1, "step": st["global_step"],
                   "seconds": round(st["elapsed"], 1),
                   **{f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()},
                   "batches_per_s": round(n_seen / ep_time, 3) if ep_time else None,
                   "data_wait_share": round(wait / ep_time, 4) if ep_time else None}
            st.update(ep_sums={}, ep_seen=0, ep_time=0.0, ep_wait=0.0)   # the record is written below
            if ctx.main:   # validation, best, early stopping and the record: rank 0 decides
                if validate is not None:
                    fwd.eval()
                    with torch.no_grad():
                        rec.update({f"val_{k}": float(v) for k, v in validate(fwd, device).items()})
                key = f"val_{monitor}" if validate is not None else f"train_{monitor}"
                value = rec.get(key)
                if st["batch"] >= n_batches or st["finished"]:
                    st["epoch"] += 1
                    st["batch"] = 0
                if st["epoch"] >= cfg.epochs:
                    st["finished"] = True
                if value is not None and value == value and (st["best"] is None or better(value, st["best"])):
                    st["best"], st["best_epoch"] = value, rec["epoch"]
                    save(out / "best.pt", False)
                rec["best"] = st["best"]
                if (cfg.patience and st["best_epoch"] is not None and not st["finished"]
                        and rec["epoch"] - st["best_epoch"] >= cfg.patience):
                    st["finished"] = True
                    log.info(f"no better {key} for {cfg.patience} epochs (best {st['best']:.4g}, epoch "
                             f"{st['best_epoch']}): stopping")
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if ctx.distributed:
                st = distributed.broadcast(ctx, st)
            save(last, True)
            last_save = time.perf_counter()
            log.info("epoch {epoch}: ".format(**rec) + ", ".join(
                f"{k} {v:.4g}" for k, v in rec.items()
                if isinstance(v, float) and k != "seconds" and "/" not in k))   # no per-target detail
    if ctx.main and not (out / "best.pt").exists():   # the monitored metric was never defined (e.g. constant labels)
        save(out / "best.pt", False)
    distributed.barrier(ctx)   # every rank returns once rank 0's files are written
    return st
