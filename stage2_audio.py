"""
Stage 2 of VATT: VATT Audio (paper §3.2), a bidirectional masked audio-token transformer.

    condition  E_lm = Linear(H_lm)       H_lm: the frozen Converter's last-layer hidden states
    audio      E_a^M = Linear(sum over the L = 4 codec levels of codebook[level, token])
               (each level has its own learned MASK vector in place of a codebook entry)
    Dec(Concat(E_lm, E_a^M)) -> the audio positions -> L parallel Linear heads -> token logits
    loss: cross-entropy on the masked tokens only (eq. 2)

Sampling (iterative parallel decoding, §3.2.2) is sample.py's. Where this file departs from the
paper and from the released code: the README's "Paper notes".

    python stage2_audio.py --preset=toy                                   # the toy world (CPU)
    python stage2_audio.py --preset=gemma-2b --converter=out/gemma-2b/stage1.pt   # one GPU
    torchrun --nproc_per_node=4 stage2_audio.py --preset=llama-2-7b       # many GPUs
    # fine-tuning: from a stage2.pt of ours, or the authors' .ckpt once converted (tools/official.py convert)
    python stage2_audio.py --preset=gemma-2b --init_from=out/released/stage2.safetensors --out_dir=out/mine
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
from einops import rearrange, reduce

from codec import load_codec
from extract_features import train_val_split
from stage1_caption import INSTRUCTIONS, load_converter, prefill_flops
from utils import (TrainingLog, adamw, all_mean, autocast, data_parallel, get_lr, optimizer_step, parse_config,
                   pick_device, print0, print_plan, read_checkpoint, read_init_checkpoint, record_timing, setup_ddp,
                   split_batch, start_checkpoints, step_batches, to_device, train_loop, unwrap, weights_digest,
                   weights_dtype)

# -----------------------------------------------------------------------------
# VATT Audio (§3.2.1): [condition ; audio tokens] through one bidirectional transformer


@dataclass
class ModelConfig:
    """The network (a checkpoint stores it as model_config)."""
    cond_dim: int  # width of the condition: the LLM's hidden size
    n_q: int  # codec levels L
    bins: int  # entries per codebook; index `bins` is MASK
    codebook_dim: int  # width of the codec's RVQ vectors
    dim: int
    n_multiway: int
    n_plain: int
    n_head: int
    head_dim: int
    dropout: float
    max_len: int  # length of the sin-cos position table (condition + audio tokens)
    architecture: str = "vatt"  # or "cross-attn": Table 4's VATT-Cross-Attn (CrossAttnAudio)
    condition: str = "llm"  # the Converter's states, or "visual": Table 4's VATT-V (audio_condition)
    head_order: str = "natural"  # or "released": the authors' weights' (ReleasedHeadOrder)


SHUT = -torch.finfo(torch.float32).max / 2  # the attention bias of a padded key: far below any score


def sincos_table(n, dim):
    """Fixed 1-D sin-cos positions (MAE style): first half sin(p w_i), second half cos(p w_i),
    w_i = 10000^(-i / (dim/2)), computed in float32 as the released code does."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angle = torch.arange(n, dtype=torch.float64)[:, None] * omega[None].float().double()
    return torch.cat([torch.sin(angle), torch.cos(angle)], 1).float()  # (n, dim)


