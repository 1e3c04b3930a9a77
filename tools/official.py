"""
official.py -- run the authors' released VATT checkpoints with this project's clean models.

The authors (Liu, Su, Shlizerman; github.com/DragonLiu1995/video-to-audio-through-text) released
four stage-2 Lightning checkpoints (`vatt_models.zip`, e.g. `vatt_llama_T_final.ckpt`) and the
stage-1 Converter weights (`checkpoint-117000/pytorch_model.bin` for Vicuna). This file maps
them onto our code without bending it:

    their VT2AModel (stage 2, `audio_token_decoder.*`)  ->  stage2_audio.ReleasedHeadOrder (VATT Audio)
    their LoRA + `video_proj` (stage 1, peft key names)  ->  stage1_caption.Converter (OfficialConverter)
    AudioGen's EnCodec                                  ->  codec.py (already loads their codec as is)

The stages never import this file: their checkpoints enter through the commands below.

    python tools/official.py inspect checkpoints/vatt_models/vatt_llama_T_final.ckpt   # what the loader reads (no LLM needed)
    # sample.py's options with their download folder in place of --ckpt_dir
    python tools/official.py sample --preset=llama-2-7b --official_ckpt=checkpoints --video=clip.mp4 --prompt="a dog barks" --batch_size=1
    # once: their .ckpt as files that load without pickle (out/released/stage2.safetensors + .json,
    # converter.safetensors); sample with them, or fine-tune them (stage2_audio.py --init_from)
    python tools/official.py convert checkpoints/vatt_models/vatt_llama_T_final.ckpt out/released --codebooks=checkpoints/meta_pretrain_vgg_encodec_embed.pt
    python tools/official.py sample --preset=llama-2-7b --official_ckpt=checkpoints --official_model=out/released/stage2.safetensors --video=clip.mp4

Their files are Lightning pickles. They are read with torch.load(weights_only=True): tensors,
plain values and numpy float64 scalars (lightning_globals), never code. A file that needs more is
refused with the globals it names, and loads fully only with --trust_pickle (which runs what its
pickle says: only for a download you trust). `convert` turns them into safetensors once.

Everything below was checked against parity fixtures made by running the official code
(tests/test_official_vatt.py). The quirks of the released code,
and where each one is handled:

1. One LayerNorm for the whole multiway encoder (fixtures README §3). The official encoder builds
   ONE MultiwayWrapper(LayerNorm) and reuses it as the pre-norm of all 24 encoder sub-layers and
   as the encoder's final norm, so a checkpoint holds 25 alias keys of the same (A = condition,
   B = audio) pair. Our Block has its own norms per sub-layer (the clean design); the loader
   checks that the aliases agree and copies the one pair into every one of our norms. A model
   loaded this way computes exactly what theirs does; it just stores the pair 25 times.
2. The head / target order mismatch (fixtures README §4-5). Their forward flattens the 4 heads'
   logits as "b k t d -> b d (k t)" but flattens targets (training) and reads predictions
   (sampling) as "b c t -> b (t c)". So flat index j = k*T + t holds head floor(j/T) at audio
   position j mod T, yet it is trained and sampled as codebook j mod K at time floor(j/K).
   Their network never predicts "codebook k at time t with head k"; it learned that permutation.
   Our VATTAudio stays in the natural order (models trained here are unaffected); THEIR weights
   are loaded with ModelConfig.head_order = "released" (stage2_audio.ReleasedHeadOrder), whose
   forward re-indexes the natural logits into what they mean (stage2_audio.released_order), so
   sample.py's sampler sees
   logits[b, c, t] = "codebook c at time t" exactly as the official sampler does. The order is
   saved with the model (`convert`), and a model fine-tuned from their weights keeps it.
3. pos_embed (README §4): a frozen parameter in their state_dict, the `pos` buffer in ours.
   Both are the same sin-cos table; theirs was computed with numpy float32 and differs from our
   sincos_table by ~3e-5 at position ~1000 (float rounding of the angle p * w_i), so the loader
   checks it is the same table (<= 1e-4) and then uses their exact numbers (saved with the model).
4. The model is otherwise the same math, verified on the tiny fixture (float32, CPU: logits
   bit-identical with their pos_embed, max |diff| 7e-7 with our own table): ALiBi -|i-j| * slope_h with the standard slopes, padded keys at
   -(float32 max)/2, zeroed attention output at padded query rows, pre-LN with eps 1e-5,
   exact-erf GELU, bias-free attention / FFN, audio positions offset by the condition length,
   the null condition = zeros + positions + modality_v with the padding mask kept.
5. The condition (reference §5, fixtures §5): the official stage-2 LLM input is
   [10 video tokens ; left-padded prompt] -- the video first, padding in the middle --
   with plain 0..L-1 position ids, the prompt in the alpaca_short template (Vicuna) or Gemma's
   turn template, tokenized with the LLM tokenizer's own BOS, cut at 64 tokens, EOS appended.
   The last hidden states (after the final norm) of ALL positions are the condition. Its length
   Lc sets where the audio positions start in pos_embed, so the layout must match exactly (our
   own Converter pads to a fixed length instead: a different, batch-independent layout that the
   released weights never saw). OfficialConverter reproduces theirs. With one clip per batch (the
   official sampler only supports batch 1) there is no padding at all; with several, a clip's
   condition depends on its batch mates' prompt lengths exactly as in their code, so use
   batch_size=1 for the official behaviour.
6. Gemma's sqrt(hidden) input scale: their Gemma copy multiplies the whole input sequence
   (video tokens included) by sqrt(hidden_size); current transformers moved that scale into
   the token embedding layer, so video tokens passed as inputs_embeds would be left unscaled.
   OfficialConverter scales its video tokens by the embedding's `embed_scale` when it has one.

Not reproduced (documented differences): the official sampler runs under bf16 autocast with the
LLM in fp16; sample.py's sampler draws its own random numbers (same distributions); the official
captioner samples (temperature 0.1, top-p 0.95, top-k 500, repetition penalty 1.1) where
Converter.caption is greedy.
"""
import hashlib
import os
import pickle
import re
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
import sample  # noqa: E402
from codec import load_codec  # noqa: E402
from extract_features import PRESETS as FEATURE_PRESETS, Config as FeatureConfig  # noqa: E402
from stage1_caption import Converter, load_llm  # noqa: E402
from stage2_audio import PAPER_SIZE, ModelConfig, audio_model, load_vatt_audio, sincos_table  # noqa: E402
from tools import sample_split  # noqa: E402
from utils import atomic_path, load_error, parse_config, pick_device, save_json  # noqa: E402

