"""The `drkit` command: one thin command per stage. Each turns its options into the stage's
config (drkit.configs, where every default is written once) and calls the stage's ``run``;
heavy modules are imported inside the commands so that `drkit --help` stays fast.

Exit codes: 0 success; 1 bad input or failed stage; 2 usage error (unknown option, a choice
that does not exist, an impossible value); 3 a batch stage could not process any of its inputs;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM, e.g. by a scheduler), in both cases with
temporary files removed and a line saying how to resume. Errors are turned into one line and the exit code inside the app, so
``typer.testing.CliRunner`` sees exactly what a shell sees.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from . import __version__, log
from . import configs as C
from .archs import arch_help
from .contracts import (
    Arch,
    Backend,
    DRNorm,
    ImageNorm,
    InputKind,
    LabelLayout,
    Objective,
    OutputFormat,
    Param,
    PrecisionName,
    Target,
    Task,
)
from .errors import DrkitError, Terminated, UsageError, install_signal_handlers

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="rich",
                  help="drkit: dynamic representations (DRs) of facial actions from a still image.")


def _from_cli_framework(e: BaseException) -> bool:
    """Typer/click's own exceptions (Exit, usage errors): theirs to handle, not ours."""
    return type(e).__module__.startswith(("typer", "click"))


# what to run after an interrupted command to finish its work
RESUME_HINT = {
    "preprocess": "rerun the same command to continue (finished videos are kept)",
    "gen-dr": "rerun the same command to continue (finished videos are kept)",
    "train-dr": "rerun with --resume to continue from the last checkpoint (last.pt)",
    "train-task": "rerun with --resume to continue from the last checkpoint (last.pt)",
    "predict": "rerun the same command (with --per-video, finished CSVs are kept)",
}


