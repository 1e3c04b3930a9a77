"""
A long training run survives its faults, both stages, on the tiny toy world of conftest.py, the
faults injected from outside the code:
- a NaN gradient with a finite loss on the step before a save: the step is skipped and counted,
  every checkpoint stays finite (one process, and two under torchrun);
- such steps, --max_bad_steps of them in a row: the run stops with one line naming the step and
  the last good checkpoint, which is there, finite and at that step;
- a kill (SIGKILL) in the middle of a checkpoint write: the same command again removes the
  unfinished file and ends with the weights of a run never killed;
- the newest checkpoint cut short (a power loss): the same command again goes on from the one
  before it, and ends with the weights of a run that never lost it;
- a full disk during a save: one error line, the checkpoints on disk as they were.
"""
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stage1_caption
import stage2_audio
from test_distributed import assert_identical, needs_gloo, one_thread, stage_args, stage_ckpt  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
STAGES = pytest.mark.parametrize("stage", [stage1_caption, stage2_audio], ids=["stage1", "stage2"])
RUN = ["--max_steps=4", "--eval_interval=2", "--log_interval=1"]

# A run of a stage's main() with a fault injected, as a script (for torchrun and for SIGKILL):
# FAULT=nan:K:N   the gradient of one weight is NaN on rank 0 from the backward of step K on, N steps
# FAULT=kill:K    the process is killed while it writes its checkpoint of step K, half the file written
FAULTY = '''
import io, os, signal, sys
sys.path.insert(0, {root!r})
import torch
import stage1_caption, stage2_audio, utils

stage = {{"stage1": stage1_caption, "stage2": stage2_audio}}[sys.argv[1]]
kind, *at = os.environ["FAULT"].split(":")
if kind == "nan":
    first, n = map(int, at)
    wrap = stage.data_parallel

    def data_parallel(model, world):
        calls = []

        def poison(grad):  # a finite loss, a gradient that is not: what a bad kernel or a flaky GPU gives
            calls.append(1)
            bad = first <= len(calls) - 1 < first + n and int(os.environ.get("RANK", 0)) == 0
            return grad * float("nan") if bad else grad

        next(p for p in model.parameters() if p.requires_grad).register_hook(poison)
        return wrap(model, world)

    stage.data_parallel = data_parallel
elif kind == "kill":
    save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == int(at[0]):
            buffer = io.BytesIO()
            save(obj, buffer)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *args, **kwargs)

    torch.save = torch_save
stage.main(sys.argv[2:])
'''


def faulty_run(tmp_path, stage, args, fault, processes=1):
    """The stage's main() with `fault`, in a process of its own (or torchrun's two)."""
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY.format(root=str(ROOT)))
    name = "stage1" if stage is stage1_caption else "stage2"
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={processes}"]
    env = dict(os.environ, FAULT=fault, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([*launcher, str(script), name, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def saved(path):
    return torch.load(path, weights_only=True)


def finite(ckpt):
    values = [ckpt["model"]] if "model" in ckpt else [ckpt["trainable"], ckpt["projector"]]
    return all(bool(torch.isfinite(v).all()) for d in values for v in d.values() if v.is_floating_point())


def leftovers(folder, stage):
    """atomic_path's temporary files of a stage's checkpoint in `folder`."""
    stem = Path(stage_ckpt(stage)).stem
    return [p.name for p in folder.glob(f".{stem}.*.pt")]


def checkpoints(folder, stage):
    name = Path(stage_ckpt(stage))
    return folder / name, folder / f"{name.stem}.prev.pt"


@STAGES
@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=needs_gloo)])
def test_a_nan_gradient_before_a_save_is_skipped_and_never_saved(world, tmp_path, stage, processes):
    args = stage_args(stage, world) + RUN + [f"--out_dir={tmp_path}/run"]
    if processes == 2 and stage is stage2_audio:
        args.append("--micro_batch=2")
    run = faulty_run(tmp_path, stage, args, "nan:1:1", processes)  # step 1, the one before the save at step 2
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"warning: step 1: the gradient norm is nan \(this rank's clips: [^)]+\): step skipped", run.stdout)
    assert re.search(r"step 2/4 \| loss nan \| .*\| 1 skipped \|", run.stdout)  # nothing applied in that line's steps
    assert "step 3/4 | loss nan" not in run.stdout and "skipped" not in run.stdout.split("step 3/4")[1]
    latest, previous = checkpoints(tmp_path / "run", stage)
    assert saved(previous)["step"] == 2 and saved(latest)["step"] == 4
    assert finite(saved(previous)) and finite(saved(latest))


