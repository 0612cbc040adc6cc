"""The CLI and the package layout: defaults declared once, choices are usage errors, exit codes
inside the app, stages do not import each other, checkpoints load without the training loop."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

import drkit
from drkit import configs as C

PKG = Path(drkit.__file__).parent

COMMANDS = {"preprocess": C.PreprocessConfig, "train-dr": C.TrainDRConfig, "rank-eval": C.RankEvalConfig,
            "gen-dr": C.GenDRConfig, "train-task": C.TrainTaskConfig, "eval-task": C.EvalTaskConfig,
            "predict": C.PredictConfig, "synth": C.SynthConfig, "demo": C.DemoConfig}
RENAMED = {"train-task": {"inputs": "input"}, "rank-eval": {"json_out": "json"},
           "eval-task": {"json_out": "json"}}


def test_cli_defaults_are_the_config_defaults():
    """Every option that sets a config field shows that field's default: one source of truth."""
    import typer.main

    from drkit.cli import app
    group = typer.main.get_command(app)
    checked = 0
    for name, cls in COMMANDS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for p in group.commands[name].params:
            field = fields.get(RENAMED.get(name, {}).get(p.name, p.name))
            if field is None or field.default is dataclasses.MISSING:
                continue
            want = field.default
            if name == "rank-eval" and p.name == "baselines":
                want = ",".join(C.DEFAULT_BASELINES)
            got = p.default
            if isinstance(want, bool) and p.name in ("overwrite", "resume"):
                assert got is False
            assert (got == want) or (got is None and want in (None, [])), (name, p.name, got, want)
            checked += 1
    assert checked >= 50, checked


@pytest.mark.parametrize("args, allowed", [
    (["train-dr", "s.zarr", "-o", "r", "--param", "foo"], "residual"),
    (["preprocess", "x.mp4", "-o", "s.zarr", "--backend", "foo"], "dlib"),
    (["train-task", "s.zarr", "--labels", "l.csv", "--input", "xyz"], "mdr"),
    (["train-task", "s.zarr", "--labels", "l.csv", "--task", "pain"], "affect"),
    (["labels", "bp4d", "root", "-o", "x.csv"], "fera2015"),
])
def test_a_bad_choice_is_a_usage_error_naming_the_choices(args, allowed):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert allowed in r.stderr and "Traceback" not in r.stderr


def test_bad_values_checked_by_the_library_exit_2(tmp_path, face_store):
    r = cli("rank-eval", tmp_path / "none", face_store, "--baselines", "identity,foo")
    assert r.returncode == 2 and "ranksvm" in r.stderr   # names the allowed values
    r = cli("preprocess", tmp_path, "-o", tmp_path / "s.zarr", "--shard", "3/2")
    assert r.returncode == 2 and "--shard" in r.stderr
    r = cli("preprocess", tmp_path, "-o", tmp_path / "s.zarr", "--size", "63")
    assert r.returncode == 2 and "--crop-size 63" in r.stderr   # the new name, given --size
    r = cli("rank-eval", tmp_path / "none", face_store, "--T", "3,x")
    assert r.returncode == 2 and "--T" in r.stderr
    from drkit.errors import UsageError
    from drkit.stages import train_dr
    with pytest.raises(UsageError, match="direct"):
        train_dr.run(C.TrainDRConfig(stores=[face_store], out=tmp_path / "r", param="foo"))


def test_errors_are_one_line_with_the_exit_code(tmp_path):
    r = cli("predict", tmp_path / "no_model", tmp_path, "-o", tmp_path / "y.csv")
    assert r.returncode == 1 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    r = cli("preprocess", "x", "--no-such-flag")
    assert r.returncode == 2