def alibi_slopes(n_head):
    """ALiBi's geometric head slopes (Press et al. 2022): 2^(-8/n), 2^(-16/n), ...; for a head
    count that is not a power of two, the closest power's slopes plus every other slope of the
    next power's, as in the ALiBi reference code."""
    def power_of_2(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]
    p = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(power_of_2(p) + power_of_2(2 * p)[0::2][: n_head - p])


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_head * config.head_dim
        self.n_head, self.dropout = config.n_head, config.dropout
        self.to_q, self.to_k, self.to_v = (nn.Linear(config.dim, inner, bias=False) for _ in range(3))
        self.to_out = nn.Linear(inner, config.dim, bias=False)

    def forward(self, x, bias, pad):
        q, k, v = (rearrange(f(x), "b l (h d) -> b h l d", h=self.n_head) for f in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        y = rearrange(y, "b h l d -> b l (h d)").masked_fill(pad[..., None], 0.0)  # padded rows stay 0
        return self.to_out(y)


def feed_forward(config):
    return nn.Sequential(nn.Linear(config.dim, 4 * config.dim, bias=False), nn.GELU(), nn.Dropout(config.dropout),
                         nn.Linear(4 * config.dim, config.dim, bias=False))


def per_modality(modules, x, split):
    """Multiway (BEiT-3 style): module 0 for condition tokens [0, split), module 1 for audio tokens."""
    if len(modules) == 1:
        return modules[0](x)
    return torch.cat([modules[0](x[:, :split]), modules[1](x[:, split:])], 1)


class Block(nn.Module):
    """Pre-LN transformer block; `multiway` gives condition and audio tokens their own LayerNorms
    and FFNs while they share one self-attention."""

    def __init__(self, config, multiway):
        super().__init__()
        n = 2 if multiway else 1
        self.norm1 = nn.ModuleList(nn.LayerNorm(config.dim) for _ in range(n))
        self.attn = Attention(config)
        self.norm2 = nn.ModuleList(nn.LayerNorm(config.dim) for _ in range(n))
        self.ff = nn.ModuleList(feed_forward(config) for _ in range(n))

    def forward(self, x, bias, pad, split):
        x = x + self.attn(per_modality(self.norm1, x, split), bias, pad)
        return x + per_modality(self.ff, per_modality(self.norm2, x, split), split)


class VATTAudio(nn.Module):
    """Dec is the released code's (the paper says "self-attention layers"): multiway layers, a
    LayerNorm per modality, then plain layers; ALiBi plus fixed sin-cos positions, the audio's after
    the condition's."""

    def __init__(self, config: ModelConfig, codebooks=None):
        super().__init__()
        self.build_inputs(config, codebooks)
        self.multiway_layers = nn.ModuleList(Block(config, multiway=True) for _ in range(config.n_multiway))
        self.multiway_norm = nn.ModuleList([nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)])
        self.plain_layers = nn.ModuleList(Block(config, multiway=False) for _ in range(config.n_plain))
        self.final_norm = nn.LayerNorm(config.dim)
        self.heads = nn.ModuleList(nn.Linear(config.dim, config.bins, bias=False) for _ in range(config.n_q))

    def build_inputs(self, config, codebooks):
        """The input side: the codec's RVQ codebooks, frozen (a buffer saved with the model: a checkpoint
        is self-contained), a learned MASK vector per level, the audio and condition projections, the
        sin-cos positions (saved: the authors' weights keep their own), modality vectors, ALiBi slopes."""
        self.config = config
        self.register_buffer("codebooks", codebooks if codebooks is not None
                             else torch.zeros(config.n_q, config.bins, config.codebook_dim))
        self.mask_embed = nn.Parameter(torch.randn(config.n_q, config.codebook_dim) * 0.02)
        self.audio_proj = nn.Linear(config.codebook_dim, config.dim)
        self.cond_proj = nn.Linear(config.cond_dim, config.dim)
        self.register_buffer("pos", sincos_table(config.max_len, config.dim))
        self.modality_cond = nn.Parameter(torch.randn(config.dim) * 0.02)
        self.modality_audio = nn.Parameter(torch.randn(config.dim) * 0.02)
        self.register_buffer("slopes", alibi_slopes(config.n_head), persistent=False)
        self.input_dropout = nn.Dropout(config.dropout)

    def embed_audio(self, codes):
        """(B, L, T) tokens, MASK = bins -> (B, T, codebook_dim): the sum of each level's vector."""
        tables = torch.cat([self.codebooks, self.mask_embed[:, None]], 1)  # (L, bins+1, c)
        offsets = torch.arange(self.config.n_q, device=codes.device)[:, None] * (self.config.bins + 1)
        vectors = F.embedding(codes + offsets, tables.flatten(0, 1))  # (B, L, T, c)
        return reduce(vectors, "b l t c -> b t c", "sum")

    def embed_condition(self, cond, null_cond):
        """E_lm: (B, Lc, cond_dim) LLM states -> (B, Lc, dim); the null condition (null_cond, of
        classifier-free guidance) is zeros, then positions and modality as usual."""
        e_lm = self.cond_proj(cond)
        if null_cond is not None:
            e_lm = e_lm.masked_fill(null_cond[:, None, None], 0.0)
        return e_lm + self.pos[:cond.shape[1]] + self.modality_cond

    def alibi(self, n, device):
        """ALiBi's bias -|i - j| * slope per head, (H, n, n)."""
        idx = torch.arange(n, device=device)
        return -(idx[None, :] - idx[:, None]).abs() * self.slopes[:, None, None]

    def logits(self, x):
        """(B, T, dim) audio states -> (B, L, T, bins): head l predicts level l."""
        return torch.stack([head(x) for head in self.heads], 1)

    def forward(self, codes, cond, cond_mask, null_cond=None):
        """codes (B, L, T) with MASK where unknown; cond (B, Lc, cond_dim) LLM states; cond_mask
        (B, Lc) 1 = real token; null_cond (B,) bool selects the null condition per sample.
        Returns logits (B, L, T, bins): logits[b, l, t] predicts codes[b, l, t]."""
        B, _, T = codes.shape
        Lc = cond.shape[1]
        e_lm = self.embed_condition(cond, null_cond)  # (B, Lc, dim)
        e_a = self.audio_proj(self.embed_audio(codes)) + self.pos[Lc:Lc + T] + self.modality_audio  # (B, T, dim)
        x = self.input_dropout(torch.cat([e_lm, e_a], 1))  # (B, Lc+T, dim)
        # every position attends to every other (bidirectional), with ALiBi; padded condition keys shut off
        pad = torch.cat([cond_mask == 0, torch.zeros(B, T, dtype=torch.bool, device=codes.device)], 1)  # (B, Lc+T)
        bias = self.alibi(Lc + T, codes.device)[None].masked_fill(pad[:, None, None, :], SHUT)  # (B, H, Lc+T, Lc+T)
        bias = kernel_ready(bias, x)  # laid out for the fused attention kernel (below the banner)
        for block in self.multiway_layers:
            x = block(x, bias, pad, Lc)
        x = per_modality(self.multiway_norm, x, Lc)
        for block in self.plain_layers:
            x = block(x, bias, pad, Lc)
        return self.logits(self.final_norm(x)[:, Lc:])  # the audio positions only


@torch.no_grad()
def audio_condition(converter, feats, prompts, condition="llm"):
    """The condition VATT Audio reads: the Converter's last-layer states over [video ; prompt]
    (§3.2.1), or, for VATT-V (Table 4: no LLM), the frozen VATT Projector's video tokens alone,
    exactly what the LLM would have read, so the ablation removes the LLM and nothing else (VATT
    Audio's cond_proj is the trainable Linear over them). Returns (B, Lc, cond_dim) float32 and the
    (B, Lc) mask (1 = real token)."""
    if condition == "visual":
        x = converter.video_embeds(feats).float()  # (B, N_v, d_lm)
        return x, torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
    return converter.condition(feats, prompts, cut=True)


# -----------------------------------------------------------------------------
# training (§3.2.2): a masking ratio per sample, the masked tokens predicted, eq. 2


