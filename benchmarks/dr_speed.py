"""DR training and inference speed against the hardware: images/s, achieved GFLOP/s and the share
of the device's measured matrix-multiply peak, per device (CPU, and CUDA when present), precision
(fp32, bf16) and size (112, 224 px), in one table; plus the train-dr stage itself (windows/s and
the share of training time spent waiting for data).

    python benchmarks/dr_speed.py [--quick] [--sizes 112,224] [--precisions fp32,bf16]
                                  [--devices cpu,cuda] [--seconds 5]
                                  [--stage-seconds 30] [--store faces.zarr] [--json out.json]

Rows:
- ``peak``: one large ``torch.matmul`` (N x N, N = 2048 on CPU, 8192 on CUDA), 2 N^3 FLOP each,
  timed at fp32 and bf16: the matrix-multiply rate each precision can reach on the device.
- ``dr-infer``: the default DR UNet, eval, batch 32, no grad, under the precision's autocast
  (drkit.precision); images/s. ``dr-infer-cl``: the same in channels_last memory format (what
  gen-dr and predict run by default); ``dr-infer-slim``: the slim UNet (width 8, as
  ``pretrained:T5-slim``), channels_last.
- ``dr-train``: one training step of the DR UNet (width 16) as train-dr runs it (T=5, batch 16:
  forward of the centre frames under autocast, the rank loss in fp32 on the 2T+1 frames,
  backward, Adam) in the standard layout (train-dr's default before 0.3.0); windows/s (one
  image through the network per window). Synthetic tensors: no data loading.
  ``dr-train-cl``: the same in channels_last (train-dr's default since 0.3.0);
  ``dr-train-slim``: width 8 (train-dr's default width), channels_last.
- ``train-dr`` / ``train-dr-std``: the `drkit train-dr` stage (width 16) for --stage-seconds on a
  store (generated frames unless --store is given), in channels_last / the standard layout,
  windows/s and its data-wait share from the metrics log.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one forward (dr-infer) or on
one forward + backward + loss (dr-train, the backward counted, not estimated), per image; GFLOP/s
= FLOP per image x images/s; "peak" = GFLOP/s / the same device's matmul rate at the same
precision. Threads: torch's default (printed); nothing is pinned. On a CPU without native
bfloat16 (AVX2 only) bf16 is emulated: its rows use batch 4 / 2 and the train-dr stage row is
skipped, or a single timing would take minutes.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from drkit import log  # noqa: E402
from drkit import precision as P  # noqa: E402
from drkit.losses import rank_loss  # noqa: E402
from drkit.nets import create_model  # noqa: E402
from drkit.stages import train_dr  # noqa: E402

T = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, device: torch.device, seconds: float, min_iters: int = 1) -> float:
    """Calls of ``fn`` per second: one warm-up call, then as many as fit in ``seconds``."""
    fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    _sync(device)
    return n / (time.perf_counter() - t0)


def matmul_peak(device: torch.device, precision: str, seconds: float, quick: bool) -> tuple[float, int]:
    """GFLOP/s of a large square matmul at ``precision`` (fp32: plain; else in that dtype), and
    its side N. N grows from 256 to the largest (2048 CPU, 8192 CUDA; half in quick mode) while
    one multiply takes under ``seconds`` / 4 (emulated bf16 on a CPU without it is ~100x slower)."""
    top = (4096 if quick else 8192) if device.type == "cuda" else (1024 if quick else 2048)
    dtype = torch.float32 if precision == "fp32" else P.DTYPES[precision]
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        _sync(device)
        t = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        if n >= top or time.perf_counter() - t > seconds / 4:
            break
        n *= 2
    return 2 * n ** 3 * rate(lambda: torch.matmul(a, b), device, seconds) / 1e9, n


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def dr_infer(device, precision, size, seconds, batch, channels_last, base=16):
    model = create_model("dr_unet", base=base).to(device).eval()
    run = P.prepare(model, channels_last)
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def fwd(x=x):
        with torch.no_grad(), P.autocast(precision, device):
            return run(x).float()
    flops = count_flops(lambda: fwd(x[:1]))    # per image: the count does not depend on the batch
    ips = batch * rate(fwd, device, seconds)
    return ips, flops


def dr_train(device, precision, size, seconds, batch, channels_last, base=16):
    model = create_model("dr_unet", base=base).to(device).train()
    run = P.prepare(model, channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.5, 0.9))
    scaler = P.grad_scaler(precision, device)
    V = torch.rand(batch, 2 * T + 1, 3, size, size, device=device)
    x = V[:, T].contiguous(memory_format=torch.channels_last) if channels_last else V[:, T].contiguous()

    def step(x=x, V=V, update: bool = True):
        opt.zero_grad(set_to_none=True)
        with P.autocast(precision, device):
            d = run(x)
        loss, _ = rank_loss(d.float(), V)        # the loss in fp32, as train-dr does
        scaler.scale(loss).backward()
        if update:
            scaler.step(opt)
            scaler.update()
    flops = count_flops(lambda: step(x[:1], V[:1], update=False))   # per window
    wps = batch * rate(step, device, seconds)
    return wps, flops


def stage_train(size, precision, seconds, store, tmp: Path, channels_last: bool = True):
    """The train-dr stage end to end (data loading included): windows/s and data-wait share."""
    if not store:
        from conftest import make_face_store
        store = tmp / f"s{size}.zarr"
        if not store.exists():
            rng = np.random.default_rng(0)
            vids = {f"v{i}": rng.integers(0, 255, (150, size, size, 3), dtype=np.uint8) for i in range(4)}
            make_face_store(store, vids)
    kw = {"device": "cpu"}
    if "precision" in {f.name for f in dataclasses.fields(train_dr.TrainDRConfig)}:
        kw["precision"] = precision
    elif precision != "fp32":
        return None
    out = tmp / f"run{size}_{precision}_{'cl' if channels_last else 'std'}"
    train_dr.run(train_dr.TrainDRConfig(stores=[str(store)], out=str(out), T=T, stride=2, net_size=size,
                                        epochs=1000, time_budget=seconds, batch_size=16, base=16,
                                        channels_last=channels_last, **kw))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps, secs = recs[-1]["step"], recs[-1]["seconds"]
    wait = float(np.average([r["data_wait_share"] for r in recs],
                            weights=[max(r["batches_per_s"] or 0, 1e-9) for r in recs]))
    return steps * 16 / secs, wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short timings (about 1 s each), 8 s stage runs")
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--devices", default=None, help="default: cpu, and cuda when present")
    ap.add_argument("--seconds", type=float, default=None, help="per timing (default 5, quick 1)")
    ap.add_argument("--stage-seconds", type=float, default=None,
                    help="train-dr stage run per size and precision (default 30, quick 8; 0: skip)")
    ap.add_argument("--store", help="face store for the train-dr stage rows")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    log.set_verbosity(0)
    secs = a.seconds or (1.0 if a.quick else 5.0)
    stage_secs = a.stage_seconds if a.stage_seconds is not None else (8.0 if a.quick else 30.0)
    sizes = [int(s) for s in a.sizes.split(",")]
    precs = a.precisions.split(",")
    devices = a.devices.split(",") if a.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    tmp = Path(tempfile.mkdtemp())

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU "
          f"{torch.backends.cpu.get_cpu_capability()} (native bf16: {P.cpu_bf16_native()})"
          + (f", GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")
          + (" (quick)" if a.quick else ""))
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for prec in precs:
            try:
                P.check(prec, device)
            except Exception as e:
                print(f"  skipped {dev_name} {prec}: {e}")
                continue
            peak, n = matmul_peak(device, prec, secs, a.quick)
            rows.append({"device": dev_name, "precision": prec, "what": "peak", "size": n,
                         "per_s": None, "gflop_per_image": None, "gflop_s": peak, "of_peak": 1.0})
            slow = dev_name == "cpu" and prec != "fp32" and not P.cpu_bf16_native()
            for size in sizes:
                # emulated bf16 on this CPU: small batches, or one timing takes minutes
                for what, fn, batch, kw in (
                        ("dr-infer", dr_infer, 4 if slow else 32, {"channels_last": False}),
                        ("dr-infer-cl", dr_infer, 4 if slow else 32, {"channels_last": True}),
                        ("dr-infer-slim", dr_infer, 4 if slow else 32, {"channels_last": True, "base": 8}),
                        ("dr-train", dr_train, 2 if slow else 16, {"channels_last": False}),
                        ("dr-train-cl", dr_train, 2 if slow else 16, {"channels_last": True}),
                        ("dr-train-slim", dr_train, 2 if slow else 16, {"channels_last": True, "base": 8})):
                    ips, flops = fn(device, prec, size, secs, batch, **kw)
                    g = ips * flops / 1e9
                    rows.append({"device": dev_name, "precision": prec, "what": what, "size": size,
                                 "per_s": ips, "gflop_per_image": flops / 1e9, "gflop_s": g,
                                 "of_peak": g / peak})
                if dev_name == "cpu" and stage_secs > 0 and not slow:
                    for what, cl in (("train-dr-std", False), ("train-dr", True)):
                        r = stage_train(size, prec, stage_secs, a.store, tmp, cl)
                        if r:
                            rows.append({"device": dev_name, "precision": prec, "what": what, "size": size,
                                         "per_s": r[0], "gflop_per_image": None, "gflop_s": None,
                                         "of_peak": None, "data_wait_share": r[1]})

    def f(v, fmt):
        return "" if v is None else format(v, fmt)
    print(f"{'device':<7}{'prec':<6}{'what':<14}{'size':>5}{'img/s':>9}{'GFLOP/img':>11}"
          f"{'GFLOP/s':>9}{'of peak':>9}  note")
    for r in rows:
        note = {"peak": f"matmul {r['size']}x{r['size']}", "dr-train": "windows/s, fwd+bwd counted",
                "dr-train-cl": "windows/s, channels_last (train-dr's default)",
                "dr-train-slim": "windows/s, width 8, channels_last",
                "train-dr": f"stage, width 16, channels_last, windows/s, data wait {r.get('data_wait_share', 0):.0%}",
                "train-dr-std": f"stage, width 16, standard layout, data wait {r.get('data_wait_share', 0):.0%}",
                }.get(r["what"], "")
        size = "" if r["what"] == "peak" else f(r["size"], "d")
        print(f"{r['device']:<7}{r['precision']:<6}{r['what']:<14}{size:>5}{f(r['per_s'], '.1f'):>9}"
              f"{f(r['gflop_per_image'], '.2f'):>11}{f(r['gflop_s'], '.1f'):>9}{f(r['of_peak'], '.0%'):>9}  {note}")
    by = {(r["device"], r["what"], r["size"]): {} for r in rows if r["what"] not in ("peak",)}
    for r in rows:
        if r["what"] != "peak":
            by[(r["device"], r["what"], r["size"])][r["precision"]] = r["per_s"]
    for (dev, what, size), v in by.items():
        if "fp32" in v and "bf16" in v:
            print(f"bf16 / fp32 throughput, {dev} {what} {size} px: {v['bf16'] / v['fp32']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