def test_console_script_runs_as_a_process():
    """One real process (the entry point, not CliRunner): version and exit codes."""
    r = subprocess.run([sys.executable, "-m", "drkit.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"drkit {drkit.__version__}"
    r = subprocess.run([sys.executable, "-m", "drkit.cli", "inspect", "/no/such/store"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no such drkit store" in r.stderr and "Traceback" not in r.stderr


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a module of the drkit package."""
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_no_stage_imports_another_stage():
    stages = {p.stem for p in (PKG / "stages").glob("*.py") if p.stem != "__init__"}
    assert {"preprocess", "train_dr", "rank_eval", "gen_dr", "train_task", "eval_task", "predict"} <= stages
    for p in (PKG / "stages").glob("*.py"):
        if p.stem in ("demo", "__init__"):
            continue
        imported = _imports(p)
        bad = {m for m in imported if m.startswith("drkit.stages.") or m == "drkit.cli"}
        assert not bad, f"{p.name} imports {bad}"
    for p in PKG.glob("*.py"):   # library modules never import stages (the CLI does, lazily)
        if p.stem != "cli":
            assert not {m for m in _imports(p) if m.startswith("drkit.stages")}, p.name


def test_readers_do_not_import_the_training_loop():
    code = ("import sys, drkit.checkpoint, drkit.predictor, drkit.mdr, drkit.ranking, drkit.tasks, "
            "drkit.stages.rank_eval, drkit.stages.gen_dr, drkit.stages.predict, drkit.stages.eval_task; "
            "assert 'drkit.train' not in sys.modules, 'training loop imported'; "
            "import drkit.cli, drkit.configs, drkit.contracts; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    # the CLI's help path stays light: no torch
    r = subprocess.run([sys.executable, "-c", "import sys, drkit.cli; print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stdout + r.stderr


def test_every_command_has_help():
    for name in [*COMMANDS, "inspect", "labels"]:
        r = cli(name, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, name


def test_native_library_noise_stays_out_of_drkit_output(tmp_path):
    """FFmpeg's own complaints about a broken file ("moov atom not found") go to the stderr
    descriptor directly; drkit keeps them out unless -v and reports the file itself."""
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 64)
    r = subprocess.run([sys.executable, "-m", "drkit.cli", "preprocess", str(bad), "-o", str(tmp_path / "s.zarr")],
                       capture_output=True, text=True)
    assert r.returncode == 3 and "broken.mp4" in r.stderr
    assert "moov atom" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "drkit.cli", "-v", "preprocess", str(bad), "-o",
                        str(tmp_path / "t.zarr")], capture_output=True, text=True)
    assert r.returncode == 3 and "moov atom" in r.stderr     # -v shows everything


def test_a_code_executing_pickle_is_refused_in_one_line(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"format": "drkit.checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    r = cli("rank-eval", tmp_path / "evil.pt", tmp_path)
    assert r.returncode == 1 and "evil.pt: not a drkit checkpoint" in r.stderr
    assert "weights_only" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "pwned").exists()


def test_each_size_has_one_name_and_the_old_size_option_still_works():
    """Issue 22: crop_size (preprocess), net_size (train-dr, rank-eval), map_size (gen-dr),
    frame_size (synth); `--size` and ``Config(size=...)`` of drkit 0.2 keep working."""
    import warnings

    from typer.testing import CliRunner

    from drkit import configs as C
    from drkit.cli import app
    for cmd, name in (("preprocess", "--crop-size"), ("train-dr", "--net-size"), ("rank-eval", "--net-size"),
                      ("gen-dr", "--map-size"), ("synth", "--frame-size")):
        out = " ".join(CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output.split())
        assert name in out and "--size" in out, cmd
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert C.TrainDRConfig(stores=[], out="o", size=32).net_size == 32
        assert C.PreprocessConfig(inputs=[], out="o", size=96).crop_size == 96
        assert C.GenDRConfig(store="s", out="o", dr=[], size=16).map_size == 16
    assert sum(issubclass(x.category, DeprecationWarning) for x in w) == 3
    assert C.TrainDRConfig(stores=[], out="o").net_size == 64 and C.TrainDRConfig.base == 8


def test_choice_fields_are_typed_and_checked_in_one_place():
    """Issue 22: the configs' choice fields carry the contracts' Literal types, and one function
    (configs.check_choices) validates them when a config is made, for Python users as for the CLI."""
    from drkit import configs as C
    from drkit.errors import UsageError
    for cls, kw, option in ((C.TrainTaskConfig, {"input": [], "out": "o", "labels": "l", "input_kind": "x"}, "--input"),
                            (C.TrainTaskConfig, {"input": [], "out": "o", "labels": "l", "arch": "resnet"}, "--arch"),
                            (C.TrainDRConfig, {"stores": [], "out": "o", "objective": "l2"}, "--objective"),
                            (C.RankEvalConfig, {"ckpt": None, "stores": [], "baselines": ["identity", "x"]}, "--baselines"),
                            (C.PredictConfig, {"model": "m", "inputs": [], "out": "o", "format": "csv"}, "--format"),
                            (C.GenDRConfig, {"store": "s", "out": "o", "dr": [], "engine": "tensorrt"}, "--engine")):
        with pytest.raises(UsageError, match=option):
            cls(**kw)
    names = {n for n, _, _ in C._choice_fields(C.TrainTaskConfig)}
    assert {"task", "input_kind", "arch", "dr_norm", "precision"} <= names
