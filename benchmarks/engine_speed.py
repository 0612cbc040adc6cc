"""Inference engines compared: crops/s of a task bundle's networks (the MDR stack and the task
network, ``Predictor.predict_crops``) run by torch and by onnxruntime, on the same random crops.

    python benchmarks/engine_speed.py [--dr pretrained:T5-slim] [--bundle RUN_OR_BEST_PT]
        [--crop-size 112] [--map-size 112] [--arch small] [--targets 17] [--batch-sizes 1,8,32]
        [--repeats 7] [--seconds 1.0] [--threads N] [--json OUT]

Bundle: ``--bundle`` (a train-task run, its best.pt, or pretrained:NAME of kind task), else one
built in memory from the DR network ``--dr`` (default the shipped slim ``pretrained:T5-slim``:
net_size 64, width 8) and a task network ``--arch`` (small_cnn, width 16, ``--targets`` AU
outputs, random initialisation: only the architecture matters for speed) on image + DR channels
at ``--map-size``, for crops of ``--crop-size`` (112, as the shipped DR models were trained on).
It is the computation of `drkit predict` per face: crop 112 -> DR net at 64 -> DR resized to the
112 px map, stacked with the image -> small CNN.

Engines, both fp32 on the CPU:
- ``torch``: ``Predictor(engine="torch")`` as `drkit predict --engine torch` runs it (channels_last);
- ``onnxruntime``: ``Predictor(engine="onnxruntime")``: the two graphs drkit.export makes in
  memory (the MDR stack, then the task part), run by onnxruntime (CPU provider).

For each batch size the engines take turns (torch, onnxruntime, torch, ...) ``--repeats`` times;
each turn runs ``predict_crops`` on one fixed batch of random uint8 crops for about ``--seconds``
(after one warm-up call per engine and batch size) and counts crops/s. The median over the turns
is printed per engine, with the ratio onnxruntime / torch (> 1: onnxruntime faster). Before
timing, the two engines' outputs on the same crops are compared (max abs difference).
``--threads N`` sets both engines' intra-op threads (torch.set_num_threads and onnxruntime's
session); by default torch keeps its own default and onnxruntime gets the same number.
Interleaving keeps slow drifts of a shared machine (other jobs) out of the ratio; the spread
(min-max over turns) is printed beside each median. On a machine whose cores other processes
keep busy, torch's OpenMP threads lose far more than onnxruntime's (which do not spin): compare
``--threads 1`` there too, and note the load average (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from drkit import log
from drkit.checkpoint import Checkpoint, load_checkpoint
from drkit.contracts import FaceStoreParams, ModelSpec, TaskConfig
from drkit.mdr import channel_names
from drkit.nets import create_model
from drkit.predictor import Predictor, load_bundle


def make_bundle(dr: str, crop_size: int, map_size: int, arch: str, n_targets: int, seed: int = 0) -> Checkpoint:
    """A task bundle (in memory) on image + the DR of ``dr``: what train-task would save, with a
    randomly initialised task network."""
    ck = load_checkpoint(dr, "dr")
    names = channel_names([ck.config], True)
    C = len(names)
    spec = {"small": ModelSpec("small_cnn", {"in_ch": C, "n_out": n_targets, "width": 16}),
            "vgg16": ModelSpec("vgg16", {"in_ch": C, "n_out": n_targets}),
            "dr_encoder": ModelSpec("dr_encoder", {"in_ch": C, "n_out": n_targets}),
            "hg_hmr": ModelSpec("hg_hmr", {"in_ch": C, "n_out": n_targets, "width": 32})}[arch]
    torch.manual_seed(seed)
    net = create_model(spec.name, **spec.kwargs)
    targets = [f"AU{i:02d}" for i in range(1, n_targets + 1)]
    config = TaskConfig(task="au", input_kind="mdr", targets=targets, channels=list(range(C)),
                        store_channels=names, norm_mean=[0.4] * 3 + [0.0] * (C - 3),
                        norm_std=[0.25] * 3 + [0.05] * (C - 3), map_size=map_size, image=True,
                        preprocess=FaceStoreParams(crop_size=crop_size), value_range=[[0.0, 5.0]] * n_targets)
    return Checkpoint(kind="task", model=spec, config=config, state_dict=net.state_dict(), dr_nets=[ck.dr_net()])


def crops_per_second(pred: Predictor, crops: np.ndarray, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        pred.predict_crops(crops)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n * len(crops) / dt


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dr", default="pretrained:T5-slim", help="DR checkpoint of the built bundle")
    ap.add_argument("--bundle", help="use this task bundle instead of building one")
    ap.add_argument("--crop-size", type=int, default=112)
    ap.add_argument("--map-size", type=int, default=112)
    ap.add_argument("--arch", default="small", choices=["small", "vgg16", "dr_encoder", "hg_hmr"])
    ap.add_argument("--targets", type=int, default=17)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=7, help="turns per engine and batch size")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one turn")
    ap.add_argument("--threads", type=int, help="intra-op threads of both engines (default: torch's default)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    log.set_verbosity(0)
    bundle = load_bundle(a.bundle) if a.bundle else make_bundle(a.dr, a.crop_size, a.map_size, a.arch, a.targets)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    preds = {"torch": Predictor(bundle, "cpu", engine="torch"),
             "onnxruntime": Predictor(bundle, "cpu", engine="onnxruntime", engine_threads=threads)}
    export_s = time.perf_counter() - t0
    S = bundle.config.preprocess.crop_size
    rng = np.random.default_rng(0)
    what = (a.bundle or f"{a.dr} (crop {S}, map {bundle.config.map_size}) + {bundle.model.name}, "
            f"{len(bundle.config.targets)} targets")
    print(f"bundle: {what}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{__import__('onnxruntime').__version__} ({threads} threads, "
          f"{preds['onnxruntime']._graphs.engine(S).provider}), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; set-up of both {export_s:.1f} s")
    x = rng.integers(0, 256, (8, S, S, 3), dtype=np.uint8)
    (yt, mt), (yo, mo) = preds["torch"].predict_crops(x), preds["onnxruntime"].predict_crops(x)
    diff = {"values": float(np.abs(yt - yo).max()), "mdr": float(np.abs(mt - mo).max())}
    print(f"max abs difference onnxruntime - torch on 8 random crops: values {diff['values']:.2e}, "
          f"mdr {diff['mdr']:.2e}")
    rows = []
    print(f"{'batch':>5} {'torch crops/s':>20} {'onnxruntime crops/s':>22} {'ratio ort/torch':>16}")
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        crops = rng.integers(0, 256, (bs, S, S, 3), dtype=np.uint8)
        rates: dict[str, list[float]] = {k: [] for k in preds}
        for p in preds.values():
            p.predict_crops(crops)   # warm-up
        for _ in range(a.repeats):
            for k, p in preds.items():
                rates[k].append(crops_per_second(p, crops, a.seconds))
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio = med["onnxruntime"] / med["torch"]
        rows.append({"batch": bs, **{f"{k}_median": med[k] for k in med}, **{f"{k}_all": rates[k] for k in rates},
                     "ratio": ratio})
        cell = {k: f"{med[k]:.0f} ({min(rates[k]):.0f}-{max(rates[k]):.0f})" for k in med}
        print(f"{bs:>5} {cell['torch']:>20} {cell['onnxruntime']:>22} {ratio:>16.2f}")
    out = {"bundle": what, "threads": threads, "torch": torch.__version__, "diff": diff, "rows": rows,
           "repeats": a.repeats, "seconds": a.seconds}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