def command(name: str | None = None, **kw):
    """``app.command`` with drkit's error handling: a DrkitError becomes one red line and its
    exit code, an unexpected exception an "internal error" line (tracebacks only with -v)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt as e:
                term = isinstance(e, Terminated)
                log.console.print(f"{'terminated (SIGTERM)' if term else 'interrupted'}: temporary files "
                                  f"removed; {RESUME_HINT.get(name or fn.__name__.replace('_', '-'), 'rerun the same command')}",
                                  soft_wrap=True)
                raise typer.Exit(143 if term else 130)
            except DrkitError as e:
                if log.VERBOSITY >= 2:
                    log.console.print_exception()
                log.console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
                raise typer.Exit(e.exit_code)
            except OSError as e:   # read-only folder, a folder where a file is expected, disk full
                if log.VERBOSITY >= 2:
                    log.console.print_exception()
                where = f"{e.filename}: " if e.filename else ""
                log.console.print(f"[red]error:[/red] {escape(where + (e.strerror or str(e)))} "
                                  "(check the path and its permissions, and free disk space)", soft_wrap=True)
                raise typer.Exit(1)
            except Exception as e:
                if _from_cli_framework(e):
                    raise
                if log.VERBOSITY >= 2:
                    log.console.print_exception()
                log.console.print(f"[red]error:[/red] internal error: {type(e).__name__}: {escape(str(e))} "
                                  "(rerun with -v for the traceback)", soft_wrap=True)
                raise typer.Exit(1)
        return app.command(name, **kw)(wrapper)
    return deco


def _version(value: bool) -> None:
    if value:
        print(f"drkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="More output; tracebacks on error.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors; no progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    log.set_verbosity(0 if quiet else 2 if verbose else 1)
    install_signal_handlers()


# ------------------------------------------------------------------ shared options and parsers

Device = Annotated[str, typer.Option(help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps.")]
Seed = Annotated[int, typer.Option(help="Random seed (data order, initialisation, augmentation).")]
Overwrite = Annotated[bool, typer.Option(help="Start again / redo what is already there.")]
Resume = Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")]
Epochs = Annotated[int, typer.Option(help="Passes over the training data.")]
TimeBudget = Annotated[Optional[float], typer.Option(help="Stop after this many seconds of training.")]


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected integers separated by commas, e.g. 3,5,7,9") from None


def _floats(text: str | None, name: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected numbers separated by commas, e.g. 9") from None


def _windows(text: str | None) -> list[tuple[int, int]] | None:
    """'T3S2,T5S2,T9S4' -> [(3, 2), (5, 2), (9, 4)]."""
    if not text:
        return None
    import re
    out = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"[Tt](\d+)[Ss](\d+)", part)
        if not m:
            raise UsageError(f"--heads {text!r}: expected windows like T3S2,T5S2,T9S4")
        out.append((int(m[1]), int(m[2])))
    return out


def _names(text: str | None) -> list[str] | None:
    """'a,b,c' or '@file' with one name per line."""
    if not text:
        return None
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.is_file():
            raise DrkitError(f"{p}: no such file (for {text})")
        return [x.strip() for x in p.read_text().splitlines() if x.strip()]
    return [x.strip() for x in text.split(",") if x.strip()]


# ------------------------------------------------------------------ commands

@command()
def preprocess(
    inputs: Annotated[List[Path], typer.Argument(help="Video files, folders of videos (recursive), "
                                                 "or folders of image frames (one sequence each).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Face store to create or add to (Zarr folder).")],
    crop_size: Annotated[int, typer.Option("--crop-size", "--size", help="Side of the face crops in pixels (the store's crop_size; --size: its 0.2 name).")] = C.PreprocessConfig.crop_size,
    backend: Annotated[Backend, typer.Option(help="Face backend.")] = C.PreprocessConfig.backend,
    model_root: Annotated[Optional[Path], typer.Option(help="Model folder: for insightface the root "
                                                       "holding models/buffalo_l/; for dlib a folder with "
                                                       "shape_predictor_68_face_landmarks.dat.")] = None,
    align: Annotated[bool, typer.Option("--align/--no-align", help="Rotate crops so the eyes are level.")] = C.PreprocessConfig.align,
    fps: Annotated[float, typer.Option(help="Frame rate of image-folder sequences.")] = C.PreprocessConfig.fps,
    workers: Annotated[int, typer.Option(help="Processes working on different videos at once.")] = C.PreprocessConfig.workers,
    shard: Annotated[Optional[str], typer.Option(help="I/N: process only the I-th of N deterministic "
                                                 "parts of the inputs (0-based), for parallel batch jobs.")] = None,
    redetect_every: Annotated[int, typer.Option(help="Re-run the face detector every N frames while "
                                                "tracking (and whenever the track is lost).")] = C.PreprocessConfig.redetect_every,
    naive: Annotated[bool, typer.Option(help="Detect on every frame instead of tracking (slower).")] = C.PreprocessConfig.naive,
    reuse_mad: Annotated[float, typer.Option(help="While tracking, keep a frame's landmarks for the next frame when "
                                             "its inner-face patch at them differs by less than this mean absolute "
                                             "grey difference (0: fit landmarks on every frame).")] = C.PreprocessConfig.reuse_mad,
    max_reuse: Annotated[int, typer.Option(help="Keep landmarks for at most this many frames in a row.")] = C.PreprocessConfig.max_reuse,
    redetect_region: Annotated[bool, typer.Option("--redetect-region/--redetect-frame", help=(
        "Periodic re-detections while tracking run the detector on a small region around the tracked "
        "face (the whole frame when no face is there), or always on the whole frame."))] = C.PreprocessConfig.redetect_region,
    overwrite: Annotated[bool, typer.Option(help="Redo videos that are already complete in the store.")] = False,
) -> None:
    """Detect, track and crop faces from videos into a face store.

    Output: a Zarr v3 store with one group per video holding masked face crops, 68 landmarks,
    source frame indices and per-frame detection info (format: docs/formats.md). Rerunning
    resumes; unreadable files are reported and skipped.
    """
    from .stages import preprocess as stage
    s = stage.run(C.PreprocessConfig(
        inputs=inputs, out=out, crop_size=crop_size, backend=backend, model_root=model_root, align=align, fps=fps,
        workers=workers, shard=shard, redetect_every=redetect_every, naive=naive, reuse_mad=reuse_mad,
        max_reuse=max_reuse, redetect_region=redetect_region, overwrite=overwrite))
    fps_s = s.frames / s.seconds if s.seconds else 0.0
    tail = f", {len(s.no_face)} without any face" if s.no_face else ""
    rep = f" ({len(s.repaired)} repaired)" if s.repaired else ""
    log.info(f"preprocess: {len(s.ok)} ok{rep}, {len(s.skipped)} skipped (already done), "
             f"{len(s.failed)} failed{tail}; {s.frames} frames written in "
             f"{s.seconds:.1f} s ({fps_s:.0f} frames/s) -> {s.store}")
    for path, reason in s.failed.items():
        log.info(f"  failed: {path}: {reason}")


@command()
def inspect(
    store: Annotated[Path, typer.Argument(help="A drkit store (face store or DR store).")],
    video: Annotated[Optional[str], typer.Option("--video", help="Video id for --frame (default: the store's only video).")] = None,
    frame: Annotated[Optional[int], typer.Option("--frame", help="Source frame index to draw.")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="PNG to write for --frame (default: <video>_frame<N>.png).")] = None,
    verify: Annotated[bool, typer.Option(help="Also read every chunk and check its checksum (slower: reads the whole store).")] = False,
) -> None:
    """Summarise a store (videos, frames, fps, faces found, and each video checked as the stages
    check it: exit code 1 if any is damaged), or draw one frame: a face store's crop with its
    landmarks, a DR store's crop beside each DR map (diverging colour scale, labelled T and
    stride)."""
    from .stages import inspect as stage
    if video is not None or frame is not None or out is not None:
        if frame is None:
            raise UsageError("--video and -o go with --frame (the source frame index to draw)")
        log.info(f"wrote {stage.render_frame(store, video, frame, out)}")
        return
    bad = stage.print_summary(store, verify)
    if bad:
        raise DrkitError(f"{store}: {bad} damaged video(s) (see the state column)")


@command()
def models(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the manifest of the shipped models here.")] = None,
) -> None:
    """List the models that ship with drkit: AU models for `drkit predict pretrained:au VIDEO`, and
    DR networks (--dr pretrained:T5 in gen-dr, rank-eval).

    Each is checked against its SHA-256 on load. Shown: what it is, what it was trained on, its
    licence, and its accuracy on people it never saw (AU models: ICC(3,1) agreement with OpenFace
    2.2 per AU; DR models: ranking accuracy beside the identity baseline and the RankSVM)."""
    from rich.console import Console
    from rich.table import Table

    from . import pretrained
    from .fsutil import write_json_atomic
    if not pretrained.models():
        raise DrkitError("this drkit install ships no pretrained models (drkit/pretrained/MANIFEST.json)")
    con = Console()   # the listing is the command's output: stdout
    tasks = pretrained.models("task")
    if tasks:
        t = Table(title="AU models (drkit predict pretrained:au VIDEO -o au.csv)",
                  caption="ICC(3,1) with OpenFace 2.2 on people no model saw, mean ± sd over seeds")
        for c in ("name", "input", "targets", "ICC AU06/10/12/14/17", "ICC all AUs", "licence"):
            t.add_column(c)
        for m in tasks:
            h = m.held_out
            icc5 = f"{h['icc5']:.3f} ± {h.get('icc5_sd', 0):.3f}" if "icc5" in h else "-"
            t.add_row(pretrained.PREFIX + m.name, m.input or "-", str(len(m.targets)), icc5,
                      f"{h['icc']:.3f}" if "icc" in h else "-", m.licence or "-")
        con.print(t)
        for m in tasks:
            if m.description:
                con.print(f"{pretrained.PREFIX}{m.name}: {m.description}", soft_wrap=True)
            per = m.held_out.get("per_target") or {}
            if per:
                con.print(f"  per AU, {m.held_out.get('people', '?')} unseen people: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in per.items()), soft_wrap=True)
            tr = m.tracking
            if tr:
                con.print(f"  predict tracks faces with --reuse-mad {tr.get('reuse_mad', 0):g} "
                          f"--{'redetect-region' if tr.get('redetect_region') else 'redetect-frame'} unless told: "
                          f"{tr.get('held_out', '')}", soft_wrap=True)
    t = Table(title="DR models (--dr pretrained:NAME)",
              caption="held-out %: ranking accuracy on people no model saw, DR / identity / RankSVM")
    for c in ("name", "T, S", "px", "width", "held-out %", "SHA-256"):
        t.add_column(c, no_wrap=c != "px")
    for m in pretrained.models("dr"):
        for i, (T, S) in enumerate(m.windows):   # a multi-scale network: one row per head
            h = m.held_out_of(T, S)
            acc = " / ".join(f"{h[k]:.1f}" if isinstance(h.get(k), (int, float)) else "-"
                             for k in ("dr", "identity", "ranksvm"))
            first = i == 0
            t.add_row(pretrained.PREFIX + m.name if first else "", f"{T}, {S}", str(m.net_size) if first else "",
                      str(m.width or "-") if first else "", acc, m.sha256[:12] if first else "")
    con.print(t)
    man = pretrained.manifest()
    if man.get("trained_on"):
        own = [m.name for m in pretrained.models("dr") if m.trained_on]
        con.print(f"DR models trained on{' (all but ' + ', '.join(own) + ')' if own else ''}: "
                  f"{man['trained_on']}", soft_wrap=True)
    for m in pretrained.models("dr"):
        if m.trained_on:
            con.print(f"{pretrained.PREFIX}{m.name} trained on: {m.trained_on}", soft_wrap=True)
        if m.description:
            con.print(f"{pretrained.PREFIX}{m.name}: {m.description}", soft_wrap=True)
    if json_out:
        write_json_atomic(json_out, man)


TrainPrecision = Annotated[PrecisionName, typer.Option(
    help="Train at fp32, bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling) via autocast; losses, "
         "metrics and saved weights stay fp32.")]
TrainChannelsLast = Annotated[bool, typer.Option(help="Run the network in channels_last memory format.")]
TrainCompile = Annotated[bool, typer.Option("--compile/--no-compile",
                                            help="torch.compile the network (slow start, faster on long runs).")]


@command("train-dr")
def train_dr(
    stores: Annotated[List[Path], typer.Argument(help="Face stores to train on.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write (best.pt, last.pt, metrics.jsonl).")],
    T: Annotated[int, typer.Option("--T", help="Frames on each side of the centre (window 2T+1).")] = C.TrainDRConfig.T,
    stride: Annotated[int, typer.Option(help="Stride in frames at 25 fps (scaled with each video's fps).")] = C.TrainDRConfig.stride,
    heads: Annotated[Optional[str], typer.Option(help="A multi-scale network: one DR per window, e.g. T3S2,T5S2,T9S4, trained at once with a shared UNet (replaces --T / --stride; gen-dr stacks them all from one forward pass).")] = None,
    init: Annotated[Optional[str], typer.Option(help="Start from this DR checkpoint's weights (run folder, .pt or pretrained:NAME), e.g. T=9 from a trained T=5 (a curriculum over T).")] = None,
    objective: Annotated[Objective, typer.Option(help="rank: the rank loss (Eq. 3); mse, perceptual, pix2pix: "
                                                 "reproduce a fixed --target (the paper's comparison methods).")] = C.TrainDRConfig.objective,
    target: Annotated[Optional[Target], typer.Option(help="Fixed target: di / bdi, the window's dynamic image "
                                                     "forward / backward in time (not with rank).")] = None,
    perceptual_weights: Annotated[Optional[Path], typer.Option(help="perceptual: VGG-16 weights, a torchvision "
                                                               "state dict file (features.0.weight ...); results depend on them.")] = None,
    l1_weight: Annotated[float, typer.Option(help="pix2pix: weight of the L1 term.")] = C.TrainDRConfig.l1_weight,
    disc_base: Annotated[int, typer.Option(help="pix2pix: PatchGAN discriminator width.")] = C.TrainDRConfig.disc_base,
    val: Annotated[Optional[List[Path]], typer.Option(help="Validation face store(s) (other people!).")] = None,
    net_size: Annotated[int, typer.Option("--net-size", "--size", help="Side the network trains at (net_size; frames are resized on the fly; --size: its 0.2 name).")] = C.TrainDRConfig.net_size,
    epochs: Epochs = C.TrainDRConfig.epochs,
    time_budget: TimeBudget = None,
    batch_size: Annotated[int, typer.Option(help="Windows per batch (under torchrun: the global batch, split over the processes).")] = C.TrainDRConfig.batch_size,
    base: Annotated[int, typer.Option(help="UNet channels at full resolution.")] = C.TrainDRConfig.base,
    depth: Annotated[int, typer.Option(help="UNet poolings.")] = C.TrainDRConfig.depth,
    param: Annotated[Param, typer.Option(help="residual: d = (I - mean I) + UNet(I); direct: d = UNet(I) (paper).")] = C.TrainDRConfig.param,
    theta: Annotated[float, typer.Option(help="Rank margin on scores <d, V>/(CHW).")] = C.TrainDRConfig.theta,
    gamma: Annotated[float, typer.Option(help="Weight of mean(d^2).")] = C.TrainDRConfig.gamma,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror whole windows at random.")] = C.TrainDRConfig.flip,
    jitter: Annotated[float, typer.Option(help="Brightness/contrast jitter per window (0 = off).")] = C.TrainDRConfig.jitter,
    shift: Annotated[float, typer.Option(help="Random shift and zoom per window, up to this fraction of the side, e.g. 0.05 (0 = off).")] = C.TrainDRConfig.shift,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 1e-3 with betas 0.5, 0.9; "
                                                "pix2pix 2e-4 with betas 0.5, 0.999).")] = None,
    seed: Seed = C.TrainDRConfig.seed,
    device: Device = C.TrainDRConfig.device,
    resume: Resume = False,
    overwrite: Overwrite = False,
    precision: TrainPrecision = C.TrainDRConfig.precision,
    channels_last: TrainChannelsLast = C.TrainDRConfig.channels_last,
    compile_: TrainCompile = C.TrainDRConfig.compile,
) -> None:
    """Train a DR network (UNet) with the rank loss on windows of 2T+1 frames, or with a fixed target.

    --objective mse | perceptual | pix2pix --target di | bdi trains the paper's comparison methods
    (UNet(MSE), UNet(P), Pix2Pix) to reproduce the window's dynamic image, normalised per window
    to zero mean and unit RMS, with the same UNet, windows, loop and checkpoints.

    Output: a run folder with best.pt / last.pt checkpoints (weights + every setting needed to
    use them), metrics.jsonl (loss, ranking accuracy, validation accuracy beside the identity
    baseline, data-wait share per epoch) and config.json.

    Several processes or GPUs: `torchrun --nproc_per_node N -m drkit.cli train-dr ...`
    (examples/cluster/); --batch-size is the global batch, split over the processes."""
    from .stages import train_dr as stage
    st = stage.run(C.TrainDRConfig(
        stores=stores, out=out, T=T, stride=stride, heads=_windows(heads), init=init, objective=objective, target=target,
        perceptual_weights=perceptual_weights, l1_weight=l1_weight, disc_base=disc_base,
        val=val or None, net_size=net_size, epochs=epochs,
        time_budget=time_budget, batch_size=batch_size, base=base, depth=depth, param=param,
        theta=theta, gamma=gamma, flip=flip, jitter=jitter, shift=shift, lr=lr, seed=seed, device=device,
        resume=resume, overwrite=overwrite, precision=precision, channels_last=channels_last,
        compile=compile_))
    log.info(f"train-dr: {st.epoch} epoch(s), {st.global_step} steps, "
             f"{st.elapsed:.0f} s; best accuracy {st.best} (epoch {st.best_epoch}) -> {out}")


@command("rank-eval")
def rank_eval(
    paths: Annotated[List[Path], typer.Argument(
        metavar="PATH...", help="DR checkpoints (.pt) or train-dr run folders (best.pt), and the face stores "
        "to evaluate on (folders with zarr.json), in any order.")],
    T: Annotated[Optional[str], typer.Option("--T", help="T value(s), e.g. 9 or 3,5,7,9 (default: the first checkpoint's).")] = None,
    stride: Annotated[Optional[str], typer.Option(help="Stride(s) at 25 fps, e.g. 4 or 1,2,3,4 (default: the first checkpoint's).")] = None,
    baselines: Annotated[str, typer.Option(help="Comma list of identity, ranksvm, di; '' for none.")] = ",".join(C.DEFAULT_BASELINES),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write one record per (method, T, stride).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the accuracy grid as a PNG.")] = None,
    net_size: Annotated[Optional[int], typer.Option("--net-size", "--size", help="Side to evaluate at (default: each checkpoint's net_size; "
                                                    "baselines at the first's; --size: its 0.2 name).")] = None,
    every: Annotated[int, typer.Option(help="Use every n-th centre frame.")] = C.RankEvalConfig.every,
    max_windows: Annotated[Optional[int], typer.Option(help="At most this many windows per (T, stride).")] = None,
    device: Device = C.RankEvalConfig.device,
) -> None:
    """Ranking accuracy of DR checkpoints and baselines over (T, stride) windows (paper Sec. 4.3).

    `drkit rank-eval RUN STORE...` scores one DR; `drkit rank-eval RUN_A RUN_B ... STORE...` puts
    several in one table, JSON and plot (the Fig. 4 comparison). Each checkpoint is named by its
    objective: dr (rank loss), unet_mse_di, unet_p_bdi, pix2pix_di, ... (NAME@<run folder> where
    names repeat). With no --T / --stride, the grid is the first checkpoint's T and stride.

    Prints two tables, one row per (T, stride): accuracy in % per method with dr - identity, then
    past / future side accuracy per method; -v adds per-record and per-video detail. --json and
    --plot write them to files."""
    from rich.console import Console
    from rich.table import Table

    from .stages import rank_eval as stage
    ckpts, stores = stage.split_paths(paths)
    recs = stage.run(C.RankEvalConfig(
        ckpt=ckpts, stores=stores, T=_ints(T, "--T"), stride=_ints(stride, "--stride"),
        baselines=[b for b in baselines.split(",") if b], json=json_out, plot=plot, net_size=net_size,
        every=every, max_windows=max_windows, device=device))
    for title, sides in (("ranking accuracy (%) on same-side pairs", False),
                         ("past / future side accuracy (%)", True)):
        header, rows = stage.table_rows(recs, sides)
        t = Table(title=title)
        for h in header:
            t.add_column(h, justify="right")
        for r in rows:
            t.add_row(*r)
        Console().print(t)
    if log.VERBOSITY >= 2:
        for r in recs:
            print(f"{r.method:>9} T={r.T} S={r.stride}: {100 * r.accuracy:.2f}% of {r.pairs} pairs "
                  f"(past {100 * r.past['accuracy']:.1f}%, future {100 * r.future['accuracy']:.1f}%)")
            for v, x in r.videos.items():
                print(f"    {v}: {100 * x['accuracy']:.1f}% of {x['pairs']}")


EngineOption = Annotated[C.Engine, typer.Option(
    help="What runs the networks: torch, or onnxruntime (ONNX graphs exported in memory; fp32 only; "
         "1.1-1.7x torch's speed on a CPU, benchmarks/engine_speed.py); auto: onnxruntime when it is "
         "installed and the run is on the CPU at fp32, else torch.")]


@command("gen-dr")
def gen_dr(
    store: Annotated[Path, typer.Argument(help="Face store from preprocess.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="DR store to write (Zarr).")],
    dr: Annotated[Optional[List[Path]], typer.Option("--dr", help="DR checkpoint or run folder; repeat for MDR levels.")] = None,
    no_image: Annotated[bool, typer.Option(help="Leave the image channels out (DRs only).")] = C.GenDRConfig.no_image,
    map_size: Annotated[Optional[int], typer.Option("--map-size", "--size", help="Side of the stored maps, map_size (default: the first checkpoint's net_size; --size: its 0.2 name).")] = None,
    mirror: Annotated[bool, typer.Option(help="Also store the DRs of the mirrored face (what train-task's mirroring uses; DR networks are not mirror-symmetric).")] = C.GenDRConfig.mirror,
    batch_size: Annotated[int, typer.Option(help="Frames per forward pass.")] = C.GenDRConfig.batch_size,
    device: Device = C.GenDRConfig.device,
    overwrite: Annotated[bool, typer.Option(help="Redo videos already complete in the output.")] = False,
    precision: Annotated[PrecisionName, typer.Option(help="Run the DR networks at fp32, bf16 (CPU or CUDA) or fp16 (CUDA) via autocast; maps are stored as float16 either way, and the store records it.")] = C.GenDRConfig.precision,
    channels_last: Annotated[bool, typer.Option(help="Run the DR networks in channels_last memory format (1.3-1.6x faster on a CPU; maps differ from the standard layout by ~1e-6, below their float16 storage).")] = C.GenDRConfig.channels_last,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the DR networks (slow start, faster on long runs).")] = C.GenDRConfig.compile,
    shard: Annotated[Optional[str], typer.Option(help="I/N: write only the I-th of N deterministic parts of the videos (0-based); N jobs fill one store.")] = None,
    engine: EngineOption = C.GenDRConfig.engine,
) -> None:
    """Stack each frame with the DRs of one or more checkpoints (SDR/MDR) into a DR store.

    Image + DR(T=5) = 6 channels (AU setting of the paper); image + DR(T=3) + DR(T=5) = 9
    channels (affect setting). Keeps video ids and source frame indices; resumable."""
    from .stages import gen_dr as stage
    r = stage.run(C.GenDRConfig(store=store, out=out, dr=dr or [], no_image=no_image, map_size=map_size,
                                mirror=mirror, batch_size=batch_size, device=device, overwrite=overwrite,
                                precision=precision, channels_last=channels_last, compile=compile_,
                                shard=shard, engine=engine))
    log.info(f"gen-dr: {r.frames} frames of {r.videos} videos, channels {', '.join(r.channels)} -> {r.store}")


def _print_metrics(res: dict) -> None:
    for k, v in res.items():
        print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")


@command("train-task")
def train_task(
    inputs: Annotated[List[Path], typer.Argument(metavar="INPUT...", help="DR store(s) from gen-dr.")],
    labels: Annotated[Path, typer.Option(help="Label CSV: video,frame[,person],<targets> (docs/formats.md).")],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Run folder to write; best.pt is the model bundle.")] = None,
    task: Annotated[Task, typer.Option(help="au (ICC, MSE, MAE) or affect (PCC, CCC, MSE).")] = C.TrainTaskConfig.task,
    input_kind: Annotated[InputKind, typer.Option("--input", help="si (image), sdr (one DR) or mdr (image + DRs).")] = C.TrainTaskConfig.input_kind,
    arch: Annotated[Arch, typer.Option(help=arch_help())] = C.TrainTaskConfig.arch,
    targets: Annotated[Optional[str], typer.Option(help="Comma list of label columns (default: all).")] = None,
    missing: Annotated[Optional[str], typer.Option(help="Comma list of sentinel values meaning 'no label', e.g. 9.")] = None,
    val: Annotated[Optional[List[Path]], typer.Option(help="Validation DR store(s); default: hold out people.")] = None,
    val_share: Annotated[float, typer.Option(help="Share of people held out when no --val is given.")] = C.TrainTaskConfig.val_share,
    train_people: Annotated[Optional[str], typer.Option(help="Train only on these people: a,b,c or @file (one per line).")] = None,
    val_people: Annotated[Optional[str], typer.Option(help="Validate on exactly these people (a,b,c or @file).")] = None,
    epochs: Epochs = C.TrainTaskConfig.epochs,
    time_budget: TimeBudget = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many epochs without a better validation score (best.pt is the best epoch).")] = None,
    val_frames: Annotated[Optional[int], typer.Option(help="Validate on this many frames, spread evenly over the validation people (faster epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Frames per batch (under torchrun: the global batch, split over the processes).")] = C.TrainTaskConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = C.TrainTaskConfig.lr,
    width: Annotated[Optional[int], typer.Option(help="Network width: channels of the small CNN (default 16) or of the hourglass (hg_hmr, default 32); vgg16 uses its own.")] = C.TrainTaskConfig.width,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout in the head of small / dr_encoder (default 0.2) and vgg16 (0.5). Under torchrun each process draws its own masks.")] = C.TrainTaskConfig.dropout,
    stacks: Annotated[int, typer.Option(help="hg_hmr: stacked hourglasses.")] = C.TrainTaskConfig.stacks,
    heatmap_sigma: Annotated[float, typer.Option(help="hg_hmr: std of the target Gaussians, a fraction of the heatmap side (1/4 of the map side).")] = C.TrainTaskConfig.heatmap_sigma,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror frames at random.")] = C.TrainTaskConfig.flip,
    init: Annotated[Optional[Path], typer.Option(help="Pretrained weights (state dict) for the network.")] = None,
    dr_norm: Annotated[DRNorm, typer.Option(help="video: each DR channel minus its mean over the video (the DR's deviation from that person's own average; predict does the same per video).")] = C.TrainTaskConfig.dr_norm,
    image_norm: Annotated[ImageNorm, typer.Option(help="video: each image channel minus its mean over the video (person-specific normalisation, as OpenFace does for its appearance features; predict does the same per video).")] = C.TrainTaskConfig.image_norm,
    dr_dropout: Annotated[float, typer.Option(help="Probability of dropping a training sample's DR channels (set to their mean), so the network cannot lean on them alone.")] = C.TrainTaskConfig.dr_dropout,
    seed: Seed = C.TrainTaskConfig.seed,
    device: Device = C.TrainTaskConfig.device,
    resume: Resume = False,
    overwrite: Overwrite = False,
    precision: TrainPrecision = C.TrainTaskConfig.precision,
    channels_last: TrainChannelsLast = C.TrainTaskConfig.channels_last,
    compile_: TrainCompile = C.TrainTaskConfig.compile,
    eval_only: Annotated[Optional[Path], typer.Option(help="Deprecated: use `drkit eval-task`.", hidden=True)] = None,
) -> None:
    """Train an AU-intensity or valence/arousal regressor on images, DRs or MDRs.

    Prints the best checkpoint's validation metrics (also in OUT/val_metrics.json).

    Several processes or GPUs: `torchrun --nproc_per_node N -m drkit.cli train-task ...`
    (examples/cluster/); --batch-size is the global batch, split over the processes."""
    from .stages import train_task as stage
    r = stage.run(C.TrainTaskConfig(
        input=inputs, out=out, labels=labels, task=task, input_kind=input_kind, arch=arch,
        targets=targets.split(",") if targets else None, missing=_floats(missing, "--missing") or [],
        val=val or None, val_share=val_share, train_people=_names(train_people),
        val_people=_names(val_people), epochs=epochs, time_budget=time_budget, patience=patience, val_frames=val_frames, batch_size=batch_size,
        lr=lr, width=width, dropout=dropout, dr_norm=dr_norm, image_norm=image_norm, dr_dropout=dr_dropout, stacks=stacks, heatmap_sigma=heatmap_sigma, flip=flip, init=init, seed=seed,
        device=device, resume=resume,
        overwrite=overwrite, precision=precision, channels_last=channels_last, compile=compile_,
        eval_only=eval_only))
    if eval_only or r.val is not None:   # under torchrun only rank 0 scores and prints
        _print_metrics(r if eval_only else r.val)


@command("eval-task")
def eval_task(
    model: Annotated[Path, typer.Argument(help="Task bundle: best.pt of a train-task run, or the run folder.")],
    stores: Annotated[List[Path], typer.Argument(help="DR store(s) made with the same DR checkpoints.")],
    labels: Annotated[Path, typer.Option(help="Label CSV with the model's targets.")],
    people: Annotated[Optional[str], typer.Option(help="Score only these people: a,b,c or @file.")] = None,
    missing: Annotated[Optional[str], typer.Option(help="Sentinel values meaning 'no label' (default: the model's).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as one flat JSON object.")] = None,
    device: Device = C.EvalTaskConfig.device,
) -> None:
    """Score a trained AU / affect model on labelled DR stores (people it never saw).

    Prints and writes the flat metric dict train-task writes to val_metrics.json:
    frames, icc, icc/AU06, ... (au) or pcc, ccc, mse, ... (affect)."""
    from .stages import eval_task as stage
    _print_metrics(stage.run(C.EvalTaskConfig(model=model, stores=stores, labels=labels, people=_names(people),
                                              missing=_floats(missing, "--missing"), json=json_out,
                                              device=device)))


@command()
def predict(
    model: Annotated[Path, typer.Argument(help="Model bundle: pretrained:au (see `drkit models`), or best.pt of a train-task run / the run folder.")],
    inputs: Annotated[List[Path], typer.Argument(help="Images, folders of images, or videos.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="CSV to write, one row per image or frame (with --per-video: the folder of CSVs).")],
    format: Annotated[OutputFormat, typer.Option("--format", help="drkit: input, frame, timestamp, face_found, confidence, targets; openface: OpenFace 2.2's layout (frame (1-based), face_id, timestamp, confidence, success, AUxx_r).")] = C.PredictConfig.format,
    plot: Annotated[Optional[Path], typer.Option(help="Folder: per video, a PNG of every target over time (one labelled panel each).")] = None,
    video_out: Annotated[Optional[Path], typer.Option(help="Folder: per video, an annotated MP4 (frame with landmarks, DR maps with colour scale, AU bars).")] = None,
    save_dr: Annotated[Optional[Path], typer.Option(help="Folder: each face crop beside its DR maps (diverging colour scale, labelled) as PNG.")] = None,
    dr_frames: Annotated[Optional[str], typer.Option(help="With --save-dr: only these source frames, e.g. 0,100,200-210 (default: every frame).")] = None,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clip outputs to the task's label range (AU 0-5, affect -1..1).")] = C.PredictConfig.clip,
    backend: Annotated[Optional[Backend], typer.Option(help="Face backend (default: the one the model was trained with).")] = None,
    model_root: Annotated[Optional[Path], typer.Option(help="Model folder for the face backend.")] = None,
    batch_size: Annotated[int, typer.Option(help="Faces per forward pass.")] = C.PredictConfig.batch_size,
    device: Device = C.PredictConfig.device,
    precision: Annotated[PrecisionName, typer.Option(help="Run the DR and task networks at fp32, bf16 (CPU or CUDA) or fp16 (CUDA) via autocast.")] = C.PredictConfig.precision,
    channels_last: Annotated[bool, typer.Option(help="Run the networks in channels_last memory format (1.3-1.6x faster on a CPU; outputs differ from the standard layout by ~1e-6).")] = C.PredictConfig.channels_last,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the networks (slow start, faster on long runs).")] = C.PredictConfig.compile,
    per_video: Annotated[bool, typer.Option(help="-o is a folder: one CSV per input file (<name>.csv, the file name without extension), each written atomically; a rerun skips inputs whose CSV is there.")] = C.PredictConfig.per_video,
    shard: Annotated[Optional[str], typer.Option(help="I/N (with --per-video): process only the I-th of N deterministic parts of the inputs (0-based); N jobs fill one folder.")] = None,
    overwrite: Annotated[bool, typer.Option(help="With --per-video: redo inputs whose CSV is already there.")] = False,
    engine: EngineOption = C.PredictConfig.engine,
    reuse_mad: Annotated[Optional[float], typer.Option(help="Keep a frame's landmarks for the next frames while the face there has not changed (mean absolute grey difference below this; 0: fit every frame). Default: a shipped bundle's own (4 for pretrained:au and pretrained:au-si, `drkit models`), else as the bundle's training store was preprocessed (0 for stores that predate the setting).")] = None,
    redetect_region: Annotated[Optional[bool], typer.Option("--redetect-region/--redetect-frame", help="Periodic re-detections while tracking on a small region around the face, or on the whole frame. Default: a shipped bundle's own (the region for pretrained:au and pretrained:au-si), else as the bundle's training store was preprocessed (the whole frame for stores made before 0.3.0).", show_default=False)] = None,
) -> None:
    """Predict AU intensities (or valence/arousal) from still images or video frames.

    `drkit predict pretrained:au clip.mp4 -o au.csv --plot plots/` answers "which AUs, how strong,
    in which frame" with the shipped model. CSV columns (drkit format): input, frame (source frame
    index for videos, 0 for images), timestamp (s), face_found (0/1), confidence (0-1), then one
    column per target; --format openface writes OpenFace 2.2's layout."""
    from .stages import predict as stage
    r = stage.run(C.PredictConfig(model=model, inputs=inputs, out=out, save_dr=save_dr, backend=backend,
                                  model_root=model_root, batch_size=batch_size, device=device,
                                  precision=precision, channels_last=channels_last, compile=compile_,
                                  per_video=per_video, shard=shard, overwrite=overwrite, format=format,
                                  plot=plot, video_out=video_out, dr_frames=dr_frames, clip=clip, engine=engine,
                                  reuse_mad=reuse_mad, redetect_region=redetect_region))
    done = f", {len(r.written)} CSVs written, {r.skipped} already there" if per_video else ""
    log.info(f"predict: {r.rows} rows, {r.faces} with a face, {len(r.failed)} inputs skipped{done} -> {r.out}")


