"""
Where a training step's time goes on the toy world, phase by phase. Stage 2 (the default):

  data       the batch: feature and token files, prompts, §3.2.2's masking draw
  converter  the frozen Converter's condition (stage2_audio.audio_condition)
  forward    VATT Audio's forward and the loss of eq. 2
  backward   the backward pass
  optimizer  gradient clipping, AdamW, zeroing the gradients

The step is stage2_audio.py's at the toy preset's size and batch, on one CPU thread by default
(the ablation runs train two variants at once on two cores, one thread each). Each phase is timed
twice: wall clock, and this process's CPU time, which on one thread stays close to the phase's own
cost when other jobs share the machine. Needs the toy data and a stage-1 model (make demo's).

Stage 1 (--stage=1): data (the batch's feature files and instructions), forward (tokenizing,
embedding and padding the sequences, the LLM and eq. 1), backward, optimizer; its LLM is the one
make demo built (out/toy/base_llm).

    python tools/toy/step_time.py                                   # VATT Audio, 40 timed steps
    python tools/toy/step_time.py --architecture=cross-attn --steps=20
    python tools/toy/step_time.py --condition=visual --threads=2
    python tools/toy/step_time.py --stage=1 --threads=2             # the Converter
"""
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import stage1_caption as s1  # noqa: E402
import stage2_audio as s2  # noqa: E402
from codec import load_codec  # noqa: E402
from extract_features import feature_files, load_split, train_val_split  # noqa: E402
from stage1_caption import INSTRUCTIONS, load_converter  # noqa: E402
from utils import parse_config  # noqa: E402

PHASES = ("data", "converter", "forward", "backward", "optimizer")


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"
    features_dir: str = "data/toy/features"
    converter: str = "out/toy/stage1.pt"
    architecture: str = "vatt"  # stage2_audio's --architecture
    condition: str = "llm"  # stage2_audio's --condition
    stage: int = 2  # 1: the Converter's step, 2: VATT Audio's
    llm: str = "out/toy/base_llm"  # stage 1's base LLM (make demo builds it)
    steps: int = 40  # timed steps
    warmup: int = 5  # untimed steps first (allocator, first-call costs)
    threads: int = 1


def mark():
    return time.perf_counter(), time.process_time()


def report(title, marks_per_step, phases, cfg, max_steps):
    """The table: each phase's mean wall and CPU milliseconds per step and their shares."""
    wall, cpu = defaultdict(float), defaultdict(float)
    for marks in marks_per_step[cfg.warmup:]:
        for phase, a, b in zip(phases, marks, marks[1:]):
            wall[phase] += b[0] - a[0]
            cpu[phase] += b[1] - a[1]
    total_wall, total_cpu = sum(wall.values()), sum(cpu.values())
    print(f"{title}, {cfg.threads} thread(s), mean of {cfg.steps} steps after {cfg.warmup}")
    print("| phase | wall ms per step | share | CPU ms per step | share |")
    print("|---|---|---|---|---|")
    for phase in phases:
        print(f"| {phase} | {wall[phase] / cfg.steps * 1000:.1f} | {wall[phase] / total_wall:.0%} "
              f"| {cpu[phase] / cfg.steps * 1000:.1f} | {cpu[phase] / total_cpu:.0%} |")
    print(f"| total | {total_wall / cfg.steps * 1000:.1f} | 100% | {total_cpu / cfg.steps * 1000:.1f} | 100% |")
    print(f"{max_steps} steps (the toy's budget) at this rate: {total_wall / cfg.steps * max_steps / 60:.1f} "
          f"min wall, {total_cpu / cfg.steps * max_steps / 60:.1f} min CPU")


def stage1_steps(cfg):
    """The Converter's training step, phase by phase (stage1_caption.train_step's work)."""
    s1cfg = parse_config(s1.Config, s1.PRESETS, ["--preset=toy", f"--llm={cfg.llm}", f"--data_json={cfg.data_json}",
                                                 f"--features_dir={cfg.features_dir}"])
    files, train, _ = train_val_split(s1cfg, tokens=False)
    device = torch.device("cpu")
    model = s1.build_converter(s1cfg, files.meta, device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s1cfg.lr, weight_decay=s1cfg.weight_decay)
    all_marks = []
    for step in range(cfg.warmup + cfg.steps):
        marks = [mark()]
        feats, prompts, captions = s1.draw_batch(files, train, np.random.default_rng([0, step]), s1cfg, 0, 1)["batch"]
        marks.append(mark())
        loss_sum, n_tokens = model(feats, prompts, captions)
        loss = loss_sum / n_tokens
        marks.append(mark())
        loss.backward()
        marks.append(mark())
        torch.nn.utils.clip_grad_norm_(params, s1cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(mark())
        all_marks.append(marks)
    report(f"stage-1 step, toy preset: batch {s1cfg.batch_size}, {sum(p.numel() for p in params):,} trainable "
           "parameters", all_marks, ("data", "forward", "backward", "optimizer"), cfg, s1cfg.max_steps)


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    torch.set_num_threads(cfg.threads)
    if cfg.stage == 1:
        return stage1_steps(cfg)
    s2cfg = parse_config(s2.Config, s2.PRESETS, ["--preset=toy", f"--architecture={cfg.architecture}",
                                                 f"--condition={cfg.condition}"])
    device = torch.device("cpu")
    files = feature_files(cfg.features_dir)
    codec = load_codec(files.require_meta()["codec"])
    converter = load_converter(cfg.converter, device)
    torch.manual_seed(0)
    mcfg = s2.model_config(s2cfg, converter.hidden_size, codec)
    model = s2.audio_model(mcfg, codec.codebooks.float()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=s2cfg.lr, weight_decay=s2cfg.weight_decay)
    items, _ = load_split(cfg.data_json, cfg.features_dir, "train", tokens=True)
    n = s2cfg.batch_size
    all_marks = []
    for step in range(cfg.warmup + cfg.steps):
        r, g = np.random.default_rng([0, step]), torch.Generator().manual_seed(step)
        marks = [mark()]
        pick = r.choice(len(items), n)
        use_caption, instr = r.random(n) < s2cfg.caption_prob, r.integers(len(INSTRUCTIONS), size=n)
        prompts = [items[i][1] if c else INSTRUCTIONS[j] for i, c, j in zip(pick, use_caption, instr)]
        feats = torch.stack([files.load_video(items[i][0]) for i in pick])  # (B, N, D)
        codes = torch.stack([files.load_tokens(items[i][0]) for i in pick])  # (B, L, T)
        mask, null_cond = s2.training_draw(n, codes.shape[1:], g, s2cfg.mask_mean, s2cfg.mask_std, s2cfg.cond_dropout,
                                      s2cfg.mask_dist, step / s2cfg.max_steps)
        marks.append(mark())
        cond, cond_mask = s2.audio_condition(converter, feats, prompts, s2cfg.condition)
        marks.append(mark())
        logits = model(codes.masked_fill(mask, mcfg.bins), cond, cond_mask, null_cond)
        loss = s2.masked_loss(logits.float(), codes, mask, s2cfg.label_smoothing)
        marks.append(mark())
        loss.backward()
        marks.append(mark())
        torch.nn.utils.clip_grad_norm_(model.parameters(), s2cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(mark())
        all_marks.append(marks)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report(f"stage-2 step, toy preset, architecture {cfg.architecture}, condition {cfg.condition}: batch {n}, "
           f"{params:,} trainable parameters", all_marks, PHASES, cfg, s2cfg.max_steps)


if __name__ == "__main__":
    main()
