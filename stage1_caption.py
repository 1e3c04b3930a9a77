"""
Stage 1 of VATT: the VATT Converter (paper §3.1), a video-to-audio-caption LLM.

    frame features (N, D) --avg-pool to video tokens--> Linear(D, d_lm)  = the VATT Projector
    [video tokens ; instruction prompt ; audio caption]  --> instruction-tuned LLM with LoRA
    loss: next-token cross-entropy on the caption tokens only (eq. 1)

The trained Converter has two jobs later: it writes audio captions for silent videos, and its
frozen last-layer hidden states are the condition of VATT Audio (stage2_audio.py). Where this
file departs from the paper and from the released code: the README's "Paper notes".

    python data/toy/llm.py && python stage1_caption.py --preset=toy       # the toy world (CPU): its LLM first
    # one GPU, Gemma-2B (gated on the hub: accept its licence and `huggingface-cli login`, or
    # pass --llm=/path/to/local/folder)
    python stage1_caption.py --preset=gemma-2b --data_json=vggsound/v2a_instruction.json --features_dir=vggsound/features
    torchrun --nproc_per_node=8 stage1_caption.py --preset=llama-2-7b      # many GPUs
    python stage1_caption.py --preset=gemma-2b --init_from=out/gemma-2b/stage1.pt --out_dir=out/mine  # fine-tune
"""
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from extract_features import train_val_split
from utils import (TrainingLog, adamw, all_mean, autocast, data_parallel, get_lr, optimizer_step, parse_config,
                   pick_device, print0, print_plan, read_checkpoint, read_init_checkpoint, record_timing, setup_ddp,
                   split_batch, start_checkpoints, step_batches, to_device, train_loop, unwrap, weights_digest,
                   weights_dtype)

# -----------------------------------------------------------------------------
# the instructions: the ten of V2A Instruction's training, §3.2's standard template, Table 3's


# The ten V2A instructions of the released code (drawn at random per training sample), and the
# "standard template" used when the user gives no text (paper §3.2; released code: index 2).
INSTRUCTIONS = [
    "Imagine possible sounds for this video.",
    "Describe possible sounds that could match the video.",
    "What audio could be inferred from this video?",
    "What sounds could match the video?",
    "Infer the sounds that match the video.",
    "What audio could best match this video?",
    "What sound events could the video yields?",
    "Caption possible sound events that describe the video.",
    "What sound events make sense to this video?",
    "Imagine audio events that match this video.",
]
TEMPLATE = INSTRUCTIONS[2]
# The caption instruction of the paper's Table 3 (§4, video-to-audio captioning); sample.py's
# --caption_prompt takes it, the template stays the default (the instruction training saw)
TABLE3_INSTRUCTION = "Describe the possible audio for this video:"


# -----------------------------------------------------------------------------
# the VATT Converter (§3.1): the VATT Projector, then the LLM with LoRA


