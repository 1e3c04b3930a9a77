"""
Sampling from VATT: silent video (+ optional text) -> audio caption + audio (paper §3.2, §3.2.2).

    video -> 5 fps CLIP features -> VATT Converter -> (caption) and last-layer hidden states
    hidden states -> VATT Audio, iterative parallel decoding from all-MASK tokens -> codec -> wav

Without a prompt the Converter captions the video and the audio is generated with the standard
template prompt (the paper's "no text" mode); with --prompt the text steers the audio;
--self_prompt generates with the Converter's own caption (paper appendix A). Where this file
departs from the paper and from the released code: the README's "Paper notes".

    python sample.py --video clip.mp4                       # toy checkpoints in out/toy
    python sample.py --video clip.mp4 --prompt "a low bell rings twice"
    python sample.py --video clip.mp4 --negative_prompt "a high bell"   # steer away from a sound
    python sample.py --video videos/ --batch_size 8         # a folder (or a .txt list) of videos
    python sample.py --video clip.mp4 --caption_only        # video-to-audio captioning (Table 3)
    python sample.py --preset gemma-2b --video clip.mp4 --ckpt_dir out/gemma-2b

For each video it writes <video>.vatt.wav, <video>.vatt.mp4 (the video stream copied, the new audio
muxed in; .vatt.mkv when mp4 cannot hold the video codec, e.g. VP8) and <video>.vatt.json (caption,
prompt, seed, every setting); with --save_steps also <video>.vatt.steps.json, the step at which
each token was revealed (tools/report.py draws it). Every clip of a split of a V2A-Instruction
JSON (evaluation runs): tools/sample_split.py.
"""
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple, Optional

import numpy as np
import torch
from tqdm import tqdm

from codec import decode_windows, load_codec
from extract_features import (VideoFeatures, audio_tokens, decode_audio, list_videos, mux, resample_audio,
                              write_wav)
from stage1_caption import RELEASED_CAPTION_SAMPLING, TEMPLATE, load_converter
from stage2_audio import audio_condition, load_vatt_audio
from utils import atomic_path, autocast, parse_config, pick_device, save_json

# -----------------------------------------------------------------------------
# iterative parallel decoding (MaskGIT, Chang et al. 2022; VATT §3.2.2)


def cosine_n_masked(n_start, remaining, t, steps):
    """How many tokens stay masked after step t of `steps` (§3.2.2's cosine schedule,
    r_t = cos(pi/2 t/T)), in the released sampler's arithmetic: t/T as a float32, floor(N0 cos(pi/2
    t/T)) in float32, and at least one token kept masked (and at least one revealed) until the
    last step, which reveals the rest. n_start, remaining: (B,) per sample (never summed over the
    batch, as the released sampler does for its one clip); tests/test_masked_modelling.py checks
    every N0 up to 8000 and 4 to 64 steps against their formula."""
    if t == steps:
        return torch.zeros_like(remaining)
    gamma = (torch.tensor(t / steps) * torch.pi / 2).cos().clamp(1e-10, 1.0)  # float32, their order
    n = torch.floor(gamma * n_start).long()
    return torch.minimum(torch.minimum(remaining - 1, n).clamp(min=1), remaining)


def reveal_counts(n_tokens, steps):
    """The number of tokens newly revealed at each step for N0 = n_tokens."""
    n0 = remaining = torch.tensor([n_tokens])
    counts = []
    for t in range(1, steps + 1):
        after = cosine_n_masked(n0, remaining, t, steps)
        counts.append(int(remaining - after))
        remaining = after
    return counts


def noise(generators, shape, device):
    """Uniform noise drawn from each sample's own generator, so a sample's randomness does not
    depend on which other samples share its batch. The generators live on `device`: drawing on
    the host and copying would stall the GPU at every step."""
    return torch.stack([torch.rand(shape, generator=g, device=device) for g in generators])


def gumbel(u):
    """Standard Gumbel noise -log(-log u) from uniform u; both logs are kept away from 0."""
    return -torch.log((-torch.log(u.clamp(1e-20, 1.0))).clamp(min=1e-20))


def remask_least_confident(confidence, unknown, n_masked):
    """The new mask (Gumbel-top-k's remasking step): per sample, the n_masked least confident of the still-unknown tokens.
    confidence (B, N); unknown (B, N) bool; n_masked (B,). Known tokens count as infinitely
    confident, so they are never masked again."""
    rank = confidence.masked_fill(~unknown, float("inf")).argsort(-1).argsort(-1)  # 0 = least confident
    return rank < n_masked[:, None].to(rank.device)


def classifier_free_guidance(cond_logits, null_logits, guidance_scale):
    """u + w (c - u) (Ho & Salimans 2022): w = 1 is the conditional model, w > 1 moves further from
    the null condition. A negative prompt's logits n in place of u give n + w (c - n): the sample
    is steered away from that text."""
    return null_logits + guidance_scale * (cond_logits - null_logits)