def truncnorm_ratios(n, generator, mean, std, low=0.5, high=1.0):
    """§3.2.2's masking ratios: n draws of Normal(mean, std) truncated to [low, high], by inverting
    the CDF: u uniform between Phi(a) and Phi(b) -> mean + std * Phi^-1(u)."""
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    a, b = phi((low - mean) / std), phi((high - mean) / std)
    u = a + (b - a) * torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    return (mean + std * torch.special.ndtri(u)).clamp(low, high).float()


def training_ratios(dist, n, generator, mean, std, progress=0.0):
    """A training run's n ratios: §3.2.2's truncated normal ("truncnorm"), or one of appendix A's
    alternatives (Table 5): "uniform", r ~ U(0, 1); "arccos", r = cos(pi/2 u) with u ~ U(0, 1),
    MaskGIT's schedule as a distribution (density 2 / (pi sqrt(1 - r^2)), mean 2 / pi); "sine",
    the truncated normal with its mean rising over training, m = 0.25 + 0.7 sin(pi/2 progress)
    with progress = step / max_steps: the paper's range [0.25, 0.95] along the authors' (unused)
    gaussian_mean_cosine_step. The paper gives that one no bounds: they stay §3.2.2's, which the
    authors' sampler fixes."""
    if dist == "truncnorm":
        return truncnorm_ratios(n, generator, mean, std)
    if dist == "sine":
        return truncnorm_ratios(n, generator, 0.25 + 0.7 * math.sin(math.pi / 2 * progress), std)
    u = torch.rand(n, generator=generator, device=generator.device)
    return torch.cos(math.pi / 2 * u) if dist == "arccos" else u


def random_mask(ratios, shape, generator):
    """Per sample, exactly max(1, round(r * N)) of its N = L*T tokens, uniformly at random.
    Returns a bool mask of `shape` (B, L, T). Exact counts (not Bernoulli draws) never mask
    zero tokens, which would make the loss 0/0."""
    B, N = shape[0], shape[1] * shape[2]
    n_masked = (ratios * N).round().clamp(min=1)  # (B,)
    noise = torch.rand(B, N, generator=generator, device=generator.device)
    rank = noise.argsort(-1).argsort(-1)  # a random permutation per row
    return (rank < n_masked[:, None]).view(shape)


def training_draw(n, shape, generator, mask_mean, mask_std, cond_dropout, mask_dist="truncnorm", progress=0.0,
                  spans=None):
    """What §3.2.2 hides from a batch of n samples whose tokens have `shape` (L, T): per sample a
    ratio r (training_ratios) and exactly max(1, round(r L T)) masked tokens, and, with probability
    cond_dropout, the null condition (classifier-free guidance: p(tokens | no condition) too).
    `spans` (n, 2), [start, stop) in tokens (start = stop: none): in-filling samples (this
    project's, for editing), whose every level is masked over their span and nowhere else.
    Returns mask (n, L, T), null_cond (n,) bool."""
    ratios = training_ratios(mask_dist, n, generator, mask_mean, mask_std, progress)
    mask = random_mask(ratios, (n,) + tuple(shape), generator)
    null_cond = torch.rand(n, generator=generator, device=generator.device) < cond_dropout
    if spans is not None:
        spans, t = spans.to(mask.device), torch.arange(shape[-1], device=mask.device)
        span = ((t >= spans[:, :1]) & (t < spans[:, 1:]))[:, None, :].expand_as(mask)  # (n, L, T)
        mask = torch.where((spans[:, 1] > spans[:, 0])[:, None, None], span, mask)
    return mask, null_cond


def masked_loss(logits, codes, mask, label_smoothing):
    """Eq. 2: the cross-entropy over the masked positions only (label smoothing as the released
    code trains); logits (B, L, T, V), codes and mask (B, L, T)."""
    return F.cross_entropy(logits[mask], codes[mask], label_smoothing=label_smoothing)


def masked_token_loss(model, mask_id, cond, cond_mask, codes, generator, cfg, progress=0.0, spans=None, context=None):
    """One batch of §3.2.2's training, to eq. 2: cond (B, Lc, cond_dim) and cond_mask (B, Lc), the
    Converter's states over [video ; prompt] (audio_condition); codes (B, L, T) the clips' tokens;
    mask_id the MASK token (ModelConfig.bins). The masks and null conditions are drawn from
    `generator` (training_draw with cfg's mask_mean, mask_std, mask_dist and cond_dropout;
    progress = step / max_steps), VATT Audio predicts every token of the masked sequence, and eq. 2
    scores the masked ones (cfg.label_smoothing). In-filling samples (`spans`, for editing) may be
    shown another clip's tokens around their span (`context`, (B, L, T)), as an edit's text
    may describe a span that sounds unlike its surroundings."""
    mask, null_cond = training_draw(len(codes), codes.shape[1:], generator, cfg.mask_mean, cfg.mask_std,
                                    cfg.cond_dropout, cfg.mask_dist, progress, spans)
    known = codes if context is None else context
    logits = model(known.masked_fill(mask, mask_id), cond, cond_mask, null_cond)
    return masked_loss(logits.float(), codes, mask, cfg.label_smoothing)


# -----------------------------------------------------------------------------
# Table 4's ablations. VATT-V changes the condition (audio_condition above); VATT-Cross-Attn the decoder:


class CrossAttention(Attention):
    """Vaswani et al.'s encoder-decoder attention: queries from the audio, keys and values from the condition."""

    def forward(self, x, memory, bias):
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.n_head)
        k, v = (rearrange(f(memory), "b l (h d) -> b h l d", h=self.n_head) for f in (self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(y, "b h l d -> b l (h d)"))


class DecoderBlock(nn.Module):
    """Pre-LN: self-attention over the audio tokens, cross-attention to the condition, FFN."""

    def __init__(self, config):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(config.dim), Attention(config)
        self.norm2, self.cross_attn = nn.LayerNorm(config.dim), CrossAttention(config)
        self.norm3, self.ff = nn.LayerNorm(config.dim), feed_forward(config)

    def forward(self, a, memory, self_bias, cross_bias, no_pad):
        a = a + self.self_attn(self.norm1(a), self_bias, no_pad)
        a = a + self.cross_attn(self.norm2(a), memory, cross_bias)
        return a + self.ff(self.norm3(a))


class CrossAttnAudio(VATTAudio):
    """VATT-Cross-Attn: VATT Audio with its decoder replaced by interleaved self- and cross-attention
    blocks (the straightforward design §3.2.1 improves on). Everything else is VATT Audio's (inputs,
    positions, modality vectors, null condition, ALiBi: audio-audio in self-attention, audio-condition
    in cross-attention, the heads); the condition goes through no layer, it is the memory every
    cross-attention reads. Budget: n_multiway + n_plain blocks of 16 dim^2 weights (attention 4 + 4,
    FFN 8) against a multiway block's 4 + 2 x 8 and a plain one's 4 + 8: VATT Audio's weights exactly
    when n_multiway = n_plain, as in every preset. Training and sample.decode_tokens run it unchanged."""

    def __init__(self, config: ModelConfig, codebooks=None):
        nn.Module.__init__(self)
        self.build_inputs(config, codebooks)  # exactly VATT Audio's input side
        self.cond_norm = nn.LayerNorm(config.dim)  # the memory, normalised as a pre-LN encoder's output is
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_multiway + config.n_plain))
        self.norm = nn.LayerNorm(config.dim)
        self.heads = nn.ModuleList(nn.Linear(config.dim, config.bins, bias=False) for _ in range(config.n_q))

    def forward(self, codes, cond, cond_mask, null_cond=None):
        """As VATTAudio.forward: the same inputs, logits (B, L, T, bins)."""
        B, _, T = codes.shape
        Lc = cond.shape[1]
        memory = self.cond_norm(self.input_dropout(self.embed_condition(cond, null_cond)))  # (B, Lc, dim)
        e_a = self.audio_proj(self.embed_audio(codes)) + self.pos[Lc:Lc + T] + self.modality_audio
        a = self.input_dropout(e_a)  # (B, T, dim)
        bias = self.alibi(Lc + T, codes.device)  # (H, Lc+T, Lc+T): VATT Audio's
        self_bias = kernel_ready(bias[None, :, Lc:, Lc:], a)  # (1, H, T, T)
        shut = (cond_mask == 0)[:, None, None, :]  # padded condition keys
        cross_bias = kernel_ready(bias[None, :, Lc:, :Lc].masked_fill(shut, SHUT), a)  # (B, H, T, Lc)
        no_pad = torch.zeros(B, T, dtype=torch.bool, device=codes.device)
        for block in self.blocks:
            a = block(a, memory, self_bias, cross_bias, no_pad)
        return self.logits(self.norm(a))


# =============================================================================
# Running it: the configuration, the authors' head order, precision, data, the training loop, checkpoints


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"
    features_dir: str = "data/toy/features"
    converter: str = "out/toy/stage1.pt"  # the trained stage-1 checkpoint (frozen here)
    out_dir: str = "out/toy"  # stage2.pt lands here
    # the network at the toy's size (the paper's: PAPER_SIZE); input widths: the Converter's and codec's
    dim: int = 128
    n_multiway: int = 2
    n_plain: int = 2
    n_head: int = 4
    head_dim: int = 32  # the released code fixes 64, whatever the width
    dropout: float = 0.0  # none on the toy: it has data to spare, and CPU dropout is slow
    max_len: int = 1000  # length of the sin-cos position table (condition + audio tokens)
    # Table 4's ablations: the decoder, "vatt" (§3.2.1) or "cross-attn" (VATT-Cross-Attn); the
    # condition, "llm" (the Converter's states) or "visual" (VATT-V: no LLM, no text; audio_condition)
    architecture: str = "vatt"
    condition: str = "llm"
    # masking (§3.2.2): ratio r ~ Normal(mask_mean, mask_std) truncated to [0.5, 1], one draw per
    # sample; the paper's (0.75, 0.25), the toy preset's (1.0, 0.05) (docs/ablations.md)
    mask_mean: float = 0.75
    mask_std: float = 0.25
    # the ratio's distribution: "truncnorm" (above), or appendix A's alternatives (Table 5,
    # training_ratios): "uniform", "arccos", "sine" (the truncated normal, its mean rising over training)
    mask_dist: str = "truncnorm"
    cond_dropout: float = 0.1  # per-sample probability of the null condition (classifier-free guidance)
    label_smoothing: float = 0.1  # as the released code
    # the prompt of a training sample: "mix", the ground-truth caption with p = caption_prob, else
    # one of the ten instructions (one model serves both generation modes of §3.2); or the released
    # two runs, "templates" then "captions" with --init_from (a clip without a caption gets an
    # instruction), which on the toy lose the instruction-prompted modes (docs/toy-tuning.md)
    prompts: str = "mix"
    caption_prob: float = 0.7
    # the released training augmentation (training batches only; one uniform draw u per sample):
    # u < splice_prob and the prompt an instruction: the clip up to a cut at 1/10 .. 8/10 of its
    # length, the rest from another clip (released: 1..8 s of 10 s, so the toy's 2-s clips get the
    # same fractions); else u < splice_prob + roll_prob: frames and tokens rolled together by whole
    # frames. The released values
    splice_prob: float = 0.5
    roll_prob: float = 0.1
    # in-filling (this project's, for sample.py --edit): the share of training samples masked over
    # one span of 1/10 to 1/2 of the clip instead (MaskGIT's and VoiceBox's in-filling), shown
    # another clip's tokens around the span when their prompt is their caption (docs/toy-tuning.md)
    span_prob: float = 0.0
    # optimisation: AdamW, linear warm-up, cosine decay to lr/10 (the toy's batch: docs/toy-tuning.md)
    batch_size: int = 32  # the global batch: samples per optimizer step, all processes together
    # the most samples a process runs at once (0: its whole share); gradients accumulate. Each
    # micro-batch draws its own masks, so a run is the same on any number of processes at one micro_batch
    micro_batch: int = 0
    lr: float = 1e-3
    warmup_steps: int = 100
    max_steps: int = 2000
    weight_decay: float = 1e-6  # as the released code
    grad_clip: float = 1.0
    max_bad_steps: int = 10  # a step whose gradient is not finite is skipped; this many in a row stop the run
    val_fraction: float = 0.05  # held-out slice of the TRAIN split (the test split is never seen)
    eval_interval: int = 500  # validate and save stage2.pt (the one before kept as stage2.prev.pt) every this many steps
    save_every_min: float = 30.0  # also save every this many minutes between validations (0: only then)
    stop_at: int = 0  # stop early at this step (saved); a later run resumes it as if never stopped (0: max_steps)
    eval_batches: int = 4
    log_interval: int = 25  # print the training loss, speed and memory every this many steps
    tensorboard: bool = False  # also log to out_dir/tensorboard (pip install tensorboard)
    workers: int = 0  # DataLoader processes reading clips ahead of the GPU (0: the main process, the toy's)
    compile: bool = False  # torch.compile VATT Audio for training (static shapes; for a GPU: minutes to compile)
    resume: bool = True  # continue from out_dir/stage2.pt if it exists
    # fine-tuning: start from this trained stage2.pt (ours, or the authors' converted by tools/official.py)
    # with a fresh optimizer at step 0; the network comes from it. A run that has saved its own
    # out_dir/stage2.pt resumes from that instead.
    init_from: str = ""
    features_layout: str = "auto"  # "ours" (extract_features.py), "authors" (their VGGSound download), or auto
    skip_bad_files: bool = False  # leave out (and list) clips whose files fail the check before step 0, instead of stopping
    recheck_files: bool = False  # scan every feature value again, even for a training set that passed before
    strict: bool = False  # a train clip without its files stops the run (default: left out, with a warning)
    seed: int = 1337
    device: str = "auto"