def add_lora(llm, lora):
    """`lora` = (r, alpha, dropout): LoRA on q_proj and v_proj with peft, the base frozen (§3.1);
    r = 0 leaves every weight trainable."""
    r, alpha, dropout = lora
    if r == 0:
        return llm
    from peft import LoraConfig, get_peft_model

    return get_peft_model(llm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                                          target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


class Converter(nn.Module):
    """The VATT Projector (video_embeds) and the LLM over [video tokens ; prompt (; caption)]:
    trained by eq. 1 (forward), then read for its states (condition) and captions (caption)."""

    def __init__(self, llm, tokenizer, feature_dim, video_tokens_per_second, max_text_tokens, fps):
        super().__init__()
        self.llm, self.tokenizer = llm, tokenizer
        self.proj = nn.Linear(feature_dim, llm.config.hidden_size)  # the VATT Projector: V_f W + b
        self.video_tokens_per_second = video_tokens_per_second
        self.fps = fps  # the frame rate of the features (extract_features.py's meta.json)
        self.max_text_tokens = max_text_tokens
        self.hidden_size = llm.config.hidden_size
        # the same instructions and captions come back at every training step: each is tokenized once
        self._prompt_cache = functools.lru_cache(maxsize=1 << 18)(self._tokenize_prompt)
        self._caption_cache = functools.lru_cache(maxsize=1 << 18)(self._tokenize_caption)

    def n_video_tokens(self, n_frames):
        """Video tokens for n_frames frames: video_tokens_per_second of them a second."""
        return max(1, round(n_frames / self.fps * self.video_tokens_per_second))

    def video_embeds(self, feats):
        """(B, N, D) frame features at self.fps -> (B, N_v, d_lm) projected video tokens."""
        x = F.adaptive_avg_pool1d(rearrange(feats, "b n d -> b d n"), self.n_video_tokens(feats.shape[1]))
        return self.proj(rearrange(x, "b d n -> b n d"))

    def prompt_ids(self, instruction):
        """The instruction in the tokenizer's chat template (Gemma-it, LLaMA-2-chat, toy) when it
        has one, else the released code's alpaca_short template. Returns (ids, was_cut)."""
        ids, was_cut = self._prompt_cache(instruction)
        return list(ids), was_cut

    def caption_ids(self, caption):
        """A caption's ids, cut to max_text_tokens, with the end-of-text id appended."""
        return list(self._caption_cache(caption))

    def _tokenize_caption(self, caption):
        return tuple(self.tokenizer(caption, add_special_tokens=False).input_ids[: self.max_text_tokens]
                     + [self.tokenizer.eos_token_id])

    def _tokenize_prompt(self, instruction):
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                                      add_generation_prompt=True, tokenize=False)
        else:
            text = f"{self.tokenizer.bos_token or ''}### Instruction:\n{instruction}\n\n### Response:\n"
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return tuple(ids[: self.max_text_tokens]), len(ids) > self.max_text_tokens

    def _sequences(self, feats, prompts, captions=None, pad_to=None):
        """Builds [video ; pad ; prompt (; caption eos)] per sample: the video tokens first (as the
        released code prepends them), the text LEFT-padded after them, so every video token sits at
        the same index in every sample and a generated caption continues right after the prompt.
        Positions count real tokens only, so padding never changes a sample's hidden states.
        Returns embeds (B, L, d), mask (B, L), positions (B, L), labels (B, L)."""
        vid = self.video_embeds(feats)  # (B, N_v, d)
        ids, labels = [], []
        for b, prompt in enumerate(prompts):
            text, _ = self.prompt_ids(prompt)
            lab = [-100] * len(text)
            if captions is not None:
                cap = self.caption_ids(captions[b])
                lab, text = lab + cap, text + cap  # loss on the caption tokens only (eq. 1)
            ids.append(text)
            labels.append(lab)
        n_vid = vid.shape[1]
        n_text = (pad_to - n_vid) if pad_to else max(map(len, ids))
        pad = [n_text - len(t) for t in ids]
        text_mask = torch.tensor([[0] * p + [1] * (n_text - p) for p in pad], device=vid.device)  # (B, n_text)
        ids = torch.tensor([[0] * p + t for p, t in zip(pad, ids)], device=vid.device)  # (B, n_text), 0 where padded
        text = self.llm.get_input_embeddings()(ids) * text_mask[..., None]  # padding embeds as zeros
        x = torch.cat([vid.to(text.dtype), text], 1)  # (B, L, d)
        mask = torch.cat([torch.ones_like(text_mask[:, :1]).expand(-1, n_vid), text_mask], 1)  # (B, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        labels = torch.tensor([[-100] * (n_vid + p) + lab for p, lab in zip(pad, labels)], device=x.device)
        return x, mask, positions, labels

    def forward(self, feats, prompts, captions):
        """Eq. 1, the next-token cross-entropy on the caption tokens only: its sum over the batch's
        caption tokens, and their number (the training loop divides by the whole batch's count)."""
        x, mask, positions, labels = self._sequences(feats, prompts, captions)
        # The text is left-padded, so every caption ends the sequence: the LM head (a 256 k
        # vocabulary for Gemma) runs on the last n_last positions only, the longest caption's and
        # the one before it, which predicts its first token
        n_last = int((labels != -100).sum(1).max()) + 1
        logits = self.llm(inputs_embeds=x, attention_mask=mask, position_ids=positions, logits_to_keep=n_last).logits
        logits, targets = logits[:, :-1], labels[:, -(n_last - 1):]  # token t predicts token t + 1
        caption = targets != -100  # (float32 logits of these rows only)
        return F.cross_entropy(logits[caption].float(), targets[caption], reduction="sum"), caption.sum()

    @torch.no_grad()
    def condition(self, feats, prompts, cut=False):
        """VATT Audio's condition (paper §3.2.1): the LLM's last-layer hidden states (after the
        final norm, before the LM head) over [video tokens ; prompt]. Always padded to the same
        length N_v + max_text_tokens, so a sample's condition never depends on its batch.
        A prompt longer than max_text_tokens is cut (`cut`, training) or refused (sampling).
        Returns (B, Lc, d_lm) float32 and the (B, Lc) mask (1 = real token)."""
        for p in prompts:
            if not cut and self.prompt_ids(p)[1]:
                raise ValueError(f"the prompt {p[:40]!r}... is longer than the {self.max_text_tokens} "
                                 "tokens this model accepts")
        x, mask, positions, _ = self._sequences(
            feats, prompts, pad_to=self.n_video_tokens(feats.shape[1]) + self.max_text_tokens)
        h = self.llm.get_decoder()(inputs_embeds=x, attention_mask=mask, position_ids=positions)
        return h.last_hidden_state.float() * mask[..., None], mask

    @torch.no_grad()
    def caption(self, feats, instruction=TEMPLATE, max_new_tokens=0, sampling=None):
        """Audio captions for a batch of videos (paper Table 3's task): greedy, or sampled with the
        generate() settings in `sampling` (e.g. the released scripts'). At most max_new_tokens
        new tokens; 0 = max_text_tokens + 1, the longest caption training saw and its end.
        Returns the captions and, per caption, whether it reached that limit without ending."""
        x, mask, _, _ = self._sequences(feats, [instruction] * len(feats))
        eos = self.tokenizer.eos_token_id
        out = self.llm.generate(inputs_embeds=x, attention_mask=mask,
                                max_new_tokens=max_new_tokens or self.max_text_tokens + 1,
                                do_sample=sampling is not None, **(sampling or {}),
                                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)  # (B, new tokens)
        at_limit = ~(out == eos).any(-1)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)], at_limit.tolist()


