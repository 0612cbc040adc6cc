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
as ``aux``: an object with ``to(device)``, ``state_dict()`` and ``load_state_dict(d)``. Its
state is saved in last.pt under the key ``aux`` and restored on resume; best.pt and the model
weights stay the model's alone.

A non-finite loss (or non-finite weights) stops the run with a DrkitError before anything more
is saved: last.pt and best.pt keep the last good state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.progress import TextColumn

from . import __version__, log
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .errors import DrkitError
from .fsutil import write_json_atomic
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

# ---------------------------------------------------------------- data prefetch

class Prefetch:
    """Run a batch iterator in a background thread; records how long the consumer waited."""

    def __init__(self, it: Iterator, depth: int = 3):
        self.q: queue.Queue = queue.Queue(depth)
        self.wait = 0.0
        self._err: BaseException | None = None
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, args=(it,), daemon=True)
        self.t.start()

    def _run(self, it: Iterator) -> None:
        try:
            for x in it:
                while not self._stop.is_set():
                    try:
                        self.q.put(x, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if self._stop.is_set():
                    return
        except BaseException as e:   # re-raised in the consumer
            self._err = e
        self.q.put(StopIteration)

    def __iter__(self):
        while True:
            t = time.perf_counter()
            x = self.q.get()
            self.wait += time.perf_counter() - t
            if x is StopIteration:
                if self._err:
                    raise self._err
                return
            yield x

    def close(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------- the loop

def fit(model: torch.nn.Module, cfg: LoopConfig, template: Checkpoint,
        batches: Callable[[int, int], Iterator], n_batches: int,
        step: Callable[[torch.nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]],
        validate: Callable[[torch.nn.Module, torch.device], dict[str, float]] | None,
        monitor: str, mode: str = "max", aux: Any = None) -> dict[str, Any]:
    """Train ``model``. ``batches(epoch, start)`` yields the epoch's batches from index ``start``
    on (deterministically); ``step`` returns the loss and per-batch metrics; ``validate`` returns
    metrics including ``monitor`` (without it, the training metric of that name is used).
    ``template`` (kind, model spec, config, DR networks of a bundle) is what every checkpoint
    holds besides the weights and the progress. ``aux``: extra training state saved in last.pt
    and restored on resume (module docstring)."""
    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not (cfg.resume or cfg.overwrite):
        raise DrkitError(f"{out}: holds a run already; pass --resume to continue it or "
                         "--overwrite to start again")
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if aux is not None:
        aux.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # ep_*: the current epoch's running sums so far (a mid-epoch resume writes a whole record)
    st = {"epoch": 0, "batch": 0, "global_step": 0, "elapsed": 0.0, "best": None,
          "best_epoch": None, "finished": False,
          "ep_sums": {}, "ep_seen": 0, "ep_time": 0.0, "ep_wait": 0.0}
    if cfg.resume and last.exists():
        ck = load_checkpoint(last)
        if ck.model != template.model or ck.config.to_dict() != template.config.to_dict():
            raise DrkitError(f"{last}: was trained with other settings; resume with the same "
                             "options or use --overwrite")
        model.load_state_dict(ck.state_dict)
        opt.load_state_dict(ck.optimizer)
        if aux is not None:
            if ck.aux is None:
                raise DrkitError(f"{last}: has no 'aux' training state to resume from; use --overwrite")
            aux.load_state_dict(ck.aux)
        st.update(ck.train_state)
        torch.set_rng_state(ck.rng)
        if st["finished"]:
            log.info(f"{out}: run already finished (epoch {st['epoch']}); nothing to do")
            return st
        log.info(f"resuming {out} at epoch {st['epoch'] + 1}, batch {st['batch']}")
    elif cfg.overwrite:
        for f in ("last.pt", "best.pt", "metrics.jsonl"):
            (out / f).unlink(missing_ok=True)
    write_json_atomic(out / "config.json", {
        "kind": template.kind, "model": template.model.to_dict(), "config": template.config.to_dict(),
        "dr_nets": [{"model": n.model.to_dict(), "config": n.config.to_dict()} for n in template.dr_nets],
        "loop": dataclasses.asdict(cfg), "drkit_version": __version__}, indent=2)

    def ckpt(with_opt: bool) -> Checkpoint:
        return dataclasses.replace(
            template, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            train_state=dict(st), optimizer=opt.state_dict() if with_opt else None,
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
        """Save a checkpoint, never one with non-finite weights."""
        check_weights()
        save_checkpoint(ckpt(with_opt), path)

    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    budget = cfg.time_budget or math.inf
    log.info(f"training on {device} for {cfg.epochs} epoch(s) of {n_batches} batches"
             + (f", at most {budget:.0f} s" if cfg.time_budget else "") + f" -> {out}")
    t_start = time.perf_counter() - st["elapsed"]
    last_save = time.perf_counter()
    prog = log.progress(TextColumn("{task.fields[info]}"))
    with prog:
        task = prog.add_task("train", total=cfg.epochs * n_batches,
                             completed=st["epoch"] * n_batches + st["batch"], info="")
        while st["epoch"] < cfg.epochs and not st["finished"]:
            model.train()
            sums: dict[str, float] = dict(st["ep_sums"])
            st["ep_sums"] = sums
            time0, wait0 = st["ep_time"], st["ep_wait"]
            t_ep = time.perf_counter()
            data = Prefetch(batches(st["epoch"], st["batch"]))
            try:
                for batch in data:
                    loss, stats = step(model, batch, device)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise DrkitError(
                            f"{out}: the training loss became {lv} at epoch {st['epoch'] + 1}, batch "
                            f"{st['batch'] + 1}; stopped and {kept()}; check the labels for extreme "
                            "values or lower --lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    st["ep_seen"] += 1
                    for k, v in {"loss": lv, **stats}.items():
                        sums[k] = sums.get(k, 0.0) + v
                    st["batch"] += 1
                    st["global_step"] += 1
                    st["elapsed"] = time.perf_counter() - t_start
                    prog.update(task, advance=1, info=" ".join(
                        f"{k} {v / st['ep_seen']:.4g}" for k, v in sums.items()))
                    if st["elapsed"] >= budget:
                        st["finished"] = True
                        break
                    if time.perf_counter() - last_save > cfg.save_every_s:
                        st["ep_time"] = time0 + time.perf_counter() - t_ep
                        st["ep_wait"] = wait0 + data.wait
                        save(last, True)
                        last_save = time.perf_counter()
            finally:
                data.close()
            check_weights()
            ep_time = time0 + time.perf_counter() - t_ep
            wait, n_seen = wait0 + data.wait, st["ep_seen"]
            rec = {"epoch": st["epoch"] + 1, "step": st["global_step"],
                   "seconds": round(st["elapsed"], 1),
                   **{f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()},
                   "batches_per_s": round(n_seen / ep_time, 3) if ep_time else None,
                   "data_wait_share": round(wait / ep_time, 4) if ep_time else None}
            st.update(ep_sums={}, ep_seen=0, ep_time=0.0, ep_wait=0.0)   # the record is written below
            if validate is not None:
                model.eval()
                with torch.no_grad():
                    rec.update({f"val_{k}": float(v) for k, v in validate(model, device).items()})
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
            save(last, True)
            last_save = time.perf_counter()
            log.info("epoch {epoch}: ".format(**rec) + ", ".join(
                f"{k} {v:.4g}" for k, v in rec.items()
                if isinstance(v, float) and k != "seconds" and "/" not in k))   # no per-target detail
    if not (out / "best.pt").exists():   # the monitored metric was never defined (e.g. constant labels)
        save(out / "best.pt", False)
    return st