PAPER_SIZE = dict(dim=1024, n_multiway=12, n_plain=12, n_head=16, head_dim=64, dropout=0.1, lr=2e-4, batch_size=64,
                  micro_batch=16, workers=4, warmup_steps=1000, max_steps=300000, eval_interval=2000,
                  data_json="vggsound/v2a_instruction.json", features_dir="vggsound/features")
PRESETS = {
    "toy": dict(mask_mean=1.0, mask_std=0.05, span_prob=0.2),
    "gemma-2b": dict(PAPER_SIZE, converter="out/gemma-2b/stage1.pt", out_dir="out/gemma-2b"),
    "llama-2-7b": dict(PAPER_SIZE, converter="out/llama-2-7b/stage1.pt", out_dir="out/llama-2-7b"),
}
CHOICES = {"mask_dist": ("truncnorm", "uniform", "arccos", "sine"), "architecture": ("vatt", "cross-attn"),
           "condition": ("llm", "visual"), "prompts": ("mix", "templates", "captions")}

# the settings of a Config that make up the network, not its training: --init_from's checkpoint sets them
ARCHITECTURE = ("dim", "n_multiway", "n_plain", "n_head", "head_dim", "max_len", "architecture", "condition")


def model_config(cfg, cond_dim, codec, head_order="natural"):
    """The network of a stage-2 Config for an LLM of width cond_dim and a codec's token tables."""
    return ModelConfig(cond_dim=cond_dim, n_q=codec.n_q, bins=codec.bins, codebook_dim=codec.dim, dropout=cfg.dropout,
                       head_order=head_order, **{key: getattr(cfg, key) for key in ARCHITECTURE})


def released_order(logits):
    """Natural-order logits (B, K, T, V) -> the order the authors' weights were trained in. Their
    forward flattens the heads as "b k t d -> b d (k t)" but their targets and their sampler as
    "b c t -> b (t c)", so flat index j = k T + t (head floor(j / T) at position j mod T) stands for
    codebook j mod K at time floor(j / K): out[b, c, t] is their prediction for codebook c at time
    t. A pure permutation: argmax, softmax and sampling commute with it."""
    return rearrange(rearrange(logits, "b k t v -> b (k t) v"), "b (t c) v -> b c t v", c=logits.shape[1])


class ReleasedHeadOrder(VATTAudio):
    """VATT Audio with the authors' weights (ModelConfig.head_order "released", kept when they are
    fine-tuned): its logits re-indexed into what those weights mean (released_order), so that the
    sampler and eq. 2 read logits[b, c, t] as codebook c at time t."""

    def logits(self, x):
        return released_order(super().logits(x))


def audio_model(config: ModelConfig, codebooks=None):
    """VATT Audio (in the authors' head order for their weights), or Table 4's VATT-Cross-Attn, as config names."""
    if config.architecture == "cross-attn":
        return CrossAttnAudio(config, codebooks)
    return (ReleasedHeadOrder if config.head_order == "released" else VATTAudio)(config, codebooks)


