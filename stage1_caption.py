"""
Stage 1 of VATT: the VATT Converter (paper §3.1), a video-to-audio-caption LLM.

    frame features (N, D) --avg-pool to video tokens--> Linear(D, d_lm)  = the VATT Projector
    [video tokens ; instruction prompt ; audio caption]  --> instruction-tuned LLM with LoRA
    loss: next-token cross-entropy on the caption tokens only (eq. 1)

The trained Converter has two jobs later: it writes audio captions for silent videos, and its
frozen last-layer hidden states are the condition of VATT Audio (stage2_audio.py).

Toy world (CPU, ~5 min): a tiny random Gemma-architecture LLM with a word-level tokenizer; a random
LM has nothing to preserve, so the toy trains all of its weights but the frozen input embeddings
instead of LoRA.
    python stage1_caption.py --preset=toy
One GPU, Gemma-2B (gated on the hub: accept its licence and `huggingface-cli login`, or pass
--llm=/path/to/local/folder):
    python stage1_caption.py --preset=gemma-2b --data_json=vggsound/v2a_instruction.json --features_dir=vggsound/features --out_dir=out/gemma
Many GPUs:
    torchrun --nproc_per_node=8 stage1_caption.py --preset=llama-2-7b ...
"""
import functools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from data.toy.llm import build_toy_llm
from utils import (all_mean, autocast, check_npy, get_lr, parse_config, pick_device, print0, record_timing,
                   save_checkpoint, setup_ddp, shape_fits, shape_str, weights_digest, weights_dtype)

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"  # V2A-Instruction JSON (video_path, output, split)
    features_dir: str = "data/toy/features"  # written by extract_features.py
    out_dir: str = "out/toy"  # stage1.pt (and, for the toy, the random base LLM) land here
    # the LLM: "toy" builds a tiny random Gemma + word tokenizer; otherwise a hub id or local folder
    llm: str = "toy"
    toy_layers: int = 2
    toy_width: int = 128
    toy_heads: int = 4
    # video tokens per second fed to the LLM: the released code average-pools 50 frames (10 s at
    # 5 fps) to 10 tokens. The toy keeps all 5 per second: its strikes are 0.2 s apart, and one
    # token per second would average away when they happen.
    video_tokens_per_second: int = 5
    # LoRA on q_proj / v_proj (paper §3.1 and appendix: r 16, alpha 32, dropout 0.1; the released
    # scripts use 0.05). lora_r=0 trains the whole LLM but its input embeddings (toy only:
    # it starts random; see main).
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    max_text_tokens: int = 24  # prompt and caption are each cut to this many tokens
    # optimisation (AdamW, linear warm-up then cosine decay to lr/10)
    batch_size: int = 32  # per process and micro-step
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 50
    max_steps: int = 6000  # the toy: one seed named the source reliably only by step 6000 (docs/toy-tuning.md)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_checkpointing: bool = False  # trade compute for memory on large LLMs
    val_fraction: float = 0.05  # held-out slice of the TRAIN split (the test split is never seen)
    eval_interval: int = 500  # validate and save stage1.pt every this many steps
    eval_batches: int = 4
    log_interval: int = 20  # print the training loss every this many steps
    resume: bool = True  # continue from out_dir/stage1.pt if it exists
    # fine-tuning: start from this trained stage1.pt (its LLM, LoRA and projector; the architecture
    # settings come from it) with a fresh optimizer at step 0. A run that has saved its own
    # out_dir/stage1.pt resumes from that instead.
    init_from: str = ""
    features_layout: str = "auto"  # "ours" (extract_features.py), "authors" (their VGGSound download), or auto
    skip_bad_files: bool = False  # leave out (and list) clips whose files fail the check before step 0, instead of stopping
    seed: int = 1337
    device: str = "auto"


