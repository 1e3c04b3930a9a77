"""
`make train-check`: training at the paper's size, measured on one GPU in at most 5 minutes, with
random weights and no download. It runs the stages' own training code (stage1_caption's
build_converter, step_data, train_step, save and load_converter; stage2_audio's build_audio_model,
step_data, train_step) on a temporary folder of random features in extract_features.py's layout,
one part after another, each with its own record, its peak memory and its line of output; each
stage's model is built once, and its parts run on it with their own configs and fresh optimizers:

    prepare     256 clips of random features (10 s: 50 x 768 float16) and tokens (4 x 500 int16) with
                their meta.json and a V2A-Instruction JSON; a random Gemma-2B, saved with save_pretrained
                with the toy's word-level tokenizer (Gemma's chat template)
    s1-build    stage 1's gemma-2b preset over them: build_converter (from_pretrained, LoRA r16)
    s1-g        3 warm-up + 15 timed train_steps, the preset's micro-batch 8 x 4 accumulated
    s1-g32      the same global batch of 32 as one micro-batch
    s1-flops    one micro-step counted by torch's FlopCounterMode against stage1_caption.train_flops
    s1-ddp      3 steps under DistributedDataParallel on a process group of this process alone (NCCL)
    s1-fit      overfit 8 fixed clips (lr 1e-3, 40 steps): the loss must fall to 0.7 x its start
    stage1.pt   stage1_caption.save, then load_converter: a full-size checkpoint's round trip, LoRA merged
    s2-build    stage 2's gemma-2b preset (stage2_audio.PAPER_SIZE) over that reloaded Converter
    s2-g        2 warm-up + 8 timed train_steps, micro-batch 16 x 4 accumulated, dropout 0.1
    s2-flops    one micro-step counted against stage2_audio.forward_flops + stage1_caption.prefill_flops
    s2-ddp      2 steps under 1-rank DDP
    s2-fit      overfit 16 fixed clips of structured tokens, no splice or roll (lr 5e-4, 40 steps): 0.7 x
    s2-compile  (--compile) s2-g with VATT Audio under torch.compile, as stage2_audio.py --compile trains

A timed run reports its median and p90 step time, samples/s, tokens/s, MFU (the stages' analytic
model FLOPs per step over the median step time and the GPU's dense bf16 peak, utils.TrainingLog.peak_tflops)
and its peak memory allocated and reserved. The hard bars (failures(): any fails, exit status 1):
no part fails or is left unrun (an OOM, an exception, a non-finite loss), the analytic FLOPs within
10 % of the counted, both overfits at 0.7 x or less, and, at the paper's size on a GPU of known
peak: MFU >= 15 % in every timed run, peak allocated <= 16 GB (s1-g) and <= 38 GB (s2-g, a 40 GB
A100's), all of it within the 300 s budget. The targets (TARGET_MFU) print MET or MISSED and fail
nothing. Writes out/train-check/result.json, and the table between the <!-- train-check:training -->
markers of docs/real-scale.md. Without a GPU it refuses at once (exit status 2).

    make train-check                                       # one GPU (H100: budget 300 s)
    python tools/train_check.py --compile --budget_s=420   # + s2-g compiled (1-2 minutes of compiling)
    make full-size-check    # = --size=full --device=cpu: the same wiring at the paper's size on a
                            # CPU, one step of each stage (batch 2 as 2 micro-batches), float32, ~16 GB
    python tools/train_check.py --size=tiny --device=cpu --docs=/tmp/real-scale.md   # every part, toy sizes
    python tools/train_check.py --tables_from=result.json   # a GPU machine's result, its table written here

--size=tiny runs every part at toy sizes in seconds on any device (the tests' run: gloo instead of
NCCL), its table into --docs when given. The MFU, memory and wall-time bars need the paper's size on
a GPU of known peak, and are skipped otherwise (it says so).
"""
import dataclasses
import gc
import itertools
import json
import math
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
import stage1_caption as s1  # noqa: E402
import stage2_audio as s2  # noqa: E402
from codec import load_codec  # noqa: E402
from data.toy.llm import toy_tokenizer  # noqa: E402
from extract_features import PRESETS as FEATURE_PRESETS, Config as FeatureConfig  # noqa: E402
from extract_features import FeatureFiles, train_val_split  # noqa: E402
from tools.bench import llm_config  # noqa: E402
from tools.gpu_check import cell, fill_markers, first_line, git_commit  # noqa: E402
from utils import (TrainingLog, adamw, atomic_path, autocast, parse_config, pick_device,  # noqa: E402
                   save_json, split_batch, step_batches, weights_dtype)