def kernel_ready(bias, like):
    """An attention bias (..., L, L') for scaled_dot_product_attention's memory-efficient kernel:
    in the dtype attention runs in (under bf16 autocast the kernel would otherwise cast it from
    float32 again in every layer), its rows a multiple of 8 elements apart (L' padded, then sliced
    off; the kernel would otherwise pad a copy in every layer, each kept for the backward)."""
    device = like.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else like.dtype
    width = bias.shape[-1]
    out = torch.empty(*bias.shape[:-1], -(-width // 8) * 8, dtype=dtype, device=bias.device)[..., :width]
    return out.copy_(bias)


def frozen(model, device):
    """VATT Audio for sampling: on CUDA its Linear weights cast to bf16 once, the very cast bf16 autocast
    would make in every forward (it caches casts only of weights that require grad); LayerNorms,
    codebooks and positions stay float32, as autocast keeps them."""
    device = torch.device(device)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(weights_dtype(device))
    return model.to(device).eval().requires_grad_(False)


# checkpoints written before the layer stacks were named for what they are
OLD_NAMES = (("encoder_norm.", "multiway_norm."), ("decoder_norm.", "final_norm."), ("encoder.", "multiway_layers."),
             ("decoder.", "plain_layers."))


def model_weights(ckpt):
    """A stage-2 checkpoint's weights under today's names."""
    def renamed(key):
        old = next((o for o, _ in OLD_NAMES if key.startswith(o)), None)
        return key if old is None else dict(OLD_NAMES)[old] + key[len(old):]
    return {renamed(k): v for k, v in ckpt["model"].items()}


def load_vatt_audio(ckpt_path, device):
    """A stage2.pt, or the stage2.safetensors `tools/official.py convert` writes -> (the frozen model, the checkpoint)."""
    ckpt = read_checkpoint(ckpt_path, "vatt-audio", " (train it with stage2_audio.py)")
    model = audio_model(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(model_weights(ckpt))
    return frozen(model, device), ckpt


# -----------------------------------------------------------------------------
# a training step's data: the same global batch on every rank, each rank loading its share


def draw_batch(files, items, r, cfg, rank, world, augment=False):
    """A global batch of cfg.batch_size samples drawn from `r` (the same draw on every rank), of
    which this rank loads its share: the clips' names, and (features (S, N, D), prompts, tokens
    (S, L, T)), prompts as cfg.prompts says, with `augment` splice and roll."""
    n = cfg.batch_size
    mine = slice(rank * n // world, (rank + 1) * n // world)
    pick = r.choice(len(items), n)[mine]
    p_caption = {"mix": cfg.caption_prob, "templates": 0.0, "captions": 1.0}[cfg.prompts]
    use_caption = (r.random(n) < p_caption)[mine]
    instr = r.integers(len(INSTRUCTIONS), size=n)[mine]
    use_caption &= np.array([bool(items[i][1]) for i in pick], dtype=bool)  # no caption: an instruction
    prompts = [items[i][1] if c else INSTRUCTIONS[j] for i, c, j in zip(pick, use_caption, instr)]
    feats, codes = zip(*(files.load_clip(items[i][0], tokens=True) for i in pick))
    feats, codes = torch.stack(feats), torch.stack(codes)
    if augment and cfg.splice_prob + cfg.roll_prob > 0:
        feats, codes = splice_and_roll(files, items, feats, codes, ~use_caption, r, cfg, n, mine)
    spans = context = None
    if augment and cfg.span_prob > 0:
        spans, context = infill_spans(files, items, codes, use_caption, r, cfg, n, mine)
    return [items[i][0] for i in pick], (feats, prompts, codes, spans, context)


def splice_and_roll(files, items, feats, codes, instructed, r, cfg, n, mine):
    """The released training augmentation (Config.splice_prob, roll_prob): video and tokens (T / N a
    frame) cut or rolled at the same instant, drawn for the global batch's `n`, this rank's `mine` kept."""
    n_frames, n_tokens = feats.shape[1], codes.shape[2]
    if n_tokens % n_frames:
        sys.exit(f"error: {n_tokens} tokens over {n_frames} frames: splice and roll need a whole number a frame")
    per_frame = n_tokens // n_frames
    u, partner = r.random(n)[mine], r.choice(len(items), n)[mine]
    tenth, shift = r.integers(1, 9, size=n)[mine], r.integers(-n_frames, n_frames, size=n)[mine]
    for b in range(len(feats)):  # feats and codes are draw_batch's own stacks: changed in place
        if u[b] < cfg.splice_prob and instructed[b]:  # the clip up to the cut, then another clip
            other_feats, other_codes = files.load_clip(items[partner[b]][0], tokens=True)
            at = round(n_frames * tenth[b] / 10)
            feats[b, at:], codes[b, :, at * per_frame:] = other_feats[at:], other_codes[:, at * per_frame:]
        elif cfg.splice_prob <= u[b] < cfg.splice_prob + cfg.roll_prob:  # a consistent time shift
            feats[b], codes[b] = feats[b].roll(int(shift[b]), 0), codes[b].roll(int(shift[b]) * per_frame, 1)
    return feats, codes


def infill_spans(files, items, codes, captioned, r, cfg, n, mine):
    """The in-filling samples of a global batch of n (Config.span_prob; this rank's `mine` kept):
    a span of 1/10 to 1/2 of the clip each, and the tokens around it, another clip's when the
    prompt is the caption (the text, not the sound around, then says what the span sounds like),
    its own otherwise. Returns the global batch's spans (n, 2), [start, stop) in tokens (none:
    start = stop), and this rank's context (S, L, T)."""
    n_tokens = codes.shape[-1]
    u, donor = r.random(n), r.choice(len(items), n)[mine]
    width = (r.uniform(0.1, 0.5, size=n) * n_tokens).astype(int)
    start = (r.random(n) * (n_tokens - width + 1)).astype(int)
    spans = torch.from_numpy(np.stack([start, start + width], 1) * (u < cfg.span_prob)[:, None])
    context = codes.clone()
    for b in np.flatnonzero((u[mine] < cfg.span_prob) & captioned):
        context[b] = files.load_clip(items[donor[b]][0], tokens=True)[1]
    return spans, context


def step_data(files, items, cfg, rank, world, step):
    """Training step `step`'s data, a function of (seed, step) alone, so that a resumed run replays
    exactly and the DataLoader's workers change nothing: the seeds of its masks and of dropout, and
    this rank's share of the global batch (draw_batch), augmented."""
    rng = np.random.default_rng([cfg.seed, step])
    mask_seed, dropout_seed = int(rng.integers(2**62)), int(rng.integers(2**62))
    names, batch = draw_batch(files, items, rng, cfg, rank, world, augment=True)
    return dict(mask_seed=mask_seed, dropout_seed=dropout_seed, names=names, batch=batch)


# -----------------------------------------------------------------------------
# a step: the global batch's loss, micro-batch by micro-batch on each rank, and the optimizer


def mask_generator(seed, first, device):
    """The generator of masked_token_loss's draw for the micro-batch whose first sample is sample
    `first` of the global batch: seeded by the step's seed plus that index, so a micro-batch draws
    the same masks on any rank; on the GPU where the masks are used (the CPU elsewhere)."""
    return torch.Generator(device if device.type == "cuda" else "cpu").manual_seed(seed + first)


def masked_counts(shape, seed, cfg, micro, progress, device, spans=None):
    """The masked tokens of every micro-batch of the global batch (`spans`: its in-filling spans):
    eq. 2's mean runs over the whole batch's masked tokens, so each micro-batch's loss is scaled
    by its count over that total before its backward. Drawn ahead, from the generators
    masked_token_loss will draw from (a draw costs nothing beside a forward)."""
    return [training_draw(micro, shape, mask_generator(seed, first, device), cfg.mask_mean, cfg.mask_std,
                          cfg.cond_dropout, cfg.mask_dist, progress, None if spans is None else spans[first:first + micro]
                          )[0].sum() for first in range(0, cfg.batch_size, micro)]


def batch_loss(model, mask_id, converter, batch, seed, cfg, plan, rank, world, progress, device, backward=False):
    """The loss of one global batch (cfg.batch_size samples; this rank holds its share in `batch`),
    plan[0] samples at a time, with the masks drawn from `seed`. `backward`: each micro-batch's
    gradients too, synced over ranks on the last. Returns this rank's part of the global mean
    (all_mean over ranks gives the mean)."""
    feats, prompts, codes, spans, context = batch
    micro, accum = plan
    counts = masked_counts(codes.shape[1:], seed, cfg, micro, progress, device, spans)
    n_per_rank = sum(counts) / world  # DDP averages the ranks' gradients
    total = 0.0
    for m in range(accum):
        part, first = slice(m * micro, (m + 1) * micro), rank * len(codes) + m * micro
        if backward and world > 1:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = m == accum - 1
        with autocast(device):  # bf16 on a GPU, float32 elsewhere
            cond, cond_mask = audio_condition(converter, to_device(feats[part], device), prompts[part], cfg.condition)
            loss = masked_token_loss(model, mask_id, cond, cond_mask, to_device(codes[part], device),
                                     mask_generator(seed, first, device), cfg, progress,
                                     None if spans is None else spans[first:first + micro],
                                     None if context is None else to_device(context[part], device))
        loss = loss * counts[first // micro] / n_per_rank
        if backward:
            loss.backward()
        total += loss.detach()
    return total


def train_step(ddp_model, converter, optimizer, data, cfg, plan, step, rank, world, device):
    """One optimizer step on step_data's `data` (optimizer_step: skipped when the gradient is not
    finite). Returns the training loss, the gradient norm and whether the step was applied."""
    torch.manual_seed(data["dropout_seed"] + rank)  # dropout: one stream per rank
    for group in optimizer.param_groups:
        group["lr"] = get_lr(step, cfg)
    train_loss = batch_loss(ddp_model, unwrap(ddp_model).config.bins, converter, data["batch"], data["mask_seed"], cfg,
                            plan, rank, world, step / cfg.max_steps, device, backward=True)
    return (train_loss, *optimizer_step(optimizer, ddp_model.parameters(), cfg.grad_clip))


@torch.no_grad()
def val_loss(model, converter, files, val, cfg, plan, step, rank, world, device):
    """The loss on fixed global batches, masked as this step's training batches are (mask_dist)."""
    model.eval()
    r = np.random.default_rng(0)  # fixed validation batches, and masks seeded by the batch's index
    losses = [all_mean(batch_loss(model, unwrap(model).config.bins, converter, draw_batch(files, val, r, cfg, rank, world)[1],
                                  k * cfg.batch_size, cfg, plan, rank, world, step / cfg.max_steps, device)).item()
              for k in range(cfg.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


# -----------------------------------------------------------------------------
# the log's model FLOPs


def forward_flops(c, n_cond, n_audio):
    """FLOPs of one VATT Audio forward of one sequence (n_cond condition + n_audio audio tokens):
    each token through one FFN of a multiway pair; the backward costs twice this."""
    L, inner, layers = n_cond + n_audio, c.n_head * c.head_dim, c.n_multiway + c.n_plain
    per_token = layers * (4 * c.dim * inner + 8 * c.dim ** 2)  # q, k, v, out; the FFN's two Linears (dim <-> 4 dim)
    linear = (L * per_token + n_cond * c.cond_dim * c.dim  # + cond_proj on the condition tokens,
              + n_audio * (c.codebook_dim * c.dim + c.n_q * c.dim * c.bins))  # audio_proj and the heads on the audio
    return 2 * linear + layers * 4 * L * L * inner


def train_flops(c, converter, n_video, n_cond, n_audio, condition="llm"):
    """Model FLOPs of training on one sequence: VATT Audio's forward and backward (twice the
    forward), and the frozen Converter's forward over the condition (none for VATT-V)."""
    converter_flops = prefill_flops(converter, n_video, n_cond) if condition == "llm" else 0
    return 3 * forward_flops(c, n_cond, n_audio) + converter_flops


def step_cost(cfg, c, converter, files):
    """A training step's tokens and model FLOPs, for the log: each sequence is the condition (the
    video tokens and the prompt padded to max_text_tokens), then the audio tokens."""
    n_video = converter.n_video_tokens(files.video_shape()[0])
    n_cond, n_audio = n_video + converter.max_text_tokens, files.tokens_shape()[0 if files.layout == "authors" else 1]
    return (cfg.batch_size * (n_cond + n_audio),
            cfg.batch_size * train_flops(c, converter, n_video, n_cond, n_audio, cfg.condition))


# -----------------------------------------------------------------------------
# the model, checkpoints and the run


def build_audio_model(cfg, converter, init, device):
    """VATT Audio (or a Table 4 variant) for this Converter and its features' codec, random weights.
    Fine-tuning (`init`) keeps the checkpoint's network (into cfg) and head order, once checked."""
    codec_name, cond_dim = converter.features_meta["codec"], converter.hidden_size
    codec = load_codec(codec_name)
    head_order = "natural"
    if init is not None:
        c, path = ModelConfig(**init["model_config"]), cfg.init_from
        if init["codec"] is not None and init["codec"] != codec_name:
            sys.exit(f"error: {path}: trained on tokens of the codec {init['codec']!r}, these features were made with {codec_name!r}")
        if (c.n_q, c.bins, c.codebook_dim) != (codec.n_q, codec.bins, codec.dim):
            sys.exit(f"error: {path}: made for a codec of {c.n_q} x {c.bins} tokens of width {c.codebook_dim}, "
                     f"{codec_name!r} has {codec.n_q} x {codec.bins} of width {codec.dim}")
        if c.cond_dim != cond_dim:
            sys.exit(f"error: {path}: conditions on {c.cond_dim}-d LLM states, the Converter gives {cond_dim}-d ones")
        for key in ARCHITECTURE:
            setattr(cfg, key, getattr(c, key))
        head_order = c.head_order
    model = audio_model(model_config(cfg, cond_dim, codec, head_order), codec.codebooks.float().cpu())
    print0(f"VATT Audio: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")
    return model.to(device)


def checkpoint(model, optimizer, cfg, step, validation_loss, codec):
    """stage2.pt, which load_vatt_audio reads: the network and its weights, codec, Converter, config, optimizer."""
    return {"kind": "vatt-audio", "config": asdict(cfg), "model_config": asdict(model.config), "codec": codec,
            "converter": cfg.converter, "step": step, "val_loss": validation_loss, "model": model.state_dict(),
            "optimizer": optimizer.state_dict()}


def starting_step(model, optimizer, cfg, init, resumed):
    """Where training starts: the run's own checkpoint resumed (weights, optimizer, step), or a
    fine-tuning run's --init_from weights at step 0, or the random weights."""
    if resumed is not None:
        model.load_state_dict(model_weights(resumed))
        optimizer.load_state_dict(resumed["optimizer"])
        return resumed["step"]
    if init is not None:
        model.load_state_dict(model_weights(init))
        print0(f"fine-tuning from {cfg.init_from} ({model.config.head_order} head order): fresh optimizer, step 0")
    return 0


def main(argv=None):
    cfg = parse_config(Config, PRESETS, argv)
    t0 = time.time()
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            sys.exit(f"error: --{key}={getattr(cfg, key)}: choose one of {', '.join(choices)}")
    rank, world = setup_ddp()
    plan = split_batch(cfg.batch_size, cfg.micro_batch, world)
    device = pick_device(cfg.device)
    ckpt_path = Path(cfg.out_dir) / "stage2.pt"
    torch.manual_seed(cfg.seed)  # the initial weights (the training steps re-seed, see step_data)
    converter = load_converter(cfg.converter, device)
    init = read_init_checkpoint(cfg.init_from, "vatt-audio", ckpt_path) if cfg.init_from else None
    model = build_audio_model(cfg, converter, init, device)
    files, train, val = train_val_split(cfg, tokens=True, rank=rank, world=world)
    optimizer = adamw(model.parameters(), cfg, device)
    resumed, writer = start_checkpoints(ckpt_path, "vatt-audio", cfg.resume, rank)
    step = starting_step(model, optimizer, cfg, init, resumed)
    del init, resumed  # their weights are in the model now
    end = cfg.stop_at if 0 < cfg.stop_at < cfg.max_steps else cfg.max_steps
    if step >= end:
        print0(f"{ckpt_path} is at step {step}, {'stop_at' if end < cfg.max_steps else 'max_steps'} is {end}: nothing to train")
    ddp_model = data_parallel(model, world)
    ddp_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    cost = step_cost(cfg, model.config, converter, files)  # (tokens, model FLOPs) of every step
    print_plan(cfg, world, *plan, cost[0] / cfg.batch_size, len(train))
    codec = converter.features_meta["codec"]

    model.train()
    train_loop(cfg, step, end,
               step_batches(functools.partial(step_data, files, train, cfg, rank, world), step, end, cfg.workers, device),
               lambda data, i: (*train_step(ddp_model, converter, optimizer, data, cfg, plan, i, rank, world, device), *cost),
               lambda i: val_loss(ddp_model, converter, files, val, cfg, plan, i, rank, world, device),
               lambda i, loss: checkpoint(model, optimizer, cfg, i, loss, codec),
               writer, TrainingLog(cfg, device, rank, world, "stage2"), rank)
    print(f"rank {rank}: weights {weights_digest(model.parameters())}", flush=True)  # the same on every rank
    if rank == 0:
        record_timing(cfg.out_dir, "stage2_audio", t0)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