PRESETS = {
    "toy": {},
    "gemma-2b": dict(llm="google/gemma-2b-it", video_tokens_per_second=1, lora_r=16, lr=1e-4,
                     batch_size=8, grad_accum=4, warmup_steps=100, max_steps=30000,
                     weight_decay=0.0, eval_interval=1000, max_text_tokens=108,
                     data_json="vggsound/v2a_instruction.json", features_dir="vggsound/features",
                     out_dir="out/gemma-2b"),
    "llama-2-7b": dict(llm="meta-llama/Llama-2-7b-chat-hf", video_tokens_per_second=1, lora_r=16,
                       lr=1e-4, batch_size=4, grad_accum=8, warmup_steps=100, max_steps=30000,
                       eval_interval=1000, max_text_tokens=108, grad_checkpointing=True,
                       data_json="vggsound/v2a_instruction.json", features_dir="vggsound/features",
                       out_dir="out/llama-2-7b"),
}

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
# How the released caption scripts decode (eval_v2a_caption*.py: sampling, up to 400 new tokens);
# the paper does not say, and the default here is greedy decoding
RELEASED_CAPTION_SAMPLING = dict(temperature=0.1, top_p=0.95, top_k=500, repetition_penalty=1.1)

# -----------------------------------------------------------------------------
# the LLM: a hub / local causal LM (the toy's tiny Gemma is saved in the same format: data/toy/llm.py)


def load_llm(path, lora, device):
    """from_pretrained a causal LM + tokenizer; `lora` = (r, alpha, dropout) wraps it with peft
    (base frozen), r = 0 leaves every weight trainable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = weights_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        sys.exit(f"error: could not load the LLM {path!r} ({str(e).splitlines()[0]}). Gemma and "
                 "LLaMA-2 are gated on the Hugging Face hub: accept the licence and run "
                 "`huggingface-cli login`, or download the model and pass --llm=/local/folder.")
    if tokenizer.pad_token is None:  # LLaMA has none; left padding makes any token safe
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    r, alpha, dropout = lora
    if r > 0:
        from peft import LoraConfig, get_peft_model

        llm = get_peft_model(llm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                             target_modules=["q_proj", "v_proj"], bias="none",
                                             task_type="CAUSAL_LM"))
    return llm.to(device), tokenizer


# -----------------------------------------------------------------------------
# the Converter


class Converter(nn.Module):
    def __init__(self, llm, tokenizer, feature_dim, video_tokens_per_second, max_text_tokens, fps):
        super().__init__()
        self.llm, self.tokenizer = llm, tokenizer
        self.proj = nn.Linear(feature_dim, llm.config.hidden_size)  # the VATT Projector: V_f W + b
        self.video_tokens_per_second = video_tokens_per_second
        self.fps = fps  # the frame rate of the features (extract_features.py's meta.json)
        self.max_text_tokens = max_text_tokens
        self.hidden_size = llm.config.hidden_size

    def n_video_tokens(self, n_frames):
        return max(1, round(n_frames / self.fps * self.video_tokens_per_second))

    def video_embeds(self, feats):
        """(B, N, D) frame features at self.fps -> (B, N_v, d_lm) projected video tokens."""
        x = F.adaptive_avg_pool1d(rearrange(feats, "b n d -> b d n"), self.n_video_tokens(feats.shape[1]))
        return self.proj(rearrange(x, "b d n -> b n d"))

    def prompt_ids(self, instruction):
        """The instruction in the tokenizer's chat template (Gemma-it, LLaMA-2-chat, toy) when it
        has one, else the released code's alpaca_short template. Returns (ids, was_cut)."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                                      add_generation_prompt=True, tokenize=False)
        else:
            text = f"{self.tokenizer.bos_token or ''}### Instruction:\n{instruction}\n\n### Response:\n"
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return ids[: self.max_text_tokens], len(ids) > self.max_text_tokens

    def _sequences(self, feats, prompts, captions=None, pad_to=None):
        """Builds [video ; pad ; prompt (; caption eos)] per sample: the video tokens first (as the
        released code prepends them), the text LEFT-padded after them, so every video token sits at
        the same index in every sample and a generated caption continues right after the prompt.
        Positions count real tokens only, so padding never changes a sample's hidden states.
        Returns embeds (B, L, d), mask (B, L), positions (B, L), labels (B, L)."""
        vid = self.video_embeds(feats)  # (B, N_v, d)
        embed = self.llm.get_input_embeddings()
        texts, labels = [], []
        for b, prompt in enumerate(prompts):
            ids, _ = self.prompt_ids(prompt)
            lab = [-100] * len(ids)
            if captions is not None:
                cap = self.tokenizer(captions[b], add_special_tokens=False).input_ids[: self.max_text_tokens]
                cap = cap + [self.tokenizer.eos_token_id]
                lab, ids = lab + cap, ids + cap  # loss on the caption tokens only (eq. 1)
            texts.append(embed(torch.tensor(ids, device=vid.device)))
            labels.append(lab)
        n_text = (pad_to - vid.shape[1]) if pad_to else max(len(t) for t in texts)
        pad = [n_text - len(t) for t in texts]
        x = torch.stack([torch.cat([v.to(t.dtype), F.pad(t, (0, 0, p, 0))]) for v, t, p in zip(vid, texts, pad)])  # (B, L, d)
        n_vid = vid.shape[1]
        mask = torch.tensor([[1] * n_vid + [0] * p + [1] * (n_text - p) for p in pad], device=x.device)  # (B, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        labels = torch.tensor([[-100] * (n_vid + p) + lab for p, lab in zip(pad, labels)], device=x.device)
        return x, mask, positions, labels

    def forward(self, feats, prompts, captions):
        """The caption loss (eq. 1) SUMMED over the batch's caption tokens, and their number: the
        training loop divides by the count over all ranks (see main)."""
        x, mask, positions, labels = self._sequences(feats, prompts, captions)
        logits = self.llm(inputs_embeds=x, attention_mask=mask, position_ids=positions).logits[:, :-1]
        targets = labels[:, 1:]  # token t predicts token t + 1
        caption = targets != -100  # (float32 logits of these rows only: the vocabulary may be 256 k wide)
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
        generate() settings in `sampling` (e.g. RELEASED_CAPTION_SAMPLING). At most max_new_tokens
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


