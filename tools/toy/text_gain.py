"""
Does VATT Audio read the text? A diagnostic for a trained toy model (stage1.pt + stage2.pt).

On the toy world the register (low / high) is named only by the caption's pitch words, so the text
path works exactly when the model's predictions depend on that word. For clips of a split it
prints three measurements, from the condition to the output:

  1. condition: how much the Converter's states (§3.2.1, the last-layer hidden states) change when
     the pitch words are swapped: the RMS of h(caption) - h(swapped caption) over the text positions,
     relative to the RMS of h. If this is ~0, no decoder can read the register.
  2. attention: the share of the audio positions' attention that lands on the prompt's text
     tokens, and on the pitch words themselves, per layer (mean over heads, clips and audio positions).
  3. text gain: the masked-token loss of eq. 2 (no label smoothing) with the swapped caption minus
     the loss with the true caption, in nats per masked token, at fixed masking ratios, for the
     frequency level (the level that carries the register) and for all levels. Near 0: the model
     ignores the text; ~0.5 and more at r = 1 on the frequency level: it reads the register.

    python tools/toy/text_gain.py                              # out/toy, the validation split
    python tools/toy/text_gain.py --ckpt_dir=out/toy --split=test --n_clips=200
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
from data.toy.world import SWAP  # noqa: E402
from extract_features import feature_files  # noqa: E402
from stage1_caption import load_converter  # noqa: E402
from stage2_audio import load_vatt_audio, masked_loss, random_mask  # noqa: E402
from utils import parse_config  # noqa: E402

FREQUENCY_LEVEL = 1  # the toy codec's level 1 is the dominant frequency (data/toy/codec.py)


@dataclass
class Config:
    preset: str = "toy"
    ckpt_dir: str = "out/toy"  # holds stage1.pt and stage2.pt
    data_json: str = "data/toy/v2a_instruction.json"
    split: str = "val"  # tune on val; the test split is for the final table only
    n_clips: int = 128
    ratios: str = "0.5,0.75,0.9,1.0"  # masking ratios at which the text gain is measured
    seed: int = 0


def pitch_positions(conv, prompts, n_cond):
    """(B, Lc) bool: the condition positions of each prompt's pitch word. The text is left-padded
    to end at position n_cond - 1 (stage1_caption.Converter._sequences)."""
    out = torch.zeros(len(prompts), n_cond, dtype=torch.bool)
    pitch_ids = {conv.tokenizer.convert_tokens_to_ids(w) for w in SWAP}
    for b, prompt in enumerate(prompts):
        ids, _ = conv.prompt_ids(prompt)
        for i, tok in enumerate(ids):
            if tok in pitch_ids:
                out[b, n_cond - len(ids) + i] = True
    return out


def attention_shares(model, codes, cond, cond_mask, text, pitch):
    """Per layer: the mean attention weight that audio queries put on text keys and on pitch-word
    keys. Recomputes each layer's softmax from its inputs (forward hooks on Attention)."""
    shares = []

    def hook(attn, args, _):
        x, bias, _ = args
        q, k = (rearrange(f(x), "b l (h d) -> b h l d", h=attn.n_head) for f in (attn.to_q, attn.to_k))
        w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, -1)  # (B, H, L, L)
        w = w[:, :, cond.shape[1]:].mean((1, 2))  # (B, L): audio queries, mean over heads and queries
        shares.append([(w[:, :cond.shape[1]] * m).sum(1).mean().item() for m in (text, pitch)])

    handles = [blk.attn.register_forward_hook(hook) for blk in list(model.multiway_layers) + list(model.plain_layers)]
    model(codes, cond, cond_mask)
    for h in handles:
        h.remove()
    return shares


def clip_arrays(files, entries):
    """The features (B, N, D) and tokens (B, L, T) of the clips of V2A-Instruction `entries`."""
    stems = [Path(e["video_path"]).stem for e in entries]
    return (torch.stack([files.load_video(s) for s in stems]), torch.stack([files.load_tokens(s) for s in stems]))