PREFIX = "audio_token_decoder."  # where both Lightning wrappers keep VT2AModel (fixtures README §3)
HEAD_DIM = 64  # dim_head is hard-coded to 64 in the official code, whatever the width
VIDEO_FRAMES, VIDEO_TOKENS, VIDEO_FPS = 50, 10, 5  # 10 s of 5 fps features, average-pooled to 10 LLM tokens
MAX_TEXT_TOKENS = 64  # the stage-2 prompt is cut at 64 tokens (BOS included), then EOS appended
TEMPLATES = {  # verbatim from the released templates (reference §4)
    "vicuna": "### Instruction:\n{instruction}\n\n### Response:\n",  # templates/alpaca_short.json
    "gemma": "<bos><start_of_turn>user\n{instruction}<end_of_turn>\n<start_of_turn>model",  # templates/gemma.json
}
# file names of the authors' download (their setup_inference.sh unpacks everything into checkpoints/)
DEFAULT_VATT = "vatt_llama_T_final.ckpt"  # inside vatt_models.zip
BASE_LLM = {"vicuna": "vicuna", "gemma": "gemma_2b"}  # LTU's Vicuna-7B (vicuna.zip) / Gemma-2B
STAGE1 = {"vicuna": "checkpoint-117000/pytorch_model.bin", "gemma": "checkpoint-231000/pytorch_model.bin"}
CODEBOOKS = "meta_pretrain_vgg_encodec_embed.pt"  # the EnCodec tables VT2AModel embeds with
CODEC_DIR = "audiogen_model"  # audiogen_models.zip: a copy of facebook/audiogen-medium
CONVERTED_CONVERTER = "converter.safetensors"  # `convert` writes their Converter weights here, beside stage2.safetensors

# -----------------------------------------------------------------------------
# reading checkpoint files


def lightning_globals():
    """What their Lightning checkpoints pickle besides tensors and plain values, and nothing more:
    numpy float64 learning rates. Their LambdaLinearScheduler computes its factor from a numpy
    array, so the lr in optimizer_states and lr_schedulers is a numpy scalar (found on checkpoints
    made with pytorch-lightning 1.9.5 and their trainer's settings: docs/paper-audit.md). numpy 2
    renamed numpy.core, so both names map to the one function."""
    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *([np.dtypes.Float64DType] if hasattr(np, "dtypes") else [])]