# =============================================================================
# Running it: the configuration, loading the LLM, the log's FLOPs, checkpoints, data, the training loop


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"  # V2A-Instruction JSON (video_path, output, split)
    features_dir: str = "data/toy/features"  # written by extract_features.py
    out_dir: str = "out/toy"  # stage1.pt lands here
    llm: str = "out/toy/base_llm"  # a hub id or a folder in the hub's format; the toy's: data/toy/llm.py writes it
    # video tokens per second fed to the LLM: 5 keeps the toy's strikes, 0.2 s apart, which one token
    # a second would average away (the released code pools 10 s to 10 tokens: the paper presets)
    video_tokens_per_second: int = 5
    # LoRA on q_proj / v_proj (§3.1 and appendix: r 16, alpha 32, dropout 0.1). lora_r=0 trains
    # the whole LLM but its input embeddings (the toy: its LLM starts random; see build_converter)
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    max_text_tokens: int = 24  # prompt and caption are each cut to this many tokens
    # optimisation (AdamW, linear warm-up then cosine decay to lr/10)
    batch_size: int = 32  # the global batch: samples per optimizer step, all processes together
    micro_batch: int = 0  # the most samples a process runs at once (0: its whole share); gradients accumulate
    lr: float = 2e-3
    warmup_steps: int = 50
    max_steps: int = 6000  # the toy's budget: docs/toy-tuning.md
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_checkpointing: bool = False  # trade compute for memory on large LLMs
    max_bad_steps: int = 10  # a step whose gradient is not finite is skipped; this many in a row stop the run
    val_fraction: float = 0.05  # held-out slice of the TRAIN split (the test split is never seen)
    eval_interval: int = 500  # validate and save stage1.pt (the one before kept as stage1.prev.pt) every this many steps
    save_every_min: float = 30.0  # also save every this many minutes between validations (0: only then)
    eval_batches: int = 4
    log_interval: int = 20  # print the training loss, speed and memory every this many steps
    tensorboard: bool = False  # also log to out_dir/tensorboard (pip install tensorboard)
    workers: int = 0  # DataLoader processes reading clips ahead of the GPU (0: the main process, the toy's)
    resume: bool = True  # continue from out_dir/stage1.pt if it exists
    # fine-tuning: start from this trained stage1.pt (its projector and trained LLM weights; the
    # architecture settings come from it, the base LLM is --llm, or its own when --llm is left at
    # the default) with a fresh optimizer at step 0. A run that has saved its own out_dir/stage1.pt
    # resumes from that instead.
    init_from: str = ""
    features_layout: str = "auto"  # "ours" (extract_features.py), "authors" (their VGGSound download), or auto
    skip_bad_files: bool = False  # leave out (and list) clips whose files fail the check before step 0, instead of stopping
    recheck_files: bool = False  # scan every feature value again, even for a training set that passed before
    strict: bool = False  # a train clip without its files stops the run (default: left out, with a warning)
    seed: int = 1337
    device: str = "auto"


