"""`drkit eval-task`: score a trained task bundle (train-task's best.pt, or its run folder) on the
labelled frames of DR stores, on people it never saw. The metrics are the flat dict train-task
writes to ``val_metrics.json``: ``"frames"``, then per metric the mean over targets (``"icc"``)
and each target (``"icc/AU06"``).
"""

from __future__ import annotations

from .. import log
from ..checkpoint import load_checkpoint
from ..configs import EvalTaskConfig
from ..fsutil import write_json_atomic
from ..nets import pick_device
from ..tasks import EvalTaskResult, evaluate_bundle


def run(cfg: EvalTaskConfig) -> EvalTaskResult:
    bundle = load_checkpoint(cfg.model, "task")
    res = evaluate_bundle(bundle, cfg.stores, cfg.labels, cfg.people, cfg.missing, pick_device(cfg.device))
    out = EvalTaskResult(res.pop("frames"), res)
    if cfg.json:
        write_json_atomic(cfg.json, out.to_dict())
        log.info(f"eval-task: {out.frames} frames -> {cfg.json}")
    return out
