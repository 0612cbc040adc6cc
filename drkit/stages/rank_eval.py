"""`drkit rank-eval`: ranking accuracy of DR checkpoints and baselines over a grid of
(T, stride) windows (paper Sec. 4.3, Fig. 4). The evaluation itself and the baselines
(identity, di, ranksvm) live in drkit.ranking; this stage picks the grid, runs it and writes the
table, JSON and plot.

Several DR checkpoints make one comparison: each is a method named after its objective
(``method_name``: ``dr`` for the rank loss, ``unet_mse_di``, ``unet_p_bdi``, ``pix2pix_di``, ...;
``@<run folder>`` is added where names repeat), evaluated at its own net_size (or ``--net-size``) on
the same windows; baselines run at ``--net-size``, else the first checkpoint's net_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import log
from ..checkpoint import Checkpoint, load_checkpoint
from ..configs import RankEvalConfig, check_choices
from ..contracts import Result
from ..errors import DrkitError, UsageError
from ..fsutil import atomic_path, write_json_atomic
from ..nets import pick_device
from ..pretrained import is_pretrained
from ..ranking import evaluate_windows, head_for
from ..store import open_store
from ..windows import crop_sizes

OBJECTIVE_NAMES = {"mse": "unet_mse", "perceptual": "unet_p", "pix2pix": "pix2pix"}


def split_paths(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Command-line paths -> (checkpoints, stores): a store is a folder with zarr.json."""
    stores = [p for p in map(Path, paths) if (p / "zarr.json").is_file()]
    return [p for p in map(Path, paths) if p not in stores], stores


def method_name(ck: Checkpoint) -> str:
    c = ck.config
    return "dr" if c.objective == "rank" else f"{OBJECTIVE_NAMES.get(c.objective, c.objective)}_{c.target}"


def method_names(cks: list[Checkpoint], given: list[Path]) -> list[str]:
    """``method_name`` of each checkpoint; repeated names get ``@<run folder>`` (``#k`` if even
    those repeat)."""
    base = [method_name(ck) for ck in cks]
    runs = [str(p) if is_pretrained(p) else p.name if p.is_dir()
            else p.parent.name if p.name in ("best.pt", "last.pt") else p.stem for p in map(Path, given)]
    names = [b if base.count(b) == 1 else f"{b}@{r}" for b, r in zip(base, runs)]
    return [n if names.count(n) == 1 else f"{n}#{names[:i].count(n) + 1}" for i, n in enumerate(names)]


@dataclass
class RankRecord(Result):
    """One (method, T, stride) of rank-eval (one object of its --json list): ``accuracy`` over
    ``pairs`` same-side pairs of ``windows`` windows, evaluated at ``size`` px; ``past`` / ``future``
    ({"accuracy", "pairs"}) per side and ``videos`` per video; ``objective`` and ``target`` for DR
    methods (None for baselines)."""
    method: str
    T: int
    stride: int
    size: int | None
    accuracy: float
    pairs: int
    windows: int
    past: dict
    future: dict
    videos: dict
    objective: str | None = None
    target: str | None = None