PRESETS = {
    "toy": {},
    "gemma-2b": dict(llm="google/gemma-2b-it", video_tokens_per_second=1, lora_r=16, lr=1e-4,
                     batch_size=32, micro_batch=8, workers=4, warmup_steps=100, max_steps=30000,
                     weight_decay=0.0, eval_interval=1000, max_text_tokens=108,
                     data_json="vggsound/v2a_instruction.json", features_dir="vggsound/features",
                     out_dir="out/gemma-2b"),
    "llama-2-7b": dict(llm="meta-llama/Llama-2-7b-chat-hf", video_tokens_per_second=1, lora_r=16,
                       lr=1e-4, batch_size=32, micro_batch=4, workers=4, warmup_steps=100, max_steps=30000,
                       eval_interval=1000, max_text_tokens=108, grad_checkpointing=True,
                       data_json="vggsound/v2a_instruction.json", features_dir="vggsound/features",
                       out_dir="out/llama-2-7b"),
}

# How the released caption scripts decode (eval_v2a_caption*.py: sampling, up to 400 new tokens);
# the paper does not say, and the default here is greedy decoding
RELEASED_CAPTION_SAMPLING = dict(temperature=0.1, top_p=0.95, top_k=500, repetition_penalty=1.1)


# -----------------------------------------------------------------------------
# the LLM from the hub (or a local folder in the hub's format), and its FLOPs for the log