def load_converter(ckpt_path, device):
    """Rebuilds the frozen Converter from stage1.pt alone (its config names the base LLM)."""
    if not os.path.isfile(ckpt_path):
        sys.exit(f"error: {ckpt_path}: no such checkpoint (train it with stage1_caption.py)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if ckpt.get("kind") != "vatt-converter":
        sys.exit(f"error: {ckpt_path}: not a stage-1 (Converter) checkpoint")
    cfg = ckpt["config"]
    local = Path(ckpt_path).parent / ckpt["llm_path"]  # the toy's base LLM sits next to stage1.pt
    llm_path = str(local) if local.exists() else ckpt["llm_path"]
    llm, tokenizer = load_llm(llm_path, (cfg["lora_r"], cfg["lora_alpha"], 0.0), device)
    meta = ckpt["features_meta"]
    conv = Converter(llm, tokenizer, meta["feature_dim"], cfg["video_tokens_per_second"], cfg["max_text_tokens"],
                     meta["fps"])
    conv.features_meta, conv.features_dir = ckpt["features_meta"], cfg["features_dir"]
    load_trained_weights(conv, ckpt, ckpt_path, llm_path)
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


# -----------------------------------------------------------------------------
# fine-tuning (--init_from): a trained checkpoint as the starting point

# the settings that make up a trained Converter rather than its training: a fine-tuning run
# takes them from the checkpoint it starts from
ARCHITECTURE = ("toy_layers", "toy_width", "toy_heads", "video_tokens_per_second", "lora_r", "lora_alpha",
                "max_text_tokens")


def read_init_checkpoint(path, kind, own_checkpoint):
    """The trained checkpoint a fine-tuning run starts from (`kind`: "vatt-converter" or
    "vatt-audio"), refused when it is the run's own output, which --resume continues instead."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: no such checkpoint (--init_from)")
    if Path(path).resolve() == Path(own_checkpoint).resolve():
        sys.exit(f"error: --init_from={path} is this run's own checkpoint: write the fine-tuned model to another --out_dir")
    what = "stage-1 (Converter)" if kind == "vatt-converter" else "stage-2 (VATT Audio)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (pickled objects, not a torch file, ...)
        sys.exit(f"error: {path}: not a {what} checkpoint of this project ({str(e).splitlines()[0][:80]})")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else None
        sys.exit(f"error: {path}: not a {what} checkpoint of this project" + (f" (a {found!r} one)" if found else ""))
    return ckpt


# -----------------------------------------------------------------------------
# data: (features, caption) pairs of the train split, in either of two folder layouts


# layout name -> (frame-feature folder, token folder) inside --features_dir
LAYOUTS = {
    # extract_features.py's: meta.json, video/<stem>.npy (frames, D), audio/<stem>.npy (L, T)
    "ours": ("video", "audio"),
    # the authors' VGGSound download unzipped into one folder, as their setup_inference.sh does:
    # vggsound_clip_5fps/<stem>.npy (50, 768) and meta_pretrain_vgg_encodec_tokens/<stem>.npy
    # (500, 4), no meta.json (extract_features.authors_meta says what it would hold)
    "authors": ("vggsound_clip_5fps", "meta_pretrain_vgg_encodec_tokens"),
}


class BadFileError(ValueError):
    """A feature or token file that cannot be used; the message starts with its path."""


class FeatureFiles:
    """Where a clip's frame features and codec tokens are, what shapes they must have, and loading
    them. `layout` is one of LAYOUTS or "auto": the folder's contents decide."""

    def __init__(self, folder, layout="auto"):
        self.folder = Path(folder)
        if layout == "auto":
            layout = "authors" if (self.folder / LAYOUTS["authors"][0]).is_dir() else "ours"
        if layout not in LAYOUTS:
            sys.exit(f"error: unknown features layout {layout!r}; choose one of {', '.join(LAYOUTS)} or auto")
        self.layout = layout
        self.video_dir, self.tokens_dir = (self.folder / sub for sub in LAYOUTS[layout])
        meta_json = self.folder / "meta.json"
        if layout == "authors":
            from extract_features import authors_meta

            self.meta = authors_meta()
        else:
            self.meta = json.loads(meta_json.read_text()) if meta_json.exists() else None

    def require_meta(self):
        if self.meta is None:
            sys.exit(f"error: {self.folder}: no meta.json and no {LAYOUTS['authors'][0]}/ folder: expected the "
                     "output of extract_features.py, or the authors' VGGSound features unzipped there")
        return self.meta

    def video_path(self, stem):
        return self.video_dir / f"{stem}.npy"

    def tokens_path(self, stem):
        return self.tokens_dir / f"{stem}.npy"

    def video_shape(self, feature_dim=None):
        """(frames, D): the fixed window at the features' rate; unknown axes None without meta.json."""
        if self.meta is None:
            return (None, feature_dim)
        return (round(self.meta["seconds"] * self.meta["fps"]), self.meta["feature_dim"])

    def tokens_shape(self):
        """The token file's shape on disk: (L, T) ours, (T, L) the authors' (time first)."""
        m = self.require_meta()
        shape = (m["n_q"], round(m["seconds"] * m["frame_rate"]))
        return shape[::-1] if self.layout == "authors" else shape

    def _load(self, path, shape, what):
        try:
            x = np.load(path)
        except (ValueError, OSError, EOFError) as e:  # e.g. pickled data, a truncated file
            raise BadFileError(f"{path}: unreadable ({str(e).splitlines()[0][:80]})") from None
        if not shape_fits(shape, x.shape):
            raise BadFileError(f"{path}: expected {what} of shape {shape_str(shape)}, got {x.shape}")
        return x

    def load_video(self, stem, feature_dim=None):
        """(frames, D) float32 frame features."""
        path = self.video_path(stem)
        x = self._load(path, self.video_shape(feature_dim), "features")
        if x.dtype.kind != "f":
            raise BadFileError(f"{path}: dtype {x.dtype}, expected floats")
        return torch.from_numpy(x.astype(np.float32))

    def load_tokens(self, stem):
        """(L, T) int64 codec tokens, whatever the layout stores."""
        path, bins = self.tokens_path(stem), self.require_meta()["bins"]
        x = self._load(path, self.tokens_shape(), "tokens")
        if x.dtype.kind not in "iu" or x.min() < 0 or x.max() >= bins:
            raise BadFileError(f"{path}: expected integer tokens in [0, {bins}), got {x.dtype} in [{x.min()}, {x.max()}]")
        if self.layout == "authors":
            x = x.T  # stored time-first (500, 4), as their dataset transposes on load: (L, T) here
        return torch.from_numpy(x.astype(np.int64))

    def problems(self, stem, tokens):
        """'path: problem' for each bad file of a clip (headers only, see utils.check_npy)."""
        checks = [(self.video_path(stem), self.video_shape(), "f")]
        if tokens:
            checks.append((self.tokens_path(stem), self.tokens_shape(), "iu"))
        return [f"{path}: {problem}" for path, shape, kinds in checks
                if (problem := check_npy(path, shape, kinds)) is not None]


@functools.lru_cache(maxsize=None)
def feature_files(folder, layout="auto"):
    return FeatureFiles(folder, layout)


def load_split(data_json, features_dir, split, layout="auto", tokens=False):
    """Entries of `split` whose features (and, with `tokens`, token files) exist: [(stem, caption)].
    Returns (items, n_missing)."""
    files = feature_files(str(features_dir), layout)
    entries = [e for e in json.loads(Path(data_json).read_text()) if e["split"] == split]
    items = [(Path(e["video_path"]).stem, e["output"]) for e in entries]
    have = [(s, c) for s, c in items if files.video_path(s).exists() and (not tokens or files.tokens_path(s).exists())]
    return have, len(items) - len(have)


def load_features(features_dir, stem, expected_dim=None, layout="auto"):
    return feature_files(str(features_dir), layout).load_video(stem, expected_dim)


def exit_changed_file(error):
    """A file that passed the check before step 0 and fails to load later: one line, and the run stops."""
    sys.exit(f"error: {error} (it passed the check before step 0, so it changed during the run; fix or "
             "remove it and rerun: training resumes from its last checkpoint)")


def check_split_files(files, items, tokens, skip_bad, rank=0, world=1):
    """Checks every file of a split's clips before step 0, by its header (seconds even for 200 k
    clips; DDP ranks share the work). A bad file stops the run with the list of them, or, with
    `skip_bad`, its clip is left out and reported. Returns the items to train on."""
    t0 = time.time()
    bad = {}
    for stem, _ in tqdm(items[rank::world], desc="checking files", disable=rank != 0, leave=False):
        if found := files.problems(stem, tokens):
            bad[stem] = found
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, bad)
        bad = {k: v for part in gathered for k, v in part.items()}
    n_files, seconds = len(items) * (2 if tokens else 1), time.time() - t0
    if not bad:
        print0(f"checked the {n_files} files of {len(items)} clips in {seconds:.1f} s: all good")
        return items
    for stem in sorted(bad):
        for line in bad[stem]:
            print0(line, file=sys.stderr)
    if not skip_bad:
        sys.exit(f"error: {len(bad)} of {len(items)} clips have bad files (listed above; checked {n_files} files "
                 f"in {seconds:.1f} s): fix or remove them, or leave those clips out with --skip_bad_files=true")
    print0(f"left out {len(bad)} of {len(items)} clips with bad files (listed above; checked {n_files} files in {seconds:.1f} s)")
    return [item for item in items if item[0] not in bad]