def load_checkpoint(path, trust_pickle=False):
    """A torch.save'd file of theirs -> its tensors (Lightning .ckpt -> ckpt['state_dict']).
    Read with weights_only=True and the allow-list of lightning_globals: tensors, plain types and
    numpy float64 scalars only, so nothing in the file runs. A file whose pickle needs anything
    else stops the run with one line naming those globals; with trust_pickle (--trust_pickle) it
    is loaded fully, which runs its pickled code: only for a download you trust. mmap=True keeps
    the frozen 7B LLM that a stage-2 checkpoint may also hold on disk instead of in RAM."""
    def load(weights_only):
        with torch.serialization.safe_globals(lightning_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
            except RuntimeError as e:  # mmap needs the zip format (torch >= 1.6 files); old files load whole
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=weights_only)

    if not Path(path).is_file():
        sys.exit(f"error: {path}: no such file")
    if str(path).endswith(".safetensors"):  # `convert`'s output: tensors only, by the format
        return load_file(path)
    try:
        obj = load(True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            allowed = [g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in lightning_globals()]
            sys.exit(f"error: {path}: refused ({load_error(path, e, allowed)}); if you trust this file, "
                     "--trust_pickle loads it fully, running that code")
        obj = load(False)
    except Exception as e:  # noqa: BLE001 (not a torch file at all: garbage, truncated, empty)
        sys.exit(f"error: {path}: not a readable checkpoint ({load_error(path, e)})")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning: {'state_dict', 'epoch', 'optimizer_states', ...}
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    return obj


def load_codebooks(src, trust_pickle=False):
    """The frozen EnCodec tables VT2AModel embeds with -> float (n_q, bins, dim). `src` is a tensor
    (n_q, bins, dim), a list of (bins, dim) tables, a state dict holding `..._codebook.embed` keys
    (an audiocraft quantizer), or a file with any of these (`meta_pretrain_vgg_encodec_embed.pt`,
    whose format the fixtures could not inspect; the official code indexes it codec[level])."""
    if isinstance(src, (str, Path)):
        src = load_checkpoint(src, trust_pickle)
    if isinstance(src, nn.Module):
        src = src.state_dict()
    if isinstance(src, dict):
        keys = sorted((k for k in src if k.endswith("_codebook.embed")),
                      key=lambda k: [int(n) for n in re.findall(r"\d+", k)])
        if not keys:
            raise ValueError(f"no codebook tables (keys ending in '_codebook.embed') among {list(src)[:5]}...")
        src = [src[k] for k in keys]
    if isinstance(src, (list, tuple)):
        src = torch.stack([torch.as_tensor(t) for t in src])
    if not torch.is_tensor(src) or src.dim() != 3:
        raise ValueError(f"expected codebooks of shape (n_q, bins, dim), got {getattr(src, 'shape', type(src))}")
    return src.float()


# -----------------------------------------------------------------------------
# VATT Audio: their VT2AModel keys -> our VATTAudio keys


def _strip(state_dict):
    """Their VT2AModel keys without the Lightning prefix, and the keys that are not VT2AModel's.
    With the prefix present (a Lightning checkpoint) everything else -- the frozen LLM and its LoRA
    (`encoder.base_model.*`), Gemma's `embed_tokens.weight` -- is ignored. Without it the dict is
    taken to be a bare VT2AModel state_dict."""
    if any(k.startswith(PREFIX) for k in state_dict):
        vt2a = {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
        return vt2a, [k for k in state_dict if not k.startswith(PREFIX)]
    return dict(state_dict), []


def official_config(state_dict):
    """ModelConfig read off the tensor shapes of a VT2AModel state_dict (prefix optional)."""
    sd, _ = _strip(state_dict)
    layer_ids = lambda stack: {int(m[1]) for k in sd if (m := re.match(rf"{stack}\.attn_layers\.layers\.(\d+)\.", k))}  # noqa: E731
    n_enc, n_dec = len(layer_ids("encoder")), len(layer_ids("decoder"))
    assert n_enc % 2 == 0 and n_dec % 2 == 0, "each layer is an (attention, feed-forward) pair of entries"
    q_enc = sd["encoder.attn_layers.layers.0.1.to_q.weight"]
    q_dec = sd["decoder.attn_layers.layers.0.1.to_q.weight"]
    assert q_enc.shape == q_dec.shape, "our model uses one head count for both stacks (as all released configs)"
    dim, cond_dim = sd["img_linear.weight"].shape
    n_q = len([k for k in sd if re.fullmatch(r"classifier\.\d+\.weight", k)])
    return ModelConfig(cond_dim=cond_dim, n_q=n_q, bins=sd["classifier.0.weight"].shape[0],
                       codebook_dim=sd["embedding.out_proj.weight"].shape[1], dim=dim,
                       n_multiway=n_enc // 2, n_plain=n_dec // 2, n_head=q_enc.shape[0] // HEAD_DIM,
                       head_dim=HEAD_DIM, max_len=sd["pos_embed"].shape[1], dropout=PAPER_SIZE["dropout"])


# their two stacks (x-transformers' encoder and decoder) -> ours, named for what they are
OUR_STACK = {"encoder": "multiway_layers", "decoder": "plain_layers"}


def official_to_ours(state_dict, codebooks=None, report=None):
    """Maps the official VT2AModel state_dict (with or without the `audio_token_decoder.` prefix)
    to VATTAudio's keys. Returns a dict that VATTAudio.load_state_dict(strict=True) accepts when
    `codebooks` (n_q, bins, dim) is given (the tables are not in their state_dict).
    `report`, a dict, receives 'ignored' (keys that are not VT2AModel's: LLM, LoRA, quantizer),
    'pos_embed' (their position table, mapped to our `pos` buffer: the caller checks it) and
    'n_aliases' (how many shared-norm aliases were found).

    Their layout (README §3): encoder.attn_layers.layers.N / decoder.attn_layers.layers.N, even N
    = attention sub-layer, odd N = feed-forward sub-layer of our layer N // 2.
        .0.0.*                      pre-norm (encoder: the shared multiway pair A/B)
        .1.to_q/.to_k/.to_v/.to_out attention projections (even N)
        .1[.A|.B].ff.0.0 / .ff.2    FFN in / out Linear (odd N); ours: ff[j] = Sequential(Linear,
                                    GELU, Dropout, Linear), so their ff.2 is our index 3
    """
    sd, ignored = _strip(state_dict)
    out, shared, pos_embed = {}, {}, None
    simple = {"img_linear.weight": "cond_proj.weight", "img_linear.bias": "cond_proj.bias",
              "embedding.out_proj.weight": "audio_proj.weight", "embedding.out_proj.bias": "audio_proj.bias",
              "embedding.special.MASK": "mask_embed"}  # (n_q, codebook_dim): each level's MASK vector
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k in ("modality_v", "modality_a"):  # (1, 1, dim) -> (dim,)
            out["modality_cond" if k == "modality_v" else "modality_audio"] = v.reshape(-1)
        elif k == "pos_embed":
            pos_embed = v
        elif m := re.fullmatch(r"classifier\.(\d+)\.weight", k):
            out[f"heads.{m[1]}.weight"] = v
        elif m := re.fullmatch(r"encoder\.attn_layers\.(?:layers\.(\d+)\.0\.0|final_norm)\.([AB])\.(weight|bias)", k):
            shared.setdefault((m[2], m[3]), []).append((k, v))  # the one shared LayerNorm (quirk 1)
        elif m := re.fullmatch(r"(encoder|decoder)\.attn_layers\.layers\.(\d+)\.(.+)", k):
            stack, n, rest = m[1], int(m[2]), m[3]
            i = n // 2
            if stack == "decoder" and (mm := re.fullmatch(r"0\.0\.(weight|bias)", rest)):  # its own LNs
                out[f"plain_layers.{i}.norm{1 + n % 2}.0.{mm[1]}"] = v
            elif mm := re.fullmatch(r"1\.(to_q|to_k|to_v|to_out)\.weight", rest):
                out[f"{OUR_STACK[stack]}.{i}.attn.{mm[1]}.weight"] = v
            elif mm := re.fullmatch(r"1\.(?:([AB])\.)?ff\.(0\.0|2)\.weight", rest):
                j = "AB".index(mm[1]) if mm[1] else 0  # A = condition expert, B = audio expert
                out[f"{OUR_STACK[stack]}.{i}.ff.{j}.{0 if mm[2] == '0.0' else 3}.weight"] = v
            else:
                raise KeyError(f"unknown official key {k!r}")
        elif m := re.fullmatch(r"decoder\.attn_layers\.final_norm\.(weight|bias)", k):
            out[f"final_norm.{m[1]}"] = v
        else:  # e.g. quantizer.* if their codebook file held a module (README §3): not a weight of ours
            ignored.append(k)
    # quirk 1: one (A, B) LayerNorm pair -> every encoder norm of ours
    n_layers = 1 + max((int(k.split(".")[1]) for k in out if k.startswith("multiway_layers.")), default=-1)
    for (ab, p), entries in shared.items():
        k0, v0 = entries[0]
        for k, v in entries[1:]:
            if v0.device.type != "meta" and not torch.equal(v, v0):
                raise ValueError(f"{k} differs from {k0}: the official encoder shares ONE LayerNorm, "
                                 "so a checkpoint of it holds equal copies")
        j = "AB".index(ab)
        for i in range(n_layers):
            out[f"multiway_layers.{i}.norm1.{j}.{p}"] = out[f"multiway_layers.{i}.norm2.{j}.{p}"] = v0
        out[f"multiway_norm.{j}.{p}"] = v0
    if codebooks is not None:
        out["codebooks"] = codebooks
    if pos_embed is not None:  # quirk 3: their exact table is our `pos` buffer (the caller checks it)
        out["pos"] = pos_embed[0]
    if report is not None:
        report.update(ignored=ignored, pos_embed=pos_embed, n_aliases=sum(len(e) for e in shared.values()))
    return out


def official_flat_logits(logits):
    """Natural-order logits (B, K, T, V) -> exactly what the official forward returns: (B, V, K*T)."""
    return rearrange(logits, "b k t v -> b v (k t)")


def official_targets(codes, mask):
    """The official training targets: codes (B, K, T), mask (B, K, T) bool -> (B, K*T) in their
    "b (t c)" order, -1 where a token was not masked (CrossEntropyLoss ignore_index=-1). With
    official_flat_logits this is their loss; equivalently stage2_audio.masked_loss applied to
    stage2_audio.released_order(logits), since a mean over the masked tokens ignores their order."""
    return rearrange(codes.masked_fill(~mask.bool(), -1), "b c t -> b (t c)")


def build_official_vatt_audio(state_dict, codebooks=None, device="cpu", head_order="released"):
    """VT2AModel state_dict (prefix optional) + EnCodec tables -> our VATTAudio with their weights,
    in eval mode and frozen; its logits in the order their weights mean (quirk 2), or with
    head_order="natural" logits[b, k] = their head k, what their forward computes before its flattening."""
    report = {}
    if codebooks is None:  # a quantizer module inside the checkpoint (the one format README §3 allows)
        sd, _ = _strip(state_dict)
        if not any(k.endswith("_codebook.embed") for k in sd):
            raise ValueError(f"the EnCodec codebooks are not in the checkpoint: pass the tables "
                             f"({CODEBOOKS}, or codec.load_codec(...).codebooks)")
        codebooks = load_codebooks({k: v for k, v in sd.items() if k.endswith("_codebook.embed")})
    cfg = official_config(state_dict)
    cfg.head_order = head_order
    codebooks = load_codebooks(codebooks)
    if tuple(codebooks.shape) != (cfg.n_q, cfg.bins, cfg.codebook_dim):
        raise ValueError(f"codebooks {tuple(codebooks.shape)} do not fit the checkpoint's "
                         f"{(cfg.n_q, cfg.bins, cfg.codebook_dim)}")
    weights = official_to_ours(state_dict, codebooks, report)
    # quirk 3: same sin-cos table as ours up to float32 rounding; their exact numbers are loaded
    pos = weights["pos"] = weights["pos"][: cfg.max_len].float()
    diff = (pos - sincos_table(cfg.max_len, cfg.dim)).abs().max().item()
    if diff > 1e-4:
        raise ValueError(f"pos_embed differs from the sin-cos table by {diff:.2e}: not the released model")
    with torch.device(device):  # random init straight on the device, overwritten just below
        model = audio_model(cfg)
    model.load_state_dict(weights, strict=True)
    model.official_report = {k: v for k, v in report.items() if k != "pos_embed"}
    return model.eval().requires_grad_(False)


def load_official_vatt_audio(ckpt_path, codebooks=None, device="cpu", head_order="released", trust_pickle=False):
    """The authors' stage-2 Lightning .ckpt (or a bare VT2AModel state_dict file) -> our model.
    codebooks: a path, a tensor (n_q, bins, dim), or None to look inside the checkpoint."""
    return build_official_vatt_audio(load_checkpoint(ckpt_path, trust_pickle), codebooks, device, head_order)


# -----------------------------------------------------------------------------
# VATT Converter: their LoRA + video_proj -> current peft + our projector


def official_converter_weights(state_dict):
    """Finds the trained stage-1 weights in any of the files that hold them (fixtures README §5):
      checkpoint-N/pytorch_model.bin  base_model.model.model.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.default.weight,
                                      base_model.model.model.video_proj.{weight,bias} (+ maybe the frozen LLM)
      a stage-2 Lightning .ckpt       the same under encoder.base_model.model[.model]. (Gemma drops one .model)
      peft's adapter_model.bin        LoRA without '.default' -- and NO video_proj, so not enough alone
    Returns (lora {(layer, 'q'|'v', 'A'|'B'): tensor}, proj {'weight', 'bias'}, ignored keys)."""
    lora, proj, ignored = {}, {}, []
    for k, v in state_dict.items():
        if k.startswith(PREFIX):  # VATT Audio's own weights
            ignored.append(k)
        elif m := re.search(r"(?:^|\.)layers\.(\d+)\.self_attn\.([qv])_proj\.lora_([AB])(?:\.default)?\.weight$", k):
            lora[(int(m[1]), m[2], m[3])] = v
        elif m := re.search(r"(?:^|\.)video_proj\.(weight|bias)$", k):
            proj[m[1]] = v
        else:  # the frozen base LLM (it comes from the base model folder), lm_head, rotary buffers, ...
            ignored.append(k)
    return lora, proj, ignored


class OfficialConverter(Converter):
    """Our Converter with the official conditioning layout (quirks 5 and 6): [10 video tokens ;
    left-padded prompt], plain position ids, the prompt in the family's template with the
    tokenizer's BOS, cut at 64 tokens and EOS appended. Captioning (inherited) uses the same
    prompt without EOS, which is how their caption scripts prompt the LLM."""

    def __init__(self, llm, tokenizer, feature_dim, family):
        super().__init__(llm, tokenizer, feature_dim, video_tokens_per_second=1,  # 50 frames -> 10 tokens
                         max_text_tokens=MAX_TEXT_TOKENS, fps=VIDEO_FPS)
        assert family in TEMPLATES, family
        self.family = family

    def video_embeds(self, feats):
        if feats.shape[1] != VIDEO_FRAMES:  # their LLM asserts exactly 50 frames (10 s at 5 fps)
            raise ValueError(f"the released Converter takes {VIDEO_FRAMES} frames (10 s at 5 fps), got {feats.shape[1]}")
        x = super().video_embeds(feats)  # average-pool 50 -> 10, then video_proj
        scale = getattr(self.llm.get_input_embeddings(), "embed_scale", None)  # quirk 6 (Gemma)
        return x * scale.to(x.dtype) if scale is not None else x

    def prompt_ids(self, instruction):
        """Token ids as the official tokenize(): the template, the tokenizer's own special tokens
        (BOS; for Gemma the template's literal <bos> too, as theirs), cut at 64. (ids, was_cut)."""
        ids = self.tokenizer(TEMPLATES[self.family].format(instruction=instruction)).input_ids
        return ids[: self.max_text_tokens], len(ids) > self.max_text_tokens

    @torch.no_grad()
    def condition(self, feats, prompts, cut=False):
        """(B, 50, D) features + prompts -> (B, 10 + n, d_lm) float32 hidden states, (B, 10 + n) mask,
        n = the longest prompt in the batch. A prompt over 64 tokens is cut (`cut`) or refused."""
        rows, eos = [], self.tokenizer.eos_token_id
        for p in prompts:
            ids, was_cut = self.prompt_ids(p)
            if was_cut and not cut:
                raise ValueError(f"the prompt {p[:40]!r}... is longer than the {self.max_text_tokens} "
                                 "tokens the released model accepts")
            if ids[-1] != eos and len(ids) < self.max_text_tokens:
                ids = ids + [eos]
            rows.append(ids)
        n = max(len(r) for r in rows)
        vid = self.video_embeds(feats)  # (B, 10, d)
        ids = torch.tensor([[self.tokenizer.pad_token_id] * (n - len(r)) + r for r in rows], device=vid.device)
        text_mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows], device=vid.device)
        tok = self.llm.get_input_embeddings()(ids)  # (B, n, d)
        x = torch.cat([vid.to(tok.dtype), tok], 1)  # video FIRST, then [pad ; prompt]
        mask = torch.cat([torch.ones_like(text_mask[:, :1]).expand(-1, vid.shape[1]), text_mask], 1)
        positions = torch.arange(x.shape[1], device=x.device).expand(len(rows), -1)  # not padding-aware, as theirs
        h = self.llm.get_decoder()(inputs_embeds=x, attention_mask=mask, position_ids=positions).last_hidden_state
        return h.float() * mask[..., None], mask


