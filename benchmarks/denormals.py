"""How much denormal weights cost a CPU training step, and what flush-to-zero (drkit.precision.
flush_denormals, on in every drkit training loop since 0.3.0) gives back.

    python benchmarks/denormals.py RUN/last.pt [RUN2/best.pt ...] [--batch 32] [--steps 20] [--threads 1]

For each bundle or checkpoint (a train-task run's ``last.pt`` or ``best.pt``; ``pretrained:au``
and the like work too): the share of its float weights that are denormal (0 < |w| < 1.2e-38),
then the time of one training step (forward and backward of a batch of random inputs at the
network's input size), with flush-to-zero off and on, alternating twice; ms per step and the
ratio. Random inputs: the cost is in the weights, not the data.
"""

from __future__ import annotations

import argparse
import time

import torch

from drkit.predictor import load_bundle


def denormal_share(model: torch.nn.Module) -> tuple[int, int]:
    tiny = torch.finfo(torch.float32).tiny
    ts = [t for t in model.state_dict().values() if t.is_floating_point()]
    return sum(int(((t.abs() < tiny) & (t != 0)).sum()) for t in ts), sum(t.numel() for t in ts)


def step_ms(model: torch.nn.Module, x: torch.Tensor, flush: bool, steps: int) -> float:
    torch.set_flush_denormal(flush)
    try:
        def one():
            out = model(x)
            (out[0] if isinstance(out, tuple) else out).float().mean().backward()
            model.zero_grad(set_to_none=True)
        for _ in range(3):
            one()
        t = time.perf_counter()
        for _ in range(steps):
            one()
        return 1000 * (time.perf_counter() - t) / steps
    finally:
        torch.set_flush_denormal(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64, help="input side in pixels (train-task's default 64)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not torch.set_flush_denormal(True):
        raise SystemExit("this CPU cannot flush denormals: nothing to measure")
    torch.set_flush_denormal(False)
    print("| checkpoint | denormal weights | ms/step, flush off | ms/step, flush on | off / on |")
    print("|---|---|---|---|---|")
    for path in a.checkpoints:
        model = load_bundle(path).build_model().train()
        d, n = denormal_share(model)
        c = next(p for p in model.parameters() if p.dim() == 4).shape[1]
        x = torch.randn(a.batch, c, a.size, a.size)
        off = [step_ms(model, x, False, a.steps)]
        on = [step_ms(model, x, True, a.steps)]
        off.append(step_ms(model, x, False, a.steps))
        on.append(step_ms(model, x, True, a.steps))
        o, f = min(off), min(on)
        print(f"| {path} | {d:,} of {n:,} ({100 * d / n:.1f}%) | {o:.1f} | {f:.1f} | {o / f:.1f}x |")


if __name__ == "__main__":
    main()
