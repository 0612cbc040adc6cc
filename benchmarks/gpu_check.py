"""The CUDA paths in one short run, for a lent GPU machine (issue 23, item 5): what the CPU test
suite can only cover by the same logic on a CPU. Small synthetic stores (the tests' drifting
blobs), so it needs no face backend and no data; about two minutes on a GPU.

    python benchmarks/gpu_check.py --json OUT.json [--device cuda] [--ddp 1,2]

Checks, each a row of the JSON (``ok`` false with the reason where one fails; the script goes on):

- ``train_dr_<precision>`` for fp32, bf16, fp16 (GradScaler): 3 epochs of train-dr on the
  device; held-out ranking accuracy beside identity (it must learn: > identity + 0.04), every
  loss finite, fp16's loss scale saved in last.pt, the checkpoint loads with weights_only on the
  CPU and gives the device's DR maps there (max |diff| relative to the maps' scale).
- ``resume``: 1 epoch, then --resume to 2, against one 2-epoch run (max weight difference).
- ``ddp_<n>``: train-dr under ``torchrun --nproc_per_node n`` on the device (nccl), against the
  one-process run of the same global batches; n > 1 only with that many GPUs (NCCL refuses two
  ranks on one GPU, and a launched world of 1 runs drkit's one-process path: on a one-GPU machine
  nccl itself is not exercised, only the launcher).
- ``gen_dr``: the MDR store written on the device against the CPU's, in float16 steps.
- ``train_task_<precision>``: train-task on the device; eval ICC finite; the bundle predicts on
  the CPU what it predicts on the device.
- ``throughput``: Predictor.predict_crops of the shipped ``pretrained:au`` on the device, crops
  per second at batch 32 and 256 (the networks of `drkit predict`, without decoding and
  tracking, which stay on the CPU), fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))   # the tests' synthetic stores
from conftest import labelled_blobs, make_face_store, moving_blob_frames

from drkit import distributed
from drkit.checkpoint import load_checkpoint
from drkit.configs import EvalTaskConfig, GenDRConfig, TrainTaskConfig
from drkit.stages import eval_task, gen_dr, train_dr, train_task
from drkit.store import open_store

ROWS: list[dict] = []


def run_check(name: str, fn, *args) -> None:
    """``fn(*args)`` -> its dict (plus ok, seconds) as a row; a check that breaks is a finding:
    recorded with its error, and the script goes on."""
    t0 = time.perf_counter()
    try:
        row = {"check": name, **(fn(*args) or {})}
        row.setdefault("ok", True)
    except Exception as e:   # noqa: BLE001 -- any failure is this check's result
        row = {"check": name, "ok": False, "error": f"{type(e).__name__}: {e}",
               "trace": traceback.format_exc()[-1500:]}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    ROWS.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)


class Ctx:
    """What the checks share: the device, the work folder, the synthetic stores."""

    def __init__(self, device: str, work: Path):
        self.device, self.dev, self.work = device, torch.device(device), work
        self.cuda = self.dev.type == "cuda"
        self.gpus = torch.cuda.device_count() if self.cuda else 0
        self.train = make_face_store(work / "train.zarr", {f"tr{i}": moving_blob_frames(40, 32, seed=i) for i in range(3)})
        self.test = make_face_store(work / "test.zarr", {"te0": moving_blob_frames(40, 32, seed=100)})
        self.store = self.labels = self.mdr = None

    def dr_cfg(self, out: Path, **kw) -> train_dr.TrainDRConfig:
        args = {"stores": [self.train], "out": out, "T": 3, "stride": 1, "net_size": 32, "base": 8, "depth": 2,
                "epochs": 3, "batch_size": 16, "flip": False, "jitter": 0, "lr": 3e-3, "device": self.device}
        return train_dr.TrainDRConfig(**{**args, **kw})


def _weights_diff(a: Path, b: Path) -> float:
    A, B = load_checkpoint(a, "dr").state_dict, load_checkpoint(b, "dr").state_dict
    return max(float((A[k].float() - B[k].float()).abs().max()) for k in A)


def train_dr_check(c: Ctx, p: str) -> dict:
    out = c.work / f"dr_{p}"
    train_dr.run(c.dr_cfg(out, val=[c.test], precision=p))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc, ident = recs[-1]["val_acc"], recs[-1]["val_identity_acc"]
    finite = all(np.isfinite(r["train_loss"]) for r in recs)
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    scale = (last.get("grad_scaler") or {}).get("scale")
    net = load_checkpoint(out / "best.pt", "dr").build_model().eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        on_cpu = net(x)
        on_dev = net.to(c.dev)(x.to(c.dev)).float().cpu()
    rel = float((on_cpu - on_dev).abs().max() / on_cpu.abs().max())
    ok = finite and acc > ident + 0.04 and rel < 1e-3 and (p != "fp16" or scale is not None)
    return {"ok": ok, "val_acc": acc, "identity": ident, "losses_finite": finite,
            "fp16_loss_scale": None if scale is None else float(scale), "cpu_vs_device_rel": rel}


def resume_check(c: Ctx) -> dict:
    one, again, two = c.work / "res_one", c.work / "res_again", c.work / "res_two"
    train_dr.run(c.dr_cfg(one, epochs=2))
    train_dr.run(c.dr_cfg(again, epochs=2))
    train_dr.run(c.dr_cfg(two, epochs=1))
    ck = torch.load(two / "last.pt", weights_only=True)
    ck["train_state"]["finished"] = False         # as if stopped after epoch 1 of 2
    torch.save(ck, two / "last.pt")
    train_dr.run(c.dr_cfg(two, epochs=2, resume=True))
    d, floor = _weights_diff(one / "last.pt", two / "last.pt"), _weights_diff(one / "last.pt", again / "last.pt")
    return {"ok": d <= max(1e-5, 2 * floor), "max_weight_diff": d, "two_clean_runs_diff": floor,
            "note": "ok: resumed within 1e-5 of one run, or within twice what two clean runs differ by "
                    "(non-deterministic GPU kernels, amplified by Adam)"}


def ddp_check(c: Ctx, n: int) -> dict:
    if n > max(c.gpus, 1) or (n > 1 and not c.cuda):
        return {"skipped": f"{n} processes need {n} GPUs (nccl: one GPU per process)"}
    ref, out = c.work / f"ddp_ref{n}", c.work / f"ddp_{n}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # as each launched process (OMP_NUM_THREADS=1): the same sums
    try:
        train_dr.run(c.dr_cfg(ref, epochs=1, batch_size=8))
    finally:
        torch.set_num_threads(threads)
    r = distributed.launch(n, "train-dr", [
        c.train, "-o", out, "--T", "3", "--stride", "1", "--size", "32", "--base", "8", "--depth", "2",
        "--epochs", "1", "--batch-size", "8", "--no-flip", "--jitter", "0", "--lr", "0.003", "--device", c.device])
    if r.returncode:
        return {"ok": False, "error": (r.stderr or r.stdout)[-1200:]}
    world = json.loads((out / "config.json").read_text())["world_size"]
    d = _weights_diff(ref / "last.pt", out / "last.pt")
    return {"ok": d < 1e-3 and world == n, "world_size": world, "max_weight_diff_vs_one_process": d,
            "backend": "nccl" if c.cuda and n > 1 else ("gloo" if n > 1 else "none (one process)")}


def gen_dr_check(c: Ctx) -> dict:
    c.store, c.labels = labelled_blobs(c.work / "task")
    drs = [c.work / "dr_fp32"]
    if not (drs[0] / "best.pt").is_file():
        train_dr.run(c.dr_cfg(drs[0]))
    outs = {}
    for d in ("cpu", c.device):
        outs[d] = c.work / f"mdr_{d.replace(':', '_')}.zarr"
        gen_dr.run(GenDRConfig(store=c.store, out=outs[d], dr=drs, device=d))
    c.mdr = outs[c.device]
    A, B = open_store(outs["cpu"]), open_store(outs[c.device])
    worst = 0.0
    for v in A.videos:
        x, y = A.video(v)["mdr"][:].astype(np.float32), B.video(v)["mdr"][:].astype(np.float32)
        worst = max(worst, float((np.abs(x - y) / np.maximum(np.abs(x), 1e-3)).max()))
    return {"ok": worst < 4 * 2.0 ** -10, "max_rel_diff": worst, "float16_step": 2.0 ** -10}


def train_task_check(c: Ctx, p: str) -> dict:
    from drkit.predictor import Predictor
    out = c.work / f"task_{p}"
    train_task.run(TrainTaskConfig(input=[c.mdr], out=out, labels=c.labels, epochs=3, device=c.device,
                                   precision=p, val_share=0.25))
    ev = eval_task.run(EvalTaskConfig(model=out, stores=[c.mdr], labels=c.labels)).to_dict()
    st = open_store(c.store)
    crops = st.video(st.videos[0])["frames"][:16]
    y_cpu = Predictor.from_bundle(out, device="cpu").predict_crops(crops)[0]
    y_dev = Predictor.from_bundle(out, device=c.device, precision=p).predict_crops(crops)[0]
    d = float(np.abs(y_cpu - y_dev).max())
    tol = 1e-3 if p == "fp32" else 0.1   # on a 0-5 scale; half precision rounds
    return {"ok": bool(np.isfinite(ev["icc"])) and d < tol, "icc": ev["icc"], "cpu_vs_device_max_diff": d}


def throughput(c: Ctx, precisions: list[str]) -> dict:
    from drkit.predictor import Predictor
    rows = {}
    for p in precisions:
        pr = Predictor.from_bundle("pretrained:au", device=c.device, precision=p)
        S = pr.crop_size
        for bs in (32, 256):
            crops = np.random.default_rng(0).integers(0, 256, (bs, S, S, 3), dtype=np.uint8)
            for _ in range(3):
                pr.predict_crops(crops)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 3:
                pr.predict_crops(crops)   # returns numpy: synchronised
                n += bs
            rows[f"{p}_batch{bs}"] = round(n / (time.perf_counter() - t0), 1)
    return {"crops_per_s": rows, "bundle": "pretrained:au"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ddp", default="1,2", help="process counts for torchrun (n > GPUs: skipped)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    c = Ctx(a.device, a.work or Path(tempfile.mkdtemp(prefix="drkit_gpu_check_")))
    env = {"torch": torch.__version__, "device": a.device,
           "name": torch.cuda.get_device_name(c.dev) if c.cuda else "cpu",
           "capability": list(torch.cuda.get_device_capability(c.dev)) if c.cuda else None, "gpus": c.gpus}
    print(json.dumps(env), flush=True)
    precisions = ["fp32", "bf16"] + (["fp16"] if c.cuda else [])
    for p in precisions:
        run_check(f"train_dr_{p}", train_dr_check, c, p)
    run_check("resume", resume_check, c)
    for n in sorted(set(map(int, a.ddp.split(",")))):
        run_check(f"ddp_{n}", ddp_check, c, n)
    run_check("gen_dr", gen_dr_check, c)
    if c.mdr is not None:
        for p in precisions:
            run_check(f"train_task_{p}", train_task_check, c, p)
    run_check("throughput", throughput, c, precisions)
    report = {"env": env, "checks": ROWS, "all_ok": all(r["ok"] for r in ROWS)}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    print("all ok" if report["all_ok"] else "FAILED: " + ", ".join(r["check"] for r in ROWS if not r["ok"]))
    sys.exit(0 if report["all_ok"] else 1)


if __name__ == "__main__":
    main()