@command()
def export(
    model: Annotated[Path, typer.Argument(help="A task bundle (best.pt of a train-task run, the run folder, or pretrained:NAME of an AU model) or a DR checkpoint (file, run folder, or pretrained:T5).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write model.onnx and model.json into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random crops the export is checked on.")] = C.ExportConfig.seed,
) -> None:
    """Export a task bundle or a DR network to ONNX, for onnxruntime or any other ONNX runtime.

    A bundle becomes one graph: crops (n, S, S, 3) uint8 RGB -> values (n, k) clipped to the
    bundle's label ranges, raw_values, and mdr (n, C, M, M), the image and DR channels; a DR
    checkpoint its network: images (n, 3, s, s) in [0, 1] -> dr. The batch dimension is dynamic.
    model.json describes inputs and outputs, the crop size, the targets and the source
    checkpoint's SHA-256. Before writing, the graph is run by onnxruntime on random crops and
    compared with torch (the largest difference is printed and recorded)."""
    from . import export as stage
    r = stage.run(C.ExportConfig(model=model, out=out, seed=seed))
    log.info(f"export: {'task bundle' if r.kind == 'task' else 'DR network'} -> {r.onnx} "
             f"({r.onnx.stat().st_size / 2**20:.1f} MB) and {r.json.name}, {r.seconds:.1f} s")