@torch.no_grad()
def decode_tokens(model, cond, cond_mask, null_cond, codes, generators, steps, guidance_scale, temperature, top_k,
                  mask_temperature, history=None):
    """codes (B, L, T): known tokens, MASK (= bins) where unknown. Returns codes with every MASK
    filled. cond (2B, Lc, d), cond_mask (2B, Lc), null_cond (2B,): guidance's batch, each sample's
    condition then its null (or negative prompt's) condition (guidance_batch). Each step (t = 1..T):
    one forward for both halves, guidance, sample every masked token (top-k, temperature) in
    parallel, score it by log p + tau G with tau = tau0 (1 - t/T) and G ~ Gumbel(0, 1) (Gumbel-top-k
    = keeping the most confident without replacement), and keep the best so that exactly
    cosine_n_masked(t) stay masked. A revealed token never changes again. `history`, a list,
    collects the codes after every step. (How the loop keeps a GPU busy: docs/sampling-speed.md.)"""
    B, L, T = codes.shape
    mask_id = model.config.bins
    unknown = codes == mask_id  # (B, L, T)
    n_start = unknown.flatten(1).sum(-1)  # (B,) per sample
    for t in range(1, steps + 1):
        # guidance: the conditional and the null (or negative) passes in one forward
        c, u = model(torch.cat([codes, codes]), cond, cond_mask, null_cond).float().chunk(2)  # (B, L, T, V) each
        logits = classifier_free_guidance(c, u, guidance_scale)
        # sampling: every masked token in parallel, among its top_k, at `temperature`
        k = min(top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf")) / temperature
        logp = logits.log_softmax(-1)
        sampled = (logp + gumbel(noise(generators, (L, T, logp.shape[-1]), codes.device))).argmax(-1)  # Gumbel-max = a draw
        sampled = torch.where(unknown, sampled, codes)
        # masking: keep the most confident draws (plus annealed Gumbel noise), remask the rest
        confidence = logp.gather(-1, sampled[..., None])[..., 0]  # (B, L, T) log p of the draw
        tau = mask_temperature * (1 - t / steps)
        # log p + tau G, as the released sampler: tau times the paper's log p / tau + G, the same ranking for tau > 0
        confidence = confidence + tau * gumbel(noise(generators, (L, T), codes.device))
        n_masked = cosine_n_masked(n_start, unknown.flatten(1).sum(-1), t, steps)  # (B,)
        unknown = remask_least_confident(confidence.flatten(1), unknown.flatten(1), n_masked).view(B, L, T)
        codes = torch.where(unknown, torch.full_like(codes, mask_id), sampled)
        if history is not None:
            history.append(codes.clone())
    return codes


# -----------------------------------------------------------------------------
# §3.2's two generation modes: a window's prompt, and the conditions guidance compares


def window_prompt(prompt, caption, self_prompt):
    """The text a window is generated with. Without text (prompt None), the standard template;
    with text, the user's prompt; with self_prompt (appendix A), the Converter's own caption of
    the window."""
    if self_prompt:
        return caption
    return TEMPLATE if prompt is None else prompt


def guidance_batch(cond, cond_mask, negative=None):
    """Guidance's batch for decode_tokens: each sample's condition (B, Lc, d) and mask (B, Lc), then
    its null condition (its own rows, which VATT Audio zeroes for null_cond) or, where `negative` =
    (cond, mask, has) has[b], its negative prompt's. Returns cond (2B, Lc, d), cond_mask (2B, Lc),
    null_cond (2B,) bool."""
    other, other_mask, null = cond, cond_mask, torch.ones(len(cond), dtype=torch.bool, device=cond.device)
    if negative is not None:
        n_cond, n_mask, has = negative
        has = torch.as_tensor(has, dtype=torch.bool, device=cond.device)  # (B,)
        other = torch.where(has[:, None, None], n_cond.to(cond.dtype), cond)
        other_mask, null = torch.where(has[:, None], n_mask, cond_mask), ~has
    return torch.cat([cond, other]), torch.cat([cond_mask, other_mask]), torch.cat([torch.zeros_like(null), null])


def text_conditions(conv, condition, x, prompts, negatives):
    """VATT Audio's conditions (§3.2.1) for guidance: for the videos x (B, frames, D), each with its
    prompt and its negative prompt (None = none), computed in one LLM batch, once per window and
    never per step; the guidance_batch they make."""
    has = [n is not None for n in negatives]
    texts = prompts + [n for n in negatives if n is not None]
    # the Converter's own caption is cut as training cuts long captions (prompts were checked)
    cond, cond_mask = audio_condition(conv, torch.cat([x, x[has]]), texts, condition)
    B = len(prompts)
    negative = None
    if any(has):  # a negative prompt's condition in place of its sample's null one
        n_cond, n_mask = cond[:B].clone(), cond_mask[:B].clone()
        n_cond[has], n_mask[has] = cond[B:], cond_mask[B:]
        negative = (n_cond, n_mask, has)
    return guidance_batch(cond[:B], cond_mask[:B], negative)


# =============================================================================
# Running it: the configuration, the models, long videos window by window, a run's clips and outputs


@dataclass
class Config:
    preset: str = "toy"
    ckpt_dir: str = "out/toy"  # holds stage1.pt (Converter) and stage2.pt (VATT Audio)
    video: str = ""  # a video file, a folder of videos or a .txt list of paths
    out_dir: str = ""  # where outputs go (default: next to each video)
    prompt: str = ""  # the text prompt; empty = no text (caption + standard template)
    # a text to steer away from: guidance n + w (c - n), its condition n in place of the null one
    negative_prompt: str = ""
    self_prompt: bool = False  # generate with the Converter's own caption as the prompt
    # START:END in seconds: redo that range of the video's own sound, keeping the rest sample for
    # sample, from the video and --prompt (or the Converter's caption); see edit_audio
    edit: str = ""
    caption_only: bool = False  # only write the caption (no audio)
    # captioning (Table 3): the instruction (empty = the training template; the paper's Table 3 used
    # stage1_caption.TABLE3_INSTRUCTION) and greedy decoding's new-token limit (0 = the Converter's
    # caption limit + 1); a caption that reaches it without ending is counted and reported
    caption_prompt: str = ""
    caption_max_tokens: int = 0
    # decode captions as the released scripts do (temperature 0.1, top-p 0.95, top-k 500,
    # repetition penalty 1.1; they allow 400 tokens), from torch's generator seeded with `seed`
    caption_sampling: bool = False
    # iterative parallel decoding (§3.2.2), the released scripts' settings (the toy's: TOY_SAMPLING)
    steps: int = 16  # decoding steps T
    guidance_scale: float = 5.0  # classifier-free guidance w: u + w (c - u)
    temperature: float = 1.0  # token sampling temperature
    top_k: int = 256  # each token is drawn among its k most likely (a filter, not Gumbel-top-k's k)
    mask_temperature: float = 25.5  # tau0: Gumbel noise on the confidences, annealed to 0 over the steps
    num_samples: int = 1  # audio samples per video
    seed: int = 0  # sample k of a clip draws its noise from clip_seed(seed, k, the clip's name)
    # seconds shared by consecutive windows of a long video, in [0, window / 2), rounded up to the
    # grid of video frames and audio tokens (0.2 s at 5 fps, 50 Hz)
    overlap: float = 2.0
    batch_size: int = 8  # videos per batch
    save_steps: bool = False  # also write <clip>.steps.json: the step at which each token was revealed (tools/report.py draws it)
    device: str = "auto"
    compile: bool = False  # torch.compile VATT Audio: GPU-oriented, pays off over many batches of one shape


# The toy's small, briefly trained model keeps a source coherent when the clearest tokens come
# first and guidance is mild (chosen on the validation split: docs/toy-tuning.md); its 2 s clips
# take a shorter window overlap.
TOY_SAMPLING = dict(guidance_scale=2.0, temperature=0.5, mask_temperature=0.5, overlap=0.4)
PRESETS = {"toy": TOY_SAMPLING, "gemma-2b": dict(ckpt_dir="out/gemma-2b"), "llama-2-7b": dict(ckpt_dir="out/llama-2-7b")}


# -----------------------------------------------------------------------------
# the models from the checkpoint folder, each clip's noise, and the windows of a long video


def load_models(ckpt_dir, device):
    """stage1.pt and stage2.pt of a checkpoint folder -> (converter, audio, codec, meta, files: the
    checkpoint files, named in every output's record)."""
    ckpt_dir = Path(ckpt_dir)
    converter = load_converter(ckpt_dir / "stage1.pt", device)
    audio, ckpt = load_vatt_audio(ckpt_dir / "stage2.pt", device)
    if audio.config.cond_dim != converter.hidden_size:
        sys.exit(f"error: {ckpt_dir}: stage2.pt expects {audio.config.cond_dim}-d LLM states, "
                 f"stage1.pt gives {converter.hidden_size}-d")
    return SimpleNamespace(converter=converter, audio=audio, codec=load_codec(ckpt["codec"]).to(device),
                           meta=converter.features_meta,
                           files={"converter": str(ckpt_dir / "stage1.pt"), "audio": str(ckpt_dir / "stage2.pt")})


def clip_seed(seed, sample_index, key):
    """The seed of one clip's noise: a stable hash (sha256; Python's hash() is salted per process)
    of the run's seed, the sample index and the clip's key (a video's file name, a --data_json
    entry's stem). A clip's audio then does not depend on its batch, batch size or folder, two
    clips never share a noise stream, and the same video under two names gives two samples."""
    digest = hashlib.sha256(f"{seed}/{sample_index}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch.Generator seed


def grid_period(fps, rate):
    """The common period of the video frames at `fps` and the audio tokens at `rate`: the shortest
    time that is a whole number of both (0.2 s at 5 fps and 50 Hz), as a Fraction of a second."""
    fps, rate = Fraction(fps).limit_denominator(10**6), Fraction(rate).limit_denominator(10**6)
    return Fraction(math.lcm(fps.denominator, rate.denominator), math.gcd(fps.numerator, rate.numerator))


def window_hop(window, overlap, fps, rate):
    """The hop between consecutive windows, as (video frames, audio tokens): the largest multiple
    of grid_period that still shares at least `overlap` seconds, so every window starts its video
    and its audio at the same instant. `overlap` must lie in [0, window / 2)."""
    if not 0 <= overlap < window / 2:
        raise ValueError(f"overlap {overlap:g} s is outside [0, {window / 2:g}) s (the window is {window:g} s)")
    period = grid_period(fps, rate)
    span = Fraction(window).limit_denominator(10**6) - Fraction(overlap).limit_denominator(10**6)
    hop = span // period * period
    if hop <= 0:
        raise ValueError(f"a {window:g} s window cannot hop on the {float(period):g} s grid of video frames and "
                         f"audio tokens with {overlap:g} s overlap")
    return int(hop * Fraction(fps).limit_denominator(10**6)), int(hop * Fraction(rate).limit_denominator(10**6))


def plan_windows(duration, window, overlap, fps, rate):
    """The windows of a clip of `duration` seconds: [(first video frame, first audio token)], one
    per window of `window` seconds, a hop apart, until the audio tokens cover the clip. The last
    window ends at the clip's end (its start rounded up to the grid, so it ends less than one
    grid period past it): it sees the clip's own frames, not its last frame held, and shares more
    than `overlap` with the window before it. A clip shorter than a window is one window."""
    _, hop_tokens = window_hop(window, overlap, fps, rate)
    frames_per_token = Fraction(fps).limit_denominator(10**6) / Fraction(rate).limit_denominator(10**6)
    period_tokens = int(grid_period(fps, rate) * Fraction(rate).limit_denominator(10**6))
    n_tokens, win_tokens = math.ceil(round(duration * rate, 6)), round(window * rate)
    starts = list(range(0, max(1, n_tokens - win_tokens), hop_tokens))  # the windows that end before the clip does
    if n_tokens > win_tokens:  # the last: the first grid point from which a window reaches the end
        starts.append(-(-(n_tokens - win_tokens) // period_tokens) * period_tokens)
    return [(int(s * frames_per_token), s) for s in starts]


def window_frames(feats, start, n):
    """Features [start, start + n) of a video, holding its last frame past the end."""
    x = feats[start: start + n]
    return torch.cat([x, x[-1:].expand(n - len(x), -1)]) if len(x) < n else x


def inpainting_start(so_far, starts, config, win_tokens, device):
    """The start codes of a window, (B, L, T): all MASK, but for in-painting (MaskGIT's: known
    tokens stay, the rest is decoded): a window after the first begins with the tokens already
    generated from its first audio token on, so the audio runs on continuously. so_far: per item,
    the codes generated so far (a list of (L, t) pieces, empty in the first window); starts: the
    window's first audio token. Returns the codes and each item's count of given tokens."""
    codes = torch.full((len(so_far), config.n_q, win_tokens), config.bins, dtype=torch.long, device=device)
    n_given = [0] * len(so_far)
    for j, (pieces, start) in enumerate(zip(so_far, starts)):
        if pieces:
            given = torch.cat(pieces, -1)[:, start:]  # (L, n_given)
            n_given[j] = given.shape[-1]
            codes[j, :, : n_given[j]] = given
    return codes, n_given


def generate(models, feats, durations, prompts, seeds, args, device, negatives=None, cut_prompts=False):
    """Each window of each item: caption, prompt, start codes, condition, decode_tokens. feats: (N_i, D)
    features at the rate of models.meta; durations in seconds; prompts and negatives: str or None
    per item; seeds: clip_seed's. A prompt longer than the model takes is cut as training cuts it
    (`cut_prompts`) or fails its item alone. Returns per item a dict of the captions, whether each
    reached the limit, the prompts used and the codes (L, ceil(duration * rate)), or of "error"."""
    conv, audio, meta = models.converter, models.audio, models.meta
    fps, rate, window = meta["fps"], models.codec.frame_rate, meta["seconds"]
    win_frames, win_tokens = round(window * fps), round(window * rate)
    negatives = negatives or [None] * len(feats)
    windows = [plan_windows(d, window, args.overlap, fps, rate) for d in durations]
    results = [dict(captions=[], captions_at_limit=[], prompts=[], codes=[]) for _ in feats]
    for i, texts in enumerate(zip(prompts, negatives)):
        error = None if cut_prompts else too_long(conv, texts)
        if error:
            results[i], windows[i] = dict(error=error), []
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]  # on the device: see noise()
    sampling = RELEASED_CAPTION_SAMPLING if args.caption_sampling else None
    n_windows = max(len(w) for w in windows)
    # progress over the decoding, one tick per window of `steps` steps (a long video has many);
    # shown on a terminal only (disable=None), so logs and captured stderr stay one line per error
    bar = tqdm(total=n_windows * (0 if args.caption_only else args.steps), desc="decoding",
               unit="step", leave=False, disable=None)
    for w in range(n_windows):
        active = [i for i, plan in enumerate(windows) if w < len(plan)]
        x = torch.stack([window_frames(feats[i], windows[i][w][0], win_frames) for i in active]).to(device)
        # the caption (Table 3): the output of "no text" mode, and --self_prompt's prompt
        captions = at_limit = [None] * len(active)
        if args.caption_only or args.self_prompt or any(prompts[i] is None for i in active):
            captions, at_limit = conv.caption(x, args.caption_prompt or TEMPLATE, args.caption_max_tokens, sampling)
        for j, i in enumerate(active):
            results[i]["captions"].append(captions[j])
            results[i]["captions_at_limit"].append(at_limit[j])
        if args.caption_only:
            continue
        used = [window_prompt(prompts[i], captions[j], args.self_prompt) for j, i in enumerate(active)]
        codes, n_given = inpainting_start([results[i]["codes"] for i in active], [windows[i][w][1] for i in active],
                                          audio.config, win_tokens, device)
        history = [codes] if args.save_steps else None
        with autocast(device):  # bf16 on a GPU, float32 elsewhere
            cond, cond_mask, null_cond = text_conditions(conv, audio.config.condition, x, used,
                                                         [negatives[i] for i in active])
            codes = decode_tokens(audio, cond, cond_mask, null_cond, codes, [generators[i] for i in active], args.steps,
                                  args.guidance_scale, args.temperature, args.top_k, args.mask_temperature,
                                  history=history)
        steps = None if history is None else revealed_at(history, audio.config.bins)  # (B, L, T)
        for j, i in enumerate(active):  # each window's new tokens, joined after the last window
            results[i]["prompts"].append(used[j])
            results[i]["codes"].append(codes[j, :, n_given[j]:])
            if steps is not None:
                results[i].setdefault("revealed_at", []).append(steps[j, :, n_given[j]:])
        bar.update(args.steps)
    bar.close()
    for r, d in zip(results, durations):
        if r.get("codes"):
            r["codes"] = torch.cat(r["codes"], -1)[:, : math.ceil(round(d * rate, 6))]
    return results


def too_long(conv, texts):
    """The error of an item whose prompt or negative prompt is longer than the model takes, or None."""
    for text, what in zip(texts, ("prompt", "negative prompt")):
        if text is not None and conv.prompt_ids(text)[1]:
            return f"the {what} {text[:40]!r}... is longer than the {conv.max_text_tokens} tokens this model accepts"
    return None


def revealed_at(history, mask_id):
    """history: [the codes before step 1, after step 1, ..., after step T] (decode_tokens' `history`
    with the start prepended), each (B, L, T). Returns (B, L, T) the step at which each token was
    revealed, 0 for the tokens given before decoding (in-painting): a revealed token never
    changes again, so a token revealed at step s is MASK in the s entries before it."""
    start_unknown = history[0] == mask_id
    return torch.where(start_unknown, sum((h == mask_id).long() for h in history), 0)


def save_steps(path, result, steps):
    """<clip>.steps.json, the clip's decoding order (its windows joined as its codes are):
    revealed_at[level][frame] = the step (1..steps) at which that token was revealed, 0 = given."""
    grid = torch.cat(result["revealed_at"], -1)[:, : result["codes"].shape[-1]]  # (L, T)
    with atomic_path(path) as tmp:  # one line: indented, a 10 s clip's 2000 numbers would take 2000 lines
        Path(tmp).write_text(json.dumps({"steps": steps, "revealed_at": grid.tolist()}) + "\n", encoding="utf-8")


# -----------------------------------------------------------------------------
# editing a range of a video's own sound with text: MaskGIT's in-painting (known tokens stay, the
# masked ones are decoded, the schedule runs over them alone), in the windows that cover the range


class Edit(NamedTuple):
    """One edit of a run: its key (a video's path, or a clip's name), the video whose sound is
    redone, the range (start, end) in seconds, its prompt and negative prompt (None = none)."""
    key: str
    video: str
    span: tuple
    prompt: Optional[str]
    negative: Optional[str]


def parse_span(text):
    """"START:END" in seconds -> (start, end); a ValueError says what is wrong with it."""
    try:
        start, end = map(float, str(text).split(":"))
    except ValueError:
        raise ValueError(f"the range {text!r} is not START:END in seconds, e.g. 3.2:5.0") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise ValueError(f"the range {text!r}: START and END are seconds from the video's start")
    if start >= end:
        raise ValueError(f"the range {text!r}: START must come before END")
    return start, end


def edit_windows(a, b, n_tokens, win, hop, period):
    """The first tokens of the windows that redo tokens [a, b) of a clip of n_tokens, on the grid
    of video frames and audio tokens (`period` tokens): the first puts the range in the middle of
    a window (a range longer than a window gets the windows' overlap of context before it), inside
    the clip where it is long enough; the next ones a hop apart, the last reaching as far past b."""
    context = max(win - hop, (win - (b - a)) // 2)
    starts = [min(max(0, a - context), max(0, n_tokens - win)) // period * period]
    while starts[-1] + win < b:
        starts.append(min(starts[-1] + hop, -(-(min(n_tokens, b + context) - win) // period) * period))
    return starts


def splice(original, new, first, last, sr, fade=0.02):
    """original (C, S) with its samples [first, last) replaced by `new` (last - first,), faded in
    and out over `fade` seconds inside the range (a quarter of it at most) by raised cosines:
    outside the range every sample is the original's."""
    n = last - first
    f = min(round(fade * sr), n // 4)
    weight = np.ones(n, np.float32)
    if f:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(f) + 0.5) / f)
        weight[:f], weight[n - f:] = ramp, ramp[::-1]
    out = original.copy()
    out[:, first:last] = (1 - weight) * original[:, first:last] + weight * new
    return out


def edit_plan(models, encoder, edit, args, device):
    """What an edit needs before decoding: the video's own sound (C, S) at its own rate; the range
    [a, b) in codec tokens; the windows that cover it (edit_windows; only these are read: the time
    grows with the range, not with the video) and, over [lo, hi), the sound's tokens (its channels'
    mean at the codec's rate, encoded) and the video's frame features."""
    codec, meta, mask_id = models.codec, models.meta, models.audio.config.bins
    original, sr = decode_audio(edit.video, "fltp")  # (C, S): the video's own sound, as it is
    start, end = edit.span
    if end > original.shape[1] / sr:
        raise ValueError(f"{edit.video}: the range {start:g}:{end:g} s lies outside its sound "
                         f"({original.shape[1] / sr:.2f} s)")
    rate, fps, window = codec.frame_rate, meta["fps"], meta["seconds"]
    win = round(window * rate)
    n_tokens = math.ceil(round(original.shape[1] / sr * rate, 6))
    a, b = math.floor(start * rate), min(n_tokens, math.ceil(end * rate))
    starts = edit_windows(a, b, n_tokens, win, window_hop(window, args.overlap, fps, rate)[1],
                          int(grid_period(fps, rate) * rate))
    lo, hi = starts[0], starts[-1] + win  # the tokens the windows see
    n = (hi - lo) * (codec.sample_rate // rate)  # [lo, hi)'s samples at the codec's rate
    first = round(lo / rate * sr)  # the channels' mean over [lo, hi), resampled: no second decode
    sound = resample_audio(original[:, first: first + math.ceil((hi - lo) / rate * sr) + 1].mean(0), sr,
                           codec.sample_rate)[:n]
    sound = np.pad(sound, (0, n - len(sound)))
    codes = audio_tokens(codec, torch.from_numpy(sound)[None].to(device))[0]  # (L, hi - lo)
    codes[:, n_tokens - lo:] = mask_id  # past the end of the clip: nothing is known
    feats, _ = encoder(edit.video, lo / rate, (hi - lo) / rate)  # (frames, D) of [lo, hi)
    return dict(edit=edit, original=original, sr=sr, a=a, b=b, n_tokens=n_tokens, starts=starts, lo=lo, hi=hi,
                codes=codes, feats=feats, done=a, prompt=edit.prompt, caption=None)


@torch.no_grad()
def edit_audio(models, plans, seeds, args, device):
    """MaskGIT's in-painting of a batch of edits (edit_plan's), window by window: in each window
    the part of the range not yet redone is masked and decoded (decode_tokens: its schedule runs
    over the masked tokens alone, the known ones stay) from the window's frames and the text, the
    prompt or else the Converter's caption of the range's first window; `seeds`: clip_seed's. Then
    each range is decoded to audio, resampled to the video's own rate and spliced into its own
    sound (splice). Returns per edit the sound (C, S) at its own rate, the rate, the caption (None
    with a prompt), the prompt used and the windows' first tokens."""
    conv, vatt, codec, meta = models.converter, models.audio, models.codec, models.meta
    win, win_frames = round(meta["seconds"] * codec.frame_rate), round(meta["seconds"] * meta["fps"])
    for p, s in zip(plans, seeds):  # each edit's own noise stream, whichever edits share its windows' batch
        p["generator"] = torch.Generator(device).manual_seed(s)
    sampling = RELEASED_CAPTION_SAMPLING if args.caption_sampling else None
    for w in range(max(len(p["starts"]) for p in plans)):
        active = [p for p in plans if w < len(p["starts"])]
        first = [p["starts"][w] - p["lo"] for p in active]  # each window's first token, from lo
        x = torch.stack([window_frames(p["feats"], f * win_frames // win, win_frames) for p, f in zip(active, first)])
        x = x.to(device)
        untold = [j for j, p in enumerate(active) if p["prompt"] is None]
        if untold:  # the Converter's own caption of the range's first window
            captions = conv.caption(x[untold], args.caption_prompt or TEMPLATE, args.caption_max_tokens, sampling)[0]
            for j, caption in zip(untold, captions):
                active[j]["caption"] = active[j]["prompt"] = caption
        todo = [slice(max(p["done"], p["lo"] + f) - p["lo"], min(p["b"], p["lo"] + f + win) - p["lo"])
                for p, f in zip(active, first)]  # the part of each range this window redoes
        for p, t in zip(active, todo):
            p["codes"][:, t] = vatt.config.bins
        codes = torch.stack([p["codes"][:, f: f + win] for p, f in zip(active, first)])
        with autocast(device):  # bf16 on a GPU, float32 elsewhere
            cond, cond_mask, null_cond = text_conditions(conv, vatt.config.condition, x, [p["prompt"] for p in active],
                                                         [p["edit"].negative for p in active])
            codes = decode_tokens(vatt, cond, cond_mask, null_cond, codes, [p["generator"] for p in active],
                                  args.steps, args.guidance_scale, args.temperature, args.top_k, args.mask_temperature)
        for j, (p, f, t) in enumerate(zip(active, first, todo)):
            p["codes"][:, t] = codes[j, :, t.start - f: t.stop - f]
            p["done"] = p["lo"] + t.stop
    results = []
    for p in plans:  # each range decoded to audio (from lo / rate s), resampled, spliced
        new = np.concatenate(list(decode_windows(codec, p["codes"][:, : min(p["hi"], p["n_tokens"]) - p["lo"]])))
        sr, (start, end) = p["sr"], p["edit"].span
        new = resample_audio(new, codec.sample_rate, sr)
        first, last, offset = round(start * sr), round(end * sr), round(p["lo"] / codec.frame_rate * sr)
        new = np.pad(new, (0, max(0, last - offset - len(new))))[first - offset: last - offset]
        results.append(dict(audio=splice(p["original"], new, first, last, sr), rate=sr, caption=p["caption"],
                            prompt=p["prompt"], windows=p["starts"]))
    return results


def edit_clips(args, models, device, encoder, jobs, write, after_batch=None):
    """jobs: [(key, load)], load() -> an Edit. --batch_size edits at a time: each one planned
    (edit_plan) and redone (edit_audio), then write(edit, result, k, info) writes sample k of it.
    A clip that fails to load, plan, edit or write fails alone, with one line. Returns the tally,
    as sample_clips'."""
    tally = dict(failed=[], captions_at_limit=0, done=0)

    def failed(key, e):
        tally["failed"].append(str(e) if str(key) in str(e) else f"{key}: {e}")

    bar = tqdm(total=len(jobs) * args.num_samples, desc="edits", disable=len(jobs) < 2)
    for i in range(0, len(jobs), args.batch_size):
        plans = []
        for key, load in jobs[i: i + args.batch_size]:
            try:
                plans.append(edit_plan(models, encoder, load(), args, device))
            except (ValueError, OSError) as e:  # a bad video or range: this clip alone
                failed(key, e)
        for k in range(args.num_samples if plans else 0):
            names = [Path(p["edit"].key).name for p in plans]
            seeds = [clip_seed(args.seed, k, name) for name in names]
            fresh = [dict(p, codes=p["codes"].clone()) for p in plans]  # edit_audio fills in the codes it gets
            for p, name, seed, result in zip(plans, names, seeds, edit_audio(models, fresh, seeds, args, device)):
                try:
                    write(p["edit"], result, k, {"seed": seed, "seed_from": {"seed": args.seed, "sample": k, "key": name}})
                    tally["done"] += 1
                except (ValueError, OSError) as e:  # a stream the muxer refuses, a full disk: this clip fails
                    failed(p["edit"].key, f"could not write its outputs ({e})")
        bar.update(len(jobs[i: i + args.batch_size]) * args.num_samples)
        if after_batch is not None:
            after_batch()
    bar.close()
    return tally


# -----------------------------------------------------------------------------
# a sampling run: its clips, generated batch by batch, each one's outputs written as it is done

TEXT_OPTIONS = ("prompt", "negative_prompt", "self_prompt")  # the options that give the model text


class Clip(NamedTuple):
    """One item of a sampling run, loaded: its key (a video's path, or a name), its features and
    duration, and its prompt and negative prompt (None = none)."""
    key: str
    feats: torch.Tensor
    duration: float
    prompt: Optional[str]
    negative: Optional[str]


def start_run(args, models, source, text_options=TEXT_OPTIONS):
    """Checks the options that depend on the model (one error line naming `source`, its checkpoint),
    applies --caption_sampling's seed and --compile, and returns the settings every output records."""
    conv = models.converter
    if models.audio.config.condition == "visual" and any(getattr(args, k) for k in text_options):
        sys.exit(f"error: {source}: conditioned on the video alone (VATT-V), it takes no text")
    try:
        window_hop(models.meta["seconds"], args.overlap, models.meta["fps"], models.codec.frame_rate)
    except ValueError as e:
        sys.exit(f"error: --overlap: {e}")
    for name in ("prompt", "negative_prompt", "caption_prompt"):  # the user's own texts are never cut
        text = getattr(args, name)
        if text and conv.prompt_ids(text)[1]:
            sys.exit(f"error: --{name} {text[:40]!r}... is longer than the {conv.max_text_tokens} tokens this "
                     "model accepts")
    if args.caption_sampling:
        torch.manual_seed(args.seed)  # transformers' sampling draws from torch's global generator
    if args.compile:
        models.audio = torch.compile(models.audio)
    settings = {k: getattr(args, k) for k in ("steps", "guidance_scale", "temperature", "top_k", "mask_temperature",
                                              "overlap", "caption_sampling")}
    return dict(settings, caption_prompt=args.caption_prompt or TEMPLATE,
                caption_max_tokens=args.caption_max_tokens or conv.max_text_tokens + 1)


def sample_clips(args, models, device, jobs, write, after_batch=None, cut_prompts=False):
    """jobs: [(key, load)], load() giving a Clip's features, duration, prompt and negative prompt.
    Generates them batch by batch; write(clip, result, k, info) writes sample k of a clip. A clip
    that fails to load, generate or write fails alone, reported once. Returns the tally."""
    tally = dict(failed=[], captions_at_limit=0, done=0)
    bar = tqdm(total=len(jobs) * args.num_samples, desc="videos", disable=len(jobs) < 2)
    for b in range(0, len(jobs), args.batch_size):
        loaded = []
        for key, load in jobs[b: b + args.batch_size]:
            try:
                loaded.append(Clip(key, *load()))
            except (ValueError, OSError) as e:
                tally["failed"].append(f"{key}: {e}" if str(key) not in str(e) else str(e))
        for k in range(args.num_samples):
            if not loaded:
                break
            keys = [Path(c.key).name for c in loaded]  # a video's file name (not its folder), or a clip's name
            seeds = [clip_seed(args.seed, k, key) for key in keys]
            try:
                results = generate(models, [c.feats for c in loaded], [c.duration for c in loaded],
                                   [c.prompt for c in loaded], seeds, args, device,
                                   negatives=[c.negative for c in loaded], cut_prompts=cut_prompts)
            except ValueError as e:  # the batch fails, each of its clips with it
                results = [dict(error=str(e))] * len(loaded)
            for clip, r, seed, key in zip(loaded, results, seeds, keys):
                if "error" in r:  # this clip alone: the rest of the batch is generated
                    tally["failed"].append(f"{clip.key}: {r['error']}")
                    continue
                at_limit = any(r["captions_at_limit"])
                tally["captions_at_limit"] += at_limit
                tally["done"] += 1
                info = {"caption": " | ".join(dict.fromkeys(c for c in r["captions"] if c)) or None,
                        "caption_at_limit": at_limit, "seed": seed,
                        "seed_from": {"seed": args.seed, "sample": k, "key": key}}
                try:
                    write(clip, r, k, info)
                except (ValueError, OSError) as e:  # a stream the muxer refuses, a full disk: this clip fails,
                    tally["failed"].append(f"{clip.key}: could not write its outputs ({e})")  # the rest go on
            bar.update(len(loaded))
            loaded = [c for c, r in zip(loaded, results) if "error" not in r]  # a failure is reported once
        if after_batch is not None:
            after_batch()
    bar.close()
    return tally


def report(tally, n_jobs, caption_max_tokens):
    """What went wrong, at the end of a run. Returns the exit status."""
    if tally["captions_at_limit"]:
        print(f"warning: {tally['captions_at_limit']} captions reached the limit of {caption_max_tokens} "
              "new tokens without ending (--caption_max_tokens)", file=sys.stderr)
    for line in tally["failed"]:
        print(f"failed: {line}", file=sys.stderr)
    if tally["failed"] and n_jobs > 1:  # a single video's failure is its one line
        print(f"{len(tally['failed'])} of {n_jobs} videos failed", file=sys.stderr)
    return 1 if tally["failed"] else 0


def video_paths(video):
    """--video: a folder or a .txt list of videos, or else one video (a missing one fails as such)."""
    paths = list_videos(video) if Path(video).is_dir() or video.endswith(".txt") else [video]
    if not paths:
        sys.exit(f"error: {video}: no videos in it")
    return paths


def output_folder(args, paths):
    """Where the videos' outputs go (None: beside each video), once two videos whose outputs would
    overwrite each other are refused, before any work."""
    out = Path(args.out_dir) if args.out_dir else None
    bases = {}
    for p in paths:
        base = (out or Path(p).parent) / f"{Path(p).stem}.vatt"
        if base in bases:
            sys.exit(f"error: {bases[base]} and {p} would both write {base}.*: rename one, or sample them "
                     "into different --out_dir folders")
        bases[base] = p
    return out


def video_jobs(args, paths, encoder):
    """The videos -> [(path, load)], each video decoded and encoded (by `encoder`, a
    VideoFeatures) when its batch comes; and the output folder."""
    jobs = [(p, lambda p=p: (*encoder(p), args.prompt or None, args.negative_prompt or None)) for p in paths]
    return jobs, output_folder(args, paths)


def write_outputs(path, base, wav, sr, record, n_samples=None):
    """A video's outputs: <base>.wav (`wav`: an array or write_wav's pieces, cut at n_samples),
    <base>.mp4 (the video stream copied, the wav muxed in; .mkv when mp4 cannot hold its codec)
    and <base>.json (`record`)."""
    write_wav(base + ".wav", wav, sr, n_samples)
    record["video_out"] = mux(path, base + ".wav", base)
    if record["video_out"] is None:
        print(f"warning: {path}: neither MP4 nor Matroska can hold its video codec; wrote the wav and json only",
              file=sys.stderr)
    save_json(record, base + ".json")


def sample_videos(args, models, device, paths, encoder=None):
    """A sampling run of the videos at `paths` with these models (sample.py's own checkpoints, or
    tools/official.py's, the authors'; every record names models.files); `encoder`: a
    VideoFeatures to reuse (loaded here when None). Returns sample_clips' tally, the number of
    videos and the settings every output records."""
    checkpoints = models.files
    settings = start_run(args, models, checkpoints.get("audio", "the model"))
    jobs, out = video_jobs(args, paths, encoder or VideoFeatures(models.meta, device))

    def write(clip, result, k, info):  # <video>.vatt.wav, .mp4 (or .mkv), .json (and .steps.json)
        path, sr = Path(clip.key), models.codec.sample_rate
        base = str((out or path.parent) / f"{path.stem}.vatt{f'.{k}' if args.num_samples > 1 else ''}")
        record = {"video": str(path), "caption": info["caption"], "caption_at_limit": info["caption_at_limit"],
                  "prompt": clip.prompt, "negative_prompt": clip.negative, "prompts_used": result["prompts"],
                  "seed": info["seed"], "seed_from": info["seed_from"], "duration": clip.duration, **settings,
                  "checkpoints": checkpoints}
        print(f"{path}: {record['caption']!r}" if record["caption"] else f"{path}")
        if args.caption_only:
            save_json(record, base + ".json")
            return
        if args.save_steps:
            save_steps(base + ".steps.json", result, args.steps)
        # the audio is decoded window by window and written as it goes
        write_outputs(path, base, decode_windows(models.codec, result["codes"]), sr, record, round(clip.duration * sr))

    return sample_clips(args, models, device, jobs, write), len(jobs), settings


def edit_videos(args, models, device, paths, encoder=None):
    """An editing run (--edit) of the videos at `paths`, the same range of each one's own sound
    redone (edit_audio): <video>.vatt.wav at the video's own rate and channels, .mp4, .json.
    Returns edit_clips' tally, the number of videos and the settings every output records."""
    for option in ("caption_only", "self_prompt", "save_steps"):
        if getattr(args, option):
            sys.exit(f"error: --{option} does not go with --edit")
    checkpoints = models.files
    settings = start_run(args, models, checkpoints.get("audio", "the model"))
    out = output_folder(args, paths)
    jobs = [(p, lambda p=p: Edit(p, p, parse_span(args.edit), args.prompt or None, args.negative_prompt or None))
            for p in paths]  # a bad range fails each video with one line naming it

    def write(edit, result, k, info):  # <video>.vatt.wav, .mp4 (or .mkv), .json
        path = Path(edit.key)
        base = str((out or path.parent) / f"{path.stem}.vatt{f'.{k}' if args.num_samples > 1 else ''}")
        record = {"video": str(path), "edit": list(edit.span), "prompt": edit.prompt, "negative_prompt": edit.negative,
                  "caption": result["caption"], "prompt_used": result["prompt"], "windows": result["windows"],
                  "seed": info["seed"], "seed_from": info["seed_from"], **settings, "checkpoints": checkpoints}
        print(f"{path}: {edit.span[0]:g} to {edit.span[1]:g} s redone: {result['prompt']!r}")
        write_outputs(path, base, result["audio"], result["rate"], record)

    tally = edit_clips(args, models, device, encoder or VideoFeatures(models.meta, device), jobs, write)
    return tally, len(jobs), settings


def run(args, models, device):
    """sample_videos (or edit_videos with --edit) of --video, then its report. Returns the exit status."""
    tally, n_videos, settings = (edit_videos if args.edit else sample_videos)(args, models, device,
                                                                             video_paths(args.video))
    return report(tally, n_videos, settings["caption_max_tokens"])


def main(argv=None):
    args = parse_config(Config, PRESETS, argv)
    if not args.video:
        sys.exit("error: give --video FILE|FOLDER|LIST (see --help)")
    try:  # a bad range is refused before the models load
        args.edit and parse_span(args.edit)
    except ValueError as e:
        sys.exit(f"error: {args.video}: {e}")
    device = pick_device(args.device)
    return run(args, load_models(args.ckpt_dir, device), device)


if __name__ == "__main__":
    sys.exit(main())