def run(cfg: RankEvalConfig) -> list[RankRecord]:
    """One record per (method, T, stride): method, T, stride, size (the side evaluated at),
    objective and target (DR methods), accuracy, pairs, windows, past / future / videos
    breakdowns."""
    check_choices(cfg)
    if not cfg.ckpt and not cfg.baselines:
        raise UsageError("nothing to evaluate: give a DR checkpoint or --baselines")
    device = pick_device(cfg.device)
    for p in cfg.ckpt:
        if not p.exists() and not is_pretrained(p):
            raise DrkitError(f"{p}: no checkpoint, run folder or face store there")
    cks = [load_checkpoint(p, "dr") for p in cfg.ckpt]
    names = method_names(cks, cfg.ckpt)
    Ts, Ss = cfg.T, cfg.stride
    if cks:
        first = cks[0].config
        if len({(ck.config.T, ck.config.stride) for ck in cks}) > 1 and not (Ts and Ss):
            own = ", ".join(f"{n} T={ck.config.T} S={ck.config.stride}" for n, ck in zip(names, cks))
            log.warn(f"the checkpoints were trained at different T / stride ({own}); evaluating all at "
                     f"the first's, {Ts or [first.T]} / {Ss or [first.stride]} (set --T and --stride to choose)")
        Ts = Ts or sorted({T for T, _ in first.windows})
        Ss = Ss or sorted({S for _, S in first.windows})
    if not Ts or not Ss:
        raise DrkitError("give --T and --stride (there is no checkpoint to take them from)")
    if not cfg.stores:
        raise UsageError("give at least one face store (a folder with zarr.json) to evaluate on")
    stores = [open_store(p, "faces") for p in cfg.stores]
    models = {n: ck.build_model().to(device) for n, ck in zip(names, cks)}
    windows = {n: ck.config.windows for n, ck in zip(names, cks)}   # a multi-scale network: one head per window
    info = {n: {"objective": ck.config.objective, "target": ck.config.target} for n, ck in zip(names, cks)}
    # side -> methods evaluated there: each DR at its net_size, the baselines at the first's
    base_size = cfg.net_size or (cks[0].config.net_size if cks else None)
    groups: dict[int | None, list[str]] = {}
    for n, ck in zip(names, cks):
        groups.setdefault(cfg.net_size or ck.config.net_size, []).append(n)
    if cfg.baselines:
        groups.setdefault(base_size, []).extend(cfg.baselines)
    if None in groups:
        sides = crop_sizes(stores)
        if len(sides) > 1:
            which = "; ".join(f"{k} in {', '.join(str(st.path) for st in v)}" for k, v in sorted(sides.items()))
            raise UsageError(f"stores have crop sizes {' and '.join(map(str, sorted(sides)))} ({which}): "
                             "give --net-size to evaluate them at one size")
    methods = names + cfg.baselines
    records, empty = [], []
    with log.progress() as prog:
        for T in Ts:
            for S in Ss:
                res, side = {}, {}
                for size, ms in groups.items():
                    ms = [m for m in ms if m != "ranksvm" or T >= 2]
                    nets = {n: head_for(net, windows[n], T, S) for n, net in models.items()}
                    res.update(evaluate_windows(stores, T, S, ms, nets, size, device, cfg.batch_size,
                                                cfg.every, cfg.max_windows, prog, warn_empty=False))
                    side.update(dict.fromkeys(ms, size))
                if not any(r["pairs"] for r in res.values()):
                    empty.append((T, S))
                    continue
                records += [RankRecord(method=m, T=T, stride=S, size=side[m], **info.get(m, {}), **res[m])
                            for m in methods if m in res]
    if not records:
        raise DrkitError("no full window in these stores for the asked T and stride "
                         "(videos too short, or too many frames without a face)")
    if empty:
        cells = ", ".join(f"T={T} stride {S} ({2 * T * S + 1} frames)" for T, S in empty)
        log.warn(f"no full window at {cells} in {', '.join(str(st.path) for st in stores)}: the videos "
                 "are shorter than 2T*stride+1 frames at 25 fps (proportionally more at higher fps) "
                 "with a face in each; left out of the results")
    if cfg.json:
        write_json_atomic(cfg.json, [r.to_dict() for r in records])
    if cfg.plot:
        plot_grid(records, cfg.plot)
    return records


def is_rank_dr(method: str) -> bool:
    return method == "dr" or method.startswith("dr@")


def table_rows(records: list[dict], sides: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (T, stride), per method the accuracy in % (with ``sides``:
    past / future side, which shows a forward or backward target ranking one side only), then
    ``<dr> - identity`` for each rank-loss DR (a tall table stays readable for the whole grid of
    Fig. 4 on an 80-column terminal)."""
    cols = sorted({(r["T"], r["stride"]) for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    rec = {(r["method"], r["T"], r["stride"]): r for r in records}

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        if sides:
            return f"{100 * r['past']['accuracy']:.1f} / {100 * r['future']['accuracy']:.1f}"
        return f"{100 * r['accuracy']:.1f}"
    diffs = [m for m in methods if is_rank_dr(m)] if "identity" in methods and not sides else []
    header = ["T", "S", *methods] + [f"{m} - identity" for m in diffs]
    rows = []
    for c in cols:
        row = [str(c[0]), str(c[1])] + [cell(rec.get((m, *c))) for m in methods]
        for m in diffs:
            a, b = rec.get((m, *c)), rec.get(("identity", *c))
            row.append(f"{100 * (a['accuracy'] - b['accuracy']):+.1f}" if a and b else "-")
        rows.append(row)
    return header, rows


def plot_grid(records: list[dict], path: Path) -> None:
    """Accuracy against T, one line per method, one column of panels per stride, rows for all
    pairs, the past side and the future side (the paper's Fig. 4, split by side)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    strides = sorted({r["stride"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, axes = plt.subplots(3, len(strides), figsize=(1.5 + 3.2 * len(strides), 8), sharex=True,
                             sharey=True, squeeze=False)
    styles = {"identity": "--", "ranksvm": ":", "di": "-."}
    colours = plt.cm.tab10(np.arange(len(methods)) % 10)
    for row, (part, title) in enumerate([(None, "all pairs"), ("past", "past side"), ("future", "future side")]):
        for ax, S in zip(axes[row], strides):
            for m, col in zip(methods, colours):
                rs = sorted((r for r in records if r["method"] == m and r["stride"] == S), key=lambda r: r["T"])
                ys = [100 * (r if part is None else r.get(part, {})).get("accuracy", np.nan) for r in rs]
                if rs:
                    ax.plot([r["T"] for r in rs], ys, styles.get(m, "-"), color=col, marker="o", label=m)
            ax.set_title(f"S={S}, {title}", fontsize=9)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xticks(sorted({r["T"] for r in records}))
        ax.set_xlabel("T (window = 2T+1 frames)")
    for ax in axes[:, 0]:
        ax.set_ylabel("ranking accuracy (%)")
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:] or "png")
    plt.close(fig)