@torch.no_grad()
def init_projector(model, feats):
    """Data-dependent init of the projector (as in weight-norm init, Salimans & Kingma 2016):
    frame features usually share a large common component (the toy's random ViT: per-dimension
    means 3x the spread), so a plain init gives video tokens that look alike and the LLM learns
    to ignore them. Scaling by the per-dimension spread and centring with the bias makes the
    projected tokens differ from clip to clip at the size of the LLM's own token embeddings from
    step 0. It changes the starting point only, not the architecture (still one Linear)."""
    x = feats.flatten(0, 1).to(model.proj.weight.device)  # (N * frames, D)
    mean, std = x.mean(0), x.std(0) + 1e-6
    embed = model.llm.get_input_embeddings()
    target = embed.weight.std() * getattr(embed, "embed_scale", 1.0)  # Gemma scales by sqrt(width)
    w = torch.randn_like(model.proj.weight) / math.sqrt(x.shape[1]) / std * target
    model.proj.weight.copy_(w)
    model.proj.bias.copy_(-w @ mean)


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = parse_config(Config, PRESETS, argv)
    t0 = time.time()
    rank, world = setup_ddp()
    device = pick_device(cfg.device)
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)  # the initial weights (the training steps re-seed, see below)

    ckpt_path = out / "stage1.pt"
    init = read_init_checkpoint(cfg.init_from, "vatt-converter", ckpt_path) if cfg.init_from else None
    if init is not None:  # fine-tuning keeps the trained model's architecture
        if (init["config"]["llm"] == "toy") != (cfg.llm == "toy"):
            sys.exit(f"error: {cfg.init_from}: trained on the LLM {init['config']['llm']!r}, this run uses "
                     f"{cfg.llm!r} (pass the matching --preset or --llm)")
        for key in ARCHITECTURE:
            setattr(cfg, key, init["config"][key])
    files = feature_files(cfg.features_dir, cfg.features_layout)
    meta = files.require_meta()
    items, n_missing = load_split(cfg.data_json, cfg.features_dir, "train", cfg.features_layout)
    if n_missing:
        print0(f"warning: {n_missing} train clips have no features and are left out")
    items = check_split_files(files, items, tokens=False, skip_bad=cfg.skip_bad_files, rank=rank, world=world)
    n_val = max(1, int(len(items) * cfg.val_fraction))
    train, val = items[:-n_val], items[-n_val:]
    print0(f"{len(train)} training and {len(val)} validation clips")

    llm_path = cfg.llm
    if cfg.llm == "toy":  # the random base LLM is part of this stage's output, next to stage1.pt
        llm_path = "toy_llm"
        if rank == 0 and not (out / llm_path / "config.json").exists():
            if init is not None:  # the trained model's own base LLM and vocabulary
                shutil.copytree(Path(cfg.init_from).parent / init["llm_path"], out / llm_path, dirs_exist_ok=True)
            else:
                build_toy_llm(cfg, [c for _, c in items] + INSTRUCTIONS, out / llm_path)
        if world > 1:
            torch.distributed.barrier()
    llm, tokenizer = load_llm(str(out / llm_path) if cfg.llm == "toy" else llm_path,
                              (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout), device)
    if cfg.lora_r == 0:
        # The toy trains its random LLM fully, except the input token embeddings, which stay fixed
        # as a pretrained LLM's do under LoRA: trained on captions, words the video cannot tell
        # apart ("high" / "low") would be pulled onto one vector, and stage 2 could no longer read
        # the register from the prompt (docs/toy-tuning.md). The toy's LM head is untied from
        # them, so captioning keeps its full output layer.
        llm.get_input_embeddings().requires_grad_(False)
    if cfg.grad_checkpointing:
        llm.gradient_checkpointing_enable()
    model = Converter(llm, tokenizer, meta["feature_dim"], cfg.video_tokens_per_second, cfg.max_text_tokens,
                      meta["fps"]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    print0(f"trainable parameters: {sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,}")

    def clip_features(stem):
        try:
            return files.load_video(stem)
        except BadFileError as e:
            exit_changed_file(e)

    step = 0
    if cfg.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        load_trained_weights(model, ckpt, ckpt_path, cfg.llm)
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        print0(f"resuming from {ckpt_path} at step {step}")
    elif init is not None:
        load_trained_weights(model, init, cfg.init_from, cfg.llm)
        print0(f"fine-tuning from {cfg.init_from} (trained {init['step']} steps): fresh optimizer, step 0")
    else:
        init_projector(model, torch.stack([clip_features(s) for s, _ in train[:256]]))
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    # every rank draws the same global batch and keeps its slice: N processes see exactly the
    # samples one process with an N times larger batch would see
    def batch(split_items, r):
        mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
        pick = r.choice(len(split_items), cfg.batch_size * world)[mine]
        prompts = [INSTRUCTIONS[j] for j in r.integers(len(INSTRUCTIONS), size=cfg.batch_size * world)[mine]]
        feats = torch.stack([clip_features(split_items[i][0]) for i in pick])
        return feats.to(device), prompts, [split_items[i][1] for i in pick]

    @torch.no_grad()
    def val_loss():
        """The mean over the caption tokens of all validation batches, on all ranks."""
        model.eval()
        r = np.random.default_rng(0)  # the same validation batches every time
        total = count = 0
        for _ in range(cfg.eval_batches):
            with autocast(device):
                loss_sum, n_tokens = model(*batch(val, r))
            total, count = total + loss_sum, count + n_tokens
        model.train()
        return (all_mean(total) / all_mean(count)).item()

    def save():
        trainable = {k: v for k, v in llm.state_dict().items()
                     if k in {n for n, p in llm.named_parameters() if p.requires_grad}}
        save_checkpoint({"kind": "vatt-converter", "config": asdict(cfg), "step": step, "llm_path": llm_path,
                         "vocab_size": len(tokenizer), "features_meta": meta, "projector": model.proj.state_dict(),
                         "trainable": trainable, "optimizer": optimizer.state_dict()}, ckpt_path)

    model.train()
    while True:
        last = step == cfg.max_steps
        if step % cfg.eval_interval == 0 or last:
            loss = val_loss()
            print0(f"step {step}: val loss {loss:.4f}")
            if rank == 0 and step > 0:
                save()
        if last:
            break
        # ---- training step -------------------------------------------------------------
        t1 = time.time()
        # Every random draw of a step is a function of (seed, step) alone, so a run resumed from
        # the checkpoint of step k replays exactly what an uninterrupted run does from step k on.
        rng = np.random.default_rng([cfg.seed, step])  # the global batch: the same on every rank
        torch.manual_seed(int(rng.integers(2**62)) + rank)  # dropout (LoRA's): one stream per rank
        lr = get_lr(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        train_loss = 0.0
        for micro in range(cfg.grad_accum):
            if world > 1:  # sync gradients only on the last micro-step
                ddp_model.require_backward_grad_sync = micro == cfg.grad_accum - 1
            with autocast(device):
                loss_sum, n_tokens = ddp_model(*batch(train, rng))
            # The loss is the mean over the caption tokens of the GLOBAL batch. Each rank divides
            # its sum by the mean token count per rank, not by its own count: DDP then averages
            # over ranks exactly the global token mean and its gradient, as one process with the
            # whole batch computes them (a mean per rank would weigh each token by its rank's
            # caption lengths).
            loss = loss_sum / all_mean(n_tokens) / cfg.grad_accum
            loss.backward()
            train_loss += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.log_interval == 0:
            train_loss = all_mean(train_loss).item()  # on every rank: a collective
            print0(f"step {step}/{cfg.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | {(time.time() - t1) * 1000:.0f} ms")

    print(f"rank {rank}: weights {weights_digest(params)}", flush=True)  # the same on every rank
    if rank == 0:
        model.eval()
        feats = torch.stack([clip_features(s) for s, _ in val[:4]]).to(device)
        for (stem, ref), hyp in zip(val[:4], model.caption(feats)[0]):
            print(f"{stem}: {hyp!r} (reference: {ref!r})")
        record_timing(out, "stage1_caption", t0)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