@torch.no_grad()
def losses_at_ratios(model, codes, conditions, ratios, g):
    """The masked-token loss of eq. 2 (no label smoothing) at each fixed masking ratio, for each
    (cond, cond_mask) of `conditions` under the same mask: per ratio, per condition, (frequency
    level, all levels) in nats per masked token. codes (B, L, T)."""
    out = []
    for r in ratios:
        mask = random_mask(torch.full((len(codes),), r), codes.shape, g)
        inp = codes.masked_fill(mask, model.config.bins)
        row = []
        for cond, cond_mask in conditions:
            logits, f = model(inp, cond, cond_mask), FREQUENCY_LEVEL  # (B, L, T, V)
            row.append((masked_loss(logits[:, f], codes[:, f], mask[:, f], 0.0).item(), masked_loss(logits, codes, mask, 0.0).item()))
        out.append(row)
    return out


@torch.no_grad()
def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    device = torch.device("cpu")
    conv = load_converter(f"{cfg.ckpt_dir}/stage1.pt", device)
    model, ckpt = load_vatt_audio(f"{cfg.ckpt_dir}/stage2.pt", device)
    files = feature_files(ckpt["config"]["features_dir"])
    entries = [e for e in json.loads(Path(cfg.data_json).read_text(encoding="utf-8")) if e["split"] == cfg.split][: cfg.n_clips]
    if not entries:
        sys.exit(f"error: {cfg.data_json}: no clips in split {cfg.split!r}")
    feats, codes = clip_arrays(files, entries)
    true, swapped = [e["output"] for e in entries], [e["swapped"] for e in entries]
    c_true, m_true = conv.condition(feats, true, cut=True)
    c_swap, _ = conv.condition(feats, swapped, cut=True)
    n_vid = conv.n_video_tokens(feats.shape[1])
    text = m_true.bool().clone()
    text[:, :n_vid] = False  # (B, Lc) the prompt's text positions
    pitch = pitch_positions(conv, true, c_true.shape[1])
    rms = lambda x: x.pow(2).mean().sqrt().item()  # noqa: E731
    print(f"{cfg.ckpt_dir}, {len(entries)} {cfg.split} clips (stage 2 at step {ckpt['step']})")
    print(f"1. condition: RMS change of the text states when the pitch words are swapped: "
          f"{rms((c_true - c_swap)[text]) / rms(c_true[text]):.3f} of their RMS "
          f"({rms((c_true - c_swap)[pitch]) / rms(c_true[pitch]):.3f} at the pitch words themselves)")

    g = torch.Generator().manual_seed(cfg.seed)
    mask = random_mask(torch.full((len(entries),), 0.97), codes.shape, g)
    shares = attention_shares(model, codes.masked_fill(mask, model.config.bins), c_true, m_true, text.float(), pitch.float())
    n_keys = text.shape[1] + codes.shape[-1]
    uniform = [m.sum(1).float().mean().item() / n_keys for m in (text, pitch)]  # attention spread evenly over all keys
    print("2. attention of the audio positions (r = 0.97), per layer: on the text | on the pitch words")
    for i, (t, p) in enumerate(shares):
        print(f"   layer {i}: {t:.3f} | {p:.4f}   (uniform over keys would give {uniform[0]:.3f} | {uniform[1]:.4f})")

    print("3. text gain, nats per masked token (loss with the swapped caption - loss with the true one):")
    print("   ratio | frequency level | all levels")
    ratios = [float(x) for x in cfg.ratios.split(",")]
    for r, (true_loss, swap_loss) in zip(ratios, losses_at_ratios(model, codes, [(c_true, m_true), (c_swap, m_true)], ratios, g)):
        print(f"   {r:5.2f} | {swap_loss[0] - true_loss[0]:15.3f} | {swap_loss[1] - true_loss[1]:10.3f}")


if __name__ == "__main__":
    main()