ROOT = Path(__file__).resolve().parents[1]
DOCS = str(ROOT / "docs" / "real-scale.md")  # the page of the GPU run's table

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"  # parse_config's default preset; the check has no other (--size chooses the sizes)
    size: str = "full"  # "full": the paper's sizes; "tiny": toy sizes, every part in seconds on a CPU (SIZES)
    # auto: the GPU (--size=full refuses without one); --size=full --device=cpu checks the wiring alone
    device: str = "auto"
    out_dir: str = "out/train-check"  # result.json
    # the page whose <!-- train-check:training --> markers get the table; empty: docs/real-scale.md for a
    # run at the paper's size on a GPU, no page for the others (their numbers are not the docs')
    docs: str = ""
    budget_s: int = 300  # no part starts when fewer than MIN_PART_S of these are left; over it is a failure
    compile: bool = False  # also s2-compile: s2-g with VATT Audio under torch.compile (1-2 minutes to compile)
    tmp_dir: str = ""  # where the random features and the saved LLM go, deleted at the end; empty: the system's
    commit: str = ""  # the commit measured, for a tree without its .git (a copy on a GPU machine); empty: git's
    # a result.json recorded earlier (on a GPU machine): its table into --docs (default docs/real-scale.md),
    # nothing measured, no GPU needed
    tables_from: str = ""


PRESETS = {"toy": {}}

# the overfits: a fixed batch, a high learning rate, a short warm-up, no augmentation
S1_FIT = ["--batch_size=8", "--micro_batch=8", "--lr=1e-3", "--warmup_steps=1", "--max_steps=40"]
S2_FIT = ["--batch_size=16", "--micro_batch=16", "--lr=5e-4", "--warmup_steps=5", "--max_steps=40",
          "--splice_prob=0", "--roll_prob=0"]
# what each size builds: the LLM (bench.llm_config's Gemma-2B, these fields changed), the features
# (extract_features' preset for the window and frame rate, the frame features' width, the codec as
# load_codec takes it, "module:callable"), the clips, the options every config of a stage gets and
# those its overfit adds, and the timed runs' steps (warm-up, timed)
SIZES = {
    # the paper's: Gemma-2B, VATT Audio at PAPER_SIZE (the gemma-2b presets), 10 s clips of
    # EVA02-CLIP-L features and AudioGen's codec (codec.build_audiogen_codec: random weights, where
    # the vggsound preset's hub name would download them)
    "full": dict(llm={}, features="vggsound", feature_dim=768, codec="codec:build_audiogen_codec", clips=256,
                 stage1=[], stage2=[], s1_fit=[], s2_fit=[], s1_steps=(3, 15), s2_steps=(2, 8)),
    # seconds on a CPU: a 1-layer Gemma 256 wide whose Linears have Gemma-2B's gain (its init std
    # 0.02 x sqrt(2048 / 256)) and whose vocabulary still dwarfs the captions' 25 words, as Gemma's
    # 256 k does; prompts and captions cut at 24 tokens (the toy's), VATT Audio as
    # tests/conftest.py's, the toy's 2 s window and DSP codec. One layer and an eighth of the
    # width learn the overfits' batches more slowly a step (the LM head's logits span less, the
    # toy codec's 64 bins leave the unigrams less to gain): higher learning rates, the same steps
    "tiny": dict(llm=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=1, head_dim=64, vocab_size=1024, initializer_range=0.057),
                 features="toy", feature_dim=32, codec="data.toy.codec:ToyCodec", clips=64,
                 stage1=["--max_text_tokens=24"],
                 stage2=["--dim=32", "--n_multiway=1", "--n_plain=1", "--n_head=2", "--head_dim=16"],
                 s1_fit=["--lr=1e-2"], s2_fit=["--lr=5e-3"], s1_steps=(1, 3), s2_steps=(1, 2)),
}
# --size=full on a CPU: one step of a global batch of 2 as 2 micro-batches, so that accumulation runs
WIRING = ["--batch_size=2", "--micro_batch=1"]
DDP_STEPS = {"s1-ddp": 3, "s2-ddp": 2}

# the hard bars (failures) and the targets (printed MET or MISSED, never a failure)
FIT_RATIO = 0.7  # the mean loss of an overfit's last 3 steps over its first 3's, at most
FLOPS_TOLERANCE = 0.10  # |counted / analytic - 1|, at most
MFU_MIN = 0.15  # every timed run: catches float32 matmuls, per-op host syncs, wrong kernels
PEAK_GB = {"s1-g": 16.0, "s2-g": 38.0}  # peak allocated: s2-g fits a 40 GB A100
TARGET_MFU = {"s2-g": 0.35, "s1-g32": 0.40}
MIN_PART_S = 15  # a part is not started with fewer seconds than this left of the budget
MIN_COMPILE_S = 150  # nor s2-compile with fewer than these (its compile takes 1-2 minutes)

# -----------------------------------------------------------------------------
# the random world: features in our layout, and an LLM saved as the hub's are