@command()
def labels(
    layout: Annotated[LabelLayout, typer.Argument(help="Dataset layout of the label files.")],
    root: Annotated[Path, typer.Argument(help="Folder holding the dataset's label files.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="drkit label CSV to write.")],
    video_suffix: Annotated[str, typer.Option(help="avec2012: appended to folder names to make video ids (e.g. .avi).")] = "",
) -> None:
    """Convert a dataset's label files (FERA 2015 BP4D intensities, AVEC 2012 valence/arousal)
    to the drkit label CSV (docs/formats.md)."""
    from .datasets import convert_labels
    r = convert_labels(layout, root, out, video_suffix)
    log.info(f"{r.out}: {r.rows} frames of {r.videos} videos, targets {', '.join(r.targets)}")


@command()
def synth(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder to write videos/, labels.csv, landmarks/, synth.json.")],
    n: Annotated[int, typer.Option("--n", help="Number of sequences.")] = C.SynthConfig.n,
    seconds: Annotated[float, typer.Option(help="Length of each sequence.")] = C.SynthConfig.seconds,
    fps: Annotated[float, typer.Option(help="Frame rate.")] = C.SynthConfig.fps,
    faces: Annotated[Optional[List[Path]], typer.Option("--faces", help="Identity photo, image folder or video; repeat "
                                                        "for more (one person per file, named by its stem; default: "
                                                        "pseudo-identities of scikit-image's astronaut photo).")] = None,
    identities: Annotated[int, typer.Option(help="Pseudo-identities to make when no --faces are given.")] = C.SynthConfig.identities,
    frame_size: Annotated[int, typer.Option("--frame-size", "--size", help="Side of the square frames in pixels (--size: its 0.2 name).")] = C.SynthConfig.frame_size,
    seed: Seed = C.SynthConfig.seed,
    appearance: Annotated[bool, typer.Option(help="Draw the AUs' wrinkles, folds, shading, teeth and mouth "
                                             "cavity on the warped face (off: landmark warp only).")] = C.SynthConfig.appearance,
    morphology: Annotated[float, typer.Option(help="Largest resting AU offset of a person (0-5): each identity gets "
                                              "a resting face (slight smile, lowered brows, deep folds...) that is "
                                              "not in the labels. 0: none.")] = C.SynthConfig.morphology,
) -> None:
    """Make face videos with exact per-frame AU intensities, valence/arousal and landmarks."""
    from .stages import synth as stage
    stage.run(C.SynthConfig(out=out, n=n, seconds=seconds, fps=fps, faces=faces or [],
                            identities=identities, frame_size=frame_size, seed=seed, appearance=appearance,
                            morphology=morphology))


@command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for everything the demo makes.")] = C.DemoConfig.out,
    quick: Annotated[bool, typer.Option("--quick/--full", help="Synthetic part: 8 identities, 2 seeds (default, minutes on 2 CPU cores), or 10 identities, 3 seeds and longer videos (--full, about half an hour).")] = C.DemoConfig.quick,
    train_dr: Annotated[bool, typer.Option(help="Train the DR here (on the training people) instead of using the shipped pretrained:T5.")] = C.DemoConfig.train_dr,
    seed: Seed = C.DemoConfig.seed,
) -> None:
    """What drkit is for, in minutes: (1) a real face clip that ships with drkit analysed with the
    shipped AU model (CSV, OpenFace-layout CSV, a plot per AU, an annotated video, DR pictures);
    (2) the whole pipeline on synthetic faces with exact labels: synth, preprocess, DRs (shipped,
    or trained with --train-dr), rank-eval, gen-dr (MDR), train-task (SI and MDR over seeds),
    eval-task on held-out people, predict on a held-out video and still. Each step is printed as
    the exact `drkit` command it runs, so every step can be re-run by hand."""
    from rich.console import Console
    from rich.table import Table

    from .stages import demo as stage
    s = stage.run(C.DemoConfig(out=out, quick=quick, train_dr=train_dr, seed=seed), run_argv)
    con = Console()
    real = s.real_face or {}
    if real:
        t = Table(title=f"1. a real face: {Path(real['clip']).name}, pretrained:au, {real['faces']} of "
                        f"{real['frames']} frames with a face -> {out}/real")
        for c in ("AU", "mean", "max", "at frame (s)"):
            t.add_column(c, justify="right")
        for a, v in real["au"].items():
            t.add_row(a, f"{v['mean']:.2f}", f"{v['max']:.2f}", f"{v['frame']} ({v['time_s']:.1f} s)")
        con.print(t)
    t = Table(title=f"2. synthetic faces ({s.seconds:.0f} s in all, DR {s.dr}) -> {out}")
    t.add_column("what")
    t.add_column("result", justify="right")
    for k, v in s.rank_accuracy.items():
        t.add_row(f"rank accuracy {k}, held-out people: DR / identity", f"{v['dr']:.1f}% / {v['identity']:.1f}%")
    i, m = s.au_icc, s.au_mse
    n = len(i["si"]["runs"])
    t.add_row(f"AU ICC(3,1), held-out people, mean ± sd of {n} seeds: SI / MDR",
              f"{i['si']['mean']:.3f} ± {i['si']['sd']:.3f} / {i['mdr']['mean']:.3f} ± {i['mdr']['sd']:.3f}")
    t.add_row("AU MSE: SI / MDR", f"{m['si']['mean']:.3f} / {m['mdr']['mean']:.3f}")
    t.add_row("better input (beyond the spread over seeds)", s.better_input.upper())
    for k, v in s.files.items():
        t.add_row(k, v)
    con.print(t)
    per = Table(title="per AU: held-out ICC (mean over seeds) and the showcase still "
                      f"({s.showcase['video']} frame {s.showcase['frame']}, {s.showcase_input.upper()} model)")
    for c in ("AU", "ICC SI", "ICC MDR", "still: predicted", "still: true"):
        per.add_column(c, justify="right")
    for a, (p, tr) in s.showcase["au"].items():
        per.add_row(a, f"{s.au_icc_per_au['si'][a]:.3f}", f"{s.au_icc_per_au['mdr'][a]:.3f}",
                    "-" if p is None else f"{p:.2f}", f"{tr:.2f}")
    con.print(per)


# ------------------------------------------------------------------ entry points

def run_argv(argv: list[str]) -> None:
    """Run one `drkit` command line in this process (``argv`` without the program name), as the
    shell would; raise DrkitError (with the command's exit code) if it does not exit 0."""
    flags = ["-q"] if log.VERBOSITY == 0 else ["-v"] if log.VERBOSITY >= 2 else []
    try:
        rc = app([*flags, *map(str, argv)], standalone_mode=False)
    except typer.Exit as e:   # raised by the error handling of `command`
        rc = e.exit_code
    except Exception as e:
        if _from_cli_framework(e):
            raise UsageError(f"`drkit {shlex.join(map(str, argv))}`: {e}") from e
        raise
    if rc not in (None, 0):
        err = DrkitError(f"`drkit {shlex.join(map(str, argv))}` failed (exit code {rc})")
        err.exit_code = rc
        raise err


def _quiet_native_stderr(argv: list[str]) -> None:
    """Keep messages that C libraries print straight to the stderr file descriptor (FFmpeg's
    decoder complaints, libjpeg's "Corrupt JPEG data") out from between drkit's own lines,
    unless -v: drkit's output moves to a duplicate of stderr, and descriptor 2 goes to
    /dev/null. Damaged inputs are still reported by drkit itself."""
    import os
    import sys
    if "-v" in argv or "--verbose" in argv or not hasattr(os, "dup2"):
        return
    try:
        keep = os.dup(2)
        sys.stderr.flush()
        sys.stderr = os.fdopen(keep, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                               errors="backslashreplace")
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        pass


def main() -> None:
    """Console entry point."""
    import sys
    _quiet_native_stderr(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