def load_llm(path, lora, device):
    """from_pretrained a causal LM + tokenizer, straight onto `device` (each DDP rank its own GPU,
    no copy in host memory first); `lora` = (r, alpha, dropout) as add_lora."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype(device),
                                                   device_map={"": device} if device.type == "cuda" else None)
    except OSError as e:
        sys.exit(f"error: could not load the LLM {path!r} ({str(e).splitlines()[0]}). Gemma and "
                 "LLaMA-2 are gated on the Hugging Face hub: accept the licence and run "
                 "`huggingface-cli login`, or download the model and pass --llm=/local/folder.")
    if tokenizer.pad_token is None:  # LLaMA has none; left padding makes any token safe
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return add_lora(llm, lora).to(device), tokenizer


def n_linear(converter):
    """The weights of the LLM's layers' Linears, each used once per token."""
    return sum(m.weight.numel() for m in converter.llm.get_decoder().modules() if isinstance(m, nn.Linear))


def prefill_flops(converter, n_video, n_tokens):
    """FLOPs of the Converter's LLM over one sequence of n_tokens (n_video of them projected video
    tokens): every Linear of its layers, and their attention (not the LM head)."""
    c = converter.llm.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return (2 * (converter.proj.weight.numel() * n_video + n_linear(converter) * n_tokens)
            + c.num_hidden_layers * 4 * n_tokens ** 2 * c.num_attention_heads * head_dim)


def train_flops(converter, tokens, caption_tokens, all_trained):
    """Model FLOPs of training on `tokens` tokens, caption_tokens of them scored: the forward
    through the LLM's Linears and the LM head on the captions (attention's quadratic term, under
    1 % at ~100 tokens a sequence, is left out), and the backward: as much again through the
    activations, and once more into the weights when every weight is trained."""
    forward = 2 * (n_linear(converter) * tokens + converter.hidden_size * converter.llm.config.vocab_size * caption_tokens)
    return forward * (3 if all_trained else 2)


# -----------------------------------------------------------------------------
# checkpoints: a trained Converter rebuilt from stage1.pt alone


def base_llm_of(ckpt, ckpt_path):
    """The base LLM a stage1.pt names: a hub id or a folder, as given; but a folder inside the
    run's out_dir (the toy's base_llm) is read from beside ckpt_path when it is there, wherever the
    run's folder now is. Read from the current directory instead, another run's base_llm of the
    same name would load without an error, and its input embeddings (frozen, so not in the
    checkpoint) would turn every prompt into other words."""
    llm, out_dir = Path(ckpt["config"]["llm"]), Path(ckpt["config"]["out_dir"])
    if llm.parts[: len(out_dir.parts)] == out_dir.parts and llm != out_dir:
        beside = Path(ckpt_path).parent / llm.relative_to(out_dir)
        if beside.is_dir():
            return str(beside)
    return ckpt["config"]["llm"]


def load_converter(ckpt_path, device):
    """Rebuilds the frozen Converter from stage1.pt alone (its config names the base LLM)."""
    ckpt = read_checkpoint(ckpt_path, "vatt-converter", " (train it with stage1_caption.py)")
    cfg = ckpt["config"]
    llm_name = base_llm_of(ckpt, ckpt_path)
    llm, tokenizer = load_llm(llm_name, (cfg["lora_r"], cfg["lora_alpha"], 0.0), device)
    meta = ckpt["features_meta"]
    conv = Converter(llm, tokenizer, meta["feature_dim"], cfg["video_tokens_per_second"], cfg["max_text_tokens"],
                     meta["fps"])
    conv.features_meta, conv.features_dir = ckpt["features_meta"], cfg["features_dir"]
    load_trained_weights(conv, ckpt, ckpt_path, llm_name)
    if cfg["lora_r"] > 0:  # frozen from here on: LoRA merged into its weights, W + (alpha/r) B A, one matmul not three
        conv.llm = conv.llm.merge_and_unload()
    return conv.to(device).eval().requires_grad_(False)


def load_trained_weights(model, ckpt, source, llm_name):
    """Copies a stage-1 checkpoint's projector and trained LLM weights into a Converter, after
    checking that they fit it: one error line naming the checkpoint for another visual encoder,
    LLM width, vocabulary, or LLM / LoRA layout."""
    d_lm, feature_dim = ckpt["projector"]["weight"].shape
    if feature_dim != model.proj.in_features:
        sys.exit(f"error: {source}: its projector takes {feature_dim}-d frame features, these features are "
                 f"{model.proj.in_features}-d (another visual encoder)")
    if d_lm != model.hidden_size:
        sys.exit(f"error: {source}: trained on a {d_lm}-wide LLM, {llm_name} is {model.hidden_size}-wide")
    if ckpt.get("vocab_size", len(model.tokenizer)) != len(model.tokenizer):
        sys.exit(f"error: {source}: trained with a vocabulary of {ckpt['vocab_size']} tokens, {llm_name} has "
                 f"{len(model.tokenizer)}")
    own = model.llm.state_dict()
    for key, value in ckpt["trainable"].items():
        if key not in own or own[key].shape != value.shape:
            sys.exit(f"error: {source}: its LLM weight {key} {tuple(value.shape)} does not fit {llm_name} "
                     f"({tuple(own[key].shape) if key in own else 'no such weight'}: another LLM or LoRA setting)")
    model.proj.load_state_dict(ckpt["projector"])
    model.llm.load_state_dict(ckpt["trainable"], strict=False)


# the settings that make up a trained Converter rather than its training: a fine-tuning run
# (--init_from) takes them from the checkpoint it starts from
ARCHITECTURE = ("video_tokens_per_second", "lora_r", "lora_alpha", "max_text_tokens")


# -----------------------------------------------------------------------------
# training: the model and its starting point, a batch, one step; main() keeps the data, DDP and checkpoints


@torch.no_grad()
def init_projector(model, feats):
    """Data-dependent init of the projector (as in weight-norm init, Salimans & Kingma 2016):
    frame features usually share a large common component (the toy's random ViT's do), so a plain
    init gives video tokens that look alike and the LLM learns to ignore them. Scaling by the
    per-dimension spread and centring with the bias makes the projected tokens differ from clip to
    clip at the size of the LLM's own token embeddings from step 0. It changes the starting point
    only, not the architecture (still one Linear)."""
    x = feats.flatten(0, 1).to(model.proj.weight.device)  # (N * frames, D)
    mean, std = x.mean(0), x.std(0) + 1e-6
    embed = model.llm.get_input_embeddings()
    target = embed.weight.std() * getattr(embed, "embed_scale", 1.0)  # Gemma scales by sqrt(width)
    w = torch.randn_like(model.proj.weight) / math.sqrt(x.shape[1]) / std * target
    model.proj.weight.copy_(w)
    model.proj.bias.copy_(-w @ mean)


def build_converter(cfg, meta, device):
    """The base LLM (LoRA-wrapped unless lora_r = 0) and a fresh projector for these features, the
    initial weights drawn from cfg.seed (the training steps re-seed, see train_step)."""
    torch.manual_seed(cfg.seed)
    stream = Path(cfg.llm) / "rng_state.pt"
    if stream.is_file():  # an LLM made from nothing (the toy's): its seeded stream goes on (data/toy/llm.py)
        torch.set_rng_state(torch.load(stream, weights_only=True))
    llm, tokenizer = load_llm(cfg.llm, (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout), device)
    if cfg.lora_r == 0:
        # Training the whole LLM (the toy's, which starts random), the input token embeddings stay
        # fixed as a pretrained LLM's do under LoRA: trained on captions, words the video cannot
        # tell apart ("high" / "low") would be pulled onto one vector, and stage 2 could no longer
        # read them from the prompt (docs/toy-tuning.md).
        llm.get_input_embeddings().requires_grad_(False)
    if cfg.grad_checkpointing:  # non-reentrant: PyTorch's recommended kind, which needs no input that requires grad
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Converter(llm, tokenizer, meta["feature_dim"], cfg.video_tokens_per_second, cfg.max_text_tokens,
                     meta["fps"]).to(device)


def draw_batch(files, items, r, cfg, rank, world):
    """A global batch of cfg.batch_size samples drawn from `r` (the same draw on every rank): this
    rank's share to load, (features (S, N, D), instructions, captions), and the whole batch's
    captions, whose tokens make the loss's denominator. N processes see exactly the samples one
    process sees."""
    n = cfg.batch_size
    mine = slice(rank * n // world, (rank + 1) * n // world)
    pick = r.choice(len(items), n)
    prompts = [INSTRUCTIONS[j] for j in r.integers(len(INSTRUCTIONS), size=n)[mine]]
    feats = torch.stack([files.load_clip(items[i][0]) for i in pick[mine]])
    return dict(names=[items[i][0] for i in pick[mine]], batch=(feats, prompts, [items[i][1] for i in pick[mine]]),
                captions=[items[i][1] for i in pick])


def step_data(files, items, cfg, rank, world, step):
    """Training step `step`'s data, a function of (seed, step) alone, so that a resumed run replays
    exactly and the DataLoader's workers change nothing: the seed of dropout, and draw_batch's."""
    rng = np.random.default_rng([cfg.seed, step])
    dropout_seed = int(rng.integers(2**62))
    return dict(dropout_seed=dropout_seed, **draw_batch(files, items, rng, cfg, rank, world))


def batch_loss(model, data, cfg, plan, world, device, backward=False):
    """The caption loss (eq. 1) of one global batch (this rank holds its share in data["batch"]),
    plan[0] samples at a time; `backward`: each micro-batch's gradients too, synced over ranks on
    the last. Returns this rank's part of the mean over the global batch's caption tokens, and the
    tokens it ran: (all, caption)."""
    micro, accum = plan
    feats, prompts, captions = data["batch"]
    # eq. 1's mean over the caption tokens of the GLOBAL batch: each micro-batch's sum over the count
    # per rank, as DDP averages the ranks' gradients (one process with the whole batch computes the same)
    conv = unwrap(model)
    n_per_rank = sum(len(conv.caption_ids(c)) for c in data["captions"]) / world
    total = 0.0
    for m in range(accum):
        part = slice(m * micro, (m + 1) * micro)
        if backward and world > 1:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = m == accum - 1
        with autocast(device):
            loss_sum, _ = model(to_device(feats[part], device), prompts[part], captions[part])
        loss = loss_sum / n_per_rank
        if backward:
            loss.backward()
        total += loss.detach()
    caption_tokens = sum(len(conv.caption_ids(c)) for c in captions)
    video_tokens = len(feats) * conv.n_video_tokens(feats.shape[1])
    tokens = video_tokens + sum(len(conv.prompt_ids(p)[0]) for p in prompts) + caption_tokens
    return total, (tokens, caption_tokens)


def train_step(ddp_model, optimizer, params, data, cfg, plan, step, rank, world, device):
    """One optimizer step of eq. 1 on step_data's `data` (optimizer_step: skipped when the gradient
    is not finite). Returns the training loss, the gradient norm, whether the step was applied,
    and the tokens and model FLOPs of the step over all ranks."""
    torch.manual_seed(data["dropout_seed"] + rank)  # dropout (LoRA's): one stream per rank
    for g in optimizer.param_groups:
        g["lr"] = get_lr(step, cfg)
    train_loss, (tokens, caption_tokens) = batch_loss(ddp_model, data, cfg, plan, world, device, backward=True)
    grad_norm, applied = optimizer_step(optimizer, params, cfg.grad_clip)
    flops = world * train_flops(unwrap(ddp_model), tokens, caption_tokens, all_trained=cfg.lora_r == 0)
    return train_loss, grad_norm, applied, tokens * world, flops


@torch.no_grad()
def val_loss(model, files, val, cfg, plan, rank, world, device):
    """The mean over the caption tokens of the fixed validation batches, on all ranks."""
    model.eval()
    r = np.random.default_rng(0)  # the same validation batches every time
    losses = [all_mean(batch_loss(model, draw_batch(files, val, r, cfg, rank, world), cfg, plan, world, device)[0])
              for _ in range(cfg.eval_batches)]
    model.train()
    return (sum(losses) / len(losses)).item()


def mean_text_tokens(model, items):
    """The mean tokens of an instruction and a caption over `items`, for the plan printed at the start."""
    prompt = sum(len(model.prompt_ids(p)[0]) for p in INSTRUCTIONS) / len(INSTRUCTIONS)
    return prompt + sum(len(model.caption_ids(c)) for _, c in items) / max(1, len(items))


def starting_step(model, optimizer, cfg, init, resumed, files, train, ckpt_path):
    """Where training starts: the run's own checkpoint resumed (weights, optimizer, step), or a
    fine-tuning run's --init_from weights at step 0, or the data-dependent projector init."""
    step = 0
    if resumed is not None:
        load_trained_weights(model, resumed, ckpt_path, cfg.llm)
        optimizer.load_state_dict(resumed["optimizer"])
        step = resumed["step"]
    elif init is not None:
        load_trained_weights(model, init, cfg.init_from, cfg.llm)
        print0(f"fine-tuning from {cfg.init_from} (trained {init['step']} steps): fresh optimizer, step 0")
    else:
        init_projector(model, torch.stack([files.load_clip(s) for s, _ in train[:256]]))
    if step >= cfg.max_steps:
        print0(f"{ckpt_path} is at step {step}, max_steps is {cfg.max_steps}: nothing to train")
    return step


