"""
Training on several processes and resuming after a kill, for both stages, on the tiny toy world
of conftest.py:
- torchrun with 2 processes (gloo on CPU) and batch B per process trains as 1 process with batch
  2B does: the same losses, the same weights to float tolerance, and every rank ends with
  bit-identical weights (each prints a digest of its weights; rank 0's checkpoint has the same).
(A run killed and started again replays the uninterrupted run: tests/test_faults.py.)
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stage1_caption
import stage2_audio
from conftest import TINY_STAGE1, TINY_STAGE2
from utils import weights_digest

ROOT = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


@pytest.fixture(autouse=True)
def one_thread():
    """The toy models are tiny: one thread per process is the fastest, and on a busy 2-core
    machine two threads per process spend most of their time waiting for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def stage_args(stage, world):
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features"]
    if stage is stage1_caption:
        return data + [f"--llm={world}/out/toy_llm"] + TINY_STAGE1
    return data + [f"--converter={world}/out/stage1.pt"] + TINY_STAGE2


def stage_ckpt(stage):
    return "stage1.pt" if stage is stage1_caption else "stage2.pt"


def losses(log):
    """{'step 1': 4.067, 'val 0': 4.125, ...} from a training log. (Not anchored to line starts:
    under torchrun a rank's print may land between another rank's text and its newline.)"""
    train = {f"step {s}": float(v) for s, v in re.findall(r"step (\d+)/\d+ \| loss (\d+\.\d{4})", log)}
    val = {f"val {s}": float(v) for s, v in re.findall(r"step (\d+): val loss (\d+\.\d{4})", log)}
    return train | val


def trained_weights(stage, ckpt_path):
    """The trainable weights in a checkpoint, in the order the training loop digests them."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    if stage is stage1_caption:
        return list(ckpt["trainable"].values()) + list(ckpt["projector"].values())
    model, _ = stage2_audio.load_vatt_audio(ckpt_path, torch.device("cpu"))
    return list(model.parameters())


def assert_identical(a, b, where="checkpoint"):
    """Two checkpoints (nested dicts / lists of tensors and numbers) equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@needs_gloo
@pytest.mark.parametrize("stage", [stage1_caption, stage2_audio], ids=["stage1", "stage2"])
def test_two_processes_train_as_one(world, tmp_path, capsys, stage):
    # the same command: --batch_size is the global batch, each process takes half. Stage 1's
    # processes also accumulate gradients over 2 micro-steps of 1 (DDP syncs only on the last one).
    # Stage 2 draws its masks per micro-batch: one process accumulates the two micro-batches of 2
    # that the two processes run
    micro = [] if stage is stage1_caption else ["--micro_batch=2"]
    args = stage_args(stage, world) + ["--max_steps=3", "--eval_interval=3", "--log_interval=1", "--batch_size=4"]
    stage.main(args + micro + [f"--out_dir={tmp_path}/one"])
    one = capsys.readouterr().out
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          Path(stage.__file__).name, *args, f"--out_dir={tmp_path}/two",
                          *(["--micro_batch=1"] if stage is stage1_caption else micro)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    two = run.stdout
    assert ("a global batch of 4 = 1 process x 1 accumulated micro-batch x 4" if stage is stage1_caption
            else "a global batch of 4 = 1 process x 2 accumulated micro-batches x 2") in one
    assert f"a global batch of 4 = 2 processes x {2 if stage is stage1_caption else 1}" in two

    # the same global batches, and the loss a mean over the global batch's tokens: the same
    # losses (printed to 4 decimals) and weights as one process with the whole batch
    assert len(losses(one)) == 5 and losses(two) == pytest.approx(losses(one), abs=2e-4)
    for a, b in zip(trained_weights(stage, tmp_path / "one" / stage_ckpt(stage)),
                    trained_weights(stage, tmp_path / "two" / stage_ckpt(stage))):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # every rank holds exactly the weights rank 0 saved
    digests = dict(re.findall(r"rank (\d+): weights ([0-9a-f]{16})", two))
    saved = weights_digest(trained_weights(stage, tmp_path / "two" / stage_ckpt(stage)))
    assert digests == {"0": saved, "1": saved}