def load_official_converter(weights, base_llm, device="cpu", family=None, lora=(16, 32, 0.0), trust_pickle=False):
    """Stage-1 weights (a path or a state dict: see official_converter_weights) + the base LLM
    folder (LTU's Vicuna-7B or Gemma-2B, Hugging Face format) -> a frozen OfficialConverter.
    LoRA: r 16, alpha 32 (scale 2) on q_proj / v_proj, dropout 0 -- how stage 2 rebuilds it.
    family: 'vicuna' or 'gemma' (default: from the LLM's model_type)."""
    sd = weights if isinstance(weights, dict) else load_checkpoint(weights, trust_pickle)
    lora_w, proj_w, ignored = official_converter_weights(sd)
    if set(proj_w) != {"weight", "bias"}:
        raise ValueError("no video_proj.{weight,bias} among the Converter weights: use the Trainer's "
                         "checkpoint-N/pytorch_model.bin (peft's adapter_model.bin lacks the projector)")
    llm, tokenizer = load_llm(str(base_llm), lora, torch.device(device))
    family = family or ("gemma" if llm.config.model_type.startswith("gemma") else "vicuna")
    conv = OfficialConverter(llm, tokenizer, proj_w["weight"].shape[1], family)
    conv.proj.load_state_dict({k: v.float() for k, v in proj_w.items()})
    # our peft model's own names for the same LoRA matrices (identical to theirs today, but found
    # by suffix so a change of wrapper nesting in transformers / peft cannot silently skip them)
    ours = {}
    for k in llm.state_dict():
        if m := re.search(r"(?:^|\.)layers\.(\d+)\.self_attn\.([qv])_proj\.lora_([AB])\.default\.weight$", k):
            ours[(int(m[1]), m[2], m[3])] = k
    if lora_w:
        if set(lora_w) != set(ours):
            raise ValueError(f"LoRA layers do not match the base LLM: {len(lora_w)} matrices in the file, "
                             f"{len(ours)} in the model (missing e.g. {sorted(set(ours) - set(lora_w))[:2]}, "
                             f"extra e.g. {sorted(set(lora_w) - set(ours))[:2]})")
        result = llm.load_state_dict({ours[k]: v for k, v in lora_w.items()}, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
    else:  # the released finetune_v2a_gemma.sh trains the projector only: LoRA stays B = 0, a no-op
        warnings.warn("no LoRA weights in the Converter file: a projector-only Converter (LoRA left at "
                      "its zero init)", stacklevel=2)
    conv.ignored = ignored
    return conv.to(device).eval().requires_grad_(False)


# -----------------------------------------------------------------------------
# everything sample.py needs, from the authors' download folder


def _first(*paths):
    return next((Path(p) for p in paths if p is not None and Path(p).exists()), None)


def load_official_models(ckpt_dir, device, vatt=DEFAULT_VATT, llm=None, converter=None, codebooks=None,
                         codec=None, features_dir="", trust_pickle=False):
    """The authors' checkpoints folder (their setup_inference.sh layout: vatt_models/*.ckpt, vicuna/,
    checkpoint-117000/, meta_pretrain_vgg_encodec_embed.pt, audiogen_model/) -> the same
    SimpleNamespace(converter, audio, codec, meta) as sample.load_models, so generation runs
    unchanged. Each part can be given explicitly instead:
      vatt        the stage-2 .ckpt (a file name inside ckpt_dir[/vatt_models], or a path), or the
                  stage2.safetensors `convert` made of it (then no pickle is read: its Converter
                  weights come from the converter.safetensors beside it)
      llm         base LLM folder (default ckpt_dir/vicuna for 4096-d conditions, ckpt_dir/gemma_2b for 2048-d)
      converter   stage-1 weights; default: the LoRA + video_proj stored inside the stage-2 .ckpt
                  itself (what that model was trained with), else ckpt_dir/checkpoint-117000|231000
      codebooks   default ckpt_dir/meta_pretrain_vgg_encodec_embed.pt, else the codec's own tables
      codec       a codec module, a path, or a hub id (default ckpt_dir/audiogen_model, else
                  facebook/audiogen-medium)
      features_dir  where tools/sample_split.py finds the 50 x 768 features: our layout (video/<stem>.npy)
                    or the authors' download (vggsound_clip_5fps/<stem>.npy), see extract_features.FeatureFiles
      trust_pickle  load files whose pickle needs more than tensors (see load_checkpoint)"""
    d = Path(ckpt_dir)
    vatt_path = _first(vatt, d / str(vatt), d / "vatt_models" / str(vatt))
    if vatt_path is None:
        sys.exit(f"error: {vatt!r} not found in {d} or {d / 'vatt_models'} (unzip the authors' vatt_models.zip there)")
    if vatt_path.suffix == ".safetensors":  # `convert`'s output: our VATT Audio, their Converter weights beside it
        audio, sd = load_vatt_audio(vatt_path, device)[0], {}
        cond_dim = audio.config.cond_dim
        converter = converter or _first(vatt_path.with_name(CONVERTED_CONVERTER))
    else:
        sd = load_checkpoint(vatt_path, trust_pickle)
        audio, cond_dim = None, official_config(sd).cond_dim
    family = {4096: "vicuna", 2048: "gemma"}.get(cond_dim)

    if codec is None:
        codec = str(d / CODEC_DIR) if (d / CODEC_DIR / "compression_state_dict.bin").exists() else "facebook/audiogen-medium"
    codec_name = codec if isinstance(codec, str) else getattr(codec, "name", type(codec).__name__)
    codec = load_codec(codec) if isinstance(codec, str) else codec
    if audio is None:
        if codebooks is None:
            codebooks = _first(d / CODEBOOKS) or codec.codebooks
        audio = build_official_vatt_audio(sd, load_codebooks(codebooks, trust_pickle), device)

    llm_path = _first(llm, d / BASE_LLM[family] if family else None)
    if llm_path is None:
        sys.exit(f"error: no base LLM folder for this {cond_dim}-d checkpoint: pass llm=... (expected "
                 f"{d / BASE_LLM[family]} for {family})" if family else
                 f"error: pass llm=... (the base LLM of this {cond_dim}-d checkpoint)")
    lora_w, proj_w, _ = official_converter_weights(sd)
    if converter is None and proj_w:
        converter = {k: v for k, v in sd.items() if not k.startswith(PREFIX)}
    elif converter is None:
        converter = _first(d / STAGE1[family]) if family else None
        if converter is None:
            sys.exit(f"error: the stage-2 checkpoint holds no Converter weights and no stage-1 file was "
                     f"found: pass converter=... (e.g. {d / STAGE1.get(family, STAGE1['vicuna'])})")
    conv = load_official_converter(converter, llm_path, device, trust_pickle=trust_pickle)
    if conv.hidden_size != cond_dim:
        sys.exit(f"error: {llm_path} has {conv.hidden_size}-d states, {vatt_path.name} expects {cond_dim}-d")

    # the authors' features: EVA02-CLIP-L/14-336 at 5 fps over 10 s (= extract_features.py --preset=vggsound)
    meta = {**asdict(FeatureConfig(**FEATURE_PRESETS["vggsound"])), "codec": codec_name,
            "feature_dim": conv.proj.in_features, "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate, "n_q": codec.n_q, "bins": codec.bins}
    conv.features_meta, conv.features_dir = meta, features_dir
    return SimpleNamespace(converter=conv, audio=audio, codec=codec.to(device), meta=meta,
                           files={"vatt": str(vatt_path), "llm": str(llm_path),
                                  "converter": str(converter) if isinstance(converter, (str, Path)) else f"{vatt_path} (encoder.*)"})


# -----------------------------------------------------------------------------
# the commands: inspect, convert, sample


def inspect(path, trust_pickle=False):
    """What the loader reads from a released checkpoint (no LLM needed)."""
    sd = load_checkpoint(path, trust_pickle)
    cfg = official_config(sd)
    report = {}
    weights = official_to_ours(sd, None, report)
    lora, proj, _ = official_converter_weights(sd)
    print(f"{path}: {cfg}")
    print(f"VATT Audio: {len(weights)} tensors for our model (+ the codebooks); the shared encoder "
          f"LayerNorm is stored under {report['n_aliases']} keys")
    print(f"Converter weights inside: {len(lora)} LoRA matrices, video_proj {'yes' if proj else 'no'}; "
          f"{len(report['ignored'])} keys not VT2AModel's")
    pos = report["pos_embed"][0, : cfg.max_len].float()
    print(f"pos_embed vs our sin-cos table: max |diff| {(pos - sincos_table(cfg.max_len, cfg.dim)).abs().max():.2e}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_safetensors(obj, path):
    """A checkpoint as two files that no loader runs code from: path (.safetensors) holds
    obj["model"]'s tensors, path with .json everything else (config, hashes). read_checkpoint
    reads the pair back into the same dict."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in obj["model"].items()}, tmp)
    save_json({k: v for k, v in obj.items() if k != "model"}, path.with_suffix(".json"))


def convert(path, out_dir, codebooks=None, trust_pickle=False):
    """Their stage-2 .ckpt -> files that load without pickle, once: out_dir/stage2.safetensors with
    stage2.json (a VATT Audio checkpoint of ours: step 0, their weights, head order and position
    table, the codec's tables, the sha256 of every file read), and out_dir/converter.safetensors,
    their Converter weights (LoRA + video_proj, under their key names) when the .ckpt holds them.
    stage2_audio.py --init_from fine-tunes stage2.safetensors; `official.py sample
    --official_model=out_dir/stage2.safetensors` samples with it. `codebooks`: their
    meta_pretrain_vgg_encodec_embed.pt, or AudioGen's codec named by a hub id or path."""
    state_dict = load_checkpoint(path, trust_pickle)
    sources = [path] + ([codebooks] if codebooks and Path(codebooks).is_file() else [])
    if codebooks and Path(codebooks).is_file():
        tables = load_codebooks(codebooks, trust_pickle)
    else:
        tables = load_codec(codebooks or "facebook/audiogen-medium").codebooks
    model = build_official_vatt_audio(state_dict, tables)
    hashes = {str(p): sha256(p) for p in sources}
    for p, digest in hashes.items():
        print(f"sha256 {digest}  {p}")
    out = Path(out_dir) / "stage2.safetensors"
    save_safetensors({"kind": "vatt-audio", "config": {"converted_from": hashes}, "model_config": asdict(model.config),
                      "codec": None, "step": 0, "model": model.state_dict()}, out)
    lora, proj, ignored = official_converter_weights(state_dict)
    if proj:
        ignored = set(ignored)
        converter = {k: v for k, v in state_dict.items() if k not in ignored}  # LoRA + video_proj
        save_safetensors({"model": converter, "converted_from": hashes}, Path(out_dir) / CONVERTED_CONVERTER)
    print(f"wrote {out} (+ .json){f' and {CONVERTED_CONVERTER} ({len(lora)} LoRA matrices + video_proj)' if proj else ''}: "
          f"{model.config.n_multiway} + {model.config.n_plain} layers of width {model.config.dim}, their head order; "
          f"fine-tune it with stage2_audio.py --init_from={out}")


@dataclass
class SampleConfig(sample_split.Config):
    # the authors' download folder, laid out as their setup_inference.sh leaves it (in place of --ckpt_dir)
    official_ckpt: str = "checkpoints"
    official_model: str = DEFAULT_VATT  # which of their vatt_models/*.ckpt
    trust_pickle: bool = False  # load files whose pickle needs more than tensors (runs their code)


def sample_with_theirs(argv):
    """sample.py's run (--video) or tools/sample_split.py's (--data_json) with their models: every
    option of those, and SampleConfig's."""
    args = parse_config(SampleConfig, sample.PRESETS, argv)
    if args.data_json:
        sample_split.check_options(args)
    elif not args.video:
        sys.exit("error: give --video FILE|FOLDER|LIST or --data_json FILE (see --help)")
    device = pick_device(args.device)
    models = load_official_models(args.official_ckpt, device, vatt=args.official_model, trust_pickle=args.trust_pickle)
    return (sample_split.run if args.data_json else sample.run)(args, models, device)


USAGE = """usage:
  python tools/official.py inspect CKPT [--trust_pickle]
  python tools/official.py convert CKPT OUT_DIR [--codebooks=FILE|CODEC] [--trust_pickle]
  python tools/official.py sample --official_ckpt=DIR [--official_model=NAME] [sample.py's or tools/sample_split.py's options]"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "sample":
        return sample_with_theirs(rest)
    trust = "--trust_pickle" in rest
    options = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
    paths = [a for a in rest if not a.startswith("--")]
    if command == "inspect" and len(paths) == 1:
        return inspect(paths[0], trust) or 0
    if command == "convert" and len(paths) == 2 and set(options) <= {"codebooks"}:
        return convert(*paths, options.get("codebooks"), trust) or 0
    print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
    return 0 if command in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
