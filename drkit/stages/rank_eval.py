"""`drkit rank-eval`: ranking accuracy of a DR checkpoint and baselines over a grid of
(T, stride) windows (paper Sec. 4.3, Fig. 4). The evaluation itself and the baselines
(identity, di, ranksvm) live in drkit.ranking; this stage picks the grid, runs it and writes the
table, JSON and plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import log
from ..checkpoint import load_checkpoint
from ..configs import RankEvalConfig
from ..contracts import Baseline, check_choice
from ..errors import DrkitError, UsageError
from ..fsutil import atomic_path, write_json_atomic
from ..nets import pick_device
from ..ranking import evaluate_windows
from ..store import open_store
from ..windows import crop_sizes


def run(cfg: RankEvalConfig) -> list[dict]:
    """One record per (method, T, stride): method, T, stride, accuracy, pairs, windows,
    past / future / videos breakdowns."""
    for b in cfg.baselines:
        check_choice(b, Baseline, "--baselines")
    model, methods, size = None, list(cfg.baselines), cfg.size
    device = pick_device(cfg.device)
    Ts, Ss = cfg.T, cfg.stride
    if cfg.ckpt:
        ck = load_checkpoint(cfg.ckpt, "dr")
        model = ck.build_model().to(device)
        c = ck.config
        Ts, Ss, size = Ts or [c.T], Ss or [c.stride], size or c.net_size
        methods = ["dr"] + methods
    if not Ts or not Ss:
        raise DrkitError("give --T and --stride (there is no checkpoint to take them from)")
    stores = [open_store(p, "faces") for p in cfg.stores]
    if not size:
        sides = crop_sizes(stores)
        if len(sides) > 1:
            which = "; ".join(f"{k} in {', '.join(str(st.path) for st in v)}" for k, v in sorted(sides.items()))
            raise UsageError(f"stores have crop sizes {' and '.join(map(str, sorted(sides)))} ({which}): "
                             "give --size to evaluate them at one size")
    records, empty = [], []
    with log.progress() as prog:
        for T in Ts:
            for S in Ss:
                res = evaluate_windows(stores, T, S, [m for m in methods if m != "ranksvm" or T >= 2],
                                       model, size, device, cfg.batch_size, cfg.every,
                                       cfg.max_windows, prog, warn_empty=False)
                if not any(r["pairs"] for r in res.values()):
                    empty.append((T, S))
                    continue
                for m, r in res.items():
                    records.append({"method": m, "T": T, "stride": S, **r})
    if not records:
        raise DrkitError("no full window in these stores for the asked T and stride "
                         "(videos too short, or too many frames without a face)")
    if empty:
        cells = ", ".join(f"T={T} stride {S} ({2 * T * S + 1} frames)" for T, S in empty)
        log.warn(f"no full window at {cells} in {', '.join(str(st.path) for st in stores)}: the videos "
                 "are shorter than 2T*stride+1 frames at 25 fps (proportionally more at higher fps) "
                 "with a face in each; left out of the results")
    if cfg.json:
        write_json_atomic(cfg.json, records)
    if cfg.plot:
        plot_grid(records, cfg.plot)
    return records


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (T, stride), accuracy in % per method, then dr - identity
    (a tall table stays readable for the whole grid of Fig. 4 on an 80-column terminal)."""
    cols = sorted({(r["T"], r["stride"]) for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    acc = {(r["method"], r["T"], r["stride"]): r["accuracy"] for r in records}
    diff = "dr" in methods and "identity" in methods
    header = ["T", "S", *methods] + (["dr - identity"] if diff else [])
    rows = []
    for c in cols:
        row = [str(c[0]), str(c[1])] + [f"{100 * acc[(m, *c)]:.1f}" if (m, *c) in acc else "-" for m in methods]
        if diff:
            both = ("dr", *c) in acc and ("identity", *c) in acc
            row.append(f"{100 * (acc[('dr', *c)] - acc[('identity', *c)]):+.1f}" if both else "-")
        rows.append(row)
    return header, rows


def plot_grid(records: list[dict], path: Path) -> None:
    """Accuracy against T, one line per (method, stride), like Fig. 4 of the paper."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"dr": "-", "identity": "--", "ranksvm": ":", "di": "-."}
    strides = sorted({r["stride"] for r in records})
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(strides)))
    for m in dict.fromkeys(r["method"] for r in records):
        for S, col in zip(strides, colours):
            rs = sorted((r for r in records if r["method"] == m and r["stride"] == S), key=lambda r: r["T"])
            if rs:
                ax.plot([r["T"] for r in rs], [100 * r["accuracy"] for r in rs], styles.get(m, "-"),
                        color=col, marker="o", label=f"{m} S={S}")
    ax.set_xticks(sorted({r["T"] for r in records}))
    ax.set_xlabel("T (window = 2T+1 frames)")
    ax.set_ylabel("ranking accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:] or "png")
    plt.close(fig)