def checkpoint(model, optimizer, cfg, step, meta):
    """stage1.pt: the projector and the LLM's trained weights (LoRA, or all but the embeddings),
    the config (which names the base LLM) and the features' meta.json, from which
    load_converter rebuilds the Converter alone, and the optimizer to resume."""
    trained = {n for n, p in model.llm.named_parameters() if p.requires_grad}
    return {"kind": "vatt-converter", "config": asdict(cfg), "step": step, "vocab_size": len(model.tokenizer),
            "features_meta": meta, "projector": model.proj.state_dict(),
            "trainable": {k: v for k, v in model.llm.state_dict().items() if k in trained},
            "optimizer": optimizer.state_dict()}


def main(argv=None):
    cfg = parse_config(Config, PRESETS, argv)
    t0 = time.time()
    rank, world = setup_ddp()
    plan = split_batch(cfg.batch_size, cfg.micro_batch, world)
    device = pick_device(cfg.device)
    ckpt_path = Path(cfg.out_dir) / "stage1.pt"
    init = read_init_checkpoint(cfg.init_from, "vatt-converter", ckpt_path) if cfg.init_from else None
    for key in ARCHITECTURE if init else ():  # fine-tuning keeps the trained model's architecture
        setattr(cfg, key, init["config"][key])
    if init and cfg.llm == Config.llm:  # fine-tuning keeps the trained model's own base LLM (its vocabulary)
        cfg.llm = base_llm_of(init, cfg.init_from)
    files, train, val = train_val_split(cfg, tokens=False, rank=rank, world=world)
    model = build_converter(cfg, files.meta, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg, device)
    print0(f"trainable parameters: {sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,}")
    resumed, writer = start_checkpoints(ckpt_path, "vatt-converter", cfg.resume, rank)
    step = starting_step(model, optimizer, cfg, init, resumed, files, train, ckpt_path)
    del init, resumed  # their weights are in the model now
    ddp_model = data_parallel(model, world)
    n_video = model.n_video_tokens(files.video_shape()[0])
    print_plan(cfg, world, *plan, n_video + mean_text_tokens(model, train[:256]), len(train))

    model.train()
    train_loop(cfg, step, cfg.max_steps,
               step_batches(functools.partial(step_data, files, train, cfg, rank, world), step, cfg.max_steps,
                            cfg.workers, device),
               lambda data, i: train_step(ddp_model, optimizer, params, data, cfg, plan, i, rank, world, device),
               lambda i: val_loss(model, files, val, cfg, plan, rank, world, device),
               lambda i, loss: checkpoint(model, optimizer, cfg, i, files.meta),
               writer, TrainingLog(cfg, device, rank, world, "stage1"), rank)
    print(f"rank {rank}: weights {weights_digest(params)}", flush=True)  # the same on every rank
    if rank == 0:
        model.eval()
        feats = torch.stack([files.load_clip(s) for s, _ in val[:4]]).to(device)
        for (stem, ref), hyp in zip(val[:4], model.caption(feats)[0]):
            print(f"{stem}: {hyp!r} (reference: {ref!r})")
        record_timing(cfg.out_dir, "stage1_caption", t0)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
