"""Data-parallel training under ``torchrun`` (torch.distributed + DistributedDataParallel).

``torchrun --nproc_per_node N -m drkit.cli train-dr ...`` (or ``train-task``) starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`context` sees them,
joins the process group once per process (backend ``nccl`` on CUDA, ``gloo`` on CPU) and gives
each rank its device (``cuda:LOCAL_RANK`` on CUDA). Without those variables it is a one-process
run (rank 0 of 1) and nothing of torch.distributed is touched.

How drkit.train.fit uses it: every rank builds the same global batches (the order is a function
of (seed, epoch), drkit.batching) and takes its contiguous part of each (drkit.batching.part), so
``--batch-size`` is the global batch and the learning rate means what it means in a one-process
run. Only rank 0 writes (checkpoints, metrics.jsonl, config.json) and logs.
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import torch

from . import log
from .errors import DrkitError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None     # None: not distributed

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0


_CTX: Context | None = None


def launch(n: int, stage: str, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``drkit <stage> <args>`` under ``torchrun --standalone --nproc_per_node n`` and wait.

    The launcher is the ``torchrun`` beside this Python (``python -m torch.distributed.run`` where
    there is none); the children get ``OMP_NUM_THREADS=1`` and none of a surrounding launch's
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` variables. Output is captured, not raised on:
    the caller reads ``returncode``, ``stdout`` and ``stderr``. Used by the DDP tests and the GPU check.
    """
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", f"--nproc_per_node={n}", "-m", "drkit.cli", stage, *map(str, args)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the env)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def context(device: str = "auto") -> Context:
    """This process's place in the run; joins the process group the first time (idempotent).
    ``device``: the --device option (``auto``, ``cpu``, ``cuda``...), which picks the backend.
    Ranks other than 0 are made quiet (errors only)."""
    global _CTX
    if _CTX is not None:
        return _CTX
    if not launched() or int(os.environ["WORLD_SIZE"]) <= 1:
        _CTX = Context()
        return _CTX
    import torch.distributed as dist
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise DrkitError(f"--device {device} under torchrun, but CUDA is not available here")
        if local >= torch.cuda.device_count():
            raise DrkitError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s): "
                             "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        kw = {"device_id": torch.device("cuda", local)} if cuda else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kw)
        atexit.register(_shutdown)
    _CTX = Context(rank, world, local, backend)
    if rank != 0:
        log.set_verbosity(0)
    return _CTX


def _shutdown() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def device_of(ctx: Context, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when the run is on CUDA, else ``device``."""
    if ctx.distributed and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def _dev(ctx: Context) -> torch.device:
    """Where collective tensors live: the GPU for nccl, the CPU for gloo."""
    return torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce(ctx: Context, values: list[float], op: str = "sum") -> list[float]:
    """Elementwise sum (or max) of ``values`` over the ranks (float64); as is in a 1-process run."""
    if not ctx.distributed or not values:
        return list(values)
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=_dev(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast(ctx: Context, obj):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_dev(ctx))
    return box[0]


def gather(ctx: Context, obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist
    out: list = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        import torch.distributed as dist
        dist.barrier()


def wrap(ctx: Context, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when the run has several ranks (gradients are
    averaged over the ranks in backward; rank 0's weights are broadcast when it is made)."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)   # drkit's networks have no buffers (GroupNorm): nothing to sync