@STAGES
def test_bad_steps_in_a_row_stop_the_run_and_name_the_last_good_checkpoint(world, tmp_path, stage):
    out = tmp_path / "run"
    args = stage_args(stage, world) + ["--max_steps=6", "--eval_interval=1", "--log_interval=1", "--max_bad_steps=3",
                                       f"--out_dir={out}"]
    run = faulty_run(tmp_path, stage, args, "nan:2:9")
    assert run.returncode == 1, run.stdout[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: step 4: the gradient norm is nan \(this rank's clips: .+\): 3 steps in a row with a "
                        r"gradient that is not finite, none of them applied \(--max_bad_steps=3\); the weights stay "
                        r"finite, the last good checkpoint is (\S+) \(step (\d+)\)", last), last
    path, step = re.search(r"checkpoint is (\S+) \(step (\d+)\)", last).groups()
    # what the line says is true: that file, at that step (saved before the bad step 4), finite
    assert Path(path) == checkpoints(out, stage)[0] and saved(path)["step"] == int(step) == 4
    assert finite(saved(path))
    assert run.stdout.count("step skipped") == 2  # the third is the stop


@STAGES
def test_a_kill_inside_a_checkpoint_write_then_the_same_command(world, tmp_path, capsys, stage):
    args = stage_args(stage, world) + RUN + (["--dropout=0.1"] if stage is stage2_audio else [])  # dropout replays too
    stage.main(args + [f"--out_dir={tmp_path}/whole"])
    capsys.readouterr()
    out = tmp_path / "killed"
    run = faulty_run(tmp_path, stage, args + [f"--out_dir={out}"], "kill:4")
    assert run.returncode == -9, run.stderr[-2000:]
    assert len(leftovers(out, stage)) == 1  # the half-written file of step 4
    stage.main(args + [f"--out_dir={out}"])  # the same command again
    log = capsys.readouterr().out
    assert "a checkpoint write that did not finish" in log and "at step 2" in log
    assert leftovers(out, stage) == []
    a, b = saved(checkpoints(tmp_path / "whole", stage)[0]), saved(checkpoints(out, stage)[0])
    assert a["step"] == b["step"] == 4
    for part in ("trainable", "projector", "model", "optimizer"):  # the run that was never killed, bit for bit
        if part in a:
            assert_identical(a[part], b[part], part)


@STAGES
def test_the_newest_checkpoint_cut_short_then_the_same_command(world, tmp_path, capsys, stage):
    args = stage_args(stage, world) + ["--max_steps=4", "--eval_interval=1", "--log_interval=1"]
    stage.main(args + [f"--out_dir={tmp_path}/whole"])
    stage.main(args + [f"--out_dir={tmp_path}/cut"])  # checkpoints at steps 3 (.prev) and 4
    latest, previous = checkpoints(tmp_path / "cut", stage)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3])  # what a power loss can leave
    capsys.readouterr()
    stage.main(args + [f"--out_dir={tmp_path}/cut"])
    log = capsys.readouterr().out
    assert re.search(rf"resuming from {re.escape(str(previous))} at step 3 \({re.escape(str(latest))}: not a readable "
                     rf".* checkpoint \(.+\); moved to {latest.stem}.bad.pt\)", log), log
    a, b = saved(checkpoints(tmp_path / "whole", stage)[0]), saved(latest)
    assert b["step"] == 4 and saved(previous)["step"] == 3  # the bad file is not kept as the one before
    for part in ("trainable", "projector", "model", "optimizer"):
        if part in a:
            assert_identical(a[part], b[part], part)


@STAGES
def test_a_full_disk_during_a_save_is_one_error_and_the_checkpoints_stay(world, tmp_path, capsys, monkeypatch, stage):
    out = tmp_path / "run"
    args = stage_args(stage, world) + RUN + [f"--out_dir={out}"]
    save = torch.save

    def full_disk(obj, f, *a, **kw):
        if obj.get("step") == 4:
            with open(f, "wb") as part:
                part.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as stop:
        stage.main(args)
    latest, previous = checkpoints(out, stage)
    assert str(stop.value) == (f"error: could not write {latest} ([Errno {errno.ENOSPC}] "
                               f"{os.strerror(errno.ENOSPC)}); the last good checkpoint is {latest} (step 2)")
    assert saved(latest)["step"] == 2 and finite(saved(latest)) and not previous.exists()
    assert leftovers(out, stage) == []