def write_features(folder, spec):
    """spec["clips"] clips of random frame features (float16) and codec tokens (int16) in
    extract_features.py's layout, the meta.json it writes (its preset's fields, the features' width,
    the codec's rates and tables) and a V2A-Instruction JSON of them, all in the train split, each
    caption 20-40 random words of the instructions' vocabulary (a real caption's length). The tokens
    are structured, (7 b + 3 l + t // 10) mod 16 for clip b, level l, frame t, so that s2-fit has
    something to learn beyond the unigrams; random ones would time the same."""
    folder = Path(folder)
    codec = load_codec(spec["codec"])
    meta = {**asdict(FeatureConfig(**FEATURE_PRESETS[spec["features"]])), "preset": spec["features"],
            "out_dir": str(folder), "codec": spec["codec"], "feature_dim": spec["feature_dim"],
            "sample_rate": codec.sample_rate, "frame_rate": codec.frame_rate, "n_q": codec.n_q, "bins": codec.bins}
    save_json(meta, folder / "meta.json")
    files = FeatureFiles(folder, "ours")
    (n_q, n_audio), words = files.tokens_shape(), sorted(set(re.findall(r"[a-z]+", " ".join(s1.INSTRUCTIONS).lower())))
    level, frame = np.arange(n_q)[:, None], np.arange(n_audio)
    rng = np.random.default_rng(0)
    files.video_dir.mkdir(parents=True)
    files.tokens_dir.mkdir(parents=True)
    entries = []
    for b in range(spec["clips"]):
        stem = f"clip{b:04d}"
        np.save(files.video_path(stem), rng.standard_normal(files.video_shape()).astype(np.float16))
        np.save(files.tokens_path(stem), ((7 * b + 3 * level + frame // 10) % 16).astype(np.int16))
        entries.append(dict(video_path=f"videos/{stem}.mp4", output=" ".join(rng.choice(words, rng.integers(20, 41))),
                            split="train"))
    save_json(entries, folder / "v2a_instruction.json")


def save_random_llm(folder, spec, device):
    """A random Gemma (Gemma-2B's config, spec["llm"]'s fields changed) in the dtype load_llm loads
    it in, saved with the toy's tokenizer as the hub's models are, for stage 1's --llm. Returns its
    parameter count."""
    tokenizer = toy_tokenizer(s1.INSTRUCTIONS)
    config = llm_config("gemma-2b", tokenizer)
    config.update(spec["llm"])
    torch.manual_seed(0)
    with torch.device(device):  # built in place: on a GPU the LLM never passes through host memory
        llm = AutoModelForCausalLM.from_config(config, dtype=weights_dtype(device))
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in llm.parameters())


def prepare(world, spec, device):
    """The random world: world.features (write_features), world.llm (save_random_llm)."""
    write_features(world.features, spec)
    return dict(kind="prepare", clips=spec["clips"], llm_parameters=save_random_llm(world.llm, spec, device))


def stage_config(module, world, device, name, *extra):
    """A stage's Config as its main() parses it: the gemma-2b preset (the paper's sizes and batch
    plan) on the random world, its outputs in the temporary folder `name`, then `extra`."""
    return parse_config(module.Config, module.PRESETS, [
        "--preset=gemma-2b", f"--data_json={world.data_json}", f"--features_dir={world.features}",
        f"--out_dir={world.root / name}", f"--device={device}", *extra])


# -----------------------------------------------------------------------------
# the two stages, as their main()s train them in one process: a Config, the model, one step


class Stage1:
    """Stage 1: build_converter (from_pretrained of the saved LLM, LoRA) and init_projector, as
    stage1_caption.main starts; step_data and train_step. `argv`: options every config gets."""
    module, name = s1, "stage 1"

    def __init__(self, world, device, argv=()):
        self.world, self.device, self.argv = world, device, list(argv)
        self.model = self.optimizer = None
        self.steps = 0  # optimizer steps taken, over all the runs

    def config(self, *extra):
        return stage_config(s1, self.world, self.device, "s1", f"--llm={self.world.llm}", *self.argv, *extra)

    def build(self, cfg):
        self.files, self.items, _ = train_val_split(cfg, tokens=False)
        self.model = s1.build_converter(cfg, self.files.meta, self.device)
        s1.init_projector(self.model, torch.stack([self.files.load_clip(s) for s, _ in self.items[:256]]))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.all_trained = cfg.lora_r == 0  # no LoRA: the backward into every weight too (stage1_caption.train_flops)
        checkpointing = ", gradient checkpointing" if cfg.grad_checkpointing else ""
        return dict(kind="build", what=f"Converter, LoRA r{cfg.lora_r}{checkpointing}",
                    trainable=sum(p.numel() for p in self.params),
                    parameters=sum(p.numel() for p in self.model.parameters()))

    def step(self, model, cfg, plan, data, i):
        """One optimizer step: (loss, tokens run, model FLOPs: stage1_caption.train_flops on the real tokens)."""
        loss, _, _, tokens, flops = s1.train_step(model, self.optimizer, self.params, data, cfg, plan, i, 0, 1,
                                                  self.device)
        return loss, tokens, flops

    @contextmanager
    def as_run(self):
        """Yields a function: stage1_caption.train_flops on the rows the LLM ran meanwhile, read off its
        calls: every position of the padded sequences, and the LM head on the `logits_to_keep` last
        rows of each (Converter.forward), padding and prompt rows among them. The check then tests
        the formula's factors (the forward, and a backward through the activations alone, LoRA
        freezing the weights) rather than what it counts as useful."""
        shapes = []
        hook = self.model.llm.register_forward_pre_hook(
            lambda m, args, kw: shapes.append((*kw["inputs_embeds"].shape[:2], kw["logits_to_keep"])), with_kwargs=True)
        try:
            yield lambda: sum(s1.train_flops(self.model, B * L, B * keep, self.all_trained) for B, L, keep in shapes)
        finally:
            hook.remove()

    def free(self):
        self.model = self.optimizer = self.params = None


class Stage2:
    """Stage 2: build_audio_model over the Converter that load_converter rebuilt from stage1.pt
    (the checkpoint part sets it), as stage2_audio.main starts; step_data and train_step."""
    module, name = s2, "stage 2"

    def __init__(self, world, device, argv=()):
        self.world, self.device, self.argv = world, device, list(argv)
        self.model = self.optimizer = self.converter = None
        self.steps = 0

    def config(self, *extra):
        return stage_config(s2, self.world, self.device, "s2", f"--converter={self.world.stage1}", *self.argv, *extra)

    def build(self, cfg):
        torch.manual_seed(cfg.seed)  # the initial weights, as main() draws them
        self.model = s2.build_audio_model(cfg, self.converter, None, self.device)
        self.files, self.items, _ = train_val_split(cfg, tokens=True)
        self.params = list(self.model.parameters())
        # each sequence: the condition (video tokens, the prompt padded to max_text_tokens), then the audio tokens
        self.n_video = self.converter.n_video_tokens(self.files.video_shape()[0])
        self.n_cond, self.n_audio = self.n_video + self.converter.max_text_tokens, self.files.tokens_shape()[1]
        return dict(kind="build", what=f"VATT Audio {cfg.dim} wide, {cfg.n_multiway} + {cfg.n_plain} layers",
                    trainable=sum(p.numel() for p in self.params), parameters=sum(p.numel() for p in self.params))

    def flops(self, n, n_cond, n_audio):
        """Model FLOPs of training n sequences, as stage2_audio.main counts them: VATT Audio's forward
        and backward (3 forwards), and the frozen Converter's prefill of the condition."""
        return n * s2.train_flops(self.model.config, self.converter, self.n_video, n_cond, n_audio)

    def step(self, model, cfg, plan, data, i):
        loss, _, _ = s2.train_step(model, self.converter, self.optimizer, data, cfg, plan, i, 0, 1, self.device)
        n = cfg.batch_size
        return loss, n * (self.n_cond + self.n_audio), self.flops(n, self.n_cond, self.n_audio)

    @contextmanager
    def as_run(self):
        """Yields a function: the FLOPs formula on the sequences VATT Audio ran meanwhile (B, Lc, T)."""
        shapes = []
        hook = self.model.register_forward_pre_hook(  # args: codes (B, L, T), cond (B, Lc, d), ...
            lambda m, args: shapes.append((len(args[0]), args[1].shape[1], args[0].shape[2])))
        try:
            yield lambda: sum(self.flops(*shape) for shape in shapes)
        finally:
            hook.remove()

    def free(self):
        self.model = self.optimizer = self.params = self.converter = None


# -----------------------------------------------------------------------------
# the parts: each returns its record (kind, and what it measured)


def sync(device):
    if device.type == "cuda":  # the GPU runs ahead of the host: wait for it on both sides of a step
        torch.cuda.synchronize(device)


def batches(stage, cfg, steps):
    """Steps 0 .. steps - 1's data as the stage's main() reads it (step_batches: pinned on CUDA),
    in this process: the runs read each step's data before its clock starts, as workers would."""
    return step_batches(lambda step: stage.module.step_data(stage.files, stage.items, cfg, 0, 1, step), 0, steps, 0,
                        stage.device)


def train(stage, cfg, data, model=None):
    """Optimizer steps of `stage` under `cfg`, one per item of `data`, with a fresh AdamW (kept in
    stage.optimizer: stage1.pt saves it), `model` the stage's or its wrapper (DDP, compile). Returns
    per step: seconds (from a synchronised start to a synchronised end), loss, tokens, model FLOPs."""
    plan = split_batch(cfg.batch_size, cfg.micro_batch, 1)
    stage.optimizer = adamw(stage.params, cfg, stage.device)
    rows = []
    for i, batch in enumerate(data):
        sync(stage.device)
        t = time.perf_counter()
        loss, tokens, flops = stage.step(stage.model if model is None else model, cfg, plan, batch, i)
        sync(stage.device)
        rows.append(dict(seconds=time.perf_counter() - t, loss=loss.item(), tokens=tokens, flops=flops))
    stage.steps += len(rows)
    return rows


def memory(device):
    """The part's peak memory: allocated and reserved on CUDA (reset before each part); on a CPU the
    process's peak resident set so far (it cannot be reset)."""
    if device.type == "cuda":
        return dict(peak_gb=torch.cuda.max_memory_allocated(device) / 1e9,
                    reserved_gb=torch.cuda.max_memory_reserved(device) / 1e9)
    return dict(peak_gb=TrainingLog.peak_memory_gb(device), reserved_gb=None)


def plan(stage, cfg, note=""):
    """A run's batch plan (one process), and in words."""
    micro, accum = split_batch(cfg.batch_size, cfg.micro_batch, 1)
    return dict(config=f"{stage.name}, micro-batch {micro} x {accum}{note}", micro=micro, accum=accum)


def timed_part(stage, cfg, warmup, steps, peak, model=None):
    """`warmup` untimed steps (kernels chosen, memory pooled, a compile compiled), then `steps` timed."""
    rows = train(stage, cfg, batches(stage, cfg, warmup + steps), model)
    seconds = [r["seconds"] for r in rows[warmup:]]
    median = statistics.median(seconds)
    flops, tokens = (statistics.mean(r[k] for r in rows[warmup:]) for k in ("flops", "tokens"))
    return dict(kind="timed", **plan(stage, cfg, ", compiled" if model is not None else ""), warmup=warmup, steps=steps,
                losses=[r["loss"] for r in rows], step_ms=[1000 * s for s in seconds],
                first_step_ms=1000 * rows[0]["seconds"], median_ms=1000 * median,
                p90_ms=1000 * float(np.percentile(seconds, 90)), samples_per_s=cfg.batch_size / median,
                tokens_per_s=tokens / median, tflop_per_step=flops / 1e12,
                mfu=flops / median / (peak * 1e12) if peak else None, **memory(stage.device))


def fit_part(stage, cfg):
    """Overfit one fixed batch (step 0's draw, its masks and dropout seeds kept) for cfg.max_steps
    steps: the mean loss of the last 3 steps over that of the first 3."""
    fixed = next(batches(stage, cfg, 1))
    losses = [r["loss"] for r in train(stage, cfg, itertools.repeat(fixed, cfg.max_steps))]
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    return dict(kind="fit", **plan(stage, cfg, f", lr {cfg.lr:g}"), losses=losses, first=first, last=last,
                ratio=last / first)


def flops_part(stage, cfg):
    """One micro-step (a step of one micro-batch), its FLOPs as torch's FlopCounterMode counts what
    ran (matmuls and attention, forward and backward), against the stage's formula on the shapes
    that ran (as_run). On a CPU attention runs on the math kernel, whose matmuls the counter sees
    (it has no formula for the CPU's fused kernel); on CUDA on the kernels training uses."""
    cfg = dataclasses.replace(cfg, batch_size=split_batch(cfg.batch_size, cfg.micro_batch, 1)[0], micro_batch=0)
    kernel = nullcontext() if stage.device.type == "cuda" else sdpa_kernel(SDPBackend.MATH)
    with stage.as_run() as analytic, kernel, FlopCounterMode(display=False) as counter:
        rows = train(stage, cfg, batches(stage, cfg, 1))
    counted = counter.get_total_flops()
    return dict(kind="flops", **plan(stage, cfg), losses=[rows[0]["loss"]], counted=counted,
                analytic=analytic(), deviation=counted / analytic() - 1, model_flops=rows[0]["flops"])


@contextmanager
def one_rank_group(device):
    """A process group of this process alone, at a free port on localhost: NCCL on a GPU, gloo on a
    CPU. DDP's reducer and its collectives then run as on many GPUs, and torn down after."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method=f"tcp://localhost:{port}", rank=0, world_size=1,
                                         device_id=device if device.type == "cuda" else None)
    try:
        yield backend
    finally:
        torch.distributed.destroy_process_group()


def ddp_part(stage, cfg, steps):
    """A few steps with the model wrapped in DistributedDataParallel, passed to train_step as its
    ddp_model (world 1): the reducer over LoRA, frozen weights and the projector, or VATT Audio."""
    with one_rank_group(stage.device) as backend:
        ddp = torch.nn.parallel.DistributedDataParallel(stage.model)
        rows = train(stage, cfg, batches(stage, cfg, steps), ddp)
        del ddp  # its reducer before the process group
        gc.collect()
    return dict(kind="ddp", **plan(stage, cfg, f", 1-rank {backend} DDP"), losses=[r["loss"] for r in rows])


def step_part(stage, cfg):
    """--size=full on a CPU: one optimizer step, its time and the memory it took."""
    rows = train(stage, cfg, batches(stage, cfg, 1))
    return dict(kind="step", **plan(stage, cfg), losses=[rows[0]["loss"]], seconds=rows[0]["seconds"],
                **memory(stage.device))


def checkpoint_part(one, two):
    """stage1.pt written by stage1_caption.save, the stage-1 model freed, then load_converter
    rebuilds the frozen Converter from it (from_pretrained again, LoRA merged) for stage 2. The
    condition of a clip before and after: their relative difference (float rounding only, bf16 on a
    GPU, when the LoRA weights and the projector came through)."""
    path = Path(two.config().converter)
    feats = one.files.load_clip(one.items[0][0])[None].to(one.device)
    one.model.eval()
    with autocast(one.device):
        before = one.model.condition(feats, [s1.TEMPLATE])[0]
    with atomic_path(path) as tmp:
        torch.save(s1.checkpoint(one.model, one.optimizer, one.config(), one.steps, one.files.meta), tmp)
    one.free()
    gc.collect()
    t = time.time()
    two.converter = s1.load_converter(path, one.device)
    with autocast(one.device):
        after = two.converter.condition(feats, [s1.TEMPLATE])[0]
    return dict(kind="checkpoint", mb=path.stat().st_size / 1e6, reload_s=time.time() - t,
                condition_difference=((after - before).norm() / before.norm()).item())


class Check:
    """Runs the parts one at a time into result["parts"]: status (ok, failed, not run), wall_s, error,
    and what the part measured; the peak-memory counters reset before it, memory freed after. A part
    starts only when the parts it needs passed and MIN_PART_S (or its min_s) of the budget is left."""

    def __init__(self, result, device, t0):
        self.result, self.device, self.t0 = result, device, t0

    def run(self, name, fn, needs=(), min_s=MIN_PART_S):
        parts, budget = self.result["parts"], self.result["budget_s"]
        missing = [n for n in needs if parts.get(n, {}).get("status") != "ok"]
        left = budget - (time.time() - self.t0) if budget else math.inf
        if missing:
            record = dict(status="not run", error=f"needs {', '.join(missing)}")
        elif left < min_s:
            record = dict(status="not run", error=f"not started: {max(left, 0):.0f} s of the {budget} s budget left")
        else:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            t = time.time()
            try:
                record = dict(status="ok", **fn())
            except (Exception, SystemExit) as e:  # noqa: BLE001 (an OOM, a stage's error line, a non-finite loss)
                traceback.print_exc()
                oom = isinstance(e, torch.cuda.OutOfMemoryError)
                why = "out of memory: " if oom else f"{type(e).__name__}: "
                record = dict(status="failed", error=why + first_line(str(e)))
            record["wall_s"] = round(time.time() - t, 1)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        parts[name] = record
        print(f"[train-check] {name:<10} {part_line(record)}", flush=True)


# -----------------------------------------------------------------------------
# what a result says: lines, the bars, the docs' table


def mfu_text(mfu):
    return "MFU n/a (no known bf16 peak)" if mfu is None else f"MFU {100 * mfu:.1f} %"


def part_line(p):
    """A part's record in one line."""
    if p["status"] != "ok":
        return f"{p['status'].upper()}: {p['error']}"
    kind = p["kind"]
    if kind == "prepare":
        return (f"{p['clips']} clips of random features, a random LLM of {p['llm_parameters']:,} parameters | "
                f"{p['wall_s']:.0f} s")
    if kind == "build":
        return f"{p['what']} | trainable {p['trainable']:,} of {p['parameters']:,} parameters | {p['wall_s']:.0f} s"
    if kind == "timed":
        reserved = "" if p["reserved_gb"] is None else f" / {p['reserved_gb']:.1f} GB reserved"
        return (f"{p['config']} | step {p['median_ms']:.0f} ms (median of {p['steps']}, p90 {p['p90_ms']:.0f}) | "
                f"{p['samples_per_s']:.1f} samples/s | {p['tokens_per_s']:,.0f} tok/s | {p['tflop_per_step']:.3g} "
                f"TFLOP/step | {mfu_text(p['mfu'])} | peak {p['peak_gb']:.1f} GB"
                + (f" allocated{reserved}" if reserved else " (process)"))
    if kind == "fit":
        return (f"{p['config']} | loss {p['first']:.3f} -> {p['last']:.3f} (mean of the first 3 -> the last 3 of "
                f"{len(p['losses'])} steps; ratio {p['ratio']:.2f}, bar {FIT_RATIO})")
    if kind == "flops":
        return (f"{p['config']} | analytic {p['analytic'] / 1e9:,.1f} GFLOP vs FlopCounterMode "
                f"{p['counted'] / 1e9:,.1f}: "
                f"{100 * p['deviation']:+.1f} % (bar {100 * FLOPS_TOLERANCE:.0f} %)")
    if kind == "ddp":
        return f"{p['config']} | {len(p['losses'])} steps, losses {', '.join(f'{x:.3f}' for x in p['losses'])}"
    if kind == "checkpoint":
        return (f"{p['mb']:.1f} MB saved, reloaded by load_converter in {p['reload_s']:.1f} s (LoRA merged); its "
                f"condition differs from the trained Converter's by {p['condition_difference']:.1e} (relative)")
    return f"{p['config']} | one step {p['seconds']:.1f} s | loss {p['losses'][0]:.3f} | peak {p['peak_gb']:.1f} GB"


def gpu_bars(r):
    """Whether the MFU, memory and wall-time bars apply: the paper's size on a GPU of known peak."""
    return r["size"] == "full" and r["peak_tflops"] is not None


def failures(r):
    """The hard bars a result fails, one line each (none: passed): a part failed or not run, a
    non-finite loss, an overfit above FIT_RATIO, FLOPs off by more than FLOPS_TOLERANCE, and under
    gpu_bars an MFU below MFU_MIN, a peak over PEAK_GB, a wall time over the budget."""
    out = []
    for name, p in r["parts"].items():
        if p["status"] != "ok":
            out.append(f"{name} {p['status']}: {p['error']}")
            continue
        if not all(math.isfinite(x) for x in p.get("losses", [])):
            out.append(f"{name}: a non-finite loss")
        if p["kind"] == "fit" and not p["ratio"] <= FIT_RATIO:
            out.append(f"{name}: the loss fell to {p['ratio']:.2f} x its start, not {FIT_RATIO}")
        if p["kind"] == "flops" and not abs(p["deviation"]) <= FLOPS_TOLERANCE:
            out.append(f"{name}: the analytic FLOPs are {100 * p['deviation']:+.1f} % off the counted")
        if p["kind"] == "timed" and gpu_bars(r):
            if not p["mfu"] >= MFU_MIN:
                out.append(f"{name}: MFU {100 * p['mfu']:.1f} % < {100 * MFU_MIN:.0f} %")
            if name in PEAK_GB and not p["peak_gb"] <= PEAK_GB[name]:
                out.append(f"{name}: peak {p['peak_gb']:.1f} GB allocated > {PEAK_GB[name]:g} GB")
    if gpu_bars(r) and r["wall_s"] > r["budget_s"]:
        out.append(f"wall time {r['wall_s']:.0f} s > the {r['budget_s']} s budget")
    return out


def targets(r):
    """TARGET_MFU against the timed runs that measured an MFU: {run: {target, mfu, met}}."""
    return {name: dict(target=t, mfu=r["parts"][name]["mfu"], met=r["parts"][name]["mfu"] >= t)
            for name, t in TARGET_MFU.items() if r["parts"].get(name, {}).get("mfu") is not None}


def training_table(r):
    """The docs' table: where and when, then a row per part."""
    fails = r["failures"]
    lines = [f"`python tools/train_check.py --size={r['size']}` on {r['device']}, torch {r['torch']}, "
             f"CUDA {r['cuda']}, commit {r['commit']}, {r['date']}: random weights, the stages' own training steps; "
             f"{'FAILED (' + '; '.join(fails) + ')' if fails else 'passed'} in {r['wall_s']:.0f} s"
             + (f" of its {r['budget_s']} s budget." if r["budget_s"] else "."), "",
             "| run | configuration | step ms, median (p90) | samples/s | tokens/s | TFLOP/step | MFU "
             "| peak GB allocated / reserved |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in r["parts"].items():
        if p["status"] == "ok" and p["kind"] == "timed":
            mfu = cell(None if p["mfu"] is None else 100 * p["mfu"], ".1f", " %")
            lines.append(f"| {name} | {p['config']} | {p['median_ms']:.0f} ({p['p90_ms']:.0f}) "
                         f"| {p['samples_per_s']:.1f} | {p['tokens_per_s']:,.0f} | {p['tflop_per_step']:.3g} | {mfu} "
                         f"| {p['peak_gb']:.1f} / {cell(p['reserved_gb'], '.1f')} |")
    lines += ["", "| part | result |", "|---|---|"]
    lines += [f"| {name} | {part_line(p).replace('|', '/')} |" for name, p in r["parts"].items()
              if p.get("kind") != "timed"]
    if r["targets"]:
        lines += ["", "Targets: " + "; ".join(f"{name} MFU at least {100 * t['target']:.0f} %: {100 * t['mfu']:.1f} % "
                                               f"({'met' if t['met'] else 'MISSED'})"
                                               for name, t in r["targets"].items()) + "."]
    return "\n".join(lines)


def write_docs(result, path):
    """The table between `path`'s <!-- train-check:training --> markers (gpu_check's fill_markers);
    returns a problem line, or None."""
    path = Path(path)
    if not path.is_file():
        return f"{path}: no such file for the table"
    text = path.read_text(encoding="utf-8")
    new, filled, problems = fill_markers(text, {"training": training_table(result)}, tool="train-check")
    if "training" not in filled:
        return f"{path}: no <!-- train-check:training --> ... <!-- /train-check:training --> markers ({problems})"
    if new != text:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(new, encoding="utf-8")
    return None


# -----------------------------------------------------------------------------
# the check


def run_gpu_parts(check, args, spec, world, device):
    """Every part (--size=tiny, or --size=full on a GPU)."""
    one, two = Stage1(world, device, spec["stage1"]), Stage2(world, device, spec["stage2"])
    peak = check.result["peak_tflops"]
    check.run("s1-build", lambda: one.build(one.config()), needs=["prepare"])
    check.run("s1-g", lambda: timed_part(one, one.config(), *spec["s1_steps"], peak), needs=["s1-build"])
    check.run("s1-g32", lambda: timed_part(one, one.config("--micro_batch=32"), *spec["s1_steps"], peak),
              needs=["s1-build"])
    check.run("s1-flops", lambda: flops_part(one, one.config()), needs=["s1-build"])
    check.run("s1-ddp", lambda: ddp_part(one, one.config(), DDP_STEPS["s1-ddp"]), needs=["s1-build"])
    check.run("s1-fit", lambda: fit_part(one, one.config(*S1_FIT, *spec["s1_fit"])), needs=["s1-build"])
    check.run("stage1.pt", lambda: checkpoint_part(one, two), needs=["s1-build"])
    one.free()
    check.run("s2-build", lambda: two.build(two.config()), needs=["stage1.pt"])
    check.run("s2-g", lambda: timed_part(two, two.config(), *spec["s2_steps"], peak), needs=["s2-build"])
    check.run("s2-flops", lambda: flops_part(two, two.config()), needs=["s2-build"])
    check.run("s2-ddp", lambda: ddp_part(two, two.config(), DDP_STEPS["s2-ddp"]), needs=["s2-build"])
    check.run("s2-fit", lambda: fit_part(two, two.config(*S2_FIT, *spec["s2_fit"])), needs=["s2-build"])
    if args.compile:  # last: its compile time is the least predictable
        check.run("s2-compile", lambda: timed_part(two, two.config("--compile"), *spec["s2_steps"], peak,
                                                   model=torch.compile(two.model)),
                  needs=["s2-build"], min_s=MIN_COMPILE_S)
    two.free()


def run_wiring_parts(check, args, spec, world, device):
    """--size=full on a CPU: one step of each stage at the paper's size (WIRING's batch), float32."""
    one, two = Stage1(world, device, spec["stage1"] + WIRING), Stage2(world, device, spec["stage2"] + WIRING)
    check.run("s1-build", lambda: one.build(one.config()), needs=["prepare"])
    check.run("s1-g", lambda: step_part(one, one.config()), needs=["s1-build"])
    check.run("stage1.pt", lambda: checkpoint_part(one, two), needs=["s1-build"])
    one.free()
    check.run("s2-build", lambda: two.build(two.config()), needs=["stage1.pt"])
    check.run("s2-g", lambda: step_part(two, two.config()), needs=["s2-build"])
    two.free()


def main(argv=None):
    args = parse_config(Config, PRESETS, argv)
    if args.tables_from:  # a recorded result: its table, nothing measured
        problem = write_docs(json.loads(Path(args.tables_from).read_text(encoding="utf-8")), args.docs or DOCS)
        print(f"[train-check] table: {problem or args.docs or DOCS}")
        return 1 if problem else 0
    if args.size not in SIZES:
        sys.exit(f"error: --size={args.size}: choose one of {', '.join(SIZES)}")
    if args.size == "full" and args.device != "cpu" and not torch.cuda.is_available():
        print("error: no CUDA GPU (torch.cuda.is_available() is False): `--size=full` measures training on one; "
              "`make full-size-check` (--size=full --device=cpu) checks the wiring on a CPU", file=sys.stderr)
        return 2
    t0, device, spec = time.time(), pick_device(args.device), SIZES[args.size]
    gpu = device.type == "cuda"
    wiring = args.size == "full" and not gpu
    docs = args.docs or (DOCS if args.size == "full" and gpu else "")
    where = torch.cuda.get_device_name(device) if gpu else f"{device.type} ({torch.get_num_threads()} threads)"
    result = dict(size=args.size, device=where, torch=torch.__version__, cuda=torch.version.cuda,
                  commit=args.commit or git_commit(), date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                  peak_tflops=TrainingLog.peak_tflops(device), budget_s=None if wiring else args.budget_s, parts={})
    print(f"[train-check] {result['device']} | torch {result['torch']} | CUDA {result['cuda']} | peak bf16 "
          f"{result['peak_tflops'] or 'unknown'} TFLOP/s | commit {result['commit']} | --size={args.size}", flush=True)
    if wiring:
        print("[train-check] the paper's sizes on a CPU: one step of each stage, float32; no timed runs, DDP, FLOP "
              "count or overfits (a GPU's check)", flush=True)
    elif not gpu_bars(result):
        print("[train-check] not the paper's size on a GPU of known bf16 peak: the MFU, memory and wall-time bars "
              "are skipped", flush=True)
    check = Check(result, device, t0)
    with tempfile.TemporaryDirectory(prefix="train-check-", dir=args.tmp_dir or None) as tmp:
        root = Path(tmp)
        world = SimpleNamespace(root=root, features=root / "features", llm=root / "llm",
                                data_json=root / "features" / "v2a_instruction.json", stage1=root / "s1" / "stage1.pt")
        check.run("prepare", lambda: prepare(world, spec, device))
        (run_wiring_parts if wiring else run_gpu_parts)(check, args, spec, world, device)
    result["wall_s"] = round(time.time() - t0, 1)
    result["failures"], result["targets"] = failures(result), targets(result)
    if docs:
        problem = write_docs(result, docs)
        result["docs"] = dict(path=docs, problem=problem)
        result["failures"] += [problem] if problem else []
        print(f"[train-check] table: {problem or docs}")
    for name, t in result["targets"].items():
        print(f"[train-check] target: {name} MFU at least {100 * t['target']:.0f} %: {100 * t['mfu']:.1f} % "
              f"{'MET' if t['met'] else 'MISSED'}")
    out = Path(args.out_dir) / "result.json"
    save_json(result, out)
    for line in result["failures"]:
        print(f"[train-check] FAILED: {line}", file=sys.stderr)
    budget = f" (budget {result['budget_s']} s)" if result["budget_s"] else ""
    print(f"[train-check] {'FAILED' if result['failures'] else 'passed'} in {result['wall_s']:.0f} s{budget}; {out}",
          flush=True)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
